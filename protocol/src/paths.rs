//! Where a server named `NAME` lives on this machine.
//!
//! ```text
//! <runtime dir>/<NAME>/ctl.sock   the control socket (handshake, liveness)
//! <runtime dir>/<NAME>/lock       the lock file: whoever holds its flock is the server
//! ```
//!
//! The runtime dir is `$RINGBASE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/ringbase`, else
//! `/tmp/ringbase-<uid>`. It and the per-name directory are created with mode 0700.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// The name used when none is given.
pub const DEFAULT_NAME: &str = "default";

/// A server name that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid server name {0:?}: use 1-64 characters from [A-Za-z0-9._-], not starting with '.'"
)]
pub struct InvalidName(pub String);

/// Checks a server name: 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with `.`
/// (so it is always one plain path component).
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName(name.to_string()))
    }
}

/// The runtime dir from the environment (see the module docs). Not created.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RINGBASE_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ringbase");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/ringbase-{uid}"))
}

/// Paths of one named server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPaths {
    /// `<runtime dir>/<name>`
    pub dir: PathBuf,
    /// `<dir>/ctl.sock`
    pub socket: PathBuf,
    /// `<dir>/lock`
    pub lock: PathBuf,
}

impl ServerPaths {
    /// Paths for `name` under `runtime_dir`.
    pub fn new(runtime_dir: &Path, name: &str) -> Result<ServerPaths, InvalidName> {
        validate_name(name)?;
        let dir = runtime_dir.join(name);
        Ok(ServerPaths {
            socket: dir.join("ctl.sock"),
            lock: dir.join("lock"),
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "a", "game-1.test_x"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let p = ServerPaths::new(Path::new("/r"), "n").unwrap();
        assert_eq!(p.socket, Path::new("/r/n/ctl.sock"));
        assert_eq!(p.lock, Path::new("/r/n/lock"));
    }
}
