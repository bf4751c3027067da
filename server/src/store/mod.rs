//! The storage engine: records with CRDT versions in SQLite (WAL), one group-committing
//! writer thread, lock-free-for-readers read connections, and the single publication
//! point for committed changes.
//!
//! # Model
//!
//! A record maps a key (non-empty UTF-8 without NUL, at most
//! [`StoreOptions::max_key_len`] bytes) to a value tagged [`ValueKind::Json`] (validated
//! on put) or [`ValueKind::Bytes`]. Every write stamps a [`Version`]: a hybrid logical
//! clock timestamp, this store's replica id and the replica's write sequence number.
//! A delete keeps the row as a tombstone (empty value, `deleted = 1`, new version), so
//! replication can later merge by "greatest `(hlc, replica)` wins", deletes included.
//!
//! # Writes
//!
//! [`Store::submit`] (or [`Store::prepare`] and a session's [`JobQueue`]) validates a job
//! on the caller's thread (nothing invalid reaches SQLite) and queues it. The writer
//! thread blocks for the first job, drains what else is
//! queued (up to [`MAX_JOBS_PER_TXN`] jobs or [`MAX_BYTES_PER_TXN`] bytes), applies them
//! in one transaction with one `SAVEPOINT` per job of several ops (a failing job rolls
//! back alone; a job is all-or-nothing), commits, and only then sends each completion. WAL with
//! `synchronous=NORMAL` makes a committed transaction survive a crash (`kill -9`) of the
//! process, so "acknowledged" means "durable against a process crash".
//!
//! # Reads
//!
//! [`Store::reader`] opens a separate read-only connection; in WAL mode readers never
//! wait for the writer.
//!
//! # The commit hook
//!
//! After each `COMMIT`, and before any of the transaction's writers is acknowledged, the
//! writer hands the transaction to the store's change hub (every
//! [`ChangeSubscription`], [`Store::subscribe`]) and then to each [`CommitHook`] given to
//! [`Store::open_with_hooks`], in commit order: the one place where the rest of the
//! server (indexes, change feeds, replication) learns of committed writes. See
//! [`ChangeEvent`] for how a slow subscriber is handled without ever blocking the writer.

#![warn(missing_docs)]

mod cache;
mod changes;
mod clock;
mod error;
mod fields;
mod fulltext;
mod hook;
mod reader;
mod schema;
mod sync;
mod vectors;
mod walbuf;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

pub use changes::{
    ChangeBatch, ChangeEvent, ChangeSubscription, DEFAULT_SUBSCRIPTION_CAPACITY,
    DEFAULT_SUBSCRIPTION_MAX_BYTES,
};
pub use clock::{now_ms, Hlc, MAX_HLC};
pub use error::StoreError;
pub use fields::{FieldFilter, JsonPath, MAX_PATH_LEN};
pub use fulltext::{DEFAULT_HITS, MAX_HITS};
pub use hook::{Change, Commit, CommitHook};
pub use reader::{prefix_successor, Reader};
pub use schema::SCHEMA_VERSION;
pub use vectors::{check_vector, MAX_VECTOR_DIM};
pub use writer::{MAX_BYTES_PER_TXN, MAX_JOBS_PER_TXN};

use writer::{Hooks, Shared, StatCounters, Writer};

/// The writer's queue: bursts of jobs. `None` once shut down. Senders hold the read lock
/// while sending, so after `shutdown` takes the write lock no job can slip in behind
/// the writer's exit.
type JobSender = Arc<RwLock<Option<Sender<ToWriter>>>>;

/// What the writer thread receives: bursts of write jobs, or a schema change (run
/// between transactions, after the jobs sent before it).
pub(crate) enum ToWriter {
    /// Write jobs, applied in group-commit transactions.
    Jobs(Vec<Job>),
    /// A schema change and where its result goes.
    Schema(SchemaChange, Sender<Result<bool, StoreError>>),
}

/// A schema change the writer makes on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SchemaChange {
    /// Create the index of a JSON field (result: whether it was created).
    CreateIndex(JsonPath),
    /// Drop the index of a JSON field (result: whether it existed).
    DropIndex(JsonPath),
    /// Turn the full-text index on or off (result: whether that changed anything).
    SetFulltext(bool),
    /// Create replication's index of records by writer (result: whether it was made).
    SyncIndex,
}

