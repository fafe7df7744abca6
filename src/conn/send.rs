//! Sending: the queue (`out`, then owned and shared segments), framing messages and control frames into it, the
//! echo written straight from the read buffer, and handing the queue to the shell a frame boundary at a time.

use super::*;

/// The queue after `out` (see [`Connection::send_shared`]): segments in wire order, each starting at a frame
/// boundary. While `out` is empty the front segment is the head, and it is always a shared one (owned ones are
/// moved into `out` as they come to the front); appends go to the back.
#[derive(Debug, Default)]
pub(super) struct Tail {
    pub(super) segs: VecDeque<Seg>,
    /// Bytes in `segs` not yet written.
    pub(super) bytes: usize,
    /// Bytes of the owned segments.
    pub(super) own: usize,
    /// Bytes of the front segment already written (only while it is the head).
    pub(super) head_off: usize,
}

#[derive(Debug)]
pub(super) enum Seg {
    Own(Vec<u8>),
    Shared(Arc<SharedFrames>),
}

impl Seg {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Seg::Own(v) => v,
            Seg::Shared(f) => f.bytes(),
        }
    }
}

impl Tail {
    /// The owned segment at the back, made if the back is shared.
    pub(super) fn back_own(&mut self) -> &mut Vec<u8> {
        if !matches!(self.segs.back(), Some(Seg::Own(_))) {
            self.segs.push_back(Seg::Own(Vec::new()));
        }
        match self.segs.back_mut() {
            Some(Seg::Own(v)) => v,
            _ => unreachable!("just pushed"),
        }
    }
}

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
        if !self.ctrl.is_empty() && self.at_boundary() {
            return self.ctrl.as_slice();
        }
        if self.out.is_empty() {
            if let Some(t) = self.tail.as_deref() {
                return &t.segs[0].bytes()[t.head_off..];
            }
            &self.out
        } else if self.ctrl.is_empty() {
            &self.out[self.out_start as usize..]
        } else {
            let unwritten = &self.out[self.out_start as usize..];
            &unwritten[..self.frame_left.min(unwritten.len())]
        }
    }

    /// Whether frames shared with other connections are queued (then [`Connection::out_slices`] may give more than
    /// the head).
    #[inline]
    pub fn has_shared(&self) -> bool {
        self.tail.is_some()
    }

    /// Whether the head of the queue is at a frame boundary (a control frame may go first).
    #[inline]
    pub(super) fn at_boundary(&self) -> bool {
        if self.out.is_empty() {
            self.tail.as_deref().map_or(true, |t| t.head_off == 0)
        } else {
            self.frame_left == 0
        }
    }

    /// The bytes to write next, as up to `dst.len()` slices in wire order (for one vectored write): the head
    /// ([`Connection::out`]) and, when no control frame waits for a boundary, the segments after it. Returns how
    /// many slices were filled; after writing, [`Connection::consume_out`] takes the count across them.
    pub fn out_slices<'a>(&'a self, dst: &mut [&'a [u8]]) -> usize {
        let head = self.out();
        if head.is_empty() || dst.is_empty() {
            return 0;
        }
        dst[0] = head;
        let Some(t) = self.tail.as_deref().filter(|_| self.ctrl.is_empty()) else { return 1 };
        let mut n = 1;
        for seg in t.segs.iter().skip(usize::from(self.out.is_empty())) {
            if n == dst.len() {
                break;
            }
            dst[n] = seg.bytes();
            n += 1;
        }
        n
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
        self.data_queued() + self.ctrl.len()
    }

    /// Heap bytes this connection holds now: its queue's own buffers, the message being assembled, the request
    /// head, a spare buffer, and its compression contexts. Frames shared with other queues are not counted here
    /// (whoever made them counts them once). For a loop-wide memory budget; O(1).
    pub fn held(&self) -> usize {
        let mut n = self.out.capacity() + self.ctrl.heap_bytes() + self.spare.heap_bytes();
        if let Some(t) = self.tail.as_deref() {
            n += t.own + t.segs.capacity() * std::mem::size_of::<Seg>();
        }
        n += match &self.state {
            State::ReadingHead { head, .. } => head.held(),
            State::Open(rx) | State::ClosingByUs { rx, .. } => {
                rx.ctrl.heap_bytes() + rx.msg.as_ref().map_or(0, |m| m.buf.capacity())
            }
            _ => 0,
        };
        if let Some(d) = self.deflate.as_deref() {
            n += if d.inflater.is_some() { deflate::INFLATER_BYTES } else { 0 };
            n += match &d.compressor {
                None => 0,
                Some(Dedicated::Zlib(_)) => deflate::compressor_bytes(d.params.compress_window()),
                Some(Dedicated::Small(c)) => c.heap_bytes(),
            };
        }
        n
    }

    /// Data bytes queued (control frames aside).
    #[inline]
    pub(super) fn data_queued(&self) -> usize {
        self.out.len() - self.out_start as usize + self.tail.as_deref().map_or(0, |t| t.bytes)
    }

    /// Drops the first `n` bytes of the queue (they were written): at most [`Connection::out`]'s length, or what
    /// [`Connection::out_slices`] gave.
    pub fn consume_out(&mut self, mut n: usize) {
        if self.tail.is_none() {
            return self.consume_head(n);
        }
        loop {
            let head = self.out().len();
            if n <= head || head == 0 {
                return self.consume_head(n);
            }
            self.consume_head(head);
            n -= head;
        }
    }

    /// [`Connection::consume_out`] within the head.
    pub(super) fn consume_head(&mut self, n: usize) {
        if !self.ctrl.is_empty() && self.at_boundary() {
            if n >= self.ctrl.len() {
                self.ctrl.clear();
                self.ctrl_started = false;
            } else if n > 0 {
                self.ctrl.edit(|c| c.drain(..n).count());
                self.ctrl_started = true;
            }
            return;
        }
        if self.out.is_empty() && self.tail.is_some() {
            return self.consume_shared(n);
        }
        self.advance_frames(n);
        let start = self.out_start as usize + n;
        if start >= self.out.len() {
            self.out_start = 0;
            // No large buffer is kept, nor the one that carried the handshake answer.
            let after_handshake = match &mut self.state {
                State::Open(rx) => std::mem::take(&mut rx.release_out),
                _ => false,
            };
            if after_handshake {
                self.out = Vec::new();
            } else if self.out.capacity() > SPARE_MIN {
                // Not kept by an idle connection: parked for the shell to take back, with the bytes it carried
                // (room for a later read straight into it: see `spare`).
                let buf = std::mem::take(&mut self.out);
                park(&mut self.spare, &mut self.out, buf);
            } else {
                self.out.clear();
            }
            self.promote();
        } else if start >= 64 * 1024 && 2 * start >= self.out.len() || start > u32::MAX as usize {
            // The written part is dropped once it is most of the buffer: each byte is moved at most once.
            self.out.drain(..start);
            self.out_start = 0;
        } else {
            self.out_start = start as u32;
        }
    }

    /// `n` bytes of the shared segment at the head were written.
    pub(super) fn consume_shared(&mut self, n: usize) {
        let Some(t) = self.tail.as_deref_mut() else { return };
        t.head_off += n;
        t.bytes -= n;
        if t.head_off >= t.segs[0].bytes().len() {
            t.segs.pop_front();
            t.head_off = 0;
        }
        self.promote();
    }

    /// With `out` empty: moves the owned segments that reached the front into `out`, and drops the tail once
    /// empty (appends go to `out` again).
    pub(super) fn promote(&mut self) {
        let Some(t) = self.tail.as_deref_mut() else { return };
        if !self.out.is_empty() || t.head_off > 0 {
            return;
        }
        while let Some(Seg::Own(_)) = t.segs.front() {
            let Some(Seg::Own(v)) = t.segs.pop_front() else { unreachable!() };
            t.bytes -= v.len();
            t.own -= v.len();
            if !v.is_empty() {
                let old = std::mem::replace(&mut self.out, v);
                park(&mut self.spare, &mut Vec::new(), old);
                self.frame_left = 0;
                break;
            }
        }
        if t.segs.is_empty() {
            self.tail = None;
        }
    }

    /// Appends owned bytes at the back of the queue: to `out`, or to the tail once shared frames are queued.
    pub(super) fn append(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        match self.tail.as_deref_mut() {
            None => f(&mut self.out),
            Some(t) => {
                let v = t.back_own();
                let before = v.len();
                f(v);
                let added = v.len() - before;
                t.bytes += added;
                t.own += added;
            }
        }
    }

    /// Forgets everything queued (the connection is dropped).
    pub(super) fn discard_out(&mut self) {
        self.out.clear();
        self.out_start = 0;
        self.ctrl.clear();
        self.tail = None;
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
        let t = self.tail.get_or_insert_with(Box::default);
        t.bytes += len;
        t.segs.push_back(Seg::Shared(frames));
        Ok(())
    }

    /// Moves the frame-boundary tracker over `n` bytes about to be dropped from the head of `out` (whole frames are
    /// always appended, so a boundary is always followed by a complete header).
    pub(super) fn advance_frames(&mut self, mut n: usize) {
        if self.frame_left == usize::MAX {
            return;
        }
        let mut pos = self.out_start as usize;
        while n > 0 && pos < self.out.len() {
            if self.frame_left == 0 {
                // Our own frames, so the header decodes; were it not to, the rest counts as one unit.
                self.frame_left = match decode_header(&self.out[pos..]) {
                    Ok(Status::Complete((h, used))) => used + h.len as usize,
                    _ => self.out.len() - pos,
                };
            }
            let t = self.frame_left.min(n);
            self.frame_left -= t;
            n -= t;
            pos += t;
        }
    }

    /// Queues a control frame, in order with the other control frames, ahead of queued data at its next frame
    /// boundary. Waiting control frames are bounded (1 KiB): past that, the ones not yet started are replaced by the newest (RFC 6455
    /// §5.5.2 lets a pong answer only the most recent ping), so a ping flood costs no memory.
    pub(super) fn queue_control(&mut self, op: OpCode, payload: &[u8]) {
        if self.frame_left == usize::MAX {
            write_frame(&mut self.out, true, 0, op, payload);
            return;
        }
        if self.ctrl.len() >= 1024 {
            if self.ctrl_started {
                return; // a frame is half written; the next ping gets the pong
            }
            self.ctrl.clear();
        }
        self.ctrl.edit(|c| write_frame(c, true, 0, op, payload));
    }

    /// Appends a data message to `out` (see [`write_message`]), in the spare buffer if `out` is empty and too small.
    pub(super) fn queue_message(&mut self, compressed: bool, op: OpCode, payload: &[u8]) {
        self.make_room(payload.len());
        let max = self.config.max_frame_out;
        self.append(|out| write_message(out, compressed, op, payload, max));
    }

    /// Before `payload` bytes are queued: an empty, too small `out` is swapped for the spare buffer if it fits.
    pub(super) fn make_room(&mut self, payload: usize) {
        let frames = match self.config.max_frame_out {
            0 => 1,
            max => 1 + payload / max,
        };
        let need = payload + MAX_HEADER_LEN * frames;
        if self.out.is_empty() && self.tail.is_none() && self.out.capacity() < need && self.spare.capacity() >= need {
            self.out = self.spare.replace(std::mem::take(&mut self.out));
            self.out.clear();
        }
    }

    /// Lends the connection a buffer for its next large message (the shell's pool; see `spare`; what it holds is
    /// never shown, and kept only as room to read into). It is
    /// refused (handed back) when the connection already holds one.
    pub fn lend_buffer(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        if self.spare.is_some() {
            return Some(buf);
        }
        self.spare.replace(buf);
        None
    }

    /// [`Connection::take_buffer`] has a buffer to hand back.
    #[inline]
    pub fn holds_buffer(&self) -> bool {
        self.spare.is_some() || self.out_parked()
    }

    /// The queue is empty and holds a large buffer ([`park`]ed there, or left by a written queue).
    #[inline]
    pub(super) fn out_parked(&self) -> bool {
        self.out.is_empty() && self.out.capacity() >= SPARE_MIN
    }

    /// Takes back a spare buffer: one lent and not used, or one a finished message or a written queue released.
    /// Call it until it returns `None` (a connection can hold two: the spare, and an empty queue's large buffer).
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        // The spare last: the pool is a stack, and the spare keeps its old bytes (room to read into unzeroed).
        if self.out_parked() {
            return Some(std::mem::take(&mut self.out));
        }
        self.spare.is_some().then(|| self.spare.take())
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
    /// takes it in the same form (plain, or compressed with a fresh context for the same window and level under
    /// `server_no_context_takeover`); one that keeps its own compression context compresses it for itself.
    pub fn send_prepared(&mut self, m: &mut PreparedMessage, pool: &mut DeflatePool) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        let form = match self.deflate.as_ref().map(|d| d.params) {
            Some(p) if !p.server_no_context_takeover => {
                let op = if m.text { OpCode::Text } else { OpCode::Binary };
                return self.send_payload(op, &m.payload, pool);
            }
            Some(p) if m.payload.len() >= p.min_size => Some((p.compress_window(), p.level_for(m.payload.len()))),
            _ => None,
        };
        let frames = m.frames(form, pool, self.config.max_frame_out);
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
        let max = self.config.max_frame_out;
        if !self.is_open()
            || self.wants_write()
            || self.deflate.as_ref().is_some_and(|d| len >= d.params.min_size)
            || (max != 0 && len > max)
        {
            return None;
        }
        let mut head = [0u8; MAX_HEADER_LEN];
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let n = encode_header(true, 0, op, None, len as u64, &mut head);
        Some((head, n))
    }

    /// `written` bytes of the frame `header` + `payload` (see [`Connection::direct_header`]) went to the peer;
    /// the rest is queued, and a control frame that comes meanwhile waits for the frame's end as usual.
    pub fn sent_direct(&mut self, header: &[u8], payload: &[u8], written: usize) {
        let total = header.len() + payload.len();
        if written >= total {
            return;
        }
        debug_assert!(self.out.is_empty() && self.ctrl.is_empty(), "nothing was queued ahead of a direct frame");
        self.make_room(payload.len());
        if written < header.len() {
            self.out.extend_from_slice(&header[written..]);
            self.out.extend_from_slice(payload);
        } else {
            self.out.extend_from_slice(&payload[written - header.len()..]);
        }
        // Once begun, `out` starts inside a frame: the boundary tracker counts down its rest.
        self.frame_left = if written == 0 { 0 } else { total - written };
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
                debug_assert!(
                    self.out.is_empty() && self.ctrl.is_empty(),
                    "nothing was queued ahead of a direct frame"
                );
                let buf = std::mem::take(&mut m.buf);
                let old = std::mem::replace(&mut self.out, buf);
                park(&mut self.spare, &mut Vec::new(), old);
                self.out_start = (written - header.len()) as u32;
                // Once begun, `out` starts inside a frame: the boundary tracker counts down its rest.
                self.frame_left = total - written;
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
        if p.server_no_context_takeover {
            pool.compress(p.compress_window(), p.level_for(payload.len()), payload, &mut z);
            if z.len() < payload.len() {
                self.queue_message(true, op, &z);
            } else {
                self.queue_message(false, op, payload);
            }
        } else {
            // With context takeover the compressor's window now holds this message, so it must go out compressed
            // (the peer's inflater has to see it too).
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
            self.make_room(payload.len());
            self.append(|out| write_frame(out, fin, 0, opcode, payload));
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
            self.state = State::ClosingByUs { rx, deadline };
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
        if self.status.is_none() {
            self.status = Some(Box::new(CloseStatus::Error(ProtocolError::SlowConsumer { queued })));
        }
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
