//! Deferred upgrades: `on_open` parks an upgrade ([`Ctx::defer_upgrade`]) and its answer comes later, from any
//! thread ([`crate::Deferred`]). Meanwhile the connection reads nothing (the core waits for a decision), any
//! bytes the client sent after its request wait in the stash, and the handshake deadline still runs.

use super::*;

/// What an upgrade `on_open` deferred needs when its answer comes: what the limits and the policy said then.
#[derive(Debug)]
pub(super) struct Parked {
    /// The peer's address as the per-IP limit counts it.
    pub(super) ip: IpAddr,
    /// The subprotocol the policy (or `ctx.accept_protocol`) chose, if any.
    pub(super) chosen: Option<String>,
    /// The subprotocols the client offered: an answer may only pick one of these.
    pub(super) offered: Vec<String>,
}

impl Endpoint {
    /// `on_open` deferred the upgrade of `key`: it waits for [`Endpoint::answer`].
    pub(super) fn park(&mut self, key: usize, parked: Parked) {
        self.parked.insert(key, parked);
        Metrics::add(&self.shared.metrics.upgrades_deferred, 1);
    }

    /// Keeps `input[off..n]` (the read buffer, or the plaintext one when `plain`), what the client of a deferred
    /// upgrade sent after its request, for after the answer. RFC 6455 §4.1 has a client wait for the answer
    /// before sending more: one that sends more than [`STASH_COPY`] is dropped.
    #[cold]
    pub(super) fn keep_for_answer(&mut self, key: usize, plain: bool, off: usize, n: usize, now: Instant) {
        if n - off > STASH_COPY {
            if let Some(slot) = self.slots.get_mut(key) {
                slot.conn.abort(now);
            }
            return;
        }
        self.stash_input(key, plain, off, n);
    }

    /// The answer to a deferred upgrade (`status` 0: accept, with `bytes` the subprotocol asked for; else refuse
    /// with `status` and `bytes` as the body). An id that is not a deferred upgrade of this loop (already
    /// answered, timed out, gone) is ignored.
    pub(super) fn answer(&mut self, id: ConnId, status: u16, bytes: &[u8], now: Instant) {
        let Some(key) = self.key_of(id) else { return };
        let Some(p) = self.parked.remove(&key) else { return };
        let config = &*self.config;
        let refused = if status != 0 {
            Some((Why::Handler, status, bytes.to_vec()))
        } else {
            events::capacity(config, self.open, &self.per_ip, p.ip).err()
        };
        if let Some((why, status, body)) = refused {
            let slot = &mut self.slots[key];
            events::refuse(&self.shared.metrics, &mut slot.conn, why, status, &body, now);
            // (What it sent early goes with the slot, `remove_with`.)
            self.unopened(key, &CloseStatus::Refused { status });
            return self.mark_dirty(key);
        }
        let offered = |a: &&str| !a.is_empty() && p.offered.iter().any(|o| o == a);
        let asked = std::str::from_utf8(bytes).ok().filter(offered).map(str::to_string);
        let protocol = asked.or(p.chosen);
        self.opened(key, p.ip, protocol.as_deref(), now);
        // Its 101 goes out at the end of the turn; then what it sent meanwhile is read, and what waits in its
        // socket.
        self.mark_dirty(key);
        self.defer(key);
    }

    /// `on_close` for a deferred upgrade that never opened (refused, timed out, dropped), so that what the
    /// handler keeps for it can go.
    pub(super) fn unopened(&mut self, key: usize, status: &CloseStatus) {
        let Some(slot) = self.slots.get(key) else { return };
        let id = self.id_of(key);
        let mut ctx = Ctx::new(id, slot.peer, &mut self.queue, &self.shared.metrics, &self.table, 0);
        ctx.closed = true;
        let handler = &mut self.handler;
        guarded(id, "on_close", || handler.on_close(&mut ctx, status));
    }
}
