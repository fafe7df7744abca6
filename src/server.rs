//! The mio shell: one `Poll`, one thread, the sockets, and an [`Endpoint`] that decides everything else.
//!
//! The shell accepts, reads and writes what the endpoint asks, carries out its socket orders, reads the clock
//! once per turn, and sleeps until the endpoint's next deadline. It holds no connection state besides the
//! sockets (keyed by the endpoint's ids), and it is the only module that touches a socket, mio or the clock.
//!
//! Tokens are connection ids (`generation << 32 | slot`), so an event for a connection that was closed and whose
//! slot was reused does not match the new connection's generation, and the endpoint ignores it. `EINTR` is
//! retried; a full socket is a write of 0 bytes; everything else is reported to the endpoint.

use crate::config::Config;
use crate::endpoint::{cut_parts, Endpoint, Order, Read, Transmit, MAX_PARTS};
pub use crate::endpoint::{ShutdownReport, READ_BUF};
use crate::error::ConfigError;
use crate::group::Group;
pub use crate::handle::{ServerHandle, StopHandle};
use crate::handler::{ConnId, Handler};
use crate::metrics::Metrics;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, IoSliceMut, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// Connections the kernel completes ahead of `accept` (capped by `net.core.somaxconn`, 4096 on current Linux).
/// The standard library's 128 overflows when a few hundred clients connect at once, and each connection
/// dropped there waits for its SYN to be sent again: 1 s, then 3 s, then 7 s.
const LISTEN_BACKLOG: i32 = 4096;

/// How long to wait before accepting again after `accept` failed (descriptor exhaustion).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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

/// A WebSocket server on one thread.
pub struct Server {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    local: SocketAddr,
    ep: Endpoint,
    /// The sockets, by the endpoint's slot, each with its connection's generation.
    socks: Vec<Option<(u32, TcpStream)>>,
    accept_paused: Option<Instant>,
    /// Room for a look that only counts ([`count_waiting`]): never written, so never made resident.
    uncopied: Vec<MaybeUninit<u8>>,
    /// [`Config::busy_poll`] when on, kept at hand for every wait (one comparison when off).
    busy_poll: Option<Duration>,
    /// The readable events of the wait being served, in order (whether each came with the peer's FIN).
    readable: Vec<(ConnId, bool)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local", &self.local).field("endpoint", &self.ep).finish()
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

/// The bytes waiting in a socket, up to `buf.len()`, neither taken nor copied: `MSG_PEEK | MSG_TRUNC` makes
/// Linux count them only, so `room` (there because the call takes a buffer's length) is never written.
#[cfg(target_os = "linux")]
fn count_waiting(sock: &TcpStream, room: &mut Vec<MaybeUninit<u8>>, buf: &mut [u8]) -> io::Result<usize> {
    room.resize(buf.len(), MaybeUninit::uninit());
    socket2::SockRef::from(sock).recv_with_flags(room, libc::MSG_PEEK | libc::MSG_TRUNC)
}

/// Elsewhere the bytes are copied to be counted.
#[cfg(not(target_os = "linux"))]
fn count_waiting(sock: &TcpStream, _: &mut Vec<MaybeUninit<u8>>, buf: &mut [u8]) -> io::Result<usize> {
    sock.peek(buf)
}

fn config_error(e: ConfigError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

#[cfg(feature = "tls")]
type Tls = Option<Arc<rustls::ServerConfig>>;
#[cfg(not(feature = "tls"))]
type Tls = ();

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
        let server = Self::bind_inner(addr, config, tls, handler)?;
        #[cfg(feature = "tls")]
        server.ep.tls_from_files();
        Ok(server)
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
        tls: Tls,
        handler: Box<dyn Handler>,
        index: u32,
        group: Arc<Group>,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let mut server = Self::with_listener(TcpListener::from_std(listener), config, tls, handler)?;
        #[cfg(feature = "tls")]
        server.ep.tls_from_files();
        server.ep.join_group(index, group);
        Ok(server)
    }

