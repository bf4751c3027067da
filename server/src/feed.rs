//! The change feed: every committed change, in commit order, for watchers.
//!
//! The feed is a [`CommitHook`]: after each commit the writer appends the transaction's
//! changes to the feed's in-memory **change log** (bounded: at most
//! [`FeedLimits::log_changes`] changes and [`FeedLimits::log_bytes`] bytes; the oldest
//! go first) and notifies the clients that watch. It never waits for a watcher.
//!
//! A **watch** ([`Watch`]) is a cursor into the log plus a key prefix. The session of a
//! watching client pulls events from it ([`Watch::next_event`]) whenever its event ring
//! has room, so the event ring is the only queue per watcher. A watcher whose event ring
//! is full while it is more than [`FeedLimits::max_lag`] changes behind the newest (it
//! stopped reading), or whose cursor the log has dropped, gets an [`Event::Overflow`]
//! marker carrying the last change it was sent, and its watch ends;
//! it watches again from that sequence number (`since`) and misses nothing as long as
//! the log still holds it (the lag bound is far below the log's size), or gets
//! `Expired` and re-reads what it follows.
//!
//! Sequence numbers are the store's change sequence numbers ([`crate::store::Change::
//! seq`]): persisted with each commit, so they keep growing across restarts. The log
//! itself is memory: after a restart it starts empty at the last number.
//!
//! Values: a change carries its value in the log only up to [`MAX_LOGGED_VALUE`] bytes
//! (and in an event only if it fits in the watcher's event frame); a larger one is
//! marked `value_omitted`, for the watcher to read with Get.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ringbase_protocol::message::{Change, Event, ValueKind, Version};

use crate::store::{Commit, CommitHook};

/// Largest value kept in the change log (larger ones are `value_omitted`): small enough
/// that the log's byte bound holds many changes.
pub const MAX_LOGGED_VALUE: usize = 1024;
/// Most changes in one event frame.
const MAX_CHANGES_PER_EVENT: usize = 256;
/// Bytes charged per change on top of key and value (log accounting and frame sizing).
const CHANGE_OVERHEAD: usize = 96;

/// Bounds of the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    /// Most changes the log keeps.
    pub log_changes: usize,
    /// Most bytes (keys, logged values, overhead) the log keeps.
    pub log_bytes: usize,
    /// How far (in changes) a watcher may fall behind the newest change before it gets
    /// an overflow marker.
    pub max_lag: u64,
}

impl Default for FeedLimits {
    fn default() -> Self {
        FeedLimits {
            log_changes: 1_000_000,
            // The log is server memory: 16 MiB keep ~100k changes of 100-byte values
            // (and at least ~15k of the largest logged ones), without pushing a server
            // that holds 1M records past its memory goal (400 MB).
            log_bytes: 16 << 20,
            max_lag: 10_000,
        }
    }
}

/// One logged change: where its key and value lie in its batch's `data`.
#[derive(Debug)]
struct Entry {
    key: (u32, u32),
    /// The value, if it was at most [`MAX_LOGGED_VALUE`] bytes (never for a delete).
    value: Option<(u32, u32)>,
    kind: ValueKind,
    deleted: bool,
    version: Version,
}

/// The changes of one committed transaction, packed: two allocations per commit on the
/// writer thread, not several per change. Its changes have the sequence numbers
/// `first ..` in order (a transaction's changes are numbered consecutively).
#[derive(Debug)]
struct Batch {
    first: u64,
    updated_at_ms: u64,
    entries: Vec<Entry>,
    /// Keys and logged values, back to back.
    data: Vec<u8>,
}

impl Batch {
    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    fn cost(&self) -> usize {
        self.data.len() + self.entries.len() * CHANGE_OVERHEAD
    }

    fn bytes(&self, (at, len): (u32, u32)) -> &[u8] {
        &self.data[at as usize..(at + len) as usize]
    }

