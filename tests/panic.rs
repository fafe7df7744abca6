//! A handler that panics costs one connection, not the process: the connection it ran for is closed with 1011
//! (or refused with 500 during the upgrade), the panic is logged, and the loop and every other connection go on.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use wskit::frame::OpCode;
use wskit::handshake::Request;
use wskit::{Config, Ctx, Handler, Message};

struct Fragile;
impl Handler for Fragile {
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, req: &Request) {
        if req.path() == "/boom" {
            panic!("on_open exploded");
        }
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg == Message::Text("boom") {
            panic!("on_message exploded");
        }
        ctx.send(msg);
    }
    fn on_ping(&mut self, _ctx: &mut Ctx<'_>, _payload: &[u8]) {
        panic!("on_ping exploded");
    }
}

#[test]
fn a_panicking_handler_costs_one_connection() {
    let server = TestServer::start(Config::new(), || Fragile);
    let mut bystander = raw_client(server.addr);

    // on_message panics: that connection gets 1011.
    let mut victim = raw_client(server.addr);
    victim.write_all(&client_frame(true, OpCode::Text, b"boom")).unwrap();
    assert_eq!(read_close(&mut victim), Some(1011));
    // on_ping panics: the pong was already queued; the connection is closed with 1011.
    let mut pinger = raw_client(server.addr);
    pinger.write_all(&client_frame(true, OpCode::Ping, b"hi")).unwrap();
    assert_eq!(read_close(&mut pinger), Some(1011));
    // on_open panics: the upgrade is refused with 500.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request("/boom").as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 500 "), "{resp}");

    // Everyone else is still served.
    bystander.write_all(&client_frame(true, OpCode::Text, b"still fine")).unwrap();
    assert_eq!(read_frame(&mut bystander).unwrap().2, b"still fine");
    let mut late = raw_client(server.addr);
    late.write_all(&client_frame(true, OpCode::Binary, b"new")).unwrap();
    assert_eq!(read_frame(&mut late).unwrap().2, b"new");
}
