//! Writing: which bytes the shell writes next (an echo from where it lies, a connection's queue right after its
//! read, then at the end of the turn every connection the turn touched, within the turn's write budget), what
//! each write came to, and the steps after a connection's flush (its queue counted, a slow reader dropped,
//! `on_drain`, the close, write interest, its timer, reading resumed).

use super::*;

impl Endpoint {
    /// The next bytes the shell must write, or `None` when nothing is due now. Poll after every
    /// [`Endpoint::received`] (an echo written from the read buffer must go before the next read), and after
    /// [`Endpoint::end_turn`] until `None` (the end of the turn is carried out between these calls).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        if self.in_flight.is_some() {
            self.never_reported(now);
        }
        let what = self.next_transmit(now)?;
        Some(self.transmit_of(what))
    }

    /// False when [`Endpoint::poll_transmit`] would return `None` now (a shell may skip the call).
    #[inline(always)]
    pub fn may_transmit(&self) -> bool {
        self.in_flight.is_some() || self.direct.is_some() || self.flushing.key.is_some() || !self.nothing_listed()
    }

    /// A transmit handed out and never reported: nothing of it was written.
    #[cold]
    #[inline(never)]
    fn never_reported(&mut self, now: Instant) {
        let id = self.in_flight_id();
        self.sent(id, Ok(0), now);
    }

    fn in_flight_id(&self) -> ConnId {
        let key = match self.in_flight {
            Some(InFlight::Direct) => match self.direct {
                Some(Direct::Input { key, .. } | Direct::Lent { key, .. }) => key,
                None => return ConnId(0),
            },
            Some(InFlight::Queue { key, .. }) => key,
            #[cfg(feature = "tls")]
            Some(InFlight::Tls { key, .. }) => key,
            None => return ConnId(0),
        };
        self.id_of(key)
    }

    /// Picks the next transmit and records it as in flight.
    #[inline(always)]
    fn next_transmit(&mut self, now: Instant) -> Option<InFlight> {
        if self.direct.is_some() {
            self.in_flight = Some(InFlight::Direct);
            return self.in_flight;
        }
        if self.flushing.key.is_none() && self.nothing_listed() {
            return None;
        }
        self.next_queued(now)
    }

    /// [`Endpoint::next_transmit`] once connections' queues are to be flushed (out of line: the steady echo's
    /// path, written from where it lies, needs none of it).
    #[inline(never)]
    fn next_queued(&mut self, now: Instant) -> Option<InFlight> {
        loop {
            if let Some((key, steps)) = self.flushing.key {
                if let Some(f) = self.chunk(key, now) {
                    self.in_flight = Some(f);
                    return Some(f);
                }
                self.flushing.key = None;
                self.flushed(key, steps, now);
                continue;
            }
            if !self.next_to_flush(now) {
                return None;
            }
        }
    }

    /// The bytes connection `key` has to write next, if it may write now.
    fn chunk(&mut self, key: usize, now: Instant) -> Option<InFlight> {
        let slot = self.slots.get_mut(key)?;
        if slot.flags.has(Flags::BLOCKED) || slot.is_draining() {
            return None;
        }
        if slot.flags.has(Flags::STREAM) {
            // A session writes through its socket's HTTP/2 connection, which the socket's own flush writes.
            self.h2_pull(key, now);
            return None;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = slot.tls.as_mut() {
            // Control frames go out at the next frame boundary, so only a batch is encrypted ahead.
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
            return (len > 0).then_some(InFlight::Tls { key, len });
        }
        let len = if slot.conn.has_shared() {
            let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
            let k = slot.conn.out_slices(&mut parts);
            parts[..k].iter().map(|p| p.len()).sum()
        } else {
            slot.conn.out().len()
        };
        (len > 0).then_some(InFlight::Queue { key, len })
    }

    /// The slices of a transmit picked by [`Endpoint::next_transmit`].
    fn transmit_of(&self, f: InFlight) -> Transmit<'_> {
        let (key, head, rest) = match (f, &self.direct) {
            (InFlight::Direct, Some(Direct::Input { key, start, end, .. })) => {
                (*key, &self.rbuf[*start..*end], Rest::None)
            }
            (InFlight::Direct, Some(Direct::Lent { key, head, hl })) => {
                (*key, &head[..*hl], Rest::One(self.slots[*key].conn.delivered().unwrap_or_default()))
            }
            (InFlight::Direct, None) => unreachable!("an echo in flight"),
            (InFlight::Queue { key, .. }, _) => {
                let conn = &self.slots[key].conn;
                (key, conn.out(), if conn.has_shared() { Rest::Queue(conn) } else { Rest::None })
            }
            #[cfg(feature = "tls")]
            (InFlight::Tls { key, .. }, _) => {
                (key, self.slots[key].tls.as_ref().map_or(&[][..], |t| t.out()), Rest::None)
            }
        };
        Transmit { id: self.id_of(key), head, rest }
    }

    /// What the write of the last [`Transmit`] came to: `Ok(n)` bytes taken by the socket (fewer than offered:
    /// it is full, and is not written again before a writable event), or the error (`WouldBlock` counts as 0
    /// bytes; anything else means the peer is gone).
    #[inline(always)]
    pub fn sent(&mut self, id: ConnId, result: io::Result<usize>, now: Instant) {
        let Some(f) = self.in_flight.take() else { return };
        if let (InFlight::Direct, Some(Direct::Input { start, end, .. }), Ok(n)) = (f, self.direct, &result) {
            if *n == end - start {
                return self.echo_written(*n);
            }
        }
        self.sent_in_part(f, id, result, now);
    }

    /// The whole echo went: nothing to queue.
    #[inline(always)]
    pub(super) fn echo_written(&mut self, n: usize) {
        self.direct = None;
        Metrics::add(&self.shared.metrics.bytes_out, n as u64);
    }

    /// [`Endpoint::sent`] for anything but an echo written whole.
    #[inline(never)]
    fn sent_in_part(&mut self, f: InFlight, id: ConnId, result: io::Result<usize>, now: Instant) {
        let key = match (f, self.direct) {
            (InFlight::Direct, Some(Direct::Input { key, .. } | Direct::Lent { key, .. })) => key,
            (InFlight::Direct, None) => return,
            (InFlight::Queue { key, .. }, _) => key,
            #[cfg(feature = "tls")]
            (InFlight::Tls { key, .. }, _) => key,
        };
        debug_assert_eq!(id, self.id_of(key), "a write is reported for the connection it was made for");
        let written = match result {
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
            Err(_) => None,
        };
        let n = written.unwrap_or(0);
        let (key, len) = match f {
            InFlight::Direct => match self.direct {
                Some(d) => self.sent_direct(d, n),
                None => unreachable!("an echo in flight"),
            },
            InFlight::Queue { key, len } => {
                self.slots[key].conn.consume_out(n);
                (key, len)
            }
            #[cfg(feature = "tls")]
            InFlight::Tls { key, len } => {
                if let Some(t) = self.slots[key].tls.as_mut() {
                    t.consume_out(n);
                }
                (key, len)
            }
        };
        Metrics::add(&self.shared.metrics.bytes_out, n as u64);
        if self.flushing.key.is_some_and(|(k, _)| k == key) {
            self.flushing.written += n;
        }
        if written.is_none() {
            self.flushing.key = self.flushing.key.filter(|(k, _)| *k != key);
            return self.peer_gone(key, false, now);
        }
        if n < len {
            if self.slots[key].set_blocked() {
                self.orders.push_back(Order::MeasureSendBuffer(self.id_of(key)));
            }
            if matches!(f, InFlight::Direct) {
                // An echo cut short is queued now: the end of the turn asks for write interest.
                self.mark_dirty(key);
            }
        }
    }

    /// An echo written from where it lies: what the socket did not take is queued. Returns the connection and the
    /// frame's length.
    fn sent_direct(&mut self, d: Direct, n: usize) -> (usize, usize) {
        self.direct = None;
        match d {
            Direct::Input { key, start, hl, end } => {
                let slot = &mut self.slots[key];
                slot.conn.sent_direct(&self.rbuf[start..start + hl], &self.rbuf[start + hl..end], n);
                (key, end - start)
            }
            Direct::Lent { key, head, hl } => {
                let slot = &mut self.slots[key];
                let len = hl + slot.conn.delivered().map_or(0, <[u8]>::len);
                slot.conn.sent_delivered_direct(&head[..hl], n);
                slot.conn.reclaim();
                take_back(&mut self.bufs, &mut slot.conn);
                (key, len)
            }
        }
    }

    /// Queues a connection to be written now, after its read burst: with hundreds of connections ready at once,
    /// the first one's answer does not wait for the last one's processing (p99 round trip). Still one send per
    /// connection per turn in the usual case; the end of the turn finds nothing left to write.
    #[inline]
    pub(super) fn write_through(&mut self, key: usize) {
        if let Some(slot) = self.slots.get(key) {
            if slot.wants_write() && !slot.flags.has(Flags::BLOCKED) && !slot.is_draining() {
                self.through.push((key, self.table[key].gen));
            }
        }
    }

    /// Chooses the next connection to flush: one to write through now, or, at the end of the turn, what an
    /// earlier turn left first, then the most recently touched first, until the turn has written
    /// [`TURN_WRITES`] (the rest keep their place, ahead of anything touched later, for the next turn, which
    /// does not wait). Then the memory budget is checked (a second pass finishes those it dropped). Returns
    /// whether one was chosen.
    #[inline(always)]
    fn next_to_flush(&mut self, now: Instant) -> bool {
        if self.nothing_listed() {
            return false;
        }
        self.next_to_flush_listed(now)
    }

    /// No connection is listed to be written through and the turn is not ending: nothing to flush (the steady
    /// echo's case: its answer went out from where it lay).
    #[inline(always)]
    fn nothing_listed(&self) -> bool {
        self.through.is_empty() && !self.flushing.ending
    }

    /// [`Endpoint::next_to_flush`] once there is a list to look at.
    fn next_to_flush_listed(&mut self, now: Instant) -> bool {
        while let Some((key, gen)) = self.through.pop() {
            if self.slots.contains(key) && self.table[key].gen == gen {
                (self.flushing.key, self.flushing.written) = (Some((key, false)), 0);
                return true;
            }
        }
        if !self.flushing.ending {
            return false;
        }
        loop {
            // Light connections first, whatever the budget; then what earlier turns left; then the rest.
            let (key, carried, light) = match self.light.pop() {
                Some(key) => (key, false, true),
                None => match self.carried.pop() {
                    Some(key) => (key, true, false),
                    None => match self.dirty.pop() {
                        Some(key) => (key, false, false),
                        None => return self.end_of_lists(now),
                    },
                },
            };
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.flags.has(Flags::DIRTY)) else {
                continue; // gone, or an entry left below a newer one
            };
            let over = self.flushing.turn_written >= TURN_WRITES;
            if over && !light && !slot.flags.has(Flags::BLOCKED) && slot.wants_write() {
                if carried {
                    self.carried.push(key);
                } else {
                    self.dirty.push(key);
                    // (`carried` is empty here: swapping keeps both allocations.)
                    std::mem::swap(&mut self.carried, &mut self.dirty);
                }
                return self.end_of_lists(now);
            }
            slot.flags.clear(Flags::DIRTY);
            if slot.is_draining() {
                continue;
            }
            if slot.is_quiet(self.table[key].queued()) {
                // Nothing to write, count, tell or resume: only its timer may need an earlier deadline.
                turn::arm(&mut self.timers, key, self.table[key].gen, slot);
                continue;
            }
            (self.flushing.key, self.flushing.written) = (Some((key, true)), 0);
            return true;
        }
    }

    /// The end of the turn has served its lists: the budget is checked once (connections it drops are
    /// finished in a second pass, with a write budget of its own); then the turn is over.
    fn end_of_lists(&mut self, now: Instant) -> bool {
        if !self.flushing.budget_checked {
            self.flushing.budget_checked = true;
            if self.enforce_budget(now) {
                self.flushing.turn_written = 0;
                return self.next_to_flush(now);
            }
        }
        self.flushing.ending = false;
        // What waits for the next turn's end (and keeps the loop from sleeping until then).
        self.dirty.append(&mut self.later);
        false
    }

    /// A connection's flush is over (written out, or its socket full): a peer that is gone goes now; at the end
    /// of the turn, the steps after a flush.
    fn flushed(&mut self, key: usize, steps: bool, now: Instant) {
        let written = std::mem::take(&mut self.flushing.written);
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.flags.has(Flags::GONE) {
            self.notify_close(key, now);
            return self.remove(key, now);
        }
        if steps {
            self.flushing.turn_written += written;
            self.after_flush(key, now);
        }
    }

    /// After a connection's end-of-turn flush: its queue counted (a peer that does not read is dropped), the
    /// handler told when its queue drained, the connection finished once over, its write interest and timer
    /// brought up to date, and reading resumed at the next turn if it was held back.
    fn after_flush(&mut self, key: usize, now: Instant) {
        let slot = &mut self.slots[key];
        take_back(&mut self.bufs, &mut slot.conn);
        let m = &self.shared.metrics;
        let queued = recount(slot, &mut self.table[key], m, &mut self.held);
        if queued > self.queue_limit && !slot.conn.is_finished() {
            if self.flushing.drops < DROPS_PER_TURN {
                // A peer that does not read: drop it rather than hold its queue (the close frame would not pass).
                self.flushing.drops += 1;
                Metrics::add(&m.slow_closed, 1);
                slot.drop_slow(queued, now);
            } else {
                // This turn has dropped its share: at the next one (it is not read or written meanwhile).
                slot.flags.set(Flags::DIRTY);
                self.later.push(key);
                return;
            }
        }
        let hw = self.config.write_high_water;
        if queued > hw {
            slot.flags.set(Flags::OVER_HIGH);
        } else if slot.flags.has(Flags::OVER_HIGH) && queued <= hw / 4 && slot.is_open_phase() {
            slot.flags.clear(Flags::OVER_HIGH);
            let id = self.id_of(key);
            let peer = self.slots[key].peer;
            let mut ctx = Ctx::new(id, peer, &mut self.queue, &self.shared.metrics, &self.table, hw);
            let handler = &mut self.handler;
            guarded(id, "on_drain", || handler.on_drain(&mut ctx));
            // Anything it sent makes this connection dirty again, and it is flushed again in this same pass.
            self.apply_commands(now);
        }
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.finished() {
            return self.finish(key, now);
        }
        let write = slot.wants_write();
        if write != slot.flags.has(Flags::WRITE_INTEREST) && !slot.flags.has(Flags::STREAM) {
            if write {
                slot.flags.set(Flags::WRITE_INTEREST);
            } else {
                slot.flags.clear(Flags::WRITE_INTEREST);
            }
            self.orders.push_back(Order::Interest { id: conn_id(key, self.table[key].gen), write });
        }
        if slot.flags.has(Flags::H2 | Flags::STREAM) {
            self.h2_after_flush(key);
        }
        let Some(slot) = self.slots.get_mut(key) else { return };
        let resume = slot.flags.has(Flags::READ_READY)
            && !slot.flags.has(Flags::DEFERRED)
            && slot.wants_read(self.config.write_high_water);
        turn::arm(&mut self.timers, key, self.table[key].gen, slot);
        if resume {
            // Read on at the next turn, not in this one: reading here could queue more, flush, drain and read
            // again for as long as the client sends, and the turn would never end.
            self.defer(key);
        }
    }
}

