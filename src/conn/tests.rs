use super::*;
use crate::config::Config;
use crate::frame::write_client_frame;
use std::time::Duration;

const HEAD: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// An owned copy of an event, for transcripts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Upgrade(String),
    Http(String),
    Refused(u16),
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    Error(ProtocolError),
}

fn config() -> Arc<Limits> {
    Config::new().max_payload_size(1 << 20).max_frames_per_message(1000).limits()
}

/// Feeds `data` cut at `splits` (accepting every upgrade) and returns the events and everything written.
fn run(cfg: Arc<Limits>, data: &[u8], splits: &[usize]) -> (Vec<Ev>, Vec<u8>, Connection) {
    let now = Instant::now();
    let mut c = Connection::new(cfg, now);
    let mut evs = Vec::new();
    let mut written = Vec::new();
    let mut bounds = splits.to_vec();
    bounds.push(data.len());
    let mut last = 0;
    for b in bounds {
        let mut chunk = data[last..b].to_vec();
        last = b;
        let mut off = 0;
        let total = chunk.len();
        loop {
            let (n, ev) = c.read(&mut chunk[off..], now);
            off += n;
            let mut upgraded = false;
            match ev {
                None if n == 0 || off == total => break,
                None => continue,
                Some(Event::Upgrade(r)) => {
                    evs.push(Ev::Upgrade(r.uri().to_string()));
                    upgraded = true;
                }
                Some(Event::Http(r)) => evs.push(Ev::Http(r.uri().to_string())),
                Some(Event::HandshakeFailed(e)) => evs.push(Ev::Refused(e.status())),
                Some(Event::Message(Message::Text(t))) => evs.push(Ev::Text(t.to_string())),
                Some(Event::Message(Message::Binary(b))) => evs.push(Ev::Binary(b.to_vec())),
                Some(Event::Ping(p)) => evs.push(Ev::Ping(p.to_vec())),
                Some(Event::Pong(p)) => evs.push(Ev::Pong(p.to_vec())),
                Some(Event::Close(code, r)) => evs.push(Ev::Close(code.0, r.to_string())),
                Some(Event::Error(e)) => evs.push(Ev::Error(e)),
                Some(Event::Tunnel) => unreachable!("HTTP/2 is off here"),
            }
            if upgraded {
                c.accept(None, true, Instant::now()).unwrap();
            }
            c.drain_out(&mut written);
            if off == total {
                // One more call: an event may still be due with no bytes left (a zero-length frame).
                let (_, ev) = c.read(&mut [], now);
                assert!(ev.is_none(), "event after all input was used");
                break;
            }
        }
    }
    (evs, written, c)
}

fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_client_frame(&mut v, fin, 0, op, [0x11, 0x22, 0x33, 0x44], payload);
    v
}

/// A lent buffer carries a large message that spans reads (no fresh allocation), comes back after the
/// message is delivered, and then carries the queued echo; an idle connection holds none.
#[test]
fn a_lent_buffer_carries_a_large_message_then_its_echo() {
    let now = Instant::now();
    let mut c = Connection::new(Config::new().deflate(false).limits(), now);
    let mut head = HEAD.to_vec();
    let (n, ev) = c.read(&mut head, now);
    assert!(n == HEAD.len() && matches!(ev, Some(Event::Upgrade(_))));
    c.accept(None, false, now).unwrap();
    let mut sink = Vec::new();
    c.drain_out(&mut sink);
    let lent = Vec::with_capacity(1 << 20);
    let ptr = lent.as_ptr();
    assert!(c.lend_buffer(lent).is_none());
    assert!(c.lend_buffer(Vec::with_capacity(1 << 20)).is_some(), "one spare at a time");
    let payload: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let data = frame(true, OpCode::Binary, &payload);
    let (first, rest) = data.split_at(100_000);
    let (mut a, mut b) = (first.to_vec(), rest.to_vec());
    assert_eq!(c.read(&mut a, now).1.map(|_| ()), None);
    let (_, ev) = c.read(&mut b, now);
    match ev {
        Some(Event::Message(Message::Binary(m))) => {
            assert_eq!(m, &payload[..]);
            assert_eq!(m.as_ptr(), ptr, "assembled in the lent buffer");
        }
        _ => panic!("expected the message"),
    }
    c.reclaim();
    // The delivered message's buffer is the spare again, and the echo is queued in it.
    c.send(Message::Binary(&payload)).unwrap();
    assert_eq!(c.out().as_ptr(), ptr, "queued in the same buffer");
    assert!(c.take_buffer().is_none());
    let n = c.out().len();
    c.consume_out(n);
    let back = c.take_buffer().expect("the written queue's buffer is offered back");
    assert_eq!(back.as_ptr(), ptr);
    assert!(c.take_buffer().is_none(), "an idle connection holds no spare");
}

