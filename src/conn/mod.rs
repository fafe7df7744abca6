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
use crate::config::Limits;
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
use crate::spill::{Spare, Spill};
use crate::utf8::Utf8Validator;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

#[cfg(all(test, feature = "deflate"))]
mod deflate_tests;
#[cfg(all(test, feature = "deflate"))]
mod fragment_out_tests;
mod opening;
mod queue;
mod receive;
mod send;
#[cfg(test)]
mod tests;
mod timers;
#[cfg(test)]
mod whole_tests;

use queue::{park, Queue};
use send::close_payload;

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
    /// feeds more bytes. (Boxed, as in `Http`: an event is returned for every message, and a request is 80 bytes
    /// where a message is 24.)
    Upgrade(Box<Request>),
    /// A plain HTTP request (no upgrade asked). The caller MUST call [`Connection::respond`].
    Http(Box<Request>),
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
    /// The connection carries another protocol ([`Connection::into_tunnel`], or the HTTP/2 preface when
    /// [`Limits::http2`](crate::config::Limits) is on): the input is that protocol's, none of it was used
    /// (what came before it is [`Connection::take_tunnel_prefix`]).
    Tunnel,
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
    /// wskit failed the connection: the peer broke the protocol or a limit. (Also when it did so after our own
    /// close frame had gone out — a handler's `close`, or 1011 after a panic: that frame carried our code, and this
    /// status names the fault that followed.)
    Error(ProtocolError),
    /// A timeout ended it.
    TimedOut(TimeoutKind),
    /// The TCP connection ended without a closing handshake (reported as 1006).
    Lost,
    /// An upgrade `on_open` deferred was refused with this HTTP status (by the application, or by the limits
    /// checked again when it was accepted); no WebSocket was opened.
    Refused {
        /// The HTTP status sent.
        status: u16,
    },
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
    /// Payload bytes already unmasked, modulo 4: the mask's offset for the next ones.
    done: u8,
    remaining: u64,
}

/// A data message that spans frames or reads.
#[derive(Debug)]
struct InMessage {
    text: bool,
    /// RSV1 was set on the first frame: the payload is inflated as it arrives.
    compressed: bool,
    buf: Vec<u8>,
    /// Bytes at the end of `buf` that are not the message's: a recycled buffer's old bytes, or room zeroed for a
    /// read straight into it ([`Connection::payload_target`]); bytes appended overwrite it, and it is dropped
    /// when the message is delivered.
    room: usize,
    /// Completed by a read straight into it (or found not UTF-8): reported by the next `read`.
    pending: Pending,
    frames: usize,
    utf8: Utf8Validator,
    deadline: Instant,
    /// Binary payload read straight into `buf` and not unmasked yet: it is unmasked at once when its frame ends
    /// or other bytes join it ([`InMessage::unmask_rest`]).
    masked: Option<Masked>,
}

/// Where a message's still-masked bytes begin (they run to its end), and the mask that covers them.
#[derive(Debug, Clone, Copy)]
struct Masked {
    from: usize,
    mask: [u8; 4],
    /// The mask's offset at `from` (modulo 4).
    phase: u8,
}

/// [`InMessage::unmask_rest`] goes through a message in parts this long, the last part first.
const UNMASK_PART: usize = 64 * 1024;

impl InMessage {
    /// The message's length so far (`buf` without its room).
    #[inline]
    fn len(&self) -> usize {
        self.buf.len() - self.room
    }

    /// Unmasks the bytes that reads straight into the buffer left masked ([`InMessage::masked`]). A large binary
    /// frame is unmasked so, in one pass right after its last byte came, rather than read by read: what the
    /// handler does next (an echo's copy into the socket) finds it in cache. The pass runs from the last part to
    /// the first, so the start, which a send copies first, is the warmest. (1 MiB echoes: 1.028× the messages a
    /// second of read-by-read unmasking, paired over 54 interleaved rounds; one run of four showed no gain; see
    /// docs/benchmarks.md.) Text is unmasked read by read: its UTF-8 is checked as it comes, so it fails fast.
    fn unmask_rest(&mut self) {
        let Some(Masked { from, mask, phase }) = self.masked.take() else { return };
        let end = self.len();
        for (i, part) in self.buf[from..end].chunks_mut(UNMASK_PART).enumerate().rev() {
            apply_mask(part, mask, usize::from(phase) + i * UNMASK_PART);
        }
    }

