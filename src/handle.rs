//! What a loop shares with other threads, and the handles that reach it: [`ServerHandle`] (send, publish,
//! broadcast, close, stop, shut down) and [`StopHandle`]. Below the server and the cluster: each names it, it names
//! neither.

use crate::close::CloseCode;
use crate::conn::Message;
use crate::error::SendError;
use crate::handler::{refusal_status, Commands, ConnId, Inbox, Origin};
use crate::metrics::Metrics;
#[cfg(feature = "tls")]
use crate::tls_config::TlsConfigError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// A connection's id: its generation and its slot.
pub(crate) fn conn_id(key: usize, gen: u32) -> ConnId {
    ConnId((gen as u64) << 32 | key as u64)
}

/// Slot and generation packed in a [`ConnId`] (or a token).
pub(crate) fn split_id(id: u64) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
}

/// Wakes a loop from another thread (the mio shell's `Waker`; any function for an embedder's own loop).
pub(crate) type Wake = Box<dyn Fn() + Send + Sync>;

/// What the loop shares with other threads.
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    /// Set once by whoever runs the loop; until then commands wait unannounced for the next turn.
    pub(crate) waker: OnceLock<Wake>,
    /// Commands from [`ServerHandle`]s, carried out at the loop's next turn.
    pub(crate) inbox: Mutex<Commands>,
    /// The generation of each live (open) connection by slot, 0 when none: lets a handle tell a gone id at once.
    pub(crate) live: RwLock<Vec<u32>>,
    pub(crate) metrics: Metrics,
    /// A graceful shutdown asked from another thread, with its grace period.
    pub(crate) shutdown: Mutex<Option<Duration>>,
    /// A new TLS configuration for new handshakes ([`ServerHandle::reload_tls`]).
    #[cfg(feature = "tls")]
    pub(crate) tls: TlsSwap,
}

/// What a loop needs to take a new TLS configuration from another thread.
#[cfg(feature = "tls")]
#[derive(Default)]
pub(crate) struct TlsSwap {
    /// The configuration its TLS was built from (`ssl_cert` and friends), when it was: read again on a reload.
    pub(crate) source: OnceLock<Arc<crate::Config>>,
    /// Whether the loop serves TLS at all (set once, when it is built).
    pub(crate) serving: AtomicBool,
    /// The configuration the loop's next handshakes are to use, taken at its next turn.
    pub(crate) next: Mutex<Option<Arc<rustls::ServerConfig>>>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            waker: OnceLock::new(),
            inbox: Mutex::new(Commands::default()),
            live: RwLock::new(Vec::new()),
            metrics: Metrics::default(),
            shutdown: Mutex::new(None),
            #[cfg(feature = "tls")]
            tls: TlsSwap::default(),
        }
    }
    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w();
        }
    }
    pub(crate) fn push(&self, f: impl FnOnce(&mut Commands)) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = inbox.cmds.is_empty();
        f(&mut inbox);
        drop(inbox);
        if was_empty {
            self.wake();
        }
    }
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }
    pub(crate) fn is_live(&self, id: ConnId) -> bool {
        let (key, gen) = split_id(id.0);
        self.live.read().unwrap_or_else(|p| p.into_inner()).get(key).is_some_and(|g| *g == gen)
    }
    pub(crate) fn set_live(&self, key: usize, gen: u32) {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.len() <= key {
            live.resize(key + 1, 0);
        }
        live[key] = gen;
    }
}

impl Inbox for Shared {
    fn decide(&self, to: ConnId, status: u16, bytes: &[u8]) {
        self.push(|q| q.decide(to, status, bytes));
    }
}

