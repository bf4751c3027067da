//! The Ringbase Rust client.
//!
//! A [`Client`] is one session with a local `ringbase` server: requests go through a
//! shared-memory ring, responses come back through another and are read in place.
//!
//! ```no_run
//! let mut c = ringbase_client::Client::connect("default")?;
//! c.ping()?;
//! assert_eq!(c.echo(b"hi")?, b"hi");
//! # Ok::<(), ringbase_client::Error>(())
//! ```
//!
//! A client is `Send` but not `Sync`: use it from one thread at a time, or give each
//! thread its own client (sessions are cheap and independent).
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod client;
mod error;
mod event;
mod query;
mod records;
mod spawn;
mod vectors;
mod watch;

pub use client::{Client, ConnectOptions};
pub use error::{Error, Result};
pub use event::{WatchEvent, WatchStart};
pub use query::QueryOptions;
pub use records::{ListPage, ValueView, MAX_KEY_LEN};
pub use ringbase_protocol::handshake::WaitMode;
pub use ringbase_protocol::layout::RingSizes;
pub use ringbase_protocol::message::{
    BatchOp, Change, ErrorCode, FieldFilter, Neighbor, QueryRows, Record, Request, Response,
    SearchHit, SqlValue, StatusInfo, ValueKind, VectorStatus, Version,
};
pub use spawn::SpawnOptions;
pub use vectors::VectorSearch;
