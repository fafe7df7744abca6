//! One HTTP/2 connection, server side, sans-I/O (RFC 9113, with RFC 8441's extended CONNECT): bytes in through
//! [`H2Conn::receive`], events out through [`H2Conn::poll_event`], bytes for the peer in [`H2Conn::out`]. Time
//! comes in as an argument. Nothing here knows a socket, a WebSocket or the handler.
//!
//! What it enforces: the preface and the SETTINGS that must follow it; stream identifiers and states; the header
//! block as one HEADERS and its CONTINUATION frames, bounded in bytes and frames (CONTINUATION floods); requests'
//! pseudo-header rules (§8.3) and RFC 8441's `:protocol`; flow control both ways, on the connection and each
//! stream; `MAX_CONCURRENT_STREAMS` (REFUSED_STREAM, the field block still decoded so HPACK stays in step); and
//! rates of resets (rapid reset), SETTINGS and PING past which the connection ends with ENHANCE_YOUR_CALM.

use super::frame::{self, kind, setting, ErrorCode, Frame, FrameError, DEFAULT_MAX_FRAME_SIZE, MAX_WINDOW};
use super::hpack::{self, Decoded, Decoder, Field};
use crate::frame::Status;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a client sends first (§3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection announces and enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: each stream's receive window.
    pub stream_window: u32,
    /// The connection's receive window (raised from 65,535 with a WINDOW_UPDATE at the start).
    pub conn_window: u32,
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub header_table: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (past it a request is refused with 431).
    pub max_header_list: u32,
    /// Bytes one field block may take across HEADERS and CONTINUATION frames (past them: a connection error).
    pub max_header_block: usize,
    /// RST_STREAM frames a client may send a second (more: GOAWAY with ENHANCE_YOUR_CALM).
    pub max_resets_per_sec: u32,
    /// SETTINGS and PING frames a client may send a second (more: GOAWAY with ENHANCE_YOUR_CALM).
    pub max_control_per_sec: u32,
    /// How long our SETTINGS may wait for the peer's acknowledgement (then GOAWAY with SETTINGS_TIMEOUT).
    pub settings_timeout: Duration,
    /// How long a stream with data to send may find the peer's windows shut (a zero-window stall) before it is
    /// reset with CANCEL.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 128,
            stream_window: 256 << 10,
            conn_window: 1 << 20,
            header_table: 4096,
            max_header_list: 16 << 10,
            max_header_block: 64 << 10,
            max_resets_per_sec: 100,
            max_control_per_sec: 100,
            stall_timeout: Duration::from_secs(30),
            settings_timeout: Duration::from_secs(10),
        }
    }
}

/// A request's head: pseudo-header fields apart, the rest in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `:method`.
    pub method: String,
    /// `:scheme` (absent only for a plain CONNECT).
    pub scheme: Option<String>,
    /// `:authority`.
    pub authority: Option<String>,
    /// `:path` (absent only for a plain CONNECT).
    pub path: Option<String>,
    /// `:protocol` (RFC 8441): `websocket` for a WebSocket.
    pub protocol: Option<String>,
    /// The other fields, names in lower case.
    pub fields: Vec<(String, String)>,
}

/// What the peer did, for the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new stream's request (`end_stream`: it has no body).
    Request {
        /// The stream.
        stream: u32,
        /// The request.
        head: RequestHead,
        /// END_STREAM came with it.
        end_stream: bool,
    },
    /// Data on a stream; its bytes stay counted against the stream's window until [`H2Conn::release`].
    Data {
        /// The stream.
        stream: u32,
        /// The bytes.
        data: Vec<u8>,
        /// The peer's side of the stream ends here.
        end_stream: bool,
    },
    /// The peer reset a stream.
    Reset {
        /// The stream.
        stream: u32,
        /// Why.
        code: ErrorCode,
    },
    /// More send window: a stream (0: the connection) may take more DATA.
    Writable {
        /// The stream, 0 for every stream.
        stream: u32,
    },
    /// The peer is going away: no stream above `last_stream` was processed.
    GoAway {
        /// The last stream it processed.
        last_stream: u32,
        /// Why.
        code: ErrorCode,
    },
}

/// The connection is over: its GOAWAY is queued in [`H2Conn::out`]; write it, then close the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnError {
    /// The code sent.
    pub code: ErrorCode,
    /// What happened.
    pub what: &'static str,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (error code {:#x})", self.what, self.code.0)
    }
}

impl std::error::Error for ConnError {}

/// What the connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The client preface; this many of its bytes came.
    Preface(usize),
    /// The client's first SETTINGS.
    FirstSettings,
    /// Frames.
    Open,
    /// Over (a connection error, or our GOAWAY after the peer's).
    Closed,
}

/// Where our SETTINGS' acknowledgement stands (§6.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckWait {
    /// Nothing came from the peer yet (the clock starts with its first bytes).
    Unsent,
    /// Due by then.
    Until(Instant),
    /// Acknowledged.
    Done,
}

/// One stream's state, from our side.
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Bytes the peer may still send, as the peer counts them.
    recv_window: i64,
    /// Bytes received and released (or padding), not yet given back with a WINDOW_UPDATE.
    credit: i64,
    /// Bytes we may still send.
    send_window: i64,
    /// The peer ended its side.
    remote_closed: bool,
    /// We ended ours.
    local_closed: bool,
    /// Since when it has had data the windows did not let through (cleared when they open again).
    stalled: Option<Instant>,
}

/// A field block being received: HEADERS, then CONTINUATION frames until END_HEADERS.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
    frames: u32,
}

/// A count per second, for the rate limits.
#[derive(Debug, Clone, Copy)]
struct Rate {
    since: Option<Instant>,
    n: u32,
}

