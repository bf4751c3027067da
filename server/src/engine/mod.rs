//! The engine: turns validated requests into responses. It knows no transport: it is
//! handed each request already validated, answers with a `Reply`, and learns what it
//! needs of the transport through [`TransportInfo`] and plain values.
//!
//! `Engine::handle` dispatches each request kind to the module that owns it:
//!
//! | requests | module |
//! |---|---|
//! | Ping, Echo | answered in `Engine::handle` |
//! | Status | `status` |
//! | Get, Count, List | `records`: the client's own SQLite read connection, so reads never queue behind the writer |
//! | Put, Delete, Batch | `writes`: queued for the store's group-commit writer, answered when their transaction has committed |
//! | CreateIndex, DropIndex, SetFulltext | `indexes`: JSON-field indexes and the full-text index, made by the writer between transactions |
//! | Search | `records`: full-text search on the client's read connection |
//! | Watch, Unwatch | `watches`: the client's cursor into the change feed ([`crate::feed`], a commit hook) |
//! | Query | `queries`: read-only SQL on the client's own query connection ([`crate::query`]) |
//! | PutVector, VectorSearch, SearchText | `vectors`: puts with an embedding (through `writes`), nearest-neighbour search ([`crate::vectors`], a commit hook), by vector or by text ([`crate::embed`]) |
//!
//! A new capability is a new module here (or beside [`crate::store`]) plus one dispatch
//! line; what must follow every committed write (an index, a change log, replication)
//! registers a [`crate::store::CommitHook`] in [`Engine::open`].

mod indexes;
mod queries;
mod records;
mod status;
mod vectors;
mod watches;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringbase_protocol::message::{ArchivedRequest, ErrorCode, Event, Response};

use std::os::unix::fs::DirBuilderExt;

use crate::embed::AutoEmbed;
use crate::feed::{Feed, FeedLimits};
use crate::lock::{LockError, LockFile};
use crate::store::{Reader, Store, StoreError, StoreOptions};
use crate::sync::net::{LocalWrites, SyncHandle, SyncOptions};
use crate::vectors::{VectorConfig, VectorIndex};

pub use writes::{MAX_QUEUED_WRITE_BYTES, MAX_SESSION_INFLIGHT_BYTES};

/// Most records one List returns, whatever limit the client asks for.
pub const MAX_LIST: u32 = 10_000;

/// Largest value the store accepts from any client (a client's own limit is lower:
/// what fits in its response frame).
pub const MAX_VALUE_LEN: usize = (ringbase_protocol::layout::MAX_RING / 2) as usize;

/// What the engine needs to know of the transport that carries its requests (for
/// Status). The transport implements it; the engine never sees sockets or rings.
pub trait TransportInfo: Send + Sync {
    /// Clients connected right now.
    fn session_count(&self) -> usize;
}

/// Settings of the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Bounds of the change feed.
    pub feed: FeedLimits,
    /// The vector index.
    pub vectors: VectorConfig,
    /// The embedding model that gives JSON puts their vectors and answers SearchText
    /// (none: puts store only the vectors clients send; SearchText is refused).
    pub embed: Option<AutoEmbed>,
    /// Replication with other servers (none: no network activity at all).
    pub sync: Option<SyncOptions>,
}

/// Called by the engine when a client's watch has new changes (the client's transport
/// wakes up to deliver them). Must not block.
pub type Notifier = Arc<dyn Fn() + Send + Sync>;

/// What the engine answers to one request.
pub(crate) enum Reply {
    /// The response, ready now.
    Now(Response),
    /// A write was queued under this ticket; its response comes through
    /// [`ClientState::try_completion`] and the other completion calls.
    Pending(u64),
}

/// The engine shared by all clients.
#[derive(Debug)]
pub struct Engine {
    store: Arc<Store>,
    feed: Arc<Feed>,
    vectors: Arc<VectorIndex>,
    embed: Option<AutoEmbed>,
    /// The sync engine, while replication runs.
    sync: std::sync::Mutex<Option<SyncHandle>>,
    data_dir: PathBuf,
    started: Instant,
    /// Held for the engine's life: one server per data dir (two writers would reuse
    /// the replica's sequence numbers).
    _lock: LockFile,
}

