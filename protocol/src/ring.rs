//! Single-producer single-consumer byte ring in shared memory, its frames, and the
//! wait/wake protocol. This is the only module that touches the ring's atomics.
//!
//! # Frames
//!
//! ```text
//! offset  size  field
//! 0       4     len    payload bytes (u32 LE), excluding header and padding
//! 4       2     kind   FRAME_* (u16 LE); FRAME_PAD fills the ring up to its end
//! 6       2     flags  (u16 LE), kind-specific
//! 8       8     corr   correlation id (u64 LE): a response carries its request's id
//! 16      len   payload
//! ...           zero padding up to the next multiple of 16
//! ```
//!
//! Frames start at multiples of 16 bytes and are never split by the end of the ring:
//! when the contiguous space left before the end is too small, the producer writes a
//! padding frame that covers it and starts the frame at offset 0. So every payload is
//! one contiguous, 16-byte aligned slice that rkyv can access in place.
//!
//! # Indices
//!
//! `tail` (bytes ever published) is written only by the producer, `head` (bytes ever
//! consumed) only by the consumer; both are `u64` that never wrap in practice (2^64
//! bytes), and the position in the data area is `index & (cap - 1)`. Invariant:
//! `head <= tail <= head + cap`. Each side keeps its own index in private memory and a
//! cached copy of the other's, so a side never trusts what the peer wrote about *its
//! own* index, and re-reads the peer's index only when the cached one is not enough.
//! A peer index that breaks the invariant (or moves backwards) is reported as
//! [`RingError::Corrupt`]: the server treats the client's memory as hostile input.
//!
//! # Wait/wake without lost wake-ups
//!
//! A consumer that finds the ring empty spins for a bounded time (see [`Backoff`]),
//! then sleeps on the `consumer_sleeping` futex word:
//!
//! ```text
//! consumer                              producer
//! C1 consumer_sleeping = 1              P1 write frame; tail = t (Release)
//! C2 fence(SeqCst)                      P2 fence(SeqCst)
//! C3 if tail != head: clear, return     P3 if consumer_sleeping == 1:
//! C4 futex_wait(consumer_sleeping, 1)        consumer_sleeping = 0; futex_wake
//! ```
//!
//! The two SeqCst fences order C1 before C3 and P1 before P3 in a single total order,
//! so at least one side sees the other's store: either the consumer sees the new tail
//! at C3 and does not sleep, or the producer sees the flag at P3 and wakes it. If the
//! wake comes between C3 and C4, the producer has already reset the word to 0 and
//! `futex_wait(…, 1)` returns at once (the kernel compares the word atomically with
//! queuing the waiter). A producer therefore makes a syscall only when the consumer has
//! announced that it sleeps: a busy stream costs no syscalls. The same protocol, with
//! the roles swapped, runs on `producer_sleeping` when the ring is full and the
//! producer waits for space (the consumer checks the flag after publishing `head`).
//! Every futex wait also has a timeout, so a peer that scribbles on the words can
//! delay its own session, never hang the other side forever.
//!
//! # Polite waits after a wake-up
//!
//! The kernel often queues a woken thread on the CPU of the thread that woke it (on a
//! small VM that packs vCPUs, always: measured with `perf sched` on a 2-vCPU guest, the
//! session thread woken by a client's request ran on the client's CPU every time, with
//! the other CPU idle). A waker that then spins for the answer keeps that CPU from the
//! very thread that would produce the answer: after an idle pause a round trip cost the
//! client's whole spin budget plus the server's (~80 µs where the raw futex ping-pong
//! took ~15). So a side that has just woken its peer ([`Producer::flush`] returns
//! `true`), or has just been woken itself, waits *politely*
//! ([`Backoff::start_polite`]): it yields the CPU on every step of its spin instead of
//! every 1024th. A yield with nothing else to run returns at once (a spin with a
//! syscall in it), and one with the peer queued behind it runs the peer now. The
//! wake protocol above is unchanged: politeness only decides how the spin is spent.
//!
//! # Sharing a CPU
//!
//! The kernel can also leave both sides on one CPU long after any wake-up (measured on
//! the 2-vCPU guest: a client and its session thread pinned to one CPU took 105-110 µs
//! per 40 µs vector search, 40-46 µs on two CPUs; left to the scheduler, whole
//! stretches of a thousand searches ran at the slow figure). A waiter that spins there
//! holds the CPU its peer needs for the answer, up to the 1024 steps between yields.
//! So each side announces the CPU it runs on in its producer line
//! ([`Producer::announce_cpu`]: the client when it sends, the session when it starts a
//! burst of requests), and a waiter that finds, at one of its clock checks, that the
//! peer it waits for last announced its own CPU ([`Consumer::producer_cpu`],
//! [`shares_cpu`]) stops holding the CPU ([`Wait::step_sharing`]): the client spins
//! politely for the rest of that wait, yielding the CPU to the session at every step;
//! the session moves itself to another CPU its affinity allows ([`move_off_cpu`]) and
//! spins on there, or spins politely if there is none. Only the server's thread moves:
//! the client library never touches its caller's affinity. (Yielding on both sides
//! kept both on one CPU for whole stretches: with each giving the other the CPU,
//! nothing looks overloaded to the balancer — measured with the transport bench, 1 in
//! 10 pings of a fresh session took 7-8 µs instead of 0.3.) Pinned to one CPU, a round
//! trip is then two yields. The word is a hint: a wrong value (stale, or written by a
//! hostile peer) only makes a wait polite or the session change CPU, never changes what
//! is read.

