//! The single writer thread: group commit with one SAVEPOINT per job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use rusqlite::{params, CachedStatement, Connection, OptionalExtension};

use super::changes::ChangeHub;
use super::clock::{now_ms, Hlc};
use super::error::StoreError;
use super::hook::{Commit, CommitHook};
use super::schema::{META_CHANGES, META_HLC, META_SEQ, META_VECTOR_DIM};
use super::{
    Job, ReplicaId, SchemaChange, StoreStats, ToWriter, ValueKind, Version, WriteOp, WriteOutcome,
};

/// At most this many jobs go into one transaction.
pub const MAX_JOBS_PER_TXN: usize = 1024;
/// Stop draining more jobs into a transaction once it carries this many key+value bytes.
pub const MAX_BYTES_PER_TXN: usize = 8 * 1024 * 1024;

/// Counters behind [`StoreStats`].
#[derive(Debug, Default)]
pub struct StatCounters {
    /// See [`StoreStats::transactions`].
    pub transactions: AtomicU64,
    /// See [`StoreStats::jobs`].
    pub jobs: AtomicU64,
    /// See [`StoreStats::ops`].
    pub ops: AtomicU64,
    /// See [`StoreStats::failed_jobs`].
    pub failed_jobs: AtomicU64,
    /// See [`StoreStats::rejected_jobs`].
    pub rejected_jobs: AtomicU64,
    /// See [`StoreStats::commit_failures`].
    pub commit_failures: AtomicU64,
    /// See [`StoreStats::max_jobs_per_transaction`].
    pub max_jobs_per_transaction: AtomicU64,
}

impl StatCounters {
    /// A consistent-enough copy of the counters (each read independently).
    pub fn snapshot(&self) -> StoreStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            transactions: l(&self.transactions),
            jobs: l(&self.jobs),
            ops: l(&self.ops),
            failed_jobs: l(&self.failed_jobs),
            rejected_jobs: l(&self.rejected_jobs),
            commit_failures: l(&self.commit_failures),
            max_jobs_per_transaction: l(&self.max_jobs_per_transaction),
        }
    }
}

/// State shared by the `Store` handle and the writer thread.
#[derive(Debug)]
pub struct Shared {
    /// This store's replica id.
    pub replica: ReplicaId,
    /// The hybrid logical clock (ticked by the writer, observed by replication).
    pub clock: Hlc,
    /// The store's own subscribers to committed changes (the first commit hook).
    pub hub: ChangeHub,
    /// The other commit hooks, called in this order after the hub.
    pub hooks: Hooks,
    /// Writer counters.
    pub stats: StatCounters,
    /// Read cache: invalidated after each commit, before completions are sent.
    pub cache: Arc<super::cache::ReadCache>,
    /// Key+value bytes of jobs sent to the writer and not yet applied.
    pub queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Change sequence number of the last committed change.
    pub last_change: AtomicU64,
    /// Dimension of the database's vectors (0: none committed yet).
    pub vector_dim: AtomicU64,
}

/// The commit hooks given at open.
pub struct Hooks(pub Vec<Arc<dyn CommitHook>>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooks({})", self.0.len())
    }
}

/// WAL size past which the writer checkpoints itself (see `Writer::run`).
const WAL_HARD_LIMIT: u64 = 256 * 1024 * 1024;

