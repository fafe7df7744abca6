//! Sending: framing messages and control frames into the queue ([`Queue`]), the echo written straight from the
//! read buffer, and handing the queue to the shell a frame boundary at a time.

use super::queue::{park_in, Queue, Seg};
use super::*;

pub(super) fn close_payload(code: CloseCode, reason: &str) -> ([u8; 2 + MAX_REASON_LEN], usize) {
    let mut p = [0u8; 2 + MAX_REASON_LEN];
    p[..2].copy_from_slice(&code.0.to_be_bytes());
    // Cut the reason at a character boundary so it stays UTF-8.
    let mut n = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    p[2..2 + n].copy_from_slice(&reason.as_bytes()[..n]);
    (p, 2 + n)
}

impl Connection {
    /// Bytes that MUST be written to the peer next. After writing `n` of them call [`Connection::consume_out`], then
    /// ask again: a control frame queued meanwhile goes out at the next frame boundary, so the slice may end at
    /// one.
    #[inline]
    pub fn out(&self) -> &[u8] {
        match self.q.as_deref() {
            Some(q) => q.head(),
            None => &[],
        }
    }

    /// The queue, made if there is none.
    #[inline]
    pub(super) fn q(&mut self) -> &mut Queue {
        self.q.get_or_insert_with(Box::default)
    }

    /// Drops the queue once it holds nothing (not even capacity).
    #[inline]
    pub(super) fn settle(&mut self) {
        if self.q.as_deref().is_some_and(Queue::is_bare) {
            self.q = None;
        }
    }

    /// Whether frames shared with other connections are queued (then [`Connection::out_slices`] may give more than
    /// the head).
    #[inline]
    pub fn has_shared(&self) -> bool {
        self.q.as_deref().is_some_and(|q| q.tail.is_some())
    }

    /// The bytes to write next, as up to `dst.len()` slices in wire order (for one vectored write): the head
    /// ([`Connection::out`]) and, when no control frame waits for a boundary, the segments after it. Returns how
    /// many slices were filled; after writing, [`Connection::consume_out`] takes the count across them.
    pub fn out_slices<'a>(&'a self, dst: &mut [&'a [u8]]) -> usize {
        self.q.as_deref().map_or(0, |q| q.slices(dst))
    }

    /// Appends everything queued for the peer to `into`, in wire order, and clears the queue (for callers that
    /// write to a buffer rather than a socket: tests, fuzzing, a TLS layer with room to spare).
    pub fn drain_out(&mut self, into: &mut Vec<u8>) {
        loop {
            let n = self.out().len();
            if n == 0 {
                return;
            }
            into.extend_from_slice(self.out());
            self.consume_out(n);
        }
    }

    /// Bytes queued for the peer in all.
    pub fn queued(&self) -> usize {
        self.q.as_deref().map_or(0, |q| q.data_queued() + q.ctrl.len())
    }

    /// Data bytes queued (control frames aside).
    #[inline]
    pub(super) fn data_queued(&self) -> usize {
        self.q.as_deref().map_or(0, Queue::data_queued)
    }

    /// Heap bytes this connection holds now: its queue's own buffers, the message being assembled, the request
    /// head, a spare buffer, and its compression contexts. Frames shared with other queues are not counted here
    /// (whoever made them counts them once). For a loop-wide memory budget; O(1).
    pub fn held(&self) -> usize {
        let mut n = self.q.as_deref().map_or(0, Queue::held);
        n += self.end.as_ref().map_or(0, |_| std::mem::size_of::<Ending>());
        n += match &self.state {
            State::ReadingHead { head, .. } => head.held(),
            State::Open(rx) => rx.held(),
            State::ClosingByUs { rx, .. } => std::mem::size_of::<Rx>() + rx.held(),
            _ => 0,
        };
        if let Some(d) = self.deflate.as_deref() {
            n += if d.inflater.is_some() { deflate::INFLATER_BYTES } else { 0 };
            n += d.compressor.as_ref().map_or(0, |c| c.heap_bytes(&d.params));
        }
        n
    }

    /// Drops the first `n` bytes of the queue (they were written): at most [`Connection::out`]'s length, or what
    /// [`Connection::out_slices`] gave.
    pub fn consume_out(&mut self, n: usize) {
        let Some(q) = self.q.as_deref_mut() else { return };
        let mut keep = false;
        let release = match &mut self.state {
            State::Open(rx) => &mut rx.release_out,
            _ => &mut keep,
        };
        q.consume(n, release);
        self.settle();
    }

    /// Appends owned bytes at the back of the queue (see [`Queue::append`]).
    pub(super) fn append(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        self.q().append(f)
    }

