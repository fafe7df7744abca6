//! Applying the commands handlers queued: sends, the zero-copy echo, closes, broadcasts, topics, pauses and
//! handler timers. Nothing here touches a socket: an echo that can go out from where it lies becomes the next
//! transmit ([`Direct`]).

use super::*;

/// What applying the handlers' commands touches, borrowed apart from the rest of the endpoint.
struct Apply<'s> {
    slots: &'s mut Slab<Slot>,
    table: &'s [Entry],
    dirty: &'s mut Vec<usize>,
    pool: &'s mut DeflatePool,
    bufs: &'s mut BufPool,
    m: &'s Metrics,
    /// The echo waiting to be written from where it lies, if any.
    direct: &'s mut Option<Direct>,
    rbuf: &'s mut [u8],
    /// Message bytes queued, every receiver counted: work charged to the connection being read.
    charged: usize,
}

/// Counts one message of `n` payload bytes queued, and charges its work.
#[inline]
fn sent(m: &Metrics, charged: &mut usize, n: usize) {
    Metrics::add(&m.messages_out, 1);
    Metrics::add(&m.payload_out, n as u64);
    *charged += n;
}

/// Queues an echo that was to be written from where it lies (nothing of it was written): before anything else
/// is queued to its connection, or before the read buffer is reused.
pub(super) fn settle(direct: &mut Option<Direct>, slots: &mut Slab<Slot>, rbuf: &[u8]) {
    match direct.take() {
        Some(Direct::Input { key, start, hl, end }) => {
            if let Some(slot) = slots.get_mut(key) {
                slot.conn.sent_direct(&rbuf[start..start + hl], &rbuf[start + hl..end], 0);
            }
        }
        Some(Direct::Lent { key, head, hl }) => {
            if let Some(slot) = slots.get_mut(key) {
                slot.conn.sent_delivered_direct(&head[..hl], 0);
            }
        }
        None => {}
    }
}

/// The connection `id` names, with any echo of its own still waiting queued first (so what is queued now goes
/// after it).
#[inline]
fn target<'a>(
    direct: &mut Option<Direct>,
    slots: &'a mut Slab<Slot>,
    table: &[Entry],
    rbuf: &[u8],
    id: ConnId,
) -> Option<(usize, &'a mut Slot)> {
    let (key, _) = split_id(id.0);
    if matches!(*direct, Some(Direct::Input { key: k, .. } | Direct::Lent { key: k, .. }) if k == key) {
        settle(direct, slots, rbuf);
    }
    slot_of(slots, table, id)
}

