//! The turn's end and the timers: deadlines firing, the loop-wide memory budget, and how a connection ends
//! (reported to the handler once, its socket shut down, reset or released).

use super::timers::{Due, NOT_ARMED};
use super::*;

impl Endpoint {
    /// Acts on every deadline due at `now`: connections' (the core's timeouts, a draining socket's end) and
    /// handlers' timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle_direct();
        while let Some(due) = self.timers.pop_due(now) {
            let (key, gen) = match due {
                Due::Handler { conn, token } => {
                    self.fire_handler_timer(now, conn, token);
                    continue;
                }
                Due::Throttle { key, gen } => {
                    self.throttle_due(key, gen, now);
                    continue;
                }
                Due::Conn { key, gen } => (key, gen),
            };
            let Some(slot) = self.slots.get_mut(key).filter(|_| self.table[key].gen == gen) else { continue };
            if slot.phase == Phase::Draining {
                // Its one deadline is the armed one: an earlier entry that fires now is stale.
                if slot.scheduled == NOT_ARMED || self.timers.has_come(slot.scheduled, now) {
                    self.remove(key, now);
                }
                continue;
            }
            slot.scheduled = NOT_ARMED;
            slot.conn.handle_timeout(now);
            if slot.conn.is_tunnel() {
                self.h2_timeout(key, now);
            }
            self.mark_dirty(key);
        }
    }

    /// Ends the turn's reading: every connection touched this turn is flushed, closed or re-armed by the
    /// transmits and orders that follow (poll them until `None`), within the turn's write budget.
    pub fn end_turn(&mut self, now: Instant) {
        self.settle_direct();
        if let Some(Burst::Reading { key, .. } | Burst::Peeking { key } | Burst::Probing { key, .. }) = self.burst {
            // A read the shell did not make: the connection is read at its place in the backlog.
            self.end_burst();
            self.burst = None;
            self.defer(key);
        }
        for i in std::mem::take(&mut self.fresh_at)..self.fresh.len() {
            let (key, gen) = self.fresh[i];
            if self.slots.contains(key) && self.table[key].gen == gen {
                self.defer(key);
            }
        }
        self.fresh.clear();
        self.fresh_work = 0;
        self.backlog_turn = None;
        let f = &mut self.flushing;
        (f.ending, f.turn_written, f.budget_checked, f.drops) = (true, 0, false, 0);
        // The light ones go first (see LIGHT), in the order they were touched (the most recent on top).
        let (slots, light) = (&self.slots, &mut self.light);
        self.dirty.retain(|&key| {
            let is_light = slots
                .get(key)
                .is_some_and(|s| s.flags.has(Flags::DIRTY) && !s.flags.has(Flags::BLOCKED) && s.queued() <= LIGHT);
            if is_light {
                light.push(key);
            }
            !is_light
        });
        self.bufs.trim(now);
    }

    /// The loop's part of the memory budget: what its slots hold, the shared frames, the stashed input.
    pub(super) fn loop_held(&self) -> usize {
        let stashed: usize =
            if self.stash.is_empty() { 0 } else { self.stash.values().map(|s| s.buf.capacity()).sum() };
        self.held + self.shared_bytes.load(Ordering::Relaxed) + stashed
    }

    /// Checks the memory budget ([`Config::memory_budget`]) at the end of a turn: past three quarters, pressure
    /// (connections holding much are not read, new ones get no compression); past all of it, the connections
    /// with the most queued (then the most held) are dropped as slow consumers until it holds. Returns whether
    /// any was dropped.
    pub(super) fn enforce_budget(&mut self, now: Instant) -> bool {
        let budget = self.config.memory_budget;
        if budget == 0 {
            return false;
        }
        let local = self.loop_held();
        let m = &self.shared.metrics;
        m.held_bytes.store(local as u64, Ordering::Relaxed);
        let (total, share) = match self.group.as_deref() {
            Some(g) => {
                if local > self.held_published {
                    g.held().fetch_add(local - self.held_published, Ordering::Relaxed);
                } else {
                    g.held().fetch_sub(self.held_published - local, Ordering::Relaxed);
                }
                self.held_published = local;
                (g.held().load(Ordering::Relaxed), budget / g.loops())
            }
            None => (local, 0),
        };
        let was = self.pressure;
        self.pressure = total > budget / 4 * 3;
        self.pool.hold_back = self.pressure;
        let mut freed = 0;
        if self.pressure {
            Metrics::add(&self.shared.metrics.pressure_turns, 1);
            if !was || total > budget {
                freed = self.release_compressors();
            }
        } else if was {
            // Read again what was left unread.
            for (key, gen) in std::mem::take(&mut self.pressed) {
                if let Some(slot) = self.slots.get_mut(key).filter(|_| self.table[key].gen == gen) {
                    slot.flags.clear(Flags::PRESSED);
                    self.defer(key);
                }
            }
        }
        let total = total.saturating_sub(freed);
        if total <= budget || local <= share {
            return false;
        }
        // Back to the pressure mark, not just under the budget: otherwise the loop stays at the budget, under
        // pressure, dropping one connection whenever another fills.
        self.drop_heaviest(total - budget / 4 * 3, now)
    }

    /// Under memory pressure, every connection gives back its own compressor before any is dropped (the server
    /// may drop its context at any time: the next message starts a fresh one, from the pool while the pressure
    /// lasts). Returns the bytes freed.
    #[cold]
    fn release_compressors(&mut self) -> usize {
        let mut freed = 0;
        for (key, slot) in self.slots.iter_mut() {
            let n = slot.conn.release_compressor();
            if n > 0 {
                freed += n;
                touch(&mut self.dirty, key, slot);
            }
        }
        freed
    }

    /// Drops open connections, the most queued first (then the most held), until `over` bytes are freed.
    #[cold]
    fn drop_heaviest(&mut self, mut over: usize, now: Instant) -> bool {
        let table = &self.table;
        let mut heavy: Vec<(usize, u32, usize)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.is_open_phase() && !s.conn.is_finished() && s.held > 0)
            .map(|(k, s)| (table[k].queued(), s.held, k))
            .collect();
        heavy.sort_unstable_by(|a, b| b.cmp(a));
        let mut dropped = false;
        for (queued, held, key) in heavy {
            if over == 0 || self.flushing.drops >= DROPS_PER_TURN {
                break;
            }
            self.flushing.drops += 1;
            let slot = &mut self.slots[key];
            log::warn!(target: "wskit::server", "{} dropped to keep the memory budget ({queued} B queued, {held} B held)", slot.peer);
            slot.drop_slow(queued, now);
            Metrics::add(&self.shared.metrics.budget_closed, 1);
            over = over.saturating_sub(queued + held as usize);
            self.mark_dirty(key);
            dropped = true;
        }
        dropped
    }

    /// The connection is over and its output written: tell the handler, send FIN, and drain. A peer dropped for
    /// not reading is reset instead: its kernel buffers are freed at once, rather than while a FIN waits behind
    /// them.
    pub(super) fn finish(&mut self, key: usize, now: Instant) {
        let status = self.slots[key].conn.close_status();
        let timed_out = matches!(status, CloseStatus::TimedOut(TimeoutKind::Handshake));
        let slow = matches!(status, CloseStatus::Error(crate::ProtocolError::SlowConsumer { .. }));
        self.notify_close(key, now);
        if !self.slots.contains(key) {
            return;
        }
        let id = self.id_of(key);
        if slow {
            return self.remove_with(key, Order::Reset(id), now);
        }
        if timed_out || self.slots[key].flags.has(Flags::STREAM) {
            // (A session's stream ends as it leaves: END_STREAM, the FIN of HTTP/2.)
            return self.remove(key, now);
        }
        self.orders.push_back(Order::ShutdownWrite(id));
        let (slot, until) = (&mut self.slots[key], now + self.config.close_timeout);
        slot.phase = Phase::Draining;
        // From now on its timer is armed for this deadline alone (an entry armed earlier fires as stale).
        slot.scheduled = self.timers.arm_conn(key, self.table[key].gen, until);
    }

    /// The peer closed TCP or the socket failed. With `last_write`, what is queued for it is written once more
    /// first (the peer's FIN closes only its side: a close frame it asked for still goes out).
    pub(super) fn peer_gone(&mut self, key: usize, last_write: bool, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        if last_write && !slot.is_draining() && slot.wants_write() && !slot.flags.has(Flags::BLOCKED) {
            slot.flags.set(Flags::GONE);
            self.through.push((key, self.table[key].gen));
            return;
        }
        self.notify_close(key, now);
        self.remove(key, now);
    }

    /// Tells the handler a connection it accepted is over (once), and leaves its counts and topics.
    pub(super) fn notify_close(&mut self, key: usize, now: Instant) {
        let Endpoint { slots, handler, queue, open, per_ip, shared, shutdown, topics, config, table, group, .. } = self;
        let Some(slot) = slots.get_mut(key).filter(|s| s.is_open_phase()) else { return };
        slot.phase = Phase::Done;
        let status = slot.conn.close_status();
        *open -= 1;
        let ip = per_ip_key(slot.peer.ip());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        let id = conn_id(key, table[key].gen);
        shared.set_live(key, 0);
        table[key].set_open(false);
        let m = &shared.metrics;
        Metrics::sub(&m.open, 1);
        match &status {
            CloseStatus::Clean { code, by_peer, .. } => m.closed(code.0, *by_peer),
            CloseStatus::TimedOut(kind) => {
                m.timed_out(*kind);
                m.closed(status.code().0, false);
            }
            other => m.closed(other.code().0, false),
        }
        if let Some(r) = shutdown.as_mut() {
            match status {
                CloseStatus::Clean { .. } => r.closed_cleanly += 1,
                _ => r.closed_otherwise += 1,
            }
        }
        for topic in slot.topics.take() {
            unsubscribe(topics, &topic, id, group.as_deref());
        }
        if !config.prod {
            log::debug!(target: "wskit::server", "{id} {} closed: {status:?}", slot.peer);
        }
        let mut ctx = Ctx::new(id, slot.peer, queue, &shared.metrics, table, 0);
        ctx.closed = true;
        guarded(id, "on_close", || handler.on_close(&mut ctx, &status));
        self.apply_commands(now);
    }

    /// Forgets a connection; the shell releases its socket.
    pub(super) fn remove(&mut self, key: usize, now: Instant) {
        if self.slots.contains(key) {
            let id = self.id_of(key);
            self.remove_with(key, Order::Release(id), now);
        }
    }

    /// Forgets a connection; `order` tells the shell what to do with its socket.
    fn remove_with(&mut self, key: usize, order: Order, now: Instant) {
        if !self.parked.is_empty() && self.parked.remove(&key).is_some() {
            // A deferred upgrade that never opened (timed out, dropped): its handler is told.
            let status = self.slots.get(key).map_or(CloseStatus::Lost, |s| s.conn.close_status());
            self.unopened(key, &status);
        }
        // A session leaves its stream; a socket's sessions end with it.
        let session = !self.links.is_empty() && self.h2_detach(key, matches!(order, Order::Reset(_)), now);
        if !self.h2.is_empty() && self.h2.contains_key(&key) {
            self.h2_end_sessions(key, now);
            self.h2.remove(&key);
        }
        let Some(slot) = self.slots.try_remove(key) else { return };
        if slot.phase == Phase::Proxy {
            self.proxy_partial.remove(&key);
        }
        if !self.stash.is_empty() {
            // (Deferred, throttled or parked: each may have left input waiting.)
            self.stash.remove(&key);
        }
        if slot.flags.has(Flags::DEFLATE) {
            self.contexts -= 1;
        }
        let m = &self.shared.metrics;
        if !session {
            Metrics::sub(&m.sockets, 1);
        }
        Metrics::sub(&m.queued_bytes, self.table[key].queued() as u64);
        self.held -= slot.held as usize;
        if let CloseStatus::TimedOut(TimeoutKind::Handshake) = slot.conn.close_status() {
            m.timed_out(TimeoutKind::Handshake);
        }
        self.table[key] = Entry::default();
        if !session {
            self.orders.push_back(order);
        }
        let (slots, table) = (&self.slots, &self.table);
        let armed =
            |key: usize, gen: u32, at: i64| slots.get(key).is_some_and(|s| table[key].gen == gen && s.scheduled == at);
        let exists = |id: u64| {
            let (key, gen) = split_id(id);
            slots.contains(key) && table[key].gen == gen
        };
        self.timers.compact(self.slots.len(), armed, exists);
    }

    pub(super) fn schedule(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            arm(&mut self.timers, key, self.table[key].gen, slot);
        }
    }
}

/// [`Endpoint::schedule`] for a slot at hand: arms its timer if its earliest deadline is earlier than the one
/// armed.
#[inline(always)]
pub(super) fn arm(timers: &mut Timers, key: usize, gen: u32, slot: &mut Slot) {
    let armed = slot.scheduled;
    if slot.phase == Phase::Draining || (armed != NOT_ARMED && slot.conn.deadlines_steady()) {
        return; // (a draining slot was armed once, when draining began)
    }
    if let Some(d) = slot.conn.deadline_to_arm(timers.instant_of(armed)) {
        slot.scheduled = timers.arm_conn(key, gen, d);
    }
}
