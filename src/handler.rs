//! What the application implements ([`Handler`]) and what it is handed in each callback ([`Ctx`]).
//!
//! A callback never holds a borrow into the server's connection table: everything it asks for through [`Ctx`]
//! (send, close, broadcast, refuse the upgrade, stop) is queued and carried out by the loop after the callback
//! returns, in the order asked. A send to a connection that is gone by then is dropped silently.

use crate::close::CloseCode;
use crate::conn::{CloseStatus, Message};
use crate::error::ProtocolError;
use crate::frame::OpCode;
use crate::handshake::Request;
use std::fmt;
use std::net::SocketAddr;

/// Names one connection for as long as it lives; a later connection that reuses the slot gets another id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The raw value (slot and generation).
    pub fn as_u64(self) -> u64 {
        self.0
    }
    /// A small integer to key a table of sockets by (the endpoint's slot: low 32 bits). Another connection gets
    /// it once this one is gone; the id as a whole is never reused.
    pub fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    /// The slot in its loop's connection table.
    pub(crate) fn slot(self) -> usize {
        self.index()
    }
    /// The generation that tells this connection from earlier ones in the same slot (high 32 bits).
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The index of its loop in a cluster (the top 8 bits of the generation).
    pub(crate) fn loop_index(self) -> u32 {
        (self.0 >> 56) as u32
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.slot(), self.generation())
    }
}

/// A plain HTTP response, for requests that do not ask for an upgrade (see [`Handler::on_http`]).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra header lines (`Content-Length` and `Connection: close` are added).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a status, a content type and a body.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }
}

/// The application's side of the server. Every method has a default that does nothing, so a handler implements
/// only what it needs.
pub trait Handler {
    /// A client asked to upgrade. Call [`Ctx::reject`] to refuse it with an HTTP status, else it is accepted (with
    /// the subprotocol chosen by [`Ctx::accept_protocol`], if any) when this returns.
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        let _ = (ctx, req);
    }
    /// A complete message arrived (text already validated as UTF-8).
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = (ctx, msg);
    }
    /// A ping arrived (its pong is already queued).
    fn on_ping(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) {
        let _ = (ctx, payload);
    }
    /// A pong arrived.
    fn on_pong(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) {
        let _ = (ctx, payload);
    }
    /// The peer broke the protocol or a limit; the close frame answering it is already queued. `on_close` follows.
    fn on_error(&mut self, ctx: &mut Ctx<'_>, err: &ProtocolError) {
        let _ = (ctx, err);
    }
    /// The connection ended (called once for every connection that `on_open` accepted or deferred). Sends to it
    /// are dropped.
    fn on_close(&mut self, ctx: &mut Ctx<'_>, status: &CloseStatus) {
        let _ = (ctx, status);
    }
    /// This connection's send queue fell back under the low-water mark after it had passed the high-water mark
    /// (see [`Config::write_high_water`](crate::Config::write_high_water)): a good time to send more.
    fn on_drain(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }
    /// A timer set with [`Ctx::set_timer`] fired (its token is the one given).
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: u64) {
        let _ = (ctx, timer);
    }
    /// A plain HTTP request (no upgrade asked) arrived on the WebSocket port. Return a response, or `None` for
    /// `426 Upgrade Required`. The connection closes after the response.
    fn on_http(&mut self, ctx: &mut Ctx<'_>, req: &Request) -> Option<Response> {
        let _ = (ctx, req);
        None
    }
}

/// Several small handlers used as one (the seed's handler list): each callback goes to each handler in order;
/// `on_http` answers with the first handler that returns a response; `on_open` stops at the first handler that
/// refuses ([`Ctx::reject`]) or accepts outright ([`Ctx::accept`]); a handler that does neither passes on.
#[derive(Default)]
pub struct Handlers(pub Vec<Box<dyn Handler>>);

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handlers({} handlers)", self.0.len())
    }
}

impl Handlers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a handler.
    pub fn with(mut self, h: impl Handler + 'static) -> Self {
        self.0.push(Box::new(h));
        self
    }
}