    #[inline]
    fn drop_room(&mut self) {
        if self.room > 0 {
            self.buf.truncate(self.len());
            self.room = 0;
        }
    }
}

/// What a read straight into a message's buffer left for the next `read` to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Nothing,
    Complete,
    NotUtf8,
}

/// Frame-reading state, alive while the connection is open or closing by us.
#[derive(Debug, Default)]
struct Rx {
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    frame: Option<InFrame>,
    msg: Option<Box<InMessage>>,
    /// A control frame's payload that spans reads.
    ctrl: Spill<u8>,
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
    fn release_lent(&mut self, q: &mut Option<Box<Queue>>) {
        if self.msg_delivered || self.ctrl_lent {
            self.release_lent_now(q);
        }
    }

    #[inline(never)]
    fn release_lent_now(&mut self, q: &mut Option<Box<Queue>>) {
        if std::mem::take(&mut self.msg_delivered) {
            if let Some(m) = self.msg.take() {
                park(q, m.buf);
            }
        }
        if std::mem::take(&mut self.ctrl_lent) {
            self.ctrl.clear();
        }
    }

    /// A message is being assembled (not the one lent out by the last event).
    #[inline]
    fn msg_open(&self) -> bool {
        self.msg.is_some() && !self.msg_delivered
    }

