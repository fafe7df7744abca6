//! The timer table: one heap for every deadline of the loop, connections' and handlers' alike. A connection has
//! at most one live entry (its earliest deadline, `Slot::scheduled`); a handler timer is live while its sequence
//! number is the one recorded for its (connection, token). Stale entries are skipped when they come due, and
//! compacted away when they outnumber the live ones by far.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// An entry of the heap beside its deadline: 8 bytes, so that with its deadline one live connection costs 16
/// bytes here. Packed, in the order entries due at the same instant are taken: the kind in the top 2 bits; then a
/// connection's slot key (30 bits: a billion connections per loop, 256 GiB of slots) and generation (32 bits), or
/// a handler timer's sequence number (62 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer(u64);

/// What a [`Timer`] is for.
enum Kind {
    /// The connection's earliest deadline (handshake, message, keepalive, idle, lifetime, close, linger, drain).
    Conn { key: u32, gen: u32 },
    /// A handler timer, by its sequence number ([`Timers::handlers`] says whose).
    Handler { seq: u64 },
    /// A throttled connection may be back within its rate limit.
    Throttle { key: u32, gen: u32 },
}

impl Timer {
    const CONN: u64 = 0;
    const HANDLER: u64 = 1;
    const THROTTLE: u64 = 2;
    const LOW: u64 = (1 << 62) - 1;

    fn conn(kind: u64, key: usize, gen: u32) -> Timer {
        debug_assert!(key < 1 << 30, "slot key {key} past the timer table's 30 bits");
        Timer(kind << 62 | (key as u64 & 0x3fff_ffff) << 32 | u64::from(gen))
    }

    fn handler(seq: u64) -> Timer {
        Timer(Self::HANDLER << 62 | seq & Self::LOW)
    }

    fn kind(self) -> Kind {
        let (key, gen) = ((self.0 >> 32) as u32 & 0x3fff_ffff, self.0 as u32);
        match self.0 >> 62 {
            Self::CONN => Kind::Conn { key, gen },
            Self::HANDLER => Kind::Handler { seq: self.0 & Self::LOW },
            _ => Kind::Throttle { key, gen },
        }
    }
}

/// A deadline that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Connection `key` of generation `gen` was armed for it (it may have been re-armed or gone since).
    Conn { key: usize, gen: u32 },
    /// A live handler timer (an interval is armed again already).
    Handler { conn: u64, token: u64 },
    /// Connection `key` of generation `gen` was throttled until then (it may be gone since).
    Throttle { key: usize, gen: u32 },
}

/// `Slot::scheduled` when no timer is armed (292 years after the table's first instant: never a deadline).
pub(super) const NOT_ARMED: i64 = i64::MAX;

/// A heap deadline as an instant.
fn instant(epoch: Option<Instant>, at: i64) -> Option<Instant> {
    let e = epoch?;
    let d = Duration::from_nanos(at.unsigned_abs());
    Some(if at >= 0 { e + d } else { e.checked_sub(d).unwrap_or(e) })
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    /// Deadlines as nanoseconds from `epoch`, before it negative (8 bytes where an `Instant` takes 16).
    heap: BinaryHeap<Reverse<(i64, Timer)>>,
    /// The first instant this table was given; every other one is counted from it.
    epoch: Option<Instant>,
    /// The live sequence number and period of each handler timer, by (connection, token).
    live: HashMap<(u64, u64), (u64, Option<Duration>)>,
    /// Whose each handler timer's sequence number is, while it may still be in the heap.
    handlers: HashMap<u64, (u64, u64)>,
    seq: u64,
}

impl Timers {
    /// An instant as the heap holds it (about 292 years either side of the epoch).
    fn at(&mut self, t: Instant) -> i64 {
        let epoch = *self.epoch.get_or_insert(t);
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match t.checked_duration_since(epoch) {
            Some(after) => nanos(after),
            None => -nanos(epoch.duration_since(t)),
        }
    }

