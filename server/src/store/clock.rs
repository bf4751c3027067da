//! Hybrid logical clock: `hlc = (unix millis << 16) | logical counter`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest HLC value the clock will ever adopt from a remote peer.
///
/// HLC values are stored in SQLite `INTEGER` columns (signed 64-bit), so they must fit
/// in 63 bits; the margin leaves room for 2^32 local increments after it. Remote values
/// above it are ignored by [`Store::observe_hlc`](crate::store::Store::observe_hlc) (replication must reject such versions).
pub const MAX_HLC: u64 = (i64::MAX as u64) - (1 << 32);

/// Current wall clock in unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A hybrid logical clock shared between the writer (which ticks it) and replication
/// (which observes remote timestamps).
///
/// Every value returned by [`Hlc::tick_at`] is strictly greater than every value previously
/// returned by `tick_at` and every value passed to [`Hlc::observe`] (up to [`MAX_HLC`]).
#[derive(Debug)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A clock that will only issue timestamps greater than `floor`.
    pub fn new(floor: u64) -> Hlc {
        Hlc {
            last: AtomicU64::new(floor.min(MAX_HLC)),
        }
    }

    /// The next timestamp for wall clock `now_ms` (unix millis, read by the caller):
    /// `max(now_ms << 16, last + 1)`. A stale `now_ms` only makes the logical part count
    /// up; the result is still greater than every earlier one.
    pub fn tick_at(&self, now_ms: u64) -> u64 {
        let phys = now_ms << 16;
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = phys.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(cur) => last = cur,
            }
        }
    }

    /// Advance the clock so that future ticks exceed `remote`.
    pub fn observe(&self, remote: u64) {
        if remote <= MAX_HLC {
            self.last.fetch_max(remote, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_strictly_increase_whatever_the_wall_clock_says() {
        let clock = Hlc::new(0);
        let a = clock.tick_at(1_000);
        assert_eq!(a, 1_000 << 16);
        // The same millisecond (a transaction reads the clock once): the logical part counts.
        let b = clock.tick_at(1_000);
        assert_eq!(b, a + 1);
        // A wall clock that went back changes nothing but the count.
        let c = clock.tick_at(999);
        assert_eq!(c, b + 1);
        // A later millisecond takes over.
        assert_eq!(clock.tick_at(1_001), 1_001 << 16);
        // An observed remote timestamp is passed.
        clock.observe(5_000 << 16);
        assert_eq!(clock.tick_at(1_002), (5_000 << 16) + 1);
        // A timestamp past MAX_HLC is ignored.
        clock.observe(u64::MAX);
        assert_eq!(clock.tick_at(1_003), (5_000 << 16) + 2);
    }
}