/// A large echo uses two large buffers (the message assembled in one, the answer queued in another): both go
/// back to the shell, none is freed. (Freeing one per echo drained the loop's pool and every message then
/// faulted in fresh pages.)
#[test]
fn both_large_buffers_of_an_echo_go_back() {
    let now = Instant::now();
    let mut c = Connection::new(Config::new().deflate(false).limits(), now);
    let mut head = HEAD.to_vec();
    assert!(matches!(c.read(&mut head, now).1, Some(Event::Upgrade(_))));
    c.accept(None, false, now).unwrap();
    let mut sink = Vec::new();
    c.drain_out(&mut sink);
    // Within the default 512 KiB frame limit.
    let payload: Vec<u8> = (0..400_000u32).map(|i| i as u8).collect();
    for round in 0..3 {
        let (a, b) = (Vec::with_capacity(1 << 20), Vec::with_capacity(1 << 20));
        let mut lent = vec![a.as_ptr(), b.as_ptr()];
        assert!(c.lend_buffer(a).is_none());
        let mut data = frame(true, OpCode::Binary, &payload);
        let (first, rest) = data.split_at_mut(100_000);
        assert!(c.read(first, now).1.is_none());
        assert!(matches!(c.read(rest, now).1, Some(Event::Message(_))), "round {round}");
        // In the shell's order: a second buffer lent before the answer is queued (the first holds the
        // message), the message released after the handler ran, then the queue written.
        assert!(c.lend_buffer(b).is_none());
        c.send(Message::Binary(&payload)).unwrap();
        c.reclaim();
        c.drain_out(&mut sink);
        let mut back = Vec::new();
        while let Some(buf) = c.take_buffer() {
            back.push(buf.as_ptr());
        }
        lent.sort();
        back.sort();
        assert_eq!(back, lent, "round {round}: both buffers back");
    }
}

/// A frame written straight from the caller's buffer, cut by the socket at every point: the peer gets the same
/// bytes as from a queued send, and a control frame that comes meanwhile waits for the frame's end once it
/// has begun (as behind a queued one).
#[test]
fn a_direct_frame_cut_anywhere_ends_as_a_queued_one_would() {
    let now = Instant::now();
    let open_with = |config: Config| {
        let mut c = Connection::new(config.limits(), now);
        let mut head = HEAD.to_vec();
        let _ = c.read(&mut head, now);
        c.accept(None, false, now).unwrap();
        c.drain_out(&mut Vec::new());
        c
    };
    let open = || open_with(Config::new().deflate(false));
    let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect(); // a 16-bit length: 4 header bytes
    let mut queued = open();
    queued.send(Message::Binary(&payload)).unwrap();
    let mut unstarted = Vec::new();
    queued.ping(b"p").unwrap();
    queued.drain_out(&mut unstarted); // a ping overtakes a frame not yet begun
    let mut frame_then_ping = unstarted[3..].to_vec();
    frame_then_ping.extend_from_slice(&unstarted[..3]);
    for written in 0..=payload.len() + 4 {
        let expected = if written == 0 { &unstarted } else { &frame_then_ping };
        let mut c = open();
        let (head, hl) = c.direct_header(false, payload.len()).expect("nothing queued: direct");
        let mut wire = head[..hl].to_vec();
        wire.extend_from_slice(&payload);
        wire.truncate(written);
        c.sent_direct(&head[..hl], &payload, written);
        assert!(c.direct_header(false, 1).is_none() || written == hl + payload.len());
        c.ping(b"p").unwrap();
        c.drain_out(&mut wire);
        assert_eq!(&wire, expected, "cut at {written}");
    }
    // A message assembled from two frames, written back from its own buffer, cut anywhere.
    let mut data = frame(false, OpCode::Binary, &payload[..100]);
    data.extend(frame(true, OpCode::Continuation, &payload[100..]));
    for written in 0..=payload.len() + 4 {
        let mut c = open();
        let mut input = data.clone();
        let (used, ev) = c.read(&mut input, now);
        let (_, ev) = if ev.is_none() { c.read(&mut input[used..], now) } else { (used, ev) };
        assert!(matches!(ev, Some(Event::Message(Message::Binary(m))) if m == &payload[..]));
        assert_eq!(c.delivered(), Some(&payload[..]), "assembled here");
        let (head, hl) = c.direct_header(false, payload.len()).unwrap();
        let mut wire = head[..hl].to_vec();
        wire.extend_from_slice(&payload);
        wire.truncate(written);
        c.sent_delivered_direct(&head[..hl], written);
        c.ping(b"p").unwrap();
        c.drain_out(&mut wire);
        assert_eq!(&wire, if written == 0 { &unstarted } else { &frame_then_ping }, "cut at {written}");
    }
    // Not direct: with something queued ahead, or when it would be compressed or fragmented.
    let mut c = open();
    c.ping(b"x").unwrap();
    assert!(c.direct_header(true, 10).is_none());
    let c = open_with(Config::new().deflate(false).max_frame_out(100));
    assert!(c.direct_header(true, 101).is_none() && c.direct_header(true, 100).is_some());
    let mut c = open();
    c.close(CloseCode::NORMAL, "", now).unwrap();
    assert!(c.direct_header(true, 10).is_none(), "closing");
    assert!(Connection::new(Config::new().limits(), now).direct_header(true, 10).is_none(), "not open yet");
}

