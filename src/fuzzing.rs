//! The checks behind the cargo-fuzz targets in `fuzz/` (each target is one call), also replayed by
//! `tests/fuzz_regressions.rs` on every crash input ever found. Each takes arbitrary bytes and panics only when
//! wskit breaks a promise: a panic inside wskit, or a result that depends on how the input was split.
#![allow(missing_docs, clippy::missing_panics_doc)]

use crate::deflate::{negotiate, parse_offers, DeflateConfig};
use crate::frame::{decode_header, encode_header, Status};
use crate::handshake::{validate_upgrade, HeadReader};
use crate::proxy::ProxyReader;
use crate::{Config, Connection, Event, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn head_verdict(data: &[u8], cuts: &[usize]) -> String {
    let mut head = HeadReader::default();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let end = end.clamp(start, data.len());
        match head.feed(&data[start..end], 1024) {
            Ok(Status::Partial) => start = end,
            Ok(Status::Complete(n)) => {
                return match head.parse(&data[start..end], n) {
                    Ok(req) => format!("ok {} {:?} {:?}", start + n, req.uri(), validate_upgrade(&req)),
                    Err(e) => format!("bad {e:?}"),
                }
            }
            Err(e) => return format!("err {e:?}"),
        }
    }
    "partial".to_string()
}

fn proxy_verdict(data: &[u8], cuts: &[usize]) -> String {
    let mut reader = ProxyReader::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let end = end.clamp(start, data.len());
        match reader.feed(&data[start..end]) {
            Ok(Status::Partial) => start = end,
            Ok(Status::Complete((source, n))) => {
                assert!(n <= end - start);
                return format!("ok {} {source:?}", start + n);
            }
            Err(e) => return format!("err {e:?}"),
        }
    }
    "partial".to_string()
}

/// The request-head reader and validation, and the PROXY protocol reader in front of it: split feeding agrees
/// with one-shot feeding.
pub fn handshake(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else { return };
    let step = step as usize % 17 + 1;
    let cuts: Vec<usize> = (step..data.len()).step_by(step).collect();
    assert_eq!(head_verdict(data, &[]), head_verdict(data, &cuts), "split feeding disagrees with one-shot feeding");
    let one_shot = proxy_verdict(data, &[]);
    assert_eq!(one_shot, proxy_verdict(data, &cuts), "PROXY: split feeding disagrees with one-shot feeding");
    if let Ok(Status::Complete((_, n))) = crate::proxy::parse(data) {
        assert!(n <= data.len() && n <= 16 + crate::proxy::MAX_V2_LEN, "PROXY header of {n} bytes");
    }
    // Any header text, from a proxy trusted for everything: an address or nothing, never a panic.
    let text = String::from_utf8_lossy(data);
    let all: [crate::policy::IpNet; 2] = ["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    let _ = crate::policy::forwarded_client(peer, &all, text.split('\n'));
}

/// The frame-header decoder: decode(encode(h)) == h, and the minimal form re-encodes to the same bytes.
pub fn frame(data: &[u8]) {
    if let Ok(Status::Complete((h, n))) = decode_header(data) {
        assert!(n <= data.len() && n >= 2);
        let mut out = [0u8; 14];
        let m = encode_header(h.fin, h.rsv, h.opcode, h.mask, h.len, &mut out);
        match decode_header(&out[..m]) {
            Ok(Status::Complete((h2, m2))) => {
                assert_eq!(m2, m);
                assert_eq!((h2.fin, h2.rsv, h2.opcode, h2.mask, h2.len), (h.fin, h.rsv, h.opcode, h.mask, h.len));
            }
            other => panic!("re-encoded header does not decode: {other:?}"),
        }
        if m == n {
            assert_eq!(&out[..m], &data[..n], "minimal form re-encodes to the same bytes");
        }
    }
}

fn transcript(config: &Arc<crate::config::Limits>, data: &[u8], step: usize) -> (Vec<String>, Vec<u8>) {
    let t0 = Instant::now();
    let mut c = Connection::new(config.clone(), t0);
    let mut evs = Vec::new();
    let mut out = Vec::new();
    for (i, chunk) in data.chunks(step.max(1)).enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        let mut buf = chunk.to_vec();
        let total = buf.len();
        let mut off = 0;
        while off < total {
            let (n, ev) = c.read(&mut buf[off..], now);
            off += n;
            let mut accept = false;
            match ev {
                None if n == 0 => break,
                None => {}
                Some(Event::Upgrade(_)) => {
                    evs.push("upgrade".to_string());
                    accept = true;
                }
                Some(Event::Message(Message::Text(t))) => evs.push(format!("text {t:?}")),
                Some(Event::Message(Message::Binary(b))) => evs.push(format!("binary {b:?}")),
                Some(e) => evs.push(format!("{e:?}")),
            }
            if accept {
                let _ = c.accept(None, true, now);
            }
            c.debug_check_invariants();
        }
        c.drain_out(&mut out);
        c.reclaim();
    }
    (evs, out)
}

