//! Hostile load against the examples at their defaults (`examples/echo`, `examples/chat`), each attack with a
//! victim beside it: a client sending 20 B every 10 ms (round trips measured) and a new client every 250 ms
//! (connect, upgrade, first answer measured), and the server's RSS sampled throughout. The shapes are those of
//! the fairness and memory issue: a deflate echo of well-compressed input (F1, F2), a chat publish to many silent
//! subscribers (F3), deflate echoes the server cannot shrink, never read (F4), one address taking every
//! descriptor (F5).
//!
//! The tests run short forms in CI (debug builds, generous bounds that the unfixed server misses by seconds or
//! gigabytes); `cargo test --release --test hostile -- --ignored --nocapture --test-threads 1` runs the full
//! forms and prints the rows of the attack table in docs/robustness.md.

#![cfg(feature = "deflate")]

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wskit::deflate::Compressor;
use wskit::frame::{write_client_frame, OpCode};

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

// ── the server under attack ────────────────────────────────────────────────────────────────────────────────────

/// An example binary serving on a free port, killed when dropped.
struct Target {
    _child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Target {
    fn start(example: &str, args: &[&str]) -> Target {
        let bin = example_binary(example, &[]);
        // WSKIT_HOSTILE_SET="k=v k=v" adds configuration (for experiments).
        let extra: Vec<String> = std::env::var("WSKIT_HOSTILE_SET")
            .unwrap_or_default()
            .split_whitespace()
            .flat_map(|kv| ["--set".to_string(), kv.to_string()])
            .collect();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args).args(&extra).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let (child, addr) = spawn_listening(&mut cmd);
        let pid = child.id();
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()), "{example} did not start");
        Target { _child: Child(child), pid, addr }
    }

    fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid, "VmRSS")
    }
}

/// Samples the target's RSS every 50 ms; `peak` is the highest seen.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(v) = status.lines().find_map(|l| l.strip_prefix("VmRSS:")) {
                        let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                        p.fetch_max(kib, Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch { stop, peak, thread: Some(thread) }
    }

    fn peak_mib(mut self) -> f64 {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Relaxed) as f64 / 1024.0
    }
}

// ── clients ────────────────────────────────────────────────────────────────────────────────────────────────────

/// Connects from `src` (a loopback address: per-address limits see each source apart) and sends an upgrade
/// request for `path` with `extra` header lines; returns the socket and the answer's head.
fn upgrade_from(src: Ipv4Addr, addr: SocketAddr, path: &str, extra: &str) -> std::io::Result<(TcpStream, String)> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let mut s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes())?;
    let head = read_head(&mut s);
    if head.is_empty() {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "no answer"));
    }
    Ok((s, head))
}

