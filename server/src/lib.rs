//! The Ringbase server: control socket and sessions ([`ipc`]), the engine, the storage
//! engine ([`store`]), and the lock that keeps one server per name.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod engine;
pub mod ipc;
pub mod lock;
mod session;
pub mod store;

pub use engine::Engine;
pub use ipc::{ServeError, Server, ServerConfig};