impl Apply<'_> {
    /// Queues a message to a connection of this loop; false if it is not one.
    fn message(&mut self, to: ConnId, text: bool, bytes: &[u8]) -> bool {
        let Some((key, slot)) = target(self.direct, self.slots, self.table, self.rbuf, to) else { return false };
        if bytes.len() >= SPARE_MIN {
            lend(self.bufs, &mut slot.conn);
        }
        match slot.conn.send_with(message(text, bytes), self.pool) {
            Ok(()) => sent(self.m, &mut self.charged, bytes.len()),
            Err(e) => log::debug!(target: "wskit::server", "send to {to}: {e}"),
        }
        touch(self.dirty, key, slot);
        true
    }

    /// Sends the message being handled back to its sender from where it lies (see [`EchoSrc`]).
    #[inline(always)]
    fn echo(&mut self, to: ConnId, text: bool, len: usize, src: Option<EchoSrc>, pbuf: &[u8]) {
        let Some((key, slot)) = target(self.direct, self.slots, self.table, self.rbuf, to) else { return };
        if len >= SPARE_MIN {
            lend(self.bufs, &mut slot.conn);
        }
        let pool = &mut *self.pool;
        let result = match src {
            _ if slot.conn.delivered().is_some() => {
                let last = src.is_some_and(|s| s.last);
                echo_lent(key, slot, text, len, last, pool, self.direct)
            }
            Some(EchoSrc { plain: false, end, direct, .. }) => {
                echo_from_read(key, slot, self.rbuf, (end - len, end), text, direct, pool, self.direct)
            }
            Some(EchoSrc { plain: true, end, .. }) => slot.conn.send_with(message(text, &pbuf[end - len..end]), pool),
            None => Err(crate::SendError::NotOpen),
        };
        match result {
            Ok(()) => {
                sent(self.m, &mut self.charged, len);
                // An echo without compression costs what its read did, already counted; compressed, it costs the
                // compression.
                let echo_work = if slot.flags.has(Flags::DEFLATE) { DEFLATE_WEIGHT * len } else { 0 };
                self.charged = self.charged - len + echo_work;
            }
            Err(e) => log::debug!(target: "wskit::server", "echo to {to}: {e}"),
        }
        touch(self.dirty, key, slot);
    }

    fn frame(&mut self, to: ConnId, fin: bool, op: crate::frame::OpCode, payload: &[u8]) {
        if let Some((key, slot)) = target(self.direct, self.slots, self.table, self.rbuf, to) {
            if let Err(e) = slot.conn.send_frame(fin, op, payload) {
                log::debug!(target: "wskit::server", "send to {to}: {e}");
            }
            touch(self.dirty, key, slot);
        }
    }

    /// Starts closing a connection of this loop; false if it is not one.
    fn close(&mut self, to: ConnId, code: CloseCode, reason: &str, now: Instant) -> bool {
        let Some((key, slot)) = target(self.direct, self.slots, self.table, self.rbuf, to) else { return false };
        if let Err(e) = slot.conn.close(code, reason, now) {
            log::debug!(target: "wskit::server", "close {to}: {e}");
        }
        touch(self.dirty, key, slot);
        true
    }

    /// Queues one shared message to every open connection but `except`.
    fn broadcast(&mut self, mut prepared: PreparedMessage, except: Option<ConnId>) {
        settle(self.direct, self.slots, self.rbuf);
        let n = prepared.payload.len();
        for (key, slot) in self.slots.iter_mut() {
            if slot.is_open_phase() && slot.conn.is_open() && Some(conn_id(key, self.table[key].gen)) != except {
                if slot.conn.send_prepared(&mut prepared, self.pool).is_ok() {
                    sent(self.m, &mut self.charged, n);
                }
                touch(self.dirty, key, slot);
            }
        }
    }

    /// Queues one shared message to a topic's subscribers on this loop but `except`.
    fn publish(&mut self, mut prepared: PreparedMessage, subs: &[ConnId], except: Option<ConnId>) {
        let n = prepared.payload.len();
        for &id in subs.iter().filter(|id| Some(**id) != except) {
            if let Some((key, slot)) = target(self.direct, self.slots, self.table, self.rbuf, id) {
                if slot.conn.is_open() && slot.conn.send_prepared(&mut prepared, self.pool).is_ok() {
                    sent(self.m, &mut self.charged, n);
                    touch(self.dirty, key, slot);
                }
            }
        }
    }
}

/// Echoes a message that lies in the read buffer. The last message of a plain read, with nothing queued ahead,
/// is answered from the read buffer itself: its header is written over the (consumed) bytes before the payload
/// -- the client's header was 4 bytes longer, mask included -- and the frame becomes the next transmit, never
/// copied.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn echo_from_read(
    key: usize,
    slot: &mut Slot,
    rbuf: &mut [u8],
    (start, end): (usize, usize),
    text: bool,
    direct_ok: bool,
    pool: &mut DeflatePool,
    direct: &mut Option<Direct>,
) -> Result<(), crate::SendError> {
    let header = (direct_ok && direct.is_none()).then(|| slot.conn.direct_header(text, end - start)).flatten();
    match header {
        Some((head, hl)) if start >= hl => {
            let at = &mut rbuf[start - hl..start];
            // The usual 2-byte header by hand (a variable-length copy calls memcpy).
            if let ([a0, a1], [h0, h1, ..]) = (&mut *at, head) {
                (*a0, *a1) = (h0, h1);
            } else {
                at.copy_from_slice(&head[..hl]);
            }
            *direct = Some(Direct::Input { key, start: start - hl, hl, end });
            Ok(())
        }
        _ => slot.conn.send_with(message(text, &rbuf[start..end]), pool),
    }
}

/// Echoes a long message assembled in the connection (from several reads or frames): from the buffer it was
/// assembled in, header and payload as two slices of one vectored send, when it is the last thing of its read;
/// else copied into the queue.
fn echo_lent(
    key: usize,
    slot: &mut Slot,
    text: bool,
    len: usize,
    last: bool,
    pool: &mut DeflatePool,
    direct: &mut Option<Direct>,
) -> Result<(), crate::SendError> {
    let worth = len >= DIRECT_MIN && last && !slot.is_tls() && !slot.flags.has(Flags::STREAM) && direct.is_none();
    match worth.then(|| slot.conn.direct_header(text, len)).flatten() {
        Some((head, hl)) => {
            *direct = Some(Direct::Lent { key, head, hl });
            Ok(())
        }
        None => slot.conn.send_delivered(text, pool),
    }
}

