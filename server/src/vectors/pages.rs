//! Huge pages for the arrays a search walks.
//!
//! A search steps from point to point at random through the graph's vectors (150 MB at
//! 100k x 384) and its layer-0 links: every step is a cache miss, and with 4 KiB pages
//! a TLB miss too (a page-table walk before the load can even start). Linux backs
//! memory with 2 MiB pages where a program asks for them (`MADV_HUGEPAGE`; many
//! distributions, and the machine the benches run on, enable transparent huge pages
//! only on request), which covers those arrays with a few hundred TLB entries.

/// Asks the kernel to back the whole 2 MiB pages of `v`'s allocation (its capacity,
/// not only its length) with huge pages as they are first touched. Advice only: the
/// contents never change, and where huge pages are unavailable nothing happens. Call
/// it after the allocation and before filling it; again after it grows.
pub fn advise_huge<T>(v: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let end = start + v.capacity() * std::mem::size_of::<T>();
        let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if to > from {
            // SAFETY: [from, to) lies inside `v`'s allocation, which this process owns
            // and which stays mapped during the call (`v` is borrowed); MADV_HUGEPAGE
            // only changes how the kernel backs those pages, never what they hold, and
            // fails harmlessly (EINVAL) where transparent huge pages are unavailable.
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The `AnonHugePages` of the mapping that holds `addr`, in KiB.
    fn huge_kib_at(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                    return kib.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[test]
    fn advised_arrays_are_backed_by_huge_pages_where_the_kernel_offers_them() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let offered = mode.contains("[madvise]") || mode.contains("[always]");
        let mut v: Vec<f32> = Vec::with_capacity(16 << 20);
        advise_huge(&v);
        v.resize(v.capacity(), 1.0);
        let huge = huge_kib_at(v.as_ptr() as usize + v.len() * 2).unwrap_or(0);
        if offered {
            assert!(
                huge >= 2048,
                "64 MiB advised and filled, {huge} KiB on huge pages (THP: {mode})"
            );
        } else {
            eprintln!(
                "transparent huge pages are off here ({mode:?}): advice has no effect to check"
            );
        }
        assert!(v.iter().all(|&x| x == 1.0));
    }
}
