//! Version vectors: for each replica, which of its write sequence numbers a replica
//! has delivered (applied, or learned to be superseded), as sets of intervals: the
//! contiguous prefix and the gaps above it cost a few numbers, not one per write.

use std::collections::BTreeMap;

/// A replica id (the store's 16 random bytes).
pub type ReplicaId = [u8; 16];

/// A set of sequence numbers (all >= 1), as sorted, disjoint, non-adjacent inclusive
/// intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    runs: Vec<(u64, u64)>,
}

impl SeqSet {
    /// The empty set.
    pub fn new() -> SeqSet {
        SeqSet::default()
    }

    /// `1..=n` (empty for 0).
    pub fn prefix(n: u64) -> SeqSet {
        let mut s = SeqSet::new();
        s.insert_range(1, n);
        s
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let i = self.runs.partition_point(|&(_, hi)| hi < seq);
        self.runs.get(i).is_some_and(|&(lo, _)| lo <= seq)
    }

    /// Adds `seq`.
    pub fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    /// Adds `lo..=hi` (nothing if `lo > hi`).
    pub fn insert_range(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        // Runs that overlap or touch [lo, hi] merge with it.
        let start = self
            .runs
            .partition_point(|&(_, h)| h.saturating_add(1) < lo);
        let end = self
            .runs
            .partition_point(|&(l, _)| l <= hi.saturating_add(1));
        let (mut nlo, mut nhi) = (lo, hi);
        if start < end {
            nlo = nlo.min(self.runs[start].0);
            nhi = nhi.max(self.runs[end - 1].1);
        }
        self.runs.splice(start..end, [(nlo, nhi)]);
    }

    /// Removes `seq`.
    pub fn remove(&mut self, seq: u64) {
        let i = self.runs.partition_point(|&(_, hi)| hi < seq);
        let Some(&(lo, hi)) = self.runs.get(i) else {
            return;
        };
        if seq < lo {
            return;
        }
        let mut repl = Vec::with_capacity(2);
        if lo < seq {
            repl.push((lo, seq - 1));
        }
        if seq < hi {
            repl.push((seq + 1, hi));
        }
        self.runs.splice(i..=i, repl);
    }

    /// Adds every member of `other` in `lo..=hi`.
    pub fn union_within(&mut self, other: &SeqSet, lo: u64, hi: u64) {
        for &(a, b) in &other.runs {
            self.insert_range(a.max(lo), b.min(hi));
        }
    }

    /// Adds every member of `other`.
    pub fn union(&mut self, other: &SeqSet) {
        self.union_within(other, 0, u64::MAX);
    }

    /// The largest `n` with `1..=n` all in the set (0 if 1 is not).
    pub fn contiguous(&self) -> u64 {
        match self.runs.first() {
            Some(&(1, hi)) => hi,
            _ => 0,
        }
    }

    /// The largest member (0 if empty).
    pub fn max(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.1)
    }

    /// The intervals, ascending.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// The members of `lo..=hi` that are not in the set, as intervals, ascending.
    pub fn missing_within(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = lo;
        for &(a, b) in &self.runs {
            if b < next {
                continue;
            }
            if a > hi {
                break;
            }
            if a > next {
                out.push((next, a - 1));
            }
            next = b.saturating_add(1);
            if next > hi {
                return out;
            }
        }
        if next <= hi {
            out.push((next, hi));
        }
        out
    }
}

/// What a replica has delivered of every replica's writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionVector {
    by_replica: BTreeMap<ReplicaId, SeqSet>,
}

impl VersionVector {
    /// The empty vector.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// Whether write `seq` of `replica` is delivered.
    pub fn covers(&self, replica: &ReplicaId, seq: u64) -> bool {
        self.by_replica
            .get(replica)
            .is_some_and(|s| s.contains(seq))
    }

    /// The delivered writes of `replica` (empty if none).
    pub fn get(&self, replica: &ReplicaId) -> Option<&SeqSet> {
        self.by_replica.get(replica)
    }

    /// Marks write `seq` of `replica` delivered.
    pub fn insert(&mut self, replica: ReplicaId, seq: u64) {
        self.entry(replica).insert(seq);
    }

    /// The delivered writes of `replica`, to change.
    pub fn entry(&mut self, replica: ReplicaId) -> &mut SeqSet {
        self.by_replica.entry(replica).or_default()
    }

    /// Every replica with a delivered write, and what was delivered.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaId, &SeqSet)> {
        self.by_replica.iter().filter(|(_, s)| s.max() > 0)
    }

    /// How many writes this vector covers that `other` does not.
    pub fn count_missing_from(&self, other: &VersionVector) -> u64 {
        let empty = SeqSet::new();
        self.iter()
            .map(|(r, mine)| {
                let theirs = other.by_replica.get(r).unwrap_or(&empty);
                mine.runs()
                    .iter()
                    .flat_map(|&(lo, hi)| theirs.missing_within(lo, hi))
                    .map(|(a, b)| b - a + 1)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Whether this vector covers every write `other` covers.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.iter().all(|(r, theirs)| {
            let mine = self.by_replica.get(r);
            theirs
                .runs()
                .iter()
                .all(|&(lo, hi)| mine.is_some_and(|m| m.missing_within(lo, hi).is_empty()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The interval set behaves like a plain set of numbers.
        #[test]
        fn seq_set_is_a_set(ops in proptest::collection::vec((0u8..4, 1u64..60, 0u64..8), 0..80)) {
            let mut s = SeqSet::new();
            let mut model = std::collections::BTreeSet::new();
            for (op, a, len) in ops {
                match op {
                    0 => { s.insert(a); model.insert(a); }
                    1 => { s.insert_range(a, a + len); model.extend(a..=a + len); }
                    2 => { s.remove(a); model.remove(&a); }
                    _ => {
                        let mut other = SeqSet::new();
                        other.insert_range(a, a + 2 * len);
                        s.union_within(&other, a + 1, a + len);
                        if len >= 1 { model.extend(a + 1..=a + len); }
                    }
                }
                // Runs stay sorted, disjoint and non-adjacent.
                for w in s.runs().windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", s.runs());
                }
                for x in 0..80 {
                    prop_assert_eq!(s.contains(x), model.contains(&x), "{} in {:?}", x, s.runs());
                }
                let missing: Vec<u64> = s.missing_within(5, 50).iter().flat_map(|&(a, b)| a..=b).collect();
                let want: Vec<u64> = (5..=50).filter(|x| !model.contains(x)).collect();
                prop_assert_eq!(missing, want);
                let contiguous = (1..).take_while(|x| model.contains(x)).last().unwrap_or(0);
                prop_assert_eq!(s.contiguous(), contiguous);
            }
        }
    }

    #[test]
    fn dominates_compares_coverage() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let mut x = VersionVector::new();
        x.entry(a).insert_range(1, 10);
        let mut y = VersionVector::new();
        y.entry(a).insert_range(2, 5);
        assert!(x.dominates(&y) && !y.dominates(&x));
        assert_eq!(x.count_missing_from(&y), 6);
        assert_eq!(y.count_missing_from(&x), 0);
        y.insert(b, 1);
        assert!(!x.dominates(&y));
        assert_eq!(y.count_missing_from(&x), 1);
        assert!(x.dominates(&VersionVector::new()));
    }
}
