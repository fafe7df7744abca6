//! Reading: which socket the shell reads next and how much (fresh events, each for at most a work quantum; then
//! only probes; then the backlog), what a read brought (the PROXY header, TLS, the bytes for the core), and the
//! stash that keeps what a connection sent past its quantum.

use super::*;

impl Endpoint {
    /// Where the shell reads `op` to (see [`Read`]): `op.max` bytes in all, the first slice filled first. The
    /// second is empty except after a read straight into a message (the rest of a large frame, in the message's
    /// own buffer): then it is the start of the read buffer, for what follows the frame, so that one `readv` both
    /// ends the message and shows whether the socket is drained. An echo still waiting in the read buffer is
    /// queued first.
    #[inline]
    pub fn read_bufs(&mut self, op: &Read) -> (&mut [u8], &mut [u8]) {
        self.settle_direct();
        if self.target.is_some() {
            return self.target_bufs(op.max);
        }
        (&mut self.rbuf[..op.max], &mut [])
    }

    /// [`Endpoint::read_bufs`] for a read straight into a message: room in its buffer, then the read buffer for
    /// what follows. (The message always has room: [`Endpoint::poll_read`] asked for this read because it was
    /// waiting for those bytes, and nothing ran since.)
    #[cold]
    #[inline(never)]
    fn target_bufs(&mut self, max: usize) -> (&mut [u8], &mut [u8]) {
        if let Some((key, room)) = self.target {
            if let Some(room) = self.slots.get_mut(key).and_then(|s| s.conn.payload_target(room)) {
                let tail = max.saturating_sub(room.len()).min(self.rbuf.len());
                return (room, &mut self.rbuf[..tail]);
            }
            self.target = None;
        }
        debug_assert!(false, "a read into a message without room for it");
        let n = max.min(self.rbuf.len());
        (&mut self.rbuf[..n], &mut [])
    }

    /// The next read the shell must make, or `None` when this turn's reading is over: the connections with a
    /// fresh event, in order, each until its socket is drained, reading pauses or its burst caused a quantum
    /// (1 MiB) of work (then it goes to the backlog); past 2 MiB of fresh work, fresh events are only looked at;
    /// then the backlog, for 4 MiB of work.
    pub fn poll_read(&mut self, now: Instant) -> Option<Read> {
        self.settle_direct();
        loop {
            match self.burst {
                Some(Burst::Reading { key, .. }) => {
                    if let Some(r) = self.next_read(key) {
                        return Some(r);
                    }
                    self.end_burst();
                }
                Some(Burst::Probing { key, n, asked: false }) => {
                    self.burst = Some(Burst::Probing { key, n, asked: true });
                    return Some(Read { id: self.id_of(key), max: n, peek: false, count_only: false });
                }
                Some(Burst::Peeking { key } | Burst::Probing { key, .. }) => {
                    // Asked and never reported: it is read at its place in the backlog instead.
                    self.burst = None;
                    self.defer(key);
                }
                None => {}
            }
            if let Some(&(key, gen)) = self.fresh.get(self.fresh_at) {
                self.fresh_at += 1;
                if let Some(r) = self.begin_fresh(key, gen, now) {
                    return Some(r);
                }
                continue;
            }
            if !self.begin_backlog(now) {
                return None;
            }
        }
    }

    /// The next read of the connection being read, or `None` when its burst is over.
    fn next_read(&mut self, key: usize) -> Option<Read> {
        let slot = self.slots.get_mut(key)?;
        if !slot.flags.has(Flags::READ_READY) {
            return None;
        }
        if self.work >= QUANTUM {
            // Fairness: the rest waits for a later turn (which does not sleep); everyone else goes first.
            self.defer(key);
            return None;
        }
        if !slot.is_draining() {
            if !slot.wants_read(self.config.write_high_water) {
                return None; // paused; READ_READY stays set and reading resumes after a flush
            }
            if self.pressure && slot.held as usize >= self.config.memory_budget / 256 {
                // Memory pressure: what it holds stays as it is until the pressure ends (then it is read again).
                if !slot.flags.has(Flags::PRESSED) {
                    slot.flags.set(Flags::PRESSED);
                    self.pressed.push((key, self.table[key].gen));
                }
                return None;
            }
        }
        // The rest of a large frame is read straight into its message's buffer: no copy out of the read buffer.
        // When that read can end the frame, what follows it comes in the same read, into the read buffer.
        let due = slot.conn.payload_due();
        if due >= IN_PLACE_MIN && !slot.is_tls() && !slot.is_draining() {
            let room = due.min(IN_PLACE_MAX);
            self.target = Some((key, room));
            slot.flags.set(Flags::LARGE);
            let tail = if room == due { HEAD_READ } else { 0 };
            return Some(Read { id: self.id_of(key), max: room + tail, peek: false, count_only: false });
        }
        let max = if slot.flags.has(Flags::LARGE) { after_large(slot, due) } else { READ_BUF };
        Some(Read { id: self.id_of(key), max, peek: false, count_only: false })
    }