impl Rate {
    /// Counts one at `now`; true while the count of the current second is within `max`.
    fn tick(&mut self, now: Instant, max: u32) -> bool {
        match self.since {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => self.n += 1,
            _ => (self.since, self.n) = (Some(now), 1),
        }
        self.n <= max
    }
}

/// One HTTP/2 connection, server side.
#[derive(Debug)]
pub struct H2Conn {
    limits: Limits,
    phase: Phase,
    /// Bytes of a frame not yet whole.
    held: Vec<u8>,
    decoder: Decoder,
    /// Streams open or half-open (one both sides ended is forgotten): their count is what
    /// MAX_CONCURRENT_STREAMS bounds.
    streams: HashMap<u32, Stream>,
    /// The highest stream the client opened (even refused ones count: identifiers never go back).
    last_stream: u32,
    block: Option<Block>,
    conn_recv: i64,
    conn_send: i64,
    /// The peer's SETTINGS that shape what we send.
    peer_window: u32,
    peer_max_frame: u32,
    goaway_sent: bool,
    /// Our SETTINGS wait for their acknowledgement: until this deadline (set when the first bytes come).
    settings_ack: AckWait,
    resets: Rate,
    controls: Rate,
    events: VecDeque<Event>,
    out: Vec<u8>,
}

impl H2Conn {
    /// A connection whose preface is still to come. Our SETTINGS go out at once (§3.4: the server's preface), with
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 §3), then a WINDOW_UPDATE raising the connection window.
    pub fn new(limits: Limits) -> H2Conn {
        let mut out = Vec::new();
        frame::write_settings(
            &mut out,
            &[
                (setting::ENABLE_CONNECT_PROTOCOL, 1),
                (setting::MAX_CONCURRENT_STREAMS, limits.max_streams),
                (setting::INITIAL_WINDOW_SIZE, limits.stream_window),
                (setting::HEADER_TABLE_SIZE, limits.header_table),
                (setting::MAX_HEADER_LIST_SIZE, limits.max_header_list),
            ],
        );
        let initial = 65_535;
        if limits.conn_window > initial {
            frame::write_window_update(&mut out, 0, limits.conn_window - initial);
        }
        let max_fields = (limits.max_header_list as usize / 32).max(1);
        H2Conn {
            limits,
            phase: Phase::Preface(0),
            held: Vec::new(),
            decoder: Decoder::new(limits.header_table as usize, limits.max_header_list as usize, max_fields),
            streams: HashMap::new(),
            last_stream: 0,
            block: None,
            conn_recv: i64::from(limits.conn_window.max(initial)),
            conn_send: 65_535,
            peer_window: 65_535,
            peer_max_frame: DEFAULT_MAX_FRAME_SIZE,
            goaway_sent: false,
            settings_ack: AckWait::Unsent,
            resets: Rate { since: None, n: 0 },
            controls: Rate { since: None, n: 0 },
            events: VecDeque::new(),
            out,
        }
    }

    /// Bytes for the peer, in order; report what was written with [`H2Conn::consume_out`].
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// The bytes for the peer, to be taken whole (a caller that swaps in an empty buffer of its own spares a copy).
    pub fn out_mut(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// `n` bytes of [`H2Conn::out`] were written.
    pub fn consume_out(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the connection is over (after a connection error, or both sides' GOAWAY).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Feeds bytes read from the peer (any split). A connection error ends it: its GOAWAY is queued.
    pub fn receive(&mut self, input: &[u8], now: Instant) -> Result<(), ConnError> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        if self.settings_ack == AckWait::Unsent && !input.is_empty() {
            self.settings_ack = AckWait::Until(now + self.limits.settings_timeout);
        }
        let mut input = input;
        if let Phase::Preface(got) = self.phase {
            let want = &PREFACE[got..];
            let n = want.len().min(input.len());
            if input[..n] != want[..n] {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "not the HTTP/2 client preface"));
            }
            input = &input[n..];
            self.phase = if got + n == PREFACE.len() { Phase::FirstSettings } else { Phase::Preface(got + n) };
        }
        // A frame cut by the end of the last input is completed with only the bytes it lacks; the rest is parsed
        // where it lies, not copied behind it.
        while !self.held.is_empty() && !input.is_empty() {
            let want =
                frame::decode_header(&self.held).map_or(frame::HEADER_LEN, |h| frame::HEADER_LEN + h.len as usize);
            let take = want.saturating_sub(self.held.len()).min(input.len());
            self.held.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.held.len() >= frame::HEADER_LEN {
                let held = std::mem::take(&mut self.held);
                let used = self.frames(&held, now)?;
                self.held = held;
                self.held.drain(..used);
                if take == 0 && used == 0 {
                    break; // (cannot happen: a whole frame is always used)
                }
            }
        }
        if self.held.is_empty() {
            let used = self.frames(input, now)?;
            self.held.extend_from_slice(&input[used..]);
        } else {
            self.held.extend_from_slice(input);
        }
        Ok(())
    }

    /// Handles the whole frames at the start of `input`; returns the bytes they took.
    fn frames(&mut self, input: &[u8], now: Instant) -> Result<usize, ConnError> {
        let mut at = 0;
        while self.phase != Phase::Closed && !matches!(self.phase, Phase::Preface(_)) {
            match frame::decode(&input[at..], DEFAULT_MAX_FRAME_SIZE) {
                Ok(Status::Complete((f, n))) => {
                    at += n;
                    self.frame(f, now)?;
                }
                Ok(Status::Partial) => break,
                Err(e) => at += self.frame_error(&input[at..], e)?,
            }
        }
        Ok(at)
    }

    /// A frame the codec refused: a stream error resets its stream and the frame is passed over (returns its
    /// length); anything else, or a stream error on a frame that carries a field block (HPACK must see every
    /// block), ends the connection.
    fn frame_error(&mut self, input: &[u8], e: FrameError) -> Result<usize, ConnError> {
        let h = frame::decode_header(input).filter(|h| h.kind != kind::HEADERS && h.kind != kind::CONTINUATION);
        match (e.stream, h) {
            // A stream never opened may not be reset (§5.1): a PRIORITY for it is passed over, anything else
            // ends the connection.
            (Some(stream), Some(h)) if stream > self.last_stream => {
                if h.kind != kind::PRIORITY {
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, e.what));
                }
                Ok(frame::HEADER_LEN + h.len as usize)
            }
            (Some(stream), Some(h)) => {
                if self.streams.contains_key(&stream) {
                    self.reset(stream, e.code);
                }
                Ok(frame::HEADER_LEN + h.len as usize)
            }
            (Some(_), None) => Err(self.fail(ErrorCode::PROTOCOL_ERROR, e.what)),
            (None, _) => Err(self.fail(e.code, e.what)),
        }
    }

    /// One frame, in order.
    fn frame(&mut self, f: Frame<'_>, now: Instant) -> Result<(), ConnError> {
        if self.phase == Phase::FirstSettings {
            if !matches!(f, Frame::Settings { ack: false, .. }) {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "the preface's SETTINGS did not come first"));
            }
            self.phase = Phase::Open;
        }
        if let Some(b) = &self.block {
            // Only the block's CONTINUATION frames may come until it ends (§6.10).
            if !matches!(f, Frame::Continuation { stream, .. } if stream == b.stream) {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "a frame inside a field block"));
            }
        }
        match f {
            Frame::Headers { stream, end_stream, end_headers, block, .. } => {
                self.headers(stream, end_stream, end_headers, block)
            }
            Frame::Continuation { stream, end_headers, block } => self.continuation(stream, end_headers, block),
            Frame::Data { stream, end_stream, data, flow_len } => self.data(stream, end_stream, data, flow_len),
            Frame::Settings { ack, params } => self.settings(ack, params, now),
            Frame::Ping { ack, data } => {
                if !ack {
                    self.control(now)?;
                    frame::write_ping(&mut self.out, true, data);
                }
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => self.window_update(stream, increment),
            Frame::RstStream { stream, code } => self.rst_stream(stream, code, now),
            Frame::GoAway { last_stream, code, .. } => {
                self.events.push_back(Event::GoAway { last_stream, code });
                Ok(())
            }
            Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
        }
    }

    /// Counts a SETTINGS or PING against its rate.
    fn control(&mut self, now: Instant) -> Result<(), ConnError> {
        if !self.controls.tick(now, self.limits.max_control_per_sec) {
            return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "SETTINGS or PING flood"));
        }
        Ok(())
    }

    /// Ends the connection: GOAWAY with `code` (the last stream we saw), nothing more read.
    fn fail(&mut self, code: ErrorCode, what: &'static str) -> ConnError {
        frame::write_goaway(&mut self.out, self.last_stream, code, what.as_bytes());
        self.phase = Phase::Closed;
        // Nothing more is said on any stream after the GOAWAY.
        self.streams.clear();
        self.goaway_sent = true;
        ConnError { code, what }
    }

    /// Resets a stream: RST_STREAM with `code`; it is forgotten. One that was open is reported as
    /// [`Event::Reset`] (whatever the layer above holds for it must end too).
    pub fn reset(&mut self, stream: u32, code: ErrorCode) {
        frame::write_rst_stream(&mut self.out, stream, code);
        if self.streams.remove(&stream).is_some() {
            self.events.push_back(Event::Reset { stream, code });
        }
    }

    /// Resets a stream we have not ended (CANCEL), if it is still open; one whose side we ended is left to the
    /// peer to end.
    pub fn cancel(&mut self, stream: u32) {
        if self.streams.get(&stream).is_some_and(|s| !s.local_closed) {
            self.reset(stream, ErrorCode::CANCEL);
        }
    }

    /// Starts a graceful shutdown: GOAWAY with NO_ERROR; streams already open go on.
    pub fn go_away(&mut self) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            frame::write_goaway(&mut self.out, self.last_stream, ErrorCode::NO_ERROR, b"");
        }
    }
}

