//! One loop per core: a `Cluster` of loops sharing a port (`SO_REUSEPORT`) spreads connections, topics reach
//! subscribers on every loop exactly once and in order per publisher, ids are global, metrics aggregate, a
//! panicking handler costs one connection, and shutdown covers every loop.

mod common;
use common::*;
use std::collections::HashSet;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tungstenite::Message as T;
use wskit::handshake::Request;
use wskit::{Cluster, ClusterHandle, Config, ConnId, Ctx, Handler, Message};

/// Subscribes everyone to `t`, tells each client its loop and id, publishes what it gets to the others, and
/// panics on `panic`.
struct Fan {
    index: usize,
    ids: Sender<(usize, ConnId)>,
}
impl Handler for Fan {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &Request) {
        ctx.subscribe("t");
        ctx.send_text(&format!("loop {}", self.index));
        let _ = self.ids.send((self.index, ctx.id()));
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        assert!(msg.as_bytes() != b"panic", "asked to panic");
        ctx.publish_others("t", msg);
    }
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn start(loops: usize) -> (Cluster, ClusterHandle, std::sync::mpsc::Receiver<(usize, ConnId)>) {
    let (tx, rx) = channel();
    let tx = Arc::new(Mutex::new(tx));
    let cluster =
        Cluster::bind("127.0.0.1:0", Config::new(), loops, move |index| Fan { index, ids: tx.lock().unwrap().clone() })
            .unwrap();
    let handle = cluster.handle();
    (cluster, handle, rx)
}

#[test]
fn connections_spread_over_loops_and_topics_reach_every_loop() {
    let (cluster, handle, ids) = start(2);
    assert_eq!(handle.loop_count(), 2);
    let url = format!("ws://{}/", cluster.local_addr());
    let mut clients: Vec<Ws> = Vec::new();
    let mut loops_seen = HashSet::new();
    for _ in 0..40 {
        let (mut ws, _) = ws_connect(&url, &[]).unwrap();
        let hello = ws.read().unwrap().into_text().unwrap().to_string();
        loops_seen.insert(hello);
        clients.push(ws);
    }
    assert!(loops_seen.len() > 1, "the kernel gave every connection to one loop: {loops_seen:?}");
    let ids: Vec<(usize, ConnId)> = ids.try_iter().collect();
    assert_eq!(ids.len(), 40);
    // One publisher, 100 messages: every other client gets each exactly once, in order, whatever its loop.
    for i in 0..100 {
        clients[0].send(T::text(format!("m{i}"))).unwrap();
    }
    for (n, ws) in clients.iter_mut().enumerate().skip(1) {
        for i in 0..100 {
            assert_eq!(ws.read().unwrap(), T::text(format!("m{i}")), "client {n}");
        }
    }
    // From another thread, through the cluster handle: everyone, the publisher's own loop included.
    handle.publish("t", Message::Binary(b"\x00from the handle"));
    for ws in clients.iter_mut() {
        assert_eq!(ws.read().unwrap(), T::binary(&b"\x00from the handle"[..]));
    }
    // Ids are global: the handle reaches a connection on either loop (ids[k] is clients[k]'s: they connected
    // one after the other).
    for loop_index in [0, 1] {
        let k = ids.iter().position(|(i, _)| *i == loop_index).unwrap();
        handle.send(ids[k].1, Message::Text(&format!("direct to loop {loop_index}"))).unwrap();
        assert_eq!(clients[k].read().unwrap(), T::text(format!("direct to loop {loop_index}")));
    }
    // Metrics add up over the loops, and each loop's share is listed.
    let text = handle.metrics_text();
    assert!(text.lines().any(|l| l == "wskit_connections_opened_total 40"), "{text}");
    let per_loop: u64 =
        (0..2).map(|i| handle.loop_metrics(i).unwrap().opened.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert_eq!(per_loop, 40);
    assert!(text.contains("wskit_connections_opened_total{loop=\"1\"}"), "{text}");
    // Graceful shutdown covers every loop.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || {
                if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                }
                while ws.read().is_ok() {}
            })
        })
        .collect();
    handle.shutdown(Duration::from_secs(5));
    let report = cluster.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(report.closed_cleanly, 40, "{report:?}");
}

#[test]
fn a_panic_on_one_loop_costs_one_connection() {
    let (cluster, _handle, _ids) = start(2);
    let url = format!("ws://{}/", cluster.local_addr());
    let mut clients: Vec<Ws> = (0..10)
        .map(|_| {
            let (mut ws, _) = ws_connect(&url, &[]).unwrap();
            ws.read().unwrap();
            ws
        })
        .collect();
    clients[3].send(T::text("panic")).unwrap();
    match clients[3].read() {
        Ok(T::Close(Some(f))) => assert_eq!(u16::from(f.code), 1011),
        other => panic!("{other:?}"),
    }
    clients[0].send(T::text("still fine")).unwrap();
    for (n, ws) in clients.iter_mut().enumerate().skip(1) {
        if n != 3 {
            assert_eq!(ws.read().unwrap(), T::text("still fine"));
        }
    }
}
