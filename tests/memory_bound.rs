//! The memory bound of `docs/robustness.md`, tested: hostile clients each push one part of a connection's memory
//! to its limit — a request head one byte short of the limit, a compressed message one fragment short of the
//! message limit (with a compressor of its own: context takeover), a flood that is never read (the outbound
//! queue up to the point where reading stops), a ping flood that is never read — and the echo server's RSS (in a
//! child process) stays under baseline + N × [`Config::memory_bound`], and each kind under the parts it
//! pushes. Alone in its file: it opens 400 sockets and measures a child's RSS.

#![cfg(feature = "deflate")]

mod common;
use common::*;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wskit::deflate::Compressor;
use wskit::frame::{write_client_frame, OpCode};
use wskit::Config;

child_server_entry!();

const PER_KIND: usize = 100;
const MAX: usize = 256 * 1024;
/// The server's configuration: smaller limits than the defaults so the test is quick, a compressor per
/// connection (the costlier deflate setting), and deadlines far away.
const PAIRS: &str = "max_messages_buffering=100;write_high_water=262144;max_queued_bytes=2097152;timeout=120;\
                     handshake_timeout=120;deflate_server_no_context_takeover=false;max_connections_per_ip=0;\
                     memory_budget=0";

/// The configuration the child server runs with (`ChildServer::start_with(MAX, …, PAIRS, …)`).
fn config() -> Config {
    let c = Config::new().max_payload_size(MAX).max_message_size(MAX).max_frames_per_message(usize::MAX);
    with_pairs(c, PAIRS)
}

/// Pseudo-random bytes (xorshift): incompressible, so compressed frames stay as large as their payload.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn connect_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request("/").as_bytes()).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    s
}

