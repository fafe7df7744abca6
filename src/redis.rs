//! A [`Bridge`] over Redis pub/sub: topics shared by every node connected to one Redis.
//!
//! Written against RESP2 directly over `std::net::TcpStream` (what it uses is five commands and three reply
//! shapes; a client crate would bring a dependency tree larger than the bridge). It runs on two threads of its
//! own — a publisher and a subscriber, each with its own connection — so a loop never waits on Redis: a loop's
//! publish is a `try_send` into a bounded queue.
//!
//! Semantics:
//! * **At most once**, like Redis pub/sub: a message published while the bridge is disconnected waits in the
//!   bounded queue (`queue` messages) and goes out after the reconnect; past the bound it is dropped and counted
//!   (`wskit_bridge_lost_total`). Messages other nodes publish while this one is disconnected are not seen.
//! * A node subscribes to the Redis channel `<prefix><topic>` only while it has local subscribers to the topic.
//! * Every message carries the publishing node's random id: a node skips its own messages (it delivered them
//!   locally already), so nobody gets one twice. Payloads are binary-safe and keep their type (text or binary).
//! * Faults: Redis down at start is an error from [`RedisBridge::connect`] (or, with `retry_at_start`, the bridge
//!   keeps trying); a lost connection is retried with backoff (50 ms doubling to 2 s) and every current topic is
//!   subscribed again; local delivery never depends on Redis.

use crate::cluster::{Bridge, Inbound};
use crate::conn::Message;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(Vec<u8>),
    /// `-ERR ...`
    Error(Vec<u8>),
    /// `:1`
    Int(i64),
    /// `$3\r\nabc` (`None`: `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None`: `*-1`)
    Array(Option<Vec<Resp>>),
}

const MAX_BULK: usize = 512 << 20;
const MAX_ITEMS: usize = 1 << 20;

/// Parses one RESP value from the start of `buf`: `Ok(Some((value, consumed)))`, `Ok(None)` when more bytes are
/// needed, `Err` on bytes that are not RESP.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], at + i + 2))
}

fn number(l: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(l).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "bad RESP number".to_string())
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Resp, usize)>, String> {
    if depth > 8 {
        return Err("RESP nested too deep".into());
    }
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some((l, next)) = line(buf, at + 1) else { return Ok(None) };
    Ok(Some(match kind {
        b'+' => (Resp::Simple(l.to_vec()), next),
        b'-' => (Resp::Error(l.to_vec()), next),
        b':' => (Resp::Int(number(l)?), next),
        b'$' => {
            let n = number(l)?;
            if n < 0 {
                (Resp::Bulk(None), next)
            } else {
                let n = n as usize;
                if n > MAX_BULK {
                    return Err("RESP bulk string too long".into());
                }
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    return Err("RESP bulk string not terminated".into());
                }
                (Resp::Bulk(Some(buf[next..next + n].to_vec())), next + n + 2)
            }
        }
        b'*' => {
            let n = number(l)?;
            if n < 0 {
                (Resp::Array(None), next)
            } else {
                let n = n as usize;
                if n > MAX_ITEMS {
                    return Err("RESP array too long".into());
                }
                let mut items = Vec::with_capacity(n.min(16));
                let mut pos = next;
                for _ in 0..n {
                    match parse_at(buf, pos, depth + 1)? {
                        Some((v, p)) => {
                            items.push(v);
                            pos = p;
                        }
                        None => return Ok(None),
                    }
                }
                (Resp::Array(Some(items)), pos)
            }
        }
        other => return Err(format!("not RESP: byte {other:#04x}")),
    }))
}

