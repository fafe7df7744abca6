// Run: cargo run --example chat [-- --addr 127.0.0.1:1337] [--pem FILE [--passphrase P]] [--loops N] [--set K=V]
//      [--redis redis://127.0.0.1:6379]
// Then open http://127.0.0.1:1337/ in two browser tabs, pick a name in each, and talk.
//
// The page and the WebSocket share one port and one loop, split by a `Router`: the page, the favicon and
// `/metrics` (Prometheus text) are plain HTTP; `/ws` is the chat socket. Every user subscribes to the topic of
// its room (`/ws?name=ann&room=ops`; `lobby` by default); each text message is published to the others in a small
// JSON object with the sender's name; joins and leaves are announced; lines typed on the terminal are published
// to the lobby from another thread through a `ClusterHandle`. Each address may say 64 KiB a second (a burst of
// 256 KiB), make the server deliver 8 MiB a second (a line's JSON times the room's other users; a burst of
// 32 MiB) and join 16 times a second (a burst of 64): past that it is closed with 1008, or refused with 429.
// With --redis, several chat processes bridged by one Redis share their rooms (each process lists only its own
// users in the welcome message); --loops N runs N event loops on one port.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::exit;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use wskit::redis::{RedisBridge, RedisOptions};
use wskit::{Bridge, CloseStatus, Cluster, ClusterHandle, Config, ConnData, Ctx, Handler, Message, Response, Router};

const PAGE: &str = include_str!("index.html");

/// A JSON string literal (quotes included).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Decodes `%XX` and `+` in a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 2;
            }
            (b'+', None) => out.push(b' '),
            (c, None) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The page, the favicon and the server's metrics (Prometheus text, every loop and the bridge) over plain HTTP.
struct Pages(Arc<OnceLock<ClusterHandle>>);

impl Handler for Pages {
    fn on_http(&mut self, ctx: &mut Ctx<'_>, req: &wskit::handshake::Request) -> Option<Response> {
        Some(match req.path() {
            "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", PAGE),
            "/favicon.ico" => Response::new(204, "text/plain", ""),
            "/metrics" => {
                let text = self.0.get().map_or_else(|| ctx.metrics().to_prometheus(), ClusterHandle::metrics_text);
                Response::new(200, "text/plain; version=0.0.4", text)
            }
            _ => Response::new(404, "text/plain; charset=utf-8", "not found\n"),
        })
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &wskit::handshake::Request) {
        ctx.reject(404, "the chat socket is at /ws\n");
    }
}

/// What one address may say: text bytes per second, and the burst it may send at once. Everyone in the room
/// receives every line, so one client flooding the room would fill every other user's downlink; the bucket is
/// kept per address, so reconnecting does not refill it.
const RATE: f64 = 64.0 * 1024.0;
const BURST: f64 = 256.0 * 1024.0;
/// What one address may make the server deliver: a line costs its JSON times the users who receive it. A line
/// in a room of 900 is 900 copies for the kernel to move (the server shares one buffer, the sockets cannot):
/// 16 KiB of control characters is 96 KiB of JSON and 86 MiB of copies, so without this one address could keep
/// the loop copying for everyone else's turn. 8 MiB a second is ~80 lines of 100 B a second to 900 users.
const FANOUT_RATE: f64 = 8.0 * 1024.0 * 1024.0;
const FANOUT_BURST: f64 = 32.0 * 1024.0 * 1024.0;
/// What joining costs from the bucket: every join and leave is announced to the whole room, so a client
/// reconnecting in a loop would make the room's every user take two messages per loop.
const JOIN_COST: usize = 4096;

/// A token bucket: `rate` a second up to `burst`.
struct Tokens {
    tokens: f64,
    at: Instant,
}

impl Tokens {
    fn full(burst: f64) -> Tokens {
        Tokens { tokens: burst, at: Instant::now() }
    }

    /// Takes `n` if the bucket holds it.
    fn take(&mut self, n: f64, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        let ok = self.tokens >= n;
        if ok {
            self.tokens -= n;
        }
        ok
    }

