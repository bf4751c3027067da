//! The vector index: an HNSW graph over the stored embeddings, kept in step with
//! storage through the commit hook, with exact search where the graph cannot answer.
//!
//! # Agreement with storage
//!
//! SQLite holds the vectors (`store::vectors`); this index is derived from it and never
//! the other way round. The commit hook ([`VectorIndex`] is a [`CommitHook`]) sees every
//! committed put and delete before the writer acknowledges it, and applies it to the
//! index's bookkeeping at once (a map and a few hash operations, never a graph insert):
//!
//! - the key's old point, if any, is no longer live (`live` maps a key to the id of its
//!   current point; a point whose key maps elsewhere is dead, and searches skip it; the
//!   graph keeps a liveness mark per point, set and cleared with `live` under the state
//!   lock, which is what searches read);
//! - a new vector goes to `pending`, which searches scan exactly.
//!
//! The index thread moves pending vectors into the graph, one at a time, and makes
//! each live only if it is still the key's current vector. So a search, which looks at
//! live graph points plus `pending`, sees exactly the committed vectors: a client's
//! search after its acknowledged write includes it, and no search returns a deleted
//! record or an old vector.
//!
//! # Rebuilds
//!
//! A graph only grows: replaced and deleted vectors stay in it as dead points. When
//! they pass [`VectorConfig::rebuild_dead_fraction`] of the graph, the index thread
//! builds a new graph from a snapshot of the `vectors` table while the old one keeps
//! serving. Keys changed after the rebuild began are journaled; at the swap, the new
//! graph's points of journaled or pending keys are dropped (their current vector, if
//! any, is in `pending`, which goes on to the new graph). The first build at start is
//! a rebuild from an empty graph; until it is swapped in, searches scan storage exactly
//! (correct, slower).
//!
//! # Saved graphs
//!
//! At shutdown (and every [`SAVE_EVERY`] while it changes) the index thread saves the
//! graph with the change sequence number it reflects (`persist.rs`); the next start loads
//! it if storage has not changed since and the files are intact, else rebuilds.
//! `applied` is that number: every commit hook raises it, after applying the commit
//! under the state lock when the commit touches vectors, so a save that reads it under
//! the lock saves a state that includes every change up to it.
//!
//! # Search
//!
//! With a key prefix that few vectors match, an exact scan of those vectors in storage
//! is both exact and cheaper than a filtered graph walk (which degenerates towards a
//! scan when most points fail the filter); otherwise the graph is searched, filtered
//! on the prefix, over-fetching when dead points may hide results and retrying wider
//! until `k` live results are found or the graph has none left. See
//! [`VectorConfig::exact_max`]. A graph search reads the bookkeeping twice (pending
//! vectors before the walk, which points are live after it) and starts again if a
//! rebuild's swap or a commit that replaced a vector came in between (`epoch`), so its
//! answer is that of one state.

mod distance;
mod graph;
mod links;
mod pages;
mod persist;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use distance::{dot, normalized};
pub use graph::{Graph, GraphParams};

use ringbase_protocol::message::VectorStatus;
use ringbase_protocol::trace::{self, Point};

use crate::store::{Commit, CommitHook, Reader, Store, StoreError};

/// Settings of the vector index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorConfig {
    /// How the graph is built.
    pub graph: GraphParams,
    /// Search breadth when a request leaves it to the server.
    pub ef_search: usize,
    /// Rebuild the graph when dead points make up more than this fraction of it…
    pub rebuild_dead_fraction: f64,
    /// …and there are at least this many.
    pub rebuild_min_dead: usize,
    /// A prefix search scans storage exactly when at most this many vectors match the
    /// prefix (or at most 1/[`EXACT_SHARE`] of all vectors, whichever is larger).
    pub exact_max: u64,
}

