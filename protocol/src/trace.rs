//! Opt-in timestamps at the steps of a request, for latency work (the after-idle
//! breakdown in the README).
//!
//! Without the `trace` feature (the default) [`mark`] and [`flush`] are empty inline
//! functions: nothing is compiled in. With it, and `RINGBASE_TRACE_DIR` set in a
//! process's environment, each thread appends `(point, CLOCK_MONOTONIC ns)` pairs to a
//! buffer of its own (no locks, no syscalls: the clock is read through the vDSO) and
//! [`flush`] writes the buffer to a new file in that directory, one `point ns` line per
//! mark. Clients, sessions and the transport bench's futex floor mark their steps;
//! `benches/python/idle_trace.py` pairs them up by time (and
//! `benches/python/vector_trace.py` splits the vectors bench's searches the same way).
//!
//! ```text
//! cargo build --release -p ringbase-server -p ringbase-benches --features ringbase-protocol/trace
//! RINGBASE_TRACE_DIR=/tmp/rbtrace ./target/release/transport --idle-only
//! python3 benches/python/idle_trace.py /tmp/rbtrace
//! ```

/// A step of a request's round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Point {
    /// Client: a request enters `send`.
    ClientSend = 0,
    /// Client: the request is encoded.
    ClientEncoded = 1,
    /// Client: the request frame is in the ring (not yet published).
    ClientWritten = 2,
    /// Client: published, and the session woken if it slept.
    ClientPublished = 3,
    /// Client: the response frame is seen.
    ClientResponse = 4,
    /// Client: about to sleep for the response.
    ClientSleeps = 5,
    /// Client: back from that sleep.
    ClientWoke = 6,
    /// Session: about to sleep for a request.
    ServerSleeps = 9,
    /// Session: back from that sleep.
    ServerWoke = 10,
    /// Session: the first request of a burst is seen.
    ServerRequest = 11,
    /// Session: the burst's responses are written, about to be published.
    ServerAnswered = 12,
    /// Session: the responses are published (and the client woken if it slept).
    ServerPublished = 13,
    /// Session: the request is validated.
    ServerValidated = 15,
    /// Session: the engine has answered.
    ServerHandled = 17,
    /// Session: the response frame is written.
    ServerWritten = 18,
    /// A vector index graph walk starts (in the server's session, or in the vectors
    /// bench's in-process search).
    GraphSearch = 20,
    /// That graph walk is done.
    GraphSearched = 21,
    /// Bench: a measured call starts (followed by the message kind's point).
    BenchCall = 40,
    /// Bench: the call was a Ping.
    BenchPing = 41,
    /// Bench: the call was a 100-byte Get.
    BenchGet = 42,
    /// Bench: the call was a futex-floor round trip.
    BenchFloor = 43,
    /// Bench: the measured call is done.
    BenchDone = 50,
    /// Floor client: its wake-up syscall returned.
    FloorWoke = 60,
    /// Floor peer: it sees the request.
    FloorRequest = 61,
    /// Floor peer: its wake-up syscall returned.
    FloorAnswered = 62,
}

#[cfg(feature = "trace")]
mod imp {
    use std::cell::RefCell;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::Point;

    thread_local! {
        static MARKS: RefCell<Vec<(u8, u64)>> = const { RefCell::new(Vec::new()) };
    }

    fn dir() -> Option<&'static PathBuf> {
        static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
        DIR.get_or_init(|| std::env::var_os("RINGBASE_TRACE_DIR").map(PathBuf::from))
            .as_ref()
    }

    fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec, which lives on this stack frame.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
    }

    pub fn mark(p: Point) {
        if dir().is_some() {
            let t = now_ns();
            MARKS.with(|m| m.borrow_mut().push((p as u8, t)));
        }
    }

    pub fn flush(tag: &str, at_least: usize) {
        let Some(dir) = dir() else { return };
        let marks = MARKS.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() < at_least.max(1) {
                return Vec::new();
            }
            std::mem::take(&mut *m)
        });
        if marks.is_empty() {
            return;
        }
        static FILES: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{tag}-{}-{}",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        );
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
            for (p, t) in marks {
                writeln!(f, "{p} {t}")?;
            }
            f.flush()
        };
        if let Err(e) = write() {
            eprintln!("ringbase: writing trace marks to {}: {e}", dir.display());
        }
    }
}

/// Records that this thread reached `p` now (see the module docs; nothing without the
/// `trace` feature).
#[inline(always)]
pub fn mark(p: Point) {
    #[cfg(feature = "trace")]
    imp::mark(p);
    #[cfg(not(feature = "trace"))]
    let _ = p;
}

/// Writes this thread's marks to a new file named after `tag` in `RINGBASE_TRACE_DIR`,
/// if it holds at least `at_least` of them (nothing without the `trace` feature).
#[inline(always)]
pub fn flush(tag: &str, at_least: usize) {
    #[cfg(feature = "trace")]
    imp::flush(tag, at_least);
    #[cfg(not(feature = "trace"))]
    let _ = (tag, at_least);
}
