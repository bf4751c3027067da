//! Watch and Unwatch: the client's cursor into the change feed ([`crate::feed`]). The
//! session pulls the watch's events into its event ring ([`super::ClientState::
//! next_event`]); the feed wakes the session when changes arrive.

use std::sync::Arc;

use ringbase_protocol::message::{ErrorCode, Response};

use super::{ClientState, Engine};
use crate::feed::WatchError;

/// Watch: replaces the client's watch, if any (a failed Watch leaves it).
pub(super) fn watch(
    engine: &Engine,
    c: &mut ClientState,
    prefix: &str,
    since: Option<u64>,
    with_values: bool,
) -> Response {
    let notify = Arc::clone(&c.notify);
    match engine
        .feed
        .watch(prefix, since, with_values, Box::new(move || notify()))
    {
        Ok(w) => {
            let (head, watch) = (w.head_at_start(), w.id());
            c.watch = Some(w);
            Response::Watching {
                watch,
                head,
                oldest: engine.feed.oldest(),
            }
        }
        Err(e @ WatchError::Expired { .. }) => Response::error(ErrorCode::Expired, e.to_string()),
        Err(e @ WatchError::Ahead { .. }) => Response::error(ErrorCode::BadRequest, e.to_string()),
    }
}

/// Unwatch: `Done(true)` if a watch was active.
pub(super) fn unwatch(c: &mut ClientState) -> Response {
    Response::Done(c.watch.take().is_some_and(|w| !w.ended()))
}
