//! permessage-deflate with real peers: Python `websockets` with every parameter combination, the decompression
//! bomb against the echo example (time and peak memory), and the cap on live compression contexts.
#![cfg(feature = "deflate")]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wskit::deflate::Compressor;
use wskit::frame::{write_client_frame, OpCode};
use wskit::Config;

child_server_entry!();

#[test]
fn python_websockets_every_parameter_combination() {
    if skip_external("python websockets") {
        return;
    }
    let server = TestServer::echo(Config::new().max_payload_size(2 << 20));
    let out = run_python(include_str!("py/deflate_client.py"), &[&server.url("/")]);
    assert_eq!(out.trim(), "ok 32");
}

#[test]
fn python_websockets_against_each_compressor() {
    if skip_external("python websockets") {
        return;
    }
    // The server keeps its context in wskit's own compressor with a 1 KiB window (or the client's smaller one),
    // in zlib-rs', or resets it after every message (the loop's pooled compressor).
    for (pairs, mode) in [
        ("deflate_dedicated_window_bits=10", ""),
        ("deflate_dedicated_window_bits=0", ""),
        ("deflate_server_no_context_takeover=true", "server-resets-context"),
    ] {
        let server = TestServer::echo(with_pairs(Config::new().max_payload_size(2 << 20), pairs));
        let out = run_python(include_str!("py/deflate_client.py"), &[&server.url("/"), mode]);
        assert_eq!(out.trim(), "ok 32", "{pairs}");
    }
}

fn deflate_client(addr: std::net::SocketAddr, offer: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = upgrade_request("/").replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"));
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

#[test]
fn decompression_bomb_is_refused_quickly_with_bounded_memory() {
    // An echo server in its own process, so its peak RSS is its own (2 MiB message limit).
    let child = ChildServer::start(2 << 20);
    let addr = child.addr;
    let before = proc_status_kib(child.pid(), "VmHWM");

    // 1 GiB of zeros deflates to about 1 MB: one frame.
    let mut z = Vec::new();
    let mut comp = Compressor::new(9, 15);
    let zeros = vec![0u8; 64 << 20];
    let mut one = Vec::new();
    comp.compress(&zeros, &mut one);
    for _ in 0..16 {
        z.extend_from_slice(&one);
    }
    let mut frame = Vec::new();
    write_client_frame(&mut frame, true, 0b100, OpCode::Binary, [1, 2, 3, 4], &z);
    assert!(frame.len() < 2 << 20, "{}", frame.len());

    let (mut s, head) = deflate_client(addr, "permessage-deflate");
    assert!(head.contains("permessage-deflate"), "{head}");
    let start = Instant::now();
    let _ = s.write_all(&frame);
    assert_eq!(read_close(&mut s), Some(1009));
    let took = start.elapsed();
    let peak = proc_status_kib(child.pid(), "VmHWM");
    drop(child);
    eprintln!(
        "bomb: {} KiB on the wire for 1 GiB inflated; 1009 after {took:?}; peak RSS {before} -> {peak} KiB",
        frame.len() / 1024
    );
    assert!(took < Duration::from_millis(500), "{took:?}");
    // One 2 MiB limit plus one inflate step and the read buffer, with room to spare: far from 1 GiB.
    assert!(peak - before < 16 * 1024, "peak RSS grew by {} KiB", peak - before);
}

#[test]
fn live_context_cap_serves_the_rest_uncompressed() {
    let mut config = Config::new();
    config.deflate.max_contexts = 1;
    let server = TestServer::echo(config);
    let (_a, head_a) = deflate_client(server.addr, "permessage-deflate");
    assert!(head_a.contains("Sec-WebSocket-Extensions: permessage-deflate"), "{head_a}");
    let (mut b, head_b) = deflate_client(server.addr, "permessage-deflate");
    assert!(!head_b.contains("Sec-WebSocket-Extensions"), "{head_b}");
    b.write_all(&client_frame(true, OpCode::Text, &b"plain ".repeat(100))).unwrap();
    let (_, op, p) = read_frame(&mut b).unwrap();
    assert_eq!((op, p.len()), (1, 600));
    drop(_a);
    // Once the first leaves, its context is released.
    assert!(wait_until(Duration::from_secs(5), || server.connections() == 1));
    let (_c, head_c) = deflate_client(server.addr, "permessage-deflate");
    assert!(head_c.contains("permessage-deflate"), "{head_c}");
}

#[test]
fn broadcast_to_deflate_and_plain_clients() {
    struct Fanout;
    impl wskit::Handler for Fanout {
        fn on_message(&mut self, ctx: &mut wskit::Ctx<'_>, msg: wskit::Message<'_>) {
            ctx.broadcast(msg, None);
        }
    }
    let server = TestServer::start(Config::new(), || Fanout);
    let (mut z1, _) = deflate_client(server.addr, "permessage-deflate");
    let (mut z2, _) = deflate_client(server.addr, "permessage-deflate; server_max_window_bits=10");
    let mut plain = raw_client(server.addr);
    let text = "the same news for everyone, the same news for everyone ".repeat(20);
    plain.write_all(&client_frame(true, OpCode::Text, text.as_bytes())).unwrap();
    assert_eq!(read_frame(&mut plain).unwrap(), (true, 1, text.clone().into_bytes()));
    for s in [&mut z1, &mut z2] {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        assert_eq!(h[0], 0xc1, "compressed text frame");
        let len = match h[1] {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        let mut inf = wskit::deflate::Inflater::new(15);
        let mut out = Vec::new();
        inf.inflate(&p, &mut out, 1 << 20).unwrap();
        inf.finish(&mut out, 1 << 20).unwrap();
        assert_eq!(out, text.as_bytes());
    }
}
