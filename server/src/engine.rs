//! The engine: turns validated requests into responses.
//!
//! Transport requests (Ping, Echo, Status) are answered here; reads go to the session's
//! own SQLite read connection (so they never queue behind the writer), writes go to the
//! store's group-commit writer and are answered when their transaction has committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ringbase_protocol::message::{
    self, ArchivedBatchOp, ArchivedRequest, ErrorCode, Response, StatusInfo, ValueKind,
};

use std::os::unix::fs::DirBuilderExt;

use crate::ipc::Shared;
use crate::lock::{LockError, LockFile};
use crate::session::error;
use crate::store::{
    self, JobQueue, Reader, Store, StoreError, StoreOptions, WriteOp, WriteOutcome,
};

/// Most records one List returns, whatever limit the client asks for.
pub const MAX_LIST: u32 = 10_000;

/// Most key+value bytes of one session's writes in flight before the session waits
/// for them: the ring does not bound a session's writes (the session copies each
/// request out of it), this does.
pub const MAX_SESSION_INFLIGHT_BYTES: usize = 64 << 20;
/// Most key+value bytes queued for the writer (all sessions) before a session with
/// writes in flight waits for them.
pub const MAX_QUEUED_WRITE_BYTES: usize = 256 << 20;

/// Largest value the store accepts from any session (a session's own limit is lower:
/// what fits in its rings).
pub const MAX_VALUE_LEN: usize = (ringbase_protocol::layout::MAX_RING / 2) as usize;

/// What the engine answers to one request.
pub(crate) enum Reply {
    /// The response, ready now.
    Now(Response),
    /// A write was queued under this ticket; its response comes through
    /// [`EngineSession::try_completion`].
    Pending(u64),
}

/// The engine shared by all sessions.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    data_dir: PathBuf,
    /// Held for the engine's life: one server per data dir (two writers would reuse
    /// the replica's sequence numbers).
    _lock: LockFile,
}

