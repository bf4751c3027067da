//! The shared-memory segment of one session.
//!
//! All fields are fixed-width little-endian integers (the segment is only ever shared
//! between processes of one machine, but the layout is written so that it never depends
//! on `usize` or on the host's endianness conventions). Offsets are derived from the
//! previous field, never guessed.
//!
//! ```text
//! segment
//! offset              size   field
//! 0                   8      magic            = b"RINGBSEG" (u64 LE 0x4745_5353_4247_4e49_52 bytes)
//! 8                   4      layout_version   = LAYOUT_VERSION
//! 12                  4      reserved (0)
//! 16                  8      segment_size     = total bytes of the mapping
//! 24                  8      session_id
//! 32                  8      req_off          = HEADER_SIZE
//! 40                  8      req_cap          (power of two)
//! 48                  8      resp_off         = req_off + RING_CTL_SIZE + req_cap
//! 56                  8      resp_cap
//! 64                  8      evt_off          = resp_off + RING_CTL_SIZE + resp_cap
//! 72                  8      evt_cap
//! 80                  8      max_payload      = largest frame payload either side may send
//! 88 .. 256                  reserved (0)
//! req_off             256    request ring control block  (client -> server)
//! req_off + 256       req_cap   request ring data
//! resp_off            256    response ring control block (server -> client)
//! resp_off + 256      resp_cap  response ring data
//! evt_off             256    event ring control block    (server -> client)
//! evt_off + 256       evt_cap   event ring data
//! segment_size        = evt_off + RING_CTL_SIZE + evt_cap
//!
//! ring control block (see `ring.rs`), one 64-byte cache line per writer:
//! 0     8   tail   — written only by the producer: bytes ever published
//! 8     4   producer_cpu — written only by the producer: the CPU it last announced + 1
//!           (0 = none; a hint for the waiter, see "Sharing a CPU" in `ring.rs`)
//! 64    8   head   — written only by the consumer: bytes ever consumed
//! 128   4   consumer_sleeping futex word (1 = consumer announced it sleeps)
//! 192   4   producer_sleeping futex word (1 = producer waits for space)
//! ```
//!
//! The server writes the header once, before handing the segment over; the client checks
//! every field against the handshake before it uses the segment.

use thiserror::Error;

/// `b"RINGBSEG"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RINGBSEG");
/// Version of this byte layout.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the segment header.
pub const HEADER_SIZE: u64 = 256;
/// Size of a ring's control block.
pub const RING_CTL_SIZE: u64 = 256;
/// Smallest ring capacity accepted.
pub const MIN_RING: u64 = 4 * 1024;
/// Largest ring capacity accepted.
pub const MAX_RING: u64 = 256 * 1024 * 1024;
/// Default request and response ring capacity.
pub const DEFAULT_RING: u64 = 2 * 1024 * 1024;
/// Default event ring capacity.
pub const DEFAULT_EVENT_RING: u64 = 256 * 1024;

/// Byte offsets of the header fields.
pub mod off {
    /// magic, u64
    pub const MAGIC: usize = 0;
    /// layout version, u32
    pub const VERSION: usize = MAGIC + 8;
    /// reserved, u32
    pub const RESERVED0: usize = VERSION + 4;
    /// segment size, u64
    pub const SEGMENT_SIZE: usize = RESERVED0 + 4;
    /// session id, u64
    pub const SESSION_ID: usize = SEGMENT_SIZE + 8;
    /// request ring offset, u64
    pub const REQ_OFF: usize = SESSION_ID + 8;
    /// request ring capacity, u64
    pub const REQ_CAP: usize = REQ_OFF + 8;
    /// response ring offset, u64
    pub const RESP_OFF: usize = REQ_CAP + 8;
    /// response ring capacity, u64
    pub const RESP_CAP: usize = RESP_OFF + 8;
    /// event ring offset, u64
    pub const EVT_OFF: usize = RESP_CAP + 8;
    /// event ring capacity, u64
    pub const EVT_CAP: usize = EVT_OFF + 8;
    /// max payload, u64
    pub const MAX_PAYLOAD: usize = EVT_CAP + 8;
    /// first byte after the defined fields
    pub const END: usize = MAX_PAYLOAD + 8;
}

