//! The lock file that decides which process is *the* server of a name.
//!
//! `flock(LOCK_EX | LOCK_NB)` on `<runtime dir>/<name>/lock`: the kernel drops the lock
//! when its holder dies, `kill -9` included, so a crashed server never blocks the next
//! one, and the socket file left behind is only replaced by whoever holds the lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error(
        "another ringbase server is already running for this name (lock {path} held by pid {pid})"
    )]
    Held {
        /// lock file path
        path: String,
        /// pid written by the holder, if readable
        pid: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot use lock file {path}: {source}")]
    Io {
        /// lock file path
        path: String,
        /// cause
        source: io::Error,
    },
}

impl LockFile {
    /// Takes the lock without waiting and writes our pid into the file.
    pub fn acquire(path: &Path) -> Result<LockFile, LockError> {
        let io_err = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        // SAFETY: flock on a valid descriptor; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = std::fs::read_to_string(path).unwrap_or_default();
                return Err(LockError::Held {
                    path: path.display().to_string(),
                    pid: pid.trim().to_string(),
                });
            }
            return Err(io_err(e));
        }
        file.set_len(0).map_err(io_err)?;
        write!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(LockFile { _file: file })
    }

    /// Whether some live process holds the lock at `path` right now.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = OpenOptions::new().read(true).open(path) else {
            return false;
        };
        // SAFETY: flock on a valid descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0
    }
}
