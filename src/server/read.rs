//! Reading: a connection's read burst (its quantum, the backlog, the probe, the stash), feeding the bytes to
//! the core, and the handler calls for each event, admission of upgrades included.

use super::*;

/// Behind trusted proxies: the client their forwarding header names (port unknown) becomes the peer.
fn forwarded_peer(config: &Config, peer: &mut SocketAddr, req: &crate::handshake::Request) {
    if config.trusted_proxies.is_empty() {
        return;
    }
    let values = req.header_values(&config.forwarded_header);
    if let Some(ip) = crate::policy::forwarded_client(peer.ip(), &config.trusted_proxies, values) {
        *peer = SocketAddr::new(ip, 0);
    }
}

/// Limits and policy, before the handler sees an upgrade (503, 429, 403, 400): the subprotocol chosen, or why not.
fn limits<'c>(
    config: &'c Config,
    open: usize,
    per_ip: &HashMap<IpAddr, u32>,
    ip: IpAddr,
    req: &crate::handshake::Request,
) -> Result<Option<&'c str>, (Why, u16, Vec<u8>)> {
    let full = |why, status, body: &str| Err((why, status, body.as_bytes().to_vec()));
    if config.max_connections > 0 && open >= config.max_connections {
        return full(Why::Full, 503, "too many connections\n");
    }
    if config.max_connections_per_ip > 0
        && per_ip.get(&ip).is_some_and(|n| *n as usize >= config.max_connections_per_ip)
    {
        return full(Why::PerIp, 429, "too many connections from your address\n");
    }
    crate::policy::admit(req, config).map_err(|r| {
        let why = if r.status == 403 { Why::Origin } else { Why::Subprotocol };
        (why, r.status, r.reason.as_bytes().to_vec())
    })
}

/// What one step of [`Server::feed`] came to.
enum Step {
    /// The input yields nothing more.
    Done,
    /// Input was used and more is left, but no event came yet.
    Again,
    /// An event reached the handler.
    Handled,
}

/// The handler's say on an upgrade the limits let through (`verdict`): the subprotocol to accept with, or
/// `None` once refused (by the limits, the policy, or the handler, whose panic is a 500).
fn decide(
    handler: &mut dyn Handler,
    ctx: &mut Ctx<'_>,
    conn: &mut Connection,
    verdict: Result<Option<&str>, (Why, u16, Vec<u8>)>,
    req: &crate::handshake::Request,
    prod: bool,
    now: Instant,
) -> Option<Option<String>> {
    let refusal = match verdict {
        Err(refused) => Some(refused),
        Ok(chosen) => {
            ctx.protocol = chosen.map(str::to_string);
            if guarded(ctx.id, "on_open", || handler.on_open(ctx, req)).is_none() {
                ctx.decision = Some(crate::handler::Refusal { status: 500, body: b"internal error\n".to_vec() });
            }
            ctx.decision.take().map(|r| (Why::Handler, r.status, r.body))
        }
    };
    if let Some((why, status, body)) = refusal {
        refuse(ctx.metrics, conn, why, status, &body, now);
        return None;
    }
    if !prod {
        log::debug!(target: "wskit::server", "{} {} open {}", ctx.id, ctx.peer, req.uri());
    }
    Some(ctx.protocol.take().filter(|p| req.protocols().any(|o| o == p)))
}

/// Refuses an upgrade with its status (and, for the limits a client may wait out, `Retry-After`).
fn refuse(m: &Metrics, conn: &mut Connection, why: Why, status: u16, body: &[u8], now: Instant) {
    m.refused(why, status);
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8")];
    if status == 503 || status == 429 {
        headers.push(("Retry-After", "1"));
    }
    let _ = conn.reject(status, &headers, body, now);
}

/// Answers a plain HTTP request: the handler's response, a 500 if it panicked, or 426 if it has none.
fn answer_http(
    handler: &mut dyn Handler,
    ctx: &mut Ctx<'_>,
    conn: &mut Connection,
    req: &crate::handshake::Request,
    now: Instant,
) {
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

/// The counts an accepted upgrade changes, borrowed apart from the rest of the server.
struct Census<'s> {
    open: &'s mut usize,
    per_ip: &'s mut HashMap<IpAddr, u32>,
    contexts: &'s mut usize,
    table: &'s mut Vec<(u32, usize)>,
    shared: &'s Shared,
    pressure: bool,
}

