//! The end of a turn and the timers: flushing touched connections under the turn's write budget, the
//! loop-wide memory budget, finishing and removing connections, and the deadline heap.

use super::*;

impl Server {
    /// Writes what the connection has queued, until the socket is full; the bytes written, or `None` if the socket
    /// failed. The core hands out its queue a frame boundary at a time when a control frame waits, so a pong
    /// overtakes queued data at the next boundary; under TLS at most [`TLS_BATCH`] bytes are encrypted ahead of
    /// the socket for the same reason.
    pub(super) fn flush(slot: &mut Slot) -> Option<usize> {
        let mut written = 0;
        loop {
            #[cfg(feature = "tls")]
            if let Some(tls) = slot.tls.as_mut() {
                while tls.out().len() < TLS_BATCH && slot.conn.wants_write() {
                    let data = slot.conn.out();
                    if data.is_empty() {
                        break;
                    }
                    let n = data.len().min(TLS_BATCH - tls.out().len());
                    tls.send(&data[..n]);
                    slot.conn.consume_out(n);
                }
                // After the WebSocket close, close_notify goes before TCP closes.
                if slot.conn.is_finished() {
                    tls.close_notify();
                }
                let len = tls.out().len();
                if len == 0 {
                    return Some(written);
                }
                let n = write_burst(&mut slot.sock, tls.out())?;
                tls.consume_out(n);
                written += n;
                if n < len {
                    slot.set_blocked();
                    return Some(written);
                }
                continue;
            }
            let (len, n) = if slot.conn.has_shared() {
                // Shared frames queued after the head go out with it in one vectored send.
                let mut parts: [&[u8]; 16] = [&[]; 16];
                let k = slot.conn.out_slices(&mut parts);
                let len: usize = parts[..k].iter().map(|p| p.len()).sum();
                if len == 0 {
                    return Some(written);
                }
                (len, write_slices(&mut slot.sock, &parts[..k])?)
            } else {
                let len = slot.conn.out().len();
                if len == 0 {
                    return Some(written);
                }
                (len, write_burst(&mut slot.sock, slot.conn.out())?)
            };
            slot.conn.consume_out(n);
            written += n;
            if n < len {
                slot.set_blocked();
                return Some(written);
            }
        }
    }

    /// Flushes, closes and re-arms every connection touched this turn, then keeps the memory budget (which may
    /// drop connections: those are finished in a second pass).
    pub(super) fn finish_turn(&mut self, now: Instant) {
        self.finish_dirty(now);
        if self.enforce_budget(now) {
            self.finish_dirty(now);
        }
    }

    /// The loop's part of the memory budget: what its slots hold, the shared frames, the stashed input.
    fn loop_held(&self) -> usize {
        let stashed: usize =
            if self.stash.is_empty() { 0 } else { self.stash.values().map(|s| s.buf.capacity()).sum() };
        self.held + self.shared_bytes.load(Ordering::Relaxed) + stashed
    }

