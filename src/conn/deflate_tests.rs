use super::*;
use crate::config::Config;
use crate::deflate::Compressor;
use crate::frame::write_client_frame;

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn config() -> Arc<Limits> {
    Config::new().max_payload_size(1 << 20).limits()
}

/// Feeds `data` cut at `splits`; returns text/binary messages (as bytes), the last error, and the connection.
fn run(data: &[u8], splits: &[usize]) -> (Vec<Vec<u8>>, Option<ProtocolError>, Connection) {
    run_with(config(), data, splits)
}

/// [`run`] on a connection with these limits.
fn run_with(limits: Arc<Limits>, data: &[u8], splits: &[usize]) -> (Vec<Vec<u8>>, Option<ProtocolError>, Connection) {
    let now = Instant::now();
    let mut c = Connection::new(limits, now);
    let (mut msgs, mut err) = (Vec::new(), None);
    let mut bounds = splits.to_vec();
    bounds.push(data.len());
    let mut last = 0;
    for b in bounds {
        let mut chunk = data[last..b].to_vec();
        last = b;
        let (mut off, total) = (0, chunk.len());
        loop {
            let (n, ev) = c.read(&mut chunk[off..], now);
            off += n;
            let mut upgrade = false;
            match ev {
                None if n == 0 || off == total => break,
                None => {}
                Some(Event::Upgrade(_)) => upgrade = true,
                Some(Event::Message(m)) => msgs.push(m.as_bytes().to_vec()),
                Some(Event::Error(e)) => err = Some(e),
                Some(_) => {}
            }
            if upgrade {
                c.accept(None, true, Instant::now()).unwrap();
            }
            if off == total {
                break;
            }
        }
    }
    (msgs, err, c)
}

/// A compressed message in frames of `frag` bytes (RSV1 on the first only).
fn compressed(comp: &mut Compressor, op: OpCode, msg: &[u8], frag: usize) -> Vec<u8> {
    let mut z = Vec::new();
    comp.compress(msg, &mut z);
    let chunks: Vec<&[u8]> = if z.is_empty() { vec![&z[..]] } else { z.chunks(frag).collect() };
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let fin = i + 1 == chunks.len();
        let (rsv, opcode) = if i == 0 { (0b100, op) } else { (0, OpCode::Continuation) };
        write_client_frame(&mut out, fin, rsv, opcode, [9, 8, 7, 6], c);
    }
    out
}

#[test]
fn compressed_fragmented_messages_at_every_split_point_with_context_takeover() {
    let m1 = "κόσμε, hello hello hello hello! ".repeat(40).into_bytes();
    let m2 = "hello hello, κόσμε again and again ".repeat(30).into_bytes();
    // The client keeps its context: the second message refers back into the first.
    let mut comp = Compressor::new(6, 12);
    let mut data = HEAD.to_vec();
    data.extend(compressed(&mut comp, OpCode::Text, &m1, 17));
    data.extend(compressed(&mut comp, OpCode::Binary, &m2, 1000));
    let (msgs, err, c) = run(&data, &[]);
    assert_eq!(err, None);
    assert_eq!(msgs, vec![m1.clone(), m2.clone()]);
    assert_eq!(c.deflate_params().unwrap().client_max_window_bits, Some(12));
    for a in (HEAD.len()..data.len()).step_by(3) {
        let (msgs, err, _) = run(&data, &[a]);
        assert_eq!((msgs.len(), err), (2, None), "split at {a}");
        assert_eq!(msgs, vec![m1.clone(), m2.clone()], "split at {a}");
    }
    let all: Vec<usize> = (1..data.len()).collect();
    assert_eq!(run(&data, &all).0, vec![m1, m2]);
}

