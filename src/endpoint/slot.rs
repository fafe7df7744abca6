//! A connection as the endpoint holds it (its phase, its read and write flags, what it holds), and the small
//! pieces the rest is built from: the buffer pool, the table entry, the handler guard.

use super::*;

/// Where a connection is in its life, as the endpoint sees it (the WebSocket's own states are the
/// [`Connection`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepted with `proxy_protocol` on: its PROXY header has not arrived whole yet (a part that came in an
    /// earlier read waits in `Endpoint::proxy_partial`).
    Proxy,
    /// The opening handshake: the request head, the handler's decision, or a plain HTTP answer.
    Handshake,
    /// `on_open` accepted it: `on_close` is owed (closing included).
    Open,
    /// Over and reported to the handler: it is about to drain or go.
    Done,
    /// Over, reported, its output written: our FIN is sent, and input is discarded until the peer's FIN or the
    /// deadline its timer is armed for (`Slot::scheduled`, set when draining begins and never changed after).
    Draining,
}

/// A connection's read and write conditions: independent of each other and of the phase, so flags rather than
/// states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Flags(u16);

impl Flags {
    /// A readable edge came and the socket may still hold bytes.
    pub(super) const READ_READY: u16 = 1;
    /// The peer's FIN has been announced (EPOLLRDHUP): read until EOF instead of stopping at a short read.
    pub(super) const READ_CLOSED: u16 = 1 << 1;
    /// In the backlog: it is read there, at its place, not when an event comes.
    pub(super) const DEFERRED: u16 = 1 << 2;
    /// The handler paused reading ([`Ctx::pause_reading`]).
    pub(super) const PAUSED: u16 = 1 << 3;
    /// Not read from while the loop is under memory pressure (it holds much); read again when it ends.
    pub(super) const PRESSED: u16 = 1 << 4;
    /// In the dirty list for this turn.
    pub(super) const DIRTY: u16 = 1 << 5;
    /// The last write stopped short (the socket is full): no write is tried again before it is writable, so a
    /// publish to a thousand subscribers that do not read costs no thousand failing sends.
    pub(super) const BLOCKED: u16 = 1 << 6;
    /// The send queue passed the high-water mark: `on_drain` is owed when it falls under the low-water mark.
    pub(super) const OVER_HIGH: u16 = 1 << 7;
    /// Negotiated permessage-deflate (counts against `deflate.max_contexts`).
    pub(super) const DEFLATE: u16 = 1 << 8;
    /// The shell was asked for writable events too.
    pub(super) const WRITE_INTEREST: u16 = 1 << 9;
    /// The peer is gone: one last write of what is queued, then the connection is removed.
    pub(super) const GONE: u16 = 1 << 10;
    /// Past its rate limit (`Config::rate_limit`, policy `pause`): not read until it is back within it.
    pub(super) const THROTTLED: u16 = 1 << 11;
    /// Its messages are charged against the rate limits (`Config::rate_limit` is on).
    pub(super) const RATED: u16 = 1 << 12;
    /// A socket speaking HTTP/2: its streams are sessions of their own (`Endpoint::h2`).
    pub(super) const H2: u16 = 1 << 13;
    /// A session on an HTTP/2 stream: it has no socket; its bytes go through its socket's HTTP/2 connection
    /// (`Endpoint::links`).
    pub(super) const STREAM: u16 = 1 << 14;
    /// The last read went straight into a large frame's message and brought nothing after it: the next read asks
    /// only for the rest of that frame and 4 KiB (`read::HEAD_READ`), so the next frame's header comes in without
    /// a copy of its payload through the read buffer. (A read that went on past the frame brought that header.)
    pub(super) const LARGE: u16 = 1 << 15;

    #[inline]
    pub(super) fn has(self, f: u16) -> bool {
        self.0 & f != 0
    }
    #[inline]
    pub(super) fn set(&mut self, f: u16) {
        self.0 |= f;
    }
    #[inline]
    pub(super) fn clear(&mut self, f: u16) {
        self.0 &= !f;
    }
}

/// A connection's TLS layer, if any (nothing without the `tls` feature).
#[cfg(feature = "tls")]
pub(super) type TlsBox = Box<crate::tls::TlsLayer>;
#[cfg(not(feature = "tls"))]
pub(super) type TlsBox = ();