    fn refilled(&self, rate: f64, burst: f64) -> bool {
        self.tokens + self.at.elapsed().as_secs_f64() * rate >= burst
    }
}

/// One address: its text bucket, its fan-out bucket, and how many connections from it are open.
struct Bucket {
    text: Tokens,
    fanout: Tokens,
    conns: usize,
}

impl Bucket {
    /// Takes a line of `text` bytes whose JSON reaches `copies` bytes in all, if both buckets hold them.
    fn take_line(&mut self, text: usize, copies: usize) -> bool {
        // Check both before taking either: a refused line costs nothing.
        let fits = self.fanout.take(0.0, FANOUT_RATE, FANOUT_BURST) && self.fanout.tokens >= copies as f64;
        fits && self.text.take(text as f64, RATE, BURST) && self.fanout.take(copies as f64, FANOUT_RATE, FANOUT_BURST)
    }
}

/// One user: its name and its room (the topic it is subscribed to).
struct User {
    name: String,
    room: String,
}

/// The chat rooms: every user is subscribed to the topic of its room (`?room=`, default `lobby`); users are
/// typed per-connection data.
#[derive(Default)]
struct Chat {
    users: ConnData<User>,
    anon: u64,
    buckets: HashMap<IpAddr, Bucket>,
    /// Users per room.
    rooms: HashMap<String, usize>,
}

