//! The core's simulator (the first stage of issue 18): virtual clients on virtual time, each driving one
//! [`Connection`] with the bytes a socket would carry, under seeded faults — every read split, send windows down
//! to one byte, clock jumps past every timeout, clients that vanish mid-message or between messages, clients
//! that break the protocol, pings between fragments — and checks, at every step and at the end, the invariants a
//! user relies on:
//!
//! * every message is echoed exactly once, in order, unchanged (what a connection echoed is a prefix of what its
//!   client sent, and all of it when the client closed cleanly and no deadline intervened);
//! * every connection ends, with its defined close: the code the client received is the one its
//!   [`CloseStatus`] gives (1000 echoed, 1002/1007/1009 for a fault, 1008 for a message left unfinished, 1001
//!   idle, 1011 for an unanswered keepalive), and no connection is left open when its client is gone;
//! * the core's own invariants hold after every call, and what it holds stays within
//!   [`Config::memory_bound`].
//!
//! The handler and the shell are the simulator's own here (an echo server); `endpoint.rs` drives the whole
//! endpoint instead.

use crate::client::{seeds, tracing, Ending, Peer, Rng};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wskit::config::Limits;
use wskit::deflate::DeflatePool;
use wskit::{CloseStatus, Config, Connection, Event, Message};

/// Seeds CI runs (a few seconds in a debug build).
const SEEDS: u64 = 300;
/// Virtual clients per seed.
const CLIENTS: usize = 6;
/// Steps after which a seed that has not ended counts as stuck.
const MAX_STEPS: usize = 400_000;

/// The server side of one connection and the client that drives it.
struct Client {
    peer: Peer,
    conn: Connection,
    /// A timeout, or the simulated shutdown, closed it (the echoes may be a prefix).
    cut_short: bool,
    /// The server accepted the upgrade.
    accepted: bool,
    /// The status just before a reset.
    reset: Option<CloseStatus>,
}

fn client(rng: &mut Rng, config: &Arc<Limits>, now: Instant) -> Client {
    let peer = Peer::new(rng, config.max_payload_size);
    Client { peer, conn: Connection::new(config.clone(), now), cut_short: false, accepted: false, reset: None }
}

/// The simulator's shell and handler: what a server does with each event. `echo` decides what is sent back
/// for a message (the real one echoes it; a planted bug may not).
type Echo = fn(&[u8]) -> usize;

fn echo_once(_: &[u8]) -> usize {
    1
}

/// Feeds `input` to the core, as the shell does, and acts on every event.
fn feed(c: &mut Client, input: &mut [u8], now: Instant, echo: Echo, pool: &mut DeflatePool) {
    let (mut off, len) = (0, input.len());
    loop {
        let (used, ev) = c.conn.read(&mut input[off..], now);
        off += used;
        let reply = match ev {
            None if used == 0 || off == len => break,
            None => continue,
            Some(Event::Upgrade(_)) => Some(None),
            Some(Event::Message(m)) => Some(Some((m.is_text(), m.as_bytes().to_vec()))),
            Some(_) => None,
        };
        match reply {
            Some(None) => {
                c.conn.accept(None, true, now).expect("accept");
                c.accepted = true;
            }
            Some(Some((text, data))) => {
                for _ in 0..echo(&data) {
                    let msg = if text {
                        Message::Text(std::str::from_utf8(&data).expect("the core validated it"))
                    } else {
                        Message::Binary(&data)
                    };
                    let _ = c.conn.send_with(msg, pool);
                }
            }
            None => {}
        }
        c.conn.debug_check_invariants();
        if off == input.len() {
            break;
        }
    }
}