/// A prefix that at most 1/`EXACT_SHARE` of the vectors match is searched by an exact
/// scan of its range in storage. Measured with the `vectors` bench (100k vectors of 128
/// and 384 dimensions, 2026-12-07): a filtered walk of the graph steps through
/// non-matching points until it holds `ef` matching ones, so under a prefix of 0.1% of
/// the vectors it took 28-41 ms where the exact scan took 0.06 ms; at 5% 2.6-4.7 ms
/// against 2.5-2.9 ms; at 25% 0.55-1.0 ms against 6 ms and more: the two cross near
/// 5%. Deciding costs a count of the prefix's vectors in storage, stopped past the
/// limit: the smaller the share, the cheaper a broad prefix's search.
pub const EXACT_SHARE: u64 = 20;

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig {
            graph: GraphParams::default(),
            ef_search: 64,
            rebuild_dead_fraction: 0.25,
            rebuild_min_dead: 1000,
            exact_max: 2000,
        }
    }
}

/// How often the index thread saves a changed graph.
pub const SAVE_EVERY: Duration = Duration::from_secs(600);
/// At shutdown, insert at most this many pending vectors to save the graph (more: the
/// next start rebuilds instead of delaying this shutdown).
const SHUTDOWN_INSERT_MAX: usize = 2000;

/// Searches that may start again because the bookkeeping changed under them before one
/// holds the state lock for its whole walk.
const OPTIMISTIC_SEARCHES: usize = 3;

/// One search result: key, score (`max(0, cosine similarity)`).
pub type Hit = (String, f32);

/// The index's bookkeeping, under one lock (held briefly: never during a graph insert,
/// and during a graph search only when writes keep changing it, see
/// [`VectorIndex::search_graph`]).
struct State {
    /// The graph that serves searches (empty until the first build is swapped in).
    graph: Arc<Graph>,
    /// Whether `graph` plus `pending` hold every stored vector.
    ready: bool,
    /// Key -> id of its current vector's point in `graph`.
    live: HashMap<Arc<str>, u32>,
    /// Committed vectors (normalised) not yet in `graph`, by key.
    pending: HashMap<Arc<str>, Arc<[f32]>>,
    /// Keys changed since the running rebuild began (`None`: no rebuild running).
    journal: Option<HashSet<Arc<str>>>,
    /// Dead points in `graph`.
    dead: usize,
    rebuilds: u64,
    last_rebuild_ms: u64,
    /// Bumped by every change a search walking the graph without the lock could
    /// mis-read (see [`VectorIndex::search_graph`]): a new graph, and a commit that
    /// replaces or deletes a vector already in `live` or `pending`.
    epoch: u64,
}

impl State {
    /// Dead points per point of `graph`.
    fn dead_fraction(&self) -> f64 {
        self.dead as f64 / self.graph.len().max(1) as f64
    }
}

/// Wakes the index thread.
#[derive(Default)]
struct Signal {
    flag: Mutex<bool>,
    cond: Condvar,
}

impl Signal {
    fn notify(&self) {
        *self.flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_one();
    }

    /// Waits at most `timeout` for a notification; clears it.
    fn wait(&self, timeout: Duration) {
        let guard = self.flag.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |f| !*f)
            .unwrap_or_else(|p| p.into_inner());
        *guard = false;
    }
}

/// The vector index of a store. Register it as a commit hook before the store opens,
/// then [`VectorIndex::start`] it.
pub struct VectorIndex {
    config: VectorConfig,
    state: RwLock<State>,
    signal: Signal,
    stop: AtomicBool,
    /// Set once any vector was seen: until then a commit costs the hook nothing.
    any: AtomicBool,
    /// The change sequence number the state reflects (see "Saved graphs").
    applied: AtomicU64,
    /// The number of the last save (0: none).
    saved: AtomicU64,
    /// Where the graph is saved (set by `start`).
    data_dir: Mutex<Option<PathBuf>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("status", &self.status(0))
            .finish_non_exhaustive()
    }
}

