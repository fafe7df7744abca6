//! Receiving: [`Connection::read`] turns bytes into at most one event, frame by frame (headers, unmasking,
//! fragments, inflation, UTF-8, control frames and their duties), and a protocol fault into its close.

use super::queue::take_spare;
use super::*;
use crate::frame::FrameHeader as Header;
use crate::h2::conn::PREFACE;

impl Connection {
    /// Data bytes a peer may send after our close frame before it counts as not closing and reading ends: what
    /// it may have had in flight (two frames of the largest size, at least 1 MiB). Without it, a client that
    /// ignores a close is read from at line rate until the close timeout.
    pub fn closing_data_max(config: &Limits) -> usize {
        config.max_payload_size.saturating_mul(2).clamp(1 << 20, u32::MAX as usize - 1)
    }

    /// Feeds bytes read from the peer. Returns how many bytes of `input` were used and at most one event; call
    /// again with the rest of `input` (the slice after the used bytes) until all are used and no event comes.
    /// Bytes that do not yet form anything whole are kept inside the connection. Payload bytes are unmasked in
    /// place in `input`.
    pub fn read<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
        heard_from(self.live.as_mut().filter(|_| !input.is_empty()), &mut self.ping_out, now);
        match &mut self.state {
            State::ReadingHead { .. } => self.read_head(input, now),
            State::Open(_) | State::ClosingByUs { .. } => self.read_frames(input, now),
            // Waiting for the application, or closed: nothing is read.
            State::AwaitingDecision { .. } | State::AwaitingResponse { .. } => (0, None),
            State::Closed { .. } => (input.len(), None),
            State::Tunnel { .. } => (0, Some(Event::Tunnel)),
        }
    }

    /// [`Connection::read`]'s steady case, for a shell's fast path: `input` is exactly one whole data frame (final,
    /// uncompressed, masked, a 7- or 16-bit length within the limits) and the connection is open between
    /// messages. Then all of `input` is used and the event is what `read` would have reported (the message, or
    /// [`Event::Error`] for text that is not UTF-8), with every effect `read` would have had; otherwise `None`,
    /// nothing changed, and `read` decides.
    #[inline(always)]
    pub fn read_whole<'a>(&mut self, input: &'a mut [u8], now: Instant) -> Option<Event<'a>> {
        let State::Open(rx) = &self.state else { return None };
        if rx.hdr_len != 0 || rx.frame.is_some() || rx.msg.is_some() || rx.ctrl_lent || rx.discard {
            return None;
        }
        // FIN, no reserved bit, text or binary; MASK and a 7-bit length, or 126 and a 16-bit one.
        let (text, len, start) = match *input {
            [b0 @ (0x81 | 0x82), b1 @ 0x80..=0xfd, ..] => (b0 == 0x81, usize::from(b1 & 0x7f), 6),
            [b0 @ (0x81 | 0x82), 0xfe, l0, l1, ..] => (b0 == 0x81, usize::from(u16::from_be_bytes([l0, l1])), 8),
            _ => return None,
        };
        let config = &*self.config;
        if input.len() != start + len || len > config.max_payload_size || len > config.max_message_size {
            return None;
        }
        heard_from(self.live.as_mut(), &mut self.ping_out, now);
        let (head, payload) = input.split_at_mut(start);
        apply_mask(payload, [head[start - 4], head[start - 3], head[start - 2], head[start - 1]], 0);
        let payload = &*payload;
        if !text {
            return Some(Event::Message(Message::Binary(payload)));
        }
        match std::str::from_utf8(payload) {
            Ok(s) => Some(Event::Message(Message::Text(s))),
            Err(_) => Some(self.not_utf8(now)),
        }
    }

    /// [`Connection::read_whole`]'s text that is not UTF-8: what `read` does with it.
    #[cold]
    #[inline(never)]
    fn not_utf8<'a>(&mut self, now: Instant) -> Event<'a> {
        self.fail(ProtocolError::InvalidUtf8, now);
        Event::Error(ProtocolError::InvalidUtf8)
    }

    /// [`Connection::read`] while the request head comes in (out of line: the open connection's path stays small,
    /// and the compiler does not hoist the handshake's constants into every read).
    #[cold]
    #[inline(never)]
    fn read_head<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
        let State::ReadingHead { head, deadline } = &mut self.state else { unreachable!("reading the head") };
        if self.config.http2 && !input.is_empty() {
            // HTTP/2 by prior knowledge: the 24-byte preface (RFC 9113 §3.4), held until it is whole or has
            // turned out to be something else. (It contains a blank line: the head reader must not see it first.)
            let held = head.bytes().len();
            let n = (PREFACE.len() - held.min(PREFACE.len())).min(input.len());
            if held < PREFACE.len() && PREFACE.starts_with(head.bytes()) && PREFACE[held..].starts_with(&input[..n]) {
                if held + n < PREFACE.len() {
                    head.hold(input);
                    return (input.len(), None);
                }
                let prefix = head.take();
                self.state = State::Tunnel { deadline: Some(*deadline), prefix };
                return (0, Some(Event::Tunnel));
            }
        }
        let max = self.config.max_handshake_bytes;
        match head.feed(input, max) {
            Ok(Status::Partial) => (input.len(), None),
            Ok(Status::Complete(n)) => {
                let parsed = head.parse(input, n).and_then(|req| {
                    if !req.wants_upgrade() {
                        return handshake::validate_request(&req).map(|()| (req, None));
                    }
                    handshake::validate_upgrade(&req).map(|accept| (req, Some(accept)))
                });
                let deadline = now + self.config.handshake_timeout;
                match parsed {
                    Ok((req, Some(accept))) => {
                        let offers = deflate::parse_offers(
                            req.headers()
                                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
                                .map(|(_, v)| v),
                        );
                        let deflate = deflate::negotiate(&offers, &self.config.deflate);
                        self.state = State::AwaitingDecision { accept, deflate: deflate.map(Box::new), deadline };
                        (n, Some(Event::Upgrade(Box::new(req))))
                    }
                    Ok((req, None)) => {
                        self.state = State::AwaitingResponse { deadline };
                        (n, Some(Event::Http(Box::new(req))))
                    }
                    Err(e) => (input.len(), Some(self.refuse(e, now))),
                }
            }
            Err(e) => (input.len(), Some(self.refuse(e, now))),
        }
    }

    /// Payload bytes of the frame being received that may be read straight into the message's own buffer
    /// ([`Connection::payload_target`]): the rest of an uncompressed data frame; 0 when there is none.
    #[inline]
    pub fn payload_due(&self) -> usize {
        match &self.state {
            State::Open(Rx { frame: Some(f), msg: Some(m), hdr_len: 0, .. })
                if !f.opcode.is_control() && !m.compressed && m.pending == Pending::Nothing =>
            {
                f.remaining as usize
            }
            _ => 0,
        }
    }

    /// Room for the next `max` (at most [`Connection::payload_due`]) bytes of the peer's frame inside the
    /// message's own buffer, so that a large payload is not read into a shared buffer and then copied there. The
    /// caller reads into it, then MUST report how many bytes it read with [`Connection::payload_read`] (0 if
    /// none) before anything else; the message's event comes from the next [`Connection::read`] (with empty
    /// input, if no more came). The buffer is sized for up to 4 MiB more of the frame at once (not for all a
    /// header may announce: that is only reserved as it comes). The room is what the buffer already held, if it is
    /// a recycled one (its old bytes, never shown: the read overwrites them before they count), zeroed only past
    /// that: zeroing 1 MiB per message was 5 % of a 1 MiB echo's CPU.
    pub fn payload_target(&mut self, max: usize) -> Option<&mut [u8]> {
        let due = self.payload_due();
        let State::Open(Rx { msg: Some(m), .. }) = &mut self.state else { return None };
        let k = due.min(max);
        if k == 0 {
            return None;
        }
        let data = m.len();
        if m.room < k {
            m.buf.reserve_exact((data + due.min(4 << 20)).saturating_sub(m.buf.len()));
            m.buf.resize(data + k, 0);
            m.room = k;
        }
        Some(&mut m.buf[data..data + k])
    }

    /// `n` bytes were read into the room [`Connection::payload_target`] gave: they join the message (unmasked,
    /// UTF-8 checked) as if they had come through [`Connection::read`].
    pub fn payload_read(&mut self, n: usize, now: Instant) {
        heard_from(self.live.as_mut().filter(|_| n > 0), &mut self.ping_out, now);
        let State::Open(rx) = &mut self.state else { return };
        let (Some(f), Some(m)) = (rx.frame.as_mut(), rx.msg.as_deref_mut()) else { return };
        let data = m.len();
        let n = n.min(m.room).min(f.remaining as usize);
        let got = &mut m.buf[data..data + n];
        if m.text {
            apply_mask(got, f.mask, f.done.into()); // (checked as it comes: an invalid text fails fast)
        } else if m.masked.is_none() {
            m.masked = Some(Masked { from: data, mask: f.mask, phase: f.done });
        }
        (f.done, f.remaining, m.room) = (advance(f.done, n), f.remaining - n as u64, m.room - n);
        if f.remaining == 0 {
            m.unmask_rest();
        }
        if m.text && m.utf8.feed(&m.buf[data..data + n]).is_err() {
            m.pending = Pending::NotUtf8;
        } else if f.remaining == 0 {
            let fin = f.fin;
            rx.frame = None;
            if fin {
                m.pending = if m.text && m.utf8.finish().is_err() { Pending::NotUtf8 } else { Pending::Complete };
            }
        }
    }

    /// Whether a read straight into the message left something to report.
    #[inline]
    fn has_pending(&self) -> bool {
        matches!(&self.state, State::Open(Rx { msg: Some(m), msg_delivered: false, .. }) if m.pending != Pending::Nothing)
    }

    /// Reports what a read straight into the message left ([`Connection::has_pending`]).
    #[cold]
    #[inline(never)]
    fn deliver_pending<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
        let State::Open(Rx { msg: Some(m), .. }) = &mut self.state else { unreachable!("checked by has_pending") };
        let ready = match std::mem::replace(&mut m.pending, Pending::Nothing) {
            Pending::NotUtf8 => Ready::Error(ProtocolError::InvalidUtf8),
            Pending::Complete | Pending::Nothing => Ready::BufMessage, // (not Nothing: has_pending said so)
        };
        self.deliver(ready, input, 0, false, false, now)
    }

    /// Fails the connection for `e` (a fault the caller found, such as a rate limit): the close frame with its
    /// code goes out (unless a close was sent already), the message being assembled is dropped, and reading goes
    /// on only to meet the peer's close.
    pub fn fail(&mut self, e: ProtocolError, now: Instant) {
        self.end_with(|| CloseStatus::Error(e.clone()));
        match std::mem::replace(&mut self.state, State::Closed { linger: now + self.config.close_timeout }) {
            State::Open(mut rx) => {
                let (p, n) = close_payload(e.close_code(), "");
                self.append(|out| write_frame(out, true, 0, OpCode::Close, &p[..n]));
                // The rest of a half-read frame is skipped.
                rx.drop_message();
                let deadline = now + self.config.close_timeout;
                self.state = State::ClosingByUs { rx: Box::new(rx), deadline };
            }
            // A second fault while closing: stop reading and drop once our close is written.
            other @ State::ClosingByUs { .. } => {
                let _ = other;
            }
            other => self.state = other,
        }
    }

    /// The frame loop: runs [`Frames`] over `input` until something is ready, then hands it out.
    pub(super) fn read_frames<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
        if self.has_pending() {
            return self.deliver_pending(input, now);
        }
        let Connection { config, state, deflate, q, .. } = self;
        let config = &**config;
        let (rx, closing) = match state {
            State::Open(rx) => (rx, false),
            State::ClosingByUs { rx, .. } => (&mut **rx, true),
            _ => unreachable!("read_frames outside Open/ClosingByUs"),
        };
        rx.release_lent(q);
        if rx.discard {
            return (input.len(), None);
        }
        let max_msg = config.max_message_size;
        let mut frames = Frames { config, rx, deflate, q, closing, max_msg, pos: 0, desync: false };
        let ready = loop {
            let step = if frames.rx.frame.is_some() { frames.payload(input) } else { frames.header(input, now) };
            if let Some(ready) = step {
                break ready;
            }
        };
        let (pos, desync) = (frames.pos, frames.desync);
        self.deliver(ready, input, pos, desync, closing, now)
    }

    /// Turns what the frame loop found into the event it reports (and, for a fault, the close it sends).
    #[inline(always)]
    fn deliver<'a>(
        &'a mut self,
        ready: Ready,
        input: &'a [u8],
        pos: usize,
        desync: bool,
        closing: bool,
        now: Instant,
    ) -> (usize, Option<Event<'a>>) {
        match ready {
            Ready::None => (pos, None),
            Ready::InputMessage { text: false, start, end } => {
                (pos, Some(Event::Message(Message::Binary(&input[start..end]))))
            }
            Ready::InputMessage { text: true, start, end } => match std::str::from_utf8(&input[start..end]) {
                Ok(s) => (pos, Some(Event::Message(Message::Text(s)))),
                Err(_) => {
                    self.fail(ProtocolError::InvalidUtf8, now);
                    (pos, Some(Event::Error(ProtocolError::InvalidUtf8)))
                }
            },
            Ready::BufMessage => {
                let State::Open(rx) = &mut self.state else { unreachable!("messages are delivered while open") };
                rx.msg_delivered = true;
                let m = rx.msg.as_deref_mut().expect("a completed message");
                m.drop_room();
                let ev = if m.text {
                    // Validated incrementally as it arrived; this check cannot fail.
                    match std::str::from_utf8(&m.buf) {
                        Ok(s) => Message::Text(s),
                        Err(_) => unreachable!("validated text"),
                    }
                } else {
                    Message::Binary(&m.buf)
                };
                (pos, Some(Event::Message(ev)))
            }
            Ready::Overrun => {
                self.state = State::Closed { linger: now + self.config.close_timeout };
                (input.len(), None)
            }
            Ready::InputControl { op, start, end } => self.control(op, Payload::Input(&input[start..end]), pos, now),
            Ready::BufControl { op } => self.control(op, Payload::Ctrl, pos, now),
            Ready::Error(e) => self.fault(e, input.len(), pos, desync, closing, now),
        }
    }

    /// A protocol fault found by the frame loop: our close goes out, and reading goes on only to meet the peer's.
    fn fault<'a>(
        &mut self,
        e: ProtocolError,
        len: usize,
        pos: usize,
        desync: bool,
        closing: bool,
        now: Instant,
    ) -> (usize, Option<Event<'a>>) {
        self.fail(e.clone(), now);
        if desync && !closing {
            // No frame boundary can be trusted after an undecodable header, so the peer's close could not be
            // read: send ours and close TCP without waiting for it (the shell drains until FIN).
            self.state = State::Closed { linger: now + self.config.close_timeout };
        } else if closing {
            // A fault while closing ends reading: drop this input and all that follows.
            if let State::ClosingByUs { rx, .. } = &mut self.state {
                rx.discard = true;
            }
        }
        if closing {
            // It is not reported a second time.
            return (len, None);
        }
        (if desync { len } else { pos }, Some(Event::Error(e)))
    }

    pub(super) fn control<'a>(
        &'a mut self,
        op: OpCode,
        payload: Payload<'a>,
        pos: usize,
        now: Instant,
    ) -> (usize, Option<Event<'a>>) {
        let closing = matches!(self.state, State::ClosingByUs { .. });
        // A control payload that spanned reads was collected in `rx.ctrl`; take it out while we act on it.
        let owned: Vec<u8> = match (&payload, &mut self.state) {
            (Payload::Ctrl, state) => state.rx_mut().map_or_else(Vec::new, |rx| rx.ctrl.take()),
            _ => Vec::new(),
        };
        let data: &[u8] = match &payload {
            Payload::Input(d) => d,
            Payload::Ctrl => &owned,
        };
        match op {
            OpCode::Ping | OpCode::Pong => {
                if op == OpCode::Ping && !closing {
                    self.queue_control(OpCode::Pong, data);
                }
                let data: &'a [u8] = match payload {
                    Payload::Input(d) => d,
                    Payload::Ctrl => self.lend_ctrl(owned),
                };
                (pos, Some(if op == OpCode::Ping { Event::Ping(data) } else { Event::Pong(data) }))
            }
            _ => {
                let result = parse_close_payload(data).map(|p| match p {
                    Some((code, reason)) => (code, reason.to_string(), true),
                    None => (CloseCode::NO_STATUS, String::new(), false),
                });
                match result {
                    Ok((code, reason, has_code)) => {
                        if !closing {
                            // Echo the peer's code; an empty close is answered with an empty close.
                            let echo: &[u8] = if has_code { &data[..2] } else { &[] };
                            self.append(|out| write_frame(out, true, 0, OpCode::Close, echo));
                        }
                        self.end_with(|| CloseStatus::Clean { code, reason, by_peer: !closing });
                        self.state = State::Closed { linger: now + self.config.close_timeout };
                        let reason = match self.status() {
                            Some(CloseStatus::Clean { reason, .. }) => reason.as_str(),
                            _ => "",
                        };
                        (pos, Some(Event::Close(code, reason)))
                    }
                    Err(e) => {
                        // A bad close frame: answer with our code, then close TCP (the peer has already closed).
                        if !closing {
                            let (p, n) = close_payload(e.close_code(), "");
                            self.append(|out| write_frame(out, true, 0, OpCode::Close, &p[..n]));
                        }
                        self.end_with(|| CloseStatus::Error(e.clone()));
                        self.state = State::Closed { linger: now + self.config.close_timeout };
                        (pos, Some(Event::Error(e)))
                    }
                }
            }
        }
    }

    /// Puts a control payload back into `rx.ctrl` (keeping its allocation) and lends it until the next call.
    pub(super) fn lend_ctrl(&mut self, ctrl: Vec<u8>) -> &[u8] {
        let rx = self.state.rx_mut().expect("control frames arrive while open or closing");
        rx.ctrl.set(ctrl);
        rx.ctrl_lent = true;
        rx.ctrl.as_slice()
    }
}

