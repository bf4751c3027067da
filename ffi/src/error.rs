//! Status codes, the mapping from client and server errors, the last-error messages
//! and the panic guard that every exported function runs in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ::ringbase_client::{Error, ErrorCode};

/// Success.
pub const RINGBASE_OK: c_int = 0;
/// An argument is invalid: a NULL pointer where one is required, a `kind` that is
/// neither `RINGBASE_JSON` nor `RINGBASE_BYTES`, a server name that is not allowed, a
/// handle whose client was closed, or a handle used by two threads at once.
pub const RINGBASE_E_INVALID: c_int = -30800;
/// The key has no live record (get, delete), or a list iterator is at its end.
pub const RINGBASE_E_NOT_FOUND: c_int = -30801;
/// The server is gone (crashed, killed or stopped) or closed the session. The client
/// stays unusable: close it and connect again. A write in flight may or may not have
/// been applied.
pub const RINGBASE_E_DISCONNECTED: c_int = -30802;
/// No server is running under this name (connect), or none became ready in time
/// (connect_or_spawn).
pub const RINGBASE_E_NOT_RUNNING: c_int = -30803;
/// The server speaks another protocol version than this library: upgrade one of them.
pub const RINGBASE_E_PROTOCOL: c_int = -30804;
/// The server refused the session (session limit, permission, shutting down, setup
/// failure); `ringbase_last_error` says why.
pub const RINGBASE_E_REFUSED: c_int = -30805;
/// A key over `RINGBASE_MAX_KEY_LEN` bytes, or a value or request over what the
/// session's rings carry (see `ringbase_max_value_len`), or a record too large for
/// this session's response ring. Nothing was changed.
pub const RINGBASE_E_TOO_LARGE: c_int = -30806;
/// The key is not usable: empty, not UTF-8, or containing a NUL character. Nothing
/// was changed.
pub const RINGBASE_E_INVALID_KEY: c_int = -30807;
/// A `RINGBASE_JSON` value that does not parse as JSON. Nothing was changed.
pub const RINGBASE_E_INVALID_JSON: c_int = -30808;
/// The server's storage engine failed (disk full, I/O error). Nothing was changed.
pub const RINGBASE_E_STORAGE: c_int = -30809;
/// Nothing is ready yet (`ringbase_poll`): try again later.
pub const RINGBASE_E_AGAIN: c_int = -30810;
/// A bug in this library (a Rust panic, caught at the ABI boundary). The handle the
/// call was made on is unusable from then on: every later call on it returns
/// `RINGBASE_E_INTERNAL`; close it.
pub const RINGBASE_E_INTERNAL: c_int = -30811;
/// Out of memory while copying a value for the caller.
pub const RINGBASE_E_NOMEM: c_int = -30812;
/// The server sent something this library cannot read (a protocol violation: a bug or
/// memory corruption). The session is closed: close the handle and connect again.
pub const RINGBASE_E_CORRUPT: c_int = -30813;
/// The server could not decode the request (a bug in this library or a version skew).
pub const RINGBASE_E_BAD_REQUEST: c_int = -30814;
/// The server does not support this request.
pub const RINGBASE_E_UNSUPPORTED: c_int = -30815;
/// The server is shutting down and takes no more requests.
pub const RINGBASE_E_SHUTTING_DOWN: c_int = -30816;
/// The server failed the request for a reason of its own (an internal error, or an
/// error code newer than this library); `ringbase_last_error` has its message.
pub const RINGBASE_E_SERVER: c_int = -30817;
/// An operating-system error while connecting or starting the server (for example the
/// server binary cannot be executed).
pub const RINGBASE_E_IO: c_int = -30818;
/// A live server did not answer within the call timeout of `ringbase_connect_with`; the
/// session is over (close the handle and connect again).
pub const RINGBASE_E_TIMEOUT: c_int = -30819;
/// A query that cannot run: a syntax error, an unknown table or column, a wrong number
/// of parameters, or more than one statement (`ringbase_query`).
pub const RINGBASE_E_INVALID_QUERY: c_int = -30820;
/// A query that would write, or read anything but the `records` view (`ringbase_query`).
/// Nothing was changed.
pub const RINGBASE_E_READ_ONLY: c_int = -30821;
/// A query that ran past its time budget and was stopped (`ringbase_query`).
pub const RINGBASE_E_BUDGET: c_int = -30822;
/// A watch cursor (`since`) older than the server's change log (`ringbase_watch`):
/// re-read what you follow, then watch from now.
pub const RINGBASE_E_EXPIRED: c_int = -30823;
/// A vector of another dimension than the database's, with a NaN or an infinity, all
/// zeros, or empty (`ringbase_put_with_vector`, `ringbase_vsearch`). Nothing was written.
pub const RINGBASE_E_INVALID_VECTOR: c_int = -30824;
/// A text search (`ringbase_search_text`) on a server without an embedding model:
/// start it with `ringbase serve --embed-model DIR`, or search with a vector.
pub const RINGBASE_E_NO_EMBEDDER: c_int = -30825;