    /// A fresh event: read the connection now, or, once the fresh events have had their share, look first.
    fn begin_fresh(&mut self, key: usize, gen: u32, now: Instant) -> Option<Read> {
        let slot = self.slots.get(key).filter(|_| self.table[key].gen == gen)?;
        if slot.flags.has(Flags::DEFERRED) {
            return None; // read at its place in the backlog
        }
        if self.fresh_work < FRESH_PER_TURN {
            self.begin_burst(key, false, now);
            return None;
        }
        self.probe(key)
    }

    /// Starts reading a connection: input stashed at an earlier cut comes first.
    #[inline(always)]
    fn begin_burst(&mut self, key: usize, from_backlog: bool, now: Instant) {
        self.work = 0;
        if !self.stash.is_empty() && self.stash.contains_key(&key) && !self.resume_stash(key, from_backlog, now) {
            return;
        }
        self.burst = Some(Burst::Reading { key, from_backlog });
    }

    /// [`Endpoint::begin_burst`] for a connection with stashed input: feeds it first. Returns whether the
    /// connection is to be read from its socket now.
    #[inline(never)]
    fn resume_stash(&mut self, key: usize, from_backlog: bool, now: Instant) -> bool {
        if self.slots.get(key).is_some_and(|s| s.flags.has(Flags::STREAM)) && self.h2_resume(key, now) {
            self.account(from_backlog); // (a session has no socket: only its stash is read)
            return false;
        }
        if self.slots.get(key).is_some_and(|s| s.flags.has(Flags::THROTTLED)) {
            self.account(from_backlog); // its stash waits for the end of its rate-limit pause
            return false;
        }
        self.feed_stash(key, now);
        if self.stash.contains_key(&key) {
            self.account(from_backlog); // cut again, and deferred
            return false;
        }
        true
    }

    /// The connection being read is done for this turn.
    pub(super) fn end_burst(&mut self) {
        if let Some(Burst::Reading { from_backlog, .. }) = self.burst.take() {
            self.account(from_backlog);
        }
    }

    /// Charges a burst's work to the part of the turn it belongs to.
    fn account(&mut self, from_backlog: bool) {
        if from_backlog {
            if let Some((budget, _)) = self.backlog_turn.as_mut() {
                *budget = budget.saturating_sub(self.work);
            }
        } else {
            self.fresh_work += self.work;
        }
    }

    /// Takes the next connection of the backlog that may read now (each at most once per turn, for at most
    /// [`BACKLOG_PER_TURN`] of work in all); a connection with debt works off a quantum of it instead of reading.
    /// Returns whether one was begun.
    fn begin_backlog(&mut self, now: Instant) -> bool {
        let len = self.backlog.len();
        let (budget, left) = self.backlog_turn.get_or_insert((BACKLOG_PER_TURN, len));
        if *budget == 0 || *left == 0 {
            return false;
        }
        *left -= 1;
        let Some((key, gen, debt)) = self.backlog.pop_front() else { return false };
        let waiting = self.slots.get(key).is_some_and(|s| s.flags.has(Flags::DEFERRED)) && self.table[key].gen == gen;
        if waiting {
            if debt >= QUANTUM {
                self.backlog.push_back((key, gen, debt - QUANTUM));
            } else {
                self.slots[key].flags.clear(Flags::DEFERRED);
                self.begin_burst(key, true, now);
            }
        }
        true
    }

    /// Puts a connection at the back of the backlog (if it is not there already), with the work its burst
    /// caused past its quantum as its debt.
    pub(super) fn defer(&mut self, key: usize) {
        if self.work >= QUANTUM {
            Metrics::add(&self.shared.metrics.bursts_cut, 1);
        }
        let debt = self.work.saturating_sub(QUANTUM);
        if let Some(slot) = self.slots.get_mut(key).filter(|s| !s.flags.has(Flags::DEFERRED)) {
            slot.flags.set(Flags::DEFERRED);
            self.backlog.push_back((key, self.table[key].gen, debt));
        }
    }

