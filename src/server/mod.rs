//! The mio shell: one `Poll`, one thread, a slab of connections.
//!
//! It accepts, reads, feeds the sans-I/O [`Connection`], calls the [`Handler`], applies the commands the handler
//! queued, writes, and keeps one timer heap for every deadline the connections ask for. It is the only module that
//! touches sockets, the clock or the handler.
//!
//! * **Tokens carry a generation**: `token = generation << 32 | slot`. An event for a connection that was closed
//!   and whose slot was reused in the same batch does not match the new slot's generation and is dropped.
//! * **Reads**: one shared read buffer; the bytes are unmasked in place and whole messages reach the handler
//!   straight from it. A short read ends the read burst (epoll is edge-triggered and new data raises a new edge),
//!   which saves the `recv` that would only return `EAGAIN`.
//! * **Writes**: every connection touched in a turn is flushed once at the end of the turn, with one `send` for
//!   everything queued; write interest is asked for only while bytes are left over.
//! * **Back-pressure**: a connection with more than `write_high_water` bytes queued is not read from until they
//!   drain, so TCP pushes back on a client that sends without reading.
//! * **Closing**: when a connection is finished its write side is shut down (FIN — the server closes TCP first,
//!   RFC 6455 §7.1.1), then input is discarded until the peer's FIN or the close timeout, so a refusal or a close
//!   frame is never destroyed by a reset.

use crate::config::Config;
use crate::conn::{CloseStatus, Connection, Event, Message, TimeoutKind, SPARE_MIN};
use crate::deflate::DeflatePool;
use crate::error::ConfigError;
use crate::error::HandshakeError;
use crate::frame::Status;
use crate::group::Group;
use crate::handle::{conn_id, split_id, Shared};
pub use crate::handle::{ServerHandle, StopHandle};
use crate::handler::{Cmd, Commands, ConnId, Ctx, Handler, Origin};
use crate::metrics::{Metrics, Refusal as Why};
use crate::prepared::PreparedMessage;
use crate::proxy::ProxyReader;
use crate::CloseCode;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

mod commands;
mod read;
mod slot;
mod turn;

use slot::*;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// Plaintext encrypted ahead of the socket at most (wss), so control frames are not queued behind megabytes of
/// ciphertext.
#[cfg(feature = "tls")]
const TLS_BATCH: usize = 256 * 1024;
/// The work one connection may cause in one burst before the others get theirs: bytes read, message bytes
/// delivered when compression is in force (after inflation: 1 KiB of compressed zeros is 1 MiB of message), and
/// message bytes its handler queued for peers meanwhile (a publish counts once per subscriber; an uncompressed
/// echo costs what its read did, and is not counted twice). A connection past it stops between two events; what
/// it sent and was not yet processed waits in a stash, and it goes to the back of the backlog.
const QUANTUM: usize = 1 << 20;
/// The work the backlog (connections cut at their quantum) may take in one turn, after every connection with a
/// fresh event was served: a turn is never longer than this plus one quantum per fresh event, so a light client
/// waits at most about that for its turn, however many heavy ones there are.
const BACKLOG_PER_TURN: usize = 4 << 20;
/// The work fresh events may take in one turn before the rest are only probed ([`Server::probe`]): when hundreds
/// of heavy clients send at once, the light ones among them are still answered in this turn.
const FRESH_PER_TURN: usize = 2 << 20;
/// Work counted per byte inflated, or compressed for an echo: (de)compressing a byte costs several times what
/// reading, unmasking or writing it does (zlib-rs at level 1 on the bench's workloads: a few hundred MB/s,
/// against GB/s for copies).
const DEFLATE_WEIGHT: usize = 4;
/// What a probe reads: what an ordinary client sends at once fits (a 16 KiB message of 200 clients in step) and
/// leaves the socket drained; uncompressed, its cost is that of the bytes themselves.
const PROBE: usize = 64 * 1024;
/// Bytes the end of a turn writes at most for connections touched by others (a publish to a thousand
/// subscribers can mean a gigabyte for the kernel to take): the rest is written at the next turns, after fresh
/// events and whoever they touch.
const TURN_WRITES: usize = 4 << 20;
/// The shared read buffer: large enough that a burst of 16 KiB messages is read in one `recv`.
const READ_BUF: usize = 128 * 1024;
/// A stashed rest of input up to this long is copied out of its read buffer ([`Server::stash_rest`]).
const STASH_COPY: usize = 16 * 1024;
/// Echoes of messages assembled from several reads or frames are written straight from their buffer (rather than
/// copied into the queue) from this length on: below it, a copy costs less than a vectored send (measured).
const DIRECT_MIN: usize = 16 * 1024;
/// Large buffers a loop keeps for reuse, so a stream of large messages does not fault in fresh pages for every
/// one: at most this many bytes in all, none larger than [`POOL_BUF_MAX`]. Sized for every connection of a busy
/// loop assembling one and sending one at once (10 connections of 1 MiB messages need about 20; with 4 kept, 6 of
/// them paid 256 page faults per message, and the loop ran at half speed whenever its connections fell in step).
const POOL_BYTES: usize = 64 << 20;
const POOL_BUF_MAX: usize = 4 << 20;
/// Buffers the pool held unused for a whole interval this long are freed: memory returns after a burst.
const POOL_TRIM: Duration = Duration::from_secs(1);

