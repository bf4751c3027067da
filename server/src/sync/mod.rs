//! Replication: servers that share a database converge to the same records, whatever
//! the order, duplication and loss of messages, partitions and restarts.
//!
//! Built so far, as pure code (no I/O), proven on a simulated network
//! (`sim`, tests only):
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
//! To come: the SQLite `VersionStore` (a version vector table; a page applied in one
//! transaction with the store's commit hook, so watchers and indexes see replicated
//! changes), the libp2p transport, tombstone collection, the CLI and status.

pub mod merge;
pub mod protocol;
#[cfg(test)]
mod sim;
pub mod vv;