use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::futex;

/// Size of a frame header.
pub const FRAME_HEADER: usize = 16;
/// Frame alignment in the ring.
pub const FRAME_ALIGN: u64 = 16;

/// Padding frame: skip to the start of the ring.
pub const FRAME_PAD: u16 = 0xFFFF;
/// A request (client to server): payload is an archived `Request`.
pub const FRAME_REQUEST: u16 = 1;
/// A response (server to client): payload is an archived `Response`.
pub const FRAME_RESPONSE: u16 = 2;
/// A change event (server to client, event ring).
pub const FRAME_EVENT: u16 = 3;

/// Offsets inside a ring control block (see `layout.rs`).
mod ctl {
    pub const TAIL: usize = 0;
    /// On the producer's line: the CPU it last announced, plus one (see "Sharing a CPU").
    pub const PRODUCER_CPU: usize = 8;
    pub const HEAD: usize = 64;
    pub const CONSUMER_SLEEPING: usize = 128;
    pub const PRODUCER_SLEEPING: usize = 192;
}

/// Errors of ring operations.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The peer wrote indices or a frame header that break the ring's invariants.
    #[error("ring corrupt: {0}")]
    Corrupt(&'static str),
    /// A payload larger than the ring allows.
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// payload length asked for
        len: u64,
        /// largest payload this ring accepts
        max: u64,
    },
}