/// The loop's pool of large buffers (see [`POOL_BYTES`]).
#[derive(Debug, Default)]
struct BufPool {
    bufs: Vec<Vec<u8>>,
    /// Sum of the pooled buffers' capacities.
    bytes: usize,
    /// The fewest buffers the pool held since the last trim: that many went unused all along.
    low: usize,
    /// When the next trim is due, while the pool holds anything.
    next_trim: Option<Instant>,
}

/// Where a message handed to `on_message` lies.
#[derive(Debug, Clone, Copy)]
enum EchoSrc {
    /// `rbuf[start..end]`, or `pbuf[start..end]` (wss plaintext) when `plain`; `last`: nothing follows it in
    /// this read.
    Input { plain: bool, start: usize, end: usize, last: bool },
    /// In the connection: the message it assembled and lent out ([`Connection::send_delivered`]); `last` as
    /// above.
    Lent { last: bool },
}

/// Input a connection sent that waits for its next burst ([`Server::stash`]): `buf[start..end]`, in the read
/// buffer it was read into (taken whole: nothing is copied), or the plaintext buffer when `plain`.
#[derive(Debug)]
struct Stash {
    plain: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Connections the kernel completes ahead of `accept` (capped by `net.core.somaxconn`, 4096 on current Linux).
/// The standard library's 128 overflows when a few hundred clients connect at once, and each connection
/// dropped there waits for its SYN to be sent again: 1 s, then 3 s, then 7 s.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking TCP listener on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue; with `reuse_port`, one of
/// several sharing the port (`SO_REUSEPORT`: one per loop of a [`crate::Cluster`]).
pub(crate) fn listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))))]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin")))))]
    let _ = reuse_port;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How long to wait before accepting again after `accept` failed (descriptor exhaustion).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

struct Slot {
    sock: TcpStream,
    conn: Connection,
    peer: SocketAddr,
    gen: u32,
    interest: Interest,
    /// `on_open` accepted this connection: `on_close` is owed.
    opened: bool,
    /// A readable edge came and the socket may still hold bytes (reading paused by back-pressure).
    read_ready: bool,
    /// In the dirty list for this turn.
    dirty: bool,
    /// The last write stopped short (the socket is full): no write is tried again before it is writable, so a
    /// publish to a thousand subscribers that do not read costs no thousand failing sends.
    blocked: bool,
    /// The kernel send buffer's size, read when the socket was last found full (it is full then, so this is
    /// what the kernel holds for it: counted in the memory budget).
    sndbuf: u32,
    /// The earliest deadline this slot has in the timer heap.
    scheduled: Option<Instant>,
    /// Our FIN is sent; input is discarded until the peer's FIN or this deadline.
    draining: Option<Instant>,
    /// Negotiated permessage-deflate (counts against `deflate.max_contexts`).
    deflate: bool,
    /// TLS under the WebSocket (wss).
    #[cfg(feature = "tls")]
    tls: Option<Box<crate::tls::TlsLayer>>,
    /// The handler paused reading ([`Ctx::pause_reading`]).
    paused: bool,
    /// The send queue passed the high-water mark: `on_drain` is owed when it falls under the low-water mark.
    over_high: bool,
    /// Queued bytes last counted in the `queued_bytes` gauge.
    queued: u32,
    /// Bytes last counted for it in the loop's memory total ([`Server::held`]).
    held: u32,
    /// Not read from while the loop is under memory pressure (it holds much); read again when it ends.
    pressed: bool,
    /// Topics this connection is subscribed to.
    topics: Vec<Box<str>>,
    /// In the backlog ([`Server::backlog`]): it is read there, at its place, not when an event comes.
    deferred: bool,
    /// The peer's FIN has been announced (EPOLLRDHUP): read until EOF instead of stopping at a short read.
    read_closed: bool,
    /// `proxy_protocol`: this accepted connection's PROXY header has not arrived whole yet (a part that came in
    /// an earlier read waits in `Server::proxy_partial`; a flag here rather than a reader keeps the slot of an
    /// idle connection from growing).
    awaiting_proxy: bool,
}