#[test]
fn rsv1_rules_and_bad_payloads() {
    let mut comp = Compressor::new(6, 15);
    // RSV1 on a continuation frame.
    let mut d = HEAD.to_vec();
    write_client_frame(&mut d, false, 0, OpCode::Text, [1; 4], b"a");
    write_client_frame(&mut d, true, 0b100, OpCode::Continuation, [1; 4], b"b");
    assert_eq!(run(&d, &[]).1, Some(ProtocolError::ReservedBits(4)));
    // RSV1 on a control frame.
    let mut d = HEAD.to_vec();
    write_client_frame(&mut d, true, 0b100, OpCode::Ping, [1; 4], b"a");
    assert_eq!(run(&d, &[]).1, Some(ProtocolError::ReservedBits(4)));
    // RSV2 is never granted.
    let mut d = HEAD.to_vec();
    write_client_frame(&mut d, true, 0b010, OpCode::Text, [1; 4], b"a");
    assert_eq!(run(&d, &[]).1, Some(ProtocolError::ReservedBits(2)));
    // Not deflate data → 1007.
    let mut d = HEAD.to_vec();
    write_client_frame(&mut d, true, 0b100, OpCode::Binary, [1; 4], b"\xff\xff\xff\xff not deflate");
    let (_, err, c) = run(&d, &[]);
    assert_eq!(err, Some(ProtocolError::InvalidCompressedData));
    assert!(c.out().ends_with(&[0x88, 0x02, 0x03, 0xef]));
    // Invalid UTF-8 found after inflating → 1007.
    let mut d = HEAD.to_vec();
    d.extend(compressed(&mut comp, OpCode::Text, b"valid, then \xed\xa0\x80", 1000));
    assert_eq!(run(&d, &[]).1, Some(ProtocolError::InvalidUtf8));
}

#[test]
fn bomb_is_refused_with_1009_holding_about_one_limit() {
    let zeros = vec![0u8; 256 << 20];
    let mut comp = Compressor::new(9, 15);
    let mut d = HEAD.to_vec();
    d.extend(compressed(&mut comp, OpCode::Binary, &zeros, 1 << 20));
    assert!(d.len() < 1 << 20);
    let start = std::time::Instant::now();
    let (_, err, c) = run(&d, &[]);
    assert!(matches!(err, Some(ProtocolError::MessageTooLarge { max: 1_048_576, .. })), "{err:?}");
    assert!(c.out().ends_with(&[0x88, 0x02, 0x03, 0xf1]), "1009");
    assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
}

#[test]
fn outbound_compresses_and_sets_rsv1_only_when_it_pays() {
    let (_, _, mut c) = run(HEAD, &[]);
    let n = c.out().len();
    c.consume_out(n);
    let mut pool = DeflatePool::new();
    let big = "compress me please, compress me please ".repeat(10);
    c.send_with(Message::Text(&big), &mut pool).unwrap();
    let out = c.out().to_vec();
    assert_eq!(out[0], 0xc1, "FIN + RSV1 + text");
    let mut inflated = Vec::new();
    let mut inf = Inflater::new(15);
    inf.inflate(&out[2..], &mut inflated, 1 << 20).unwrap();
    inf.finish(&mut inflated, 1 << 20).unwrap();
    assert_eq!(inflated, big.as_bytes());
    c.consume_out(out.len());
    c.send_with(Message::Text("tiny"), &mut pool).unwrap();
    assert_eq!(c.out(), b"\x81\x04tiny", "below min_size: uncompressed, RSV1 clear");
}

/// What the connection holds apart from its queue (whose buffer keeps its capacity).
fn held_apart_from_queue(c: &Connection) -> usize {
    c.held() - c.q.as_deref().map_or(0, Queue::held)
}

/// The frames in `wire` (server frames: unmasked, one per message here) as (RSV1, payload).
fn server_frames(mut wire: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let (hdr, len) = match wire[1] & 0x7f {
            126 => (4, u16::from_be_bytes([wire[2], wire[3]]) as usize),
            127 => (10, u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize),
            l => (2, l as usize),
        };
        frames.push((wire[0] & 0x40 != 0, wire[hdr..hdr + len].to_vec()));
        wire = &wire[hdr + len..];
    }
    frames
}