/// Appends a command as a RESP array of bulk strings.
pub fn write_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The envelope of a bridged message: `W`, version 1, flags (bit 0: text), the origin node id (8 bytes, big
/// endian), then the payload.
fn envelope(node: u64, text: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(11 + payload.len());
    v.extend_from_slice(&[b'W', 1, u8::from(text)]);
    v.extend_from_slice(&node.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn open_envelope(v: &[u8]) -> Option<(u64, bool, &[u8])> {
    if v.len() < 11 || v[0] != b'W' || v[1] != 1 {
        return None;
    }
    Some((u64::from_be_bytes(v[3..11].try_into().ok()?), v[2] & 1 != 0, &v[11..]))
}

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `host:port`.
    pub addr: String,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// Channel prefix (default `wskit:`): the channel of topic `t` is `wskit:t`.
    pub prefix: String,
    /// Messages waiting to go to Redis at most (default 10,000); past that, new ones are dropped and counted.
    pub queue: usize,
    /// Keep trying when Redis is down at start instead of failing (default false).
    pub retry_at_start: bool,
}

impl RedisOptions {
    /// Parses `redis://[:password@]host[:port][/db]` (the database number does not matter to pub/sub).
    pub fn from_url(url: &str) -> io::Result<RedisOptions> {
        let bad =
            || io::Error::new(io::ErrorKind::InvalidInput, format!("`{url}` is not redis://[:password@]host[:port]"));
        let rest = url.strip_prefix("redis://").ok_or_else(bad)?;
        let rest = rest.split('/').next().unwrap_or("");
        let (password, host) = match rest.rsplit_once('@') {
            Some((auth, host)) => (Some(auth.trim_start_matches(':').to_string()).filter(|p| !p.is_empty()), host),
            None => (None, rest),
        };
        if host.is_empty() {
            return Err(bad());
        }
        let addr = if host.contains(':') { host.to_string() } else { format!("{host}:6379") };
        Ok(RedisOptions { addr, password, prefix: "wskit:".into(), queue: 10_000, retry_at_start: false })
    }
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    reconnects: AtomicU64,
    connected: AtomicU64,
    /// Messages in the queue or the publisher's hands.
    queued: AtomicU64,
}

enum Out {
    Publish(Vec<u8>, Vec<u8>),
}

struct Inner {
    opts: RedisOptions,
    node: u64,
    tx: SyncSender<Out>,
    rx: Mutex<Option<Receiver<Out>>>,
    /// Topic interest changes waiting for the subscriber thread.
    interest: Mutex<Vec<(String, bool)>>,
    stats: Stats,
    stop: AtomicBool,
}

/// Topics across nodes through Redis pub/sub. See the module documentation for the guarantees.
#[derive(Clone)]
pub struct RedisBridge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBridge").field("addr", &self.inner.opts.addr).finish_non_exhaustive()
    }
}

/// A connection with a read buffer, speaking RESP.
struct Link {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Link {
    fn open(opts: &RedisOptions, read_timeout: Duration) -> io::Result<Link> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&opts.addr)?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("cannot resolve {}", opts.addr)))?;
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut link = Link { sock, buf: Vec::new() };
        if let Some(p) = &opts.password {
            link.call(&[b"AUTH", p.as_bytes()])?;
        }
        link.call(&[b"PING"])?;
        link.sock.set_read_timeout(Some(read_timeout))?;
        Ok(link)
    }
    fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut out = Vec::new();
        write_command(&mut out, args);
        self.sock.write_all(&out)
    }
    /// The next reply; `Ok(None)` when the read timed out with nothing whole yet.
    fn next(&mut self) -> io::Result<Option<Resp>> {
        loop {
            match parse_resp(&self.buf) {
                Ok(Some((v, n))) => {
                    self.buf.drain(..n);
                    return Ok(Some(v));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    fn call(&mut self, args: &[&[u8]]) -> io::Result<Resp> {
        self.send(args)?;
        match self.next()? {
            Some(Resp::Error(e)) => Err(io::Error::other(format!("redis: {}", String::from_utf8_lossy(&e)))),
            Some(v) => Ok(v),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "redis did not answer")),
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(2000))
}

impl RedisBridge {
    /// Checks that Redis answers (unless `retry_at_start`) and prepares the bridge; it starts with the cluster.
    pub fn connect(opts: RedisOptions) -> io::Result<RedisBridge> {
        if !opts.retry_at_start {
            Link::open(&opts, Duration::from_secs(2))
                .map_err(|e| io::Error::new(e.kind(), format!("redis at {}: {e}", opts.addr)))?;
        }
        let (tx, rx) = sync_channel(opts.queue.max(1));
        let node = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            h.write_u32(std::process::id());
            h.finish()
        };
        Ok(RedisBridge {
            inner: Arc::new(Inner {
                opts,
                node,
                tx,
                rx: Mutex::new(Some(rx)),
                interest: Mutex::new(Vec::new()),
                stats: Stats::default(),
                stop: AtomicBool::new(false),
            }),
        })
    }

    /// This node's id in the envelopes.
    pub fn node_id(&self) -> u64 {
        self.inner.node
    }

    /// Whether the subscriber connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.stats.connected.load(Relaxed) == 1
    }

    /// Messages lost so far (queue full while Redis was unreachable, or a failed write).
    pub fn lost(&self) -> u64 {
        self.inner.stats.lost.load(Relaxed)
    }
}