/// An entry of the timer heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The connection's earliest deadline (handshake, message, keepalive, idle, lifetime, close, linger, drain).
    Conn { key: usize, gen: u32 },
    /// A handler timer.
    Handler { seq: u64, conn: u64, token: u64 },
}

/// What [`Server::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections whose closing handshake completed.
    pub closed_cleanly: usize,
    /// Connections that ended otherwise before the deadline (the peer dropped TCP, or the close timed out).
    pub closed_otherwise: usize,
    /// Connections still there at the deadline, dropped.
    pub dropped_at_deadline: usize,
    /// Bytes still queued for peers when they were dropped.
    pub bytes_unsent: usize,
}

/// A WebSocket server on one thread.
pub struct Server {
    poll: Poll,
    events: Events,
    ready: Vec<(usize, bool, bool, bool)>,
    listener: TcpListener,
    local: SocketAddr,
    config: Arc<Config>,
    handler: Box<dyn Handler>,
    slots: Slab<Slot>,
    next_gen: u32,
    queue: Commands,
    pool: DeflatePool,
    /// Connections holding a permessage-deflate context.
    contexts: usize,
    rbuf: Vec<u8>,
    /// Plaintext decrypted from `rbuf` (wss), fed to the connection from here.
    pbuf: Vec<u8>,
    /// Large empty buffers lent to connections for their next large message and taken back after it
    /// (`Connection::lend_buffer`): at most [`POOL_BYTES`] in all, trimmed when unused.
    bufs: BufPool,
    /// Where the message being handled by `on_message` lies, for [`Cmd::Echo`]: valid until the connection's
    /// next read, and cleared once its commands are applied.
    echo_src: Option<EchoSrc>,
    #[cfg(feature = "tls")]
    tls_config: Option<Arc<rustls::ServerConfig>>,
    /// Every deadline, connection and handler timers alike, in one heap (stale entries are skipped when popped).
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Connections touched this turn, served from the top (most recent first).
    dirty: Vec<usize>,
    /// What a turn's write budget left unserved, in its order: served before anything touched later, so a
    /// connection touched early (the first subscriber of a busy topic) is not kept under newer touches.
    carried: Vec<usize>,
    shared: Arc<Shared>,
    accept_paused: Option<Instant>,
    /// Open WebSocket connections, and per IP when that is limited.
    open: usize,
    per_ip: HashMap<IpAddr, u32>,
    /// PROXY headers split across reads, by slot (`proxy_protocol`): each at most `16 + MAX_V2_LEN` bytes, held
    /// until the rest arrives or the handshake deadline ends the connection.
    proxy_partial: HashMap<usize, ProxyReader>,
    /// Subscribers of each topic.
    topics: HashMap<Box<str>, Vec<ConnId>>,
    /// The live sequence number and period of each handler timer, by (connection, token).
    timer_live: HashMap<(u64, u64), (u64, Option<Duration>)>,
    timer_seq: u64,
    /// Shutdown under way: counts how connections end.
    shutdown: Option<ShutdownReport>,
    /// (generation, queued bytes) of each open connection by slot, for the send statuses handlers get.
    table: Vec<(u32, usize)>,
    /// Connections to read at a later turn, in turn (slot, generation, debt): cut at their [`QUANTUM`], or let
    /// read again (back-pressure released, reading resumed), which waits for the next turn so that a loop turn
    /// always ends. `debt` is the work past its quantum the last burst caused: it is worked off a quantum per
    /// visit before the connection reads again, so heavy connections share the backlog by work, not by visits.
    backlog: VecDeque<(usize, u32, usize)>,
    /// Work charged to the connection being read ([`QUANTUM`]).
    work: usize,
    /// Input a connection sent and was not processed yet, because its burst reached its quantum (by slot): the
    /// buffer it was read into (the read buffer, or the plaintext buffer under TLS) and the range left.
    stash: HashMap<usize, Stash>,
    /// A read buffer to replace one taken into a stash.
    spare_rbuf: Vec<u8>,
    /// Bytes of the prepared messages' shared frames that queues still hold (each counted once, however many
    /// queues hold it).
    shared_bytes: Arc<AtomicUsize>,
    /// What the slots hold, as last counted ([`Slot::held`]): with the shared frames and the stashes, the loop's
    /// part of the memory budget.
    held: usize,
    /// The loop's total last added to its group's (a [`crate::Cluster`] shares one budget).
    held_published: usize,
    /// Past three quarters of the budget: connections holding much are not read ([`Slot::pressed`]).
    pressure: bool,
    /// The connections not read for it.
    pressed: Vec<(usize, u32)>,
    /// [`Config::queue_limit`], computed once.
    queue_limit: usize,
    /// This loop's index among its siblings (in the top 8 bits of every generation, so ids are global).
    loop_index: u32,
    /// The sibling loops and the broker bridge, when this loop is one of a [`crate::Cluster`].
    group: Option<Arc<Group>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local", &self.local).field("connections", &self.slots.len()).finish()
    }
}

