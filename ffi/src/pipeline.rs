//! The non-blocking path for frame loops: submit requests, poll completions.

use std::ffi::{c_char, c_int, c_void};

use ::ringbase_client::Request;

use crate::error::{c_message, FResult, RINGBASE_E_AGAIN, RINGBASE_OK};
use crate::handle::{
    complete, enter, enter_out, handle, key as key_arg, out, ringbase_client, value_args, Op, State,
};

/// A completed submitted request, filled in by `ringbase_poll`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ringbase_completion {
    /// The ticket `ringbase_submit_*` returned for the request.
    pub ticket: u64,
    /// `RINGBASE_OP_GET`, `RINGBASE_OP_PUT` or `RINGBASE_OP_DELETE`.
    pub op: c_int,
    /// The request's outcome: `RINGBASE_OK` or an error code, as the blocking call
    /// would have returned (`RINGBASE_E_NOT_FOUND` for a get or delete of a missing
    /// key, `RINGBASE_E_INVALID_JSON`, ...). For an error, `ringbase_last_error(c)`
    /// holds its detail until the next call on `c`.
    pub status: c_int,
    /// A successful get's value bytes, else NULL. Owned by the client handle: valid
    /// until the next call on it other than `ringbase_last_error` (copy what you keep).
    pub value: *const c_void,
    /// Length of `value` in bytes (0 when `value` is NULL).
    pub value_len: usize,
    /// A successful get's value kind (`RINGBASE_JSON` / `RINGBASE_BYTES`), else 0.
    pub kind: c_int,
}

const EMPTY: ringbase_completion = ringbase_completion {
    ticket: 0,
    op: 0,
    status: RINGBASE_OK,
    value: std::ptr::null(),
    value_len: 0,
    kind: 0,
};

/// Sends `req` without waiting and records its ticket.
fn submit(st: &mut State, req: &Request, op: Op) -> FResult<u64> {
    let ticket = st.client()?.send(req)?;
    st.pending.push_back((ticket, op));
    Ok(ticket)
}

/// The body of the `ringbase_submit_*` calls: checks `ticket` and sets it to 0,
/// decodes the key, makes the request of `op` with `request` (which reads the other
/// arguments) and submits it, storing its ticket in `*ticket`.
///
/// # Safety
///
/// As for `ringbase_submit_get`.
unsafe fn submit_key(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    ticket: *mut u64,
    op: Op,
    request: impl FnOnce(&str) -> FResult<Request>,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let ticket = unsafe { out(ticket, "ticket") }?;
        *ticket = 0;
        // SAFETY: `key_len` readable bytes (caller's contract).
        let key = unsafe { key_arg(key, key_len, "key") }?;
        let req = request(key)?;
        *ticket = submit(st, &req, op)?;
        Ok(())
    })
}

/// Submits a get of `key` without waiting for it; `*ticket` identifies its completion
/// in `ringbase_poll`. Tickets are unique per client, increasing, and never 0.
///
/// A submit does not wait for the server's answer. It waits only if the session's
/// request ring is full (many requests in flight): then it hands completed responses
/// aside (for `ringbase_poll`) until the server makes room.
///
/// Errors (nothing was submitted): `RINGBASE_E_INVALID` (`c` or `ticket` NULL, `key`
/// NULL with a non-zero length), `RINGBASE_E_INVALID_KEY` (not UTF-8),
/// `RINGBASE_E_TOO_LARGE`, `RINGBASE_E_DISCONNECTED`. Errors of the request itself
/// (`RINGBASE_E_NOT_FOUND`, an empty key, ...) come in its completion.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `key` points at `key_len` readable bytes (or is NULL
/// with length 0), only read during the call; `ticket` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_submit_get(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    ticket: *mut u64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        submit_key(c, key, key_len, ticket, Op::Get, |key| {
            Ok(Request::Get { key: key.into() })
        })
    }
}