    /// A fresh event in a turn that has done its share of work already: the connection is looked at (`MSG_PEEK`).
    /// What is plainly cheap is then read and handled; anything else is left in the socket and the connection
    /// goes to the backlog, so that a light client is not kept waiting behind hundreds of heavy ones that became
    /// ready at the same moment.
    fn probe(&mut self, key: usize) -> Option<Read> {
        let slot = &self.slots[key];
        if slot.is_draining()
            || slot.phase == Phase::Proxy
            || slot.is_tls()
            || !slot.wants_read(self.config.write_high_water)
            || slot.conn.payload_due() >= PROBE
        {
            // (The rest of a large frame is plainly not cheap: a look would only copy 64 KiB of it.)
            self.defer(key);
            return None;
        }
        self.work = 0;
        self.burst = Some(Burst::Peeking { key });
        // Only a compressed frame's first byte matters; otherwise the number of bytes waiting says it all.
        let count_only = slot.conn.deflate_params().is_none();
        Some(Read { id: self.id_of(key), max: PROBE, peek: true, count_only })
    }

    /// What a read made for [`Endpoint::poll_read`] came to: `Ok(n)` bytes in [`Endpoint::read_bufs`] (0: the
    /// peer's FIN), or the error (`WouldBlock`: the socket is drained). The bytes are handled at once: events go
    /// to the handler, and what it sends is queued (an echo may wait in the read buffer: poll the transmits
    /// before the next read).
    pub fn received(&mut self, read: Read, result: io::Result<usize>, now: Instant) {
        if let Ok(n) = result {
            if !self.steady_is_off() && self.steady(&read, n, now) {
                #[cfg(test)]
                {
                    self.steady_taken += 1;
                }
                return;
            }
        }
        let in_place = if self.target.is_some() { self.read_in_place(&read, &result, now) } else { None };
        let Some(key) = self.key_of(read.id) else { return };
        match self.burst {
            Some(Burst::Peeking { key: k }) if k == key && read.peek => return self.peeked(key, result, now),
            Some(Burst::Probing { key: k, asked: true, .. }) if k == key => return self.probe_read(key, result, now),
            _ => {}
        }
        match result {
            Ok(0) => {
                self.slots[key].flags.clear(Flags::READ_READY);
                self.end_burst();
                self.peer_gone(key, true, now);
            }
            Ok(n) => self.read_some(key, n, n < read.max, in_place, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.slots[key].flags.clear(Flags::READ_READY);
                self.end_burst();
            }
            Err(_) => {
                self.end_burst();
                self.peer_gone(key, false, now);
            }
        }
    }

    /// A read straight into a message's buffer ([`Endpoint::read_bufs`]) is reported to its connection: the part
    /// that went into the message. Returns how many bytes went on into the read buffer, or `None` if this was no
    /// such read.
    #[cold]
    #[inline(never)]
    fn read_in_place(&mut self, read: &Read, result: &io::Result<usize>, now: Instant) -> Option<usize> {
        let (_, room) = self.target.take().filter(|&(k, _)| read.id.index() == k)?;
        let n = *result.as_ref().unwrap_or(&0);
        if let Some(slot) = self.key_of(read.id).and_then(|key| self.slots.get_mut(key)) {
            slot.conn.payload_read(n.min(room), now);
            if n > room {
                slot.flags.clear(Flags::LARGE); // (the next header came with it: the next read is an ordinary one)
            }
        }
        Some(n.saturating_sub(room))
    }

    /// A read that ended a frame in its message went on with `after` bytes into the read buffer. The message is
    /// delivered first, on its own, so that its echo can be written from its buffer; while it is lent out so,
    /// the bytes after it wait in the stash (the connection is deferred, and its echo written now). Returns the
    /// bytes to feed now (0 if none, or if the connection is gone).
    #[cold]
    #[inline(never)]
    fn after_in_place(&mut self, key: usize, after: usize, now: Instant) -> usize {
        self.feed(key, false, 0, 0, false, now);
        if !self.slots.contains(key) {
            return 0;
        }
        if self.lent_out(key) {
            self.stash_rest(key, false, 0, after);
            return 0;
        }
        after
    }