/// A session's outbox of write jobs: jobs are gathered while the session works through
/// a burst of requests and go to the writer together ([`JobQueue::flush`]), one channel
/// message and at most one wake-up of the writer per burst. The writer then finds the
/// whole burst queued and commits it in one transaction, instead of waking for the
/// first job and committing the few that had arrived by then.
pub struct JobQueue {
    tx: JobSender,
    jobs: Vec<Job>,
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

impl JobQueue {
    /// Adds a job (see [`Store::prepare`]); it is sent on the next [`JobQueue::flush`].
    pub fn push(&mut self, job: Job) {
        self.jobs.push(job);
    }

    /// Whether jobs wait to be sent.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Sends the gathered jobs to the writer. If the store is shut down, each job's
    /// completion reports [`StoreError::Closed`] instead, so no caller waits forever.
    pub fn flush(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.jobs);
        if let Err(jobs) = send_jobs(&self.tx, &self.queued, jobs) {
            for job in jobs {
                let _ = job.done.send((job.ticket, Err(StoreError::Closed)));
            }
        }
    }
}

impl Drop for JobQueue {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Sends a burst of jobs to the writer, counting their bytes in `queued` (the writer
/// subtracts them once applied); gives them back, uncounted, if the store is shut down.
fn send_jobs(tx: &JobSender, queued: &AtomicUsize, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
    let bytes: usize = jobs.iter().map(|j| j.bytes).sum();
    queued.fetch_add(bytes, Ordering::Relaxed);
    let guard = tx.read().unwrap_or_else(|p| p.into_inner());
    let sent = match guard.as_ref() {
        Some(tx) => tx
            .send(ToWriter::Jobs(jobs))
            .map_err(|e| match e.into_inner() {
                ToWriter::Jobs(jobs) => jobs,
                ToWriter::Schema(..) => unreachable!("sent jobs"),
            }),
        None => Err(jobs),
    };
    if sent.is_err() {
        queued.fetch_sub(bytes, Ordering::Relaxed);
    }
    sent
}

/// Name of the SQLite database file inside the data directory.
pub const DB_FILE: &str = "ringbase.db";

/// A replica id: 16 random bytes created once per data directory.
pub type ReplicaId = [u8; 16];

pub use ringbase_protocol::message::{ValueKind, Version};

/// A stored record (as read, or as published in a change event).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// The value bytes (empty for a tombstone).
    pub value: Vec<u8>,
    /// How to interpret `value`.
    pub kind: ValueKind,
    /// The version of the write that produced this state.
    pub version: Version,
    /// Wall-clock time of that write, unix milliseconds.
    pub updated_at_ms: u64,
    /// True for a tombstone (only seen in change events; reads return live records).
    pub deleted: bool,
}

/// One operation of a write job.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOp {
    /// Insert or replace the record under `key`, with its vector or without one (a put
    /// replaces the whole record: without a vector, the key's old vector is removed).
    Put {
        /// The key.
        key: String,
        /// The value bytes.
        value: Vec<u8>,
        /// The value's kind (`Json` values must parse).
        kind: ValueKind,
        /// The record's embedding (checked with [`check_vector`] against the
        /// database's dimension, which the first vector stored sets).
        vector: Option<Vec<f32>>,
    },
    /// Delete the record under `key` (leaves a tombstone if it was live).
    Delete {
        /// The key.
        key: String,
    },
    /// Merge a version made by another replica (replication): it replaces the key's
    /// current version (a record or a tombstone) only if its stamp `(hlc, replica)` is
    /// greater, and keeps its own version (never re-stamped). The local clock advances
    /// past its hlc. Its outcome has a version only if it was applied.
    Merge(Box<RemoteVersion>),
}

/// A version of a record made by another replica, as [`WriteOp::Merge`] applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteVersion {
    /// The key.
    pub key: String,
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
    /// The value's kind (for a tombstone, the kind of the record it removed).
    pub kind: ValueKind,
    /// A tombstone.
    pub deleted: bool,
    /// The record's vector, if it has one.
    pub vector: Option<Vec<f32>>,
    /// The version its writer gave it.
    pub version: Version,
    /// When its writer made it, unix milliseconds.
    pub updated_at_ms: u64,
}