/// Rounds `n` up to the frame alignment.
#[inline]
pub const fn align_frame(n: u64) -> u64 {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Bytes a frame with a `len`-byte payload takes in the ring.
#[inline]
pub const fn frame_size(len: u64) -> u64 {
    align_frame(FRAME_HEADER as u64 + len)
}

/// A ring somewhere in (shared) memory: a control block followed by `cap` data bytes.
#[derive(Clone, Copy, Debug)]
pub struct RingPtr {
    base: NonNull<u8>,
    cap: u64,
}

// SAFETY: RingPtr is an address plus a size; every access through it goes through
// atomics (control block) or through the SPSC protocol, which gives each byte of the data
// area exactly one writer at a time. Sending it to another thread is as sound as sharing
// the mapping with another process.
unsafe impl Send for RingPtr {}

impl RingPtr {
    /// Wraps the ring whose control block starts at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be 64-byte aligned and valid for reads and writes of
    /// `RING_CTL_SIZE + cap` bytes for as long as this `RingPtr` or any
    /// [`Producer`]/[`Consumer`] made from it is used; `cap` must be a power of two of at
    /// least 4096. The memory may be shared with one other process that follows (or
    /// violates) this protocol; it must not be written by anything else.
    pub unsafe fn new(base: *mut u8, cap: u64) -> RingPtr {
        debug_assert!(cap.is_power_of_two() && cap >= 4096);
        debug_assert_eq!(base as usize % 64, 0);
        RingPtr {
            base: NonNull::new(base).expect("ring base is not null"),
            cap,
        }
    }

    /// Address of the control block. For tools and tests that must write raw bytes
    /// (e.g. to play a hostile peer); the ring API never needs it.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.cap
    }

    /// Largest payload a frame in this ring may carry: a frame never takes more than
    /// half the ring, so it always fits after at most one padding frame.
    pub fn max_payload(&self) -> u64 {
        self.cap / 2 - FRAME_HEADER as u64
    }

    fn word64(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is one of the 8-aligned control offsets inside the 256-byte control
        // block, which `new`'s contract keeps mapped; AtomicU64 has the layout of u64 and
        // the memory is only accessed atomically.
        unsafe { &*(self.base.as_ptr().add(at) as *const AtomicU64) }
    }

    fn word32(&self, at: usize) -> &AtomicU32 {
        // SAFETY: as in `word64`, for a 4-aligned u32 inside the control block.
        unsafe { &*(self.base.as_ptr().add(at) as *const AtomicU32) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area starts right after the control block (contract of `new`).
        unsafe {
            self.base
                .as_ptr()
                .add(crate::layout::RING_CTL_SIZE as usize)
        }
    }

    /// Resets the control block to an empty ring. Call only before the ring is shared.
    pub fn init(&self) {
        self.word64(ctl::TAIL).store(0, Ordering::Relaxed);
        self.word32(ctl::PRODUCER_CPU).store(0, Ordering::Relaxed);
        self.word64(ctl::HEAD).store(0, Ordering::Relaxed);
        self.word32(ctl::CONSUMER_SLEEPING)
            .store(0, Ordering::Relaxed);
        self.word32(ctl::PRODUCER_SLEEPING)
            .store(0, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    /// Wakes a consumer sleeping on this ring, whatever the state of the ring. Used to
    /// make a sleeping side re-check a condition outside the ring (peer gone, shutdown).
    pub fn wake_consumer(&self) {
        let w = self.word32(ctl::CONSUMER_SLEEPING);
        w.store(0, Ordering::SeqCst);
        futex::wake(w, u32::MAX);
    }

    /// Wakes the consumer if it announced that it sleeps: P2–P3 of the wake protocol
    /// without a new frame. For a condition outside the ring that the consumer checks in
    /// its readiness test ([`Consumer::sleep_or`]): make the condition true (with a
    /// Release store or under a lock), then call this. A busy consumer costs no syscall.
    pub fn notify_consumer(&self) {
        // P2: order the caller's condition store before reading the sleeping flag.
        fence(Ordering::SeqCst);
        let sleeping = self.word32(ctl::CONSUMER_SLEEPING);
        if sleeping.load(Ordering::Relaxed) != 0 {
            sleeping.store(0, Ordering::Relaxed);
            futex::wake(sleeping, 1);
        }
    }

    /// Wakes a producer waiting for space on this ring (see [`RingPtr::wake_consumer`]).
    pub fn wake_producer(&self) {
        let w = self.word32(ctl::PRODUCER_SLEEPING);
        w.store(0, Ordering::SeqCst);
        futex::wake(w, u32::MAX);
    }

    /// Reads both indices and checks them: 16-aligned and `head <= tail <= head + cap`.
    fn indices(&self) -> Result<(u64, u64), RingError> {
        let tail = self.word64(ctl::TAIL).load(Ordering::Acquire);
        let head = self.word64(ctl::HEAD).load(Ordering::Acquire);
        if !tail.is_multiple_of(FRAME_ALIGN) || !head.is_multiple_of(FRAME_ALIGN) {
            return Err(RingError::Corrupt("ring index not frame-aligned"));
        }
        if head > tail || tail - head > self.cap {
            return Err(RingError::Corrupt("ring indices out of order"));
        }
        // Indices start at 0 and count bytes; 2^62 is centuries of traffic away, and a
        // bound here keeps every later `index + size` from overflowing.
        if tail > 1 << 62 {
            return Err(RingError::Corrupt("ring index implausibly large"));
        }
        Ok((head, tail))
    }

    /// Stores a new `index` value (Release) into the word at `index_at`, then wakes the
    /// peer if it announced on the flag at `flag_at` that it sleeps: P1–P3 of the wake
    /// protocol in the module docs (the same steps, roles swapped, free space for a
    /// producer waiting on a full ring). Returns whether the peer had to be woken.
    fn publish_and_wake(&self, index_at: usize, index: u64, flag_at: usize) -> bool {
        self.word64(index_at).store(index, Ordering::Release);
        // P2: order the index store before reading the peer's sleeping flag.
        fence(Ordering::SeqCst);
        let sleeping = self.word32(flag_at);
        if sleeping.load(Ordering::Relaxed) != 0 {
            sleeping.store(0, Ordering::Relaxed);
            futex::wake(sleeping, 1);
            return true;
        }
        false
    }

    /// C1–C4 of the wake protocol on the flag at `flag_at`: announce, re-check with
    /// `ready`, sleep at most `timeout` if still not ready, clear the flag. Returns
    /// `ready()` at the end.
    fn announce_and_sleep(
        &self,
        flag_at: usize,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool, RingError>,
    ) -> Result<bool, RingError> {
        if ready()? {
            return Ok(true);
        }
        let w = self.word32(flag_at);
        w.store(1, Ordering::Relaxed);
        // C2: order the announcement before the re-check of the peer's index.
        fence(Ordering::SeqCst);
        if ready()? {
            w.store(0, Ordering::Relaxed);
            return Ok(true);
        }
        futex::wait(w, 1, timeout);
        w.store(0, Ordering::Relaxed);
        ready()
    }

    /// Producer end. Exactly one producer may exist for a ring across all processes.
    ///
    /// It starts from the indices in the control block (zero on a fresh ring) after
    /// checking them, and from then on never reads its own index back. A side that
    /// shares the ring with an untrusted peer should create its end before the peer can
    /// reach the memory (the server does).
    pub fn producer(self) -> Result<Producer, RingError> {
        let (head, tail) = self.indices()?;
        Ok(Producer {
            ring: self,
            tail,
            cached_head: head,
            published: tail,
        })
    }

    /// Consumer end. Exactly one consumer may exist for a ring across all processes.
    /// Starts from the checked indices in the control block, like [`RingPtr::producer`].
    pub fn consumer(self) -> Result<Consumer, RingError> {
        let (head, _) = self.indices()?;
        Ok(Consumer {
            ring: self,
            head,
            cached_tail: head,
            published_head: head,
        })
    }
}

/// The producing end of a ring.
#[derive(Debug)]
pub struct Producer {
    ring: RingPtr,
    /// Bytes written, including frames not yet published. Private: never read back
    /// from shared memory.
    tail: u64,
    /// Last `head` read from the consumer; always in `tail - cap ..= tail`.
    cached_head: u64,
    /// Last `tail` stored to shared memory; `published <= tail`.
    published: u64,
}

impl Producer {
    /// The ring this end writes.
    pub fn ring(&self) -> RingPtr {
        self.ring
    }

    fn refresh_head(&mut self) -> Result<(), RingError> {
        // SYNC POINT: pairs with the Release store of `head` in `Consumer::release`: once
        // we see the new head, the consumer is done reading the bytes before it.
        let head = self.ring.word64(ctl::HEAD).load(Ordering::Acquire);
        if !head.is_multiple_of(FRAME_ALIGN)
            || head < self.cached_head
            || head > self.published
            || self.tail - head > self.ring.cap
        {
            return Err(RingError::Corrupt("consumer head out of range"));
        }
        self.cached_head = head;
        Ok(())
    }

    fn free(&self) -> u64 {
        self.ring.cap - (self.tail - self.cached_head)
    }

    /// Bytes that a frame of `len` payload bytes needs right now (frame plus the
    /// padding frame before it if it would cross the end of the ring).
    fn needed(&self, len: u64) -> u64 {
        let fsize = frame_size(len);
        let off = self.tail & (self.ring.cap - 1);
        let contig = self.ring.cap - off;
        if fsize > contig {
            contig + fsize
        } else {
            fsize
        }
    }

    /// Whether a frame with a `len`-byte payload fits now (re-reading the consumer's
    /// head if the cached one is not enough).
    pub fn has_space(&mut self, len: u64) -> Result<bool, RingError> {
        let need = self.needed(len);
        if self.free() >= need {
            return Ok(true);
        }
        self.refresh_head()?;
        Ok(self.free() >= need)
    }

    /// Writes a frame without publishing it; returns `Ok(false)` if the ring is full.
    /// `fill` gets the payload slice (exactly `len` bytes, 16-byte aligned) to write.
    /// Published frames become visible to the consumer at the next [`Producer::flush`].
    pub fn try_write_with(
        &mut self,
        kind: u16,
        flags: u16,
        corr: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<bool, RingError> {
        let len64 = len as u64;
        if len64 > self.ring.max_payload() || len64 > u32::MAX as u64 {
            return Err(RingError::TooLarge {
                len: len64,
                max: self.ring.max_payload(),
            });
        }
        debug_assert_ne!(kind, FRAME_PAD);
        if !self.has_space(len64)? {
            return Ok(false);
        }
        let mask = self.ring.cap - 1;
        let fsize = frame_size(len64);
        let mut off = self.tail & mask;
        let contig = self.ring.cap - off;
        if fsize > contig {
            // SAFETY: `off..cap` is free (checked by `has_space`, which counted the
            // padding), so the consumer does not read it until we publish.
            unsafe {
                self.write_header(off, (contig - FRAME_HEADER as u64) as u32, FRAME_PAD, 0, 0)
            };
            self.tail += contig;
            off = 0;
        }
        // SAFETY: `off .. off + fsize` lies inside the data area (fsize <= contig after the
        // wrap) and is free: the consumer's head is at most `tail + fsize - cap` behind.
        // Nobody else writes it until we publish, and the consumer does not read it before.
        let payload = unsafe {
            std::slice::from_raw_parts_mut(self.ring.data().add(off as usize + FRAME_HEADER), len)
        };
        fill(payload);
        // SAFETY: as above, the header is the first 16 bytes of the same free frame.
        unsafe { self.write_header(off, len as u32, kind, flags, corr) };
        self.tail += fsize;
        Ok(true)
    }

    /// Copies `payload` into a new frame; see [`Producer::try_write_with`].
    pub fn try_write(
        &mut self,
        kind: u16,
        flags: u16,
        corr: u64,
        payload: &[u8],
    ) -> Result<bool, RingError> {
        self.try_write_with(kind, flags, corr, payload.len(), |dst| {
            dst.copy_from_slice(payload)
        })
    }

    /// Writes and publishes a frame; returns `Ok(false)` if the ring is full.
    pub fn try_push(
        &mut self,
        kind: u16,
        flags: u16,
        corr: u64,
        payload: &[u8],
    ) -> Result<bool, RingError> {
        let ok = self.try_write(kind, flags, corr, payload)?;
        if ok {
            self.flush();
        }
        Ok(ok)
    }

    /// # Safety
    /// `off .. off + 16` must be inside the data area and owned by the producer.
    unsafe fn write_header(&self, off: u64, len: u32, kind: u16, flags: u16, corr: u64) {
        let mut h = [0u8; FRAME_HEADER];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..6].copy_from_slice(&kind.to_le_bytes());
        h[6..8].copy_from_slice(&flags.to_le_bytes());
        h[8..16].copy_from_slice(&corr.to_le_bytes());
        // SAFETY: guaranteed by the caller.
        unsafe {
            std::ptr::copy_nonoverlapping(
                h.as_ptr(),
                self.ring.data().add(off as usize),
                FRAME_HEADER,
            )
        };
    }

    /// Publishes every written frame and wakes the consumer if it announced that it
    /// sleeps. Cheap when there is nothing new. Returns whether it woke the consumer:
    /// then the consumer is cold, and a wait for its answer should be a polite one
    /// ([`Backoff::start_polite`]).
    pub fn flush(&mut self) -> bool {
        if self.published == self.tail {
            return false;
        }
        self.published = self.tail;
        // SYNC POINT: pairs with the Acquire load of `tail` in `Consumer::refresh_tail`;
        // the frame bytes written above happen-before the consumer reads them.
        self.ring
            .publish_and_wake(ctl::TAIL, self.tail, ctl::CONSUMER_SLEEPING)
    }

    /// Announces the CPU this thread runs on now to the consumer (see "Sharing a CPU"
    /// in the module docs). A plain store to this end's own cache line.
    pub fn announce_cpu(&self) {
        self.ring
            .word32(ctl::PRODUCER_CPU)
            .store(current_cpu(), Ordering::Relaxed);
    }

    /// Sleeps until a frame of `len` payload bytes fits, at most `timeout`.
    /// Returns whether it fits now. Publish first ([`Producer::flush`]): the consumer
    /// can only free space it has been shown.
    pub fn sleep_for_space(&mut self, len: u64, timeout: Duration) -> Result<bool, RingError> {
        let ring = self.ring;
        ring.announce_and_sleep(ctl::PRODUCER_SLEEPING, timeout, || self.has_space(len))
    }
}

/// A frame found by [`Consumer::peek`]. Its payload stays valid (the producer does not
/// overwrite it) until the consumer releases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// Payload length.
    pub len: u32,
    /// Frame kind (`FRAME_*`, never `FRAME_PAD`).
    pub kind: u16,
    /// Kind-specific flags.
    pub flags: u16,
    /// Correlation id.
    pub corr: u64,
    /// Ring index of the frame header.
    index: u64,
}

/// The consuming end of a ring.
#[derive(Debug)]
pub struct Consumer {
    ring: RingPtr,
    /// Bytes consumed (including peeked frames not yet published as released).
    head: u64,
    /// Last `tail` read from the producer; `head <= cached_tail <= head + cap`.
    cached_tail: u64,
    /// Last `head` stored to shared memory.
    published_head: u64,
}

impl Consumer {
    /// The ring this end reads.
    pub fn ring(&self) -> RingPtr {
        self.ring
    }

    fn refresh_tail(&mut self) -> Result<(), RingError> {
        // SYNC POINT: pairs with the Release store of `tail` in `Producer::flush`.
        let tail = self.ring.word64(ctl::TAIL).load(Ordering::Acquire);
        if !tail.is_multiple_of(FRAME_ALIGN)
            || tail < self.cached_tail
            || tail - self.published_head > self.ring.cap
        {
            return Err(RingError::Corrupt("producer tail out of range"));
        }
        self.cached_tail = tail;
        Ok(())
    }

    /// The CPU the producer last announced ([`Producer::announce_cpu`]), in the form of
    /// [`current_cpu`]; 0 if it never did. A hint written by the peer: any value is
    /// harmless.
    pub fn producer_cpu(&self) -> u32 {
        self.ring.word32(ctl::PRODUCER_CPU).load(Ordering::Relaxed)
    }

    /// Whether a frame is waiting (re-reading the producer's tail if needed).
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        if self.cached_tail != self.head {
            return Ok(true);
        }
        self.refresh_tail()?;
        Ok(self.cached_tail != self.head)
    }

    /// Returns the next frame without consuming it, skipping padding. `Ok(None)` when
    /// the ring is empty. Every header field is read once and checked against the ring's
    /// bounds before use.
    pub fn peek(&mut self) -> Result<Option<FrameRef>, RingError> {
        loop {
            if !self.has_data()? {
                return Ok(None);
            }
            let avail = self.cached_tail - self.head;
            let mask = self.ring.cap - 1;
            let off = self.head & mask;
            let contig = self.ring.cap - off;
            if avail < FRAME_HEADER as u64 {
                return Err(RingError::Corrupt("partial frame header"));
            }
            let mut h = [0u8; FRAME_HEADER];
            // SAFETY: `off + 16 <= cap` because off is 16-aligned (head only advances by
            // multiples of 16) and the range is published (avail >= 16). The bytes are
            // copied once into private memory; a peer racing on them can only make us read
            // garbage, which the checks below reject.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.ring.data().add(off as usize),
                    h.as_mut_ptr(),
                    FRAME_HEADER,
                )
            };
            let len = u32::from_le_bytes(h[0..4].try_into().expect("4"));
            let kind = u16::from_le_bytes(h[4..6].try_into().expect("2"));
            let flags = u16::from_le_bytes(h[6..8].try_into().expect("2"));
            let corr = u64::from_le_bytes(h[8..16].try_into().expect("8"));
            if kind == FRAME_PAD {
                if len as u64 != contig - FRAME_HEADER as u64 || avail < contig {
                    return Err(RingError::Corrupt("bad padding frame"));
                }
                self.head += contig;
                continue;
            }
            if len as u64 > self.ring.max_payload() {
                return Err(RingError::Corrupt("frame length past the ring's maximum"));
            }
            let fsize = frame_size(len as u64);
            if fsize > contig || fsize > avail {
                return Err(RingError::Corrupt("frame runs past the published data"));
            }
            return Ok(Some(FrameRef {
                len,
                kind,
                flags,
                corr,
                index: self.head,
            }));
        }
    }

    fn payload_ptr(&self, f: &FrameRef) -> *const u8 {
        debug_assert_eq!(f.index, self.head, "payload of a released frame");
        let off = (f.index & (self.ring.cap - 1)) as usize;
        // SAFETY: `peek` checked that the whole frame lies inside the data area.
        unsafe { self.ring.data().add(off + FRAME_HEADER) }
    }

    /// Copies the payload of `f` (from the last [`Consumer::peek`]) into `dst`, replacing
    /// its contents. This is the path for untrusted producers: the copy is taken once,
    /// so a peer that changes the bytes afterwards cannot change what was validated.
    pub fn copy_payload(&self, f: &FrameRef, dst: &mut rkyv::util::AlignedVec<16>) {
        dst.clear();
        // SAFETY: the payload range is inside the data area and published (checked by
        // `peek`). A hostile producer may write these bytes while we copy them; then the
        // copy holds garbage, which validation of the private copy rejects.
        let src = unsafe { std::slice::from_raw_parts(self.payload_ptr(f), f.len as usize) };
        dst.extend_from_slice(src);
    }

    /// Borrows the payload of `f` in place (zero copy).
    ///
    /// # Safety
    ///
    /// The producer must not modify a published frame before it is released (true of a
    /// producer that follows this protocol, i.e. of the Ringbase server). Do not use it
    /// on frames from an untrusted producer; use [`Consumer::copy_payload`] there.
    pub unsafe fn payload(&self, f: &FrameRef) -> &[u8] {
        // SAFETY: range checked by `peek`; immutability guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(self.payload_ptr(f), f.len as usize) }
    }

    /// Consumes the frame `f` (the one [`Consumer::peek`] returned) without publishing
    /// the new head yet; call [`Consumer::flush`] (or `release`) to hand the space back.
    pub fn advance(&mut self, f: &FrameRef) {
        debug_assert_eq!(f.index, self.head);
        self.head = f.index + frame_size(f.len as u64);
    }

    /// Consumes `f` and publishes the new head.
    pub fn release(&mut self, f: &FrameRef) {
        self.advance(f);
        self.flush();
    }

    /// Publishes the head (space freed so far) and wakes a producer waiting for space.
    pub fn flush(&mut self) {
        if self.published_head == self.head {
            return;
        }
        self.published_head = self.head;
        // SYNC POINT: pairs with the Acquire load of `head` in `Producer::refresh_head`;
        // our reads of the released frames happen-before the producer reuses the bytes.
        self.ring
            .publish_and_wake(ctl::HEAD, self.head, ctl::PRODUCER_SLEEPING);
    }

    /// Announces that the consumer sleeps, re-checks, and sleeps at most `timeout`
    /// (C1–C4 in the module docs). Returns whether data is available now. Publish the
    /// head first ([`Consumer::flush`]) if the producer may be waiting for space.
    pub fn sleep(&mut self, timeout: Duration) -> Result<bool, RingError> {
        let ring = self.ring;
        ring.announce_and_sleep(ctl::CONSUMER_SLEEPING, timeout, || self.has_data())
    }

    /// [`Consumer::sleep`] that also wakes for a condition outside the ring: `other` is
    /// part of the readiness test re-checked after the announcement (C3), so a waker
    /// that makes it true and then calls [`RingPtr::notify_consumer`] is never lost.
    /// Returns whether data is available or `other()` holds.
    pub fn sleep_or(
        &mut self,
        timeout: Duration,
        mut other: impl FnMut() -> bool,
    ) -> Result<bool, RingError> {
        let ring = self.ring;
        ring.announce_and_sleep(ctl::CONSUMER_SLEEPING, timeout, || {
            Ok(other() || self.has_data()?)
        })
    }
}

