//! Events: feeding a read's bytes to a connection's core, event by event, and each event to the handler —
//! admission of upgrades included (the limits, the policy, then the handler's say).

use super::deferred::Parked;
use super::rate;
use super::*;
use crate::handler::{Inbox, Opening};
use crate::handshake::Request;
use crate::peer::Peer;

/// Behind trusted proxies: the client their forwarding header names (port unknown) becomes the peer.
fn forwarded_peer(config: &Config, peer: &mut Peer, req: &Request) {
    if config.trusted_proxies.is_empty() {
        return;
    }
    let values = req.header_values(&config.forwarded_header);
    if let Some(ip) = crate::policy::forwarded_client(peer.ip(), &config.trusted_proxies, values) {
        *peer = Peer::new(SocketAddr::new(ip, 0));
    }
}

/// The connection limits (503, 429): before `on_open`, and again when a deferred upgrade is accepted (others
/// may have opened meanwhile).
pub(super) fn capacity(
    config: &Config,
    open: usize,
    per_ip: &HashMap<IpAddr, u32>,
    ip: IpAddr,
) -> Result<(), (Why, u16, Vec<u8>)> {
    let full = |why, status, body: &str| Err((why, status, body.as_bytes().to_vec()));
    if config.max_connections > 0 && open >= config.max_connections {
        return full(Why::Full, 503, "too many connections\n");
    }
    if config.max_connections_per_ip > 0
        && per_ip.get(&ip).is_some_and(|n| *n as usize >= config.max_connections_per_ip)
    {
        return full(Why::PerIp, 429, "too many connections from your address\n");
    }
    Ok(())
}

/// Limits and policy, before the handler sees an upgrade (503, 429, 403, 400): the subprotocol chosen, or why not.
fn limits<'c>(
    config: &'c Config,
    open: usize,
    per_ip: &HashMap<IpAddr, u32>,
    ip: IpAddr,
    req: &Request,
) -> Result<Option<&'c str>, (Why, u16, Vec<u8>)> {
    capacity(config, open, per_ip, ip)?;
    crate::policy::admit(req, config).map_err(|r| {
        let why = if r.status == 403 { Why::Origin } else { Why::Subprotocol };
        (why, r.status, r.reason.as_bytes().to_vec())
    })
}

/// What one step of [`Endpoint::feed`] came to.
enum Step {
    /// The input yields nothing more.
    Done,
    /// Input was used and more is left, but no event came yet.
    Again,
    /// An event reached the handler.
    Handled,
}

/// What became of an upgrade the limits let through.
enum Decided {
    /// Refused (by the limits, the policy, or the handler, whose panic is a 500): the answer is queued.
    Refused,
    /// Accepted, with this subprotocol.
    Open(IpAddr, Option<String>),
    /// Deferred by the handler ([`Ctx::defer_upgrade`]).
    Parked(Parked),
}

/// The handler's say on an upgrade the limits let through (`verdict`).
fn decide(
    handler: &mut dyn Handler,
    ctx: &mut Ctx<'_>,
    conn: &mut Connection,
    verdict: Result<Option<&str>, (Why, u16, Vec<u8>)>,
    req: &Request,
    (ip, inbox): (IpAddr, &Arc<dyn Inbox>),
    now: Instant,
) -> Decided {
    let mut opening = Opening::default();
    let refusal = match verdict {
        Err(refused) => Some(refused),
        Ok(chosen) => {
            opening.protocol = chosen.map(str::to_string);
            opening.inbox = Some(inbox.clone());
            // A context of its own, holding the decision: the other callbacks' contexts stay small.
            let mut octx = Ctx::new(ctx.id, ctx.peer, ctx.queue, ctx.metrics, ctx.table, ctx.high_water);
            octx.opening = Some(&mut opening);
            let panicked = guarded(ctx.id, "on_open", || handler.on_open(&mut octx, req)).is_none();
            if panicked {
                opening.decision = Some(crate::handler::Refusal { status: 500, body: b"internal error\n".to_vec() });
            }
            opening.decision.take().map(|r| (Why::Handler, r.status, r.body))
        }
    };
    if let Some((why, status, body)) = refusal {
        refuse(ctx.metrics, conn, why, status, &body, now);
        return Decided::Refused;
    }
    let chosen = opening.protocol.take().filter(|p| req.protocols().any(|o| o == p));
    if opening.deferred {
        let offered = req.protocols().map(str::to_string).collect();
        return Decided::Parked(Parked { ip, chosen, offered });
    }
    Decided::Open(ip, chosen)
}