/// Bytes `skip..skip + limit` of a transmit's `parts` (taken as one run of bytes), as slices of them in `cut`,
/// none empty; returns how many. A shell that writes a large transmit in two sends, or resumes one that a full
/// socket cut short, hands the socket these.
pub(crate) fn cut_parts<'a>(
    parts: &[&'a [u8]],
    mut skip: usize,
    mut limit: usize,
    cut: &mut [&'a [u8]; MAX_PARTS],
) -> usize {
    let mut n = 0;
    for p in parts {
        if limit == 0 {
            break;
        }
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        let q = &p[skip..];
        let q = &q[..q.len().min(limit)];
        (skip, limit) = (0, limit - q.len());
        cut[n] = q;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every range of every split of a run of bytes into parts (empty ones among them) is cut into slices whose
    /// concatenation is that range of the run, with no empty slice: what a shell's split send hands the socket.
    #[test]
    fn every_range_of_the_parts_is_cut_exactly() {
        let run: Vec<u8> = (0..12).collect();
        let splits: [&[usize]; 5] = [&[12], &[0, 12, 0], &[1, 1, 10], &[5, 0, 7], &[3, 3, 3, 3]];
        for lens in splits {
            let mut parts = Vec::new();
            let mut at = 0;
            for &len in lens {
                parts.push(&run[at..at + len]);
                at += len;
            }
            let end = run.len();
            for skip in 0..=end + 1 {
                for limit in (0..=end + 1).chain([usize::MAX]) {
                    let mut cut = [&[][..]; MAX_PARTS];
                    let n = cut_parts(&parts, skip, limit, &mut cut);
                    let want = &run[skip.min(end)..skip.saturating_add(limit).min(end)];
                    assert_eq!(cut[..n].concat(), want, "parts {lens:?}, skip {skip}, limit {limit}");
                    assert!(cut[..n].iter().all(|c| !c.is_empty()), "parts {lens:?}, skip {skip}, limit {limit}");
                }
            }
        }
    }
}
