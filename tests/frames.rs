//! Frames on the wire against the running server: every length class both ways, fragmentation with control frames
//! in between, and each protocol fault's close code.

mod common;
use common::*;
use std::io::Write;
use wskit::frame::OpCode;
use wskit::Config;

fn big_config() -> Config {
    Config::new().max_payload_size(4 << 20).max_frames_per_message(usize::MAX)
}

#[test]
fn every_length_class_round_trips() {
    let server = TestServer::echo(big_config());
    let mut c = raw_client(server.addr);
    for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        c.write_all(&client_frame(true, OpCode::Binary, &payload)).unwrap();
        let (fin, op, p) = read_frame(&mut c).unwrap();
        assert!(fin);
        assert_eq!(op, 2);
        assert_eq!(p, payload, "length {len}");
    }
}

#[test]
fn fragments_with_pings_between_are_assembled() {
    let server = TestServer::echo(big_config());
    let mut c = raw_client(server.addr);
    let text = "Hello, κόσμε, 😀!".as_bytes();
    let mut wire = Vec::new();
    wire.extend(client_frame(false, OpCode::Text, &text[..9]));
    wire.extend(client_frame(true, OpCode::Ping, b"one"));
    wire.extend(client_frame(false, OpCode::Continuation, &text[9..16]));
    wire.extend(client_frame(true, OpCode::Ping, b"two"));
    wire.extend(client_frame(true, OpCode::Continuation, &text[16..]));
    // Byte by byte, so every frame and every code point is split across reads.
    c.set_nodelay(true).unwrap();
    for b in wire {
        c.write_all(&[b]).unwrap();
    }
    assert_eq!(read_frame(&mut c).unwrap(), (true, 0xA, b"one".to_vec()));
    assert_eq!(read_frame(&mut c).unwrap(), (true, 0xA, b"two".to_vec()));
    assert_eq!(read_frame(&mut c).unwrap(), (true, 0x1, text.to_vec()));
}

fn expect_close(wire: &[u8], code: u16) {
    let server = TestServer::echo(big_config());
    let mut c = raw_client(server.addr);
    c.write_all(wire).unwrap();
    assert_eq!(read_close(&mut c), Some(code), "wire {:x?}", &wire[..wire.len().min(16)]);
    // Complete the closing handshake; the server then closes TCP.
    c.write_all(&client_frame(true, OpCode::Close, &code.to_be_bytes())).unwrap();
    assert!(reads_eof(&mut c), "server closes TCP after the closing handshake");
}

#[test]
fn protocol_faults_close_with_1002() {
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    expect_close(&unmasked, 1002);
    expect_close(&[0x83, 0x80, 1, 2, 3, 4], 1002); // reserved opcode
    expect_close(&[0xC1, 0x80, 1, 2, 3, 4], 1002); // RSV1 without an extension
    expect_close(&client_frame(true, OpCode::Continuation, b"x"), 1002);
    let mut twice = client_frame(false, OpCode::Text, b"a");
    twice.extend(client_frame(true, OpCode::Binary, b"b"));
    expect_close(&twice, 1002);
    expect_close(&client_frame(false, OpCode::Ping, b"x"), 1002); // fragmented control
    expect_close(&client_frame(true, OpCode::Ping, &[0; 126]), 1002); // control too long
    let mut top = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
    top.extend_from_slice(&[1, 2, 3, 4]);
    expect_close(&top, 1002); // 64-bit length with the top bit set
}

#[test]
fn invalid_utf8_closes_with_1007() {
    expect_close(&client_frame(true, OpCode::Text, b"\xff"), 1007);
    let mut frag = client_frame(false, OpCode::Text, b"ok \xed");
    frag.extend(client_frame(true, OpCode::Continuation, b"\xa0\x80"));
    expect_close(&frag, 1007);
}

#[test]
fn utf8_fails_fast_before_the_message_ends() {
    let server = TestServer::echo(big_config());
    let mut c = raw_client(server.addr);
    // The first fragment already holds a byte that cannot continue UTF-8; the rest never comes.
    c.write_all(&client_frame(false, OpCode::Text, b"abc\xf4\x90")).unwrap();
    assert_eq!(read_close(&mut c), Some(1007));
}