/// Subscribes a connection of this loop to a topic, or unsubscribes it (the group learns of a topic's first
/// subscriber on this loop and of its last).
fn subscribe(
    slots: &mut Slab<Slot>,
    table: &[Entry],
    topics: &mut HashMap<Box<str>, Vec<ConnId>>,
    group: Option<&dyn Siblings>,
    to: ConnId,
    on: bool,
    topic: &str,
) {
    let Some((_, slot)) = slot_of(slots, table, to).filter(|(_, s)| s.is_open_phase()) else { return };
    let subscribed = slot.topics.as_slice().iter().position(|t| &**t == topic);
    match (on, subscribed) {
        (true, None) => {
            slot.topics.edit(|t| t.push(topic.into()));
            let subs = topics.entry(topic.into()).or_default();
            subs.push(to);
            if let (1, Some(g)) = (subs.len(), group) {
                g.interest(topic, true);
            }
        }
        (false, Some(i)) => {
            slot.topics.edit(|t| t.swap_remove(i));
            unsubscribe(topics, topic, to, group);
        }
        _ => {}
    }
}

impl Endpoint {
    /// Whether connection `key`'s message is lent out for an echo still to be written from its buffer (it stays
    /// in the connection until then).
    #[inline]
    pub(super) fn lent_out(&self, key: usize) -> bool {
        matches!(self.direct, Some(Direct::Lent { key: k, .. }) if k == key)
    }

    /// Queues the echo waiting to be written from where it lies (see [`settle`]).
    #[inline]
    pub(super) fn settle_direct(&mut self) {
        if let (Some(Direct::Input { key, .. } | Direct::Lent { key, .. }), None) = (self.direct, self.in_flight) {
            settle(&mut self.direct, &mut self.slots, &self.rbuf);
            // Queued now: the end of the turn writes it.
            self.mark_dirty(key);
        }
    }

    #[inline]
    pub(super) fn apply_commands(&mut self, now: Instant) {
        if !self.queue.cmds.is_empty() {
            self.apply_queued(now);
        }
    }

    /// [`Endpoint::apply_commands`] when there are some.
    #[inline(never)]
    fn apply_queued(&mut self, now: Instant) {
        let alone = match self.queue.cmds[..] {
            [Cmd::Echo { to, text, len }] => Some((to, text, len)),
            _ => None,
        };
        // The steady echo: one message back to its sender from where it lies, nothing else asked.
        match alone {
            Some((to, text, len)) if self.echo_alone(to, text, len) => self.queue.cmds.clear(),
            _ => self.apply_all(now),
        }
    }

    /// [`Endpoint::apply_commands`] when the only command is an echo that can be written from the read buffer:
    /// its header goes in front of the payload and it becomes the next transmit. False if it cannot.
    #[inline]
    fn echo_alone(&mut self, to: ConnId, text: bool, len: usize) -> bool {
        let Some(EchoSrc { direct: true, end, .. }) = self.echo_src else { return false };
        let (key, gen) = split_id(to.0);
        let Some(slot) = self.slots.get_mut(key).filter(|_| self.table[key].gen == gen && self.direct.is_none()) else {
            return false;
        };
        // (A message the connection assembled is not in the input, whatever `end` says: the general path lends
        // it out from the connection.)
        if slot.conn.delivered().is_some() {
            return false;
        }
        let start = end - len;
        match slot.conn.direct_header(text, len) {
            Some((head, hl)) if start >= hl => {
                let at = &mut self.rbuf[start - hl..start];
                if let ([a0, a1], [h0, h1, ..]) = (&mut *at, head) {
                    (*a0, *a1) = (h0, h1);
                } else {
                    at.copy_from_slice(&head[..hl]);
                }
                self.direct = Some(Direct::Input { key, start: start - hl, hl, end });
                let m = &self.shared.metrics;
                Metrics::add(&m.messages_out, 1);
                Metrics::add(&m.payload_out, len as u64);
                // (An uncompressed echo costs what its read did, already counted.)
                if slot.flags.has(Flags::DEFLATE) {
                    self.work += DEFLATE_WEIGHT * len;
                }
                // (The end of its feed marks it for the end of the turn if anything is left to do.)
                true
            }
            _ => false,
        }
    }

