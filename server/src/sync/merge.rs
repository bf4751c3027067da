//! The merge: which of two versions of a record wins. Pure code: no I/O, no clock of
//! its own (the caller passes the time).
//!
//! A version is `{key, value or tombstone, stamp = (hlc, replica), origin = (replica,
//! seq)}`. The greater stamp wins, deletes included; equal stamps are the same write
//! (a replica never issues an hlc twice). The merge never re-stamps: a version keeps
//! the stamp its writer gave it on every replica, which is what makes the result the
//! same whatever the order, duplication or grouping of deliveries (commutative,
//! associative, idempotent: the winner of a set is its maximum).
//!
//! A remote stamp more than the allowed drift ahead of the local clock (default 60 s)
//! is not admitted: the version is deferred (not applied, not counted as delivered, so
//! peers send it again) until the local clock has caught up. Without this a replica
//! with a clock far ahead (or a forged stamp) would win every conflict until the
//! other clocks reached its time, and drag every other clock there through HLC
//! observation. With it, a fast clock wins only over writes made within the drift of
//! its time: once the others' wall clocks pass its stamps, their new writes win.

use super::vv::ReplicaId;
use crate::store::RemoteVersion;

/// Default allowed drift of a remote stamp ahead of the local clock.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

/// The order of versions: hybrid logical clock, then replica id (ties between
/// replicas are broken by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Hybrid logical clock: unix milliseconds << 16 | logical counter.
    pub hlc: u64,
    /// The replica that made the write.
    pub replica: ReplicaId,
}

impl Stamp {
    /// The wall-clock time of the stamp, unix milliseconds.
    pub fn millis(&self) -> u64 {
        self.hlc >> 16
    }
}

/// One version of a record, as replicas exchange them: the store's
/// [`RemoteVersion`] (key, value or tombstone, vector, and the version its writer gave
/// it: `stamp = (hlc, replica)`, `origin = (replica, seq)`).
pub type RecordVersion = RemoteVersion;

impl RemoteVersion {
    /// Its place in the order of versions.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            hlc: self.version.hlc,
            replica: self.version.replica,
        }
    }

    /// Its writer's sequence number.
    pub fn seq(&self) -> u64 {
        self.version.seq
    }

    /// Its writer.
    pub fn origin(&self) -> ReplicaId {
        self.version.replica
    }
}

/// Whether `incoming` replaces the current version (`None`: the key has none).
pub fn wins(incoming: Stamp, current: Option<Stamp>) -> bool {
    current.is_none_or(|c| incoming > c)
}

/// Whether a remote stamp may be applied now, the local wall clock reading `now_ms`:
/// it is at most `max_drift_ms` ahead.
pub fn admissible(stamp: &Stamp, now_ms: u64, max_drift_ms: u64) -> bool {
    stamp.millis() <= now_ms.saturating_add(max_drift_ms)
}

/// The winner among versions of one key (the merge of a set of versions): the one with
/// the greatest stamp.
pub fn merge<'a>(
    versions: impl IntoIterator<Item = &'a RecordVersion>,
) -> Option<&'a RecordVersion> {
    versions.into_iter().max_by_key(|v| v.stamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ValueKind, Version};
    use proptest::prelude::*;

    fn version(hlc: u64, replica: u8, seq: u64, tombstone: bool) -> RecordVersion {
        RecordVersion {
            key: "k".into(),
            value: if tombstone {
                Vec::new()
            } else {
                vec![replica, seq as u8]
            },
            kind: ValueKind::Bytes,
            deleted: tombstone,
            vector: None,
            version: Version {
                hlc,
                replica: [replica; 16],
                seq,
            },
            updated_at_ms: 0,
        }
    }

    fn arb_versions() -> impl Strategy<Value = Vec<RecordVersion>> {
        // Few distinct hlcs and replicas, so ties and equal stamps happen. A stamp
        // names one write: equal stamps are the same version (a tombstone or not).
        proptest::collection::vec(
            (0u64..6, 0u8..3).prop_map(|(h, r)| {
                version(h, r, h * 3 + r as u64, (h + r as u64).is_multiple_of(3))
            }),
            1..12,
        )
    }

    /// Folds versions one by one into a current version, as a replica applies them.
    fn apply_all(start: Option<RecordVersion>, vs: &[RecordVersion]) -> Option<RecordVersion> {
        vs.iter().fold(start, |cur, v| {
            if wins(v.stamp(), cur.as_ref().map(|c| c.stamp())) {
                Some(v.clone())
            } else {
                cur
            }
        })
    }

    proptest! {
        /// Applying versions in any order, with duplicates, in any grouping gives the
        /// same result: the maximum stamp (commutative, associative, idempotent).
        #[test]
        fn merge_is_order_free(vs in arb_versions(), perm in any::<proptest::sample::Index>(), split in 0usize..12) {
            let want = merge(&vs).cloned();
            let mut shuffled = vs.clone();
            let n = shuffled.len();
            shuffled.rotate_left(perm.index(n));
            shuffled.reverse();
            prop_assert_eq!(apply_all(None, &shuffled), want.clone());
            // Twice (duplicates) changes nothing.
            let doubled: Vec<_> = vs.iter().chain(vs.iter()).cloned().collect();
            prop_assert_eq!(apply_all(None, &doubled), want.clone());
            // Grouping: merge two halves separately, then merge the winners.
            let (a, b) = vs.split_at(split.min(n));
            let left = apply_all(None, a);
            let right = apply_all(None, b);
            let together = apply_all(left, &right.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(together, want);
        }
    }

    #[test]
    fn greater_stamp_wins_deletes_included_ties_by_replica() {
        let put = version(10, 1, 1, false);
        let del = version(11, 1, 2, true);
        assert!(wins(del.stamp(), Some(put.stamp())));
        // An old put arriving late never resurrects a delete.
        assert!(!wins(put.stamp(), Some(del.stamp())));
        // Equal hlc: the greater replica id wins, on every replica alike.
        let a = version(20, 1, 3, false);
        let b = version(20, 2, 1, false);
        assert!(wins(b.stamp(), Some(a.stamp())) && !wins(a.stamp(), Some(b.stamp())));
        // The same version again is not a change.
        assert!(!wins(a.stamp(), Some(a.stamp())));
        assert!(wins(a.stamp(), None));
    }

    #[test]
    fn stamps_too_far_ahead_are_not_admitted() {
        let now = 1_000_000;
        let at = |ms: u64| Stamp {
            hlc: ms << 16 | 5,
            replica: [0; 16],
        };
        assert!(admissible(&at(now), now, DEFAULT_MAX_DRIFT_MS));
        assert!(admissible(&at(now + 60_000), now, DEFAULT_MAX_DRIFT_MS));
        assert!(!admissible(&at(now + 60_001), now, DEFAULT_MAX_DRIFT_MS));
        assert!(!admissible(
            &Stamp {
                hlc: u64::MAX,
                replica: [0; 16]
            },
            now,
            DEFAULT_MAX_DRIFT_MS
        ));
    }
}
