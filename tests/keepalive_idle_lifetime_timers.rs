//! The liveness timers, each with its own close: keepalive pings with a pong deadline (1011), the idle timeout
//! (1001) and the maximum lifetime (1001); and the handler's own timers (once, every, cancelled).

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use wskit::frame::OpCode;
use wskit::handshake::Request;
use wskit::{Config, Ctx, Handler, TimeoutKind};

fn close_reason(s: &mut std::net::TcpStream) -> (u16, String) {
    loop {
        let (_, op, p) = read_frame(s).expect("a close frame");
        if op == 0x8 {
            return (u16::from_be_bytes([p[0], p[1]]), String::from_utf8_lossy(&p[2..]).into_owned());
        }
    }
}

#[test]
fn keepalive_pings_and_closes_1011_when_unanswered() {
    let config = Config::new().liveness(None, Some(Duration::from_millis(200)), Duration::from_millis(400), None);
    let server = TestServer::echo(config);
    let mut c = raw_client(server.addr);
    let start = Instant::now();
    // The first ping comes after 200 ms of silence; anything we send counts as an answer.
    let (_, op, payload) = read_frame(&mut c).unwrap();
    assert_eq!((op, payload.as_slice()), (0x9, &b"wskit"[..]));
    assert!(start.elapsed() >= Duration::from_millis(190), "{:?}", start.elapsed());
    c.write_all(&client_frame(true, OpCode::Pong, b"wskit")).unwrap();
    let (_, op, _) = read_frame(&mut c).unwrap();
    assert_eq!(op, 0x9, "a second ping after another quiet interval");
    // This one goes unanswered: 1011 after the pong deadline.
    let (code, reason) = close_reason(&mut c);
    assert_eq!((code, reason.as_str()), (1011, "keepalive ping timeout"));
    // Answer the close, so the connection ends (and is counted) now rather than at the close timeout.
    c.write_all(&client_frame(true, OpCode::Close, &1011u16.to_be_bytes())).unwrap();
    assert!(reads_eof(&mut c));
    let m = server.handle.metrics();
    assert!(wait_until(Duration::from_secs(10), || m.timeouts(TimeoutKind::Keepalive) == 1));
}

#[test]
fn idle_timeout_closes_1001_unless_the_peer_talks() {
    let config = Config::new().liveness(Some(Duration::from_millis(400)), None, Duration::from_secs(1), None);
    let server = TestServer::echo(config);
    let mut quiet = raw_client(server.addr);
    let mut chatty = raw_client(server.addr);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        chatty.write_all(&client_frame(true, OpCode::Text, b"still here")).unwrap();
        assert_eq!(read_frame(&mut chatty).unwrap().2, b"still here");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, reason) = close_reason(&mut quiet);
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    quiet.write_all(&client_frame(true, OpCode::Close, &1001u16.to_be_bytes())).unwrap();
    assert!(reads_eof(&mut quiet));
    chatty.write_all(&client_frame(true, OpCode::Text, b"and now")).unwrap();
    assert_eq!(read_frame(&mut chatty).unwrap().2, b"and now");
    let m = server.handle.metrics();
    assert!(wait_until(Duration::from_secs(5), || m.timeouts(TimeoutKind::Idle) == 1));
}

#[test]
fn lifetime_closes_1001_even_a_busy_connection() {
    let config = Config::new().liveness(None, None, Duration::from_secs(1), Some(Duration::from_millis(500)));
    let server = TestServer::echo(config);
    let mut c = raw_client(server.addr);
    let start = Instant::now();
    loop {
        c.write_all(&client_frame(true, OpCode::Text, b"busy")).unwrap();
        let (_, op, p) = read_frame(&mut c).unwrap();
        if op == 0x8 {
            assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1001);
            assert_eq!(&p[2..], b"connection lifetime reached");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(start.elapsed() >= Duration::from_millis(490), "{:?}", start.elapsed());
}

/// An interval every 100 ms (cancelled after three ticks) and a one-shot at 250 ms.
struct Ticker {
    ticks: u32,
}
impl Handler for Ticker {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &Request) {
        ctx.set_interval(1, Duration::from_millis(100));
        ctx.set_timer(2, Duration::from_millis(250));
        ctx.set_timer(3, Duration::from_millis(50));
        ctx.cancel_timer(3); // never fires
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: u64) {
        match timer {
            1 => {
                self.ticks += 1;
                ctx.send_text(&format!("tick {}", self.ticks));
                if self.ticks == 3 {
                    ctx.cancel_timer(1);
                }
            }
            2 => {
                ctx.send_text("once");
            }
            other => {
                ctx.send_text(&format!("unexpected {other}"));
            }
        }
    }
}

#[test]
fn user_timers_once_every_and_cancel() {
    let server = TestServer::start(Config::new(), || Ticker { ticks: 0 });
    let mut c = raw_client(server.addr);
    let start = Instant::now();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(String::from_utf8(read_frame(&mut c).unwrap().2).unwrap());
    }
    assert_eq!(got, ["tick 1", "tick 2", "once", "tick 3"]);
    assert!(start.elapsed() >= Duration::from_millis(290), "{:?}", start.elapsed());
    // Nothing more: the interval was cancelled.
    c.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let e = read_frame(&mut c).unwrap_err();
    assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}");
}