/// The CPU the calling thread runs on now, plus one (0 if the kernel does not say): the
/// form of [`Producer::announce_cpu`]'s word. glibc reads it from the thread's rseq
/// area, a load and no syscall.
pub fn current_cpu() -> u32 {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).map_or(0, |c| c.wrapping_add(1))
}

/// Moves the calling thread off the CPU it runs on now, if its affinity allows another
/// one: restricts it to its allowed CPUs but this one (the kernel moves it before the
/// call returns), then restores its allowed set exactly (it stays where it was moved
/// until the scheduler moves it again). Returns whether it moved. For the server's
/// session thread, which finds its client on its own CPU (see "Sharing a CPU").
pub fn move_off_cpu() -> bool {
    let Some(here) = current_cpu().checked_sub(1) else {
        return false;
    };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: an all-zero cpu_set_t is a valid, empty set; sched_getaffinity and
    // sched_setaffinity (pid 0: the calling thread) read or write exactly the set of the
    // size passed, and CPU_CLR / CPU_COUNT touch only that set (`here` is checked
    // below CPU_SETSIZE first).
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if here as usize >= libc::CPU_SETSIZE as usize
            || libc::sched_getaffinity(0, size, &mut allowed) != 0
        {
            return false;
        }
        let mut elsewhere = allowed;
        libc::CPU_CLR(here as usize, &mut elsewhere);
        if libc::CPU_COUNT(&elsewhere) == 0 || libc::sched_setaffinity(0, size, &elsewhere) != 0 {
            return false;
        }
        libc::sched_setaffinity(0, size, &allowed);
    }
    true
}

