//! Anti-entropy: what two replicas say to each other so that each ends with every
//! current version the other has. Pure logic over a [`VersionStore`]: no network, no
//! clock of its own (the caller passes the time), so a simulated network can drive
//! it through every order, loss, duplication and partition.
//!
//! # Messages
//!
//! - [`Message::Have`]: "this is everything I have delivered" (a version vector). The
//!   receiver answers with pages of its current versions the sender lacks, and with a
//!   `Have` of its own when asked for an answer, or (once per vector heard) when the
//!   sender has something it lacks.
//! - [`Message::Page`]: current versions of one writer (`origin`) whose sequence numbers
//!   lie in `(after, upto]` and that the receiver lacked, plus what the sender has
//!   delivered of that writer in that range (`covered`). Delivered includes
//!   superseded: a write replaced by a newer version of its key needs no sending, the
//!   newer version (with its own sequence number) goes instead. Applying a page and
//!   advancing the version vector is one transaction ([`VersionStore::apply`]). An
//!   answer holds at most [`SyncConfig::max_pages`] pages; its last says `more`, and
//!   the receiver asks again at once for the rest (a catch-up of millions of versions
//!   flows in bounded chunks).
//! - [`Message::Push`]: a new local write, sent to connected peers as it commits. Only
//!   local writes are pushed: a received version is never sent on as a new write (no
//!   echo); other peers get it by anti-entropy.
//!
//! # When a replica speaks
//!
//! [`Replica::tick`] sends a `Have` (asking for an answer) to each peer whose vector,
//! as last heard, differs from the local one, at most once per retry interval: it
//! retries until both sides have heard the other's equal vector, so a lost message
//! only delays. Once writes stop and every replica has everything, vectors are equal,
//! each side knows it, and nothing more is sent.

use std::collections::HashMap;

use super::merge::{admissible, RecordVersion};
use super::vv::{ReplicaId, SeqSet, VersionVector};
use crate::store::StoreError;

/// What anti-entropy needs of a replica's storage.
pub trait VersionStore {
    /// This replica's id.
    fn replica_id(&self) -> ReplicaId;
    /// Everything this replica has delivered (its own writes included).
    fn version_vector(&self) -> VersionVector;
    /// The current versions (tombstones included) written by `origin` with a sequence
    /// number above `after`, ascending, at most `limit`.
    fn versions_by_origin(
        &mut self,
        origin: &ReplicaId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordVersion>, StoreError>;
    /// In one transaction: stores each of `versions` that wins over the key's current
    /// version ([`super::merge::wins`]), advances the clock past each stamp, and makes
    /// `vv` the version vector.
    fn apply(&mut self, versions: Vec<RecordVersion>, vv: VersionVector) -> Result<(), StoreError>;
}

/// A message between two replicas.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The sender's version vector; `answer`: the sender wants a `Have` back even if
    /// the vectors are equal (it has not heard the receiver's yet).
    Have {
        /// What the sender has delivered.
        vv: VersionVector,
        /// Reply with a `Have` whatever the vectors.
        answer: bool,
    },
    /// Versions the receiver lacked, of one writer, in a range of its sequence numbers.
    Page {
        /// The writer.
        origin: ReplicaId,
        /// The range is `(after, upto]`.
        after: u64,
        /// End of the range (inclusive).
        upto: u64,
        /// What the sender has delivered of `origin` in the range.
        covered: SeqSet,
        /// The versions (each of `origin`, in the range).
        versions: Vec<RecordVersion>,
        /// The answer was cut here: reply with a `Have` for the rest.
        more: bool,
    },
    /// A new local write of the sender.
    Push(RecordVersion),
}

/// Settings of anti-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Most bytes of versions in one page (a page larger than a transport message is
    /// split: one version larger than this still goes alone).
    pub max_page_bytes: usize,
    /// Remote stamps at most this far ahead of the local clock are admitted.
    pub max_drift_ms: u64,
    /// Ticks between two `Have`s to a peer whose vector differs.
    pub retry_ticks: u64,
    /// Most pages in the answer to one `Have` (bounds the memory a catch-up takes:
    /// the last page says `more`, and the peer asks again for the rest).
    pub max_pages: usize,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            max_page_bytes: 256 << 10,
            max_drift_ms: super::merge::DEFAULT_MAX_DRIFT_MS,
            retry_ticks: 10,
            max_pages: 32,
        }
    }
}

/// Rows read per storage call while paging.
const READ_BATCH: usize = 512;

/// Bytes a version counts for in a page.
fn version_bytes(v: &RecordVersion) -> usize {
    v.key.len() + v.value.len() + v.vector.as_ref().map_or(0, |x| x.len() * 4) + 48
}

