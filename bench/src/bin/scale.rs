//! Scale in simulation (issue 18): one [`Endpoint`] holding a million connections, driven through its sans-I/O
//! interface with no socket at all (this machine's descriptor limit, 20,000, stops real sockets well short).
//! Every connection is upgraded as a client would do it (the request head in, the 101 out) and then left idle,
//! with the default configuration (keepalive on: every connection has a deadline in the timer table).
//!
//! It reports, for docs/scaling.md:
//! * heap bytes per idle connection, counted by a global allocator (the endpoint's slot, its table entries,
//!   its timer entry, its keepalive clock; not the kernel's socket, nor the shell's 8-byte socket entry);
//! * the time of one turn with all of them idle and 1,000 of them each echoing a 20-byte message;
//! * the cost of the timer table: entries, and the turn in which every keepalive comes due at once;
//! * the same bytes per connection with permessage-deflate negotiated.
//!
//! `cargo run -p wskit-bench --release --bin scale [-- --conns 1000000 --deflate 100000 --active 1000]`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wskit::frame::{write_client_frame, OpCode};
use wskit::{Config, ConnId, Ctx, Endpoint, Handler, Message, Order};
use wskit_bench::live;

#[global_allocator]
static A: wskit_bench::Counting = wskit_bench::Counting;

struct Echo;
impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
}

/// Every connection subscribes to one topic; a message is published to all the others.
struct Fan;
impl Handler for Fan {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _req: &wskit::handshake::Request) {
        ctx.subscribe("t");
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.publish_others("t", msg);
    }
}

/// One publish of `size` bytes to `subs` subscribers (and its publisher): the heap bytes per delivery while every
/// copy is queued and none written, and the time from the publisher's read to the last subscriber's bytes
/// handed out, over as many turns as the write budget takes.
/// With `deflate`, every connection negotiated permessage-deflate with the defaults (the server keeping its
/// context): the publish is compressed once and its frame shared.
fn fan_out(subs: usize, size: usize, deflate: bool, now: Instant) -> (f64, Duration) {
    let config = Config { max_connections_per_ip: 0, ..Config::default() };
    let mut ep = Endpoint::new(config, Box::new(Fan));
    let mut ids = Vec::with_capacity(subs + 1);
    open(&mut ep, &mut ids, subs + 1, deflate, now);
    let publisher = ids[subs];
    let mut frame = Vec::new();
    // (Random letters: what compression leaves of them, 0.6 of their size, is still worth sharing.)
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let letters: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect();
    write_client_frame(&mut frame, true, 0, OpCode::Binary, [1, 2, 3, 4], &letters);
    let before = live();
    let start = Instant::now();
    ep.ready(publisher, true, false, false);
    let mut input = Some(frame);
    while let Some(op) = ep.poll_read(now) {
        match input.take() {
            Some(frame) => {
                ep.read_bufs(&op).0[..frame.len()].copy_from_slice(&frame);
                ep.received(op, Ok(frame.len()), now);
            }
            None => ep.received(op, Err(std::io::ErrorKind::WouldBlock.into()), now),
        }
    }
    let per_delivery = (live() - before) as f64 / subs as f64;
    let mut written = 0;
    ep.end_turn(now);
    written += drain(&mut ep, now);
    while ep.busy() {
        ep.end_turn(now);
        written += drain(&mut ep, now);
    }
    let took = start.elapsed();
    assert!(written >= subs, "every subscriber got it ({written} transmits)");
    (per_delivery, took)
}

fn request(deflate: bool) -> Vec<u8> {
    let ext = if deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
    format!(
        "GET / HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// A distinct client address per connection (so no per-IP limit applies).
fn peer(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32)), 40_000)
}

/// Carries out everything the endpoint wants written and ordered, as if every socket took every byte; returns
/// the transmits made.
fn drain(ep: &mut Endpoint, now: Instant) -> usize {
    let mut n = 0;
    loop {
        while let Some(t) = ep.poll_transmit(now) {
            let (id, len) = (t.id, t.len());
            ep.sent(id, Ok(len), now);
            n += 1;
        }
        let mut any = false;
        while let Some(o) = ep.poll_order() {
            any = true;
            if let Order::MeasureSendBuffer(id) = o {
                ep.send_buffer_is(id, 0);
            }
        }
        if !any {
            return n;
        }
    }
}

/// Opens `n` connections (handshake in, 101 out), in turns of 1,024.
fn open(ep: &mut Endpoint, ids: &mut Vec<ConnId>, n: usize, deflate: bool, now: Instant) {
    let head = request(deflate);
    for i in 0..n {
        let id = ep.accept(peer(i), now).expect("accepted");
        ep.receive_bytes(id, &head, now);
        ids.push(id);
        if i % 1024 == 1023 {
            ep.end_turn(now);
            drain(ep, now);
        }
    }
    ep.end_turn(now);
    drain(ep, now);
    assert_eq!(ep.metrics().open.load(Ordering::Relaxed), n as u64, "every connection is open");
}