/// The whole per-connection state machine after a valid upgrade (permessage-deflate offered or not): the events
/// and the bytes written do not depend on how the input is split.
pub fn connection(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (flags, step, body) = (data[0], data[1] as usize % 31 + 1, &data[2..]);
    let deflate = flags & 1 != 0;
    let mut cfg = Config::new().max_payload_size(64 * 1024).max_message_size(256 * 1024).deflate(deflate);
    cfg.deflate.min_size = 0;
    let cfg = cfg.limits();
    let ext = match (deflate, flags & 2 != 0) {
        (false, _) => "",
        (true, true) => {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; server_max_window_bits=10\r\n"
        }
        (true, false) => "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n",
    };
    let mut stream = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    )
    .into_bytes();
    stream.extend_from_slice(body);
    let one = transcript(&cfg, &stream, stream.len());
    let split = transcript(&cfg, &stream, step);
    assert_eq!(one.0, split.0, "events depend on the split");
    // How many pongs go out depends on how often the queue is drained (waiting pongs are coalesced into the
    // newest, RFC 6455 §5.5.2); everything else must be identical.
    assert_eq!(without_pongs(&one.1), without_pongs(&split.1), "output depends on the split");
}

/// The fuzzed endpoint's application: echoes, sends a second copy of messages that start with `2`, publishes
/// messages that start with `p` to a topic every connection joins, and closes on `c`. (Not a panic: cargo-fuzz
/// builds abort on any panic, caught or not; the simulator covers a handler's panics.)
struct FuzzApp {
    log: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
}

impl crate::Handler for FuzzApp {
    fn on_open(&mut self, ctx: &mut crate::Ctx<'_>, _req: &crate::handshake::Request) {
        ctx.subscribe("t");
    }
    fn on_message(&mut self, ctx: &mut crate::Ctx<'_>, msg: Message<'_>) {
        self.log.borrow_mut().push(format!("{msg:?}"));
        match msg.as_bytes().first() {
            Some(b'c') => ctx.close(crate::CloseCode::NORMAL, "asked"),
            Some(b'p') => ctx.publish("t", msg),
            Some(b'2') => {
                ctx.send(msg);
                ctx.send(msg);
            }
            _ => {
                ctx.send(msg);
            }
        }
    }
    fn on_close(&mut self, _ctx: &mut crate::Ctx<'_>, status: &crate::CloseStatus) {
        self.log.borrow_mut().push(format!("close {:?}", status.code()));
    }
}

/// One client's bytes through a whole endpoint by its sans-I/O interface, `step` bytes a read, every transmit
/// taken whole: the handler's events and the bytes written, after the peer's FIN and every deadline.
fn endpoint_transcript(cfg: &Config, stream: &[u8], step: usize) -> (Vec<String>, Vec<u8>) {
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut ep = crate::Endpoint::new(cfg.clone(), Box::new(FuzzApp { log: log.clone() }));
    let t0 = Instant::now();
    let peer = core::net::SocketAddr::from(([10, 0, 0, 1], 4000));
    let id = ep.accept(peer, t0).expect("a plain endpoint accepts");
    let mut out = Vec::new();
    let chunks = stream.chunks(step.max(1)).map(Some).chain(std::iter::once(None));
    for (i, chunk) in chunks.enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        let eof = chunk.is_none();
        ep.ready(id, true, false, eof);
        let mut chunk = chunk.unwrap_or_default();
        while let Some(op) = ep.poll_read(now) {
            let n = chunk.len().min(op.max);
            let (first, second) = ep.read_bufs(&op);
            let k = n.min(first.len());
            first[..k].copy_from_slice(&chunk[..k]);
            second[..n - k].copy_from_slice(&chunk[k..n]);
            let result = match n {
                0 if eof => Ok(0),
                0 => Err(std::io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            };
            if !op.peek {
                chunk = &chunk[n..];
            }
            ep.received(op, result, now);
            endpoint_drain(&mut ep, &mut out, now);
        }
        ep.handle_timeout(now);
        ep.end_turn(now);
        endpoint_drain(&mut ep, &mut out, now);
    }
    for k in 1..4 {
        let later = t0 + Duration::from_secs(3600 * k);
        ep.handle_timeout(later);
        ep.end_turn(later);
        endpoint_drain(&mut ep, &mut out, later);
    }
    assert_eq!(ep.connection_count(), 0, "the connection ended");
    assert_eq!(ep.held_bytes(), 0, "nothing is held after it");
    let events = log.borrow().clone();
    (events, out)
}

