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

use crate::close::{CloseCode, MAX_REASON_LEN};
use crate::config::Config;
use crate::deflate::{self, DeflatePool, InflateError, Inflater, Params};
use crate::error::{HandshakeError, ProtocolError, SendError};
use crate::frame::parse_close_payload;
use crate::frame::{
    decode_header, encode_header, header_len, write_frame, write_message, OpCode, Status, MAX_CONTROL_PAYLOAD,
    MAX_HEADER_LEN,
};
use crate::handshake::{self, HeadReader, Request};
use crate::mask::apply_mask;
use crate::prepared::{PreparedMessage, SharedFrames};
use crate::utf8::Utf8Validator;
use std::collections::VecDeque;
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
    /// Nothing arrived for `idle_timeout` (closed with 1001).
    Idle,
    /// A keepalive ping went unanswered for `ping_timeout` (closed with 1011).
    Keepalive,
    /// The connection reached `max_lifetime` (closed with 1001).
    Lifetime,
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
            CloseStatus::TimedOut(TimeoutKind::Idle | TimeoutKind::Lifetime) => CloseCode::GOING_AWAY,
            CloseStatus::TimedOut(TimeoutKind::Keepalive) => CloseCode::INTERNAL,
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
    /// RSV1 was set on the first frame: the payload is inflated as it arrives.
    compressed: bool,
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
    /// `out` holds the 101 answer: free its buffer once written (an idle connection keeps none).
    release_out: bool,
    /// The framing is lost (a header that cannot be decoded) or a second fault came while closing: every later
    /// byte is discarded, however the input is split.
    discard: bool,
    /// While closing by us: data bytes that came after our close frame (discarded); past
    /// [`Connection::closing_data_max`] the peer is not closing, and reading ends. (32 bits: it fits in padding.)
    skipped: u32,
}

impl Rx {
    /// Frees what the last event lent out: the delivered message (its buffer is offered to `spare`) and a lent
    /// control payload.
    #[inline]
    fn release_lent(&mut self, spare: &mut Vec<u8>, out: &mut Vec<u8>) {
        if self.msg_delivered || self.ctrl_lent {
            self.release_lent_now(spare, out);
        }
    }

    #[inline(never)]
    fn release_lent_now(&mut self, spare: &mut Vec<u8>, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.msg_delivered) {
            if let Some(m) = self.msg.take() {
                park(spare, out, m.buf);
            }
        }
        if std::mem::take(&mut self.ctrl_lent) {
            self.ctrl = Vec::new();
        }
    }

    /// Drops a message still being received (the connection is closing); the framing position is kept.
    fn drop_message(&mut self) {
        self.msg = None;
        self.msg_delivered = false;
    }

    /// Completes a header stashed from an earlier read with bytes from `input[*pos..]`; true once it is whole.
    fn fill_header(&mut self, input: &[u8], pos: &mut usize) -> bool {
        loop {
            let have = self.hdr_len as usize;
            let need = if have >= 2 { header_len(self.hdr[0], self.hdr[1]) } else { 2 };
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
    AwaitingDecision { accept: String, deflate: Option<Params>, deadline: Instant },
    /// A plain HTTP request was reported; waiting for `respond`.
    AwaitingResponse { deadline: Instant },
    /// The WebSocket is open.
    Open(Rx),
    /// We sent a close frame; waiting for the peer's (`rx.skipped` counts the data discarded meanwhile).
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
    /// More data came after our close frame than a closing peer sends ([`Connection::closing_data_max`]).
    Overrun,
}

/// One WebSocket connection, server side.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    state: State,
    /// Bytes for the peer, owned: the whole queue, or its head segment once shared frames are queued (`tail`).
    out: Vec<u8>,
    /// What is queued after `out` once a message shared with other connections was queued
    /// ([`Connection::send_shared`]); boxed, and only then.
    tail: Option<Box<Tail>>,
    /// How it ended, once known (boxed: it exists only at the end).
    status: Option<Box<CloseStatus>>,
    /// permessage-deflate, when negotiated (boxed: most of it exists only after the first compressed message).
    deflate: Option<Box<DeflateState>>,
    /// Idle, keepalive and lifetime clocks; only when one of them is configured.
    live: Option<Box<Liveness>>,
    /// Control frames (pongs, keepalive pings) waiting for the next frame boundary of `out`, so they never wait
    /// behind megabytes of queued data.
    ctrl: Vec<u8>,
    /// Part of `ctrl` has been written (its head frame is in flight).
    ctrl_started: bool,
    /// Which deadlines were running when [`Connection::deadline_to_arm`] last computed one (see there).
    armed_shape: u8,
    /// Bytes of the frame at the head of `out` not yet written (0: `out` starts at a frame boundary);
    /// `usize::MAX` before the upgrade, when `out` holds HTTP.
    frame_left: usize,
    /// A large empty buffer in passing: lent by the shell from its loop-wide pool for the next large message
    /// (assembled or queued), or released here by one (a delivered message, a written queue) for the shell to
    /// take back ([`Connection::lend_buffer`], [`Connection::take_buffer`]). Reusing them spares the page faults
    /// of fresh allocations (for 1 MiB messages that was most of the cost) while an idle connection holds none.
    spare: Vec<u8>,
}

/// The queue after `out` (see [`Connection::send_shared`]): segments in wire order, each starting at a frame
/// boundary. While `out` is empty the front segment is the head, and it is always a shared one (owned ones are
/// moved into `out` as they come to the front); appends go to the back.
#[derive(Debug, Default)]
struct Tail {
    segs: VecDeque<Seg>,
    /// Bytes in `segs` not yet written.
    bytes: usize,
    /// Bytes of the owned segments.
    own: usize,
    /// Bytes of the front segment already written (only while it is the head).
    head_off: usize,
}

#[derive(Debug)]
enum Seg {
    Own(Vec<u8>),
    Shared(Arc<SharedFrames>),
}

impl Seg {
    fn bytes(&self) -> &[u8] {
        match self {
            Seg::Own(v) => v,
            Seg::Shared(f) => f.bytes(),
        }
    }
}

impl Tail {
    /// The owned segment at the back, made if the back is shared.
    fn back_own(&mut self) -> &mut Vec<u8> {
        if !matches!(self.segs.back(), Some(Seg::Own(_))) {
            self.segs.push_back(Seg::Own(Vec::new()));
        }
        match self.segs.back_mut() {
            Some(Seg::Own(v)) => v,
            _ => unreachable!("just pushed"),
        }
    }
}

/// Shared frames shorter than this are copied into the queue instead: for a short message a copy costs less than
/// the reference and the segment it needs, and many copies of it weigh little.
pub(crate) const SHARE_MIN: usize = 1024;

/// Buffers smaller than this are not worth passing around (allocating them is cheap); the shell lends its pooled
/// ones only for messages at least this long.
pub(crate) const SPARE_MIN: usize = 64 * 1024;

/// Keeps a large buffer that fell free (emptied) for the shell to take back ([`Connection::take_buffer`]): in
/// `spare`, the larger of the two; the other in the queue `out` if that is empty and smaller. Keeping only the
/// larger and freeing the other drained the loop's pool by one buffer per 1 MiB echo, so every message then paid
/// fresh pages for its assembly (256 page faults per MiB). Buffers below [`SPARE_MIN`] are freed.
fn park(spare: &mut Vec<u8>, out: &mut Vec<u8>, mut buf: Vec<u8>) {
    if buf.capacity() < SPARE_MIN {
        return;
    }
    buf.clear();
    if buf.capacity() > spare.capacity() {
        std::mem::swap(spare, &mut buf);
    }
    if buf.capacity() >= SPARE_MIN && out.is_empty() && buf.capacity() > out.capacity() {
        *out = buf;
    }
}

/// The clocks of an open connection's liveness timers.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    opened: Instant,
    /// When bytes last arrived.
    last_rx: Instant,
    /// A keepalive ping is out; the peer must send something before this.
    ping_deadline: Option<Instant>,
}

