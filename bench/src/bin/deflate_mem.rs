//! Heap bytes one wskit connection holds with permessage-deflate, per inflate window size: after the handshake
//! (idle) and after one 1 KiB compressed message — counted by a global allocator, so the figure is exact for the
//! Rust heap (it excludes the socket's kernel buffers and the slab slot, ~240 bytes).
//!
//! `cargo run -p wskit-bench --release --bin deflate_mem`

use std::time::Instant;
use wskit::deflate::Compressor;
use wskit::frame::{write_client_frame, OpCode};
use wskit::{Config, Connection, Event};
use wskit_bench::live;

#[global_allocator]
static A: wskit_bench::Counting = wskit_bench::Counting;

/// Heap bytes of one codec context, made and used once (zlib allocates its window and tables on first use).
fn contexts() {
    let msg: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    println!("| window bits | compressor, level 1 | level 6 | level 9 | inflater | wskit::lz (small window) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for bits in 9..=15u8 {
        let mut row = format!("| {bits} |");
        for level in [1, 6, 9] {
            let before = live();
            let mut c = Compressor::new(level, bits);
            let mut z = Vec::new();
            c.compress(&msg, &mut z);
            let held = live() - before - z.capacity() as isize;
            row += &format!(" {held} |");
            drop(c);
        }
        let mut z = Vec::new();
        Compressor::new(6, bits).compress(&msg, &mut z);
        let mut out = Vec::with_capacity(1 << 20);
        let before = live();
        let mut inf = wskit::deflate::Inflater::new(bits);
        inf.inflate(&z, &mut out, 1 << 20).unwrap();
        assert_eq!(out.capacity(), 1 << 20, "the output buffer had room: it did not move");
        let held = live() - before;
        row += &format!(" {held} |");
        // wskit's own small-window compressor; the buffer it joins history and message in is the loop's.
        let mut joined = Vec::with_capacity(256 * 1024);
        let mut z = Vec::with_capacity(128 * 1024);
        let before = live();
        let mut small = wskit::lz::SmallCompressor::new(bits);
        small.compress(&msg, &mut z, &mut joined);
        row += &format!(" {} |", live() - before);
        drop(small);
        println!("{row}");
    }
    println!();
}

fn main() {
    contexts();
    println!(
        "| inflate window bits | client_no_context_takeover | heap bytes idle | heap bytes after one 1 KiB message |"
    );
    println!("|---:|---|---:|---:|");
    let msg: Vec<u8> = (0..)
        .flat_map(|i: u32| format!(r#"{{"id":{i},"text":"message number {i}"}},"#).into_bytes())
        .take(1024)
        .collect();
    for (bits, nct) in (9..=15u8).map(|b| (b, false)).chain([(12, true), (15, true)]) {
        let mut config = Config::new();
        config.deflate.client_max_window_bits = bits;
        config.deflate.client_no_context_takeover = nct;
        let config = config.limits();
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits={bits}\r\n\r\n");
        let mut z = Vec::new();
        Compressor::new(6, bits).compress(&msg, &mut z);
        let mut frame = Vec::new();
        write_client_frame(&mut frame, true, 0b100, OpCode::Text, [1, 2, 3, 4], &z);

        let before = live();
        let now = Instant::now();
        let mut conn = Connection::new(config.clone(), now);
        let mut h = head.into_bytes();
        let (_, ev) = conn.read(&mut h, now);
        assert!(matches!(ev, Some(Event::Upgrade(_))));
        drop(ev);
        conn.accept(None, true, Instant::now()).unwrap();
        let n = conn.out().len();
        conn.consume_out(n);
        let idle = live() - before;
        let (_, ev) = conn.read(&mut frame, now);
        assert!(matches!(ev, Some(Event::Message(_))));
        drop(ev);
        conn.reclaim();
        // The endpoint takes a large buffer a message left back into its loop's pool after every read burst
        // (`take_back`): the connection does not keep it.
        while conn.take_buffer().is_some() {}
        let after = live() - before;
        println!("| {bits} | {nct} | {idle} | {after} |");
        drop(conn);
    }
}
