//! Receiving: [`Connection::read`] turns bytes into at most one event, frame by frame (headers, unmasking,
//! fragments, inflation, UTF-8, control frames and their duties), and a protocol fault into its close.

use super::*;

impl Connection {
    /// Data bytes a peer may send after our close frame before it counts as not closing and reading ends: what
    /// it may have had in flight (two frames of the largest size, at least 1 MiB). Without it, a client that
    /// ignores a close is read from at line rate until the close timeout.
    pub fn closing_data_max(config: &Config) -> usize {
        config.max_payload_size.saturating_mul(2).clamp(1 << 20, u32::MAX as usize - 1)
    }

    /// Feeds bytes read from the peer. Returns how many bytes of `input` were used and at most one event; call
    /// again with the rest of `input` (the slice after the used bytes) until all are used and no event comes.
    /// Bytes that do not yet form anything whole are kept inside the connection. Payload bytes are unmasked in
    /// place in `input`.
    pub fn read<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
        if let Some(l) = self.live.as_deref_mut().filter(|_| !input.is_empty()) {
            // Anything from the peer shows it is alive (and answers an outstanding keepalive ping).
            l.last_rx = now;
            l.ping_deadline = None;
        }
        match &mut self.state {
            State::ReadingHead { head, .. } => {
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
                                self.state = State::AwaitingDecision { accept, deflate, deadline };
                                (n, Some(Event::Upgrade(req)))
                            }
                            Ok((req, None)) => {
                                self.state = State::AwaitingResponse { deadline };
                                (n, Some(Event::Http(req)))
                            }
                            Err(e) => (input.len(), Some(self.refuse(e, now))),
                        }
                    }
                    Err(e) => (input.len(), Some(self.refuse(e, now))),
                }
            }
            State::Open(_) | State::ClosingByUs { .. } => self.read_frames(input, now),
            // Waiting for the application, or closed: nothing is read.
            State::AwaitingDecision { .. } | State::AwaitingResponse { .. } => (0, None),
            State::Closed { .. } => (input.len(), None),
        }
    }

    /// Sends the close frame for `e` (if the close was not already sent) and waits for the peer's close.
    pub(super) fn fail(&mut self, e: ProtocolError, now: Instant) {
        if self.status.is_none() {
            self.status = Some(Box::new(CloseStatus::Error(e.clone())));
        }
        match std::mem::replace(&mut self.state, State::Closed { linger: now + self.config.close_timeout }) {
            State::Open(mut rx) => {
                let (p, n) = close_payload(e.close_code(), "");
                self.append(|out| write_frame(out, true, 0, OpCode::Close, &p[..n]));
                // The rest of a half-read frame is skipped.
                rx.drop_message();
                let deadline = now + self.config.close_timeout;
                self.state = State::ClosingByUs { rx, deadline };
            }
            // A second fault while closing: stop reading and drop once our close is written.
            other @ State::ClosingByUs { .. } => {
                let _ = other;
            }
            other => self.state = other,
        }
    }

    pub(super) fn read_frames<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
        let Connection { config, state, deflate, spare, out, .. } = self;
        let config = &**config;
        let max_msg = config.effective_max_message_size();
        let (rx, closing) = match state {
            State::Open(rx) => (rx, false),
            State::ClosingByUs { rx, .. } => (rx, true),
            _ => unreachable!("read_frames outside Open/ClosingByUs"),
        };
        rx.release_lent(spare, out);
        if rx.discard {
            return (input.len(), None);
        }
        let mut pos = 0;
        let mut desync = false;
        let ready = loop {
            if let Some(f) = &mut rx.frame {
                if f.remaining > 0 && pos == input.len() {
                    break Ready::None;
                }
                let avail = (f.remaining).min((input.len() - pos) as u64) as usize;
                if closing && !f.opcode.is_control() {
                    // Data after our close is discarded, not even unmasked; a peer that goes on sending is not
                    // closing, and reading ends.
                    f.remaining -= avail as u64;
                    pos += avail;
                    rx.skipped = rx.skipped.saturating_add(avail.min(u32::MAX as usize) as u32);
                    if rx.skipped as usize > Self::closing_data_max(config) {
                        break Ready::Overrun;
                    }
                    if f.remaining == 0 {
                        let fin = f.fin;
                        rx.frame = None;
                        if fin {
                            rx.msg = None;
                        }
                    }
                    continue;
                }
                let chunk = &mut input[pos..pos + avail];
                apply_mask(chunk, f.mask, f.done);
                f.done += avail;
                f.remaining -= avail as u64;
                pos += avail;
                let f = *f;
                if f.opcode.is_control() {
                    rx.ctrl.extend_from_slice(chunk);
                    if f.remaining == 0 {
                        rx.frame = None;
                        break Ready::BufControl { op: f.opcode };
                    }
                    continue;
                }
                let msg = rx.msg.as_mut().expect("a data frame always has its message");
                if msg.compressed {
                    // Inflate as it arrives, checking the inflated size after every step; validate what came out.
                    let d = deflate.as_mut().expect("RSV1 is accepted only when deflate was negotiated");
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
                    // The first fault in the inflated stream wins, whatever the split: what came out (up to the
                    // limit, which every split produces) is validated before a corrupt or oversized tail counts.
                    let valid_end = msg.buf.len().min(max_msg.saturating_add(1)).max(start);
                    if msg.text && msg.utf8.feed(&msg.buf[start..valid_end]).is_err() {
                        break Ready::Error(ProtocolError::InvalidUtf8);
                    }
                    match result {
                        Err(InflateError::TooBig) => {
                            let size = msg.buf.len() as u64;
                            break Ready::Error(ProtocolError::MessageTooLarge { size, max: max_msg });
                        }
                        Err(InflateError::Corrupt) => break Ready::Error(ProtocolError::InvalidCompressedData),
                        Ok(()) => {}
                    }
                } else {
                    if msg.text && msg.utf8.feed(chunk).is_err() {
                        break Ready::Error(ProtocolError::InvalidUtf8);
                    }
                    if msg.buf.capacity() - msg.buf.len() < chunk.len()
                        && spare.capacity() >= msg.buf.len() + chunk.len()
                    {
                        // Grow into the spare buffer rather than a fresh allocation.
                        let mut grown = std::mem::take(spare);
                        grown.extend_from_slice(&msg.buf);
                        park(spare, out, std::mem::replace(&mut msg.buf, grown));
                    }
                    msg.buf.extend_from_slice(chunk);
                }
                if f.remaining == 0 {
                    rx.frame = None;
                    if f.fin {
                        if msg.text && msg.utf8.finish().is_err() {
                            break Ready::Error(ProtocolError::InvalidUtf8);
                        }
                        break Ready::BufMessage;
                    }
                }
                continue;
            }

            // A new frame header, possibly completing one stashed from the previous read.
            let (h, used) = if rx.hdr_len > 0 {
                if !rx.fill_header(input, &mut pos) {
                    break Ready::None;
                }
                let n = rx.hdr_len as usize;
                rx.hdr_len = 0;
                match decode_header(&rx.hdr[..n]) {
                    Ok(Status::Complete((h, _))) => (h, 0),
                    Ok(Status::Partial) => unreachable!("the header is whole"),
                    Err(e) => {
                        desync = true;
                        break Ready::Error(e);
                    }
                }
            } else {
                match decode_header(&input[pos..]) {
                    Ok(Status::Complete((h, n))) => (h, n),
                    Ok(Status::Partial) => {
                        let rest = &input[pos..];
                        rx.hdr[..rest.len()].copy_from_slice(rest);
                        rx.hdr_len = rest.len() as u8;
                        pos = input.len();
                        break Ready::None;
                    }
                    Err(e) => {
                        desync = true;
                        break Ready::Error(e);
                    }
                }
            };
            pos += used;

            // Rules that depend on role, extensions and state. A frame refused here has its payload skipped, so the
            // closing handshake that follows stays in step with the peer's framing.
            let skip = InFrame { opcode: OpCode::Binary, fin: false, mask: [0; 4], done: 0, remaining: h.len };
            let Some(mask) = h.mask else {
                rx.frame = Some(skip);
                break Ready::Error(ProtocolError::UnmaskedFrame);
            };
            // RSV1 means "compressed", and only on the first frame of a data message after deflate was negotiated
            // (RFC 7692 §6.1); every other reserved bit is refused.
            let rsv_allowed =
                if deflate.is_some() && matches!(h.opcode, OpCode::Text | OpCode::Binary) { 0b100 } else { 0 };
            if h.rsv & !rsv_allowed != 0 {
                rx.frame = Some(skip);
                break Ready::Error(ProtocolError::ReservedBits(h.rsv));
            }
            let compressed = h.rsv & 0b100 != 0;
            let frame = InFrame { opcode: h.opcode, fin: h.fin, mask, done: 0, remaining: h.len };
            if h.opcode.is_control() {
                let len = h.len as usize;
                if input.len() - pos >= len {
                    let (start, end) = (pos, pos + len);
                    apply_mask(&mut input[start..end], mask, 0);
                    pos = end;
                    break Ready::InputControl { op: h.opcode, start, end };
                }
                rx.ctrl.clear();
                rx.frame = Some(frame);
                continue;
            }
            let refused = if h.len > config.max_payload_size as u64 {
                Some(ProtocolError::FrameTooLarge { size: h.len, max: config.max_payload_size })
            } else {
                match (h.opcode, rx.msg.as_ref()) {
                    (OpCode::Continuation, None) if !closing => Some(ProtocolError::UnexpectedContinuation),
                    (OpCode::Continuation, Some(m)) if m.frames >= config.max_frames_per_message => {
                        Some(ProtocolError::TooManyFrames { max: config.max_frames_per_message })
                    }
                    // (For a compressed message the inflated size is checked as it is inflated.)
                    (OpCode::Continuation, Some(m)) if !m.compressed && m.buf.len() as u64 + h.len > max_msg as u64 => {
                        Some(ProtocolError::MessageTooLarge { size: m.buf.len() as u64 + h.len, max: max_msg })
                    }
                    (OpCode::Text | OpCode::Binary, Some(_)) if !closing => Some(ProtocolError::ExpectedContinuation),
                    _ => None,
                }
            };
            if let Some(e) = refused {
                rx.frame = Some(skip);
                break Ready::Error(e);
            }
            match (h.opcode, rx.msg.as_mut()) {
                (OpCode::Continuation, Some(m)) => m.frames += 1,
                (OpCode::Continuation, None) => {}
                (op, _) => {
                    let len = h.len as usize;
                    let text = op == OpCode::Text;
                    if !closing && !compressed && h.fin && input.len() - pos >= len {
                        // The fast path: a whole message in this read, unmasked in place and never copied.
                        let (start, end) = (pos, pos + len);
                        apply_mask(&mut input[start..end], mask, 0);
                        pos = end;
                        break Ready::InputMessage { text, start, end };
                    }
                    // A large message is assembled in the spare buffer, if one is at hand.
                    let buf = if len >= SPARE_MIN || compressed { std::mem::take(spare) } else { Vec::new() };
                    rx.msg = Some(Box::new(InMessage {
                        text,
                        compressed,
                        buf,
                        frames: 1,
                        utf8: Utf8Validator::new(),
                        deadline: now + config.message_timeout,
                    }));
                }
            }
            rx.frame = Some(frame);
        };

        let input: &'a [u8] = input;
        match ready {
            Ready::None => (pos, None),
            Ready::InputMessage { text, start, end } => {
                let data = &input[start..end];
                if text {
                    match std::str::from_utf8(data) {
                        Ok(s) => (pos, Some(Event::Message(Message::Text(s)))),
                        Err(_) => {
                            self.fail(ProtocolError::InvalidUtf8, now);
                            (pos, Some(Event::Error(ProtocolError::InvalidUtf8)))
                        }
                    }
                } else {
                    (pos, Some(Event::Message(Message::Binary(data))))
                }
            }
            Ready::BufMessage => {
                let State::Open(rx) = &mut self.state else { unreachable!("messages are delivered while open") };
                rx.msg_delivered = true;
                let m = rx.msg.as_ref().expect("a completed message");
                let ev = if m.text {
                    // Validated incrementally above; this check cannot fail.
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
            Ready::Error(e) => {
                self.fail(e.clone(), now);
                if desync && !closing {
                    // No frame boundary can be trusted after an undecodable header, so the peer's close could not
                    // be read: send ours and close TCP without waiting for it (the shell drains until FIN).
                    self.state = State::Closed { linger: now + self.config.close_timeout };
                } else if closing {
                    // A fault while closing ends reading: drop this input and all that follows.
                    if let State::ClosingByUs { rx, .. } = &mut self.state {
                        rx.discard = true;
                    }
                }
                if closing {
                    // It is not reported a second time.
                    return (input.len(), None);
                }
                (if desync { input.len() } else { pos }, Some(Event::Error(e)))
            }
        }
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
            (Payload::Ctrl, State::Open(rx) | State::ClosingByUs { rx, .. }) => std::mem::take(&mut rx.ctrl),
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
                        if self.status.is_none() {
                            self.status = Some(Box::new(CloseStatus::Clean { code, reason, by_peer: !closing }));
                        }
                        self.state = State::Closed { linger: now + self.config.close_timeout };
                        let reason = match self.status.as_deref() {
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
                        if self.status.is_none() {
                            self.status = Some(Box::new(CloseStatus::Error(e.clone())));
                        }
                        self.state = State::Closed { linger: now + self.config.close_timeout };
                        (pos, Some(Event::Error(e)))
                    }
                }
            }
        }
    }

    /// Puts a control payload back into `rx.ctrl` (keeping its allocation) and lends it until the next call.
    pub(super) fn lend_ctrl(&mut self, ctrl: Vec<u8>) -> &[u8] {
        match &mut self.state {
            State::Open(rx) | State::ClosingByUs { rx, .. } => {
                rx.ctrl = ctrl;
                rx.ctrl_lent = true;
                &rx.ctrl
            }
            _ => unreachable!("control frames arrive while open or closing"),
        }
    }
}

pub(super) enum Payload<'a> {
    Input(&'a [u8]),
    Ctrl,
}