/// The publisher thread: batches what the loops queued, pipelines it, and reads the replies.
fn publisher(inner: Arc<Inner>, rx: Receiver<Out>) {
    let mut link: Option<Link> = None;
    let mut attempt = 0;
    let mut batch: Vec<Out> = Vec::new();
    while !inner.stop.load(Relaxed) {
        if batch.is_empty() {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(o) => batch.push(o),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
        }
        if link.is_none() {
            match Link::open(&inner.opts, Duration::from_secs(2)) {
                Ok(l) => {
                    link = Some(l);
                    attempt = 0;
                }
                Err(_) => {
                    // The batch waits (the queue behind it fills up to its bound, then drops and counts).
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                    continue;
                }
            }
        }
        let Some(l) = link.as_mut() else { continue };
        let mut out = Vec::new();
        for Out::Publish(channel, payload) in &batch {
            write_command(&mut out, &[b"PUBLISH", channel, payload]);
        }
        let sent = l.sock.write_all(&out).is_ok() && (0..batch.len()).all(|_| matches!(l.next(), Ok(Some(_))));
        inner.stats.queued.fetch_sub(batch.len() as u64, Relaxed);
        if sent {
            inner.stats.published.fetch_add(batch.len() as u64, Relaxed);
        } else {
            // Whether Redis got them is unknown: count them lost (at most once) and reconnect.
            inner.stats.lost.fetch_add(batch.len() as u64, Relaxed);
            link = None;
        }
        batch.clear();
    }
}

