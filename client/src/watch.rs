//! Change feeds: follow every committed change under a key prefix, in commit order,
//! through the session's own event ring.

use std::time::{Duration, Instant};

use ringbase_protocol::message::{access_event, to_owned_event, Event, Request, Response};
use ringbase_protocol::ring::FRAME_EVENT;
use rkyv::util::AlignedVec;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::event::{WatchEvent, WatchStart};
use crate::records::unexpected;

/// How long one sleep on the event ring lasts before the server's liveness is checked:
/// how soon a watcher notices a dead server, and (4 wake-ups a second) what an idle
/// watcher costs.
const EVENT_SLICE: Duration = Duration::from_millis(250);
/// How long a wait for an event spins before it sleeps.
const EVENT_SPIN: Duration = Duration::from_micros(50);

impl Client {
    /// Starts following every committed change (by any process) to keys under
    /// `prefix`, in commit order, each with its change sequence number; read them with
    /// [`Client::next_event`] or [`Client::try_event`]. `since` resumes after that
    /// sequence number from the server's change log (bounded: an older cursor fails
    /// with [`crate::ErrorCode::Expired`]); `None` starts from now. `with_values`
    /// includes each new value (a value too large for the event ring, or over 1 KiB,
    /// comes as `value_omitted`: read it with [`Client::get`]).
    ///
    /// One watch per session: a new one replaces the last (events of the old one still
    /// in the ring are dropped). The changes of one transaction (a batch) share
    /// [`crate::Change::txn`] and arrive in a row.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Server`] with [`crate::ErrorCode::Expired`] or
    /// [`crate::ErrorCode::BadRequest`] (a cursor ahead of the newest change);
    /// [`crate::Error::Disconnected`].
    pub fn watch(
        &mut self,
        prefix: &str,
        since: Option<u64>,
        with_values: bool,
    ) -> Result<WatchStart> {
        match self.call(&Request::Watch {
            prefix: prefix.to_string(),
            since,
            with_values,
        })? {
            Response::Watching {
                watch,
                head,
                oldest,
            } => {
                self.watch_id = Some(watch);
                self.event_queue.clear();
                Ok(WatchStart { head, oldest })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Stops the session's watch; returns whether one was active.
    pub fn unwatch(&mut self) -> Result<bool> {
        self.watch_id = None;
        self.event_queue.clear();
        match self.call(&Request::Unwatch)? {
            Response::Done(was) => Ok(was),
            other => Err(unexpected(other)),
        }
    }

    /// The next event if one has arrived, without waiting.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Invalid`] if no watch is active (and no event of the last one
    /// is left); [`crate::Error::Protocol`] for an unreadable event frame.
    pub fn try_event(&mut self) -> Result<Option<WatchEvent>> {
        self.read_events()?;
        match self.event_queue.pop_front() {
            None if self.watch_id.is_none() => Err(Error::Invalid("no watch is active".into())),
            ev => Ok(ev),
        }
    }

    /// The next event, waiting for it at most `timeout` (`None`: as long as it takes);
    /// `Ok(None)` when the time is up. Spins briefly, then sleeps on the event ring
    /// (no CPU while nothing happens).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Disconnected`] if the server is gone;
    /// [`crate::Error::Invalid`] if no watch is active.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let started = Instant::now();
        loop {
            if let Some(ev) = self.try_event()? {
                return Ok(Some(ev));
            }
            let waited = started.elapsed();
            if timeout.is_some_and(|t| waited >= t) {
                return Ok(None);
            }
            if waited < EVENT_SPIN {
                std::hint::spin_loop();
                continue;
            }
            let slice = timeout.map_or(EVENT_SLICE, |t| (t - waited).min(EVENT_SLICE));
            let ready = self
                .events
                .sleep(slice)
                .map_err(|e| self.violation(e.to_string()))?;
            if !ready && !self.server_alive() {
                return Err(Error::Disconnected);
            }
        }
    }

    /// A blocking iterator over the events of the current watch (ends at the first
    /// error).
    pub fn events(&mut self) -> impl Iterator<Item = Result<WatchEvent>> + '_ {
        std::iter::from_fn(move || self.next_event(None).transpose())
    }

    /// Moves every event frame in the ring into the queue, keeping those of the
    /// current watch, and hands the space back to the server.
    fn read_events(&mut self) -> Result<()> {
        let mut buf = AlignedVec::<16>::new();
        let mut read = false;
        loop {
            let frame = match self.events.peek() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(self.violation(e.to_string())),
            };
            if frame.kind != FRAME_EVENT {
                return Err(self.violation(format!(
                    "unexpected frame kind {} in the event ring",
                    frame.kind
                )));
            }
            self.events.copy_payload(&frame, &mut buf);
            self.events.advance(&frame);
            read = true;
            let event = match access_event(&buf) {
                Ok(a) => to_owned_event(a),
                Err(e) => return Err(self.violation(format!("invalid event: {e}"))),
            };
            match event {
                Event::Changes { watch, changes } if Some(watch) == self.watch_id => self
                    .event_queue
                    .extend(changes.into_iter().map(WatchEvent::Change)),
                Event::Overflow { watch, last_seq } if Some(watch) == self.watch_id => {
                    // The server has ended the watch.
                    self.watch_id = None;
                    self.event_queue
                        .push_back(WatchEvent::Overflow { last_seq })
                }
                _ => {} // an earlier watch's
            }
        }
        if read {
            self.events.flush();
        }
        Ok(())
    }
}
