//! The slot and the small pieces the shell is built from: the buffer pool, where an echoed message lies,
//! token and table bookkeeping, and the writes to a socket.

use super::*;

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

impl EchoSrc {
    /// The message at address `at`: inside this read's input (`range` of the buffer at address `base`), or lent
    /// by the connection.
    pub(super) fn of(at: usize, len: usize, base: usize, range: (usize, usize), plain: bool, last: bool) -> EchoSrc {
        if at >= base + range.0 && at + len <= base + range.1 {
            EchoSrc::Input { plain, start: at - base, end: at - base + len, last }
        } else {
            EchoSrc::Lent { last }
        }
    }
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

/// Lends `conn` a pooled buffer, if the pool has one and the connection holds none.
pub(super) fn lend(bufs: &mut BufPool, conn: &mut Connection) {
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

impl Slot {
    /// The socket is full: no write until it is writable; its kernel buffer is read once, for the budget.
    pub(super) fn set_blocked(&mut self) {
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
    pub(super) fn wants_write(&self) -> bool {
        self.conn.wants_write() || self.tls_pending() > 0
    }
    /// Read on: the connection expects input and neither layer has too much queued for the peer.
    pub(super) fn wants_read(&self, high_water: usize) -> bool {
        !self.paused && self.conn.wants_read() && self.tls_pending() < high_water
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
}

/// Acknowledges received data at once instead of after the delayed-ACK timer (Linux `TCP_QUICKACK`; it lasts
/// until the kernel's heuristics turn delayed ACKs back on, so it is set after each read that leaves the peer
/// mid-message). A peer that sends with Nagle's algorithm waits for this ACK before its next segment.
pub(super) fn quickack(sock: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(sock).set_tcp_quickack(true);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = sock;
}

/// Runs one handler callback; a panic is caught and logged, and costs only the connection it ran for.
pub(super) fn guarded<R>(id: ConnId, what: &str, f: impl FnOnce() -> R) -> Option<R> {
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
pub(super) fn touch(dirty: &mut Vec<usize>, key: usize, slot: &mut Slot) {
    if !slot.dirty {
        slot.dirty = true;
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

/// The mio token of a slot: the same packing as its [`ConnId`].
pub(super) fn token_of(key: usize, gen: u32) -> Token {
    Token(conn_id(key, gen).0 as usize)
}

/// After a flush: a connection's queued bytes (the gauge, and the handles' table) and what it holds for the
/// budget (`held`, the loop's total). A full socket holds its kernel send buffer too. Held bytes are recounted
/// unless nothing can have changed them: a connection that holds nothing and has nothing queued, in flight or
/// compressed (the steady echo) is skipped. Returns the bytes queued.
pub(super) fn recount(
    slot: &mut Slot,
    key: usize,
    m: &Metrics,
    table: &mut Vec<(u32, usize)>,
    held: &mut usize,
) -> usize {
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
pub(super) fn set_table(table: &mut Vec<(u32, usize)>, key: usize, v: (u32, usize)) {
    if table.len() <= key {
        table.resize(key + 1, (0, 0));
    }
    table[key] = v;
}

/// Takes `id` off `topic`'s subscriber list (the list goes when empty).
pub(super) fn unsubscribe(topics: &mut HashMap<Box<str>, Vec<ConnId>>, topic: &str, id: ConnId, group: Option<&Group>) {
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
pub(super) fn slot_of(slots: &mut Slab<Slot>, id: ConnId) -> Option<(usize, &mut Slot)> {
    let (key, gen) = split_id(id.0);
    slots.get_mut(key).filter(|s| s.gen == gen).map(|s| (key, s))
}

/// Writes as much of `data` as the socket takes now, stopping at a short write (the buffer is full: wait for
/// writability instead of a sure EAGAIN). Returns the bytes written, or `None` if the socket failed.
pub(super) fn write_burst(sock: &mut TcpStream, data: &[u8]) -> Option<usize> {
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
pub(super) fn write_slices(sock: &mut TcpStream, parts: &[&[u8]]) -> Option<usize> {
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
pub(super) fn write_direct(sock: &mut TcpStream, head: &[u8], payload: &[u8]) -> usize {
    let parts = [io::IoSlice::new(head), io::IoSlice::new(payload)];
    loop {
        match socket2::SockRef::from(&*sock).send_vectored(&parts) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 0,
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
