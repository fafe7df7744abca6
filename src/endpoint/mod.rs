//! The endpoint: every connection of one loop, as one sans-I/O state machine.
//!
//! Where [`Connection`] is one WebSocket, the [`Endpoint`] is the table of them and everything that spans them:
//! admission (limits, per-IP counts, `Origin`, subprotocols, the PROXY header and trusted forwarding headers),
//! each connection's TLS layer, the handler and its calls, the commands handlers queue (sends, the zero-copy
//! echo, broadcasts, topics and their shared frames, pauses, timers), back-pressure and `on_drain`, fairness (a
//! work quantum per connection, the backlog, the probe), the loop-wide memory budget, one timer table for every
//! deadline, and the metrics. It never names a socket, mio or the clock: the shell tells it what the sockets did,
//! and asks it what to do next.
//!
//! # The contract, in the order of a turn
//!
//! 1. **Readiness in.** For each readiness event, [`Endpoint::ready`]; for each socket accepted,
//!    [`Endpoint::accept`] (its id keys the socket from then on: [`ConnId::index`]).
//! 2. **Reads out.** While [`Endpoint::poll_read`] gives a [`Read`]: `recv` (or `MSG_PEEK` when [`Read::peek`])
//!    from that socket into [`Endpoint::read_bufs`] (two slices: a vectored read when the second is not empty),
//!    retrying `EINTR`, and report the outcome with
//!    [`Endpoint::received`]. After each report, carry out the transmits (step 3): an echo may lie in the read
//!    buffer, and the next read would overwrite it (if the shell does not, the endpoint queues it first).
//! 3. **Writes out.** While [`Endpoint::poll_transmit`] gives a [`Transmit`]: write its parts to that socket in
//!    one (vectored) send, `WouldBlock` being 0 bytes, and report with [`Endpoint::sent`].
//! 4. **Socket orders out.** While [`Endpoint::poll_order`] gives an [`Order`]: change write interest, shut
//!    down, reset or release the socket, acknowledge at once, or report the socket's send buffer size.
//! 5. **Time in.** [`Endpoint::handle_timeout`] with the turn's clock reading (the shell reads the clock once per
//!    turn), then [`Endpoint::end_turn`], then steps 3 and 4 again: the end of the turn flushes every connection
//!    the turn touched. The next wait lasts until [`Endpoint::next_timeout`], or not at all while
//!    [`Endpoint::busy`].
//!
//! Commands from other threads ([`crate::ServerHandle`]) wait in a queue; [`Endpoint::take_inbox`] applies them
//! (call it when the waker set with [`Endpoint::set_waker`] fires, or every turn).
//!
//! Time is an argument everywhere; deadlines go out. `tests/sim.rs` drives an endpoint with virtual sockets on
//! virtual time, the shell (`src/server.rs`) with mio.

use crate::config::Config;
use crate::conn::{CloseStatus, Connection, Event, Message, TimeoutKind, SPARE_MIN};
use crate::deflate::DeflatePool;
use crate::error::HandshakeError;
use crate::frame::Status;
use crate::group::Siblings;
use crate::handle::{conn_id, split_id, Shared};
use crate::handler::{Cmd, Commands, ConnId, Ctx, Entry, Handler, Origin};
use crate::metrics::{Metrics, Refusal as Why};
use crate::prepared::PreparedMessage;
use crate::proxy::ProxyReader;
use crate::CloseCode;
use core::net::{IpAddr, SocketAddr};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod commands;
mod deferred;
mod events;
mod h2;
mod rate;
mod read;
mod slot;
mod steady;
mod timers;
mod turn;
mod write;

