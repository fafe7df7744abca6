//! `docs/protocol.md` walks through one session on real bytes. Every byte block in it sits between
//! `<!-- wskit:NAME -->` and `<!-- /wskit -->` and is produced here by wskit's own code (the sans-I/O
//! `Connection`, the frame codec, the deflate codec); this test fails if the document and the code disagree.
//! `WSKIT_BLESS=1 cargo test --test protocol_doc` rewrites the blocks after a reviewed change.

#![cfg(feature = "deflate")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;
use wskit::frame::{write_client_frame, write_frame, OpCode};
use wskit::{Config, Connection, Event, Message};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(s, "{:04x}  ", i * 16);
        for b in chunk {
            let _ = write!(s, "{b:02x} ");
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
    }
    s
}

/// An HTTP head as text, each line shown with its CR LF.
fn head_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\\r\\n\n")
}

fn request(extra: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Feeds `input` to the connection, accepting an upgrade; returns the events (described) and what it wrote.
fn feed(c: &mut Connection, input: &[u8]) -> (Vec<String>, Vec<u8>) {
    let now = Instant::now();
    let mut buf = input.to_vec();
    let mut off = 0;
    let total = buf.len();
    let mut evs = Vec::new();
    loop {
        let (n, ev) = c.read(&mut buf[off..], now);
        off += n;
        let mut accept = false;
        match ev {
            None if n == 0 || off == total => break,
            None => continue,
            Some(Event::Upgrade(r)) => {
                evs.push(format!("Upgrade({})", r.uri()));
                accept = true;
            }
            Some(Event::Message(Message::Text(t))) => evs.push(format!("Message(Text({t:?}))")),
            Some(Event::Message(Message::Binary(b))) => evs.push(format!("Message(Binary({} bytes))", b.len())),
            Some(Event::Ping(p)) => evs.push(format!("Ping({:?})", String::from_utf8_lossy(p))),
            Some(Event::Pong(p)) => evs.push(format!("Pong({:?})", String::from_utf8_lossy(p))),
            Some(Event::Close(code, r)) => evs.push(format!("Close({}, {r:?})", code.0)),
            Some(Event::Error(e)) => evs.push(format!("Error({e}) -> close {}", e.close_code().0)),
            Some(Event::HandshakeFailed(e)) => evs.push(format!("HandshakeFailed({e}) -> HTTP {}", e.status())),
            Some(Event::Http(r)) => evs.push(format!("Http({})", r.uri())),
            Some(Event::Tunnel) => unreachable!("HTTP/2 is off here"),
        }
        if accept {
            c.accept(None, true, now).unwrap();
        }
        if off == total {
            break;
        }
    }
    let mut out = Vec::new();
    c.drain_out(&mut out);
    (evs, out)
}

fn open(config: Config, extra: &str) -> (Connection, Vec<u8>) {
    let mut c = Connection::new(config.limits(), Instant::now());
    let (_, out) = feed(&mut c, request(extra).as_bytes());
    (c, out)
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        0 => "continuation",
        1 => "text",
        2 => "binary",
        8 => "close",
        9 => "ping",
        10 => "pong",
        _ => "reserved",
    }
}

/// A frame header, bit by bit.
fn dissect(frame: &[u8]) -> String {
    let (b0, b1) = (frame[0], frame[1]);
    let mut s = String::new();
    let _ = writeln!(s, "byte 0 = {b0:02x} = {b0:08b}");
    let _ = writeln!(
        s,
        "  FIN    = {}       ({})",
        b0 >> 7,
        if b0 & 0x80 != 0 { "last frame of the message" } else { "more fragments follow" }
    );
    let _ = writeln!(
        s,
        "  RSV1   = {}       ({})",
        (b0 >> 6) & 1,
        if b0 & 0x40 != 0 { "compressed (permessage-deflate)" } else { "no extension bit" }
    );
    let _ = writeln!(s, "  RSV2-3 = {}{}", (b0 >> 5) & 1, (b0 >> 4) & 1);
    let _ = writeln!(s, "  opcode = {:04b}    (0x{:x}, {})", b0 & 0xf, b0 & 0xf, opcode_name(b0 & 0xf));
    let _ = writeln!(s, "byte 1 = {b1:02x} = {b1:08b}");
    let _ = writeln!(
        s,
        "  MASK   = {}       ({})",
        b1 >> 7,
        if b1 & 0x80 != 0 { "masked: a 4-byte key follows the length" } else { "not masked" }
    );
    let len7 = b1 & 0x7f;
    match len7 {
        126 => {
            let n = u16::from_be_bytes([frame[2], frame[3]]);
            let _ = writeln!(s, "  len    = {len7}     (126: the length is in the next 2 bytes)");
            let _ = writeln!(s, "bytes 2-3 = {:02x} {:02x} = {n} (16-bit, big-endian)", frame[2], frame[3]);
        }
        127 => {
            let n = u64::from_be_bytes(frame[2..10].try_into().unwrap());
            let _ = writeln!(s, "  len    = {len7}     (127: the length is in the next 8 bytes)");
            let bytes: Vec<String> = frame[2..10].iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(s, "bytes 2-9 = {} = {n} (64-bit, big-endian)", bytes.join(" "));
        }
        n => {
            let _ = writeln!(s, "  len    = {n:<7} (0-125: the length itself)");
        }
    }
    s
}