/// Whether `peer` (a word read with [`Consumer::producer_cpu`]) names the CPU the
/// calling thread runs on now.
pub fn shares_cpu(peer: u32) -> bool {
    peer != 0 && peer == current_cpu()
}

/// Adaptive spin-then-sleep policy for one waiting side.
///
/// On a 2-core machine a waiter that spins without bound starves everyone as soon as
/// there are more spinners than cores, and a sidecar that spins while idle wastes
/// battery. So a waiter spins (with `spin_loop` hints) for at most `spin`, then yields
/// the CPU a few times, then sleeps on the futex. The budget learns from the waits:
/// it grows to a quarter more than any wait up to `max` (one that ended while spinning,
/// or that slept: waking a sleeper costs tens of microseconds on both sides, so a wait
/// of 150 µs should be spun through, not slept through), and shrinks by a quarter after
/// each wait longer than `max` (an idle peer, a slow answer), down to `min`. Shrinking
/// by a quarter rather than half keeps one slow answer among quick ones from making the
/// next few quick ones sleep; a run of long waits still brings the budget down to `min`
/// within a dozen waits.
#[derive(Debug, Clone)]
pub struct Backoff {
    spin: Duration,
    min: Duration,
    max: Duration,
}

/// What a wait step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Still spinning or yielding: re-check the condition and call again.
    Spin,
    /// The budget is spent: sleep on the futex (with a timeout) and re-check.
    Sleep,
}