/// Owned frames and frames shared with other queues, interleaved, come out in order however the writes are
/// cut (one slice at a time or vectored), and a ping queued after any cut goes out at the next frame boundary.
#[test]
fn shared_frames_keep_their_place_in_the_queue_at_every_cut() {
    let now = Instant::now();
    let open = || {
        let mut c = Connection::new(Config::new().deflate(false).limits(), now);
        let mut head = HEAD.to_vec();
        let _ = c.read(&mut head, now);
        c.accept(None, false, now).unwrap();
        c.drain_out(&mut Vec::new());
        c
    };
    let mut pool = DeflatePool::new();
    let mut s1 = PreparedMessage::new(false, &[1u8; 3000]);
    let mut s2 = PreparedMessage::new(true, &b"s".repeat(1500));
    let mut small = PreparedMessage::new(true, b"short: copied");
    let mut fill = |c: &mut Connection, pool: &mut DeflatePool| {
        c.send(Message::Binary(&[7u8; 2000])).unwrap();
        c.send_prepared(&mut s1, pool).unwrap();
        c.send(Message::Text("between")).unwrap();
        c.send_prepared(&mut s2, pool).unwrap();
        c.send_prepared(&mut small, pool).unwrap();
        c.send_prepared(&mut s1, pool).unwrap();
        c.send(Message::Text("end")).unwrap();
    };
    let mut reference = Vec::new();
    let mut boundaries = vec![0];
    for (op, payload) in [
        (OpCode::Binary, vec![7u8; 2000]),
        (OpCode::Binary, vec![1u8; 3000]),
        (OpCode::Text, b"between".to_vec()),
        (OpCode::Text, b"s".repeat(1500)),
        (OpCode::Text, b"short: copied".to_vec()),
        (OpCode::Binary, vec![1u8; 3000]),
        (OpCode::Text, b"end".to_vec()),
    ] {
        write_frame(&mut reference, true, 0, op, &payload);
        boundaries.push(reference.len());
    }
    let mut c = open();
    fill(&mut c, &mut pool);
    assert_eq!(c.queued(), reference.len());
    assert!(c.has_shared(), "the long prepared frames are shared");
    for step in [1, 7, 100, 2003, 4096, 1 << 20] {
        let mut c = open();
        fill(&mut c, &mut pool);
        let mut wire = Vec::new();
        loop {
            let mut parts: [&[u8]; 4] = [&[]; 4];
            let k = c.out_slices(&mut parts);
            if k == 0 {
                break;
            }
            let mut n = 0;
            for p in &parts[..k] {
                let take = p.len().min(step - n);
                wire.extend_from_slice(&p[..take]);
                n += take;
                if n == step {
                    break;
                }
            }
            c.consume_out(n);
        }
        assert_eq!(wire, reference, "written {step} bytes at a time");
        assert!(!c.wants_write() && c.queued() == 0);
    }
    let mut ping = Vec::new();
    write_frame(&mut ping, true, 0, OpCode::Ping, b"p");
    for cut in 0..=reference.len() {
        let mut c = open();
        fill(&mut c, &mut pool);
        let mut wire = Vec::new();
        while wire.len() < cut {
            let n = c.out().len().min(cut - wire.len());
            wire.extend_from_slice(&c.out()[..n]);
            c.consume_out(n);
        }
        if cut < reference.len() {
            c.ping(b"p").unwrap();
        }
        c.drain_out(&mut wire);
        let at = *boundaries.iter().find(|b| **b >= cut).unwrap();
        let mut expected = reference[..at].to_vec();
        if cut < reference.len() {
            expected.extend_from_slice(&ping);
        }
        expected.extend_from_slice(&reference[at..]);
        assert_eq!(wire, expected, "ping queued after {cut} bytes");
    }
}

fn session() -> Vec<u8> {
    let mut d = HEAD.to_vec();
    d.extend(frame(true, OpCode::Text, b"Hello"));
    d.extend(frame(true, OpCode::Binary, &[7u8; 200])); // 16-bit length
    d.extend(frame(true, OpCode::Text, b"")); // empty message
                                              // "κόσμε" split inside a code point across fragments, a ping in between.
    let k = "κόσμε".as_bytes();
    d.extend(frame(false, OpCode::Text, &k[..3]));
    d.extend(frame(true, OpCode::Ping, b"p1"));
    d.extend(frame(false, OpCode::Continuation, &k[3..7]));
    d.extend(frame(false, OpCode::Continuation, b""));
    d.extend(frame(true, OpCode::Continuation, &k[7..]));
    d.extend(frame(true, OpCode::Pong, b"unsolicited"));
    d.extend(frame(true, OpCode::Binary, &vec![3u8; 70_000])); // 64-bit length
    d.extend(frame(true, OpCode::Close, b"\x03\xe8bye"));
    d
}

