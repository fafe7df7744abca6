//! The virtual network and the virtual shell: sockets as two bounded byte queues with edge-triggered
//! readiness, and a shell that drives an [`Endpoint`] through them exactly as `src/server.rs` drives it through
//! mio (events in, reads with the writes each causes, deadlines, the end of the turn, socket orders).
//!
//! The shell checks the endpoint's side of the contract as it goes: it never reads or writes a socket it
//! released or shut down, every turn ends (a bounded number of reads and writes), and the work of one turn is
//! bounded.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use wskit::{ConnId, Endpoint, Order};

/// One virtual TCP connection.
pub struct Wire {
    pub id: Option<ConnId>,
    pub peer: SocketAddr,
    /// Bytes the client sent that the server has not read (at most `up_window`: the server's receive buffer).
    pub up: VecDeque<u8>,
    pub up_window: usize,
    /// Bytes the server wrote that the client has not read (at most `down_window`: the server's send buffer).
    pub down: VecDeque<u8>,
    pub down_window: usize,
    /// The client closed its side: once `up` is read, reads see the end.
    pub client_fin: bool,
    /// The client reset the connection: the server's reads and writes fail.
    pub client_reset: bool,
    /// The server shut down its side (FIN), reset it, or released the socket.
    pub server_fin: bool,
    pub server_reset: bool,
    pub released: bool,
    pub write_interest: bool,
    /// A write came back short (the send buffer filled): the next read by the client raises a writable edge.
    short: bool,
    /// Readiness edges not yet reported.
    readable: bool,
    writable: bool,
    hup: bool,
}

impl Wire {
    pub fn new(peer: SocketAddr, up_window: usize, down_window: usize) -> Wire {
        Wire {
            id: None,
            peer,
            up: VecDeque::new(),
            up_window,
            down: VecDeque::new(),
            down_window,
            client_fin: false,
            client_reset: false,
            server_fin: false,
            server_reset: false,
            released: false,
            write_interest: false,
            short: false,
            readable: false,
            writable: false,
            hup: false,
        }
    }

    /// The client writes what fits of `data`; returns how much.
    pub fn client_write(&mut self, data: &[u8]) -> usize {
        if self.client_fin || self.client_reset || self.released || self.server_reset {
            return 0;
        }
        let n = data.len().min(self.up_window.saturating_sub(self.up.len()));
        if n > 0 {
            self.up.extend(&data[..n]);
            self.readable = true;
        }
        n
    }

    /// The client reads up to `max` bytes.
    pub fn client_read(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.down.len());
        let got: Vec<u8> = self.down.drain(..n).collect();
        if n > 0 && std::mem::take(&mut self.short) && self.write_interest {
            self.writable = true;
        }
        got
    }

    pub fn client_close(&mut self) {
        if !self.client_fin {
            self.client_fin = true;
            self.readable = true;
            self.hup = true;
        }
    }

    pub fn client_resets(&mut self) {
        self.client_reset = true;
        self.readable = true;
        self.writable = true;
        self.hup = true;
    }

    /// The server's side is over: nothing more will come from it once `down` is read.
    pub fn server_done(&self) -> bool {
        self.server_reset || ((self.server_fin || self.released) && self.down.is_empty())
    }
}

/// What the shell saw in one turn.
#[derive(Debug, Default, Clone, Copy)]
pub struct TurnStats {
    pub reads: usize,
    pub writes: usize,
    pub bytes_read: usize,
    pub bytes_written: usize,
}

/// Reads and writes one turn may make before the simulator calls it a turn that never ends.
const MAX_OPS_PER_TURN: usize = 200_000;

/// The virtual sockets, and which wire each connection id is.
#[derive(Default)]
pub struct Net {
    pub wires: Vec<Wire>,
    by_id: HashMap<ConnId, usize>,
    /// Wires connected and not yet accepted.
    pub backlog: VecDeque<usize>,
    /// Readable events the endpoint read at once ([`Endpoint::read_at_once`]).
    pub at_once: usize,
}

impl Net {
    /// A client connects; the shell accepts it at its next turn.
    pub fn connect(&mut self, wire: Wire) -> usize {
        self.wires.push(wire);
        self.backlog.push_back(self.wires.len() - 1);
        self.wires.len() - 1
    }