fn blocks() -> BTreeMap<&'static str, String> {
    let mut b = BTreeMap::new();

    // ── the opening handshake ──
    b.insert("upgrade-request", head_text(request("").as_bytes()));
    let concat = format!("{KEY}{}", wskit::handshake::GUID);
    let sha = {
        use sha1::{Digest, Sha1};
        Sha1::digest(concat.as_bytes())
    };
    let sha_hex: Vec<String> = sha.iter().map(|x| format!("{x:02x}")).collect();
    b.insert(
        "accept-key",
        format!(
            "key                 {KEY}\nkey + GUID          {concat}\nSHA-1 (20 bytes)    {}\nbase64              {}\n",
            sha_hex.join(" "),
            wskit::handshake::accept_key(KEY)
        ),
    );
    let (mut c, out) = open(Config::new().deflate(false), "");
    b.insert("upgrade-response", head_text(&out));

    // ── frames ──
    for (name, len) in [("frame-7bit", 5usize), ("frame-16bit", 300), ("frame-64bit", 70_000)] {
        let payload: Vec<u8> = if len == 5 { b"Hello".to_vec() } else { vec![b'x'; len] };
        let msg = if len == 5 { Message::Text("Hello") } else { Message::Binary(&payload) };
        c.send(msg).unwrap();
        let out = c.out().to_vec();
        c.consume_out(out.len());
        let head = &out[..out.len() - len];
        let mut s = format!(
            "wskit sends a {len}-byte {} message: the header is {} bytes\n",
            if len == 5 { "text" } else { "binary" },
            head.len()
        );
        s.push_str(&hex(&out[..head.len() + len.min(5)]));
        if len > 5 {
            s.push_str("      ... (payload)\n");
        }
        s.push('\n');
        s.push_str(&dissect(&out));
        b.insert(name, s);
    }

    // ── masking ──
    let mut masked = Vec::new();
    write_client_frame(&mut masked, true, 0, OpCode::Text, MASK, b"Hello");
    let mut s = format!(
        "a client's \"Hello\", masked with key {:02x} {:02x} {:02x} {:02x}:\n",
        MASK[0], MASK[1], MASK[2], MASK[3]
    );
    s.push_str(&hex(&masked));
    s.push('\n');
    s.push_str(&dissect(&masked));
    s.push_str("bytes 2-5 = the masking key\n\nunmasking: payload[i] XOR key[i % 4]\n");
    for (i, m) in masked[6..].iter().enumerate() {
        let p = m ^ MASK[i % 4];
        let _ = writeln!(s, "  {m:02x} XOR {:02x} = {p:02x}  '{}'", MASK[i % 4], p as char);
    }
    let (evs, _) = feed(&mut c, &masked);
    let _ = writeln!(s, "\nevent: {}", evs.join(", "));
    b.insert("masking", s);

    // ── fragmentation with a ping between the fragments ──
    let mut wire = Vec::new();
    write_client_frame(&mut wire, false, 0, OpCode::Text, MASK, b"Hel");
    write_client_frame(&mut wire, true, 0, OpCode::Ping, MASK, b"?");
    write_client_frame(&mut wire, true, 0, OpCode::Continuation, MASK, b"lo");
    let (evs, out) = feed(&mut c, &wire);
    let mut s = String::from("in (three frames: text FIN=0 \"Hel\", ping \"?\", continuation FIN=1 \"lo\"):\n");
    s.push_str(&hex(&wire));
    s.push_str("\nevents, in order:\n");
    for e in &evs {
        let _ = writeln!(s, "  {e}");
    }
    s.push_str("\nout (the pong the connection queued by itself, payload echoed):\n");
    s.push_str(&hex(&out));
    b.insert("fragments", s);

    // ── UTF-8 across fragments ──
    let text = "κόσμε".as_bytes();
    let mut wire = Vec::new();
    write_client_frame(&mut wire, false, 0, OpCode::Text, MASK, &text[..3]);
    write_client_frame(&mut wire, true, 0, OpCode::Continuation, MASK, &text[3..]);
    let (evs, _) = feed(&mut c, &wire);
    let mut s = String::new();
    let _ = writeln!(s, "\"κόσμε\" = {}", text.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" "));
    let _ =
        writeln!(s, "fragment 1 carries {:02x} {:02x} {:02x} (κ, then the first byte of ό)", text[0], text[1], text[2]);
    let _ = writeln!(s, "fragment 2 carries the rest, from {:02x}", text[3]);
    let _ = writeln!(s, "event: {}", evs.join(", "));
    let (mut bad, _) = open(Config::new().deflate(false), "");
    let mut wire = Vec::new();
    write_client_frame(&mut wire, false, 0, OpCode::Text, MASK, &[0xce]);
    write_client_frame(&mut wire, true, 0, OpCode::Continuation, MASK, &[0x41]);
    let (evs, out) = feed(&mut bad, &wire);
    let _ = writeln!(s, "\nce then 41 ('A') can never be UTF-8:\nevent: {}\nout:", evs.join(", "));
    s.push_str(&hex(&out));
    b.insert("utf8", s);

    // ── permessage-deflate ──
    let ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let mut config = Config::new();
    config.deflate.min_size = 0;
    let (mut z, out) = open(config, ext);
    let response = String::from_utf8_lossy(&out).into_owned();
    let answer = response.lines().find(|l| l.starts_with("Sec-WebSocket-Extensions")).unwrap_or("").to_string();
    b.insert("deflate-negotiation", format!("offer:  {}\nanswer: {answer}\n", ext.trim_end()));
    // The client compresses "Hello" twice with one context (context takeover), as RFC 7692 §7.2.3.2 shows.
    let mut comp = flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 15);
    let mut s = String::new();
    for round in 1..=2 {
        let mut raw = Vec::with_capacity(64);
        comp.compress_vec(b"Hello", &mut raw, flate2::FlushCompress::Sync).unwrap();
        let _ = writeln!(
            s,
            "client, message {round}: deflate(\"Hello\") with a sync flush = {}",
            raw.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
        );
        assert!(raw.ends_with(&[0, 0, 0xff, 0xff]));
        raw.truncate(raw.len() - 4);
        let mut frame = Vec::new();
        write_client_frame(&mut frame, true, 0b100, OpCode::Text, MASK, &raw);
        let _ = writeln!(s, "  the 00 00 ff ff tail is dropped (RFC 7692 §7.2.1); the frame, RSV1 set (c1):");
        for line in hex(&frame).lines() {
            let _ = writeln!(s, "  {line}");
        }
        let (evs, _) = feed(&mut z, &frame);
        let _ = writeln!(s, "  event: {}", evs.join(", "));
    }
    let mut pool = wskit::deflate::DeflatePool::new();
    z.send_with(Message::Text("Hello"), &mut pool).unwrap();
    let out = z.out().to_vec();
    z.consume_out(out.len());
    let _ = writeln!(
        s,
        "\nwskit sends \"Hello\" (deflate_min_size 0 here; by default a message under 64 bytes goes plain and never\n\
         touches the compressor): 7 bytes for its 5, compressed all the same, for with its context kept the peer's\n\
         window must take what the compressor's took:"
    );
    s.push_str(&hex(&out));
    let long = "Hello, Hello, Hello, Hello, Hello!";
    z.send_with(Message::Text(long), &mut pool).unwrap();
    let out = z.out().to_vec();
    z.consume_out(out.len());
    let _ = writeln!(
        s,
        "\nwskit sends {long:?} ({} bytes): compressed, RSV1 set (c1), its first \"Hello\" a match 5 bytes back, into the one before:",
        long.len()
    );
    s.push_str(&hex(&out));
    b.insert("deflate-message", s);

    // ── closing ──
    let mut close = Vec::new();
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    write_client_frame(&mut close, true, 0, OpCode::Close, MASK, &payload);
    let (evs, out) = feed(&mut c, &close);
    let mut s = String::from("in (close, code 1000 = 03 e8, reason \"bye\"):\n");
    s.push_str(&hex(&close));
    let _ =
        writeln!(s, "event: {}\nout (the echo: the same code, then wskit closes TCP first, §7.1.1):", evs.join(", "));
    s.push_str(&hex(&out));
    let _ = writeln!(s, "status: {:?}", c.close_status());
    let (mut srv, _) = open(Config::new().deflate(false), "");
    srv.close(wskit::CloseCode::GOING_AWAY, "restarting", Instant::now()).unwrap();
    let out = srv.out().to_vec();
    let _ = writeln!(s, "\nthe server starting the close (1001 going away, \"restarting\"):");
    s.push_str(&hex(&out));
    b.insert("close", s);

    // ── error answers ──
    let mut s = String::new();
    let mut h = Connection::new(Config::new().limits(), Instant::now());
    let (evs, out) = feed(&mut h, request("").replace("Version: 13", "Version: 8").as_bytes());
    let _ = writeln!(s, "a request with Sec-WebSocket-Version: 8\nevent: {}\n", evs.join(", "));
    s.push_str(&head_text(&out));
    let (mut e, _) = open(Config::new().deflate(false), "");
    let mut unmasked = Vec::new();
    write_frame(&mut unmasked, true, 0, OpCode::Text, b"hi");
    let (evs, out) = feed(&mut e, &unmasked);
    let _ = writeln!(
        s,
        "\nan unmasked client frame {}\nevent: {}\nout:",
        unmasked.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" "),
        evs.join(", ")
    );
    s.push_str(&hex(&out));
    let (mut e, _) = open(Config::new().deflate(false).max_payload_size(1024), "");
    let mut big = [0u8; 14];
    let n = wskit::frame::encode_header(true, 0, OpCode::Binary, Some(MASK), 1 << 20, &mut big);
    let (evs, out) = feed(&mut e, &big[..n]);
    let _ = writeln!(s, "\nthe header of a 1 MiB frame, limit 1 KiB: {}\nevent: {}\nout (refused at the header, before any payload is buffered):", big[..n].iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" "), evs.join(", "));
    s.push_str(&hex(&out));
    let (mut e, _) = open(Config::new().deflate(false), "");
    let mut rsv = Vec::new();
    write_client_frame(&mut rsv, true, 0b010, OpCode::Text, MASK, b"x");
    let (evs, out) = feed(&mut e, &rsv);
    let _ = writeln!(s, "\nRSV2 set with no extension that defines it\nevent: {}\nout:", evs.join(", "));
    s.push_str(&hex(&out));
    b.insert("errors", s);
    b
}