/// Refuses an upgrade with its status (and, for the limits a client may wait out, `Retry-After`).
pub(super) fn refuse(m: &Metrics, conn: &mut Connection, why: Why, status: u16, body: &[u8], now: Instant) {
    m.refused(why, status);
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8")];
    if status == 503 || status == 429 {
        headers.push(("Retry-After", "1"));
    }
    let _ = conn.reject(status, &headers, body, now);
}

/// Answers a plain HTTP request: the handler's response, a 500 if it panicked, or 426 if it has none.
#[cold]
#[inline(never)]
fn answer_http(
    handler: &mut dyn Handler,
    ctx: &mut Ctx<'_>,
    slot: &mut Slot,
    config: &Config,
    req: &Request,
    now: Instant,
) {
    forwarded_peer(config, &mut slot.peer, req);
    ctx.peer = slot.peer;
    let conn = &mut slot.conn;
    let resp = match guarded(ctx.id, "on_http", || handler.on_http(ctx, req)) {
        Some(r) => r,
        None => Some(crate::handler::Response::new(500, "text/plain", "internal error\n")),
    };
    let _ = match resp {
        Some(r) => {
            let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            conn.respond(r.status, &headers, &r.body, now)
        }
        None => conn.respond(
            426,
            &[("Upgrade", "websocket"), ("Content-Type", "text/plain; charset=utf-8")],
            b"This is a WebSocket endpoint.\n",
            now,
        ),
    };
}

/// The handler's state for a connection is suspect after a panic: it is closed with 1011; everyone else goes on.
#[cold]
pub(super) fn handler_panicked(conn: &mut Connection, now: Instant) {
    let _ = conn.close(crate::CloseCode::INTERNAL, "internal error", now);
}

/// An upgrade, through the limits, the policy and the handler's say (out of line, as every event but a message).
#[cold]
#[inline(never)]
fn upgrade(
    handler: &mut dyn Handler,
    ctx: &mut Ctx<'_>,
    slot: &mut Slot,
    config: &Config,
    (open, per_ip, inbox): (usize, &HashMap<IpAddr, u32>, &Arc<dyn Inbox>),
    req: Request,
    now: Instant,
) -> Decided {
    forwarded_peer(config, &mut slot.peer, &req);
    ctx.peer = slot.peer;
    let ip = per_ip_key(slot.peer.ip());
    let verdict = limits(config, open, per_ip, ip, &req);
    let decided = decide(handler, ctx, &mut slot.conn, verdict, &req, (ip, inbox), now);
    if !config.prod && !matches!(decided, Decided::Refused) {
        log::debug!(target: "wskit::server", "{} {} open {}", ctx.id, ctx.peer, req.uri());
    }
    decided
}

/// A refused handshake, a control frame or a protocol error, to the handler; false if the handler panicked.
#[cold]
#[inline(never)]
pub(super) fn other_event(handler: &mut dyn Handler, ctx: &mut Ctx<'_>, prod: bool, ev: Event<'_>) -> bool {
    let id = ctx.id;
    match ev {
        Event::HandshakeFailed(e) => {
            ctx.metrics.handshake_failed(e.status());
            if !prod {
                log::debug!(target: "wskit::server", "{id} {} handshake refused ({}): {e}", ctx.peer, e.status());
            }
        }
        Event::Ping(p) => return guarded(id, "on_ping", || handler.on_ping(ctx, p)).is_some(),
        Event::Pong(p) => return guarded(id, "on_pong", || handler.on_pong(ctx, p)).is_some(),
        Event::Error(e) => {
            if !prod {
                log::debug!(target: "wskit::server", "{id} {} protocol error: {e}", ctx.peer);
            }
            guarded(id, "on_error", || handler.on_error(ctx, &e));
        }
        Event::Close(..) | Event::Message(_) | Event::Upgrade(_) | Event::Http(_) | Event::Tunnel => {}
    }
    true
}

