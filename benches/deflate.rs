//! permessage-deflate: compression ratio and MB/s for JSON chat messages (1 KiB and 64 KiB) at each window size,
//! compressing (pooled, no context takeover: what wskit does by default) and inflating.
//!
//! `cargo bench --bench deflate` — the ratios are printed first, then criterion's timings.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wskit::deflate::{DeflatePool, Inflater};

/// Chat-like JSON: the shape of what the chat example sends.
pub fn chat_json(len: usize) -> Vec<u8> {
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let words = ["hello", "how", "are", "you", "today", "the", "build", "is", "green", "again", "lunch", "?"];
    let mut out = Vec::new();
    let mut i = 0usize;
    while out.len() < len {
        let text: Vec<&str> = (0..(3 + i % 9)).map(|k| words[(i * 7 + k * 3) % words.len()]).collect();
        out.extend_from_slice(
            format!(r#"{{"type":"message","from":"{}","id":{},"text":"{}"}}"#, names[i % 5], 1000 + i, text.join(" "))
                .as_bytes(),
        );
        out.push(b'\n');
        i += 1;
    }
    out.truncate(len);
    out
}

fn bench(c: &mut Criterion) {
    for size in [1024usize, 64 * 1024] {
        let msg = chat_json(size);
        let mut g = c.benchmark_group(format!("deflate_{}k", size / 1024));
        g.throughput(Throughput::Bytes(size as u64));
        for window in 9..=15u8 {
            let mut pool = DeflatePool::new();
            let mut z = Vec::new();
            pool.compress(window, 1, &msg, &mut z);
            eprintln!(
                "ratio size={size} window={window} level=1: {} -> {} bytes ({:.2}x)",
                size,
                z.len(),
                size as f64 / z.len() as f64
            );
            g.bench_with_input(BenchmarkId::new("compress", window), &window, |b, &w| {
                b.iter(|| {
                    z.clear();
                    pool.compress(w, 1, black_box(&msg), &mut z);
                })
            });
            let compressed = z.clone();
            let mut inf = Inflater::new(window);
            let mut out = Vec::with_capacity(size + 64);
            g.bench_with_input(BenchmarkId::new("inflate", window), &window, |b, _| {
                b.iter(|| {
                    out.clear();
                    inf.inflate(black_box(&compressed), &mut out, 1 << 24).unwrap();
                    inf.finish(&mut out, 1 << 24).unwrap();
                    inf.reset();
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
