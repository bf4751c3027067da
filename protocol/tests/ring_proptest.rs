//! Property tests for the SPSC byte ring (`ringbase_protocol::ring`).
//!
//! * `threaded_stream_*`: a producer thread and a consumer thread share a small ring
//!   (4 or 8 KiB, so wrap-around, padding frames and full-ring stalls happen all the
//!   time) and every frame must arrive intact and in order.
//! * `model_*`: single-thread random interleavings of every ring operation, compared
//!   with a `VecDeque` model that also predicts the exact space rule, the published
//!   indices and where every frame (and padding frame) lands in the data area.
//! * `hostile_*`: a peer that scribbles on the control block or on frame headers must
//!   get `RingError::Corrupt`, never a panic or out-of-range data.
//! * `wake_*`: the announce/re-check/sleep protocol loses no wake-up.
//!
//! The ring lives in a 64-byte aligned heap buffer owned by [`RingMem`], followed by a
//! guard area that no ring operation may touch. Every wait is bounded: a watchdog panics
//! with a clear message instead of hanging.
//!
//! The regression tests at the end document defects these tests found in `ring.rs`
//! (see their docs), now fixed.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;
use ringbase_protocol::layout::RING_CTL_SIZE;
use ringbase_protocol::ring::{
    align_frame, frame_size, shares_cpu, Consumer, FrameRef, Producer, RingError, RingPtr,
    FRAME_EVENT, FRAME_HEADER, FRAME_PAD, FRAME_REQUEST, FRAME_RESPONSE,
};
use rkyv::util::AlignedVec;

// ---------------------------------------------------------------------------------------
// Test memory and raw access to the shared control block
// ---------------------------------------------------------------------------------------

/// Control block offsets, written down independently of `ring.rs` (see `layout.rs`).
const CTL_TAIL: usize = 0;
const CTL_PRODUCER_CPU: usize = 8;
const CTL_HEAD: usize = 64;
const CTL_CONSUMER_SLEEPING: usize = 128;
const CTL_PRODUCER_SLEEPING: usize = 192;
const CTL: usize = RING_CTL_SIZE as usize;
/// Bytes after the data area that no ring operation may read or write.
const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xA5;

/// A ring's memory: control block + `cap` data bytes + guard bytes, 64-byte aligned.
struct RingMem {
    ptr: *mut u8,
    layout: Layout,
    cap: u64,
}

// SAFETY: `RingMem` owns a plain heap buffer. Tests touch it from several threads only
// through the ring's own API (whose SPSC protocol gives each data byte one writer) and
// through atomic accesses to the control words; raw data-area writes are only made while
// no other thread uses the ring.
unsafe impl Sync for RingMem {}

impl RingMem {
    fn new(cap: u64) -> RingMem {
        assert!(cap.is_power_of_two() && cap >= 4096);
        let size = CTL + cap as usize + GUARD;
        let layout = Layout::from_size_align(size, 64).expect("layout");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: the guard area lies inside the allocation we just made.
        unsafe { std::ptr::write_bytes(ptr.add(CTL + cap as usize), GUARD_BYTE, GUARD) };
        RingMem { ptr, layout, cap }
    }

    /// A fresh, initialised ring over this memory.
    fn ring(&self) -> RingPtr {
        let r = self.ring_uninit();
        r.init();
        r
    }

    fn ring_uninit(&self) -> RingPtr {
        // SAFETY: `ptr` is 64-byte aligned (Layout align 64) and valid for reads and writes
        // of RING_CTL_SIZE + cap (+ GUARD) bytes until `self` is dropped; every test keeps
        // its `RingMem` alive for longer than the ring ends made from it. `cap` is a power
        // of two >= 4096 (asserted in `new`). Nothing but the ring ends and the test's
        // deliberate "hostile peer" writes touches the memory.
        unsafe { RingPtr::new(self.ptr, self.cap) }
    }

    fn word64(&self, at: usize) -> &AtomicU64 {
        assert!(at + 8 <= CTL && at.is_multiple_of(8));
        // SAFETY: in bounds and 8-aligned (the buffer is 64-aligned); the ring accesses the
        // control words only atomically, and so do we.
        unsafe { &*(self.ptr.add(at) as *const AtomicU64) }
    }

    fn word32(&self, at: usize) -> &AtomicU32 {
        assert!(at + 4 <= CTL && at.is_multiple_of(4));
        // SAFETY: as in `word64`.
        unsafe { &*(self.ptr.add(at) as *const AtomicU32) }
    }

    fn tail(&self) -> u64 {
        self.word64(CTL_TAIL).load(Ordering::SeqCst)
    }
    fn head(&self) -> u64 {
        self.word64(CTL_HEAD).load(Ordering::SeqCst)
    }
    fn set_tail(&self, v: u64) {
        self.word64(CTL_TAIL).store(v, Ordering::SeqCst)
    }
    fn set_head(&self, v: u64) {
        self.word64(CTL_HEAD).store(v, Ordering::SeqCst)
    }
    fn consumer_sleeping(&self) -> u32 {
        self.word32(CTL_CONSUMER_SLEEPING).load(Ordering::SeqCst)
    }
    fn producer_sleeping(&self) -> u32 {
        self.word32(CTL_PRODUCER_SLEEPING).load(Ordering::SeqCst)
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area starts right after the control block, inside the buffer.
        unsafe { self.ptr.add(CTL) }
    }

    /// Writes raw bytes into the data area (a hostile or test producer). Only call while no
    /// other thread uses the ring.
    fn write_data(&self, off: u64, bytes: &[u8]) {
        assert!(off as usize + bytes.len() <= self.cap as usize);
        // SAFETY: in bounds (asserted); single-threaded use, and no reference into the data
        // area is alive (the ring hands out slices only for the duration of a borrow).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.data().add(off as usize),
                bytes.len(),
            )
        };
    }

    fn read_data(&self, off: u64, len: usize) -> Vec<u8> {
        assert!(off as usize + len <= self.cap as usize);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds (asserted); single-threaded use.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(off as usize), v.as_mut_ptr(), len)
        };
        v
    }

    /// Writes a frame header (len u32 LE, kind u16 LE, flags u16 LE, corr u64 LE).
    fn put_header(&self, off: u64, len: u32, kind: u16, flags: u16, corr: u64) {
        self.write_data(off, &header_bytes(len, kind, flags, corr));
    }

    fn read_header(&self, off: u64) -> (u32, u16, u16, u64) {
        let h = self.read_data(off, FRAME_HEADER);
        (
            u32::from_le_bytes(h[0..4].try_into().unwrap()),
            u16::from_le_bytes(h[4..6].try_into().unwrap()),
            u16::from_le_bytes(h[6..8].try_into().unwrap()),
            u64::from_le_bytes(h[8..16].try_into().unwrap()),
        )
    }

    /// Offset in the data area of a payload slice handed out by the ring.
    fn payload_offset(&self, p: *const u8) -> u64 {
        let d = self.data() as usize;
        let p = p as usize;
        assert!(
            p >= d + FRAME_HEADER && p <= d + self.cap as usize,
            "payload pointer {p:#x} outside the data area {d:#x}..+{}",
            self.cap
        );
        (p - d) as u64
    }

    fn assert_guard_intact(&self) {
        // SAFETY: the guard area is inside the allocation.
        let g = unsafe { std::slice::from_raw_parts(self.data().add(self.cap as usize), GUARD) };
        if let Some(i) = g.iter().position(|&b| b != GUARD_BYTE) {
            panic!("byte {i} after the end of the data area was overwritten: {g:02x?}");
        }
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        if !thread::panicking() {
            self.assert_guard_intact();
        }
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}

fn header_bytes(len: u32, kind: u16, flags: u16, corr: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..6].copy_from_slice(&kind.to_le_bytes());
    h[6..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&corr.to_le_bytes());
    h
}

/// Frame size computed independently of `ring::frame_size`.
fn model_frame_size(len: u64) -> u64 {
    (16 + len).div_ceil(16) * 16
}

fn max_payload_for(cap: u64) -> usize {
    (cap / 2) as usize - FRAME_HEADER
}

// ---------------------------------------------------------------------------------------
// Deterministic payload contents
// ---------------------------------------------------------------------------------------

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random-looking payload determined by (seed, corr).
fn fill_payload(seed: u64, corr: u64, buf: &mut [u8]) {
    let mut s = seed ^ corr.rotate_left(32) ^ (buf.len() as u64).rotate_left(17);
    for chunk in buf.chunks_mut(8) {
        let v = splitmix(&mut s).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn check_payload(got: &[u8], expected: &[u8], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: payload length");
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: payload differs at byte {i} of {}: got {:02x?}, expected {:02x?}",
            got.len(),
            &got[i..(i + 16).min(got.len())],
            &expected[i..(i + 16).min(expected.len())]
        );
    }
}