use slot::*;
use timers::Timers;
pub(crate) use write::cut_parts;

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
/// The work fresh events may take in one turn before the rest are only probed ([`Read::peek`]): when hundreds
/// of heavy clients send at once, the light ones among them are still answered in this turn.
const FRESH_PER_TURN: usize = 2 << 20;
/// Work counted per byte inflated, or compressed for an echo: (de)compressing a byte costs several times what
/// reading, unmasking or writing it does (zlib-rs on the bench's workloads: a few hundred MB/s at level 1, less than half that at 3,
/// against GB/s for copies).
const DEFLATE_WEIGHT: usize = 4;
/// What a probe looks at: what an ordinary client sends at once fits (a 16 KiB message of 200 clients in step)
/// and leaves the socket drained; uncompressed, its cost is that of the bytes themselves.
const PROBE: usize = 64 * 1024;
/// Bytes the end of a turn writes at most for connections touched by others (a publish to a thousand
/// subscribers can mean a gigabyte for the kernel to take): the rest is written at the next turns, after fresh
/// events and whoever they touch. (4 MiB can still be 10–18 ms of `send`s, 900 silent subscribers' sockets
/// filling with the kernel's TCP under memory pressure: hence [`LIGHT`] connections go before it.)
const TURN_WRITES: usize = 4 << 20;
/// Slow consumers dropped at most per turn (past their queue limit, or to keep the memory budget): each is a reset
/// socket whose kernel buffers the kernel frees then (628 at once took 19 ms here, full 4 MB send buffers); the
/// rest are dropped at the next turns, inert meanwhile (not read, their sockets full).
const DROPS_PER_TURN: usize = 64;
/// A connection touched this turn with at most this much to write goes first at the end of the turn, whatever the
/// write budget: a light answer (a chat line, an echo the socket did not take at once) does not wait behind a
/// fan-out's megabytes (900 silent subscribers of a flooded topic kept another topic's users 30 ms behind).
const LIGHT: usize = 8 * 1024;
/// The shared read buffer: large enough that a burst of 16 KiB messages is read in one `recv`.
pub const READ_BUF: usize = 128 * 1024;
/// A stashed rest of input up to this long is copied out of its read buffer ([`Endpoint::stash_rest`]).
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
/// A frame whose payload still due is at least this long has it read straight into its message's buffer
/// ([`Connection::payload_target`]), up to [`IN_PLACE_MAX`] bytes a read: the copy out of the read buffer is what a
/// large message costs in user space (1 MiB messages: 60 % of it, measured with `perf`).
const IN_PLACE_MIN: usize = 64 * 1024;
const IN_PLACE_MAX: usize = 1 << 20;
/// Slices a [`Transmit`] has at most.
pub const MAX_PARTS: usize = 16;

/// A read the shell must make: `recv` from the socket of `id` into [`Endpoint::read_bufs`], or look
/// without taking (`MSG_PEEK`) when `peek`; then [`Endpoint::received`] with this `Read` and the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Read {
    /// Whose socket.
    pub id: ConnId,
    /// Bytes to read at most. A read that brings fewer tells the endpoint the socket is drained (its next bytes
    /// come with a new readiness event).
    pub max: usize,
    /// Look only (`MSG_PEEK`): the bytes stay in the socket.
    pub peek: bool,
    /// With `peek`: only how many bytes wait matters, not what they are (Linux counts them without copying
    /// with `MSG_PEEK | MSG_TRUNC`; a shell that copies them anyway is still right).
    pub count_only: bool,
}

/// Bytes to write to the socket of `id`: its parts in order, in one send (vectored when there are several);
/// then [`Endpoint::sent`] with what the socket took. Borrowed from the endpoint until then.
#[derive(Debug)]
#[must_use]
pub struct Transmit<'a> {
    /// Whose socket.
    pub id: ConnId,
    /// The first part (never empty).
    head: &'a [u8],
    rest: Rest<'a>,
}

