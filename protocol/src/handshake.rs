//! The handshake exchanged over the control socket, and segment fd passing.
//!
//! Both messages are fixed-layout little-endian records, so that a peer of another
//! protocol version can still read the version field and answer with a clear error.
//!
//! ```text
//! Hello (client -> server), HELLO_SIZE = 64 bytes
//! 0   8  magic = b"RBHELLO\0"
//! 8   4  protocol version
//! 12  4  client pid
//! 16  8  wanted request ring size   (0 = default)
//! 24  8  wanted response ring size  (0 = default)
//! 32  8  wanted event ring size     (0 = default)
//! 40  4  wait mode (0 = adaptive spin then futex sleep, 1 = busy-poll)
//! 44  20 reserved (0)
//!
//! Welcome (server -> client), WELCOME_SIZE = 80 bytes, then `msg_len` bytes of UTF-8
//! 0   8  magic = b"RBWELCOM"
//! 8   4  protocol version of the server
//! 12  4  status (WelcomeStatus; 0 = ok)
//! 16  8  session id
//! 24  8  segment size
//! 32  8  request ring size
//! 40  8  response ring size
//! 48  8  event ring size
//! 56  8  max frame payload
//! 64  4  msg_len (at most MAX_MESSAGE)
//! 68  12 reserved (0)
//! ```
//!
//! With status 0 the welcome carries the session's segment as one file descriptor
//! (`SCM_RIGHTS`): a sealed memfd that exists in no file system, so no third process can
//! open it and it disappears when both sides have closed it, whatever the way they die.

use thiserror::Error;

use crate::layout::RingSizes;

/// Hello magic.
pub const HELLO_MAGIC: [u8; 8] = *b"RBHELLO\0";
/// Welcome magic.
pub const WELCOME_MAGIC: [u8; 8] = *b"RBWELCOM";
/// Hello size in bytes.
pub const HELLO_SIZE: usize = 64;
/// Welcome header size in bytes (the message follows).
pub const WELCOME_SIZE: usize = 80;
/// Longest welcome message.
pub const MAX_MESSAGE: usize = 4096;

/// How the client wants to wait for responses (the server waits for requests the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// Spin for a short adaptive time, then sleep on the futex (default).
    #[default]
    Adaptive,
    /// Never sleep: lowest latency, costs a core per waiting side.
    BusyPoll,
}

/// What a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub protocol: u32,
    /// Client process id (informational; the server checks the socket's credentials).
    pub pid: u32,
    /// Wanted ring sizes (0 = default); the server clamps them to its bounds.
    pub rings: RingSizes,
    /// Wait mode.
    pub wait: WaitMode,
}

/// Outcome of a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WelcomeStatus {
    /// Session created; the segment fd comes with the welcome.
    Ok = 0,
    /// Client and server speak different protocol versions.
    VersionMismatch = 1,
    /// The server has reached its session limit.
    TooManySessions = 2,
    /// The peer's credentials are not allowed.
    PermissionDenied = 3,
    /// The hello was malformed.
    BadHello = 4,
    /// The server is shutting down.
    ShuttingDown = 5,
    /// The server failed to set the session up.
    Internal = 6,
}

impl WelcomeStatus {
    fn from_u32(v: u32) -> Option<WelcomeStatus> {
        use WelcomeStatus::*;
        Some(match v {
            0 => Ok,
            1 => VersionMismatch,
            2 => TooManySessions,
            3 => PermissionDenied,
            4 => BadHello,
            5 => ShuttingDown,
            6 => Internal,
            _ => return None,
        })
    }
}

/// The server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the server speaks.
    pub protocol: u32,
    /// Outcome.
    pub status: WelcomeStatus,
    /// Session id (0 unless ok).
    pub session_id: u64,
    /// Size of the segment mapping.
    pub segment_size: u64,
    /// Negotiated ring sizes.
    pub rings: RingSizes,
    /// Largest frame payload.
    pub max_payload: u64,
    /// Human-readable detail (empty when ok).
    pub message: String,
}