impl Engine {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: PathBuf) -> Result<Engine, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
        let lock = LockFile::acquire(&data_dir.join("ringbase.lock")).map_err(|e| match e {
            LockError::Held { pid, .. } => {
                format!("the data dir is in use by another ringbase server (pid {pid})")
            }
            other => other.to_string(),
        })?;
        let store = Store::open(
            &data_dir,
            StoreOptions {
                max_value_len: MAX_VALUE_LEN,
                ..StoreOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Engine {
            store,
            data_dir,
            _lock: lock,
        })
    }

    /// The storage engine.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Drains queued writes, checkpoints and closes storage.
    pub fn shutdown(&self) {
        self.store.shutdown();
    }

    pub(crate) fn open_session(&self, max_payload: u64) -> Result<EngineSession, String> {
        let reader = self.store.reader().map_err(|e| e.to_string())?;
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(EngineSession {
            reader,
            tx,
            rx,
            next_ticket: 1,
            pending: HashMap::new(),
            inflight_bytes: 0,
            outbox: self.store.job_queue(),
            max_payload,
        })
    }

    pub(crate) fn handle(
        &self,
        s: &mut EngineSession,
        req: &ArchivedRequest,
        shared: &Shared,
    ) -> Reply {
        match self.try_handle(s, req, shared) {
            Ok(r) => r,
            Err(e) => Reply::Now(store_error(&e)),
        }
    }

    fn try_handle(
        &self,
        s: &mut EngineSession,
        req: &ArchivedRequest,
        shared: &Shared,
    ) -> Result<Reply, StoreError> {
        Ok(match req {
            ArchivedRequest::Ping => Reply::Now(Response::Pong),
            ArchivedRequest::Echo(b) => Reply::Now(Response::Echo(b.as_slice().to_vec())),
            ArchivedRequest::Status => Reply::Now(Response::Status(self.status(s, shared)?)),
            ArchivedRequest::Get { key } => {
                Reply::Now(Response::Value(s.reader.get(key.as_str())?.map(to_wire)))
            }
            ArchivedRequest::Count { prefix } => Reply::Now(Response::Count(
                s.reader.count(prefix.as_ref().map(|p| p.as_str()))?,
            )),
            ArchivedRequest::List {
                prefix,
                start_after,
                limit,
            } => Reply::Now(s.list(
                prefix.as_str(),
                start_after.as_ref().map(|k| k.as_str()),
                limit.to_native(),
            )?),
            ArchivedRequest::Put { key, value, kind } => {
                let op = WriteOp::Put {
                    key: key.as_str().to_string(),
                    value: value.as_slice().to_vec(),
                    kind: ValueKind::from_archived(kind),
                };
                self.submit(s, vec![op], WriteKind::Put)?
            }
            ArchivedRequest::Delete { key } => self.submit(
                s,
                vec![WriteOp::Delete {
                    key: key.as_str().to_string(),
                }],
                WriteKind::Delete,
            )?,
            ArchivedRequest::Batch { ops } => {
                let ops = ops
                    .iter()
                    .map(|op| match op {
                        ArchivedBatchOp::Put { key, value, kind } => WriteOp::Put {
                            key: key.as_str().to_string(),
                            value: value.as_slice().to_vec(),
                            kind: ValueKind::from_archived(kind),
                        },
                        ArchivedBatchOp::Delete { key } => WriteOp::Delete {
                            key: key.as_str().to_string(),
                        },
                    })
                    .collect();
                self.submit(s, ops, WriteKind::Batch)?
            }
        })
    }

    fn submit(
        &self,
        s: &mut EngineSession,
        ops: Vec<WriteOp>,
        kind: WriteKind,
    ) -> Result<Reply, StoreError> {
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        let mut bytes = 0;
        if let Some(job) = self.store.prepare(ticket, ops, s.tx.clone()) {
            bytes = job.bytes;
            // Sent with the rest of the burst (see `EngineSession::flush`).
            s.outbox.push(job);
        }
        s.inflight_bytes += bytes;
        s.pending.insert(ticket, (kind, bytes));
        Ok(Reply::Pending(ticket))
    }

    fn status(&self, s: &mut EngineSession, shared: &Shared) -> Result<StatusInfo, StoreError> {
        Ok(StatusInfo {
            records: s.reader.count(None)?,
            sessions: shared.session_count() as u32,
            uptime_ms: shared.started.elapsed().as_millis() as u64,
            data_dir: self.data_dir.display().to_string(),
            db_size_bytes: self.store.db_size_bytes(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: ringbase_protocol::PROTOCOL_VERSION,
            replica_id: self.store.replica_id(),
            pid: std::process::id(),
            commits: self.store.stats().transactions,
            write_jobs: self.store.stats().jobs,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum WriteKind {
    Put,
    Delete,
    Batch,
}

/// Per-session engine state: the session's read connection and its writes in flight.
pub(crate) struct EngineSession {
    reader: Reader,
    tx: Sender<(u64, Result<Vec<WriteOutcome>, StoreError>)>,
    rx: Receiver<(u64, Result<Vec<WriteOutcome>, StoreError>)>,
    next_ticket: u64,
    /// Writes in flight: their kind and key+value bytes.
    pending: HashMap<u64, (WriteKind, usize)>,
    /// Key+value bytes of the writes in flight.
    inflight_bytes: usize,
    /// Write jobs of the current burst of requests, not yet sent to the writer.
    outbox: JobQueue,
    max_payload: u64,
}

impl EngineSession {
    /// Whether `req` must see this session's earlier writes (everything but writes).
    pub(crate) fn needs_barrier(&self, req: &ArchivedRequest) -> bool {
        !matches!(
            req,
            ArchivedRequest::Put { .. }
                | ArchivedRequest::Delete { .. }
                | ArchivedRequest::Batch { .. }
        )
    }

    /// Sends the write jobs gathered since the last flush to the writer, together. The
    /// session loop calls this after each burst of requests; waiting for a completion
    /// flushes first, so a queued job is never waited for before it was sent.
    pub(crate) fn flush(&mut self) {
        self.outbox.flush();
    }

    /// Whether this session should wait for its writes in flight before it reads more
    /// requests: its own writes hold [`MAX_SESSION_INFLIGHT_BYTES`] or more, or the
    /// writer's queue (all sessions) holds [`MAX_QUEUED_WRITE_BYTES`] or more. The ring
    /// does not bound this: the session copies each request out of it, so without this a
    /// client streaming large puts faster than SQLite commits them would make the server
    /// hold them all in memory.
    pub(crate) fn over_write_budget(&self, store: &Store) -> bool {
        self.inflight_bytes >= MAX_SESSION_INFLIGHT_BYTES
            || (self.inflight_bytes > 0 && store.queued_bytes() >= MAX_QUEUED_WRITE_BYTES)
    }

    /// A finished write, if any.
    pub(crate) fn try_completion(&mut self) -> Option<(u64, Response)> {
        self.flush();
        let (ticket, result) = self.rx.try_recv().ok()?;
        Some(self.finish(ticket, result))
    }

    /// Whether a finished write waits to be taken ([`EngineSession::try_completion`]).
    pub(crate) fn completion_ready(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Waits at most `timeout` until a finished write is ready, without taking it.
    pub(crate) fn wait_completion_ready(&mut self, timeout: Duration) -> bool {
        self.flush();
        let mut sel = crossbeam_channel::Select::new();
        sel.recv(&self.rx);
        sel.ready_timeout(timeout).is_ok()
    }

    /// Waits at most `timeout` for a finished write.
    pub(crate) fn wait_completion(&mut self, timeout: Duration) -> Option<(u64, Response)> {
        self.flush();
        let (ticket, result) = self.rx.recv_timeout(timeout).ok()?;
        Some(self.finish(ticket, result))
    }

    fn finish(
        &mut self,
        ticket: u64,
        result: Result<Vec<WriteOutcome>, StoreError>,
    ) -> (u64, Response) {
        let (kind, bytes) = self
            .pending
            .remove(&ticket)
            .unwrap_or((WriteKind::Batch, 0));
        self.inflight_bytes -= bytes;
        let resp = match result {
            Err(e) => store_error(&e),
            Ok(outcomes) => {
                let mut results: Vec<message::WriteResult> = outcomes
                    .into_iter()
                    .map(|o| message::WriteResult {
                        version: o.version,
                        existed: o.existed,
                    })
                    .collect();
                match kind {
                    WriteKind::Put if results.len() == 1 => Response::Written(results.remove(0)),
                    WriteKind::Delete if results.len() == 1 => Response::Deleted(results.remove(0)),
                    WriteKind::Batch => Response::Batch(results),
                    _ => error(
                        ErrorCode::Internal,
                        "write completed with an unexpected outcome count".into(),
                    ),
                }
            }
        };
        (ticket, resp)
    }

    /// List with the record limit clamped and the response kept within the session's
    /// frame size: a page that would not fit stops early with `more = true`, so paging
    /// with `start_after` stays exact.
    fn list(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Response, StoreError> {
        let limit = limit.clamp(1, MAX_LIST);
        let (records, mut more) = self.reader.list(prefix, start_after, limit)?;
        // Leave room for the response envelope and per-record archive overhead.
        let budget = self.max_payload.saturating_sub(256);
        let mut used = 0u64;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let size = (r.key.len() + r.value.len()) as u64 + 96;
            if used + size > budget {
                if out.is_empty() {
                    return Ok(error(
                        ErrorCode::TooLarge,
                        format!(
                            "record {:?} ({} bytes) does not fit in this session's response frame ({} bytes)",
                            r.key,
                            r.value.len(),
                            self.max_payload
                        ),
                    ));
                }
                more = true;
                break;
            }
            used += size;
            out.push(to_wire(r));
        }
        Ok(Response::List { records: out, more })
    }
}

fn to_wire(r: store::Record) -> message::Record {
    message::Record {
        key: r.key,
        value: r.value,
        kind: r.kind,
        version: r.version,
        updated_at_ms: r.updated_at_ms,
    }
}

/// The error response for a storage error.
fn store_error(e: &StoreError) -> Response {
    let code = match e {
        StoreError::InvalidKey(_) => ErrorCode::InvalidKey,
        StoreError::InvalidJson(_) => ErrorCode::InvalidJson,
        StoreError::TooLarge { .. } => ErrorCode::TooLarge,
        StoreError::Closed => ErrorCode::ShuttingDown,
        StoreError::InvalidKind(_) => ErrorCode::BadRequest,
        _ => ErrorCode::Storage,
    };
    error(code, e.to_string())
}