impl Backoff {
    /// A policy whose spin budget adapts between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            spin: min,
            min,
            max,
        }
    }

    /// A policy that never sleeps (busy-poll mode): it spins and yields forever.
    pub fn busy() -> Backoff {
        Backoff {
            spin: Duration::MAX,
            min: Duration::MAX,
            max: Duration::MAX,
        }
    }

    /// Whether this policy never sleeps.
    pub fn is_busy(&self) -> bool {
        self.min == Duration::MAX
    }

    /// Starts one wait.
    pub fn start(&self) -> Wait {
        Wait {
            start: None,
            iter: 0,
            spin: self.spin,
            polite: false,
        }
    }

    /// Starts one wait that yields the CPU at every step: for a side that has just woken
    /// its peer, or has just been woken (see "Polite waits" in the module docs). Same
    /// budget as [`Backoff::start`], then a sleep (never, in busy-poll mode).
    pub fn start_polite(&self) -> Wait {
        Wait {
            polite: true,
            ..self.start()
        }
    }

    /// Feeds back how the wait ended: `slept` = it had to sleep, after `waited` in
    /// all.
    pub fn finish(&mut self, slept: bool, waited: Duration) {
        if self.is_busy() {
            return;
        }
        // A spin a quarter longer than this wait would have caught it.
        let enough = waited + waited / 4;
        self.spin = if slept && waited > self.max {
            (self.spin - self.spin / 4).max(self.min)
        } else {
            self.spin.max(enough).clamp(self.min, self.max)
        };
    }
}