impl Handler for Handlers {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        for h in &mut self.0 {
            h.on_open(ctx, req);
            if ctx.opening.as_ref().is_some_and(|o| o.settled()) {
                return;
            }
        }
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        for h in &mut self.0 {
            h.on_message(ctx, msg);
        }
    }
    fn on_ping(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) {
        for h in &mut self.0 {
            h.on_ping(ctx, payload);
        }
    }
    fn on_pong(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) {
        for h in &mut self.0 {
            h.on_pong(ctx, payload);
        }
    }
    fn on_error(&mut self, ctx: &mut Ctx<'_>, err: &ProtocolError) {
        for h in &mut self.0 {
            h.on_error(ctx, err);
        }
    }
    fn on_drain(&mut self, ctx: &mut Ctx<'_>) {
        for h in &mut self.0 {
            h.on_drain(ctx);
        }
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: u64) {
        for h in &mut self.0 {
            h.on_timer(ctx, timer);
        }
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, status: &CloseStatus) {
        for h in &mut self.0 {
            h.on_close(ctx, status);
        }
    }
    fn on_http(&mut self, ctx: &mut Ctx<'_>, req: &Request) -> Option<Response> {
        self.0.iter_mut().find_map(|h| h.on_http(ctx, req))
    }
}

/// A queued request from a callback; byte ranges point into the queue's arena.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmd {
    /// A whole message (compressed when deflate is in force).
    Message {
        to: ConnId,
        text: bool,
        start: usize,
        end: usize,
    },
    /// The message `on_message` was handed, sent back to its own connection: its bytes are still where they
    /// were read (the read buffer, or the connection's assembled message), so they are not copied into the arena.
    Echo {
        to: ConnId,
        text: bool,
        len: usize,
    },
    /// A raw frame, sent as given.
    Frame {
        to: ConnId,
        fin: bool,
        op: OpCode,
        start: usize,
        end: usize,
    },
    Close {
        to: ConnId,
        code: CloseCode,
        start: usize,
        end: usize,
    },
    Broadcast {
        text: bool,
        except: Option<ConnId>,
        start: usize,
        end: usize,
    },
    /// Subscribe (`on`) or unsubscribe a connection to the topic in `arena[start..end]`.
    Subscribe {
        to: ConnId,
        on: bool,
        start: usize,
        end: usize,
    },
    /// A message to every subscriber of a topic: topic in `arena[start..mid]`, message in `arena[mid..end]`.
    Publish {
        text: bool,
        except: Option<ConnId>,
        /// Where it was published: here (`Local`, forwarded to the other loops and the bridge), on another loop,
        /// or by the bridge (both delivered here only).
        origin: Origin,
        start: usize,
        mid: usize,
        end: usize,
    },
    /// Start (`repeat`: every `after`) or replace the connection's timer `token`.
    Timer {
        to: ConnId,
        token: u64,
        after: std::time::Duration,
        repeat: bool,
    },
    CancelTimer {
        to: ConnId,
        token: u64,
    },
    /// Stop (`on`) or resume reading from a connection's socket.
    Pause {
        to: ConnId,
        on: bool,
    },
    Stop,
    /// The answer to an upgrade `on_open` deferred ([`Deferred`]): accept (`status` 0, the subprotocol in
    /// `arena[start..end]`, if any) or refuse with `status` (the body in the arena).
    Decide {
        to: ConnId,
        status: u16,
        start: usize,
        end: usize,
    },
}

/// Where a publish came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Loop,
    Bridge,
}

/// The command queue: commands plus one arena for their bytes, reused from turn to turn (no allocation per send
/// in steady state).
#[derive(Debug, Default)]
pub(crate) struct Commands {
    pub(crate) cmds: Vec<Cmd>,
    pub(crate) arena: Vec<u8>,
}