    /// `n` bytes were read from a connection being read (`short`: fewer than asked, so the socket is drained).
    /// `in_place`: the read went straight into a message, and this many bytes of it on into the read buffer.
    fn read_some(&mut self, key: usize, n: usize, short: bool, in_place: Option<usize>, now: Instant) {
        self.work += n;
        let slot = &mut self.slots[key];
        if slot.is_draining() {
            // Discarded until the peer's FIN; a peer that sends a quantum after our FIN is not closing: drop it.
            if self.work >= QUANTUM {
                self.end_burst();
                self.remove(key, now);
            }
            return;
        }
        // A short read drained the socket (unless its FIN is known to follow): a new edge announces new bytes.
        let drained = short && !slot.flags.has(Flags::READ_CLOSED);
        if drained {
            slot.flags.clear(Flags::READ_READY);
        }
        Metrics::add(&self.shared.metrics.bytes_in, n as u64);
        let quiet = if in_place == Some(0) {
            // (Already in the message: what the connection has to report, it reports on empty input.)
            self.feed(key, false, 0, 0, false, now)
        } else {
            let n = match in_place {
                Some(after) => self.after_in_place(key, after, now),
                None if slot.phase == Phase::Proxy => self.strip_proxy_header(key, n, now),
                None => n,
            };
            n > 0 && self.input(key, n, short, now)
        };
        if !self.slots.contains(key) {
            return self.end_burst();
        }
        if !self.stash.is_empty() && self.stash.contains_key(&key) {
            // Cut at its quantum mid-read: deferred with the rest.
            self.end_burst();
            return self.write_through(key);
        }
        if drained {
            self.end_burst();
            if !quiet {
                self.write_through(key);
            }
        }
    }

    /// `rbuf[..n]` for a connection: decrypted first under TLS, then fed to the core; after a short read that
    /// leaves the peer mid-message, an immediate acknowledgement is ordered (after a full read the next read
    /// follows at once, and a sender in bulk gets its ACKs anyway).
    /// Returns whether the bytes left the connection quiet (see [`Endpoint::feed`]).
    pub(super) fn input(&mut self, key: usize, n: usize, short: bool, now: Instant) -> bool {
        if self.slots[key].is_tls() {
            self.feed_tls(key, n, short, now);
            return false;
        }
        let quiet = self.feed(key, false, 0, n, true, now);
        if short && !quiet && self.slots.get(key).is_some_and(|s| s.conn.is_mid_message()) {
            self.orders.push_back(Order::QuickAck(self.id_of(key)));
        }
        quiet
    }