/// permessage-deflate state of one connection; the codec contexts are created on first use.
#[derive(Debug)]
struct DeflateState {
    params: Params,
    inflater: Option<Inflater>,
    /// Only under server context takeover; otherwise the loop's pool compresses.
    compressor: Option<deflate::Compressor>,
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
            state: State::ReadingHead { head: HeadReader::default(), deadline },
            out: Vec::new(),
            tail: None,
            status: None,
            deflate: None,
            live: None,
            ctrl: Vec::new(),
            ctrl_started: false,
            armed_shape: 0,
            frame_left: usize::MAX,
            spare: Vec::new(),
        }
    }

    // ── output ──────────────────────────────────────────────────────────────────────────────────────────────

    /// Bytes that MUST be written to the peer next. After writing `n` of them call [`Connection::consume_out`], then
    /// ask again: a control frame queued meanwhile goes out at the next frame boundary, so the slice may end at
    /// one.
    #[inline]
    pub fn out(&self) -> &[u8] {
        if !self.ctrl.is_empty() && self.at_boundary() {
            return &self.ctrl;
        }
        if self.out.is_empty() {
            if let Some(t) = self.tail.as_deref() {
                return &t.segs[0].bytes()[t.head_off..];
            }
            &self.out
        } else if self.ctrl.is_empty() {
            &self.out
        } else {
            &self.out[..self.frame_left.min(self.out.len())]
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
    fn at_boundary(&self) -> bool {
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
        let mut n = self.out.capacity() + self.ctrl.capacity() + self.spare.capacity();
        if let Some(t) = self.tail.as_deref() {
            n += t.own + t.segs.capacity() * std::mem::size_of::<Seg>();
        }
        n += match &self.state {
            State::ReadingHead { head, .. } => head.held(),
            State::Open(rx) | State::ClosingByUs { rx, .. } => {
                rx.ctrl.capacity() + rx.msg.as_ref().map_or(0, |m| m.buf.capacity())
            }
            _ => 0,
        };
        if let Some(d) = self.deflate.as_deref() {
            n += if d.inflater.is_some() { deflate::INFLATER_BYTES } else { 0 };
            n += d.compressor.as_ref().map_or(0, |_| deflate::compressor_bytes(d.params.compress_window()));
        }
        n
    }

    /// Data bytes queued (control frames aside).
    #[inline]
    fn data_queued(&self) -> usize {
        self.out.len() + self.tail.as_deref().map_or(0, |t| t.bytes)
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
    fn consume_head(&mut self, n: usize) {
        if !self.ctrl.is_empty() && self.at_boundary() {
            if n >= self.ctrl.len() {
                self.ctrl = Vec::new();
                self.ctrl_started = false;
            } else if n > 0 {
                self.ctrl.drain(..n);
                self.ctrl_started = true;
            }
            return;
        }
        if self.out.is_empty() && self.tail.is_some() {
            return self.consume_shared(n);
        }
        self.advance_frames(n);
        if n >= self.out.len() {
            self.out.clear();
            // No large buffer is kept, nor the one that carried the handshake answer.
            let after_handshake = match &mut self.state {
                State::Open(rx) => std::mem::take(&mut rx.release_out),
                _ => false,
            };
            if after_handshake {
                self.out = Vec::new();
            } else if self.out.capacity() > SPARE_MIN {
                // Not kept by an idle connection: parked for the shell to take back.
                let buf = std::mem::take(&mut self.out);
                park(&mut self.spare, &mut self.out, buf);
            }
            self.promote();
        } else {
            self.out.drain(..n);
        }
    }

    /// `n` bytes of the shared segment at the head were written.
    fn consume_shared(&mut self, n: usize) {
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
    fn promote(&mut self) {
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
    fn append(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
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
    fn discard_out(&mut self) {
        self.out.clear();
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
    fn advance_frames(&mut self, mut n: usize) {
        if self.frame_left == usize::MAX {
            return;
        }
        let mut pos = 0;
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
    fn queue_control(&mut self, op: OpCode, payload: &[u8]) {
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
        write_frame(&mut self.ctrl, true, 0, op, payload);
    }

    /// Whether the shell should read from the socket: the connection expects input and its outbound queue is
    /// below the high-water mark (so a peer that never reads is not fed without bound).
    pub fn wants_read(&self) -> bool {
        matches!(self.state, State::ReadingHead { .. } | State::Open(_) | State::ClosingByUs { .. })
            && self.data_queued() < self.config.write_high_water
    }

    /// Whether bytes wait in [`Connection::out`].
    #[inline]
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || !self.ctrl.is_empty() || self.tail.is_some()
    }

    /// True once the connection is over and `out` is written (or abandoned): the shell MUST close the socket.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed { .. }) && self.out.is_empty() && self.ctrl.is_empty() && self.tail.is_none()
    }

    /// Whether the WebSocket is open (handshake done, no close sent or received).
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// How the connection ended so far: `None` while it runs, or if it ended without a close (call
    /// [`Connection::close_status`] after the socket is gone to get [`CloseStatus::Lost`] in that case).
    pub fn close_status(&self) -> CloseStatus {
        self.status.as_deref().cloned().unwrap_or(CloseStatus::Lost)
    }

    /// The earliest time at which [`Connection::handle_timeout`] must be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::ReadingHead { deadline, .. }
            | State::AwaitingDecision { deadline, .. }
            | State::AwaitingResponse { deadline }
            | State::ClosingByUs { deadline, .. } => Some(*deadline),
            State::Open(rx) => {
                let msg = rx.msg.as_ref().filter(|_| !rx.msg_delivered).map(|m| m.deadline);
                match (msg, self.live_deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Closed { linger } => Some(*linger),
        }
    }

    /// For a caller that keeps one timer per connection, armed at `armed` (`None`: no timer): the earlier deadline
    /// to arm it for, or `None` when the armed timer still comes first. It answers as
    /// `next_deadline().filter(|d| armed.map_or(true, |a| *d < a))` would, without recomputing the deadline on the
    /// steady path: while the connection is open and no deadline has started or stopped since the last answer
    /// (no message begun, no keepalive ping sent or answered), its deadlines can only have moved later (the peer's
    /// traffic pushes the idle and keepalive ones back). A timer that then fires early finds nothing due; the caller
    /// disarms it and asks again.
    #[inline]
    pub fn deadline_to_arm(&mut self, armed: Option<Instant>) -> Option<Instant> {
        let shape = match &self.state {
            // Bit 0: open; bit 1: a message is being assembled; bit 2: a keepalive ping awaits its pong.
            State::Open(rx) => {
                let msg = rx.msg.is_some() && !rx.msg_delivered;
                let ping = self.live.as_deref().is_some_and(|l| l.ping_deadline.is_some());
                1 | (msg as u8) << 1 | (ping as u8) << 2
            }
            // Deadlines set once per state, but the state may change within its variant (a close cut short):
            // always computed.
            _ => 0,
        };
        if shape != 0 && shape == self.armed_shape && armed.is_some() {
            return None;
        }
        self.armed_shape = shape;
        self.next_deadline().filter(|d| armed.map_or(true, |a| *d < a))
    }

    /// The earliest liveness deadline: idle, keepalive (ping due or pong overdue) or lifetime.
    fn live_deadline(&self) -> Option<Instant> {
        let l = self.live.as_deref()?;
        let c = &self.config;
        let idle = c.idle_timeout.map(|d| l.last_rx + d);
        let ping = l.ping_deadline.or_else(|| c.ping_interval.map(|d| l.last_rx + d));
        let life = c.max_lifetime.map(|d| l.opened + d);
        [idle, ping, life].into_iter().flatten().min()
    }

    // ── commands ────────────────────────────────────────────────────────────────────────────────────────────

    /// Accepts the upgrade reported by [`Event::Upgrade`]: queues the 101 answer (with the chosen subprotocol, which
    /// MUST be one the client offered) and opens the WebSocket.
    ///
    /// With `allow_deflate` false, permessage-deflate is not answered even if it was offered (the shell uses this
    /// to cap live compression contexts).
    ///
    /// The idle, keepalive and lifetime clocks start at `now`.
    pub fn accept(&mut self, protocol: Option<&str>, allow_deflate: bool, now: Instant) -> Result<(), SendError> {
        let State::AwaitingDecision { accept, deflate, .. } = &self.state else { return Err(SendError::NotOpen) };
        let params = deflate.filter(|_| allow_deflate);
        let ext = params.map(|p| p.response());
        handshake::write_accept(&mut self.out, accept, protocol, ext.as_deref());
        // The 101 head counts as one unit: the first frame boundary is right after it.
        self.frame_left = self.out.len();
        self.deflate = params.map(|params| Box::new(DeflateState { params, inflater: None, compressor: None }));
        self.state = State::Open(Rx { release_out: true, ..Rx::default() });
        let c = &self.config;
        if c.idle_timeout.is_some() || c.ping_interval.is_some() || c.max_lifetime.is_some() {
            self.live = Some(Box::new(Liveness { opened: now, last_rx: now, ping_deadline: None }));
        }
        Ok(())
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    pub fn deflate_params(&self) -> Option<&Params> {
        self.deflate.as_ref().map(|d| &d.params)
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
        self.final_response(status, headers, body, now);
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
        self.final_response(status, headers, body, now);
        Ok(())
    }

    /// Queues an HTTP response after which the connection closes.
    fn final_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], now: Instant) {
        handshake::write_response(&mut self.out, status, headers, body);
        self.state = State::Closed { linger: now + self.config.close_timeout };
    }

    /// Appends a data message to `out` (see [`write_message`]), in the spare buffer if `out` is empty and too small.
    fn queue_message(&mut self, compressed: bool, op: OpCode, payload: &[u8]) {
        self.make_room(payload.len());
        let max = self.config.max_frame_out;
        self.append(|out| write_message(out, compressed, op, payload, max));
    }

    /// Before `payload` bytes are queued: an empty, too small `out` is swapped for the spare buffer if it fits.
    fn make_room(&mut self, payload: usize) {
        let frames = match self.config.max_frame_out {
            0 => 1,
            max => 1 + payload / max,
        };
        let need = payload + MAX_HEADER_LEN * frames;
        if self.out.is_empty() && self.tail.is_none() && self.out.capacity() < need && self.spare.capacity() >= need {
            std::mem::swap(&mut self.out, &mut self.spare);
        }
    }

    /// Lends the connection an empty buffer for its next large message (the shell's pool; see `spare`). It is
    /// refused (handed back) when the connection already holds one.
    pub fn lend_buffer(&mut self, mut buf: Vec<u8>) -> Option<Vec<u8>> {
        if self.spare.capacity() > 0 {
            return Some(buf);
        }
        buf.clear();
        self.spare = buf;
        None
    }

    /// [`Connection::take_buffer`] has a buffer to hand back.
    #[inline]
    pub fn holds_buffer(&self) -> bool {
        self.spare.capacity() > 0 || self.out_parked()
    }

    /// The queue is empty and holds a large buffer ([`park`]ed there, or left by a written queue).
    #[inline]
    fn out_parked(&self) -> bool {
        self.out.is_empty() && self.out.capacity() >= SPARE_MIN
    }

    /// Takes back a spare buffer: one lent and not used, or one a finished message or a written queue released.
    /// Call it until it returns `None` (a connection can hold two: the spare, and an empty queue's large buffer).
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        if self.spare.capacity() > 0 {
            return Some(std::mem::take(&mut self.spare));
        }
        self.out_parked().then(|| std::mem::take(&mut self.out))
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
            Some(p) if m.payload.len() >= p.min_size => Some((p.compress_window(), p.level)),
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
    fn with_delivered<R>(&mut self, f: impl FnOnce(&mut Self, &[u8]) -> R) -> Option<R> {
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

    /// `written` bytes of the frame `header` + [`Connection::delivered`] went to the peer; the rest is queued.
    pub fn sent_delivered_direct(&mut self, header: &[u8], written: usize) {
        self.with_delivered(|c, payload| c.sent_direct(header, payload, written));
    }

    fn send_payload(&mut self, op: OpCode, payload: &[u8], pool: &mut DeflatePool) -> Result<(), SendError> {
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
            pool.compress(p.compress_window(), p.level, payload, &mut z);
            if z.len() < payload.len() {
                self.queue_message(true, op, &z);
            } else {
                self.queue_message(false, op, payload);
            }
        } else {
            // With context takeover the compressor's window now holds this message, so it must go out compressed
            // (the peer's inflater has to see it too).
            let c = d.compressor.get_or_insert_with(|| deflate::Compressor::new(p.level, p.compress_window()));
            c.compress(payload, &mut z);
            self.queue_message(true, op, &z);
        }
        if z.capacity() > 1 << 20 {
            z = Vec::new();
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

    /// Refuses the connection before its request head, for a fault the shell found in what precedes the head
    /// (a PROXY protocol header): queues the HTTP answer to `e`; the connection closes once it is written. Only
    /// while the head is awaited (else `Err(NotOpen)`).
    pub fn refuse_before_head(&mut self, e: HandshakeError, now: Instant) -> Result<(), SendError> {
        if !matches!(self.state, State::ReadingHead { .. }) {
            return Err(SendError::NotOpen);
        }
        self.refuse(e, now);
        Ok(())
    }

    /// Drops a connection whose peer does not read (the shell found more than `max_queued_bytes` waiting): the
    /// queue is discarded and the connection ends at once with [`ProtocolError::SlowConsumer`].
    pub fn drop_slow(&mut self, queued: usize, now: Instant) {
        if self.status.is_none() {
            self.status = Some(Box::new(CloseStatus::Error(ProtocolError::SlowConsumer { queued })));
        }
        self.abort(now);
    }

    /// Whether the peer is in the middle of sending something: a partial frame header, a frame's payload, or a
    /// message's later fragments. (A shell acknowledges at once then, so that a sender waiting on Nagle's
    /// algorithm is not held up by a delayed ACK.)
    pub fn is_mid_message(&self) -> bool {
        match &self.state {
            State::ReadingHead { head, .. } => !head.is_empty(),
            State::Open(rx) | State::ClosingByUs { rx, .. } => {
                rx.hdr_len > 0 || rx.frame.is_some() || (rx.msg.is_some() && !rx.msg_delivered)
            }
            _ => false,
        }
    }

    /// Frees what the last event lent out (a completed message's buffer, a control payload). [`Connection::read`]
    /// does this itself on its next call; a shell calls it when a read burst is over, so an idle connection holds
    /// no message buffer.
    #[inline]
    pub fn reclaim(&mut self) {
        if let State::Open(rx) | State::ClosingByUs { rx, .. } = &mut self.state {
            rx.release_lent(&mut self.spare, &mut self.out);
        }
    }

    /// Checks the state machine's invariants (`debug_assert!`, so only in debug builds). The shell calls it after
    /// every read unless `Config::prod` is set.
    pub fn debug_check_invariants(&self) {
        if let State::Open(rx) | State::ClosingByUs { rx, .. } = &self.state {
            debug_assert!((rx.hdr_len as usize) < MAX_HEADER_LEN, "a whole header is never left stashed");
            debug_assert!(rx.ctrl.len() <= MAX_CONTROL_PAYLOAD, "control payloads are at most 125 bytes");
            if let Some(m) = &rx.msg {
                debug_assert!(m.buf.len() <= self.config.effective_max_message_size(), "message limit held");
                debug_assert!(m.frames <= self.config.max_frames_per_message, "frame limit held");
            }
            if let (State::Open(_), Some(f)) = (&self.state, rx.frame) {
                debug_assert!(f.opcode.is_control() || rx.msg.is_some(), "a data frame belongs to a message");
            }
        }
    }

    // ── input ───────────────────────────────────────────────────────────────────────────────────────────────

    /// Data bytes a peer may send after our close frame before it counts as not closing and reading ends: what
    /// it may have had in flight (two frames of the largest size, at least 1 MiB). Without it, a client that
    /// ignores a close is read from at line rate until the close timeout.
    pub fn closing_data_max(config: &Config) -> usize {
        config.max_payload_size.saturating_mul(2).clamp(1 << 20, u32::MAX as usize - 1)
    }

    /// Acts on the deadlines that passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::ReadingHead { deadline, .. }
            | State::AwaitingDecision { deadline, .. }
            | State::AwaitingResponse { deadline }
                if now >= *deadline =>
            {
                self.status = Some(Box::new(CloseStatus::TimedOut(TimeoutKind::Handshake)));
                self.discard_out();
                self.state = State::Closed { linger: now };
            }
            State::Open(rx) if rx.msg.as_ref().is_some_and(|m| !rx.msg_delivered && now >= m.deadline) => {
                self.fail(ProtocolError::MessageTimeout, now);
                self.status = Some(Box::new(CloseStatus::TimedOut(TimeoutKind::Message)));
            }
            State::Open(_) if self.live_deadline().is_some_and(|d| now >= d) => self.liveness_timeout(now),
            State::ClosingByUs { deadline, .. } if now >= *deadline => {
                if self.status.is_none() {
                    self.status = Some(Box::new(CloseStatus::TimedOut(TimeoutKind::Close)));
                }
                self.discard_out();
                self.state = State::Closed { linger: now };
            }
            State::Closed { linger } if now >= *linger => {
                self.discard_out();
                self.ctrl_started = false;
            }
            _ => {}
        }
    }

    /// A liveness deadline passed: close for lifetime, idle or an unanswered ping, or send the keepalive ping.
    fn liveness_timeout(&mut self, now: Instant) {
        let Some(l) = self.live.as_deref_mut() else { return };
        let c = &self.config;
        let kind = if c.max_lifetime.is_some_and(|d| now >= l.opened + d) {
            Some((TimeoutKind::Lifetime, CloseCode::GOING_AWAY, "connection lifetime reached"))
        } else if c.idle_timeout.is_some_and(|d| now >= l.last_rx + d) {
            Some((TimeoutKind::Idle, CloseCode::GOING_AWAY, "idle timeout"))
        } else if l.ping_deadline.is_some_and(|d| now >= d) {
            Some((TimeoutKind::Keepalive, CloseCode::INTERNAL, "keepalive ping timeout"))
        } else {
            if l.ping_deadline.is_none() && c.ping_interval.is_some_and(|d| now >= l.last_rx + d) {
                l.ping_deadline = Some(now + c.ping_timeout);
                if self.is_open() {
                    self.queue_control(OpCode::Ping, b"wskit");
                }
            }
            None
        };
        if let Some((kind, code, reason)) = kind {
            let _ = self.close(code, reason, now);
            self.status = Some(Box::new(CloseStatus::TimedOut(kind)));
        }
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

    fn refuse(&mut self, e: HandshakeError, now: Instant) -> Event<'static> {
        handshake::write_refusal(&mut self.out, &e);
        self.state = State::Closed { linger: now + self.config.close_timeout };
        Event::HandshakeFailed(e)
    }

    /// Sends the close frame for `e` (if the close was not already sent) and waits for the peer's close.
    fn fail(&mut self, e: ProtocolError, now: Instant) {
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

    fn read_frames<'a>(&'a mut self, input: &'a mut [u8], now: Instant) -> (usize, Option<Event<'a>>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::write_client_frame;
    use std::time::Duration;

    const HEAD: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    /// An owned copy of an event, for transcripts.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Upgrade(String),
        Http(String),
        Refused(u16),
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(u16, String),
        Error(ProtocolError),
    }

    fn config() -> Arc<Config> {
        Arc::new(Config::new().max_payload_size(1 << 20).max_frames_per_message(1000))
    }

    /// Feeds `data` cut at `splits` (accepting every upgrade) and returns the events and everything written.
    fn run(cfg: Arc<Config>, data: &[u8], splits: &[usize]) -> (Vec<Ev>, Vec<u8>, Connection) {
        let now = Instant::now();
        let mut c = Connection::new(cfg, now);
        let mut evs = Vec::new();
        let mut written = Vec::new();
        let mut bounds = splits.to_vec();
        bounds.push(data.len());
        let mut last = 0;
        for b in bounds {
            let mut chunk = data[last..b].to_vec();
            last = b;
            let mut off = 0;
            let total = chunk.len();
            loop {
                let (n, ev) = c.read(&mut chunk[off..], now);
                off += n;
                let mut upgraded = false;
                match ev {
                    None if n == 0 || off == total => break,
                    None => continue,
                    Some(Event::Upgrade(r)) => {
                        evs.push(Ev::Upgrade(r.uri().to_string()));
                        upgraded = true;
                    }
                    Some(Event::Http(r)) => evs.push(Ev::Http(r.uri().to_string())),
                    Some(Event::HandshakeFailed(e)) => evs.push(Ev::Refused(e.status())),
                    Some(Event::Message(Message::Text(t))) => evs.push(Ev::Text(t.to_string())),
                    Some(Event::Message(Message::Binary(b))) => evs.push(Ev::Binary(b.to_vec())),
                    Some(Event::Ping(p)) => evs.push(Ev::Ping(p.to_vec())),
                    Some(Event::Pong(p)) => evs.push(Ev::Pong(p.to_vec())),
                    Some(Event::Close(code, r)) => evs.push(Ev::Close(code.0, r.to_string())),
                    Some(Event::Error(e)) => evs.push(Ev::Error(e)),
                }
                if upgraded {
                    c.accept(None, true, Instant::now()).unwrap();
                }
                c.drain_out(&mut written);
                if off == total {
                    // One more call: an event may still be due with no bytes left (a zero-length frame).
                    let (_, ev) = c.read(&mut [], now);
                    assert!(ev.is_none(), "event after all input was used");
                    break;
                }
            }
        }
        (evs, written, c)
    }

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_client_frame(&mut v, fin, 0, op, [0x11, 0x22, 0x33, 0x44], payload);
        v
    }

    /// A lent buffer carries a large message that spans reads (no fresh allocation), comes back after the
    /// message is delivered, and then carries the queued echo; an idle connection holds none.
    #[test]
    fn a_lent_buffer_carries_a_large_message_then_its_echo() {
        let now = Instant::now();
        let mut c = Connection::new(Arc::new(Config::new().deflate(false)), now);
        let mut head = HEAD.to_vec();
        let (n, ev) = c.read(&mut head, now);
        assert!(n == HEAD.len() && matches!(ev, Some(Event::Upgrade(_))));
        c.accept(None, false, now).unwrap();
        let mut sink = Vec::new();
        c.drain_out(&mut sink);
        let lent = Vec::with_capacity(1 << 20);
        let ptr = lent.as_ptr();
        assert!(c.lend_buffer(lent).is_none());
        assert!(c.lend_buffer(Vec::with_capacity(1 << 20)).is_some(), "one spare at a time");
        let payload: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let data = frame(true, OpCode::Binary, &payload);
        let (first, rest) = data.split_at(100_000);
        let (mut a, mut b) = (first.to_vec(), rest.to_vec());
        assert_eq!(c.read(&mut a, now).1.map(|_| ()), None);
        let (_, ev) = c.read(&mut b, now);
        match ev {
            Some(Event::Message(Message::Binary(m))) => {
                assert_eq!(m, &payload[..]);
                assert_eq!(m.as_ptr(), ptr, "assembled in the lent buffer");
            }
            _ => panic!("expected the message"),
        }
        c.reclaim();
        // The delivered message's buffer is the spare again, and the echo is queued in it.
        c.send(Message::Binary(&payload)).unwrap();
        assert_eq!(c.out().as_ptr(), ptr, "queued in the same buffer");
        assert!(c.take_buffer().is_none());
        let n = c.out().len();
        c.consume_out(n);
        let back = c.take_buffer().expect("the written queue's buffer is offered back");
        assert_eq!(back.as_ptr(), ptr);
        assert!(c.take_buffer().is_none(), "an idle connection holds no spare");
    }

    /// A large echo uses two large buffers (the message assembled in one, the answer queued in another): both go
    /// back to the shell, none is freed. (Freeing one per echo drained the loop's pool and every message then
    /// faulted in fresh pages.)
    #[test]
    fn both_large_buffers_of_an_echo_go_back() {
        let now = Instant::now();
        let mut c = Connection::new(Arc::new(Config::new().deflate(false)), now);
        let mut head = HEAD.to_vec();
        assert!(matches!(c.read(&mut head, now).1, Some(Event::Upgrade(_))));
        c.accept(None, false, now).unwrap();
        let mut sink = Vec::new();
        c.drain_out(&mut sink);
        // Within the default 512 KiB frame limit.
        let payload: Vec<u8> = (0..400_000u32).map(|i| i as u8).collect();
        for round in 0..3 {
            let (a, b) = (Vec::with_capacity(1 << 20), Vec::with_capacity(1 << 20));
            let mut lent = vec![a.as_ptr(), b.as_ptr()];
            assert!(c.lend_buffer(a).is_none());
            let mut data = frame(true, OpCode::Binary, &payload);
            let (first, rest) = data.split_at_mut(100_000);
            assert!(c.read(first, now).1.is_none());
            assert!(matches!(c.read(rest, now).1, Some(Event::Message(_))), "round {round}");
            // In the shell's order: a second buffer lent before the answer is queued (the first holds the
            // message), the message released after the handler ran, then the queue written.
            assert!(c.lend_buffer(b).is_none());
            c.send(Message::Binary(&payload)).unwrap();
            c.reclaim();
            c.drain_out(&mut sink);
            let mut back = Vec::new();
            while let Some(buf) = c.take_buffer() {
                back.push(buf.as_ptr());
            }
            lent.sort();
            back.sort();
            assert_eq!(back, lent, "round {round}: both buffers back");
        }
    }

    /// A frame written straight from the caller's buffer, cut by the socket at every point: the peer gets the same
    /// bytes as from a queued send, and a control frame that comes meanwhile waits for the frame's end once it
    /// has begun (as behind a queued one).
    #[test]
    fn a_direct_frame_cut_anywhere_ends_as_a_queued_one_would() {
        let now = Instant::now();
        let open_with = |config: Config| {
            let mut c = Connection::new(Arc::new(config), now);
            let mut head = HEAD.to_vec();
            let _ = c.read(&mut head, now);
            c.accept(None, false, now).unwrap();
            c.drain_out(&mut Vec::new());
            c
        };
        let open = || open_with(Config::new().deflate(false));
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect(); // a 16-bit length: 4 header bytes
        let mut queued = open();
        queued.send(Message::Binary(&payload)).unwrap();
        let mut unstarted = Vec::new();
        queued.ping(b"p").unwrap();
        queued.drain_out(&mut unstarted); // a ping overtakes a frame not yet begun
        let mut frame_then_ping = unstarted[3..].to_vec();
        frame_then_ping.extend_from_slice(&unstarted[..3]);
        for written in 0..=payload.len() + 4 {
            let expected = if written == 0 { &unstarted } else { &frame_then_ping };
            let mut c = open();
            let (head, hl) = c.direct_header(false, payload.len()).expect("nothing queued: direct");
            let mut wire = head[..hl].to_vec();
            wire.extend_from_slice(&payload);
            wire.truncate(written);
            c.sent_direct(&head[..hl], &payload, written);
            assert!(c.direct_header(false, 1).is_none() || written == hl + payload.len());
            c.ping(b"p").unwrap();
            c.drain_out(&mut wire);
            assert_eq!(&wire, expected, "cut at {written}");
        }
        // A message assembled from two frames, written back from its own buffer, cut anywhere.
        let mut data = frame(false, OpCode::Binary, &payload[..100]);
        data.extend(frame(true, OpCode::Continuation, &payload[100..]));
        for written in 0..=payload.len() + 4 {
            let mut c = open();
            let mut input = data.clone();
            let (used, ev) = c.read(&mut input, now);
            let (_, ev) = if ev.is_none() { c.read(&mut input[used..], now) } else { (used, ev) };
            assert!(matches!(ev, Some(Event::Message(Message::Binary(m))) if m == &payload[..]));
            assert_eq!(c.delivered(), Some(&payload[..]), "assembled here");
            let (head, hl) = c.direct_header(false, payload.len()).unwrap();
            let mut wire = head[..hl].to_vec();
            wire.extend_from_slice(&payload);
            wire.truncate(written);
            c.sent_delivered_direct(&head[..hl], written);
            c.ping(b"p").unwrap();
            c.drain_out(&mut wire);
            assert_eq!(&wire, if written == 0 { &unstarted } else { &frame_then_ping }, "cut at {written}");
        }
        // Not direct: with something queued ahead, or when it would be compressed or fragmented.
        let mut c = open();
        c.ping(b"x").unwrap();
        assert!(c.direct_header(true, 10).is_none());
        let c = open_with(Config::new().deflate(false).max_frame_out(100));
        assert!(c.direct_header(true, 101).is_none() && c.direct_header(true, 100).is_some());
        let mut c = open();
        c.close(CloseCode::NORMAL, "", now).unwrap();
        assert!(c.direct_header(true, 10).is_none(), "closing");
        assert!(Connection::new(Arc::new(Config::new()), now).direct_header(true, 10).is_none(), "not open yet");
    }

    /// Owned frames and frames shared with other queues, interleaved, come out in order however the writes are
    /// cut (one slice at a time or vectored), and a ping queued after any cut goes out at the next frame boundary.
    #[test]
    fn shared_frames_keep_their_place_in_the_queue_at_every_cut() {
        let now = Instant::now();
        let open = || {
            let mut c = Connection::new(Arc::new(Config::new().deflate(false)), now);
            let mut head = HEAD.to_vec();
            let _ = c.read(&mut head, now);
            c.accept(None, false, now).unwrap();
            c.drain_out(&mut Vec::new());
            c
        };
        let mut pool = DeflatePool::new();
        let mut s1 = PreparedMessage::new(false, &[1u8; 3000]);
        let mut s2 = PreparedMessage::new(true, &b"s".repeat(1500));
        let mut small = PreparedMessage::new(true, b"short: copied");
        let mut fill = |c: &mut Connection, pool: &mut DeflatePool| {
            c.send(Message::Binary(&[7u8; 2000])).unwrap();
            c.send_prepared(&mut s1, pool).unwrap();
            c.send(Message::Text("between")).unwrap();
            c.send_prepared(&mut s2, pool).unwrap();
            c.send_prepared(&mut small, pool).unwrap();
            c.send_prepared(&mut s1, pool).unwrap();
            c.send(Message::Text("end")).unwrap();
        };
        let mut reference = Vec::new();
        let mut boundaries = vec![0];
        for (op, payload) in [
            (OpCode::Binary, vec![7u8; 2000]),
            (OpCode::Binary, vec![1u8; 3000]),
            (OpCode::Text, b"between".to_vec()),
            (OpCode::Text, b"s".repeat(1500)),
            (OpCode::Text, b"short: copied".to_vec()),
            (OpCode::Binary, vec![1u8; 3000]),
            (OpCode::Text, b"end".to_vec()),
        ] {
            write_frame(&mut reference, true, 0, op, &payload);
            boundaries.push(reference.len());
        }
        let mut c = open();
        fill(&mut c, &mut pool);
        assert_eq!(c.queued(), reference.len());
        assert!(c.tail.is_some(), "the long prepared frames are shared");
        for step in [1, 7, 100, 2003, 4096, 1 << 20] {
            let mut c = open();
            fill(&mut c, &mut pool);
            let mut wire = Vec::new();
            loop {
                let mut parts: [&[u8]; 4] = [&[]; 4];
                let k = c.out_slices(&mut parts);
                if k == 0 {
                    break;
                }
                let mut n = 0;
                for p in &parts[..k] {
                    let take = p.len().min(step - n);
                    wire.extend_from_slice(&p[..take]);
                    n += take;
                    if n == step {
                        break;
                    }
                }
                c.consume_out(n);
            }
            assert_eq!(wire, reference, "written {step} bytes at a time");
            assert!(!c.wants_write() && c.queued() == 0);
        }
        let mut ping = Vec::new();
        write_frame(&mut ping, true, 0, OpCode::Ping, b"p");
        for cut in 0..=reference.len() {
            let mut c = open();
            fill(&mut c, &mut pool);
            let mut wire = Vec::new();
            while wire.len() < cut {
                let n = c.out().len().min(cut - wire.len());
                wire.extend_from_slice(&c.out()[..n]);
                c.consume_out(n);
            }
            if cut < reference.len() {
                c.ping(b"p").unwrap();
            }
            c.drain_out(&mut wire);
            let at = *boundaries.iter().find(|b| **b >= cut).unwrap();
            let mut expected = reference[..at].to_vec();
            if cut < reference.len() {
                expected.extend_from_slice(&ping);
            }
            expected.extend_from_slice(&reference[at..]);
            assert_eq!(wire, expected, "ping queued after {cut} bytes");
        }
    }

    fn session() -> Vec<u8> {
        let mut d = HEAD.to_vec();
        d.extend(frame(true, OpCode::Text, b"Hello"));
        d.extend(frame(true, OpCode::Binary, &[7u8; 200])); // 16-bit length
        d.extend(frame(true, OpCode::Text, b"")); // empty message
                                                  // "κόσμε" split inside a code point across fragments, a ping in between.
        let k = "κόσμε".as_bytes();
        d.extend(frame(false, OpCode::Text, &k[..3]));
        d.extend(frame(true, OpCode::Ping, b"p1"));
        d.extend(frame(false, OpCode::Continuation, &k[3..7]));
        d.extend(frame(false, OpCode::Continuation, b""));
        d.extend(frame(true, OpCode::Continuation, &k[7..]));
        d.extend(frame(true, OpCode::Pong, b"unsolicited"));
        d.extend(frame(true, OpCode::Binary, &vec![3u8; 70_000])); // 64-bit length
        d.extend(frame(true, OpCode::Close, b"\x03\xe8bye"));
        d
    }

    fn expected_session() -> Vec<Ev> {
        vec![
            Ev::Upgrade("/echo".into()),
            Ev::Text("Hello".into()),
            Ev::Binary(vec![7; 200]),
            Ev::Text(String::new()),
            Ev::Ping(b"p1".to_vec()),
            Ev::Text("κόσμε".into()),
            Ev::Pong(b"unsolicited".to_vec()),
            Ev::Binary(vec![3; 70_000]),
            Ev::Close(1000, "bye".into()),
        ]
    }

    #[test]
    fn one_shot_session_transcript() {
        let (evs, out, c) = run(config(), &session(), &[]);
        assert_eq!(evs, expected_session());
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        // The pong and the close echo follow the 101, unmasked.
        let tail = &out[out.len() - 8..];
        assert_eq!(tail, b"\x8a\x02p1\x88\x02\x03\xe8");
        assert!(c.is_finished());
        assert_eq!(
            c.close_status(),
            CloseStatus::Clean { code: CloseCode::NORMAL, reason: "bye".into(), by_peer: true }
        );
    }

    /// Keepalive, idle and lifetime on virtual time: no clock is read, deadlines go out and time comes in.
    #[test]
    fn liveness_deadlines_on_virtual_time() {
        let s = Duration::from_secs;
        let cfg = Arc::new(Config::new().liveness(Some(s(100)), Some(s(10)), s(5), Some(s(1000))));
        let t0 = Instant::now();
        let mut c = Connection::new(cfg, t0);
        let mut head = HEAD.to_vec();
        assert!(matches!(c.read(&mut head, t0).1, Some(Event::Upgrade(_))));
        c.accept(None, false, t0).unwrap();
        c.consume_out(c.out().len());
        assert_eq!(c.next_deadline(), Some(t0 + s(10)), "the ping is due first");
        c.handle_timeout(t0 + s(10));
        assert_eq!(c.out(), [0x89, 5, b'w', b's', b'k', b'i', b't']);
        c.consume_out(7);
        assert_eq!(c.next_deadline(), Some(t0 + s(15)), "then the answer");
        // The peer says anything at t0+12: alive again; the next ping is due 10 s later.
        let mut pong = Vec::new();
        write_client_frame(&mut pong, true, 0, OpCode::Pong, [1, 2, 3, 4], b"wskit");
        let _ = c.read(&mut pong, t0 + s(12));
        assert_eq!(c.next_deadline(), Some(t0 + s(22)));
        c.handle_timeout(t0 + s(22));
        c.consume_out(c.out().len());
        // This one goes unanswered: 1011 at t0+27.
        c.handle_timeout(t0 + s(27));
        assert_eq!(&c.out()[..4], [0x88, 24, 0x03, 0xf3]);
        assert!(!c.is_open());
        c.consume_out(c.out().len());

        // Idle (no keepalive) and lifetime.
        let cfg = Arc::new(Config::new().liveness(Some(s(30)), None, s(5), Some(s(50))));
        let mut c = Connection::new(cfg.clone(), t0);
        let mut head = HEAD.to_vec();
        let _ = c.read(&mut head, t0);
        c.accept(None, false, t0).unwrap();
        c.consume_out(c.out().len());
        let mut ping = Vec::new();
        write_client_frame(&mut ping, true, 0, OpCode::Ping, [1, 2, 3, 4], b"");
        let _ = c.read(&mut ping.clone(), t0 + s(25));
        c.consume_out(c.out().len());
        assert_eq!(c.next_deadline(), Some(t0 + s(50)), "lifetime before idle (t0+55)");
        c.handle_timeout(t0 + s(50));
        assert_eq!(&c.out()[..4], [0x88, 29, 0x03, 0xe9]);
        assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Lifetime));
        let mut c = Connection::new(cfg, t0);
        let _ = c.read(&mut HEAD.to_vec(), t0);
        c.accept(None, false, t0).unwrap();
        c.consume_out(c.out().len());
        c.handle_timeout(t0 + s(29));
        assert!(c.is_open());
        c.handle_timeout(t0 + s(30));
        assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Idle));
        assert_eq!(c.close_status().code(), CloseCode::GOING_AWAY);
    }

    #[test]
    fn every_split_point_gives_the_same_transcript() {
        let data = session();
        let (_, one_out, _) = run(config(), &data, &[]);
        // Every single split point near the structure (the 70 KB payload's interior is sampled).
        let points: Vec<usize> =
            (0..data.len()).filter(|i| *i < HEAD.len() + 400 || i % 997 == 0 || *i > data.len() - 40).collect();
        for &a in &points {
            let (evs, out, _) = run(config(), &data, &[a]);
            assert_eq!(evs, expected_session(), "split at {a}");
            assert_eq!(out, one_out, "split at {a}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_transcript() {
        let data = session();
        let splits: Vec<usize> = (1..data.len()).collect();
        let (evs, _, _) = run(config(), &data, &splits);
        assert_eq!(evs, expected_session());
    }

    fn fails_with(frames: Vec<u8>, err: ProtocolError, code: u16) {
        let mut data = HEAD.to_vec();
        data.extend(frames);
        for splits in [vec![], (HEAD.len() + 1..data.len()).collect::<Vec<_>>()] {
            let (evs, out, c) = run(config(), &data, &splits);
            assert_eq!(evs.last(), Some(&Ev::Error(err.clone())), "{evs:?}");
            let close = [0x88, 0x02, (code >> 8) as u8, code as u8];
            assert!(out.ends_with(&close), "expected close {code}, wrote {:x?}", &out[out.len().saturating_sub(8)..]);
            assert!(!c.is_open());
        }
    }

    #[test]
    fn protocol_faults_get_their_close_codes() {
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, true, 0, OpCode::Text, b"hi");
        fails_with(unmasked, ProtocolError::UnmaskedFrame, 1002);
        let mut rsv = Vec::new();
        write_client_frame(&mut rsv, true, 4, OpCode::Text, [1, 2, 3, 4], b"hi");
        fails_with(rsv, ProtocolError::ReservedBits(4), 1002);
        fails_with(vec![0x83, 0x80, 0, 0, 0, 0], ProtocolError::ReservedOpcode(3), 1002);
        fails_with(frame(true, OpCode::Continuation, b"x"), ProtocolError::UnexpectedContinuation, 1002);
        let mut twice = frame(false, OpCode::Text, b"a");
        twice.extend(frame(true, OpCode::Text, b"b"));
        fails_with(twice, ProtocolError::ExpectedContinuation, 1002);
        fails_with(frame(true, OpCode::Close, b"\x03"), ProtocolError::CloseOneByte, 1002);
        fails_with(frame(true, OpCode::Close, b"\x03\xed"), ProtocolError::InvalidCloseCode(1005), 1002);
        fails_with(frame(true, OpCode::Close, b"\x03\xe8\xff"), ProtocolError::InvalidUtf8, 1007);
        fails_with(frame(true, OpCode::Text, b"\xce\xba\xff"), ProtocolError::InvalidUtf8, 1007);
        let mut frag = frame(false, OpCode::Text, b"ok \xed");
        frag.extend(frame(true, OpCode::Continuation, b"\xa0\x80"));
        fails_with(frag, ProtocolError::InvalidUtf8, 1007);
        let mut trunc = frame(false, OpCode::Text, b"ok");
        trunc.extend(frame(true, OpCode::Continuation, b"\xe2\x82"));
        fails_with(trunc, ProtocolError::InvalidUtf8, 1007);
    }

    #[test]
    fn utf8_fails_fast_inside_one_frame() {
        // Only the first 5 bytes of a 1000-byte text frame arrive; the 5th cannot continue UTF-8.
        let mut data = HEAD.to_vec();
        let mut payload = b"abc\xf4\x90".to_vec();
        payload.resize(1000, b'a');
        let f = frame(true, OpCode::Text, &payload);
        data.extend_from_slice(&f[..8 + 5]);
        let (evs, _, _) = run(config(), &data, &[]);
        assert_eq!(evs.last(), Some(&Ev::Error(ProtocolError::InvalidUtf8)));
    }

    #[test]
    fn limits_are_checked_at_the_header() {
        // A header announcing 16 MiB is refused with 1009 before any payload arrives.
        let mut h = [0u8; 14];
        let n = crate::frame::encode_header(true, 0, OpCode::Binary, Some([1, 2, 3, 4]), 16 << 20, &mut h);
        fails_with(h[..n].to_vec(), ProtocolError::FrameTooLarge { size: 16 << 20, max: 1 << 20 }, 1009);
        // Message limit across fragments.
        let cfg = Arc::new(Config::new().max_payload_size(100).max_message_size(150));
        let mut data = HEAD.to_vec();
        data.extend(frame(false, OpCode::Binary, &[0; 100]));
        data.extend(frame(true, OpCode::Continuation, &[0; 51]));
        let (evs, _, _) = run(cfg, &data, &[]);
        assert_eq!(evs.last(), Some(&Ev::Error(ProtocolError::MessageTooLarge { size: 151, max: 150 })));
        // Frames per message.
        let cfg = Arc::new(Config::new().max_frames_per_message(3));
        let mut data = HEAD.to_vec();
        data.extend(frame(false, OpCode::Binary, b"x"));
        for _ in 0..2 {
            data.extend(frame(false, OpCode::Continuation, b"x"));
        }
        data.extend(frame(true, OpCode::Continuation, b"x"));
        let (evs, _, _) = run(cfg, &data, &[]);
        assert_eq!(evs.last(), Some(&Ev::Error(ProtocolError::TooManyFrames { max: 3 })));
    }

    #[test]
    fn timeouts() {
        let cfg = Arc::new(Config::new().timeout(Duration::from_secs(5)).close_timeout(Duration::from_secs(2)));
        let t0 = Instant::now();
        // Handshake timeout: nothing sent.
        let mut c = Connection::new(cfg.clone(), t0);
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
        c.handle_timeout(t0 + Duration::from_secs(9));
        assert!(!c.is_finished());
        c.handle_timeout(t0 + Duration::from_secs(10));
        assert!(c.is_finished());
        assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Handshake));

        // Incomplete message: 1008 at the deadline, then the close timeout.
        let mut data = HEAD.to_vec();
        data.extend(frame(false, OpCode::Text, b"part"));
        let (_, _, mut c) = run(cfg.clone(), &data, &[]);
        let d = c.next_deadline().expect("message deadline");
        c.handle_timeout(d);
        assert!(c.out().ends_with(&[0x88, 0x02, 0x03, 0xf0]), "1008");
        let n = c.out().len();
        c.consume_out(n);
        let d2 = c.next_deadline().expect("close deadline");
        assert!(d2 > d);
        c.handle_timeout(d2);
        assert!(c.is_finished());
        assert_eq!(c.close_status(), CloseStatus::TimedOut(TimeoutKind::Message));
    }

    #[test]
    fn a_peer_that_keeps_sending_after_our_close_is_read_no_further() {
        let (_, _, mut c) = run(config(), HEAD, &[]);
        let now = Instant::now();
        c.close(CloseCode::POLICY, "stop", now).unwrap();
        c.drain_out(&mut Vec::new());
        let max = Connection::closing_data_max(&config());
        let data = frame(true, OpCode::Binary, &vec![1u8; 64 * 1024]);
        let mut sent = 0;
        while !c.is_finished() {
            assert!(sent <= max + data.len(), "still reading after {sent} bytes");
            let mut chunk = data.clone();
            let (n, ev) = c.read(&mut chunk, now);
            assert!(ev.is_none() && n == chunk.len());
            sent += n;
        }
        assert!(sent > max, "{sent}: what a closing peer may have had in flight is read");
        assert!(!c.wants_read(), "reading has ended");
        assert_eq!(c.close_status(), CloseStatus::Lost, "no closing handshake took place");
    }

    #[test]
    fn server_close_waits_for_the_peer_and_ignores_data() {
        let (_, _, mut c) = run(config(), HEAD, &[]);
        let now = Instant::now();
        assert_eq!(c.close(CloseCode(1001), "bye", now), Ok(()));
        assert_eq!(c.close(CloseCode(1005), "", now), Err(SendError::InvalidCloseCode(1005)));
        assert!(c.out().starts_with(&[0x88, 0x05, 0x03, 0xe9, b'b', b'y', b'e']));
        let n = c.out().len();
        c.consume_out(n);
        assert_eq!(c.send(Message::Text("late")), Err(SendError::NotOpen));
        let mut more = frame(true, OpCode::Text, b"ignored");
        more.extend(frame(true, OpCode::Ping, b"ignored too"));
        more.extend(frame(true, OpCode::Close, b"\x03\xe9"));
        let mut evs = Vec::new();
        let mut off = 0;
        while off < more.len() {
            let (n, ev) = c.read(&mut more[off..], now);
            off += n;
            if let Some(ev) = ev {
                evs.push(format!("{ev:?}"));
            }
        }
        assert_eq!(
            evs,
            vec!["Ping([105, 103, 110, 111, 114, 101, 100, 32, 116, 111, 111])", "Close(CloseCode(1001), \"\")"]
        );
        assert!(c.out().is_empty(), "no pong and no second close while closing");
        assert!(c.is_finished());
        assert!(matches!(c.close_status(), CloseStatus::Clean { by_peer: false, .. }));
    }

    #[test]
    fn empty_close_is_answered_empty_and_reported_1005() {
        let mut data = HEAD.to_vec();
        data.extend(frame(true, OpCode::Close, b""));
        let (evs, out, _) = run(config(), &data, &[]);
        assert_eq!(evs.last(), Some(&Ev::Close(1005, String::new())));
        assert!(out.ends_with(&[0x88, 0x00]));
    }

    #[test]
    fn plain_http_and_bad_handshakes() {
        let (evs, _, _) = run(config(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[]);
        assert_eq!(evs, vec![Ev::Http("/".into())]);
        let (evs, out, c) =
            run(config(), &HEAD.to_vec().iter().map(|&b| if b == b'3' { b'8' } else { b }).collect::<Vec<_>>(), &[]);
        assert_eq!(evs, vec![Ev::Refused(426)]);
        assert!(String::from_utf8_lossy(&out).contains("Sec-WebSocket-Version: 13"));
        assert!(c.is_finished());
        let big = vec![b'a'; 10_000];
        let (evs, out, _) = run(config(), &big, &[4000, 8000]);
        assert_eq!(evs, vec![Ev::Refused(431)]);
        assert!(out.starts_with(b"HTTP/1.1 431 "));
    }
}