fn expected_session() -> Vec<Ev> {
    vec![
        Ev::Upgrade("/echo".into()),
        Ev::Text("Hello".into()),
        Ev::Binary(vec![7; 200]),
        Ev::Text(String::new()),
        Ev::Ping(b"p1".to_vec()),
        Ev::Text("κόσμε".into()),
        Ev::Pong(b"unsolicited".to_vec()),
        Ev::Binary(vec![3; 70_000]),
        Ev::Close(1000, "bye".into()),
    ]
}

#[test]
fn one_shot_session_transcript() {
    let (evs, out, c) = run(config(), &session(), &[]);
    assert_eq!(evs, expected_session());
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    // The pong and the close echo follow the 101, unmasked.
    let tail = &out[out.len() - 8..];
    assert_eq!(tail, b"\x8a\x02p1\x88\x02\x03\xe8");
    assert!(c.is_finished());
    assert_eq!(c.close_status(), CloseStatus::Clean { code: CloseCode::NORMAL, reason: "bye".into(), by_peer: true });
}

/// Keepalive, idle and lifetime on virtual time: no clock is read, deadlines go out and time comes in.
#[test]
fn liveness_deadlines_on_virtual_time() {
    let s = Duration::from_secs;
    let cfg = Config::new().liveness(Some(s(100)), Some(s(10)), s(5), Some(s(1000))).limits();
    let t0 = Instant::now();
    let mut c = Connection::new(cfg, t0);
    let mut head = HEAD.to_vec();
    assert!(matches!(c.read(&mut head, t0).1, Some(Event::Upgrade(_))));
    c.accept(None, false, t0).unwrap();
    c.consume_out(c.out().len());
    assert_eq!(c.next_deadline(), Some(t0 + s(10)), "the ping is due first");
    c.handle_timeout(t0 + s(10));
    assert_eq!(c.out(), [0x89, 5, b'w', b's', b'k', b'i', b't']);
    c.consume_out(7);
    assert_eq!(c.next_deadline(), Some(t0 + s(15)), "then the answer");
    // The peer says anything at t0+12: alive again; the next ping is due 10 s later.
    let mut pong = Vec::new();
    write_client_frame(&mut pong, true, 0, OpCode::Pong, [1, 2, 3, 4], b"wskit");
    let _ = c.read(&mut pong, t0 + s(12));
    assert_eq!(c.next_deadline(), Some(t0 + s(22)));
    c.handle_timeout(t0 + s(22));
    c.consume_out(c.out().len());
    // This one goes unanswered: 1011 at t0+27.
    c.handle_timeout(t0 + s(27));
    assert_eq!(&c.out()[..4], [0x88, 24, 0x03, 0xf3]);
    assert!(!c.is_open());
    c.consume_out(c.out().len());

    // Idle (no keepalive) and lifetime.
    let cfg = Config::new().liveness(Some(s(30)), None, s(5), Some(s(50))).limits();
    let mut c = Connection::new(cfg.clone(), t0);
    let mut head = HEAD.to_vec();
    let _ = c.read(&mut head, t0);
    c.accept(None, false, t0).unwrap();
    c.consume_out(c.out().len());
    let mut ping = Vec::new();
    write_client_frame(&mut ping, true, 0, OpCode::Ping, [1, 2, 3, 4], b"");
    let _ = c.read(&mut ping.clone(), t0 + s(25));
    c.consume_out(c.out().len());
    assert_eq!(c.next_deadline(), Some(t0 + s(50)), "lifetime before idle (t0+55)");
    c.handle_timeout(t0 + s(50));
    assert_eq!(&c.out()[..4], [0x88, 29, 0x03, 0xe9]);
    assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Lifetime));
    let mut c = Connection::new(cfg, t0);
    let _ = c.read(&mut HEAD.to_vec(), t0);
    c.accept(None, false, t0).unwrap();
    c.consume_out(c.out().len());
    c.handle_timeout(t0 + s(29));
    assert!(c.is_open());
    c.handle_timeout(t0 + s(30));
    assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Idle));
    assert_eq!(c.close_status().code(), CloseCode::GOING_AWAY);
}

#[test]
fn every_split_point_gives_the_same_transcript() {
    let data = session();
    let (_, one_out, _) = run(config(), &data, &[]);
    // Every single split point near the structure (the 70 KB payload's interior is sampled).
    let points: Vec<usize> =
        (0..data.len()).filter(|i| *i < HEAD.len() + 400 || i % 997 == 0 || *i > data.len() - 40).collect();
    for &a in &points {
        let (evs, out, _) = run(config(), &data, &[a]);
        assert_eq!(evs, expected_session(), "split at {a}");
        assert_eq!(out, one_out, "split at {a}");
    }
}

#[test]
fn byte_by_byte_gives_the_same_transcript() {
    let data = session();
    let splits: Vec<usize> = (1..data.len()).collect();
    let (evs, _, _) = run(config(), &data, &splits);
    assert_eq!(evs, expected_session());
}