/// What follows a transmit's first part.
#[derive(Debug)]
enum Rest<'a> {
    None,
    /// One more slice (a message after its header).
    One(&'a [u8]),
    /// The segments queued after the head of this connection's queue (frames shared with other connections).
    Queue(&'a Connection),
}

impl<'a> Transmit<'a> {
    /// The bytes, when they are one slice (the usual case: one `send`).
    pub fn single(&self) -> Option<&'a [u8]> {
        matches!(self.rest, Rest::None).then_some(self.head)
    }
    /// The slices to write, in order, in `buf` (at most [`MAX_PARTS`]).
    pub fn parts<'b>(&self, buf: &'b mut [&'a [u8]; MAX_PARTS]) -> &'b [&'a [u8]] {
        let n = match self.rest {
            Rest::None => {
                buf[0] = self.head;
                1
            }
            Rest::One(more) => {
                (buf[0], buf[1]) = (self.head, more);
                2
            }
            Rest::Queue(conn) => conn.out_slices(&mut buf[..]),
        };
        &buf[..n]
    }
    /// Bytes in all.
    pub fn len(&self) -> usize {
        let mut buf = [&[][..]; MAX_PARTS];
        self.parts(&mut buf).iter().map(|p| p.len()).sum()
    }
    /// Nothing to write (never handed out).
    pub fn is_empty(&self) -> bool {
        self.head.is_empty()
    }
}

/// What the shell must do to a socket, besides reading and writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Order {
    /// Wait for writability too (`write`), or for readability only. (If the change fails, report
    /// [`Endpoint::socket_failed`].)
    Interest {
        /// Whose socket.
        id: ConnId,
        /// Writable events wanted.
        write: bool,
    },
    /// Send FIN (shut down the write side); keep reading until the peer's FIN, which is reported as a read of 0.
    ShutdownWrite(ConnId),
    /// Reset the connection (`SO_LINGER` 0) and release the socket: a peer dropped for not reading gets its
    /// kernel buffers freed at once.
    Reset(ConnId),
    /// Release the socket (deregister, close); the id is gone.
    Release(ConnId),
    /// Acknowledge received data at once (`TCP_QUICKACK`): the peer is mid-message.
    QuickAck(ConnId),
    /// Report the socket's send buffer size ([`Endpoint::send_buffer_is`]): it is full, and what the kernel holds
    /// for it counts in the memory budget.
    MeasureSendBuffer(ConnId),
}

impl Order {
    /// Whose socket.
    pub fn id(self) -> ConnId {
        match self {
            Order::Interest { id, .. }
            | Order::ShutdownWrite(id)
            | Order::Reset(id)
            | Order::Release(id)
            | Order::QuickAck(id)
            | Order::MeasureSendBuffer(id) => id,
        }
    }
}

/// What [`crate::Server::shutdown`] did.
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

/// Where a message handed to `on_message` lies: in the input (`rbuf`, or `pbuf` for wss plaintext when
/// `plain`), ending at `end`, or in the connection, which assembled it and lent it out
/// ([`Connection::delivered`]) — told apart when its echo is applied. `last`: nothing follows it in this read;
/// `direct`: its answer may be written from the read buffer (the last message of a plain read, not a stash).
#[derive(Debug, Clone, Copy)]
struct EchoSrc {
    plain: bool,
    end: usize,
    last: bool,
    direct: bool,
}

/// An echo to be written from where its payload lies (the first transmit after the read that brought it).
#[derive(Debug, Clone, Copy)]
enum Direct {
    /// The frame is `rbuf[start..end]`: its header (`hl` bytes) was written over the consumed bytes before the
    /// payload.
    Input { key: usize, start: usize, hl: usize, end: usize },
    /// The header `head[..hl]`, then the message the connection assembled and lent out.
    Lent { key: usize, head: [u8; crate::frame::MAX_HEADER_LEN], hl: usize },
}

