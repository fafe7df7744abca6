//! What permessage-deflate buys and costs on the server's side, across its settings: for three workloads (JSON
//! chat messages, market-data ticks, random text), every level, window bits 9 / 12 / 15, with and without
//! context takeover, the wire ratio (compressed bytes over payload bytes, frame headers left out), the CPU time
//! per message and per payload KiB, and the compressor's heap bytes (a counting allocator) — what a connection
//! holds with context takeover, and the loop's one pooled compressor without it. The compressor is wskit's own
//! (`wskit::deflate::Compressor`, zlib-rs), driven as the server drives it: one sync flush per message, reset
//! after each message without context takeover. `--small` prints instead a table of wskit's small-window
//! compressor (`wskit::lz`, context kept) beside zlib-rs; with `ONLY=<part of a workload's name>` in the
//! environment, only the workloads so named, and wskit's compressor at 15 bits only.
//!
//! `cargo run -p wskit-bench --release --bin deflate_curve [-- --csv target/bench/deflate.csv --svg docs/deflate.svg]`

use std::fmt::Write as _;
use std::time::Instant;
use wskit::deflate::Compressor;
use wskit::lz::SmallCompressor;
use wskit_bench::live;
use wskit_bench::texts::{chat, chat_pages, Rng};

#[global_allocator]
static A: wskit_bench::Counting = wskit_bench::Counting;

const SYMBOLS: &[&str] = &["BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT", "EURUSD"];

/// 5,000 market-data ticks: one quote per message (~120 bytes), prices walking by small steps.
fn ticks(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut price = [97_234.51f64, 3_621.07, 241.33, 229.87, 418.02, 1.0523];
    let mut ts = 1_764_800_000_000u64;
    (0..5000)
        .map(|seq| {
            let k = rng.below(SYMBOLS.len() as u64) as usize;
            price[k] *= 1.0 + (rng.below(2001) as f64 - 1000.0) * 1e-6;
            ts += rng.below(40);
            let spread = price[k] * 2e-5;
            let (bs, asz) = (rng.below(100_000) as f64 / 1000.0, rng.below(100_000) as f64 / 1000.0);
            format!(
                r#"{{"e":"quote","s":"{}","seq":{seq},"t":{ts},"b":{:.4},"bs":{bs:.3},"a":{:.4},"as":{asz:.3}}}"#,
                SYMBOLS[k],
                price[k],
                price[k] + spread
            )
            .into_bytes()
        })
        .collect()
}

/// The bench's deflate workload (`bench/src/bin/load.rs --deflate --size 1024`): 64 JSON-like texts of 1 KiB, each
/// sent in turn, 640 messages.
fn load_client(_: &mut Rng) -> Vec<Vec<u8>> {
    (0..640).map(|i| wskit_bench::json_text(1024, i % 64)).collect()
}

/// The same at 16 KiB (`load --deflate --size 16384`): 64 texts in turn, 128 messages.
fn load_client_16k(_: &mut Rng) -> Vec<Vec<u8>> {
    (0..128).map(|i| wskit_bench::json_text(16384, i % 64)).collect()
}

/// 64 messages of 16 KiB of random lowercase letters and spaces (~4.7 bits of entropy a byte: at best ~0.59).
fn random_text(rng: &mut Rng) -> Vec<Vec<u8>> {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz ";
    (0..64).map(|_| (0..16 * 1024).map(|_| alphabet[rng.below(27) as usize]).collect()).collect()
}

struct Point {
    workload: &'static str,
    takeover: bool,
    bits: u8,
    level: u32,
    ratio: f64,
    ns_per_msg: f64,
    ns_per_kib: f64,
    compressor_bytes: isize,
}

/// Compresses every message once as the server does; returns (wire bytes, seconds).
fn pass(msgs: &[Vec<u8>], c: &mut Compressor, takeover: bool, out: &mut Vec<u8>) -> (usize, f64) {
    let t = Instant::now();
    let mut wire = 0;
    for m in msgs {
        out.clear();
        c.compress(m, out);
        // (Shorter than the payload or sent as it is, as the server does.)
        wire += out.len().min(m.len());
        if !takeover {
            c.reset();
        }
    }
    (wire, t.elapsed().as_secs_f64())
}

