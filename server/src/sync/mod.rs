//! Replication: servers that share a database converge to the same records, whatever
//! the order, duplication and loss of messages, partitions and restarts.
//!
//! Built so far: the protocol as pure code (no I/O), proven on a simulated network
//! (`sim`, tests only), and its storage:
//!
//! - [`merge`]: the CRDT — versions are ordered by their stamp `(hlc, replica)`, the
//!   greatest wins, deletes included; remote stamps too far ahead of the local clock
//!   are deferred;
//! - [`vv`]: version vectors (per writer, the sequence numbers delivered, as
//!   intervals);
//! - [`protocol`]: anti-entropy — `Have` (a version vector), `Page` (the current
//!   versions the peer lacks, one writer and range at a time, split by size), `Push`
//!   (live local writes, never echoed), over a [`protocol::VersionStore`].
//!
//! - [`sqlite`]: the store as a `VersionStore` — versions read by writer, a page
//!   merged in one transaction with the version-vector rows it advances (schema v4
//!   `sync_vv`), applied versions reaching the commit hook like local writes.
//!
//! To come: the libp2p transport and the sync engine that drives it, tombstone
//! collection, the CLI and status.

pub mod merge;
pub mod net;
pub mod protocol;
#[cfg(test)]
mod sim;
pub mod sqlite;
pub mod vv;
pub mod wire;
