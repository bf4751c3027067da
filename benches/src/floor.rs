//! The raw futex ping-pong: the floor under any two-process wake-up round trip.
//!
//! Two processes share one page of a file with two `u32` words, one each way. A round
//! trip: the client stores a new sequence number in the request word and calls
//! `FUTEX_WAKE` on it, then `FUTEX_WAIT`s on the response word until the peer has copied
//! the number there (and woken it). The peer does nothing but `FUTEX_WAIT` on the
//! request word and answer. No spinning anywhere: after an idle gap, both sides are
//! asleep in the kernel and a round trip is exactly two wake-ups. Nothing a transport
//! built on futexes can do when both sides have gone to sleep beats this by more than
//! luck, so the idle rows of the transport bench are reported as a ratio to it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ringbase_protocol::futex;
use ringbase_protocol::trace::{self, Point};

/// Bytes mapped: one page (the two words sit on different cache lines).
const MAP_LEN: usize = 4096;
/// Byte offset of the request word (client to peer).
const REQ: usize = 0;
/// Byte offset of the response word (peer to client).
const RESP: usize = 64;
/// Longest single futex wait: every wait re-checks, so a lost peer is noticed.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// A shared mapping of the two words.
#[derive(Debug)]
pub struct Words {
    /// Start of the `MAP_LEN`-byte `MAP_SHARED` mapping.
    base: NonNull<u8>,
}

// SAFETY: the mapping is only accessed through atomics, and it lives until drop.
unsafe impl Send for Words {}

impl Words {
    /// Maps the page of `path`, creating the file (zeroed) if `create`.
    pub fn map(path: &Path, create: bool) -> io::Result<Words> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        if create {
            file.set_len(MAP_LEN as u64)?;
        }
        // SAFETY: a fresh shared mapping of `MAP_LEN` bytes of an open file that is at
        // least that long; the kernel picks the address. The fd may be closed after.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Words { base })
    }

    /// The `u32` at byte offset `at`.
    fn word(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at + 4 <= MAP_LEN && at.is_multiple_of(4));
        // SAFETY: `at` is 4-aligned inside the live, page-aligned mapping; the bytes are
        // only ever accessed atomically (here and in the other process).
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU32>() }
    }

    /// One client round trip with sequence number `seq` (non-zero, new each time).
    /// Returns an error if the peer has not answered within `limit`.
    pub fn round_trip(&self, seq: u32, limit: Duration) -> io::Result<()> {
        let (req, resp) = (self.word(REQ), self.word(RESP));
        req.store(seq, Ordering::Release);
        futex::wake(req, 1);
        trace::mark(Point::FloorWoke);
        let start = std::time::Instant::now();
        loop {
            let r = resp.load(Ordering::Acquire);
            if r == seq {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the futex peer did not answer",
                ));
            }
            futex::wait(resp, r, WAIT_SLICE);
        }
    }

    /// The peer: answers every new request word, forever. The words start at zero (a
    /// file made by [`Words::map`] with `create`), and the client's numbers never are.
    pub fn serve(&self) -> ! {
        let (req, resp) = (self.word(REQ), self.word(RESP));
        let mut last = 0;
        loop {
            let q = req.load(Ordering::Acquire);
            if q == last {
                futex::wait(req, last, WAIT_SLICE);
                continue;
            }
            trace::mark(Point::FloorRequest);
            last = q;
            resp.store(q, Ordering::Release);
            futex::wake(resp, 1);
            trace::mark(Point::FloorAnswered);
            // The bench kills this process: write the marks out every so often (after
            // answering, so the round trip does not wait for it).
            trace::flush("floor", 4096);
        }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it
        // outlives `self` (they borrow it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), MAP_LEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_pong_between_threads() {
        let dir = crate::harness::TempDir::new("rb-floor-test").unwrap();
        let path = dir.path().join("words");
        let client = Words::map(&path, true).unwrap();
        let peer = Words::map(&path, false).unwrap();
        std::thread::spawn(move || peer.serve());
        for seq in 1..=100 {
            client.round_trip(seq, Duration::from_secs(10)).unwrap();
        }
    }
}
