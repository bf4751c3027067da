//! `libringbase`: the C ABI of the Ringbase client.
//!
//! Built as `libringbase.so` and `libringbase.a` (and an rlib for tests). The C
//! declarations are generated from this crate by cbindgen into `include/ringbase.h`,
//! which is checked in; `tests/header.rs` fails when it is stale
//! (`RINGBASE_BLESS=1 cargo test -p ringbase-ffi --test header` rewrites it). The
//! header is the reference: every function documents its errors, the ownership and
//! lifetime of every pointer, and which threads may call it.
//!
//! Rules kept by every exported function:
//! - it runs inside `catch_unwind`: a panic (a bug) returns `RINGBASE_E_INTERNAL` and
//!   leaves the handle unusable (later calls on it return `RINGBASE_E_INTERNAL`); it
//!   never unwinds into C. Functions without a status code return their documented
//!   fallback instead;
//! - NULL or invalid arguments return `RINGBASE_E_INVALID`;
//! - a failure's detail is kept per handle (`ringbase_last_error(c)`) and per thread
//!   (`ringbase_last_error(NULL)`);
//! - no call waits forever on a dead server: it returns `RINGBASE_E_DISCONNECTED`.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
// The C names are the contract.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

mod error;
mod handle;

// Header order: the functions above, sessions and key-value calls, then batches, list
// iterators and the non-blocking path (cbindgen follows the `mod` order).
mod kv;

mod batch;
mod list;
mod pipeline;
mod query;
mod search;
mod vectors;
mod watch;

pub use batch::*;
pub use error::*;
pub use handle::ringbase_client;
pub use kv::*;
pub use list::*;
pub use pipeline::*;
pub use query::*;
pub use search::*;
pub use vectors::*;
pub use watch::*;

/// Value kind: UTF-8 JSON text, validated by the server on put.
pub const RINGBASE_JSON: c_int = 1;
/// Value kind: opaque bytes.
pub const RINGBASE_BYTES: c_int = 2;

/// Longest key, in bytes of UTF-8.
pub const RINGBASE_MAX_KEY_LEN: usize = 1024;
const _: () = assert!(RINGBASE_MAX_KEY_LEN == ::ringbase_client::MAX_KEY_LEN);

/// `ringbase_completion::op` of a `ringbase_submit_get`.
pub const RINGBASE_OP_GET: c_int = 1;
/// `ringbase_completion::op` of a `ringbase_submit_put`.
pub const RINGBASE_OP_PUT: c_int = 2;
/// `ringbase_completion::op` of a `ringbase_submit_delete`.
pub const RINGBASE_OP_DELETE: c_int = 3;

/// A static description of a status code (`RINGBASE_OK` or a `RINGBASE_E_*` code).
///
/// Returns a static NUL-terminated string, never NULL, never to be freed; unknown
/// codes get a generic description. Thread-safe.
#[no_mangle]
pub extern "C" fn ringbase_strerror(code: c_int) -> *const c_char {
    error::guard_value(c"unknown ringbase status code".as_ptr(), || {
        error::describe(code).as_ptr()
    })
}

/// The version of this library, e.g. `"0.1.0"`.
///
/// Returns a static NUL-terminated string, never NULL, never to be freed.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn ringbase_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    error::guard_value(c"".as_ptr(), || VERSION.as_ptr() as *const c_char)
}

/// The detail of the last failed call.
///
/// - `c != NULL`: the last failure of a call on `c` (or on one of its batches or list
///   iterators). Owned by `c`; valid until the next call on `c` (other than this one)
///   or `ringbase_close(c)`. Call it from the thread that uses `c`.
/// - `c == NULL`: the last failure of any call made by the calling thread, including
///   calls that have no handle (`ringbase_connect`, `ringbase_connect_or_spawn`, a
///   NULL handle, `ringbase_batch_*` and `ringbase_list_*`). Owned by the library;
///   valid until the next failing call on this thread or the thread's exit.
///
/// Successful calls do not clear it. Returns `""` if nothing has failed yet; never NULL,
/// never to be freed.
///
/// # Safety
///
/// `c` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ringbase_last_error(c: *const ringbase_client) -> *const c_char {
    error::guard_value(c"".as_ptr(), || {
        // SAFETY: by the caller's contract `c` is NULL or a live handle.
        match unsafe { c.as_ref() } {
            None => error::thread_error(),
            Some(h) => match h.shared.try_lock() {
                Ok(st) => st.last_error.as_ptr(),
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().last_error.as_ptr(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    c"(the client is in use by another thread)".as_ptr()
                }
            },
        }
    })
}

/// Frees a buffer returned by `ringbase_get`. NULL is a no-op. Do not pass any other
/// pointer (in particular not the pointers of `ringbase_get_view`, list iterators,
/// completions or status, which the library owns). Thread-safe.
///
/// # Safety
///
/// `p` is NULL or a buffer from `ringbase_get` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ringbase_free(p: *mut c_void) {
    // SAFETY: `p` came from `libc::malloc` in `ringbase_get` (caller's contract).
    error::guard_value((), || unsafe { libc::free(p) })
}
