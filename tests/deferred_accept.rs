//! Deferred accept: `on_open` parks an upgrade (`Ctx::defer_upgrade`) and another thread answers it later — as an
//! application does after asking an authentication service. Clients: `tungstenite`, and raw sockets for a client
//! that sends a frame before the answer.

mod common;
use common::*;
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tungstenite::Message as T;
use wskit::frame::OpCode;
use wskit::handshake::Request;
use wskit::{CloseStatus, Config, ConnId, Ctx, Deferred, Handler, Message};

/// Echoes; upgrades to `/sync...` are accepted at once, every other one is deferred and its `Deferred` sent to
/// the test's "authentication service"; every `on_close` is recorded by path.
struct Gate {
    pending: Sender<(String, Deferred)>,
    paths: std::collections::HashMap<ConnId, String>,
    closed: Arc<Mutex<Vec<(String, CloseStatus)>>>,
}

impl Handler for Gate {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        self.paths.insert(ctx.id(), req.path().to_string());
        if !req.path().starts_with("/sync") {
            let deferred = ctx.defer_upgrade().expect("in on_open");
            self.pending.send((req.path().to_string(), deferred)).unwrap();
        }
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, status: &CloseStatus) {
        let path = self.paths.remove(&ctx.id()).unwrap_or_default();
        self.closed.lock().unwrap().push((path, status.clone()));
    }
}

type Closed = Arc<Mutex<Vec<(String, CloseStatus)>>>;

fn gate(config: Config) -> (TestServer, Receiver<(String, Deferred)>, Closed) {
    let (tx, rx) = channel();
    let closed: Closed = Arc::default();
    let c = closed.clone();
    let server = TestServer::start(config, move || Gate { pending: tx, paths: Default::default(), closed: c });
    (server, rx, closed)
}

fn closed_with(closed: &Closed, path: &str) -> Option<CloseStatus> {
    closed.lock().unwrap().iter().find(|(p, _)| p == path).map(|(_, s)| s.clone())
}

#[test]
fn deferred_upgrades_are_answered_from_another_thread_while_the_loop_serves_others() {
    let config = Config::new().handshake_timeout(Duration::from_secs(1)).subprotocols(["a", "b"], false);
    let (server, pending, closed) = gate(config);
    let url = server.url("");
    let offer = [("Sec-WebSocket-Protocol", "a, b")];

    // Each client waits for its answer on its own thread; the answers come from this one.
    let connect = |path: &str| {
        let url = format!("{url}{path}");
        std::thread::spawn(move || ws_connect(&url, &offer))
    };
    let ok = connect("/ok");
    let (path, ok_deferred) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(path, "/ok");

    // While /ok waits, the loop serves everyone else.
    let (mut sync, _) = ws_connect(&format!("{url}/sync"), &[]).unwrap();
    sync.send(T::text("served meanwhile")).unwrap();
    assert_eq!(sync.read().unwrap(), T::text("served meanwhile"));
    ok_deferred.accept(None);
    let (mut ws, resp) = ok.join().unwrap().expect("accepted later");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "a", "the server's preference, as without deferral");
    ws.send(T::binary(vec![7u8; 70_000])).unwrap();
    assert_eq!(ws.read().unwrap(), T::binary(vec![7u8; 70_000]));

    // The answer picks a subprotocol the client offered; one it did not offer is ignored.
    for (path, asked, got) in [("/proto", "b", "b"), ("/unoffered", "zzz", "a")] {
        let client = connect(path);
        let (_, d) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
        d.accept(Some(asked));
        let (_, resp) = client.join().unwrap().expect("accepted");
        assert_eq!(resp.headers()["sec-websocket-protocol"], got, "{path}");
    }

    // Refused with the application's status; dropped unanswered: 503.
    let no = connect("/no");
    let (_, d) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
    d.reject(401, "who are you?\n");
    assert_eq!(refused_status(no.join().unwrap()), 401);
    // The same by id, through the server's handle (the first answer counts: the drop's 503 comes too late).
    let by_id = connect("/by-id");
    let (_, d) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
    server.handle.reject(d.id(), 403, "not you\n");
    drop(d);
    assert_eq!(refused_status(by_id.join().unwrap()), 403);
    let dropped = connect("/dropped");
    drop(pending.recv_timeout(Duration::from_secs(5)).unwrap());
    assert_eq!(refused_status(dropped.join().unwrap()), 503);

    // Never answered: the handshake timeout drops it, and on_close says so.
    let never = connect("/never");
    let (_, kept) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(never.join().unwrap().is_err(), "no answer: the socket is dropped at the handshake timeout");
    assert!(wait_until(Duration::from_secs(5), || closed_with(&closed, "/never").is_some()));
    assert_eq!(closed_with(&closed, "/never"), Some(CloseStatus::TimedOut(wskit::TimeoutKind::Handshake)));
    kept.accept(None); // too late: ignored
    assert_eq!(closed_with(&closed, "/no"), Some(CloseStatus::Refused { status: 401 }));
    assert_eq!(closed_with(&closed, "/dropped"), Some(CloseStatus::Refused { status: 503 }));

    sync.send(T::text("still here")).unwrap();
    assert_eq!(sync.read().unwrap(), T::text("still here"));
    ws.send(T::text("and here")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("and here"));
    let m = server.handle.metrics();
    assert_eq!(m.upgrades_deferred.load(Relaxed), 7);
    assert!(m.to_prometheus().contains("wskit_upgrades_deferred_total 7"));
}

