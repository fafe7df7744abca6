//! Micro-benchmarks of the sans-I/O core, in bytes per second: frame decode, unmask (`dispatch`: AVX-512 or AVX2 where the
//! CPU has it; `word`: portable word-wide; `bytewise`),
//! UTF-8 validation, the handshake, and a whole echo through `Connection` (read + send).
//!
//! `cargo bench --bench core`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Instant;
use wskit::frame::{decode_header, write_client_frame, OpCode};
use wskit::mask::{apply_mask, apply_mask_bytewise, apply_mask_portable};
use wskit::{Config, Connection, Event, Message};

const HEAD: &[u8] = b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nOrigin: http://127.0.0.1\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_decode");
    let mut f = Vec::new();
    write_client_frame(&mut f, true, 0, OpCode::Binary, [1, 2, 3, 4], &[0u8; 70_000]);
    g.throughput(Throughput::Elements(1));
    g.bench_function("header_64bit", |b| b.iter(|| decode_header(black_box(&f))));
    g.finish();

    let mut g = c.benchmark_group("unmask");
    for size in [20usize, 1024, 16 * 1024, 1 << 20] {
        let mut buf = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("dispatch", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
        g.bench_with_input(BenchmarkId::new("word", size), &size, |b, _| {
            b.iter(|| apply_mask_portable(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
        g.bench_with_input(BenchmarkId::new("bytewise", size), &size, |b, _| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let text = "wskit validates κόσμε and 😀 incrementally. ".repeat(2000);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("validator_16_chunks", |b| {
        b.iter(|| {
            let mut v = wskit::utf8::Utf8Validator::new();
            for chunk in text.as_bytes().chunks(text.len() / 16 + 1) {
                v.feed(black_box(chunk)).unwrap();
            }
            v.finish().unwrap();
        })
    });
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Bytes(HEAD.len() as u64));
    let config = Config::new().deflate(false).limits();
    g.bench_function("upgrade_to_101", |b| {
        b.iter(|| {
            let mut conn = Connection::new(config.clone(), Instant::now());
            let mut input = HEAD.to_vec();
            let (_, ev) = conn.read(&mut input, Instant::now());
            assert!(matches!(ev, Some(Event::Upgrade(_))));
            conn.accept(None, false, Instant::now()).unwrap();
            black_box(conn.out().len())
        })
    });
    g.finish();
}

fn echo(c: &mut Criterion) {
    let mut g = c.benchmark_group("echo_through_connection");
    let config = Config::new().deflate(false).max_payload_size(1 << 20).limits();
    for size in [20usize, 1024, 16 * 1024] {
        let mut conn = Connection::new(config.clone(), Instant::now());
        let mut h = HEAD.to_vec();
        let _ = conn.read(&mut h, Instant::now());
        conn.accept(None, false, Instant::now()).unwrap();
        let n = conn.out().len();
        conn.consume_out(n);
        let mut frame = Vec::new();
        write_client_frame(&mut frame, true, 0, OpCode::Binary, [9, 8, 7, 6], &vec![5u8; size]);
        let mut input = frame.clone();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                input.copy_from_slice(&frame);
                let now = Instant::now();
                let (_, ev) = conn.read(&mut input, now);
                let Some(Event::Message(Message::Binary(p))) = ev else { panic!("no message") };
                let p = p.to_vec();
                conn.send(Message::Binary(&p)).unwrap();
                let n = conn.out().len();
                conn.consume_out(n);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frames, utf8, handshake, echo);
criterion_main!(benches);
