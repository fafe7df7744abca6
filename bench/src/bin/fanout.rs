//! Fan-out load: one publisher, N subscribers on one topic, spread over one or more server nodes (e.g. two
//! `examples/broadcast` processes bridged by Redis). The publisher sends `--rate` messages per second carrying
//! the send time; every subscriber records publish-to-receive latency.
//!
//! `fanout --addrs 127.0.0.1:9002[,127.0.0.1:9003] --subs 10000 --rate 20 --secs 10 --size 64`
//! prints one `key=value` line: deliveries per second, the share delivered, and p50/p99/p99.9 latency in µs.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Opens a WebSocket to `/topic` with a blocking handshake, then hands back a non-blocking socket.
fn open(addr: SocketAddr, topic: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "GET /{topic} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("handshake");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s.set_nonblocking(true).unwrap();
    s
}

/// Parses whole server frames from `buf`, returning each binary payload's first 8 bytes (the send time).
fn frames(buf: &mut Vec<u8>, mut f: impl FnMut(u64)) {
    let mut pos = 0;
    loop {
        let b = &buf[pos..];
        if b.len() < 2 {
            break;
        }
        let (len, hdr) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if b.len() < hdr + len {
            break;
        }
        if b[0] & 0x0f == 2 && len >= 8 {
            f(u64::from_be_bytes(b[hdr..hdr + 8].try_into().unwrap()));
        }
        pos += hdr + len;
    }
    buf.drain(..pos);
}

fn main() {
    let addrs: Vec<SocketAddr> =
        arg("--addrs", "127.0.0.1:9002".to_string()).split(',').map(|a| a.parse().expect("HOST:PORT")).collect();
    let subs: usize = arg("--subs", 1000);
    let rate: f64 = arg("--rate", 20.0);
    let secs: f64 = arg("--secs", 10.0);
    let size: usize = arg::<usize>("--size", 64).max(8);
    let topic = "fanout";

    let mut poll = Poll::new().unwrap();
    let mut socks = Vec::with_capacity(subs);
    for i in 0..subs {
        let mut s = TcpStream::from_std(open(addrs[i % addrs.len()], topic));
        poll.registry().register(&mut s, Token(i), Interest::READABLE).unwrap();
        socks.push((s, Vec::new()));
    }
    let mut publisher = open(addrs[0], topic);
    publisher.set_nonblocking(false).unwrap();
    // Let every node subscribe to the topic (through the bridge, too).
    std::thread::sleep(Duration::from_millis(500));

    let base = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let end = base + Duration::from_secs_f64(secs);
    let mut next = base;
    let mut published = 0u64;
    let mut lat_us: Vec<u32> = Vec::with_capacity((rate * secs) as usize * subs);
    let mut events = Events::with_capacity(4096);
    let mut rbuf = vec![0u8; 64 * 1024];
    let drain_until = end + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        if now < end && now >= next {
            let mut payload = vec![0u8; size];
            payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
            let mut f = Vec::new();
            wskit::frame::write_client_frame(&mut f, true, 0, wskit::frame::OpCode::Binary, [1, 2, 3, 4], &payload);
            publisher.write_all(&f).unwrap();
            published += 1;
            next += period;
        }
        if now >= drain_until || (now >= end && lat_us.len() as u64 >= published * subs as u64) {
            break;
        }
        let wait = if now < end { next.saturating_duration_since(Instant::now()) } else { Duration::from_millis(50) };
        poll.poll(&mut events, Some(wait.min(Duration::from_millis(50)))).unwrap();
        for ev in events.iter() {
            let (s, buf) = &mut socks[ev.token().0];
            loop {
                match s.read(&mut rbuf) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&rbuf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("subscriber: {e}"),
                }
            }
            let now_ns = base.elapsed().as_nanos() as u64;
            frames(buf, |sent| lat_us.push(((now_ns.saturating_sub(sent)) / 1000) as u32));
        }
    }
    let elapsed = secs;
    let delivered = lat_us.len() as f64;
    lat_us.sort_unstable();
    let pct = |p: f64| {
        lat_us.get(((lat_us.len() as f64 * p) as usize).min(lat_us.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    println!(
        "nodes={} subs={subs} published={published} deliveries_per_s={:.0} delivered_share={:.4} p50_us={} p99_us={} p999_us={}",
        addrs.len(),
        delivered / elapsed,
        delivered / (published as f64 * subs as f64),
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
}