/// One turn in which `active` connections each send a 20-byte message: readiness, reads (the message, then
/// nothing), the echoes written, deadlines, the end of the turn. Returns its duration and the echoes written.
fn active_turn(ep: &mut Endpoint, active: &[ConnId], now: Instant) -> (Duration, usize) {
    let mut frame = Vec::new();
    write_client_frame(&mut frame, true, 0, OpCode::Binary, [1, 2, 3, 4], &[7; 20]);
    let start = Instant::now();
    for &id in active {
        ep.ready(id, true, false, false);
    }
    let mut echoes = 0;
    while let Some(op) = ep.poll_read(now) {
        ep.read_bufs(&op).0[..frame.len()].copy_from_slice(&frame);
        ep.received(op, Ok(frame.len()), now);
        echoes += drain(ep, now);
    }
    ep.handle_timeout(now);
    ep.end_turn(now);
    drain(ep, now);
    (start.elapsed(), echoes)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (conns, deflated, active_n) =
        (arg(&args, "--conns", 1_000_000), arg(&args, "--deflate", 100_000), arg(&args, "--active", 1000));
    let config = Config { max_connections_per_ip: 0, ..Config::default() };
    let t0 = Instant::now();
    let mut now = t0;

    let mut ids = Vec::with_capacity(conns);
    let mut ep = Endpoint::new(config.clone(), Box::new(Echo));
    let before = live();
    let opened_at = Instant::now();
    open(&mut ep, &mut ids, conns, false, now);
    let opened_in = opened_at.elapsed();
    let per_conn = (live() - before) as f64 / conns as f64;
    println!("| {conns} idle connections, one endpoint | |");
    println!("|---|---:|");
    println!(
        "| opened (handshake in, 101 out) in | {:.2} s ({:.0} k/s) |",
        opened_in.as_secs_f64(),
        conns as f64 / opened_in.as_secs_f64() / 1e3
    );
    println!("| heap bytes per idle connection | {per_conn:.0} |");
    println!("| timer table entries | {} |", ep.timer_entries());

    let step = (conns / active_n.max(1)).max(1);
    let active: Vec<ConnId> = ids.iter().step_by(step).take(active_n).copied().collect();
    let mut turns = Vec::new();
    for _ in 0..21 {
        now += Duration::from_millis(1);
        let (took, echoes) = active_turn(&mut ep, &active, now);
        assert_eq!(echoes, active.len(), "every active connection was answered in its turn");
        turns.push(took);
    }
    println!(
        "| one turn, {} active of {conns} (median of 21) | {:.0} µs ({:.2} µs per active connection) |",
        active.len(),
        median(turns.clone()).as_secs_f64() * 1e6,
        median(turns).as_secs_f64() * 1e6 / active.len() as f64
    );

    // Every keepalive comes due at once (the worst case the timer table meets): pings for all.
    now += config.ping_interval.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(1);
    let due_at = Instant::now();
    ep.handle_timeout(now);
    let fired_in = due_at.elapsed();
    ep.end_turn(now);
    let first = drain(&mut ep, now);
    let turn_in = due_at.elapsed();
    let (mut pings, mut turns) = (first, 1);
    while ep.busy() {
        ep.end_turn(now);
        pings += drain(&mut ep, now);
        turns += 1;
    }
    let all_in = due_at.elapsed();
    assert_eq!(pings, conns, "every connection was pinged");
    println!(
        "| every keepalive due at once: deadlines handled in | {:.0} ms ({:.0} ns each) |",
        fired_in.as_secs_f64() * 1e3,
        fired_in.as_secs_f64() * 1e9 / conns as f64
    );
    println!(
        "| ... the first turn's writes ({first} pings, the turn's write budget) done in | {:.0} ms |",
        turn_in.as_secs_f64() * 1e3
    );
    println!("| ... all {pings} pings written after {turns} turns, in | {:.0} ms |", all_in.as_secs_f64() * 1e3);
    println!("| timer table entries after it (each re-armed for its pong) | {} |", ep.timer_entries());
    drop(ep);
    drop(ids);

    if deflated > 0 {
        let mut ids = Vec::with_capacity(deflated);
        let mut ep = Endpoint::new(config, Box::new(Echo));
        let before = live();
        open(&mut ep, &mut ids, deflated, true, now);
        let per_conn = (live() - before) as f64 / deflated as f64;
        println!("| {deflated} idle connections with permessage-deflate: heap bytes per connection | {per_conn:.0} |");
    }
    let subs = arg(&args, "--fanout", 10_000);
    if subs > 0 {
        println!("\n| one publish to {subs} subscribers of one topic | heap bytes per delivery, all queued | the whole fan-out | deliveries/s |");
        println!("|---|---:|---:|---:|");
        for (size, deflate) in [(64, false), (1024, false), (16 * 1024, false), (1024, true), (16 * 1024, true)] {
            let (bytes, took) = fan_out(subs, size, deflate, now);
            let how = if deflate { ", permessage-deflate" } else { "" };
            println!(
                "| {size} B{how} | {bytes:.0} | {:.2} ms | {:.1} M |",
                took.as_secs_f64() * 1e3,
                subs as f64 / took.as_secs_f64() / 1e6
            );
        }
    }
    println!("\n(total {:.1} s; `cargo run -p wskit-bench --release --bin scale -- --conns {conns} --deflate {deflated} --active {active_n} --fanout {subs}`)", t0.elapsed().as_secs_f64());
}