/// One connection of the endpoint.
pub(super) struct Slot {
    pub(super) conn: Connection,
    pub(super) peer: crate::peer::Peer,
    pub(super) phase: Phase,
    pub(super) flags: Flags,
    /// The earliest deadline this slot has in the timer table, as the table keeps it (8 bytes where an
    /// `Option<Instant>` takes 16; `timers::NOT_ARMED`: none).
    pub(super) scheduled: i64,
    /// TLS under the WebSocket (wss).
    #[cfg(feature = "tls")]
    pub(super) tls: Option<Box<crate::tls::TlsLayer>>,
    /// The kernel send buffer's size in KiB (rounded up; 64 MiB at most), measured when the socket was last found
    /// full (it is full then, so this is what the kernel holds for it: counted in the memory budget). With the
    /// peer's 23 bytes and no alignment between them, the slot is 176 bytes without padding.
    pub(super) sndbuf_kib: u16,
    /// Bytes last counted for it in the loop's memory total ([`Endpoint::held`]).
    pub(super) held: u32,
    /// Topics this connection is subscribed to (one word while none).
    pub(super) topics: crate::spill::Spill<Box<str>>,
}

impl Slot {
    #[cfg(feature = "tls")]
    pub(super) fn new(
        conn: Connection,
        peer: SocketAddr,
        phase: Phase,
        tls: Option<Box<crate::tls::TlsLayer>>,
    ) -> Slot {
        Slot {
            conn,
            peer: crate::peer::Peer::new(peer),
            phase,
            flags: Flags::default(),
            scheduled: super::timers::NOT_ARMED,
            tls,
            sndbuf_kib: 0,
            held: 0,
            topics: Default::default(),
        }
    }
    #[cfg(not(feature = "tls"))]
    pub(super) fn new(conn: Connection, peer: SocketAddr, phase: Phase, _tls: Option<()>) -> Slot {
        Slot {
            conn,
            peer: crate::peer::Peer::new(peer),
            phase,
            flags: Flags::default(),
            scheduled: super::timers::NOT_ARMED,
            sndbuf_kib: 0,
            held: 0,
            topics: Default::default(),
        }
    }
    /// `on_close` is owed.
    #[inline]
    pub(super) fn is_open_phase(&self) -> bool {
        self.phase == Phase::Open
    }
    #[inline]
    pub(super) fn is_draining(&self) -> bool {
        self.phase == Phase::Draining
    }
    /// Ciphertext waiting for the socket.
    pub(super) fn tls_pending(&self) -> usize {
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
    pub(super) fn wants_write(&self) -> bool {
        self.conn.wants_write() || self.tls_pending() > 0
    }
    /// Read on: the connection expects input and neither layer has too much queued for the peer.
    pub(super) fn wants_read(&self, high_water: usize) -> bool {
        !self.flags.has(Flags::PAUSED | Flags::THROTTLED) && self.conn.wants_read() && self.tls_pending() < high_water
    }
    /// Bytes waiting for the peer in both layers.
    pub(super) fn queued(&self) -> usize {
        self.conn.queued() + self.tls_pending()
    }
    /// Over, with everything written (the TLS `close_notify` included).
    pub(super) fn finished(&self) -> bool {
        self.conn.is_finished() && self.tls_pending() == 0
    }
    pub(super) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }
    /// The socket is full: no write until it is writable. Returns whether it just became so (its kernel buffer
    /// is then measured, for the budget).
    pub(super) fn set_blocked(&mut self) -> bool {
        let was = self.flags.has(Flags::BLOCKED);
        self.flags.set(Flags::BLOCKED);
        !was
    }
    /// Nothing for the end of the turn to do but its timer (the steady echo, after its answer went out): open,
    /// nothing queued, held or owed, no write interest, not mid-message, no compression or TLS to count, its
    /// socket drained, a socket's own (a session on an HTTP/2 stream always has its flush: input it stashed while
    /// paused is read again from there). `counted`: its bytes queued as last counted.
    #[inline]
    pub(super) fn is_quiet(&self, counted: usize) -> bool {
        self.owes_nothing(counted)
            && !self.conn.wants_write()
            && self.conn.is_open()
            && !self.conn.is_mid_message()
            && !self.conn.holds_buffer()
    }

