//! The items of a change feed ([`crate::Client::watch`]).

use ringbase_protocol::message::Change;

/// One item of a change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A committed change under the watched prefix.
    Change(Change),
    /// This client fell too far behind and its watch has ended after the change
    /// `last_seq`: call [`crate::Client::watch`] again with `since = Some(last_seq)` to go on
    /// without missing anything (while the server's change log still holds it; else
    /// the watch fails with [`crate::ErrorCode::Expired`]: re-read what you follow).
    Overflow {
        /// the last change received before the gap
        last_seq: u64,
    },
}

/// Where a watch starts ([`crate::Client::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchStart {
    /// The newest change sequence number when the watch started.
    pub head: u64,
    /// The oldest sequence number the server's change log can resume after.
    pub oldest: u64,
}