fn fails_with(frames: Vec<u8>, err: ProtocolError, code: u16) {
    let mut data = HEAD.to_vec();
    data.extend(frames);
    for splits in [vec![], (HEAD.len() + 1..data.len()).collect::<Vec<_>>()] {
        let (evs, out, c) = run(config(), &data, &splits);
        assert_eq!(evs.last(), Some(&Ev::Error(err.clone())), "{evs:?}");
        let close = [0x88, 0x02, (code >> 8) as u8, code as u8];
        assert!(out.ends_with(&close), "expected close {code}, wrote {:x?}", &out[out.len().saturating_sub(8)..]);
        assert!(!c.is_open());
    }
}

#[test]
fn protocol_faults_get_their_close_codes() {
    let mut unmasked = Vec::new();
    write_frame(&mut unmasked, true, 0, OpCode::Text, b"hi");
    fails_with(unmasked, ProtocolError::UnmaskedFrame, 1002);
    let mut rsv = Vec::new();
    write_client_frame(&mut rsv, true, 4, OpCode::Text, [1, 2, 3, 4], b"hi");
    fails_with(rsv, ProtocolError::ReservedBits(4), 1002);
    fails_with(vec![0x83, 0x80, 0, 0, 0, 0], ProtocolError::ReservedOpcode(3), 1002);
    fails_with(frame(true, OpCode::Continuation, b"x"), ProtocolError::UnexpectedContinuation, 1002);
    let mut twice = frame(false, OpCode::Text, b"a");
    twice.extend(frame(true, OpCode::Text, b"b"));
    fails_with(twice, ProtocolError::ExpectedContinuation, 1002);
    fails_with(frame(true, OpCode::Close, b"\x03"), ProtocolError::CloseOneByte, 1002);
    fails_with(frame(true, OpCode::Close, b"\x03\xed"), ProtocolError::InvalidCloseCode(1005), 1002);
    fails_with(frame(true, OpCode::Close, b"\x03\xe8\xff"), ProtocolError::InvalidUtf8, 1007);
    fails_with(frame(true, OpCode::Text, b"\xce\xba\xff"), ProtocolError::InvalidUtf8, 1007);
    let mut frag = frame(false, OpCode::Text, b"ok \xed");
    frag.extend(frame(true, OpCode::Continuation, b"\xa0\x80"));
    fails_with(frag, ProtocolError::InvalidUtf8, 1007);
    let mut trunc = frame(false, OpCode::Text, b"ok");
    trunc.extend(frame(true, OpCode::Continuation, b"\xe2\x82"));
    fails_with(trunc, ProtocolError::InvalidUtf8, 1007);
}

#[test]
fn utf8_fails_fast_inside_one_frame() {
    // Only the first 5 bytes of a 1000-byte text frame arrive; the 5th cannot continue UTF-8.
    let mut data = HEAD.to_vec();
    let mut payload = b"abc\xf4\x90".to_vec();
    payload.resize(1000, b'a');
    let f = frame(true, OpCode::Text, &payload);
    data.extend_from_slice(&f[..8 + 5]);
    let (evs, _, _) = run(config(), &data, &[]);
    assert_eq!(evs.last(), Some(&Ev::Error(ProtocolError::InvalidUtf8)));
}

#[test]
fn limits_are_checked_at_the_header() {
    // A header announcing 16 MiB is refused with 1009 before any payload arrives.
    let mut h = [0u8; 14];
    let n = crate::frame::encode_header(true, 0, OpCode::Binary, Some([1, 2, 3, 4]), 16 << 20, &mut h);
    fails_with(h[..n].to_vec(), ProtocolError::FrameTooLarge { size: 16 << 20, max: 1 << 20 }, 1009);
    // Message limit across fragments.
    let cfg = Config::new().max_payload_size(100).max_message_size(150).limits();
    let mut data = HEAD.to_vec();
    data.extend(frame(false, OpCode::Binary, &[0; 100]));
    data.extend(frame(true, OpCode::Continuation, &[0; 51]));
    let (evs, _, _) = run(cfg, &data, &[]);
    assert_eq!(evs.last(), Some(&Ev::Error(ProtocolError::MessageTooLarge { size: 151, max: 150 })));
    // Frames per message.
    let cfg = Config::new().max_frames_per_message(3).limits();
    let mut data = HEAD.to_vec();
    data.extend(frame(false, OpCode::Binary, b"x"));
    for _ in 0..2 {
        data.extend(frame(false, OpCode::Continuation, b"x"));
    }
    data.extend(frame(true, OpCode::Continuation, b"x"));
    let (evs, _, _) = run(cfg, &data, &[]);
    assert_eq!(evs.last(), Some(&Ev::Error(ProtocolError::TooManyFrames { max: 3 })));
}