    /// Heap bytes it holds: a control payload cut across reads, and the message's buffer.
    fn held(&self) -> usize {
        self.ctrl.heap_bytes() + self.msg.as_ref().map_or(0, |m| m.buf.capacity())
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
/// 64 bytes: the states that pass (a closing reader, an undecided upgrade's deflate offer) hold their larger
/// parts boxed, so the open reader sets the size. The tag is a byte of its own (`repr(u8)`): left to the
/// compiler it moved into a niche of the reader (56 bytes), and telling the states apart then cost 17 more
/// instructions per echo (callgrind, 100 x 20 B) than the 8 bytes are worth.
#[derive(Debug)]
#[repr(u8)]
enum State {
    /// Waiting for the whole HTTP request head.
    ReadingHead { head: HeadReader, deadline: Instant },
    /// An upgrade request was reported; waiting for `accept` or `reject`.
    AwaitingDecision { accept: String, deflate: Option<Box<Params>>, deadline: Instant },
    /// A plain HTTP request was reported; waiting for `respond`.
    AwaitingResponse { deadline: Instant },
    /// The WebSocket is open.
    Open(Rx),
    /// We sent a close frame; waiting for the peer's (`rx.skipped` counts the data discarded meanwhile).
    ClosingByUs { rx: Box<Rx>, deadline: Instant },
    /// Nothing more to read; waiting for `out` to drain, then TCP closes. Dropped at `linger` regardless.
    Closed { linger: Instant },
    /// Carrying another protocol instead of a request head (HTTP/2, whose streams are connections of their own):
    /// every read reports [`Event::Tunnel`], `out` holds that protocol's bytes, and its deadline is set from
    /// outside. `prefix`: the client's first bytes, held while it could still have been HTTP/1.1.
    Tunnel { deadline: Option<Instant>, prefix: Vec<u8> },
}

impl State {
    /// The frame reader, while open or closing by us.
    #[inline]
    fn rx(&self) -> Option<&Rx> {
        match self {
            State::Open(rx) => Some(rx),
            State::ClosingByUs { rx, .. } => Some(rx),
            _ => None,
        }
    }

    #[inline]
    fn rx_mut(&mut self) -> Option<&mut Rx> {
        match self {
            State::Open(rx) => Some(rx),
            State::ClosingByUs { rx, .. } => Some(rx),
            _ => None,
        }
    }
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
    config: Arc<Limits>,
    state: State,
    /// What is queued for the peer, and a large buffer in passing: boxed, and only while it holds something
    /// (see [`Queue`]).
    q: Option<Box<Queue>>,
    /// How it ended, once known, and when `max_lifetime` ends it (boxed: neither exists for most connections
    /// most of the time).
    end: Option<Box<Ending>>,
    /// permessage-deflate, when negotiated (boxed: most of it exists only after the first compressed message).
    deflate: Option<Box<DeflateState>>,
    /// The idle and keepalive clock; only when one of idle, keepalive or lifetime is configured (the lifetime's
    /// end is in `end`, and checked only while this exists).
    live: Option<Liveness>,
    /// A keepalive ping is out (sent when `ping_interval` passed after the liveness clock's `last_rx`): the peer
    /// must send something within `ping_timeout` of that ([`Liveness::pong_deadline`]).
    ping_out: bool,
    /// Which deadlines were running when [`Connection::deadline_to_arm`] last computed one (see there).
    armed_shape: u8,
}

/// Shared frames shorter than this are copied into the queue instead: for a short message a copy costs less than
/// the reference and the segment it needs, and many copies of it weigh little.
pub(crate) const SHARE_MIN: usize = 1024;

/// Buffers smaller than this are not worth passing around (allocating them is cheap); the shell lends its pooled
/// ones only for messages at least this long.
pub(crate) const SPARE_MIN: usize = 64 * 1024;

/// The clock of an open connection's idle and keepalive timers (16 bytes). Whether a keepalive ping is out is
/// the connection's `ping_out`, which fits in its padding; the lifetime's end is kept apart ([`Ending`]), as it
/// is not set by default.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    /// When bytes last arrived.
    last_rx: Instant,
}

/// What is known of a connection's end: how it ended, once it has, and when `max_lifetime` ends it, if set.
#[derive(Debug, Default)]
struct Ending {
    status: Option<CloseStatus>,
    lifetime: Option<Instant>,
}

impl Liveness {
    /// When an unanswered keepalive ping times out, if one is out. It was sent at `last_rx + ping_interval` (its
    /// timer's deadline; a turn late at most), so the pong's window is counted from there.
    fn pong_deadline(&self, c: &Limits, ping_out: bool) -> Option<Instant> {
        let interval = c.ping_interval.filter(|_| ping_out)?;
        Some(self.last_rx + interval + c.ping_timeout)
    }
}

/// permessage-deflate state of one connection; the codec contexts are created on first use.
#[derive(Debug)]
struct DeflateState {
    params: Params,
    inflater: Option<Inflater>,
    /// Only under server context takeover; otherwise the loop's pool compresses.
    compressor: Option<Dedicated>,
    /// The compressor compressed a message since the last keepalive ping (one that finds it unused gives it
    /// back).
    used: bool,
}

/// A connection's own compressor (server context takeover).
#[derive(Debug)]
enum Dedicated {
    /// zlib-rs, at the configured levels.
    Zlib(deflate::Compressor),
    /// wskit's small-window one ([`crate::lz`], `dedicated_window_bits`).
    Small(crate::lz::SmallCompressor),
}

impl Dedicated {
    /// Heap bytes it holds (as counted: zlib-rs' by its window, `p`'s).
    fn heap_bytes(&self, p: &Params) -> usize {
        match self {
            Dedicated::Zlib(_) => deflate::compressor_bytes(p.compress_window()),
            Dedicated::Small(c) => c.heap_bytes(),
        }
    }
}

impl Connection {
    /// A new server-side connection, waiting for the request head; the handshake deadline runs from `now`. It
    /// reads only its [`Limits`] ([`crate::Config::limits`], shared by a loop's connections).
    pub fn new(config: Arc<Limits>, now: Instant) -> Self {
        let deadline = now + config.handshake_timeout;
        Connection {
            config,
            state: State::ReadingHead { head: HeadReader::default(), deadline },
            q: None,
            end: None,
            deflate: None,
            live: None,
            ping_out: false,
            armed_shape: 0,
        }
    }