impl Endpoint {
    /// Accepts an upgrade the limits, the policy and the handler let through, and counts it.
    pub(super) fn opened(&mut self, key: usize, ip: IpAddr, protocol: Option<&str>, now: Instant) {
        let config = &*self.config;
        let deflate_ok = self.contexts < config.deflate.max_contexts && !self.pressure;
        let slot = &mut self.slots[key];
        let _ = slot.conn.accept(protocol, deflate_ok, now);
        slot.phase = Phase::Open;
        self.open += 1;
        if config.max_connections_per_ip > 0 {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        let m = &self.shared.metrics;
        Metrics::add(&m.open, 1);
        Metrics::add(&m.opened, 1);
        if self.rates.on {
            self.rates.open(key, now);
            slot.flags.set(Flags::RATED);
        }
        let entry = &mut self.table[key];
        entry.set_open(true);
        entry.set_queued(0);
        self.shared.set_live(key, entry.gen);
        if slot.conn.deflate_params().is_some() {
            slot.flags.set(Flags::DEFLATE);
            self.contexts += 1;
        }
    }

    /// Feeds `input[off..n]` (the read buffer, or the decrypted `pbuf` when `plain`) to the connection,
    /// dispatching each event to the handler and applying its commands (`direct`: the last message's echo may be
    /// written from where it lies). Once the burst has caused a [`QUANTUM`] of work, the rest is stashed and the
    /// connection deferred. Returns whether the connection was left quiet (only its timer needed a look).
    pub(super) fn feed(
        &mut self,
        key: usize,
        plain: bool,
        mut off: usize,
        n: usize,
        direct: bool,
        now: Instant,
    ) -> bool {
        if let Some(st) = (!self.stash.is_empty()).then(|| self.stash.get_mut(&key)).flatten() {
            // Input that came while earlier input waits (an adopted socket's bytes) goes behind it.
            let input = if plain { &self.pbuf } else { &self.rbuf };
            st.buf.truncate(st.end);
            st.buf.extend_from_slice(&input[off..n]);
            st.end = st.buf.len();
            return false;
        }
        if let Some(slot) = self.slots.get_mut(key) {
            lend(&mut self.bufs, &mut slot.conn);
        }
        loop {
            match self.feed_one(key, plain, &mut off, n, direct, now) {
                Step::Done => break,
                Step::Again => continue,
                Step::Handled => {}
            }
            if cfg!(debug_assertions) && !self.config.prod {
                if let Some(slot) = self.slots.get(key) {
                    slot.conn.debug_check_invariants();
                }
            }
            self.apply_commands(now);
            self.echo_src = None;
            if off >= n {
                break;
            }
            if self.slots.get(key).is_some_and(|s| s.flags.has(Flags::THROTTLED)) {
                // Past its rate limit: the rest of this input waits for the end of the pause too.
                self.stash_input(key, plain, off, n);
                break;
            }
            // The input not yet processed was counted when it was read; a burst is cut when the work done with
            // the rest (what it inflated, the output it caused) reaches the quantum.
            if self.work.saturating_sub(n - off) >= QUANTUM && self.slots.contains(key) {
                self.stash_rest(key, plain, off, n);
                break;
            }
        }
        if off < n && !self.parked.is_empty() && self.parked.contains_key(&key) {
            // What a client sent after a deferred upgrade's request waits for the answer.
            self.keep_for_answer(key, plain, off, n, now);
        }
        self.feed_done(key)
    }

    /// The end of a feed: what the connection was lent comes back (a message lent out for an echo still to be
    /// written stays until it is written). Returns whether the connection was left quiet.
    #[inline]
    pub(super) fn feed_done(&mut self, key: usize) -> bool {
        let lent_out = self.lent_out(key);
        let Some(slot) = self.slots.get_mut(key) else { return false };
        if !lent_out {
            slot.conn.reclaim();
            take_back(&mut self.bufs, &mut slot.conn);
        }
        let quiet = !lent_out && slot.is_quiet(self.table[key].queued());
        arm_or_touch(quiet, slot, key, self.table[key].gen, &mut self.timers, &mut self.dirty)
    }

    /// Reads the next event out of `input[*off..n]` (the read buffer, or the plaintext one when `plain`) and
    /// hands it to the handler, whose commands are left queued.
    #[inline]
    fn feed_one(&mut self, key: usize, plain: bool, off: &mut usize, n: usize, direct: bool, now: Instant) -> Step {
        let Endpoint {
            slots,
            handler,
            queue,
            rbuf,
            pbuf,
            config,
            shared,
            table,
            echo_src,
            work,
            inbox,
            rates,
            timers,
            ..
        } = self;
        let input = if plain { pbuf } else { rbuf };
        let slot = &mut slots[key];
        let id = conn_id(key, table[key].gen);
        let (used, ev) = slot.conn.read(&mut input[*off..n], now);
        *off += used;
        let Some(ev) = ev else { return if used == 0 || *off >= n { Step::Done } else { Step::Again } };
        let mut ctx = Ctx::new(id, slot.peer, queue, &shared.metrics, table, config.write_high_water);
        let m = match ev {
            Event::Message(m) => m,
            Event::Upgrade(req) => {
                match upgrade(&mut **handler, &mut ctx, slot, config, (self.open, &self.per_ip, inbox), *req, now) {
                    Decided::Open(ip, protocol) => self.opened(key, ip, protocol.as_deref(), now),
                    Decided::Parked(parked) => self.park(key, parked),
                    Decided::Refused => {}
                }
                return Step::Handled;
            }
            Event::Http(req) => {
                answer_http(&mut **handler, &mut ctx, slot, config, &req, now);
                return Step::Handled;
            }
            Event::Tunnel => {
                // The input is HTTP/2's (none of it was used).
                self.h2_input(key, plain, *off, n, now);
                *off = n;
                return Step::Done;
            }
            other => {
                if !other_event(&mut **handler, &mut ctx, config.prod, other) {
                    handler_panicked(&mut slot.conn, now);
                }
                return Step::Handled;
            }
        };
        Metrics::add(&shared.metrics.messages_in, 1);
        let len = m.as_bytes().len();
        Metrics::add(&shared.metrics.payload_in, len as u64);
        if slot.flags.has(Flags::DEFLATE | Flags::RATED) {
            if slot.flags.has(Flags::DEFLATE) {
                // Inflated: its bytes may be a thousand times the input's.
                *work += DEFLATE_WEIGHT * len;
            }
            if slot.flags.has(Flags::RATED) {
                match rates.charge(key, len, now) {
                    rate::Verdict::Pass => {}
                    rate::Verdict::PauseUntil(t) => rate::throttle(&mut slot.flags, timers, &shared.metrics, id, t),
                    rate::Verdict::Close => {
                        rate::close(&mut slot.conn, &shared.metrics, now);
                        return Step::Handled;
                    }
                }
            }
        }
        ctx.echo = Some((m.as_bytes().as_ptr() as usize, len));
        // A message found whole in the input ends where the core stopped reading; one it assembled is lent out
        // by the connection (told apart when the echo is applied).
        let last = *off >= n;
        *echo_src = Some(EchoSrc { plain, end: *off, last, direct: direct && last && !plain });
        if guarded(id, "on_message", || handler.on_message(&mut ctx, m)).is_none() {
            handler_panicked(&mut slot.conn, now);
        }
        Step::Handled
    }
}

/// Even bytes that complete nothing can start a deadline (a message's first fragment) or queue output: the end of
/// the turn acts on what they changed (the connection is marked for it). A connection they left `quiet` (the
/// steady echo, its answer about to go out whole) only has its timer checked, now. Returns `quiet`.
#[inline(always)]
pub(super) fn arm_or_touch(
    quiet: bool,
    slot: &mut Slot,
    key: usize,
    gen: u32,
    timers: &mut Timers,
    dirty: &mut Vec<usize>,
) -> bool {
    if quiet {
        turn::arm(timers, key, gen, slot);
    } else {
        touch(dirty, key, slot);
    }
    quiet
}