    /// Checks the memory budget ([`Config::memory_budget`]) at the end of a turn: past three quarters, pressure
    /// (connections holding much are not read, new ones get no compression); past all of it, the connections
    /// with the most queued (then the most held) are dropped as slow consumers until it holds. Returns whether
    /// any was dropped.
    fn enforce_budget(&mut self, now: Instant) -> bool {
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
                    g.held.fetch_add(local - self.held_published, Ordering::Relaxed);
                } else {
                    g.held.fetch_sub(self.held_published - local, Ordering::Relaxed);
                }
                self.held_published = local;
                (g.held.load(Ordering::Relaxed), budget / g.loops())
            }
            None => (local, 0),
        };
        let was = self.pressure;
        self.pressure = total > budget / 4 * 3;
        if self.pressure {
            Metrics::add(&m.pressure_turns, 1);
        } else if was {
            // Read again what was left unread.
            for (key, gen) in std::mem::take(&mut self.pressed) {
                if let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) {
                    slot.pressed = false;
                    self.defer(key);
                }
            }
        }
        if total <= budget || local <= share {
            return false;
        }
        // Back to the pressure mark, not just under the budget: otherwise the loop stays at the budget, under
        // pressure, dropping one connection whenever another fills.
        self.drop_heaviest(total - budget / 4 * 3, now)
    }

    /// Drops open connections, the most queued first (then the most held), until `over` bytes are freed.
    #[cold]
    fn drop_heaviest(&mut self, mut over: usize, now: Instant) -> bool {
        let mut heavy: Vec<(u32, u32, usize)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.opened && s.draining.is_none() && !s.conn.is_finished() && s.held > 0)
            .map(|(k, s)| (s.queued, s.held, k))
            .collect();
        heavy.sort_unstable_by(|a, b| b.cmp(a));
        let mut dropped = false;
        for (queued, held, key) in heavy {
            if over == 0 {
                break;
            }
            let slot = &mut self.slots[key];
            log::warn!(target: "wskit::server", "{} dropped to keep the memory budget ({queued} B queued, {held} B held)", slot.peer);
            slot.conn.drop_slow(queued as usize, now);
            #[cfg(feature = "tls")]
            if let Some(t) = slot.tls.as_mut() {
                t.consume_out(usize::MAX);
            }
            Metrics::add(&self.shared.metrics.budget_closed, 1);
            over = over.saturating_sub(queued as usize + held as usize);
            self.mark_dirty(key);
            dropped = true;
        }
        dropped
    }

    /// Flushes, closes and re-arms the dirty connections, what an earlier turn left first, then the most recently
    /// touched first, until the turn has written [`TURN_WRITES`]; the rest keep their place, ahead of anything
    /// touched later, for the next turn (which does not wait).
    fn finish_dirty(&mut self, now: Instant) {
        let mut turn_written = 0;
        loop {
            let (key, carried) = match self.carried.pop() {
                Some(key) => (key, true),
                None => match self.dirty.pop() {
                    Some(key) => (key, false),
                    None => return,
                },
            };
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.dirty) else {
                continue; // gone, or an entry left below a newer one
            };
            if turn_written >= TURN_WRITES && !slot.blocked && slot.wants_write() {
                if carried {
                    self.carried.push(key);
                } else {
                    self.dirty.push(key);
                    // (`carried` is empty here: swapping keeps both allocations.)
                    std::mem::swap(&mut self.carried, &mut self.dirty);
                }
                return;
            }
            slot.dirty = false;
            if slot.draining.is_some() {
                continue;
            }
            let flushed = if slot.blocked { Some(0) } else { Self::flush(slot) };
            let Some(written) = flushed else {
                self.peer_gone(key, now);
                continue;
            };
            take_back(&mut self.bufs, &mut slot.conn);
            turn_written += written;
            let m = &self.shared.metrics;
            Metrics::add(&m.bytes_out, written as u64);
            let queued = recount(slot, key, m, &mut self.table, &mut self.held);
            if queued > self.queue_limit && !slot.conn.is_finished() {
                // A peer that does not read: drop it rather than hold its queue (the close frame would not pass).
                Metrics::add(&m.slow_closed, 1);
                slot.conn.drop_slow(queued, now);
                #[cfg(feature = "tls")]
                if let Some(t) = slot.tls.as_mut() {
                    t.consume_out(usize::MAX);
                }
            }
            if queued > self.config.write_high_water {
                slot.over_high = true;
            } else if slot.over_high && queued <= self.config.write_high_water / 4 && slot.opened {
                slot.over_high = false;
                let id = conn_id(key, slot.gen);
                let hw = self.config.write_high_water;
                let mut ctx = Ctx::new(id, slot.peer, &mut self.queue, &self.shared.metrics, &self.table, hw);
                let handler = &mut self.handler;
                guarded(id, "on_drain", || handler.on_drain(&mut ctx));
                // Anything it sent makes this connection dirty again and is flushed in this same loop.
                self.apply_commands(now);
            }
            let Some(slot) = self.slots.get_mut(key) else { continue };
            if slot.finished() {
                self.finish(key, now);
                continue;
            }
            let want = if slot.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if want != slot.interest {
                if self.poll.registry().reregister(&mut slot.sock, token_of(key, slot.gen), want).is_err() {
                    self.peer_gone(key, now);
                    continue;
                }
                slot.interest = want;
            }
            let resume = slot.read_ready && !slot.deferred && slot.wants_read(self.config.write_high_water);
            Self::arm(&mut self.timers, key, slot);
            if resume {
                // Read on at the next turn, not in this one: reading here could queue more, flush, drain and
                // read again for as long as the client sends, and the turn would never end.
                self.defer(key);
            }
        }
    }

    /// The connection is over and its output written: tell the handler, send FIN, and drain. A peer dropped for
    /// not reading is reset instead: its kernel buffers are freed at once, rather than while a FIN waits behind
    /// them.
    pub(super) fn finish(&mut self, key: usize, now: Instant) {
        let slot = &mut self.slots[key];
        let status = slot.conn.close_status();
        let timed_out = matches!(status, CloseStatus::TimedOut(TimeoutKind::Handshake));
        let slow = matches!(status, CloseStatus::Error(crate::ProtocolError::SlowConsumer { .. }));
        self.notify_close(key);
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slow {
            let _ = socket2::SockRef::from(&slot.sock).set_linger(Some(Duration::ZERO));
            return self.remove(key);
        }
        if timed_out || slot.sock.shutdown(Shutdown::Write).is_err() {
            return self.remove(key);
        }
        slot.draining = Some(now + self.config.close_timeout);
        self.schedule(key);
    }

    /// The peer closed TCP or the socket failed.
    pub(super) fn peer_gone(&mut self, key: usize, _now: Instant) {
        if let Some(slot) = self.slots.get_mut(key) {
            if let Some(n) = Self::flush(slot) {
                Metrics::add(&self.shared.metrics.bytes_out, n as u64);
            }
        }
        self.notify_close(key);
        self.remove(key);
    }

    pub(super) fn notify_close(&mut self, key: usize) {
        let Server { slots, handler, queue, open, per_ip, shared, shutdown, topics, config, table, group, .. } = self;
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        if !slot.opened {
            return;
        }
        slot.opened = false;
        let status = slot.conn.close_status();
        *open -= 1;
        let ip = per_ip_key(slot.peer.ip());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        shared.set_live(key, 0);
        set_table(table, key, (0, 0));
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
        for topic in std::mem::take(&mut slot.topics) {
            unsubscribe(topics, &topic, conn_id(key, slot.gen), group.as_deref());
        }
        if !config.prod {
            log::debug!(target: "wskit::server", "{} {} closed: {status:?}", conn_id(key, slot.gen), slot.peer);
        }
        let mut ctx = Ctx::new(conn_id(key, slot.gen), slot.peer, queue, &shared.metrics, table, 0);
        ctx.closed = true;
        let id = ctx.id;
        guarded(id, "on_close", || handler.on_close(&mut ctx, &status));
        self.apply_commands(Instant::now());
    }

    pub(super) fn remove(&mut self, key: usize) {
        if self.slots.contains(key) {
            let mut slot = self.slots.remove(key);
            if slot.awaiting_proxy {
                self.proxy_partial.remove(&key);
            }
            if slot.deferred {
                self.stash.remove(&key);
            }
            if slot.deflate {
                self.contexts -= 1;
            }
            let m = &self.shared.metrics;
            Metrics::sub(&m.sockets, 1);
            Metrics::sub(&m.queued_bytes, slot.queued as u64);
            self.held -= slot.held as usize;
            if let CloseStatus::TimedOut(TimeoutKind::Handshake) = slot.conn.close_status() {
                m.timed_out(TimeoutKind::Handshake);
            }
            let _ = self.poll.registry().deregister(&mut slot.sock);
            self.compact_timers();
        }
    }

    /// Drops the heap's stale entries (connections gone, deadlines moved earlier, handler timers replaced or
    /// cancelled) once they outnumber the live ones by far. Entries are otherwise skipped only when they come due,
    /// so a churn of short connections would leave one per connection for up to the longest deadline (tens of
    /// seconds): memory that grew with the connection rate, not with the connections held. Amortised O(1) per
    /// removal.
    fn compact_timers(&mut self) {
        let live = self.slots.len() + self.timer_live.len();
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let (slots, timer_live) = (&self.slots, &mut self.timer_live);
        timer_live.retain(|(conn, _), _| {
            let (key, gen) = split_id(*conn);
            slots.get(key).is_some_and(|s| s.gen == gen)
        });
        self.timers.retain(|Reverse((t, timer))| match *timer {
            Timer::Conn { key, gen } => slots.get(key).is_some_and(|s| s.gen == gen && s.scheduled == Some(*t)),
            Timer::Handler { seq, conn, token } => timer_live.get(&(conn, token)).is_some_and(|&(live, _)| live == seq),
        });
        if self.timers.capacity() > 4 * self.timers.len() + 1024 {
            self.timers.shrink_to(2 * self.timers.len() + 1024);
        }
    }

    pub(super) fn schedule(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            Self::arm(&mut self.timers, key, slot);
        }
    }

    /// [`Server::schedule`] for a slot at hand: pushes a timer if the slot's earliest deadline is earlier than
    /// the one armed.
    #[inline]
    fn arm(timers: &mut BinaryHeap<Reverse<(Instant, Timer)>>, key: usize, slot: &mut Slot) {
        let armed = slot.scheduled;
        let earlier = match slot.draining {
            Some(d) => Some(d).filter(|d| armed.map_or(true, |a| *d < a)),
            None => slot.conn.deadline_to_arm(armed),
        };
        if let Some(d) = earlier {
            slot.scheduled = Some(d);
            timers.push(Reverse((d, Timer::Conn { key, gen: slot.gen })));
        }
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let (key, gen) = match timer {
                Timer::Conn { key, gen } => (key, gen),
                Timer::Handler { seq, conn, token } => {
                    self.fire_handler_timer(now, seq, conn, token);
                    continue;
                }
            };
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) else {
                continue;
            };
            slot.scheduled = None;
            if let Some(d) = slot.draining {
                if now >= d {
                    self.remove(key);
                } else {
                    self.schedule(key);
                }
                continue;
            }
            slot.conn.handle_timeout(now);
            self.mark_dirty(key);
        }
    }
}
