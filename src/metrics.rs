//! Counters and gauges of one server loop, readable from any thread ([`crate::ServerHandle::metrics`]) and
//! rendered in the Prometheus text format ([`Metrics::to_prometheus`]).
//!
//! Only the loop's own thread writes them (every update is made by the `Server` it belongs to), so an update is a
//! relaxed load and store rather than a locked read-modify-write: exact, and cheaper on the per-message path. A
//! scrape reads each value once, so a scrape taken mid-turn may mix counts from two turns, as Prometheus counters
//! may.

use crate::conn::TimeoutKind;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why an upgrade was refused before or by the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached (503).
    Full,
    /// `max_connections_per_ip` reached (429).
    PerIp,
    /// `Origin` not allowed (403).
    Origin,
    /// No common subprotocol in strict mode (400).
    Subprotocol,
    /// No route for the path (404) or the handler refused.
    Handler,
}

const REFUSALS: [(Refusal, &str); 5] = [
    (Refusal::Full, "max_connections"),
    (Refusal::PerIp, "max_connections_per_ip"),
    (Refusal::Origin, "origin"),
    (Refusal::Subprotocol, "subprotocol"),
    (Refusal::Handler, "handler"),
];
/// HTTP statuses counted one by one; others are summed as `other`.
const STATUSES: [u16; 10] = [400, 403, 404, 405, 426, 429, 431, 500, 503, 0];
/// Close codes counted one by one; others are summed as `other` (0).
const CODES: [u16; 13] = [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1013, 0];
const TIMEOUTS: [(TimeoutKind, &str); 6] = [
    (TimeoutKind::Handshake, "handshake"),
    (TimeoutKind::Message, "message"),
    (TimeoutKind::Close, "close"),
    (TimeoutKind::Idle, "idle"),
    (TimeoutKind::Keepalive, "keepalive"),
    (TimeoutKind::Lifetime, "lifetime"),
];
/// Upper bounds of the loop-turn histogram, in microseconds.
pub const TURN_BUCKETS_US: [u64; 8] = [10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000];

/// The loop's counters (totals since start) and gauges (current values).
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted (or adopted).
    pub accepted: AtomicU64,
    /// Sockets held now (handshaking, open, closing).
    pub sockets: AtomicU64,
    /// WebSocket connections open now.
    pub open: AtomicU64,
    /// WebSocket connections opened.
    pub opened: AtomicU64,
    refused: [AtomicU64; 5],
    handshake_status: [AtomicU64; 10],
    /// Messages received (whole, after reassembly).
    pub messages_in: AtomicU64,
    /// Messages queued to peers (a broadcast counts once per receiver).
    pub messages_out: AtomicU64,
    /// Bytes read from sockets (ciphertext under TLS).
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Message payload bytes received, after decompression.
    pub payload_in: AtomicU64,
    /// Message payload bytes sent, before compression.
    pub payload_out: AtomicU64,
    closes_by_peer: [AtomicU64; 13],
    closes_by_server: [AtomicU64; 13],
    timeouts: [AtomicU64; 6],
    /// Bytes queued for peers and not yet written, now.
    pub queued_bytes: AtomicU64,
    /// Connections closed because their send queue passed `max_queued_bytes`.
    pub slow_closed: AtomicU64,
    /// Bytes the loop holds for its connections now, as the memory budget counts them (`Config::memory_budget`).
    pub held_bytes: AtomicU64,
    /// Turns ended with the budget's three quarters passed (connections holding much were not read).
    pub pressure_turns: AtomicU64,
    /// Connections dropped (1008) because the memory budget was passed.
    pub budget_closed: AtomicU64,
    /// Read bursts cut at their work quantum (the connection went to the back of the backlog).
    pub bursts_cut: AtomicU64,
    /// Times a connection went past its rate limit and reading from it paused (`rate_policy = pause`).
    pub rate_limited_pauses: AtomicU64,
    /// Connections closed (1008) for going past their rate limit (`rate_policy = close`).
    pub rate_limited_closes: AtomicU64,
    /// Upgrades `on_open` deferred (`Ctx::defer_upgrade`).
    pub upgrades_deferred: AtomicU64,
    /// TLS configurations taken for new handshakes after the first (`ServerHandle::reload_tls`).
    pub tls_reloads: AtomicU64,
    /// HTTP/2 connections (TLS with ALPN `h2`, or h2c by prior knowledge).
    pub http2_connections: AtomicU64,
    /// Streams on them: WebSocket requests (extended CONNECT) and plain requests.
    pub http2_streams: AtomicU64,
    /// WebSocket connections opened over HTTP/2 (RFC 8441).
    pub http2_websockets: AtomicU64,
    turns: [AtomicU64; 9],
    turn_us_sum: AtomicU64,
}

