//! Handlers: several small ones composed into one (the seed's handler list), refusing an upgrade from `on_open`,
//! plain HTTP beside WebSocket, sending to another connection, the peer address, and subprotocol choice.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;
use tungstenite::Message as T;
use wskit::handshake::Request;
use wskit::{CloseStatus, Config, Ctx, Handler, Handlers, Message, Response};

/// Refuses upgrades to /private with 403.
struct Guard;
impl Handler for Guard {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        if req.path() == "/private" {
            ctx.reject(403, "no entry\n");
        }
        if req.protocols().any(|p| p == "chat.v2") {
            ctx.accept_protocol("chat.v2");
        }
    }
}

/// Serves /health over plain HTTP.
struct Health;
impl Handler for Health {
    fn on_http(&mut self, _ctx: &mut Ctx<'_>, req: &Request) -> Option<Response> {
        (req.path() == "/health").then(|| Response::new(200, "text/plain", "ok\n"))
    }
}

/// Records what it sees.
struct Recorder(Sender<String>);
impl Handler for Recorder {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        let _ = self.0.send(format!("open {} from {}", req.uri(), ctx.peer_ip()));
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, status: &CloseStatus) {
        let _ = self.0.send(format!("close {}", status.code()));
    }
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn composed_handlers_each_do_their_part() {
    let (tx, rx) = channel();
    let server = TestServer::start(Config::new(), move || Handlers::new().with(Guard).with(Health).with(Recorder(tx)));
    // Guard refuses, and the later handlers never see the refused connection.
    let err = tungstenite::connect(server.url("/private")).unwrap_err();
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other}"),
    }
    // Health answers plain HTTP; other paths get the default 426.
    assert!(http_get(server.addr, "/health").starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(http_get(server.addr, "/other").starts_with("HTTP/1.1 426 "));
    // Recorder echoes and sees open and close, with the peer's address.
    let (mut ws, _) = tungstenite::connect(server.url("/room?x=1")).unwrap();
    ws.send(T::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("hi"));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "open /room?x=1 from 127.0.0.1");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "close 1005");
}

#[test]
fn subprotocol_is_answered_only_when_offered() {
    let server = TestServer::start(Config::new(), || Handlers::new().with(Guard).with(Echo));
    let mut s = TcpStream::connect(server.addr).unwrap();
    let req = upgrade_request("/").replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat.v1, chat.v2\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.contains("Sec-WebSocket-Protocol: chat.v2\r\n"), "{head}");
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(upgrade_request("/").as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
}

/// Relays every message to the previous connection.
#[derive(Default)]
struct Relay(Vec<wskit::ConnId>);
impl Handler for Relay {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &Request) {
        self.0.push(ctx.id());
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if let Some(&first) = self.0.first() {
            ctx.send_to(first, msg);
        }
    }
}

#[test]
fn send_to_another_connection() {
    let server = TestServer::start(Config::new(), Relay::default);
    let (mut a, _) = tungstenite::connect(server.url("/")).unwrap();
    let (mut b, _) = tungstenite::connect(server.url("/")).unwrap();
    b.send(T::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(a.read().unwrap(), T::binary(vec![1, 2, 3]));
}