/// What a replica has delivered of one other replica's writes (replication's version
/// vector, one row per replica): the sequence numbers, as inclusive intervals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// The other replica.
    pub replica: ReplicaId,
    /// Its delivered sequence numbers: sorted, disjoint inclusive intervals.
    pub runs: Vec<(u64, u64)>,
}

impl WriteOp {
    /// The key this op writes.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
            WriteOp::Merge(v) => &v.key,
        }
    }

    /// Key, value and vector bytes of this op, before any validation.
    pub fn raw_len(&self) -> usize {
        match self {
            WriteOp::Put {
                key, value, vector, ..
            } => key.len() + value.len() + vector.as_ref().map_or(0, |v| v.len() * 4),
            WriteOp::Delete { key } => key.len(),
            WriteOp::Merge(v) => {
                v.key.len() + v.value.len() + v.vector.as_ref().map_or(0, |v| v.len() * 4)
            }
        }
    }

    /// Whether this op stores a vector.
    pub fn has_vector(&self) -> bool {
        match self {
            WriteOp::Put { vector, .. } => vector.is_some(),
            WriteOp::Merge(v) => v.vector.is_some(),
            WriteOp::Delete { .. } => false,
        }
    }
}

/// The result of one op of a committed job.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteOutcome {
    /// The new version; `None` for a delete of a missing or already-deleted key
    /// (nothing was written).
    pub version: Option<Version>,
    /// Whether a live record existed under the key before this op.
    pub existed: bool,
}

/// Limits applied when validating writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Maximum key length in bytes (default 1024).
    pub max_key_len: usize,
    /// Maximum value length in bytes (default 1 MiB).
    pub max_value_len: usize,
    /// Budget of the shared read cache of hot records, in bytes (default 64 MiB; 0
    /// disables it). See `cache.rs` for why it never serves a value older than a write
    /// whose completion was sent.
    pub read_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_key_len: 1024,
            max_value_len: 1024 * 1024,
            read_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Counters of the writer, for tests and benchmarks (monotonic since open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Jobs taken by the writer (committed, failed, or lost to a failed commit).
    pub jobs: u64,
    /// Ops in successfully committed jobs.
    pub ops: u64,
    /// Jobs that failed inside the writer (SQLite error, or their transaction failed).
    pub failed_jobs: u64,
    /// Jobs rejected by validation before reaching the writer.
    pub rejected_jobs: u64,
    /// Transactions that failed as a whole (BEGIN/COMMIT or a fatal SQLite error).
    pub commit_failures: u64,
    /// The most jobs ever grouped into one transaction.
    pub max_jobs_per_transaction: u64,
}

/// One queued write job (already validated).
pub struct Job {
    /// Caller's ticket, echoed in the completion.
    pub ticket: u64,
    /// The ops, applied in order, all or none.
    pub ops: Vec<WriteOp>,
    /// Where the completion goes.
    pub done: Completion,
    /// Sum of key and value lengths, for batch sizing.
    pub bytes: usize,
    /// Replication: version-vector rows to store with the ops, in the same transaction
    /// (each replaces that replica's rows).
    pub coverage: Vec<Coverage>,
}

/// Where a job's completion `(ticket, result)` is sent. The writer calls `send`, so use
/// an unbounded channel (or one with room for every outstanding job): a full bounded
/// channel would stall the writer.
pub type Completion = Sender<(u64, Result<Vec<WriteOutcome>, StoreError>)>;