fn code_slot(code: u16) -> usize {
    CODES.iter().position(|&c| c == code).unwrap_or(CODES.len() - 1)
}

fn refusal_slot(why: Refusal) -> usize {
    REFUSALS.iter().position(|(r, _)| *r == why).unwrap_or(0)
}

fn timeout_slot(kind: TimeoutKind) -> usize {
    TIMEOUTS.iter().position(|(k, _)| *k == kind).unwrap_or(0)
}

impl Metrics {
    // One writer (see the module's doc): load and store, no `lock`-prefixed instruction.
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }
    pub(crate) fn sub(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_sub(n), Relaxed);
    }
    /// Counts a refused upgrade and its status.
    pub(crate) fn refused(&self, why: Refusal, status: u16) {
        let i = refusal_slot(why);
        Self::add(&self.refused[i], 1);
        self.handshake_failed(status);
    }
    /// Counts an HTTP error answered during the handshake.
    pub(crate) fn handshake_failed(&self, status: u16) {
        let i = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len() - 1);
        Self::add(&self.handshake_status[i], 1);
    }
    /// Counts how a connection ended: the close code and who sent the first close frame.
    pub(crate) fn closed(&self, code: u16, by_peer: bool) {
        let arr = if by_peer { &self.closes_by_peer } else { &self.closes_by_server };
        Self::add(&arr[code_slot(code)], 1);
    }
    /// Counts a timeout.
    pub(crate) fn timed_out(&self, kind: TimeoutKind) {
        let i = timeout_slot(kind);
        Self::add(&self.timeouts[i], 1);
    }
    /// Records how long one loop turn took.
    pub(crate) fn turn(&self, us: u64) {
        let i = TURN_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(TURN_BUCKETS_US.len());
        Self::add(&self.turns[i], 1);
        Self::add(&self.turn_us_sum, us);
    }
    /// Handshakes answered with HTTP `status` so far (refusals and bad heads; statuses not counted one by one are
    /// summed under 0).
    pub fn handshake_failures(&self, status: u16) -> u64 {
        let i = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len() - 1);
        self.handshake_status[i].load(Relaxed)
    }
    /// Upgrades refused for `why` so far.
    pub fn refusals(&self, why: Refusal) -> u64 {
        let i = refusal_slot(why);
        self.refused[i].load(Relaxed)
    }
    /// Timeouts of `kind` so far.
    pub fn timeouts(&self, kind: TimeoutKind) -> u64 {
        let i = timeout_slot(kind);
        self.timeouts[i].load(Relaxed)
    }
    /// Connections that ended with `code`, by who closed first.
    pub fn closes(&self, code: u16, by_peer: bool) -> u64 {
        let arr = if by_peer { &self.closes_by_peer } else { &self.closes_by_server };
        arr[code_slot(code)].load(Relaxed)
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4), names prefixed `wskit_`.
    pub fn to_prometheus(&self) -> String {
        let mut o = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ =
                writeln!(o, "# HELP wskit_{name} {help}\n# TYPE wskit_{name} {kind}\nwskit_{name} {}", v.load(Relaxed));
        };
        one("connections_accepted_total", "counter", "TCP connections accepted.", &self.accepted);
        one("sockets", "gauge", "Sockets held (handshaking, open or closing).", &self.sockets);
        one("connections_open", "gauge", "WebSocket connections open.", &self.open);
        one("connections_opened_total", "counter", "WebSocket connections opened.", &self.opened);
        one("messages_in_total", "counter", "Messages received.", &self.messages_in);
        one("messages_out_total", "counter", "Messages queued to peers.", &self.messages_out);
        one("bytes_in_total", "counter", "Bytes read from sockets.", &self.bytes_in);
        one("bytes_out_total", "counter", "Bytes written to sockets.", &self.bytes_out);
        one("payload_bytes_in_total", "counter", "Message bytes received, after decompression.", &self.payload_in);
        one("payload_bytes_out_total", "counter", "Message bytes sent, before compression.", &self.payload_out);
        one("queued_bytes", "gauge", "Bytes queued for peers, not yet written.", &self.queued_bytes);
        one("slow_consumers_closed_total", "counter", "Connections closed for a full send queue.", &self.slow_closed);
        one("held_bytes", "gauge", "Bytes held for connections, as the memory budget counts them.", &self.held_bytes);
        one("memory_pressure_turns_total", "counter", "Turns past 3/4 of the memory budget.", &self.pressure_turns);
        one("budget_closed_total", "counter", "Connections dropped to keep the memory budget.", &self.budget_closed);
        one("bursts_cut_total", "counter", "Read bursts cut at their work quantum.", &self.bursts_cut);
        one("upgrades_deferred_total", "counter", "Upgrades on_open deferred.", &self.upgrades_deferred);
        let (pauses, closes) = (&self.rate_limited_pauses, &self.rate_limited_closes);
        one("rate_limited_pauses_total", "counter", "Reading paused for a connection past its rate limit.", pauses);
        one("rate_limited_closes_total", "counter", "Connections closed (1008) past their rate limit.", closes);
        one(
            "tls_reloads_total",
            "counter",
            "TLS configurations taken for new handshakes after the first.",
            &self.tls_reloads,
        );
        one("http2_connections_total", "counter", "HTTP/2 connections.", &self.http2_connections);
        one("http2_streams_total", "counter", "HTTP/2 streams with a request.", &self.http2_streams);
        one("http2_websockets_total", "counter", "WebSocket connections opened over HTTP/2.", &self.http2_websockets);
        let _ = writeln!(o, "# HELP wskit_upgrades_refused_total Upgrades refused, by reason.");
        let _ = writeln!(o, "# TYPE wskit_upgrades_refused_total counter");
        for (i, (_, name)) in REFUSALS.iter().enumerate() {
            let _ = writeln!(o, "wskit_upgrades_refused_total{{reason=\"{name}\"}} {}", self.refused[i].load(Relaxed));
        }
        let _ = writeln!(o, "# HELP wskit_handshake_errors_total HTTP errors answered in the handshake, by status.");
        let _ = writeln!(o, "# TYPE wskit_handshake_errors_total counter");
        for (i, s) in STATUSES.iter().enumerate() {
            let label = if *s == 0 { "other".to_string() } else { s.to_string() };
            let v = self.handshake_status[i].load(Relaxed);
            let _ = writeln!(o, "wskit_handshake_errors_total{{status=\"{label}\"}} {v}");
        }
        let _ = writeln!(o, "# HELP wskit_closes_total Connections ended, by close code and by who closed first.");
        let _ = writeln!(o, "# TYPE wskit_closes_total counter");
        for (by, arr) in [("peer", &self.closes_by_peer), ("server", &self.closes_by_server)] {
            for (i, c) in CODES.iter().enumerate() {
                let label = if *c == 0 { "other".to_string() } else { c.to_string() };
                let v = arr[i].load(Relaxed);
                let _ = writeln!(o, "wskit_closes_total{{code=\"{label}\",by=\"{by}\"}} {v}");
            }
        }
        let _ = writeln!(o, "# HELP wskit_timeouts_total Connections ended by a timeout, by kind.");
        let _ = writeln!(o, "# TYPE wskit_timeouts_total counter");
        for (i, (_, name)) in TIMEOUTS.iter().enumerate() {
            let _ = writeln!(o, "wskit_timeouts_total{{kind=\"{name}\"}} {}", self.timeouts[i].load(Relaxed));
        }
        let _ = writeln!(o, "# HELP wskit_loop_turn_seconds Time to handle one batch of readiness events.");
        let _ = writeln!(o, "# TYPE wskit_loop_turn_seconds histogram");
        let mut cum = 0;
        for (i, b) in TURN_BUCKETS_US.iter().enumerate() {
            cum += self.turns[i].load(Relaxed);
            let _ = writeln!(o, "wskit_loop_turn_seconds_bucket{{le=\"{}\"}} {cum}", *b as f64 / 1e6);
        }
        cum += self.turns[TURN_BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(o, "wskit_loop_turn_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(o, "wskit_loop_turn_seconds_sum {}", self.turn_us_sum.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(o, "wskit_loop_turn_seconds_count {cum}");
        o
    }
}
