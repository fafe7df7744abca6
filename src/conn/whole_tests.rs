//! [`Connection::read_whole`] (the steady path's read) against [`Connection::read`]: from every state a read can
//! find the connection in, for every kind of frame, the two give the same event, the same bytes on the wire and
//! the same connection afterwards; and the steady read takes exactly the frames it is meant for.

use super::*;
use crate::config::Config;
use crate::frame::write_client_frame;

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn frame(fin: bool, rsv: u8, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_client_frame(&mut v, fin, rsv, op, [0x37, 0xfa, 0x21, 0x3d], payload);
    v
}

/// An event as a string (what the handler would be shown).
fn show(ev: Option<Event<'_>>) -> String {
    format!("{ev:?}")
}

/// An open connection (payloads up to 300 bytes), then `before` fed through the general path.
fn open(before: &[u8], now: Instant) -> Connection {
    let limits = Config::new().max_payload_size(300).max_message_size(600).limits();
    let mut c = Connection::new(limits, now);
    let mut head = HEAD.to_vec();
    let (n, ev) = c.read(&mut head, now);
    assert!(n == HEAD.len() && matches!(ev, Some(Event::Upgrade(_))));
    c.accept(None, true, now).unwrap();
    feed(&mut c, before, now);
    c.drain_out(&mut Vec::new());
    c
}

/// Feeds `data` through [`Connection::read`] until it is used and no event comes; the events, shown.
fn feed(c: &mut Connection, data: &[u8], now: Instant) -> Vec<String> {
    let (mut buf, total) = (data.to_vec(), data.len());
    let (mut off, mut evs) = (0, Vec::new());
    loop {
        let (n, ev) = c.read(&mut buf[off..], now);
        off += n;
        match ev {
            Some(ev) => evs.push(show(Some(ev))),
            None if n == 0 || off == total => return evs,
            None => {}
        }
    }
}

/// The states a read can find a connection in.
fn states() -> Vec<(&'static str, Vec<u8>)> {
    let first = frame(false, 0, OpCode::Text, b"part");
    let mut ping_cut = frame(true, 0, OpCode::Ping, b"ping!");
    ping_cut.truncate(4);
    let mut close = Vec::new();
    close.extend_from_slice(&frame(true, 0, OpCode::Binary, b"x"));
    vec![
        ("between messages", vec![]),
        ("after a message", frame(true, 0, OpCode::Binary, b"earlier")),
        ("after a ping", frame(true, 0, OpCode::Ping, b"p")),
        ("mid-message", first.clone()),
        ("mid-header", first[..3].to_vec()),
        ("mid-control", ping_cut),
        ("after the peer's close", frame(true, 0, OpCode::Close, &1000u16.to_be_bytes())),
        ("after a fault", frame(true, 0, OpCode::Continuation, b"stray")),
    ]
}

/// The frames a read can hold, and whether the steady read is meant to take them (from between messages).
fn frames() -> Vec<(String, Vec<u8>, bool)> {
    let mut v = Vec::new();
    for len in [0, 1, 20, 125, 126, 300, 301] {
        let text = "é".repeat(len / 2) + &"a".repeat(len % 2);
        let ok = len <= 300;
        v.push((format!("text {len}"), frame(true, 0, OpCode::Text, text.as_bytes()), ok));
        v.push((format!("binary {len}"), frame(true, 0, OpCode::Binary, &vec![7; len]), ok));
    }
    v.push(("text not UTF-8".into(), frame(true, 0, OpCode::Text, b"ab\xff"), true));
    v.push(("text cut mid-character".into(), frame(true, 0, OpCode::Text, &"é".as_bytes()[..1]), true));
    v.push(("not final".into(), frame(false, 0, OpCode::Text, b"abc"), false));
    v.push(("continuation".into(), frame(true, 0, OpCode::Continuation, b"abc"), false));
    v.push(("rsv1".into(), frame(true, 4, OpCode::Binary, b"abc"), false));
    v.push(("ping".into(), frame(true, 0, OpCode::Ping, b"abc"), false));
    v.push(("close".into(), frame(true, 0, OpCode::Close, &1000u16.to_be_bytes()), false));
    let mut unmasked = frame(true, 0, OpCode::Binary, b"abc");
    unmasked.drain(2..6);
    unmasked[1] = 3;
    v.push(("unmasked".into(), unmasked, false));
    let two = [frame(true, 0, OpCode::Binary, b"a"), frame(true, 0, OpCode::Binary, b"b")].concat();
    v.push(("two frames".into(), two, false));
    let whole = frame(true, 0, OpCode::Binary, b"abcdef");
    v.push(("cut short".into(), whole[..whole.len() - 1].to_vec(), false));
    v.push(("header only".into(), whole[..2].to_vec(), false));
    // A 16-bit length where 7 bits would do: allowed, as the general path allows it.
    let mut wide = vec![0x82, 0xfe, 0, 3, 1, 2, 3, 4];
    wide.extend_from_slice(&[b'x' ^ 1, b'y' ^ 2, b'z' ^ 3]);
    v.push(("16-bit length for 3 bytes".into(), wide, true));
    v
}

#[test]
fn the_steady_read_is_the_general_read_for_every_state_and_frame() {
    let now = Instant::now();
    let later = now + std::time::Duration::from_secs(1);
    let mut taken = 0;
    let after = frame(true, 0, OpCode::Text, b"after");
    for (state, before) in states() {
        for (name, f, meant) in frames() {
            let (mut general, mut steady) = (open(&before, now), open(&before, now));
            let expected = feed(&mut general, &f, later);
            let mut buf = f.clone();
            let (got, took) = match steady.read_whole(&mut buf, later) {
                Some(ev) => (vec![show(Some(ev))], true),
                None => {
                    assert_eq!(buf, f, "{state}, {name}: input left as it was");
                    (feed(&mut steady, &f, later), false)
                }
            };
            taken += usize::from(took);
            assert_eq!(got, expected, "{state}, {name}: the same events");
            if state == "between messages" || state == "after a message" {
                assert_eq!(took, meant, "{state}, {name}: taken by the steady read");
            }
            let (mut out_g, mut out_s) = (Vec::new(), Vec::new());
            general.drain_out(&mut out_g);
            steady.drain_out(&mut out_s);
            assert_eq!(out_s, out_g, "{state}, {name}: the same bytes out");
            assert_eq!(format!("{steady:?}"), format!("{general:?}"), "{state}, {name}: the same connection after");
            assert_eq!(feed(&mut steady, &after, later), feed(&mut general, &after, later), "{state}, {name}: then");
        }
    }
    assert!(taken >= 20, "the steady read took {taken} frames");
}
