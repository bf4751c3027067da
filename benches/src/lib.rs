//! Benchmarks, load generators and comparison baselines for Ringbase.
//!
//! The binaries live in `src/bin/` (see `transport` for the transport benchmark); this
//! library holds what they share: [`harness`] (child processes that are always
//! reaped, private temp dirs, a watchdog so a bench always ends; default paths, command
//! line, JSON output), [`floor`] (the raw futex ping-pong that the after-idle
//! rows are compared with) and [`stats`] (latency summaries, and how numbers are shown).
#![warn(missing_docs)]

pub mod floor;
pub mod harness;
pub mod stats;
