//! Process-shared futex wait and wake on a `u32` in shared memory.
//!
//! The rings use these to sleep when there is nothing to do. The futex is *not*
//! `FUTEX_PRIVATE_FLAG`: the word lives in a `MAP_SHARED` mapping seen by two processes.
//! On platforms without futex the functions fall back to a short sleep (wake is a no-op),
//! which keeps the protocol correct (every wait is bounded and re-checks its condition)
//! at a latency cost.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout`. Returns early on a wake, on a
/// signal, or at once if the word no longer holds `expected`. Spurious returns are
/// allowed: callers always re-check their condition.
#[cfg(target_os = "linux")]
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call (it is borrowed);
    // FUTEX_WAIT only reads it. The timespec outlives the call. A non-private futex on a
    // MAP_SHARED page is keyed by the page, so both processes meet on the same futex.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `n` waiters sleeping on `word`.
#[cfg(target_os = "linux")]
pub fn wake(word: &AtomicU32, n: u32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access the memory
    // beyond using its address as the key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n.min(i32::MAX as u32),
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Fallback: sleep a little (bounded), then let the caller re-check.
#[cfg(not(target_os = "linux"))]
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    if word.load(std::sync::atomic::Ordering::Acquire) == expected {
        std::thread::sleep(timeout.min(Duration::from_micros(200)));
    }
}

/// Fallback: nothing to wake; waiters poll.
#[cfg(not(target_os = "linux"))]
pub fn wake(_word: &AtomicU32, _n: u32) {}
