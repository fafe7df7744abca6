//! Errors, each saying whose fault it is and what goes on the wire.
//!
//! * [`HandshakeError`] — the peer sent a bad upgrade request; answered with an HTTP status ([`HandshakeError::status`]).
//! * [`ProtocolError`] — the peer broke RFC 6455 after the upgrade (or a limit was hit); answered with a close code
//!   ([`ProtocolError::close_code`]).
//! * [`SendError`] — the application misused the API (sending on a closed connection, an unsendable close code);
//!   nothing goes on the wire.
//! * [`ConfigError`] — a configuration key or value was refused at start-up.

use crate::close::CloseCode;
use std::fmt;

/// A bad opening handshake from the peer. Each maps to the HTTP status that refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The request head is not valid HTTP/1.x. → 400
    Malformed,
    /// The request head exceeded the configured limit. → 431
    HeadTooLarge,
    /// More header lines than the parser holds. → 431
    TooManyHeaders,
    /// An upgrade asked with a method other than GET. → 405
    MethodNotAllowed,
    /// HTTP/1.0 (RFC 6455 §4.1 requires HTTP/1.1 or later). → 400
    HttpVersion,
    /// No `Host` header. → 400
    MissingHost,
    /// `Upgrade` does not contain the token `websocket`. → 400
    UpgradeHeader,
    /// `Connection` does not contain the token `Upgrade`. → 400
    ConnectionHeader,
    /// `Sec-WebSocket-Key` missing, or not the base64 of 16 bytes. → 400
    Key,
    /// `Sec-WebSocket-Version` is not 13. → 426 with `Sec-WebSocket-Version: 13`
    Version,
    /// With `proxy_protocol` on: the connection did not begin with a valid PROXY protocol header. → 400
    ProxyHeader,
    /// `Host`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version` given more than once (RFC 9112 §3.2, RFC 6455
    /// §11.3.1 and §11.3.5: each appears once). → 400
    DuplicateHeader,
    /// An upgrade whose request target is not a path (`GET *`, or an absolute URI): RFC 6455 §4.1 sends the
    /// resource name, which begins with `/`. → 400
    Target,
}

impl HandshakeError {
    /// The HTTP status that answers this fault.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::Version => 426,
            _ => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            HandshakeError::Malformed => "malformed HTTP request",
            HandshakeError::HeadTooLarge => "request head too large",
            HandshakeError::TooManyHeaders => "too many header lines",
            HandshakeError::MethodNotAllowed => "WebSocket upgrade requires GET",
            HandshakeError::HttpVersion => "WebSocket upgrade requires HTTP/1.1 or later",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::UpgradeHeader => "Upgrade header must contain \"websocket\"",
            HandshakeError::ConnectionHeader => "Connection header must contain \"Upgrade\"",
            HandshakeError::Key => "Sec-WebSocket-Key must be the base64 of 16 bytes",
            HandshakeError::Version => "unsupported Sec-WebSocket-Version (13 is supported)",
            HandshakeError::ProxyHeader => "missing or malformed PROXY protocol header",
            HandshakeError::DuplicateHeader => "Host, Sec-WebSocket-Key and Sec-WebSocket-Version must appear once",
            HandshakeError::Target => "the request target of an upgrade must be a path",
        };
        f.write_str(s)
    }
}

impl std::error::Error for HandshakeError {}