#[cfg(all(test, feature = "deflate"))]
mod deflate_tests {
    use super::*;
    use crate::deflate::Compressor;
    use crate::frame::write_client_frame;

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    fn config() -> Arc<Config> {
        Arc::new(Config::new().max_payload_size(1 << 20))
    }

    /// Feeds `data` cut at `splits`; returns text/binary messages (as bytes), the last error, and the connection.
    fn run(data: &[u8], splits: &[usize]) -> (Vec<Vec<u8>>, Option<ProtocolError>, Connection) {
        let now = Instant::now();
        let mut c = Connection::new(config(), now);
        let (mut msgs, mut err) = (Vec::new(), None);
        let mut bounds = splits.to_vec();
        bounds.push(data.len());
        let mut last = 0;
        for b in bounds {
            let mut chunk = data[last..b].to_vec();
            last = b;
            let (mut off, total) = (0, chunk.len());
            loop {
                let (n, ev) = c.read(&mut chunk[off..], now);
                off += n;
                let mut upgrade = false;
                match ev {
                    None if n == 0 || off == total => break,
                    None => {}
                    Some(Event::Upgrade(_)) => upgrade = true,
                    Some(Event::Message(m)) => msgs.push(m.as_bytes().to_vec()),
                    Some(Event::Error(e)) => err = Some(e),
                    Some(_) => {}
                }
                if upgrade {
                    c.accept(None, true, Instant::now()).unwrap();
                }
                if off == total {
                    break;
                }
            }
        }
        (msgs, err, c)
    }

