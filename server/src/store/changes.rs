//! Subscriptions to committed changes, fed by the commit hook.
//!
//! The hub is the first [`CommitHook`]: after each successful `COMMIT` it publishes the
//! records that transaction wrote. Every subscriber has its own queue, bounded both in
//! batches and in bytes; the writer only ever `try_send`s, so a subscriber that falls
//! behind never blocks it. Instead the subscriber's stream gets a
//! [`ChangeEvent::Overflow`] marker at the position where committed batches were
//! dropped, and its [`ChangeSubscription::dropped`] counter grows.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::hook::{Commit, CommitHook};
use super::Record;

/// Default queue bound in committed batches of [`super::Store::subscribe`].
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 1024;
/// Default queue bound in bytes (keys + values + per-record overhead) of
/// [`super::Store::subscribe`].
pub const DEFAULT_SUBSCRIPTION_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Bytes charged per record on top of its key and value, for the byte bound.
const RECORD_OVERHEAD: usize = 64;

/// An item of a change subscription stream.
#[derive(Debug, PartialEq)]
pub enum ChangeEvent {
    /// The records written by one committed transaction.
    Committed(ChangeBatch),
    /// One or more committed batches between the previous and the next `Committed`
    /// item were dropped because this subscriber's queue was full. The subscriber must
    /// resynchronise (for example re-read the keys it cares about).
    Overflow,
}

/// The records written by one committed transaction, in the order they were applied
/// (puts and tombstones; a key may appear more than once). Dereferences to `[Record]`.
///
/// The batch counts against its subscriber's byte bound until it is dropped.
#[derive(Debug)]
pub struct ChangeBatch {
    records: Arc<[Record]>,
    _charge: Charge,
}

impl ChangeBatch {
    /// The shared records (cheap to clone and keep after the batch is released).
    pub fn records(&self) -> &Arc<[Record]> {
        &self.records
    }
}

impl Deref for ChangeBatch {
    type Target = [Record];

    fn deref(&self) -> &[Record] {
        &self.records
    }
}

impl PartialEq for ChangeBatch {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

/// Bytes a queued batch holds against its subscriber's budget; released on drop.
#[derive(Debug)]
struct Charge {
    bytes: u64,
    owner: Arc<SubShared>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.owner
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// State shared between a subscription and the hub.
#[derive(Debug, Default)]
struct SubShared {
    dropped: AtomicU64,
    queued_bytes: AtomicU64,
    closed: AtomicBool,
}

#[derive(Debug)]
struct Subscriber {
    tx: Sender<ChangeEvent>,
    capacity: usize,
    max_bytes: u64,
    shared: Arc<SubShared>,
    /// An `Overflow` marker has been queued and no batch has been delivered since.
    in_gap: bool,
}

/// Fan-out of committed batches to subscribers.
#[derive(Debug, Default)]
pub struct ChangeHub {
    subs: Mutex<Vec<Subscriber>>,
    count: AtomicU64,
}

impl ChangeHub {
    /// Whether anyone is subscribed (the writer skips building events otherwise).
    pub fn has_subscribers(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Register a subscriber whose queue holds up to `capacity` items (at least 2) and
    /// `max_bytes` bytes of batches (a batch is always accepted into an empty queue).
    pub fn subscribe(&self, capacity: usize, max_bytes: usize) -> ChangeSubscription {
        let capacity = capacity.max(2);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let shared = Arc::new(SubShared::default());
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.push(Subscriber {
            tx,
            capacity,
            max_bytes: max_bytes as u64,
            shared: shared.clone(),
            in_gap: false,
        });
        self.count.store(subs.len() as u64, Ordering::Release);
        ChangeSubscription { rx, shared }
    }

    /// Deliver one committed batch to every subscriber without blocking.
    pub fn publish(&self, records: Arc<[Record]>) {
        let bytes: u64 = records
            .iter()
            .map(|r| (r.key.len() + r.value.len() + RECORD_OVERHEAD) as u64)
            .sum();
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain_mut(|s| {
            if s.shared.closed.load(Ordering::Acquire) {
                return false;
            }
            // Batches may fill the queue only up to capacity - 1: the last slot is kept
            // for the Overflow marker, so the marker always lands exactly at the gap.
            // (The writer is the only producer, so the queue cannot grow behind our back.)
            let queued = s.shared.queued_bytes.load(Ordering::Acquire);
            let fits =
                s.tx.len() + 1 < s.capacity && (queued == 0 || queued + bytes <= s.max_bytes);
            if fits {
                s.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
                let batch = ChangeBatch {
                    records: records.clone(),
                    _charge: Charge {
                        bytes,
                        owner: s.shared.clone(),
                    },
                };
                if s.tx.try_send(ChangeEvent::Committed(batch)).is_err() {
                    return false; // disconnected (the failed batch released its charge)
                }
                s.in_gap = false;
            } else {
                s.shared.dropped.fetch_add(1, Ordering::AcqRel);
                if !s.in_gap {
                    match s.tx.try_send(ChangeEvent::Overflow) {
                        Ok(()) => s.in_gap = true,
                        // Cannot happen (a slot is reserved); retry on the next publish.
                        Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Disconnected(_)) => return false,
                    }
                }
            }
            true
        });
        self.count.store(subs.len() as u64, Ordering::Release);
    }

    /// Drop every subscriber's sender so their streams end (called when the writer stops).
    pub fn close_all(&self) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.clear();
        self.count.store(0, Ordering::Release);
    }
}

impl CommitHook for ChangeHub {
    /// Publishes the transaction's records (built only when someone is subscribed).
    fn committed(&self, commit: &Commit<'_>) {
        if !self.has_subscribers() {
            return;
        }
        let records: Arc<[Record]> = commit.changes().map(|c| c.to_record()).collect();
        if !records.is_empty() {
            self.publish(records);
        }
    }
}

/// A subscription to committed changes, returned by [`super::Store::subscribe`].
///
/// It sees every transaction committed after it was created, unless it falls behind
/// (see [`ChangeEvent::Overflow`]). The stream ends (`recv` returns `None`) when the
/// store shuts down. Dropping the subscription unsubscribes.
#[derive(Debug)]
pub struct ChangeSubscription {
    rx: Receiver<ChangeEvent>,
    shared: Arc<SubShared>,
}

impl ChangeSubscription {
    /// Block until the next event; `None` once the store has shut down and the queue is empty.
    pub fn recv(&self) -> Option<ChangeEvent> {
        self.rx.recv().ok()
    }

    /// The next event if one is queued right now.
    pub fn try_recv(&self) -> Option<ChangeEvent> {
        self.rx.try_recv().ok()
    }

    /// Wait up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<ChangeEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The underlying receiver, for `crossbeam_channel::select!`.
    pub fn receiver(&self) -> &Receiver<ChangeEvent> {
        &self.rx
    }

    /// How many committed batches were dropped for this subscriber so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Acquire)
    }

    /// Bytes of batches currently queued or held (not yet dropped) by this subscriber.
    pub fn queued_bytes(&self) -> u64 {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

impl Drop for ChangeSubscription {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}
