//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte header and each type's payload, decoded from borrowed bytes.
//!
//! ```text
//! +-----------------------------------------------+
//! |                 Length (24)                   |
//! +---------------+---------------+---------------+
//! |   Type (8)    |   Flags (8)   |
//! +-+-------------+---------------+-------------------------------+
//! |R|                 Stream Identifier (31)                      |
//! +=+=============================================================+
//! |                   Frame Payload (0...)                      ...
//! +---------------------------------------------------------------+
//! ```
//!
//! [`decode`] follows the shape of [`crate::frame::decode_header`]: [`Status::Complete`] with the frame and the
//! bytes it took, [`Status::Partial`] when more are needed (a frame too large for `max_frame_size` is refused as
//! soon as its header is there, not after its payload), or a [`FrameError`] naming the error code and whether it
//! ends the stream (RST_STREAM) or the connection (GOAWAY). Frames of unknown types are passed over (§4.1).

use crate::frame::Status;

/// The frame header's length.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until the peer says otherwise (§6.5.2), and its bounds.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;
/// The largest SETTINGS_MAX_FRAME_SIZE a peer may announce.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (§6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (§6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PRIORITY (deprecated, still parsed).
    pub const PRIORITY: u8 = 0x2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PUSH_PROMISE (never from a client).
    pub const PUSH_PROMISE: u8 = 0x5;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6).
pub mod flag {
    /// DATA, HEADERS: the last frame of the stream from this side.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION: the field block ends in this frame.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS: a pad length byte first, padding last.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: a stream dependency and weight first.
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS parameters (§6.5.2; RFC 8441 §3).
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): extended CONNECT, which carries WebSocket.
    pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
}

/// An HTTP/2 error code (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// Graceful shutdown, or no error.
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    /// An unspecific protocol error.
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    /// An unexpected internal error.
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    /// The flow-control protocol was violated.
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    /// SETTINGS was not acknowledged in time.
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    /// A frame came for a half-closed stream.
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    /// A frame of the wrong size.
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    /// The stream is no longer needed.
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    /// The field compression context cannot be kept.
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    /// The connection of a CONNECT request was reset or closed.
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    /// The peer behaves in a way that may generate excessive load.
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    /// The TLS in use does not meet the requirements.
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    /// The request must be made over HTTP/1.1.
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);
}

/// A frame no valid peer sends: the code to answer with, and what it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError {
    /// The error code for RST_STREAM or GOAWAY.
    pub code: ErrorCode,
    /// `Some(stream)`: a stream error (RST_STREAM on that stream, the connection goes on); `None`: a connection
    /// error (GOAWAY, then the connection closes).
    pub stream: Option<u32>,
    /// What was wrong, for logs.
    pub what: &'static str,
}

impl FrameError {
    fn conn(code: ErrorCode, what: &'static str) -> FrameError {
        FrameError { code, stream: None, what }
    }
    fn stream(stream: u32, code: ErrorCode, what: &'static str) -> FrameError {
        FrameError { code, stream: Some(stream), what }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.stream {
            Some(s) => write!(f, "stream {s}: {} (error code {:#x})", self.what, self.code.0),
            None => write!(f, "connection: {} (error code {:#x})", self.what, self.code.0),
        }
    }
}

impl std::error::Error for FrameError {}

/// A stream dependency and weight (HEADERS with PRIORITY, and PRIORITY frames; deprecated by RFC 9113 §5.3.2 but
/// still parsed, and a stream that depends on itself is still an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    /// The stream depended on.
    pub depends_on: u32,
    /// Whether the dependency is exclusive.
    pub exclusive: bool,
    /// The weight, 1–256 on the wire minus one.
    pub weight: u8,
}

