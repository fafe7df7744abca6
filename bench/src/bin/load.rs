//! One-thread load generator (the uWebSockets `load_test` method): N connections, each with one masked binary
//! message in flight; as soon as a connection has its echo back it sends the next one.
//!
//! `load --addr 127.0.0.1:9001 --conns 100 --size 20 --secs 5 [--latency] [--tls --ca cert.pem] [--deflate [--text
//! pages]]`
//! prints `msgs/s` (and p50/p99/p99.9 round-trip latency with `--latency`) as one `key=value` line. Answers are
//! parsed frame by frame, so compressed answers of any length count. With `--deflate` the client offers
//! permessage-deflate (`client_no_context_takeover`, so one compressed text serves every send) and sends a
//! JSON-like text (`--text pages`: the chat pages of 64 KiB that `deflate_curve` compresses, `--size 65536`); it
//! falls back to plain text if the server declines, and reports the answers' wire bytes per
//! message as `wire_ratio`. `--hist FILE` appends the round-trip times as `microseconds count` lines (several runs
//! appended to one file pool into one distribution: `bench/report.py` takes p99 over all repetitions that way).
//!
//! `load --addr … --idle 10000 [--server-pid PID]` opens that many connections (from 127.0.0.2, 127.0.0.3, … so
//! ports do not run out), holds them idle, reports the server's RSS growth per connection, then times a new
//! client's handshake and 200 echoes (`new_p50_us`, `new_p99_us`, `new_max_us`).

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Client {
    sock: TcpStream,
    tls: Option<rustls::ClientConnection>,
    handshaken: bool,
    head: Vec<u8>,
    frames: Frames,
    sent_at: Instant,
}

/// Counts whole messages in the server's byte stream without keeping payloads: a header is gathered (at most
/// 14 bytes), then its payload is skipped.
#[derive(Default)]
struct Frames {
    hdr: Vec<u8>,
    skip: u64,
    fin: bool,
}

impl Frames {
    /// Feeds bytes; returns the messages completed.
    fn feed(&mut self, mut data: &[u8]) -> usize {
        let mut done = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip == 0 && self.fin {
                    done += 1;
                }
                continue;
            }
            self.hdr.push(data[0]);
            data = &data[1..];
            if let Ok(wskit::frame::Status::Complete((h, _))) = wskit::frame::decode_header(&self.hdr) {
                self.hdr.clear();
                let data_frame = !h.opcode.is_control();
                self.fin = h.fin && data_frame;
                self.skip = h.len;
                if h.len == 0 && self.fin {
                    done += 1;
                }
            }
        }
        done
    }
}

fn frame(size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    wskit::frame::write_client_frame(&mut v, true, 0, wskit::frame::OpCode::Binary, [0x12, 0x34, 0x56, 0x78], &payload);
    v
}

fn deflated_frame(text: &[u8]) -> Vec<u8> {
    let mut z = Vec::new();
    wskit::deflate::Compressor::new(6, 15).compress(text, &mut z);
    let mut v = Vec::new();
    wskit::frame::write_client_frame(&mut v, true, 0b100, wskit::frame::OpCode::Text, [0x12, 0x34, 0x56, 0x78], &z);
    v
}

fn text_frame(text: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    wskit::frame::write_client_frame(&mut v, true, 0, wskit::frame::OpCode::Text, [0x12, 0x34, 0x56, 0x78], text);
    v
}

/// Writes `data` through TLS (if any) and flushes what can go now; the socket is non-blocking, so a full buffer
/// is retried until it drains (the load keeps one message in flight, so this is rare).
fn send(c: &mut Client, data: &[u8]) {
    match &mut c.tls {
        None => write_fully(&mut c.sock, data),
        Some(tls) => {
            tls.writer().write_all(data).unwrap();
            flush_tls(tls, &mut c.sock);
        }
    }
}

fn flush_tls(tls: &mut rustls::ClientConnection, sock: &mut TcpStream) {
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out).unwrap();
    }
    write_fully(sock, &out);
}

