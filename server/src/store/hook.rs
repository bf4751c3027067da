//! The commit hook: the one place where the rest of the server learns of committed writes.
//!
//! After each successful `COMMIT` the writer thread hands the transaction to every
//! [`CommitHook`] given to [`super::Store::open_with_hooks`] (and to the store's own
//! change hub), in commit order, *before* any of the transaction's writers is told that
//! its write is done. So a client that has its acknowledgement knows that every hook has
//! seen the write: an index that applies (or queues) the change in its hook can serve
//! that client's next query with the write included.
//!
//! A hook runs on the writer thread, so it must not block: every later write waits for
//! it. Work that takes longer than a few microseconds per change belongs on the hook
//! owner's own thread, fed from the hook.

use super::error::StoreError;
use super::{Job, Record, ValueKind, Version, WriteOp, WriteOutcome};

/// Receives every committed transaction, in commit order, on the writer thread.
pub trait CommitHook: Send + Sync {
    /// Called once per committed transaction, before its writers are acknowledged.
    /// Must not block (see the module docs).
    fn committed(&self, commit: &Commit<'_>);
}

/// A committed transaction, as seen by a [`CommitHook`]: borrowed from the writer, so
/// looking costs nothing and keeping means copying ([`Change::to_record`]).
#[derive(Clone, Copy)]
pub struct Commit<'a> {
    pub(super) jobs: &'a [Job],
    pub(super) results: &'a [Result<Vec<WriteOutcome>, StoreError>],
    /// Kinds of the records removed by the transaction's deletes, in order.
    pub(super) tombstone_kinds: &'a [ValueKind],
    pub(super) updated_at_ms: u64,
    /// Change sequence number of the first change.
    pub(super) first_seq: u64,
}

impl<'a> Commit<'a> {
    /// The records this transaction wrote, in the order they were applied: puts and
    /// tombstones (a key may appear more than once). Failed jobs and deletes of keys
    /// that held no live record contribute nothing.
    pub fn changes(&self) -> impl Iterator<Item = Change<'a>> + 'a {
        let updated_at_ms = self.updated_at_ms;
        let mut tombstone_kinds = self.tombstone_kinds.iter();
        let mut seq = self.first_seq;
        self.jobs
            .iter()
            .zip(self.results)
            .filter_map(|(job, result)| Some(job.ops.iter().zip(result.as_ref().ok()?)))
            .flatten()
            .filter_map(move |(op, out)| {
                let version = out.version?;
                let this = seq;
                seq += 1;
                Some(match op {
                    WriteOp::Put {
                        key,
                        value,
                        kind,
                        vector,
                    } => Change {
                        seq: this,
                        key,
                        value,
                        kind: *kind,
                        vector: vector.as_deref(),
                        version,
                        updated_at_ms,
                        deleted: false,
                    },
                    WriteOp::Merge(rv) => Change {
                        seq: this,
                        key: &rv.key,
                        value: &rv.value,
                        kind: rv.kind,
                        vector: if rv.deleted {
                            None
                        } else {
                            rv.vector.as_deref()
                        },
                        version,
                        updated_at_ms: rv.updated_at_ms,
                        deleted: rv.deleted,
                    },
                    WriteOp::Delete { key } => Change {
                        seq: this,
                        key,
                        value: &[],
                        vector: None,
                        // The writer records one kind per delete that wrote a tombstone.
                        kind: tombstone_kinds.next().copied().unwrap_or(ValueKind::Bytes),
                        version,
                        updated_at_ms,
                        deleted: true,
                    },
                })
            })
    }

    /// Wall-clock time of the transaction's writes, unix milliseconds.
    pub fn updated_at_ms(&self) -> u64 {
        self.updated_at_ms
    }

    /// Change sequence number of the transaction's first change (the others follow
    /// one by one; a transaction without changes has none, and the next one starts here).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }
}

/// One record written by a committed transaction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change<'a> {
    /// Change sequence number: every committed change gets the next one, in commit
    /// order, persisted with the change (it continues after a restart).
    pub seq: u64,
    /// The key.
    pub key: &'a str,
    /// The new value (empty for a tombstone).
    pub value: &'a [u8],
    /// The value's kind (for a tombstone, the kind of the record it removed).
    pub kind: ValueKind,
    /// The record's vector, if the put stored one (`None`: the record has none now).
    pub vector: Option<&'a [f32]>,
    /// The version of this write.
    pub version: Version,
    /// Wall-clock time of the write, unix milliseconds.
    pub updated_at_ms: u64,
    /// True for a tombstone.
    pub deleted: bool,
}

impl Change<'_> {
    /// An owned copy.
    pub fn to_record(&self) -> Record {
        Record {
            key: self.key.to_string(),
            value: self.value.to_vec(),
            kind: self.kind,
            version: self.version,
            updated_at_ms: self.updated_at_ms,
            deleted: self.deleted,
        }
    }
}
