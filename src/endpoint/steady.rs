//! The steady path: a read that drained the socket of an open, plain connection and holds exactly one whole data
//! frame — what an echo or chat server sees for nearly every message — handled in one pass, from the read to the
//! handler's answer queued as the next transmit. It has the general path's effects exactly (a test feeds both
//! the same reads and compares); anything else about the read (TLS, deflate, a rate limit, a frame cut by the
//! read or followed by another, a message being assembled, a cut burst, a read straight into a message) takes
//! the general path ([`Endpoint::received`] → `read_some` → `input` → [`Endpoint::feed`]).
//!
//! [`Endpoint::read_at_once`] reaches the pass from the readiness event itself, when nothing is ahead of that
//! event in the turn: the read `poll_read` would ask for, made on the spot, and the echo written at once.

use super::events::{arm_or_touch, handler_panicked, other_event};
use super::*;

/// Flags under which a read takes the general path: each changes what a read does (a FIN already seen, work
/// weighed for inflation, a rate limit, a paused or cut reader, an HTTP/2 session, a large frame read in place).
const NOT_STEADY: u16 = Flags::READ_CLOSED
    | Flags::DEFERRED
    | Flags::PAUSED
    | Flags::PRESSED
    | Flags::DEFLATE
    | Flags::GONE
    | Flags::THROTTLED
    | Flags::RATED
    | Flags::STREAM
    | Flags::LARGE;

impl Endpoint {
    /// [`Endpoint::received`] for `Ok(n)` on the steady path; false, with nothing changed, when the read is not
    /// one for it.
    #[inline]
    pub(super) fn steady(&mut self, read: &Read, n: usize, now: Instant) -> bool {
        let Some(Burst::Reading { key, .. }) = self.burst else { return false };
        if n == 0 || n >= read.max || read.peek || read.id.index() != key || self.target.is_some() {
            return false;
        }
        // (The generation checked as `key_of` checks it, less its test for 0, which no id has: 3 Ir a message.)
        if !self.stash.is_empty()
            || self.direct.is_some()
            || self.table.get(key).map(|e| e.gen) != Some(read.id.generation())
        {
            return false;
        }
        match self.slots.get(key) {
            Some(slot) if !slot.flags.has(NOT_STEADY) && slot.phase == Phase::Open && !slot.is_tls() => {}
            _ => return false,
        }
        self.steady_pass(key, read, n, now)
    }

    /// [`Endpoint::steady`] once the read and its connection are known to be for it (only the frame is left to
    /// look at).
    #[inline(always)]
    fn steady_pass(&mut self, key: usize, read: &Read, n: usize, now: Instant) -> bool {
        let Endpoint {
            slots,
            handler,
            queue,
            rbuf,
            config,
            shared,
            table,
            echo_src,
            work,
            direct,
            bufs,
            timers,
            dirty,
            ..
        } = self;
        let slot = &mut slots[key];
        let Some(ev) = slot.conn.read_whole(&mut rbuf[..n], now) else { return false };
        // From here on, what the general path does with such a read, in its order. (It lends the connection a
        // pooled buffer before its read, which does not touch it; what the handler queues may use it.)
        lend(bufs, &mut slot.conn);
        *work += n;
        slot.flags.clear(Flags::READ_READY); // (drained: a new edge announces new bytes)
        let m = &shared.metrics;
        Metrics::add(&m.bytes_in, n as u64);
        let id = read.id;
        let mut ctx = Ctx::new(id, slot.peer, queue, m, table, config.write_high_water);
        let echoed = match ev {
            Event::Message(msg) => {
                let len = msg.as_bytes().len();
                Metrics::add(&m.messages_in, 1);
                Metrics::add(&m.payload_in, len as u64);
                ctx.echo = Some((msg.as_bytes().as_ptr() as usize, len));
                *echo_src = Some(EchoSrc { plain: false, end: n, last: true, direct: true });
                if guarded(id, "on_message", || handler.on_message(&mut ctx, msg)).is_none() {
                    handler_panicked(&mut slot.conn, now);
                }
                // (`Ctx` makes `Cmd::Echo` only of this message back to its sender: the first two conditions are
                // a guard.)
                match queue.cmds[..] {
                    [Cmd::Echo { to, text, len: l }] if to == id && l == len && slot.conn.may_send_direct(len) => {
                        // The steady echo: the message back, and nothing else (see `echo_alone`).
                        *direct = Some(echo_header(rbuf, n, text, len, key));
                        Metrics::add(&m.messages_out, 1);
                        Metrics::add(&m.payload_out, len as u64);
                        queue.cmds.clear();
                        true
                    }
                    _ => false,
                }
            }
            other => {
                if !other_event(&mut **handler, &mut ctx, config.prod, other) {
                    handler_panicked(&mut slot.conn, now);
                }
                false
            }
        };
        if cfg!(debug_assertions) && !config.prod {
            slot.conn.debug_check_invariants();
        }
        let quiet = if echoed {
            // (What `feed_done` does, knowing that no message is lent out: it was in the input.)
            *echo_src = None;
            take_back(bufs, &mut slot.conn);
            // (Open, nothing queued ahead of the echo, nothing half-read: what `is_quiet` asks of the core, but
            // a buffer held.)
            let quiet = slot.owes_nothing(table[key].queued()) && !slot.conn.holds_buffer();
            arm_or_touch(quiet, slot, key, read.id.generation(), timers, dirty)
        } else {
            self.apply_commands(now);
            self.echo_src = None;
            self.feed_done(key)
        };
        self.end_burst();
        if !quiet {
            self.write_through(key);
        }
        true
    }

