//! Topics (subscribe, unsubscribe, publish from a callback and from another thread, order kept), the outbound
//! policy (send statuses, droppable messages, on_drain after back-pressure; a peer that never reads is dropped at `max_queued_bytes` while the
//! others get everything) and pausing / resuming reads on one connection without stalling the others.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use tungstenite::Message as T;
use wskit::frame::OpCode;
use wskit::handshake::Request;
use wskit::{Config, Ctx, Handler, Message, SendStatus};

/// `?room=NAME` subscribes to NAME; a text message is published to the room, `leave` unsubscribes.
struct Rooms;
impl Handler for Rooms {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        let room = req.query().and_then(|q| q.strip_prefix("room=")).unwrap_or("lobby").to_string();
        ctx.subscribe(&room);
        ctx.subscribe(&room); // idempotent: still one copy per message
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            if let Some(room) = t.strip_prefix("leave ") {
                ctx.unsubscribe(room);
                ctx.send_text("left");
            } else if let Some((room, text)) = t.split_once(':') {
                ctx.publish(room, Message::Text(text));
            }
        }
    }
}

fn text(ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>) -> String {
    ws.read().unwrap().into_text().unwrap().to_string()
}

#[test]
fn topic_publish_reaches_subscribers_only_in_order() {
    let server = TestServer::start(Config::new(), || Rooms);
    let (mut a, _) = ws_connect(&server.url("/?room=a"), &[]).unwrap();
    let (mut b, _) = ws_connect(&server.url("/?room=a"), &[]).unwrap();
    let (mut c, _) = ws_connect(&server.url("/?room=c"), &[]).unwrap();
    a.send(T::text("a:hello a")).unwrap();
    assert_eq!(text(&mut a), "hello a");
    assert_eq!(text(&mut b), "hello a");
    c.send(T::text("c:hello c")).unwrap();
    assert_eq!(text(&mut c), "hello c"); // c got nothing from room a before this
                                         // Publishing from another thread, many messages: order kept.
    for i in 0..200 {
        server.handle.publish("a", Message::Text(&format!("n{i}")));
    }
    for i in 0..200 {
        assert_eq!(text(&mut a), format!("n{i}"));
        assert_eq!(text(&mut b), format!("n{i}"));
    }
    // b leaves the room; a still gets what is published there.
    b.send(T::text("leave a")).unwrap();
    assert_eq!(text(&mut b), "left");
    a.send(T::text("a:after")).unwrap();
    assert_eq!(text(&mut a), "after");
    b.send(T::text("c:to c")).unwrap(); // anyone may publish
    assert_eq!(text(&mut c), "to c");
    c.send(T::text("b-check:x")).unwrap();
    b.send(T::text("a:ping")).unwrap();
    assert_eq!(text(&mut a), "ping");
    // A closed subscriber is gone from its topics.
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || server.connections() == 2));
    server.handle.publish("c", Message::Text("nobody"));
    a.send(T::text("a:still")).unwrap();
    assert_eq!(text(&mut a), "still");
}

/// On `go`, queues 8 MiB to this connection and reports the send statuses it got; says `drained` from
/// `on_drain`.
struct Flood;
impl Handler for Flood {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _msg: Message<'_>) {
        let chunk = vec![7u8; 64 * 1024];
        let (mut queued, mut pressed) = (0, 0);
        for _ in 0..128 {
            match ctx.send_binary(&chunk) {
                SendStatus::Queued => queued += 1,
                SendStatus::Backpressure => pressed += 1,
                SendStatus::Dropped => panic!("an open connection"),
            }
        }
        let skipped = ctx.send_droppable(ctx.id(), Message::Text("a droppable update"));
        ctx.send_text(&format!("queued {queued}, back-pressure {pressed}, droppable {skipped:?}"));
    }
    fn on_drain(&mut self, ctx: &mut Ctx<'_>) {
        ctx.send_text("drained");
    }
}