    /// A compressed message in frames of `frag` bytes (RSV1 on the first only).
    fn compressed(comp: &mut Compressor, op: OpCode, msg: &[u8], frag: usize) -> Vec<u8> {
        let mut z = Vec::new();
        comp.compress(msg, &mut z);
        let chunks: Vec<&[u8]> = if z.is_empty() { vec![&z[..]] } else { z.chunks(frag).collect() };
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let fin = i + 1 == chunks.len();
            let (rsv, opcode) = if i == 0 { (0b100, op) } else { (0, OpCode::Continuation) };
            write_client_frame(&mut out, fin, rsv, opcode, [9, 8, 7, 6], c);
        }
        out
    }

    #[test]
    fn compressed_fragmented_messages_at_every_split_point_with_context_takeover() {
        let m1 = "κόσμε, hello hello hello hello! ".repeat(40).into_bytes();
        let m2 = "hello hello, κόσμε again and again ".repeat(30).into_bytes();
        // The client keeps its context: the second message refers back into the first.
        let mut comp = Compressor::new(6, 12);
        let mut data = HEAD.to_vec();
        data.extend(compressed(&mut comp, OpCode::Text, &m1, 17));
        data.extend(compressed(&mut comp, OpCode::Binary, &m2, 1000));
        let (msgs, err, c) = run(&data, &[]);
        assert_eq!(err, None);
        assert_eq!(msgs, vec![m1.clone(), m2.clone()]);
        assert_eq!(c.deflate_params().unwrap().client_max_window_bits, Some(12));
        for a in (HEAD.len()..data.len()).step_by(3) {
            let (msgs, err, _) = run(&data, &[a]);
            assert_eq!((msgs.len(), err), (2, None), "split at {a}");
            assert_eq!(msgs, vec![m1.clone(), m2.clone()], "split at {a}");
        }
        let all: Vec<usize> = (1..data.len()).collect();
        assert_eq!(run(&data, &all).0, vec![m1, m2]);
    }

    #[test]
    fn rsv1_rules_and_bad_payloads() {
        let mut comp = Compressor::new(6, 15);
        // RSV1 on a continuation frame.
        let mut d = HEAD.to_vec();
        write_client_frame(&mut d, false, 0, OpCode::Text, [1; 4], b"a");
        write_client_frame(&mut d, true, 0b100, OpCode::Continuation, [1; 4], b"b");
        assert_eq!(run(&d, &[]).1, Some(ProtocolError::ReservedBits(4)));
        // RSV1 on a control frame.
        let mut d = HEAD.to_vec();
        write_client_frame(&mut d, true, 0b100, OpCode::Ping, [1; 4], b"a");
        assert_eq!(run(&d, &[]).1, Some(ProtocolError::ReservedBits(4)));
        // RSV2 is never granted.
        let mut d = HEAD.to_vec();
        write_client_frame(&mut d, true, 0b010, OpCode::Text, [1; 4], b"a");
        assert_eq!(run(&d, &[]).1, Some(ProtocolError::ReservedBits(2)));
        // Not deflate data → 1007.
        let mut d = HEAD.to_vec();
        write_client_frame(&mut d, true, 0b100, OpCode::Binary, [1; 4], b"\xff\xff\xff\xff not deflate");
        let (_, err, c) = run(&d, &[]);
        assert_eq!(err, Some(ProtocolError::InvalidCompressedData));
        assert!(c.out().ends_with(&[0x88, 0x02, 0x03, 0xef]));
        // Invalid UTF-8 found after inflating → 1007.
        let mut d = HEAD.to_vec();
        d.extend(compressed(&mut comp, OpCode::Text, b"valid, then \xed\xa0\x80", 1000));
        assert_eq!(run(&d, &[]).1, Some(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn bomb_is_refused_with_1009_holding_about_one_limit() {
        let zeros = vec![0u8; 256 << 20];
        let mut comp = Compressor::new(9, 15);
        let mut d = HEAD.to_vec();
        d.extend(compressed(&mut comp, OpCode::Binary, &zeros, 1 << 20));
        assert!(d.len() < 1 << 20);
        let start = std::time::Instant::now();
        let (_, err, c) = run(&d, &[]);
        assert!(matches!(err, Some(ProtocolError::MessageTooLarge { max: 1_048_576, .. })), "{err:?}");
        assert!(c.out().ends_with(&[0x88, 0x02, 0x03, 0xf1]), "1009");
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
    }

    #[test]
    fn outbound_compresses_and_sets_rsv1_only_when_it_pays() {
        let (_, _, mut c) = run(HEAD, &[]);
        let n = c.out().len();
        c.consume_out(n);
        let mut pool = DeflatePool::new();
        let big = "compress me please, compress me please ".repeat(10);
        c.send_with(Message::Text(&big), &mut pool).unwrap();
        let out = c.out().to_vec();
        assert_eq!(out[0], 0xc1, "FIN + RSV1 + text");
        let mut inflated = Vec::new();
        let mut inf = Inflater::new(15);
        inf.inflate(&out[2..], &mut inflated, 1 << 20).unwrap();
        inf.finish(&mut inflated, 1 << 20).unwrap();
        assert_eq!(inflated, big.as_bytes());
        c.consume_out(out.len());
        c.send_with(Message::Text("tiny"), &mut pool).unwrap();
        assert_eq!(c.out(), b"\x81\x04tiny", "below min_size: uncompressed, RSV1 clear");
    }
}

#[cfg(all(test, feature = "deflate"))]
mod fragment_out_tests {
    use super::*;

    #[test]
    fn long_compressed_message_is_one_stream_across_frames() {
        let cfg = Arc::new(Config::new().max_frame_out(100));
        let mut c = Connection::new(cfg, Instant::now());
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n".to_vec();
        let (_, ev) = c.read(&mut head, Instant::now());
        drop(ev);
        c.accept(None, true, Instant::now()).unwrap();
        let n = c.out().len();
        c.consume_out(n);
        let msg: Vec<u8> = (0..20_000u32).map(|i| (i % 7 + i / 1000) as u8).collect();
        c.send_with(Message::Binary(&msg), &mut DeflatePool::new()).unwrap();
        // Parse the frames back: RSV1 on the first only, continuations after, FIN on the last.
        let out = c.out().to_vec();
        let (mut pos, mut stream, mut frames) = (0, Vec::new(), 0);
        while pos < out.len() {
            let Ok(Status::Complete((h, n))) = decode_header(&out[pos..]) else { panic!("bad frame") };
            assert!(h.len <= 100);
            assert_eq!(h.rsv, if frames == 0 { 0b100 } else { 0 });
            assert_eq!(h.opcode, if frames == 0 { OpCode::Binary } else { OpCode::Continuation });
            pos += n;
            stream.extend_from_slice(&out[pos..pos + h.len as usize]);
            pos += h.len as usize;
            frames += 1;
            assert_eq!(h.fin, pos == out.len());
        }
        assert!(frames > 1);
        let mut inf = Inflater::new(15);
        let mut back = Vec::new();
        inf.inflate(&stream, &mut back, 1 << 20).unwrap();
        inf.finish(&mut back, 1 << 20).unwrap();
        assert_eq!(back, msg);
    }
}