/// The frame loop's view of a connection: the parts one read touches, borrowed apart, and where it is in the
/// input. Each step returns `Some` when the loop must stop (something is ready, or the input is used up).
struct Frames<'c> {
    config: &'c Limits,
    rx: &'c mut Rx,
    deflate: &'c mut Option<Box<DeflateState>>,
    /// The queue, for the large buffer in passing ([`Queue::spare`]).
    q: &'c mut Option<Box<Queue>>,
    /// Our close was sent: data is skipped, not read.
    closing: bool,
    max_msg: usize,
    /// How much of the input is used.
    pos: usize,
    /// A header could not be decoded: no later frame boundary can be trusted.
    desync: bool,
}

impl Frames<'_> {
    /// Payload bytes of the current frame: unmasked in place, then kept (control), inflated or appended (data).
    #[inline]
    fn payload(&mut self, input: &mut [u8]) -> Option<Ready> {
        let f = self.rx.frame.as_mut().expect("a frame is being read");
        if f.remaining > 0 && self.pos == input.len() {
            return Some(Ready::None);
        }
        let avail = f.remaining.min((input.len() - self.pos) as u64) as usize;
        if self.closing && !f.opcode.is_control() {
            return self.skip(avail);
        }
        let chunk = &mut input[self.pos..self.pos + avail];
        apply_mask(chunk, f.mask, f.done.into());
        f.done = advance(f.done, avail);
        f.remaining -= avail as u64;
        self.pos += avail;
        let f = *f;
        if f.opcode.is_control() {
            self.rx.ctrl.edit(|c| c.extend_from_slice(chunk));
            if f.remaining == 0 {
                self.rx.frame = None;
                return Some(Ready::BufControl { op: f.opcode });
            }
            return None;
        }
        let compressed = self.rx.msg.as_ref().expect("a data frame always has its message").compressed;
        let fault = if compressed { self.inflate(chunk, f) } else { self.append(chunk) };
        if fault.is_some() {
            return fault;
        }
        if f.remaining == 0 {
            self.rx.frame = None;
            if f.fin {
                let msg = self.rx.msg.as_mut().expect("a data frame always has its message");
                if msg.text && msg.utf8.finish().is_err() {
                    return Some(Ready::Error(ProtocolError::InvalidUtf8));
                }
                return Some(Ready::BufMessage);
            }
        }
        None
    }

    /// Data after our close is discarded, not even unmasked; a peer that goes on sending is not closing, and
    /// reading ends.
    fn skip(&mut self, avail: usize) -> Option<Ready> {
        let rx = &mut *self.rx;
        let f = rx.frame.as_mut().expect("a frame is being read");
        f.remaining -= avail as u64;
        self.pos += avail;
        rx.skipped = rx.skipped.saturating_add(avail.min(u32::MAX as usize) as u32);
        if rx.skipped as usize > Connection::closing_data_max(self.config) {
            return Some(Ready::Overrun);
        }
        if f.remaining == 0 {
            let fin = f.fin;
            rx.frame = None;
            if fin {
                rx.msg = None;
            }
        }
        None
    }

    /// Inflates a compressed chunk as it arrives, checking the inflated size after every step, and validates
    /// what came out.
    fn inflate(&mut self, chunk: &[u8], f: InFrame) -> Option<Ready> {
        let max_msg = self.max_msg;
        let msg = self.rx.msg.as_mut().expect("a data frame always has its message");
        let d = self.deflate.as_mut().expect("RSV1 is accepted only when deflate was negotiated");
        let (window, reset) = (d.params.inflate_window(), d.params.client_no_context_takeover);
        let inf = d.inflater.get_or_insert_with(|| Inflater::new(window));
        let start = msg.buf.len();
        let mut result = inf.inflate(chunk, &mut msg.buf, max_msg);
        if result.is_ok() && f.remaining == 0 && f.fin {
            result = inf.finish(&mut msg.buf, max_msg);
            if reset {
                // Nothing carries over to the next message: hold no inflate state while idle.
                d.inflater = None;
            } else if inf.ended() {
                inf.reset();
            }
        }
        // The first fault in the inflated stream wins, whatever the split: what came out (up to the limit, which
        // every split produces) is validated before a corrupt or oversized tail counts.
        let valid_end = msg.buf.len().min(max_msg.saturating_add(1)).max(start);
        if msg.text && msg.utf8.feed(&msg.buf[start..valid_end]).is_err() {
            return Some(Ready::Error(ProtocolError::InvalidUtf8));
        }
        match result {
            Err(InflateError::TooBig) => {
                let size = msg.buf.len() as u64;
                Some(Ready::Error(ProtocolError::MessageTooLarge { size, max: max_msg }))
            }
            Err(InflateError::Corrupt) => Some(Ready::Error(ProtocolError::InvalidCompressedData)),
            Ok(()) => None,
        }
    }

    /// Appends an uncompressed chunk to the message being assembled (validating text as it comes).
    fn append(&mut self, chunk: &[u8]) -> Option<Ready> {
        let msg = self.rx.msg.as_mut().expect("a data frame always has its message");
        msg.unmask_rest();
        if msg.text && msg.utf8.feed(chunk).is_err() {
            return Some(Ready::Error(ProtocolError::InvalidUtf8));
        }
        // Over the room first (a recycled buffer's old bytes), so a read straight into the rest finds it there.
        let (data, k) = (msg.len(), chunk.len().min(msg.room));
        msg.buf[data..data + k].copy_from_slice(&chunk[..k]);
        msg.room -= k;
        let chunk = &chunk[k..];
        if chunk.is_empty() {
            return None;
        }
        let spare = self.q.as_deref().map_or(0, |q| q.spare.capacity());
        if msg.buf.capacity() - msg.buf.len() < chunk.len() && spare >= msg.buf.len() + chunk.len() {
            // Grow into the spare buffer rather than a fresh allocation.
            let mut grown = take_spare(self.q);
            grown.clear();
            grown.extend_from_slice(&msg.buf);
            park(self.q, std::mem::replace(&mut msg.buf, grown));
        }
        msg.buf.extend_from_slice(chunk);
        None
    }

    /// A new frame header, possibly completing one stashed from the previous read; then the frame it starts.
    #[inline(always)]
    fn header(&mut self, input: &mut [u8], now: Instant) -> Option<Ready> {
        let decoded = if self.rx.hdr_len > 0 {
            if !self.rx.fill_header(input, &mut self.pos) {
                return Some(Ready::None);
            }
            let n = std::mem::take(&mut self.rx.hdr_len) as usize;
            decode_header(&self.rx.hdr[..n]).map(|s| match s {
                Status::Complete((h, _)) => (h, 0),
                Status::Partial => unreachable!("the header is whole"),
            })
        } else {
            match decode_header(&input[self.pos..]) {
                Ok(Status::Complete((h, n))) => Ok((h, n)),
                Ok(Status::Partial) => {
                    let rest = &input[self.pos..];
                    self.rx.hdr[..rest.len()].copy_from_slice(rest);
                    self.rx.hdr_len = rest.len() as u8;
                    self.pos = input.len();
                    return Some(Ready::None);
                }
                Err(e) => Err(e),
            }
        };
        match decoded {
            Ok((h, used)) => {
                self.pos += used;
                self.begin(h, input, now)
            }
            Err(e) => {
                self.desync = true;
                Some(Ready::Error(e))
            }
        }
    }

    /// Applies the rules that depend on role, extensions and state to a decoded header, then starts its frame
    /// (and, for a data frame that is not a continuation, its message). A frame refused here has its payload
    /// skipped, so the closing handshake that follows stays in step with the peer's framing.
    #[inline(always)]
    fn begin(&mut self, h: Header, input: &mut [u8], now: Instant) -> Option<Ready> {
        let skip = InFrame { opcode: OpCode::Binary, fin: false, mask: [0; 4], done: 0, remaining: h.len };
        let Some(mask) = h.mask else {
            self.rx.frame = Some(skip);
            return Some(Ready::Error(ProtocolError::UnmaskedFrame));
        };
        if let Some(e) = self.refusal(&h) {
            self.rx.frame = Some(skip);
            return Some(Ready::Error(e));
        }
        let frame = InFrame { opcode: h.opcode, fin: h.fin, mask, done: 0, remaining: h.len };
        let len = h.len as usize;
        if h.opcode.is_control() {
            if input.len() - self.pos >= len {
                let (start, end) = (self.pos, self.pos + len);
                apply_mask(&mut input[start..end], mask, 0);
                self.pos = end;
                return Some(Ready::InputControl { op: h.opcode, start, end });
            }
            self.rx.ctrl.clear();
            self.rx.frame = Some(frame);
            return None;
        }
        match (h.opcode, self.rx.msg.as_mut()) {
            (OpCode::Continuation, Some(m)) => m.frames += 1,
            (OpCode::Continuation, None) => {}
            (op, _) => {
                let text = op == OpCode::Text;
                let compressed = h.rsv & 0b100 != 0;
                if !self.closing && !compressed && h.fin && input.len() - self.pos >= len {
                    // The fast path: a whole message in this read, unmasked in place and never copied.
                    let (start, end) = (self.pos, self.pos + len);
                    apply_mask(&mut input[start..end], mask, 0);
                    self.pos = end;
                    return Some(Ready::InputMessage { text, start, end });
                }
                // A large message is assembled in the spare buffer, if one is at hand.
                // (A recycled buffer's old bytes are room for reads straight into it; inflating appends.)
                let mut buf = if len >= SPARE_MIN || compressed { take_spare(self.q) } else { Vec::new() };
                if compressed {
                    buf.clear();
                }
                let room = buf.len();
                let deadline = now + self.config.message_timeout;
                let utf8 = Utf8Validator::new();
                let pending = Pending::Nothing;
                self.rx.msg = Some(Box::new(InMessage {
                    text,
                    compressed,
                    buf,
                    room,
                    pending,
                    frames: 1,
                    utf8,
                    deadline,
                    masked: None,
                }));
            }
        }
        self.rx.frame = Some(frame);
        None
    }

    /// Why a header with a mask cannot start its frame here, if it cannot.
    #[inline]
    fn refusal(&self, h: &Header) -> Option<ProtocolError> {
        // RSV1 means "compressed", and only on the first frame of a data message after deflate was negotiated
        // (RFC 7692 §6.1); every other reserved bit is refused.
        let rsv_allowed =
            if self.deflate.is_some() && matches!(h.opcode, OpCode::Text | OpCode::Binary) { 0b100 } else { 0 };
        if h.rsv & !rsv_allowed != 0 {
            return Some(ProtocolError::ReservedBits(h.rsv));
        }
        if h.opcode.is_control() {
            return None;
        }
        let (config, max_msg) = (self.config, self.max_msg as u64);
        if h.len > config.max_payload_size as u64 {
            return Some(ProtocolError::FrameTooLarge { size: h.len, max: config.max_payload_size });
        }
        match (h.opcode, self.rx.msg.as_ref()) {
            (OpCode::Continuation, None) if !self.closing => Some(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(m)) if m.frames >= config.max_frames_per_message => {
                Some(ProtocolError::TooManyFrames { max: config.max_frames_per_message })
            }
            // (For a compressed message the inflated size is checked as it is inflated.)
            (OpCode::Continuation, Some(m)) if !m.compressed && m.len() as u64 + h.len > max_msg => {
                Some(ProtocolError::MessageTooLarge { size: m.len() as u64 + h.len, max: self.max_msg })
            }
            (OpCode::Text | OpCode::Binary, Some(_)) if !self.closing => Some(ProtocolError::ExpectedContinuation),
            _ => None,
        }
    }
}

pub(super) enum Payload<'a> {
    Input(&'a [u8]),
    Ctrl,
}

/// Anything from the peer shows it is alive (and answers an outstanding keepalive ping).
#[inline]
fn heard_from(live: Option<&mut Liveness>, ping_out: &mut bool, now: Instant) {
    if let Some(l) = live {
        l.last_rx = now;
        *ping_out = false;
    }
}

/// A frame's mask offset after `n` more bytes.
#[inline]
fn advance(done: u8, n: usize) -> u8 {
    ((usize::from(done) + n) & 3) as u8
}