impl Engine {
    /// Opens (creating if needed) the database in `data_dir`, with default settings.
    pub fn open(data_dir: PathBuf) -> Result<Engine, String> {
        Engine::open_with(data_dir, EngineConfig::default())
    }

    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open_with(data_dir: PathBuf, config: EngineConfig) -> Result<Engine, String> {
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
        // Subsystems that follow committed writes register their commit hooks here.
        let feed = Arc::new(Feed::new(config.feed));
        let vectors = VectorIndex::new(config.vectors);
        // The vector index before the feed: a watcher woken by a change, searching at
        // once from another session, finds the change's vector already indexed.
        let mut hooks: Vec<Arc<dyn crate::store::CommitHook>> = vec![vectors.clone(), feed.clone()];
        let local_writes = config.sync.as_ref().map(|_| {
            let (hook, rx) = LocalWrites::new();
            hooks.push(hook.clone());
            (hook, rx)
        });
        let store = Arc::new(
            Store::open_with_hooks(
                &data_dir,
                StoreOptions {
                    max_value_len: MAX_VALUE_LEN,
                    ..StoreOptions::default()
                },
                hooks,
            )
            .map_err(|e| e.to_string())?,
        );
        feed.resume_after(store.last_change_seq());
        if let Some(e) = &config.embed {
            let (stored, made) = (store.vector_dim(), e.embedder.dim());
            if stored != 0 && stored != made {
                store.shutdown();
                return Err(format!(
                    "the database's vectors have {stored} dimensions but the embedding model {} makes {made}: use the model the vectors were made with, or another data dir",
                    e.embedder.name()
                ));
            }
        }
        // Builds the graph from the stored vectors in the background.
        vectors
            .start(Arc::clone(&store))
            .map_err(|e| format!("starting the vector index: {e}"))?;
        let sync = match (config.sync, local_writes) {
            (Some(mut opts), Some((hook, rx))) => {
                hook.set_own(store.replica_id());
                // The node's identity lives with the database it replicates.
                opts.key_file
                    .get_or_insert_with(|| data_dir.join("sync.key"));
                match crate::sync::net::start(Arc::clone(&store), opts, rx) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        vectors.stop();
                        store.shutdown();
                        return Err(format!("starting replication: {e}"));
                    }
                }
            }
            _ => None,
        };
        Ok(Engine {
            store,
            feed,
            vectors,
            embed: config.embed,
            sync: std::sync::Mutex::new(sync),
            data_dir,
            started: Instant::now(),
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

    /// Stops replication and the vector index, drains queued writes, checkpoints and
    /// closes storage.
    pub fn shutdown(&self) {
        if let Some(mut s) = self.sync.lock().unwrap_or_else(|p| p.into_inner()).take() {
            s.stop();
        }
        self.vectors.stop();
        self.store.shutdown();
    }

    /// The vector index.
    pub fn vectors(&self) -> &Arc<VectorIndex> {
        &self.vectors
    }

    /// The change feed.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The engine state of a new client whose responses may carry at most
    /// `max_payload` bytes; `notify` is called when its watch has new changes.
    pub(crate) fn open_client(
        &self,
        max_payload: u64,
        transport: Arc<dyn TransportInfo>,
        notify: Notifier,
    ) -> Result<ClientState, String> {
        Ok(ClientState {
            reader: self.store.reader().map_err(|e| e.to_string())?,
            writes: writes::Writes::new(&self.store, self.embed.clone()),
            query: None,
            watch: None,
            notify,
            max_payload,
            transport,
        })
    }

    /// Answers one request of client `c`: the module that owns the request kind does.
    pub(crate) fn handle(&self, c: &mut ClientState, req: &ArchivedRequest) -> Reply {
        let reply = match req {
            ArchivedRequest::Ping => Ok(Reply::Now(Response::Pong)),
            ArchivedRequest::Echo(b) => Ok(Reply::Now(Response::Echo(b.as_slice().to_vec()))),
            ArchivedRequest::Status => status::status(self, c).map(Reply::Now),
            ArchivedRequest::Get { key } => records::get(c, key.as_str()).map(Reply::Now),
            ArchivedRequest::Count { prefix } => {
                records::count(c, prefix.as_ref().map(|p| p.as_str())).map(Reply::Now)
            }
            ArchivedRequest::List {
                prefix,
                start_after,
                limit,
                filter,
            } => records::list(
                c,
                prefix.as_str(),
                start_after.as_ref().map(|k| k.as_str()),
                limit.to_native(),
                filter.as_ref(),
            )
            .map(Reply::Now),
            ArchivedRequest::Put { key, value, kind } => {
                Ok(c.writes.put(&self.store, key, value, kind))
            }
            ArchivedRequest::PutVector {
                key,
                value,
                kind,
                vector,
            } => Ok(c.writes.put_vector(&self.store, key, value, kind, vector)),
            ArchivedRequest::VectorSearch {
                vector,
                k,
                min_score,
                prefix,
                ef,
                with_values,
            } => vectors::search(
                self,
                c,
                &vectors::SearchArgs {
                    vector: vector.iter().map(|x| x.to_native()).collect(),
                    k: k.to_native(),
                    min_score: min_score.to_native(),
                    prefix: prefix.as_ref().map_or("", |p| p.as_str()),
                    ef: ef.to_native(),
                    with_values: *with_values,
                },
            )
            .map(Reply::Now),
            ArchivedRequest::SearchText {
                text,
                k,
                min_score,
                prefix,
                ef,
                with_values,
            } => Ok(Reply::Now(vectors::search_text(
                self,
                c,
                text.as_str(),
                vectors::SearchArgs {
                    vector: Vec::new(),
                    k: k.to_native(),
                    min_score: min_score.to_native(),
                    prefix: prefix.as_ref().map_or("", |p| p.as_str()),
                    ef: ef.to_native(),
                    with_values: *with_values,
                },
            ))),
            ArchivedRequest::Delete { key } => Ok(c.writes.delete(&self.store, key)),
            ArchivedRequest::Batch { ops } => Ok(c.writes.batch(&self.store, ops)),
            ArchivedRequest::CreateIndex { path } => {
                indexes::create(&self.store, path.as_str()).map(Reply::Now)
            }
            ArchivedRequest::DropIndex { path } => {
                indexes::drop(&self.store, path.as_str()).map(Reply::Now)
            }
            ArchivedRequest::SetFulltext { enabled } => {
                indexes::set_fulltext(&self.store, *enabled).map(Reply::Now)
            }
            ArchivedRequest::Watch {
                prefix,
                since,
                with_values,
            } => Ok(Reply::Now(watches::watch(
                self,
                c,
                prefix.as_str(),
                since.as_ref().map(|s| s.to_native()),
                *with_values,
            ))),
            ArchivedRequest::Unwatch => Ok(Reply::Now(watches::unwatch(c))),
            ArchivedRequest::Search { text, limit } => {
                records::search(c, text.as_str(), limit.to_native()).map(Reply::Now)
            }
            ArchivedRequest::Query {
                sql,
                params,
                max_rows,
                timeout_ms,
            } => Ok(Reply::Now(queries::query(
                &self.store,
                c,
                sql.as_str(),
                params,
                max_rows.to_native(),
                timeout_ms.to_native(),
            ))),
        };
        reply.unwrap_or_else(|e| Reply::Now(store_error(&e)))
    }
}

/// One client's state in the engine: its read connection, its writes in flight, and
/// the limits of its transport.
pub(crate) struct ClientState {
    reader: Reader,
    writes: writes::Writes,
    /// The client's query connection, opened at its first query.
    query: Option<crate::query::QueryConn>,
    /// The client's watch of the change feed, if any.
    watch: Option<crate::feed::Watch>,
    /// Wakes the client's transport when the watch has new changes.
    notify: Notifier,
    /// Largest response payload the client's transport carries.
    max_payload: u64,
    transport: Arc<dyn TransportInfo>,
}

impl ClientState {
    /// Whether `req` must see this client's earlier writes (everything but writes).
    pub(crate) fn needs_barrier(&self, req: &ArchivedRequest) -> bool {
        !writes::is_write(req)
    }

    /// Sends the write jobs gathered since the last flush to the writer, together. The
    /// session loop calls this after each burst of requests; waiting for a completion
    /// flushes first, so a queued job is never waited for before it was sent.
    pub(crate) fn flush(&mut self) {
        self.writes.flush();
    }

    /// Whether this client should wait for its writes in flight before more of its
    /// requests are read (see [`MAX_SESSION_INFLIGHT_BYTES`]).
    pub(crate) fn over_write_budget(&self, engine: &Engine) -> bool {
        self.writes.over_budget(&engine.store)
    }

    /// A finished write, if any.
    pub(crate) fn try_completion(&mut self) -> Option<(u64, Response)> {
        self.writes.try_completion()
    }

    /// Whether a finished write waits to be taken ([`ClientState::try_completion`]).
    pub(crate) fn completion_ready(&self) -> bool {
        self.writes.completion_ready()
    }

    /// Waits at most `timeout` until a finished write is ready, without taking it.
    pub(crate) fn wait_completion_ready(&mut self, timeout: Duration) -> bool {
        self.writes.wait_completion_ready(timeout)
    }

    /// Whether the client's watch has changes it has not looked at.
    pub(crate) fn events_ready(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.pending())
    }

    /// The next event for the client's watch, at most about `max_bytes` encoded (see
    /// [`crate::feed::Watch::next_event`]): the caller must deliver it.
    pub(crate) fn next_event(&mut self, max_bytes: usize) -> Option<Event> {
        self.watch.as_mut()?.next_event(max_bytes)
    }

    /// Ends the client's watch (its last event was an overflow marker).
    pub(crate) fn end_watch(&mut self) {
        self.watch = None;
    }

    /// The overflow marker if the client's watch is too far behind (see
    /// [`crate::feed::Watch::lagging`]); the watch then ends.
    pub(crate) fn overflow_if_lagging(&mut self) -> Option<Event> {
        let w = self.watch.as_mut()?;
        w.lagging().then(|| w.overflow())
    }

    /// The client's event ring now holds the changes up to `seq` of its watch.
    pub(crate) fn event_delivered(&mut self, seq: u64) {
        if let Some(w) = self.watch.as_mut() {
            w.delivered(seq);
        }
    }

    /// Waits at most `timeout` for a finished write.
    pub(crate) fn wait_completion(&mut self, timeout: Duration) -> Option<(u64, Response)> {
        self.writes.wait_completion(timeout)
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
        StoreError::InvalidFilter(_) => ErrorCode::InvalidQuery,
        StoreError::FulltextOff => ErrorCode::Unsupported,
        StoreError::InvalidVector(_) => ErrorCode::InvalidVector,
        StoreError::Embedding(_) => ErrorCode::Internal,
        _ => ErrorCode::Storage,
    };
    Response::error(code, e.to_string())
}