impl VectorIndex {
    /// An index with nothing in it yet (not ready: searches scan storage).
    pub fn new(config: VectorConfig) -> Arc<VectorIndex> {
        Arc::new(VectorIndex {
            config,
            state: RwLock::new(State {
                graph: Arc::new(Graph::new(config.graph, 0, 0)),
                ready: false,
                live: HashMap::new(),
                pending: HashMap::new(),
                journal: None,
                dead: 0,
                rebuilds: 0,
                last_rebuild_ms: 0,
                epoch: 0,
            }),
            signal: Signal::default(),
            stop: AtomicBool::new(false),
            any: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            saved: AtomicU64::new(0),
            data_dir: Mutex::new(None),
            thread: Mutex::new(None),
        })
    }

    /// The settings.
    pub fn config(&self) -> &VectorConfig {
        &self.config
    }

    /// Starts the index thread: it builds the graph from `store`'s vectors, then keeps
    /// it up to date. `store` must be the store this index is a hook of.
    ///
    /// A graph saved at the last shutdown is loaded first (here, before any client can
    /// write) if storage has not changed since and its files are intact.
    pub fn start(self: &Arc<Self>, store: Arc<Store>) -> Result<(), StoreError> {
        let seq = store.last_change_seq();
        self.applied.store(seq, Ordering::Release);
        *self.data_dir.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(store.data_dir().to_path_buf());
        let mut built = false;
        if store.vector_dim() > 0 {
            self.any.store(true, Ordering::Release);
            let t = Instant::now();
            match persist::load(store.data_dir(), store.vector_dim(), self.config.graph, seq) {
                Ok(Some((graph, saved))) => {
                    let points = graph.point_count();
                    let mut st = self.write();
                    for &id in saved.live.values() {
                        graph.set_live(id, true);
                    }
                    st.graph = Arc::new(graph);
                    st.epoch += 1;
                    st.live = saved.live;
                    st.dead = saved.dead;
                    st.ready = true;
                    drop(st);
                    self.saved.store(seq, Ordering::Release);
                    built = true;
                    eprintln!(
                        "ringbase: vector index loaded: {points} points in {:.1} s",
                        t.elapsed().as_secs_f64()
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("ringbase: not using the saved vector index ({e}); rebuilding it")
                }
            }
        }
        let me = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("ringbase-vectors".into())
            .spawn(move || me.run(&store, built))
            .map_err(StoreError::from)?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops the index thread (an unfinished build is abandoned) and saves the graph
    /// if it is complete (a few pending vectors are inserted first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.signal.notify();
        let Some(h) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let _ = h.join();
        // The index thread is gone: this is now the only inserter.
        if self.read().pending.len() <= SHUTDOWN_INSERT_MAX {
            self.insert_pending(SHUTDOWN_INSERT_MAX);
        }
        match self.save() {
            Ok(true) => eprintln!("ringbase: vector index saved"),
            Ok(false) => {}
            Err(e) => eprintln!("ringbase: saving the vector index failed: {e}"),
        }
    }

    /// Saves the graph if it is complete and changed since the last save; only the
    /// inserter may call it (no insert may run during the dump). `Ok(false)`: nothing
    /// to save (or not now: a build runs, vectors are pending).
    fn save(&self) -> Result<bool, String> {
        let Some(dir) = self
            .data_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(false);
        };
        let (graph, live, seq) = {
            let st = self.read();
            let seq = self.applied.load(Ordering::Acquire);
            let complete = st.ready && st.journal.is_none() && st.pending.is_empty();
            if !complete || st.graph.is_empty() || seq == self.saved.load(Ordering::Acquire) {
                return Ok(false);
            }
            (Arc::clone(&st.graph), st.live.clone(), seq)
        };
        persist::save(&dir, &graph, self.config.graph, &live, seq).map_err(|e| e.to_string())?;
        self.saved.store(seq, Ordering::Release);
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The index's state for Status; `dim` is the store's vector dimension.
    pub fn status(&self, dim: usize) -> VectorStatus {
        let st = self.read();
        VectorStatus {
            ready: st.ready,
            dim: dim as u32,
            vectors: (st.live.len() + st.pending.len()) as u64,
            points: st.graph.len() as u64,
            dead: st.dead as u64,
            // Points inserted since the graph's links were last copied are scanned
            // exactly too, like those not in the graph yet.
            pending: (st.pending.len() + st.graph.tail()) as u64,
            rebuilds: st.rebuilds,
            last_rebuild_ms: st.last_rebuild_ms,
            embedder: String::new(),
        }
    }

    /// The `k` records nearest to `query` (of the store's dimension, checked by the
    /// caller) whose key starts with `prefix`, best first, scoring at least
    /// `min_score`; `ef` 0 means [`VectorConfig::ef_search`]. `reader` is the caller's
    /// read connection: it must see every write the caller was told about.
    pub fn search(
        &self,
        reader: &mut Reader,
        query: &[f32],
        k: usize,
        prefix: &str,
        ef: usize,
        min_score: f32,
    ) -> Result<Vec<Hit>, StoreError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let unit = normalized(query);
        let ef = if ef == 0 { self.config.ef_search } else { ef };
        let (ready, total) = {
            let st = self.read();
            (st.ready, (st.live.len() + st.pending.len()) as u64)
        };
        let exact = !ready
            || (!prefix.is_empty() && {
                let limit = self.config.exact_max.max(total / EXACT_SHARE);
                reader.count_vectors(prefix, limit + 1)? <= limit
            });
        let mut top = TopK::new(k, min_score);
        if exact {
            reader.scan_vectors(prefix, |key, v| {
                // cos = q·v / |v| for the unit query: no normalised copy of v needed.
                let norm = dot(v, v).sqrt();
                if norm > 0.0 && norm.is_finite() {
                    top.offer(key, (dot(&unit, v) / norm).clamp(0.0, 1.0));
                }
                true
            })?;
        } else {
            self.search_graph(&unit, k, ef, prefix, &mut top);
        }
        Ok(top.into_sorted())
    }