const _: () = assert!(off::END as u64 <= HEADER_SIZE);

/// Sizes of the three rings of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSizes {
    /// Request ring (client to server) capacity in bytes.
    pub request: u64,
    /// Response ring (server to client) capacity in bytes.
    pub response: u64,
    /// Event ring (server to client) capacity in bytes.
    pub event: u64,
}

impl Default for RingSizes {
    fn default() -> Self {
        RingSizes {
            request: DEFAULT_RING,
            response: DEFAULT_RING,
            event: DEFAULT_EVENT_RING,
        }
    }
}

impl RingSizes {
    /// Rounds each size up to a power of two and clamps it to `MIN_RING ..= MAX_RING`.
    /// A zero asks for the default.
    pub fn negotiate(self) -> RingSizes {
        fn fix(v: u64, default: u64) -> u64 {
            let v = if v == 0 { default } else { v };
            v.clamp(MIN_RING, MAX_RING)
                .next_power_of_two()
                .min(MAX_RING)
        }
        RingSizes {
            request: fix(self.request, DEFAULT_RING),
            response: fix(self.response, DEFAULT_RING),
            event: fix(self.event, DEFAULT_EVENT_RING),
        }
    }
}

/// The derived geometry of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Ring capacities.
    pub sizes: RingSizes,
    /// Offset of the request ring's control block.
    pub req_off: u64,
    /// Offset of the response ring's control block.
    pub resp_off: u64,
    /// Offset of the event ring's control block.
    pub evt_off: u64,
    /// Total mapping size.
    pub segment_size: u64,
    /// Largest frame payload: half of the smallest data ring, less one frame header,
    /// so that a frame always fits after at most one padding frame.
    pub max_payload: u64,
}

impl Geometry {
    /// Derives the geometry for already-negotiated sizes.
    pub fn new(sizes: RingSizes) -> Geometry {
        let req_off = HEADER_SIZE;
        let resp_off = req_off + RING_CTL_SIZE + sizes.request;
        let evt_off = resp_off + RING_CTL_SIZE + sizes.response;
        let segment_size = evt_off + RING_CTL_SIZE + sizes.event;
        let max_payload = sizes.request.min(sizes.response) / 2 - crate::ring::FRAME_HEADER as u64;
        Geometry {
            sizes,
            req_off,
            resp_off,
            evt_off,
            segment_size,
            max_payload,
        }
    }
}

