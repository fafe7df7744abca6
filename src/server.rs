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
use crate::conn::{CloseStatus, Connection, Event, Message, TimeoutKind};
use crate::deflate::{DeflatePool, PreparedMessage};
use crate::error::ConfigError;
use crate::handler::{Cmd, Commands, ConnId, Ctx, Handler};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// The shared read buffer: large enough that a burst of 16 KiB messages is read in one `recv`.
const READ_BUF: usize = 128 * 1024;
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
    /// The earliest deadline this slot has in the timer heap.
    scheduled: Option<Instant>,
    /// Our FIN is sent; input is discarded until the peer's FIN or this deadline.
    draining: Option<Instant>,
    /// Negotiated permessage-deflate (counts against `deflate.max_contexts`).
    deflate: bool,
    /// TLS under the WebSocket (wss).
    #[cfg(feature = "tls")]
    tls: Option<Box<crate::tls::TlsLayer>>,
}

impl Slot {
    /// Ciphertext waiting for the socket.
    fn tls_pending(&self) -> usize {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return t.out().len();
        }
        0
    }
    /// Anything to write: WebSocket output not yet handed to TLS, or ciphertext.
    fn wants_write(&self) -> bool {
        self.conn.wants_write() || self.tls_pending() > 0
    }
    /// Read on: the connection expects input and neither layer has too much queued for the peer.
    fn wants_read(&self, high_water: usize) -> bool {
        self.conn.wants_read() && self.tls_pending() < high_water
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

/// Stops a running server from any thread.
#[derive(Clone, Debug)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Asks the loop to return from [`Server::run`] at its next turn.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// A WebSocket server on one thread.
pub struct Server {
    poll: Poll,
    events: Events,
    ready: Vec<(usize, bool, bool)>,
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
    #[cfg(feature = "tls")]
    tls_config: Option<Arc<rustls::ServerConfig>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    dirty: Vec<usize>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    accept_paused: Option<Instant>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local", &self.local).field("connections", &self.slots.len()).finish()
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

fn conn_id(key: usize, gen: u32) -> ConnId {
    ConnId((gen as u64) << 32 | key as u64)
}

/// The mio token of a slot: the same packing as its [`ConnId`].
fn token_of(key: usize, gen: u32) -> Token {
    Token(conn_id(key, gen).0 as usize)
}

/// Slot and generation packed in a [`ConnId`] (or a token).
fn split_id(id: u64) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
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
        let mut listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
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
            #[cfg(feature = "tls")]
            tls_config: tls,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            accept_paused: None,
        })
    }

    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { flag: self.stop.clone(), waker: self.waker.clone() }
    }

    /// Sockets currently held (handshaking, open, closing or draining).
    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// Whether a stop was asked (by a [`StopHandle`] or a handler).
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Serves until stopped.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.is_stopped() {
            self.poll_once(None)?;
        }
        Ok(())
    }

    /// One turn of the loop: waits for readiness (at most `max_wait`, and never past the earliest deadline), then
    /// handles what came. For callers that drive the loop themselves.
    pub fn poll_once(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let mut wake_at = self.timers.peek().map(|Reverse((t, _, _))| *t);
        if let Some(t) = self.accept_paused {
            wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
        }
        let mut timeout = wake_at.map(|t| t.saturating_duration_since(now));
        if let Some(m) = max_wait {
            timeout = Some(timeout.map_or(m, |t| t.min(m)));
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        self.ready.clear();
        for ev in self.events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            self.ready.push((ev.token().0, readable, ev.is_writable() || ev.is_write_closed()));
        }
        for i in 0..self.ready.len() {
            let (token, readable, writable) = self.ready[i];
            match Token(token) {
                LISTENER => self.accept(now),
                WAKER => {}
                _ => {
                    let (key, gen) = split_id(token as u64);
                    if !self.slots.get(key).is_some_and(|s| s.gen == gen) {
                        continue; // a stale event for a slot that was reused
                    }
                    if readable {
                        self.slots[key].read_ready = true;
                        self.do_read(key, now);
                    }
                    if writable {
                        self.mark_dirty(key);
                    }
                }
            }
        }
        if self.accept_paused.is_some_and(|t| now >= t) {
            self.accept_paused = None;
            self.accept(now);
        }
        self.fire_timers(now);
        self.finish_turn(now);
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let entry = self.slots.vacant_entry();
                    let key = entry.key();
                    self.next_gen = self.next_gen.wrapping_add(1);
                    let gen = self.next_gen;
                    if let Err(e) = self.poll.registry().register(&mut sock, token_of(key, gen), Interest::READABLE) {
                        log::warn!(target: "wskit::server", "register {peer}: {e}");
                        continue;
                    }
                    #[cfg(feature = "tls")]
                    let tls = match &self.tls_config {
                        Some(c) => match crate::tls::TlsLayer::new(c.clone()) {
                            Ok(t) => Some(Box::new(t)),
                            Err(e) => {
                                log::warn!(target: "wskit::server", "TLS for {peer}: {e}");
                                continue;
                            }
                        },
                        None => None,
                    };
                    entry.insert(Slot {
                        sock,
                        conn: Connection::new(self.config.clone(), now),
                        peer,
                        gen,
                        interest: Interest::READABLE,
                        opened: false,
                        read_ready: false,
                        dirty: false,
                        scheduled: None,
                        draining: None,
                        deflate: false,
                        #[cfg(feature = "tls")]
                        tls,
                    });
                    self.schedule(key);
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

    fn mark_dirty(&mut self, key: usize) {
        if let Some(s) = self.slots.get_mut(key) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn do_read(&mut self, key: usize, now: Instant) {
        loop {
            let Some(slot) = self.slots.get_mut(key) else {
                return;
            };
            if slot.draining.is_some() {
                // Discard until the peer's FIN.
                match slot.sock.read(&mut self.rbuf) {
                    Ok(0) => return self.remove(key),
                    Ok(_) => continue,
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
            match slot.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    slot.read_ready = false;
                    return self.peer_gone(key, now);
                }
                Ok(n) => {
                    let short = n < self.rbuf.len();
                    if slot.is_tls() {
                        self.feed_tls(key, n, now);
                    } else {
                        self.feed(key, false, n, now);
                        if let Some(slot) = self.slots.get(key).filter(|s| s.conn.is_mid_message()) {
                            quickack(&slot.sock);
                        }
                    }
                    if short {
                        if let Some(s) = self.slots.get_mut(key) {
                            s.read_ready = false;
                        }
                        return;
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
                    self.feed(key, true, len, now);
                }
                if let Some(slot) = self.slots.get(key) {
                    // A TLS record is still incomplete, or the message is: acknowledge now.
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
        self.feed(key, false, n, now);
    }

    /// Feeds `rbuf[..n]` (or the decrypted `pbuf[..n]`) to the connection, dispatching each event to the handler
    /// and applying its commands.
    fn feed(&mut self, key: usize, plain: bool, n: usize, now: Instant) {
        // Even bytes that complete nothing can start a deadline (a message's first fragment) or queue output.
        self.mark_dirty(key);
        let mut off = 0;
        loop {
            let Server { slots, handler, queue, rbuf, pbuf, config, contexts, .. } = self;
            let input = if plain { pbuf } else { rbuf };
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
            let mut ctx = Ctx::new(id, slot.peer, queue);
            let mut panicked = false;
            match ev {
                Event::Upgrade(req) => {
                    if guarded(id, "on_open", || handler.on_open(&mut ctx, &req)).is_none() {
                        ctx.decision =
                            Some(crate::handler::Refusal { status: 500, body: b"internal error\n".to_vec() });
                    }
                    let (refusal, protocol) = (ctx.decision.take(), ctx.protocol.take());
                    match refusal {
                        Some(r) => {
                            let headers = [("Content-Type", "text/plain; charset=utf-8")];
                            let _ = slot.conn.reject(r.status, &headers, &r.body, now);
                        }
                        None => {
                            let protocol = protocol.filter(|p| req.protocols().any(|o| o == p));
                            let _ = slot.conn.accept(protocol.as_deref(), *contexts < config.deflate.max_contexts);
                            slot.opened = true;
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
                    if !config.prod {
                        log::debug!(target: "wskit::server", "{id} {} handshake refused ({}): {e}", slot.peer, e.status());
                    }
                }
                Event::Message(m) => panicked = guarded(id, "on_message", || handler.on_message(&mut ctx, m)).is_none(),
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
            if !self.config.prod {
                if let Some(slot) = self.slots.get(key) {
                    slot.conn.debug_check_invariants();
                }
            }
            self.mark_dirty(key);
            self.apply_commands(now);
            if off >= n {
                break;
            }
        }
        if let Some(slot) = self.slots.get_mut(key) {
            slot.conn.reclaim();
        }
    }

    fn apply_commands(&mut self, now: Instant) {
        if self.queue.cmds.is_empty() {
            return;
        }
        let Server { slots, queue, dirty, stop, pool, .. } = self;
        let mut touch = |key: usize, slot: &mut Slot| {
            if !slot.dirty {
                slot.dirty = true;
                dirty.push(key);
            }
        };
        for cmd in &queue.cmds {
            match *cmd {
                Cmd::Message { to, text, start, end } => {
                    if let Some((key, slot)) = slot_of(slots, to) {
                        let bytes = &queue.arena[start..end];
                        // Text came in as &str, so it is UTF-8.
                        let msg = if text {
                            Message::Text(std::str::from_utf8(bytes).unwrap_or_default())
                        } else {
                            Message::Binary(bytes)
                        };
                        if let Err(e) = slot.conn.send_with(msg, pool) {
                            log::debug!(target: "wskit::server", "send to {to}: {e}");
                        }
                        touch(key, slot);
                    }
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
                    }
                }
                Cmd::Broadcast { text, except, start, end } => {
                    let mut prepared = PreparedMessage::new(text, &queue.arena[start..end]);
                    for (key, slot) in slots.iter_mut() {
                        if slot.opened && slot.conn.is_open() && Some(conn_id(key, slot.gen)) != except {
                            let _ = slot.conn.send_prepared(&mut prepared, pool);
                            touch(key, slot);
                        }
                    }
                }
                Cmd::Stop => stop.store(true, Ordering::SeqCst),
            }
        }
        queue.clear();
    }

    /// Writes what the connection has queued; false if the socket failed.
    fn flush(slot: &mut Slot) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = slot.tls.as_mut() {
            // Plaintext goes through TLS; after the WebSocket close, close_notify goes before TCP closes.
            if slot.conn.wants_write() {
                tls.send(slot.conn.out());
                let n = slot.conn.out().len();
                slot.conn.consume_out(n);
            }
            if slot.conn.is_finished() {
                tls.close_notify();
            }
            let Some(n) = write_burst(&mut slot.sock, tls.out()) else { return false };
            tls.consume_out(n);
            return true;
        }
        let Some(n) = write_burst(&mut slot.sock, slot.conn.out()) else { return false };
        slot.conn.consume_out(n);
        true
    }

    /// Flushes, closes and re-arms every connection touched this turn.
    fn finish_turn(&mut self, now: Instant) {
        while let Some(key) = self.dirty.pop() {
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            slot.dirty = false;
            if slot.draining.is_some() {
                continue;
            }
            if !Self::flush(slot) {
                self.peer_gone(key, now);
                continue;
            }
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
            let resume = slot.read_ready && slot.wants_read(self.config.write_high_water);
            self.schedule(key);
            if resume {
                self.do_read(key, now);
            }
        }
    }

    /// The connection is over and its output written: tell the handler, send FIN, and drain.
    fn finish(&mut self, key: usize, now: Instant) {
        let slot = &mut self.slots[key];
        let timed_out = matches!(slot.conn.close_status(), CloseStatus::TimedOut(TimeoutKind::Handshake));
        self.notify_close(key);
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if timed_out || slot.sock.shutdown(Shutdown::Write).is_err() {
            return self.remove(key);
        }
        slot.draining = Some(now + self.config.close_timeout);
        self.schedule(key);
    }

    /// The peer closed TCP or the socket failed.
    fn peer_gone(&mut self, key: usize, _now: Instant) {
        if let Some(slot) = self.slots.get_mut(key) {
            let _ = Self::flush(slot);
        }
        self.notify_close(key);
        self.remove(key);
    }

    fn notify_close(&mut self, key: usize) {
        let Server { slots, handler, queue, .. } = self;
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        if !slot.opened {
            return;
        }
        slot.opened = false;
        let status = slot.conn.close_status();
        if !self.config.prod {
            log::debug!(target: "wskit::server", "{} {} closed: {status:?}", conn_id(key, slot.gen), slot.peer);
        }
        let mut ctx = Ctx::new(conn_id(key, slot.gen), slot.peer, queue);
        let id = ctx.id;
        guarded(id, "on_close", || handler.on_close(&mut ctx, &status));
        self.apply_commands(Instant::now());
    }

    fn remove(&mut self, key: usize) {
        if self.slots.contains(key) {
            let mut slot = self.slots.remove(key);
            if slot.deflate {
                self.contexts -= 1;
            }
            let _ = self.poll.registry().deregister(&mut slot.sock);
        }
    }

    fn schedule(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let next = slot.draining.or_else(|| slot.conn.next_deadline());
        if let Some(d) = next {
            if slot.scheduled.map_or(true, |s| d < s) {
                slot.scheduled = Some(d);
                self.timers.push(Reverse((d, key, slot.gen)));
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, key, gen))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
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