impl Census<'_> {
    /// Accepts an upgrade the limits, the policy and the handler let through, and counts it.
    pub(super) fn opened(
        &mut self,
        config: &Config,
        slot: &mut Slot,
        key: usize,
        ip: IpAddr,
        protocol: Option<&str>,
        now: Instant,
    ) {
        let deflate_ok = *self.contexts < config.deflate.max_contexts && !self.pressure;
        let _ = slot.conn.accept(protocol, deflate_ok, now);
        slot.opened = true;
        *self.open += 1;
        if config.max_connections_per_ip > 0 {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        let m = &self.shared.metrics;
        Metrics::add(&m.open, 1);
        Metrics::add(&m.opened, 1);
        self.shared.set_live(key, slot.gen);
        set_table(self.table, key, (slot.gen, 0));
        if slot.conn.deflate_params().is_some() {
            slot.deflate = true;
            *self.contexts += 1;
        }
    }
}

impl Server {
    /// Reads from a connection until the socket is drained, reading pauses, or the burst has caused a
    /// [`QUANTUM`] of work (then it goes to the backlog). Input stashed at an earlier cut comes first.
    pub(super) fn do_read(&mut self, key: usize, now: Instant) {
        self.work = 0;
        if !self.stash.is_empty() && self.stash.contains_key(&key) {
            self.feed_stash(key, now);
            if self.stash.contains_key(&key) {
                return; // cut again, and deferred
            }
        }
        loop {
            let Some(slot) = self.slots.get_mut(key) else {
                return;
            };
            if !slot.read_ready {
                return;
            }
            if self.work >= QUANTUM {
                // Fairness: the rest waits for a later turn (which does not sleep); everyone else goes first.
                self.defer(key);
                return;
            }
            if slot.draining.is_some() {
                // Discard until the peer's FIN.
                match slot.sock.read(&mut self.rbuf) {
                    Ok(0) => return self.remove(key),
                    Ok(n) => {
                        // A peer that sends a quantum after our FIN is not closing: drop it now.
                        self.work += n;
                        if self.work >= QUANTUM {
                            return self.remove(key);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        slot.read_ready = false;
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.remove(key),
                }
            }
            if !slot.wants_read(self.config.write_high_water) {
                return; // paused; `read_ready` stays set and reading resumes after a flush
            }
            if self.pressure && slot.held as usize >= self.config.memory_budget / 256 {
                // Memory pressure: what it holds stays as it is until the pressure ends (then it is read again).
                if !slot.pressed {
                    slot.pressed = true;
                    self.pressed.push((key, slot.gen));
                }
                return;
            }
            match slot.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    slot.read_ready = false;
                    return self.peer_gone(key, now);
                }
                Ok(n) => {
                    let short = n < self.rbuf.len();
                    self.work += n;
                    Metrics::add(&self.shared.metrics.bytes_in, n as u64);
                    let n = if slot.awaiting_proxy { self.strip_proxy_header(key, n, now) } else { n };
                    if n == 0 {
                        // All of it was (part of) the PROXY header.
                    } else if self.slots[key].is_tls() {
                        self.feed_tls(key, n, now);
                    } else {
                        self.feed(key, false, 0, n, now);
                        // The socket is drained and the peer is mid-message: acknowledge now (after a full read
                        // the next read follows at once, and a sender in bulk gets its ACKs anyway).
                        if let Some(slot) = self.slots.get(key).filter(|s| short && s.conn.is_mid_message()) {
                            quickack(&slot.sock);
                        }
                    }
                    if !self.stash.is_empty() && self.stash.contains_key(&key) {
                        // Cut at its quantum mid-read: deferred with the rest. (The socket's readiness is kept:
                        // after a short read it is cleared when the backlog reads it and finds it drained.)
                        self.write_through(key);
                        return;
                    }
                    if short {
                        if let Some(s) = self.slots.get_mut(key).filter(|s| !s.read_closed) {
                            s.read_ready = false;
                            self.write_through(key);
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.read_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.peer_gone(key, now),
            }
        }
    }

    /// Puts a connection at the back of the backlog (if it is not there already), with the work its burst
    /// caused past its quantum as its debt.
    pub(super) fn defer(&mut self, key: usize) {
        if self.work >= QUANTUM {
            Metrics::add(&self.shared.metrics.bursts_cut, 1);
        }
        let debt = self.work.saturating_sub(QUANTUM);
        if let Some(slot) = self.slots.get_mut(key).filter(|s| !s.deferred) {
            slot.deferred = true;
            self.backlog.push_back((key, slot.gen, debt));
        }
    }

    /// A fresh event in a turn that has done its share of work already: the connection is looked at (`MSG_PEEK`).
    /// What is plainly cheap (the socket drained within [`PROBE`] bytes, and no compressed frame at the start) is
    /// read and handled now; anything else is left in the socket and the connection goes to the backlog, so that a light client is not kept
    /// waiting behind hundreds of heavy ones that became ready at the same moment.
    pub(super) fn probe(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.draining.is_some()
            || slot.awaiting_proxy
            || slot.is_tls()
            || !slot.wants_read(self.config.write_high_water)
        {
            return self.defer(key);
        }
        self.work = 0;
        // A look, not a read: what is not cheap stays in the socket (no copy of it waits in memory).
        let n = match slot.sock.peek(&mut self.rbuf[..PROBE]) {
            Ok(0) => return self.peer_gone(key, now),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                slot.read_ready = false;
                return;
            }
            Err(_) => return self.defer(key),
        };
        let compressed = slot.conn.deflate_params().is_some() && self.rbuf[0] & 0x40 != 0;
        if n == PROBE || compressed || slot.read_closed {
            return self.defer(key);
        }
        let n = match slot.sock.read(&mut self.rbuf[..n]) {
            Ok(n) if n > 0 => n,
            _ => return self.defer(key), // (the backlog's read sees what happened)
        };
        Metrics::add(&self.shared.metrics.bytes_in, n as u64);
        slot.read_ready = false;
        self.feed(key, false, 0, n, now);
        self.write_through(key);
    }

    /// Serves the backlog in order, each connection at most once and for at most [`BACKLOG_PER_TURN`] of work
    /// in all; a connection with debt works off a quantum of it instead of reading. Those not reached keep their
    /// place for the next turn.
    pub(super) fn serve_backlog(&mut self, now: Instant) {
        let mut budget = BACKLOG_PER_TURN;
        for _ in 0..self.backlog.len() {
            if budget == 0 {
                break;
            }
            let Some((key, gen, debt)) = self.backlog.pop_front() else { break };
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen && s.deferred) else { continue };
            if debt >= QUANTUM {
                self.backlog.push_back((key, gen, debt - QUANTUM));
                continue;
            }
            slot.deferred = false;
            self.do_read(key, now);
            budget = budget.saturating_sub(self.work);
        }
    }

    /// Keeps `input[off..n]` (the read buffer, or the plaintext buffer when `plain`) for the connection's next
    /// burst, and defers it. The buffer itself is taken (a spare replaces it): nothing is copied.
    fn stash_rest(&mut self, key: usize, plain: bool, off: usize, n: usize) {
        if n - off <= STASH_COPY {
            // A short rest is copied out rather than holding a whole read buffer while it waits.
            let input = if plain { &self.pbuf } else { &self.rbuf };
            let buf = input[off..n].to_vec();
            self.stash.insert(key, Stash { plain, buf, start: 0, end: n - off });
            return self.defer(key);
        }
        let buf = if plain {
            std::mem::take(&mut self.pbuf)
        } else {
            let fresh =
                if self.spare_rbuf.is_empty() { vec![0; READ_BUF] } else { std::mem::take(&mut self.spare_rbuf) };
            std::mem::replace(&mut self.rbuf, fresh)
        };
        self.stash.insert(key, Stash { plain, buf, start: off, end: n });
        self.defer(key);
    }

    /// Feeds a connection's stashed input (its buffer is put in place of the one it was read into for the while);
    /// it may be cut again and stashed anew.
    fn feed_stash(&mut self, key: usize, now: Instant) {
        let Some(st) = self.stash.remove(&key) else { return };
        self.work += st.end - st.start;
        let slot_of_buf = if st.plain { &mut self.pbuf } else { &mut self.rbuf };
        let prev = std::mem::replace(slot_of_buf, st.buf);
        self.feed(key, st.plain, st.start, st.end, now);
        let slot_of_buf = if st.plain { &mut self.pbuf } else { &mut self.rbuf };
        let used = std::mem::replace(slot_of_buf, prev);
        if !st.plain && used.len() == READ_BUF && self.spare_rbuf.is_empty() {
            self.spare_rbuf = used;
        }
    }

    /// Takes the PROXY protocol header (`Config::proxy_protocol`) off the front of `rbuf[..n]`. When it is whole,
    /// the client it names becomes the slot's peer, and the client's own bytes that followed it in this read are
    /// moved to the front of `rbuf`: returns how many (0 while the header is incomplete). A fault is answered
    /// with 400 (a TLS listener: the connection just closes, nothing HTTP can be said before TLS).
    fn strip_proxy_header(&mut self, key: usize, n: usize, now: Instant) -> usize {
        // Usually the whole header is in the first read and is parsed in place; a part is kept only across reads.
        let mut reader = self.proxy_partial.remove(&key).unwrap_or_default();
        let slot = &mut self.slots[key];
        let rest = match reader.feed(&self.rbuf[..n]) {
            Ok(Status::Partial) => {
                self.proxy_partial.insert(key, reader);
                return 0;
            }
            Ok(Status::Complete((source, used))) => {
                if let Some(source) = source {
                    slot.peer = source;
                }
                self.rbuf.copy_within(used..n, 0);
                n - used
            }
            Err(e) => {
                self.shared.metrics.handshake_failed(HandshakeError::ProxyHeader.status());
                if !self.config.prod {
                    log::debug!(target: "wskit::server", "{} refused: {e}", slot.peer);
                }
                if slot.is_tls() {
                    slot.conn.abort(now);
                } else {
                    let _ = slot.conn.refuse_before_head(HandshakeError::ProxyHeader, now);
                }
                0
            }
        };
        slot.awaiting_proxy = false;
        self.mark_dirty(key);
        rest
    }

    /// Writes what the connection just read made it queue (its answers) now, rather than after every other
    /// connection's reads of this turn: with hundreds of connections ready at once, the first one's answer no
    /// longer waits for the last one's processing (p99 round trip). Still one send per connection per turn in
    /// the usual case; closing, re-arming and the rest stay in `finish_turn`, which finds nothing left to write.
    #[inline]
    fn write_through(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.draining.is_some() || slot.blocked || slot.conn.is_finished() || !slot.conn.wants_write() {
            return;
        }
        if let Some(written) = Self::flush(slot) {
            Metrics::add(&self.shared.metrics.bytes_out, written as u64);
        }
    }

    /// Decrypts `rbuf[..n]` and feeds the plaintext on; a TLS fault ends the connection after its alert is sent.
    #[cfg(feature = "tls")]
    pub(super) fn feed_tls(&mut self, key: usize, n: usize, now: Instant) {
        let Some(tls) = self.slots.get_mut(key).and_then(|s| s.tls.as_mut()) else { return };
        let mut plain = std::mem::take(&mut self.pbuf);
        plain.clear();
        let result = tls.receive(&self.rbuf[..n], &mut plain);
        let len = plain.len();
        self.pbuf = plain;
        self.mark_dirty(key);
        match result {
            Err(e) => {
                if !self.config.prod {
                    log::debug!(target: "wskit::server", "{} TLS: {e}", self.slots[key].peer);
                }
                self.slots[key].conn.abort(now);
            }
            Ok(r) => {
                if len > 0 {
                    self.feed(key, true, 0, len, now);
                }
                if let Some(slot) = self.slots.get(key).filter(|_| n < self.rbuf.len()) {
                    // The socket is drained and a TLS record is still incomplete, or the message is: acknowledge
                    // now.
                    if len == 0 || slot.conn.is_mid_message() {
                        quickack(&slot.sock);
                    }
                }
                if r.peer_closed && self.slots.contains(key) {
                    self.peer_gone(key, now);
                }
            }
        }
        if self.pbuf.capacity() > READ_BUF * 2 {
            self.pbuf = Vec::new();
        }
    }

    #[cfg(not(feature = "tls"))]
    pub(super) fn feed_tls(&mut self, key: usize, n: usize, now: Instant) {
        self.feed(key, false, 0, n, now);
    }

    /// Feeds `rbuf[off..n]` (or the decrypted `pbuf[off..n]`) to the connection, dispatching each event to the
    /// handler and applying its commands. Once the burst has caused a [`QUANTUM`] of work, the rest is stashed
    /// and the connection deferred.
    pub(super) fn feed(&mut self, key: usize, plain: bool, mut off: usize, n: usize, now: Instant) {
        if let Some(st) = (!self.stash.is_empty()).then(|| self.stash.get_mut(&key)).flatten() {
            // Input that came while earlier input waits (an adopted socket's bytes) goes behind it.
            let input = if plain { &self.pbuf } else { &self.rbuf };
            st.buf.truncate(st.end);
            st.buf.extend_from_slice(&input[off..n]);
            st.end = st.buf.len();
            return;
        }
        // Even bytes that complete nothing can start a deadline (a message's first fragment) or queue output.
        self.mark_dirty(key);
        if let Some(slot) = self.slots.get_mut(key) {
            lend(&mut self.bufs, &mut slot.conn);
        }
        loop {
            match self.feed_one(key, plain, &mut off, n, now) {
                Step::Done => break,
                Step::Again => continue,
                Step::Handled => {}
            }
            if cfg!(debug_assertions) && !self.config.prod {
                if let Some(slot) = self.slots.get(key) {
                    slot.conn.debug_check_invariants();
                }
            }
            // (The slot was marked dirty at the top, and only `finish_turn` clears the mark.)
            self.apply_commands(now);
            self.echo_src = None;
            if off >= n {
                break;
            }
            // The input not yet processed was counted when it was read; a burst is cut when the work done with
            // the rest (what it inflated, the output it caused) reaches the quantum.
            if self.work.saturating_sub(n - off) >= QUANTUM && self.slots.contains(key) {
                self.stash_rest(key, plain, off, n);
                break;
            }
        }
        if let Some(slot) = self.slots.get_mut(key) {
            slot.conn.reclaim();
            take_back(&mut self.bufs, &mut slot.conn);
        }
    }

    /// Reads the next event out of `input[*off..n]` (the read buffer, or the plaintext one when `plain`) and
    /// hands it to the handler, whose commands are left queued.
    #[inline]
    fn feed_one(&mut self, key: usize, plain: bool, off: &mut usize, n: usize, now: Instant) -> Step {
        let Server { slots, handler, queue, rbuf, pbuf, config, shared, table, echo_src, work, .. } = self;
        let input = if plain { pbuf } else { rbuf };
        // Where this read's input lies, to tell a message in it (echoed from there) from one assembled.
        let (base, from) = (input.as_ptr() as usize, *off);
        let slot = &mut slots[key];
        let id = conn_id(key, slot.gen);
        let (used, ev) = slot.conn.read(&mut input[*off..n], now);
        *off += used;
        let Some(ev) = ev else { return if used == 0 || *off >= n { Step::Done } else { Step::Again } };
        if let Event::Upgrade(req) | Event::Http(req) = &ev {
            forwarded_peer(config, &mut slot.peer, req);
        }
        let mut ctx = Ctx::new(id, slot.peer, queue, &shared.metrics, table, config.write_high_water);
        let mut panicked = false;
        let mut accepted = None;
        match ev {
            Event::Upgrade(req) => {
                let ip = per_ip_key(slot.peer.ip());
                let verdict = limits(config, self.open, &self.per_ip, ip, &req);
                let decided = decide(&mut **handler, &mut ctx, &mut slot.conn, verdict, &req, config.prod, now);
                accepted = decided.map(|protocol| (ip, protocol));
            }
            Event::Http(req) => answer_http(&mut **handler, &mut ctx, &mut slot.conn, &req, now),
            Event::HandshakeFailed(e) => {
                shared.metrics.handshake_failed(e.status());
                if !config.prod {
                    log::debug!(target: "wskit::server", "{id} {} handshake refused ({}): {e}", slot.peer, e.status());
                }
            }
            Event::Message(m) => {
                Metrics::add(&shared.metrics.messages_in, 1);
                Metrics::add(&shared.metrics.payload_in, m.as_bytes().len() as u64);
                let (at, len) = (m.as_bytes().as_ptr() as usize, m.as_bytes().len());
                if slot.deflate {
                    // Inflated: its bytes may be a thousand times the input's.
                    *work += DEFLATE_WEIGHT * len;
                }
                ctx.echo = Some((at, len));
                // The message ends where the core stopped reading: `last` when that is the end of the input.
                *echo_src = Some(EchoSrc::of(at, len, base, (from, n), plain, *off >= n));
                panicked = guarded(id, "on_message", || handler.on_message(&mut ctx, m)).is_none();
            }
            Event::Ping(p) => panicked = guarded(id, "on_ping", || handler.on_ping(&mut ctx, p)).is_none(),
            Event::Pong(p) => panicked = guarded(id, "on_pong", || handler.on_pong(&mut ctx, p)).is_none(),
            Event::Close(..) => {}
            Event::Error(e) => {
                if !config.prod {
                    log::debug!(target: "wskit::server", "{id} {} protocol error: {e}", slot.peer);
                }
                guarded(id, "on_error", || handler.on_error(&mut ctx, &e));
            }
        }
        if panicked {
            // The handler's state for this connection is suspect: close it with 1011; everyone else goes on.
            let _ = slot.conn.close(crate::CloseCode::INTERNAL, "internal error", now);
        }
        if let Some((ip, protocol)) = accepted {
            let Server { open, per_ip, contexts, table, shared, pressure, .. } = self;
            let mut census = Census { open, per_ip, contexts, table, shared, pressure: *pressure };
            census.opened(config, slot, key, ip, protocol.as_deref(), now);
        }
        Step::Handled
    }
}