    /// [`Slot::is_quiet`]'s part that the slot answers: nothing queued or held, no flag that asks for work, open
    /// and plain.
    #[inline]
    pub(super) fn owes_nothing(&self, counted: usize) -> bool {
        const BUSY: u16 = Flags::READ_READY
            | Flags::BLOCKED
            | Flags::OVER_HIGH
            | Flags::DEFLATE
            | Flags::WRITE_INTEREST
            | Flags::GONE
            | Flags::PAUSED
            | Flags::PRESSED
            | Flags::STREAM;
        counted == 0 && self.held == 0 && self.flags.0 & BUSY == 0 && self.phase == Phase::Open && !self.is_tls()
    }

    /// Drops everything queued for the peer in both layers (it is dropped for not reading).
    pub(super) fn drop_slow(&mut self, queued: usize, now: Instant) {
        self.conn.drop_slow(queued, now);
        #[cfg(feature = "tls")]
        if let Some(t) = self.tls.as_mut() {
            t.consume_out(usize::MAX);
        }
    }
}

impl BufPool {
    pub(super) fn pop(&mut self) -> Option<Vec<u8>> {
        let b = self.bufs.pop()?;
        self.bytes -= b.capacity();
        self.low = self.low.min(self.bufs.len());
        Some(b)
    }

    pub(super) fn push(&mut self, b: Vec<u8>) {
        if b.capacity() <= POOL_BUF_MAX && self.bytes + b.capacity() <= POOL_BYTES {
            self.bytes += b.capacity();
            self.bufs.push(b);
        }
    }

    /// Tests only: how many buffers the pool holds, their bytes, and its low-water mark.
    #[cfg(test)]
    pub(super) fn shape(&self) -> (usize, usize, usize) {
        (self.bufs.len(), self.bytes, self.low)
    }

    /// Frees the buffers that went unused for a whole interval (the oldest ones: the pool is a stack).
    pub(super) fn trim(&mut self, now: Instant) {
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

/// The loop's pool of large buffers (see [`POOL_BYTES`]).
#[derive(Debug, Default)]
pub(super) struct BufPool {
    bufs: Vec<Vec<u8>>,
    /// Sum of the pooled buffers' capacities.
    bytes: usize,
    /// The fewest buffers the pool held since the last trim: that many went unused all along.
    low: usize,
    /// When the next trim is due, while the pool holds anything.
    pub(super) next_trim: Option<Instant>,
}

/// A queued message's bytes as a [`Message`]: text was handed over as `&str` (or validated on arrival), so it is
/// UTF-8.
pub(super) fn message(text: bool, bytes: &[u8]) -> Message<'_> {
    if text {
        Message::Text(std::str::from_utf8(bytes).unwrap_or_default())
    } else {
        Message::Binary(bytes)
    }
}

/// Lends `conn` a pooled buffer, if the pool has one and the connection holds none. Inlined: it runs before every
/// read is fed, and the pool is usually empty.
#[inline]
pub(super) fn lend(bufs: &mut BufPool, conn: &mut Connection) {
    if !bufs.bufs.is_empty() {
        lend_one(bufs, conn);
    }
}

#[inline(never)]
fn lend_one(bufs: &mut BufPool, conn: &mut Connection) {
    if let Some(b) = bufs.pop() {
        if let Some(b) = conn.lend_buffer(b) {
            bufs.push(b);
        }
    }
}

/// Takes back the connection's spare buffer into the pool (or frees it, past the pool's bounds). Inlined: it runs
/// after every read burst and every flush, and usually finds nothing to take.
#[inline]
pub(super) fn take_back(bufs: &mut BufPool, conn: &mut Connection) {
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

/// Runs one handler callback; a panic is caught and logged, and costs only the connection it ran for. Always
/// inlined (26 instructions an echo less than a call: the closure's captures stay in registers); the logging is
/// out of line.
#[inline(always)]
pub(super) fn guarded<R>(id: ConnId, what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            log_panic(id, what, p);
            None
        }
    }
}

