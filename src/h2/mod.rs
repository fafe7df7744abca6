//! HTTP/2 (RFC 9113), for WebSocket over HTTP/2 (RFC 8441): work in progress, not yet served by the loop.
//!
//! So far: the frame codec ([`frame`]) and HPACK ([`hpack`]), sans-I/O like the rest of the core — bytes in,
//! frames out, nothing consumed until a whole frame is there, and every fault with the error code it calls for
//! and whether it ends the stream or the whole connection.

pub mod conn;
pub mod frame;
pub mod hpack;
