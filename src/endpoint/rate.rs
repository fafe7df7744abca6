//! Per-connection rate limits (`Config::rate_limit`): each message a client sends is charged against a message
//! bucket and a byte bucket, kept as GCRA theoretical arrival times on the loop's clock (two instants per
//! connection, nothing to refill). Past a limit, the connection is shaped (reading pauses until it is back within
//! its rate) or closed with 1008, as configured. With no limit set, the message path tests one flag.

use super::*;
use crate::config::{RateLimit, RatePolicy};

/// One limit: `rate` units a second, `burst` units at once above it.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    rate: u64,
    burst: u64,
}

impl Gcra {
    fn new(rate: u64, burst: u64) -> Option<Gcra> {
        (rate > 0).then_some(Gcra { rate, burst: if burst == 0 { rate } else { burst } })
    }
    /// The time `units` take at the rate.
    fn span(&self, units: u64) -> Duration {
        Duration::from_nanos((u128::from(units) * 1_000_000_000 / u128::from(self.rate)).min(u64::MAX as u128) as u64)
    }
    /// Whether `units` more, arriving `now`, stay within the burst (a charge above the burst needs a full bucket).
    fn fits(&self, tat: Instant, units: u64, now: Instant) -> bool {
        tat.max(now) + self.span(units.min(self.burst)) <= now + self.span(self.burst)
    }
    /// Charges `units` arriving `now`; returns when the bucket is back within its burst.
    fn charge(&self, tat: &mut Instant, units: u64, now: Instant) -> Instant {
        *tat = (*tat).max(now) + self.span(units);
        self.back(*tat, now)
    }
    /// When a bucket charged up to `tat` is back within its burst (`now` at the earliest).
    fn back(&self, tat: Instant, now: Instant) -> Instant {
        tat.checked_sub(self.span(self.burst)).unwrap_or(now).max(now)
    }
}

/// What a message's charge came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the limits.
    Pass,
    /// Handled, but reading pauses until this instant.
    PauseUntil(Instant),
    /// Past a limit under [`RatePolicy::Close`]: closed with 1008, not handled.
    Close,
}

/// The loop's rate limits and each connection's buckets.
#[derive(Debug)]
pub(super) struct Rates {
    /// Whether any limit is set.
    pub(super) on: bool,
    messages: Option<Gcra>,
    bytes: Option<Gcra>,
    close: bool,
    /// Each connection's theoretical arrival times (messages, bytes), by slot; sized as connections open.
    tat: Vec<(Instant, Instant)>,
}

impl Rates {
    pub(super) fn new(c: &RateLimit) -> Rates {
        Rates {
            on: c.is_on(),
            messages: Gcra::new(u64::from(c.messages), u64::from(c.messages_burst)),
            bytes: Gcra::new(c.bytes, c.bytes_burst),
            close: c.policy == RatePolicy::Close,
            tat: Vec::new(),
        }
    }

    /// A connection opened in slot `key`: its buckets start full.
    pub(super) fn open(&mut self, key: usize, now: Instant) {
        if self.tat.len() <= key {
            self.tat.resize(key + 1, (now, now));
        }
        self.tat[key] = (now, now);
    }

    /// Charges a message of `len` payload bytes from slot `key`, arriving `now`. Under [`RatePolicy::Close`] a
    /// message that does not fit is refused uncharged; one that fits is charged in full (a message above the byte
    /// burst leaves a debt the next ones must wait out).
    pub(super) fn charge(&mut self, key: usize, len: usize, now: Instant) -> Verdict {
        let Some((m, b)) = self.tat.get_mut(key) else { return Verdict::Pass };
        let len = len as u64;
        if self.close && !(fits(self.messages, *m, 1, now) && fits(self.bytes, *b, len, now)) {
            return Verdict::Close;
        }
        let mut until = now;
        if let Some(g) = self.messages {
            until = until.max(g.charge(m, 1, now));
        }
        if let Some(g) = self.bytes {
            until = until.max(g.charge(b, len, now));
        }
        if until > now && !self.close {
            Verdict::PauseUntil(until)
        } else {
            Verdict::Pass
        }
    }

    /// When slot `key` is back within its limits (it may be now).
    pub(super) fn resume_at(&self, key: usize, now: Instant) -> Instant {
        let Some(&(m, b)) = self.tat.get(key) else { return now };
        let back = |g: Option<Gcra>, tat: Instant| g.map_or(now, |g| g.back(tat, now));
        back(self.messages, m).max(back(self.bytes, b))
    }
}

