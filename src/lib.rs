#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

/// How the code is laid out, and one message's path through it: `docs/architecture.md`, checked by rustdoc (its
/// links to items must resolve).
#[doc = include_str!("../docs/architecture.md")]
pub mod architecture {}
pub mod close;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod deflate;
pub mod endpoint;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod group;
#[doc(hidden)]
pub mod h2;
mod handle;
pub mod handshake;
mod huffman;
pub mod lz;
pub mod mask;
pub mod metrics;
pub mod net;
mod peer;
pub mod policy;
pub mod prepared;
pub mod proxy;
pub mod redis;
mod spill;
pub mod utf8;

pub use close::CloseCode;
pub use cluster::{Bridge, Cluster, ClusterHandle};
pub use config::{Config, MemoryBound, RateLimit, RatePolicy};
pub use conn::{CloseStatus, Connection, Event, Message, TimeoutKind};
pub use endpoint::{Endpoint, Order, Read, Transmit};
pub use error::{ConfigError, HandshakeError, ProtocolError, SendError};
pub use prepared::PreparedMessage;
pub mod handler;
pub mod router;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "tls")]
pub mod tls_config;

pub use handler::{ConnId, Ctx, Deferred, Handler, Handlers, Response, SendStatus};
pub use router::{ConnData, Router};
pub use server::{Server, ServerHandle, ShutdownReport, StopHandle};