/// One step of the network for one client: carry some of its script to the server, or some of the server's
/// queue to it (a send window of 1 byte up to 64 KiB).
fn step(c: &mut Client, rng: &mut Rng, now: Instant, echo: Echo, pool: &mut DeflatePool) -> Result<(), String> {
    let p = &mut c.peer;
    let to_server = p.carried < p.script.len() && c.conn.wants_read();
    if to_server && (c.conn.out().is_empty() || rng.chance(500)) {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(16),
            _ => 1 + rng.below(64 * 1024),
        }
        .min(p.script.len() - p.carried);
        if tracing() {
            eprintln!("client {} sends {n} ({} of {})", p.id, p.carried + n, p.script.len());
        }
        let mut input = p.carry(n).to_vec();
        feed(c, &mut input, now, echo, pool);
    } else if !c.conn.out().is_empty() {
        let window = if rng.chance(300) { 1 + rng.below(7) } else { 1 + rng.below(64 * 1024) };
        let out = c.conn.out();
        let n = window.min(out.len());
        if tracing() {
            eprintln!("client {} takes {n} of {} (queued {})", c.peer.id, out.len(), c.conn.queued());
        }
        c.peer.inbox.extend_from_slice(&out[..n]);
        c.conn.consume_out(n);
        c.peer.reads(rng)?;
        if let Some(status) = c.peer.refused {
            return Err(format!("refused with {status}"));
        }
    }
    Ok(())
}

fn config(rng: &mut Rng) -> Config {
    let mut cfg = Config { max_payload_size: 128 * 1024, ..Config::default() };
    match rng.below(3) {
        0 => cfg.idle_timeout = Some(Duration::from_secs(30)),
        1 => cfg.ping_interval = Some(Duration::from_secs(20)),
        _ => {}
    }
    // permessage-deflate as the server may be set: its contexts kept or reset, its window small or large.
    cfg.deflate.server_no_context_takeover = rng.chance(500);
    cfg.deflate.client_no_context_takeover = rng.chance(300);
    cfg.deflate.server_max_window_bits = 8 + rng.below(8) as u8;
    cfg.deflate.min_size = rng.below(64);
    cfg
}

/// Runs one seed; the error says which invariant broke.
fn run(seed: u64, echo: Echo) -> Result<(), String> {
    let mut rng = Rng(seed);
    let full = config(&mut rng);
    let bound = full.memory_bound(false).total();
    let config = full.limits();
    // The loop's compressors, shared by its connections (used under server_no_context_takeover).
    let mut pool = DeflatePool::new();
    let start = Instant::now();
    let mut now = start;
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| client(&mut rng, &config, now)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.peer.id = i;
    }
    for steps in 0.. {
        if clients.iter().all(|c| c.conn.is_finished()) {
            break;
        }
        if steps == MAX_STEPS {
            return Err("stuck: a connection never ended".into());
        }
        // Virtual time: usually a little, sometimes a jump past every timeout.
        now += if rng.chance(2) {
            Duration::from_secs(1 + rng.below(60) as u64)
        } else {
            Duration::from_micros(rng.below(2000) as u64)
        };
        let i = rng.below(clients.len());
        let c = &mut clients[i];
        if c.conn.is_finished() {
            continue;
        }
        let script_done = c.peer.script_done();
        if script_done && matches!(c.peer.ending, Ending::Vanish | Ending::VanishMidMessage) {
            c.peer.responsive = false;
        }
        if let Ending::Reset(at) = c.peer.ending {
            if c.peer.carried >= at || (script_done && rng.chance(10)) {
                // The socket died: what the shell does on a reset or an error.
                c.reset = Some(c.conn.close_status());
                c.conn.abort(now);
                c.cut_short = true;
                continue;
            }
        }
        if c.conn.next_deadline().is_some_and(|d| now >= d) {
            // A deadline that ends an open connection (or its handshake) cuts it short; the close timeout after
            // our own close does not, unless it drops output the client has not read yet (the linger
            // deadline drops a connection whatever it still holds).
            c.cut_short |= c.conn.is_open() || !c.accepted || !c.conn.out().is_empty();
            if tracing() {
                eprintln!("client {i}: deadline, open {}, queued {}", c.conn.is_open(), c.conn.queued());
            }
            c.conn.handle_timeout(now);
            c.conn.debug_check_invariants();
        } else if script_done && c.conn.out().is_empty() && c.conn.is_open() && rng.chance(1) {
            // Nothing will come: the simulated server shuts this connection down.
            c.cut_short = true;
            let _ = c.conn.close(wskit::CloseCode::GOING_AWAY, "shutdown", now);
        }
        step(c, &mut rng, now, echo, &mut pool).map_err(|e| format!("client {i}: {e}"))?;
        if c.conn.held() > bound {
            return Err(format!("client {i}: holds {} bytes, over the bound {bound}", c.conn.held()));
        }
    }
    for (i, c) in clients.iter().enumerate() {
        check_end(c).map_err(|e| format!("client {i} ({:?}): {e}", c.peer.ending))?;
    }
    Ok(())
}