    /// A readable event for `id` acted on at once: what [`Endpoint::ready`] and then the first read of the
    /// connection's turn ([`Endpoint::poll_read`], a read of `sock`, [`Endpoint::received`]) would do, with an
    /// echo left in the read buffer written to `sock` at once ([`Endpoint::poll_transmit`], [`Endpoint::sent`]).
    /// Returns false, with nothing changed and nothing read, unless the event would begin that read now: nothing
    /// ahead of it this turn (no fresh event, read or echo pending), an open plain connection that reads as
    /// usual. The shell then calls [`Endpoint::ready`]; after true, it polls the transmits as after a read.
    ///
    /// Like rustls' `read_tls`, this takes the socket as something to read and write, and names no socket: a
    /// test drives it with a byte buffer. It is the general path's effects, in the order the shell would have
    /// made them, with the crossings of four calls left out: the echo of 100 connections' 20-byte messages costs
    /// 148 instructions less (732 → 584; docs/benchmarks.md).
    #[inline(always)]
    pub fn read_at_once<S: io::Read + io::Write>(&mut self, id: ConnId, sock: &mut S, now: Instant) -> bool {
        let Some(key) = self.may_read_at_once(id) else { return false };
        self.slots[key].flags.set(Flags::READ_READY);
        // (`begin_burst`, with no stashed input.)
        (self.work, self.burst) = (0, Some(Burst::Reading { key, from_backlog: false }));
        let op = Read { id, max: READ_BUF, peek: false, count_only: false };
        let result = loop {
            match sock.read(&mut self.rbuf[..READ_BUF]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        // (What `received` does, less the checks of `steady` that this connection has passed.)
        match result {
            Ok(n) if n > 0 && n < READ_BUF && !self.steady_is_off() && self.steady_pass(key, &op, n, now) => {
                #[cfg(test)]
                {
                    self.steady_taken += 1;
                }
            }
            _ => self.received(op, result, now),
        }
        if let Some(Direct::Input { start, end, .. }) = self.direct {
            let result = loop {
                match sock.write(&self.rbuf[start..end]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            match result {
                // (What `sent` does with an echo written whole, without recording it as in flight first.)
                Ok(n) if n == end - start => self.echo_written(n),
                _ => {
                    self.in_flight = Some(InFlight::Direct);
                    self.sent(id, result, now);
                }
            }
        }
        true
    }

    /// The slot of `id` if a readable event for it begins its connection's read now, as [`Endpoint::poll_read`]
    /// would begin it (the checks of `begin_fresh` and `next_read`, for a connection that reads the usual way).
    #[inline(always)]
    fn may_read_at_once(&self, id: ConnId) -> Option<usize> {
        if self.burst.is_some()
            || self.fresh_at != self.fresh.len()
            || self.direct.is_some()
            || self.in_flight.is_some()
            || self.target.is_some()
            || self.pressure
            || self.fresh_work >= FRESH_PER_TURN
            || !self.stash.is_empty()
        {
            return None;
        }
        let key = self.key_of(id)?;
        let slot = &self.slots[key];
        // (`Slot::wants_read` less what is known here: not paused or throttled, no TLS.)
        let reads = !slot.flags.has(NOT_STEADY)
            && slot.phase == Phase::Open
            && !slot.is_tls()
            && slot.conn.wants_read()
            && slot.conn.payload_due() < IN_PLACE_MIN;
        reads.then_some(key)
    }

    /// Tests only: whether the steady pass is switched off (never, outside tests).
    #[inline(always)]
    pub(super) fn steady_is_off(&self) -> bool {
        #[cfg(test)]
        return self.steady_off;
        #[cfg(not(test))]
        false
    }
}

/// The header of the echo of the payload that ends the read (`rbuf[n - len..n]`) goes over the end of the client's
/// header, just before the payload (the client's was 6 or 8 bytes, the answer's is 2 or 4): the frame to write is
/// one slice of the read buffer.
#[inline(always)]
fn echo_header(rbuf: &mut [u8], n: usize, text: bool, len: usize, key: usize) -> Direct {
    let start = n - len;
    let b0 = if text { 0x81 } else { 0x82 };
    let hl = match rbuf.get_mut(start.saturating_sub(4)..start) {
        Some([_, _, h0, h1]) if len < 126 => {
            (*h0, *h1) = (b0, len as u8);
            2
        }
        Some([h0, h1, h2, h3]) => {
            let [l0, l1] = (len as u16).to_be_bytes();
            (*h0, *h1, *h2, *h3) = (b0, 126, l0, l1);
            4
        }
        _ => unreachable!("a masked client header is at least 6 bytes"),
    };
    Direct::Input { key, start: start - hl, hl, end: n }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::OpCode;
    use crate::frame::{encode_header, write_client_frame, MAX_HEADER_LEN};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A handler that logs what it is shown and answers: an echo, or something else, twice, or a close.
    struct Rec(Rc<RefCell<Vec<String>>>);

    impl Handler for Rec {
        fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
            self.0.borrow_mut().push(format!("{} {msg:?}", ctx.id()));
            match msg.as_bytes() {
                b"other" => drop(ctx.send_text("something else")),
                b"twice" => drop((ctx.send(msg), ctx.send(msg))),
                b"close" => ctx.close(CloseCode::NORMAL, "bye"),
                _ => drop(ctx.send(msg)),
            }
        }
        fn on_error(&mut self, _: &mut Ctx<'_>, err: &crate::ProtocolError) {
            self.0.borrow_mut().push(format!("error {err:?}"));
        }
        fn on_close(&mut self, ctx: &mut Ctx<'_>, status: &CloseStatus) {
            self.0.borrow_mut().push(format!("{} close {status:?}", ctx.id()));
        }
        fn on_drain(&mut self, ctx: &mut Ctx<'_>) {
            self.0.borrow_mut().push(format!("{} drained", ctx.id()));
        }
    }

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_client_frame(&mut v, fin, 0, op, [9, 8, 7, 6], payload);
        v
    }

    /// What [`drive_many`] saw: every byte written to each client, the handler's log, the metrics, how many reads the
    /// steady pass took, after each turn the bytes the loop held and the buffer pool's state, and how many
    /// events were acted on at once.
    type Seen = (Vec<Vec<u8>>, Vec<String>, String, usize, Vec<(usize, (usize, usize, usize))>, usize);

    /// How [`drive_many`] reads: the general path only, the steady pass too, or the steady pass and readable events
    /// acted on at once ([`Endpoint::read_at_once`]).
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Way {
        General,
        Steady,
        AtOnce,
    }

    /// A client's socket as the server sees it: what waits to be read this turn, what was written to the client,
    /// and the room left this turn (`WouldBlock` once it is used up, or nothing waits).
    struct Socket {
        input: Vec<u8>,
        wire: Vec<u8>,
        left: usize,
    }

    impl io::Read for Socket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.input.len().min(buf.len());
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            Ok(n)
        }
    }