/// A cloneable, `Send + Sync` handle to a running server: send, publish, broadcast, close and stop from any
/// thread. Each call queues a command and wakes the loop (one `eventfd` write per batch under the mio shell); the loop carries it
/// out at its next turn, in order.
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Sends a message to a connection; [`SendError::NotOpen`] if it is not open now (it may still close before
    /// the loop gets to the message, which is then dropped).
    pub fn send(&self, to: ConnId, msg: Message<'_>) -> Result<(), SendError> {
        if !self.shared.is_live(to) {
            return Err(SendError::NotOpen);
        }
        self.shared.push(|q| q.message(to, msg.is_text(), msg.as_bytes()));
        Ok(())
    }
    /// Publishes a message to a topic's subscribers (see [`Ctx::publish`](crate::Ctx::publish)).
    pub fn publish(&self, topic: &str, msg: Message<'_>) {
        self.shared.push(|q| q.publish(topic, msg.is_text(), None, Origin::Local, msg.as_bytes()));
    }
    /// Sends a message to every open connection.
    pub fn broadcast(&self, msg: Message<'_>) {
        self.shared.push(|q| q.broadcast(msg.is_text(), None, msg.as_bytes()));
    }
    /// Starts the closing handshake on a connection; [`SendError::NotOpen`] if it is not open now.
    pub fn close(&self, to: ConnId, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code.0));
        }
        if !self.shared.is_live(to) {
            return Err(SendError::NotOpen);
        }
        self.shared.push(|q| q.close(to, code, reason));
        Ok(())
    }
    /// Accepts an upgrade `on_open` deferred (see [`Deferred::accept`](crate::handler::Deferred::accept), which
    /// is the same; this form takes the id). An id that is not a deferred upgrade of this loop is ignored.
    pub fn accept(&self, id: ConnId, protocol: Option<&str>) {
        self.shared.decide(id, 0, protocol.unwrap_or("").as_bytes());
    }
    /// Refuses an upgrade `on_open` deferred with this HTTP status (400–599; others become 500) and body.
    pub fn reject(&self, id: ConnId, status: u16, body: &str) {
        self.shared.decide(id, refusal_status(status), body.as_bytes());
    }
    /// Whether the connection is open now.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.shared.is_live(id)
    }
    /// Asks the loop to return from [`Server::run`](crate::Server::run) at its next turn.
    pub fn stop(&self) {
        self.shared.request_stop();
    }
    /// The loop's counters and gauges.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
    /// Asks [`Server::run`](crate::Server::run) for a graceful shutdown ([`Server::shutdown`](crate::Server::shutdown)) with this grace period; `run`
    /// returns its report.
    pub fn shutdown(&self, grace: Duration) {
        *self.shared.shutdown.lock().unwrap_or_else(|p| p.into_inner()) = Some(grace);
        self.shared.wake();
    }

    /// Reads the TLS files again (`ssl_cert`, `ssl_passphrase`, `ssl_sni`, as configured) and has new handshakes
    /// use them from the loop's next turn; open connections go on with what they negotiated. A file that does
    /// not load is refused with its error ([`TlsConfigError`] names the file and the fault) and the configuration
    /// in use is kept. For a certificate renewed in place (certbot, a Kubernetes secret); the examples call it on
    /// `SIGHUP`.
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self) -> Result<(), TlsConfigError> {
        self.set_tls_config(self.rebuilt_tls()?)
    }

    /// Has new handshakes use `tls` from the loop's next turn (for a configuration the caller builds, as with
    /// [`Server::bind_tls`](crate::Server::bind_tls)); open connections go on with what they negotiated.
    #[cfg(feature = "tls")]
    pub fn set_tls_config(&self, tls: Arc<rustls::ServerConfig>) -> Result<(), TlsConfigError> {
        if !self.shared.tls.serving.load(Ordering::SeqCst) {
            return Err(TlsConfigError::NotTls);
        }
        *self.shared.tls.next.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls);
        self.shared.wake();
        Ok(())
    }

    /// The loop's TLS configuration built again from its files.
    #[cfg(feature = "tls")]
    pub(crate) fn rebuilt_tls(&self) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        if !self.shared.tls.serving.load(Ordering::SeqCst) {
            return Err(TlsConfigError::NotTls);
        }
        let source = self.shared.tls.source.get().ok_or(TlsConfigError::NotReloadable)?;
        crate::tls_config::server_config(source)?.ok_or(TlsConfigError::NotReloadable)
    }
}

/// Stops a running server from any thread.
#[derive(Clone)]
pub struct StopHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").finish_non_exhaustive()
    }
}

impl StopHandle {
    /// Asks the loop to return from [`Server::run`](crate::Server::run) at its next turn.
    pub fn stop(&self) {
        self.shared.request_stop();
    }
}