/// One decoded frame; its payload is borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Stream data. `flow_len` is the whole payload, padding included: what counts against flow control.
    Data {
        /// The stream.
        stream: u32,
        /// END_STREAM.
        end_stream: bool,
        /// The data, without padding.
        data: &'a [u8],
        /// Bytes that count against the flow-control windows.
        flow_len: u32,
    },
    /// The start of a field block (request or trailers).
    Headers {
        /// The stream.
        stream: u32,
        /// END_STREAM.
        end_stream: bool,
        /// END_HEADERS: no CONTINUATION follows.
        end_headers: bool,
        /// The priority fields, if present.
        priority: Option<Priority>,
        /// The field block fragment (HPACK), without padding.
        block: &'a [u8],
    },
    /// A priority change (deprecated; parsed and ignored).
    Priority {
        /// The stream.
        stream: u32,
        /// Its new priority.
        priority: Priority,
    },
    /// The peer ends a stream.
    RstStream {
        /// The stream.
        stream: u32,
        /// Why.
        code: ErrorCode,
    },
    /// Settings (each 6 bytes: [`settings`] reads them), or their acknowledgement.
    Settings {
        /// An acknowledgement (no parameters).
        ack: bool,
        /// The parameters, 6 bytes each.
        params: &'a [u8],
    },
    /// A ping, or the answer to ours.
    Ping {
        /// The answer to a ping.
        ack: bool,
        /// Opaque data, echoed in the answer.
        data: [u8; 8],
    },
    /// The peer is shutting the connection down.
    GoAway {
        /// The last stream it processed (or may process).
        last_stream: u32,
        /// Why.
        code: ErrorCode,
        /// Opaque debug data.
        debug: &'a [u8],
    },
    /// More flow-control window for a stream, or for the connection (stream 0).
    WindowUpdate {
        /// The stream, 0 for the connection.
        stream: u32,
        /// The increment, 1 to 2^31 - 1.
        increment: u32,
    },
    /// More of a field block begun by HEADERS.
    Continuation {
        /// The stream.
        stream: u32,
        /// END_HEADERS: the block ends here.
        end_headers: bool,
        /// The field block fragment.
        block: &'a [u8],
    },
    /// A frame of a type this implementation does not know: passed over (§4.1, §5.5).
    Unknown {
        /// Its type.
        kind: u8,
        /// Its stream.
        stream: u32,
    },
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The payload's length.
    pub len: u32,
    /// The type.
    pub kind: u8,
    /// The flags.
    pub flags: u8,
    /// The stream (the reserved bit dropped).
    pub stream: u32,
}

/// Decodes a frame header (nothing checked but the bytes' presence).
pub fn decode_header(buf: &[u8]) -> Option<Header> {
    let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    Some(Header {
        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & MAX_WINDOW,
    })
}