/// Whether `units` fit the limit `g` (no limit: they do).
fn fits(g: Option<Gcra>, tat: Instant, units: u64, now: Instant) -> bool {
    g.map_or(true, |g| g.fits(tat, units, now))
}

/// A connection went past its rate limit under [`RatePolicy::Pause`]: reading from it pauses until `until` (its
/// message is still handled).
#[cold]
#[inline(never)]
pub(super) fn throttle(flags: &mut Flags, timers: &mut Timers, m: &Metrics, id: ConnId, until: Instant) {
    if !flags.has(Flags::THROTTLED) {
        flags.set(Flags::THROTTLED);
        Metrics::add(&m.rate_limited_pauses, 1);
        timers.arm_throttle(id.index(), id.generation(), until);
    }
}

/// A connection went past its rate limit under [`RatePolicy::Close`]: closed with 1008, its message not handled.
#[cold]
#[inline(never)]
pub(super) fn close(conn: &mut Connection, m: &Metrics, now: Instant) {
    Metrics::add(&m.rate_limited_closes, 1);
    conn.fail(crate::ProtocolError::RateLimited, now);
}

impl Endpoint {
    /// A throttled connection's pause may be over: it is read again (at its place in the backlog), or its timer
    /// is armed for the rest.
    pub(super) fn throttle_due(&mut self, key: usize, gen: u32, now: Instant) {
        let Some(slot) = self.slots.get_mut(key).filter(|_| self.table[key].gen == gen) else { return };
        if !slot.flags.has(Flags::THROTTLED) {
            return;
        }
        let at = self.rates.resume_at(key, now);
        if at > now {
            return self.timers.arm_throttle(key, gen, at);
        }
        slot.flags.clear(Flags::THROTTLED);
        // Read again at its place in the backlog: first what waited in its stash, then its socket.
        self.defer(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(messages: u32, burst: u32, bytes: u64, policy: RatePolicy) -> Rates {
        let c = RateLimit { messages, messages_burst: burst, bytes, bytes_burst: 0, policy };
        let mut r = Rates::new(&c);
        r.open(0, Instant::now());
        r
    }

    #[test]
    fn a_burst_passes_then_each_message_costs_its_share_of_a_second() {
        let t0 = Instant::now();
        let mut r = rates(50, 10, 0, RatePolicy::Pause);
        r.open(0, t0);
        for _ in 0..10 {
            assert_eq!(r.charge(0, 100, t0), Verdict::Pass);
        }
        // The 11th is handled, and reading pauses for one message's share (20 ms).
        assert_eq!(r.charge(0, 100, t0), Verdict::PauseUntil(t0 + Duration::from_millis(20)));
        assert_eq!(r.resume_at(0, t0), t0 + Duration::from_millis(20));
        assert_eq!(r.resume_at(0, t0 + Duration::from_millis(20)), t0 + Duration::from_millis(20));
        // A second later the bucket is full again.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(r.charge(0, 100, t1), Verdict::Pass);
        }
    }

    #[test]
    fn under_the_close_policy_the_message_past_the_burst_closes() {
        let t0 = Instant::now();
        let mut r = rates(5, 0, 0, RatePolicy::Close);
        r.open(0, t0);
        for _ in 0..5 {
            assert_eq!(r.charge(0, 1, t0), Verdict::Pass);
        }
        assert_eq!(r.charge(0, 1, t0), Verdict::Close);
        assert_eq!(r.charge(0, 1, t0 + Duration::from_millis(200)), Verdict::Pass, "one message's share later");
    }

    #[test]
    fn bytes_are_charged_by_length_and_a_message_over_the_burst_needs_a_full_bucket() {
        let t0 = Instant::now();
        let mut r = rates(0, 0, 1000, RatePolicy::Close);
        r.open(0, t0);
        assert_eq!(r.charge(0, 5000, t0), Verdict::Pass, "passes on a full bucket, leaving a debt");
        assert_eq!(r.charge(0, 1, t0 + Duration::from_secs(3)), Verdict::Close, "the debt is still there");
        assert_eq!(r.charge(0, 1000, t0 + Duration::from_secs(5)), Verdict::Pass);
        let mut off = rates(0, 0, 0, RatePolicy::Close);
        assert!(!off.on);
        off.open(0, t0);
        assert_eq!(off.charge(0, 1 << 30, t0), Verdict::Pass);
    }
}
