//! Routing by path (exact, prefix, 404 before the upgrade), typed per-connection data, the handler chain
//! (accept / refuse / pass on), the `Origin` allow-list (403), subprotocol preference and strict mode (400), and
//! the connection limits (503 server-wide, 429 per IP), all through the `tungstenite` client.

mod common;
use common::*;
use std::time::Duration;
use tungstenite::Message as T;
use wskit::handshake::Request;
use wskit::metrics::Refusal;
use wskit::{Config, ConnData, Ctx, Handler, Handlers, Message, Response, Router};

/// Answers every message with its route name and a per-connection counter kept in typed `ConnData`.
struct Named {
    name: &'static str,
    counts: ConnData<u32>,
}
impl Named {
    fn new(name: &'static str) -> Self {
        Named { name, counts: ConnData::new() }
    }
}
impl Handler for Named {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &Request) {
        self.counts.insert(ctx.id(), 0);
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _msg: Message<'_>) {
        let n = self.counts.get_mut(ctx.id()).expect("typed data of this connection");
        *n += 1;
        let reply = format!("{} {}", self.name, n);
        ctx.send_text(&reply);
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, _status: &wskit::CloseStatus) {
        assert!(self.counts.remove(ctx.id()).is_some());
    }
    fn on_http(&mut self, _ctx: &mut Ctx<'_>, _req: &Request) -> Option<Response> {
        Some(Response::new(200, "text/plain", self.name))
    }
}

fn ask(url: &str) -> String {
    let (mut ws, _) = ws_connect(url, &[]).unwrap();
    ws.send(T::text("hi")).unwrap();
    ws.send(T::text("hi")).unwrap();
    let _ = ws.read().unwrap();
    let second = ws.read().unwrap().into_text().unwrap().to_string();
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    second
}

#[test]
fn routing_by_exact_path_and_longest_prefix_with_404_before_the_upgrade() {
    let server = TestServer::start(Config::new(), || {
        Router::new()
            .exact("/chat", Named::new("chat"))
            .prefix("/rooms/", Named::new("rooms"))
            .prefix("/rooms/vip/", Named::new("vip"))
    });
    assert_eq!(ask(&server.url("/chat")), "chat 2");
    assert_eq!(ask(&server.url("/chat?x=1")), "chat 2");
    assert_eq!(ask(&server.url("/rooms/1")), "rooms 2");
    assert_eq!(ask(&server.url("/rooms/vip/7")), "vip 2");
    assert_eq!(refused_status(ws_connect(&server.url("/chat/more"), &[])), 404);
    assert_eq!(refused_status(ws_connect(&server.url("/"), &[])), 404);
    // Plain HTTP is routed the same way.
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /rooms/x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("rooms"), "{out}");
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(wait_until(Duration::from_secs(5), || server.handle.metrics().refusals(Refusal::Handler) == 2));
}

/// Accepts outright when a cookie says so, refuses `/banned`, else passes on.
struct Gate;
impl Handler for Gate {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        if req.cookie("session") == Some("vip") {
            ctx.accept();
        } else if req.path() == "/banned" {
            ctx.reject(451, "unavailable\n");
        }
    }
}
/// Refuses everyone who reaches it.
struct Closed;
impl Handler for Closed {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &Request) {
        ctx.reject(403, "members only\n");
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
}

#[test]
fn routing_handler_chain_accepts_refuses_or_passes_on() {
    let server = TestServer::start(Config::new(), || Handlers::new().with(Gate).with(Closed));
    assert_eq!(refused_status(ws_connect(&server.url("/"), &[])), 403); // passed on to Closed
    assert_eq!(refused_status(ws_connect(&server.url("/banned"), &[])), 451);
    let (mut ws, _) = ws_connect(&server.url("/"), &[("Cookie", "a=1; session=vip")]).unwrap();
    ws.send(T::text("in")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("in"));
}

