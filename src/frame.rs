//! The frame header codec (RFC 6455 §5.2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! [`decode_header`] follows httparse's shape: [`Status::Complete`] with the header length, [`Status::Partial`]
//! when more bytes are needed (nothing is consumed), or a [`ProtocolError`] for a header no valid peer sends.

use crate::close::CloseCode;
use crate::error::ProtocolError;

/// The longest header: 2 bytes, 8 of extended length, 4 of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload of a control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a later fragment of a message.
    Continuation,
    /// 0x1: the first frame of a UTF-8 text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: the closing handshake.
    Close,
    /// 0x9: a ping; answered with a pong.
    Ping,
    /// 0xA: a pong.
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode; 0x3–0x7 and 0xB–0xF are reserved.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong (opcodes with the high bit set).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of a message.
    pub fin: bool,
    /// RSV1..RSV3 as the top three bits of a nibble (`0b100` = RSV1).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub len: u64,
}

/// The result of an incremental parse: done with `T`, or more bytes needed. Running out of bytes is not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// Parsed; holds the value (for headers, with the number of bytes consumed).
    Complete(T),
    /// Not enough bytes yet; nothing was consumed.
    Partial,
}

/// How long the header starting with these two bytes is (the first two bytes decide it).
pub fn header_len(b0: u8, b1: u8) -> usize {
    let _ = b0;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Decodes one frame header from the start of `buf`.
///
/// Checks the rules that hold for every endpoint: reserved opcodes, control frames that are fragmented or longer
/// than 125 bytes, and 64-bit lengths with the top bit set are refused with 1002. Rules that depend on the role or
/// on negotiated extensions (MASK, RSV bits) are checked by the caller.
#[inline]
pub fn decode_header(buf: &[u8]) -> Result<Status<(FrameHeader, usize)>, ProtocolError> {
    // What a client sends most: a masked data frame with a 7-bit or 16-bit length (six or eight header bytes).
    // Decoded inline; every other header takes the general path below, and a test checks that both agree on
    // every first two bytes at every length.
    if let [b0, b1, m0, m1, m2, m3, ..] = *buf {
        let op = b0 & 0x0f;
        if b1 & 0x80 != 0 && op <= 2 {
            let opcode = match op {
                0 => OpCode::Continuation,
                1 => OpCode::Text,
                _ => OpCode::Binary,
            };
            let (fin, rsv) = (b0 & 0x80 != 0, (b0 >> 4) & 0x7);
            if b1 & 0x7f < 126 {
                let h = FrameHeader { fin, rsv, opcode, mask: Some([m0, m1, m2, m3]), len: u64::from(b1 & 0x7f) };
                return Ok(Status::Complete((h, 6)));
            }
            if let (126, &[_, _, l0, l1, m0, m1, m2, m3, ..]) = (b1 & 0x7f, buf) {
                let len = u16::from_be_bytes([l0, l1]).into();
                return Ok(Status::Complete((FrameHeader { fin, rsv, opcode, mask: Some([m0, m1, m2, m3]), len }, 8)));
            }
        }
    }
    decode_header_general(buf)
}

/// [`decode_header`] for every header.
#[inline(never)]
fn decode_header_general(buf: &[u8]) -> Result<Status<(FrameHeader, usize)>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(Status::Partial);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let need = header_len(b0, b1);
    if buf.len() < need {
        return Ok(Status::Partial);
    }
    let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0f))?;
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let (len, at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(l);
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthTopBitSet);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    let mask = if b1 & 0x80 != 0 { Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) } else { None };
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ProtocolError::ControlTooLong(len));
        }
    }
    Ok(Status::Complete((FrameHeader { fin, rsv, opcode, mask, len }, need)))
}

/// Encodes a header into `out` (at most [`MAX_HEADER_LEN`] bytes), choosing the shortest length form (§5.2: "the
/// minimal number of bytes MUST be used"). Returns the number of bytes written.
pub fn encode_header(fin: bool, rsv: u8, opcode: OpCode, mask: Option<[u8; 4]>, len: u64, out: &mut [u8; 14]) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | ((rsv & 0x7) << 4) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as u64 {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    n
}

