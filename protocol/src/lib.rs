//! Ringbase wire protocol.
//!
//! This crate holds everything both sides of a Ringbase session must agree on, and no
//! I/O policy:
//!
//! * [`layout`]: the shared-memory segment (header + three rings), written down byte by
//!   byte, with a magic and a layout version checked before anything else is trusted;
//! * [`ring`]: the single-producer single-consumer byte ring that lives in the segment,
//!   its frame format and its wait/wake protocol (the only module that owns atomics in
//!   shared memory);
//! * [`futex`]: the process-shared futex wrapper the rings sleep on;
//! * [`handshake`]: the fixed-layout hello/welcome exchanged over the control socket;
//! * [`message`]: the rkyv request/response types carried in frames;
//! * [`paths`]: where a server named `NAME` keeps its socket and lock file;
//! * [`sync`]: the replication messages servers send each other.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod futex;
pub mod handshake;
pub mod layout;
// rkyv's derive generates resolver enums without docs; every item written here is documented.
#[allow(missing_docs)]
pub mod message;
pub mod paths;
pub mod ring;
#[cfg(unix)]
pub mod segment;
pub mod trace;
// rkyv's derive generates resolver enums without docs; every item written here is documented.
#[allow(missing_docs)]
pub mod sync;

/// Version of the protocol spoken over the control socket and in the segment. A client
/// and a server with different versions refuse each other with a clear error.
pub const PROTOCOL_VERSION: u32 = 5;