#[test]
fn protocol_walkthrough_bytes_match_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let blocks = blocks();
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc.as_str();
    let mut seen = Vec::new();
    let mut stale = Vec::new();
    while let Some(i) = rest.find("<!-- wskit:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "<!-- wskit:".len()..];
        let name_end = after.find(" -->").expect("marker closed");
        let name = &after[..name_end];
        let body_start = name_end + " -->".len();
        let close = after.find("<!-- /wskit -->").unwrap_or_else(|| panic!("block {name} is not closed"));
        let current = &after[body_start..close];
        let want = blocks.get(name).unwrap_or_else(|| panic!("docs/protocol.md names an unknown block `{name}`"));
        let rendered = format!("\n```text\n{want}```\n");
        if current != rendered {
            stale.push(name.to_string());
        }
        let _ = write!(out, "<!-- wskit:{name} -->{rendered}<!-- /wskit -->");
        seen.push(name.to_string());
        rest = &after[close + "<!-- /wskit -->".len()..];
    }
    out.push_str(rest);
    let missing: Vec<&&str> = blocks.keys().filter(|k| !seen.iter().any(|s| s == **k)).collect();
    if std::env::var_os("WSKIT_BLESS").is_some() {
        std::fs::write(&path, out).unwrap();
        return;
    }
    assert!(missing.is_empty(), "docs/protocol.md lacks the blocks {missing:?}");
    assert!(
        stale.is_empty(),
        "docs/protocol.md shows bytes the code no longer produces in {stale:?}; review, then WSKIT_BLESS=1"
    );
}
