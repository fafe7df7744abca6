//! One-thread load generator (the uWebSockets `load_test` method): N connections, each with one masked binary
//! message in flight; as soon as a connection has its echo back it sends the next one.
//!
//! `load --addr 127.0.0.1:9001 --conns 100 --size 20 --secs 5 [--latency] [--tls --ca cert.pem]`
//! prints `msgs/s` (and p50/p99/p99.9 round-trip latency with `--latency`) as one `key=value` line.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Client {
    sock: TcpStream,
    tls: Option<rustls::ClientConnection>,
    handshaken: bool,
    head: Vec<u8>,
    pending: usize,
    sent_at: Instant,
}

fn frame(size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    wskit::frame::write_client_frame(&mut v, true, 0, wskit::frame::OpCode::Binary, [0x12, 0x34, 0x56, 0x78], &payload);
    v
}

fn response_len(size: usize) -> usize {
    size + if size < 126 {
        2
    } else if size < 65536 {
        4
    } else {
        10
    }
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

fn tls_config(ca: &str) -> Arc<rustls::ClientConfig> {
    use base64::Engine;
    let text = std::fs::read_to_string(ca).expect("--ca file");
    let mut roots = rustls::RootCertStore::empty();
    let mut body = String::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
        } else if l.starts_with("-----END CERTIFICATE") {
            let der = base64::engine::general_purpose::STANDARD.decode(&body).unwrap();
            roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
            body.clear();
            inside = false;
        } else if inside {
            body.push_str(l.trim());
        }
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = arg(&args, "--addr", "127.0.0.1:9001".parse().unwrap());
    let conns: usize = arg(&args, "--conns", 100);
    let size: usize = arg(&args, "--size", 20);
    let secs: f64 = arg(&args, "--secs", 5.0);
    let warmup: f64 = arg(&args, "--warmup", 1.0);
    let latency = args.iter().any(|a| a == "--latency");
    let tls = args.iter().any(|a| a == "--tls").then(|| tls_config(&arg(&args, "--ca", String::new())));
    let msg = frame(size);
    let expect = response_len(size);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );

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
        let mut c = Client { sock, tls, handshaken: false, head: Vec::new(), pending: 0, sent_at: Instant::now() };
        send(&mut c, request.as_bytes());
        clients.push(c);
    }
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 1 << 20];
    let mut plain = Vec::new();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut count: u64 = 0;
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
                            plain.clear();
                            while !rd.is_empty() {
                                tls.read_tls(&mut rd).unwrap();
                                tls.process_new_packets().expect("TLS");
                            }
                            let _ = tls.reader().read_to_end(&mut plain);
                            flush_tls(tls, &mut c.sock);
                            data = &plain;
                        }
                        if !c.handshaken {
                            c.head.extend_from_slice(data);
                            let Some(p) = c.head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                            assert!(c.head.starts_with(b"HTTP/1.1 101"), "handshake refused");
                            c.handshaken = true;
                            open += 1;
                            let extra = c.head.len() - (p + 4);
                            c.pending = extra;
                            data = &[];
                            c.sent_at = now;
                            send(c, &msg);
                        }
                        c.pending += data.len();
                        while c.pending >= expect {
                            c.pending -= expect;
                            if measuring {
                                count += 1;
                                if latency {
                                    samples
                                        .push(now.duration_since(c.sent_at).as_micros().min(u32::MAX as u128) as u32);
                                }
                            }
                            c.sent_at = now;
                            send(c, &msg);
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
    if latency && !samples.is_empty() {
        samples.sort_unstable();
        let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        line += &format!(" p50_us={} p99_us={} p999_us={}", q(0.50), q(0.99), q(0.999));
    }
    println!("{line}");
}