    // ── output ──────────────────────────────────────────────────────────────────────────────────────────────

    /// Whether the shell should read from the socket: the connection expects input and its outbound queue is
    /// below the high-water mark (so a peer that never reads is not fed without bound).
    pub fn wants_read(&self) -> bool {
        matches!(
            self.state,
            State::ReadingHead { .. } | State::Open(_) | State::ClosingByUs { .. } | State::Tunnel { .. }
        ) && self.data_queued() < self.config.write_high_water
    }

    /// Whether bytes wait in [`Connection::out`].
    #[inline]
    pub fn wants_write(&self) -> bool {
        self.q.as_deref().is_some_and(Queue::wants_write)
    }

    /// True once the connection is over and `out` is written (or abandoned): the shell MUST close the socket.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed { .. }) && !self.wants_write()
    }

    /// How it ended, once known.
    fn status(&self) -> Option<&CloseStatus> {
        self.end.as_deref()?.status.as_ref()
    }

    /// What is known of its end, made if nothing was.
    fn ending(&mut self) -> &mut Ending {
        self.end.get_or_insert_with(Box::default)
    }

    /// Records how it ended, unless that is known already (the first cause stands).
    fn end_with(&mut self, status: impl FnOnce() -> CloseStatus) {
        let e = self.ending();
        if e.status.is_none() {
            e.status = Some(status());
        }
    }

    /// When `max_lifetime` ends it, if set.
    fn lifetime_end(&self) -> Option<Instant> {
        self.end.as_deref()?.lifetime
    }

    /// Whether the WebSocket is open (handshake done, no close sent or received).
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// How the connection ended so far: `None` while it runs, or if it ended without a close (call
    /// [`Connection::close_status`] after the socket is gone to get [`CloseStatus::Lost`] in that case).
    pub fn close_status(&self) -> CloseStatus {
        self.status().cloned().unwrap_or(CloseStatus::Lost)
    }

    /// Whether the peer is in the middle of sending something: a partial frame header, a frame's payload, or a
    /// message's later fragments. (A shell acknowledges at once then, so that a sender waiting on Nagle's
    /// algorithm is not held up by a delayed ACK.)
    pub fn is_mid_message(&self) -> bool {
        match &self.state {
            State::ReadingHead { head, .. } => !head.is_empty(),
            state => state.rx().is_some_and(|rx| rx.hdr_len > 0 || rx.frame.is_some() || rx.msg_open()),
        }
    }

    /// Frees what the last event lent out (a completed message's buffer, a control payload). [`Connection::read`]
    /// does this itself on its next call; a shell calls it when a read burst is over, so an idle connection holds
    /// no message buffer.
    #[inline]
    pub fn reclaim(&mut self) {
        if let Some(rx) = self.state.rx_mut() {
            rx.release_lent(&mut self.q);
        }
    }

    /// Checks the state machine's invariants (`debug_assert!`, so only in debug builds). The shell calls it after
    /// every read unless `Config::prod` is set.
    pub fn debug_check_invariants(&self) {
        if let Some(rx) = self.state.rx() {
            debug_assert!((rx.hdr_len as usize) < MAX_HEADER_LEN, "a whole header is never left stashed");
            debug_assert!(rx.ctrl.len() <= MAX_CONTROL_PAYLOAD, "control payloads are at most 125 bytes");
            if let Some(m) = &rx.msg {
                debug_assert!(m.len() <= self.config.max_message_size, "message limit held");
                debug_assert!(m.frames <= self.config.max_frames_per_message, "frame limit held");
            }
            if let (State::Open(_), Some(f)) = (&self.state, rx.frame) {
                debug_assert!(f.opcode.is_control() || rx.msg.is_some(), "a data frame belongs to a message");
            }
        }
    }

    // ── input ───────────────────────────────────────────────────────────────────────────────────────────────
}