impl Commands {
    pub(crate) fn push_bytes(&mut self, b: &[u8]) -> (usize, usize) {
        let start = self.arena.len();
        self.arena.extend_from_slice(b);
        (start, self.arena.len())
    }
    /// Queues a message to one connection (for a callback, a `ServerHandle` or a sibling loop alike).
    pub(crate) fn message(&mut self, to: ConnId, text: bool, payload: &[u8]) {
        let (start, end) = self.push_bytes(payload);
        self.cmds.push(Cmd::Message { to, text, start, end });
    }
    /// Queues the closing handshake of one connection.
    pub(crate) fn close(&mut self, to: ConnId, code: CloseCode, reason: &str) {
        let (start, end) = self.push_bytes(reason.as_bytes());
        self.cmds.push(Cmd::Close { to, code, start, end });
    }
    /// Queues a message to every open connection but `except`.
    pub(crate) fn broadcast(&mut self, text: bool, except: Option<ConnId>, payload: &[u8]) {
        let (start, end) = self.push_bytes(payload);
        self.cmds.push(Cmd::Broadcast { text, except, start, end });
    }
    /// Queues a publish to a topic's subscribers.
    pub(crate) fn publish(&mut self, topic: &str, text: bool, except: Option<ConnId>, origin: Origin, payload: &[u8]) {
        let (start, mid) = self.push_bytes(topic.as_bytes());
        let (_, end) = self.push_bytes(payload);
        self.cmds.push(Cmd::Publish { text, except, origin, start, mid, end });
    }
    /// Queues the answer to a deferred upgrade (`status` 0: accept, with the subprotocol in `bytes`).
    pub(crate) fn decide(&mut self, to: ConnId, status: u16, bytes: &[u8]) {
        let (start, end) = self.push_bytes(bytes);
        self.cmds.push(Cmd::Decide { to, status, start, end });
    }
    pub(crate) fn clear(&mut self) {
        self.cmds.clear();
        self.arena.clear();
        if self.arena.capacity() > 1 << 20 {
            self.arena = Vec::new();
        }
    }
}

/// The refusal asked by [`Ctx::reject`].
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Where a [`Deferred`] sends its answer: the inbox of the loop that holds the connection.
pub(crate) trait Inbox: Send + Sync {
    fn decide(&self, to: ConnId, status: u16, bytes: &[u8]);
}

/// An upgrade `on_open` deferred ([`Ctx::defer_upgrade`]): answer it from any thread, once, within the
/// handshake timeout (`handshake_timeout`, counted from the request's arrival; past it the connection is
/// dropped and `on_close` gets [`CloseStatus::TimedOut`]). Dropped unanswered, it
/// refuses the upgrade with 503. For an upgrade that waits on another service (authentication, a quota): the
/// loop serves everyone else meanwhile, and reads nothing more from this client until the answer.
#[must_use = "an upgrade deferred and never answered is refused with 503 when this is dropped"]
pub struct Deferred {
    id: ConnId,
    inbox: Option<std::sync::Arc<dyn Inbox>>,
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred").field("id", &self.id).finish()
    }
}

impl Deferred {
    /// The connection this upgrade will open.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// Accepts the upgrade, with `protocol` if it is one the client offered (else the one the server's
    /// `subprotocols` preference chose, if any). The limits are checked again (`max_connections`,
    /// `max_connections_per_ip`: others may have opened meanwhile); past them it is refused with 503 / 429.
    pub fn accept(mut self, protocol: Option<&str>) {
        if let Some(inbox) = self.inbox.take() {
            inbox.decide(self.id, 0, protocol.unwrap_or("").as_bytes());
        }
    }
    /// Refuses the upgrade with this HTTP status (400–599; others become 500) and body.
    pub fn reject(mut self, status: u16, body: &str) {
        if let Some(inbox) = self.inbox.take() {
            inbox.decide(self.id, refusal_status(status), body.as_bytes());
        }
    }
}

/// The status a deferred upgrade is refused with: an HTTP error (400–599) as given, anything else 500 (never 0,
/// which stands for an accept in the answer).
pub(crate) fn refusal_status(status: u16) -> u16 {
    if (400..600).contains(&status) {
        status
    } else {
        500
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            inbox.decide(self.id, 503, b"upgrade not answered\n");
        }
    }
}