/// Logs a handler's panic with its message.
#[cold]
#[inline(never)]
fn log_panic(id: ConnId, what: &str, p: Box<dyn std::any::Any + Send>) {
    let msg = p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
    log::error!(target: "wskit::server", "{id}: handler panicked in {what}: {}", msg.unwrap_or("(no message)"));
}

/// [`Endpoint::mark_dirty`] for a slot at hand.
#[inline]
pub(super) fn touch(dirty: &mut Vec<usize>, key: usize, slot: &mut Slot) {
    if !slot.flags.has(Flags::DIRTY) {
        slot.flags.set(Flags::DIRTY);
        dirty.push(key);
    } else if dirty.last() != Some(&key) {
        dirty.push(key);
    }
}

/// What `max_connections_per_ip` counts by: an IPv4 address (an IPv4-mapped IPv6 one as IPv4), or an IPv6 /64
/// network — one host is given a /64 and can use any address in it.
pub(super) fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// After a flush: a connection's queued bytes (the gauge, and the table) and what it holds for the budget
/// (`held`, the loop's total). A full socket holds its kernel send buffer too. Held bytes are recounted unless
/// nothing can have changed them: a connection that holds nothing and has nothing queued, in flight or compressed
/// (the steady echo) is skipped. Returns the bytes queued.
pub(super) fn recount(slot: &mut Slot, entry: &mut Entry, m: &Metrics, held: &mut usize) -> usize {
    let queued = slot.queued();
    let before = entry.queued();
    if queued != before {
        let counted = entry.set_queued(queued);
        Metrics::add(&m.queued_bytes, counted as u64);
        Metrics::sub(&m.queued_bytes, before as u64);
    }
    let blocked = slot.flags.has(Flags::BLOCKED);
    if slot.held != 0
        || queued != 0
        || blocked
        || slot.conn.is_mid_message()
        || slot.flags.has(Flags::DEFLATE)
        || slot.is_tls()
    {
        let kernel = if blocked { usize::from(slot.sndbuf_kib) << 10 } else { 0 };
        let now = (slot.conn.held() + slot.tls_held() + kernel).min(u32::MAX as usize) as u32;
        *held = *held + now as usize - slot.held as usize;
        slot.held = now;
    }
    queued
}

/// Sets a slot's table entry.
pub(super) fn set_entry(table: &mut Vec<Entry>, key: usize, e: Entry) {
    if table.len() <= key {
        table.resize(key + 1, Entry::default());
    }
    table[key] = e;
}

/// Takes `id` off `topic`'s subscriber list (the list goes when empty).
pub(super) fn unsubscribe(
    topics: &mut HashMap<Box<str>, Vec<ConnId>>,
    topic: &str,
    id: ConnId,
    group: Option<&dyn Siblings>,
) {
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
#[inline]
pub(super) fn slot_of<'s>(slots: &'s mut Slab<Slot>, table: &[Entry], id: ConnId) -> Option<(usize, &'s mut Slot)> {
    let (key, gen) = split_id(id.0);
    if table.get(key).is_some_and(|e| e.gen == gen) {
        slots.get_mut(key).map(|s| (key, s))
    } else {
        None
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

    /// An idle connection's slot is 176 bytes (the send queue, the lifetime's end and how it ended are boxed
    /// while they exist, a closing reader and the deflate offer of an undecided upgrade too); the table entry
    /// is 8 bytes, its open bit and queued count apart, the count saturating at 2 GiB - 1.
    #[test]
    fn a_slot_is_176_bytes_and_its_table_entry_8() {
        let tls = if cfg!(feature = "tls") { 8 } else { 0 };
        assert_eq!(std::mem::size_of::<crate::conn::Connection>(), 120);
        assert_eq!(std::mem::size_of::<Slot>(), 168 + tls);
        assert_eq!(std::mem::size_of::<Entry>(), 8);
        let mut e = Entry::new(u32::MAX);
        e.set_open(true);
        assert_eq!((e.open(), e.queued()), (true, 0));
        assert_eq!(e.set_queued(5 << 30), (1 << 31) - 1, "saturates");
        assert_eq!((e.open(), e.queued(), e.gen), (true, (1 << 31) - 1, u32::MAX));
        e.set_open(false);
        assert_eq!(e.set_queued(7), 7);
        assert_eq!((e.open(), e.queued()), (false, 7));
    }
}