/// Prints when `WSKIT_HOSTILE_TRACE` is set.
fn trace(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("WSKIT_HOSTILE_TRACE").is_some() {
        eprintln!("{what}");
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What the victims saw.
#[derive(Debug, Default)]
struct Seen {
    /// Round trips of the steady client's messages (a message never answered counts as the time until the end).
    rtt: Vec<Duration>,
    /// Time from connect to the first answer, for each new client.
    new: Vec<Duration>,
    /// Steady messages not answered (connection lost or timed out).
    lost: usize,
    /// New clients that did not get in.
    refused: usize,
}

impl Seen {
    fn p99(&self) -> Duration {
        quantile(&self.rtt, 0.99)
    }
    fn new_max(&self) -> Duration {
        self.new.last().copied().unwrap_or(Duration::MAX)
    }
    fn summary(&self) -> String {
        format!(
            "victim p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} messages ({} lost); new clients {} in, max {:.1} ms ({} refused)",
            ms(quantile(&self.rtt, 0.5)),
            ms(self.p99()),
            ms(quantile(&self.rtt, 1.0)),
            self.rtt.len(),
            self.lost,
            self.new.len(),
            ms(self.new.last().copied().unwrap_or_default()),
            self.refused
        )
    }
}

/// How the victims reach the server: the echo (a message comes back) or the chat (a message published by one
/// user reaches another; a new user gets its welcome), in a room of their own or in the flooded lobby, where
/// every flood message reaches them too.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Echo,
    Chat(&'static str),
    /// `examples/broadcast`: messages reach the topic's other subscribers verbatim; a new client only upgrades.
    Topic(&'static str),
}

impl Kind {
    /// The path a victim called `name` opens.
    fn path(self, name: &str) -> String {
        match self {
            Kind::Echo => "/".to_string(),
            Kind::Chat(room) => format!("/ws?name={name}&room={room}"),
            Kind::Topic(_) if name == "probe" => "/probe".to_string(),
            Kind::Topic(topic) => format!("/{topic}"),
        }
    }
}

/// The steady client and the new-client probe, on threads of their own until [`Victims::finish`].
struct Victims {
    stop: Arc<AtomicBool>,
    steady: JoinHandle<(Vec<Duration>, usize)>,
    probe: JoinHandle<(Vec<Duration>, usize)>,
}

impl Victims {
    fn start(kind: Kind, addr: SocketAddr) -> Victims {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let steady = std::thread::spawn(move || match kind {
            Kind::Echo => steady_echo(addr, &s),
            Kind::Chat(_) | Kind::Topic(_) => steady_chat(addr, kind, &s),
        });
        let s = stop.clone();
        let probe = std::thread::spawn(move || probe_new(kind, addr, &s));
        std::thread::sleep(Duration::from_millis(300));
        Victims { stop, steady, probe }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Relaxed);
        let (mut rtt, lost) = self.steady.join().unwrap();
        let (mut new, refused) = self.probe.join().unwrap();
        rtt.sort();
        new.sort();
        Seen { rtt, new, lost, refused }
    }
}

const STEADY_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const STEADY_TO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// Sends 20 B every 10 ms and times each echo (a read timeout of 5 s counts as lost).
fn steady_echo(addr: SocketAddr, stop: &AtomicBool) -> (Vec<Duration>, usize) {
    let (mut s, head) = upgrade_from(STEADY_FROM, addr, "/", "").expect("steady client connects");
    assert!(head.starts_with("HTTP/1.1 101"), "steady client refused: {head}");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = client_frame(true, OpCode::Binary, b"twenty bytes, steady");
    let (mut rtt, mut lost) = (Vec::new(), 0);
    let mut next = Instant::now();
    while !stop.load(Relaxed) {
        let t0 = Instant::now();
        let ok = s.write_all(&frame).is_ok()
            && loop {
                match read_frame(&mut s) {
                    Ok((_, 0x2, p)) if p == b"twenty bytes, steady" => break true,
                    Ok((_, 0x8, _)) | Err(_) => break false,
                    Ok(_) => continue,
                }
            };
        if !ok {
            lost += 1;
            rtt.push(t0.elapsed());
            break;
        }
        rtt.push(t0.elapsed());
        next += Duration::from_millis(10);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    (rtt, lost)
}

/// The chat's steady pair: one user says something every 10 ms, another times its arrival.
fn steady_chat(addr: SocketAddr, kind: Kind, stop: &AtomicBool) -> (Vec<Duration>, usize) {
    let (mut a, head) = upgrade_from(STEADY_FROM, addr, &kind.path("a"), "").expect("chat user a");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (mut b, head) = upgrade_from(STEADY_TO, addr, &kind.path("b"), "").expect("chat user b");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // User a reads what the room says too (a user that does not read is a slow consumer).
    let ra = a.try_clone().unwrap();
    std::thread::spawn(move || drain(ra, Arc::default()));
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sent, done) = (sent.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut rtt, mut next) = (Vec::new(), 0usize);
            while !done.load(Relaxed) {
                let (op, p) = match read_frame(&mut b) {
                    Ok((_, op, p)) => (op, p),
                    Err(e) => {
                        trace(format_args!("chat user b: {e}"));
                        break;
                    }
                };
                if op == 0x8 {
                    trace(format_args!("chat user b closed: {:?}", &p[..p.len().min(40)]));
                    break;
                }
                // {"type":"message","from":"a","text":"steady 000123 ....."}, or the line as it was sent
                let text = String::from_utf8_lossy(&p[..p.len().min(80)]).into_owned();
                let mark = if matches!(kind, Kind::Chat(_)) { "\"from\":\"a\",\"text\":\"steady " } else { "steady " };
                if let Some(i) = text.find(mark).filter(|&i| text.len() >= i + mark.len() + 6) {
                    let at = i + mark.len();
                    if let Ok(n) = text[at..at + 6].parse::<usize>() {
                        if let Some(t) = sent.lock().unwrap().get(n) {
                            if t.elapsed() > Duration::from_millis(50) {
                                trace(format_args!("slow: message {n} took {:?}", t.elapsed()));
                            }
                            rtt.push(t.elapsed());
                        }
                        next = n + 1;
                    }
                }
            }
            (rtt, next)
        })
    };
    let mut n = 0usize;
    let mut next = Instant::now();
    while !stop.load(Relaxed) {
        sent.lock().unwrap().push(Instant::now());
        let msg = format!("steady {n:06} abcdefg");
        if a.write_all(&client_frame(true, OpCode::Text, msg.as_bytes())).is_err() {
            break;
        }
        n += 1;
        next += Duration::from_millis(10);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Relaxed);
    let _ = a.write_all(&client_frame(true, OpCode::Text, b"bye"));
    let (mut rtt, got) = reader.join().unwrap();
    // Messages never seen count as taking until now.
    let lost = n.saturating_sub(got);
    let sent = sent.lock().unwrap();
    rtt.extend(sent[got.min(sent.len())..].iter().map(|t| t.elapsed()));
    (rtt, lost)
}