fn endpoint_drain(ep: &mut crate::Endpoint, out: &mut Vec<u8>, now: Instant) {
    loop {
        while let Some(t) = ep.poll_transmit(now) {
            let id = t.id;
            let mut buf = [&[][..]; crate::endpoint::MAX_PARTS];
            let before = out.len();
            for p in t.parts(&mut buf) {
                out.extend_from_slice(p);
            }
            let n = out.len() - before;
            ep.sent(id, Ok(n), now);
        }
        match ep.poll_order() {
            Some(crate::Order::MeasureSendBuffer(id)) => ep.send_buffer_is(id, 0),
            Some(_) => {}
            None => return,
        }
    }
}

/// A whole endpoint (admission, the handler's calls and commands, the zero-copy echo, topics, timers, the end of
/// its turns) under one client's arbitrary bytes after a valid upgrade, fed in pieces of any size, then its FIN:
/// nothing panics, the connection ends with nothing held, and neither the handler's events nor the bytes
/// written depend on how the input was split.
pub fn endpoint(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (flags, step, body) = (data[0], data[1] as usize % 31 + 1, &data[2..]);
    let deflate = flags & 1 != 0;
    let mut cfg = Config::new().max_payload_size(64 * 1024).max_message_size(256 * 1024).deflate(deflate);
    cfg.deflate.min_size = 0;
    cfg.max_connections_per_ip = 0;
    let ext = if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
    let mut stream = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    )
    .into_bytes();
    stream.extend_from_slice(body);
    let one = endpoint_transcript(&cfg, &stream, stream.len());
    let split = endpoint_transcript(&cfg, &stream, step);
    assert_eq!(one.0, split.0, "the handler's events depend on the split");
    assert_eq!(without_pongs(&one.1), without_pongs(&split.1), "output depends on the split");
}

/// WebSockets over HTTP/2 through a whole endpoint (`Config::http2`, h2c by prior knowledge): the preface, an
/// extended CONNECT on stream 1, then either the body as that stream's DATA frames (the first byte's low bit set:
/// WebSocket bytes through HTTP/2) or the body as raw HTTP/2 frames, fed in pieces of any size, then the FIN.
/// Nothing panics, every session ends with nothing held, and the handler's events do not depend on the split.
pub fn endpoint_h2(data: &[u8]) {
    use crate::h2::{frame as h2f, hpack};
    if data.len() < 2 {
        return;
    }
    let (flags, step, body) = (data[0], data[1] as usize % 31 + 1, &data[2..]);
    let mut cfg = Config::new().max_payload_size(64 * 1024).max_message_size(256 * 1024).http2(true);
    cfg.max_connections_per_ip = 0;
    let mut stream = crate::h2::conn::PREFACE.to_vec();
    h2f::write_settings(&mut stream, &[]);
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "x"),
        ("sec-websocket-version", "13"),
    ] {
        hpack::write_field(&mut block, n.as_bytes(), v.as_bytes());
    }
    h2f::write_headers(&mut stream, 1, false, &block, h2f::DEFAULT_MAX_FRAME_SIZE);
    if flags & 1 != 0 {
        for piece in body.chunks(1000) {
            h2f::write_data(&mut stream, 1, false, piece);
        }
    } else {
        stream.extend_from_slice(body);
    }
    let one = endpoint_transcript(&cfg, &stream, stream.len());
    let split = endpoint_transcript(&cfg, &stream, step);
    assert_eq!(one.0, split.0, "the handler's events depend on the split");
}

/// The server's output with its pong frames taken out (the HTTP head and every other frame kept, in order).
fn without_pongs(out: &[u8]) -> Vec<u8> {
    let head = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |i| i + 4);
    let mut kept = out[..head].to_vec();
    let mut pos = head;
    while pos < out.len() {
        match decode_header(&out[pos..]) {
            Ok(Status::Complete((h, n))) if pos + n + h.len as usize <= out.len() => {
                let end = pos + n + h.len as usize;
                if h.opcode != crate::frame::OpCode::Pong {
                    kept.extend_from_slice(&out[pos..end]);
                }
                pos = end;
            }
            _ => {
                kept.extend_from_slice(&out[pos..]);
                break;
            }
        }
    }
    kept
}