    #[inline(never)]
    fn apply_all(&mut self, now: Instant) {
        let Endpoint {
            slots,
            table,
            queue,
            dirty,
            shared,
            pool,
            topics,
            timers,
            group,
            loop_index,
            bufs,
            echo_src,
            rbuf,
            pbuf,
            shared_bytes,
            direct,
            ..
        } = self;
        let (group, loop_index) = (group.as_deref(), *loop_index);
        let m = &shared.metrics;
        let mut a = Apply { slots, table, dirty, pool, bufs, m, direct, rbuf, charged: 0 };
        // A command for a connection of a sibling loop goes to that loop's queue.
        let sibling = |to: ConnId| group.filter(|_| to.loop_index() != loop_index);
        // Answers to deferred upgrades need the whole endpoint: after the other commands.
        let mut answers = Vec::new();
        for cmd in &queue.cmds {
            match *cmd {
                Cmd::Message { to, text, start, end } => {
                    let bytes = &queue.arena[start..end];
                    if !a.message(to, text, bytes) {
                        if let Some(g) = sibling(to) {
                            g.send_to_loop(to, text, bytes);
                        }
                    }
                }
                Cmd::Echo { to, text, len } => a.echo(to, text, len, *echo_src, pbuf),
                Cmd::Frame { to, fin, op, start, end } => a.frame(to, fin, op, &queue.arena[start..end]),
                Cmd::Close { to, code, start, end } => {
                    let reason = std::str::from_utf8(&queue.arena[start..end]).unwrap_or("");
                    if !a.close(to, code, reason, now) {
                        if let Some(g) = sibling(to) {
                            g.close_on_loop(to, code, reason);
                        }
                    }
                }
                Cmd::Broadcast { text, except, start, end } => {
                    let prepared = PreparedMessage::new(text, &queue.arena[start..end]).counted(shared_bytes.clone());
                    a.broadcast(prepared, except);
                }
                Cmd::Subscribe { to, on, start, end } => {
                    if let Ok(topic) = std::str::from_utf8(&queue.arena[start..end]) {
                        subscribe(a.slots, a.table, topics, group, to, on, topic);
                    }
                }
                Cmd::Publish { text, except, origin, start, mid, end } => {
                    let Ok(topic) = std::str::from_utf8(&queue.arena[start..mid]) else { continue };
                    if let (Origin::Local, Some(g)) = (origin, group) {
                        g.forward(loop_index as usize, topic, text, except, &queue.arena[mid..end]);
                    }
                    if let Some(subs) = topics.get(topic) {
                        let prepared = PreparedMessage::new(text, &queue.arena[mid..end]).counted(shared_bytes.clone());
                        a.publish(prepared, subs, except);
                    }
                }
                Cmd::Pause { to, on } => {
                    if let Some((key, slot)) = slot_of(a.slots, a.table, to) {
                        if on {
                            slot.flags.set(Flags::PAUSED);
                        } else {
                            slot.flags.clear(Flags::PAUSED);
                        }
                        // Resuming reads at the end of the turn what arrived meanwhile.
                        touch(a.dirty, key, slot);
                    }
                }
                Cmd::Timer { to, token, after, repeat } => {
                    if slot_of(a.slots, a.table, to).is_some() {
                        timers.set_handler(to.0, token, now + after, repeat.then_some(after));
                    }
                }
                Cmd::CancelTimer { to, token } => timers.cancel_handler(to.0, token),
                Cmd::Stop => shared.stop.store(true, Ordering::SeqCst),
                Cmd::Decide { to, status, start, end } => answers.push((to, status, queue.arena[start..end].to_vec())),
            }
        }
        let charged = a.charged;
        queue.clear();
        self.work += charged;
        for (to, status, bytes) in answers {
            self.answer(to, status, &bytes, now);
        }
    }

    /// Calls `on_timer` for a handler timer that is due, unless its connection is gone.
    pub(super) fn fire_handler_timer(&mut self, now: Instant, conn: u64, token: u64) {
        let id = ConnId(conn);
        let Some((key, slot)) = slot_of(&mut self.slots, &self.table, id).filter(|(_, s)| s.is_open_phase()) else {
            self.timers.cancel_handler(conn, token);
            return;
        };
        let peer = slot.peer;
        let hw = self.config.write_high_water;
        let mut ctx = Ctx::new(id, peer, &mut self.queue, &self.shared.metrics, &self.table, hw);
        let handler = &mut self.handler;
        guarded(id, "on_timer", || handler.on_timer(&mut ctx, token));
        self.mark_dirty(key);
        self.apply_commands(now);
    }
}
