//! Client errors.

use ringbase_protocol::handshake::WelcomeStatus;
use ringbase_protocol::message::ErrorCode;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server is gone (crashed, killed or shut down) or closed this session. The
    /// client must reconnect; requests in flight may or may not have been applied.
    #[error("disconnected from the ringbase server")]
    Disconnected,
    /// The server did not answer within the call timeout
    /// ([`crate::ConnectOptions::call_timeout`]). The session is over (its response may
    /// still arrive); reconnect.
    #[error("the server did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// No server is listening for this name.
    #[error("no ringbase server is running at {path}: {source}")]
    NotRunning {
        /// control socket path tried
        path: String,
        /// the connect error
        source: std::io::Error,
    },
    /// Client and server speak different protocol versions.
    #[error("protocol mismatch: this client speaks version {client}, the server speaks {server}: {message}")]
    ProtocolMismatch {
        /// our version
        client: u32,
        /// the server's
        server: u32,
        /// the server's explanation
        message: String,
    },
    /// The server refused the session (limit reached, permission, shutting down …).
    #[error("the server refused the session ({status:?}): {message}")]
    Refused {
        /// why
        status: WelcomeStatus,
        /// the server's explanation
        message: String,
    },
    /// A request (or a key or value in it) over the size the session allows.
    #[error("{what} of {len} bytes is too large (maximum {max})")]
    TooLarge {
        /// what was too large
        what: &'static str,
        /// its size
        len: u64,
        /// the limit
        max: u64,
    },
    /// The server answered the request with an error; nothing was changed.
    #[error("{message}")]
    Server {
        /// the error code (`None` if this client does not know the server's code)
        code: Option<ErrorCode>,
        /// the raw code
        raw_code: u32,
        /// the server's explanation
        message: String,
    },
    /// The server sent something this client cannot read (a bug, or memory corruption).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// An invalid argument (a bad server name, …).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An I/O error while connecting.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn server(code: u32, message: &str) -> Error {
        Error::Server {
            code: ErrorCode::from_u32(code),
            raw_code: code,
            message: message.to_string(),
        }
    }
}

/// Client result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