/// Input a connection sent that waits for its next burst ([`Endpoint::stash_rest`]): `buf[start..end]`, in the
/// read buffer it was read into (taken whole: nothing is copied), or the plaintext buffer when `plain`.
#[derive(Debug)]
struct Stash {
    plain: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The connection being read, and what was asked of the shell for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Burst {
    /// Reading until the socket is drained, reading pauses, or the quantum is spent.
    Reading { key: usize, from_backlog: bool },
    /// A fresh event in a turn that has done its share: a look (`MSG_PEEK`) was asked.
    Peeking { key: usize },
    /// The look found `n` cheap bytes: a read of exactly them is to be asked (`asked`: it was).
    Probing { key: usize, n: usize, asked: bool },
}

/// The transmit handed out and not yet reported.
#[derive(Debug, Clone, Copy)]
enum InFlight {
    /// The echo in `Endpoint::direct`.
    Direct,
    /// The connection's queue (`Connection::out_slices`), `len` bytes.
    Queue { key: usize, len: usize },
    /// The TLS layer's ciphertext, `len` bytes.
    #[cfg(feature = "tls")]
    Tls { key: usize, len: usize },
}

/// Where the writes stand: the connection being flushed, and the turn's end-of-turn pass.
#[derive(Debug, Default)]
struct Flushing {
    /// The connection whose queue is being written, and whether its flush ends with the end-of-turn steps.
    key: Option<(usize, bool)>,
    /// Bytes written to it in this flush.
    written: usize,
    /// The end of the turn is under way ([`Endpoint::end_turn`]).
    ending: bool,
    /// Bytes the end of the turn wrote so far ([`TURN_WRITES`]).
    turn_written: usize,
    /// The memory budget was checked in this end of turn.
    budget_checked: bool,
    /// Slow consumers dropped in this turn ([`DROPS_PER_TURN`]).
    drops: usize,
}

/// Every connection of one loop (see the module docs).
pub struct Endpoint {
    config: Arc<Config>,
    /// What each connection reads of it, shared by all of them.
    limits: Arc<crate::config::Limits>,
    handler: Box<dyn Handler>,
    slots: Slab<Slot>,
    /// Per slot: the generation, whether it is open, and its bytes queued as of its last flush. The one record
    /// of a connection's generation ([`ConnId`]s are made from it; `Ctx` reads it for send statuses).
    table: Vec<Entry>,
    next_gen: u32,
    /// This loop's index among its siblings (in the top 8 bits of every generation, so ids are global).
    loop_index: u32,
    queue: Commands,
    pool: DeflatePool,
    /// Connections holding a permessage-deflate context.
    contexts: usize,
    rbuf: Vec<u8>,
    /// Plaintext decrypted from `rbuf` (wss), fed to the connection from here.
    pbuf: Vec<u8>,
    /// A read buffer to replace one taken into a stash.
    spare_rbuf: Vec<u8>,
    /// Large empty buffers lent to connections for their next large message and taken back after it
    /// (`Connection::lend_buffer`): at most [`POOL_BYTES`] in all, trimmed when unused.
    bufs: BufPool,
    /// Where the message being handled by `on_message` lies, for [`Cmd::Echo`]: valid until the connection's
    /// next read, and cleared once its commands are applied.
    echo_src: Option<EchoSrc>,
    /// An echo waiting to be written from where it lies.
    direct: Option<Direct>,
    in_flight: Option<InFlight>,
    #[cfg(feature = "tls")]
    tls_config: Option<Arc<rustls::ServerConfig>>,
    timers: Timers,
    /// Readiness events of this turn, in order (slot, generation), and how many were taken up.
    fresh: Vec<(usize, u32)>,
    fresh_at: usize,
    /// Work the fresh events took this turn ([`FRESH_PER_TURN`]).
    fresh_work: usize,
    burst: Option<Burst>,
    /// The read asked for goes straight into this connection's message buffer, at most this many bytes.
    target: Option<(usize, usize)>,
    /// Connections to read at a later turn, in turn (slot, generation, debt): cut at their [`QUANTUM`], or let
    /// read again (back-pressure released, reading resumed), which waits for the next turn so that a loop turn
    /// always ends. `debt` is the work past its quantum the last burst caused: it is worked off a quantum per
    /// visit before the connection reads again, so heavy connections share the backlog by work, not by visits.
    backlog: VecDeque<(usize, u32, usize)>,
    /// This turn's visit of the backlog: the work it may still take and the entries it may still serve, once
    /// begun.
    backlog_turn: Option<(usize, usize)>,
    /// Work charged to the connection being read ([`QUANTUM`]).
    work: usize,
    /// Input a connection sent and was not processed yet, because its burst reached its quantum (by slot).
    stash: HashMap<usize, Stash>,
    /// Connections to write now (slot, generation), after their read burst (write-through), or for the last
    /// time before they go.
    through: Vec<(usize, u32)>,
    /// Connections touched this turn, served from the top (most recent first).
    dirty: Vec<usize>,
    /// What a turn's write budget left unserved, in its order: served before anything touched later, so a
    /// connection touched early (the first subscriber of a busy topic) is not kept under newer touches.
    carried: Vec<usize>,
    /// Connections to visit at the next end of turn (slow consumers past the turn's drops).
    later: Vec<usize>,
    /// The light ones among this turn's touched connections ([`LIGHT`]), served first at its end.
    light: Vec<usize>,
    flushing: Flushing,
    orders: VecDeque<Order>,
    shared: Arc<Shared>,
    /// Open WebSocket connections, and per IP when that is limited.
    open: usize,
    per_ip: HashMap<IpAddr, u32>,
    /// PROXY headers split across reads, by slot (`proxy_protocol`): each at most `16 + MAX_V2_LEN` bytes, held
    /// until the rest arrives or the handshake deadline ends the connection.
    proxy_partial: HashMap<usize, ProxyReader>,
    /// Per-connection rate limits and buckets (`Config::rate_limit`).
    rates: rate::Rates,
    /// HTTP/2 sockets (RFC 8441), by slot: each with its connection and its streams' sessions.
    h2: HashMap<usize, Box<h2::H2Socket>>,
    /// Sessions on HTTP/2 streams, by slot: their socket and stream.
    links: HashMap<usize, h2::Link>,
    /// Upgrades `on_open` deferred, by slot, until their answer ([`crate::Deferred`]) or their end.
    parked: HashMap<usize, deferred::Parked>,
    /// The loop's inbox as [`Ctx::defer_upgrade`] hands it out (the same [`Shared`]).
    inbox: Arc<dyn crate::handler::Inbox>,
    /// Subscribers of each topic.
    topics: HashMap<Box<str>, Vec<ConnId>>,
    /// Shutdown under way: counts how connections end.
    shutdown: Option<ShutdownReport>,
    /// Bytes of the prepared messages' shared frames that queues still hold (each counted once, however many
    /// queues hold it).
    shared_bytes: Arc<AtomicUsize>,
    /// What the slots hold, as last counted ([`Slot::held`]): with the shared frames and the stashes, the loop's
    /// part of the memory budget.
    held: usize,
    /// The loop's total last added to its siblings' (a [`crate::Cluster`] shares one budget).
    held_published: usize,
    /// Past three quarters of the budget: connections holding much are not read ([`Flags::PRESSED`]).
    pressure: bool,
    /// The connections not read for it.
    pressed: Vec<(usize, u32)>,
    /// [`Config::queue_limit`], computed once.
    queue_limit: usize,
    /// The other loops of a [`crate::Cluster`], and the broker bridge behind them.
    group: Option<Arc<dyn Siblings>>,
    /// Tests only: every read takes the general path (the steady pass is compared with it), and how many reads
    /// the steady pass took.
    #[cfg(test)]
    steady_off: bool,
    #[cfg(test)]
    steady_taken: usize,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("connections", &self.slots.len()).field("open", &self.open).finish()
    }
}

