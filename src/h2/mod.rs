//! HTTP/2 (RFC 9113), for WebSockets over HTTP/2 (RFC 8441; served with `Config::http2`, docs/http2.md).
//!
//! The frame codec ([`frame`]), HPACK ([`hpack`]) and the server connection ([`conn`]), sans-I/O like the rest
//! of the core — bytes in, events and bytes out, nothing consumed until a whole frame is there, and every fault
//! with the error code it calls for and whether it ends the stream or the whole connection. The endpoint maps
//! each stream onto a WebSocket connection of its own (`src/endpoint/h2.rs`).

pub mod conn;
pub mod frame;
pub mod hpack;
