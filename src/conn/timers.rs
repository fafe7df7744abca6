//! Deadlines: the handshake, message, keepalive, idle, lifetime, close and linger timers, on virtual time.

use super::*;

impl Connection {
    /// The earliest time at which [`Connection::handle_timeout`] must be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::ReadingHead { deadline, .. }
            | State::AwaitingDecision { deadline, .. }
            | State::AwaitingResponse { deadline }
            | State::ClosingByUs { deadline, .. } => Some(*deadline),
            State::Open(rx) => {
                let msg = rx.msg.as_ref().filter(|_| !rx.msg_delivered).map(|m| m.deadline);
                match (msg, self.live_deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Closed { linger } => Some(*linger),
            State::Tunnel { deadline, .. } => *deadline,
        }
    }

    /// For a caller that keeps one timer per connection, armed at `armed` (`None`: no timer): the earlier deadline
    /// to arm it for, or `None` when the armed timer still comes first. It answers as
    /// `next_deadline().filter(|d| armed.map_or(true, |a| *d < a))` would, without recomputing the deadline on the
    /// steady path: while the connection is open and no deadline has started or stopped since the last answer
    /// (no message begun, no keepalive ping sent or answered), its deadlines can only have moved later (the peer's
    /// traffic pushes the idle and keepalive ones back). A timer that then fires early finds nothing due; the caller
    /// disarms it and asks again.
    #[inline]
    pub fn deadline_to_arm(&mut self, armed: Option<Instant>) -> Option<Instant> {
        let shape = self.deadline_shape();
        if shape != 0 && shape == self.armed_shape && armed.is_some() {
            return None;
        }
        self.deadline_changed(shape, armed)
    }

    /// The steady path of [`Connection::deadline_to_arm`] alone, for a caller that keeps the armed deadline in a
    /// form of its own: true when no deadline can have started or stopped since the last answer, so that an armed
    /// timer still comes first.
    #[inline]
    pub(crate) fn deadlines_steady(&self) -> bool {
        let shape = self.deadline_shape();
        shape != 0 && shape == self.armed_shape
    }

    /// Which deadlines are running. Bit 0: open; bit 1: a message is being assembled; bit 2: a keepalive ping
    /// awaits its pong. Other states set their deadlines once per state, but the state may change within its
    /// variant (a close cut short): 0, always computed.
    #[inline]
    fn deadline_shape(&self) -> u8 {
        match &self.state {
            State::Open(rx) => {
                let msg = rx.msg_open();
                1 | (msg as u8) << 1 | (self.ping_out as u8) << 2
            }
            _ => 0,
        }
    }

    /// [`Connection::deadline_to_arm`] when a deadline may have started or stopped (out of line: the steady
    /// path above needs no registers of its own).
    #[inline(never)]
    fn deadline_changed(&mut self, shape: u8, armed: Option<Instant>) -> Option<Instant> {
        self.armed_shape = shape;
        self.next_deadline().filter(|d| armed.map_or(true, |a| *d < a))
    }

    /// The earliest liveness deadline: idle, keepalive (ping due or pong overdue) or lifetime.
    pub(super) fn live_deadline(&self) -> Option<Instant> {
        let l = self.live.as_ref()?;
        let c = &self.config;
        let idle = c.idle_timeout.map(|d| l.last_rx + d);
        let ping = l.pong_deadline(c, self.ping_out).or_else(|| c.ping_interval.map(|d| l.last_rx + d));
        let life = self.lifetime_end();
        [idle, ping, life].into_iter().flatten().min()
    }

    // ── commands ────────────────────────────────────────────────────────────────────────────────────────────

    /// Acts on the deadlines that passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::ReadingHead { deadline, .. }
            | State::AwaitingDecision { deadline, .. }
            | State::AwaitingResponse { deadline }
                if now >= *deadline =>
            {
                self.ending().status = Some(CloseStatus::TimedOut(TimeoutKind::Handshake));
                self.discard_out();
                self.state = State::Closed { linger: now };
            }
            State::Open(rx) if rx.msg.as_ref().is_some_and(|m| !rx.msg_delivered && now >= m.deadline) => {
                self.fail(ProtocolError::MessageTimeout, now);
                self.ending().status = Some(CloseStatus::TimedOut(TimeoutKind::Message));
            }
            State::Open(_) if self.live_deadline().is_some_and(|d| now >= d) => self.liveness_timeout(now),
            State::ClosingByUs { deadline, .. } if now >= *deadline => {
                self.end_with(|| CloseStatus::TimedOut(TimeoutKind::Close));
                self.discard_out();
                self.state = State::Closed { linger: now };
            }
            State::Closed { linger } if now >= *linger => {
                self.discard_out();
            }
            _ => {}
        }
    }

    /// A liveness deadline passed: close for lifetime, idle or an unanswered ping, or send the keepalive ping.
    pub(super) fn liveness_timeout(&mut self, now: Instant) {
        let life = self.lifetime_end();
        let Some(l) = self.live.as_mut() else { return };
        let c = &self.config;
        let kind = if life.is_some_and(|end| now >= end) {
            Some((TimeoutKind::Lifetime, CloseCode::GOING_AWAY, "connection lifetime reached"))
        } else if c.idle_timeout.is_some_and(|d| now >= l.last_rx + d) {
            Some((TimeoutKind::Idle, CloseCode::GOING_AWAY, "idle timeout"))
        } else if l.pong_deadline(c, self.ping_out).is_some_and(|d| now >= d) {
            Some((TimeoutKind::Keepalive, CloseCode::INTERNAL, "keepalive ping timeout"))
        } else {
            if !self.ping_out && c.ping_interval.is_some_and(|d| now >= l.last_rx + d) {
                self.ping_out = true;
                if self.is_open() {
                    self.queue_control(OpCode::Ping, b"wskit");
                }
                // The ping goes to a peer not heard from for a while: if nothing was compressed for it since the
                // last ping either, its compressor goes (120 KiB at the default window). The server may drop its
                // context at any time; the next message starts a fresh one.
                if let Some(d) = self.deflate.as_deref_mut() {
                    if !std::mem::take(&mut d.used) {
                        d.compressor = None;
                    }
                }
            }
            None
        };
        if let Some((kind, code, reason)) = kind {
            let _ = self.close(code, reason, now);
            self.ending().status = Some(CloseStatus::TimedOut(kind));
        }
    }
}
