//! Replication's side of the store: reading versions by writer and the version
//! vector, for anti-entropy ([`crate::sync`]). Merging remote versions is a write
//! ([`super::WriteOp::Merge`], [`super::Store::merge`]).

use rusqlite::{params, OptionalExtension};

use super::reader::row_to_record;
use super::{Coverage, Reader, RemoteVersion, ReplicaId, SchemaChange, Store, StoreError};

impl Store {
    /// Makes the store ready to serve replication: the index of records by writer and
    /// sequence number, which [`Reader::versions_by_origin`] needs (made once, on the
    /// writer; a database that never replicates does not pay for it on every write).
    /// Returns whether it was created now.
    pub fn enable_sync(&self) -> Result<bool, StoreError> {
        self.schema_change(SchemaChange::SyncIndex)
    }
}

/// The SQL of the index [`Store::enable_sync`] makes.
pub(super) const SYNC_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS records_by_writer ON records(replica, seq)";

impl Reader {
    /// The current versions (tombstones included) written by `origin` with a sequence
    /// number above `after`, ascending, at most `limit`, with their vectors.
    pub fn versions_by_origin(
        &mut self,
        origin: &ReplicaId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RemoteVersion>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.key, r.value, r.kind, r.hlc, r.replica, r.seq, r.updated_at, r.deleted, v.vec
             FROM records r LEFT JOIN vectors v ON v.key = r.key
             WHERE r.replica = ?1 AND r.seq > ?2 ORDER BY r.seq LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![
            &origin[..],
            after.min(i64::MAX as u64) as i64,
            limit.min(i64::MAX as usize) as i64
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let rec = row_to_record(row)?;
            let deleted = row.get::<_, i64>(7)? != 0;
            let vector = match row.get::<_, Option<Vec<u8>>>(8)?.as_deref() {
                Some(blob) if !deleted => {
                    let mut v = Vec::new();
                    super::vectors::decode_into(&rec.key, blob, &mut v)?;
                    Some(v)
                }
                _ => None,
            };
            out.push(RemoteVersion {
                key: rec.key,
                value: rec.value,
                kind: rec.kind,
                deleted,
                vector,
                version: rec.version,
                updated_at_ms: rec.updated_at_ms,
            });
        }
        Ok(out)
    }

    /// This replica's last local sequence number (its own writes are `1..=` it).
    pub fn local_seq(&mut self) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT v FROM meta WHERE k = ?1")?;
        Ok(stmt
            .query_row([super::schema::META_SEQ], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// The version vector as stored, read in one transaction: the rows of every other
    /// replica, and this replica's last local sequence number (its own writes are
    /// `1..=` that).
    pub fn sync_state(&mut self) -> Result<(Vec<Coverage>, u64), StoreError> {
        let tx = self.conn.transaction()?;
        let local: u64 = tx
            .query_row(
                "SELECT v FROM meta WHERE k = ?1",
                [super::schema::META_SEQ],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                e => Err(e),
            })?;
        let mut rows: Vec<Coverage> = Vec::new();
        {
            let mut stmt =
                tx.prepare_cached("SELECT replica, lo, hi FROM sync_vv ORDER BY replica, lo")?;
            let mut q = stmt.query([])?;
            while let Some(row) = q.next()? {
                let blob: Vec<u8> = row.get(0)?;
                let replica: ReplicaId = blob.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt(format!("sync_vv: a replica id of {} bytes", blob.len()))
                })?;
                let (lo, hi) = (row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)? as u64);
                match rows.last_mut() {
                    Some(c) if c.replica == replica => c.runs.push((lo, hi)),
                    _ => rows.push(Coverage {
                        replica,
                        runs: vec![(lo, hi)],
                    }),
                }
            }
        }
        tx.commit()?;
        Ok((rows, local))
    }
}