    /// The graph part of a search: live graph points plus the pending vectors, as of
    /// one state of the bookkeeping.
    ///
    /// The graph is walked without the state lock (the writer's commit hook must not
    /// wait for searches), so the state may change meanwhile: a rebuild's swap makes the
    /// walked graph's point ids meaningless in the new `live` map, and a commit that
    /// replaces or deletes a vector the search saw in `pending` (or whose old point it
    /// found) would mix two states. Each such change bumps `epoch`; a search that sees
    /// it moved starts again, and after [`OPTIMISTIC_SEARCHES`] such tries (writes keep
    /// changing vectors) searches once holding the lock.
    fn search_graph(&self, unit: &[f32], k: usize, ef: usize, prefix: &str, top: &mut TopK) {
        for _ in 0..OPTIMISTIC_SEARCHES {
            let (graph, pending, dead_fraction, epoch) = {
                let st = self.read();
                let pending: Vec<(Arc<str>, Arc<[f32]>)> = st
                    .pending
                    .iter()
                    .filter(|(key, _)| key.starts_with(prefix))
                    .map(|(key, v)| (Arc::clone(key), Arc::clone(v)))
                    .collect();
                (Arc::clone(&st.graph), pending, st.dead_fraction(), st.epoch)
            };
            let mut attempt = TopK::new(top.k, top.min);
            for (key, v) in &pending {
                attempt.offer_shared(key, score(unit, v));
            }
            let done = walk_graph(&graph, unit, k, ef, prefix, dead_fraction, |found| {
                let st = self.read();
                (st.epoch == epoch).then(|| offer_live(&st, found, &mut attempt))
            });
            if done {
                *top = attempt;
                return;
            }
        }
        let st = self.read();
        for (key, v) in st.pending.iter().filter(|(key, _)| key.starts_with(prefix)) {
            top.offer_shared(key, score(unit, v));
        }
        let (graph, dead_fraction) = (&st.graph, st.dead_fraction());
        walk_graph(graph, unit, k, ef, prefix, dead_fraction, |found| {
            Some(offer_live(&st, found, top))
        });
    }