    fn wire(&mut self, id: ConnId) -> Result<&mut Wire, String> {
        let w = *self.by_id.get(&id).ok_or_else(|| format!("{id}: no such socket"))?;
        let wire = &mut self.wires[w];
        if wire.released {
            return Err(format!("{id}: used after its release"));
        }
        Ok(wire)
    }

    fn read(&mut self, id: ConnId, bufs: [&mut [u8]; 2], peek: bool) -> Result<io::Result<usize>, String> {
        let w = self.wire(id)?;
        if w.client_reset {
            return Ok(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if w.up.is_empty() {
            return Ok(if w.client_fin { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) });
        }
        let [first, second] = bufs;
        let n = (first.len() + second.len()).min(w.up.len());
        for (d, s) in first.iter_mut().chain(second.iter_mut()).zip(w.up.iter()) {
            *d = *s;
        }
        if !peek {
            w.up.drain(..n);
        }
        Ok(Ok(n))
    }

    fn write(&mut self, id: ConnId, parts: &[&[u8]]) -> Result<io::Result<usize>, String> {
        let w = self.wire(id)?;
        if w.server_fin {
            return Err(format!("{id}: written after its FIN"));
        }
        if w.client_reset {
            return Ok(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let room = w.down_window.saturating_sub(w.down.len());
        let n = len.min(room);
        let mut left = n;
        for p in parts {
            let take = left.min(p.len());
            w.down.extend(&p[..take]);
            left -= take;
        }
        if n < len {
            w.short = true;
        }
        if crate::client::tracing() {
            eprintln!("server writes {n} of {len} to {id} ({} parts)", parts.len());
        }
        Ok(Ok(n))
    }

    /// Carries out a socket order.
    fn order(&mut self, ep: &mut Endpoint, order: Order) -> Result<(), String> {
        if crate::client::tracing() {
            eprintln!("order {order:?}");
        }
        match order {
            Order::Interest { id, write } => {
                let w = self.wire(id)?;
                w.write_interest = write;
                // EPOLL_CTL_MOD re-evaluates the socket: what holds now is reported at the next wait.
                w.readable |= !w.up.is_empty() || w.client_fin;
                w.writable |= write && w.down.len() < w.down_window;
            }
            Order::ShutdownWrite(id) => self.wire(id)?.server_fin = true,
            Order::Reset(id) => {
                let w = self.wire(id)?;
                (w.server_reset, w.released) = (true, true);
                w.down.clear();
            }
            Order::Release(id) => self.wire(id)?.released = true,
            Order::QuickAck(id) => {
                self.wire(id)?;
            }
            Order::MeasureSendBuffer(id) => {
                let n = self.wire(id)?.down_window;
                ep.send_buffer_is(id, n);
            }
        }
        Ok(())
    }

    /// One turn of the shell: readiness, accepts, reads (each followed by its writes), deadlines, the end of the
    /// turn, and the socket orders — the order `src/server.rs` follows: what became writable first, then the
    /// listener, then what became readable (read at once when the endpoint takes it, queued otherwise).
    pub fn turn(&mut self, ep: &mut Endpoint, now: Instant) -> Result<TurnStats, String> {
        let mut stats = TurnStats::default();
        let mut readable = Vec::new();
        for w in &mut self.wires {
            let Some(id) = w.id.filter(|_| !w.released) else { continue };
            let (r, wr, hup) = (std::mem::take(&mut w.readable), std::mem::take(&mut w.writable), w.hup);
            w.hup = false;
            if wr {
                ep.ready(id, false, true, false);
            }
            if r || hup {
                readable.push((id, hup));
            }
        }
        while let Some(w) = self.backlog.pop_front() {
            self.drain_orders(ep)?;
            match ep.accept(self.wires[w].peer, now) {
                Some(id) => {
                    self.by_id.insert(id, w);
                    self.wires[w].id = Some(id);
                }
                None => self.wires[w].released = true,
            }
        }
        for (id, hup) in readable {
            // (A read at once never follows the peer's FIN, as in `src/server.rs`.)
            if !hup && self.read_at_once(ep, id, now, &mut stats)? {
                continue;
            }
            ep.ready(id, true, false, hup);
        }
        self.pump(ep, now, &mut stats)?;
        ep.handle_timeout(now);
        ep.end_turn(now);
        self.pump(ep, now, &mut stats)?;
        Ok(stats)
    }

    /// [`Endpoint::read_at_once`] with the virtual socket of `id`, then the writes it leaves (as after any read).
    /// Returns whether it took the event.
    fn read_at_once(
        &mut self,
        ep: &mut Endpoint,
        id: ConnId,
        now: Instant,
        stats: &mut TurnStats,
    ) -> Result<bool, String> {
        let mut sock = Lent { net: self, id, fault: None, reads: 0, writes: 0, bytes_read: 0, bytes_written: 0 };
        let taken = ep.read_at_once(id, &mut sock, now);
        let Lent { fault, reads, writes, bytes_read, bytes_written, .. } = sock;
        if let Some(f) = fault {
            return Err(f);
        }
        if taken != (reads == 1) || writes > 1 {
            return Err(format!("{id}: read at once {taken} with {reads} reads and {writes} writes"));
        }
        stats.reads += reads;
        stats.writes += writes;
        stats.bytes_read += bytes_read;
        stats.bytes_written += bytes_written;
        if taken {
            self.at_once += 1;
            self.transmit(ep, now, stats)?;
        }
        Ok(taken)
    }

    /// The reads, writes and orders the endpoint asks for, until it asks for none.
    pub fn pump(&mut self, ep: &mut Endpoint, now: Instant, stats: &mut TurnStats) -> Result<(), String> {
        while let Some(op) = ep.poll_read(now) {
            stats.reads += 1;
            let (first, second) = ep.read_bufs(&op);
            let result = self.read(op.id, [first, second], op.peek)?;
            if let (Ok(n), false) = (&result, op.peek) {
                stats.bytes_read += n;
            }
            ep.received(op, result, now);
            self.transmit(ep, now, stats)?;
            if stats.reads + stats.writes > MAX_OPS_PER_TURN {
                return Err(format!("a turn that never ends: {stats:?}"));
            }
        }
        self.transmit(ep, now, stats)?;
        self.drain_orders(ep)
    }

    fn transmit(&mut self, ep: &mut Endpoint, now: Instant, stats: &mut TurnStats) -> Result<(), String> {
        while let Some(t) = ep.poll_transmit(now) {
            let id = t.id;
            if t.is_empty() {
                return Err(format!("{id}: an empty transmit"));
            }
            let mut buf = [&[][..]; wskit::endpoint::MAX_PARTS];
            let result = self.write(id, t.parts(&mut buf))?;
            stats.writes += 1;
            if let Ok(n) = &result {
                stats.bytes_written += n;
            }
            ep.sent(id, result, now);
            if stats.reads + stats.writes > MAX_OPS_PER_TURN {
                return Err(format!("a turn that never ends: {stats:?}"));
            }
        }
        Ok(())
    }

    fn drain_orders(&mut self, ep: &mut Endpoint) -> Result<(), String> {
        while let Some(order) = ep.poll_order() {
            self.order(ep, order)?;
        }
        Ok(())
    }
}

/// A virtual socket lent to [`Endpoint::read_at_once`]: its reads and writes, and a breach of the contract
/// (reported after the call).
struct Lent<'a> {
    net: &'a mut Net,
    id: ConnId,
    fault: Option<String>,
    reads: usize,
    writes: usize,
    bytes_read: usize,
    bytes_written: usize,
}

impl Lent<'_> {
    fn kept(&mut self, r: Result<io::Result<usize>, String>) -> io::Result<usize> {
        r.unwrap_or_else(|f| {
            self.fault.get_or_insert(f);
            Err(io::ErrorKind::Other.into())
        })
    }
}

impl io::Read for Lent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        let r = self.net.read(self.id, [buf, &mut []], false);
        let r = self.kept(r);
        if let Ok(n) = r {
            self.bytes_read += n;
        }
        r
    }
}

impl io::Write for Lent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        let r = self.net.write(self.id, &[buf]);
        let r = self.kept(r);
        if let Ok(n) = r {
            self.bytes_written += n;
        }
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