/// One wait in progress, see [`Backoff::start`].
#[derive(Debug)]
pub struct Wait {
    start: Option<Instant>,
    iter: u32,
    spin: Duration,
    /// Yield at every step (see [`Backoff::start_polite`]).
    polite: bool,
}

impl Wait {
    /// Call each time the condition was found false.
    #[inline]
    pub fn step(&mut self) -> Phase {
        self.step_sharing(|| false)
    }

    /// [`Wait::step`] for a waiter that can tell whether its peer shares its CPU:
    /// `shares` is asked at each clock check (every 64th step) of a spinning wait, and
    /// once it says yes the rest of the wait is polite (see "Sharing a CPU" in the
    /// module docs).
    #[inline]
    pub fn step_sharing(&mut self, shares: impl FnOnce() -> bool) -> Phase {
        self.iter = self.iter.wrapping_add(1);
        if self.polite {
            // A yield costs a syscall anyway: the clock read is lost in it.
            let now = Instant::now();
            let spent = now - *self.start.get_or_insert(now);
            if spent < self.spin.saturating_add(Duration::from_micros(50)) {
                std::thread::yield_now();
                return Phase::Spin;
            }
            return Phase::Sleep;
        }
        // Look at the clock only every 64 iterations: it costs ~20 ns.
        if !self.iter.is_multiple_of(64) {
            std::hint::spin_loop();
            return Phase::Spin;
        }
        if shares() {
            self.polite = true;
            std::thread::yield_now();
            return Phase::Spin;
        }
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        let spent = now - start;
        if spent < self.spin {
            // Give the other core (or the peer on this one) a chance every so often.
            if self.iter.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            Phase::Spin
        } else if spent < self.spin.saturating_add(Duration::from_micros(50)) {
            std::thread::yield_now();
            Phase::Spin
        } else {
            Phase::Sleep
        }
    }