    /// The index thread: build, then insert pending vectors and rebuild when dead
    /// points pile up, until stopped.
    fn run(&self, store: &Store, mut built: bool) {
        let mut last_save = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let (pending, need_rebuild) = {
                let st = self.read();
                let dead_heavy = st.dead >= self.config.rebuild_min_dead
                    && st.dead as f64 > st.graph.len() as f64 * self.config.rebuild_dead_fraction;
                (st.pending.len(), !built || dead_heavy)
            };
            // Pending vectors go in before a rebuild for dead points starts: a rebuild
            // leaves the vectors pending at its start dead in the new graph, so
            // rebuilding first could leave as many dead points as it removed (and
            // start again), never inserting anything.
            if pending > 0 && built {
                self.insert_pending(256);
                continue;
            }
            if need_rebuild {
                match self.rebuild(store) {
                    Ok(true) => built = true,
                    Ok(false) => return, // stopped
                    Err(e) => {
                        eprintln!(
                            "ringbase: building the vector index failed: {e}; retrying in 1 s"
                        );
                        self.signal.wait(Duration::from_secs(1));
                    }
                }
                continue;
            }
            // Idle: the links searches walk catch up with the last inserts.
            let graph = Arc::clone(&self.read().graph);
            graph.settle();
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = Instant::now();
                if let Err(e) = self.save() {
                    eprintln!("ringbase: saving the vector index failed: {e}");
                }
            }
            self.signal.wait(Duration::from_millis(500));
        }
    }

    /// Inserts up to `n` pending vectors into the graph.
    fn insert_pending(&self, n: usize) {
        let (graph, batch) = {
            let st = self.read();
            let dim = st.graph.dim();
            let batch: Vec<(Arc<str>, Arc<[f32]>)> = st
                .pending
                .iter()
                .filter(|(_, v)| v.len() == dim)
                .take(n)
                .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
                .collect();
            (Arc::clone(&st.graph), batch)
        };
        if batch.is_empty() {
            // Pending vectors of another dimension than the graph's (the first vectors
            // of a database that had none at start): a rebuild makes a graph for them.
            let mut st = self.write();
            if !st.pending.is_empty() && st.graph.is_empty() {
                let dim = st.pending.values().next().map_or(0, |v| v.len());
                st.graph = Arc::new(Graph::new(self.config.graph, dim, 1024));
                st.epoch += 1;
            }
            return;
        }
        let ids: Vec<u32> = batch
            .iter()
            .map(|(k, v)| graph.insert(Arc::clone(k), v))
            .collect();
        let mut st = self.write();
        if !Arc::ptr_eq(&st.graph, &graph) {
            return;
        }
        for ((key, v), id) in batch.into_iter().zip(ids) {
            let current = st.pending.get(&key).is_some_and(|p| Arc::ptr_eq(p, &v));
            if current {
                st.pending.remove(&key);
                st.graph.set_live(id, true);
                st.live.insert(key, id);
            } else {
                // Replaced or removed while it was being inserted.
                st.dead += 1;
            }
        }
    }

    /// Builds a new graph from `store`'s vectors and swaps it in. `Ok(false)` if
    /// stopped before it was done.
    fn rebuild(&self, store: &Store) -> Result<bool, StoreError> {
        let started = Instant::now();
        let capacity = {
            let mut st = self.write();
            st.journal = Some(HashSet::new());
            st.live.len() + st.pending.len()
        };
        let result = self.build_from(store, capacity);
        let mut st = self.write();
        let journal = st.journal.take().unwrap_or_default();
        let Some((graph, mut live)) = result? else {
            return Ok(false);
        };
        // Points of keys changed since the snapshot, or whose vector waits in pending,
        // are not current in the new graph.
        let mut dead = 0;
        for key in journal.iter().chain(st.pending.keys()) {
            if live.remove(key).is_some() {
                dead += 1;
            }
        }
        for &id in live.values() {
            graph.set_live(id, true);
        }
        let points = graph.len();
        st.graph = Arc::new(graph);
        st.epoch += 1;
        st.live = live;
        st.dead = dead;
        st.ready = true;
        st.rebuilds += 1;
        st.last_rebuild_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        drop(st);
        if points > 0 {
            eprintln!(
                "ringbase: vector index built: {points} points in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(true)
    }

    /// A graph of every vector in a snapshot of `store`, with its key -> id map; `None`
    /// if stopped first.
    #[allow(clippy::type_complexity)]
    fn build_from(
        &self,
        store: &Store,
        capacity: usize,
    ) -> Result<Option<(Graph, HashMap<Arc<str>, u32>)>, StoreError> {
        let dim = store.vector_dim();
        let graph = Graph::new(self.config.graph, dim, capacity);
        let mut live = HashMap::with_capacity(capacity);
        let mut stopped = false;
        let mut bad = None;
        let started = Instant::now();
        let mut last_report = started;
        store.vector_snapshot(|key, v| {
            if self.stop.load(Ordering::Relaxed) {
                stopped = true;
                return false;
            }
            if let Err(e) = crate::store::check_vector(v, graph.dim()) {
                bad = Some(StoreError::Corrupt(format!(
                    "stored vector of {key:?}: {e}"
                )));
                return false;
            }
            let key: Arc<str> = key.into();
            let id = graph.insert(Arc::clone(&key), &normalized(v));
            live.insert(key, id);
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "ringbase: building the vector index: {} points so far, {:.0} s",
                    live.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            true
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        graph.refresh_links();
        Ok((!stopped).then_some((graph, live)))
    }
}

impl CommitHook for VectorIndex {
    fn committed(&self, commit: &Commit<'_>) {
        // One pass on the writer thread: the commit's last change number, and whether
        // any change carries a vector.
        let (last, any_vector) = commit.changes().fold((None, false), |(_, any), c| {
            (Some(c.seq), any || c.vector.is_some())
        });
        let Some(last) = last else {
            return;
        };
        if !any_vector && !self.any.load(Ordering::Acquire) {
            self.applied.fetch_max(last, Ordering::AcqRel);
            return;
        }
        if !any_vector {
            // Only puts without vectors and deletes: nothing to do unless one of those
            // keys has a vector now.
            let st = self.read();
            if !commit
                .changes()
                .any(|c| st.live.contains_key(c.key) || st.pending.contains_key(c.key))
            {
                self.applied.fetch_max(last, Ordering::AcqRel);
                return;
            }
        }
        self.any.store(true, Ordering::Release);
        let mut st = self.write();
        let mut woke = false;
        for c in commit.changes() {
            let key: Arc<str> = c.key.into();
            if let Some(id) = st.live.remove(&key) {
                st.graph.set_live(id, false);
                st.dead += 1;
                st.epoch += 1;
            }
            if st.pending.remove(&key).is_some() {
                st.epoch += 1;
            }
            if let Some(v) = c.vector {
                st.pending.insert(Arc::clone(&key), normalized(v).into());
                woke = true;
            }
            if let Some(j) = st.journal.as_mut() {
                j.insert(key);
            }
        }
        // Under the lock: a save that reads it sees this commit applied.
        self.applied.fetch_max(last, Ordering::AcqRel);
        drop(st);
        if woke {
            self.signal.notify();
        }
    }
}

/// `max(0, cosine similarity)` of two unit vectors.
fn score(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b).clamp(0.0, 1.0)
}

/// Searches `graph` for `k` results, asking for more than `k` when dead points may take
/// places and widening until `offer` (which offers the live ones of what was found and
/// counts them) has `k`, or the graph has no more. `false` if `offer` gave up (`None`).
#[allow(clippy::too_many_arguments)]
fn walk_graph(
    graph: &Graph,
    unit: &[f32],
    k: usize,
    ef: usize,
    prefix: &str,
    dead_fraction: f64,
    mut offer: impl FnMut(&[(u32, Arc<str>, f32)]) -> Option<usize>,
) -> bool {
    let mut want = k + (k as f64 * dead_fraction * 2.0).ceil() as usize;
    loop {
        trace::mark(Point::GraphSearch);
        let found = graph.search(unit, want, ef.max(want), prefix);
        trace::mark(Point::GraphSearched);
        let exhausted = found.len() < want;
        let Some(live) = offer(&found) else {
            return false;
        };
        if live >= k || exhausted || want >= graph.len() {
            return true;
        }
        want *= 2;
    }
}

/// Offers the points of `found` (walked in `st.graph`) that are their key's current
/// vector (the graph's copy of `live`: one load per point, no hashing); how many there
/// were.
fn offer_live(st: &State, found: &[(u32, Arc<str>, f32)], top: &mut TopK) -> usize {
    st.graph.with_liveness(|is_live| {
        let mut live = 0;
        for (id, key, dist) in found {
            if is_live(*id) {
                live += 1;
                top.offer_shared(key, (1.0 - dist).max(0.0));
            }
        }
        live
    })
}

/// The best `k` (key, score) pairs offered, at or above a minimum score, each key once.
struct TopK {
    k: usize,
    min: f32,
    /// Min-heap by score (the worst kept result on top).
    heap: BinaryHeap<std::cmp::Reverse<Scored>>,
    /// The kept keys, for a `k` above [`TopK::LINEAR_DEDUP`] (below it, looking through
    /// the heap costs less than hashing).
    keys: Option<HashSet<Arc<str>>>,
}

/// A key with its score, ordered by score, then key.
#[derive(PartialEq)]
struct Scored(f32, Arc<str>);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

impl TopK {
    /// The largest `k` whose duplicate check looks through the kept keys.
    const LINEAR_DEDUP: usize = 32;

    fn new(k: usize, min: f32) -> TopK {
        TopK {
            k,
            min,
            heap: BinaryHeap::with_capacity(k + 1),
            keys: (k > Self::LINEAR_DEDUP).then(HashSet::new),
        }
    }

    /// Offers a key read from storage (copied only if it is kept).
    fn offer(&mut self, key: &str, score: f32) {
        if self.admits(key, score) {
            self.keep(key.into(), score);
        }
    }

    /// Offers a key the index holds (shared, never copied).
    fn offer_shared(&mut self, key: &Arc<str>, score: f32) {
        if self.admits(key, score) {
            self.keep(Arc::clone(key), score);
        }
    }

    /// Whether (`key`, `score`) belongs in the best `k`; if so, room is made for it.
    fn admits(&mut self, key: &str, score: f32) -> bool {
        if score < self.min || self.holds(key) {
            return false;
        }
        if self.heap.len() == self.k {
            let worst = &self.heap.peek().expect("k > 0").0;
            // Compared without making a key: most offers of a long scan lose on score.
            let loses = match score.total_cmp(&worst.0) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => key >= &*worst.1,
            };
            if loses {
                return false;
            }
            let std::cmp::Reverse(Scored(_, gone)) = self.heap.pop().expect("k > 0");
            if let Some(keys) = &mut self.keys {
                keys.remove(&gone);
            }
        }
        true
    }

    fn holds(&self, key: &str) -> bool {
        match &self.keys {
            Some(keys) => keys.contains(key),
            None => self.heap.iter().any(|r| *r.0 .1 == *key),
        }
    }

    fn keep(&mut self, key: Arc<str>, score: f32) {
        if let Some(keys) = &mut self.keys {
            keys.insert(Arc::clone(&key));
        }
        self.heap.push(std::cmp::Reverse(Scored(score, key)));
    }

    /// Best first.
    fn into_sorted(self) -> Vec<Hit> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter()
            .map(|Scored(s, k)| (k.to_string(), s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreOptions, WriteOp};
    use distance::random_units;
    use ringbase_protocol::message::ValueKind;

    fn put_vec(key: &str, v: &[f32]) -> WriteOp {
        WriteOp::Put {
            key: key.into(),
            value: b"1".to_vec(),
            kind: ValueKind::Json,
            vector: Some(v.to_vec()),
        }
    }

    /// A graph swapped in by a rebuild while a search walks the old one must not make
    /// that search lose (or mis-score) current vectors: the old graph's point ids mean
    /// nothing in the new graph's bookkeeping.
    #[test]
    fn searches_racing_rebuild_swaps_find_every_current_vector() {
        let dir = std::env::temp_dir().join(format!(
            "ringbase-vectors-swap-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let index = VectorIndex::new(VectorConfig::default());
        let hook: Arc<dyn CommitHook> = index.clone();
        let store = Store::open_with_hooks(&dir, StoreOptions::default(), vec![hook]).unwrap();
        let (n, dim) = (300, 8);
        let pts = random_units(n + 1, dim, 11);
        let key = |i: usize| format!("p/{i:04}");
        store
            .write((0..n).map(|i| put_vec(&key(i), &pts[i])).collect())
            .unwrap();
        // As the index thread would: the first vectors make a graph, then go in.
        index.insert_pending(n);
        index.insert_pending(n);
        assert!(index.read().pending.is_empty());
        assert!(index.rebuild(&store).unwrap());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Each rebuild adds or removes a key that sorts first, so every other
                // key's point id moves by one from one graph to the next.
                for round in 0..16 {
                    let op = if round % 2 == 0 {
                        put_vec("a", &pts[n])
                    } else {
                        WriteOp::Delete { key: "a".into() }
                    };
                    store.write(vec![op]).unwrap();
                    assert!(index.rebuild(&store).unwrap());
                }
                stop.store(true, Ordering::Release);
            });
            let mut reader = store.reader().unwrap();
            let mut searches = 0;
            while !stop.load(Ordering::Acquire) || searches < 100 {
                let i = (searches * 7) % n;
                let hits = index.search(&mut reader, &pts[i], 3, "", 0, 0.0).unwrap();
                assert!(!hits.is_empty(), "search {searches} found nothing");
                assert_eq!(hits[0].0, key(i), "search {searches}: {i} finds itself");
                assert!(hits[0].1 > 0.9999, "{i} scored {}", hits[0].1);
                searches += 1;
            }
        });
        // Replaced and deleted vectors: their old points die at the commit, the new ones
        // live once inserted.
        store
            .write(vec![
                put_vec(&key(1), &pts[n]),
                WriteOp::Delete { key: key(2) },
            ])
            .unwrap();
        index.insert_pending(n);
        let mut reader = store.reader().unwrap();
        let hits = index.search(&mut reader, &pts[n], 3, "", 0, 0.0).unwrap();
        assert_eq!(hits[0].0, key(1));
        let hits = index.search(&mut reader, &pts[2], 3, "", 0, 0.0).unwrap();
        assert!(hits.iter().all(|h| h.0 != key(2)), "{hits:?}");
        let hits = index.search(&mut reader, &pts[1], 3, "", 0, 0.0).unwrap();
        assert!(
            hits.iter().all(|h| h.0 != key(1) || h.1 < 0.9999),
            "{hits:?}"
        );
        // The graph's liveness marks are exactly the live map.
        let st = index.read();
        let marked = st
            .graph
            .with_liveness(|is_live| (0..st.graph.len() as u32).filter(|&id| is_live(id)).count());
        assert_eq!(marked, st.live.len());
        assert!(st
            .graph
            .with_liveness(|is_live| st.live.values().all(|&id| is_live(id))));
        drop(st);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn top_k_keeps_the_best_once_each_at_or_above_the_minimum() {
        // Both ways of finding a key offered twice: through the heap (small k) and
        // through a set (large k); keys from storage and keys the index shares.
        for k in [3, TopK::LINEAR_DEDUP + 1] {
            let mut t = TopK::new(k, 0.2);
            for (i, (key, s)) in [
                ("a", 0.5),
                ("b", 0.9),
                ("c", 0.1),
                ("d", 0.7),
                ("b", 0.95),
                ("e", 0.6),
                ("d", 0.8),
            ]
            .into_iter()
            .enumerate()
            {
                if i % 2 == 0 {
                    t.offer(key, s);
                } else {
                    t.offer_shared(&Arc::from(key), s);
                }
            }
            let got = t.into_sorted();
            let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["b", "d", "e", "a"][..k.min(4)], "k = {k}");
            assert_eq!(got[0].1, 0.9, "a key offered twice keeps its first score");
            assert_eq!(got[1].1, 0.7, "a key offered twice keeps its first score");
        }
    }
}