#[test]
fn backpressure_then_drain_callback() {
    let mut config = Config::new().deflate(false);
    config.write_high_water = 1 << 20;
    config.max_queued_bytes = 16 << 20; // the handler queues 8 MiB in one callback
    let server = TestServer::start(config, || Flood);
    let (mut ws, _) = ws_connect(&server.url("/"), &[]).unwrap();
    ws.send(T::text("go")).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let the queue build up
    for _ in 0..128 {
        assert_eq!(ws.read().unwrap().len(), 64 * 1024);
    }
    // 1 MiB high-water mark: sixteen 64 KiB messages fill it exactly; the 17th is over it.
    assert_eq!(text(&mut ws), "queued 16, back-pressure 112, droppable Dropped");
    assert_eq!(text(&mut ws), "drained");
    assert!(wait_until(Duration::from_secs(5), || server
        .handle
        .metrics()
        .queued_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0));
}

#[test]
fn backpressure_slow_consumer_is_dropped_and_the_others_get_everything() {
    let mut config = Config::new().deflate(false);
    config.write_high_water = 256 * 1024;
    config.max_queued_bytes = 1 << 20;
    let server = TestServer::start(config, || Rooms);
    // The slow one subscribes and then never reads.
    let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
    slow.write_all(upgrade_request("/?room=news").as_bytes()).unwrap();
    assert!(read_head(&mut slow).starts_with("HTTP/1.1 101"));
    let (fast, _) = ws_connect(&server.url("/?room=news"), &[]).unwrap();
    let reader = std::thread::spawn(move || {
        let mut fast = fast;
        let mut n = 0;
        while n < 400 {
            match fast.read().unwrap() {
                T::Binary(b) => {
                    assert_eq!(b.len(), 64 * 1024);
                    n += 1
                }
                other => panic!("{other:?}"),
            }
        }
        n
    });
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..400 {
        server.handle.publish("news", Message::Binary(&chunk));
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(reader.join().unwrap(), 400);
    let m = server.handle.metrics();
    assert!(wait_until(Duration::from_secs(5), || m.slow_closed.load(std::sync::atomic::Ordering::Relaxed) == 1));
    assert_eq!(m.closes(1008, false), 1);
    // The slow client sees its stream end (after whatever fitted in the socket buffers).
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(reads_eof(&mut slow));
}

/// `pause` stops reading from this connection for 1 s (a timer resumes it); everything else is echoed.
struct Pauser;
impl Handler for Pauser {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg.as_bytes() == b"pause" {
            ctx.pause_reading();
            ctx.set_timer(1, Duration::from_millis(1000));
            ctx.send_text("paused");
        } else {
            ctx.send(msg);
        }
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: u64) {
        let id = ctx.id();
        ctx.resume_reading(id);
    }
}

#[test]
fn pause_reading_one_connection_leaves_the_others_served() {
    let server = TestServer::start(Config::new(), || Pauser);
    let mut paused = raw_client(server.addr);
    paused.write_all(&client_frame(true, OpCode::Text, b"pause")).unwrap();
    assert_eq!(read_frame(&mut paused).unwrap().2, b"paused");
    let sent = Instant::now();
    for i in 0..5 {
        paused.write_all(&client_frame(true, OpCode::Text, format!("m{i}").as_bytes())).unwrap();
    }
    // Meanwhile another connection is served at once.
    let (mut other, _) = ws_connect(&server.url("/"), &[]).unwrap();
    other.send(T::text("quick")).unwrap();
    assert_eq!(text(&mut other), "quick");
    assert!(sent.elapsed() < Duration::from_millis(900), "{:?}", sent.elapsed());
    for i in 0..5 {
        assert_eq!(read_frame(&mut paused).unwrap().2, format!("m{i}").as_bytes());
    }
    assert!(sent.elapsed() >= Duration::from_millis(990), "answered while paused: {:?}", sent.elapsed());
}