/// A failed call: the status code and the detail for `ringbase_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: c_int,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: c_int, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(RINGBASE_E_INVALID, message)
    }
}

/// Result of the bodies of exported functions.
pub(crate) type FResult<T> = Result<T, Failure>;

/// The one place where client errors become status codes.
impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Disconnected => RINGBASE_E_DISCONNECTED,
            Error::NotRunning { .. } => RINGBASE_E_NOT_RUNNING,
            Error::ProtocolMismatch { .. } => RINGBASE_E_PROTOCOL,
            Error::Refused { .. } => RINGBASE_E_REFUSED,
            Error::TooLarge { .. } => RINGBASE_E_TOO_LARGE,
            Error::Server { code, .. } => server_code(*code),
            Error::Protocol(_) => RINGBASE_E_CORRUPT,
            Error::Invalid(_) => RINGBASE_E_INVALID,
            Error::Io(_) => RINGBASE_E_IO,
            Error::TimedOut(_) => RINGBASE_E_TIMEOUT,
            // A variant newer than this library.
            _ => RINGBASE_E_INTERNAL,
        };
        let message = match &e {
            Error::Server { message, .. } => format!("server: {message}"),
            other => other.to_string(),
        };
        Failure { code, message }
    }
}

/// The status code for a server [`ErrorCode`] (`None`: a code newer than this library).
pub(crate) fn server_code(code: Option<ErrorCode>) -> c_int {
    match code {
        Some(ErrorCode::BadRequest) => RINGBASE_E_BAD_REQUEST,
        Some(ErrorCode::TooLarge) => RINGBASE_E_TOO_LARGE,
        Some(ErrorCode::InvalidKey) => RINGBASE_E_INVALID_KEY,
        Some(ErrorCode::InvalidJson) => RINGBASE_E_INVALID_JSON,
        Some(ErrorCode::Storage) => RINGBASE_E_STORAGE,
        Some(ErrorCode::Unsupported) => RINGBASE_E_UNSUPPORTED,
        Some(ErrorCode::ShuttingDown) => RINGBASE_E_SHUTTING_DOWN,
        Some(ErrorCode::Internal) => RINGBASE_E_SERVER,
        Some(ErrorCode::InvalidQuery) => RINGBASE_E_INVALID_QUERY,
        Some(ErrorCode::ReadOnly) => RINGBASE_E_READ_ONLY,
        Some(ErrorCode::Budget) => RINGBASE_E_BUDGET,
        Some(ErrorCode::Expired) => RINGBASE_E_EXPIRED,
        Some(ErrorCode::InvalidVector) => RINGBASE_E_INVALID_VECTOR,
        Some(ErrorCode::NoEmbedder) => RINGBASE_E_NO_EMBEDDER,
        _ => RINGBASE_E_SERVER,
    }
}

/// The static description of a status code.
pub(crate) fn describe(code: c_int) -> &'static CStr {
    match code {
        RINGBASE_OK => c"success",
        RINGBASE_E_INVALID => c"invalid argument",
        RINGBASE_E_NOT_FOUND => c"not found",
        RINGBASE_E_DISCONNECTED => c"disconnected from the ringbase server",
        RINGBASE_E_NOT_RUNNING => c"no ringbase server is running",
        RINGBASE_E_PROTOCOL => c"protocol version mismatch between client and server",
        RINGBASE_E_REFUSED => c"the server refused the session",
        RINGBASE_E_TOO_LARGE => c"key, value or request too large",
        RINGBASE_E_INVALID_KEY => c"invalid key",
        RINGBASE_E_INVALID_JSON => c"invalid JSON value",
        RINGBASE_E_STORAGE => c"storage error in the server",
        RINGBASE_E_AGAIN => c"nothing ready yet, try again",
        RINGBASE_E_INTERNAL => c"internal error in libringbase",
        RINGBASE_E_NOMEM => c"out of memory",
        RINGBASE_E_CORRUPT => c"unreadable message from the server (protocol violation)",
        RINGBASE_E_BAD_REQUEST => c"the server could not decode the request",
        RINGBASE_E_UNSUPPORTED => c"request not supported by the server",
        RINGBASE_E_SHUTTING_DOWN => c"the server is shutting down",
        RINGBASE_E_SERVER => c"the server failed the request",
        RINGBASE_E_IO => c"operating-system error",
        RINGBASE_E_TIMEOUT => c"the server did not answer within the call timeout",
        RINGBASE_E_INVALID_QUERY => c"invalid query",
        RINGBASE_E_READ_ONLY => c"queries are read-only",
        RINGBASE_E_BUDGET => c"the query ran past its budget",
        RINGBASE_E_EXPIRED => c"the change log no longer holds the changes after this cursor",
        RINGBASE_E_INVALID_VECTOR => {
            c"invalid vector (wrong dimension, NaN or infinity, or all zeros)"
        }
        RINGBASE_E_NO_EMBEDDER => c"the server has no embedding model",
        _ => c"unknown ringbase status code",
    }
}

