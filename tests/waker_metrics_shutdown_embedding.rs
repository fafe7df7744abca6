//! The any-thread handle (a `mio::Waker` and a queue): sends from several threads at once, sends to a gone
//! connection refused; Prometheus metrics; graceful shutdown with its report; and embedding: the server
//! registered in the caller's own `mio::Poll`, and a socket accepted elsewhere handed over with its request.

mod common;
use common::*;
use std::io::{Read, Write};
use std::sync::mpsc::channel;
use std::time::Duration;
use tungstenite::Message as T;
use wskit::handshake::Request;
use wskit::{CloseCode, Config, ConnId, Ctx, Handler, Message, SendError, Server};

/// Reports each new connection's id.
struct Ids(std::sync::mpsc::Sender<ConnId>);
impl Handler for Ids {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &Request) {
        let _ = self.0.send(ctx.id());
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
}

#[test]
fn waker_handle_sends_from_many_threads_and_refuses_gone_ids() {
    let (tx, rx) = channel();
    let server = TestServer::start(Config::new(), move || Ids(tx));
    let (mut ws, _) = ws_connect(&server.url("/"), &[]).unwrap();
    let id = rx.recv().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = server.handle.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    h.send(id, Message::Text(&format!("{t}:{i}"))).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every message arrives once, and each thread's in its order.
    let mut next = [0; 4];
    for _ in 0..1000 {
        let m = ws.read().unwrap().into_text().unwrap().to_string();
        let (t, i) = m.split_once(':').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [250; 4]);
    // Close it from the handle; afterwards its id is refused (no panic).
    server.handle.close(id, CloseCode::NORMAL, "bye from a thread").unwrap();
    match ws.read() {
        Ok(T::Close(Some(f))) => assert_eq!(f.reason.as_str(), "bye from a thread"),
        other => panic!("{other:?}"),
    }
    let _ = ws.close(None);
    while ws.read().is_ok() {}
    assert!(wait_until(Duration::from_secs(5), || !server.handle.is_open(id)));
    assert_eq!(server.handle.send(id, Message::Text("late")), Err(SendError::NotOpen));
    assert_eq!(server.handle.close(id, CloseCode::NORMAL, ""), Err(SendError::NotOpen));
}