/// The peer broke the WebSocket protocol, or exceeded a limit. Each maps to the close code that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Opcode 0x3–0x7 or 0xB–0xF. → 1002
    ReservedOpcode(u8),
    /// A control frame without FIN. → 1002
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload. → 1002
    ControlTooLong(u64),
    /// A 64-bit length with its most significant bit set. → 1002
    LengthTopBitSet,
    /// A client frame without the MASK bit (§5.1). → 1002
    UnmaskedFrame,
    /// RSV bits not granted by a negotiated extension. → 1002
    ReservedBits(u8),
    /// A continuation frame with no message open. → 1002
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is open. → 1002
    ExpectedContinuation,
    /// A close payload of exactly one byte. → 1002
    CloseOneByte,
    /// A close code that may not be sent. → 1002
    InvalidCloseCode(u16),
    /// A text message or close reason that is not UTF-8. → 1007
    InvalidUtf8,
    /// A compressed message that does not inflate (RFC 7692 §8.2.3.1 leaves the code open; wskit sends 1007,
    /// data inconsistent with the message). → 1007
    InvalidCompressedData,
    /// A frame longer than `max_payload_size`. → 1009
    FrameTooLarge {
        /// The announced length.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message longer than `max_message_size`. → 1009
    MessageTooLarge {
        /// Bytes the message would hold.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// More frames in one message than `max_messages_buffering`. → 1009
    TooManyFrames {
        /// The limit.
        max: usize,
    },
    /// A message whose first fragment came and whose last did not within the incomplete-message timeout. → 1008
    MessageTimeout,
    /// The peer did not read: more than `max_queued_bytes` waited for it. The connection is dropped (a close frame
    /// could not get through); reported as 1008.
    SlowConsumer {
        /// Bytes queued.
        queued: usize,
    },
    /// The peer sent more than its rate limit allows (`rate_limit` with `rate_policy = close`). → 1008
    RateLimited,
}

impl ProtocolError {
    /// The close code sent to the peer for this fault.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => CloseCode::INVALID_DATA,
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::TooManyFrames { .. } => CloseCode::TOO_BIG,
            ProtocolError::MessageTimeout | ProtocolError::SlowConsumer { .. } | ProtocolError::RateLimited => {
                CloseCode::POLICY
            }
            _ => CloseCode::PROTOCOL,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::FragmentedControl => f.write_str("fragmented control frame"),
            ProtocolError::ControlTooLong(n) => {
                write!(f, "control frame payload of {n} bytes (at most 125)")
            }
            ProtocolError::LengthTopBitSet => f.write_str("64-bit payload length with the top bit set"),
            ProtocolError::UnmaskedFrame => f.write_str("unmasked frame from a client"),
            ProtocolError::ReservedBits(r) => {
                write!(f, "reserved bits {r:#05b} set without an extension")
            }
            ProtocolError::UnexpectedContinuation => f.write_str("continuation frame with no message open"),
            ProtocolError::ExpectedContinuation => f.write_str("new data frame while a fragmented message is open"),
            ProtocolError::CloseOneByte => f.write_str("close frame with a 1-byte payload"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message or close reason"),
            ProtocolError::InvalidCompressedData => f.write_str("compressed message does not inflate"),
            ProtocolError::FrameTooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the limit of {max}")
            }
            ProtocolError::MessageTooLarge { size, max } => {
                write!(f, "message of {size} bytes exceeds the limit of {max}")
            }
            ProtocolError::TooManyFrames { max } => write!(f, "message has more than {max} frames"),
            ProtocolError::MessageTimeout => f.write_str("message not completed within the timeout"),
            ProtocolError::SlowConsumer { queued } => write!(f, "{queued} bytes queued for a peer that does not read"),
            ProtocolError::RateLimited => f.write_str("rate limit exceeded"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The application misused the API; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is not open (handshake not done, closing or closed), or is gone.
    NotOpen,
    /// A close code that may not be sent (see [`CloseCode::is_sendable`]).
    InvalidCloseCode(u16),
    /// A control payload (ping, pong, close reason) longer than 125 bytes.
    ControlTooLong,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotOpen => f.write_str("connection is not open"),
            SendError::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            SendError::ControlTooLong => f.write_str("control payload longer than 125 bytes"),
        }
    }
}

impl std::error::Error for SendError {}

/// A configuration key or value was refused; says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key (or field) at fault.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: &str, reason: impl Into<String>) -> Self {
        ConfigError { key: key.to_string(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}
