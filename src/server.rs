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

impl BufPool {
    fn pop(&mut self) -> Option<Vec<u8>> {
        let b = self.bufs.pop()?;
        self.bytes -= b.capacity();
        self.low = self.low.min(self.bufs.len());
        Some(b)
    }

    fn push(&mut self, b: Vec<u8>) {
        if b.capacity() <= POOL_BUF_MAX && self.bytes + b.capacity() <= POOL_BYTES {
            self.bytes += b.capacity();
            self.bufs.push(b);
        }
    }

    /// Frees the buffers that went unused for a whole interval (the oldest ones: the pool is a stack).
    fn trim(&mut self, now: Instant) {
        match self.next_trim {
            _ if self.bufs.is_empty() => self.next_trim = None,
            None => {
                self.low = self.bufs.len();
                self.next_trim = Some(now + POOL_TRIM);
            }
            Some(t) if now >= t => {
                let idle = self.low.min(self.bufs.len());
                self.bytes -= self.bufs.drain(..idle).map(|b| b.capacity()).sum::<usize>();
                self.low = self.bufs.len();
                self.next_trim = (!self.bufs.is_empty()).then(|| now + POOL_TRIM);
            }
            Some(_) => {}
        }
    }
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

/// A queued message's bytes as a [`Message`]: text was handed over as `&str` (or validated on arrival), so it is
/// UTF-8.
fn message(text: bool, bytes: &[u8]) -> Message<'_> {
    if text {
        Message::Text(std::str::from_utf8(bytes).unwrap_or_default())
    } else {
        Message::Binary(bytes)
    }
}

/// Lends `conn` a pooled buffer, if the pool has one and the connection holds none.
fn lend(bufs: &mut BufPool, conn: &mut Connection) {
    if let Some(b) = bufs.pop() {
        if let Some(b) = conn.lend_buffer(b) {
            bufs.push(b);
        }
    }
}

/// Takes back the connection's spare buffer into the pool (or frees it, past the pool's bounds). Inlined: it runs
/// after every read burst and every flush, and usually finds nothing to take.
#[inline]
fn take_back(bufs: &mut BufPool, conn: &mut Connection) {
    if conn.holds_buffer() {
        take_back_all(bufs, conn);
    }
}

#[cold]
fn take_back_all(bufs: &mut BufPool, conn: &mut Connection) {
    while let Some(b) = conn.take_buffer() {
        bufs.push(b);
    }
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

impl Slot {
    /// The socket is full: no write until it is writable; its kernel buffer is read once, for the budget.
    fn set_blocked(&mut self) {
        if !self.blocked {
            self.blocked = true;
            let n = socket2::SockRef::from(&self.sock).send_buffer_size().unwrap_or(0);
            self.sndbuf = n.min(u32::MAX as usize) as u32;
        }
    }
    /// Ciphertext waiting for the socket.
    fn tls_pending(&self) -> usize {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return t.out().len();
        }
        0
    }
    /// Heap bytes of the TLS layer (its buffers and pending ciphertext), if any.
    fn tls_held(&self) -> usize {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return crate::tls::TLS_HELD + t.out().len();
        }
        0
    }
    /// Anything to write: WebSocket output not yet handed to TLS, or ciphertext.
    fn wants_write(&self) -> bool {
        self.conn.wants_write() || self.tls_pending() > 0
    }
    /// Read on: the connection expects input and neither layer has too much queued for the peer.
    fn wants_read(&self, high_water: usize) -> bool {
        !self.paused && self.conn.wants_read() && self.tls_pending() < high_water
    }
    /// Bytes waiting for the peer in both layers.
    fn queued(&self) -> usize {
        self.conn.queued() + self.tls_pending()
    }
    /// Over, with everything written (the TLS `close_notify` included).
    fn finished(&self) -> bool {
        self.conn.is_finished() && self.tls_pending() == 0
    }
    fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }
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

/// Acknowledges received data at once instead of after the delayed-ACK timer (Linux `TCP_QUICKACK`; it lasts
/// until the kernel's heuristics turn delayed ACKs back on, so it is set after each read that leaves the peer
/// mid-message). A peer that sends with Nagle's algorithm waits for this ACK before its next segment.
fn quickack(sock: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(sock).set_tcp_quickack(true);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = sock;
}

/// Runs one handler callback; a panic is caught and logged, and costs only the connection it ran for.
fn guarded<R>(id: ConnId, what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            let msg = p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
            log::error!(target: "wskit::server", "{id}: handler panicked in {what}: {}", msg.unwrap_or("(no message)"));
            None
        }
    }
}

/// [`Server::mark_dirty`] for a slot at hand.
#[inline]
fn touch(dirty: &mut Vec<usize>, key: usize, slot: &mut Slot) {
    if !slot.dirty {
        slot.dirty = true;
        dirty.push(key);
    } else if dirty.last() != Some(&key) {
        dirty.push(key);
    }
}

/// What `max_connections_per_ip` counts by: an IPv4 address (an IPv4-mapped IPv6 one as IPv4), or an IPv6 /64
/// network — one host is given a /64 and can use any address in it.
fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// The mio token of a slot: the same packing as its [`ConnId`].
fn token_of(key: usize, gen: u32) -> Token {
    Token(conn_id(key, gen).0 as usize)
}

/// After a flush: a connection's queued bytes (the gauge, and the handles' table) and what it holds for the
/// budget (`held`, the loop's total). A full socket holds its kernel send buffer too. Held bytes are recounted
/// unless nothing can have changed them: a connection that holds nothing and has nothing queued, in flight or
/// compressed (the steady echo) is skipped. Returns the bytes queued.
fn recount(slot: &mut Slot, key: usize, m: &Metrics, table: &mut Vec<(u32, usize)>, held: &mut usize) -> usize {
    let queued = slot.queued();
    if queued as u64 != slot.queued as u64 {
        Metrics::add(&m.queued_bytes, queued as u64);
        let was = std::mem::replace(&mut slot.queued, queued.min(u32::MAX as usize) as u32);
        Metrics::sub(&m.queued_bytes, was as u64);
        if slot.opened {
            set_table(table, key, (slot.gen, queued));
        }
    }
    if slot.held != 0 || queued != 0 || slot.blocked || slot.conn.is_mid_message() || slot.deflate || slot.is_tls() {
        let kernel = if slot.blocked { slot.sndbuf as usize } else { 0 };
        let now = (slot.conn.held() + slot.tls_held() + kernel).min(u32::MAX as usize) as u32;
        *held = *held + now as usize - slot.held as usize;
        slot.held = now;
    }
    queued
}