/// The server's own `Poll` is pollable: register the server in the caller's `Poll` and call
/// [`Server::handle_ready`] when its token is ready (its epoll descriptor becomes readable when any of its
/// sockets is ready).
#[cfg(unix)]
impl mio::event::Source for Server {
    fn register(&mut self, registry: &mio::Registry, token: Token, interests: Interest) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.poll.as_raw_fd()).register(registry, token, interests)
    }
    fn reregister(&mut self, registry: &mio::Registry, token: Token, interests: Interest) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.poll.as_raw_fd()).reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.poll.as_raw_fd()).deregister(registry)
    }
}

fn config_error(e: ConfigError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl Server {
    /// Binds a listener and prepares the loop. The config is validated here; a bad one is an
    /// `InvalidInput` error whose message names the key.
    pub fn bind(addr: impl ToSocketAddrs, config: Config, handler: impl Handler + 'static) -> io::Result<Server> {
        Self::bind_boxed(addr, config, Box::new(handler))
    }

    /// [`Server::bind`] with a boxed handler.
    pub fn bind_boxed(addr: impl ToSocketAddrs, config: Config, handler: Box<dyn Handler>) -> io::Result<Server> {
        config.validate().map_err(config_error)?;
        #[cfg(feature = "tls")]
        let tls =
            crate::tls_config::server_config(&config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        #[cfg(not(feature = "tls"))]
        let tls = ();
        Self::bind_inner(addr, config, tls, handler)
    }

    /// Serves wss with a rustls configuration the caller built (instead of `ssl_cert` and friends).
    #[cfg(feature = "tls")]
    pub fn bind_tls(
        addr: impl ToSocketAddrs,
        config: Config,
        tls: Arc<rustls::ServerConfig>,
        handler: impl Handler + 'static,
    ) -> io::Result<Server> {
        config.validate().map_err(config_error)?;
        Self::bind_inner(addr, config, Some(tls), Box::new(handler))
    }

    /// A loop of a [`crate::Cluster`]: its listener (bound with `SO_REUSEPORT`), index and group.
    pub(crate) fn for_cluster(
        listener: std::net::TcpListener,
        config: Config,
        #[cfg(feature = "tls")] tls: Option<Arc<rustls::ServerConfig>>,
        handler: Box<dyn Handler>,
        index: u32,
        group: Arc<Group>,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener);
        #[cfg(feature = "tls")]
        let mut server = Self::with_listener(listener, config, tls, handler)?;
        #[cfg(not(feature = "tls"))]
        let mut server = Self::with_listener(listener, config, (), handler)?;
        server.loop_index = index;
        server.group = Some(group);
        Ok(server)
    }

    fn bind_inner(
        addr: impl ToSocketAddrs,
        config: Config,
        #[cfg(feature = "tls")] tls: Option<Arc<rustls::ServerConfig>>,
        #[cfg(not(feature = "tls"))] _tls: (),
        handler: Box<dyn Handler>,
    ) -> io::Result<Server> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        let listener = TcpListener::from_std(listener(addr, false)?);
        Self::with_listener(
            listener,
            config,
            #[cfg(feature = "tls")]
            tls,
            #[cfg(not(feature = "tls"))]
            _tls,
            handler,
        )
    }

    fn with_listener(
        mut listener: TcpListener,
        config: Config,
        #[cfg(feature = "tls")] tls: Option<Arc<rustls::ServerConfig>>,
        #[cfg(not(feature = "tls"))] _tls: (),
        handler: Box<dyn Handler>,
    ) -> io::Result<Server> {
        let local = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let queue_limit = config.queue_limit();
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            listener,
            local,
            config: Arc::new(config),
            handler,
            slots: Slab::new(),
            next_gen: 0,
            queue: Commands::default(),
            pool: DeflatePool::new(),
            contexts: 0,
            rbuf: vec![0; READ_BUF],
            pbuf: Vec::new(),
            bufs: BufPool::default(),
            echo_src: None,
            #[cfg(feature = "tls")]
            tls_config: tls,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            carried: Vec::new(),
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                waker,
                inbox: Mutex::new(Commands::default()),
                live: RwLock::new(Vec::new()),
                metrics: Metrics::default(),
                shutdown: Mutex::new(None),
            }),
            accept_paused: None,
            open: 0,
            per_ip: HashMap::new(),
            proxy_partial: HashMap::new(),
            topics: HashMap::new(),
            timer_live: HashMap::new(),
            timer_seq: 0,
            shutdown: None,
            table: Vec::new(),
            backlog: VecDeque::new(),
            work: 0,
            stash: HashMap::new(),
            spare_rbuf: Vec::new(),
            shared_bytes: Arc::default(),
            held: 0,
            held_published: 0,
            pressure: false,
            pressed: Vec::new(),
            queue_limit,
            loop_index: 0,
            group: None,
        })
    }

    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { shared: self.shared.clone() }
    }

    /// A handle to send, publish, close and stop from other threads.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { shared: self.shared.clone() }
    }

    /// The loop's counters and gauges.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Sockets currently held (handshaking, open, closing or draining).
    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// Whether a stop was asked (by a [`StopHandle`] or a handler).
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Serves until stopped ([`StopHandle::stop`], [`Ctx::stop_server`]) or shut down
    /// ([`ServerHandle::shutdown`], whose report it returns).
    pub fn run(&mut self) -> io::Result<Option<ShutdownReport>> {
        while !self.is_stopped() {
            self.poll_once(None)?;
            let asked = self.shared.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(grace) = asked {
                return self.shutdown(grace).map(Some);
            }
        }
        Ok(None)
    }

    /// One turn of the loop: waits for readiness (at most `max_wait`, and never past the earliest deadline), then
    /// handles what came. For callers that drive the loop themselves.
    /// Returns how many readiness events it handled.
    pub fn poll_once(&mut self, max_wait: Option<Duration>) -> io::Result<usize> {
        let mut timeout = self.next_timeout();
        if let Some(m) = max_wait {
            timeout = Some(timeout.map_or(m, |t| t.min(m)));
        }
        if !self.backlog.is_empty() || !self.dirty.is_empty() || !self.carried.is_empty() {
            timeout = Some(Duration::ZERO);
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let handled = self.handle_events(now);
        Metrics::turn_since(&self.shared.metrics, now);
        Ok(handled)
    }

    /// For a server embedded in the caller's `Poll`: handles everything that is ready or due now, without
    /// waiting. Call it when the server's token is ready and when [`Server::next_timeout`] has passed.
    pub fn handle_ready(&mut self) -> io::Result<()> {
        while self.poll_once(Some(Duration::ZERO))? >= self.events.capacity() {}
        Ok(())
    }

    /// Graceful shutdown: stops accepting, sends close 1001 to every open connection, drops those still in the
    /// opening handshake, and serves until every closing handshake is done or `grace` has passed; what is left
    /// is then dropped (its `on_close` still runs). [`Server::run`] returns afterwards.
    pub fn shutdown(&mut self, grace: Duration) -> io::Result<ShutdownReport> {
        let _ = self.poll.registry().deregister(&mut self.listener);
        self.accept_paused = None;
        let now = Instant::now();
        self.shutdown = Some(ShutdownReport::default());
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for &key in &keys {
            let slot = &mut self.slots[key];
            if slot.conn.is_open() {
                let _ = slot.conn.close(CloseCode::GOING_AWAY, "server shutting down", now);
            } else if !slot.opened && slot.draining.is_none() {
                slot.conn.abort(now);
            }
            self.mark_dirty(key);
        }
        self.finish_turn(now);
        let deadline = now + grace;
        while self.slots.iter().any(|(_, s)| s.draining.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.poll_once(Some(left))?;
        }
        let mut report = self.shutdown.take().unwrap_or_default();
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            let slot = &self.slots[key];
            if slot.draining.is_none() {
                report.bytes_unsent += slot.queued();
                report.dropped_at_deadline += usize::from(slot.opened);
            }
            self.notify_close(key);
            self.remove(key);
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        Ok(report)
    }

    /// How long the loop may sleep before a deadline is due (`None`: no deadline). A caller that embeds the
    /// server in its own `Poll` ([`Server`] is a mio `Source` on Unix) bounds its wait with this.
    pub fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut wake_at = self.timers.peek().map(|Reverse((t, _))| *t);
        for t in [self.accept_paused, self.bufs.next_trim].into_iter().flatten() {
            wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
        }
        wake_at.map(|t| t.saturating_duration_since(now))
    }

    fn handle_events(&mut self, now: Instant) -> usize {
        self.ready.clear();
        for ev in self.events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let closed = ev.is_read_closed() || ev.is_error();
            self.ready.push((ev.token().0, readable, ev.is_writable() || ev.is_write_closed(), closed));
        }
        let mut fresh_work = 0;
        for i in 0..self.ready.len() {
            let (token, readable, writable, closed) = self.ready[i];
            match Token(token) {
                LISTENER => self.accept(now),
                WAKER => self.take_inbox(now),
                _ => {
                    let (key, gen) = split_id(token as u64);
                    if !self.slots.get(key).is_some_and(|s| s.gen == gen) {
                        continue; // a stale event for a slot that was reused
                    }
                    if readable {
                        let slot = &mut self.slots[key];
                        slot.read_ready = true;
                        // The peer's FIN came with this edge: read through to it even after a short read, since
                        // no further edge will announce it.
                        slot.read_closed |= closed;
                        if slot.deferred {
                            // Read at its place in the backlog.
                        } else if fresh_work < FRESH_PER_TURN {
                            self.do_read(key, now);
                            fresh_work += self.work;
                        } else {
                            self.probe(key, now);
                        }
                    }
                    if writable {
                        // (The read may have ended the connection.)
                        if let Some(slot) = self.slots.get_mut(key) {
                            slot.blocked = false;
                        }
                        self.mark_dirty(key);
                    }
                }
            }
        }
        // Every fresh event was served first; now the backlog, for a bounded amount of work.
        if !self.backlog.is_empty() {
            self.serve_backlog(now);
        }
        if self.accept_paused.is_some_and(|t| now >= t) {
            self.accept_paused = None;
            self.accept(now);
        }
        self.fire_timers(now);
        self.finish_turn(now);
        self.bufs.trim(now);
        self.ready.len()
    }

    /// Carries out the commands queued by [`ServerHandle`]s.
    fn take_inbox(&mut self, now: Instant) {
        {
            let mut inbox = self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if inbox.cmds.is_empty() {
                return;
            }
            std::mem::swap(&mut *inbox, &mut self.queue);
        }
        self.apply_commands(now);
    }

    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => {
                    if let Ok(key) = self.insert(sock, peer, now) {
                        self.slots[key].awaiting_proxy = self.config.proxy_protocol;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically EMFILE: pause accepting briefly instead of spinning on a listener that stays ready.
                    log::warn!(target: "wskit::server", "accept: {e}; retrying in {ACCEPT_BACKOFF:?}");
                    self.accept_paused = Some(now + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
    }

    /// Takes a new socket into the loop: registers it and gives it a connection (and TLS, for wss).
    fn insert(&mut self, mut sock: TcpStream, peer: SocketAddr, now: Instant) -> io::Result<usize> {
        let _ = sock.set_nodelay(true);
        if self.config.socket_send_buffer > 0 {
            let _ = socket2::SockRef::from(&sock).set_send_buffer_size(self.config.socket_send_buffer);
        }
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        // A 24-bit counter under the loop index; 0 is never used (the live table marks an empty slot with it).
        self.next_gen = (self.next_gen.wrapping_add(1) & 0x00ff_ffff).max(1);
        let gen = self.loop_index << 24 | self.next_gen;
        #[cfg(feature = "tls")]
        let tls = match &self.tls_config {
            Some(c) => match crate::tls::TlsLayer::new(c.clone()) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    log::warn!(target: "wskit::server", "TLS for {peer}: {e}");
                    return Err(io::Error::other(e));
                }
            },
            None => None,
        };
        if let Err(e) = self.poll.registry().register(&mut sock, token_of(key, gen), Interest::READABLE) {
            log::warn!(target: "wskit::server", "register {peer}: {e}");
            return Err(e);
        }
        entry.insert(Slot {
            sock,
            conn: Connection::new(self.config.clone(), now),
            peer,
            gen,
            interest: Interest::READABLE,
            opened: false,
            read_ready: false,
            dirty: false,
            blocked: false,
            sndbuf: 0,
            scheduled: None,
            draining: None,
            deflate: false,
            #[cfg(feature = "tls")]
            tls,
            paused: false,
            over_high: false,
            queued: 0,
            held: 0,
            pressed: false,
            topics: Vec::new(),
            deferred: false,
            read_closed: false,
            awaiting_proxy: false,
        });
        let m = &self.shared.metrics;
        Metrics::add(&m.accepted, 1);
        Metrics::add(&m.sockets, 1);
        self.schedule(key);
        Ok(key)
    }

    /// Serves a TCP connection accepted elsewhere (by another server on another port, say). `already_read` is
    /// what was read from it so far, fed first: the whole request head when another HTTP server parsed it and
    /// hands the upgrade over, or nothing. Returns the connection's id.
    pub fn adopt(&mut self, sock: std::net::TcpStream, already_read: &[u8]) -> io::Result<ConnId> {
        sock.set_nonblocking(true)?;
        let peer = sock.peer_addr()?;
        let now = Instant::now();
        let key = self.insert(TcpStream::from_std(sock), peer, now)?;
        let id = conn_id(key, self.slots[key].gen);
        for chunk in already_read.chunks(READ_BUF) {
            self.rbuf[..chunk.len()].copy_from_slice(chunk);
            if self.slots.contains(key) {
                if self.slots[key].is_tls() {
                    self.feed_tls(key, chunk.len(), now);
                } else {
                    self.feed(key, false, 0, chunk.len(), now);
                }
            }
        }
        // Whatever else the socket holds is read now (its readiness edge may have passed before registration).
        if let Some(slot) = self.slots.get_mut(key) {
            slot.read_ready = true;
        }
        self.mark_dirty(key);
        self.finish_turn(now);
        Ok(id)
    }

    /// [`Server::adopt`] for a socket whose request head another HTTP server already parsed: the request
    /// target (`/chat?room=1`) and its headers are enough (a GET over HTTP/1.1 is assumed); nothing after the
    /// head may have been read from the socket.
    pub fn adopt_parsed(
        &mut self,
        sock: std::net::TcpStream,
        target: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<ConnId> {
        let mut head = format!("GET {target} HTTP/1.1\r\n");
        for (k, v) in headers {
            if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "header with a line break or colon"));
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.adopt(sock, head.as_bytes())
    }

    /// Puts a connection on top of the dirty list (again, if it is there already: the list is served from the top,
    /// so a connection touched now goes before those left from a fan-out that outlasted a turn's writes; the
    /// entry further down is skipped).
    fn mark_dirty(&mut self, key: usize) {
        if let Some(s) = self.slots.get_mut(key) {
            touch(&mut self.dirty, key, s);
        }
    }
}
