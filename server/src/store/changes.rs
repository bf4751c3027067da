//! The one place where committed changes are published.
//!
//! The writer calls [`ChangeHub::publish`] after each successful `COMMIT` with the
//! records that transaction wrote. Every subscriber has its own bounded queue; the
//! writer only ever `try_send`s, so a subscriber that falls behind never blocks it.
//! Instead the subscriber's stream gets an [`ChangeEvent::Overflow`] marker at the
//! position where committed batches were dropped, and its drop counter grows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Record;

/// Default queue capacity (in committed batches) of [`super::Store::subscribe`].
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 1024;

/// An item of a change subscription stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeEvent {
    /// The records written by one committed transaction, in the order they were applied
    /// (puts and tombstones; a key may appear more than once).
    Committed(Arc<[Record]>),
    /// One or more committed batches between the previous and the next `Committed`
    /// item were dropped because this subscriber's queue was full. The subscriber must
    /// resynchronise (for example re-read the keys it cares about).
    Overflow,
}

/// State shared between a subscription and the hub.
#[derive(Debug, Default)]
struct SubShared {
    dropped: AtomicU64,
    closed: AtomicBool,
}

#[derive(Debug)]
struct Subscriber {
    tx: Sender<ChangeEvent>,
    capacity: usize,
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

    /// Register a subscriber whose queue holds up to `capacity` items (at least 2).
    pub fn subscribe(&self, capacity: usize) -> ChangeSubscription {
        let capacity = capacity.max(2);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let shared = Arc::new(SubShared::default());
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.push(Subscriber {
            tx,
            capacity,
            shared: shared.clone(),
            in_gap: false,
        });
        self.count.store(subs.len() as u64, Ordering::Release);
        ChangeSubscription { rx, shared }
    }

    /// Deliver one committed batch to every subscriber without blocking.
    pub fn publish(&self, batch: Arc<[Record]>) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain_mut(|s| {
            if s.shared.closed.load(Ordering::Acquire) {
                return false;
            }
            // Batches may fill the queue only up to capacity - 1: the last slot is kept
            // for the Overflow marker, so the marker always lands exactly at the gap.
            // (The writer is the only producer, so len() cannot grow behind our back.)
            if s.tx.len() + 1 < s.capacity {
                if s.tx
                    .try_send(ChangeEvent::Committed(batch.clone()))
                    .is_err()
                {
                    return false; // disconnected
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
}

impl Drop for ChangeSubscription {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}