fn measure(workload: &'static str, msgs: &[Vec<u8>], takeover: bool, bits: u8, level: u32) -> Point {
    let payload: usize = msgs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(64 * 1024);
    let before = live();
    let mut c = Compressor::new(level, bits);
    let (wire, _) = pass(msgs, &mut c, takeover, &mut out);
    let compressor_bytes = live() - before;
    // Time: the best of five passes (a fresh compressor each, so context takeover starts alike).
    let best = (0..5)
        .map(|_| {
            let mut c = Compressor::new(level, bits);
            pass(msgs, &mut c, takeover, &mut out).1
        })
        .fold(f64::INFINITY, f64::min);
    Point {
        workload,
        takeover,
        bits,
        level,
        ratio: wire as f64 / payload as f64,
        ns_per_msg: best * 1e9 / msgs.len() as f64,
        ns_per_kib: best * 1e9 / (payload as f64 / 1024.0),
        compressor_bytes,
    }
}

/// wskit's small-window compressor (`wskit::lz`, context kept) over one workload: (wire / payload, µs per message
/// as the best of five passes, heap bytes held).
fn measure_small(msgs: &[Vec<u8>], bits: u8) -> (f64, f64, isize) {
    let payload: usize = msgs.iter().map(Vec::len).sum();
    // (The output and the working buffer are the loop's in the server, not the connection's: made large enough
    // here that they do not grow while the connection's heap is counted.)
    let (mut out, mut work) = (Vec::with_capacity(1 << 20), Vec::with_capacity(1 << 20));
    let run = |c: &mut SmallCompressor, out: &mut Vec<u8>, work: &mut Vec<u8>| {
        let (t, mut wire) = (Instant::now(), 0);
        for m in msgs {
            out.clear();
            c.compress(m, out, work);
            wire += out.len(); // (with context takeover every message goes out compressed)
        }
        (wire, t.elapsed().as_secs_f64())
    };
    let before = live();
    let mut c = SmallCompressor::new(bits);
    let (wire, _) = run(&mut c, &mut out, &mut work);
    let held = live() - before;
    let best =
        (0..5).map(|_| run(&mut SmallCompressor::new(bits), &mut out, &mut work).1).fold(f64::INFINITY, f64::min);
    (wire as f64 / payload as f64, best * 1e6 / msgs.len() as f64, held)
}

