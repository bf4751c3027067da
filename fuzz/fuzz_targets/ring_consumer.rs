//! A hostile producer: the whole ring (control block and data) is attacker-chosen, and
//! the tail moves as the input says. The consumer must report `Corrupt` or hand out
//! frames that lie inside the published data — never read out of bounds (ASan checks)
//! or panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbase_protocol::layout::RING_CTL_SIZE;
use ringbase_protocol::ring::RingPtr;

const CAP: usize = 4096;

#[repr(C, align(64))]
struct Mem([u8; RING_CTL_SIZE as usize + CAP]);

fuzz_target!(|data: &[u8]| {
    let mut mem = Box::new(Mem([0u8; RING_CTL_SIZE as usize + CAP]));
    let n = data.len().min(mem.0.len());
    mem.0[..n].copy_from_slice(&data[..n]);
    let base = mem.0.as_mut_ptr();
    // SAFETY: `base` is 64-aligned (Mem's alignment) and valid for RING_CTL_SIZE + CAP
    // bytes for the whole closure; only this thread touches it.
    let ring = unsafe { RingPtr::new(base, CAP as u64) };
    let Ok(mut c) = ring.consumer() else { return };
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    // Extra input past the ring image drives later tail values.
    let mut moves = data.get(n..).unwrap_or(&[]).chunks_exact(8);
    for _ in 0..64 {
        match c.peek() {
            Err(_) => return,
            Ok(None) => {
                let Some(m) = moves.next() else { return };
                let tail = u64::from_le_bytes(m.try_into().unwrap());
                // SAFETY: the tail word is the first u64 of the control block, inside
                // the buffer; written from this thread only.
                unsafe { std::ptr::write_volatile(base as *mut u64, tail) };
            }
            Ok(Some(f)) => {
                assert!(f.len as u64 <= ring.max_payload());
                c.copy_payload(&f, &mut buf);
                assert_eq!(buf.len(), f.len as usize);
                c.release(&f);
            }
        }
    }
});
