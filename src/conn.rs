//! The per-connection state machine: bytes in, events and bytes out.
//!
//! A [`Connection`] never touches a socket or a clock. The shell calls, in quinn-proto's groups:
//!
//! * **input** — [`Connection::read`] with the bytes it read (they are unmasked in place, which is why it takes
//!   `&mut [u8]`), and [`Connection::handle_timeout`] when [`Connection::next_deadline`] has passed;
//! * **commands** — [`Connection::accept`] / [`Connection::reject`] / [`Connection::respond`] after a request
//!   event, and [`Connection::send`], [`Connection::ping`], [`Connection::close`];
//! * **output** — [`Connection::out`] holds bytes that MUST be written to the peer, then [`Connection::consume_out`];
//!   [`Connection::wants_read`], [`Connection::wants_write`], [`Connection::next_deadline`] and
//!   [`Connection::is_finished`] (close TCP now) tell the shell what to wait for.
//!
//! Protocol duties are outputs: a ping's pong, the echo of a close frame and the close frame that answers a
//! protocol error are appended to `out` by `read` itself; the shell only has to write `out`.
//!
//! ```text
//!  ReadingHead ──Upgrade──▶ AwaitingDecision ──accept──▶ Open ──close()/error──▶ ClosingByUs
//!      │  └──Http──▶ AwaitingResponse ─respond─┐          │                         │ peer's close
//!      │ bad head (4xx)                        ▼          │ peer's close (echoed)   ▼
//!      └──────────────────────────────────▶ Closed ◀──────┴─────────────────────────┘
//!                               (flush `out`, then the server closes TCP: RFC 6455 §7.1.1)
//! ```

use crate::close::{parse_close_payload, CloseCode, MAX_REASON_LEN};
use crate::config::Config;
use crate::error::{HandshakeError, ProtocolError, SendError};
use crate::frame::{
    decode_header, header_len, write_frame, OpCode, Status, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
use crate::handshake::{self, HeadReader, Request};
use crate::mask::apply_mask;
use crate::utf8::Utf8Validator;
use std::sync::Arc;
use std::time::Instant;

/// A complete message from the peer, borrowed until the next call into the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, already validated as UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }
}