/// Size of the WAL file of `db` (0 if absent).
fn wal_len(db: &std::path::Path) -> u64 {
    std::fs::metadata(super::schema::wal_path(db))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Pause of the checkpointer between two passes.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// An error that leaves the enclosing transaction unusable: every job in it fails.
struct Fatal(StoreError);

/// The writer thread's state.
pub struct Writer {
    conn: Connection,
    /// Database path, for the checkpointer's own connection.
    db_path: std::path::PathBuf,
    rx: Receiver<ToWriter>,
    shared: Arc<Shared>,
    /// Last local sequence number used (committed or inside the open transaction).
    seq: u64,
    /// Highest HLC written (committed or inside the open transaction).
    hlc_high: u64,
    /// Whether the full-text index is on (writes keep it up to date).
    fulltext: bool,
    /// Last change sequence number of a committed transaction.
    changes: u64,
    /// Dimension of the database's vectors (committed, or set inside the open
    /// transaction by its first vector); 0 while none was stored, and then a put
    /// without a vector need not look for one to remove.
    vector_dim: u64,
}

impl Writer {
    /// A writer continuing after local sequence number `seq`, stored HLC `hlc_high`
    /// and change sequence number `changes` (the `meta` values).
    pub fn new(
        conn: Connection,
        db_path: std::path::PathBuf,
        rx: Receiver<ToWriter>,
        shared: Arc<Shared>,
        (seq, hlc_high, changes): (u64, u64, u64),
    ) -> Writer {
        // If this cannot be read, every write's transaction fails at its first
        // statement anyway; assume the index exists so none would skip it.
        let fulltext = super::fulltext::is_on(&conn).unwrap_or(true);
        let vector_dim = shared.vector_dim.load(Ordering::Relaxed);
        Writer {
            conn,
            db_path,
            rx,
            shared,
            seq,
            hlc_high,
            fulltext,
            changes,
            vector_dim,
        }
    }

    /// Apply jobs until every sender is gone and the queue is drained, then checkpoint.
    ///
    /// Checkpoints (copying WAL frames back into the database file, with an fsync) run
    /// on a checkpointer thread with its own connection, not here: the writer's
    /// `wal_autocheckpoint` is off, and after each commit it nudges the checkpointer
    /// (a full nudge channel means one is already pending). So commits never wait
    /// behind a checkpoint's fsync.
    pub fn run(mut self) {
        let (nudge, nudged) = crossbeam_channel::bounded::<()>(1);
        let checkpointer = match super::schema::open_checkpointer(&self.db_path) {
            Ok(conn) => std::thread::Builder::new()
                .name("ringbase-ckpt".into())
                .spawn(move || {
                    while nudged.recv().is_ok() {
                        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                        // Let a few commits gather before the next pass.
                        std::thread::sleep(CHECKPOINT_PAUSE);
                    }
                })
                .ok(),
            Err(_) => None,
        };
        let mut commits: u64 = 0;
        if checkpointer.is_none() {
            // No checkpointer: let SQLite checkpoint in this thread as usual.
            let _ = self.conn.pragma_update(None, "wal_autocheckpoint", 1000);
        }
        // Jobs received but not yet applied (a burst can overflow a transaction).
        let mut queued: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
        // A schema change received behind queued jobs: made once they are applied.
        let mut schema = None;
        loop {
            if queued.is_empty() {
                match self.rx.recv() {
                    Ok(ToWriter::Jobs(jobs)) => queued.extend(jobs),
                    Ok(ToWriter::Schema(change, done)) => {
                        let _ = done.send(self.change_schema(&change));
                        continue;
                    }
                    Err(_) => break,
                }
            }
            let mut bytes = 0;
            let mut batch = Vec::new();
            loop {
                while batch.len() < MAX_JOBS_PER_TXN && bytes < MAX_BYTES_PER_TXN {
                    let Some(job) = queued.pop_front() else { break };
                    bytes += job.bytes;
                    batch.push(job);
                }
                if !queued.is_empty() || schema.is_some() {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(ToWriter::Jobs(jobs)) => queued.extend(jobs),
                    Ok(ToWriter::Schema(change, done)) => schema = Some((change, done)),
                    Err(_) => break,
                }
            }
            self.apply_batch(batch, bytes);
            if queued.is_empty() {
                if let Some((change, done)) = schema.take() {
                    let _ = done.send(self.change_schema(&change));
                }
            }
            let _ = nudge.try_send(());
            commits += 1;
            if commits.is_multiple_of(256) && wal_len(&self.db_path) > WAL_HARD_LIMIT {
                // The checkpointer cannot keep up (or readers pin old frames): bound
                // the WAL by checkpointing here, making writers wait this once.
                let _ = self
                    .conn
                    .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
            }
        }
        drop(nudge);
        if let Some(c) = checkpointer {
            let _ = c.join();
        }
        // Fold the WAL back into the main file and truncate it; errors here only cost
        // a longer recovery on next open.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        self.shared.hub.close_all();
    }

    /// Makes a schema change in its own transaction; `Ok(changed)`.
    fn change_schema(&mut self, change: &SchemaChange) -> Result<bool, StoreError> {
        let (sql, path) = match change {
            SchemaChange::SyncIndex => {
                return self.in_transaction(|c| {
                    let count = |c: &Connection| -> rusqlite::Result<i64> {
                        c.query_row(
                            "SELECT count(*) FROM sqlite_master WHERE name = 'records_by_writer'",
                            [],
                            |r| r.get(0),
                        )
                    };
                    let before = count(c)?;
                    c.execute_batch(super::sync::SYNC_INDEX)?;
                    Ok(count(c)? != before)
                });
            }
            SchemaChange::SetFulltext(on) => {
                let changed = self.in_transaction(|c| super::fulltext::set(c, *on))?;
                self.fulltext = *on;
                return Ok(changed);
            }
            SchemaChange::CreateIndex(path) => (
                format!(
                    "CREATE INDEX IF NOT EXISTS {} ON records({}) WHERE deleted = 0",
                    path.index_name(),
                    path.expr()
                ),
                path,
            ),
            SchemaChange::DropIndex(path) => {
                (format!("DROP INDEX IF EXISTS {}", path.index_name()), path)
            }
        };
        let name = format!("{}{}", super::fields::INDEX_PREFIX, path.as_str());
        let exists = |conn: &Connection| -> rusqlite::Result<bool> {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [&name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        };
        self.in_transaction(|c| {
            let before = exists(c)?;
            c.execute_batch(&sql)?;
            Ok(before != exists(c)?)
        })
    }

    /// Runs `f` in a transaction of its own (between write transactions): committed if
    /// it succeeds, rolled back if not.
    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn).and_then(|t| self.conn.execute_batch("COMMIT").map(|()| t)) {
            Ok(t) => Ok(t),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e.into())
            }
        }
    }

    /// Applies `batch` (jobs carrying `bytes` key+value bytes in all) in one transaction
    /// and sends the completions.
    fn apply_batch(&mut self, batch: Vec<Job>, bytes: usize) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .max_jobs_per_transaction
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        let (seq0, hlc0, dim0) = (self.seq, self.hlc_high, self.vector_dim);
        // One clock read per transaction: its writes commit together.
        let now_ms = now_ms();
        let mut tombstone_kinds = Vec::new();
        let (results, first_seq) = match self.transaction(&batch, now_ms, &mut tombstone_kinds) {
            Ok(done) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                (done.0, Some(done.1))
            }
            Err(Fatal(e)) => {
                stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                (self.seq, self.hlc_high, self.vector_dim) = (seq0, hlc0, dim0);
                (batch.iter().map(|_| Err(e.clone())).collect(), None)
            }
        };
        // The commit hook, before any completion goes out. First the read cache: no
        // reader may find an older value of a written key in the cache once its writer
        // has been told (see cache.rs). Then, for a committed transaction, everything
        // else that follows the store: the change hub and the hooks given at open, in
        // commit order, so that an acknowledged write has reached all of them.
        self.shared.cache.invalidate(
            batch
                .iter()
                .flat_map(|job| job.ops.iter().map(|op| op.key())),
        );
        if let Some(first_seq) = first_seq {
            self.shared
                .last_change
                .store(self.changes, Ordering::Release);
            self.shared
                .vector_dim
                .store(self.vector_dim, Ordering::Release);
            let commit = Commit {
                jobs: &batch,
                results: &results,
                tombstone_kinds: &tombstone_kinds,
                updated_at_ms: now_ms,
                first_seq,
            };
            self.shared.hub.committed(&commit);
            for hook in &self.shared.hooks.0 {
                hook.committed(&commit);
            }
        }
        shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let mut ops = 0u64;
        for (job, result) in batch.into_iter().zip(results) {
            match &result {
                Ok(outs) => ops += outs.len() as u64,
                Err(_) => {
                    stats.failed_jobs.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The receiver may be gone (client disconnected): nothing to tell then.
            let _ = job.done.send((job.ticket, result));
        }
        stats.ops.fetch_add(ops, Ordering::Relaxed);
    }

    /// Run all jobs in one transaction, their writes stamped with the wall clock
    /// `now_ms`; `Ok` only once COMMIT has returned, with the results and the change
    /// sequence number of the transaction's first change. The kinds of the records
    /// removed by deletes go to `tombstone_kinds`, in order (for [`Commit::changes`]).
    ///
    /// A job of several ops runs inside its own SAVEPOINT, so a failing op undoes the
    /// job's earlier ops and only that job fails. A job of one op needs none: SQLite
    /// makes each statement atomic, and an op that fails has changed nothing (a put's
    /// UPDATE that matched no row changed nothing before its INSERT). That saves two
    /// statements and a copy of every page the job touches into the statement journal.
    #[allow(clippy::type_complexity)]
    fn transaction(
        &mut self,
        batch: &[Job],
        now_ms: u64,
        tombstone_kinds: &mut Vec<ValueKind>,
    ) -> Result<(Vec<Result<Vec<WriteOutcome>, StoreError>>, u64), Fatal> {
        let sql = |e: rusqlite::Error| Fatal(e.into());
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
        let (seq0, dim0) = (self.seq, self.vector_dim);
        // Prepared once per transaction (not once per op): the statement cache hashes
        // the whole SQL text on every lookup.
        let mut st = Statements::prepare(&self.conn, self.fulltext).map_err(sql)?;
        let hlc0 = self.hlc_high;
        let mut clock = VersionClock {
            now_ms,
            shared: &self.shared,
            seq: &mut self.seq,
            hlc_high: &mut self.hlc_high,
            vector_dim: &mut self.vector_dim,
            merged: 0,
        };
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            let (seq, hlc, dim, merged) =
                (*clock.seq, *clock.hlc_high, *clock.vector_dim, clock.merged);
            let n_tombstones = tombstone_kinds.len();
            // With the full-text index on, or vectors in the database, an op may be
            // several statements.
            let savepoint = job.ops.len() > 1
                || st.fulltext.is_some()
                || *clock.vector_dim != 0
                || !job.coverage.is_empty()
                || job.ops.iter().any(WriteOp::has_vector);
            if savepoint {
                st.savepoint.execute([]).map_err(sql)?;
            }
            let applied = apply_ops(&mut st, &mut clock, &job.ops, tombstone_kinds)
                .and_then(|outs| store_coverage(&mut st, &job.coverage).map(|()| outs));
            match applied {
                Ok(outs) => {
                    if savepoint {
                        st.release.execute([]).map_err(sql)?;
                    }
                    results.push(Ok(outs));
                }
                Err(e) => {
                    if self.conn.is_autocommit() {
                        // SQLite rolled back the whole transaction (I/O error, disk full...).
                        return Err(Fatal(e));
                    }
                    if savepoint {
                        st.rollback_to.execute([]).map_err(sql)?;
                        st.release.execute([]).map_err(sql)?;
                    }
                    (*clock.seq, *clock.hlc_high, *clock.vector_dim) = (seq, hlc, dim);
                    clock.merged = merged;
                    tombstone_kinds.truncate(n_tombstones);
                    results.push(Err(e));
                }
            }
        }
        // Every local change (a put, or a delete that removed a live record) took one
        // local sequence number; every applied merge is a change too.
        let changes = *clock.seq - seq0 + clock.merged;
        if *clock.seq != seq0 {
            st.put_meta
                .execute(params![META_SEQ, *clock.seq as i64])
                .map_err(sql)?;
        }
        if *clock.hlc_high != hlc0 {
            st.put_meta
                .execute(params![META_HLC, *clock.hlc_high as i64])
                .map_err(sql)?;
        }
        if changes > 0 {
            st.put_meta
                .execute(params![META_CHANGES, (self.changes + changes) as i64])
                .map_err(sql)?;
        }
        if self.vector_dim != dim0 {
            st.put_meta
                .execute(params![META_VECTOR_DIM, self.vector_dim as i64])
                .map_err(sql)?;
        }
        drop(st);
        self.conn.execute_batch("COMMIT").map_err(sql)?;
        let first_seq = self.changes + 1;
        self.changes += changes;
        Ok((results, first_seq))
    }
}