#[test]
fn a_kept_context_in_the_small_window_compressor_reads_back_and_is_counted() {
    let mut config = Config::new().max_payload_size(1 << 20);
    config.deflate.server_no_context_takeover = false;
    config.deflate.dedicated_window_bits = 10;
    let (_, _, mut c) = run_with(config.limits(), HEAD, &[]);
    assert!(c.is_open());
    let n = c.out().len();
    c.consume_out(n);
    let held = held_apart_from_queue(&c);
    let mut pool = DeflatePool::new();
    // One inflater for the whole stream, as the peer keeps it: later messages refer back into earlier ones.
    let mut inf = Inflater::new(15);
    let line = "{\"user\":\"ada\",\"text\":\"the same line, sent again and again, long enough to be compressed\"}";
    // Bytes that do not compress (xorshift), fewer than the 1 KiB window: the line after them is still in reach.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..400)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut sizes = Vec::new();
    for msg in [Message::Text(line), Message::Text(line), Message::Binary(&noise), Message::Text(line)] {
        c.send_with(msg, &mut pool).unwrap();
        let out = c.out().to_vec();
        c.consume_out(out.len());
        let frames = server_frames(&out);
        assert_eq!(frames.len(), 1, "one frame");
        let (rsv1, z) = &frames[0];
        assert!(rsv1, "RSV1: with the context kept every message goes out compressed");
        let mut got = Vec::new();
        inf.inflate(z, &mut got, 1 << 20).unwrap();
        inf.finish(&mut got, 1 << 20).unwrap();
        assert_eq!(got, msg.as_bytes());
        sizes.push(z.len());
    }
    assert!(sizes[1] < 10 && sizes[3] < 10, "the context is kept, across a stored message too: {sizes:?}");
    assert!(sizes[2] <= noise.len() + 6, "what does not compress goes out stored: {sizes:?}");
    let now_held = held_apart_from_queue(&c);
    assert_eq!(now_held - held, crate::lz::SmallCompressor::heap_bytes_for(10), "its 5.25 KiB counted");
}

/// By default the server keeps its context in its own compressor; a message prepared for many connections goes
/// out as the same compressed frame for all (made from a fresh context), after which the connection's compressor
/// no longer refers back past it (the peer's window took bytes it did not produce); a keepalive ping that finds
/// the compressor unused since the last one gives its memory back, and the next message starts a fresh context.
#[test]
fn a_kept_context_steps_over_a_shared_frame_and_goes_at_the_keepalive_ping() {
    let limits = config();
    let ping = limits.ping_interval.unwrap();
    let (_, _, mut c) = run_with(limits, HEAD, &[]);
    let mut wire = Vec::new();
    c.drain_out(&mut wire);
    let bare = held_apart_from_queue(&c);
    let (mut pool, mut inf) = (DeflatePool::new(), Inflater::new(15));
    let line = "{\"user\":\"ada\",\"text\":\"the same line, sent again and again, long enough to be compressed\"}";
    let news = "{\"topic\":\"news\",\"text\":\"a different message, published once for every subscriber at once\"}";
    let mut shared = PreparedMessage::new(true, news.as_bytes());
    let mut sizes = Vec::new();
    for step in 0..5 {
        match step {
            2 => c.send_prepared(&mut shared, &mut pool).unwrap(),
            4 => {
                let held = held_apart_from_queue(&c);
                assert_eq!(held - bare, crate::lz::SmallCompressor::heap_bytes_for(15), "the compressor, counted");
                // The first ping finds it used since the connection opened: kept. The peer answers; the next
                // ping finds it unused since the first: given back.
                let t1 = Instant::now() + ping * 2;
                c.handle_timeout(t1);
                let held = held_apart_from_queue(&c);
                assert_eq!(held - bare, crate::lz::SmallCompressor::heap_bytes_for(15), "kept at the first ping");
                let mut pong = Vec::new();
                write_client_frame(&mut pong, true, 0, OpCode::Pong, [1, 2, 3, 4], b"wskit");
                let (n, _) = c.read(&mut pong, t1);
                assert_eq!(n, pong.len());
                c.handle_timeout(t1 + ping * 2);
                let held = held_apart_from_queue(&c);
                assert_eq!(held, bare, "given back at the second keepalive ping");
                let mut pings = Vec::new();
                c.drain_out(&mut pings);
                assert_eq!((pings[0], pings[7], pings.len()), (0x89, 0x89, 14), "the two pings");
                c.send_with(Message::Text(line), &mut pool).unwrap();
            }
            _ => c.send_with(Message::Text(line), &mut pool).unwrap(),
        }
        let mut wire = Vec::new();
        c.drain_out(&mut wire);
        let frames = server_frames(&wire);
        assert_eq!(frames.len(), 1);
        let (rsv1, z) = &frames[0];
        assert!(rsv1, "step {step}: compressed");
        let mut got = Vec::new();
        inf.inflate(z, &mut got, 1 << 20).unwrap();
        inf.finish(&mut got, 1 << 20).unwrap();
        assert_eq!(got, if step == 2 { news.as_bytes() } else { line.as_bytes() }, "step {step}");
        sizes.push(z.len());
    }
    assert!(sizes[1] < 10, "the context is kept: {sizes:?}");
    assert!(sizes[3] > 30 && sizes[4] > 30, "after the shared frame and after the ping, a fresh one: {sizes:?}");
    assert_eq!(shared.compressions(), 1);
}