// ── receiving: streams, field blocks, data, settings, windows ───────────────────────────────────────────────

impl H2Conn {
    /// HEADERS: a new stream's request (or trailers on an open one), its block ending here or in CONTINUATIONs.
    fn headers(&mut self, stream: u32, end_stream: bool, end_headers: bool, block: &[u8]) -> Result<(), ConnError> {
        let known = self.streams.contains_key(&stream);
        if !known && (stream % 2 == 0 || stream <= self.last_stream) {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "HEADERS opening a stream out of order"));
        }
        if known && self.streams[&stream].remote_closed {
            return Err(self.fail(ErrorCode::STREAM_CLOSED, "HEADERS on a stream the client ended"));
        }
        if block.len() > self.limits.max_header_block {
            return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "field block too large"));
        }
        self.block = Some(Block { stream, end_stream, bytes: block.to_vec(), frames: 1 });
        if end_headers {
            self.end_block()?;
        }
        Ok(())
    }

    fn continuation(&mut self, stream: u32, end_headers: bool, block: &[u8]) -> Result<(), ConnError> {
        let max = self.limits.max_header_block;
        let Some(b) = self.block.as_mut().filter(|b| b.stream == stream) else {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "CONTINUATION outside a field block"));
        };
        b.frames += 1;
        b.bytes.extend_from_slice(block);
        // A flood of CONTINUATION frames (CVE-2024-27316): bounded in bytes, and in frames for empty ones.
        if b.bytes.len() > max || b.frames as usize > max / 512 + 1 {
            return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "CONTINUATION flood"));
        }
        if end_headers {
            self.end_block()?;
        }
        Ok(())
    }

    /// A whole field block: decoded (always: HPACK state is the connection's), then a request, trailers, or a
    /// refusal.
    fn end_block(&mut self) -> Result<(), ConnError> {
        let Some(Block { stream, end_stream, bytes, .. }) = self.block.take() else { return Ok(()) };
        let decoded = match self.decoder.decode(&bytes) {
            Ok(d) => d,
            Err(_) => return Err(self.fail(ErrorCode::COMPRESSION_ERROR, "field block does not decode")),
        };
        if let Some(s) = self.streams.get_mut(&stream) {
            // Trailers: they end the stream (and must, §8.1).
            if !end_stream {
                self.reset(stream, ErrorCode::PROTOCOL_ERROR);
                return Ok(());
            }
            s.remote_closed = true;
            self.events.push_back(Event::Data { stream, data: Vec::new(), end_stream: true });
            return Ok(());
        }
        self.last_stream = stream;
        if self.goaway_sent || self.streams.len() >= self.limits.max_streams as usize {
            self.reset(stream, ErrorCode::REFUSED_STREAM);
            return Ok(());
        }
        let fields = match decoded {
            Decoded::Fields(f) => f,
            Decoded::TooLarge => {
                // 431, as a response (§8.2.1 allows it) would need the stream open: refused outright.
                self.reset(stream, ErrorCode::REFUSED_STREAM);
                return Ok(());
            }
        };
        let Some(head) = request(fields) else {
            self.reset(stream, ErrorCode::PROTOCOL_ERROR);
            return Ok(());
        };
        let window = i64::from(self.limits.stream_window);
        let send_window = i64::from(self.peer_window);
        let st = Stream {
            recv_window: window,
            credit: 0,
            send_window,
            remote_closed: end_stream,
            local_closed: false,
            stalled: None,
        };
        self.streams.insert(stream, st);
        self.events.push_back(Event::Request { stream, head, end_stream });
        Ok(())
    }

    fn data(&mut self, stream: u32, end_stream: bool, data: &[u8], flow_len: u32) -> Result<(), ConnError> {
        let flow = i64::from(flow_len);
        if flow > self.conn_recv {
            return Err(self.fail(ErrorCode::FLOW_CONTROL_ERROR, "DATA past the connection window"));
        }
        self.conn_recv -= flow;
        // The connection's window comes back at once (each stream's holds the data until it is released).
        self.replenish_connection();
        let Some(s) = self.streams.get_mut(&stream) else {
            if stream > self.last_stream {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // Forgotten: reset by us or ended both ways. Frames may still be in flight after our RST_STREAM
            // (§5.4.2): ignored, not answered (the connection's window was counted and comes back above).
            return Ok(());
        };
        if s.remote_closed {
            self.reset(stream, ErrorCode::STREAM_CLOSED);
            return Ok(());
        }
        if flow > s.recv_window {
            self.reset(stream, ErrorCode::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        s.recv_window -= flow;
        // Padding is not the application's to release: it is given back with the data.
        s.credit += flow - data.len() as i64;
        s.remote_closed = end_stream;
        self.close_if_done(stream);
        // A stream's DATA frames in a row make one event: a message cut into frames reaches the layer above
        // whole, where it can be read in place rather than assembled.
        if let Some(Event::Data { stream: last, data: bytes, end_stream: ended }) = self.events.back_mut() {
            if *last == stream && !*ended {
                bytes.extend_from_slice(data);
                *ended = end_stream;
                return Ok(());
            }
        }
        self.events.push_back(Event::Data { stream, data: data.to_vec(), end_stream });
        Ok(())
    }

    /// Raises the connection's receive window back to full, in one WINDOW_UPDATE once a quarter of it is used.
    fn replenish_connection(&mut self) {
        let full = i64::from(self.limits.conn_window.max(65_535));
        if self.conn_recv <= full - full / 4 {
            frame::write_window_update(&mut self.out, 0, (full - self.conn_recv) as u32);
            self.conn_recv = full;
        }
    }

    fn settings(&mut self, ack: bool, params: &[u8], now: Instant) -> Result<(), ConnError> {
        if ack {
            self.settings_ack = AckWait::Done;
            return Ok(());
        }
        self.control(now)?;
        let params = match frame::settings(params) {
            Ok(p) => p,
            Err(e) => return Err(self.fail(e.code, e.what)),
        };
        for (id, value) in params {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let delta = i64::from(value) - i64::from(self.peer_window);
                    self.peer_window = value;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > i64::from(MAX_WINDOW) {
                            return Err(self.fail(ErrorCode::FLOW_CONTROL_ERROR, "a stream window past 2^31 - 1"));
                        }
                        if delta > 0 && s.send_window > 0 && self.conn_send > 0 {
                            s.stalled = None;
                        }
                    }
                    if delta > 0 {
                        self.events.push_back(Event::Writable { stream: 0 });
                    }
                }
                setting::MAX_FRAME_SIZE => self.peer_max_frame = value,
                _ => {}
            }
        }
        frame::write_settings_ack(&mut self.out);
        Ok(())
    }

    fn window_update(&mut self, stream: u32, increment: u32) -> Result<(), ConnError> {
        if stream == 0 {
            self.conn_send += i64::from(increment);
            if self.conn_send > i64::from(MAX_WINDOW) {
                return Err(self.fail(ErrorCode::FLOW_CONTROL_ERROR, "the connection window past 2^31 - 1"));
            }
            for s in self.streams.values_mut().filter(|s| s.send_window > 0) {
                s.stalled = None;
            }
            self.events.push_back(Event::Writable { stream: 0 });
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            if stream > self.last_stream {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
            }
            return Ok(()); // a stream already closed: ignored
        };
        s.send_window += i64::from(increment);
        if s.send_window > i64::from(MAX_WINDOW) {
            self.reset(stream, ErrorCode::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        if self.conn_send > 0 {
            s.stalled = None;
        }
        self.events.push_back(Event::Writable { stream });
        Ok(())
    }

    fn rst_stream(&mut self, stream: u32, code: ErrorCode, now: Instant) -> Result<(), ConnError> {
        if stream > self.last_stream {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
        }
        // Rapid reset (CVE-2023-44487): streams opened and reset faster than any client needs.
        if !self.resets.tick(now, self.limits.max_resets_per_sec) {
            return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "too many streams reset"));
        }
        if self.streams.remove(&stream).is_some() {
            self.events.push_back(Event::Reset { stream, code });
        }
        Ok(())
    }

    /// Forgets a stream both sides ended.
    fn close_if_done(&mut self, stream: u32) {
        if self.streams.get(&stream).is_some_and(|s| s.remote_closed && s.local_closed) {
            self.streams.remove(&stream);
        }
    }
}