/// The extension-header parser and negotiation (an answer is itself an acceptable offer), and the inflater (the
/// limit holds within one step; inflating in pieces equals inflating at once).
pub fn deflate(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel & 1 == 0 {
        let text = String::from_utf8_lossy(rest);
        let offers = parse_offers(text.split('\n'));
        let cfg = DeflateConfig { enabled: true, ..DeflateConfig::default() };
        if let Some(p) = negotiate(&offers, &cfg) {
            let answer = p.response();
            assert!(answer.starts_with("permessage-deflate"));
            assert!(negotiate(&parse_offers(std::iter::once(answer.as_str())), &cfg).is_some(), "{answer}");
        }
    } else {
        inflate_pieces(sel, rest);
    }
}

#[cfg(not(feature = "deflate"))]
fn inflate_pieces(_sel: u8, _rest: &[u8]) {}

#[cfg(feature = "deflate")]
fn inflate_pieces(sel: u8, rest: &[u8]) {
    {
        use crate::deflate::{Inflater, INFLATE_STEP};
        let limit = 1 << 16;
        let window = 9 + (sel >> 1) % 7;
        let mut inf = Inflater::new(window);
        let mut whole = Vec::new();
        let r1 = inf.inflate(rest, &mut whole, limit).and_then(|_| inf.finish(&mut whole, limit));
        assert!(whole.len() <= limit + INFLATE_STEP);
        let mut inf = Inflater::new(window);
        let mut pieces = Vec::new();
        let mut r2 = Ok(());
        for chunk in rest.chunks(7) {
            r2 = inf.inflate(chunk, &mut pieces, limit);
            if r2.is_err() {
                break;
            }
        }
        let r2 = r2.and_then(|_| inf.finish(&mut pieces, limit));
        if r1.is_ok() && r2.is_ok() {
            assert_eq!(whole, pieces, "inflating in pieces differs");
        }
    }
}

/// wskit's small-window compressor ([`crate::lz`]) with its context kept: `data[0]` picks the window (8–15 bits),
/// the rest is messages, each a length byte and that many bytes; or, where the length byte's top bit is set, its
/// low bits times 256 (up to 32,512; 64 KiB per input in all) of bytes drawn from an alphabet that follows (a count byte, then up to 16 bytes):
/// long messages of few symbols, so that blocks get codes of their own and are cut at 16,384 tokens. Each is
/// compressed in turn and read back by zlib keeping its context, as a peer does. After an empty message a
/// message compressed elsewhere (a shared frame) goes to zlib, and the compressor forgets its history.
#[cfg(feature = "deflate")]
pub fn lz(data: &[u8]) {
    use flate2::{Decompress, FlushDecompress};
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let bits = 8 + sel % 8;
    let mut c = crate::lz::SmallCompressor::new(bits);
    let mut d = Decompress::new_with_window_bits(false, bits.max(9));
    let (mut z, mut work) = (Vec::new(), Vec::new());
    let mut budget = 1 << 16;
    while let Some((&len, more)) = rest.split_first() {
        let drawn: Vec<u8>;
        let msg = if len & 0x80 == 0 {
            let msg = &more[..(len as usize).min(more.len())];
            rest = &more[msg.len()..];
            msg
        } else {
            let (&count, after) = more.split_first().unwrap_or((&0, &[]));
            let alphabet = &after[..(1 + count as usize % 16).min(after.len())];
            rest = &after[alphabet.len()..];
            let alphabet = if alphabet.is_empty() { &b"ab"[..] } else { alphabet };
            let mut x = alphabet.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(31));
            // (At most 64 KiB drawn per input, so that the fuzzer spends its time on variety, not on bytes.)
            let n = ((len & 0x7f) as usize * 256).min(budget);
            budget -= n;
            drawn = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            &drawn[..]
        };
        z.clear();
        c.compress(msg, &mut z, &mut work);
        z.extend_from_slice(&crate::deflate::TAIL);
        let mut out = Vec::with_capacity(msg.len() + 64);
        let before = d.total_in();
        d.decompress_vec(&z, &mut out, FlushDecompress::Sync).expect("zlib reads it");
        assert_eq!(d.total_in() - before, z.len() as u64, "all of it read");
        assert_eq!(out, msg, "read back as sent");
        if msg.is_empty() {
            let foreign = b"a message compressed once for many connections, from a fresh context";
            z.clear();
            crate::lz::SmallCompressor::new(bits).compress(foreign, &mut z, &mut work);
            z.extend_from_slice(&crate::deflate::TAIL);
            let mut out = Vec::with_capacity(foreign.len() + 64);
            d.decompress_vec(&z, &mut out, FlushDecompress::Sync).expect("zlib reads it");
            assert_eq!(out, foreign);
            c.forget();
        }
    }
}