/// A handshake record that cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Wrong magic: the peer is not a Ringbase peer.
    #[error("not a Ringbase peer (bad magic)")]
    BadMagic,
    /// Too few bytes.
    #[error("truncated handshake record ({0} bytes)")]
    Truncated(usize),
    /// A field with an invalid value.
    #[error("invalid handshake field: {0}")]
    Invalid(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> [u8; HELLO_SIZE] {
        let mut b = [0u8; HELLO_SIZE];
        b[0..8].copy_from_slice(&HELLO_MAGIC);
        b[8..12].copy_from_slice(&self.protocol.to_le_bytes());
        b[12..16].copy_from_slice(&self.pid.to_le_bytes());
        b[16..24].copy_from_slice(&self.rings.request.to_le_bytes());
        b[24..32].copy_from_slice(&self.rings.response.to_le_bytes());
        b[32..40].copy_from_slice(&self.rings.event.to_le_bytes());
        let wait: u32 = match self.wait {
            WaitMode::Adaptive => 0,
            WaitMode::BusyPoll => 1,
        };
        b[40..44].copy_from_slice(&wait.to_le_bytes());
        b
    }

    /// Reads the protocol version alone (bytes 8..12), after checking the magic; works
    /// for any version's hello.
    pub fn peek_version(b: &[u8]) -> Result<u32, HandshakeError> {
        if b.len() < 12 {
            return Err(HandshakeError::Truncated(b.len()));
        }
        if b[0..8] != HELLO_MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        Ok(u32_at(b, 8))
    }

    /// Decodes a hello.
    pub fn decode(b: &[u8]) -> Result<Hello, HandshakeError> {
        let protocol = Hello::peek_version(b)?;
        if b.len() < HELLO_SIZE {
            return Err(HandshakeError::Truncated(b.len()));
        }
        let wait = match u32_at(b, 40) {
            0 => WaitMode::Adaptive,
            1 => WaitMode::BusyPoll,
            _ => return Err(HandshakeError::Invalid("wait mode")),
        };
        Ok(Hello {
            protocol,
            pid: u32_at(b, 12),
            rings: RingSizes {
                request: u64_at(b, 16),
                response: u64_at(b, 24),
                event: u64_at(b, 32),
            },
            wait,
        })
    }
}

impl Welcome {
    /// A refusal with a message.
    pub fn refuse(status: WelcomeStatus, message: impl Into<String>) -> Welcome {
        Welcome {
            protocol: crate::PROTOCOL_VERSION,
            status,
            session_id: 0,
            segment_size: 0,
            rings: RingSizes {
                request: 0,
                response: 0,
                event: 0,
            },
            max_payload: 0,
            message: message.into(),
        }
    }

    /// Encodes header and message (the message is cut to `MAX_MESSAGE` bytes on a
    /// character boundary).
    pub fn encode(&self) -> Vec<u8> {
        let mut msg = self.message.as_str();
        if msg.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg = &msg[..end];
        }
        let mut b = vec![0u8; WELCOME_SIZE];
        b[0..8].copy_from_slice(&WELCOME_MAGIC);
        b[8..12].copy_from_slice(&self.protocol.to_le_bytes());
        b[12..16].copy_from_slice(&(self.status as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.session_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.segment_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.rings.request.to_le_bytes());
        b[40..48].copy_from_slice(&self.rings.response.to_le_bytes());
        b[48..56].copy_from_slice(&self.rings.event.to_le_bytes());
        b[56..64].copy_from_slice(&self.max_payload.to_le_bytes());
        b[64..68].copy_from_slice(&(msg.len() as u32).to_le_bytes());
        b.extend_from_slice(msg.as_bytes());
        b
    }