/// The invariants at the end of a connection.
fn check_end(c: &Client) -> Result<(), String> {
    let p = &c.peer;
    p.echoes_are_a_prefix()?;
    let status = c.conn.close_status();
    // (A close of ours that was never answered is recorded as abnormal, whatever code it carried.)
    let unanswered = matches!(status, CloseStatus::TimedOut(wskit::TimeoutKind::Close));
    if let Some(code) = p.close_code.filter(|_| !unanswered) {
        if code != status.code().0 {
            return Err(format!("the client got close {code}, the status says {status:?}"));
        }
    }
    if let Some(before) = &c.reset {
        if !c.conn.is_finished() {
            return Err("a reset connection is not finished".into());
        }
        // Known before the reset, or lost with it.
        if status != *before {
            return Err(format!("reset: status {status:?}, before it {before:?}"));
        }
    }
    if c.cut_short {
        // A deadline or the shutdown ended it early: what was echoed is a prefix, and the close was the one its
        // status gives (checked above).
        return Ok(());
    }
    let complete = p.echoed.len() == p.sent.len();
    match (p.ending, &status) {
        (Ending::Clean, CloseStatus::Clean { code, by_peer: true, .. }) if code.0 == 1000 && complete => {}
        (Ending::Fault(_, want), CloseStatus::Error(e)) if e.close_code().0 == want && complete => {}
        (Ending::VanishMidMessage | Ending::Vanish, _) => {
            return Err(format!("a silent client's connection ended without a deadline: {status:?}"));
        }
        (ending, status) => {
            return Err(format!(
                "ended {status:?} for {ending:?} ({} of {} echoed, close {:?}; upgraded {}, {} bytes unparsed, {} of \
                 {} script bytes carried)",
                p.echoed.len(),
                p.sent.len(),
                p.close_code,
                p.upgraded,
                p.inbox.len(),
                p.carried,
                p.script.len()
            ))
        }
    }
    Ok(())
}

#[test]
fn every_seed_keeps_the_invariants() {
    let mut failed = Vec::new();
    for seed in seeds(SEEDS) {
        if let Err(e) = run(seed, echo_once) {
            failed.push(format!(
                "seed {seed}: {e}\n  replay: WSKIT_SIM_SEED={seed} cargo test --test sim core:: -- --nocapture"
            ));
        }
    }
    assert!(failed.is_empty(), "{} seeds failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn a_planted_bug_is_found() {
    // An echo server that answers a message of exactly 7 bytes twice, and one that drops 3-byte messages.
    fn twice_at_seven(m: &[u8]) -> usize {
        if m.len() == 7 {
            2
        } else {
            1
        }
    }
    fn drops_three(m: &[u8]) -> usize {
        usize::from(m.len() != 3)
    }
    for bug in [twice_at_seven as Echo, drops_three] {
        let found = (0..SEEDS).find_map(|seed| run(seed, bug).err().map(|e| (seed, e)));
        let (seed, e) = found.expect("the planted bug went unnoticed");
        // Either the echoes are not a prefix of what was sent, or a clean ending left some unanswered.
        assert!(e.contains(" echoed"), "seed {seed} failed for another reason: {e}");
    }
}