impl Handler for Chat {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &wskit::handshake::Request) {
        if self.buckets.len() > 4096 {
            // Forget addresses with no connection whose bucket has refilled.
            self.buckets.retain(|_, b| {
                b.conns > 0 || !b.text.refilled(RATE, BURST) || !b.fanout.refilled(FANOUT_RATE, FANOUT_BURST)
            });
        }
        let bucket = self.buckets.entry(ctx.peer_addr().ip()).or_insert_with(|| Bucket {
            text: Tokens::full(BURST),
            fanout: Tokens::full(FANOUT_BURST),
            conns: 0,
        });
        if !bucket.text.take(JOIN_COST as f64, RATE, BURST) {
            ctx.reject(429, "too many joins from your address: try again in a few seconds\n");
            return;
        }
        bucket.conns += 1;
        let param =
            |key: &str| req.query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix(key)).map(percent_decode);
        let mut name: String =
            param("name=").unwrap_or_default().trim().chars().filter(|c| !c.is_control()).take(32).collect();
        if name.is_empty() {
            self.anon += 1;
            name = format!("guest-{}", self.anon);
        }
        let room: String = param("room=")
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(32)
            .collect();
        let room = if room.is_empty() { LOBBY.to_string() } else { room };
        let users: Vec<String> = self
            .users
            .iter()
            .filter(|(_, u)| u.room == room)
            .map(|(_, u)| &u.name)
            .chain(std::iter::once(&name))
            .map(|n| json_str(n))
            .collect();
        ctx.send_text(&format!(r#"{{"type":"welcome","name":{},"users":[{}]}}"#, json_str(&name), users.join(",")));
        ctx.subscribe(&room);
        ctx.publish_others(&room, Message::Text(&format!(r#"{{"type":"join","name":{}}}"#, json_str(&name))));
        ctx.log(log::Level::Info, format_args!("{name} joined {room}"));
        *self.rooms.entry(room.clone()).or_default() += 1;
        self.users.insert(ctx.id(), User { name, room });
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        let Some(user) = self.users.get(ctx.id()) else { return };
        let json = format!(r#"{{"type":"message","from":{},"text":{}}}"#, json_str(&user.name), json_str(text));
        let others = self.rooms.get(&user.room).map_or(0, |n| n.saturating_sub(1));
        if !self.buckets.get_mut(&ctx.peer_addr().ip()).is_some_and(|b| b.take_line(text.len(), json.len() * others)) {
            ctx.close(wskit::CloseCode::POLICY, "too fast: at most 64 KiB a second, 8 MiB a second to the room");
            return;
        }
        ctx.publish_others(&user.room, Message::Text(&json));
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, _status: &CloseStatus) {
        // The connection has already left its topics.
        if let Some(b) = self.buckets.get_mut(&ctx.peer_addr().ip()) {
            b.conns = b.conns.saturating_sub(1);
        }
        if let Some(u) = self.users.remove(ctx.id()) {
            if let Some(n) = self.rooms.get_mut(&u.room) {
                *n -= 1;
                if *n == 0 {
                    self.rooms.remove(&u.room);
                }
            }
            ctx.publish(&u.room, Message::Text(&format!(r#"{{"type":"leave","name":{}}}"#, json_str(&u.name))));
        }
    }
}

const LOBBY: &str = "lobby";

/// Lines typed on the terminal go to everyone as announcements, from this thread through the server handle.
fn announce_from_stdin(handle: ClusterHandle) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            let json = format!(r#"{{"type":"message","from":"server","text":{}}}"#, json_str(line.trim()));
            handle.publish(LOBBY, Message::Text(&json));
        }
    });
}

fn main() {
    const USAGE: &str =
        "usage: chat [--addr HOST:PORT] [--pem FILE [--passphrase P]] [--loops N] [--redis redis://HOST:PORT] [--set KEY=VALUE]...";
    let mut addr = "127.0.0.1:1337".to_string();
    let (mut pem, mut passphrase, mut redis, mut loops) = (None, None, None, 1);
    let mut sets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value; {USAGE}")));
        match a.as_str() {
            "--addr" => addr = value(),
            "--pem" => pem = Some(value()),
            "--passphrase" => passphrase = Some(value()),
            "--redis" => redis = Some(value()),
            "--loops" => loops = value().parse().unwrap_or_else(|_| die(USAGE)),
            "--set" => sets.push(value()),
            "-h" | "--help" => die(USAGE),
            other => die(&format!("unknown argument {other}; {USAGE}")),
        }
    }
    let scheme = if pem.is_some() { "https" } else { "http" };
    // A chat line is short: 16 KiB is room for a long paste. The seed's 512 KiB default would let one user make
    // every other user's queue take half a megabyte per line (six times that once control characters are
    // escaped as JSON); a larger message is refused with 1009.
    // Over https the page, /metrics and the chat socket share one HTTP/2 connection (RFC 8441) with browsers
    // that do it (Chromium); others use HTTP/1.1 as before.
    let mut config = Config::new().max_payload_size(16 * 1024).http2(true);
    if let Some(pem) = pem {
        config = config.tls_pem(pem, passphrase.as_deref());
    }
    for pair in sets {
        let (k, v) = pair.split_once('=').unwrap_or_else(|| die("--set takes key=value"));
        config.set(k, v).unwrap_or_else(|e| die(&e.to_string()));
    }
    let bridge: Option<Arc<dyn Bridge>> = redis.map(|url: String| {
        let opts = RedisOptions::from_url(&url).unwrap_or_else(|e| die(&e.to_string()));
        Arc::new(RedisBridge::connect(opts).unwrap_or_else(|e| die(&e.to_string()))) as Arc<dyn Bridge>
    });
    let handle = Arc::new(OnceLock::new());
    let for_loops = handle.clone();
    let factory = move |_| Router::new().exact("/ws", Chat::default()).prefix("/", Pages(for_loops.clone()));
    let cluster = Cluster::bind_bridged(&addr, config, loops, bridge, factory)
        .unwrap_or_else(|e| die(&format!("cannot serve on {addr}: {e}")));
    let _ = handle.set(cluster.handle());
    announce_from_stdin(cluster.handle());
    println!(
        "chat: open {scheme}://{}/ in a browser (metrics at /metrics; lines typed here are announced)",
        cluster.local_addr()
    );
    if let Err(e) = cluster.join() {
        die(&e.to_string());
    }
}

fn die(msg: &str) -> ! {
    eprintln!("chat: {msg}");
    exit(2)
}