/// The writer's statements, prepared once per transaction.
struct Statements<'c> {
    savepoint: CachedStatement<'c>,
    release: CachedStatement<'c>,
    rollback_to: CachedStatement<'c>,
    /// Overwrites a live record; matches no row if the key has none.
    update_live: CachedStatement<'c>,
    /// Inserts a record, or revives a tombstone.
    upsert: CachedStatement<'c>,
    /// Tombstones a live record, returning its kind; matches no row if there is none.
    delete_live: CachedStatement<'c>,
    put_meta: CachedStatement<'c>,
    /// Stores a key's vector (insert or replace).
    put_vector: CachedStatement<'c>,
    /// Removes a key's vector, if it has one.
    delete_vector: CachedStatement<'c>,
    /// Merges a remote version: inserts, or replaces the current version if the
    /// remote stamp is greater; changes no row otherwise.
    merge: CachedStatement<'c>,
    /// Replication's version-vector rows of one replica: delete, insert.
    delete_coverage: CachedStatement<'c>,
    insert_coverage: CachedStatement<'c>,
    /// Upkeep of the full-text index, while it is on.
    fulltext: Option<super::fulltext::Maintain<'c>>,
}

impl<'c> Statements<'c> {
    fn prepare(conn: &'c Connection, fulltext: bool) -> rusqlite::Result<Statements<'c>> {
        Ok(Statements {
            fulltext: if fulltext {
                Some(super::fulltext::Maintain::prepare(conn)?)
            } else {
                None
            },
            savepoint: conn.prepare_cached("SAVEPOINT job")?,
            release: conn.prepare_cached("RELEASE job")?,
            rollback_to: conn.prepare_cached("ROLLBACK TO job")?,
            update_live: conn.prepare_cached(
                "UPDATE records SET value = ?2, kind = ?3, hlc = ?4, replica = ?5, seq = ?6,
                   updated_at = ?7 WHERE key = ?1 AND deleted = 0",
            )?,
            upsert: conn.prepare_cached(
                "INSERT INTO records(key, value, kind, hlc, replica, seq, updated_at, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value,
                   kind = excluded.kind, hlc = excluded.hlc, replica = excluded.replica,
                   seq = excluded.seq, updated_at = excluded.updated_at, deleted = 0",
            )?,
            delete_live: conn.prepare_cached(
                "UPDATE records SET value = x'', hlc = ?2, replica = ?3, seq = ?4,
                   updated_at = ?5, deleted = 1 WHERE key = ?1 AND deleted = 0
                 RETURNING kind",
            )?,
            put_meta: conn.prepare_cached(
                "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            )?,
            put_vector: conn.prepare_cached(
                "INSERT INTO vectors(key, vec) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET vec = excluded.vec",
            )?,
            delete_vector: conn.prepare_cached("DELETE FROM vectors WHERE key = ?1")?,
            merge: conn.prepare_cached(
                "INSERT INTO records(key, value, kind, hlc, replica, seq, updated_at, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value,
                   kind = excluded.kind, hlc = excluded.hlc, replica = excluded.replica,
                   seq = excluded.seq, updated_at = excluded.updated_at,
                   deleted = excluded.deleted
                 WHERE excluded.hlc > records.hlc
                    OR (excluded.hlc = records.hlc AND excluded.replica > records.replica)",
            )?,
            delete_coverage: conn.prepare_cached("DELETE FROM sync_vv WHERE replica = ?1")?,
            insert_coverage: conn
                .prepare_cached("INSERT INTO sync_vv(replica, lo, hi) VALUES (?1, ?2, ?3)")?,
        })
    }
}

/// Hands out the versions of local writes: the next sequence number and an HLC tick.
struct VersionClock<'a> {
    /// Wall clock of the transaction (unix millis): the writes' `updated_at` and the
    /// physical part of their HLC.
    now_ms: u64,
    shared: &'a Shared,
    /// Last local sequence number used.
    seq: &'a mut u64,
    /// Highest HLC written.
    hlc_high: &'a mut u64,
    /// The database's vector dimension (0: none yet; the first vector sets it).
    vector_dim: &'a mut u64,
    /// Remote versions merged (applied) so far in the transaction.
    merged: u64,
}

impl VersionClock<'_> {
    /// Advances the clock past a remote stamp, so later local writes win over it.
    fn observe(&mut self, hlc: u64) {
        self.shared.clock.observe(hlc);
        if hlc <= super::clock::MAX_HLC {
            *self.hlc_high = (*self.hlc_high).max(hlc);
        }
    }