/// The storage engine handle. `Send + Sync`: share it as `Arc<Store>`.
pub struct Store {
    data_dir: PathBuf,
    db_path: PathBuf,
    opts: StoreOptions,
    shared: Arc<Shared>,
    /// Where jobs go; shared with every [`JobQueue`].
    tx: JobSender,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.data_dir)
            .field("replica", &self.shared.replica)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open (creating if needed) the store in `data_dir`: creates the directory (mode
    /// 0700 on Unix), the database file [`DB_FILE`], the replica id, runs migrations and
    /// starts the writer thread.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        Store::open_with_hooks(data_dir, opts, Vec::new())
    }

    /// [`Store::open`], with `hooks` called after each committed transaction, in this
    /// order, before its writers are acknowledged (see [`CommitHook`]).
    pub fn open_with_hooks(
        data_dir: &Path,
        opts: StoreOptions,
        hooks: Vec<Arc<dyn CommitHook>>,
    ) -> Result<Store, StoreError> {
        create_dir_private(data_dir)?;
        let db_path = data_dir.join(DB_FILE);
        let conn = schema::open_writer(&db_path)?;
        let replica = schema::load_or_create_replica(&conn)?;
        let seq = schema::meta_u64(&conn, schema::META_SEQ)?;
        let hlc_high = schema::meta_u64(&conn, schema::META_HLC)?;
        let changes = schema::meta_u64(&conn, schema::META_CHANGES)?;
        let vector_dim = schema::meta_u64(&conn, schema::META_VECTOR_DIM)?;
        let shared = Arc::new(Shared {
            replica,
            clock: clock::Hlc::new(hlc_high),
            hub: changes::ChangeHub::default(),
            hooks: Hooks(hooks),
            stats: StatCounters::default(),
            cache: Arc::new(cache::ReadCache::new(opts.read_cache_bytes)),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            last_change: std::sync::atomic::AtomicU64::new(changes),
            vector_dim: std::sync::atomic::AtomicU64::new(vector_dim),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = Writer::new(
            conn,
            db_path.clone(),
            rx,
            shared.clone(),
            (seq, hlc_high, changes),
        );
        let handle = std::thread::Builder::new()
            .name("ringbase-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::from)?;
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            db_path,
            opts,
            shared,
            tx: Arc::new(RwLock::new(Some(tx))),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// This store's persistent replica id.
    pub fn replica_id(&self) -> ReplicaId {
        self.shared.replica
    }

    /// The data directory this store was opened on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The limits this store validates writes against.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// Queue a write job without blocking. The ops are validated here first; an invalid
    /// job stores nothing and its error is sent on `done` right away. Otherwise
    /// `(ticket, result)` is sent on `done` after the job's transaction has committed
    /// (or failed). A job is atomic: all of its ops are applied or none.
    ///
    /// Returns `Err(StoreError::Closed)` (and sends nothing) if the store is shut down.
    pub fn submit(
        &self,
        ticket: u64,
        ops: Vec<WriteOp>,
        done: Completion,
    ) -> Result<(), StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        let Some(job) = self.prepare(ticket, ops, done) else {
            return Ok(());
        };
        send_jobs(&self.tx, &self.shared.queued_bytes, vec![job]).map_err(|_| StoreError::Closed)
    }

    /// Validates a write job for a [`JobQueue`]. An invalid job (or one with no ops) is
    /// answered on `done` right away and gives `None`; otherwise the job to queue.
    pub fn prepare(&self, ticket: u64, ops: Vec<WriteOp>, done: Completion) -> Option<Job> {
        let bytes = match validate(&ops, &self.opts, self.vector_dim()) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.shared
                    .stats
                    .rejected_jobs
                    .fetch_add(1, Ordering::Relaxed);
                let _ = done.send((ticket, Err(e)));
                return None;
            }
        };
        if ops.is_empty() {
            let _ = done.send((ticket, Ok(Vec::new())));
            return None;
        }
        Some(Job {
            ticket,
            ops,
            done,
            bytes,
            coverage: Vec::new(),
        })
    }

    /// An empty outbox for one session's write jobs.
    pub fn job_queue(&self) -> JobQueue {
        JobQueue {
            tx: Arc::clone(&self.tx),
            jobs: Vec::new(),
            queued: Arc::clone(&self.shared.queued_bytes),
        }
    }

    /// The change sequence number of the last committed change ([`Change::seq`]; 0 if
    /// there was none yet). It is set before the commit hooks run.
    pub fn last_change_seq(&self) -> u64 {
        self.shared.last_change.load(Ordering::Acquire)
    }

    /// The dimension of the database's vectors: set by the first vector committed (and
    /// kept in the database); 0 while none was.
    pub fn vector_dim(&self) -> usize {
        self.shared.vector_dim.load(Ordering::Acquire) as usize
    }

    /// Reads every stored vector in one read transaction of a connection of its own
    /// (for building the vector index): calls `f(key, vector)` in key order, and
    /// returns the change sequence number of the last change the snapshot includes
    /// (`meta`, read in the same transaction).
    pub fn vector_snapshot(&self, f: impl FnMut(&str, &[f32]) -> bool) -> Result<u64, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        let conn = schema::open_reader(&self.db_path)?;
        conn.execute_batch("BEGIN")?;
        let seq = schema::meta_u64(&conn, schema::META_CHANGES)?;
        let scanned = vectors::scan(&conn, "", f);
        let _ = conn.execute_batch("COMMIT");
        scanned.map(|()| seq)
    }

    /// Key and value bytes of the write jobs sent to the writer and not yet applied.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.tx.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Replication: merges versions made by other replicas ([`WriteOp::Merge`]; other
    /// ops are refused) and stores the version-vector rows `coverage`, in one
    /// transaction, and waits for it. Each outcome has a version if its merge was
    /// applied (its stamp beat the key's current version).
    pub fn merge(
        &self,
        ops: Vec<WriteOp>,
        coverage: Vec<Coverage>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if ops.iter().any(|op| !matches!(op, WriteOp::Merge(_))) {
            return Err(StoreError::InvalidKind(0));
        }
        let (done, rx) = crossbeam_channel::bounded(1);
        let bytes = validate(&ops, &self.opts, self.vector_dim())?;
        if ops.is_empty() && coverage.is_empty() {
            return Ok(Vec::new());
        }
        let job = Job {
            ticket: 0,
            ops,
            done,
            bytes,
            coverage,
        };
        send_jobs(&self.tx, &self.shared.queued_bytes, vec![job])
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?.1
    }

    /// Submit a job and wait for its completion.
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, StoreError> {
        let (done, rx) = crossbeam_channel::bounded(1);
        self.submit(0, ops, done)?;
        rx.recv().map_err(|_| StoreError::Closed)?.1
    }

    /// Open a read connection (one per client session).
    pub fn reader(&self) -> Result<Reader, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        Ok(Reader::new(
            schema::open_reader(&self.db_path)?,
            Arc::clone(&self.shared.cache),
        ))
    }

    /// Creates an index on the JSON field at `path` (see [`JsonPath`]) over the live
    /// records, so that [`Reader::list`] filters and queries on that field need not read
    /// every record. Runs on the writer between transactions (building it over many
    /// records takes a while; writes queued meanwhile wait). Returns whether it was
    /// created (false: it existed). The index is part of the database: it survives
    /// restarts and is kept up to date by every write.
    pub fn create_index(&self, path: &JsonPath) -> Result<bool, StoreError> {
        self.schema_change(SchemaChange::CreateIndex(path.clone()))
    }

    /// Drops the index on the JSON field at `path`; returns whether it existed.
    pub fn drop_index(&self, path: &JsonPath) -> Result<bool, StoreError> {
        self.schema_change(SchemaChange::DropIndex(path.clone()))
    }

    /// Turns the full-text index ([`Reader::search`]) on, building it over the stored
    /// records in one transaction on the writer (writes queued meanwhile wait), or off,
    /// dropping it. While on, every write updates it in its own transaction. Returns
    /// whether anything changed. The setting is part of the database.
    pub fn set_fulltext(&self, on: bool) -> Result<bool, StoreError> {
        self.schema_change(SchemaChange::SetFulltext(on))
    }

    fn schema_change(&self, change: SchemaChange) -> Result<bool, StoreError> {
        let (done, rx) = crossbeam_channel::bounded(1);
        {
            let guard = self.tx.read().unwrap_or_else(|p| p.into_inner());
            let tx = guard.as_ref().ok_or(StoreError::Closed)?;
            tx.send(ToWriter::Schema(change, done))
                .map_err(|_| StoreError::Closed)?;
        }
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Open a read-only SQLite connection for queries, whose `records` view shows the
    /// live records: `key`, `kind` (`'json'` or `'bytes'`), `value` (a JSON record's
    /// value as text, else NULL), `bytes` (a bytes record's value as a blob, else NULL),
    /// `updated_at` (unix ms), and the version as `hlc`, `replica` (hex) and `seq`. The connection is `query_only`; what else a query may touch is
    /// the caller's to restrict (see `crate::query`).
    pub fn query_connection(&self) -> Result<rusqlite::Connection, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        schema::open_query(&self.db_path)
    }

    /// Size on disk of the database file plus its WAL, in bytes.
    pub fn db_size_bytes(&self) -> u64 {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        len(&self.db_path) + len(&schema::wal_path(&self.db_path))
    }

    /// Subscribe to committed changes, with a queue bounded by
    /// [`DEFAULT_SUBSCRIPTION_CAPACITY`] batches and [`DEFAULT_SUBSCRIPTION_MAX_BYTES`].
    pub fn subscribe(&self) -> ChangeSubscription {
        self.subscribe_with_limits(
            DEFAULT_SUBSCRIPTION_CAPACITY,
            DEFAULT_SUBSCRIPTION_MAX_BYTES,
        )
    }

    /// Subscribe to committed changes with a queue of at most `capacity` batches (at
    /// least 2; one slot is reserved for the overflow marker) and `max_bytes` bytes of
    /// undropped batches (a batch always fits into an empty queue).
    pub fn subscribe_with_limits(&self, capacity: usize, max_bytes: usize) -> ChangeSubscription {
        self.shared.hub.subscribe(capacity, max_bytes)
    }

    /// Advance the clock past a remote HLC timestamp so that every later local write
    /// has a greater `hlc`. Values above [`MAX_HLC`] are ignored.
    pub fn observe_hlc(&self, remote: u64) {
        self.shared.clock.observe(remote);
    }

    /// Writer counters.
    pub fn stats(&self) -> StoreStats {
        self.shared.stats.snapshot()
    }

    /// Stop accepting writes, let the writer apply every job already queued, checkpoint
    /// the WAL (`TRUNCATE`) and stop the writer thread. Subscriptions end. Idempotent;
    /// also done on drop.
    pub fn shutdown(&self) {
        self.tx.write().unwrap_or_else(|p| p.into_inner()).take();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Check every op of a job against the key rules, JSON validity, size limits and (for
/// vectors) the database's dimension `dim` (0: not set yet; the writer checks again).
/// Returns the job's payload size in bytes.
fn validate(ops: &[WriteOp], opts: &StoreOptions, dim: usize) -> Result<usize, StoreError> {
    let mut bytes = 0;
    for op in ops {
        let key = op.key();
        validate_key(key, opts)?;
        bytes += key.len();
        let fields = match op {
            WriteOp::Put {
                value,
                kind,
                vector,
                ..
            } => Some((value, kind, vector)),
            WriteOp::Merge(v) if !v.deleted => Some((&v.value, &v.kind, &v.vector)),
            _ => None,
        };
        if let Some((value, kind, vector)) = fields {
            if let Some(v) = vector {
                check_vector(v, dim).map_err(|e| match e {
                    StoreError::InvalidVector(m) => {
                        StoreError::InvalidVector(format!("key {key:?}: {m}"))
                    }
                    other => other,
                })?;
                bytes += v.len() * 4;
            }
            if value.len() > opts.max_value_len {
                return Err(StoreError::TooLarge {
                    what: "value",
                    len: value.len(),
                    max: opts.max_value_len,
                });
            }
            if *kind == ValueKind::Json {
                // Checks the syntax without building a document.
                serde_json::from_slice::<serde::de::IgnoredAny>(value)
                    .map_err(|e| StoreError::InvalidJson(format!("key {key:?}: {e}")))?;
            }
            bytes += value.len();
        }
    }
    Ok(bytes)
}

fn validate_key(key: &str, opts: &StoreOptions) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("key is empty".into()));
    }
    if key.len() > opts.max_key_len {
        return Err(StoreError::TooLarge {
            what: "key",
            len: key.len(),
            max: opts.max_key_len,
        });
    }
    if key.contains('\0') {
        return Err(StoreError::InvalidKey(
            "key contains a NUL character".into(),
        ));
    }
    Ok(())
}

#[cfg(unix)]
fn create_dir_private(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))
}

#[cfg(not(unix))]
fn create_dir_private(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))
}