    /// Length of the message that follows a welcome header.
    pub fn message_len(header: &[u8]) -> Result<usize, HandshakeError> {
        if header.len() < WELCOME_SIZE {
            return Err(HandshakeError::Truncated(header.len()));
        }
        if header[0..8] != WELCOME_MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let n = u32_at(header, 64) as usize;
        if n > MAX_MESSAGE {
            return Err(HandshakeError::Invalid("message length"));
        }
        Ok(n)
    }

    /// Decodes a header plus its message.
    pub fn decode(b: &[u8]) -> Result<Welcome, HandshakeError> {
        let n = Welcome::message_len(b)?;
        if b.len() < WELCOME_SIZE + n {
            return Err(HandshakeError::Truncated(b.len()));
        }
        let status =
            WelcomeStatus::from_u32(u32_at(b, 12)).ok_or(HandshakeError::Invalid("status"))?;
        Ok(Welcome {
            protocol: u32_at(b, 8),
            status,
            session_id: u64_at(b, 16),
            segment_size: u64_at(b, 24),
            rings: RingSizes {
                request: u64_at(b, 32),
                response: u64_at(b, 40),
                event: u64_at(b, 48),
            },
            max_payload: u64_at(b, 56),
            message: String::from_utf8_lossy(&b[WELCOME_SIZE..WELCOME_SIZE + n]).into_owned(),
        })
    }
}

/// Sends `bytes` on a Unix stream socket, with `fd` attached as `SCM_RIGHTS` if given.
#[cfg(unix)]
pub fn send_with_fd(
    sock: std::os::fd::BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut sent = 0usize;
    let mut fd = fd;
    while sent < bytes.len() {
        let mut iov = libc::iovec {
            iov_base: bytes[sent..].as_ptr() as *mut libc::c_void,
            iov_len: bytes.len() - sent,
        };
        // Room for one cmsg carrying one int, 8-aligned.
        let mut cbuf = [0u64; 4];
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(f) = fd.take() {
            // SAFETY: CMSG_SPACE/LEN are pure arithmetic.
            let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) };
            msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `cbuf` (32 bytes >= CMSG_SPACE(4)), so
            // CMSG_FIRSTHDR returns a valid pointer into it, and CMSG_DATA points inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, f.as_raw_fd());
            }
        }
        // SAFETY: msg points at live iovec/control buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes from a Unix stream socket, collecting at most one
/// passed file descriptor (extra descriptors are closed). Fails with `UnexpectedEof` if
/// the peer closes first.
#[cfg(unix)]
pub fn recv_with_fd(
    sock: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut got = 0usize;
    let mut out: Option<OwnedFd> = None;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len() - got,
        };
        let mut cbuf = [0u64; 16];
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: msg points at live buffers; MSG_CMSG_CLOEXEC makes received fds CLOEXEC.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: recvmsg filled msg_control with msg_controllen bytes of cmsgs; the
        // CMSG_* macros walk exactly that buffer. Every fd received is owned by us now and
        // is wrapped in OwnedFd at once, so none leaks.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const libc::c_int;
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<libc::c_int>();
                    for i in 0..count {
                        let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                        if out.is_none() {
                            out = Some(fd);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_roundtrip() {
        let h = Hello {
            protocol: 7,
            pid: 99,
            rings: RingSizes {
                request: 1,
                response: 2,
                event: 3,
            },
            wait: WaitMode::BusyPoll,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        assert_eq!(Hello::peek_version(&h.encode()[..12]), Ok(7));
        assert_eq!(Hello::decode(&[0u8; 64]), Err(HandshakeError::BadMagic));
        assert_eq!(
            Hello::decode(&h.encode()[..20]),
            Err(HandshakeError::Truncated(20))
        );
    }

    #[test]
    fn welcome_roundtrip() {
        let mut w = Welcome::refuse(WelcomeStatus::VersionMismatch, "é".repeat(3000));
        let b = w.encode();
        let d = Welcome::decode(&b).unwrap();
        assert!(d.message.len() <= MAX_MESSAGE);
        w.message = d.message.clone();
        assert_eq!(d, w);
    }
}