#[test]
fn timeouts() {
    let cfg = Config::new().timeout(Duration::from_secs(5)).close_timeout(Duration::from_secs(2)).limits();
    let t0 = Instant::now();
    // Handshake timeout: nothing sent.
    let mut c = Connection::new(cfg.clone(), t0);
    assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
    c.handle_timeout(t0 + Duration::from_secs(9));
    assert!(!c.is_finished());
    c.handle_timeout(t0 + Duration::from_secs(10));
    assert!(c.is_finished());
    assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Handshake));

    // Incomplete message: 1008 at the deadline, then the close timeout.
    let mut data = HEAD.to_vec();
    data.extend(frame(false, OpCode::Text, b"part"));
    let (_, _, mut c) = run(cfg.clone(), &data, &[]);
    let d = c.next_deadline().expect("message deadline");
    c.handle_timeout(d);
    assert!(c.out().ends_with(&[0x88, 0x02, 0x03, 0xf0]), "1008");
    let n = c.out().len();
    c.consume_out(n);
    let d2 = c.next_deadline().expect("close deadline");
    assert!(d2 > d);
    c.handle_timeout(d2);
    assert!(c.is_finished());
    assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Message));
}

#[test]
fn a_peer_that_keeps_sending_after_our_close_is_read_no_further() {
    let (_, _, mut c) = run(config(), HEAD, &[]);
    let now = Instant::now();
    c.close(CloseCode::POLICY, "stop", now).unwrap();
    c.drain_out(&mut Vec::new());
    let max = Connection::closing_data_max(&config());
    let data = frame(true, OpCode::Binary, &vec![1u8; 64 * 1024]);
    let mut sent = 0;
    while !c.is_finished() {
        assert!(sent <= max + data.len(), "still reading after {sent} bytes");
        let mut chunk = data.clone();
        let (n, ev) = c.read(&mut chunk, now);
        assert!(ev.is_none() && n == chunk.len());
        sent += n;
    }
    assert!(sent > max, "{sent}: what a closing peer may have had in flight is read");
    assert!(!c.wants_read(), "reading has ended");
    assert_eq!(c.close_status(), CloseStatus::Lost, "no closing handshake took place");
}

#[test]
fn server_close_waits_for_the_peer_and_ignores_data() {
    let (_, _, mut c) = run(config(), HEAD, &[]);
    let now = Instant::now();
    assert_eq!(c.close(CloseCode(1001), "bye", now), Ok(()));
    assert_eq!(c.close(CloseCode(1005), "", now), Err(SendError::InvalidCloseCode(1005)));
    assert!(c.out().starts_with(&[0x88, 0x05, 0x03, 0xe9, b'b', b'y', b'e']));
    let n = c.out().len();
    c.consume_out(n);
    assert_eq!(c.send(Message::Text("late")), Err(SendError::NotOpen));
    let mut more = frame(true, OpCode::Text, b"ignored");
    more.extend(frame(true, OpCode::Ping, b"ignored too"));
    more.extend(frame(true, OpCode::Close, b"\x03\xe9"));
    let mut evs = Vec::new();
    let mut off = 0;
    while off < more.len() {
        let (n, ev) = c.read(&mut more[off..], now);
        off += n;
        if let Some(ev) = ev {
            evs.push(format!("{ev:?}"));
        }
    }
    assert_eq!(
        evs,
        vec!["Ping([105, 103, 110, 111, 114, 101, 100, 32, 116, 111, 111])", "Close(CloseCode(1001), \"\")"]
    );
    assert!(c.out().is_empty(), "no pong and no second close while closing");
    assert!(c.is_finished());
    assert!(matches!(c.close_status(), CloseStatus::Clean { by_peer: false, .. }));
}

#[test]
fn empty_close_is_answered_empty_and_reported_1005() {
    let mut data = HEAD.to_vec();
    data.extend(frame(true, OpCode::Close, b""));
    let (evs, out, _) = run(config(), &data, &[]);
    assert_eq!(evs.last(), Some(&Ev::Close(1005, String::new())));
    assert!(out.ends_with(&[0x88, 0x00]));
}