/// What [`Connection::read`] found. Borrowed data is valid until the next call into the connection.
#[derive(Debug)]
pub enum Event<'a> {
    /// A valid upgrade request. The caller MUST call [`Connection::accept`] or [`Connection::reject`] before it
    /// feeds more bytes.
    Upgrade(Request),
    /// A plain HTTP request (no upgrade asked). The caller MUST call [`Connection::respond`].
    Http(Request),
    /// A bad handshake; its refusal is queued in `out` and the connection closes once it is written.
    HandshakeFailed(HandshakeError),
    /// A complete text or binary message.
    Message(Message<'a>),
    /// A ping; its pong is queued.
    Ping(&'a [u8]),
    /// A pong (solicited or not).
    Pong(&'a [u8]),
    /// The peer's close frame: its code (1005 when it carried none) and reason. If the peer started the closing
    /// handshake, the echo is queued.
    Close(CloseCode, &'a str),
    /// The peer broke the protocol or a limit; a close frame with [`ProtocolError::close_code`] is queued.
    Error(ProtocolError),
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The opening handshake did not complete in time.
    Handshake,
    /// A message did not complete in time (closed with 1008).
    Message,
    /// The peer did not answer our close frame in time.
    Close,
}

/// How a connection ended, as reported to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseStatus {
    /// The closing handshake completed; `code` and `reason` are those of the peer's close frame (1005 when it
    /// carried no code).
    Clean {
        /// The peer's code.
        code: CloseCode,
        /// The peer's reason.
        reason: String,
        /// Whether the peer sent the first close frame.
        by_peer: bool,
    },
    /// wskit failed the connection: the peer broke the protocol or a limit.
    Error(ProtocolError),
    /// A timeout ended it.
    TimedOut(TimeoutKind),
    /// The TCP connection ended without a closing handshake (reported as 1006).
    Lost,
}

impl CloseStatus {
    /// The code an application would report: the peer's, the one we failed with, or 1006.
    pub fn code(&self) -> CloseCode {
        match self {
            CloseStatus::Clean { code, .. } => *code,
            CloseStatus::Error(e) => e.close_code(),
            CloseStatus::TimedOut(TimeoutKind::Message) => CloseCode::POLICY,
            _ => CloseCode::ABNORMAL,
        }
    }
}

/// The payload of the frame being received.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes already unmasked (the mask offset).
    done: usize,
    remaining: u64,
}

/// A data message that spans frames or reads.
#[derive(Debug)]
struct InMessage {
    text: bool,
    buf: Vec<u8>,
    frames: usize,
    utf8: Utf8Validator,
    deadline: Instant,
}

/// Frame-reading state, alive while the connection is open or closing by us.
#[derive(Debug, Default)]
struct Rx {
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    frame: Option<InFrame>,
    msg: Option<Box<InMessage>>,
    /// A control frame's payload that spans reads.
    ctrl: Vec<u8>,
    /// The previous event lent out the completed `msg`: drop it on the next call.
    msg_delivered: bool,
    /// The previous event lent out `ctrl`: clear it on the next call.
    ctrl_lent: bool,
}

impl Rx {
    /// Completes a header stashed from an earlier read with bytes from `input[*pos..]`; true once it is whole.
    fn fill_header(&mut self, input: &[u8], pos: &mut usize) -> bool {
        loop {
            let have = self.hdr_len as usize;
            let need = if have >= 2 {
                header_len(self.hdr[0], self.hdr[1])
            } else {
                2
            };
            if have == need {
                return true;
            }
            if *pos == input.len() {
                return false;
            }
            let take = (need - have).min(input.len() - *pos);
            self.hdr[have..have + take].copy_from_slice(&input[*pos..*pos + take]);
            self.hdr_len += take as u8;
            *pos += take;
        }
    }
}

/// The connection's state; each variant holds what exists only in that state, named for what it waits for.
#[derive(Debug)]
enum State {
    /// Waiting for the whole HTTP request head.
    ReadingHead { head: HeadReader, deadline: Instant },
    /// An upgrade request was reported; waiting for `accept` or `reject`.
    AwaitingDecision { accept: String, deadline: Instant },
    /// A plain HTTP request was reported; waiting for `respond`.
    AwaitingResponse { deadline: Instant },
    /// The WebSocket is open.
    Open(Rx),
    /// We sent a close frame; waiting for the peer's.
    ClosingByUs { rx: Rx, deadline: Instant },
    /// Nothing more to read; waiting for `out` to drain, then TCP closes. Dropped at `linger` regardless.
    Closed { linger: Instant },
}

/// Where the event found by the frame loop lives (kept free of borrows so the loop can return freely).
enum Ready {
    None,
    /// A whole message inside `input[start..end]`.
    InputMessage {
        text: bool,
        start: usize,
        end: usize,
    },
    /// The assembled message in `rx.msg`.
    BufMessage,
    /// A control frame in `input[start..end]`.
    InputControl {
        op: OpCode,
        start: usize,
        end: usize,
    },
    /// A control frame in `rx.ctrl`.
    BufControl {
        op: OpCode,
    },
    Error(ProtocolError),
}

/// One WebSocket connection, server side.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    state: State,
    out: Vec<u8>,
    status: Option<CloseStatus>,
}