/// Sets a slot's entry (generation, bytes queued) in the table handlers read through `Ctx`.
fn set_table(table: &mut Vec<(u32, usize)>, key: usize, v: (u32, usize)) {
    if table.len() <= key {
        table.resize(key + 1, (0, 0));
    }
    table[key] = v;
}

/// Takes `id` off `topic`'s subscriber list (the list goes when empty).
fn unsubscribe(topics: &mut HashMap<Box<str>, Vec<ConnId>>, topic: &str, id: ConnId, group: Option<&Group>) {
    if let Some(subs) = topics.get_mut(topic) {
        if let Some(i) = subs.iter().position(|s| *s == id) {
            subs.swap_remove(i);
        }
        if subs.is_empty() {
            topics.remove(topic);
            if let Some(g) = group {
                g.interest(topic, false);
            }
        }
    }
}

/// The slot `id` names, if that connection still exists (a reused slot has another generation).
fn slot_of(slots: &mut Slab<Slot>, id: ConnId) -> Option<(usize, &mut Slot)> {
    let (key, gen) = split_id(id.0);
    slots.get_mut(key).filter(|s| s.gen == gen).map(|s| (key, s))
}

/// Writes as much of `data` as the socket takes now, stopping at a short write (the buffer is full: wait for
/// writability instead of a sure EAGAIN). Returns the bytes written, or `None` if the socket failed.
fn write_burst(sock: &mut TcpStream, data: &[u8]) -> Option<usize> {
    let mut done = 0;
    while done < data.len() {
        match sock.write(&data[done..]) {
            Ok(0) => return None,
            Ok(n) => {
                done += n;
                if done < data.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(done)
}

/// Writes `parts` in one vectored send, as far as the socket takes them now; `None` if the socket failed.
fn write_slices(sock: &mut TcpStream, parts: &[&[u8]]) -> Option<usize> {
    let mut io = [io::IoSlice::new(&[]); 16];
    for (d, p) in io.iter_mut().zip(parts) {
        *d = io::IoSlice::new(p);
    }
    loop {
        match socket2::SockRef::from(&*sock).send_vectored(&io[..parts.len()]) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Writes one frame, `head` then `payload`, as far as the socket takes it now, as two slices of one `sendmsg` (the
/// payload is not copied next to its header). Returns the bytes written: a short count means the socket is full;
/// a failure writes nothing and is left for the next flush to find.
fn write_direct(sock: &mut TcpStream, head: &[u8], payload: &[u8]) -> usize {
    let parts = [io::IoSlice::new(head), io::IoSlice::new(payload)];
    loop {
        match socket2::SockRef::from(&*sock).send_vectored(&parts) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 0,
        }
    }
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

    /// Reads from a connection until the socket is drained, reading pauses, or the burst has caused a
    /// [`QUANTUM`] of work (then it goes to the backlog). Input stashed at an earlier cut comes first.
    fn do_read(&mut self, key: usize, now: Instant) {
        self.work = 0;
        if !self.stash.is_empty() && self.stash.contains_key(&key) {
            self.feed_stash(key, now);
            if self.stash.contains_key(&key) {
                return; // cut again, and deferred
            }
        }
        loop {
            let Some(slot) = self.slots.get_mut(key) else {
                return;
            };
            if !slot.read_ready {
                return;
            }
            if self.work >= QUANTUM {
                // Fairness: the rest waits for a later turn (which does not sleep); everyone else goes first.
                self.defer(key);
                return;
            }
            if slot.draining.is_some() {
                // Discard until the peer's FIN.
                match slot.sock.read(&mut self.rbuf) {
                    Ok(0) => return self.remove(key),
                    Ok(n) => {
                        // A peer that sends a quantum after our FIN is not closing: drop it now.
                        self.work += n;
                        if self.work >= QUANTUM {
                            return self.remove(key);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        slot.read_ready = false;
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.remove(key),
                }
            }
            if !slot.wants_read(self.config.write_high_water) {
                return; // paused; `read_ready` stays set and reading resumes after a flush
            }
            if self.pressure && slot.held as usize >= self.config.memory_budget / 256 {
                // Memory pressure: what it holds stays as it is until the pressure ends (then it is read again).
                if !slot.pressed {
                    slot.pressed = true;
                    self.pressed.push((key, slot.gen));
                }
                return;
            }
            match slot.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    slot.read_ready = false;
                    return self.peer_gone(key, now);
                }
                Ok(n) => {
                    let short = n < self.rbuf.len();
                    self.work += n;
                    Metrics::add(&self.shared.metrics.bytes_in, n as u64);
                    let n = if slot.awaiting_proxy { self.strip_proxy_header(key, n, now) } else { n };
                    if n == 0 {
                        // All of it was (part of) the PROXY header.
                    } else if self.slots[key].is_tls() {
                        self.feed_tls(key, n, now);
                    } else {
                        self.feed(key, false, 0, n, now);
                        // The socket is drained and the peer is mid-message: acknowledge now (after a full read
                        // the next read follows at once, and a sender in bulk gets its ACKs anyway).
                        if let Some(slot) = self.slots.get(key).filter(|s| short && s.conn.is_mid_message()) {
                            quickack(&slot.sock);
                        }
                    }
                    if !self.stash.is_empty() && self.stash.contains_key(&key) {
                        // Cut at its quantum mid-read: deferred with the rest. (The socket's readiness is kept:
                        // after a short read it is cleared when the backlog reads it and finds it drained.)
                        self.write_through(key);
                        return;
                    }
                    if short {
                        if let Some(s) = self.slots.get_mut(key).filter(|s| !s.read_closed) {
                            s.read_ready = false;
                            self.write_through(key);
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.read_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.peer_gone(key, now),
            }
        }
    }

    /// Puts a connection at the back of the backlog (if it is not there already), with the work its burst
    /// caused past its quantum as its debt.
    fn defer(&mut self, key: usize) {
        if self.work >= QUANTUM {
            Metrics::add(&self.shared.metrics.bursts_cut, 1);
        }
        let debt = self.work.saturating_sub(QUANTUM);
        if let Some(slot) = self.slots.get_mut(key).filter(|s| !s.deferred) {
            slot.deferred = true;
            self.backlog.push_back((key, slot.gen, debt));
        }
    }

    /// A fresh event in a turn that has done its share of work already: the connection is read a little. What is
    /// plainly cheap (the socket drained within [`PROBE`] bytes, and no compressed frame at the start) is handled
    /// now; anything else is stashed and the connection goes to the backlog, so that a light client is not kept
    /// waiting behind hundreds of heavy ones that became ready at the same moment.
    fn probe(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.draining.is_some()
            || slot.awaiting_proxy
            || slot.is_tls()
            || !slot.wants_read(self.config.write_high_water)
        {
            return self.defer(key);
        }
        self.work = 0;
        let n = match slot.sock.read(&mut self.rbuf[..PROBE]) {
            Ok(0) => return self.peer_gone(key, now),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                slot.read_ready = false;
                return;
            }
            Err(_) => return self.defer(key),
        };
        Metrics::add(&self.shared.metrics.bytes_in, n as u64);
        let compressed = slot.conn.deflate_params().is_some() && self.rbuf[0] & 0x40 != 0;
        if n < PROBE && !compressed && !slot.read_closed {
            slot.read_ready = false;
            self.feed(key, false, 0, n, now);
            self.write_through(key);
        } else {
            self.stash.insert(key, Stash { plain: false, buf: self.rbuf[..n].to_vec(), start: 0, end: n });
            self.defer(key);
        }
    }

    /// Serves the backlog in order, each connection at most once and for at most [`BACKLOG_PER_TURN`] of work
    /// in all; a connection with debt works off a quantum of it instead of reading. Those not reached keep their
    /// place for the next turn.
    fn serve_backlog(&mut self, now: Instant) {
        let mut budget = BACKLOG_PER_TURN;
        for _ in 0..self.backlog.len() {
            if budget == 0 {
                break;
            }
            let Some((key, gen, debt)) = self.backlog.pop_front() else { break };
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen && s.deferred) else { continue };
            if debt >= QUANTUM {
                self.backlog.push_back((key, gen, debt - QUANTUM));
                continue;
            }
            slot.deferred = false;
            self.do_read(key, now);
            budget = budget.saturating_sub(self.work);
        }
    }

    /// Keeps `input[off..n]` (the read buffer, or the plaintext buffer when `plain`) for the connection's next
    /// burst, and defers it. The buffer itself is taken (a spare replaces it): nothing is copied.
    fn stash_rest(&mut self, key: usize, plain: bool, off: usize, n: usize) {
        let buf = if plain {
            std::mem::take(&mut self.pbuf)
        } else {
            let fresh =
                if self.spare_rbuf.is_empty() { vec![0; READ_BUF] } else { std::mem::take(&mut self.spare_rbuf) };
            std::mem::replace(&mut self.rbuf, fresh)
        };
        self.stash.insert(key, Stash { plain, buf, start: off, end: n });
        self.defer(key);
    }

    /// Feeds a connection's stashed input (its buffer is put in place of the one it was read into for the while);
    /// it may be cut again and stashed anew.
    fn feed_stash(&mut self, key: usize, now: Instant) {
        let Some(st) = self.stash.remove(&key) else { return };
        let slot_of_buf = if st.plain { &mut self.pbuf } else { &mut self.rbuf };
        let prev = std::mem::replace(slot_of_buf, st.buf);
        self.feed(key, st.plain, st.start, st.end, now);
        let slot_of_buf = if st.plain { &mut self.pbuf } else { &mut self.rbuf };
        let used = std::mem::replace(slot_of_buf, prev);
        if !st.plain && used.len() == READ_BUF && self.spare_rbuf.is_empty() {
            self.spare_rbuf = used;
        }
    }

    /// Takes the PROXY protocol header (`Config::proxy_protocol`) off the front of `rbuf[..n]`. When it is whole,
    /// the client it names becomes the slot's peer, and the client's own bytes that followed it in this read are
    /// moved to the front of `rbuf`: returns how many (0 while the header is incomplete). A fault is answered
    /// with 400 (a TLS listener: the connection just closes, nothing HTTP can be said before TLS).
    fn strip_proxy_header(&mut self, key: usize, n: usize, now: Instant) -> usize {
        // Usually the whole header is in the first read and is parsed in place; a part is kept only across reads.
        let mut reader = self.proxy_partial.remove(&key).unwrap_or_default();
        let slot = &mut self.slots[key];
        let rest = match reader.feed(&self.rbuf[..n]) {
            Ok(Status::Partial) => {
                self.proxy_partial.insert(key, reader);
                return 0;
            }
            Ok(Status::Complete((source, used))) => {
                if let Some(source) = source {
                    slot.peer = source;
                }
                self.rbuf.copy_within(used..n, 0);
                n - used
            }
            Err(e) => {
                self.shared.metrics.handshake_failed(HandshakeError::ProxyHeader.status());
                if !self.config.prod {
                    log::debug!(target: "wskit::server", "{} refused: {e}", slot.peer);
                }
                if slot.is_tls() {
                    slot.conn.abort(now);
                } else {
                    let _ = slot.conn.refuse_before_head(HandshakeError::ProxyHeader, now);
                }
                0
            }
        };
        slot.awaiting_proxy = false;
        self.mark_dirty(key);
        rest
    }

    /// Writes what the connection just read made it queue (its answers) now, rather than after every other
    /// connection's reads of this turn: with hundreds of connections ready at once, the first one's answer no
    /// longer waits for the last one's processing (p99 round trip). Still one send per connection per turn in
    /// the usual case; closing, re-arming and the rest stay in `finish_turn`, which finds nothing left to write.
    #[inline]
    fn write_through(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.draining.is_some() || slot.blocked || slot.conn.is_finished() || !slot.conn.wants_write() {
            return;
        }
        if let Some(written) = Self::flush(slot) {
            Metrics::add(&self.shared.metrics.bytes_out, written as u64);
        }
    }

    /// Decrypts `rbuf[..n]` and feeds the plaintext on; a TLS fault ends the connection after its alert is sent.
    #[cfg(feature = "tls")]
    fn feed_tls(&mut self, key: usize, n: usize, now: Instant) {
        let Some(tls) = self.slots.get_mut(key).and_then(|s| s.tls.as_mut()) else { return };
        let mut plain = std::mem::take(&mut self.pbuf);
        plain.clear();
        let result = tls.receive(&self.rbuf[..n], &mut plain);
        let len = plain.len();
        self.pbuf = plain;
        self.mark_dirty(key);
        match result {
            Err(e) => {
                if !self.config.prod {
                    log::debug!(target: "wskit::server", "{} TLS: {e}", self.slots[key].peer);
                }
                self.slots[key].conn.abort(now);
            }
            Ok(r) => {
                if len > 0 {
                    self.feed(key, true, 0, len, now);
                }
                if let Some(slot) = self.slots.get(key).filter(|_| n < self.rbuf.len()) {
                    // The socket is drained and a TLS record is still incomplete, or the message is: acknowledge
                    // now.
                    if len == 0 || slot.conn.is_mid_message() {
                        quickack(&slot.sock);
                    }
                }
                if r.peer_closed && self.slots.contains(key) {
                    self.peer_gone(key, now);
                }
            }
        }
        if self.pbuf.capacity() > READ_BUF * 2 {
            self.pbuf = Vec::new();
        }
    }

    #[cfg(not(feature = "tls"))]
    fn feed_tls(&mut self, key: usize, n: usize, now: Instant) {
        self.feed(key, false, 0, n, now);
    }

    /// Feeds `rbuf[off..n]` (or the decrypted `pbuf[off..n]`) to the connection, dispatching each event to the
    /// handler and applying its commands. Once the burst has caused a [`QUANTUM`] of work, the rest is stashed
    /// and the connection deferred.
    fn feed(&mut self, key: usize, plain: bool, mut off: usize, n: usize, now: Instant) {
        if let Some(st) = (!self.stash.is_empty()).then(|| self.stash.get_mut(&key)).flatten() {
            // Input that came while earlier input waits (an adopted socket's bytes) goes behind it.
            let input = if plain { &self.pbuf } else { &self.rbuf };
            st.buf.truncate(st.end);
            st.buf.extend_from_slice(&input[off..n]);
            st.end = st.buf.len();
            return;
        }
        // Even bytes that complete nothing can start a deadline (a message's first fragment) or queue output.
        self.mark_dirty(key);
        if let Some(slot) = self.slots.get_mut(key) {
            lend(&mut self.bufs, &mut slot.conn);
        }
        loop {
            let Server {
                slots,
                handler,
                queue,
                rbuf,
                pbuf,
                config,
                contexts,
                open,
                per_ip,
                shared,
                table,
                echo_src,
                work,
                pressure,
                ..
            } = self;
            let input = if plain { pbuf } else { rbuf };
            // Where this read's input lies, to tell a message in it (echoed from there) from one assembled.
            let (base, from) = (input.as_ptr() as usize, off);
            let slot = &mut slots[key];
            let id = conn_id(key, slot.gen);
            let (used, ev) = slot.conn.read(&mut input[off..n], now);
            off += used;

            let Some(ev) = ev else {
                if used == 0 || off >= n {
                    break;
                }
                continue;
            };
            if !config.trusted_proxies.is_empty() {
                if let Event::Upgrade(req) | Event::Http(req) = &ev {
                    // Behind trusted proxies: the client their forwarding header names (port unknown).
                    let values = req.header_values(&config.forwarded_header);
                    if let Some(ip) = crate::policy::forwarded_client(slot.peer.ip(), &config.trusted_proxies, values) {
                        slot.peer = SocketAddr::new(ip, 0);
                    }
                }
            }
            let mut ctx = Ctx::new(id, slot.peer, queue, &shared.metrics, table, config.write_high_water);
            let mut panicked = false;
            match ev {
                Event::Upgrade(req) => {
                    let ip = per_ip_key(slot.peer.ip());
                    let m = &shared.metrics;
                    // Limits and policy first (503, 429, 403, 400), then the handler.
                    let verdict = if config.max_connections > 0 && *open >= config.max_connections {
                        Err((Why::Full, 503, "too many connections\n"))
                    } else if config.max_connections_per_ip > 0
                        && per_ip.get(&ip).is_some_and(|n| *n as usize >= config.max_connections_per_ip)
                    {
                        Err((Why::PerIp, 429, "too many connections from your address\n"))
                    } else {
                        crate::policy::admit(&req, config).map_err(|r| {
                            let why = if r.status == 403 { Why::Origin } else { Why::Subprotocol };
                            (why, r.status, r.reason)
                        })
                    };
                    let refusal = match verdict {
                        Err((why, status, body)) => Some((why, status, body.as_bytes().to_vec())),
                        Ok(chosen) => {
                            ctx.protocol = chosen.map(str::to_string);
                            if guarded(id, "on_open", || handler.on_open(&mut ctx, &req)).is_none() {
                                ctx.decision =
                                    Some(crate::handler::Refusal { status: 500, body: b"internal error\n".to_vec() });
                            }
                            ctx.decision.take().map(|r| (Why::Handler, r.status, r.body))
                        }
                    };
                    match refusal {
                        Some((why, status, body)) => {
                            m.refused(why, status);
                            let mut headers = vec![("Content-Type", "text/plain; charset=utf-8")];
                            if status == 503 || status == 429 {
                                headers.push(("Retry-After", "1"));
                            }
                            let _ = slot.conn.reject(status, &headers, &body, now);
                        }
                        None => {
                            let protocol = ctx.protocol.take().filter(|p| req.protocols().any(|o| o == p));
                            let deflate_ok = *contexts < config.deflate.max_contexts && !*pressure;
                            let _ = slot.conn.accept(protocol.as_deref(), deflate_ok, now);
                            slot.opened = true;
                            *open += 1;
                            if config.max_connections_per_ip > 0 {
                                *per_ip.entry(ip).or_insert(0) += 1;
                            }
                            Metrics::add(&m.open, 1);
                            Metrics::add(&m.opened, 1);
                            shared.set_live(key, slot.gen);
                            set_table(table, key, (slot.gen, 0));
                            if slot.conn.deflate_params().is_some() {
                                slot.deflate = true;
                                *contexts += 1;
                            }
                            if !config.prod {
                                log::debug!(target: "wskit::server", "{id} {} open {}", slot.peer, req.uri());
                            }
                        }
                    }
                }
                Event::Http(req) => {
                    let resp = match guarded(id, "on_http", || handler.on_http(&mut ctx, &req)) {
                        Some(r) => r,
                        None => Some(crate::handler::Response::new(500, "text/plain", "internal error\n")),
                    };
                    let _ = match resp {
                        Some(r) => {
                            let headers: Vec<(&str, &str)> =
                                r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                            slot.conn.respond(r.status, &headers, &r.body, now)
                        }
                        None => slot.conn.respond(
                            426,
                            &[("Upgrade", "websocket"), ("Content-Type", "text/plain; charset=utf-8")],
                            b"This is a WebSocket endpoint.\n",
                            now,
                        ),
                    };
                }
                Event::HandshakeFailed(e) => {
                    shared.metrics.handshake_failed(e.status());
                    if !config.prod {
                        log::debug!(target: "wskit::server", "{id} {} handshake refused ({}): {e}", slot.peer, e.status());
                    }
                }
                Event::Message(m) => {
                    Metrics::add(&shared.metrics.messages_in, 1);
                    Metrics::add(&shared.metrics.payload_in, m.as_bytes().len() as u64);
                    let (at, len) = (m.as_bytes().as_ptr() as usize, m.as_bytes().len());
                    if slot.deflate {
                        // Inflated: its bytes may be a thousand times the input's.
                        *work += DEFLATE_WEIGHT * len;
                    }
                    ctx.echo = Some((at, len));
                    // The message ends where the core stopped reading: `last` when that is the end of the input.
                    let last = off >= n;
                    *echo_src = Some(if at >= base + from && at + len <= base + n {
                        EchoSrc::Input { plain, start: at - base, end: at - base + len, last }
                    } else {
                        EchoSrc::Lent { last }
                    });
                    panicked = guarded(id, "on_message", || handler.on_message(&mut ctx, m)).is_none();
                }
                Event::Ping(p) => panicked = guarded(id, "on_ping", || handler.on_ping(&mut ctx, p)).is_none(),
                Event::Pong(p) => panicked = guarded(id, "on_pong", || handler.on_pong(&mut ctx, p)).is_none(),
                Event::Close(..) => {}
                Event::Error(e) => {
                    if !config.prod {
                        log::debug!(target: "wskit::server", "{id} {} protocol error: {e}", slot.peer);
                    }
                    guarded(id, "on_error", || handler.on_error(&mut ctx, &e));
                }
            }
            if panicked {
                // The handler's state for this connection is suspect: close it with 1011; everyone else goes on.
                let _ = slot.conn.close(crate::CloseCode::INTERNAL, "internal error", now);
            }
            if cfg!(debug_assertions) && !self.config.prod {
                if let Some(slot) = self.slots.get(key) {
                    slot.conn.debug_check_invariants();
                }
            }
            // (The slot was marked dirty at the top, and only `finish_turn` clears the mark.)
            self.apply_commands(now);
            self.echo_src = None;
            if off >= n {
                break;
            }
            if self.work >= QUANTUM && self.slots.contains(key) {
                self.stash_rest(key, plain, off, n);
                break;
            }
        }
        if let Some(slot) = self.slots.get_mut(key) {
            slot.conn.reclaim();
            take_back(&mut self.bufs, &mut slot.conn);
        }
    }

    fn apply_commands(&mut self, now: Instant) {
        if self.queue.cmds.is_empty() {
            return;
        }
        let Server {
            slots,
            queue,
            dirty,
            shared,
            pool,
            topics,
            timers,
            timer_live,
            timer_seq,
            group,
            loop_index,
            bufs,
            echo_src,
            rbuf,
            pbuf,
            shared_bytes,
            ..
        } = self;
        let group = group.as_deref();
        let m = &shared.metrics;
        // Message bytes queued, every receiver counted: work charged to the connection being read.
        let charged = std::cell::Cell::new(0usize);
        let sent = |n: usize| {
            Metrics::add(&m.messages_out, 1);
            Metrics::add(&m.payload_out, n as u64);
            charged.set(charged.get() + n);
        };
        let mut touch = |key: usize, slot: &mut Slot| touch(dirty, key, slot);
        for cmd in &queue.cmds {
            match *cmd {
                Cmd::Message { to, text, start, end } => {
                    if let Some((key, slot)) = slot_of(slots, to) {
                        if end - start >= SPARE_MIN {
                            lend(bufs, &mut slot.conn);
                        }
                        match slot.conn.send_with(message(text, &queue.arena[start..end]), pool) {
                            Ok(()) => sent(end - start),
                            Err(e) => log::debug!(target: "wskit::server", "send to {to}: {e}"),
                        }
                        touch(key, slot);
                    } else if let Some(g) = group.filter(|_| to.loop_index() != *loop_index) {
                        // A connection of a sibling loop: its queue carries the message on.
                        g.send_to_loop(to, text, &queue.arena[start..end]);
                    }
                }
                Cmd::Echo { to, text, len } => {
                    let Some((key, slot)) = slot_of(slots, to) else { continue };
                    if len >= SPARE_MIN {
                        lend(bufs, &mut slot.conn);
                    }
                    let result = match *echo_src {
                        Some(EchoSrc::Input { plain: false, start, end, last }) => {
                            // The last message of a plain read, with nothing queued ahead, goes out now from the
                            // read buffer itself: its header is written over the (consumed) bytes before the
                            // payload -- the client's header was 4 bytes longer, mask included -- and the frame
                            // leaves in one `send`, never copied (the write-through would send it next anyway).
                            let direct = last.then(|| slot.conn.direct_header(text, len)).flatten();
                            match direct {
                                Some((head, hl)) if start >= hl => {
                                    let at = &mut rbuf[start - hl..start];
                                    // The usual 2-byte header by hand (a variable-length copy calls memcpy).
                                    if let ([a0, a1], [h0, h1, ..]) = (&mut *at, head) {
                                        (*a0, *a1) = (h0, h1);
                                    } else {
                                        at.copy_from_slice(&head[..hl]);
                                    }
                                    let written = write_burst(&mut slot.sock, &rbuf[start - hl..end]).unwrap_or(0);
                                    slot.conn.sent_direct(&head[..hl], &rbuf[start..end], written);
                                    Metrics::add(&m.bytes_out, written as u64);
                                    Ok(())
                                }
                                _ => slot.conn.send_with(message(text, &rbuf[start..end]), pool),
                            }
                        }
                        Some(EchoSrc::Input { plain: true, start, end, .. }) => {
                            slot.conn.send_with(message(text, &pbuf[start..end]), pool)
                        }
                        Some(EchoSrc::Lent { last }) => {
                            // A long message assembled here (from several reads or frames): from the buffer it
                            // was assembled in, header and payload as two slices of one `sendmsg`.
                            let worth = len >= DIRECT_MIN && (last || len >= SPARE_MIN) && !slot.is_tls();
                            let direct = worth.then(|| slot.conn.direct_header(text, len)).flatten();
                            match (direct, slot.conn.delivered()) {
                                (Some((head, hl)), Some(bytes)) => {
                                    let written = write_direct(&mut slot.sock, &head[..hl], bytes);
                                    slot.conn.sent_delivered_direct(&head[..hl], written);
                                    Metrics::add(&m.bytes_out, written as u64);
                                    Ok(())
                                }
                                _ => slot.conn.send_delivered(text, pool),
                            }
                        }
                        None => Err(crate::SendError::NotOpen),
                    };
                    match result {
                        Ok(()) => {
                            sent(len);
                            // An echo without compression costs what its read did, already counted; compressed,
                            // it costs the compression.
                            let echo_work = if slot.deflate { DEFLATE_WEIGHT * len } else { 0 };
                            charged.set(charged.get() - len + echo_work);
                        }
                        Err(e) => log::debug!(target: "wskit::server", "echo to {to}: {e}"),
                    }
                    touch(key, slot);
                }
                Cmd::Frame { to, fin, op, start, end } => {
                    if let Some((key, slot)) = slot_of(slots, to) {
                        if let Err(e) = slot.conn.send_frame(fin, op, &queue.arena[start..end]) {
                            log::debug!(target: "wskit::server", "send to {to}: {e}");
                        }
                        touch(key, slot);
                    }
                }
                Cmd::Close { to, code, start, end } => {
                    if let Some((key, slot)) = slot_of(slots, to) {
                        let reason = std::str::from_utf8(&queue.arena[start..end]).unwrap_or("");
                        if let Err(e) = slot.conn.close(code, reason, now) {
                            log::debug!(target: "wskit::server", "close {to}: {e}");
                        }
                        touch(key, slot);
                    } else if let Some(g) = group.filter(|_| to.loop_index() != *loop_index) {
                        let reason = std::str::from_utf8(&queue.arena[start..end]).unwrap_or("");
                        g.close_on_loop(to, code, reason);
                    }
                }
                Cmd::Broadcast { text, except, start, end } => {
                    let mut prepared =
                        PreparedMessage::new(text, &queue.arena[start..end]).counted(shared_bytes.clone());
                    for (key, slot) in slots.iter_mut() {
                        if slot.opened && slot.conn.is_open() && Some(conn_id(key, slot.gen)) != except {
                            if slot.conn.send_prepared(&mut prepared, pool).is_ok() {
                                sent(end - start);
                            }
                            touch(key, slot);
                        }
                    }
                }
                Cmd::Subscribe { to, on, start, end } => {
                    let Ok(topic) = std::str::from_utf8(&queue.arena[start..end]) else { continue };
                    let Some((_, slot)) = slot_of(slots, to).filter(|(_, s)| s.opened) else { continue };
                    let subscribed = slot.topics.iter().position(|t| &**t == topic);
                    match (on, subscribed) {
                        (true, None) => {
                            slot.topics.push(topic.into());
                            let subs = topics.entry(topic.into()).or_default();
                            subs.push(to);
                            if let (1, Some(g)) = (subs.len(), group) {
                                g.interest(topic, true);
                            }
                        }
                        (false, Some(i)) => {
                            slot.topics.swap_remove(i);
                            unsubscribe(topics, topic, to, group);
                        }
                        _ => {}
                    }
                }
                Cmd::Publish { text, except, origin, start, mid, end } => {
                    let Ok(topic) = std::str::from_utf8(&queue.arena[start..mid]) else { continue };
                    if let (Origin::Local, Some(g)) = (origin, group) {
                        g.forward(*loop_index as usize, topic, text, except, &queue.arena[mid..end]);
                    }
                    let Some(subs) = topics.get(topic) else { continue };
                    let mut prepared = PreparedMessage::new(text, &queue.arena[mid..end]).counted(shared_bytes.clone());
                    for &id in subs.iter().filter(|id| Some(**id) != except) {
                        if let Some((key, slot)) = slot_of(slots, id) {
                            if slot.conn.is_open() && slot.conn.send_prepared(&mut prepared, pool).is_ok() {
                                sent(end - mid);
                                touch(key, slot);
                            }
                        }
                    }
                }
                Cmd::Pause { to, on } => {
                    if let Some((key, slot)) = slot_of(slots, to) {
                        slot.paused = on;
                        // Resuming reads at the end of the turn what arrived meanwhile.
                        touch(key, slot);
                    }
                }
                Cmd::Timer { to, token, after, repeat } => {
                    if slot_of(slots, to).is_some() {
                        *timer_seq += 1;
                        timer_live.insert((to.0, token), (*timer_seq, repeat.then_some(after)));
                        timers.push(Reverse((now + after, Timer::Handler { seq: *timer_seq, conn: to.0, token })));
                    }
                }
                Cmd::CancelTimer { to, token } => {
                    timer_live.remove(&(to.0, token));
                }
                Cmd::Stop => shared.stop.store(true, Ordering::SeqCst),
            }
        }
        queue.clear();
        self.work += charged.get();
    }

    /// Calls `on_timer` for a handler timer that is due, unless it was replaced or cancelled, or its connection
    /// is gone.
    fn fire_handler_timer(&mut self, now: Instant, seq: u64, conn: u64, token: u64) {
        let Some(&(live_seq, every)) = self.timer_live.get(&(conn, token)) else { return };
        if live_seq != seq {
            return; // replaced or cancelled
        }
        let id = ConnId(conn);
        let Some((key, slot)) = slot_of(&mut self.slots, id).filter(|(_, s)| s.opened) else {
            self.timer_live.remove(&(conn, token));
            return;
        };
        match every {
            Some(d) => self.timers.push(Reverse((now + d, Timer::Handler { seq, conn, token }))),
            None => {
                self.timer_live.remove(&(conn, token));
            }
        }
        let peer = slot.peer;
        let mut ctx =
            Ctx::new(id, peer, &mut self.queue, &self.shared.metrics, &self.table, self.config.write_high_water);
        let handler = &mut self.handler;
        guarded(id, "on_timer", || handler.on_timer(&mut ctx, token));
        self.mark_dirty(key);
        self.apply_commands(now);
    }

    /// Writes what the connection has queued, until the socket is full; the bytes written, or `None` if the socket
    /// failed. The core hands out its queue a frame boundary at a time when a control frame waits, so a pong
    /// overtakes queued data at the next boundary; under TLS at most [`TLS_BATCH`] bytes are encrypted ahead of
    /// the socket for the same reason.
    fn flush(slot: &mut Slot) -> Option<usize> {
        let mut written = 0;
        loop {
            #[cfg(feature = "tls")]
            if let Some(tls) = slot.tls.as_mut() {
                while tls.out().len() < TLS_BATCH && slot.conn.wants_write() {
                    let data = slot.conn.out();
                    if data.is_empty() {
                        break;
                    }
                    let n = data.len().min(TLS_BATCH - tls.out().len());
                    tls.send(&data[..n]);
                    slot.conn.consume_out(n);
                }
                // After the WebSocket close, close_notify goes before TCP closes.
                if slot.conn.is_finished() {
                    tls.close_notify();
                }
                let len = tls.out().len();
                if len == 0 {
                    return Some(written);
                }
                let n = write_burst(&mut slot.sock, tls.out())?;
                tls.consume_out(n);
                written += n;
                if n < len {
                    slot.set_blocked();
                    return Some(written);
                }
                continue;
            }
            let (len, n) = if slot.conn.has_shared() {
                // Shared frames queued after the head go out with it in one vectored send.
                let mut parts: [&[u8]; 16] = [&[]; 16];
                let k = slot.conn.out_slices(&mut parts);
                let len: usize = parts[..k].iter().map(|p| p.len()).sum();
                if len == 0 {
                    return Some(written);
                }
                (len, write_slices(&mut slot.sock, &parts[..k])?)
            } else {
                let len = slot.conn.out().len();
                if len == 0 {
                    return Some(written);
                }
                (len, write_burst(&mut slot.sock, slot.conn.out())?)
            };
            slot.conn.consume_out(n);
            written += n;
            if n < len {
                slot.set_blocked();
                return Some(written);
            }
        }
    }

    /// Flushes, closes and re-arms every connection touched this turn, then keeps the memory budget (which may
    /// drop connections: those are finished in a second pass).
    fn finish_turn(&mut self, now: Instant) {
        self.finish_dirty(now);
        if self.enforce_budget(now) {
            self.finish_dirty(now);
        }
    }

    /// The loop's part of the memory budget: what its slots hold, the shared frames, the stashed input.
    fn loop_held(&self) -> usize {
        let stashed: usize =
            if self.stash.is_empty() { 0 } else { self.stash.values().map(|s| s.buf.capacity()).sum() };
        self.held + self.shared_bytes.load(Ordering::Relaxed) + stashed
    }

    /// Checks the memory budget ([`Config::memory_budget`]) at the end of a turn: past three quarters, pressure
    /// (connections holding much are not read, new ones get no compression); past all of it, the connections
    /// with the most queued (then the most held) are dropped as slow consumers until it holds. Returns whether
    /// any was dropped.
    fn enforce_budget(&mut self, now: Instant) -> bool {
        let budget = self.config.memory_budget;
        if budget == 0 {
            return false;
        }
        let local = self.loop_held();
        let m = &self.shared.metrics;
        m.held_bytes.store(local as u64, Ordering::Relaxed);
        let (total, share) = match self.group.as_deref() {
            Some(g) => {
                if local > self.held_published {
                    g.held.fetch_add(local - self.held_published, Ordering::Relaxed);
                } else {
                    g.held.fetch_sub(self.held_published - local, Ordering::Relaxed);
                }
                self.held_published = local;
                (g.held.load(Ordering::Relaxed), budget / g.loops())
            }
            None => (local, 0),
        };
        let was = self.pressure;
        self.pressure = total > budget / 4 * 3;
        if self.pressure {
            Metrics::add(&m.pressure_turns, 1);
        } else if was {
            // Read again what was left unread.
            for (key, gen) in std::mem::take(&mut self.pressed) {
                if let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) {
                    slot.pressed = false;
                    self.defer(key);
                }
            }
        }
        if total <= budget || local <= share {
            return false;
        }
        // Back to the pressure mark, not just under the budget: otherwise the loop stays at the budget, under
        // pressure, dropping one connection whenever another fills.
        self.drop_heaviest(total - budget / 4 * 3, now)
    }

    /// Drops open connections, the most queued first (then the most held), until `over` bytes are freed.
    #[cold]
    fn drop_heaviest(&mut self, mut over: usize, now: Instant) -> bool {
        let mut heavy: Vec<(u32, u32, usize)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.opened && s.draining.is_none() && !s.conn.is_finished() && s.held > 0)
            .map(|(k, s)| (s.queued, s.held, k))
            .collect();
        heavy.sort_unstable_by(|a, b| b.cmp(a));
        let mut dropped = false;
        for (queued, held, key) in heavy {
            if over == 0 {
                break;
            }
            let slot = &mut self.slots[key];
            log::warn!(target: "wskit::server", "{} dropped to keep the memory budget ({queued} B queued, {held} B held)", slot.peer);
            slot.conn.drop_slow(queued as usize, now);
            #[cfg(feature = "tls")]
            if let Some(t) = slot.tls.as_mut() {
                t.consume_out(usize::MAX);
            }
            Metrics::add(&self.shared.metrics.budget_closed, 1);
            over = over.saturating_sub(queued as usize + held as usize);
            self.mark_dirty(key);
            dropped = true;
        }
        dropped
    }

    /// Flushes, closes and re-arms the dirty connections, what an earlier turn left first, then the most recently
    /// touched first, until the turn has written [`TURN_WRITES`]; the rest keep their place, ahead of anything
    /// touched later, for the next turn (which does not wait).
    fn finish_dirty(&mut self, now: Instant) {
        let mut turn_written = 0;
        loop {
            let (key, carried) = match self.carried.pop() {
                Some(key) => (key, true),
                None => match self.dirty.pop() {
                    Some(key) => (key, false),
                    None => return,
                },
            };
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.dirty) else {
                continue; // gone, or an entry left below a newer one
            };
            if turn_written >= TURN_WRITES && !slot.blocked && slot.wants_write() {
                if carried {
                    self.carried.push(key);
                } else {
                    self.dirty.push(key);
                    // (`carried` is empty here: swapping keeps both allocations.)
                    std::mem::swap(&mut self.carried, &mut self.dirty);
                }
                return;
            }
            slot.dirty = false;
            if slot.draining.is_some() {
                continue;
            }
            let flushed = if slot.blocked { Some(0) } else { Self::flush(slot) };
            let Some(written) = flushed else {
                self.peer_gone(key, now);
                continue;
            };
            take_back(&mut self.bufs, &mut slot.conn);
            turn_written += written;
            let m = &self.shared.metrics;
            Metrics::add(&m.bytes_out, written as u64);
            let queued = recount(slot, key, m, &mut self.table, &mut self.held);
            if queued > self.queue_limit && !slot.conn.is_finished() {
                // A peer that does not read: drop it rather than hold its queue (the close frame would not pass).
                Metrics::add(&m.slow_closed, 1);
                slot.conn.drop_slow(queued, now);
                #[cfg(feature = "tls")]
                if let Some(t) = slot.tls.as_mut() {
                    t.consume_out(usize::MAX);
                }
            }
            if queued > self.config.write_high_water {
                slot.over_high = true;
            } else if slot.over_high && queued <= self.config.write_high_water / 4 && slot.opened {
                slot.over_high = false;
                let id = conn_id(key, slot.gen);
                let hw = self.config.write_high_water;
                let mut ctx = Ctx::new(id, slot.peer, &mut self.queue, &self.shared.metrics, &self.table, hw);
                let handler = &mut self.handler;
                guarded(id, "on_drain", || handler.on_drain(&mut ctx));
                // Anything it sent makes this connection dirty again and is flushed in this same loop.
                self.apply_commands(now);
            }
            let Some(slot) = self.slots.get_mut(key) else { continue };
            if slot.finished() {
                self.finish(key, now);
                continue;
            }
            let want = if slot.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if want != slot.interest {
                if self.poll.registry().reregister(&mut slot.sock, token_of(key, slot.gen), want).is_err() {
                    self.peer_gone(key, now);
                    continue;
                }
                slot.interest = want;
            }
            let resume = slot.read_ready && !slot.deferred && slot.wants_read(self.config.write_high_water);
            Self::arm(&mut self.timers, key, slot);
            if resume {
                // Read on at the next turn, not in this one: reading here could queue more, flush, drain and
                // read again for as long as the client sends, and the turn would never end.
                self.defer(key);
            }
        }
    }

    /// The connection is over and its output written: tell the handler, send FIN, and drain. A peer dropped for
    /// not reading is reset instead: its kernel buffers are freed at once, rather than while a FIN waits behind
    /// them.
    fn finish(&mut self, key: usize, now: Instant) {
        let slot = &mut self.slots[key];
        let status = slot.conn.close_status();
        let timed_out = matches!(status, CloseStatus::TimedOut(TimeoutKind::Handshake));
        let slow = matches!(status, CloseStatus::Error(crate::ProtocolError::SlowConsumer { .. }));
        self.notify_close(key);
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slow {
            let _ = socket2::SockRef::from(&slot.sock).set_linger(Some(Duration::ZERO));
            return self.remove(key);
        }
        if timed_out || slot.sock.shutdown(Shutdown::Write).is_err() {
            return self.remove(key);
        }
        slot.draining = Some(now + self.config.close_timeout);
        self.schedule(key);
    }

    /// The peer closed TCP or the socket failed.
    fn peer_gone(&mut self, key: usize, _now: Instant) {
        if let Some(slot) = self.slots.get_mut(key) {
            if let Some(n) = Self::flush(slot) {
                Metrics::add(&self.shared.metrics.bytes_out, n as u64);
            }
        }
        self.notify_close(key);
        self.remove(key);
    }

    fn notify_close(&mut self, key: usize) {
        let Server { slots, handler, queue, open, per_ip, shared, shutdown, topics, config, table, group, .. } = self;
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        if !slot.opened {
            return;
        }
        slot.opened = false;
        let status = slot.conn.close_status();
        *open -= 1;
        let ip = per_ip_key(slot.peer.ip());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        shared.set_live(key, 0);
        set_table(table, key, (0, 0));
        let m = &shared.metrics;
        Metrics::sub(&m.open, 1);
        match &status {
            CloseStatus::Clean { code, by_peer, .. } => m.closed(code.0, *by_peer),
            CloseStatus::TimedOut(kind) => {
                m.timed_out(*kind);
                m.closed(status.code().0, false);
            }
            other => m.closed(other.code().0, false),
        }
        if let Some(r) = shutdown.as_mut() {
            match status {
                CloseStatus::Clean { .. } => r.closed_cleanly += 1,
                _ => r.closed_otherwise += 1,
            }
        }
        for topic in std::mem::take(&mut slot.topics) {
            unsubscribe(topics, &topic, conn_id(key, slot.gen), group.as_deref());
        }
        if !config.prod {
            log::debug!(target: "wskit::server", "{} {} closed: {status:?}", conn_id(key, slot.gen), slot.peer);
        }
        let mut ctx = Ctx::new(conn_id(key, slot.gen), slot.peer, queue, &shared.metrics, table, 0);
        ctx.closed = true;
        let id = ctx.id;
        guarded(id, "on_close", || handler.on_close(&mut ctx, &status));
        self.apply_commands(Instant::now());
    }

    fn remove(&mut self, key: usize) {
        if self.slots.contains(key) {
            let mut slot = self.slots.remove(key);
            if slot.awaiting_proxy {
                self.proxy_partial.remove(&key);
            }
            if slot.deferred {
                self.stash.remove(&key);
            }
            if slot.deflate {
                self.contexts -= 1;
            }
            let m = &self.shared.metrics;
            Metrics::sub(&m.sockets, 1);
            Metrics::sub(&m.queued_bytes, slot.queued as u64);
            self.held -= slot.held as usize;
            if let CloseStatus::TimedOut(TimeoutKind::Handshake) = slot.conn.close_status() {
                m.timed_out(TimeoutKind::Handshake);
            }
            let _ = self.poll.registry().deregister(&mut slot.sock);
            self.compact_timers();
        }
    }

    /// Drops the heap's stale entries (connections gone, deadlines moved earlier, handler timers replaced or
    /// cancelled) once they outnumber the live ones by far. Entries are otherwise skipped only when they come due,
    /// so a churn of short connections would leave one per connection for up to the longest deadline (tens of
    /// seconds): memory that grew with the connection rate, not with the connections held. Amortised O(1) per
    /// removal.
    fn compact_timers(&mut self) {
        let live = self.slots.len() + self.timer_live.len();
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let (slots, timer_live) = (&self.slots, &mut self.timer_live);
        timer_live.retain(|(conn, _), _| {
            let (key, gen) = split_id(*conn);
            slots.get(key).is_some_and(|s| s.gen == gen)
        });
        self.timers.retain(|Reverse((t, timer))| match *timer {
            Timer::Conn { key, gen } => slots.get(key).is_some_and(|s| s.gen == gen && s.scheduled == Some(*t)),
            Timer::Handler { seq, conn, token } => timer_live.get(&(conn, token)).is_some_and(|&(live, _)| live == seq),
        });
        if self.timers.capacity() > 4 * self.timers.len() + 1024 {
            self.timers.shrink_to(2 * self.timers.len() + 1024);
        }
    }

    fn schedule(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            Self::arm(&mut self.timers, key, slot);
        }
    }

    /// [`Server::schedule`] for a slot at hand: pushes a timer if the slot's earliest deadline is earlier than
    /// the one armed.
    #[inline]
    fn arm(timers: &mut BinaryHeap<Reverse<(Instant, Timer)>>, key: usize, slot: &mut Slot) {
        let armed = slot.scheduled;
        let earlier = match slot.draining {
            Some(d) => Some(d).filter(|d| armed.map_or(true, |a| *d < a)),
            None => slot.conn.deadline_to_arm(armed),
        };
        if let Some(d) = earlier {
            slot.scheduled = Some(d);
            timers.push(Reverse((d, Timer::Conn { key, gen: slot.gen })));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let (key, gen) = match timer {
                Timer::Conn { key, gen } => (key, gen),
                Timer::Handler { seq, conn, token } => {
                    self.fire_handler_timer(now, seq, conn, token);
                    continue;
                }
            };
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) else {
                continue;
            };
            slot.scheduled = None;
            if let Some(d) = slot.draining {
                if now >= d {
                    self.remove(key);
                } else {
                    self.schedule(key);
                }
                continue;
            }
            slot.conn.handle_timeout(now);
            self.mark_dirty(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limits_count_ipv6_by_its_64_bit_network() {
        let k = |s: &str| per_ip_key(s.parse().unwrap());
        assert_eq!(k("192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"), "IPv4-mapped counts as the IPv4 address");
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff:ffff:ffff:ffff"), "one /64");
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("2001:db8:1:2::1"), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }
}