/// A segment header that does not describe a usable segment.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// The mapping is smaller than the header or than the size it claims.
    #[error("segment too small: {0} bytes")]
    TooSmall(u64),
    /// The magic is not `RINGBSEG`.
    #[error("bad segment magic {0:#x}")]
    BadMagic(u64),
    /// A layout this build does not understand.
    #[error("segment layout version {found}, this build speaks {expected}")]
    Version {
        /// version found in the segment
        found: u32,
        /// version this build speaks
        expected: u32,
    },
    /// Sizes or offsets that do not match the derived geometry.
    #[error("segment geometry mismatch: {0}")]
    Geometry(&'static str),
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Writes the header for `geo` into the first `HEADER_SIZE` bytes of `hdr`.
pub fn write_header(hdr: &mut [u8], geo: &Geometry, session_id: u64) {
    assert!(hdr.len() >= HEADER_SIZE as usize);
    hdr[..HEADER_SIZE as usize].fill(0);
    hdr[off::MAGIC..off::MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
    hdr[off::VERSION..off::VERSION + 4].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    let fields = [
        (off::SEGMENT_SIZE, geo.segment_size),
        (off::SESSION_ID, session_id),
        (off::REQ_OFF, geo.req_off),
        (off::REQ_CAP, geo.sizes.request),
        (off::RESP_OFF, geo.resp_off),
        (off::RESP_CAP, geo.sizes.response),
        (off::EVT_OFF, geo.evt_off),
        (off::EVT_CAP, geo.sizes.event),
        (off::MAX_PAYLOAD, geo.max_payload),
    ];
    for (at, v) in fields {
        hdr[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// Reads and checks a header: magic first, then version, then that every size and
/// offset is exactly what [`Geometry::new`] derives and fits in `mapping_len`.
/// Returns the geometry and the session id.
pub fn read_header(hdr: &[u8], mapping_len: u64) -> Result<(Geometry, u64), LayoutError> {
    if (hdr.len() as u64) < HEADER_SIZE || mapping_len < HEADER_SIZE {
        return Err(LayoutError::TooSmall(mapping_len));
    }
    let magic = get_u64(hdr, off::MAGIC);
    if magic != MAGIC {
        return Err(LayoutError::BadMagic(magic));
    }
    let version = get_u32(hdr, off::VERSION);
    if version != LAYOUT_VERSION {
        return Err(LayoutError::Version {
            found: version,
            expected: LAYOUT_VERSION,
        });
    }
    let sizes = RingSizes {
        request: get_u64(hdr, off::REQ_CAP),
        response: get_u64(hdr, off::RESP_CAP),
        event: get_u64(hdr, off::EVT_CAP),
    };
    for s in [sizes.request, sizes.response, sizes.event] {
        if !s.is_power_of_two() || !(MIN_RING..=MAX_RING).contains(&s) {
            return Err(LayoutError::Geometry("ring capacity out of bounds"));
        }
    }
    let geo = Geometry::new(sizes);
    let found = (
        get_u64(hdr, off::REQ_OFF),
        get_u64(hdr, off::RESP_OFF),
        get_u64(hdr, off::EVT_OFF),
        get_u64(hdr, off::SEGMENT_SIZE),
        get_u64(hdr, off::MAX_PAYLOAD),
    );
    if found
        != (
            geo.req_off,
            geo.resp_off,
            geo.evt_off,
            geo.segment_size,
            geo.max_payload,
        )
    {
        return Err(LayoutError::Geometry("offsets do not match the ring sizes"));
    }
    if geo.segment_size > mapping_len {
        return Err(LayoutError::TooSmall(mapping_len));
    }
    Ok((geo, get_u64(hdr, off::SESSION_ID)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_rejections() {
        let geo = Geometry::new(RingSizes::default().negotiate());
        let mut h = vec![0u8; HEADER_SIZE as usize];
        write_header(&mut h, &geo, 42);
        assert_eq!(read_header(&h, geo.segment_size), Ok((geo, 42)));
        assert_eq!(
            read_header(&h, geo.segment_size - 1),
            Err(LayoutError::TooSmall(geo.segment_size - 1))
        );
        let mut bad = h.clone();
        bad[0] ^= 1;
        assert!(matches!(
            read_header(&bad, geo.segment_size),
            Err(LayoutError::BadMagic(_))
        ));
        let mut bad = h.clone();
        bad[off::VERSION] = 9;
        assert!(matches!(
            read_header(&bad, geo.segment_size),
            Err(LayoutError::Version { .. })
        ));
        let mut bad = h.clone();
        bad[off::RESP_OFF] ^= 0x10;
        assert!(matches!(
            read_header(&bad, geo.segment_size),
            Err(LayoutError::Geometry(_))
        ));
    }

    #[test]
    fn negotiate_bounds() {
        let s = RingSizes {
            request: 1,
            response: 5000,
            event: u64::MAX,
        }
        .negotiate();
        assert_eq!(s.request, MIN_RING);
        assert_eq!(s.response, 8192);
        assert_eq!(s.event, MAX_RING);
        assert_eq!(
            RingSizes {
                request: 0,
                response: 0,
                event: 0
            }
            .negotiate(),
            RingSizes::default()
        );
    }
}
