//! The steady path: a read that drained the socket of an open, plain connection and holds exactly one whole data
//! frame — what an echo or chat server sees for nearly every message — handled in one pass, from the read to the
//! handler's answer queued as the next transmit. It has the general path's effects exactly (a test feeds both
//! the same reads and compares); anything else about the read (TLS, deflate, a rate limit, a frame cut by the
//! read or followed by another, a message being assembled, a cut burst, a read straight into a message) takes
//! the general path ([`Endpoint::received`] → `read_some` → `input` → [`Endpoint::feed`]).

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
        let Some(slot) = slots.get_mut(key) else { return false };
        if slot.flags.has(NOT_STEADY) || slot.phase != Phase::Open || slot.is_tls() {
            return false;
        }
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
            self.0.borrow_mut().push(format!("{msg:?}"));
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
        fn on_close(&mut self, _: &mut Ctx<'_>, status: &CloseStatus) {
            self.0.borrow_mut().push(format!("close {status:?}"));
        }
    }

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_client_frame(&mut v, fin, 0, op, [9, 8, 7, 6], payload);
        v
    }

    /// What [`drive`] saw: every byte written to the client, the handler's log, the metrics, how many reads the
    /// steady pass took, and after each turn the bytes the loop held and the buffer pool's state.
    type Seen = (Vec<u8>, Vec<String>, String, usize, Vec<(usize, (usize, usize, usize))>);

    /// One client on an endpoint (the steady pass on or off): the handshake, then each of `reads` as what one
    /// readiness event finds in the socket, read as a shell reads, and written to a socket that takes `room`
    /// bytes a turn (then it is full until the next turn's writable event); then turns with nothing to read until
    /// everything is written. Each turn is 400 ms after the one before, so that the buffer pool trims what it
    /// did not lend for a whole second.
    fn drive(steady: bool, reads: &[Vec<u8>], room: usize) -> Seen {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut ep = Endpoint::new(Config::new(), Box::new(Rec(log.clone())));
        ep.steady_off = !steady;
        let mut now = Instant::now();
        let id = ep.accept("127.0.0.1:4000".parse().unwrap(), now).unwrap();
        let (mut wire, mut held) = (Vec::new(), Vec::new());
        let idle = std::iter::repeat_n(&[][..], 8);
        for chunk in std::iter::once(HEAD).chain(reads.iter().map(Vec::as_slice)).chain(idle) {
            let mut socket = chunk.to_vec();
            let mut left = room;
            ep.ready(id, !chunk.is_empty(), true, false);
            while let Some(op) = ep.poll_read(now) {
                let (a, b) = ep.read_bufs(&op);
                let n = socket.len().min(op.max);
                let result = if n == 0 {
                    Err(io::ErrorKind::WouldBlock.into())
                } else if op.peek && op.count_only {
                    Ok(n)
                } else {
                    let k = n.min(a.len());
                    a[..k].copy_from_slice(&socket[..k]);
                    b[..n - k].copy_from_slice(&socket[k..n]);
                    if !op.peek {
                        socket.drain(..n);
                    }
                    Ok(n)
                };
                ep.received(op, result, now);
                write_some(&mut ep, &mut wire, &mut left, now);
            }
            write_some(&mut ep, &mut wire, &mut left, now);
            ep.handle_timeout(now);
            ep.end_turn(now);
            write_some(&mut ep, &mut wire, &mut left, now);
            while ep.poll_order().is_some() {}
            held.push((ep.held_bytes(), ep.bufs.shape()));
            now += Duration::from_millis(400);
        }
        let metrics = format!("{:?}", ep.metrics());
        let taken = ep.steady_taken;
        drop(ep);
        let log = log.borrow().clone();
        (wire, log, metrics, taken, held)
    }

    /// Takes of every transmit what the socket has room for (`left`, counted down).
    fn write_some(ep: &mut Endpoint, wire: &mut Vec<u8>, left: &mut usize, now: Instant) {
        while let Some(t) = ep.poll_transmit(now) {
            let mut buf = [&[][..]; MAX_PARTS];
            let (id, n) = (t.id, t.len().min(*left));
            let mut want = n;
            for p in t.parts(&mut buf) {
                let k = p.len().min(want);
                wire.extend_from_slice(&p[..k]);
                want -= k;
            }
            *left -= n;
            ep.sent(id, if n == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }, now);
        }
    }

    /// [`drive`] with the steady pass off and on: the same bytes to the client, handler calls, metrics, and bytes
    /// held and pool after every turn (`what` names the case); none of the reads taken with the pass off. Returns
    /// how many reads the pass took.
    fn same_both_ways(reads: &[Vec<u8>], room: usize, what: &str) -> usize {
        let (wire_g, log_g, metrics_g, none, held_g) = drive(false, reads, room);
        let (wire_s, log_s, metrics_s, taken, held_s) = drive(true, reads, room);
        assert_eq!(none, 0, "{what}: reads taken with the pass off");
        assert_eq!(log_s, log_g, "{what}: the handler's calls");
        assert_eq!(wire_s, wire_g, "{what}: the bytes to the client");
        assert_eq!(metrics_s, metrics_g, "{what}: the metrics");
        assert_eq!(held_s, held_g, "{what}: the bytes held and the pool after each turn");
        taken
    }

    /// The endpoint with the steady pass and without it: the same bytes to the client, the same handler calls,
    /// the same metrics, for reads the pass takes and reads it leaves, in any order; and the pass takes the
    /// reads it is meant for.
    #[test]
    fn the_steady_pass_is_the_general_path_at_the_endpoint() {
        let f = |op, payload: &[u8]| frame(true, op, payload);
        let big = vec![b'z'; 3000];
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
            (vec![echo.clone(), close, echo], 1),
        ];
        for (i, (reads, meant)) in scenarios.iter().enumerate() {
            let taken = same_both_ways(reads, usize::MAX, &format!("scenario {i}"));
            assert_eq!(taken, *meant, "scenario {i}: reads taken by the steady pass");
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
        let reads = [
            vec![large.clone(), echo.clone(), mid.clone(), f(OpCode::Text, b"twice"), echo.clone()],
            vec![echo.clone(), large.clone(), echo.clone(), echo.clone(), f(OpCode::Text, b"other"), echo.clone()],
            vec![mid.clone(), large.clone(), mid, echo.clone(), echo.clone()],
            vec![large.clone(), echo.clone(), f(OpCode::Text, b"twice"), echo.clone(), f(OpCode::Text, b"other")],
            // (Empty: a turn without a read. The large echo is written, its buffer pooled, then lent to the
            // 50,000-byte message's answer, which waits for the socket.)
            vec![large, vec![], vec![], vec![], echo.clone(), wide, vec![], vec![], echo],
        ];
        for (i, reads) in reads.iter().enumerate() {
            for room in [0, 7, 1000, 30_000, usize::MAX] {
                let taken = same_both_ways(reads, room, &format!("scenario {i}, room {room}"));
                assert!(taken > 0, "scenario {i}, room {room}: the pass took no read");
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
