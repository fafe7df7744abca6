//! The closing handshake: codes echoed, 3000–4999 accepted, bad codes refused, handler-initiated close with any
//! code and reason, the server closing TCP first, and the close timeout.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::protocol::CloseFrame;
use wskit::frame::OpCode;
use wskit::{CloseCode, CloseStatus, Config, Ctx, Handler, Message};

#[test]
fn valid_codes_are_echoed_and_tcp_closes() {
    let server = TestServer::echo(Config::new());
    for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 3999, 4000, 4999] {
        let mut c = raw_client(server.addr);
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"reason");
        c.write_all(&client_frame(true, OpCode::Close, &payload)).unwrap();
        assert_eq!(read_close(&mut c), Some(code));
        assert!(reads_eof(&mut c), "server closes TCP after echoing {code}");
    }
}

#[test]
fn empty_close_gets_empty_close() {
    let server = TestServer::echo(Config::new());
    let mut c = raw_client(server.addr);
    c.write_all(&client_frame(true, OpCode::Close, b"")).unwrap();
    assert_eq!(read_close(&mut c), None);
}

#[test]
fn bad_codes_get_1002() {
    let server = TestServer::echo(Config::new());
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000] {
        let mut c = raw_client(server.addr);
        c.write_all(&client_frame(true, OpCode::Close, &code.to_be_bytes())).unwrap();
        assert_eq!(read_close(&mut c), Some(1002), "code {code}");
    }
    let mut c = raw_client(server.addr);
    c.write_all(&client_frame(true, OpCode::Close, &[3])).unwrap();
    assert_eq!(read_close(&mut c), Some(1002), "1-byte close payload");
}

/// Closes with 4001 "see you" when told "bye"; records close statuses.
struct Closer(std::sync::mpsc::Sender<CloseStatus>);

impl Handler for Closer {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg == Message::Text("bye") {
            ctx.close(CloseCode(4001), "see you");
        } else {
            ctx.send(msg);
        }
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, status: &CloseStatus) {
        let _ = self.0.send(status.clone());
    }
}

#[test]
fn handler_closes_with_its_own_code_and_reason() {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = TestServer::start(Config::new(), move || Closer(tx));
    let (mut ws, _) = tungstenite::connect(server.url("/")).unwrap();
    ws.send(tungstenite::Message::text("bye")).unwrap();
    let frame = loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(f)) => break f,
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let frame = frame.expect("a close frame");
    assert_eq!(frame.code, TCode::from(4001));
    assert_eq!(frame.reason.as_str(), "see you");
    // tungstenite answers the close; the server then reports a clean close started by us.
    let _ = ws.flush();
    let status = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(status, CloseStatus::Clean { by_peer: false, .. }), "{status:?}");
}

#[test]
fn client_close_is_reported_with_its_code() {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = TestServer::start(Config::new(), move || Closer(tx));
    let (mut ws, _) = tungstenite::connect(server.url("/")).unwrap();
    ws.close(Some(CloseFrame { code: TCode::from(3333), reason: "done".into() })).unwrap();
    while ws.read().is_ok() {}
    let status = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status, CloseStatus::Clean { code: CloseCode(3333), reason: "done".into(), by_peer: true });
}

#[test]
fn vanished_client_is_reported_lost() {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = TestServer::start(Config::new(), move || Closer(tx));
    let c = raw_client(server.addr);
    drop(c);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), CloseStatus::Lost);
}

#[test]
fn peer_that_never_answers_our_close_is_dropped_at_the_close_timeout() {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = TestServer::start(Config::new().close_timeout(Duration::from_millis(300)), move || Closer(tx));
    let mut c = raw_client(server.addr);
    c.write_all(&client_frame(true, OpCode::Text, b"bye")).unwrap();
    let start = Instant::now();
    assert_eq!(read_close(&mut c), Some(4001));
    // We never answer.
    assert!(reads_eof(&mut c));
    assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), CloseStatus::TimedOut(wskit::TimeoutKind::Close));
}
