//! Atomic batches: puts and deletes collected by the caller, applied all or none.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::null_mut;
use std::sync::Arc;

use ::ringbase_client::BatchOp;

use crate::error::{guard_value, Failure, RINGBASE_E_INTERNAL};
use crate::handle::{enter, fail, free_box, handle, key as key_arg, on_state, put_args};
use crate::handle::{ringbase_client, Shared};

/// An atomic batch of puts and deletes (opaque), begun on a client by
/// `ringbase_batch_begin`. Owned by the caller until `ringbase_batch_commit` or
/// `ringbase_batch_abort`, which both free it.
///
/// Nothing is sent to the server before the commit. A batch belongs to the client it
/// was begun on and follows its thread rule (one thread at a time, with the client);
/// it stays safe to abort after that client was closed.
pub struct ringbase_batch {
    shared: Arc<Shared>,
    ops: Vec<BatchOp>,
}

/// Begins an empty batch on `c`.
///
/// Ownership: on success `*out` is a new batch owned by the caller: end it with
/// `ringbase_batch_commit` or `ringbase_batch_abort`. On failure `*out` is NULL.
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `out` NULL).
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_batch_begin(
    c: *mut ringbase_client,
    out: *mut *mut ringbase_batch,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |_| {
        // SAFETY: NULL or writable (caller's contract).
        let out = unsafe { crate::handle::out(out, "out") }?;
        *out = null_mut();
        let shared = Arc::clone(&h.expect("enter checked it").shared);
        *out = Box::into_raw(Box::new(ringbase_batch {
            shared,
            ops: Vec::new(),
        }));
        Ok(())
    })
}

/// Runs `body` on a batch's operations, entering its client's state (thread check,
/// errors recorded on the client). `None` (a NULL batch) is `RINGBASE_E_INVALID`.
fn with_batch(
    b: Option<&mut ringbase_batch>,
    body: impl FnOnce(&mut Vec<BatchOp>) -> Result<(), Failure>,
) -> c_int {
    match b {
        None => fail(Failure::invalid("the batch handle is NULL")),
        Some(ringbase_batch { shared, ops }) => on_state(shared, |_| body(ops)),
    }
}

/// Adds a put of `value` under `key` to the batch (arguments as for `ringbase_put`;
/// they are copied, so the caller's buffers may be reused at once).
///
/// Errors (detail in `ringbase_last_error` of the batch's client, and of NULL):
/// `RINGBASE_E_INVALID` (`b` NULL, `key`/`value` NULL with a non-zero length, bad
/// `kind`), `RINGBASE_E_INVALID_KEY` (not UTF-8), `RINGBASE_E_TOO_LARGE` (key too
/// long). The batch is unchanged by a failed call. Empty keys, keys with a NUL, invalid
/// JSON and values that do not fit are reported by the commit.
///
/// Threads: the thread using the batch's client.
///
/// # Safety
///
/// `b` is NULL or a live batch; `key` and `value` point at `key_len` and `value_len`
/// readable bytes (or are NULL with length 0).
#[no_mangle]
pub unsafe extern "C" fn ringbase_batch_put(
    b: *mut ringbase_batch,
    key: *const c_char,
    key_len: usize,
    value: *const c_void,
    value_len: usize,
    kind: c_int,
) -> c_int {
    // SAFETY: `b` is NULL or a live batch, used by this thread only (caller's contract).
    let b = unsafe { b.as_mut() };
    with_batch(b, |ops| {
        // SAFETY: `key_len` and `value_len` readable bytes (caller's contract).
        let (key, value, kind) = unsafe { put_args(key, key_len, value, value_len, kind) }?;
        ops.push(BatchOp::Put {
            key: key.to_string(),
            value: value.to_vec(),
            kind,
        });
        Ok(())
    })
}

/// Adds a delete of `key` to the batch. A key without a live record is not an error
/// in a batch.
///
/// Errors: as for `ringbase_batch_put`.
///
/// Threads: the thread using the batch's client.
///
/// # Safety
///
/// `b` is NULL or a live batch; `key` points at `key_len` readable bytes (or is NULL
/// with length 0).
#[no_mangle]
pub unsafe extern "C" fn ringbase_batch_delete(
    b: *mut ringbase_batch,
    key: *const c_char,
    key_len: usize,
) -> c_int {
    // SAFETY: `b` is NULL or a live batch, used by this thread only (caller's contract).
    let b = unsafe { b.as_mut() };
    with_batch(b, |ops| {
        // SAFETY: `key_len` readable bytes (caller's contract).
        let key = unsafe { key_arg(key, key_len, "key") }?;
        ops.push(BatchOp::Delete {
            key: key.to_string(),
        });
        Ok(())
    })
}

/// Applies the batch atomically, in order: all of its operations are committed
/// (durably) or, on any error, none. Frees `b` in every case, success or failure.
///
/// Errors (detail in `ringbase_last_error` of the batch's client): `RINGBASE_E_INVALID`
/// (`b` NULL, or its client was closed), `RINGBASE_E_INVALID_KEY`,
/// `RINGBASE_E_INVALID_JSON`, `RINGBASE_E_TOO_LARGE` (the batch does not fit the
/// session's rings: split it), `RINGBASE_E_STORAGE`, `RINGBASE_E_DISCONNECTED` (the
/// batch may or may not have been applied, as a whole).
///
/// Threads: the thread using the batch's client.
///
/// # Safety
///
/// `b` is NULL or a live batch, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn ringbase_batch_commit(b: *mut ringbase_batch) -> c_int {
    guard_value(RINGBASE_E_INTERNAL, || {
        if b.is_null() {
            return fail(Failure::invalid("the batch handle is NULL"));
        }
        // SAFETY: `b` came from `Box::into_raw` in `ringbase_batch_begin` and is ended
        // once (caller's contract).
        let b = unsafe { Box::from_raw(b) };
        let ringbase_batch { shared, ops } = *b;
        on_state(&shared, |st| {
            st.settle()?.batch(ops)?;
            Ok(())
        })
    })
}

/// Frees the batch without applying it. NULL is a no-op.
///
/// Threads: the thread using the batch's client.
///
/// # Safety
///
/// `b` is NULL or a live batch, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn ringbase_batch_abort(b: *mut ringbase_batch) {
    // SAFETY: `b` is NULL or came from `Box::into_raw` in `ringbase_batch_begin` and is
    // ended once (caller's contract).
    unsafe { free_box(b) }
}