/// Why a message could not be handled: nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// A page that contradicts itself (from a broken or hostile peer).
    #[error("bad page from a peer: {0}")]
    BadPage(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One replica's side of anti-entropy with its peers.
#[derive(Debug)]
pub struct Replica<P> {
    config: SyncConfig,
    /// Per connected peer: its vector as last heard, and the tick of our last `Have`.
    peers: HashMap<P, PeerState>,
    /// Answers given (turns the writer an answer starts with).
    answers: usize,
}

#[derive(Debug, Default)]
struct PeerState {
    known: Option<VersionVector>,
    last_have: Option<u64>,
}

impl<P: Clone + Eq + std::hash::Hash> Replica<P> {
    /// A replica with no peers.
    pub fn new(config: SyncConfig) -> Replica<P> {
        Replica {
            config,
            peers: HashMap::new(),
            answers: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// A peer connected: a `Have` to send it (the exchange starts).
    pub fn connected(&mut self, peer: P, store: &impl VersionStore, tick: u64) -> Message {
        let st = self.peers.entry(peer).or_default();
        st.known = None;
        st.last_have = Some(tick);
        Message::Have {
            vv: store.version_vector(),
            answer: true,
        }
    }

    /// A peer disconnected.
    pub fn disconnected(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    /// The connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.peers.keys()
    }

    /// The peer's vector as last heard.
    pub fn known(&self, peer: &P) -> Option<&VersionVector> {
        self.peers.get(peer)?.known.as_ref()
    }

    /// The `Have`s due at `tick` (see the module docs).
    pub fn tick(&mut self, store: &impl VersionStore, tick: u64) -> Vec<(P, Message)> {
        let own = store.version_vector();
        let mut out = Vec::new();
        for (peer, st) in &mut self.peers {
            if st.known.as_ref() == Some(&own) {
                continue;
            }
            if st
                .last_have
                .is_some_and(|t| tick < t + self.config.retry_ticks)
            {
                continue;
            }
            st.last_have = Some(tick);
            out.push((
                peer.clone(),
                Message::Have {
                    vv: own.clone(),
                    answer: true,
                },
            ));
        }
        out
    }

    /// A local write committed: the pushes to send.
    pub fn local_write(&self, v: &RecordVersion) -> Vec<(P, Message)> {
        self.peers
            .keys()
            .map(|p| (p.clone(), Message::Push(v.clone())))
            .collect()
    }

    /// Handles a message from `peer`, the local wall clock reading `now_ms`; returns the
    /// messages to send back.
    ///
    /// # Errors
    ///
    /// [`SyncError::BadPage`] for a page that contradicts itself (a version of another
    /// writer or outside its range), [`SyncError::Store`] if storage fails: nothing of
    /// the message is applied.
    pub fn receive(
        &mut self,
        peer: &P,
        msg: Message,
        store: &mut impl VersionStore,
        now_ms: u64,
    ) -> Result<Vec<Message>, SyncError> {
        match msg {
            Message::Have { vv, answer } => {
                self.answers += 1;
                let mut out = answer_have(
                    store,
                    &vv,
                    self.config.max_page_bytes,
                    self.config.max_pages,
                    self.answers,
                )?;
                let own = store.version_vector();
                let st = self.peers.entry(peer.clone()).or_default();
                // Ask for what we lack at once, the first time we hear of it (a `Have`
                // that asks for nothing: two replicas that each lack something the
                // other cannot give yet, deferred versions, must not ping-pong).
                let news = st.known.as_ref() != Some(&vv);
                if answer || (news && !own.dominates(&vv)) {
                    out.push(Message::Have {
                        vv: own,
                        answer: false,
                    });
                }
                st.known = Some(vv);
                Ok(out)
            }
            Message::Page {
                origin,
                after,
                upto,
                covered,
                versions,
                more,
            } => {
                let before = store.version_vector();
                apply_page(
                    store,
                    origin,
                    after,
                    upto,
                    &covered,
                    versions,
                    now_ms,
                    &self.config,
                )?;
                // The answer was cut: ask for the rest now (not at the next retry), if
                // this page moved us on. A page that brought nothing new (duplicates,
                // or versions deferred for their future stamps) must not start another
                // round at once: the two would ping-pong until the clock catches up.
                let now = store.version_vector();
                Ok(if more && now != before {
                    vec![Message::Have {
                        vv: now,
                        answer: false,
                    }]
                } else {
                    Vec::new()
                })
            }
            Message::Push(v) => {
                let mut vv = store.version_vector();
                if let Some(st) = self.peers.get_mut(peer) {
                    // The pusher has delivered its own write.
                    if let Some(k) = st.known.as_mut() {
                        k.insert(v.origin(), v.seq());
                    }
                }
                if vv.covers(&v.origin(), v.seq())
                    || !admissible(&v.stamp(), now_ms, self.config.max_drift_ms)
                {
                    // A duplicate, or deferred: anti-entropy brings it again.
                    return Ok(Vec::new());
                }
                vv.insert(v.origin(), v.seq());
                store.apply(vec![v], vv)?;
                Ok(Vec::new())
            }
        }
    }
}

/// The pages of current versions that a replica with vector `theirs` lacks: at most
/// `max_pages`, by writer starting at the `rotation`-th (modulo their number).
pub fn answer_have(
    store: &mut impl VersionStore,
    theirs: &VersionVector,
    max_page_bytes: usize,
    max_pages: usize,
    rotation: usize,
) -> Result<Vec<Message>, StoreError> {
    let mine = store.version_vector();
    let empty = SeqSet::new();
    let mut out = Vec::new();
    let cut = |out: &mut Vec<Message>| {
        if let Some(Message::Page { more, .. }) = out.last_mut() {
            *more = true;
        }
    };
    // Writers in turn: a cut answer starts the next one further on, so one writer's
    // versions the peer cannot take yet (deferred for their stamps) never hold back
    // the others'.
    let mut writers: Vec<_> = mine.iter().collect();
    if !writers.is_empty() {
        let n = writers.len();
        writers.rotate_left(rotation % n);
    }
    for (origin, have) in writers {
        if out.len() >= max_pages.max(1) {
            cut(&mut out);
            return Ok(out);
        }
        let lacks = theirs.get(origin).unwrap_or(&empty);
        if have
            .runs()
            .iter()
            .all(|&(lo, hi)| lacks.missing_within(lo, hi).is_empty())
        {
            continue;
        }
        // Everything up to their contiguous prefix they have already.
        let mut after = lacks.contiguous();
        let mut page: Vec<RecordVersion> = Vec::new();
        let mut bytes = 0;
        let mut cursor = after;
        let end = have.max();
        let emit =
            |after: &mut u64, upto: u64, page: &mut Vec<RecordVersion>, out: &mut Vec<Message>| {
                let mut covered = SeqSet::new();
                covered.union_within(have, *after + 1, upto);
                let news = covered
                    .runs()
                    .iter()
                    .any(|&(lo, hi)| !lacks.missing_within(lo, hi).is_empty());
                if news || !page.is_empty() {
                    out.push(Message::Page {
                        origin: *origin,
                        after: *after,
                        upto,
                        covered,
                        versions: std::mem::take(page),
                        more: false,
                    });
                }
                *after = upto;
            };
        loop {
            let batch = store.versions_by_origin(origin, cursor, READ_BATCH)?;
            let full = batch.len() == READ_BATCH;
            for v in batch {
                if lacks.contains(v.seq()) {
                    cursor = v.seq();
                    continue;
                }
                let b = version_bytes(&v);
                if !page.is_empty() && bytes + b > max_page_bytes {
                    // Close the page just before this version.
                    emit(&mut after, v.seq() - 1, &mut page, &mut out);
                    bytes = 0;
                    if out.len() >= max_pages.max(1) {
                        cut(&mut out);
                        return Ok(out);
                    }
                }
                cursor = v.seq();
                bytes += b;
                page.push(v);
            }
            if !full {
                break;
            }
        }
        let last = end.max(after);
        emit(&mut after, last, &mut page, &mut out);
    }
    Ok(out)
}

/// Applies one page (see [`Message::Page`]).
#[allow(clippy::too_many_arguments)]
fn apply_page(
    store: &mut impl VersionStore,
    origin: ReplicaId,
    after: u64,
    upto: u64,
    covered: &SeqSet,
    versions: Vec<RecordVersion>,
    now_ms: u64,
    config: &SyncConfig,
) -> Result<(), SyncError> {
    if after > upto {
        return Err(SyncError::BadPage(format!(
            "range ({after}, {upto}] is empty"
        )));
    }
    let mut vv = store.version_vector();
    let mut apply = Vec::with_capacity(versions.len());
    let mut deferred = Vec::new();
    for v in versions {
        let seq = v.seq();
        if v.origin() != origin || seq <= after || seq > upto || !covered.contains(seq) {
            return Err(SyncError::BadPage(format!(
                "version {} of {:?} is outside the page of {origin:?} ({after}, {upto}]",
                seq,
                v.origin()
            )));
        }
        if vv.covers(&origin, seq) {
            continue;
        }
        if !admissible(&v.stamp(), now_ms, config.max_drift_ms) {
            deferred.push(seq);
            continue;
        }
        apply.push(v);
    }
    let entry = vv.entry(origin);
    entry.union_within(covered, after + 1, upto);
    for seq in deferred {
        entry.remove(seq);
    }
    store.apply(apply, vv)?;
    Ok(())
}