/// A field's name and value as RFC 9113 §8.2.1 allows them: a name of token characters in lower case (a
/// pseudo-header field's after its `:`), a value without NUL, CR or LF and without whitespace at either end. (A
/// field that breaks them is malformed: with them, nothing a client sends can end a line of the HTTP/1.1 request
/// the stream stands for.)
fn field_ok(name: &str, value: &str) -> bool {
    let bare = name.strip_prefix(':').unwrap_or(name);
    let token = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    let ws = |b: u8| b == b' ' || b == b'\t';
    let v = value.as_bytes();
    !bare.is_empty()
        && bare.bytes().all(token)
        && !v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
        && !v.first().is_some_and(|&b| ws(b))
        && !v.last().is_some_and(|&b| ws(b))
}

/// A request's head from its decoded fields (§8.3; RFC 8441 §4): pseudo-header fields first, each once, known
/// ones only; names in lower case; no connection-specific fields; `:protocol` only on CONNECT; a CONNECT with
/// `:protocol` has `:scheme`, `:path` and `:authority`, one without has neither `:scheme` nor `:path`; any other
/// method has `:scheme` and a non-empty `:path`. `None`: malformed (the stream is reset with PROTOCOL_ERROR).
fn request(fields: Vec<Field>) -> Option<RequestHead> {
    let (mut method, mut scheme, mut authority, mut path, mut protocol) = (None, None, None, None, None);
    let mut rest = Vec::new();
    for Field { name, value } in fields {
        let name = String::from_utf8(name).ok()?;
        let value = String::from_utf8(value).ok()?;
        if !field_ok(&name, &value) {
            return None;
        }
        let slot = match name.as_str() {
            ":method" => &mut method,
            ":scheme" => &mut scheme,
            ":authority" => &mut authority,
            ":path" => &mut path,
            ":protocol" => &mut protocol,
            n if n.starts_with(':') => return None,
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => return None,
            "te" if value != "trailers" => return None,
            _ => {
                rest.push((name, value));
                continue;
            }
        };
        if slot.is_some() || !rest.is_empty() {
            return None; // twice, or after a regular field
        }
        *slot = Some(value);
    }
    let method = method?;
    let ok = match (method.as_str(), &protocol) {
        ("CONNECT", Some(_)) => {
            scheme.is_some() && authority.is_some() && path.as_deref().is_some_and(|p| !p.is_empty())
        }
        ("CONNECT", None) => scheme.is_none() && path.is_none() && authority.is_some(),
        (_, Some(_)) => false,
        _ => scheme.is_some() && path.as_deref().is_some_and(|p| !p.is_empty()),
    };
    ok.then_some(RequestHead { method, scheme, authority, path, protocol, fields: rest })
}