impl Endpoint {
    /// An endpoint for `config` (validated by the caller: [`Config::validate`]) whose events go to `handler`.
    pub fn new(config: Config, handler: Box<dyn Handler>) -> Endpoint {
        #[cfg(feature = "tls")]
        return Self::build(config, None, handler);
        #[cfg(not(feature = "tls"))]
        Self::build(config, handler)
    }

    /// An endpoint whose every connection speaks TLS (wss) with `tls`.
    #[cfg(feature = "tls")]
    pub fn with_tls(config: Config, tls: Arc<rustls::ServerConfig>, handler: Box<dyn Handler>) -> Endpoint {
        Self::build(config, Some(tls), handler)
    }

    fn build(
        config: Config,
        #[cfg(feature = "tls")] tls: Option<Arc<rustls::ServerConfig>>,
        handler: Box<dyn Handler>,
    ) -> Endpoint {
        let queue_limit = config.queue_limit();
        let shared = Arc::new(Shared::new());
        let inbox: Arc<dyn crate::handler::Inbox> = shared.clone();
        let rates = rate::Rates::new(&config.rate_limit);
        #[cfg(feature = "tls")]
        shared.tls.serving.store(tls.is_some(), Ordering::SeqCst);
        Endpoint {
            limits: config.limits(),
            config: Arc::new(config),
            handler,
            slots: Slab::new(),
            table: Vec::new(),
            next_gen: 0,
            loop_index: 0,
            queue: Commands::default(),
            pool: DeflatePool::new(),
            contexts: 0,
            rbuf: vec![0; READ_BUF],
            pbuf: Vec::new(),
            spare_rbuf: Vec::new(),
            bufs: BufPool::default(),
            echo_src: None,
            direct: None,
            in_flight: None,
            #[cfg(feature = "tls")]
            tls_config: tls,
            timers: Timers::default(),
            fresh: Vec::new(),
            fresh_at: 0,
            fresh_work: 0,
            burst: None,
            target: None,
            backlog: VecDeque::new(),
            backlog_turn: None,
            work: 0,
            stash: HashMap::new(),
            through: Vec::new(),
            dirty: Vec::new(),
            carried: Vec::new(),
            later: Vec::new(),
            light: Vec::new(),
            flushing: Flushing::default(),
            orders: VecDeque::new(),
            shared,
            open: 0,
            per_ip: HashMap::new(),
            proxy_partial: HashMap::new(),
            h2: HashMap::new(),
            links: HashMap::new(),
            parked: HashMap::new(),
            rates,
            inbox,
            topics: HashMap::new(),
            shutdown: None,
            shared_bytes: Arc::default(),
            held: 0,
            held_published: 0,
            pressure: false,
            pressed: Vec::new(),
            queue_limit,
            group: None,
            #[cfg(test)]
            steady_off: false,
            #[cfg(test)]
            steady_taken: 0,
        }
    }