/// Writes `frame` again and again to every socket until none takes a byte more for half a second (the server
/// stopped reading them and the kernel buffers between are full) or `most` has passed. Returns the bytes written.
fn flood(socks: &mut [TcpStream], frame: &[u8], most: Duration) -> usize {
    let start = Instant::now();
    for s in socks.iter() {
        s.set_nonblocking(true).unwrap();
    }
    let mut at = vec![0usize; socks.len()];
    let mut total = 0;
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_millis(500) && start.elapsed() < most {
        for (s, at) in socks.iter_mut().zip(at.iter_mut()) {
            for _ in 0..64 {
                match s.write(&frame[*at..]) {
                    Ok(n) => {
                        total += n;
                        *at = (*at + n) % frame.len();
                        last_progress = Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("flood write after {total} bytes: {e}"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    total
}

fn settle(pid: u32) -> u64 {
    let last_t = Instant::now();
    let mut last = proc_status_kib(pid, "VmRSS");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = proc_status_kib(pid, "VmRSS");
        if now.abs_diff(last) < 256 {
            eprintln!("settled at {now} KiB after {:?}", last_t.elapsed());
            return now;
        }
        last = now;
    }
}

#[test]
fn hostile_clients_stay_under_the_computed_bound() {
    let parts = config().memory_bound(false);
    let bound = parts.total() as u64;
    let child = ChildServer::start_with(MAX, None, PAIRS, None);
    let (pid, addr) = (child.pid(), child.addr);
    let base = settle(pid);
    let mut rss = vec![("baseline", base)];
    let mut keep: Vec<TcpStream> = Vec::new();

    // 1. Request heads one byte short of the limit, never finished.
    let mut head = upgrade_request("/").into_bytes();
    head.truncate(head.len() - 4);
    let pad = format!("\r\nX-Pad: {}", "p".repeat(8 * 1024 - head.len() - 12));
    head.extend_from_slice(pad.as_bytes());
    assert!(head.len() < 8 * 1024);
    for _ in 0..PER_KIND {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&head).unwrap();
        keep.push(s);
    }
    rss.push(("request heads", settle(pid)));

    // 2. permessage-deflate with context takeover both ways: one compressed message answered (the server's own
    // compressor is now live), then a compressed message one byte short of the limit, left unfinished.
    let req = upgrade_request("/").replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
    let body = noise(MAX - 1, 7);
    for i in 0..PER_KIND {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let h = read_head(&mut s);
        assert!(h.contains("permessage-deflate") && !h.contains("server_no_context_takeover"), "{h}");
        let mut z = Compressor::new(6, 15);
        let mut c = Vec::new();
        z.compress(&noise(4096, i as u64 + 1), &mut c);
        let mut f = Vec::new();
        write_client_frame(&mut f, true, 0b100, OpCode::Binary, [1, 2, 3, 4], &c);
        s.write_all(&f).unwrap();
        let (_, op, _) = read_frame(&mut s).unwrap();
        assert_eq!(op, 2);
        // The long message: its first fragments now, the last never.
        c.clear();
        z.compress(&body, &mut c);
        let half = c.len() / 2;
        f.clear();
        write_client_frame(&mut f, false, 0b100, OpCode::Binary, [1, 2, 3, 4], &c[..half]);
        write_client_frame(&mut f, false, 0, OpCode::Continuation, [1, 2, 3, 4], &c[half..]);
        s.write_all(&f).unwrap();
        keep.push(s);
    }
    rss.push(("compressed messages held open", settle(pid)));

    // 3. Echo floods never read: the server queues the echoes until its high-water mark, then stops reading.
    let mut flooders: Vec<TcpStream> = (0..PER_KIND).map(|_| connect_small_rcvbuf(addr)).collect();
    let frame = client_frame(true, OpCode::Binary, &noise(64 * 1024, 3));
    let flooded = flood(&mut flooders, &frame, Duration::from_secs(30));
    rss.push(("echo floods never read", settle(pid)));

    // 4. Ping floods never read, for 3 s: waiting pongs are coalesced, so the server never stops reading them.
    let mut pingers: Vec<TcpStream> = (0..PER_KIND).map(|_| connect_small_rcvbuf(addr)).collect();
    let ping = client_frame(true, OpCode::Ping, &[9; 125]);
    let pinged = flood(&mut pingers, &ping, Duration::from_secs(3));
    let last = settle(pid);
    rss.push(("ping floods never read", last));

    let n = 4 * PER_KIND as u64;
    let used = (last.saturating_sub(base)) * 1024;
    let mut prev = base;
    for (what, kib) in &rss {
        eprintln!("{what:>32}: RSS {kib} KiB (+{} KiB, {} B per connection)", kib - prev, (kib - prev) * 1024 / 100);
        prev = *kib;
    }
    eprintln!(
        "flooded {} MiB of echoes and {} MiB of pings; {n} hostile connections hold {} MiB = {} KiB each; the bound \
         is {} KiB each ({:.0} % used on average)",
        flooded >> 20,
        pinged >> 20,
        used >> 20,
        used / n / 1024,
        bound / 1024,
        used as f64 / (n * bound) as f64 * 100.0
    );
    // The server still serves everyone else.
    let mut s = raw_client(addr);
    s.write_all(&client_frame(true, OpCode::Text, b"still here")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().2, b"still here");
    assert!(used <= n * bound, "{used} bytes held by {n} connections > {n} × {bound}");
    // Each kind stays under the parts of the bound it pushes (these would fail if a limit stopped holding).
    let p = parts;
    let limits =
        [p.slot + p.handshake, p.slot + p.message + p.inflate + p.compressor, p.slot + p.outbound, p.slot + p.control];
    for (w, limit) in rss.windows(2).zip(limits) {
        let per = (w[1].1.saturating_sub(w[0].1)) * 1024 / PER_KIND as u64;
        eprintln!(
            "{:>32}: {per} B per connection, {:.0} % of its parts of the bound ({limit} B)",
            w[1].0,
            per as f64 / limit as f64 * 100.0
        );
        assert!(per <= limit as u64, "{}: {per} B per connection > {limit}", w[1].0);
    }
    drop(keep);
}
