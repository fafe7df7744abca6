//! The steady path: a read that drained the socket of an open, plain connection and holds exactly one whole data
//! frame — what an echo or chat server sees for nearly every message — handled in one pass, from the read to the
//! handler's answer queued as the next transmit. It has the general path's effects exactly (a test feeds both
//! the same reads and compares); anything else about the read (TLS, deflate, a rate limit, a frame cut by the
//! read or followed by another, a message being assembled, a cut burst, a read straight into a message) takes
//! the general path ([`Endpoint::received`] → `read_some` → `input` → [`Endpoint::feed`]).

use super::events::{handler_panicked, other_event};
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
        let gen = read.id.generation();
        if !self.stash.is_empty() || self.direct.is_some() || self.table.get(key).map(|e| e.gen) != Some(gen) {
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
        // From here on, what the general path does with such a read, in its order.
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
            // (What `feed_done` does, knowing that nothing was lent: the message was in the input.)
            *echo_src = None;
            take_back(bufs, &mut slot.conn);
            // (Open, nothing queued ahead of the echo, nothing half-read: what `is_quiet` asks of the core, but
            // a buffer held.)
            if slot.owes_nothing(table[key].queued()) && !slot.conn.holds_buffer() {
                turn::arm(timers, key, gen, slot);
                true
            } else {
                touch(dirty, key, slot);
                false
            }
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