/// `--small`: the small-window compressor against zlib-rs reset per message (level 1, 15 bits: the old
/// default) and zlib-rs with its context kept at level 6, 15 bits (what Firefox and sockudo-ws compress with).
fn small_table(workloads: &[(&'static str, Vec<Vec<u8>>)]) {
    println!("| workload | zlib-rs reset, level 1 | zlib-rs kept, level 6, 15 bits (Firefox, sockudo-ws) | wskit::lz kept, 9 bits | 10 bits | 12 bits | 15 bits |");
    println!("|---|---|---|---|---|---|---|");
    let heap = |b: isize| if b >= 10_000 { format!("{} KB", (b + 500) / 1000) } else { format!("{b} B") };
    let only = std::env::var("ONLY").ok();
    for (name, msgs) in workloads {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let mut row = format!("| {name} |");
        for (takeover, level) in [(false, 1), (true, 6)] {
            let p = measure(name, msgs, takeover, 15, level);
            let held = if takeover { heap(p.compressor_bytes) } else { "0 (pooled)".into() };
            row += &format!(" {:.4}, {:.2} µs, {held} |", p.ratio, p.ns_per_msg / 1e3);
        }
        let all: &[u8] = if only.is_some() { &[15] } else { &[9, 10, 12, 15] };
        for &bits in all {
            let (ratio, us, held) = measure_small(msgs, bits);
            row += &format!(" {ratio:.4}, {us:.2} µs, {} |", heap(held));
        }
        println!("{row}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let mut rng = Rng(wskit_bench::texts::SEED);
    let workloads = [
        ("chat", chat(&mut rng)),
        ("ticks", ticks(&mut rng)),
        ("random text", random_text(&mut rng)),
        ("chat pages, 64 KiB", chat_pages()),
        ("bench 1 KiB", load_client(&mut rng)),
        ("bench 16 KiB", load_client_16k(&mut rng)),
    ];
    if args.iter().any(|a| a == "--small") {
        return small_table(&workloads);
    }
    let mut points = Vec::new();
    for (name, msgs) in &workloads {
        let payload: usize = msgs.iter().map(Vec::len).sum();
        println!("\n{name}: {} messages, {} bytes on average\n", msgs.len(), payload / msgs.len());
        println!("| context takeover | window bits | level | wire / payload | µs per message | ns per KiB | compressor heap bytes |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for takeover in [false, true] {
            for bits in [9u8, 12, 15] {
                for level in 1..=9 {
                    let p = measure(name, msgs, takeover, bits, level);
                    println!(
                        "| {} | {bits} | {level} | {:.3} | {:.2} | {:.0} | {} |",
                        if takeover { "kept" } else { "reset" },
                        p.ratio,
                        p.ns_per_msg / 1e3,
                        p.ns_per_kib,
                        p.compressor_bytes
                    );
                    points.push(p);
                }
            }
        }
    }
    if let Some(path) = arg("--csv") {
        let mut s = String::from(
            "workload,context_takeover,window_bits,level,wire_ratio,ns_per_msg,ns_per_kib,compressor_bytes\n",
        );
        for p in &points {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.4},{:.0},{:.0},{}",
                p.workload, p.takeover, p.bits, p.level, p.ratio, p.ns_per_msg, p.ns_per_kib, p.compressor_bytes
            );
        }
        std::fs::write(&path, s).expect("write the CSV");
    }
    if let Some(path) = arg("--svg") {
        std::fs::write(&path, svg(&points, &workloads.map(|(n, _)| n))).expect("write the SVG");
    }
}

/// Wire ratio against CPU per payload KiB, one panel per workload; a line per (takeover, window bits) through
/// levels 1 to 9 (the level's digit at each point).
fn svg(points: &[Point], workloads: &[&str]) -> String {
    let (pw, ph, pad) = (360.0, 300.0, 50.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        workloads.len() as f64 * (pw + pad) + pad,
        ph + 2.0 * pad + 40.0
    );
    let series = [
        (false, 15u8, "#1f77b4"),
        (false, 9, "#7fb3e0"),
        (true, 15, "#d62728"),
        (true, 12, "#ff7f0e"),
        (true, 9, "#f2b880"),
    ];
    for (i, w) in workloads.iter().enumerate() {
        let x0 = pad + i as f64 * (pw + pad);
        let ps: Vec<&Point> = points.iter().filter(|p| p.workload == *w).collect();
        let xmax = ps.iter().map(|p| p.ns_per_kib).fold(0.0, f64::max) * 1.05;
        let ymax = ps.iter().map(|p| p.ratio).fold(0.0, f64::max).min(1.0) * 1.05;
        let (fx, fy) = (|v: f64| x0 + v / xmax * pw, |v: f64| pad + ph - v / ymax * ph);
        let _ = write!(s, r#"<rect x="{x0}" y="{pad}" width="{pw}" height="{ph}" fill="none" stroke="gray"/>"#);
        let _ = write!(s, r#"<text x="{}" y="{}" font-weight="bold">{w}</text>"#, x0, pad - 8.0);
        let _ = write!(
            s,
            r#"<text x="{x0}" y="{}">0</text><text x="{}" y="{}" text-anchor="end">{:.0} ns per payload KiB</text>"#,
            pad + ph + 14.0,
            x0 + pw,
            pad + ph + 14.0,
            xmax
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{:.2}</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
            x0 - 4.0,
            pad + 4.0,
            ymax,
            x0 - 4.0,
            pad + ph
        );
        for (takeover, bits, color) in series {
            let line: Vec<&&Point> = ps.iter().filter(|p| p.takeover == takeover && p.bits == bits).collect();
            let path: Vec<String> =
                line.iter().map(|p| format!("{:.1},{:.1}", fx(p.ns_per_kib), fy(p.ratio))).collect();
            let _ = write!(s, r#"<polyline points="{}" fill="none" stroke="{color}"/>"#, path.join(" "));
            for p in line {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" fill="{color}" text-anchor="middle">{}</text>"#,
                    fx(p.ns_per_kib),
                    fy(p.ratio) + 4.0,
                    p.level
                );
            }
        }
    }
    let mut lx = pad;
    for (takeover, bits, color) in series {
        let label = format!("{} context, {bits}-bit window", if takeover { "kept" } else { "reset" });
        let _ = write!(s, r#"<text x="{lx}" y="{}" fill="{color}">■ {label}</text>"#, ph + 2.0 * pad + 20.0);
        lx += 200.0;
    }
    s + "</svg>\n"
}