fn close_payload(code: CloseCode, reason: &str) -> ([u8; 2 + MAX_REASON_LEN], usize) {
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
    /// A new server-side connection, waiting for the request head; the handshake deadline runs from `now`.
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        let deadline = now + config.handshake_timeout;
        Connection {
            config,
            state: State::ReadingHead {
                head: HeadReader::default(),
                deadline,
            },
            out: Vec::new(),
            status: None,
        }
    }

    // ── output ──────────────────────────────────────────────────────────────────────────────────────────────

    /// Bytes that MUST be written to the peer, in order. After writing `n` of them call [`Connection::consume_out`].
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// Drops the first `n` bytes of [`Connection::out`] (they were written).
    pub fn consume_out(&mut self, n: usize) {
        if n >= self.out.len() {
            self.out.clear();
            // An idle connection keeps no large buffer.
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
        } else {
            self.out.drain(..n);
        }
    }

    /// Whether the shell should read from the socket: the connection expects input and its outbound queue is
    /// below the high-water mark (so a peer that never reads is not fed without bound).
    pub fn wants_read(&self) -> bool {
        matches!(
            self.state,
            State::ReadingHead { .. } | State::Open(_) | State::ClosingByUs { .. }
        ) && self.out.len() < self.config.write_high_water
    }

    /// Whether bytes wait in [`Connection::out`].
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// True once the connection is over and `out` is written (or abandoned): the shell MUST close the socket.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed { .. }) && self.out.is_empty()
    }

    /// Whether the WebSocket is open (handshake done, no close sent or received).
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Whether the upgrade was accepted (the connection is or was a WebSocket).
    pub fn was_upgraded(&self) -> bool {
        matches!(self.state, State::Open(_) | State::ClosingByUs { .. })
            || matches!(
                self.status,
                Some(CloseStatus::Clean { .. }) | Some(CloseStatus::Error(_))
            )
            || matches!(
                self.status,
                Some(CloseStatus::TimedOut(
                    TimeoutKind::Message | TimeoutKind::Close
                ))
            )
    }

    /// How the connection ended so far: `None` while it runs, or if it ended without a close (call
    /// [`Connection::close_status`] after the socket is gone to get [`CloseStatus::Lost`] in that case).
    pub fn close_status(&self) -> CloseStatus {
        self.status.clone().unwrap_or(CloseStatus::Lost)
    }

    /// The earliest time at which [`Connection::handle_timeout`] must be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::ReadingHead { deadline, .. }
            | State::AwaitingDecision { deadline, .. }
            | State::AwaitingResponse { deadline }
            | State::ClosingByUs { deadline, .. } => Some(*deadline),
            State::Open(rx) => rx
                .msg
                .as_ref()
                .filter(|_| !rx.msg_delivered)
                .map(|m| m.deadline),
            State::Closed { linger } => Some(*linger),
        }
    }

    // ── commands ────────────────────────────────────────────────────────────────────────────────────────────

    /// Accepts the upgrade reported by [`Event::Upgrade`]: queues the 101 answer (with the chosen subprotocol, which
    /// MUST be one the client offered) and opens the WebSocket.
    pub fn accept(&mut self, protocol: Option<&str>) -> Result<(), SendError> {
        let State::AwaitingDecision { accept, .. } = &self.state else {
            return Err(SendError::NotOpen);
        };
        handshake::write_accept(&mut self.out, accept, protocol, None);
        self.state = State::Open(Rx::default());
        Ok(())
    }

    /// Refuses the upgrade reported by [`Event::Upgrade`] with an HTTP status; the connection closes once the answer
    /// is written.
    pub fn reject(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        now: Instant,
    ) -> Result<(), SendError> {
        if !matches!(self.state, State::AwaitingDecision { .. }) {
            return Err(SendError::NotOpen);
        }
        handshake::write_response(&mut self.out, status, headers, body);
        self.state = State::Closed {
            linger: now + self.config.close_timeout,
        };
        Ok(())
    }

    /// Answers the plain HTTP request reported by [`Event::Http`]; the connection closes once it is written.
    pub fn respond(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        now: Instant,
    ) -> Result<(), SendError> {
        if !matches!(self.state, State::AwaitingResponse { .. }) {
            return Err(SendError::NotOpen);
        }
        handshake::write_response(&mut self.out, status, headers, body);
        self.state = State::Closed {
            linger: now + self.config.close_timeout,
        };
        Ok(())
    }

    /// Queues a message as one frame.
    pub fn send(&mut self, msg: Message<'_>) -> Result<(), SendError> {
        let op = if msg.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        self.send_frame(true, op, msg.as_bytes())
    }

    /// Queues one raw frame (the seed's "write raw frame"): the caller does its own fragmentation. Control frames
    /// must carry at most 125 bytes; a close frame is better sent with [`Connection::close`].
    pub fn send_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        if opcode.is_control() && (payload.len() > MAX_CONTROL_PAYLOAD || !fin) {
            return Err(SendError::ControlTooLong);
        }
        write_frame(&mut self.out, fin, 0, opcode, payload);
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
        write_frame(&mut self.out, true, 0, OpCode::Close, &p[..n]);
        let deadline = now + self.config.close_timeout;
        if let State::Open(mut rx) =
            std::mem::replace(&mut self.state, State::Closed { linger: deadline })
        {
            // A message still arriving is dropped; the framing position is kept.
            rx.msg = None;
            rx.msg_delivered = false;
            self.state = State::ClosingByUs { rx, deadline };
        }
        Ok(())
    }

    /// Ends the connection at once without a closing handshake (an abrupt drop; the shell closes TCP).
    pub fn abort(&mut self, now: Instant) {
        self.out.clear();
        self.state = State::Closed { linger: now };
    }

    // ── input ───────────────────────────────────────────────────────────────────────────────────────────────

    /// Acts on the deadlines that passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::ReadingHead { deadline, .. }
            | State::AwaitingDecision { deadline, .. }
            | State::AwaitingResponse { deadline }
                if now >= *deadline =>
            {
                self.status = Some(CloseStatus::TimedOut(TimeoutKind::Handshake));
                self.out.clear();
                self.state = State::Closed { linger: now };
            }
            State::Open(rx)
                if rx
                    .msg
                    .as_ref()
                    .is_some_and(|m| !rx.msg_delivered && now >= m.deadline) =>
            {
                self.fail(ProtocolError::MessageTimeout, now);
                self.status = Some(CloseStatus::TimedOut(TimeoutKind::Message));
            }
            State::ClosingByUs { deadline, .. } if now >= *deadline => {
                if self.status.is_none() {
                    self.status = Some(CloseStatus::TimedOut(TimeoutKind::Close));
                }
                self.out.clear();
                self.state = State::Closed { linger: now };
            }
            State::Closed { linger } if now >= *linger => self.out.clear(),
            _ => {}
        }
    }

    /// Feeds bytes read from the peer. Returns how many bytes of `input` were used and at most one event; call
    /// again with the rest of `input` (the slice after the used bytes) until all are used and no event comes.
    /// Bytes that do not yet form anything whole are kept inside the connection. Payload bytes are unmasked in
    /// place in `input`.
    pub fn read<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
        match &mut self.state {
            State::ReadingHead { head, .. } => {
                let max = self.config.max_handshake_bytes;
                match head.feed(input, max) {
                    Ok(Status::Partial) => (input.len(), None),
                    Ok(Status::Complete(n)) => {
                        let parsed = head.parse(input, n).and_then(|req| {
                            if !req.wants_upgrade() {
                                return Ok((req, None));
                            }
                            handshake::validate_upgrade(&req).map(|accept| (req, Some(accept)))
                        });
                        let deadline = now + self.config.handshake_timeout;
                        match parsed {
                            Ok((req, Some(accept))) => {
                                self.state = State::AwaitingDecision { accept, deadline };
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

    fn refuse(&mut self, e: HandshakeError, now: Instant) -> Event<'static> {
        handshake::write_refusal(&mut self.out, &e);
        self.state = State::Closed {
            linger: now + self.config.close_timeout,
        };
        Event::HandshakeFailed(e)
    }

    /// Sends the close frame for `e` (if the close was not already sent) and waits for the peer's close.
    fn fail(&mut self, e: ProtocolError, now: Instant) {
        if self.status.is_none() {
            self.status = Some(CloseStatus::Error(e.clone()));
        }
        match std::mem::replace(
            &mut self.state,
            State::Closed {
                linger: now + self.config.close_timeout,
            },
        ) {
            State::Open(mut rx) => {
                let (p, n) = close_payload(e.close_code(), "");
                write_frame(&mut self.out, true, 0, OpCode::Close, &p[..n]);
                // Keep the framing position (the rest of a half-read frame is skipped), drop the message.
                rx.msg = None;
                rx.msg_delivered = false;
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

    fn read_frames<'a>(
        &'a mut self,
        input: &'a mut [u8],
        now: Instant,
    ) -> (usize, Option<Event<'a>>) {
        let config = &*self.config;
        let (rx, closing) = match &mut self.state {
            State::Open(rx) => (rx, false),
            State::ClosingByUs { rx, .. } => (rx, true),
            _ => unreachable!("read_frames outside Open/ClosingByUs"),
        };
        if rx.msg_delivered {
            rx.msg_delivered = false;
            rx.msg = None;
        }
        if rx.ctrl_lent {
            rx.ctrl_lent = false;
            rx.ctrl.clear();
        }
        let mut pos = 0;
        let ready = loop {
            if let Some(f) = &mut rx.frame {
                if f.remaining > 0 && pos == input.len() {
                    break Ready::None;
                }
                let avail = (f.remaining).min((input.len() - pos) as u64) as usize;
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
                if closing {
                    if f.remaining == 0 {
                        rx.frame = None;
                        if f.fin {
                            rx.msg = None;
                        }
                    }
                    continue;
                }
                let msg = rx
                    .msg
                    .as_mut()
                    .expect("a data frame always has its message");
                if msg.text && msg.utf8.feed(chunk).is_err() {
                    break Ready::Error(ProtocolError::InvalidUtf8);
                }
                msg.buf.extend_from_slice(chunk);
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
                    Err(e) => break Ready::Error(e),
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
                    Err(e) => break Ready::Error(e),
                }
            };
            pos += used;

            // Rules that depend on role, extensions and state.
            let Some(mask) = h.mask else {
                break Ready::Error(ProtocolError::UnmaskedFrame);
            };
            if h.rsv != 0 {
                break Ready::Error(ProtocolError::ReservedBits(h.rsv));
            }
            let frame = InFrame {
                opcode: h.opcode,
                fin: h.fin,
                mask,
                done: 0,
                remaining: h.len,
            };
            if h.opcode.is_control() {
                let len = h.len as usize;
                if input.len() - pos >= len {
                    let (start, end) = (pos, pos + len);
                    apply_mask(&mut input[start..end], mask, 0);
                    pos = end;
                    break Ready::InputControl {
                        op: h.opcode,
                        start,
                        end,
                    };
                }
                rx.ctrl.clear();
                rx.frame = Some(frame);
                continue;
            }
            if h.len > config.max_payload_size as u64 {
                break Ready::Error(ProtocolError::FrameTooLarge {
                    size: h.len,
                    max: config.max_payload_size,
                });
            }
            let max_msg = config.effective_max_message_size();
            match (h.opcode, rx.msg.as_mut()) {
                (OpCode::Continuation, None) if !closing => {
                    break Ready::Error(ProtocolError::UnexpectedContinuation)
                }
                (OpCode::Continuation, Some(m)) => {
                    if m.frames >= config.max_frames_per_message {
                        break Ready::Error(ProtocolError::TooManyFrames {
                            max: config.max_frames_per_message,
                        });
                    }
                    let size = m.buf.len() as u64 + h.len;
                    if size > max_msg as u64 {
                        break Ready::Error(ProtocolError::MessageTooLarge { size, max: max_msg });
                    }
                    m.frames += 1;
                }
                (OpCode::Continuation, None) => {}
                (_, Some(_)) if !closing => {
                    break Ready::Error(ProtocolError::ExpectedContinuation)
                }
                (op, _) => {
                    let len = h.len as usize;
                    let text = op == OpCode::Text;
                    if !closing && h.fin && input.len() - pos >= len {
                        // The fast path: a whole message in this read, unmasked in place and never copied.
                        let (start, end) = (pos, pos + len);
                        apply_mask(&mut input[start..end], mask, 0);
                        pos = end;
                        break Ready::InputMessage { text, start, end };
                    }
                    rx.msg = Some(Box::new(InMessage {
                        text,
                        buf: Vec::new(),
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
                let State::Open(rx) = &mut self.state else {
                    unreachable!("messages are delivered while open")
                };
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
            Ready::InputControl { op, start, end } => {
                self.control(op, Payload::Input(&input[start..end]), pos, now)
            }
            Ready::BufControl { op } => self.control(op, Payload::Ctrl, pos, now),
            Ready::Error(e) => {
                self.fail(e.clone(), now);
                (pos, Some(Event::Error(e)))
            }
        }
    }

    fn control<'a>(
        &'a mut self,
        op: OpCode,
        payload: Payload<'a>,
        pos: usize,
        now: Instant,
    ) -> (usize, Option<Event<'a>>) {
        let closing = matches!(self.state, State::ClosingByUs { .. });
        // A control payload that spanned reads was collected in `rx.ctrl`; take it out while we act on it.
        let owned: Vec<u8> = match (&payload, &mut self.state) {
            (Payload::Ctrl, State::Open(rx) | State::ClosingByUs { rx, .. }) => {
                std::mem::take(&mut rx.ctrl)
            }
            _ => Vec::new(),
        };
        let data: &[u8] = match &payload {
            Payload::Input(d) => d,
            Payload::Ctrl => &owned,
        };
        match op {
            OpCode::Ping | OpCode::Pong => {
                if op == OpCode::Ping && !closing {
                    write_frame(&mut self.out, true, 0, OpCode::Pong, data);
                }
                let data: &'a [u8] = match payload {
                    Payload::Input(d) => d,
                    Payload::Ctrl => self.lend_ctrl(owned),
                };
                (
                    pos,
                    Some(if op == OpCode::Ping {
                        Event::Ping(data)
                    } else {
                        Event::Pong(data)
                    }),
                )
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
                            write_frame(&mut self.out, true, 0, OpCode::Close, echo);
                        }
                        if self.status.is_none() {
                            self.status = Some(CloseStatus::Clean {
                                code,
                                reason,
                                by_peer: !closing,
                            });
                        }
                        self.state = State::Closed {
                            linger: now + self.config.close_timeout,
                        };
                        let reason = match &self.status {
                            Some(CloseStatus::Clean { reason, .. }) => reason.as_str(),
                            _ => "",
                        };
                        (pos, Some(Event::Close(code, reason)))
                    }
                    Err(e) => {
                        // A bad close frame: answer with our code, then close TCP (the peer has already closed).
                        if !closing {
                            let (p, n) = close_payload(e.close_code(), "");
                            write_frame(&mut self.out, true, 0, OpCode::Close, &p[..n]);
                        }
                        if self.status.is_none() {
                            self.status = Some(CloseStatus::Error(e.clone()));
                        }
                        self.state = State::Closed {
                            linger: now + self.config.close_timeout,
                        };
                        (pos, Some(Event::Error(e)))
                    }
                }
            }
        }
    }

    /// Puts a control payload back into `rx.ctrl` (keeping its allocation) and lends it until the next call.
    fn lend_ctrl(&mut self, ctrl: Vec<u8>) -> &[u8] {
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

enum Payload<'a> {
    Input(&'a [u8]),
    Ctrl,
}