fn is_corrupt<T: std::fmt::Debug>(r: &Result<T, RingError>) -> bool {
    matches!(r, Err(RingError::Corrupt(_)))
}

/// Payload lengths with weight on the interesting ones: tiny, maximal, around the
/// 16-byte rounding, uniformly anywhere.
fn len_strategy(max: usize) -> BoxedStrategy<usize> {
    prop_oneof![
        3 => 0..=64usize,
        3 => 0..=max,
        2 => (max - 64)..=max,
        1 => Just(max),
        1 => Just(0usize),
        1 => (1..=max / 16).prop_map(|k| k * 16),
        1 => (1..=max / 16).prop_map(|k| k * 16 - 15),
    ]
    .boxed()
}

fn cases(n: u32) -> Config {
    Config {
        cases: n,
        // Do not write `*.proptest-regressions` files next to this test.
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// 1. Producer thread + consumer thread
// ---------------------------------------------------------------------------------------

/// Longest total time a threaded test may wait for its peer.
const WATCHDOG: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct FrameSpec {
    len: usize,
    kind: u16,
    flags: u16,
    seed: u64,
    /// bit 0: consumer reads zero-copy; bits 1-3 == 0: consumer pauses after this frame;
    /// bits 4-6 == 0: producer pauses before it; bit 7: producer sleeps (else spins) when
    /// the ring is full; bit 1: consumer sleeps (else spins) when the ring is empty.
    knobs: u8,
}

impl FrameSpec {
    fn zero_copy(&self) -> bool {
        self.knobs & 1 != 0
    }
    fn consumer_pause(&self) -> bool {
        self.knobs & 0b1110 == 0
    }
    fn producer_pause(&self) -> bool {
        self.knobs & 0b111_0000 == 0
    }
    fn producer_sleeps(&self) -> bool {
        self.knobs & 0x80 != 0
    }
    fn consumer_sleeps(&self) -> bool {
        self.knobs & 0b10 != 0
    }
}

#[derive(Debug, Clone)]
struct ThreadCase {
    cap: u64,
    frames: Vec<FrameSpec>,
    /// 1: `try_push`; n > 1: `try_write_with` and a `flush` every n frames.
    producer_batch: usize,
    /// 1: `release`; n > 1: `advance` and a `flush` every n frames.
    consumer_batch: usize,
}

fn frame_spec(max: usize) -> impl Strategy<Value = FrameSpec> {
    (
        len_strategy(max),
        1u16..=3,
        any::<u16>(),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(|(len, kind, flags, seed, knobs)| FrameSpec {
            len,
            kind,
            flags,
            seed,
            knobs,
        })
}

fn thread_case() -> impl Strategy<Value = ThreadCase> {
    prop_oneof![Just(4096u64), Just(8192u64)]
        .prop_flat_map(|cap| {
            (
                Just(cap),
                prop::collection::vec(frame_spec(max_payload_for(cap)), 1..300),
                prop_oneof![2 => Just(1usize), 1 => 2usize..=8],
                prop_oneof![2 => Just(1usize), 1 => 2usize..=8],
            )
        })
        .prop_map(|(cap, frames, producer_batch, consumer_batch)| ThreadCase {
            cap,
            frames,
            producer_batch,
            consumer_batch,
        })
}

/// Bounds the waits of a group of threads and stops them all when one fails.
struct Watchdog {
    start: Instant,
    limit: Duration,
    abort: AtomicBool,
    /// 0: nobody failed; otherwise the id of the first thread that panicked.
    first_failure: AtomicU8,
}

impl Watchdog {
    fn new(limit: Duration) -> Watchdog {
        Watchdog {
            start: Instant::now(),
            limit,
            abort: AtomicBool::new(false),
            first_failure: AtomicU8::new(0),
        }
    }

    /// Call in every wait loop.
    fn check(&self, what: impl FnOnce() -> String) {
        if self.abort.load(Ordering::Relaxed) {
            panic!("stopping: the other thread failed ({})", what());
        }
        if self.start.elapsed() > self.limit {
            panic!("watchdog: waited more than {:?}: {}", self.limit, what());
        }
    }

    /// Marks thread `id` failed if it unwinds while the guard lives.
    fn guard(&self, id: u8) -> FailGuard<'_> {
        FailGuard { dog: self, id }
    }
}

struct FailGuard<'a> {
    dog: &'a Watchdog,
    id: u8,
}

impl Drop for FailGuard<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = self.dog.first_failure.compare_exchange(
                0,
                self.id,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            self.dog.abort.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs `a` (id 1) and `b` (id 2) on two scoped threads and re-raises the panic of the
/// first one that failed (the other one only noticed).
fn run_pair<A, B>(dog: &Watchdog, a: A, b: B)
where
    A: FnOnce() + Send,
    B: FnOnce() + Send,
{
    let (ra, rb) = thread::scope(|s| {
        let ha = s.spawn(|| {
            let _g = dog.guard(1);
            a()
        });
        let hb = s.spawn(|| {
            let _g = dog.guard(2);
            b()
        });
        (ha.join(), hb.join())
    });
    match (dog.first_failure.load(Ordering::SeqCst), ra, rb) {
        (_, Ok(()), Ok(())) => {}
        (2, _, Err(e)) | (_, Err(e), Ok(())) => panic::resume_unwind(e),
        (_, Ok(()), Err(e)) | (_, Err(e), Err(_)) => panic::resume_unwind(e),
    }
}

fn pause(i: usize) {
    if i.is_multiple_of(3) {
        thread::sleep(Duration::from_micros(50));
    } else {
        thread::yield_now();
    }
}

fn produce(p: &mut Producer, case: &ThreadCase, dog: &Watchdog) {
    let mut buf = Vec::new();
    let short = Duration::from_millis(2);
    for (i, f) in case.frames.iter().enumerate() {
        let corr = i as u64;
        if f.producer_pause() {
            pause(i);
        }
        if case.producer_batch == 1 {
            buf.resize(f.len, 0);
            fill_payload(f.seed, corr, &mut buf);
        }
        let mut spins = 0u32;
        loop {
            let r = if case.producer_batch == 1 {
                p.try_push(f.kind, f.flags, corr, &buf)
            } else {
                p.try_write_with(f.kind, f.flags, corr, f.len, |dst| {
                    assert_eq!(dst.len(), f.len, "fill slice length");
                    assert_eq!(dst.as_ptr() as usize % 16, 0, "fill slice not 16-aligned");
                    fill_payload(f.seed, corr, dst)
                })
            };
            match r {
                Ok(true) => break,
                Ok(false) => {
                    // Frames written but not published must become visible, or the
                    // consumer can never free the space we wait for.
                    p.flush();
                    dog.check(|| {
                        format!(
                            "producer waiting for space for frame {i} of {} (len {})",
                            case.frames.len(),
                            f.len
                        )
                    });
                    if f.producer_sleeps() {
                        if let Err(e) = p.sleep_for_space(f.len as u64, short) {
                            panic!("producer: sleep_for_space before frame {i}: {e}");
                        }
                    } else {
                        spins += 1;
                        if spins.is_multiple_of(16) {
                            thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
                Err(e) => panic!("producer: frame {i} (len {}): {e}", f.len),
            }
        }
        if case.producer_batch > 1 && (i + 1) % case.producer_batch == 0 {
            p.flush();
        }
    }
    p.flush();
}

fn consume(c: &mut Consumer, mem: &RingMem, case: &ThreadCase, dog: &Watchdog) {
    let mut copy = AlignedVec::<16>::new();
    let mut expected = Vec::new();
    let mut pending = 0usize;
    let mut next = 0usize;
    let mut spins = 0u32;
    let n = case.frames.len();
    while next < n {
        match c.peek() {
            Ok(Some(fr)) => {
                let spec = &case.frames[next];
                assert_eq!(
                    (fr.corr, fr.len as usize, fr.kind, fr.flags),
                    (next as u64, spec.len, spec.kind, spec.flags),
                    "frame {next}: header (corr, len, kind, flags)"
                );
                expected.resize(spec.len, 0);
                fill_payload(spec.seed, next as u64, &mut expected);
                let what = format!("frame {next} (len {})", spec.len);
                if spec.zero_copy() {
                    // SAFETY: the producer is this test's own `Producer`, which follows the
                    // protocol and never modifies a published frame before it is released.
                    let got = unsafe { c.payload(&fr) };
                    assert_eq!(
                        got.as_ptr() as usize % 16,
                        0,
                        "{what}: payload not 16-aligned"
                    );
                    let off = mem.payload_offset(got.as_ptr());
                    assert!(
                        off + got.len() as u64 <= case.cap,
                        "{what}: payload at {off} runs past the end of the ring"
                    );
                    check_payload(got, &expected, &what);
                } else {
                    c.copy_payload(&fr, &mut copy);
                    check_payload(copy.as_slice(), &expected, &what);
                }
                if case.consumer_batch == 1 {
                    c.release(&fr);
                } else {
                    c.advance(&fr);
                    pending += 1;
                    if pending >= case.consumer_batch {
                        c.flush();
                        pending = 0;
                    }
                }
                next += 1;
                if spec.consumer_pause() {
                    pause(next);
                }
            }
            Ok(None) => {
                // Hand back what was consumed before waiting, or a producer waiting for
                // that space and this consumer would both wait.
                c.flush();
                pending = 0;
                dog.check(|| format!("consumer waiting for frame {next} of {n}"));
                if case.frames[next].consumer_sleeps() {
                    if let Err(e) = c.sleep(Duration::from_millis(2)) {
                        panic!("consumer: sleep before frame {next}: {e}");
                    }
                } else {
                    spins += 1;
                    if spins.is_multiple_of(16) {
                        thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            Err(e) => panic!("consumer: frame {next}: {e}"),
        }
    }
    c.flush();
    assert_eq!(c.peek(), Ok(None), "ring not empty after the last frame");
}

fn run_threaded(case: &ThreadCase) {
    let mem = RingMem::new(case.cap);
    let ring = mem.ring();
    let max = ring.max_payload() as usize;
    assert_eq!(
        max,
        max_payload_for(case.cap),
        "max_payload formula changed"
    );
    let mut producer = ring.producer().unwrap();
    let mut consumer = ring.consumer().unwrap();
    let dog = Watchdog::new(WATCHDOG);
    run_pair(
        &dog,
        || produce(&mut producer, case, &dog),
        || consume(&mut consumer, &mem, case, &dog),
    );
    // Both sides are done: indices agree, and every byte went through the ring.
    assert_eq!(
        mem.tail(),
        mem.head(),
        "published tail and head differ at the end"
    );
    let min_bytes: u64 = case
        .frames
        .iter()
        .map(|f| model_frame_size(f.len as u64))
        .sum();
    assert!(
        mem.tail() >= min_bytes,
        "tail {} < sum of frame sizes {min_bytes}",
        mem.tail()
    );
    assert!(
        producer.has_space(max as u64).unwrap(),
        "empty ring has no space for max frame"
    );
    mem.assert_guard_intact();
}

proptest! {
    #![proptest_config(cases(64))]

    /// Every frame arrives intact and in order through a small, constantly full ring.
    #[test]
    fn threaded_stream_delivers_every_frame_in_order(case in thread_case()) {
        run_threaded(&case);
    }
}

/// A long deterministic stream of maximal and tiny frames, beyond what one proptest case
/// pushes: thousands of wrap-arounds with a padding frame at almost every one.
#[test]
fn the_producer_cpu_word_is_only_a_hint() {
    let mem = RingMem::new(4096);
    let mut p = mem.ring().producer().expect("producer");
    let mut c = mem.ring().consumer().expect("consumer");
    assert_eq!(c.producer_cpu(), 0, "nothing announced yet");
    p.announce_cpu();
    let announced = c.producer_cpu();
    assert_ne!(announced, 0, "Linux tells a thread its CPU");
    assert_eq!(
        mem.word32(CTL_PRODUCER_CPU).load(Ordering::SeqCst),
        announced
    );
    // Whatever a hostile peer writes there, frames flow as before.
    for junk in [u32::MAX, 1, 0x8000_0000] {
        mem.word32(CTL_PRODUCER_CPU).store(junk, Ordering::SeqCst);
        assert!(p.try_write(1, 0, 7, b"hello").expect("write"));
        p.flush();
        let f = c.peek().expect("peek").expect("a frame");
        assert_eq!((f.corr, f.len), (7, 5));
        c.release(&f);
        c.flush();
        assert_eq!(c.producer_cpu(), junk);
        assert!(!shares_cpu(0), "0 names no CPU");
    }
}

#[test]
fn threaded_stream_long_run() {
    let cap = 4096;
    let max = max_payload_for(cap);
    let mut s = 7u64;
    let frames = (0..4000)
        .map(|i| {
            let r = splitmix(&mut s);
            FrameSpec {
                len: match r % 4 {
                    0 => max,
                    1 => (r >> 8) as usize % 48,
                    _ => (r >> 8) as usize % (max + 1),
                },
                kind: [FRAME_REQUEST, FRAME_RESPONSE, FRAME_EVENT][i % 3],
                flags: (r >> 40) as u16,
                seed: r,
                knobs: (r >> 56) as u8 | 0x70, // no producer pauses: keep the ring full
            }
        })
        .collect();
    run_threaded(&ThreadCase {
        cap,
        frames,
        producer_batch: 1,
        consumer_batch: 3,
    });
}

// ---------------------------------------------------------------------------------------
// 2. Single-thread model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// `try_push`.
    Push {
        len: usize,
        kind: u16,
        flags: u16,
        seed: u64,
    },
    /// `try_write_with` (not published until a flush).
    Write {
        len: usize,
        kind: u16,
        flags: u16,
        seed: u64,
    },
    ProducerFlush,
    HasSpace {
        len: usize,
    },
    /// `sleep_for_space` with a tiny timeout.
    ProducerSleep {
        len: usize,
    },
    Peek,
    /// peek, read the payload (copy or zero-copy), then `release` or `advance`.
    Consume {
        release: bool,
        zero_copy: bool,
    },
    ConsumerFlush,
    HasData,
    /// `sleep` with a tiny timeout.
    ConsumerSleep,
    /// A payload one or more bytes over the maximum.
    TooLarge {
        extra: usize,
    },
}

fn op_strategy(max: usize) -> impl Strategy<Value = Op> {
    let frame = || (len_strategy(max), 1u16..=3, any::<u16>(), any::<u64>());
    prop_oneof![
        6 => frame().prop_map(|(len, kind, flags, seed)| Op::Push { len, kind, flags, seed }),
        3 => frame().prop_map(|(len, kind, flags, seed)| Op::Write { len, kind, flags, seed }),
        2 => Just(Op::ProducerFlush),
        2 => len_strategy(max).prop_map(|len| Op::HasSpace { len }),
        1 => len_strategy(max).prop_map(|len| Op::ProducerSleep { len }),
        2 => Just(Op::Peek),
        7 => (any::<bool>(), any::<bool>())
            .prop_map(|(release, zero_copy)| Op::Consume { release, zero_copy }),
        2 => Just(Op::ConsumerFlush),
        1 => Just(Op::HasData),
        1 => Just(Op::ConsumerSleep),
        1 => (0usize..100).prop_map(|extra| Op::TooLarge { extra }),
    ]
}

#[derive(Debug, Clone)]
struct MFrame {
    /// Ring index of the frame header.
    start: u64,
    len: usize,
    kind: u16,
    flags: u16,
    corr: u64,
    seed: u64,
}

impl MFrame {
    fn end(&self) -> u64 {
        self.start + model_frame_size(self.len as u64)
    }
}

/// What the ring should be, from the rules in the module docs only.
#[derive(Debug)]
struct Model {
    cap: u64,
    /// Producer's private tail (written, maybe unpublished).
    p_tail: u64,
    /// Tail stored to shared memory.
    p_pub: u64,
    /// Consumer's private head (consumed, maybe unpublished).
    c_head: u64,
    /// Head stored to shared memory.
    c_pub: u64,
    /// Frames written and not yet consumed, oldest first.
    frames: VecDeque<MFrame>,
    next_corr: u64,
}

impl Model {
    fn new(cap: u64) -> Model {
        Model {
            cap,
            p_tail: 0,
            p_pub: 0,
            c_head: 0,
            c_pub: 0,
            frames: VecDeque::new(),
            next_corr: 0,
        }
    }

    /// (padding bytes, frame bytes) a frame of `len` needs at the current tail.
    fn need(&self, len: usize) -> (u64, u64) {
        let fsize = model_frame_size(len as u64);
        let contig = self.cap - self.p_tail % self.cap;
        if fsize > contig {
            (contig, fsize)
        } else {
            (0, fsize)
        }
    }

    /// The space rule: the frame (and its padding) must fit behind the published head.
    fn fits(&self, len: usize) -> bool {
        let (pad, fsize) = self.need(len);
        self.p_tail + pad + fsize - self.c_pub <= self.cap
    }

    /// Records a write; returns the padding frame's index if one was needed.
    fn write(&mut self, len: usize, kind: u16, flags: u16, seed: u64) -> (Option<u64>, MFrame) {
        let (pad, fsize) = self.need(len);
        let pad_at = (pad > 0).then_some(self.p_tail);
        self.p_tail += pad;
        let f = MFrame {
            start: self.p_tail,
            len,
            kind,
            flags,
            corr: self.next_corr,
            seed,
        };
        self.next_corr += 1;
        self.p_tail += fsize;
        self.frames.push_back(f.clone());
        (pad_at, f)
    }

    /// The frame `peek` must return.
    fn visible_front(&self) -> Option<&MFrame> {
        self.frames.front().filter(|f| f.end() <= self.p_pub)
    }
}

struct ModelRun<'a> {
    mem: &'a RingMem,
    p: Producer,
    c: Consumer,
    m: Model,
    copy: AlignedVec<16>,
    step: usize,
}

impl ModelRun<'_> {
    fn check_frame(&mut self, fr: &FrameRef, exp: &MFrame, zero_copy: bool) {
        let step = self.step;
        assert_eq!(
            (fr.len as usize, fr.kind, fr.flags, fr.corr),
            (exp.len, exp.kind, exp.flags, exp.corr),
            "step {step}: peeked frame header"
        );
        // The payload must be where the model put the frame: contiguous, 16-aligned,
        // right after its header.
        // SAFETY: single-threaded; nothing modifies the frame while the slice is alive.
        let ptr = unsafe { self.c.payload(fr) }.as_ptr();
        let off = self.mem.payload_offset(ptr);
        assert_eq!(
            off,
            exp.start % self.m.cap + FRAME_HEADER as u64,
            "step {step}: frame {} is not where the model put it",
            exp.corr
        );
        let mut want = vec![0u8; exp.len];
        fill_payload(exp.seed, exp.corr, &mut want);
        let what = format!("step {step}: frame {}", exp.corr);
        if zero_copy {
            // SAFETY: as above.
            let got = unsafe { self.c.payload(fr) };
            check_payload(got, &want, &what);
        } else {
            self.c.copy_payload(fr, &mut self.copy);
            check_payload(self.copy.as_slice(), &want, &what);
        }
    }

    fn check_written(&self, pad_at: Option<u64>, f: &MFrame) {
        let cap = self.m.cap;
        if let Some(at) = pad_at {
            let contig = cap - at % cap;
            let (len, kind, _, _) = self.mem.read_header(at % cap);
            assert_eq!(
                (len as u64, kind),
                (contig - FRAME_HEADER as u64, FRAME_PAD),
                "step {}: padding frame at {} (contig {contig})",
                self.step,
                at % cap
            );
            assert_eq!(f.start % cap, 0, "a frame after padding starts the ring");
        }
        assert!(
            f.start % cap + model_frame_size(f.len as u64) <= cap,
            "frame split by the end"
        );
        let h = self.mem.read_header(f.start % cap);
        assert_eq!(
            h,
            (f.len as u32, f.kind, f.flags, f.corr),
            "step {}: frame header bytes in the ring (documented layout)",
            self.step
        );
    }

    fn apply(&mut self, op: &Op) {
        let step = self.step;
        let max = max_payload_for(self.m.cap);
        match *op {
            Op::Push {
                len,
                kind,
                flags,
                seed,
            }
            | Op::Write {
                len,
                kind,
                flags,
                seed,
            } => {
                let push = matches!(op, Op::Push { .. });
                let fits = self.m.fits(len);
                let corr = self.m.next_corr;
                let mut payload = vec![0u8; len];
                fill_payload(seed, corr, &mut payload);
                let got = if push {
                    self.p.try_push(kind, flags, corr, &payload)
                } else {
                    self.p
                        .try_write_with(kind, flags, corr, len, |dst| dst.copy_from_slice(&payload))
                };
                assert_eq!(
                    got,
                    Ok(fits),
                    "step {step}: {op:?}: ring says fits={got:?}, model says {fits} (model {:?})",
                    (self.m.p_tail, self.m.c_pub)
                );
                if fits {
                    let (pad_at, f) = self.m.write(len, kind, flags, seed);
                    if push {
                        self.m.p_pub = self.m.p_tail;
                    }
                    self.check_written(pad_at, &f);
                }
            }
            Op::ProducerFlush => {
                self.p.flush();
                self.m.p_pub = self.m.p_tail;
            }
            Op::HasSpace { len } => {
                assert_eq!(
                    self.p.has_space(len as u64),
                    Ok(self.m.fits(len)),
                    "step {step}: {op:?}"
                );
            }
            Op::ProducerSleep { len } => {
                let fits = self.m.fits(len);
                let t0 = Instant::now();
                let got = self.p.sleep_for_space(len as u64, Duration::from_micros(1));
                assert_eq!(got, Ok(fits), "step {step}: {op:?}");
                assert!(
                    t0.elapsed() < Duration::from_secs(2),
                    "sleep_for_space ignored its timeout"
                );
            }
            Op::Peek => {
                let got = self
                    .c
                    .peek()
                    .unwrap_or_else(|e| panic!("step {step}: peek: {e}"));
                let exp = self.m.visible_front().cloned();
                match (got, exp) {
                    (None, None) => {}
                    (Some(fr), Some(exp)) => {
                        self.check_frame(&fr, &exp, true);
                        // peek skips a padding frame privately.
                        self.m.c_head = exp.start;
                    }
                    (got, exp) => panic!("step {step}: peek returned {got:?}, model {exp:?}"),
                }
            }
            Op::Consume { release, zero_copy } => {
                let got = self
                    .c
                    .peek()
                    .unwrap_or_else(|e| panic!("step {step}: peek: {e}"));
                let exp = self.m.visible_front().cloned();
                match (got, exp) {
                    (None, None) => {}
                    (Some(fr), Some(exp)) => {
                        self.check_frame(&fr, &exp, zero_copy);
                        // Peeking twice returns the same frame.
                        assert_eq!(self.c.peek(), Ok(Some(fr)), "step {step}: second peek");
                        if release {
                            self.c.release(&fr);
                        } else {
                            self.c.advance(&fr);
                        }
                        self.m.frames.pop_front();
                        self.m.c_head = exp.end();
                        if release {
                            self.m.c_pub = self.m.c_head;
                        }
                    }
                    (got, exp) => panic!("step {step}: peek returned {got:?}, model {exp:?}"),
                }
            }
            Op::ConsumerFlush => {
                self.c.flush();
                self.m.c_pub = self.m.c_head;
            }
            Op::HasData => {
                // The consumer has data iff published bytes lie past its private head.
                assert_eq!(
                    self.c.has_data(),
                    Ok(self.m.p_pub > self.m.c_head),
                    "step {step}"
                );
            }
            Op::ConsumerSleep => {
                let t0 = Instant::now();
                let got = self.c.sleep(Duration::from_micros(1));
                assert_eq!(got, Ok(self.m.p_pub > self.m.c_head), "step {step}: sleep");
                assert!(
                    t0.elapsed() < Duration::from_secs(2),
                    "sleep ignored its timeout"
                );
            }
            Op::TooLarge { extra } => {
                let len = max + 1 + extra;
                let payload = vec![0u8; len];
                let want = Err(RingError::TooLarge {
                    len: len as u64,
                    max: max as u64,
                });
                assert_eq!(self.p.try_push(1, 0, 0, &payload), want, "step {step}");
                let mut called = false;
                assert_eq!(
                    self.p.try_write_with(1, 0, 0, len, |_| called = true),
                    want,
                    "step {step}"
                );
                assert!(!called, "fill called for a frame that is too large");
            }
        }
        // The shared words are exactly what the model says was published.
        assert_eq!(
            self.mem.tail(),
            self.m.p_pub,
            "step {step} ({op:?}): shared tail"
        );
        assert_eq!(
            self.mem.head(),
            self.m.c_pub,
            "step {step} ({op:?}): shared head"
        );
        assert_eq!(
            self.mem.consumer_sleeping(),
            0,
            "step {step}: consumer flag left set"
        );
        assert_eq!(
            self.mem.producer_sleeping(),
            0,
            "step {step}: producer flag left set"
        );
        self.step += 1;
    }

    /// Publishes everything, consumes everything, and checks the ring ends empty.
    fn drain(&mut self) {
        self.apply(&Op::ProducerFlush);
        while !self.m.frames.is_empty() {
            self.apply(&Op::Consume {
                release: true,
                zero_copy: self.step.is_multiple_of(2),
            });
        }
        self.apply(&Op::ConsumerFlush);
        assert_eq!(self.c.peek(), Ok(None));
        assert_eq!(self.mem.tail(), self.mem.head());
        let max = max_payload_for(self.m.cap) as u64;
        assert_eq!(
            self.p.has_space(max),
            Ok(true),
            "an empty ring must fit a maximal frame"
        );
    }
}

fn model_case() -> impl Strategy<Value = (u64, Vec<Op>)> {
    prop_oneof![3 => Just(4096u64), 1 => Just(8192u64)].prop_flat_map(|cap| {
        (
            Just(cap),
            prop::collection::vec(op_strategy(max_payload_for(cap)), 1..400),
        )
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Random interleavings of every operation agree with the model: the exact space
    /// rule, published indices, frame placement (contiguous, padding at the end), order
    /// and contents.
    #[test]
    fn model_random_interleavings((cap, ops) in model_case()) {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        prop_assert_eq!(ring.capacity(), cap);
        prop_assert_eq!(ring.max_payload() as usize, max_payload_for(cap));
        let mut run = ModelRun {
            mem: &mem,
            p: ring.producer().unwrap(),
            c: ring.consumer().unwrap(),
            m: Model::new(cap),
            copy: AlignedVec::new(),
            step: 0,
        };
        for op in &ops {
            run.apply(op);
        }
        run.drain();
        mem.assert_guard_intact();
    }

    /// `frame_size` and `align_frame` follow the documented rounding.
    #[test]
    fn model_frame_size_rule(len in 0u64..(1 << 40)) {
        prop_assert_eq!(frame_size(len), model_frame_size(len));
        prop_assert_eq!(align_frame(len), len.div_ceil(16) * 16);
    }
}

/// The space rule at its edges: a maximal frame always fits in an empty ring whatever the
/// position of the tail; and a ring holds exactly two maximal frames.
#[test]
fn model_space_rule_edges() {
    let cap = 4096u64;
    let max = max_payload_for(cap);
    // For every 16-aligned tail position, an empty ring fits a maximal frame.
    for pos in (0..cap).step_by(16) {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        // Walk the tail to `pos` with frames that are consumed at once.
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        let mut at = 0u64;
        while at < pos {
            let len = ((pos - at).min(cap / 2) - 16) as usize;
            assert_eq!(p.try_push(1, 0, at, &vec![0u8; len]), Ok(true));
            let f = c.peek().unwrap().unwrap();
            c.release(&f);
            at += model_frame_size(len as u64);
        }
        assert_eq!(mem.tail(), pos);
        assert_eq!(p.has_space(max as u64), Ok(true), "tail at {pos}");
        assert_eq!(
            p.try_push(2, 0, 99, &vec![7u8; max]),
            Ok(true),
            "tail at {pos}"
        );
        let f = c.peek().unwrap().expect("frame");
        assert_eq!((f.len as usize, f.corr), (max, 99));
        c.release(&f);
        assert_eq!(c.peek(), Ok(None));
    }
    // Two maximal frames fill the ring exactly; then nothing fits, not even an empty frame.
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let big = vec![1u8; max];
    assert_eq!(p.try_push(1, 0, 0, &big), Ok(true));
    assert_eq!(p.try_push(1, 0, 1, &big), Ok(true));
    assert_eq!(p.has_space(0), Ok(false));
    assert_eq!(p.try_push(1, 0, 2, &[]), Ok(false));
    // Consuming without publishing frees nothing for the producer...
    let f = c.peek().unwrap().unwrap();
    c.advance(&f);
    assert_eq!(p.has_space(0), Ok(false));
    // ...publishing does.
    c.flush();
    assert_eq!(p.has_space(max as u64), Ok(true));
    assert_eq!(p.has_space(max as u64 + 1), Ok(false));
}

// ---------------------------------------------------------------------------------------
// 3. Hostile peers
// ---------------------------------------------------------------------------------------

/// Pushes `n` frames of `len` bytes and consumes them all, so both sides sit at `n * fs`.
fn advance_both(p: &mut Producer, c: &mut Consumer, n: usize, len: usize) {
    for i in 0..n {
        assert_eq!(p.try_push(1, 0, i as u64, &vec![0x11; len]), Ok(true));
        let f = c.peek().unwrap().expect("frame");
        c.release(&f);
    }
    assert_eq!(c.peek(), Ok(None));
}

/// Runs `f`, turning a panic into an error message.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            panic!("{what}: the ring panicked instead of reporting Corrupt: {msg}");
        }
    }
}

#[test]
fn hostile_tail_beyond_head_plus_cap() {
    let cap = 4096;
    for (pos, bad) in [
        (0u64, cap + 16),
        (0, cap + 1),
        (0, u64::MAX),
        (1024, 1024 + cap + 16),
    ] {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        advance_both(&mut p, &mut c, (pos / 64) as usize, 48);
        assert_eq!(mem.head(), pos);
        mem.set_tail(bad);
        assert!(
            is_corrupt(&c.has_data()),
            "has_data with tail {bad} at head {pos}"
        );
        assert!(is_corrupt(&c.peek()), "peek with tail {bad} at head {pos}");
        let t0 = Instant::now();
        assert!(
            is_corrupt(&c.sleep(Duration::from_secs(10))),
            "sleep with tail {bad}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn hostile_tail_exactly_full_is_not_an_index_error() {
    // head + cap is a legal tail (a full ring); zeroed data then reads as empty frames.
    let mem = RingMem::new(4096);
    let ring = mem.ring();
    let mut c = ring.consumer().unwrap();
    mem.set_tail(4096);
    let mut n = 0;
    while let Some(f) = c
        .peek()
        .expect("a full ring of zero headers is well formed")
    {
        assert_eq!((f.len, f.kind), (0, 0));
        c.release(&f);
        n += 1;
    }
    assert_eq!(n, 4096 / 16);
    assert_eq!(mem.head(), 4096);
}

#[test]
fn hostile_tail_moving_backwards() {
    let cap = 4096;
    for back in [16u64, 1, 64 * 20] {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        advance_both(&mut p, &mut c, 20, 48); // tail = head = 1280
        let t = mem.tail();
        mem.set_tail(t - back);
        assert!(is_corrupt(&c.peek()), "tail moved back by {back}");
    }
    // Backwards but still ahead of the consumer's head: reported once the consumer needs
    // to re-read the tail.
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    for i in 0..4 {
        assert_eq!(p.try_push(1, 0, i, &[0u8; 48]), Ok(true));
    }
    let f = c.peek().unwrap().unwrap(); // caches tail = 256
    c.release(&f);
    mem.set_tail(128);
    let mut result = Ok(None);
    for _ in 0..8 {
        result = c.peek();
        match &result {
            Ok(Some(f)) => c.release(f),
            _ => break,
        }
    }
    assert!(
        is_corrupt(&result),
        "tail moved from 256 back to 128: {result:?}"
    );
}

#[test]
fn hostile_frame_len_past_max_payload() {
    let cap = 4096u64;
    let max = max_payload_for(cap) as u32;
    for len in [max + 1, max + 16, cap as u32, u32::MAX] {
        for kind in [FRAME_REQUEST, 0, 0x1234] {
            let mem = RingMem::new(cap);
            let ring = mem.ring();
            let mut c = ring.consumer().unwrap();
            mem.put_header(0, len, kind, 0, 1);
            mem.set_tail(cap); // everything published: only the length is wrong
            assert!(is_corrupt(&c.peek()), "len {len} kind {kind}");
        }
    }
    // The maximum itself is fine.
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut c = ring.consumer().unwrap();
    mem.put_header(0, max, FRAME_REQUEST, 0, 1);
    mem.set_tail(cap);
    assert_eq!(c.peek().unwrap().map(|f| f.len), Some(max));
}

#[test]
fn hostile_frame_len_beyond_published_data() {
    let cap = 4096u64;
    // Runs past the tail.
    for (len, tail) in [(100u32, 32u64), (17, 32), (1, 16), (2000, 2016 - 16)] {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut c = ring.consumer().unwrap();
        mem.put_header(0, len, FRAME_REQUEST, 0, 1);
        mem.set_tail(tail);
        let r = c.peek();
        assert!(is_corrupt(&r), "len {len}, tail {tail}: {r:?}");
    }
    // Runs past the end of the ring (frames must never be split).
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    advance_both(&mut p, &mut c, 63, 48); // head at cap - 64
    let head = mem.head();
    assert_eq!(head, cap - 64);
    for len in [49u32, 64, 100, 1000] {
        mem.put_header(head % cap, len, FRAME_REQUEST, 0, 1);
        mem.set_tail(head + 2048);
        let r = c.peek();
        assert!(
            is_corrupt(&r),
            "len {len} at {} crosses the end: {r:?}",
            head % cap
        );
    }
    // The largest frame that ends exactly at the end is fine.
    mem.put_header(head % cap, 48, FRAME_REQUEST, 0, 1);
    assert_eq!(c.peek().unwrap().map(|f| f.len), Some(48));
}

#[test]
fn hostile_partial_frame_header() {
    let cap = 4096u64;
    for tail in [1u64, 8, 15] {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut c = ring.consumer().unwrap();
        mem.set_tail(tail);
        assert!(is_corrupt(&c.peek()), "tail {tail}");
    }
    // An unaligned tail after a valid frame: refused as soon as it is read.
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut c = ring.consumer().unwrap();
    mem.put_header(0, 0, FRAME_REQUEST, 0, 1);
    mem.set_tail(24);
    assert!(is_corrupt(&c.peek()));
}

#[test]
fn hostile_bad_padding_frame() {
    let cap = 4096u64;
    let setup = || {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        advance_both(&mut p, &mut c, 63, 48); // head at cap - 64, contig 64
        (mem, p, c)
    };
    let contig = 64u64;
    // Wrong padding length.
    for len in [0u32, 16, 47, 49, 64, 4096 - 16, u32::MAX] {
        let (mem, _p, mut c) = setup();
        let head = mem.head();
        mem.put_header(head % cap, len, FRAME_PAD, 0, 0);
        mem.set_tail(head + 512);
        assert!(
            is_corrupt(&c.peek()),
            "padding len {len} with contig {contig}"
        );
    }
    // Right length, but the padding is not all published.
    let (mem, _p, mut c) = setup();
    let head = mem.head();
    mem.put_header(head % cap, (contig - 16) as u32, FRAME_PAD, 0, 0);
    mem.set_tail(head + 32);
    assert!(is_corrupt(&c.peek()), "padding beyond the tail");
    // Right length, fully published, but nothing after it. (A fresh ring: the consumer
    // above cached the short tail and only re-reads it once it caught up with it.)
    let (mem, _p, mut c) = setup();
    let head = mem.head();
    mem.put_header(head % cap, (contig - 16) as u32, FRAME_PAD, 0, 0);
    mem.set_tail(head + contig);
    assert_eq!(c.peek(), Ok(None), "a lone padding frame is just skipped");
    // A well-formed padding frame followed by a frame at offset 0.
    mem.put_header(0, 5, FRAME_EVENT, 3, 77);
    mem.set_tail(head + contig + 32);
    let f = c.peek().unwrap().expect("frame after padding");
    assert_eq!((f.len, f.kind, f.flags, f.corr), (5, FRAME_EVENT, 3, 77));
    // SAFETY: single-threaded; nothing modifies the frame while the slice is alive.
    assert_eq!(mem.payload_offset(unsafe { c.payload(&f) }.as_ptr()), 16);
}

/// Fills the ring with frames of `len` until `try_push` says it is full.
fn fill(p: &mut Producer, len: usize) -> usize {
    let buf = vec![0x22u8; len];
    let mut n = 0;
    while p.try_push(1, 0, n as u64, &buf).expect("honest consumer") {
        n += 1;
        assert!(n < 10_000, "ring never full");
    }
    n
}

#[test]
fn hostile_head_beyond_tail() {
    let cap = 4096u64;
    for delta in [16u64, 1, cap, u64::MAX / 2] {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut p = ring.producer().unwrap();
        fill(&mut p, 100);
        let t = mem.tail();
        mem.set_head(t.saturating_add(delta));
        assert!(is_corrupt(&p.has_space(100)), "head = tail + {delta}");
        assert!(
            is_corrupt(&p.try_push(1, 0, 0, &[0u8; 100])),
            "head = tail + {delta}"
        );
        let t0 = Instant::now();
        assert!(is_corrupt(&p.sleep_for_space(100, Duration::from_secs(10))));
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "sleep_for_space slept on a corrupt ring"
        );
    }
}

#[test]
fn hostile_head_moving_backwards() {
    let cap = 4096u64;
    for back in [16u64, 1, 100, u64::MAX] {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        fill(&mut p, 100);
        while let Some(f) = c.peek().unwrap() {
            c.release(&f);
        }
        // The producer must see the new head: fill again (it re-reads the head once).
        fill(&mut p, 100);
        let h = mem.head();
        assert!(h > 0);
        mem.set_head(h.saturating_sub(back));
        assert!(is_corrupt(&p.has_space(100)), "head moved back by {back}");
        assert!(
            is_corrupt(&p.try_push(1, 0, 0, &[0u8; 100])),
            "head moved back by {back}"
        );
    }
}

/// A hostile producer: random bytes in the data area, random frame headers, and a
/// sequence of tail values, some legal, some not.
#[derive(Debug, Clone)]
enum TailMove {
    /// tail += 16 * k
    Forward(u64),
    /// tail += d (maybe unaligned)
    ForwardRaw(u64),
    /// tail -= d
    Backward(u64),
    /// head + cap: a completely full ring
    Full,
    /// anything
    Absolute(u64),
}

#[derive(Debug, Clone)]
enum HLen {
    Exact(u32),
    /// exactly the padding length for this slot (contig - 16), plus a delta
    PadFit(i8),
}

#[derive(Debug, Clone)]
struct HostileHeader {
    slot: u64,
    len: HLen,
    kind: u16,
}

fn hostile_header(cap: u64) -> impl Strategy<Value = HostileHeader> {
    let max = max_payload_for(cap) as u32;
    let len = prop_oneof![
        4 => (0u32..=64).prop_map(HLen::Exact),
        3 => (0u32..=max + 64).prop_map(HLen::Exact),
        1 => Just(HLen::Exact(max)),
        1 => Just(HLen::Exact(max + 1)),
        1 => any::<u32>().prop_map(HLen::Exact),
        3 => (-20i8..=20).prop_map(|d| HLen::PadFit(if d.abs() > 10 { 0 } else { d })),
    ];
    let kind = prop_oneof![4 => 1u16..=3, 3 => Just(FRAME_PAD), 1 => any::<u16>()];
    (0..cap / 16, len, kind).prop_map(|(slot, len, kind)| HostileHeader { slot, len, kind })
}

fn tail_move(cap: u64) -> impl Strategy<Value = TailMove> {
    prop_oneof![
        6 => (0..=cap / 16 + 2).prop_map(TailMove::Forward),
        2 => (0..=cap + 64).prop_map(TailMove::ForwardRaw),
        1 => (1..=cap).prop_map(TailMove::Backward),
        2 => Just(TailMove::Full),
        1 => any::<u64>().prop_map(TailMove::Absolute),
    ]
}

/// What the data area holds before the hostile headers are written.
#[derive(Debug, Clone)]
enum Background {
    Zero,
    /// random bytes: almost every header is rejected at once
    Random(u64),
    /// a chain of well-formed frames from offset 0, ending with a correct padding frame,
    /// so that the consumer walks far before it meets the hostile headers
    Chain(u64),
}

impl Background {
    fn write(&self, mem: &RingMem) {
        let cap = mem.cap;
        match *self {
            Background::Zero => {}
            Background::Random(seed) => {
                let mut garbage = vec![0u8; cap as usize];
                fill_payload(seed, 0, &mut garbage);
                mem.write_data(0, &garbage);
            }
            Background::Chain(seed) => {
                let mut rng = seed;
                let mut off = 0u64;
                while off < cap {
                    let r = splitmix(&mut rng);
                    let len = if r.is_multiple_of(8) {
                        (r >> 8) % (max_payload_for(cap) as u64 + 1)
                    } else {
                        (r >> 8) % 200
                    };
                    let fsize = model_frame_size(len);
                    if off + fsize > cap {
                        mem.put_header(off, (cap - off - 16) as u32, FRAME_PAD, 0, 0);
                        break;
                    }
                    mem.put_header(off, len as u32, 1 + (r % 3) as u16, (r >> 32) as u16, off);
                    let mut payload = vec![0u8; len as usize];
                    fill_payload(r, off, &mut payload);
                    mem.write_data(off + 16, &payload);
                    off += fsize;
                }
            }
        }
    }
}

/// Capacity, background fill, initial headers, and steps of (tail move, headers).
type HostileCase = (
    u64,
    Background,
    Vec<HostileHeader>,
    Vec<(TailMove, Vec<HostileHeader>)>,
);

fn hostile_case() -> impl Strategy<Value = HostileCase> {
    let cap = 4096u64;
    (
        Just(cap),
        prop_oneof![
            1 => Just(Background::Zero),
            1 => any::<u64>().prop_map(Background::Random),
            4 => any::<u64>().prop_map(Background::Chain),
        ],
        prop::collection::vec(hostile_header(cap), 0..12),
        prop::collection::vec(
            (
                tail_move(cap),
                prop::collection::vec(hostile_header(cap), 0..3),
            ),
            1..24,
        ),
    )
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Whatever a hostile producer writes, the consumer never panics, never hands out a
    /// frame outside the published bytes or the data area, and reports a broken index at
    /// the first re-read of the tail.
    #[test]
    fn hostile_producer_random_data((cap, background, headers, steps) in hostile_case()) {
        let mem = RingMem::new(cap);
        let ring = mem.ring();
        let mut c = ring.consumer().unwrap();
        let max = max_payload_for(cap) as u64;
        // A background, then hostile headers.
        background.write(&mem);
        let put = |h: &HostileHeader| {
            let off = h.slot * 16;
            let len = match h.len {
                HLen::Exact(l) => l,
                HLen::PadFit(d) => ((cap - off - 16) as i64 + d as i64).max(0) as u32,
            };
            mem.put_header(off, len, h.kind, 0xABCD, off);
        };
        headers.iter().for_each(put);
        let mut copy = AlignedVec::<16>::new();
        // The consumer drains after each step, so its head == the last accepted tail.
        let mut accepted = 0u64;
        'steps: for (i, (mv, hs)) in steps.iter().enumerate() {
            hs.iter().for_each(put);
            let tail = match *mv {
                TailMove::Forward(k) => accepted.saturating_add(16 * k),
                TailMove::ForwardRaw(d) => accepted.saturating_add(d),
                TailMove::Backward(d) => accepted.saturating_sub(d),
                TailMove::Full => accepted + cap,
                TailMove::Absolute(v) => v,
            };
            mem.set_tail(tail);
            let legal_index = tail >= accepted && tail - accepted <= cap;
            let mut first = true;
            let mut iters = 0;
            loop {
                iters += 1;
                prop_assert!(iters <= cap / 16 + 2, "step {}: consumer never reached the tail", i);
                let head_before = mem.head();
                let r = no_panic("peek", || c.peek());
                if first && !legal_index {
                    prop_assert!(is_corrupt(&r),
                        "step {}: tail {} (accepted {}) breaks the index invariant, peek gave {:?}",
                        i, tail, accepted, r);
                }
                first = false;
                match r {
                    Ok(Some(f)) => {
                        prop_assert!(f.kind != FRAME_PAD, "padding frame handed out");
                        prop_assert!(f.len as u64 <= max, "len {} > max {}", f.len, max);
                        // SAFETY: single-threaded: nothing writes the frame while we look.
                        let payload = unsafe { c.payload(&f) };
                        let off = mem.payload_offset(payload.as_ptr()) - FRAME_HEADER as u64;
                        let fsize = frame_size(f.len as u64);
                        prop_assert!(off.is_multiple_of(16) && off + fsize <= cap,
                            "frame at {} of size {} outside the data area", off, fsize);
                        prop_assert_eq!(mem.read_header(off), (f.len, f.kind, f.flags, f.corr));
                        prop_assert_eq!(payload, &mem.read_data(off + 16, f.len as usize)[..]);
                        no_panic("copy_payload", || c.copy_payload(&f, &mut copy));
                        prop_assert_eq!(copy.as_slice(), payload);
                        c.release(&f);
                        let head_after = mem.head();
                        // The frame lies in head_before .. tail, where the model says.
                        prop_assert!(head_after >= head_before + fsize,
                            "head went from {} to {} for a frame of {}", head_before, head_after, fsize);
                        prop_assert!(head_after <= tail,
                            "frame ends at {} past the published tail {}", head_after, tail);
                        prop_assert_eq!((head_after - fsize) % cap, off);
                    }
                    Ok(None) => {
                        c.flush();
                        prop_assert_eq!(mem.head(), tail, "empty, but head != tail");
                        prop_assert!(legal_index);
                        prop_assert!(tail % 16 == 0, "an unaligned tail {} was reached", tail);
                        accepted = tail;
                        break;
                    }
                    Err(RingError::Corrupt(_)) => break 'steps,
                    Err(e) => prop_assert!(false, "unexpected error {:?}", e),
                }
            }
        }
        mem.assert_guard_intact();
    }
}

// Regressions: defects found in ring.rs by these tests, now fixed ---------------------------------------------------------------

/// Regression (fixed: the ends check the indices they start from, and the server
/// creates its ends before handing the segment over): `RingPtr::consumer()` takes its own starting `head` from shared memory without
/// checking it. The server calls `request_ring().consumer()` *after* it sent the segment's
/// descriptor to the client (ipc.rs `send_with_fd`, then `session::run`), so a hostile
/// client can set the request ring's head to an unaligned value first. `peek`'s SAFETY
/// argument ("off is 16-aligned because head only advances by multiples of 16") then
/// fails: with head = cap - 8 the header copy reads 8 bytes past the data area, and a
/// padding kind makes `contig - FRAME_HEADER` underflow (a panic in debug builds).
#[test]
fn hostile_unaligned_head_before_consumer_is_created() {
    let cap = 4096u64;
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    // The hostile peer scribbles on the block before the consumer end exists.
    mem.set_head(cap - 8);
    mem.set_tail(cap - 8 + 16);
    mem.write_data(cap - 8, &header_bytes(0, FRAME_PAD, 0, 0)[..8]);
    let mut c = match ring.consumer() {
        // Refusing a scribbled starting index is the fix.
        Err(e) => return assert!(matches!(e, RingError::Corrupt(_)), "{e:?}"),
        Ok(x) => x,
    };
    let r = no_panic("peek with an unaligned starting head", || c.peek());
    assert!(is_corrupt(&r), "{r:?}");
}

/// Regression (fixed: the ends check the indices they start from, and the server
/// creates its ends before handing the segment over): likewise `RingPtr::producer()` takes its own starting `tail` from shared memory.
/// The server calls `response_ring().producer()` after the client got the segment, so a
/// hostile client can set tail = head = cap - 8: the first write then needs a padding
/// frame in the last 8 bytes, `contig - FRAME_HEADER` underflows (panic in debug), and in
/// release the 16-byte padding header is written 8 bytes past the end of the data area
/// (into the next ring's control block, or past the segment for the last ring).
#[test]
fn hostile_unaligned_tail_before_producer_is_created() {
    let cap = 4096u64;
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    mem.set_tail(cap - 8);
    mem.set_head(cap - 8);
    let mut p = match ring.producer() {
        // Refusing a scribbled starting index is the fix.
        Err(e) => return assert!(matches!(e, RingError::Corrupt(_)), "{e:?}"),
        Ok(x) => x,
    };
    let r = no_panic("try_push with an unaligned starting tail", || {
        p.try_push(1, 0, 0, &[1, 2, 3])
    });
    mem.assert_guard_intact();
    // Either refusing (Corrupt) or ignoring the scribbled value would be fine.
    assert!(r.is_ok() || is_corrupt(&r), "{r:?}");
}

/// Regression (same root cause): a starting tail near `u64::MAX` makes `self.tail += fsize`
/// overflow (the docs assume the indices never wrap because they start at 0).
#[test]
fn hostile_huge_tail_before_producer_is_created() {
    let cap = 4096u64;
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    mem.set_tail(u64::MAX - 15);
    mem.set_head(u64::MAX - 15);
    let mut p = match ring.producer() {
        // Refusing a scribbled starting index is the fix.
        Err(e) => return assert!(matches!(e, RingError::Corrupt(_)), "{e:?}"),
        Ok(x) => x,
    };
    let r = no_panic("try_push with a huge starting tail", || {
        p.try_push(1, 0, 0, &[1, 2, 3])
    });
    assert!(r.is_ok() || is_corrupt(&r), "{r:?}");
}

/// Regression (same root cause): a starting tail more than `cap` ahead of the head (both
/// written by the peer before `producer()`) breaks `tail - cached_head <= cap`, and
/// `free()` (`cap - (tail - cached_head)`) underflows: a panic in debug builds, a huge
/// "free" count in release builds (the producer then overwrites unconsumed frames).
#[test]
fn hostile_tail_far_ahead_before_producer_is_created() {
    let cap = 4096u64;
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    mem.set_tail(10 * cap);
    mem.set_head(0);
    let mut p = match ring.producer() {
        // Refusing a scribbled starting index is the fix.
        Err(e) => return assert!(matches!(e, RingError::Corrupt(_)), "{e:?}"),
        Ok(x) => x,
    };
    let r = no_panic("has_space with tail - head > cap", || p.has_space(16));
    assert!(r == Ok(false) || is_corrupt(&r), "{r:?}");
}

/// Regression (fixed: the head is checked against the published tail): `Producer::refresh_head` checks the consumer's head against the
/// producer's *private* tail (which includes written but unpublished frames) instead of
/// the published one, so a head past the published tail is accepted although the module
/// docs define the invariant on the published tail (`head <= tail`). The producer then
/// reuses the space of its own unpublished frames. Only the hostile consumer's own data
/// suffers; no out-of-bounds access results.
#[test]
fn hostile_head_beyond_published_tail() {
    let cap = 4096u64;
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut p = ring.producer().unwrap();
    fill(&mut p, 100);
    let published = mem.tail();
    assert_eq!(p.try_write(1, 0, 0, &[0u8; 16]), Ok(false));
    // Make room by consuming honestly, then write without publishing.
    let mut c = ring.consumer().unwrap();
    let f = c.peek().unwrap().unwrap();
    c.release(&f);
    // Written, not published: the private tail is published + 32.
    assert_eq!(p.try_write(1, 0, 0, &[0u8; 16]), Ok(true));
    // A head beyond anything the consumer could have seen.
    mem.set_head(published + 32);
    // Not enough cached space for 2000 bytes: the producer re-reads the head.
    let r = p.has_space(2000);
    assert!(
        is_corrupt(&r),
        "head {} > published tail {published}: {r:?}",
        published + 32
    );
}

// ---------------------------------------------------------------------------------------
// 4. Wake-ups
// ---------------------------------------------------------------------------------------

/// Upper bound for a wake-up that must not be lost (the sleep itself is 10 s).
const WAKE_BOUND: Duration = Duration::from_secs(5);

/// Waits up to 10 s for a sleeping flag, so the slow iterations really race a sleeper.
fn wait_for_flag(read: impl Fn() -> u32) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if read() == 1 {
            return true;
        }
        thread::sleep(Duration::from_micros(200));
    }
    false
}

/// A tiny random delay: nothing, a spin, a yield or a short sleep.
fn tiny_delay(rng: &mut u64) {
    let r = splitmix(rng);
    match r % 5 {
        0 => {}
        1 => {
            for _ in 0..(r >> 8) % 20_000 {
                std::hint::spin_loop();
            }
        }
        2 => thread::yield_now(),
        3 => thread::sleep(Duration::from_micros((r >> 8) % 100)),
        _ => thread::sleep(Duration::from_micros((r >> 8) % 400)),
    }
}

#[test]
fn wake_consumer_sleeping_on_empty_ring() {
    let mem = RingMem::new(4096);
    let ring = mem.ring();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let mut rng = 0x5EED_u64;
    let mut saw_sleeper = 0;
    for iter in 0..200u64 {
        let slow = iter < 3;
        let barrier = Barrier::new(2);
        let dog = Watchdog::new(WATCHDOG);
        let mut waited = Duration::ZERO;
        run_pair(
            &dog,
            || {
                barrier.wait();
                let t0 = Instant::now();
                loop {
                    match c.sleep(Duration::from_secs(10)) {
                        Ok(true) => break,
                        // A timeout or a spurious return: sleep again (bounded).
                        Ok(false) => dog.check(|| format!("iteration {iter}: no frame")),
                        Err(e) => panic!("iteration {iter}: sleep: {e}"),
                    }
                }
                waited = t0.elapsed();
                let f = c.peek().unwrap().expect("woken with data");
                assert_eq!(f.corr, iter);
                c.release(&f);
            },
            || {
                barrier.wait();
                if slow {
                    if wait_for_flag(|| mem.consumer_sleeping()) {
                        saw_sleeper += 1;
                    }
                    thread::sleep(Duration::from_millis(50));
                } else {
                    tiny_delay(&mut rng);
                }
                assert_eq!(
                    p.try_push(FRAME_EVENT, 0, iter, &iter.to_le_bytes()),
                    Ok(true)
                );
            },
        );
        assert!(
            waited < WAKE_BOUND,
            "iteration {iter}: lost wake-up: the consumer slept {waited:?} after the push"
        );
        assert_eq!(
            mem.consumer_sleeping(),
            0,
            "iteration {iter}: flag left set"
        );
    }
    assert!(
        saw_sleeper > 0,
        "the consumer never announced that it sleeps"
    );
}

#[test]
fn wake_producer_waiting_for_space() {
    let cap = 4096u64;
    let max = max_payload_for(cap);
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let big = vec![0x5Au8; max];
    // Two maximal frames fill the ring; each iteration frees one and refills it.
    assert_eq!(p.try_push(1, 0, 0, &big), Ok(true));
    assert_eq!(p.try_push(1, 0, 1, &big), Ok(true));
    let mut rng = 0xFEED_u64;
    let mut saw_sleeper = 0;
    for iter in 0..200u64 {
        let slow = iter < 3;
        let barrier = Barrier::new(2);
        let dog = Watchdog::new(WATCHDOG);
        let mut waited = Duration::ZERO;
        run_pair(
            &dog,
            || {
                barrier.wait();
                let t0 = Instant::now();
                loop {
                    match p.sleep_for_space(max as u64, Duration::from_secs(10)) {
                        Ok(true) => break,
                        Ok(false) => dog.check(|| format!("iteration {iter}: no space")),
                        Err(e) => panic!("iteration {iter}: sleep_for_space: {e}"),
                    }
                }
                waited = t0.elapsed();
                assert_eq!(p.try_push(1, 0, iter + 2, &big), Ok(true));
            },
            || {
                barrier.wait();
                if slow {
                    if wait_for_flag(|| mem.producer_sleeping()) {
                        saw_sleeper += 1;
                    }
                    thread::sleep(Duration::from_millis(50));
                } else {
                    tiny_delay(&mut rng);
                }
                let f = c.peek().unwrap().expect("a full ring has a frame");
                assert_eq!(f.corr, iter);
                c.release(&f);
            },
        );
        assert!(
            waited < WAKE_BOUND,
            "iteration {iter}: lost wake-up: the producer slept {waited:?} after the release"
        );
        assert_eq!(
            mem.producer_sleeping(),
            0,
            "iteration {iter}: flag left set"
        );
    }
    assert!(
        saw_sleeper > 0,
        "the producer never announced that it sleeps"
    );
}

/// `wake_consumer` / `wake_producer` end a sleep without any ring activity.
#[test]
fn wake_explicit() {
    let cap = 4096u64;
    let mem = RingMem::new(cap);
    let ring = mem.ring();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let dog = Watchdog::new(WATCHDOG);
    let mut waited = Duration::ZERO;
    let memr = &mem;
    // A copy of the ring pointer for the waking thread (RingPtr is Send, not Sync).
    let waker = ring;
    run_pair(
        &dog,
        || {
            let t0 = Instant::now();
            assert_eq!(c.sleep(Duration::from_secs(10)), Ok(false));
            waited = t0.elapsed();
        },
        move || {
            assert!(wait_for_flag(|| memr.consumer_sleeping()));
            thread::sleep(Duration::from_millis(20));
            waker.wake_consumer();
        },
    );
    assert!(
        waited < WAKE_BOUND,
        "wake_consumer did not wake: {waited:?}"
    );

    fill(&mut p, max_payload_for(cap));
    run_pair(
        &dog,
        || {
            let t0 = Instant::now();
            assert_eq!(p.sleep_for_space(16, Duration::from_secs(10)), Ok(false));
            waited = t0.elapsed();
        },
        move || {
            assert!(wait_for_flag(|| memr.producer_sleeping()));
            thread::sleep(Duration::from_millis(20));
            waker.wake_producer();
        },
    );
    assert!(
        waited < WAKE_BOUND,
        "wake_producer did not wake: {waited:?}"
    );
}