fn write_fully(sock: &mut TcpStream, mut data: &[u8]) {
    while !data.is_empty() {
        match sock.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("write: {e}"),
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

fn upgrade_request(addr: SocketAddr, deflate: bool) -> String {
    let ext = if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n" } else { "" };
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    )
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A blocking client: connect (from `from`, a source address and port, if given), upgrade, and return the socket.
fn blocking_client(addr: SocketAddr, from: Option<SocketAddr>) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(from) = from {
        // An explicit port: binding to port 0 searches past every port in TIME_WAIT (over a millisecond each
        // after a few runs); SO_REUSEADDR lets a port in TIME_WAIT be bound (connect still checks the 4-tuple).
        sock.set_reuse_address(true).unwrap();
        sock.bind(&from.into()).expect("bind a loopback source address");
    }
    sock.connect(&addr.into()).expect("connect");
    let mut s: std::net::TcpStream = sock.into();
    s.set_nodelay(true).unwrap();
    s.write_all(upgrade_request(addr, false).as_bytes()).unwrap();
    // The server sends nothing after its answer until we send, so reading whole chunks cannot take more.
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed during the handshake");
        head.extend_from_slice(&b[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "handshake refused");
    s
}

/// `--idle N`: N idle connections, the server's RSS per connection (over all N, and over the second half alone:
/// what one more costs), and a new client's latency meanwhile.
fn idle(addr: SocketAddr, n: usize, server_pid: Option<u32>) {
    let before = server_pid.map(rss_kib).unwrap_or(0);
    let t = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut half = 0;
    for i in 0..n {
        if i == n / 2 {
            std::thread::sleep(Duration::from_millis(200));
            half = server_pid.map(rss_kib).unwrap_or(0);
        }
        // From 127.0.0.2, .3, …, ports 20,000–59,999 of each.
        let ip = std::net::Ipv4Addr::new(127, 0, (i / 40_000 / 250) as u8, (2 + (i / 40_000) % 250) as u8);
        let port = (20_000 + i % 40_000) as u16;
        held.push(blocking_client(addr, Some(SocketAddr::new(ip.into(), port))));
    }
    let open_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = server_pid.map(rss_kib).unwrap_or(0);
    let per_conn = (after.saturating_sub(before)) * 1024 / n.max(1) as u64;
    // Each connection of the second half: the server's one-time costs (its read buffer, pools, tables' first
    // growth) are in the first.
    let marginal = (after.saturating_sub(half)) * 1024 / (n - n / 2).max(1) as u64;
    let t = Instant::now();
    let mut c = blocking_client(addr, None);
    let handshake_us = t.elapsed().as_micros();
    let msg = frame(20);
    let mut buf = [0u8; 64];
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        c.write_all(&msg).unwrap();
        let mut got = 0;
        while got < 22 {
            got += c.read(&mut buf[got..22]).unwrap();
        }
        samples.push(t.elapsed().as_micros() as u64);
        std::thread::sleep(Duration::from_millis(5));
    }
    samples.sort_unstable();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "idle={n} open_secs={open_secs:.1} rss_before_kib={before} rss_after_kib={after} bytes_per_idle={per_conn} \
         bytes_per_idle_marginal={marginal} \
         new_handshake_us={handshake_us} new_p50_us={} new_p99_us={} new_max_us={}",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    drop(held);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = arg(&args, "--addr", "127.0.0.1:9001".parse().unwrap());
    if let Some(n) = args.windows(2).find(|w| w[0] == "--idle").and_then(|w| w[1].parse().ok()) {
        return idle(addr, n, args.windows(2).find(|w| w[0] == "--server-pid").and_then(|w| w[1].parse().ok()));
    }
    let conns: usize = arg(&args, "--conns", 100);
    let size: usize = arg(&args, "--size", 20);
    let secs: f64 = arg(&args, "--secs", 5.0);
    let warmup: f64 = arg(&args, "--warmup", 1.0);
    let latency = args.iter().any(|a| a == "--latency");
    let deflate = args.iter().any(|a| a == "--deflate");
    let tls = args.iter().any(|a| a == "--tls").then(|| wskit_bench::tls_config(&arg(&args, "--ca", String::new())));
    // With deflate, 64 different texts in turn (a server keeping its compression context cannot just repeat
    // one message's back-references), or with `--text pages` the 14 chat pages of 64 KiB (`--size` unused).
    let texts: Vec<Vec<u8>> = match (deflate, arg(&args, "--text", String::from("json")).as_str()) {
        (false, _) => vec![],
        (true, "pages") => wskit_bench::texts::chat_pages(),
        (true, _) => (0..64).map(|i| wskit_bench::json_text(size, i)).collect(),
    };
    let plain: Vec<Vec<u8>> = if deflate { texts.iter().map(|t| text_frame(t)).collect() } else { vec![frame(size)] };
    let compressed: Vec<Vec<u8>> = texts.iter().map(|t| deflated_frame(t)).collect();
    let mut turn = 0usize;
    let mut negotiated = false;
    let request = upgrade_request(addr, deflate);

    let mut poll = Poll::new().unwrap();
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let std_sock = std::net::TcpStream::connect(addr).expect("connect");
        std_sock.set_nodelay(true).unwrap();
        std_sock.set_nonblocking(true).unwrap();
        let mut sock = TcpStream::from_std(std_sock);
        poll.registry().register(&mut sock, Token(i), Interest::READABLE).unwrap();
        let tls = tls.as_ref().map(|cfg| {
            rustls::ClientConnection::new(cfg.clone(), rustls::pki_types::ServerName::try_from("localhost").unwrap())
                .unwrap()
        });
        let mut c = Client {
            sock,
            tls,
            handshaken: false,
            head: Vec::new(),
            frames: Frames::default(),
            sent_at: Instant::now(),
        };
        send(&mut c, request.as_bytes());
        clients.push(c);
    }
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 1 << 20];
    let mut plain_buf = Vec::new();
    let start = Instant::now();
    // The measured span in wall-clock seconds (`from_unix`, `to_unix`), to match a trace of the server to it.
    let from_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) + warmup;
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut count: u64 = 0;
    let mut wire: u64 = 0;
    let mut samples: Vec<u32> = Vec::new();
    let mut open = 0usize;
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        let now = Instant::now();
        let measuring = now >= measure_from;
        for ev in events.iter() {
            let c = &mut clients[ev.token().0];
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => panic!("server closed a connection"),
                    Ok(n) => {
                        let mut data = &buf[..n];
                        if let Some(tls) = &mut c.tls {
                            let mut rd = data;
                            plain_buf.clear();
                            while !rd.is_empty() {
                                tls.read_tls(&mut rd).unwrap();
                                tls.process_new_packets().expect("TLS");
                            }
                            let _ = tls.reader().read_to_end(&mut plain_buf);
                            flush_tls(tls, &mut c.sock);
                            data = &plain_buf;
                        }
                        if !c.handshaken {
                            c.head.extend_from_slice(data);
                            let Some(p) = c.head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                            assert!(c.head.starts_with(b"HTTP/1.1 101"), "handshake refused");
                            negotiated = deflate
                                && String::from_utf8_lossy(&c.head[..p])
                                    .to_ascii_lowercase()
                                    .contains("permessage-deflate");
                            c.handshaken = true;
                            open += 1;
                            let extra = c.head[p + 4..].to_vec();
                            data = &[];
                            c.frames.feed(&extra);
                            c.sent_at = now;
                            turn += 1;
                            let msg = if negotiated {
                                &compressed[turn % compressed.len()]
                            } else {
                                &plain[turn % plain.len()]
                            };
                            send(c, msg);
                        }
                        if measuring {
                            wire += data.len() as u64;
                        }
                        let done = c.frames.feed(data);
                        for _ in 0..done {
                            if measuring {
                                count += 1;
                                if latency {
                                    samples
                                        .push(now.duration_since(c.sent_at).as_micros().min(u32::MAX as u128) as u32);
                                }
                            }
                            c.sent_at = now;
                            turn += 1;
                            let msg = if negotiated {
                                &compressed[turn % compressed.len()]
                            } else {
                                &plain[turn % plain.len()]
                            };
                            send(c, msg);
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
    let rate = count as f64 / secs;
    let mut line = format!("conns={conns} open={open} size={size} msgs={count} msgs_per_s={rate:.0}");
    line += &format!(" from_unix={from_unix:.6} to_unix={:.6}", from_unix + secs);
    if deflate {
        line += &format!(
            " deflate={} wire_ratio={:.4}",
            u8::from(negotiated),
            wire as f64 / count.max(1) as f64 / size as f64
        );
    }
    if latency && !samples.is_empty() {
        samples.sort_unstable();
        let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        line += &format!(" p50_us={} p99_us={} p999_us={} max_us={}", q(0.50), q(0.99), q(0.999), q(1.0));
        if let Some(path) = args.windows(2).find(|w| w[0] == "--hist").map(|w| &w[1]) {
            let mut text = String::new();
            for run in samples.chunk_by(|a, b| a == b) {
                text += &format!("{} {}\n", run[0], run.len());
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("--hist file");
            f.write_all(text.as_bytes()).expect("--hist write");
        }
    }
    println!("{line}");
}
