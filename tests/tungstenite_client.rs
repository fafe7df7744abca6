//! The `tungstenite` crate as the client: text and binary echo, pings, and many messages on one connection.

mod common;
use common::*;
use tungstenite::Message as T;
use wskit::Config;

#[test]
fn tungstenite_echo() {
    let server = TestServer::echo(Config::new().max_payload_size(2 << 20));
    let (mut ws, resp) = tungstenite::connect(server.url("/chat?x=1")).unwrap();
    assert_eq!(resp.status(), 101);
    for n in [0usize, 10, 200, 70_000, 1 << 20] {
        let bin: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        ws.send(T::binary(bin.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), T::binary(bin));
        let text: String = "wskit ✓ ".repeat(n / 10 + 1);
        ws.send(T::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), T::text(text));
    }
    ws.send(T::Ping(b"hello".to_vec().into())).unwrap();
    match ws.read().unwrap() {
        T::Pong(p) => assert_eq!(&p[..], b"hello"),
        other => panic!("expected a pong, got {other:?}"),
    }
    for i in 0..1000 {
        ws.send(T::text(format!("message {i}"))).unwrap();
    }
    for i in 0..1000 {
        assert_eq!(ws.read().unwrap(), T::text(format!("message {i}")));
    }
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}