    fn next(&mut self) -> Version {
        *self.seq += 1;
        let hlc = self.shared.clock.tick_at(self.now_ms);
        *self.hlc_high = (*self.hlc_high).max(hlc);
        Version {
            hlc,
            replica: self.shared.replica,
            seq: *self.seq,
        }
    }
}

/// Apply one job's ops (inside the job's savepoint, if it has one). The kind of each
/// record a delete removes goes to `tombstone_kinds`.
///
/// Each op seeks its key once when the key holds a live record (an UPDATE that also
/// tells whether the record existed); a put of a new key, or over a tombstone, then
/// inserts.
fn apply_ops(
    st: &mut Statements<'_>,
    clock: &mut VersionClock<'_>,
    ops: &[WriteOp],
    tombstone_kinds: &mut Vec<ValueKind>,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut outs = Vec::with_capacity(ops.len());
    let updated_at_ms = clock.now_ms;
    for op in ops {
        match op {
            WriteOp::Put {
                key,
                value,
                kind,
                vector,
            } => {
                match vector {
                    Some(v) => {
                        // Validated on the caller's thread against the dimension of the
                        // moment; the first vector of a database is only known here.
                        super::vectors::check_vector(v, *clock.vector_dim as usize)?;
                        *clock.vector_dim = v.len() as u64;
                        st.put_vector
                            .execute(params![key, super::vectors::encode(v)])?;
                    }
                    None if *clock.vector_dim != 0 => {
                        st.delete_vector.execute([key])?;
                    }
                    None => {}
                }
                let version = clock.next();
                let row = params![
                    key,
                    value,
                    *kind as u8,
                    version.hlc as i64,
                    &version.replica[..],
                    version.seq as i64,
                    updated_at_ms as i64,
                ];
                let existed = st.update_live.execute(row)? == 1;
                if !existed {
                    st.upsert.execute(row)?;
                }
                if let Some(ft) = st.fulltext.as_mut() {
                    ft.update(key, (*kind == ValueKind::Json).then_some(value.as_slice()))?;
                }
                outs.push(WriteOutcome {
                    version: Some(version),
                    existed,
                });
            }
            WriteOp::Delete { key } => {
                let (seq, hlc_high) = (*clock.seq, *clock.hlc_high);
                let version = clock.next();
                let kind_tag: Option<i64> = st
                    .delete_live
                    .query_row(
                        params![
                            key,
                            version.hlc as i64,
                            &version.replica[..],
                            version.seq as i64,
                            updated_at_ms as i64,
                        ],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(kind_tag) = kind_tag else {
                    // Nothing live to delete: no tombstone, and the version goes unused
                    // (sequence numbers stay gapless).
                    (*clock.seq, *clock.hlc_high) = (seq, hlc_high);
                    outs.push(WriteOutcome {
                        version: None,
                        existed: false,
                    });
                    continue;
                };
                if let Some(ft) = st.fulltext.as_mut() {
                    ft.update(key, None)?;
                }
                if *clock.vector_dim != 0 {
                    st.delete_vector.execute([key])?;
                }
                tombstone_kinds.push(
                    u8::try_from(kind_tag)
                        .ok()
                        .and_then(|k| ValueKind::try_from(k).ok())
                        .unwrap_or(ValueKind::Bytes),
                );
                outs.push(WriteOutcome {
                    version: Some(version),
                    existed: true,
                });
            }
            WriteOp::Merge(rv) => {
                clock.observe(rv.version.hlc);
                let applied = st.merge.execute(params![
                    rv.key,
                    rv.value,
                    rv.kind as u8,
                    rv.version.hlc as i64,
                    &rv.version.replica[..],
                    rv.version.seq as i64,
                    rv.updated_at_ms as i64,
                    i64::from(rv.deleted),
                ])? == 1;
                if !applied {
                    outs.push(WriteOutcome {
                        version: None,
                        existed: false,
                    });
                    continue;
                }
                match &rv.vector {
                    Some(v) if !rv.deleted => {
                        super::vectors::check_vector(v, *clock.vector_dim as usize)?;
                        *clock.vector_dim = v.len() as u64;
                        st.put_vector
                            .execute(params![rv.key, super::vectors::encode(v)])?;
                    }
                    _ if *clock.vector_dim != 0 => {
                        st.delete_vector.execute([&rv.key])?;
                    }
                    _ => {}
                }
                if let Some(ft) = st.fulltext.as_mut() {
                    let json = !rv.deleted && rv.kind == ValueKind::Json;
                    ft.update(&rv.key, json.then_some(rv.value.as_slice()))?;
                }
                clock.merged += 1;
                outs.push(WriteOutcome {
                    version: Some(rv.version),
                    existed: false,
                });
            }
        }
    }
    Ok(outs)
}

/// Stores replication's version-vector rows of a job (inside its savepoint).
fn store_coverage(st: &mut Statements<'_>, coverage: &[super::Coverage]) -> Result<(), StoreError> {
    for c in coverage {
        st.delete_coverage.execute([&c.replica[..]])?;
        for &(lo, hi) in &c.runs {
            st.insert_coverage
                .execute(params![&c.replica[..], lo as i64, hi as i64])?;
        }
    }
    Ok(())
}