    impl io::Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.left);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.wire.extend_from_slice(&buf[..n]);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Clients on one endpoint, read `way`: each one's handshake, then turn after turn, for each client in
    /// order, its next item of `clients` as what one readiness event finds in its socket, read as a shell reads,
    /// and written to a socket that takes `room` bytes a turn (then it is full until the next turn's writable
    /// event); then turns with nothing to read until everything is written. Each turn is 400 ms after the one
    /// before, so that the buffer pool trims what it did not lend for a whole second.
    fn drive_many(way: Way, config: Config, clients: &[&[Vec<u8>]], room: usize) -> Seen {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut ep = Endpoint::new(config, Box::new(Rec(log.clone())));
        ep.steady_off = way == Way::General;
        let mut now = Instant::now();
        let ids: Vec<ConnId> = (0..clients.len())
            .map(|i| ep.accept(format!("127.0.0.{}:4000", i + 1).parse().unwrap(), now).unwrap())
            .collect();
        let mut socks: Vec<Socket> =
            clients.iter().map(|_| Socket { input: Vec::new(), wire: Vec::new(), left: 0 }).collect();
        let (mut held, mut at_once) = (Vec::new(), 0);
        let turns = 1 + clients.iter().map(|c| c.len()).max().unwrap_or(0) + 8;
        for turn in 0..turns {
            // Every client's socket is writable again, and readable if something came (what the endpoint left
            // unread stays, without a new edge): the events of one wait.
            let mut came = vec![false; ids.len()];
            for (c, sock) in socks.iter_mut().enumerate() {
                let chunk = if turn == 0 { HEAD } else { clients[c].get(turn - 1).map_or(&[][..], Vec::as_slice) };
                sock.input.extend_from_slice(chunk);
                (came[c], sock.left) = (!chunk.is_empty(), room);
            }
            if way == Way::AtOnce {
                // As the shell hands them over: what became writable first, then each readable event, read at
                // once if the endpoint takes it.
                for &id in &ids {
                    ep.ready(id, false, true, false);
                }
                for (c, &id) in ids.iter().enumerate() {
                    if !came[c] {
                        continue;
                    }
                    if ep.read_at_once(id, &mut socks[c], now) {
                        at_once += 1;
                        write_some(&mut ep, &ids, &mut socks, now);
                    } else {
                        ep.ready(id, true, false, false);
                    }
                }
            } else {
                // Event by event, each all at once.
                for (c, &id) in ids.iter().enumerate() {
                    ep.ready(id, came[c], true, false);
                }
            }
            loop {
                write_some(&mut ep, &ids, &mut socks, now);
                let Some(op) = ep.poll_read(now) else { break };
                let sock = &mut socks[ids.iter().position(|&i| i == op.id).unwrap()];
                let (a, b) = ep.read_bufs(&op);
                let n = sock.input.len().min(op.max);
                let result = if n == 0 {
                    Err(io::ErrorKind::WouldBlock.into())
                } else if op.peek && op.count_only {
                    Ok(n)
                } else {
                    let k = n.min(a.len());
                    a[..k].copy_from_slice(&sock.input[..k]);
                    b[..n - k].copy_from_slice(&sock.input[k..n]);
                    if !op.peek {
                        sock.input.drain(..n);
                    }
                    Ok(n)
                };
                ep.received(op, result, now);
            }
            ep.handle_timeout(now);
            ep.end_turn(now);
            write_some(&mut ep, &ids, &mut socks, now);
            while ep.poll_order().is_some() {}
            held.push((ep.held_bytes(), ep.bufs.shape()));
            now += Duration::from_millis(400);
        }
        let metrics = format!("{:?}", ep.metrics());
        let taken = ep.steady_taken;
        drop(ep);
        let log = log.borrow().clone();
        (socks.into_iter().map(|s| s.wire).collect(), log, metrics, taken, held, at_once)
    }

    /// Writes of every transmit what the socket has room for (and checks that [`Endpoint::may_transmit`] is
    /// never false before one).
    fn write_some(ep: &mut Endpoint, ids: &[ConnId], socks: &mut [Socket], now: Instant) {
        loop {
            let may = ep.may_transmit();
            let Some(t) = ep.poll_transmit(now) else { break };
            assert!(may, "a transmit where may_transmit said there was none");
            let sock = &mut socks[ids.iter().position(|&i| i == t.id).unwrap()];
            let mut buf = [&[][..]; MAX_PARTS];
            let (id, n) = (t.id, t.len().min(sock.left));
            let mut want = n;
            for p in t.parts(&mut buf) {
                let k = p.len().min(want);
                sock.wire.extend_from_slice(&p[..k]);
                want -= k;
            }
            sock.left -= n;
            ep.sent(id, if n == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }, now);
        }
    }

    /// [`same_every_way`] with one client.
    fn same_both_ways(reads: &[Vec<u8>], room: usize, what: &str) -> (usize, usize) {
        let (taken, at_once, _) = same_every_way(&Config::new(), &[reads], room, what);
        (taken, at_once)
    }

    /// [`drive_many`] with the steady pass off, on, and with readable events acted on at once: the same bytes to
    /// each client, handler calls, metrics, and bytes held and pool after every turn (`what` names the case);
    /// none of the reads taken with the pass off. Returns how many reads the pass took (the same with events
    /// acted on at once), how many events were acted on at once, and the handler's calls and the metrics.
    fn same_every_way(
        config: &Config,
        clients: &[&[Vec<u8>]],
        room: usize,
        what: &str,
    ) -> (usize, usize, (Vec<String>, String)) {
        let (wire_g, log_g, metrics_g, none, held_g, _) = drive_many(Way::General, config.clone(), clients, room);
        assert_eq!(none, 0, "{what}: reads taken with the pass off");
        let (mut taken, mut at_once) = (Vec::new(), 0);
        for way in [Way::Steady, Way::AtOnce] {
            let (wire, log, metrics, t, held, a) = drive_many(way, config.clone(), clients, room);
            at_once += a;
            assert_eq!(log, log_g, "{what}, {way:?}: the handler's calls");
            assert!(wire == wire_g, "{what}, {way:?}: the bytes to the clients");
            assert_eq!(metrics, metrics_g, "{what}, {way:?}: the metrics");
            assert_eq!(held, held_g, "{what}, {way:?}: the bytes held and the pool after each turn");
            taken.push(t);
        }
        assert_eq!(taken[0], taken[1], "{what}: the reads the steady pass took, with events acted on at once");
        (taken[0], at_once, (log_g, metrics_g))
    }

    /// The endpoint with the steady pass and without it: the same bytes to the client, the same handler calls,
    /// the same metrics, for reads the pass takes and reads it leaves, in any order; and the pass takes the
    /// reads it is meant for.
    #[test]
    fn the_steady_pass_is_the_general_path_at_the_endpoint() {
        let f = |op, payload: &[u8]| frame(true, op, payload);
        let big = vec![b'z'; 3000];
        let huge = f(OpCode::Binary, &vec![b'h'; 200_000]);
        let echo = f(OpCode::Binary, b"twenty bytes of echo");
        let text = f(OpCode::Text, "héllo".as_bytes());
        let long = f(OpCode::Binary, &big);
        let pieces = [frame(false, OpCode::Text, b"in "), frame(true, OpCode::Continuation, b"pieces")].concat();
        let ping = f(OpCode::Ping, b"p");
        let close = f(OpCode::Close, &1000u16.to_be_bytes());
        let scenarios: Vec<(Vec<Vec<u8>>, usize)> = vec![
            (vec![echo.clone(), text.clone(), long.clone(), f(OpCode::Binary, b"")], 4),
            (vec![f(OpCode::Text, b"other"), f(OpCode::Text, b"twice"), echo.clone()], 3),
            (vec![pieces, ping, [echo.clone(), text.clone()].concat(), echo.clone()], 1),
            (vec![echo[..5].to_vec(), echo[5..].to_vec(), long[..100].to_vec(), long[100..].to_vec(), text], 1),
            (vec![echo.clone(), f(OpCode::Text, b"close"), echo.clone()], 2),
            (vec![echo.clone(), f(OpCode::Text, b"ab\xff"), echo.clone()], 2),
            (vec![echo.clone(), close, echo.clone()], 1),
            // A read that fills the read buffer (the connection is read again at once), and a large frame whose
            // rest is read straight into its message.
            (vec![huge.clone(), echo.clone(), huge[..1000].to_vec(), huge[1000..].to_vec(), echo], 2),
        ];
        for (i, (reads, meant)) in scenarios.iter().enumerate() {
            let (taken, at_once) = same_both_ways(reads, usize::MAX, &format!("scenario {i}"));
            assert_eq!(taken, *meant, "scenario {i}: reads taken by the steady pass");
            assert!(at_once > 0, "scenario {i}: no event acted on at once");
        }
    }

    /// The same with a socket that is full after a few bytes a turn, so that answers wait in queues (in buffers
    /// the pass lends from the loop's pool, as the general path lends them): the same bytes, calls, metrics, and
    /// bytes held after every turn, and the pass still takes reads.
    #[test]
    fn the_steady_pass_is_the_general_path_with_a_full_socket() {
        let f = |op, payload: &[u8]| frame(true, op, payload);
        let echo = f(OpCode::Binary, b"twenty bytes of echo");
        let large = f(OpCode::Binary, &vec![b'L'; 70_000]);
        let mid = f(OpCode::Binary, &vec![b'm'; 20_000]);
        let wide = f(OpCode::Binary, &vec![b'w'; 50_000]);
        let m300 = f(OpCode::Binary, &vec![b'3'; 300_000]);
        let reads = [
            vec![large.clone(), echo.clone(), mid.clone(), f(OpCode::Text, b"twice"), echo.clone()],
            vec![echo.clone(), large.clone(), echo.clone(), echo.clone(), f(OpCode::Text, b"other"), echo.clone()],
            vec![mid.clone(), large.clone(), mid, echo.clone(), echo.clone()],
            vec![large.clone(), echo.clone(), f(OpCode::Text, b"twice"), echo.clone(), f(OpCode::Text, b"other")],
            // (Empty: a turn without a read. The large echo is written, its buffer pooled, then lent to the
            // 50,000-byte message's answer, which waits for the socket.)
            vec![large, vec![], vec![], vec![], echo.clone(), wide, vec![], vec![], echo.clone()],
            // Answers past the write high-water mark (1 MiB) while the socket is full: reading pauses.
            [vec![m300.clone(); 5], vec![echo.clone(), m300, echo]].concat(),
        ];
        for (i, reads) in reads.iter().enumerate() {
            let mut taken = 0;
            for room in [0, 7, 1000, 30_000, usize::MAX] {
                let (t, at_once) = same_both_ways(reads, room, &format!("scenario {i}, room {room}"));
                assert!(at_once > 0, "scenario {i}, room {room}: no event acted on at once");
                taken += t;
            }
            assert!(taken > 0, "scenario {i}: the pass took no read");
        }
    }

    /// Several clients, with readable events acted on at once or not: the same bytes to each, the same handler
    /// calls in the same order, metrics and bytes held, where a read fills the read buffer (the others wait for
    /// that connection's turn), a connection's work reaches its quantum (it goes to the backlog, the rest of
    /// its input stashed), and the turn's fresh events reach their share (later ones are only looked at).
    #[test]
    fn events_acted_on_at_once_keep_the_order_and_the_shares_of_a_turn() {
        let f = |op, payload: &[u8]| frame(true, op, payload);
        let echo = f(OpCode::Binary, b"twenty bytes of echo");
        let m64 = f(OpCode::Binary, &vec![b'6'; 65_000]);
        let m300 = f(OpCode::Binary, &vec![b'3'; 300_000]);
        let flood = vec![f(OpCode::Binary, &vec![b'f'; 60_000]).repeat(25)];
        let echoes = vec![echo.clone(); 3];
        // (33 steady 64 KB reads are the fresh events' share: the next client's two messages are only looked at
        // and read from the backlog, after the last client's echo.)
        let mut share = vec![vec![m64.clone(); 2]; 34];
        share.extend([vec![m64.repeat(2); 2], echoes.clone()]);
        // (Six clients with 650 KB queued put the loop over three quarters of its budget; their echoes wait.)
        let heavy = vec![m64.repeat(10), echo.clone(), echo.clone()];
        let mut pressed = vec![heavy; 6];
        pressed.push(echoes.clone());
        let tight = Config::new().memory_budget(4 << 20);
        // (Over the write high-water mark, then drained while the echoes go on: `on_drain` for both.)
        let drains = [flood.clone(), echoes.clone(), echoes.clone(), echoes.clone()].concat();
        type Clients = Vec<Vec<Vec<u8>>>;
        let cases: Vec<(&str, Config, Clients)> = vec![
            (
                "a full read first",
                Config::new(),
                vec![vec![m300.clone(), echo.clone()], echoes.clone(), echoes.clone()],
            ),
            ("a full read later", Config::new(), vec![echoes.clone(), vec![m300.clone(), m300], echoes.clone()]),
            ("a flood", Config::new(), vec![echoes.clone(), flood.clone(), echoes, [flood.clone(), flood].concat()]),
            ("the fresh share", Config::new(), share),
            ("memory pressure", tight, pressed),
            ("two drains", Config::new(), vec![drains.clone(), drains]),
        ];
        for (what, config, clients) in &cases {
            let clients: Vec<&[Vec<u8>]> = clients.iter().map(Vec::as_slice).collect();
            for room in [1000, 100_000, usize::MAX] {
                let what = format!("{what}, room {room}");
                let (_, at_once, (log, metrics)) = same_every_way(config, &clients, room, &what);
                assert!(at_once > 0, "{what}: no event acted on at once");
                let pressed = !metrics.contains("pressure_turns: 0,");
                if what.starts_with("memory") {
                    assert!(pressed || room != 1000, "{what}: no memory pressure");
                } else {
                    assert!(!pressed, "{what}: memory pressure");
                }
                let drained = log.iter().filter(|l| l.ends_with(" drained")).count();
                if what.starts_with("two drains") && room == 100_000 {
                    assert_eq!(drained, 2, "{what}: on_drain calls");
                }
            }
        }
    }

    /// The echo's header written over the client's is, for every length a steady frame can have and both kinds,
    /// the header the general path writes ([`encode_header`], as `direct_header` calls it), in the same place.
    #[test]
    fn the_echo_header_is_the_one_encode_header_writes() {
        let mut rbuf = vec![0xaa; 8 + usize::from(u16::MAX)];
        for len in 1..=usize::from(u16::MAX) {
            for text in [false, true] {
                let start = if len < 126 { 6 } else { 8 };
                rbuf[..start].fill(0xaa);
                let d = echo_header(&mut rbuf, start + len, text, len, 7);
                let mut want = [0u8; MAX_HEADER_LEN];
                let op = if text { OpCode::Text } else { OpCode::Binary };
                let hl = encode_header(true, 0, op, None, len as u64, &mut want);
                let Direct::Input { key: 7, start: at, hl: got_hl, end } = d else { panic!("{d:?}") };
                assert_eq!((at, got_hl, end), (start - hl, hl, start + len), "len {len}");
                assert_eq!(&rbuf[at..start], &want[..hl], "len {len}");
                assert!(
                    rbuf[..at].iter().chain(&rbuf[start..start + len.min(4)]).all(|&b| b == 0xaa),
                    "nothing else written"
                );
            }
        }
    }
}