/// The TLS byte transform fed arbitrary ciphertext: an error (with its alert queued), never a panic.
#[cfg(feature = "tls")]
pub fn tls(config: Arc<rustls::ServerConfig>, data: &[u8]) {
    let mut layer = crate::tls::TlsLayer::new(config).expect("a server connection");
    let mut plain = Vec::new();
    for chunk in data.chunks(512) {
        if layer.receive(chunk, &mut plain).is_err() {
            break;
        }
    }
    let _ = layer.out();
}

/// Every HTTP/2 frame in `data[1..]`, decoded one after another in one piece and again with the bytes split at
/// a point `data[0]` picks: both ways give the same frames and the same error, each frame takes at least its
/// header, and SETTINGS parameters are read without a panic.
pub fn h2_frame(data: &[u8]) {
    use crate::h2::frame::{decode, settings, Frame, HEADER_LEN};
    let Some((&pick, input)) = data.split_first() else { return };
    let max = if pick & 1 == 0 { 1 << 14 } else { 1 << 8 };
    let run = |cut: usize| {
        let (mut out, mut held, mut verdict) = (Vec::new(), Vec::new(), String::from("partial"));
        for part in [&input[..cut], &input[cut..]] {
            held.extend_from_slice(part);
            let mut at = 0;
            loop {
                match decode(&held[at..], max) {
                    Ok(Status::Complete((f, n))) => {
                        assert!(n >= HEADER_LEN && at + n <= held.len(), "a frame takes its header, within the input");
                        if let Frame::Settings { params, .. } = f {
                            let _ = settings(params);
                        }
                        out.push(format!("{f:?}"));
                        at += n;
                    }
                    Ok(Status::Partial) => break,
                    Err(e) => {
                        verdict = format!("{e:?}");
                        return (out, verdict);
                    }
                }
            }
            held.drain(..at);
        }
        (out, verdict)
    };
    let whole = run(input.len());
    let cut = (pick as usize * input.len()) / 255;
    assert_eq!(whole, run(cut.min(input.len())), "decoding depends on where the bytes were split ({cut})");
}

/// Arbitrary bytes as HPACK field blocks (split where `data[0]` says into two blocks on one decoder): no panic,
/// the fields kept within the list bound, the table within its size.
pub fn hpack(data: &[u8]) {
    use crate::h2::hpack::{Decoded, Decoder};
    let Some((&pick, input)) = data.split_first() else { return };
    let cut = (pick as usize * input.len()) / 255;
    let (max_table, max_list) = (if pick & 1 == 0 { 4096 } else { 64 }, 1 << 12);
    let mut d = Decoder::new(max_table, max_list, 64);
    for block in [&input[..cut], &input[cut..]] {
        match d.decode(block) {
            Ok(Decoded::Fields(f)) => {
                let size: usize = f.iter().map(|f| f.name.len() + f.value.len() + 32).sum();
                assert!(size <= max_list && f.len() <= 64, "kept past the bounds");
            }
            Ok(Decoded::TooLarge) => {}
            Err(_) => return,
        }
        assert!(d.table_size() <= max_table, "the table grew past its size");
    }
}

/// An HTTP/2 server connection fed the client preface and arbitrary bytes (split where `data[0]` says): no
/// panic, requests answered and their data echoed as the windows allow, and everything written is whole frames.
pub fn h2_conn(data: &[u8]) {
    use crate::h2::conn::{Event, H2Conn, Limits, PREFACE};
    use crate::h2::frame::{decode, MAX_MAX_FRAME_SIZE};
    let Some((&pick, rest)) = data.split_first() else { return };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(rest);
    let cut = (pick as usize * input.len()) / 255;
    let limits = Limits { max_streams: 4, stream_window: 1 << 12, max_header_block: 4096, ..Limits::default() };
    let mut c = H2Conn::new(limits);
    let now = Instant::now();
    for (i, part) in [&input[..cut], &input[cut..]].into_iter().enumerate() {
        if c.receive(part, now + Duration::from_secs(i as u64)).is_err() {
            break;
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::Request { stream, .. } => c.respond(stream, 200, &[("x", "y")], false),
                Event::Data { stream, data, end_stream } => {
                    c.release(stream, data.len());
                    c.send_data(stream, &data, end_stream, now);
                }
                _ => {}
            }
        }
    }
    let (out, mut at) = (c.out(), 0);
    while at < out.len() {
        match decode(&out[at..], MAX_MAX_FRAME_SIZE) {
            Ok(Status::Complete((_, n))) => at += n,
            other => panic!("the server wrote something other than whole frames: {other:?}"),
        }
    }
}