/// What became of a message handed to [`Ctx::send`] and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued; the connection's queue is under the high-water mark.
    Queued,
    /// Queued, but the connection's queue is over the high-water mark (`write_high_water`): the peer reads
    /// slower than we send. Slow down until [`Handler::on_drain`]; past `max_queued_bytes` it is dropped.
    Backpressure,
    /// Not queued: the connection is not open, or the message was droppable and the queue over the high-water
    /// mark.
    Dropped,
}

/// A connection's entry in its loop's table: its generation, whether it is open for sends, and the bytes queued
/// for it as of its last flush (what [`Ctx`] computes send statuses from, without touching the connection). 8
/// bytes: whether it is open is the top bit of the second word, the bytes queued the rest (counted up to 2 GiB:
/// past that a connection is over any sane high-water mark, and the `queued_bytes` gauge counts it as 2 GiB).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Entry {
    pub(crate) gen: u32,
    state: u32,
}

impl Entry {
    const OPEN: u32 = 1 << 31;

    /// A new connection's entry: not open yet, nothing queued.
    pub(crate) fn new(gen: u32) -> Entry {
        Entry { gen, state: 0 }
    }

    /// Open for sends (between `on_open` and the close).
    #[inline]
    pub(crate) fn open(&self) -> bool {
        self.state & Self::OPEN != 0
    }

    pub(crate) fn set_open(&mut self, open: bool) {
        self.state = if open { self.state | Self::OPEN } else { self.state & !Self::OPEN };
    }

    /// The bytes queued as of the last flush (at most 2 GiB - 1).
    #[inline]
    pub(crate) fn queued(&self) -> usize {
        (self.state & !Self::OPEN) as usize
    }

    /// Records the bytes queued (counted up to 2 GiB - 1); returns what was recorded.
    #[inline]
    pub(crate) fn set_queued(&mut self, queued: usize) -> usize {
        let q = queued.min((Self::OPEN - 1) as usize);
        self.state = self.state & Self::OPEN | q as u32;
        q
    }
}

/// The connection object handed to every callback: who the connection is, and the commands it may give.
pub struct Ctx<'a> {
    pub(crate) id: ConnId,
    pub(crate) peer: crate::peer::Peer,
    pub(crate) queue: &'a mut Commands,
    pub(crate) metrics: &'a crate::metrics::Metrics,
    /// Every connection of the loop by slot, its bytes queued as of the last flush.
    pub(crate) table: &'a [Entry],
    pub(crate) high_water: usize,
    /// Bytes this callback queued to its own connection.
    pub(crate) pending_self: usize,
    /// The connection is gone (`on_close`): sends are dropped.
    pub(crate) closed: bool,
    /// In `on_open`: what it decides.
    pub(crate) opening: Option<&'a mut Opening>,
    /// In `on_message`: the address and length of the message handed over (a send of exactly it back to this
    /// connection becomes [`Cmd::Echo`]).
    pub(crate) echo: Option<(usize, usize)>,
}

/// What `on_open` decides (at hand in `on_open` only, so the other callbacks' [`Ctx`] stays small).
#[derive(Default)]
pub(crate) struct Opening {
    pub(crate) decision: Option<Refusal>,
    pub(crate) protocol: Option<String>,
    pub(crate) accepted: bool,
    /// Where a deferred upgrade's answer goes ([`Ctx::defer_upgrade`]).
    pub(crate) inbox: Option<std::sync::Arc<dyn Inbox>>,
    pub(crate) deferred: bool,
}

impl Opening {
    /// `on_open` refused, accepted outright or deferred: later handlers of a chain are not asked.
    pub(crate) fn settled(&self) -> bool {
        self.decision.is_some() || self.accepted || self.deferred
    }
}