    /// Time since the wait started spinning (zero in the first iterations).
    pub fn elapsed(&self) -> Duration {
        self.start.map(|s| s.elapsed()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_to_its_cpu_shares_it_with_itself() {
        let cpu = current_cpu();
        assert_ne!(cpu, 0, "Linux tells a thread its CPU");
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only
        // touch the set we pass, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET((cpu - 1) as usize, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
        }
        assert!(shares_cpu(cpu));
        assert!(!shares_cpu(cpu + 1));
        assert!(!shares_cpu(0));
    }

    #[test]
    fn the_spin_budget_learns_from_waits() {
        let us = Duration::from_micros;
        let mut b = Backoff::new(us(20), us(250));
        assert_eq!(b.start().spin, us(20));
        // Answers that come quickly while spinning: nothing to learn.
        b.finish(false, us(5));
        assert_eq!(b.spin, us(20));
        // One that came late in the spin: a quarter more than it took.
        b.finish(false, us(40));
        assert_eq!(b.spin, us(50));
        b.finish(false, us(5));
        assert_eq!(b.spin, us(50));
        // A wait that slept but was shorter than the maximum: spin through the next
        // one (a quarter longer), up to the maximum.
        b.finish(true, us(120));
        assert_eq!(b.spin, us(150));
        b.finish(true, us(240));
        assert_eq!(b.spin, us(250));
        // Longer waits (an idle peer, a slow answer): the budget shrinks by a quarter
        // each, down to the minimum within a dozen.
        b.finish(true, Duration::from_millis(16));
        assert_eq!(b.spin, Duration::from_nanos(187_500));
        // One slow answer among quick ones: the next quick one is still spun through.
        b.finish(false, us(150));
        assert_eq!(b.spin, Duration::from_nanos(187_500));
        for _ in 0..12 {
            b.finish(true, Duration::from_millis(16));
        }
        assert_eq!(b.spin, us(20));
        // A wait learns that it shares the CPU only at its clock checks (every 64th
        // step), and is polite from then on.
        let mut w = Backoff::new(us(20), us(250)).start();
        for _ in 0..63 {
            assert_eq!(
                w.step_sharing(|| panic!("asked between clock checks")),
                Phase::Spin
            );
        }
        assert!(!w.polite);
        assert_eq!(w.step_sharing(|| true), Phase::Spin);
        assert!(w.polite);
        // Busy-poll never learns.
        let mut busy = Backoff::busy();
        busy.finish(true, us(1));
        assert!(busy.is_busy());
        assert_eq!(busy.spin, Duration::MAX);
    }
}