/// Submits a put without waiting for it (arguments as for `ringbase_put`, copied by
/// this call). Its completion says whether it was committed. Errors and threads as
/// for `ringbase_submit_get`, plus `RINGBASE_E_INVALID` for a bad `kind`.
///
/// # Safety
///
/// As for `ringbase_submit_get`; `value` points at `value_len` readable bytes (or is
/// NULL with length 0).
#[no_mangle]
pub unsafe extern "C" fn ringbase_submit_put(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_void,
    value_len: usize,
    kind: c_int,
    ticket: *mut u64,
) -> c_int {
    let put = |key: &str| {
        // SAFETY: `value_len` readable bytes (caller's contract).
        let (value, kind) = unsafe { value_args(value, value_len, kind) }?;
        Ok(Request::Put {
            key: key.into(),
            value: value.to_vec(),
            kind,
        })
    };
    // SAFETY: forwarded contract.
    unsafe { submit_key(c, key, key_len, ticket, Op::Put, put) }
}

/// Submits a delete without waiting for it. Its completion has status
/// `RINGBASE_E_NOT_FOUND` if the key had no live record. Errors and threads as for
/// `ringbase_submit_get`.
///
/// # Safety
///
/// As for `ringbase_submit_get`.
#[no_mangle]
pub unsafe extern "C" fn ringbase_submit_delete(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    ticket: *mut u64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        submit_key(c, key, key_len, ticket, Op::Delete, |key| {
            Ok(Request::Delete { key: key.into() })
        })
    }
}

/// Returns the next completion of a submitted request, without ever waiting: never
/// spins or sleeps, at most one non-blocking system call (a liveness check when
/// nothing is ready). Completions come in submission order.
///
/// Returns `RINGBASE_OK` with `*completion` filled in (the request's own outcome is in
/// `completion->status`), or `RINGBASE_E_AGAIN` when no completion is ready yet
/// (including when nothing was submitted). `RINGBASE_E_AGAIN` is not a failure: it
/// leaves `ringbase_last_error` unchanged. Blocking calls made between submit and poll
/// are fine: the completions they had to receive first wait here.
///
/// Ownership: `*completion` is the caller's; its `value` belongs to `c` and is valid
/// until the next call on `c` other than `ringbase_last_error`.
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `completion` NULL), `RINGBASE_E_DISCONNECTED`
/// (the server died: requests still in flight are lost and may or may not have been
/// applied), `RINGBASE_E_CORRUPT`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `completion` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_poll(
    c: *mut ringbase_client,
    completion: *mut ringbase_completion,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    let mut again = false;
    let code = enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let completion = unsafe { out(completion, "completion") }?;
        *completion = EMPTY;
        let done = match st.ready.pop_front() {
            Some(d) => d,
            None => match st.client()?.try_recv()? {
                Some((corr, resp)) => complete(&mut st.pending, corr, resp)?,
                None => {
                    again = true;
                    return Ok(());
                }
            },
        };
        st.out_value = done.value;
        let has_value = done.status == RINGBASE_OK && done.op == Op::Get;
        *completion = ringbase_completion {
            ticket: done.ticket,
            op: done.op.code(),
            status: done.status,
            value: if has_value {
                st.out_value.as_ptr() as *const c_void
            } else {
                std::ptr::null()
            },
            value_len: if has_value { st.out_value.len() } else { 0 },
            kind: done.kind,
        };
        if let Some(m) = done.message {
            st.last_error = c_message(&m);
        }
        Ok(())
    });
    if code == RINGBASE_OK && again {
        RINGBASE_E_AGAIN
    } else {
        code
    }
}

/// Stores in `*count` how many submitted requests have not been returned by
/// `ringbase_poll` yet (in flight, or completed and waiting).
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `count` NULL).
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_in_flight(c: *mut ringbase_client, count: *mut usize) -> c_int {
    // SAFETY: `c` is NULL or a live handle; `count` is NULL or writable (caller's
    // contract).
    unsafe {
        enter_out(
            c,
            count,
            "count",
            |st| Ok(st.pending.len() + st.ready.len()),
        )
    }
}