/// Every 250 ms a new client (from its own address) connects, upgrades and waits for its first answer: the echo
/// of a 20-byte message, or the chat's welcome.
fn probe_new(kind: Kind, addr: SocketAddr, stop: &AtomicBool) -> (Vec<Duration>, usize) {
    let (mut times, mut refused) = (Vec::new(), 0);
    let mut i = 0u8;
    while !stop.load(Relaxed) {
        i = i.wrapping_add(1);
        let src = Ipv4Addr::new(127, 0, 3, i.max(1));
        let t0 = Instant::now();
        let path = kind.path("probe");
        let ok = match upgrade_from(src, addr, &path, "") {
            Ok((mut s, head)) if head.starts_with("HTTP/1.1 101") => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                match kind {
                    Kind::Echo => {
                        let _ = s.write_all(&client_frame(true, OpCode::Binary, b"new client"));
                        matches!(read_frame(&mut s), Ok((_, 0x1 | 0x2, _)))
                    }
                    Kind::Chat(_) => matches!(read_frame(&mut s), Ok((_, 0x1 | 0x2, _))),
                    Kind::Topic(_) => true,
                }
            }
            _ => false,
        };
        if ok {
            times.push(t0.elapsed());
        } else {
            refused += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (times, refused)
}

// ── attacks ────────────────────────────────────────────────────────────────────────────────────────────────────

/// Pseudo-random bytes (xorshift).
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

/// One compressed message (RSV1, tail stripped) of `payload`, compressed at level 9 with a 32 KiB window.
fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let mut z = Vec::new();
    Compressor::new(9, 15).compress(payload, &mut z);
    let mut f = Vec::new();
    write_client_frame(&mut f, true, 0b100, OpCode::Binary, MASK, &z);
    f
}

/// Totals an attack reports.
#[derive(Debug, Default)]
struct Attack {
    sent: AtomicUsize,
    received: AtomicUsize,
    /// Of the attacker's connections that were held, those the server ended.
    ended: AtomicUsize,
    /// Upgrades answered 101, and refused (any other status).
    upgraded: AtomicUsize,
    refused: AtomicUsize,
}