    /// Makes this endpoint loop `index` of a cluster whose loops reach each other through `group`.
    pub(crate) fn join_group(&mut self, index: u32, group: Arc<dyn Siblings>) {
        self.loop_index = index;
        self.group = Some(group);
    }

    /// How other threads wake the loop when they queue a command (once; later calls are ignored).
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.shared.waker.set(Box::new(wake));
    }

    /// What the loop shares with other threads.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A handle to send, publish, close and stop from other threads.
    pub fn handle(&self) -> crate::ServerHandle {
        crate::ServerHandle { shared: self.shared.clone() }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The loop's counters and gauges.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Connections held (handshaking, open, closing or draining).
    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// Whether a stop was asked (by a handle or a handler).
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Deadlines armed in the timer table (connections' and handlers'), stale entries included until they are
    /// compacted away: for tests and the scale figures.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// What the loop holds for its connections as the memory budget counts it (queues, messages being assembled,
    /// compression contexts, TLS buffers, kernel send buffers of full sockets, shared frames, stashed input).
    pub fn held_bytes(&self) -> usize {
        self.loop_held()
    }

    /// Takes a new socket in from `peer`: gives it a connection (and TLS, for wss) and the handshake deadline.
    /// Returns its id (by which the shell keys the socket), or `None` if TLS could not be set up for it.
    pub fn accept(&mut self, peer: SocketAddr, now: Instant) -> Option<ConnId> {
        #[cfg(feature = "tls")]
        let tls = match &self.tls_config {
            Some(c) => match crate::tls::TlsLayer::new(c.clone()) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    log::warn!(target: "wskit::server", "TLS for {peer}: {e}");
                    return None;
                }
            },
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let tls = None;
        let phase = if self.config.proxy_protocol { Phase::Proxy } else { Phase::Handshake };
        let key = self.insert_slot(peer, phase, tls, now);
        let m = &self.shared.metrics;
        Metrics::add(&m.accepted, 1);
        Metrics::add(&m.sockets, 1);
        Some(self.id_of(key))
    }

    /// A new slot with a fresh generation, its handshake deadline armed.
    fn insert_slot(&mut self, peer: SocketAddr, phase: Phase, tls: Option<TlsBox>, now: Instant) -> usize {
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        // A 24-bit counter under the loop index; 0 is never used (the live table marks an empty slot with it).
        self.next_gen = (self.next_gen.wrapping_add(1) & 0x00ff_ffff).max(1);
        let gen = self.loop_index << 24 | self.next_gen;
        entry.insert(Slot::new(Connection::new(self.limits.clone(), now), peer, phase, tls));
        set_entry(&mut self.table, key, Entry::new(gen));
        self.schedule(key);
        key
    }

    /// The slot of a live id (its generation matches).
    fn key_of(&self, id: ConnId) -> Option<usize> {
        let (key, gen) = split_id(id.0);
        // A slot's table entry has generation 0 exactly while the slot is empty (`insert`, `remove_with`), and no
        // id has generation 0: the table alone answers.
        let live = gen != 0 && self.table.get(key).is_some_and(|e| e.gen == gen);
        debug_assert!(!live || self.slots.contains(key), "a live generation in the table has its slot");
        live.then_some(key)
    }

    /// The id of a live slot.
    fn id_of(&self, key: usize) -> ConnId {
        conn_id(key, self.table[key].gen)
    }

    /// A readiness event for `id`: its socket may hold bytes (`readable`; `read_closed` when the peer's FIN came
    /// with it), or takes bytes again (`writable`). An event for an id that is gone is ignored.
    pub fn ready(&mut self, id: ConnId, readable: bool, writable: bool, read_closed: bool) {
        let Some(key) = self.key_of(id) else { return };
        let slot = &mut self.slots[key];
        if writable {
            slot.flags.clear(Flags::BLOCKED);
            touch(&mut self.dirty, key, slot);
        }
        if readable {
            slot.flags.set(Flags::READ_READY);
            // The peer's FIN came with this edge: read through to it even after a short read, since no further
            // edge will announce it.
            if read_closed {
                slot.flags.set(Flags::READ_CLOSED);
            }
            if !slot.flags.has(Flags::DEFERRED) {
                self.fresh.push((key, id.generation()));
            }
        }
    }

    /// Feeds bytes read from the socket of `id` elsewhere (an adopted socket's request head, say), as if read
    /// now.
    pub fn receive_bytes(&mut self, id: ConnId, data: &[u8], now: Instant) {
        for chunk in data.chunks(READ_BUF) {
            let Some(key) = self.key_of(id) else { return };
            self.settle_direct();
            self.rbuf[..chunk.len()].copy_from_slice(chunk);
            self.input(key, chunk.len(), false, now);
            self.write_through(key);
        }
    }

    /// The socket of `id` failed outside a read or a write (its interest could not be changed): it is gone.
    pub fn socket_failed(&mut self, id: ConnId, now: Instant) {
        if let Some(key) = self.key_of(id) {
            self.peer_gone(key, false, now);
        }
    }

    /// The answer to [`Order::MeasureSendBuffer`].
    pub fn send_buffer_is(&mut self, id: ConnId, bytes: usize) {
        if let Some(key) = self.key_of(id) {
            self.slots[key].sndbuf_kib = bytes.div_ceil(1024).min(u16::MAX.into()) as u16;
        }
    }

    /// The next socket order, if any (see [`Order`]).
    pub fn poll_order(&mut self) -> Option<Order> {
        self.orders.pop_front()
    }

    /// Whether the loop must not sleep: connections wait in the backlog, or writes for the next turn.
    pub fn busy(&self) -> bool {
        !self.backlog.is_empty() || !self.dirty.is_empty() || !self.carried.is_empty()
    }

    /// The earliest deadline (a connection's, a handler timer's, the buffer pool's trim), if any.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.bufs.next_trim) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Carries out the commands other threads queued ([`crate::ServerHandle`]).
    pub fn take_inbox(&mut self, now: Instant) {
        #[cfg(feature = "tls")]
        self.take_tls();
        {
            let mut inbox = self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if inbox.cmds.is_empty() {
                return;
            }
            std::mem::swap(&mut *inbox, &mut self.queue);
        }
        self.apply_commands(now);
    }

    /// Takes a TLS configuration another thread gave ([`crate::ServerHandle::reload_tls`]): new connections use
    /// it; open ones keep their session.
    #[cfg(feature = "tls")]
    fn take_tls(&mut self) {
        let next = self.shared.tls.next.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tls) = next {
            self.tls_config = Some(tls);
            Metrics::add(&self.shared.metrics.tls_reloads, 1);
            log::info!(target: "wskit::server", "TLS configuration reloaded: new handshakes use it");
        }
    }

    /// The loop's TLS configuration was built from `ssl_cert` and friends: a reload reads them again.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_from_files(&self) {
        let _ = self.shared.tls.source.set(self.config.clone());
    }

    /// Starts a graceful shutdown: sends close 1001 to every open connection and drops those still in the
    /// opening handshake. Drive turns until [`Endpoint::closing`] is 0 or the grace period passed, then
    /// [`Endpoint::finish_shutdown`].
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.shutdown = Some(ShutdownReport::default());
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.h2_shutdown(key, now) {
                continue;
            }
            let slot = &mut self.slots[key];
            if slot.conn.is_open() {
                let _ = slot.conn.close(CloseCode::GOING_AWAY, "server shutting down", now);
            } else if !slot.is_open_phase() && !slot.is_draining() {
                slot.conn.abort(now);
            }
            self.mark_dirty(key);
        }
    }

    /// Connections not yet over (a shutdown waits for these).
    pub fn closing(&self) -> usize {
        self.slots.iter().filter(|(_, s)| !s.is_draining()).count()
    }

    /// Ends a shutdown: what is left is dropped (its `on_close` still runs, and its socket is released).
    pub fn finish_shutdown(&mut self, now: Instant) -> ShutdownReport {
        let mut report = self.shutdown.take().unwrap_or_default();
        // Sessions on HTTP/2 streams first: a socket takes the ones still on it when it goes.
        let mut keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        keys.sort_by_key(|&k| !self.slots[k].flags.has(Flags::STREAM));
        for key in keys {
            let Some(slot) = self.slots.get(key) else { continue };
            if !slot.is_draining() {
                report.bytes_unsent += slot.queued();
                report.dropped_at_deadline += usize::from(slot.is_open_phase());
            }
            self.notify_close(key, now);
            self.remove(key, now);
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        report
    }

    /// Puts a connection on top of the dirty list (again, if it is there already: the list is served from the
    /// top, so a connection touched now goes before those left from a fan-out that outlasted a turn's writes;
    /// the entry further down is skipped).
    fn mark_dirty(&mut self, key: usize) {
        if let Some(s) = self.slots.get_mut(key) {
            touch(&mut self.dirty, key, s);
        }
    }
}