impl fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("id", &self.id).field("peer", &self.peer).finish()
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        id: ConnId,
        peer: crate::peer::Peer,
        queue: &'a mut Commands,
        metrics: &'a crate::metrics::Metrics,
        table: &'a [Entry],
        high_water: usize,
    ) -> Self {
        Ctx { id, peer, queue, metrics, table, high_water, pending_self: 0, closed: false, opening: None, echo: None }
    }

    /// Bytes queued for `to` (as of the last flush, plus what this callback queued to itself), or `None` if it is
    /// not open.
    fn queued_for(&self, to: ConnId) -> Option<usize> {
        let listed = self.table.get(to.slot()).filter(|e| e.gen == to.generation() && e.open()).map(|e| e.queued());
        if to == self.id {
            // During `on_open` the connection is not listed yet, but sends to it go out after the 101.
            return (!self.closed).then(|| listed.unwrap_or(0) + self.pending_self);
        }
        if to.loop_index() != self.id.loop_index() {
            // On a sibling loop of a cluster: handed to that loop, which knows its queue.
            return Some(listed.unwrap_or(0));
        }
        listed
    }

    fn queue_message(&mut self, to: ConnId, msg: Message<'_>, droppable: bool) -> SendStatus {
        let Some(queued) = self.queued_for(to) else { return SendStatus::Dropped };
        if droppable && queued > self.high_water {
            return SendStatus::Dropped;
        }
        let len = msg.as_bytes().len();
        if to == self.id && len > 0 && self.echo == Some((msg.as_bytes().as_ptr() as usize, len)) {
            // The message being handled, back to its sender: no copy into the arena.
            self.queue.cmds.push(Cmd::Echo { to, text: msg.is_text(), len });
        } else {
            self.queue.message(to, msg.is_text(), msg.as_bytes());
        }
        if to == self.id {
            self.pending_self += len;
        }
        if queued + len > self.high_water {
            SendStatus::Backpressure
        } else {
            SendStatus::Queued
        }
    }

    /// The server's counters and gauges (to serve them on `/metrics`, say).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.metrics
    }

    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer.addr()
    }
    /// The peer's IP.
    pub fn peer_ip(&self) -> std::net::IpAddr {
        self.peer.ip()
    }

    /// Logs through the `log` crate, target `wskit::conn`, prefixed with this connection's id and peer.
    pub fn log(&self, level: log::Level, args: fmt::Arguments<'_>) {
        log::log!(target: "wskit::conn", level, "{} {}: {}", self.id, self.peer, args);
    }

    /// Sends a text message to this connection.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.send_to(self.id, Message::Text(text))
    }
    /// Sends a binary message to this connection.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.send_to(self.id, Message::Binary(data))
    }
    /// Sends a message (text or binary) to this connection.
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        self.send_to(self.id, msg)
    }
    /// Sends a message to any connection.
    pub fn send_to(&mut self, to: ConnId, msg: Message<'_>) -> SendStatus {
        self.queue_message(to, msg, false)
    }
    /// Sends a message that may be skipped: when the connection's queue is over the high-water mark it is not
    /// queued ([`SendStatus::Dropped`]) — for updates that a later one supersedes (positions, prices).
    pub fn send_droppable(&mut self, to: ConnId, msg: Message<'_>) -> SendStatus {
        self.queue_message(to, msg, true)
    }
    /// Sends one raw frame to this connection (the seed's "write raw frame"; the caller fragments).
    pub fn send_frame(&mut self, fin: bool, op: OpCode, payload: &[u8]) {
        let (start, end) = self.queue.push_bytes(payload);
        self.queue.cmds.push(Cmd::Frame { to: self.id, fin, op, start, end });
    }
    /// Sends a ping (at most 125 bytes; longer payloads are refused and logged).
    pub fn ping(&mut self, payload: &[u8]) {
        self.send_frame(true, OpCode::Ping, payload);
    }
    /// Starts the closing handshake on this connection with any sendable code and reason.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.close_conn(self.id, code, reason);
    }
    /// Starts the closing handshake on any connection.
    pub fn close_conn(&mut self, to: ConnId, code: CloseCode, reason: &str) {
        self.queue.close(to, code, reason);
    }
    /// Sends a message to every open connection, except `except`; it is compressed at most once per distinct
    /// deflate window among the receivers.
    pub fn broadcast(&mut self, msg: Message<'_>, except: Option<ConnId>) {
        self.queue.broadcast(msg.is_text(), except, msg.as_bytes());
    }
    /// In `on_open`: refuse the upgrade with this HTTP status and body.
    pub fn reject(&mut self, status: u16, body: &str) {
        if let Some(o) = self.opening.as_deref_mut() {
            o.decision = Some(Refusal { status, body: body.as_bytes().to_vec() });
        }
    }
    /// In `on_open`: accept now; later handlers of a [`Handlers`] chain are not asked (they still get the
    /// connection's other callbacks).
    pub fn accept(&mut self) {
        if let Some(o) = self.opening.as_deref_mut() {
            o.accepted = true;
        }
    }
    /// In `on_open`: answer later, from any thread, with the [`Deferred`] this returns (`None` outside
    /// `on_open`). Later handlers of a [`Handlers`] chain are not asked. The connection's other callbacks come
    /// once it is accepted; if it never opens (refused, timed out, dropped at shutdown), `on_close` still comes,
    /// so per-connection state made in `on_open` can go.
    pub fn defer_upgrade(&mut self) -> Option<Deferred> {
        let o = self.opening.as_deref_mut()?;
        let inbox = o.inbox.clone()?;
        o.deferred = true;
        Some(Deferred { id: self.id, inbox: Some(inbox) })
    }
    /// In `on_open`: answer with this subprotocol (it MUST be one the client offered; others are ignored).
    pub fn accept_protocol(&mut self, protocol: &str) {
        if let Some(o) = self.opening.as_deref_mut() {
            o.protocol = Some(protocol.to_string());
        }
    }
    /// Subscribes this connection to `topic` (idempotent); it leaves all its topics when it closes.
    pub fn subscribe(&mut self, topic: &str) {
        self.subscribe_conn(self.id, topic, true);
    }
    /// Unsubscribes this connection from `topic`.
    pub fn unsubscribe(&mut self, topic: &str) {
        self.subscribe_conn(self.id, topic, false);
    }
    /// Subscribes (`on`) or unsubscribes any connection.
    pub fn subscribe_conn(&mut self, to: ConnId, topic: &str, on: bool) {
        let (start, end) = self.queue.push_bytes(topic.as_bytes());
        self.queue.cmds.push(Cmd::Subscribe { to, on, start, end });
    }
    /// Sends a message to every subscriber of `topic` (this connection too, if subscribed). It is compressed at
    /// most once per distinct deflate window among them; messages published to one topic arrive in order.
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) {
        self.queue.publish(topic, msg.is_text(), None, Origin::Local, msg.as_bytes());
    }
    /// [`Ctx::publish`] to every subscriber but this connection.
    pub fn publish_others(&mut self, topic: &str, msg: Message<'_>) {
        self.queue.publish(topic, msg.is_text(), Some(self.id), Origin::Local, msg.as_bytes());
    }
    /// Stops reading from this connection's socket, so TCP pushes back on the client; nobody else is affected.
    /// Takes effect at the next read: messages already received in the same read are still delivered.
    pub fn pause_reading(&mut self) {
        self.queue.cmds.push(Cmd::Pause { to: self.id, on: true });
    }
    /// Resumes reading from a connection paused with [`Ctx::pause_reading`].
    pub fn resume_reading(&mut self, to: ConnId) {
        self.queue.cmds.push(Cmd::Pause { to, on: false });
    }
    /// Calls [`Handler::on_timer`] for this connection with `token` once, `after` from now. Setting a token
    /// again replaces its timer; timers end with the connection.
    pub fn set_timer(&mut self, token: u64, after: std::time::Duration) {
        self.queue.cmds.push(Cmd::Timer { to: self.id, token, after, repeat: false });
    }
    /// Calls [`Handler::on_timer`] for this connection with `token` every `every` until cancelled.
    pub fn set_interval(&mut self, token: u64, every: std::time::Duration) {
        self.queue.cmds.push(Cmd::Timer { to: self.id, token, after: every, repeat: true });
    }
    /// Cancels this connection's timer `token`.
    pub fn cancel_timer(&mut self, token: u64) {
        self.queue.cmds.push(Cmd::CancelTimer { to: self.id, token });
    }
    /// Stops the server after this turn of the loop.
    pub fn stop_server(&mut self) {
        self.queue.cmds.push(Cmd::Stop);
    }
}