    fn key(&self, e: &Entry) -> &str {
        // The bytes were copied from a `&str` in `Feed::committed`.
        std::str::from_utf8(self.bytes(e.key)).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Log {
    batches: VecDeque<Arc<Batch>>,
    changes: usize,
    bytes: usize,
}

impl Log {
    /// The sequence number before the oldest logged change (`head` if none).
    fn oldest(&self, head: u64) -> u64 {
        self.batches.front().map_or(head, |b| b.first - 1)
    }
}

/// Something to call when new changes are logged (a watcher's session).
type Notify = Box<dyn Fn() + Send>;

/// The change feed (see the module docs). Register it as a commit hook.
pub struct Feed {
    limits: FeedLimits,
    log: Mutex<Log>,
    /// Sequence number of the newest logged change.
    head: AtomicU64,
    watchers: Mutex<Vec<(u64, Notify)>>,
    next_watch: AtomicU64,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("limits", &self.limits)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// Why a watch could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `since` is older than the oldest change the log holds.
    #[error("the change log no longer holds the changes after {since} (it starts after {oldest}); re-read what you follow, then watch from now")]
    Expired {
        /// the requested cursor
        since: u64,
        /// the log holds the changes after this one
        oldest: u64,
    },
    /// `since` is newer than the newest change.
    #[error("cursor {since} is ahead of the newest change ({head})")]
    Ahead {
        /// the requested cursor
        since: u64,
        /// the newest change
        head: u64,
    },
}

impl Feed {
    /// An empty feed; [`Feed::resume_after`] sets where its numbers continue.
    pub fn new(limits: FeedLimits) -> Feed {
        Feed {
            limits,
            log: Mutex::new(Log::default()),
            head: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            next_watch: AtomicU64::new(1),
        }
    }

    /// Sets the newest change to `last_seq` (the store's last change sequence number at
    /// open), while the log is empty; a no-op after changes were logged.
    pub fn resume_after(&self, last_seq: u64) {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.batches.is_empty() {
            self.head.store(last_seq, Ordering::Release);
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> FeedLimits {
        self.limits
    }

    /// Sequence number of the newest change.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// The log holds the changes after this sequence number.
    pub fn oldest(&self) -> u64 {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.oldest(self.head())
    }

    /// Starts a watch of the keys under `prefix`, after change `since` (`None`: from
    /// now on). `notify` is called (from the writer thread, without blocking) whenever
    /// changes are logged, until the watch is dropped.
    pub fn watch(
        self: &Arc<Feed>,
        prefix: &str,
        since: Option<u64>,
        with_values: bool,
        notify: Notify,
    ) -> Result<Watch, WatchError> {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        // Registered before the cursor is read, so no change between the two is missed
        // unnoticed.
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, notify));
        let mut watch = Watch {
            feed: Arc::clone(self),
            id,
            prefix: prefix.to_string(),
            with_values,
            cursor: 0,
            sent: 0,
            head_at_start: 0,
            ended: false,
        };
        let head = self.head();
        let cursor = match since {
            None => head,
            Some(s) if s > head => return Err(WatchError::Ahead { since: s, head }),
            Some(s) => {
                let oldest = self.oldest();
                if s < oldest {
                    return Err(WatchError::Expired { since: s, oldest });
                }
                s
            }
        };
        watch.cursor = cursor;
        watch.sent = cursor;
        watch.head_at_start = head;
        Ok(watch)
    }

    fn unregister(&self, id: u64) {
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(w, _)| *w != id);
    }
}

impl CommitHook for Feed {
    fn committed(&self, commit: &Commit<'_>) {
        let mut batch = Batch {
            first: commit.first_seq(),
            updated_at_ms: commit.updated_at_ms(),
            entries: Vec::new(),
            data: Vec::new(),
        };
        for c in commit.changes() {
            debug_assert_eq!(c.seq, batch.first + batch.entries.len() as u64);
            let mut put = |b: &[u8]| {
                let at = batch.data.len() as u32;
                batch.data.extend_from_slice(b);
                (at, b.len() as u32)
            };
            let key = put(c.key.as_bytes());
            let value = (!c.deleted && c.value.len() <= MAX_LOGGED_VALUE).then(|| put(c.value));
            batch.entries.push(Entry {
                key,
                value,
                kind: c.kind,
                deleted: c.deleted,
                version: c.version,
            });
        }
        if batch.entries.is_empty() {
            return;
        }
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            log.changes += batch.entries.len();
            log.bytes += batch.cost();
            let last = batch.last();
            log.batches.push_back(Arc::new(batch));
            while log.batches.len() > 1
                && (log.changes > self.limits.log_changes || log.bytes > self.limits.log_bytes)
            {
                let b = log.batches.pop_front().expect("more than one");
                log.changes -= b.entries.len();
                log.bytes -= b.cost();
            }
            // SYNC POINT: pairs with the Acquire load in `head`; a watcher that sees
            // the new head finds the batch under the lock.
            self.head.store(last, Ordering::Release);
        }
        for (_, notify) in self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            notify();
        }
    }
}

