// Run: cargo run --example chat [-- --addr 127.0.0.1:1337] [--pem FILE [--passphrase P]] [--loops N]
//      [--redis redis://127.0.0.1:6379]
// Then open http://127.0.0.1:1337/ in two browser tabs, pick a name in each, and talk.
//
// The page and the WebSocket share one port and one loop, split by a `Router`: the page, the favicon and
// `/metrics` (Prometheus text) are plain HTTP; `/ws` is the chat socket. Every user subscribes to the topic
// `lobby`; each text message is published to the others in a small JSON object with the sender's name; joins
// and leaves are announced; lines typed on the terminal are published from another thread through a
// `ClusterHandle`. With --redis, several chat processes bridged by one Redis form one room (each process lists
// only its own users in the welcome message); --loops N runs N event loops on one port.

use std::process::exit;
use std::sync::{Arc, OnceLock};
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

/// The chat room: every user is subscribed to the topic `lobby`; names are typed per-connection data.
#[derive(Default)]
struct Chat {
    names: ConnData<String>,
    anon: u64,
}

impl Handler for Chat {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &wskit::handshake::Request) {
        let wanted = req
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("name="))
            .map(percent_decode)
            .unwrap_or_default();
        let mut name: String = wanted.trim().chars().filter(|c| !c.is_control()).take(32).collect();
        if name.is_empty() {
            self.anon += 1;
            name = format!("guest-{}", self.anon);
        }
        let users: Vec<String> =
            self.names.iter().map(|(_, n)| n).chain(std::iter::once(&name)).map(|n| json_str(n)).collect();
        ctx.send_text(&format!(r#"{{"type":"welcome","name":{},"users":[{}]}}"#, json_str(&name), users.join(",")));
        ctx.subscribe(LOBBY);
        ctx.publish_others(LOBBY, Message::Text(&format!(r#"{{"type":"join","name":{}}}"#, json_str(&name))));
        ctx.log(log::Level::Info, format_args!("{name} joined"));
        self.names.insert(ctx.id(), name);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        let from = self.names.get(ctx.id()).map(String::as_str).unwrap_or("?");
        let json = format!(r#"{{"type":"message","from":{},"text":{}}}"#, json_str(from), json_str(text));
        ctx.publish_others(LOBBY, Message::Text(&json));
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, _status: &CloseStatus) {
        // The connection has already left its topics.
        if let Some(name) = self.names.remove(ctx.id()) {
            ctx.publish(LOBBY, Message::Text(&format!(r#"{{"type":"leave","name":{}}}"#, json_str(&name))));
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
        "usage: chat [--addr HOST:PORT] [--pem FILE [--passphrase P]] [--loops N] [--redis redis://HOST:PORT]";
    let mut addr = "127.0.0.1:1337".to_string();
    let (mut pem, mut passphrase, mut redis, mut loops) = (None, None, None, 1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value; {USAGE}")));
        match a.as_str() {
            "--addr" => addr = value(),
            "--pem" => pem = Some(value()),
            "--passphrase" => passphrase = Some(value()),
            "--redis" => redis = Some(value()),
            "--loops" => loops = value().parse().unwrap_or_else(|_| die(USAGE)),
            "-h" | "--help" => die(USAGE),
            other => die(&format!("unknown argument {other}; {USAGE}")),
        }
    }
    let scheme = if pem.is_some() { "https" } else { "http" };
    let mut config = Config::new();
    if let Some(pem) = pem {
        config = config.tls_pem(pem, passphrase.as_deref());
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