fn tcp(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn bytes_sent_before_the_answer_wait_for_it() {
    let (server, pending, _closed) = gate(Config::new());
    let mut s = tcp(server.addr);
    let mut early = upgrade_request("/early").into_bytes();
    early.extend(client_frame(true, OpCode::Text, b"sent before the 101"));
    s.write_all(&early).unwrap();
    let (_, d) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&client_frame(true, OpCode::Binary, b"and another")).unwrap();
    d.accept(None);
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    assert_eq!(read_frame(&mut s).unwrap(), (true, 1, b"sent before the 101".to_vec()));
    assert_eq!(read_frame(&mut s).unwrap(), (true, 2, b"and another".to_vec()));

    // One that sends more than a little before its answer is dropped (RFC 6455 §4.1: it must wait).
    let mut s = tcp(server.addr);
    let mut flood = upgrade_request("/flood").into_bytes();
    flood.extend(client_frame(true, OpCode::Binary, &[0u8; 64 * 1024]));
    s.write_all(&flood).unwrap();
    let (_, d) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(reads_eof(&mut s), "dropped");
    d.accept(None);
}

#[test]
fn limits_are_checked_again_when_a_deferred_upgrade_is_accepted() {
    let (server, pending, closed) = gate(Config::new().max_connections(1, 0));
    let url = server.url("/late");
    let late = std::thread::spawn(move || ws_connect(&url, &[]));
    let (_, d) = pending.recv_timeout(Duration::from_secs(5)).unwrap();
    // The only place goes to another client while this one waits.
    let (mut first, _) = ws_connect(&server.url("/sync"), &[]).unwrap();
    d.accept(None);
    assert_eq!(refused_status(late.join().unwrap()), 503);
    assert!(wait_until(Duration::from_secs(5), || closed_with(&closed, "/late").is_some()));
    assert_eq!(closed_with(&closed, "/late"), Some(CloseStatus::Refused { status: 503 }));
    first.send(T::text("first")).unwrap();
    assert_eq!(first.read().unwrap(), T::text("first"));
}

#[test]
fn a_cluster_routes_each_answer_to_the_loop_that_holds_the_upgrade() {
    let (tx, pending) = channel();
    let closed: Closed = Arc::default();
    let c = closed.clone();
    let cluster = wskit::Cluster::bind("127.0.0.1:0", Config::new().max_connections(0, 0), 2, move |_| Gate {
        pending: tx.clone(),
        paths: Default::default(),
        closed: c.clone(),
    })
    .unwrap();
    let addr = cluster.local_addr();
    let handle = cluster.handle();
    let answers = std::thread::spawn(move || {
        for (i, (_, d)) in pending.iter().take(8).enumerate() {
            std::thread::sleep(Duration::from_millis(5));
            if i % 2 == 0 {
                d.accept(None);
            } else {
                // By id through the cluster's handle (the drop's 503 then comes too late to count).
                handle.accept(d.id(), None);
            }
        }
    });
    for i in 0..8 {
        let (mut ws, _) = ws_connect(&format!("ws://{addr}/auth{i}"), &[]).expect("accepted on its loop");
        ws.send(T::text(format!("client {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), T::text(format!("client {i}")));
    }
    answers.join().unwrap();
    let metrics: u64 =
        (0..2).map(|i| cluster.handle().loop_handle(i).unwrap().metrics().upgrades_deferred.load(Relaxed)).sum();
    assert_eq!(metrics, 8);
    cluster.handle().stop();
}
