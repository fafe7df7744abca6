//! Applying the commands handlers queued: sends, the zero-copy echo, closes, broadcasts, topics, pauses and
//! handler timers.

use super::*;

/// What applying the handlers' commands touches, borrowed apart from the rest of the server.
struct Apply<'s> {
    slots: &'s mut Slab<Slot>,
    dirty: &'s mut Vec<usize>,
    pool: &'s mut DeflatePool,
    bufs: &'s mut BufPool,
    m: &'s Metrics,
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

impl Apply<'_> {
    /// Queues a message to a connection of this loop; false if it is not one.
    fn message(&mut self, to: ConnId, text: bool, bytes: &[u8]) -> bool {
        let Some((key, slot)) = slot_of(self.slots, to) else { return false };
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
    fn echo(&mut self, to: ConnId, text: bool, len: usize, src: &Option<EchoSrc>, rbuf: &mut [u8], pbuf: &[u8]) {
        let Some((key, slot)) = slot_of(self.slots, to) else { return };
        if len >= SPARE_MIN {
            lend(self.bufs, &mut slot.conn);
        }
        let (m, pool) = (self.m, &mut *self.pool);
        let result = match *src {
            Some(EchoSrc::Input { plain: false, start, end, last }) => {
                echo_from_read(slot, rbuf, (start, end), text, last, pool, m)
            }
            Some(EchoSrc::Input { plain: true, start, end, .. }) => {
                slot.conn.send_with(message(text, &pbuf[start..end]), pool)
            }
            Some(EchoSrc::Lent { last }) => echo_lent(slot, text, len, last, pool, m),
            None => Err(crate::SendError::NotOpen),
        };
        match result {
            Ok(()) => {
                sent(self.m, &mut self.charged, len);
                // An echo without compression costs what its read did, already counted; compressed, it costs the
                // compression.
                let echo_work = if slot.deflate { DEFLATE_WEIGHT * len } else { 0 };
                self.charged = self.charged - len + echo_work;
            }
            Err(e) => log::debug!(target: "wskit::server", "echo to {to}: {e}"),
        }
        touch(self.dirty, key, slot);
    }

    fn frame(&mut self, to: ConnId, fin: bool, op: crate::frame::OpCode, payload: &[u8]) {
        if let Some((key, slot)) = slot_of(self.slots, to) {
            if let Err(e) = slot.conn.send_frame(fin, op, payload) {
                log::debug!(target: "wskit::server", "send to {to}: {e}");
            }
            touch(self.dirty, key, slot);
        }
    }

    /// Starts closing a connection of this loop; false if it is not one.
    fn close(&mut self, to: ConnId, code: CloseCode, reason: &str, now: Instant) -> bool {
        let Some((key, slot)) = slot_of(self.slots, to) else { return false };
        if let Err(e) = slot.conn.close(code, reason, now) {
            log::debug!(target: "wskit::server", "close {to}: {e}");
        }
        touch(self.dirty, key, slot);
        true
    }

    /// Queues one shared message to every open connection but `except`.
    fn broadcast(&mut self, mut prepared: PreparedMessage, except: Option<ConnId>) {
        let n = prepared.payload.len();
        for (key, slot) in self.slots.iter_mut() {
            if slot.opened && slot.conn.is_open() && Some(conn_id(key, slot.gen)) != except {
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
            if let Some((key, slot)) = slot_of(self.slots, id) {
                if slot.conn.is_open() && slot.conn.send_prepared(&mut prepared, self.pool).is_ok() {
                    sent(self.m, &mut self.charged, n);
                    touch(self.dirty, key, slot);
                }
            }
        }
    }
}

/// Echoes a message that lies in the read buffer. The last message of a plain read, with nothing queued ahead,
/// goes out now from the read buffer itself: its header is written over the (consumed) bytes before the payload
/// -- the client's header was 4 bytes longer, mask included -- and the frame leaves in one `send`, never copied
/// (the write-through would send it next anyway).
#[inline(always)]
fn echo_from_read(
    slot: &mut Slot,
    rbuf: &mut [u8],
    (start, end): (usize, usize),
    text: bool,
    last: bool,
    pool: &mut DeflatePool,
    m: &Metrics,
) -> Result<(), crate::SendError> {
    let direct = last.then(|| slot.conn.direct_header(text, end - start)).flatten();
    match direct {
        Some((head, hl)) if start >= hl => {
            let at = &mut rbuf[start - hl..start];
            // The usual 2-byte header by hand (a variable-length copy calls memcpy).
            if let ([a0, a1], [h0, h1, ..]) = (&mut *at, head) {
                (*a0, *a1) = (h0, h1);
            } else {
                at.copy_from_slice(&head[..hl]);
            }
            let written = write_burst(&mut slot.sock, &rbuf[start - hl..end]).unwrap_or(0);
            slot.conn.sent_direct(&head[..hl], &rbuf[start..end], written);
            Metrics::add(&m.bytes_out, written as u64);
            Ok(())
        }
        _ => slot.conn.send_with(message(text, &rbuf[start..end]), pool),
    }
}

/// Echoes a long message assembled in the connection (from several reads or frames): from the buffer it was
/// assembled in, header and payload as two slices of one `sendmsg`.
fn echo_lent(
    slot: &mut Slot,
    text: bool,
    len: usize,
    last: bool,
    pool: &mut DeflatePool,
    m: &Metrics,
) -> Result<(), crate::SendError> {
    let worth = len >= DIRECT_MIN && (last || len >= SPARE_MIN) && !slot.is_tls();
    let direct = worth.then(|| slot.conn.direct_header(text, len)).flatten();
    match (direct, slot.conn.delivered()) {
        (Some((head, hl)), Some(bytes)) => {
            let written = write_direct(&mut slot.sock, &head[..hl], bytes);
            slot.conn.sent_delivered_direct(&head[..hl], written);
            Metrics::add(&m.bytes_out, written as u64);
            Ok(())
        }
        _ => slot.conn.send_delivered(text, pool),
    }
}

/// Subscribes a connection of this loop to a topic, or unsubscribes it (the group learns of a topic's first
/// subscriber on this loop and of its last).
fn subscribe(
    slots: &mut Slab<Slot>,
    topics: &mut HashMap<Box<str>, Vec<ConnId>>,
    group: Option<&Group>,
    to: ConnId,
    on: bool,
    topic: &str,
) {
    let Some((_, slot)) = slot_of(slots, to).filter(|(_, s)| s.opened) else { return };
    let subscribed = slot.topics.iter().position(|t| &**t == topic);
    match (on, subscribed) {
        (true, None) => {
            slot.topics.push(topic.into());
            let subs = topics.entry(topic.into()).or_default();
            subs.push(to);
            if let (1, Some(g)) = (subs.len(), group) {
                g.interest(topic, true);
            }
        }
        (false, Some(i)) => {
            slot.topics.swap_remove(i);
            unsubscribe(topics, topic, to, group);
        }
        _ => {}
    }
}

impl Server {
    pub(super) fn apply_commands(&mut self, now: Instant) {
        if self.queue.cmds.is_empty() {
            return;
        }
        let Server {
            slots,
            queue,
            dirty,
            shared,
            pool,
            topics,
            timers,
            timer_live,
            timer_seq,
            group,
            loop_index,
            bufs,
            echo_src,
            rbuf,
            pbuf,
            shared_bytes,
            ..
        } = self;
        let (group, loop_index) = (group.as_deref(), *loop_index);
        let mut a = Apply { slots, dirty, pool, bufs, m: &shared.metrics, charged: 0 };
        // A command for a connection of a sibling loop goes to that loop's queue.
        let sibling = |to: ConnId| group.filter(|_| to.loop_index() != loop_index);
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
                Cmd::Echo { to, text, len } => a.echo(to, text, len, echo_src, rbuf, pbuf),
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
                        subscribe(a.slots, topics, group, to, on, topic);
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
                    if let Some((key, slot)) = slot_of(a.slots, to) {
                        slot.paused = on;
                        // Resuming reads at the end of the turn what arrived meanwhile.
                        touch(a.dirty, key, slot);
                    }
                }
                Cmd::Timer { to, token, after, repeat } => {
                    if slot_of(a.slots, to).is_some() {
                        *timer_seq += 1;
                        timer_live.insert((to.0, token), (*timer_seq, repeat.then_some(after)));
                        timers.push(Reverse((now + after, Timer::Handler { seq: *timer_seq, conn: to.0, token })));
                    }
                }
                Cmd::CancelTimer { to, token } => {
                    timer_live.remove(&(to.0, token));
                }
                Cmd::Stop => shared.stop.store(true, Ordering::SeqCst),
            }
        }
        let charged = a.charged;
        queue.clear();
        self.work += charged;
    }

    /// Calls `on_timer` for a handler timer that is due, unless it was replaced or cancelled, or its connection
    /// is gone.
    pub(super) fn fire_handler_timer(&mut self, now: Instant, seq: u64, conn: u64, token: u64) {
        let Some(&(live_seq, every)) = self.timer_live.get(&(conn, token)) else { return };
        if live_seq != seq {
            return; // replaced or cancelled
        }
        let id = ConnId(conn);
        let Some((key, slot)) = slot_of(&mut self.slots, id).filter(|(_, s)| s.opened) else {
            self.timer_live.remove(&(conn, token));
            return;
        };
        match every {
            Some(d) => self.timers.push(Reverse((now + d, Timer::Handler { seq, conn, token }))),
            None => {
                self.timer_live.remove(&(conn, token));
            }
        }
        let peer = slot.peer;
        let mut ctx =
            Ctx::new(id, peer, &mut self.queue, &self.shared.metrics, &self.table, self.config.write_high_water);
        let handler = &mut self.handler;
        guarded(id, "on_timer", || handler.on_timer(&mut ctx, token));
        self.mark_dirty(key);
        self.apply_commands(now);
    }
}
