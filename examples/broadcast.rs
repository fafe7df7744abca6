// Run: cargo run --release --example broadcast -- --addr 127.0.0.1:9002 [--loops N] [--redis redis://127.0.0.1:6379]
//
// Topic fan-out. A client that connects to ws://HOST/<topic> is subscribed to <topic>; every text or binary
// message it sends is delivered verbatim (same type, same bytes) to every *other* subscriber of that topic, on
// every loop of this process and, with --redis, on every process bridged by the same Redis.
//
// --loops N runs N event loops on N threads sharing the port (SO_REUSEPORT); default 1.
// --max-payload BYTES raises the message size limit (default 512 KiB); --no-deflate turns compression off;
// --set KEY=VALUE sets any configuration key (`Config::set`), e.g. `--set max_connections_per_ip=0`;
// --redis-queue N bounds the messages waiting for Redis (default 10000). GET /metrics answers the Prometheus
// text of every loop and the bridge.

use std::process::exit;
use std::sync::{Arc, OnceLock};
use wskit::handshake::Request;
use wskit::redis::{RedisBridge, RedisOptions};
use wskit::{Bridge, Cluster, ClusterHandle, Config, ConnData, Ctx, Handler, Message, Response};

/// Each connection's topic, from its path.
struct Broadcast {
    topics: ConnData<String>,
    cluster: Arc<OnceLock<ClusterHandle>>,
}

impl Handler for Broadcast {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        let topic = req.path().strip_prefix('/').unwrap_or("").to_string();
        ctx.subscribe(&topic);
        self.topics.insert(ctx.id(), topic);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if let Some(topic) = self.topics.get(ctx.id()) {
            ctx.publish_others(topic, msg);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, _status: &wskit::CloseStatus) {
        self.topics.remove(ctx.id());
    }

    fn on_http(&mut self, _ctx: &mut Ctx<'_>, req: &Request) -> Option<Response> {
        let handle = self.cluster.get().filter(|_| req.path() == "/metrics")?;
        Some(Response::new(200, "text/plain; version=0.0.4", handle.metrics_text()))
    }
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "broadcast: {msg}\nusage: broadcast [--addr HOST:PORT] [--loops N] [--redis redis://HOST:PORT] [--redis-queue N] [--max-payload BYTES] [--no-deflate] [--set KEY=VALUE]"
    );
    exit(2)
}

fn main() {
    let mut addr = "127.0.0.1:9002".to_string();
    let mut loops = 1;
    let mut redis: Option<String> = None;
    let mut redis_queue = 10_000;
    let mut config = Config::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--addr" => addr = value(),
            "--loops" => loops = value().parse().unwrap_or_else(|_| usage("--loops takes a number")),
            "--redis" => redis = Some(value()),
            "--redis-queue" => redis_queue = value().parse().unwrap_or_else(|_| usage("--redis-queue takes a number")),
            "--max-payload" => {
                let n: usize = value().parse().unwrap_or_else(|_| usage("--max-payload takes a number of bytes"));
                config = config.max_payload_size(n).max_message_size(n);
            }
            "--no-deflate" => config = config.deflate(false),
            "--set" => {
                let kv = value();
                let (k, v) = kv.split_once('=').unwrap_or_else(|| usage("--set takes KEY=VALUE"));
                config.set(k, v).unwrap_or_else(|e| usage(&e.to_string()));
            }
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let bridge: Option<Arc<dyn Bridge>> = match &redis {
        Some(url) => {
            let mut opts = RedisOptions::from_url(url).unwrap_or_else(|e| usage(&e.to_string()));
            opts.queue = redis_queue;
            match RedisBridge::connect(opts) {
                Ok(b) => Some(Arc::new(b)),
                Err(e) => {
                    eprintln!("broadcast: {e}");
                    exit(1)
                }
            }
        }
        None => None,
    };
    let shared = Arc::new(OnceLock::new());
    let for_loops = shared.clone();
    let factory = move |_| Broadcast { topics: ConnData::new(), cluster: for_loops.clone() };
    let cluster = match Cluster::bind_bridged(&addr, config, loops, bridge, factory) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broadcast: cannot serve on {addr}: {e}");
            exit(1)
        }
    };
    let _ = shared.set(cluster.handle());
    let via = redis.map(|r| format!(", bridged through {r}")).unwrap_or_default();
    println!(
        "broadcast: listening on ws://{} ({loops} loop{}{via})",
        cluster.local_addr(),
        if loops == 1 { "" } else { "s" }
    );
    if let Err(e) = cluster.join() {
        eprintln!("broadcast: {e}");
        exit(1)
    }
}