    fn bind_inner(addr: impl ToSocketAddrs, config: Config, tls: Tls, handler: Box<dyn Handler>) -> io::Result<Server> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        Self::with_listener(TcpListener::from_std(listener(addr, false)?), config, tls, handler)
    }

    fn with_listener(
        mut listener: TcpListener,
        config: Config,
        tls: Tls,
        handler: Box<dyn Handler>,
    ) -> io::Result<Server> {
        let local = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        #[cfg(feature = "tls")]
        let ep = match tls {
            Some(tls) => Endpoint::with_tls(config, tls, handler),
            None => Endpoint::new(config, handler),
        };
        #[cfg(not(feature = "tls"))]
        let ep = {
            let () = tls;
            Endpoint::new(config, handler)
        };
        ep.set_waker(move || {
            let _ = waker.wake();
        });
        let events = Events::with_capacity(1024);
        let busy_poll = Some(ep.config().busy_poll).filter(|d| !d.is_zero());
        let (socks, uncopied) = (Vec::new(), Vec::new());
        let readable = Vec::with_capacity(1024);
        Ok(Server { poll, events, listener, local, ep, socks, accept_paused: None, uncopied, busy_poll, readable })
    }

    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { shared: self.ep.shared().clone() }
    }

    /// A handle to send, publish, close and stop from other threads.
    pub fn handle(&self) -> ServerHandle {
        self.ep.handle()
    }

    /// The loop's counters and gauges.
    pub fn metrics(&self) -> &Metrics {
        self.ep.metrics()
    }

    /// Sockets currently held (handshaking, open, closing or draining).
    pub fn connection_count(&self) -> usize {
        self.ep.connection_count()
    }

    /// Whether a stop was asked (by a [`StopHandle`] or a handler).
    pub fn is_stopped(&self) -> bool {
        self.ep.is_stopped()
    }

    /// Serves until stopped ([`StopHandle::stop`], [`crate::Ctx::stop_server`]) or shut down
    /// ([`ServerHandle::shutdown`], whose report it returns).
    pub fn run(&mut self) -> io::Result<Option<ShutdownReport>> {
        while !self.is_stopped() {
            self.poll_once(None)?;
            let asked = self.ep.shared().shutdown.lock().unwrap_or_else(|p| p.into_inner()).take();
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
        if self.ep.busy() {
            timeout = Some(Duration::ZERO);
        }
        let waited = match self.busy_poll {
            Some(spin) if timeout != Some(Duration::ZERO) => self.spin_then_wait(spin, timeout),
            _ => self.poll.poll(&mut self.events, timeout),
        };
        match waited {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let handled = self.turn(now);
        self.ep.metrics().turn(now.elapsed().as_micros() as u64);
        Ok(handled)
    }

    /// Waits for readiness at most `timeout` with [`Config::busy_poll`]: first asks without waiting, again and
    /// again, for that long (never past `timeout`), and sleeps in the kernel only for what is left.
    #[cold]
    #[inline(never)]
    fn spin_then_wait(&mut self, spin: Duration, timeout: Option<Duration>) -> io::Result<()> {
        let start = Instant::now();
        let spin = timeout.map_or(spin, |t| t.min(spin));
        loop {
            self.poll.poll(&mut self.events, Some(Duration::ZERO))?;
            if !self.events.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= spin {
                break;
            }
            std::hint::spin_loop();
        }
        self.poll.poll(&mut self.events, timeout.map(|t| t.saturating_sub(start.elapsed())))
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
        self.ep.begin_shutdown(now);
        self.ep.end_turn(now);
        self.pump(now);
        let deadline = now + grace;
        while self.ep.closing() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.poll_once(Some(left))?;
        }
        let now = Instant::now();
        let report = self.ep.finish_shutdown(now);
        self.pump(now);
        Ok(report)
    }

    /// How long the loop may sleep before a deadline is due (`None`: no deadline). A caller that embeds the
    /// server in its own `Poll` ([`Server`] is a mio `Source` on Unix) bounds its wait with this.
    pub fn next_timeout(&self) -> Option<Duration> {
        let wake_at = match (self.ep.next_timeout(), self.accept_paused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        wake_at.map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// The turn after a wait: readiness to the endpoint, then its reads and writes, deadlines, and the end of
    /// the turn. The inbox, the listener and what became writable are taken first, in the order of the events,
    /// and only then what became readable: a read at once ([`Endpoint::read_at_once`]) then comes where the
    /// endpoint's first read of the turn would have come, after all of them.
    fn turn(&mut self, now: Instant) -> usize {
        let mut accept = self.accept_paused.is_some_and(|t| now >= t);
        let mut handled = 0;
        self.readable.clear();
        for ev in self.events.iter() {
            handled += 1;
            match ev.token() {
                LISTENER => accept = true,
                WAKER => self.ep.take_inbox(now),
                Token(t) => {
                    let id = ConnId(t as u64);
                    if ev.is_writable() || ev.is_write_closed() {
                        self.ep.ready(id, false, true, false);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.readable.push((id, ev.is_read_closed() || ev.is_error()));
                    }
                }
            }
        }
        if accept {
            self.accept_paused = None;
            self.accept(now);
        }
        self.read_events(now);
        self.pump(now);
        self.ep.handle_timeout(now);
        self.ep.end_turn(now);
        self.pump(now);
        handled
    }

    /// The readable events of the wait, in order: each read at once when nothing is ahead of it in the turn
    /// and its connection reads the usual way, queued otherwise.
    #[inline(never)]
    fn read_events(&mut self, now: Instant) {
        for &(id, closed) in &self.readable {
            // (A read at once never follows the peer's FIN: that read goes on to the end.)
            if let Some(sock) = sock_of(&mut self.socks, id).filter(|_| !closed) {
                if self.ep.read_at_once(id, sock, now) {
                    if self.ep.may_transmit() {
                        transmit(&mut self.ep, &mut self.socks, now);
                    }
                    continue;
                }
            }
            self.ep.ready(id, true, false, closed);
        }
    }

    /// Makes the reads, writes and socket changes the endpoint asks for, until it asks for none.
    fn pump(&mut self, now: Instant) {
        while let Some(op) = self.ep.poll_read(now) {
            let result = self.read(op);
            self.ep.received(op, result, now);
            self.transmit(now);
        }
        self.transmit(now);
        self.orders(now);
    }

    fn read(&mut self, op: Read) -> io::Result<usize> {
        let Some(sock) = sock_of(&mut self.socks, op.id) else { return Err(io::ErrorKind::NotConnected.into()) };
        let (buf, after) = self.ep.read_bufs(&op);
        loop {
            let r = if op.peek {
                if op.count_only {
                    count_waiting(sock, &mut self.uncopied, buf)
                } else {
                    sock.peek(buf)
                }
            } else if after.is_empty() {
                sock.read(buf)
            } else {
                sock.read_vectored(&mut [IoSliceMut::new(buf), IoSliceMut::new(after)])
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn transmit(&mut self, now: Instant) {
        transmit(&mut self.ep, &mut self.socks, now);
    }

    /// Carries out the endpoint's socket orders (a socket already released is past them).
    fn orders(&mut self, now: Instant) {
        while let Some(order) = self.ep.poll_order() {
            let id = order.id();
            let Some(sock) = sock_of(&mut self.socks, id) else { continue };
            let failed = match order {
                Order::Interest { write, .. } => {
                    let want = if write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                    self.poll.registry().reregister(sock, Token(id.as_u64() as usize), want).is_err()
                }
                Order::ShutdownWrite(_) => sock.shutdown(Shutdown::Write).is_err(),
                Order::Reset(_) | Order::Release(_) => {
                    if let Order::Reset(_) = order {
                        let _ = socket2::SockRef::from(&*sock).set_linger(Some(Duration::ZERO));
                    }
                    let _ = self.poll.registry().deregister(sock);
                    self.socks[id.slot()] = None;
                    false
                }
                Order::QuickAck(_) => {
                    // Linux `TCP_QUICKACK`: it lasts until the kernel's heuristics turn delayed ACKs back on.
                    #[cfg(any(target_os = "linux", target_os = "android"))]
                    let _ = socket2::SockRef::from(&*sock).set_tcp_quickack(true);
                    false
                }
                Order::MeasureSendBuffer(_) => {
                    let n = socket2::SockRef::from(&*sock).send_buffer_size().unwrap_or(0);
                    self.ep.send_buffer_is(id, n);
                    false
                }
            };
            if failed {
                self.ep.socket_failed(id, now);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        // Sockets the endpoint let go are released first: their slots may be given out again.
        self.orders(now);
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => {
                    let _ = self.insert(sock, peer, now);
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

    /// Takes a new socket into the loop: gives it to the endpoint and registers it under its id.
    fn insert(&mut self, mut sock: TcpStream, peer: SocketAddr, now: Instant) -> io::Result<ConnId> {
        let _ = sock.set_nodelay(true);
        if self.ep.config().socket_send_buffer > 0 {
            let _ = socket2::SockRef::from(&sock).set_send_buffer_size(self.ep.config().socket_send_buffer);
        }
        let id = self.ep.accept(peer, now).ok_or_else(|| io::Error::other("TLS could not be set up"))?;
        if let Err(e) = self.poll.registry().register(&mut sock, Token(id.as_u64() as usize), Interest::READABLE) {
            log::warn!(target: "wskit::server", "register {peer}: {e}");
            self.ep.socket_failed(id, now);
            self.orders(now);
            return Err(e);
        }
        let key = id.slot();
        if self.socks.len() <= key {
            self.socks.resize_with(key + 1, || None);
        }
        self.socks[key] = Some((id.generation(), sock));
        Ok(id)
    }

    /// Serves a TCP connection accepted elsewhere (by another server on another port, say). `already_read` is
    /// what was read from it so far, fed first: the whole request head when another HTTP server parsed it and
    /// hands the upgrade over, or nothing. Returns the connection's id.
    pub fn adopt(&mut self, sock: std::net::TcpStream, already_read: &[u8]) -> io::Result<ConnId> {
        sock.set_nonblocking(true)?;
        let peer = sock.peer_addr()?;
        let now = Instant::now();
        let id = self.insert(TcpStream::from_std(sock), peer, now)?;
        self.ep.receive_bytes(id, already_read, now);
        // Whatever else the socket holds is read now (its readiness edge may have passed before registration).
        self.ep.ready(id, true, false, false);
        self.pump(now);
        self.ep.end_turn(now);
        self.pump(now);
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
}

/// Writes what the endpoint has to write, until it has nothing due now.
fn transmit(ep: &mut Endpoint, socks: &mut [Option<(u32, TcpStream)>], now: Instant) {
    while let Some(t) = ep.poll_transmit(now) {
        let id = t.id;
        let result = match sock_of(socks, id) {
            Some(sock) => write(sock, &t),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        ep.sent(id, result, now);
    }
}

/// The socket of a live connection id.
fn sock_of(socks: &mut [Option<(u32, TcpStream)>], id: ConnId) -> Option<&mut TcpStream> {
    match socks.get_mut(id.slot()) {
        Some(Some((gen, sock))) if *gen == id.generation() => Some(sock),
        _ => None,
    }
}

/// A transmit at least this large goes out in two sends: its first [`WAKE_FIRST`] bytes, then the rest.
const SPLIT_FROM: usize = 512 * 1024;
/// The first send of a large transmit. It ends with a push, so the peer has its first segments, and is woken,
/// while this loop copies the rest: a peer on another core reads and acknowledges as the rest goes out, the
/// acknowledgements meet the socket held by the second send and are handled in this thread as it goes (the pages
/// of the first part freed here, warm, for the rest to reuse), and the peer is already running when the rest
/// comes. 10 × 1 MiB echoes, interleaved with tokio-websockets: 1.15× its msgs/s (median of 40 rounds; one send:
/// 0.93–0.99×), 1.20× the one-send build paired over 28 rounds, server CPU 483–519 against 619–624 µs a message
/// (docs/benchmarks.md). The why is a reading of `perf`, not a proof; the figures are measured.
const WAKE_FIRST: usize = 64 * 1024;

/// Writes a transmit in one send (vectored when it has several parts), or two if it is large ([`SPLIT_FROM`]):
/// the bytes the socket took, 0 when it is full.
fn write(sock: &mut TcpStream, t: &Transmit<'_>) -> io::Result<usize> {
    match t.single() {
        Some(one) if one.len() < SPLIT_FROM => retrying(|| sock.write(one)),
        _ => {
            let mut buf = [&[][..]; MAX_PARTS];
            let parts = t.parts(&mut buf);
            if parts.iter().map(|p| p.len()).sum::<usize>() >= SPLIT_FROM {
                write_large(sock, parts)
            } else {
                send_parts(sock, parts)
            }
        }
    }
}

/// [`write`] for a large transmit: [`WAKE_FIRST`] bytes, then, if the socket took them all, the rest. An error on
/// the second send is left for the next write to meet: the first part's bytes are counted.
#[cold]
fn write_large(sock: &mut TcpStream, parts: &[&[u8]]) -> io::Result<usize> {
    let first = send_range(sock, parts, 0, WAKE_FIRST)?;
    if first < WAKE_FIRST {
        return Ok(first);
    }
    Ok(first + send_range(sock, parts, first, usize::MAX).unwrap_or(0))
}

/// One send of at most `limit` bytes of `parts`, from byte `skip` of them all (see [`send_parts`]).
fn send_range(sock: &mut TcpStream, parts: &[&[u8]], skip: usize, limit: usize) -> io::Result<usize> {
    let mut cut = [&[][..]; MAX_PARTS];
    let n = cut_parts(parts, skip, limit, &mut cut);
    debug_assert!(n > 0, "a send of nothing would read as a full socket");
    send_parts(sock, &cut[..n])
}

/// One vectored send of `parts` (at most [`MAX_PARTS`]): the bytes the socket took, 0 when it is full.
fn send_parts(sock: &mut TcpStream, parts: &[&[u8]]) -> io::Result<usize> {
    let mut io = [io::IoSlice::new(&[]); MAX_PARTS];
    for (d, p) in io.iter_mut().zip(parts) {
        *d = io::IoSlice::new(p);
    }
    retrying(|| socket2::SockRef::from(&*sock).send_vectored(&io[..parts.len()]))
}

/// A send, made again when a signal interrupted it; a full socket is 0 bytes taken.
#[inline(always)]
fn retrying(mut send: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match send() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large transmit written in two sends ([`write_large`]), and any rest after a full socket ([`send_range`]
    /// from where it stopped), reaches the peer whole and in order: the ranges cut across the parts' edges.
    #[test]
    fn a_large_transmit_split_in_two_sends_arrives_whole_and_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut sock = TcpStream::from_std(ours);
        let head: Vec<u8> = (0..10).collect();
        let mid: Vec<u8> = (0..WAKE_FIRST - 3).map(|i| (i * 7 % 251) as u8).collect();
        let tail: Vec<u8> = (0..SPLIT_FROM * 2 + 5).map(|i| (i * 13 % 253) as u8).collect();
        let parts: [&[u8]; 3] = [&head, &mid, &tail];
        let want: Vec<u8> = parts.concat();
        let total = want.len();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut &peer, &mut got).unwrap();
            got
        });
        let mut sent = write_large(&mut sock, &parts).unwrap();
        while sent < total {
            let n = send_range(&mut sock, &parts, sent, usize::MAX).unwrap();
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            sent += n;
        }
        drop(sock);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(got == want, "the bytes arrive in order");
    }

    /// A look that counts ([`count_waiting`]) sees how many bytes wait, up to what it may look at, and neither
    /// takes them nor copies them into the read buffer. (That the kernel copies nothing into the room it is given
    /// either, `MSG_TRUNC`'s part, cannot be seen without reading uninitialised memory.)
    #[test]
    fn a_look_that_counts_takes_nothing_and_copies_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut sock = TcpStream::from_std(accepted);
        client.write_all(&[7; 1000]).unwrap();
        let (mut room, mut buf) = (Vec::new(), [0u8; 4096]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while count_waiting(&sock, &mut room, &mut buf).map_or(true, |n| n < 1000) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(count_waiting(&sock, &mut room, &mut buf).unwrap(), 1000);
        assert_eq!(count_waiting(&sock, &mut room, &mut buf[..10]).unwrap(), 10, "at most what it may look at");
        if cfg!(target_os = "linux") {
            assert!(buf.iter().all(|&b| b == 0), "nothing copied");
        }
        let mut got = [0u8; 2000];
        assert_eq!(sock.read(&mut got).unwrap(), 1000, "nothing taken");
        assert!(got[..1000].iter().all(|&b| b == 7));
    }
}