/// The subscriber thread: (re)subscribes to the node's topics and delivers what other nodes publish.
fn subscriber(inner: Arc<Inner>, inbound: Inbound) {
    let prefix = inner.opts.prefix.as_bytes().to_vec();
    let mut attempt = 0;
    let mut ever_connected = false;
    while !inner.stop.load(Relaxed) {
        let mut link = match Link::open(&inner.opts, Duration::from_millis(20)) {
            Ok(l) => l,
            Err(_) => {
                std::thread::sleep(backoff(attempt));
                attempt += 1;
                continue;
            }
        };
        if ever_connected {
            inner.stats.reconnects.fetch_add(1, Relaxed);
        }
        ever_connected = true;
        attempt = 0;
        // Every topic with local subscribers now; changes queued before this point are covered by it.
        inner.interest.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let topics = inbound.topics();
        let mut ok = true;
        for t in &topics {
            let channel = [prefix.as_slice(), t.as_bytes()].concat();
            ok &= link.send(&[b"SUBSCRIBE", &channel]).is_ok();
        }
        inner.stats.connected.store(1, Relaxed);
        while ok && !inner.stop.load(Relaxed) {
            let changes = std::mem::take(&mut *inner.interest.lock().unwrap_or_else(|p| p.into_inner()));
            for (t, on) in changes {
                let channel = [prefix.as_slice(), t.as_bytes()].concat();
                let cmd: &[u8] = if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
                ok &= link.send(&[cmd, &channel]).is_ok();
            }
            match link.next() {
                Ok(Some(Resp::Array(Some(items)))) => {
                    if let [Resp::Bulk(Some(kind)), Resp::Bulk(Some(channel)), Resp::Bulk(Some(data))] =
                        items.as_slice()
                    {
                        if kind == b"message" {
                            deliver(&inner, &inbound, &prefix, channel, data);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => ok = false,
            }
        }
        inner.stats.connected.store(0, Relaxed);
    }
}

fn deliver(inner: &Inner, inbound: &Inbound, prefix: &[u8], channel: &[u8], data: &[u8]) {
    let (Some(topic), Some((origin, text, payload))) = (channel.strip_prefix(prefix), open_envelope(data)) else {
        return;
    };
    if origin == inner.node {
        return; // ours: delivered locally when published
    }
    let Ok(topic) = std::str::from_utf8(topic) else { return };
    inner.stats.received.fetch_add(1, Relaxed);
    if text {
        if let Ok(t) = std::str::from_utf8(payload) {
            inbound.deliver(topic, Message::Text(t));
        }
    } else {
        inbound.deliver(topic, Message::Binary(payload));
    }
}

impl Bridge for RedisBridge {
    fn start(&self, inbound: Inbound) -> io::Result<()> {
        let rx = self.inner.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(rx) = rx else { return Err(io::Error::other("the Redis bridge was started already")) };
        let inner = self.inner.clone();
        std::thread::Builder::new().name("wskit-redis-pub".into()).spawn(move || publisher(inner, rx))?;
        let inner = self.inner.clone();
        std::thread::Builder::new().name("wskit-redis-sub".into()).spawn(move || subscriber(inner, inbound))?;
        Ok(())
    }

    fn publish(&self, topic: &str, text: bool, payload: &[u8]) {
        let channel = [self.inner.opts.prefix.as_bytes(), topic.as_bytes()].concat();
        match self.inner.tx.try_send(Out::Publish(channel, envelope(self.inner.node, text, payload))) {
            Ok(()) => {
                self.inner.stats.queued.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.inner.stats.lost.fetch_add(1, Relaxed);
            }
        }
    }

    fn interest(&self, topic: &str, on: bool) {
        self.inner.interest.lock().unwrap_or_else(|p| p.into_inner()).push((topic.to_string(), on));
    }

    fn metrics_text(&self) -> String {
        let s = &self.inner.stats;
        let mut o = String::new();
        for (name, kind, help, v) in [
            ("bridge_published_total", "counter", "Messages published to Redis.", s.published.load(Relaxed)),
            ("bridge_received_total", "counter", "Messages from other nodes delivered here.", s.received.load(Relaxed)),
            ("bridge_lost_total", "counter", "Messages that could not be bridged.", s.lost.load(Relaxed)),
            ("bridge_reconnects_total", "counter", "Reconnections to Redis.", s.reconnects.load(Relaxed)),
            ("bridge_connected", "gauge", "1 while subscribed to Redis.", s.connected.load(Relaxed)),
            ("bridge_queued", "gauge", "Messages waiting to be published to Redis.", s.queued.load(Relaxed)),
        ] {
            o.push_str(&format!("# HELP wskit_{name} {help}\n# TYPE wskit_{name} {kind}\nwskit_{name} {v}\n"));
        }
        o
    }

    fn stop(&self) {
        self.inner.stop.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_every_prefix_is_partial_and_the_whole_parses() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$7\r\nwskit:a\r\n$5\r\nh\r\nl\0\r\n:12\r\n";
        for n in 0..wire.len() - 5 {
            assert_eq!(parse_resp(&wire[..n]), Ok(None), "prefix {n}");
        }
        let (v, used) = parse_resp(wire).unwrap().unwrap();
        assert_eq!(used, wire.len() - 5);
        assert_eq!(
            v,
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"message".to_vec())),
                Resp::Bulk(Some(b"wskit:a".to_vec())),
                Resp::Bulk(Some(b"h\r\nl\0".to_vec())),
            ]))
        );
        assert_eq!(parse_resp(&wire[used..]).unwrap().unwrap().0, Resp::Int(12));
        assert!(parse_resp(b"?x\r\n").is_err());
        assert!(parse_resp(b"$3\r\nabcd\r\n").is_err());
        assert_eq!(parse_resp(b"$-1\r\n").unwrap().unwrap().0, Resp::Bulk(None));
    }

    #[test]
    fn envelopes_and_urls() {
        let e = envelope(7, true, b"hi");
        assert_eq!(open_envelope(&e), Some((7, true, &b"hi"[..])));
        assert_eq!(open_envelope(b"W\x01"), None);
        let o = RedisOptions::from_url("redis://:secret@10.0.0.1:7000/2").unwrap();
        assert_eq!((o.addr.as_str(), o.password.as_deref()), ("10.0.0.1:7000", Some("secret")));
        assert_eq!(RedisOptions::from_url("redis://localhost").unwrap().addr, "localhost:6379");
        assert!(RedisOptions::from_url("http://x").is_err());
        let mut out = Vec::new();
        write_command(&mut out, &[b"PUBLISH", b"c", b"\r\n"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\n\r\n\r\n");
    }
}