#[test]
fn origin_allow_list_exact_and_wildcard_with_403() {
    let config = Config::new().allow_origins(["https://example.com", "https://*.example.org"]);
    let server = TestServer::echo(config.clone());
    for ok in ["https://example.com", "https://chat.example.org", "https://a.b.example.org"] {
        assert!(ws_connect(&server.url("/"), &[("Origin", ok)]).is_ok(), "{ok}");
    }
    for bad in ["https://evil.com", "http://example.com", "https://example.org", "https://example.com.evil.com"] {
        assert_eq!(refused_status(ws_connect(&server.url("/"), &[("Origin", bad)])), 403, "{bad}");
    }
    // No Origin (not a browser): allowed by default, refused when configured so.
    assert!(ws_connect(&server.url("/"), &[]).is_ok());
    let mut strict = config;
    strict.allow_missing_origin = false;
    let server2 = TestServer::echo(strict);
    assert_eq!(refused_status(ws_connect(&server2.url("/"), &[])), 403);
    assert!(wait_until(Duration::from_secs(5), || server.handle.metrics().refusals(Refusal::Origin) == 4));
}

#[test]
fn subprotocol_preference_and_strict_mode() {
    let server = TestServer::echo(Config::new().subprotocols(["v3.chat", "v2.chat"], false));
    let proto = |r: &tungstenite::handshake::client::Response| {
        r.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string())
    };
    // The server's order wins over the client's.
    let (_, r) = ws_connect(&server.url("/"), &[("Sec-WebSocket-Protocol", "v2.chat, v3.chat")]).unwrap();
    assert_eq!(proto(&r).as_deref(), Some("v3.chat"));
    let (_, r) = ws_connect(&server.url("/"), &[("Sec-WebSocket-Protocol", "v1.chat, v2.chat")]).unwrap();
    assert_eq!(proto(&r).as_deref(), Some("v2.chat"));
    // Nothing in common: accepted without a protocol (never one the client did not offer).
    let (_, r) = ws_connect(&server.url("/"), &[("Sec-WebSocket-Protocol", "v1.chat")]).unwrap_err_or_ok();
    assert_eq!(proto(&r), None);

    let strict = TestServer::echo(Config::new().subprotocols(["v3.chat"], true));
    assert_eq!(refused_status(ws_connect(&strict.url("/"), &[("Sec-WebSocket-Protocol", "v1.chat")])), 400);
    assert_eq!(refused_status(ws_connect(&strict.url("/"), &[])), 400);
    let (_, r) = ws_connect(&strict.url("/"), &[("Sec-WebSocket-Protocol", "v3.chat")]).unwrap();
    assert_eq!(proto(&r).as_deref(), Some("v3.chat"));
}

/// tungstenite refuses a response without the protocol it offered; read the raw answer instead.
trait RawAnswer {
    fn unwrap_err_or_ok(self) -> ((), tungstenite::handshake::client::Response);
}
impl<S> RawAnswer for Result<(S, tungstenite::handshake::client::Response), tungstenite::Error> {
    fn unwrap_err_or_ok(self) -> ((), tungstenite::handshake::client::Response) {
        match self {
            Ok((_, r)) => ((), r),
            Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_))) => {
                ((), tungstenite::handshake::client::Response::new(None))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn connection_limits_503_server_wide_and_429_per_ip() {
    let server = TestServer::echo(Config::new().max_connections(3, 0));
    let held: Vec<_> = (0..3).map(|_| ws_connect(&server.url("/"), &[]).unwrap()).collect();
    let refused = ws_connect(&server.url("/"), &[]);
    match &refused {
        Err(tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        }
        _ => panic!("expected 503"),
    }
    drop(held);
    // Once they are gone, there is room again.
    assert!(wait_until(Duration::from_secs(5), || ws_connect(&server.url("/"), &[]).is_ok()));
    assert_eq!(server.handle.metrics().refusals(Refusal::Full), 1);

    let per_ip = TestServer::echo(Config::new().max_connections(0, 2));
    let held: Vec<_> = (0..2).map(|_| ws_connect(&per_ip.url("/"), &[]).unwrap()).collect();
    assert_eq!(refused_status(ws_connect(&per_ip.url("/"), &[])), 429);
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || ws_connect(&per_ip.url("/"), &[]).is_ok()));
    assert_eq!(per_ip.handle.metrics().refusals(Refusal::PerIp), 1);
}