/// Decodes the frame at the start of `buf`, refusing payloads over `max_frame_size` (ours, as announced in
/// SETTINGS_MAX_FRAME_SIZE) as soon as the header shows one.
pub fn decode(buf: &[u8], max_frame_size: u32) -> Result<Status<(Frame<'_>, usize)>, FrameError> {
    let Some(h) = decode_header(buf) else { return Ok(Status::Partial) };
    if h.len > max_frame_size {
        // Larger than we allow: a connection error whatever the type (§4.2 allows it for every frame).
        return Err(FrameError::conn(ErrorCode::FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"));
    }
    let end = HEADER_LEN + h.len as usize;
    let Some(payload) = buf.get(HEADER_LEN..end) else { return Ok(Status::Partial) };
    Ok(Status::Complete((frame(h, payload)?, end)))
}

/// A frame's payload, checked for its type.
fn frame(h: Header, p: &[u8]) -> Result<Frame<'_>, FrameError> {
    use ErrorCode as E;
    let (s, flags) = (h.stream, h.flags);
    let on_stream = |what| if s == 0 { Err(FrameError::conn(E::PROTOCOL_ERROR, what)) } else { Ok(()) };
    let on_connection = |what| if s != 0 { Err(FrameError::conn(E::PROTOCOL_ERROR, what)) } else { Ok(()) };
    let sized = |n: usize, what| if p.len() != n { Err(FrameError::conn(E::FRAME_SIZE_ERROR, what)) } else { Ok(()) };
    Ok(match h.kind {
        kind::DATA => {
            on_stream("DATA on stream 0")?;
            let data = unpad(p, flags)?;
            Frame::Data { stream: s, end_stream: flags & flag::END_STREAM != 0, data, flow_len: h.len }
        }
        kind::HEADERS => {
            on_stream("HEADERS on stream 0")?;
            let mut block = unpad(p, flags)?;
            let mut priority = None;
            if flags & flag::PRIORITY != 0 {
                let Some((fields, rest)) = block.split_first_chunk::<5>() else {
                    return Err(FrameError::conn(E::FRAME_SIZE_ERROR, "HEADERS too short for its priority"));
                };
                priority = Some(self_dependent(s, fields)?);
                block = rest;
            }
            let (end_stream, end_headers) = (flags & flag::END_STREAM != 0, flags & flag::END_HEADERS != 0);
            Frame::Headers { stream: s, end_stream, end_headers, priority, block }
        }
        kind::PRIORITY => {
            on_stream("PRIORITY on stream 0")?;
            let Some(fields) = p.first_chunk::<5>().filter(|_| p.len() == 5) else {
                return Err(FrameError::stream(s, E::FRAME_SIZE_ERROR, "PRIORITY of a length other than 5"));
            };
            Frame::Priority { stream: s, priority: self_dependent(s, fields)? }
        }
        kind::RST_STREAM => {
            on_stream("RST_STREAM on stream 0")?;
            sized(4, "RST_STREAM of a length other than 4")?;
            Frame::RstStream { stream: s, code: ErrorCode(be32(p)) }
        }
        kind::SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            let ack = flags & flag::ACK != 0;
            if (ack && !p.is_empty()) || p.len() % 6 != 0 {
                return Err(FrameError::conn(E::FRAME_SIZE_ERROR, "SETTINGS of a wrong length"));
            }
            Frame::Settings { ack, params: p }
        }
        kind::PUSH_PROMISE => return Err(FrameError::conn(E::PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
        kind::PING => {
            on_connection("PING on a stream")?;
            let Some(data) = p.first_chunk::<8>().filter(|_| p.len() == 8) else {
                return Err(FrameError::conn(E::FRAME_SIZE_ERROR, "PING of a length other than 8"));
            };
            Frame::Ping { ack: flags & flag::ACK != 0, data: *data }
        }
        kind::GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            if p.len() < 8 {
                return Err(FrameError::conn(E::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes"));
            }
            Frame::GoAway { last_stream: be32(p) & MAX_WINDOW, code: ErrorCode(be32(&p[4..])), debug: &p[8..] }
        }
        kind::WINDOW_UPDATE => {
            sized(4, "WINDOW_UPDATE of a length other than 4")?;
            let increment = be32(p) & MAX_WINDOW;
            if increment == 0 {
                let what = "WINDOW_UPDATE of 0";
                return Err(if s == 0 {
                    FrameError::conn(E::PROTOCOL_ERROR, what)
                } else {
                    FrameError::stream(s, E::PROTOCOL_ERROR, what)
                });
            }
            Frame::WindowUpdate { stream: s, increment }
        }
        kind::CONTINUATION => {
            on_stream("CONTINUATION on stream 0")?;
            Frame::Continuation { stream: s, end_headers: flags & flag::END_HEADERS != 0, block: p }
        }
        other => Frame::Unknown { kind: other, stream: s },
    })
}

fn be32(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

/// The payload of a PADDED frame without its pad length byte and padding.
fn unpad(p: &[u8], flags: u8) -> Result<&[u8], FrameError> {
    if flags & flag::PADDED == 0 {
        return Ok(p);
    }
    match p.split_first() {
        Some((&pad, rest)) if (pad as usize) <= rest.len() => Ok(&rest[..rest.len() - pad as usize]),
        _ => Err(FrameError::conn(ErrorCode::PROTOCOL_ERROR, "padding as long as the payload or longer")),
    }
}

/// Priority fields; a stream may not depend on itself (§5.3.1: a stream error).
fn self_dependent(stream: u32, f: &[u8; 5]) -> Result<Priority, FrameError> {
    let dep = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
    let priority = Priority { depends_on: dep & MAX_WINDOW, exclusive: dep >> 31 == 1, weight: f[4] };
    if priority.depends_on == stream {
        return Err(FrameError::stream(stream, ErrorCode::PROTOCOL_ERROR, "a stream that depends on itself"));
    }
    Ok(priority)
}

/// The parameters of a SETTINGS frame, checked (§6.5.2): `(identifier, value)` pairs, unknown identifiers
/// included (the caller ignores them).
pub fn settings(params: &[u8]) -> Result<Vec<(u16, u32)>, FrameError> {
    params
        .chunks_exact(6)
        .map(|c| {
            let (id, value) = (u16::from_be_bytes([c[0], c[1]]), be32(&c[2..]));
            let bad = |code, what| Err(FrameError::conn(code, what));
            match id {
                setting::ENABLE_PUSH | setting::ENABLE_CONNECT_PROTOCOL if value > 1 => {
                    bad(ErrorCode::PROTOCOL_ERROR, "a boolean setting other than 0 or 1")
                }
                setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                    bad(ErrorCode::FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31 - 1")
                }
                setting::MAX_FRAME_SIZE if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) => {
                    bad(ErrorCode::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of 2^14 ..= 2^24 - 1")
                }
                _ => Ok((id, value)),
            }
        })
        .collect()
}

// ── encoding ──────────────────────────────────────────────────────────────────────────────────────────────

/// Appends a frame header.
pub fn write_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize, "a frame's length fits 24 bits");
    let l = (len as u32).to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    out.extend_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
}

/// Appends a SETTINGS frame with these parameters.
pub fn write_settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    write_header(out, params.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends the acknowledgement of the peer's SETTINGS.
pub fn write_settings_ack(out: &mut Vec<u8>) {
    write_header(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Appends a PING (or, with `ack`, the answer to one, echoing its data).
pub fn write_ping(out: &mut Vec<u8>, ack: bool, data: [u8; 8]) {
    write_header(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(&data);
}

/// Appends a WINDOW_UPDATE (`stream` 0: the connection's window).
pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    debug_assert!((1..=MAX_WINDOW).contains(&increment), "an increment of 1 to 2^31 - 1");
    write_header(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// Appends an RST_STREAM.
pub fn write_rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    write_header(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&code.0.to_be_bytes());
}

/// Appends a GOAWAY.
pub fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    write_header(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(debug);
}

/// Appends one DATA frame (the caller keeps it within the peer's SETTINGS_MAX_FRAME_SIZE and the windows).
pub fn write_data(out: &mut Vec<u8>, stream: u32, end_stream: bool, data: &[u8]) {
    write_header(out, data.len(), kind::DATA, if end_stream { flag::END_STREAM } else { 0 }, stream);
    out.extend_from_slice(data);
}

/// Appends a field block as HEADERS and as many CONTINUATION frames as `max_frame_size` (the peer's) requires.
pub fn write_headers(out: &mut Vec<u8>, stream: u32, end_stream: bool, block: &[u8], max_frame_size: u32) {
    let max = max_frame_size.max(DEFAULT_MAX_FRAME_SIZE) as usize;
    let mut chunks = block.chunks(max).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let last = chunks.peek().is_none();
    let flags = if end_stream { flag::END_STREAM } else { 0 } | if last { flag::END_HEADERS } else { 0 };
    write_header(out, first.len(), kind::HEADERS, flags, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() { flag::END_HEADERS } else { 0 };
        write_header(out, chunk.len(), kind::CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCode as E;

    fn one(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
        match decode(bytes, DEFAULT_MAX_FRAME_SIZE)? {
            Status::Complete((f, n)) => {
                assert_eq!(n, bytes.len(), "the whole frame is taken");
                Ok(f)
            }
            Status::Partial => panic!("a whole frame reported partial"),
        }
    }

    fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_header(&mut v, payload.len(), kind, flags, stream);
        v.extend_from_slice(payload);
        v
    }

    /// Every frame the encoders write, as (bytes, what decoding gives).
    fn vectors() -> Vec<(Vec<u8>, Frame<'static>)> {
        let mut v = Vec::new();
        let mut b = Vec::new();
        write_settings(&mut b, &[(setting::ENABLE_CONNECT_PROTOCOL, 1), (setting::INITIAL_WINDOW_SIZE, 65_535)]);
        let params: &'static [u8] = Box::leak(b[HEADER_LEN..].to_vec().into_boxed_slice());
        v.push((b, Frame::Settings { ack: false, params }));
        let mut b = Vec::new();
        write_settings_ack(&mut b);
        v.push((b, Frame::Settings { ack: true, params: &[] }));
        let mut b = Vec::new();
        write_ping(&mut b, true, *b"12345678");
        v.push((b, Frame::Ping { ack: true, data: *b"12345678" }));
        let mut b = Vec::new();
        write_window_update(&mut b, 3, 1 << 20);
        v.push((b, Frame::WindowUpdate { stream: 3, increment: 1 << 20 }));
        let mut b = Vec::new();
        write_rst_stream(&mut b, 5, E::CANCEL);
        v.push((b, Frame::RstStream { stream: 5, code: E::CANCEL }));
        let mut b = Vec::new();
        write_goaway(&mut b, 7, E::NO_ERROR, b"bye");
        v.push((b, Frame::GoAway { last_stream: 7, code: E::NO_ERROR, debug: b"bye" }));
        let mut b = Vec::new();
        write_data(&mut b, 1, true, b"\x81\x05hello");
        v.push((b, Frame::Data { stream: 1, end_stream: true, data: b"\x81\x05hello", flow_len: 7 }));
        let mut b = Vec::new();
        write_headers(&mut b, 1, false, b"\x82\x84", DEFAULT_MAX_FRAME_SIZE);
        let h = Frame::Headers { stream: 1, end_stream: false, end_headers: true, priority: None, block: b"\x82\x84" };
        v.push((b, h));
        // Padded DATA: padding counts against flow control, and is not data.
        v.push((
            raw(kind::DATA, flag::PADDED, 3, b"\x02abXX"),
            Frame::Data { stream: 3, end_stream: false, data: b"ab", flow_len: 5 },
        ));
        // HEADERS with padding and priority.
        let p = Priority { depends_on: 1, exclusive: true, weight: 15 };
        let h = Frame::Headers { stream: 3, end_stream: true, end_headers: true, priority: Some(p), block: b"\x82" };
        v.push((raw(kind::HEADERS, 0x2d, 3, b"\x01\x80\x00\x00\x01\x0f\x82\x00"), h));
        v.push((
            raw(kind::CONTINUATION, flag::END_HEADERS, 3, b"\x84"),
            Frame::Continuation { stream: 3, end_headers: true, block: b"\x84" },
        ));
        v.push((
            raw(kind::PRIORITY, 0, 3, b"\x00\x00\x00\x01\x10"),
            Frame::Priority { stream: 3, priority: Priority { depends_on: 1, exclusive: false, weight: 16 } },
        ));
        // Unknown types are passed over; the reserved bit of the stream id is ignored.
        v.push((raw(0xfa, 0xff, 9, b"whatever"), Frame::Unknown { kind: 0xfa, stream: 9 }));
        let mut r = raw(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]);
        r[5] |= 0x80;
        v.push((r, Frame::WindowUpdate { stream: 0, increment: 1 }));
        v
    }

    #[test]
    fn every_vector_decodes_whole_and_every_prefix_is_partial() {
        for (bytes, want) in vectors() {
            assert_eq!(one(&bytes), Ok(want), "{bytes:02x?}");
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut], DEFAULT_MAX_FRAME_SIZE), Ok(Status::Partial), "{cut} of {bytes:02x?}");
            }
        }
    }

    #[test]
    fn frames_back_to_back_decode_one_after_another_at_any_split() {
        let all: Vec<u8> = vectors().into_iter().flat_map(|(b, _)| b).collect();
        let want: Vec<Frame<'_>> = vectors().into_iter().map(|(_, f)| f).collect();
        // A reader that gets the bytes in two parts at every split point, and keeps what it could not use.
        for split in 0..=all.len() {
            let (mut got, mut held) = (Vec::new(), Vec::new());
            for part in [&all[..split], &all[split..]] {
                held.extend_from_slice(part);
                let mut at = 0;
                while let Status::Complete((f, n)) = decode(&held[at..], DEFAULT_MAX_FRAME_SIZE).unwrap() {
                    got.push(format!("{f:?}"));
                    at += n;
                }
                held.drain(..at);
            }
            assert!(held.is_empty());
            assert_eq!(got, want.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>(), "split at {split}");
        }
    }

    #[test]
    fn a_frame_too_large_is_refused_from_its_header_alone() {
        let mut b = Vec::new();
        write_header(&mut b, DEFAULT_MAX_FRAME_SIZE as usize + 1, kind::DATA, 0, 1);
        let e = decode(&b, DEFAULT_MAX_FRAME_SIZE).unwrap_err();
        assert_eq!((e.code, e.stream), (E::FRAME_SIZE_ERROR, None));
        // At the limit it waits for its payload.
        let mut b = Vec::new();
        write_header(&mut b, DEFAULT_MAX_FRAME_SIZE as usize, kind::DATA, 0, 1);
        assert_eq!(decode(&b, DEFAULT_MAX_FRAME_SIZE), Ok(Status::Partial));
    }

    #[test]
    fn every_malformed_frame_gets_its_code_and_scope() {
        let conn = |code| (code, None);
        type Scope = (ErrorCode, Option<u32>);
        let cases: Vec<(Vec<u8>, Scope)> = vec![
            (raw(kind::DATA, 0, 0, b"x"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::DATA, flag::PADDED, 1, b"\x03ab"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::DATA, flag::PADDED, 1, b""), conn(E::PROTOCOL_ERROR)),
            (raw(kind::HEADERS, 0, 0, b"\x82"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::HEADERS, flag::PRIORITY, 1, b"\x00\x00"), conn(E::FRAME_SIZE_ERROR)),
            (raw(kind::HEADERS, flag::PRIORITY, 1, b"\x00\x00\x00\x01\x10"), (E::PROTOCOL_ERROR, Some(1))),
            (raw(kind::PRIORITY, 0, 1, b"\x00\x00\x00\x03\x10\x00"), (E::FRAME_SIZE_ERROR, Some(1))),
            (raw(kind::PRIORITY, 0, 0, b"\x00\x00\x00\x03\x10"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::RST_STREAM, 0, 1, b"\x00\x00\x00"), conn(E::FRAME_SIZE_ERROR)),
            (raw(kind::RST_STREAM, 0, 0, b"\x00\x00\x00\x08"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::SETTINGS, 0, 1, b""), conn(E::PROTOCOL_ERROR)),
            (raw(kind::SETTINGS, flag::ACK, 0, b"\x00\x01\x00\x00\x00\x00"), conn(E::FRAME_SIZE_ERROR)),
            (raw(kind::SETTINGS, 0, 0, b"\x00\x01\x00"), conn(E::FRAME_SIZE_ERROR)),
            (raw(kind::PUSH_PROMISE, flag::END_HEADERS, 1, b"\x00\x00\x00\x02"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::PING, 0, 0, b"1234567"), conn(E::FRAME_SIZE_ERROR)),
            (raw(kind::PING, 0, 1, b"12345678"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::GOAWAY, 0, 0, b"1234567"), conn(E::FRAME_SIZE_ERROR)),
            (raw(kind::GOAWAY, 0, 3, b"12345678"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::WINDOW_UPDATE, 0, 1, b"\x00\x00\x01"), conn(E::FRAME_SIZE_ERROR)),
            (raw(kind::WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), conn(E::PROTOCOL_ERROR)),
            (raw(kind::WINDOW_UPDATE, 0, 5, b"\x80\x00\x00\x00"), (E::PROTOCOL_ERROR, Some(5))),
            (raw(kind::CONTINUATION, 0, 0, b"\x82"), conn(E::PROTOCOL_ERROR)),
        ];
        for (bytes, want) in cases {
            let e = one(&bytes).unwrap_err();
            assert_eq!((e.code, e.stream), want, "{bytes:02x?}: {e}");
        }
    }

    #[test]
    fn settings_are_read_and_checked() {
        let mut b = Vec::new();
        write_settings(&mut b, &[(setting::MAX_FRAME_SIZE, 1 << 20), (0x99, 7), (setting::ENABLE_CONNECT_PROTOCOL, 1)]);
        let Ok(Frame::Settings { params, .. }) = one(&b) else { panic!() };
        assert_eq!(
            settings(params),
            Ok(vec![(setting::MAX_FRAME_SIZE, 1 << 20), (0x99, 7), (setting::ENABLE_CONNECT_PROTOCOL, 1)])
        );
        for (id, value, code) in [
            (setting::ENABLE_PUSH, 2, E::PROTOCOL_ERROR),
            (setting::ENABLE_CONNECT_PROTOCOL, 2, E::PROTOCOL_ERROR),
            (setting::INITIAL_WINDOW_SIZE, 1 << 31, E::FLOW_CONTROL_ERROR),
            (setting::MAX_FRAME_SIZE, (1 << 14) - 1, E::PROTOCOL_ERROR),
            (setting::MAX_FRAME_SIZE, 1 << 24, E::PROTOCOL_ERROR),
        ] {
            let mut b = Vec::new();
            write_settings(&mut b, &[(id, value)]);
            assert_eq!(settings(&b[HEADER_LEN..]).unwrap_err().code, code, "{id} = {value}");
        }
    }

    #[test]
    fn a_long_field_block_goes_out_as_headers_and_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        write_headers(&mut out, 5, true, &block, DEFAULT_MAX_FRAME_SIZE);
        let (mut at, mut got, mut frames) = (0, Vec::new(), Vec::new());
        while at < out.len() {
            let Status::Complete((f, n)) = decode(&out[at..], DEFAULT_MAX_FRAME_SIZE).unwrap() else { panic!() };
            match f {
                Frame::Headers { block, end_stream, end_headers, .. } => {
                    assert!(end_stream && !end_headers);
                    got.extend_from_slice(block);
                }
                Frame::Continuation { block, end_headers, .. } => {
                    got.extend_from_slice(block);
                    frames.push(end_headers);
                }
                other => panic!("{other:?}"),
            }
            at += n;
        }
        assert_eq!(got, block);
        assert_eq!(frames, vec![false, true], "16 KiB + 16 KiB + the rest; only the last ends the block");
    }
}