    /// The look at a fresh event's socket: what is plainly cheap (the socket drained within [`PROBE`] bytes, and
    /// no compressed frame at the start) is read next; anything else waits in the socket for the backlog.
    fn peeked(&mut self, key: usize, result: io::Result<usize>, now: Instant) {
        self.burst = None;
        let n = match result {
            Ok(0) => return self.peer_gone(key, true, now),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.slots[key].flags.clear(Flags::READ_READY);
                return;
            }
            Err(_) => return self.defer(key),
        };
        let slot = &self.slots[key];
        // (Without deflate the look counted the bytes only: the read buffer holds none of them.)
        let compressed = slot.conn.deflate_params().is_some() && self.rbuf[0] & 0x40 != 0;
        if n >= PROBE || compressed || slot.flags.has(Flags::READ_CLOSED) {
            return self.defer(key);
        }
        self.burst = Some(Burst::Probing { key, n, asked: false });
    }

    /// The read of what the look found cheap.
    fn probe_read(&mut self, key: usize, result: io::Result<usize>, now: Instant) {
        self.burst = None;
        let n = match result {
            Ok(n) if n > 0 => n,
            _ => return self.defer(key), // (the backlog's read sees what happened)
        };
        Metrics::add(&self.shared.metrics.bytes_in, n as u64);
        self.slots[key].flags.clear(Flags::READ_READY);
        self.feed(key, false, 0, n, true, now);
        self.write_through(key);
    }

    /// Keeps `input[off..n]` (the read buffer, or the plaintext buffer when `plain`) for the connection's next
    /// burst, and defers it.
    pub(super) fn stash_rest(&mut self, key: usize, plain: bool, off: usize, n: usize) {
        self.stash_input(key, plain, off, n);
        self.defer(key);
    }

    /// Keeps `input[off..n]` for the connection's next burst. A long rest takes the buffer itself (a spare
    /// replaces it): nothing is copied.
    pub(super) fn stash_input(&mut self, key: usize, plain: bool, off: usize, n: usize) {
        if n - off <= STASH_COPY {
            // A short rest is copied out rather than holding a whole read buffer while it waits.
            let input = if plain { &self.pbuf } else { &self.rbuf };
            let buf = input[off..n].to_vec();
            self.stash.insert(key, Stash { plain, buf, start: 0, end: n - off });
            return;
        }
        let buf = if plain {
            std::mem::take(&mut self.pbuf)
        } else {
            let fresh =
                if self.spare_rbuf.is_empty() { vec![0; READ_BUF] } else { std::mem::take(&mut self.spare_rbuf) };
            std::mem::replace(&mut self.rbuf, fresh)
        };
        self.stash.insert(key, Stash { plain, buf, start: off, end: n });
    }

    /// Feeds a connection's stashed input (its buffer is put in place of the one it was read into for the while);
    /// it may be cut again and stashed anew. Its echoes are queued, not written from the stash.
    pub(super) fn feed_stash(&mut self, key: usize, now: Instant) {
        let Some(st) = self.stash.remove(&key) else { return };
        self.work += st.end - st.start;
        let slot_of_buf = if st.plain { &mut self.pbuf } else { &mut self.rbuf };
        let prev = std::mem::replace(slot_of_buf, st.buf);
        self.feed(key, st.plain, st.start, st.end, false, now);
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
                    slot.peer = crate::peer::Peer::new(source);
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
        slot.phase = Phase::Handshake;
        self.mark_dirty(key);
        rest
    }

    /// Decrypts `rbuf[..n]` and feeds the plaintext on; a TLS fault ends the connection after its alert is sent.
    #[cfg(feature = "tls")]
    fn feed_tls(&mut self, key: usize, n: usize, short: bool, now: Instant) {
        let Some(tls) = self.slots.get_mut(key).and_then(|s| s.tls.as_mut()) else { return };
        let mut plain = std::mem::take(&mut self.pbuf);
        plain.clear();
        let result = tls.receive(&self.rbuf[..n], &mut plain);
        let len = plain.len();
        self.pbuf = plain;
        self.mark_dirty(key);
        if self.slots[key].phase == Phase::Handshake && !self.slots[key].flags.has(Flags::H2) {
            self.alpn_chose_h2(key);
        }
        match result {
            Err(e) => {
                if !self.config.prod {
                    log::debug!(target: "wskit::server", "{} TLS: {e}", self.slots[key].peer);
                }
                self.slots[key].conn.abort(now);
            }
            Ok(r) => {
                if len > 0 {
                    self.feed(key, true, 0, len, false, now);
                }
                // The socket is drained and a TLS record is still incomplete, or the message is: acknowledge now.
                if self.slots.get(key).is_some_and(|s| short && (len == 0 || s.conn.is_mid_message())) {
                    self.orders.push_back(Order::QuickAck(self.id_of(key)));
                }
                if r.peer_closed && self.slots.contains(key) {
                    self.peer_gone(key, true, now);
                }
            }
        }
        if self.pbuf.capacity() > READ_BUF * 2 {
            self.pbuf = Vec::new();
        }
    }

    #[cfg(not(feature = "tls"))]
    fn feed_tls(&mut self, key: usize, n: usize, _short: bool, now: Instant) {
        self.feed(key, false, 0, n, true, now);
    }
}

/// What a read that can end a frame read in place asks beyond that frame (into the read buffer, in the same
/// vectored read), and what the first read after one that fell short of the frame's end asks beyond it: a frame
/// header and some, so that when the next frame is large too, its payload goes straight into its message rather
/// than first through the read buffer (at 1 MiB that copy was 128 KiB a message).
const HEAD_READ: usize = 4096;

/// The read after one straight into a large frame, once: what is left of that frame (`due`, under
/// [`IN_PLACE_MIN`]: a short read, or a frame just over [`IN_PLACE_MAX`]) and [`HEAD_READ`] more.
#[cold]
fn after_large(slot: &mut Slot, due: usize) -> usize {
    slot.flags.clear(Flags::LARGE);
    (due + HEAD_READ).min(READ_BUF)
}
