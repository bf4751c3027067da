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
/// Every value returned by [`Hlc::tick`] is strictly greater than every value previously
/// returned by `tick` and every value passed to [`Hlc::observe`] (up to [`MAX_HLC`]).
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

    /// The next timestamp: `max(now_ms << 16, last + 1)`.
    pub fn tick(&self) -> u64 {
        let phys = now_ms() << 16;
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
