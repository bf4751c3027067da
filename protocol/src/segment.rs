//! A session's shared-memory segment: created by the server as a sealed memfd, mapped by
//! both sides, and split into its three rings.
//!
//! The segment exists in no file system: it is reachable only through the descriptor the
//! server passes to the client over the control socket. It is sealed against shrinking
//! and growing before it is handed over, so a hostile client cannot truncate it under the
//! server (which would turn the server's next access into SIGBUS).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::MmapRaw;

use crate::layout::{self, Geometry, LayoutError, RingSizes};
use crate::ring::RingPtr;

/// A mapped session segment.
#[derive(Debug)]
pub struct Segment {
    map: MmapRaw,
    geo: Geometry,
    session_id: u64,
    file: File,
}

/// Errors opening a segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A system call failed.
    #[error("segment: {0}")]
    Io(#[from] io::Error),
    /// The header does not describe a usable segment.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The header disagrees with the handshake.
    #[error("segment does not match the handshake: {0}")]
    Mismatch(&'static str),
}

impl Segment {
    /// Creates, sizes, seals (Linux) and maps a new segment, writes its header and
    /// initialises the rings. Returns the segment; its descriptor is [`Segment::fd`].
    pub fn create(sizes: RingSizes, session_id: u64) -> Result<Segment, SegmentError> {
        let geo = Geometry::new(sizes.negotiate());
        let file = create_anonymous_file()?;
        file.set_len(geo.segment_size)?;
        seal(&file)?;
        let map = MmapRaw::map_raw(&file)?;
        if (map.len() as u64) < geo.segment_size {
            return Err(SegmentError::Mismatch("mapping shorter than the segment"));
        }
        // SAFETY: the mapping is at least segment_size >= HEADER_SIZE bytes long, freshly
        // created and not yet shared with anyone, so we hold the only reference.
        let hdr = unsafe {
            std::slice::from_raw_parts_mut(map.as_mut_ptr(), layout::HEADER_SIZE as usize)
        };
        layout::write_header(hdr, &geo, session_id);
        prefault(&map);
        let seg = Segment {
            map,
            geo,
            session_id,
            file,
        };
        seg.request_ring().init();
        seg.response_ring().init();
        seg.event_ring().init();
        Ok(seg)
    }

    /// Maps a segment received from the server and checks its header against what the
    /// handshake announced.
    pub fn open(
        fd: OwnedFd,
        expect_size: u64,
        expect_sizes: RingSizes,
        expect_session: u64,
    ) -> Result<Segment, SegmentError> {
        let file = File::from(fd);
        let len = file.metadata()?.len();
        if len != expect_size {
            return Err(SegmentError::Mismatch("segment size"));
        }
        let map = MmapRaw::map_raw(&file)?;
        // SAFETY: the mapping is `len` bytes long and `len >= HEADER_SIZE` is checked by
        // read_header before it reads; we read a private copy of the header.
        let hdr_len = (layout::HEADER_SIZE as usize).min(map.len());
        let mut hdr = vec![0u8; hdr_len];
        // SAFETY: the first hdr_len bytes are mapped.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), hdr.as_mut_ptr(), hdr_len) };
        let (geo, session_id) = layout::read_header(&hdr, map.len() as u64)?;
        if geo.sizes != expect_sizes {
            return Err(SegmentError::Mismatch("ring sizes"));
        }
        if session_id != expect_session {
            return Err(SegmentError::Mismatch("session id"));
        }
        prefault(&map);
        Ok(Segment {
            map,
            geo,
            session_id,
            file,
        })
    }

    /// The segment's descriptor, to pass to the client.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Derived geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Session id written in the header.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    fn ring(&self, off: u64, cap: u64) -> RingPtr {
        debug_assert!(off + layout::RING_CTL_SIZE + cap <= self.map.len() as u64);
        // SAFETY: `off` is 64-aligned (HEADER_SIZE, RING_CTL_SIZE and capacities are
        // multiples of 64; the mapping is page aligned) and off + 256 + cap lies inside the
        // mapping (checked when the geometry was derived or read). The RingPtr must not
        // outlive `self`: Session types keep the Segment alive next to their rings.
        unsafe { RingPtr::new(self.map.as_mut_ptr().add(off as usize), cap) }
    }

    /// The request ring (client produces, server consumes).
    pub fn request_ring(&self) -> RingPtr {
        self.ring(self.geo.req_off, self.geo.sizes.request)
    }

    /// The response ring (server produces, client consumes).
    pub fn response_ring(&self) -> RingPtr {
        self.ring(self.geo.resp_off, self.geo.sizes.response)
    }

    /// The event ring (server produces, client consumes).
    pub fn event_ring(&self) -> RingPtr {
        self.ring(self.geo.evt_off, self.geo.sizes.event)
    }
}

/// Faults the whole mapping in now (Linux 5.14+), so that the first pass of each ring
/// does not take a page fault every 4 KiB on the hot path. A session's rings then hold
/// their full size in RAM from the start: predictable beats lazy here. Best effort:
/// older kernels just fault lazily.
fn prefault(map: &MmapRaw) {
    #[cfg(target_os = "linux")]
    // SAFETY: madvise on exactly the range of a live mapping we own; POPULATE_WRITE only
    // allocates and maps pages, it does not change their (zero or existing) contents.
    unsafe {
        libc::madvise(
            map.as_mut_ptr() as *mut libc::c_void,
            map.len(),
            libc::MADV_POPULATE_WRITE,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

#[cfg(target_os = "linux")]
fn create_anonymous_file() -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a valid NUL-terminated string; memfd_create returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"ringbase-session".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    // Only the owner may use it (memfd inodes start as 0777).
    // SAFETY: fd is valid for the call.
    if unsafe { libc::fchmod(fd, 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(target_os = "linux")]
fn seal(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a valid fd with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn create_anonymous_file() -> io::Result<File> {
    // Portable fallback: a 0600 file created and unlinked at once in the runtime dir.
    use std::os::unix::fs::OpenOptionsExt;
    let dir = crate::paths::runtime_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("seg-{}-{}", std::process::id(), rand_suffix()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(all(unix, not(target_os = "linux")))]
fn seal(_file: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_open() {
        let s = Segment::create(RingSizes::default(), 9).unwrap();
        let fd = s.fd().try_clone_to_owned().unwrap();
        let g = *s.geometry();
        let c = Segment::open(fd, g.segment_size, g.sizes, 9).unwrap();
        let mut p = s.request_ring().producer().unwrap();
        assert!(p.try_push(1, 0, 5, b"hello").unwrap());
        let mut q = c.request_ring().consumer().unwrap();
        let f = q.peek().unwrap().unwrap();
        assert_eq!(f.corr, 5);
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        q.copy_payload(&f, &mut buf);
        assert_eq!(&buf[..], b"hello");
        let fd = s.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            Segment::open(fd, g.segment_size, g.sizes, 8),
            Err(SegmentError::Mismatch(_))
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sealed_against_truncation() {
        let s = Segment::create(RingSizes::default(), 1).unwrap();
        let f = File::from(s.fd().try_clone_to_owned().unwrap());
        assert!(
            f.set_len(100).is_err(),
            "a client must not be able to shrink the segment"
        );
    }
}
