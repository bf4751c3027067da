//! Replication: servers that share a database converge to the same records, whatever
//! the order, duplication and loss of messages, partitions and restarts.
//!
//! - [`merge`]: the CRDT — versions are ordered by their stamp `(hlc, replica)`, the
//!   greatest wins, deletes included; remote stamps too far ahead of the local clock
//!   are deferred;
//! - [`vv`]: version vectors (per writer, the sequence numbers delivered, as
//!   intervals);
//! - [`protocol`]: anti-entropy — `Have` (a version vector), `Page` (the current
//!   versions the peer lacks, one writer and range at a time, split by size), `Push`
//!   (live local writes, never echoed), over a [`protocol::VersionStore`], pure code
//!   proven on a simulated network (`sim`, tests only);
//! - [`sqlite`]: the store as a `VersionStore` — versions read by writer, a page
//!   merged in one transaction with the version-vector rows it advances (schema v4
//!   `sync_vv`), applied versions reaching the commit hook like local writes;
//! - [`wire`]: protocol messages to and from their rkyv form;
//! - [`transport`]: the node's identity, its libp2p transports (private network,
//!   Noise, Yamux; circuit relay), discovery by mode (`peers`, `lan`, `dht`, `relay`),
//!   the sync messages' protocol name and codec, and the relay server;
//! - [`net`]: the sync engine that drives anti-entropy over the swarm, and its status.
//!
//! # Tombstones
//!
//! A delete is a version like any other (a tombstone) and is kept: it is what stops an
//! older put, still held by a replica that has not heard of the delete, from coming
//! back. Dropping one is only safe once *every* replica that may ever exchange versions
//! has delivered it — and not just the direct peers: a replica that joins later pages
//! a dropped tombstone's sequence number as delivered (nothing current is left of it)
//! and would then keep the old put it gets from a replica that had not seen the delete
//! yet. Collecting them needs that knowledge spread through the whole group (causal
//! stability); until then they stay, one row per deleted key.

pub mod merge;
pub mod net;
pub mod protocol;
#[cfg(test)]
mod sim;
pub mod sqlite;
pub mod transport;
pub mod vv;
pub mod wire;
