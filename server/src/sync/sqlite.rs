//! The store as anti-entropy sees it: a [`VersionStore`] over SQLite. Versions are
//! read by writer through the index [`Store::enable_sync`] makes; a page is merged
//! by the writer in one transaction with the version-vector rows it advances
//! ([`Store::merge`]), and its applied versions go through the commit hook like local
//! writes (watchers, the vector index and the full-text index see them).

use std::sync::Arc;

use super::merge::RecordVersion;
use super::protocol::VersionStore;
use super::vv::{ReplicaId, SeqSet, VersionVector};
use crate::store::{Coverage, Reader, Store, StoreError, WriteOp};

/// A replica's storage for anti-entropy. Use it from one thread (the sync engine's):
/// it keeps the version vector in memory, written through on every merge.
pub struct SqliteVersionStore {
    store: Arc<Store>,
    reader: Reader,
    vv: VersionVector,
}

impl std::fmt::Debug for SqliteVersionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteVersionStore")
            .field("vv", &self.vv)
            .finish_non_exhaustive()
    }
}

impl SqliteVersionStore {
    /// Opens replication's view of `store` (making its index of records by writer if
    /// need be) and loads the version vector.
    pub fn open(store: Arc<Store>) -> Result<SqliteVersionStore, StoreError> {
        store.enable_sync()?;
        let mut reader = store.reader()?;
        let (rows, local) = reader.sync_state()?;
        let mut vv = VersionVector::new();
        for c in rows {
            let set = vv.entry(c.replica);
            for (lo, hi) in c.runs {
                set.insert_range(lo, hi);
            }
        }
        vv.entry(store.replica_id()).insert_range(1, local);
        Ok(SqliteVersionStore { store, reader, vv })
    }

    /// Brings this replica's own writes into the version vector (local writes commit
    /// without going through here): call before handling messages or ticking.
    pub fn refresh(&mut self) -> Result<(), StoreError> {
        let local = self.reader.local_seq()?;
        self.vv
            .entry(self.store.replica_id())
            .insert_range(1, local);
        Ok(())
    }
}

impl VersionStore for SqliteVersionStore {
    fn replica_id(&self) -> ReplicaId {
        self.store.replica_id()
    }

    fn version_vector(&self) -> VersionVector {
        self.vv.clone()
    }

    fn versions_by_origin(
        &mut self,
        origin: &ReplicaId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordVersion>, StoreError> {
        self.reader.versions_by_origin(origin, after, limit)
    }

    fn apply(&mut self, versions: Vec<RecordVersion>, vv: VersionVector) -> Result<(), StoreError> {
        let own = self.store.replica_id();
        let empty = SeqSet::new();
        // Only the rows of replicas whose coverage changed are written.
        let coverage: Vec<Coverage> = vv
            .iter()
            .filter(|(r, set)| **r != own && self.vv.get(r).unwrap_or(&empty) != *set)
            .map(|(r, set)| Coverage {
                replica: *r,
                runs: set.runs().to_vec(),
            })
            .collect();
        let ops = versions
            .into_iter()
            .map(|v| WriteOp::Merge(Box::new(v)))
            .collect();
        self.store.merge(ops, coverage)?;
        self.vv = vv;
        Ok(())
    }
}