impl Attack {
    fn summary(&self) -> String {
        format!(
            "sent {:.1} MiB, received {:.1} MiB, upgraded {}, refused {}, ended by the server {}",
            self.sent.load(Relaxed) as f64 / 1048576.0,
            self.received.load(Relaxed) as f64 / 1048576.0,
            self.upgraded.load(Relaxed),
            self.refused.load(Relaxed),
            self.ended.load(Relaxed)
        )
    }
}

/// Whether the server ended this connection: what it holds is read (without waiting) until the end, a reset, or
/// nothing more for now.
fn ended(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Reads everything a socket gets, counting it, and notes a close frame's code (frames are not parsed past the
/// first bytes of each read: the code is found when a read starts with a close frame, which is how it arrives).
fn drain(mut s: TcpStream, stats: Arc<Attack>) {
    let mut buf = vec![0u8; 256 * 1024];
    s.set_read_timeout(None).unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                stats.received.fetch_add(n, Relaxed);
            }
        }
    }
}

/// F1/F2: one client offering permessage-deflate sends 512 KiB of zeros compressed at level 9 (~0.5 KB each)
/// as fast as it can and reads every answer (re-compressed at the server's level, ~12x larger).
fn deflate_zeros(addr: SocketAddr, src: Ipv4Addr, stats: Arc<Attack>, stop: Arc<AtomicBool>) {
    let frame = compressed_frame(&vec![0u8; 512 * 1024]);
    while !stop.load(Relaxed) {
        let Ok((mut s, head)) = upgrade_from(src, addr, "/", "Sec-WebSocket-Extensions: permessage-deflate\r\n") else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if !head.starts_with("HTTP/1.1 101") {
            stats.refused.fetch_add(1, Relaxed);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        stats.upgraded.fetch_add(1, Relaxed);
        let r = s.try_clone().unwrap();
        let st = stats.clone();
        let reader = std::thread::spawn(move || drain(r, st));
        let batch: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 64).collect();
        while !stop.load(Relaxed) {
            if s.write_all(&batch).is_err() {
                break;
            }
            stats.sent.fetch_add(batch.len(), Relaxed);
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = reader.join();
    }
}

/// F3: `subscribers` chat users (or topic subscribers) that never read (from 100 addresses), and one that
/// publishes text messages of `size` control characters (which JSON escapes sixfold) as fast as it can,
/// reconnecting when closed. The chat's users are in the lobby; the topic is `topic`.
fn flood(
    addr: SocketAddr,
    topic: Option<&str>,
    subscribers: usize,
    size: usize,
    stats: Arc<Attack>,
    stop: Arc<AtomicBool>,
) {
    let path = |name: &str| topic.map_or(format!("/ws?name={name}"), |t| format!("/{t}"));
    let mut silent = Vec::new();
    for i in 0..subscribers {
        let src = Ipv4Addr::new(127, 0, 1, 1 + (i % 100) as u8);
        match upgrade_from(src, addr, &path(&format!("s{i}")), "") {
            Ok((s, h)) if h.starts_with("HTTP/1.1 101") => {
                stats.upgraded.fetch_add(1, Relaxed);
                silent.push(s);
            }
            _ => {
                stats.refused.fetch_add(1, Relaxed);
            }
        }
    }
    let text = "\u{1}".repeat(size);
    let frame = client_frame(true, OpCode::Text, text.as_bytes());
    while !stop.load(Relaxed) {
        let Ok((mut s, head)) = upgrade_from(Ipv4Addr::new(127, 0, 0, 7), addr, &path("flood"), "") else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if !head.starts_with("HTTP/1.1 101") {
            stats.refused.fetch_add(1, Relaxed);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let r = s.try_clone().unwrap();
        let st = stats.clone();
        let reader = std::thread::spawn(move || drain(r, st));
        while !stop.load(Relaxed) {
            if s.write_all(&frame).is_err() {
                break;
            }
            stats.sent.fetch_add(frame.len(), Relaxed);
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = reader.join();
    }
    let closed = silent.iter().filter(|s| ended(s)).count();
    stats.ended.store(closed, Relaxed);
}

/// F4: `clients` offering `server_max_window_bits=8` each send `per_client` bytes of compressed messages that
/// inflate to 512 KiB of a 2 KiB block repeated (~5 KB each: the client's 32 KiB window sees the repeats, the
/// server's 256 bytes cannot), and never read.
fn deflate_window8(addr: SocketAddr, clients: usize, per_client: usize, stats: Arc<Attack>, stop: Arc<AtomicBool>) {
    let block = noise(2048, 7);
    let payload: Vec<u8> = block.iter().copied().cycle().take(512 * 1024).collect();
    let frame = compressed_frame(&payload);
    let ext = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n";
    let mut socks = Vec::new();
    for i in 0..clients {
        let src = Ipv4Addr::new(127, 0, 2, 1 + (i % 100) as u8);
        match upgrade_from(src, addr, "/", ext) {
            Ok((s, h)) if h.starts_with("HTTP/1.1 101") => {
                s.set_nonblocking(true).unwrap();
                stats.upgraded.fetch_add(1, Relaxed);
                socks.push((s, 0usize));
            }
            _ => {
                stats.refused.fetch_add(1, Relaxed);
            }
        }
    }
    let mut progress = Instant::now();
    while !stop.load(Relaxed) && progress.elapsed() < Duration::from_secs(2) {
        for (s, at) in socks.iter_mut() {
            while *at < per_client {
                let off = *at % frame.len();
                match s.write(&frame[off..]) {
                    Ok(n) => {
                        *at += n;
                        stats.sent.fetch_add(n, Relaxed);
                        progress = Instant::now();
                    }
                    Err(_) => break,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed = socks.iter().filter(|(s, _)| ended(s)).count();
    stats.ended.store(closed, Relaxed);
}

/// F5: `n` connections from 127.0.0.1, upgraded and then idle; they are held until the attack stops.
fn one_address(addr: SocketAddr, n: usize, stats: Arc<Attack>, stop: Arc<AtomicBool>) {
    let mut held = Vec::new();
    for _ in 0..n {
        if stop.load(Relaxed) {
            break;
        }
        match upgrade_from(Ipv4Addr::LOCALHOST, addr, "/", "") {
            Ok((s, h)) if h.starts_with("HTTP/1.1 101") => {
                stats.upgraded.fetch_add(1, Relaxed);
                held.push(s);
            }
            Ok(_) => {
                stats.refused.fetch_add(1, Relaxed);
            }
            Err(_) => {
                stats.refused.fetch_add(1, Relaxed);
            }
        }
    }
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `attack` against `target` for `secs` with the victims beside it; prints the row.
fn run(
    name: &str,
    kind: Kind,
    target: &Target,
    secs: f64,
    attack: impl FnOnce(SocketAddr, Arc<Attack>, Arc<AtomicBool>) + Send + 'static,
) -> (Seen, Arc<Attack>, f64) {
    // One attack at a time: each measures latency on a two-core machine.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rss = RssWatch::start(target.pid);
    let base = target.rss_kib();
    let victims = Victims::start(kind, target.addr);
    let (stats, stop) = (Arc::new(Attack::default()), Arc::new(AtomicBool::new(false)));
    let (st, sp, addr) = (stats.clone(), stop.clone(), target.addr);
    let attacker = std::thread::spawn(move || attack(addr, st, sp));
    std::thread::sleep(Duration::from_secs_f64(secs));
    let seen = victims.finish();
    stop.store(true, Relaxed);
    attacker.join().unwrap();
    let peak = rss.peak_mib();
    eprintln!(
        "| {name} | {} | RSS {:.0} -> peak {peak:.0} MiB | {} |",
        stats.summary(),
        base as f64 / 1024.0,
        seen.summary()
    );
    (seen, stats, peak)
}

// ── the tests ──────────────────────────────────────────────────────────────────────────────────────────────────

/// Short forms for CI: debug builds on two busy cores, so the bounds are loose; the unfixed server misses them by
/// seconds (F1: the loop never waits for events again while the attacker sends) or gigabytes (F3).
const CI_P99: Duration = Duration::from_millis(200);
const CI_NEW: Duration = Duration::from_millis(500);

fn check(seen: &Seen, p99: Duration, new: Duration) {
    assert_eq!(seen.lost, 0, "the steady client lost messages: {}", seen.summary());
    assert!(seen.p99() < p99, "steady client p99 over {p99:?}: {}", seen.summary());
    assert!(!seen.new.is_empty() && seen.refused == 0, "new clients refused: {}", seen.summary());
    assert!(seen.new_max() < new, "a new client waited over {new:?}: {}", seen.summary());
}

#[test]
fn f1_f2_a_deflate_echo_of_compressed_zeros_does_not_starve_the_loop() {
    let target = Target::start("echo", &[]);
    let (seen, stats, _) = run("F1/F2 deflate echo of zeros", Kind::Echo, &target, 4.0, |a, s, t| {
        deflate_zeros(a, Ipv4Addr::new(127, 0, 0, 5), s, t)
    });
    assert!(stats.sent.load(Relaxed) > 1 << 20, "the attack ran: {}", stats.summary());
    check(&seen, CI_P99, CI_NEW);
}

#[test]
#[ignore = "full size: cargo test --release --test hostile -- --ignored --nocapture --test-threads 1"]
fn full_f1_f2_deflate_zeros() {
    let target = Target::start("echo", &[]);
    let (seen, _, _) = run("F1/F2 deflate echo of zeros", Kind::Echo, &target, 12.0, |a, s, t| {
        deflate_zeros(a, Ipv4Addr::new(127, 0, 0, 5), s, t)
    });
    check(&seen, Duration::from_millis(20), Duration::from_millis(100));
}

#[test]
fn f3_a_chat_publish_to_silent_subscribers_is_shared_and_bounded() {
    let target = Target::start("chat", &[]);
    let (seen, stats, peak) = run("F3 chat flood, 300 silent", Kind::Chat("calm"), &target, 4.0, |a, s, t| {
        flood(a, None, 300, 16 * 1024, s, t)
    });
    assert!(stats.sent.load(Relaxed) > 4 << 20, "the attack ran: {}", stats.summary());
    // Unshared, each 16 KiB line is ~96 KiB of JSON per subscriber: 300 queues of up to max_queued_bytes.
    assert!(peak < 256.0, "server RSS peaked at {peak:.0} MiB");
    check(&seen, CI_P99, CI_NEW);
}

#[test]
#[ignore = "full size: cargo test --release --test hostile -- --ignored --nocapture --test-threads 1"]
fn full_f3_chat_flood() {
    let target = Target::start("chat", &[]);
    let (seen, _, peak) = run("F3 chat flood, 900 silent", Kind::Chat("calm"), &target, 12.0, |a, s, t| {
        flood(a, None, 900, 16 * 1024, s, t)
    });
    assert!(peak < 256.0, "server RSS peaked at {peak:.0} MiB");
    check(&seen, Duration::from_millis(20), Duration::from_millis(100));
}

/// The same flood with the victims in the flooded room: every flood line reaches them too, and the first lines
/// fill 900 kernel send buffers ahead of them (reported, not bounded: see docs/robustness.md).
#[test]
#[ignore = "full size: cargo test --release --test hostile -- --ignored --nocapture --test-threads 1"]
fn full_f3_chat_flood_same_room() {
    let target = Target::start("chat", &[]);
    let (_, _, peak) =
        run("F3 chat flood, 900 silent, victims in the flooded room", Kind::Chat("lobby"), &target, 12.0, |a, s, t| {
            flood(a, None, 900, 16 * 1024, s, t)
        });
    assert!(peak < 256.0, "server RSS peaked at {peak:.0} MiB");
}

/// The server's own part of F3, with no application rate limit: `examples/broadcast` delivers every message
/// verbatim to the topic's other subscribers, as fast as the publisher sends (the victims use another topic:
/// in this one they would have to read the whole flood). One shared copy per publish, the publisher charged
/// the fan-out, the budget dropping the subscribers that do not read.
#[test]
fn f3_a_topic_publish_to_silent_subscribers_is_shared_and_bounded() {
    let target = Target::start("broadcast", &[]);
    let (seen, stats, peak) = run("F3 topic flood, 300 silent", Kind::Topic("calm"), &target, 4.0, |a, s, t| {
        flood(a, Some("room"), 300, 16 * 1024, s, t)
    });
    assert!(stats.sent.load(Relaxed) > 4 << 20, "the attack ran: {}", stats.summary());
    // Unshared, 300 queues of up to max_queued_bytes (4 MiB) each: 1.2 GiB.
    assert!(peak < 256.0, "server RSS peaked at {peak:.0} MiB");
    check(&seen, CI_P99, CI_NEW);
}

#[test]
#[ignore = "full size: cargo test --release --test hostile -- --ignored --nocapture --test-threads 1"]
fn full_f3_topic_flood() {
    let target = Target::start("broadcast", &[]);
    let (seen, _, peak) = run("F3 topic flood, 900 silent", Kind::Topic("calm"), &target, 12.0, |a, s, t| {
        flood(a, Some("room"), 900, 16 * 1024, s, t)
    });
    assert!(peak < 400.0, "server RSS peaked at {peak:.0} MiB");
    check(&seen, Duration::from_millis(20), Duration::from_millis(100));
}

#[test]
fn f4_deflate_echoes_the_server_cannot_shrink_stay_within_the_budget() {
    let target = Target::start("echo", &[]);
    let (seen, stats, peak) = run("F4 deflate window 8, 150 never read", Kind::Echo, &target, 5.0, |a, s, t| {
        deflate_window8(a, 150, 115_000, s, t)
    });
    assert!(stats.upgraded.load(Relaxed) == 150, "{}", stats.summary());
    // Unbounded, each pins ~12 MiB (1.8 GiB in all); the budget is 256 MiB.
    assert!(peak < 400.0, "server RSS peaked at {peak:.0} MiB");
    // Looser than the others: here the loop compresses 150 connections' incompressible echoes in an unoptimized
    // build, so its turns are long (a quantum of work per connection still bounds them). Measured on a slow
    // spell of the 2-core VM: p99 183-220 ms, a new client's wait 522-706 ms; the unbounded server keeps the
    // steady client waiting seconds (it timed out) on top of its gigabytes.
    check(&seen, F4_P99, F4_NEW);
}

/// F4's bounds in CI (see the test).
const F4_P99: Duration = Duration::from_millis(500);
const F4_NEW: Duration = Duration::from_millis(1_500);

#[test]
#[ignore = "full size: cargo test --release --test hostile -- --ignored --nocapture --test-threads 1"]
fn full_f4_deflate_window8() {
    let target = Target::start("echo", &[]);
    let (seen, _, peak) = run("F4 deflate window 8, 300 never read", Kind::Echo, &target, 12.0, |a, s, t| {
        deflate_window8(a, 300, 115_000, s, t)
    });
    assert!(peak < 400.0, "server RSS peaked at {peak:.0} MiB");
    check(&seen, Duration::from_millis(20), Duration::from_millis(100));
}

#[test]
fn f5_one_address_cannot_take_every_connection() {
    let target = Target::start("echo", &[]);
    let (seen, stats, _) =
        run("F5 400 from one address", Kind::Echo, &target, 3.0, |a, s, t| one_address(a, 400, s, t));
    assert_eq!(
        (stats.upgraded.load(Relaxed), stats.refused.load(Relaxed)),
        (256, 144),
        "the per-address default: {}",
        stats.summary()
    );
    check(&seen, CI_P99, CI_NEW);
}

#[test]
#[ignore = "full size: cargo test --release --test hostile -- --ignored --nocapture --test-threads 1"]
fn full_f5_one_address() {
    let target = Target::start("echo", &[]);
    let (seen, stats, _) =
        run("F5 19,000 from one address", Kind::Echo, &target, 15.0, |a, s, t| one_address(a, 19_000, s, t));
    assert_eq!(stats.upgraded.load(Relaxed), 256, "{}", stats.summary());
    check(&seen, Duration::from_millis(20), Duration::from_millis(100));
}