/// One client's watch: a cursor into the feed and a key prefix. Dropping it stops the
/// notifications (after `drop` returns, its `notify` is never called again).
#[derive(Debug)]
pub struct Watch {
    feed: Arc<Feed>,
    id: u64,
    prefix: String,
    with_values: bool,
    /// The last change taken (into an event, or skipped: not under the prefix).
    cursor: u64,
    /// The last change known delivered (written into the client's event ring), or the
    /// starting cursor: where a resumed watch would go on.
    sent: u64,
    /// The newest change when the watch started (from now on: its first event's is
    /// greater).
    head_at_start: u64,
    ended: bool,
}

impl Watch {
    /// Whether the feed holds changes this watch has not looked at yet.
    pub fn pending(&self) -> bool {
        !self.ended && self.feed.head() > self.cursor
    }

    /// The newest change sequence number when the watch started.
    pub fn head_at_start(&self) -> u64 {
        self.head_at_start
    }

    /// The watch's id (carried by its events).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the watch ended with an overflow marker.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether the watcher is more than [`FeedLimits::max_lag`] changes behind the
    /// newest. The session asks while its event ring is full: a watcher that keeps
    /// reading may be far behind (catching up after `since`) without overflowing.
    pub fn lagging(&self) -> bool {
        !self.ended && self.feed.head().saturating_sub(self.cursor) > self.feed.limits.max_lag
    }

    /// Records that the changes up to `seq` reached the client.
    pub fn delivered(&mut self, seq: u64) {
        self.sent = self.sent.max(seq);
    }

    /// Ends the watch: the overflow marker, with the last delivered change. (Changes
    /// taken but not delivered, and skipped ones after it, are looked at again by a
    /// watch resumed there.)
    pub fn overflow(&mut self) -> Event {
        self.ended = true;
        self.feed.unregister(self.id);
        Event::Overflow {
            watch: self.id,
            last_seq: self.sent,
        }
    }

    /// The next event for this watcher, at most about `max_bytes` when encoded: changes
    /// under the prefix after the cursor (the cursor moves past them and past changes
    /// under other keys), or the overflow marker if the watcher fell behind (then the
    /// watch has ended). `None` if there is nothing new.
    ///
    /// The caller sends the event, or else must not call this again (the changes in it
    /// count as sent): it checks for room in its event ring first.
    pub fn next_event(&mut self, max_bytes: usize) -> Option<Event> {
        if self.ended {
            return None;
        }
        let head = self.feed.head();
        if head <= self.cursor {
            return None;
        }
        let log = self.feed.log.lock().unwrap_or_else(|p| p.into_inner());
        if self.cursor < log.oldest(head) {
            // The log dropped changes this watch had not read.
            drop(log);
            return Some(self.overflow());
        }
        // The batch holding the change after the cursor, and the ones after it.
        let from = log.batches.partition_point(|b| b.last() <= self.cursor);
        let mut out = Vec::new();
        let mut bytes = 64;
        'batches: for b in log.batches.range(from..) {
            let skip = (self.cursor + 1).saturating_sub(b.first) as usize;
            for (i, e) in b.entries.iter().enumerate().skip(skip) {
                let seq = b.first + i as u64;
                let key = b.key(e);
                if !key.starts_with(&self.prefix) {
                    self.cursor = seq;
                    continue;
                }
                let logged = e.value.map(|v| b.bytes(v));
                let value = if self.with_values { logged } else { None };
                let cost = key.len() + value.map_or(0, <[u8]>::len) + CHANGE_OVERHEAD;
                // A value that cannot fit even alone goes by reference.
                let (value, omitted, cost) = if cost + 64 > max_bytes {
                    (
                        None,
                        self.with_values && !e.deleted,
                        key.len() + CHANGE_OVERHEAD,
                    )
                } else {
                    (
                        value,
                        self.with_values && !e.deleted && logged.is_none(),
                        cost,
                    )
                };
                if !out.is_empty()
                    && (bytes + cost > max_bytes || out.len() >= MAX_CHANGES_PER_EVENT)
                {
                    break 'batches;
                }
                bytes += cost;
                out.push(Change {
                    seq,
                    txn: b.first,
                    key: key.to_string(),
                    kind: e.kind,
                    deleted: e.deleted,
                    version: e.version,
                    updated_at_ms: b.updated_at_ms,
                    value: value.map(<[u8]>::to_vec),
                    value_omitted: omitted,
                });
                self.cursor = seq;
            }
        }
        (!out.is_empty()).then_some(Event::Changes {
            watch: self.id,
            changes: out,
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.feed.unregister(self.id);
    }
}