// ── sending ─────────────────────────────────────────────────────────────────────────────────────────────────

impl H2Conn {
    /// Answers a stream's request: `:status` and `fields` in one field block (`end_stream`: no body follows).
    pub fn respond(&mut self, stream: u32, status: u16, fields: &[(&str, &str)], end_stream: bool) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let mut block = Vec::new();
        hpack::write_status(&mut block, status);
        for (n, v) in fields {
            hpack::write_field(&mut block, n.to_ascii_lowercase().as_bytes(), v.as_bytes());
        }
        frame::write_headers(&mut self.out, stream, end_stream, &block, self.peer_max_frame);
        if end_stream {
            s.local_closed = true;
            self.close_if_done(stream);
        }
    }

    /// Bytes a stream may send now: its window and the connection's.
    pub fn send_capacity(&self, stream: u32) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.send_window.min(self.conn_send).max(0) as usize)
    }

    /// Sends what the windows allow of `data` on a stream, in frames of the peer's size; returns how much was
    /// taken (the rest waits for [`Event::Writable`]; if the windows stay shut, the stream is reset after
    /// [`Limits::stall_timeout`]). `end_stream` ends our side once all of `data` went.
    pub fn send_data(&mut self, stream: u32, data: &[u8], end_stream: bool, now: Instant) -> usize {
        let n = data.len().min(self.send_capacity(stream));
        let Some(s) = self.streams.get_mut(&stream).filter(|s| !s.local_closed) else { return 0 };
        if n < data.len() {
            s.stalled.get_or_insert(now);
        }
        let end = end_stream && n == data.len();
        let mut chunks = data[..n].chunks(self.peer_max_frame as usize).peekable();
        if chunks.peek().is_none() && end {
            frame::write_data(&mut self.out, stream, true, &[]);
        }
        while let Some(c) = chunks.next() {
            frame::write_data(&mut self.out, stream, end && chunks.peek().is_none(), c);
        }
        s.send_window -= n as i64;
        self.conn_send -= n as i64;
        if end {
            s.local_closed = true;
            self.close_if_done(stream);
        }
        n
    }

    /// The earliest time [`H2Conn::handle_timeout`] must be called: a stalled stream's deadline, or our
    /// SETTINGS' acknowledgement's.
    pub fn next_deadline(&self) -> Option<Instant> {
        let stall = self.streams.values().filter_map(|s| s.stalled).min().map(|t| t + self.limits.stall_timeout);
        let ack = match self.settings_ack {
            AckWait::Until(t) if self.phase != Phase::Closed => Some(t),
            _ => None,
        };
        stall.into_iter().chain(ack).min()
    }

    /// Past our SETTINGS' acknowledgement deadline, the connection ends (GOAWAY with SETTINGS_TIMEOUT, §6.5.3).
    /// Otherwise resets the streams whose windows stayed shut past [`Limits::stall_timeout`] while they had data
    /// to send (a zero-window stall: a peer holding our buffers by never reading); each is reported as
    /// [`Event::Reset`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnError> {
        if matches!(self.settings_ack, AckWait::Until(t) if now >= t) && self.phase != Phase::Closed {
            return Err(self.fail(ErrorCode::SETTINGS_TIMEOUT, "our SETTINGS were never acknowledged"));
        }
        let limit = self.limits.stall_timeout;
        let mut stalled: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.stalled.is_some_and(|t| now >= t + limit))
            .map(|(id, _)| *id)
            .collect();
        stalled.sort_unstable();
        for stream in stalled {
            self.reset(stream, ErrorCode::CANCEL);
        }
        Ok(())
    }

    /// The application processed `n` bytes of a stream's DATA: the peer may send that much more.
    pub fn release(&mut self, stream: u32, n: usize) {
        let Some(s) = self.streams.get_mut(&stream).filter(|s| !s.remote_closed) else { return };
        s.credit += n as i64;
        // One WINDOW_UPDATE once a quarter of the window is to be given back, not one per release.
        if s.credit >= i64::from(self.limits.stream_window / 4) {
            frame::write_window_update(&mut self.out, stream, s.credit as u32);
            s.recv_window += s.credit;
            s.credit = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::frame::{
        write_data, write_header, write_ping, write_rst_stream, write_settings, write_window_update,
    };

    /// What the server wrote, frame by frame (owned, as text).
    fn frames_of(out: &[u8]) -> Vec<String> {
        let (mut at, mut v) = (0, Vec::new());
        while let Ok(Status::Complete((f, n))) = frame::decode(&out[at..], frame::MAX_MAX_FRAME_SIZE) {
            v.push(format!("{f:?}"));
            at += n;
        }
        assert_eq!(at, out.len(), "the server writes whole frames");
        v
    }

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            hpack::write_field(&mut b, n.as_bytes(), v.as_bytes());
        }
        b
    }

    fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        frame::write_headers(&mut out, stream, end_stream, &block(fields), DEFAULT_MAX_FRAME_SIZE);
        out
    }

    const WS: [(&str, &str); 6] = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":path", "/chat"),
        (":authority", "localhost"),
        ("sec-websocket-version", "13"),
    ];

    fn start() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        write_settings(&mut v, &[(setting::INITIAL_WINDOW_SIZE, 65_535)]);
        v
    }

    fn open(limits: Limits, input: &[u8]) -> (H2Conn, Result<(), ConnError>, Vec<Event>) {
        let mut c = H2Conn::new(limits);
        let r = c.receive(input, Instant::now());
        let events = std::iter::from_fn(|| c.poll_event()).collect();
        (c, r, events)
    }

    fn ws_request(stream: u32) -> Event {
        let head = RequestHead {
            method: "CONNECT".into(),
            scheme: Some("https".into()),
            authority: Some("localhost".into()),
            path: Some("/chat".into()),
            protocol: Some("websocket".into()),
            fields: vec![("sec-websocket-version".into(), "13".into())],
        };
        Event::Request { stream, head, end_stream: false }
    }

    #[test]
    fn an_extended_connect_opens_a_stream_at_any_split() {
        let mut input = start();
        input.extend(headers(1, &WS, false));
        write_data(&mut input, 1, false, b"\x81\x85hello");
        let want = vec![ws_request(1), Event::Data { stream: 1, data: b"\x81\x85hello".to_vec(), end_stream: false }];
        for cut in 0..=input.len() {
            let mut c = H2Conn::new(Limits::default());
            let now = Instant::now();
            c.receive(&input[..cut], now).unwrap();
            c.receive(&input[cut..], now).unwrap();
            let got: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
            assert_eq!(got, want, "split at {cut}");
        }
        let (c, _, _) = open(Limits::default(), &input);
        let out = frames_of(c.out());
        assert!(out[0].contains("Settings { ack: false"), "{out:?}");
        let mut ours = Vec::new();
        write_settings(&mut ours, &[(setting::ENABLE_CONNECT_PROTOCOL, 1)]);
        assert_eq!(&c.out()[9..15], &ours[9..15], "SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 comes first");
        assert!(out.iter().any(|f| f == "Settings { ack: true, params: [] }"), "{out:?}");
    }

    #[test]
    fn responses_and_data_keep_within_the_peers_windows() {
        let mut input = start();
        input.extend(headers(1, &WS, false));
        let (mut c, r, _) = open(Limits::default(), &input);
        r.unwrap();
        c.consume_out(c.out().len());
        c.respond(1, 200, &[("sec-websocket-protocol", "chat")], false);
        let out = frames_of(c.out());
        assert!(out[0].starts_with("Headers { stream: 1, end_stream: false, end_headers: true"), "{out:?}");
        c.consume_out(c.out().len());
        // The peer's windows are 65,535: the rest waits.
        assert_eq!(c.send_data(1, &[7u8; 100_000], false, Instant::now()), 65_535);
        assert_eq!(c.send_capacity(1), 0);
        let out = frames_of(c.out());
        assert_eq!(out.len(), 4, "16 KiB frames: {out:?}");
        c.consume_out(c.out().len());
        let mut more = Vec::new();
        write_window_update(&mut more, 0, 50_000);
        write_window_update(&mut more, 1, 10_000);
        c.receive(&more, Instant::now()).unwrap();
        assert_eq!(c.poll_event(), Some(Event::Writable { stream: 0 }));
        assert_eq!(c.poll_event(), Some(Event::Writable { stream: 1 }));
        assert_eq!(c.send_capacity(1), 10_000);
        assert_eq!(c.send_data(1, &[7u8; 10_000], true, Instant::now()), 10_000);
        assert!(frames_of(c.out()).last().unwrap().contains("end_stream: true"));
    }

    #[test]
    fn released_data_gives_the_window_back_in_quarters() {
        let mut input = start();
        input.extend(headers(1, &WS, false));
        for _ in 0..5 {
            write_data(&mut input, 1, false, &[1u8; 16_000]);
        }
        let (mut c, r, events) = open(Limits::default(), &input);
        r.unwrap();
        // (A stream's frames in a row are one event.)
        assert!(matches!(&events[..], [Event::Request { .. }, Event::Data { data, .. }] if data.len() == 80_000));
        c.consume_out(c.out().len());
        c.release(1, 60_000);
        assert!(c.out().is_empty(), "under a quarter of 256 KiB: nothing yet");
        c.release(1, 20_000);
        assert_eq!(frames_of(c.out()), vec!["WindowUpdate { stream: 1, increment: 80000 }"]);
    }

    #[test]
    fn malformed_requests_are_reset_and_the_connection_goes_on() {
        let bad: [&[(&str, &str)]; 11] = [
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("X-Upper", "1")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("x", "a\r\nhost: evil")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("x y", "1")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("x", " padded")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/\n")],
            &[(":method", "GET"), (":scheme", "https")],
            &[(":method", "GET"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":method", "GET"), (":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), ("host", "x"), (":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("connection", "keep-alive")],
            &[(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "x")],
        ];
        let mut input = start();
        for (i, fields) in bad.iter().enumerate() {
            input.extend(headers(1 + 2 * i as u32, fields, true));
        }
        input.extend(headers(23, &WS, false));
        let (c, r, events) = open(Limits::default(), &input);
        r.unwrap();
        assert_eq!(events, vec![ws_request(23)]);
        let resets = frames_of(c.out()).into_iter().filter(|f| f.contains("RstStream")).count();
        assert_eq!(resets, 11);
    }

    #[test]
    fn too_many_streams_are_refused_and_hpack_stays_in_step() {
        let limits = Limits { max_streams: 1, ..Limits::default() };
        let mut input = start();
        input.extend(headers(1, &WS, false));
        // Stream 3 is refused; its block adds `x-key: v` to the table, which stream 5 then refers to (index 62).
        let mut b = block(&WS);
        b.extend([0x40, 5, b'x', b'-', b'k', b'e', b'y', 1, b'v']);
        frame::write_headers(&mut input, 3, false, &b, DEFAULT_MAX_FRAME_SIZE);
        write_rst_stream(&mut input, 1, ErrorCode::CANCEL);
        let mut b = block(&WS);
        b.push(0xbe);
        frame::write_headers(&mut input, 5, false, &b, DEFAULT_MAX_FRAME_SIZE);
        let (c, r, events) = open(limits, &input);
        r.unwrap();
        assert!(frames_of(c.out()).iter().any(|f| f == "RstStream { stream: 3, code: ErrorCode(7) }"));
        let Some(Event::Request { stream: 5, head, .. }) = events.last() else { panic!("{events:?}") };
        assert_eq!(head.fields.last(), Some(&("x-key".to_string(), "v".to_string())));
    }

    fn ends_with(limits: Limits, input: &[u8]) -> ErrorCode {
        let (c, r, _) = open(limits, input);
        let Err(e) = r else { panic!("a connection error expected; got {:?}", frames_of(c.out())) };
        assert!(c.is_closed());
        let out = frames_of(c.out());
        assert!(out.last().unwrap().starts_with("GoAway"), "{out:?}");
        e.code
    }

    #[test]
    fn connection_errors_end_with_goaway_and_their_code() {
        let l = Limits::default();
        let with = |extra: &[u8]| {
            let mut v = start();
            v.extend_from_slice(extra);
            v
        };
        assert_eq!(ends_with(l, b"GET / HTTP/1.1\r\n\r\n"), ErrorCode::PROTOCOL_ERROR);
        let mut no_settings = PREFACE.to_vec();
        write_ping(&mut no_settings, false, [0; 8]);
        assert_eq!(ends_with(l, &no_settings), ErrorCode::PROTOCOL_ERROR);
        assert_eq!(ends_with(l, &with(&headers(2, &WS, false))), ErrorCode::PROTOCOL_ERROR, "even stream");
        let mut back = headers(5, &WS, false);
        back.extend(headers(3, &WS, false));
        assert_eq!(ends_with(l, &with(&back)), ErrorCode::PROTOCOL_ERROR, "stream ids going back");
        let mut idle = Vec::new();
        write_data(&mut idle, 9, false, b"x");
        assert_eq!(ends_with(l, &with(&idle)), ErrorCode::PROTOCOL_ERROR, "DATA on an idle stream");
        let mut idle = Vec::new();
        write_header(&mut idle, 4, frame::kind::WINDOW_UPDATE, 0, 7);
        idle.extend([0, 0, 0, 0]);
        assert_eq!(ends_with(l, &with(&idle)), ErrorCode::PROTOCOL_ERROR, "a stream error on an idle stream (§5.1)");
        let mut inside = Vec::new();
        write_header(&mut inside, 1, frame::kind::HEADERS, 0, 1);
        inside.push(0x82);
        write_ping(&mut inside, false, [0; 8]);
        assert_eq!(ends_with(l, &with(&inside)), ErrorCode::PROTOCOL_ERROR, "a frame inside a field block");
        let mut flood = Vec::new();
        write_header(&mut flood, 1, frame::kind::HEADERS, 0, 1);
        flood.push(0x82);
        for _ in 0..1000 {
            write_header(&mut flood, 0, frame::kind::CONTINUATION, 0, 1);
        }
        assert_eq!(ends_with(l, &with(&flood)), ErrorCode::ENHANCE_YOUR_CALM, "empty CONTINUATION flood");
        let mut resets = Vec::new();
        for i in 0..150u32 {
            resets.extend(headers(1 + 2 * i, &WS, false));
            write_rst_stream(&mut resets, 1 + 2 * i, ErrorCode::CANCEL);
        }
        assert_eq!(ends_with(l, &with(&resets)), ErrorCode::ENHANCE_YOUR_CALM, "rapid reset");
        let mut pings = Vec::new();
        for _ in 0..150 {
            write_ping(&mut pings, false, [1; 8]);
        }
        assert_eq!(ends_with(l, &with(&pings)), ErrorCode::ENHANCE_YOUR_CALM, "PING flood");
        let mut wu = Vec::new();
        write_window_update(&mut wu, 0, MAX_WINDOW);
        assert_eq!(ends_with(l, &with(&wu)), ErrorCode::FLOW_CONTROL_ERROR, "connection window overflow");
    }

    #[test]
    fn ping_is_answered_and_a_stream_error_resets_only_its_stream() {
        let mut input = start();
        write_ping(&mut input, false, *b"abcdefgh");
        input.extend(headers(1, &WS, false));
        // An increment of 0 (the reserved bit set): a stream error.
        write_header(&mut input, 4, frame::kind::WINDOW_UPDATE, 0, 1);
        input.extend([0x80, 0, 0, 0]);
        input.extend(headers(3, &WS, false));
        // Past a stream's window: that stream is reset (the connection's window is given back as data comes,
        // so a client cannot pass it with frames of the default size).
        input.extend(headers(5, &WS, false));
        write_data(&mut input, 5, false, &[0u8; 2000]);
        let limits = Limits { stream_window: 1000, ..Limits::default() };
        let (c, r, events) = open(limits, &input);
        r.unwrap();
        let out = frames_of(c.out());
        assert!(out.contains(&"RstStream { stream: 5, code: ErrorCode(3) }".to_string()), "{out:?}");
        assert!(
            out.contains(&"Ping { ack: true, data: [97, 98, 99, 100, 101, 102, 103, 104] }".to_string()),
            "{out:?}"
        );
        assert!(out.contains(&"RstStream { stream: 1, code: ErrorCode(1) }".to_string()), "{out:?}");
        // Each reset stream is reported, so whatever the layer above holds for it ends too.
        assert!(matches!(events[1], Event::Reset { stream: 1, code: ErrorCode::PROTOCOL_ERROR }), "{events:?}");
        assert!(matches!(events.last(), Some(Event::Reset { stream: 5, code: ErrorCode::FLOW_CONTROL_ERROR })));
    }

    #[test]
    fn a_stream_whose_windows_stay_shut_is_reset_after_the_stall_timeout() {
        let mut input = start();
        frame::write_settings_ack(&mut input);
        input.extend(headers(1, &WS, false));
        input.extend(headers(3, &WS, false));
        let (mut c, r, _) = open(Limits::default(), &input);
        r.unwrap();
        let t0 = Instant::now();
        assert_eq!(c.send_data(1, &[0u8; 70_000], false, t0), 65_535, "the peer's window");
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(30)));
        // The stream's window alone does not end the stall: the connection's is still shut.
        let mut wu = Vec::new();
        write_window_update(&mut wu, 1, 100);
        c.receive(&wu, t0).unwrap();
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(30)));
        // Both open: the stall is over; what is left stalls again from the next send.
        let mut wu = Vec::new();
        write_window_update(&mut wu, 0, 1000);
        c.receive(&wu, t0).unwrap();
        while c.poll_event().is_some() {}
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.send_data(1, &[0u8; 4465], false, t0 + Duration::from_secs(1)), 100);
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(31)));
        c.consume_out(c.out().len());
        c.handle_timeout(t0 + Duration::from_secs(30)).unwrap();
        assert!(c.out().is_empty(), "not yet");
        c.handle_timeout(t0 + Duration::from_secs(31)).unwrap();
        assert_eq!(frames_of(c.out()), vec!["RstStream { stream: 1, code: ErrorCode(8) }"]);
        assert_eq!(c.poll_event(), Some(Event::Reset { stream: 1, code: ErrorCode::CANCEL }));
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.send_capacity(3), 900, "stream 3 goes on, with what is left of the connection's window");
    }

    #[test]
    fn our_settings_unacknowledged_end_the_connection_with_settings_timeout() {
        let t0 = Instant::now();
        let mut c = H2Conn::new(Limits::default());
        assert_eq!(c.next_deadline(), None, "the clock starts with the peer's first bytes");
        c.receive(&start(), t0).unwrap();
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
        c.handle_timeout(t0 + Duration::from_secs(9)).unwrap();
        let e = c.handle_timeout(t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.code, ErrorCode::SETTINGS_TIMEOUT);
        assert!(frames_of(c.out()).last().unwrap().starts_with("GoAway"));
        // Acknowledged in time: no deadline left.
        let mut c = H2Conn::new(Limits::default());
        let mut input = start();
        frame::write_settings_ack(&mut input);
        c.receive(&input, t0).unwrap();
        assert_eq!(c.next_deadline(), None);
        c.handle_timeout(t0 + Duration::from_secs(60)).unwrap();
    }
}