    /// Forgets everything queued (the connection is dropped).
    pub(super) fn discard_out(&mut self) {
        if let Some(q) = self.q.as_deref_mut() {
            q.discard();
        }
        self.settle();
    }

    /// Queues frames shared with other connections (a prepared message's), by reference; short ones are copied.
    pub fn send_shared(&mut self, frames: Arc<SharedFrames>) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        let len = frames.bytes().len();
        if len < SHARE_MIN {
            self.append(|out| out.extend_from_slice(frames.bytes()));
            return Ok(());
        }
        let t = self.q().tail.get_or_insert_with(Box::default);
        t.bytes += len;
        t.segs.push_back(Seg::Shared(frames));
        Ok(())
    }

    /// Queues a control frame, in order with the other control frames, ahead of queued data at its next frame
    /// boundary. Waiting control frames are bounded (1 KiB): past that, the ones not yet started are replaced by
    /// the newest (RFC 6455 §5.5.2 lets a pong answer only the most recent ping), so a ping flood costs no memory.
    pub(super) fn queue_control(&mut self, op: OpCode, payload: &[u8]) {
        self.q().control(op, payload)
    }

    /// Appends a data message to `out` (see [`write_message`]), in the spare buffer if `out` is empty and too small.
    pub(super) fn queue_message(&mut self, compressed: bool, op: OpCode, payload: &[u8]) {
        let max = self.config.max_frame_out;
        let q = self.q();
        q.make_room(payload.len(), max);
        q.append(|out| write_message(out, compressed, op, payload, max));
    }

    /// Lends the connection a buffer for its next large message (the shell's pool; what it holds is never shown,
    /// and kept only as room to read into). It is refused (handed back) when the connection already holds one.
    pub fn lend_buffer(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        let q = self.q();
        if q.spare.is_some() {
            return Some(buf);
        }
        q.spare.replace(buf);
        self.settle();
        None
    }

    /// [`Connection::take_buffer`] has a buffer to hand back.
    #[inline]
    pub fn holds_buffer(&self) -> bool {
        self.q.as_deref().is_some_and(|q| q.spare.is_some() || q.out_parked())
    }

    /// Takes back a spare buffer: one lent and not used, or one a finished message or a written queue released.
    /// Call it until it returns `None` (a connection can hold two: the spare, and an empty queue's large buffer).
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        let buf = self.q.as_deref_mut()?.take_buffer();
        self.settle();
        buf
    }

    /// Queues a message as one frame.
    pub fn send(&mut self, msg: Message<'_>) -> Result<(), SendError> {
        let op = if msg.is_text() { OpCode::Text } else { OpCode::Binary };
        self.send_frame(true, op, msg.as_bytes())
    }

    /// Queues a message as one frame, compressed when permessage-deflate is in force, the message has at least
    /// `min_size` bytes, and compressing shrinks it (RSV1 set); otherwise as [`Connection::send`]. `pool` holds the
    /// loop's shared compressors (used when the server resets its context after every message).
    pub fn send_with(&mut self, msg: Message<'_>, pool: &mut DeflatePool) -> Result<(), SendError> {
        let op = if msg.is_text() { OpCode::Text } else { OpCode::Binary };
        self.send_payload(op, msg.as_bytes(), pool)
    }

    /// Queues a message prepared once for many connections: its frames are shared by every connection that
    /// takes it in the same form (plain, or compressed with a fresh context for the same window and level). A
    /// connection that keeps its own compression context in wskit's compressor forgets its history for it
    /// ([`crate::lz::SmallCompressor::forget`]: the peer's window took bytes that compressor did not produce);
    /// one that keeps it in zlib-rs (`dedicated_window_bits` 0) compresses the message for itself.
    pub fn send_prepared(&mut self, m: &mut PreparedMessage, pool: &mut DeflatePool) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        let form = match self.deflate.as_ref().map(|d| d.params) {
            Some(p) if !p.server_no_context_takeover && p.dedicated_window_bits == 0 => {
                let op = if m.text { OpCode::Text } else { OpCode::Binary };
                return self.send_payload(op, &m.payload, pool);
            }
            Some(p) if m.payload.len() >= p.min_size => Some((p.compress_window(), p.level_for(m.payload.len()))),
            _ => None,
        };
        let frames = m.frames(form, pool, self.config.max_frame_out);
        if frames.bytes().first().is_some_and(|b| b & 0x40 != 0) {
            if let Some(Dedicated::Small(c)) = self.deflate.as_deref_mut().and_then(|d| d.compressor.as_mut()) {
                c.forget();
            }
        }
        self.send_shared(frames)
    }

    /// Sends back the message the last [`Event::Message`] lent out, when it was assembled here (spanning frames
    /// or reads), as text or binary; compressed as [`Connection::send_with`] would. The bytes are not copied
    /// out first (an echo of a large message costs one copy, into the queue).
    pub fn send_delivered(&mut self, text: bool, pool: &mut DeflatePool) -> Result<(), SendError> {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.with_delivered(|c, payload| c.send_payload(op, payload, pool)).unwrap_or(Err(SendError::NotOpen))
    }

    /// Runs `f` with the message the last [`Event::Message`] lent out (when it was assembled here), taken out of
    /// the receive state for the while so that `f` may queue it; `None` when there is no such message.
    pub(super) fn with_delivered<R>(&mut self, f: impl FnOnce(&mut Self, &[u8]) -> R) -> Option<R> {
        let m = match &mut self.state {
            State::Open(rx) if rx.msg_delivered => rx.msg.take(),
            _ => None,
        }?;
        let result = f(self, &m.buf);
        if let State::Open(rx) = &mut self.state {
            rx.msg = Some(m);
        }
        Some(result)
    }

    /// The header of a data message that may go out as one plain frame straight from where its payload lies: the
    /// shell writes header and payload together (one `send` or one vectored send), and the payload is never copied
    /// into the queue.
    /// `None` when the message must be queued instead ([`Connection::send_with`]): something is queued ahead of
    /// it, or it would be compressed or fragmented, or the connection no longer sends. After the write the shell
    /// MUST call [`Connection::sent_direct`] with what was written, even if nothing was.
    pub fn direct_header(&self, text: bool, len: usize) -> Option<([u8; MAX_HEADER_LEN], usize)> {
        if !self.may_send_direct(len) {
            return None;
        }
        let mut head = [0u8; MAX_HEADER_LEN];
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let n = encode_header(true, 0, op, None, len as u64, &mut head);
        Some((head, n))
    }

    /// Whether a message of `len` bytes may be written by the shell from where it lies, as one uncompressed frame
    /// with its header in front (see [`Connection::direct_header`]): open, nothing queued ahead of it, not to be
    /// compressed or fragmented.
    #[inline(always)]
    pub fn may_send_direct(&self, len: usize) -> bool {
        let max = self.config.max_frame_out;
        self.is_open()
            && !self.wants_write()
            && !self.deflate.as_ref().is_some_and(|d| len >= d.params.min_size)
            && (max == 0 || len <= max)
    }

    /// `written` bytes of the frame `header` + `payload` (see [`Connection::direct_header`]) went to the peer;
    /// the rest is queued, and a control frame that comes meanwhile waits for the frame's end as usual.
    pub fn sent_direct(&mut self, header: &[u8], payload: &[u8], written: usize) {
        let total = header.len() + payload.len();
        if written >= total {
            return;
        }
        debug_assert!(!self.wants_write(), "nothing was queued ahead of a direct frame");
        let max = self.config.max_frame_out;
        let q = self.q();
        q.make_room(payload.len(), max);
        if written < header.len() {
            q.out.extend_from_slice(&header[written..]);
            q.out.extend_from_slice(payload);
        } else {
            q.out.extend_from_slice(&payload[written - header.len()..]);
        }
        // Once begun, `out` starts inside a frame: the boundary tracker counts down its rest.
        q.frame_left = if written == 0 { 0 } else { total - written };
    }

    /// The message the last [`Event::Message`] lent out, when it was assembled here (spanning frames or reads):
    /// for the shell to write it back directly ([`Connection::direct_header`], then
    /// [`Connection::sent_delivered_direct`]).
    pub fn delivered(&self) -> Option<&[u8]> {
        match &self.state {
            State::Open(rx) if rx.msg_delivered => rx.msg.as_ref().map(|m| &m.buf[..]),
            _ => None,
        }
    }

    /// `written` bytes of the frame `header` + [`Connection::delivered`] went to the peer; the rest is queued. Once
    /// the header is out, the message's own buffer becomes the queue (the rest of a large echo is not copied).
    pub fn sent_delivered_direct(&mut self, header: &[u8], written: usize) {
        let m = match &mut self.state {
            State::Open(rx) if rx.msg_delivered => rx.msg.as_deref_mut(),
            _ => None,
        };
        let total = header.len() + m.as_ref().map_or(0, |m| m.buf.len());
        match m {
            Some(m) if written >= header.len() && written < total && written - header.len() <= u32::MAX as usize => {
                let q = self.q.get_or_insert_with(Box::default);
                debug_assert!(!q.wants_write(), "nothing was queued ahead of a direct frame");
                let buf = std::mem::take(&mut m.buf);
                let old = std::mem::replace(&mut q.out, buf);
                park_in(&mut q.spare, &mut Vec::new(), old);
                q.out_start = (written - header.len()) as u32;
                // Once begun, `out` starts inside a frame: the boundary tracker counts down its rest.
                q.frame_left = total - written;
            }
            _ => {
                self.with_delivered(|c, payload| c.sent_direct(header, payload, written));
            }
        }
    }

    pub(super) fn send_payload(&mut self, op: OpCode, payload: &[u8], pool: &mut DeflatePool) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        let Some(d) = self.deflate.as_mut().filter(|d| payload.len() >= d.params.min_size) else {
            self.queue_message(false, op, payload);
            return Ok(());
        };
        let mut z = std::mem::take(&mut pool.scratch);
        z.clear();
        let p = d.params;
        if p.server_no_context_takeover || (d.compressor.is_none() && pool.hold_back) {
            // (Under memory pressure a connection that holds no compressor is not given one: a fresh context
            // here, which its peer reads as any other.)
            pool.compress(p.compress_window(), p.level_for(payload.len()), payload, &mut z);
            if z.len() < payload.len() {
                self.queue_message(true, op, &z);
            } else {
                self.queue_message(false, op, payload);
            }
        } else {
            // With context takeover the compressor's window now holds this message, so it must go out compressed
            // (the peer's inflater has to see it too).
            d.used = true;
            match d.compressor.get_or_insert_with(|| dedicated(&p)) {
                Dedicated::Zlib(c) => c.compress_at(p.level_for(payload.len()), payload, &mut z),
                Dedicated::Small(c) => c.compress(payload, &mut z, &mut pool.lz_scratch),
            }
            self.queue_message(true, op, &z);
        }
        if z.capacity() > 1 << 20 {
            z = Vec::new();
        }
        if pool.lz_scratch.capacity() > 1 << 20 {
            pool.lz_scratch = Vec::new(); // (a large message's: not kept by the loop)
        }
        pool.scratch = z;
        Ok(())
    }

    /// Gives back the connection's own compressor, if it holds one (the server may drop its context at any
    /// time: the next message starts a fresh one); returns the heap bytes it held.
    pub fn release_compressor(&mut self) -> usize {
        let Some(d) = self.deflate.as_deref_mut() else { return 0 };
        d.compressor.take().map_or(0, |c| c.heap_bytes(&d.params))
    }

    /// Queues one raw frame (the seed's "write raw frame"): the caller does its own fragmentation. Control frames
    /// must carry at most 125 bytes; a close frame is better sent with [`Connection::close`].
    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        if opcode.is_control() && (payload.len() > MAX_CONTROL_PAYLOAD || !fin) {
            return Err(SendError::ControlTooLong);
        }
        if matches!(opcode, OpCode::Ping | OpCode::Pong) {
            self.queue_control(opcode, payload);
        } else {
            let max = self.config.max_frame_out;
            let q = self.q();
            q.make_room(payload.len(), max);
            q.append(|out| write_frame(out, fin, 0, opcode, payload));
        }
        Ok(())
    }

    /// Queues a ping.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_frame(true, OpCode::Ping, payload)
    }

    /// Starts the closing handshake with any sendable code and a reason (cut to 123 bytes at a character
    /// boundary); the peer's close is awaited up to the close timeout.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Instant) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code.0));
        }
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        let (p, n) = close_payload(code, reason);
        self.append(|out| write_frame(out, true, 0, OpCode::Close, &p[..n]));
        let deadline = now + self.config.close_timeout;
        if let State::Open(mut rx) = std::mem::replace(&mut self.state, State::Closed { linger: deadline }) {
            rx.drop_message();
            self.state = State::ClosingByUs { rx: Box::new(rx), deadline };
        }
        Ok(())
    }

    /// Ends the connection at once without a closing handshake (an abrupt drop; the shell closes TCP).
    pub fn abort(&mut self, now: Instant) {
        self.discard_out();
        self.state = State::Closed { linger: now };
    }

    /// Drops a connection whose peer does not read (the shell found more than `max_queued_bytes` waiting): the
    /// queue is discarded and the connection ends at once with [`ProtocolError::SlowConsumer`].
    pub fn drop_slow(&mut self, queued: usize, now: Instant) {
        self.end_with(|| CloseStatus::Error(ProtocolError::SlowConsumer { queued }));
        self.abort(now);
    }
}

/// The compressor a connection keeps under server context takeover.
fn dedicated(p: &deflate::Params) -> Dedicated {
    match p.dedicated_window_bits {
        0 => Dedicated::Zlib(deflate::Compressor::new(p.level, p.compress_window())),
        bits => Dedicated::Small(crate::lz::SmallCompressor::new(bits)),
    }
}