/// Appends a whole unmasked frame (header and payload) to `out`: what a server sends.
pub fn write_frame(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: OpCode, payload: &[u8]) {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(fin, rsv, opcode, None, payload.len() as u64, &mut h);
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// Appends a whole masked frame, as a client sends it (for tests, fuzzing and the examples' raw clients).
pub fn write_client_frame(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: OpCode, mask: [u8; 4], payload: &[u8]) {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(fin, rsv, opcode, Some(mask), payload.len() as u64, &mut h);
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    crate::mask::apply_mask(&mut out[start..], mask, 0);
}

/// Appends a message as frames of at most `max_frame` payload bytes (0: one frame). A compressed message is one
/// deflate stream cut into frames, with RSV1 on the first only (RFC 7692 §6.1).
pub(crate) fn write_message(out: &mut Vec<u8>, compressed: bool, op: OpCode, payload: &[u8], max_frame: usize) {
    if max_frame == 0 || payload.len() <= max_frame {
        write_frame(out, true, if compressed { 0b100 } else { 0 }, op, payload);
        return;
    }
    let mut chunks = payload.chunks(max_frame).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let (rsv, opcode) = if first { (if compressed { 0b100 } else { 0 }, op) } else { (0, OpCode::Continuation) };
        write_frame(out, chunks.peek().is_none(), rsv, opcode, chunk);
        first = false;
    }
}

/// Parses a received close payload: `None` for an empty one (reported as 1005), else the code and reason.
///
/// A 1-byte payload and a code that may not be sent are 1002; a reason that is not UTF-8 is 1007.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::CloseOneByte),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_path_agrees_with_the_general_one_on_every_first_two_bytes() {
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                let buf = [b0, b1, 0x00, 0x7e, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22];
                for end in 0..=buf.len() {
                    assert_eq!(decode_header(&buf[..end]), decode_header_general(&buf[..end]), "{b0:#x} {b1:#x} {end}");
                }
            }
        }
    }

    fn vectors() -> Vec<(FrameHeader, Vec<u8>)> {
        let mut v = Vec::new();
        for (len, mask) in [
            (0u64, None),
            (5, Some([1, 2, 3, 4])),
            (125, None),
            (126, Some([9, 8, 7, 6])),
            (65535, None),
            (65536, Some([0xff; 4])),
            (1 << 40, None),
        ] {
            for (fin, rsv, opcode) in
                [(true, 0, OpCode::Text), (false, 4, OpCode::Binary), (true, 0, OpCode::Continuation)]
            {
                let h = FrameHeader { fin, rsv, opcode, mask, len };
                let mut b = [0u8; 14];
                let n = encode_header(fin, rsv, opcode, mask, len, &mut b);
                v.push((h, b[..n].to_vec()));
            }
        }
        v
    }

    #[test]
    fn every_prefix_is_partial_and_the_whole_round_trips() {
        for (h, bytes) in vectors() {
            for k in 0..bytes.len() {
                assert_eq!(decode_header(&bytes[..k]), Ok(Status::Partial), "{h:?} prefix {k}");
            }
            let mut with_tail = bytes.clone();
            with_tail.extend_from_slice(b"tail");
            assert_eq!(decode_header(&with_tail), Ok(Status::Complete((h, bytes.len()))));
        }
    }

    #[test]
    fn length_classes_use_the_minimal_form() {
        let mut b = [0u8; 14];
        assert_eq!(encode_header(true, 0, OpCode::Binary, None, 125, &mut b), 2);
        assert_eq!(encode_header(true, 0, OpCode::Binary, None, 126, &mut b), 4);
        assert_eq!(&b[..4], &[0x82, 126, 0, 126]);
        assert_eq!(encode_header(true, 0, OpCode::Binary, None, 65535, &mut b), 4);
        assert_eq!(encode_header(true, 0, OpCode::Binary, None, 65536, &mut b), 10);
        assert_eq!(&b[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn header_faults_are_protocol_errors() {
        assert_eq!(decode_header(&[0x83, 0x80, 0, 0, 0, 0]), Err(ProtocolError::ReservedOpcode(3)));
        assert_eq!(decode_header(&[0x8b, 0x80, 0, 0, 0, 0]), Err(ProtocolError::ReservedOpcode(0xb)));
        assert_eq!(decode_header(&[0x09, 0x80, 0, 0, 0, 0]), Err(ProtocolError::FragmentedControl));
        assert_eq!(decode_header(&[0x89, 0xfe, 0, 126, 0, 0, 0, 0]), Err(ProtocolError::ControlTooLong(126)));
        let top = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(decode_header(&top), Err(ProtocolError::LengthTopBitSet));
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(parse_close_payload(b"\x03"), Err(ProtocolError::CloseOneByte));
        assert_eq!(parse_close_payload(b"\x03\xe8bye"), Ok(Some((CloseCode::NORMAL, "bye"))));
        assert_eq!(parse_close_payload(b"\x0b\xb8"), Ok(Some((CloseCode(3000), ""))));
        assert_eq!(parse_close_payload(b"\x03\xed"), Err(ProtocolError::InvalidCloseCode(1005)));
        assert_eq!(parse_close_payload(b"\x03\xe8\xff"), Err(ProtocolError::InvalidUtf8));
    }
}