/// A message as a C string (interior NULs, which a C caller could not see past, are
/// replaced).
pub(crate) fn c_message(msg: &str) -> CString {
    CString::new(msg.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

thread_local! {
    /// The calling thread's last failure, for `ringbase_last_error(NULL)`.
    static THREAD_LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `msg` as this thread's last error.
pub(crate) fn set_thread_error(msg: &str) {
    let m = c_message(msg);
    // `try_with`: during thread teardown the slot may be gone; then there is no one
    // left to read the message.
    let _ = THREAD_LAST.try_with(|l| *l.borrow_mut() = m);
}

/// This thread's last error; the pointer stays valid until the next failing call on
/// this thread (or the thread's exit).
pub(crate) fn thread_error() -> *const c_char {
    THREAD_LAST
        .try_with(|l| l.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    let what = if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(no message)"
    };
    format!("internal error (panic in libringbase): {what}")
}

/// Runs the body of an exported function that returns a status code: a panic becomes
/// `RINGBASE_E_INTERNAL`, a failure is recorded as this thread's last error and its
/// code returned.
pub(crate) fn guard(body: impl FnOnce() -> FResult<()>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => RINGBASE_OK,
        Ok(Err(f)) => {
            set_thread_error(&f.message);
            f.code
        }
        Err(p) => {
            set_thread_error(&panic_message(&*p));
            // Dropping a payload can itself panic; never let that unwind out.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(p)));
            RINGBASE_E_INTERNAL
        }
    }
}

/// Runs the body of an exported function that returns a value: a panic returns
/// `fallback` instead.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(p) => {
            set_thread_error(&panic_message(&*p));
            let _ = catch_unwind(AssertUnwindSafe(move || drop(p)));
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_negative_distinct_and_described() {
        let codes = [
            RINGBASE_E_INVALID,
            RINGBASE_E_NOT_FOUND,
            RINGBASE_E_DISCONNECTED,
            RINGBASE_E_NOT_RUNNING,
            RINGBASE_E_PROTOCOL,
            RINGBASE_E_REFUSED,
            RINGBASE_E_TOO_LARGE,
            RINGBASE_E_INVALID_KEY,
            RINGBASE_E_INVALID_JSON,
            RINGBASE_E_STORAGE,
            RINGBASE_E_AGAIN,
            RINGBASE_E_INTERNAL,
            RINGBASE_E_NOMEM,
            RINGBASE_E_CORRUPT,
            RINGBASE_E_BAD_REQUEST,
            RINGBASE_E_UNSUPPORTED,
            RINGBASE_E_SHUTTING_DOWN,
            RINGBASE_E_SERVER,
            RINGBASE_E_IO,
            RINGBASE_E_TIMEOUT,
            RINGBASE_E_INVALID_QUERY,
            RINGBASE_E_READ_ONLY,
            RINGBASE_E_BUDGET,
            RINGBASE_E_EXPIRED,
        ];
        let mut seen = std::collections::HashSet::new();
        for c in codes {
            // Far below any errno value (errno values are small positive numbers).
            assert!((-30899..=-30800).contains(&c), "{c}");
            assert!(seen.insert(c), "duplicate {c}");
            assert_ne!(describe(c), describe(12345), "{c} has no description");
        }
    }

    #[test]
    fn panics_become_internal() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, RINGBASE_E_INTERNAL);
        // SAFETY: the pointer is this thread's message, valid until the next failure.
        let msg = unsafe { CStr::from_ptr(thread_error()) };
        assert!(msg.to_str().unwrap().contains("boom"), "{msg:?}");
        assert_eq!(guard_value(7, || panic!("x")), 7);
    }

    #[test]
    fn server_codes_map() {
        assert_eq!(
            server_code(Some(ErrorCode::InvalidJson)),
            RINGBASE_E_INVALID_JSON
        );
        assert_eq!(server_code(None), RINGBASE_E_SERVER);
        let f = Failure::from(Error::Disconnected);
        assert_eq!(f.code, RINGBASE_E_DISCONNECTED);
    }
}