    /// The earliest entry's deadline (it may be stale: then it wakes the loop for nothing, once).
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().and_then(|Reverse((t, _))| instant(self.epoch, *t))
    }

    /// Entries in the heap, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Arms connection `key`'s timer for `at`; returns the deadline as the table keeps it (for
    /// `Slot::scheduled`).
    pub(super) fn arm_conn(&mut self, key: usize, gen: u32, at: Instant) -> i64 {
        let at = self.at(at);
        self.heap.push(Reverse((at, Timer::conn(Timer::CONN, key, gen))));
        at
    }

    /// Whether a deadline kept as the table keeps it ([`Timers::arm_conn`]) has come at `now`.
    #[inline]
    pub(super) fn has_come(&mut self, at: i64, now: Instant) -> bool {
        self.at(now) >= at
    }

    /// A deadline kept as the table keeps it, as an instant ([`NOT_ARMED`]: none).
    pub(super) fn instant_of(&self, at: i64) -> Option<Instant> {
        if at == NOT_ARMED {
            return None;
        }
        instant(self.epoch, at)
    }

    /// Arms the end of connection `key`'s rate-limit pause for `at`.
    pub(super) fn arm_throttle(&mut self, key: usize, gen: u32, at: Instant) {
        let at = self.at(at);
        self.heap.push(Reverse((at, Timer::conn(Timer::THROTTLE, key, gen))));
    }

    /// Starts (or replaces) a handler timer, due at `at` and then every `every` if given.
    pub(super) fn set_handler(&mut self, conn: u64, token: u64, at: Instant, every: Option<Duration>) {
        self.seq += 1;
        self.live.insert((conn, token), (self.seq, every));
        self.handlers.insert(self.seq, (conn, token));
        let at = self.at(at);
        self.heap.push(Reverse((at, Timer::handler(self.seq))));
    }

    pub(super) fn cancel_handler(&mut self, conn: u64, token: u64) {
        self.live.remove(&(conn, token));
    }

    /// The next entry due at `now`, skipping handler timers replaced or cancelled; an interval is armed again.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Due> {
        if self.heap.is_empty() {
            return None;
        }
        let now_at = self.at(now);
        while let Some(Reverse((t, timer))) = self.heap.peek().copied() {
            if t > now_at {
                return None;
            }
            self.heap.pop();
            match timer.kind() {
                Kind::Conn { key, gen } => return Some(Due::Conn { key: key as usize, gen }),
                Kind::Throttle { key, gen } => return Some(Due::Throttle { key: key as usize, gen }),
                Kind::Handler { seq } => {
                    let Some(&(conn, token)) = self.handlers.get(&seq) else { continue };
                    let live = self.live.get(&(conn, token)).copied().filter(|(l, _)| *l == seq);
                    let Some((_, every)) = live else {
                        self.handlers.remove(&seq); // replaced or cancelled
                        continue;
                    };
                    match every {
                        Some(d) => {
                            let next = self.at(now + d);
                            self.heap.push(Reverse((next, timer)));
                        }
                        None => {
                            self.live.remove(&(conn, token));
                            self.handlers.remove(&seq);
                        }
                    }
                    return Some(Due::Handler { conn, token });
                }
            }
        }
        None
    }

    /// Drops the stale entries (connections gone, deadlines moved earlier, handler timers replaced or cancelled)
    /// once they outnumber the live ones by far. Entries are otherwise skipped only when they come due, so a
    /// churn of short connections would leave one per connection for up to the longest deadline (tens of
    /// seconds): memory that grew with the connection rate, not with the connections held. Amortised O(1) per
    /// call. `armed(key, gen, at)`: whether that connection is armed for that deadline; `exists(id)`: whether a
    /// connection is still there.
    pub(super) fn compact(
        &mut self,
        connections: usize,
        armed: impl Fn(usize, u32, i64) -> bool,
        exists: impl Fn(u64) -> bool,
    ) {
        if self.heap.len() <= 2 * (connections + self.live.len()) + 1024 {
            return;
        }
        self.live.retain(|(conn, _), _| exists(*conn));
        let live = &self.live;
        self.handlers.retain(|seq, key| live.get(key).is_some_and(|&(l, _)| l == *seq));
        let handlers = &self.handlers;
        self.heap.retain(|Reverse((t, timer))| match timer.kind() {
            Kind::Conn { key, gen } => armed(key as usize, gen, *t),
            Kind::Handler { seq } => handlers.contains_key(&seq),
            Kind::Throttle { key, gen } => exists(u64::from(gen) << 32 | u64::from(key)),
        });
        if self.heap.capacity() > 4 * self.heap.len() + 1024 {
            self.heap.shrink_to(2 * self.heap.len() + 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_timers_fire_once_or_every_period_until_replaced_or_cancelled() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        t.set_handler(1, 7, t0 + s, None);
        t.set_handler(1, 8, t0 + s, Some(s));
        t.set_handler(1, 9, t0 + s, None);
        t.set_handler(1, 9, t0 + 3 * s, None); // replaces the first 9
        t.cancel_handler(1, 7);
        t.arm_conn(4, 2, t0 + 2 * s);
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + s), Some(Due::Handler { conn: 1, token: 8 }));
        assert_eq!(t.pop_due(t0 + s), None, "7 was cancelled, the first 9 replaced");
        let mut due = Vec::new();
        while let Some(d) = t.pop_due(t0 + 3 * s) {
            due.push(d);
        }
        assert!(due.contains(&Due::Conn { key: 4, gen: 2 }));
        assert!(due.contains(&Due::Handler { conn: 1, token: 9 }));
        assert_eq!(
            due.iter().filter(|d| **d == Due::Handler { conn: 1, token: 8 }).count(),
            1,
            "the interval came again"
        );
    }

    #[test]
    fn compaction_keeps_only_live_entries() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for key in 0..5000 {
            t.arm_conn(key, 1, t0 + Duration::from_secs(key as u64 % 7 + 1));
        }
        // Connection 3 alone is still armed (for its deadline), the rest are gone.
        let d3 = t0 + Duration::from_secs(4);
        let a3 = t.at(d3);
        t.compact(1, |key, gen, at| key == 3 && gen == 1 && at == a3, |_| false);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next(), Some(d3));
    }

    #[test]
    fn entries_keep_whole_generations_and_sort_by_kind_then_key() {
        let big = Timer::conn(Timer::CONN, (1 << 30) - 1, u32::MAX);
        assert!(matches!(big.kind(), Kind::Conn { key, gen: u32::MAX } if key == (1 << 30) - 1));
        let throttle = Timer::conn(Timer::THROTTLE, 5, 0xab00_0001);
        assert!(matches!(throttle.kind(), Kind::Throttle { key: 5, gen: 0xab00_0001 }));
        assert!(matches!(Timer::handler(42).kind(), Kind::Handler { seq: 42 }));
        assert!(Timer::conn(Timer::CONN, 1, u32::MAX) < Timer::conn(Timer::CONN, 2, 0));
        assert!(big < Timer::handler(0) && Timer::handler(Timer::LOW) < throttle);
    }

    #[test]
    fn entries_are_16_bytes_and_deadlines_before_the_first_one_fire_on_time() {
        assert_eq!(std::mem::size_of::<Reverse<(i64, Timer)>>(), 16);
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm_conn(1, 1, t0 + Duration::from_secs(30)); // the epoch
        t.arm_conn(2, 1, t0 + Duration::from_secs(10)); // before it
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(10)), Some(Due::Conn { key: 2, gen: 1 }));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(29)), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(31)), Some(Due::Conn { key: 1, gen: 1 }));
    }
}