#[test]
fn plain_http_and_bad_handshakes() {
    let (evs, _, _) = run(config(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[]);
    assert_eq!(evs, vec![Ev::Http("/".into())]);
    let (evs, out, c) =
        run(config(), &HEAD.to_vec().iter().map(|&b| if b == b'3' { b'8' } else { b }).collect::<Vec<_>>(), &[]);
    assert_eq!(evs, vec![Ev::Refused(426)]);
    assert!(String::from_utf8_lossy(&out).contains("Sec-WebSocket-Version: 13"));
    assert!(c.is_finished());
    let big = vec![b'a'; 10_000];
    let (evs, out, _) = run(config(), &big, &[4000, 8000]);
    assert_eq!(evs, vec![Ev::Refused(431)]);
    assert!(out.starts_with(b"HTTP/1.1 431 "));
}

/// Feeds `data` as a shell that reads large payloads straight into the message does: through `read` while no
/// large frame is due, else into `payload_target` in pieces of `step` bytes (then `read` on empty input for the
/// event). The events and what was written match feeding it all through `read`. With `recycle`, it lends the
/// connection large buffers as the endpoint's pool does, each starting full of 0xA5 and then holding the messages
/// it held before: none of those bytes may show.
fn run_in_place(data: &[u8], step: usize, recycle: bool) -> (Vec<Ev>, Vec<u8>) {
    let now = Instant::now();
    let mut c = Connection::new(config(), now);
    let (mut evs, mut written) = (Vec::new(), Vec::new());
    let mut pool: Vec<Vec<u8>> = if recycle { vec![vec![0xA5; 700_000], vec![0xA5; 100_000]] } else { Vec::new() };
    let mut pos = 0;
    let record = |c: &mut Connection, input: &mut [u8], evs: &mut Vec<Ev>| {
        let (mut off, len) = (0, input.len());
        loop {
            let (n, ev) = c.read(&mut input[off..], now);
            off += n;
            match ev {
                None if n == 0 || off == len => return,
                None => {}
                Some(Event::Upgrade(r)) => {
                    evs.push(Ev::Upgrade(r.uri().to_string()));
                    c.accept(None, true, now).unwrap();
                }
                Some(Event::Message(Message::Text(t))) => evs.push(Ev::Text(t.to_string())),
                Some(Event::Message(Message::Binary(b))) => evs.push(Ev::Binary(b.to_vec())),
                Some(Event::Ping(p)) => evs.push(Ev::Ping(p.to_vec())),
                Some(Event::Close(code, r)) => evs.push(Ev::Close(code.0, r.to_string())),
                Some(Event::Error(e)) => evs.push(Ev::Error(e)),
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    };
    while pos < data.len() {
        if recycle {
            pool.extend(std::iter::from_fn(|| c.take_buffer()));
            if let Some(b) = pool.pop() {
                pool.extend(c.lend_buffer(b));
            }
        }
        let due = c.payload_due();
        if due >= 1000 {
            let n = step.min(due).min(data.len() - pos);
            let room = c.payload_target(step).expect("room for a large frame's payload");
            room[..n].copy_from_slice(&data[pos..pos + n]);
            c.payload_read(n, now);
            pos += n;
            record(&mut c, &mut [], &mut evs);
        } else {
            let end = (pos + step).min(data.len());
            let mut chunk = data[pos..end].to_vec();
            pos = end;
            record(&mut c, &mut chunk, &mut evs);
        }
        c.drain_out(&mut written);
    }
    (evs, written)
}

#[test]
fn large_payloads_read_in_place_give_the_same_transcript() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let text = "é€😀 ".repeat(20_000);
    let mut data = HEAD.to_vec();
    data.extend(frame(true, OpCode::Binary, &big));
    // A text message in two frames with a ping between, cut inside a UTF-8 sequence.
    data.extend(frame(false, OpCode::Text, &text.as_bytes()[..50_001]));
    data.extend(frame(true, OpCode::Ping, b"p"));
    data.extend(frame(true, OpCode::Continuation, &text.as_bytes()[50_001..]));
    // A binary message in frames of odd lengths under masks of their own, a ping after the first: what reads
    // straight into the message leave masked is unmasked with its frame's mask, from its offset.
    let parts = [
        (0..150_001, [0xA1, 0xB2, 0xC3, 0xD4]),
        (150_001..150_003, [9, 8, 7, 6]),
        (150_003..300_000, [0x5A, 0x6B, 0x7C, 0x8D]),
    ];
    for (i, (range, mask)) in parts.into_iter().enumerate() {
        let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
        write_client_frame(&mut data, i == 2, 0, op, mask, &big[range]);
        if i == 0 {
            data.extend(frame(true, OpCode::Ping, b"q"));
        }
    }
    // Not UTF-8 in the middle of a large text frame: 1007 as through `read`.
    let mut bad = text.as_bytes()[..70_000].to_vec();
    bad[65_000] = 0xff;
    data.extend(frame(true, OpCode::Text, &bad));
    let (want, want_out, _) = run(config(), &data, &[]);
    assert!(want.contains(&Ev::Error(ProtocolError::InvalidUtf8)), "{want:?}");
    for step in [1000, 4096, 65_537, 1 << 20] {
        for recycle in [false, true] {
            let (got, out) = run_in_place(&data, step, recycle);
            assert_eq!(got, want, "step {step}, recycle {recycle}");
            assert_eq!(out, want_out, "step {step}, recycle {recycle}");
        }
    }
}

/// Recycled buffers (an earlier message's bytes, or 0xA5) under messages of every shape: shorter and longer than
/// the buffer, fragmented, ended by an empty frame, one after another; none of the old bytes shows.
#[test]
fn recycled_buffers_never_show_their_old_bytes() {
    let bytes =
        |n: usize, seed: u32| -> Vec<u8> { (0..n as u32).map(|i| (i.wrapping_mul(seed) % 241) as u8).collect() };
    let mut data = HEAD.to_vec();
    data.extend(frame(true, OpCode::Binary, &bytes(500_000, 7)));
    data.extend(frame(true, OpCode::Binary, &bytes(80_000, 11)));
    data.extend(frame(false, OpCode::Binary, &bytes(90_000, 13)));
    data.extend(frame(true, OpCode::Continuation, &[]));
    data.extend(frame(false, OpCode::Binary, &bytes(70_000, 17)));
    data.extend(frame(false, OpCode::Continuation, &bytes(3, 19)));
    data.extend(frame(true, OpCode::Continuation, &bytes(800_000, 23)));
    data.extend(frame(true, OpCode::Binary, &bytes(65_536, 29)));
    let (want, want_out, _) = run(config(), &data, &[]);
    assert_eq!(want.iter().filter(|e| matches!(e, Ev::Binary(_))).count(), 5, "{}", want.len());
    for step in [1000, 4096, 65_537, 1 << 20] {
        let (got, out) = run_in_place(&data, step, true);
        assert_eq!(got, want, "step {step}");
        assert_eq!(out, want_out, "step {step}");
    }
}

/// With HTTP/2 allowed, the preface (RFC 9113 §3.4) is recognised however it is split, before the head reader
/// could take its blank line for a head's end; what came before the input that completed it is the tunnel's
/// prefix, and that input is left unused. Anything that parts from it is read as HTTP/1.1.
#[test]
fn the_http2_preface_turns_the_connection_into_a_tunnel_at_any_split() {
    use crate::h2::conn::PREFACE;
    let cfg = Config::new().http2(true).limits();
    let mut stream = PREFACE.to_vec();
    stream.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let now = Instant::now();
    for cut in 1..stream.len() {
        let mut c = Connection::new(cfg.clone(), now);
        let (mut a, mut b) = (stream[..cut].to_vec(), stream[cut..].to_vec());
        let (used, ev) = c.read(&mut a, now);
        let tunnel_at_a = matches!(ev, Some(Event::Tunnel));
        let rest = if tunnel_at_a {
            assert_eq!((cut >= PREFACE.len(), used), (true, 0), "cut {cut}");
            [a, b].concat()
        } else {
            assert_eq!((ev.is_none(), used), (true, cut), "cut {cut}: held");
            let (used, ev) = c.read(&mut b, now);
            assert!(matches!(ev, Some(Event::Tunnel)) && used == 0, "cut {cut}");
            b
        };
        assert!(c.is_tunnel());
        assert_eq!([c.take_tunnel_prefix(), rest].concat(), stream, "cut {cut}: nothing lost");
        assert!(c.wants_read());
        assert_eq!(c.next_deadline(), Some(now + Duration::from_secs(10)), "the handshake's deadline still runs");
    }
    // Not the preface: HTTP/1.1, which refuses it.
    for other in [&b"PRI * HTTP/1.1\r\n\r\n"[..], b"PROPFIND / HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let mut c = Connection::new(cfg.clone(), now);
        let mut input = other.to_vec();
        let (_, ev) = c.read(&mut input, now);
        assert!(matches!(ev, Some(Event::HandshakeFailed(_) | Event::Http(_))), "{ev:?}");
    }
    // HTTP/2 not allowed: the preface is a bad request.
    let mut c = Connection::new(config(), now);
    let (_, ev) = c.read(&mut stream, now);
    assert!(matches!(ev, Some(Event::HandshakeFailed(_))), "{ev:?}");
}

/// The send queue exists only while it holds something: not after the handshake's answer is written, nor
/// after a pong went out; a queue that sent data keeps its buffer (and box) for the next message; a large
/// buffer taken back leaves nothing. What the connection holds says so ([`Connection::held`]).
#[test]
fn an_idle_connection_holds_no_queue() {
    let t0 = Instant::now();
    let mut c = Connection::new(config(), t0);
    let _ = c.read(&mut HEAD.to_vec(), t0);
    c.accept(None, false, t0).unwrap();
    assert!(c.q.is_some() && c.wants_write(), "the 101 is queued");
    c.consume_out(c.out().len());
    assert!(c.q.is_none() && c.held() == 0, "nothing kept after the handshake: {}", c.held());
    // A ping: its pong waits in the queue, then nothing is kept.
    let mut ping = Vec::new();
    write_client_frame(&mut ping, true, 0, OpCode::Ping, [1, 2, 3, 4], b"hi");
    let _ = c.read(&mut ping, t0);
    assert_eq!(c.out(), [0x8a, 2, b'h', b'i']);
    c.consume_out(4);
    c.reclaim();
    assert!(c.q.is_none() && c.held() == 0, "nothing kept after the pong: {}", c.held());
    // Queued data: the buffer is kept for the next message, and counted.
    c.send(Message::Text("hello")).unwrap();
    c.consume_out(c.out().len());
    let kept = c.q.as_deref().map_or(0, |q| q.out.capacity());
    assert!(kept > 0 && c.held() == std::mem::size_of::<Queue>() + kept, "{} vs {kept}", c.held());
    // A large buffer lent and taken back unused leaves nothing either.
    let mut c = Connection::new(config(), t0);
    assert!(c.lend_buffer(Vec::with_capacity(SPARE_MIN)).is_none());
    assert!(c.holds_buffer());
    assert_eq!(c.take_buffer().map(|b| b.capacity() >= SPARE_MIN), Some(true));
    assert!(c.q.is_none() && !c.holds_buffer());
}
