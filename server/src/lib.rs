//! The Ringbase server library: the control socket and sessions, the engine, and the
//! storage engine. The `ringbase` binary (`main.rs`, with its client subcommands in
//! `cli.rs`) is built on it; the library itself never uses the client crate.
//!
//! # Layers
//!
//! Arrows point one way: each layer uses only the ones below it.
//!
//! ```text
//!  ipc       control socket: peer check, hello/welcome, segment, session registry
//!   │          (implements engine::TransportInfo for Status)
//!   ▼
//!  session   one client's rings: copy + validate each frame, order the responses,
//!   │          wait/wake; hands validated requests to the engine
//!   ▼
//!  engine    requests -> responses, no transport: dispatches each request kind to
//!   │          the module that owns it (records, writes, status, queries, ...)
//!   ▼
//!  query,    subsystems, each doing the work of its requests: read-only SQL over
//!  feed,       the records view; the change feed (a commit hook) that watchers read;
//!  vectors,    the HNSW vector index (a commit hook); the embedding model that turns
//!  embed,      text into vectors (run by the writing client's session); replication
//!  sync        (the CRDT merge and anti-entropy, so far as pure code)
//!   │
//!   ▼
//!  store     records in SQLite, the group-commit writer, read connections, and the
//!              commit hook: after each COMMIT, before any writer is acknowledged,
//!              every CommitHook sees the transaction, in commit order
//! ```
//!
//! Indexes, the change log and replication are subsystems beside the store, used by
//! the engine: each learns of committed writes through one [`store::CommitHook`],
//! registered in [`Engine::open`], and answers the requests the engine dispatches to it.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod embed;
pub mod engine;
pub mod feed;
pub mod ipc;
pub mod lock;
pub mod query;
mod session;
pub mod store;
pub mod sync;
pub mod vectors;

pub use engine::Engine;
pub use ipc::{ServeError, Server, ServerConfig};