#[test]
fn metrics_count_and_render_as_prometheus_text() {
    let server = TestServer::echo(Config::new().allow_origins(["https://ok.example"]));
    let (mut ws, _) = ws_connect(&server.url("/"), &[]).unwrap();
    for _ in 0..3 {
        ws.send(T::text("12345")).unwrap();
        ws.read().unwrap();
    }
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    assert_eq!(refused_status(ws_connect(&server.url("/"), &[("Origin", "https://bad.example")])), 403);
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 12\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 426"));
    let m = server.handle.metrics();
    assert!(wait_until(Duration::from_secs(5), || m.closes(1000, true) == 1));
    let text = m.to_prometheus();
    for line in [
        "wskit_connections_opened_total 1",
        "wskit_connections_open 0",
        "wskit_messages_in_total 3",
        "wskit_messages_out_total 3",
        "wskit_payload_bytes_in_total 15",
        "wskit_upgrades_refused_total{reason=\"origin\"} 1",
        "wskit_handshake_errors_total{status=\"403\"} 1",
        "wskit_handshake_errors_total{status=\"426\"} 1",
        "wskit_closes_total{code=\"1000\",by=\"peer\"} 1",
        "# TYPE wskit_loop_turn_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    let accepted: u64 =
        text.lines().find_map(|l| l.strip_prefix("wskit_connections_accepted_total ")).unwrap().parse().unwrap();
    assert_eq!(accepted, 3);
    // Every sample line is `name{labels} number`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }
}

#[test]
fn shutdown_closes_everyone_with_1001_and_reports() {
    let (tx, rx) = channel();
    let thread = std::thread::spawn(move || {
        let mut server = Server::bind("127.0.0.1:0", Config::new(), Echo).unwrap();
        tx.send((server.local_addr(), server.handle())).unwrap();
        server.run().unwrap()
    });
    let (addr, handle) = rx.recv().unwrap();
    let url = format!("ws://{addr}/");
    // Two clients that answer the close, one that never reads (it will be dropped at the deadline).
    let polite: Vec<_> = (0..2).map(|_| ws_connect(&url, &[]).unwrap().0).collect();
    let mut mute = raw_client(addr);
    let readers: Vec<_> = polite
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || loop {
                match ws.read() {
                    Ok(T::Close(Some(f))) => {
                        // Reading on sends tungstenite's echo of the close, then sees the server's FIN.
                        while ws.read().is_ok() {}
                        return f.code;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || handle.metrics().open.load(std::sync::atomic::Ordering::Relaxed) == 3)
    );
    handle.shutdown(Duration::from_millis(500));
    for r in readers {
        assert_eq!(r.join().unwrap(), tungstenite::protocol::frame::coding::CloseCode::Away);
    }
    let report = thread.join().unwrap().expect("a shutdown report");
    assert_eq!(report.closed_cleanly, 2, "{report:?}");
    assert_eq!(report.dropped_at_deadline, 1, "{report:?}");
    assert_eq!(read_close(&mut mute), Some(1001));
    // No longer accepting.
    assert!(std::net::TcpStream::connect(addr).is_err() || ws_connect(&url, &[]).is_err());
}

#[test]
fn embedding_in_the_callers_poll_and_adopting_a_socket() {
    use mio::{Events, Interest, Poll, Token};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // "another HTTP server"
    let other_addr = listener.local_addr().unwrap();
    let (tx, rx) = channel();
    let thread = std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let mut server = Server::bind("127.0.0.1:0", Config::new(), Echo).unwrap();
        poll.registry().register(&mut server, Token(7), Interest::READABLE).unwrap();
        tx.send((server.local_addr(), server.handle())).unwrap();
        // The other server accepts a connection, reads the request head itself, and hands the socket over.
        let (mut sock, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            sock.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        server.adopt(sock, &head).unwrap();
        // A second one whose request the other server parsed into a target and headers.
        let (mut sock, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            sock.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let text = String::from_utf8(head).unwrap();
        let mut lines = text.lines();
        let target = lines.next().unwrap().split(' ').nth(1).unwrap().to_string();
        let headers: Vec<(&str, &str)> =
            lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect();
        server.adopt_parsed(sock, &target, &headers).unwrap();
        let mut events = Events::with_capacity(16);
        while !server.is_stopped() {
            poll.poll(&mut events, server.next_timeout().or(Some(Duration::from_millis(50)))).unwrap();
            server.handle_ready().unwrap();
        }
    });
    let (addr, handle) = rx.recv().unwrap();
    // First the handed-over one (the server thread waits for it before running its loop).
    let (mut adopted, _) = ws_connect(&format!("ws://{other_addr}/handed-over"), &[]).unwrap();
    let (mut parsed, _) = ws_connect(&format!("ws://{other_addr}/parsed?by=other"), &[]).unwrap();
    let (mut ws, _) = ws_connect(&format!("ws://{addr}/"), &[]).unwrap();
    ws.send(T::text("through the caller's poll")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("through the caller's poll"));
    adopted.send(T::text("adopted")).unwrap();
    assert_eq!(adopted.read().unwrap(), T::text("adopted"));
    parsed.send(T::text("parsed elsewhere")).unwrap();
    assert_eq!(parsed.read().unwrap(), T::text("parsed elsewhere"));
    handle.stop();
    thread.join().unwrap();
}

/// CPU time this thread has used, in clock ticks (Linux: `/proc/thread-self/stat`, user + system).
#[cfg(target_os = "linux")]
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn busy_polling_spins_within_the_wait_then_sleeps_and_serves() {
    use std::time::Instant;
    // A spin longer than the wait: the wait still ends on time (deadlines and `max_wait` bound the spin).
    let config = Config { busy_poll: Duration::from_secs(30), ..Config::new() };
    let mut server = Server::bind("127.0.0.1:0", config, Echo).unwrap();
    let t = Instant::now();
    assert_eq!(server.poll_once(Some(Duration::from_millis(100))).unwrap(), 0);
    assert!(t.elapsed() < Duration::from_secs(3), "the spin outlasted the wait: {:?}", t.elapsed());
    // A short spin, then sleep: waiting 400 ms idle costs about the spin, not the wait (clock ticks are 10 ms).
    let config = Config { busy_poll: Duration::from_millis(2), ..Config::new() };
    let mut server = Server::bind("127.0.0.1:0", config, Echo).unwrap();
    let (cpu, t) = (thread_cpu_ticks(), Instant::now());
    server.poll_once(Some(Duration::from_millis(400))).unwrap();
    let (spent, waited) = (thread_cpu_ticks() - cpu, t.elapsed());
    assert!(waited >= Duration::from_millis(390), "woke early: {waited:?}");
    assert!(spent <= 10, "spun {spent} ticks of a 400 ms idle wait");
    // And it does spin: a 300 ms spin inside a 400 ms wait is CPU time (at least half of it, on a busy machine).
    let config = Config { busy_poll: Duration::from_millis(300), ..Config::new() };
    let mut server = Server::bind("127.0.0.1:0", config, Echo).unwrap();
    let cpu = thread_cpu_ticks();
    server.poll_once(Some(Duration::from_millis(400))).unwrap();
    let spent = thread_cpu_ticks() - cpu;
    assert!(spent >= 15, "a 300 ms spin took {spent} ticks of CPU: it slept");
    // And it serves: echoes come back while the loop spins between messages.
    let server = TestServer::echo(Config { busy_poll: Duration::from_micros(200), ..Config::new() });
    let (mut ws, _) = ws_connect(&server.url("/"), &[]).unwrap();
    for i in 0..100 {
        ws.send(T::text(format!("spin {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), T::text(format!("spin {i}")));
    }
}
