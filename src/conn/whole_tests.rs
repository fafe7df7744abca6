//! [`Connection::read_whole`] (the steady path's read) against [`Connection::read`]: from every state a read can
//! find the connection in, for every kind of frame, the two give the same event, the same bytes on the wire and
//! the same connection afterwards; and the steady read takes exactly the frames it is meant for.

use super::*;
use crate::config::Config;
use crate::frame::write_client_frame;

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const DEFLATE: &[u8] = b"Sec-WebSocket-Extensions: permessage-deflate\r\n";

fn frame(fin: bool, rsv: u8, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_client_frame(&mut v, fin, rsv, op, [0x37, 0xfa, 0x21, 0x3d], payload);
    v
}

/// A frame written by hand: `b0`, then a masked length of `len_bytes` (7-bit, 126 + 16-bit or 127 + 64-bit), the
/// zero mask and the payload.
fn raw(b0: u8, len_bytes: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![b0, len_bytes[0] | 0x80];
    v.extend_from_slice(&len_bytes[1..]);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(payload);
    v
}

/// An event as a string (what the handler would be shown).
fn show(ev: Option<Event<'_>>) -> String {
    format!("{ev:?}")
}

/// Where a read can find a connection: after `chunks`, each fed as one read; `lent`: the last event's payload is
/// still lent out (no call after it); `deflate`: permessage-deflate negotiated; `ping_out`: a keepalive ping
/// awaits its answer.
struct Start {
    name: &'static str,
    chunks: Vec<Vec<u8>>,
    lent: bool,
    deflate: bool,
    ping_out: bool,
}

/// An open connection (payloads up to 300 bytes) in `state`.
fn open(state: &Start, now: Instant) -> Connection {
    let limits = Config::new().max_payload_size(300).max_message_size(600).limits();
    let mut c = Connection::new(limits, now);
    let mut head = [HEAD, if state.deflate { DEFLATE } else { b"" }, b"\r\n"].concat();
    let len = head.len();
    let (n, ev) = c.read(&mut head, now);
    assert!(n == len && matches!(ev, Some(Event::Upgrade(_))));
    c.accept(None, true, now).unwrap();
    assert_eq!(c.deflate_params().is_some(), state.deflate);
    for (i, chunk) in state.chunks.iter().enumerate() {
        feed(&mut c, chunk, now, !(state.lent && i + 1 == state.chunks.len()));
    }
    if state.ping_out {
        c.handle_timeout(now + std::time::Duration::from_secs(30));
        assert!(c.ping_out, "a keepalive ping is out");
    }
    c.drain_out(&mut Vec::new());
    c
}

/// Feeds `data` as one read through [`Connection::read`], calling again until it is used and no event comes
/// (`release`: also after an event that used the last byte, which frees what it lent); the events, shown.
fn feed(c: &mut Connection, data: &[u8], now: Instant, release: bool) -> Vec<String> {
    let (mut buf, total) = (data.to_vec(), data.len());
    let (mut off, mut evs) = (0, Vec::new());
    loop {
        let (n, ev) = c.read(&mut buf[off..], now);
        off += n;
        match ev {
            Some(ev) => {
                evs.push(show(Some(ev)));
                if off == total && !release {
                    return evs;
                }
            }
            None if n == 0 || off == total => return evs,
            None => {}
        }
    }
}

/// The states a read can find a connection in.
fn states() -> Vec<Start> {
    let st = |name, chunks: Vec<Vec<u8>>, lent| Start { name, chunks, lent, deflate: false, ping_out: false };
    let first = frame(false, 0, OpCode::Text, b"part");
    let ping = frame(true, 0, OpCode::Ping, b"ping!");
    let pieces = [first.clone(), frame(true, 0, OpCode::Continuation, b"s")];
    let mut v = vec![
        st("between messages", vec![], false),
        st("after a message", vec![frame(true, 0, OpCode::Binary, b"earlier")], false),
        st("after a ping", vec![frame(true, 0, OpCode::Ping, b"p")], false),
        st("mid-message", vec![first.clone()], false),
        st("mid-header", vec![first[..3].to_vec()], false),
        st("mid-control", vec![ping[..4].to_vec()], false),
        st("a message in pieces lent out", vec![pieces.concat()], true),
        st("a cut ping's payload lent out", vec![ping[..8].to_vec(), ping[8..].to_vec()], true),
        st("after the peer's close", vec![frame(true, 0, OpCode::Close, &1000u16.to_be_bytes())], false),
        st("after a fault", vec![frame(true, 0, OpCode::Continuation, b"stray")], false),
        Start { ping_out: true, ..st("a keepalive ping out", vec![], false) },
    ];
    if cfg!(feature = "deflate") {
        v.push(Start { deflate: true, ..st("deflate, between messages", vec![], false) });
    }
    v
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
    for (name, rsv) in [("rsv1", 4), ("rsv2", 2), ("rsv3", 1)] {
        v.push((name.into(), frame(true, rsv, OpCode::Binary, b"abc"), false));
    }
    v.push(("reserved opcode".into(), raw(0x83, &[3], b"abc"), false));
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
    // Longer length fields than the payload needs: allowed, as the general path allows them; the 64-bit one is
    // left to the general path.
    v.push(("16-bit length for 3 bytes".into(), raw(0x82, &[126, 0, 3], b"xyz"), true));
    v.push(("64-bit length for 3 bytes".into(), raw(0x82, &[127, 0, 0, 0, 0, 0, 0, 0, 3], b"xyz"), false));
    v
}

#[test]
fn the_steady_read_is_the_general_read_for_every_state_and_frame() {
    let now = Instant::now();
    let later = now + std::time::Duration::from_secs(1);
    let mut taken = 0;
    let after = frame(true, 0, OpCode::Text, b"after");
    for st in states() {
        let state = st.name;
        for (name, f, meant) in frames() {
            let (mut general, mut steady) = (open(&st, now), open(&st, now));
            let expected = feed(&mut general, &f, later, true);
            let mut buf = f.clone();
            let (got, took) = match steady.read_whole(&mut buf, later) {
                Some(ev) => (vec![show(Some(ev))], true),
                None => {
                    assert_eq!(buf, f, "{state}, {name}: input left as it was");
                    (feed(&mut steady, &f, later, true), false)
                }
            };
            taken += usize::from(took);
            assert_eq!(got, expected, "{state}, {name}: the same events");
            if matches!(state, "between messages" | "after a message" | "deflate, between messages") {
                assert_eq!(took, meant, "{state}, {name}: taken by the steady read");
            }
            let (mut out_g, mut out_s) = (Vec::new(), Vec::new());
            general.drain_out(&mut out_g);
            steady.drain_out(&mut out_s);
            assert_eq!(out_s, out_g, "{state}, {name}: the same bytes out");
            assert_eq!(format!("{steady:?}"), format!("{general:?}"), "{state}, {name}: the same connection after");
            let then = (feed(&mut steady, &after, later, true), feed(&mut general, &after, later, true));
            assert_eq!(then.0, then.1, "{state}, {name}: then");
        }
    }
    assert!(taken >= 20, "the steady read took {taken} frames");
}
