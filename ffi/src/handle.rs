//! The client handle, the state its batches and iterators share, and the helpers every
//! exported function uses to enter it and to read its arguments.

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, TryLockError};

use ::ringbase_client::{Client, ErrorCode, Response, ValueKind, MAX_KEY_LEN};

use crate::error::{
    c_message, guard_value, panic_message, server_code, set_thread_error, FResult, Failure,
    RINGBASE_E_CORRUPT, RINGBASE_E_INTERNAL, RINGBASE_E_INVALID, RINGBASE_E_INVALID_KEY,
    RINGBASE_E_NOT_FOUND, RINGBASE_E_TOO_LARGE, RINGBASE_OK,
};
use crate::{RINGBASE_BYTES, RINGBASE_JSON, RINGBASE_OP_DELETE, RINGBASE_OP_GET, RINGBASE_OP_PUT};

/// A session with a Ringbase server (opaque). Created by `ringbase_connect` or
/// `ringbase_connect_or_spawn`, destroyed by `ringbase_close`.
///
/// Threads: a handle may move between threads but is used by one thread at a time.
/// A call made while another thread is inside a call on the same handle (or on one of
/// its batches or iterators) fails with `RINGBASE_E_INVALID` instead of corrupting
/// anything. A program with many threads gives each thread its own client (sessions
/// are cheap and independent; the server serves them in parallel).
#[allow(non_camel_case_types)]
pub struct ringbase_client {
    pub(crate) shared: Arc<Shared>,
}

/// The state behind a client handle, shared with its batches and iterators so that
/// they stay memory-safe after `ringbase_close` (they then fail with
/// `RINGBASE_E_INVALID`).
pub(crate) type Shared = Mutex<State>;

/// What a submitted request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    Put,
    Delete,
}

impl Op {
    pub(crate) fn code(self) -> c_int {
        match self {
            Op::Get => RINGBASE_OP_GET,
            Op::Put => RINGBASE_OP_PUT,
            Op::Delete => RINGBASE_OP_DELETE,
        }
    }
}

/// A completed submitted request, waiting to be returned by `ringbase_poll`.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) ticket: u64,
    pub(crate) op: Op,
    pub(crate) status: c_int,
    /// Detail for a status other than OK.
    pub(crate) message: Option<String>,
    /// The value of a successful get.
    pub(crate) value: Vec<u8>,
    /// The value's kind (`RINGBASE_JSON` / `RINGBASE_BYTES`) for a get, else 0.
    pub(crate) kind: c_int,
}

/// Everything a client handle owns.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The session; `None` once the handle was closed.
    pub(crate) client: Option<Client>,
    /// Set when a call panicked: the state may be inconsistent, so every later call
    /// fails with `RINGBASE_E_INTERNAL`.
    pub(crate) broken: Option<String>,
    /// Detail of the last failed call (`ringbase_last_error(c)`).
    pub(crate) last_error: CString,
    /// Tickets submitted and not yet received, oldest first (responses come in
    /// request order).
    pub(crate) pending: VecDeque<(u64, Op)>,
    /// Completions received (by a blocking call that had to settle the pipeline first)
    /// and not yet returned by `ringbase_poll`, oldest first.
    pub(crate) ready: VecDeque<Done>,
    /// Storage behind pointers handed out until the next call on the handle: the value
    /// of the last completion returned by `ringbase_poll`.
    pub(crate) out_value: Vec<u8>,
    /// Storage for `ringbase_status_info::data_dir` until the next call.
    pub(crate) out_data_dir: CString,
    /// Storage for `ringbase_status_info::version` until the next call.
    pub(crate) out_version: CString,
    /// Storage for `ringbase_status_info::indexes` until the next call.
    pub(crate) out_indexes: CString,
    /// Storage for `ringbase_status_info::vector_embedder` until the next call.
    pub(crate) out_embedder: CString,
    /// Storage for `ringbase_status_info::sync_mode` until the next call.
    pub(crate) out_sync_mode: CString,
    /// Storage for `ringbase_status_info::sync_peer_id` until the next call.
    pub(crate) out_sync_peer_id: CString,
    /// Storage for the key (NUL-terminated) and value of the event returned by
    /// `ringbase_next_event`, until the next call.
    pub(crate) out_event_key: Vec<u8>,
    /// See `out_event_key`.
    pub(crate) out_event_value: Vec<u8>,
}

impl State {
    pub(crate) fn new(client: Client) -> State {
        State {
            client: Some(client),
            ..State::default()
        }
    }

    fn set_error(&mut self, msg: &str) {
        self.last_error = c_message(msg);
    }

    /// The session, for calls that do not care about submitted requests.
    pub(crate) fn client(&mut self) -> FResult<&mut Client> {
        self.client.as_mut().ok_or_else(closed)
    }

    /// The session, for a blocking call: first receives the responses of all submitted
    /// requests (they wait in `ready` for `ringbase_poll`), because a blocking call
    /// needs the pipeline empty.
    pub(crate) fn settle(&mut self) -> FResult<&mut Client> {
        let client = self.client.as_mut().ok_or_else(closed)?;
        while client.in_flight() > 0 {
            let (corr, resp) = client.recv()?;
            let done = complete(&mut self.pending, corr, resp)?;
            self.ready.push_back(done);
        }
        Ok(client)
    }
}

fn closed() -> Failure {
    Failure::invalid("the client this handle belongs to was closed")
}

/// Turns the response to a submitted request into its completion.
pub(crate) fn complete(
    pending: &mut VecDeque<(u64, Op)>,
    corr: u64,
    resp: Response,
) -> FResult<Done> {
    let op = match pending.pop_front() {
        Some((t, op)) if t == corr => op,
        _ => {
            return Err(Failure::new(
                RINGBASE_E_CORRUPT,
                format!("response {corr} does not match the oldest submitted ticket"),
            ))
        }
    };
    let mut done = Done {
        ticket: corr,
        op,
        status: RINGBASE_OK,
        message: None,
        value: Vec::new(),
        kind: 0,
    };
    let fail = |done: &mut Done, code, msg: String| {
        done.status = code;
        done.message = Some(msg);
    };
    match (op, resp) {
        (Op::Get, Response::Value(Some(r))) => {
            done.value = r.value;
            done.kind = kind_code(r.kind);
        }
        (Op::Get, Response::Value(None)) => fail(
            &mut done,
            RINGBASE_E_NOT_FOUND,
            "no record for this key".into(),
        ),
        (Op::Put, Response::Written(_)) => {}
        (Op::Delete, Response::Deleted(w)) => {
            if !w.existed {
                fail(
                    &mut done,
                    RINGBASE_E_NOT_FOUND,
                    "no record for this key".into(),
                )
            }
        }
        (_, Response::Error { code, message }) => fail(
            &mut done,
            server_code(ErrorCode::from_u32(code)),
            format!("server: {message}"),
        ),
        (_, other) => fail(
            &mut done,
            RINGBASE_E_CORRUPT,
            format!("unexpected response {other:?}"),
        ),
    }
    Ok(done)
}

/// Enters a handle's state: refuses a second thread and a broken handle, runs `body`
/// inside `catch_unwind`, and records a failure as the handle's and the thread's last
/// error. A panic marks the handle broken and returns `RINGBASE_E_INTERNAL`.
pub(crate) fn on_state(shared: &Shared, body: impl FnOnce(&mut State) -> FResult<()>) -> c_int {
    let mut st = match shared.try_lock() {
        Ok(g) => g,
        Err(TryLockError::WouldBlock) => {
            set_thread_error(
                "this client is in use by another thread: use a handle (and its batches \
                 and iterators) from one thread at a time, or one client per thread",
            );
            return RINGBASE_E_INVALID;
        }
        // Never expected (bodies run inside catch_unwind), but the state is still there.
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
    };
    if let Some(why) = &st.broken {
        let msg = format!("this client is unusable after an internal error ({why}); close it");
        st.set_error(&msg);
        set_thread_error(&msg);
        return RINGBASE_E_INTERNAL;
    }
    match catch_unwind(AssertUnwindSafe(|| body(&mut st))) {
        Ok(Ok(())) => RINGBASE_OK,
        Ok(Err(f)) => {
            st.set_error(&f.message);
            set_thread_error(&f.message);
            f.code
        }
        Err(p) => {
            let msg = panic_message(&*p);
            let _ = catch_unwind(AssertUnwindSafe(move || drop(p)));
            st.broken = Some(msg.clone());
            st.set_error(&msg);
            set_thread_error(&msg);
            RINGBASE_E_INTERNAL
        }
    }
}

/// The handle behind a pointer from C.
///
/// # Safety
///
/// `c` is NULL or a handle returned by `ringbase_connect*` and not yet closed, which
/// outlives `'a`.
pub(crate) unsafe fn handle<'a>(c: *const ringbase_client) -> Option<&'a ringbase_client> {
    // SAFETY: by the caller's contract `c` is NULL or a live handle.
    unsafe { c.as_ref() }
}

/// [`on_state`] for a client handle (`None`, a NULL pointer, is `RINGBASE_E_INVALID`).
pub(crate) fn enter(
    h: Option<&ringbase_client>,
    body: impl FnOnce(&mut State) -> FResult<()>,
) -> c_int {
    match h {
        Some(h) => on_state(&h.shared, body),
        None => fail(Failure::invalid("the client handle is NULL")),
    }
}

/// [`enter`] for a call with one result: checks the out-parameter `p` (`name` in
/// messages), then stores in `*p` what `body` returns (on failure `*p` is unchanged).
///
/// # Safety
///
/// `c` as for [`handle`]; `p` as for [`out`].
pub(crate) unsafe fn enter_out<T>(
    c: *const ringbase_client,
    p: *mut T,
    name: &str,
    body: impl FnOnce(&mut State) -> FResult<T>,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let p = unsafe { out(p, name) }?;
        *p = body(st)?;
        Ok(())
    })
}

/// Records a failure that belongs to no handle and returns its code.
pub(crate) fn fail(f: Failure) -> c_int {
    set_thread_error(&f.message);
    f.code
}

/// An out-parameter that must not be NULL.
///
/// # Safety
///
/// `p` is NULL or valid for writes of a `T` for the lifetime `'a`.
pub(crate) unsafe fn out<'a, T>(p: *mut T, name: &str) -> FResult<&'a mut T> {
    // SAFETY: by the caller's contract.
    unsafe { p.as_mut() }.ok_or_else(|| Failure::invalid(format!("{name} is NULL")))
}

/// An optional out-parameter (NULL = not wanted).
///
/// # Safety
///
/// As for [`out`].
pub(crate) unsafe fn out_opt<'a, T>(p: *mut T) -> Option<&'a mut T> {
    // SAFETY: by the caller's contract.
    unsafe { p.as_mut() }
}

/// A byte range from C: NULL is accepted for an empty range.
///
/// # Safety
///
/// `p` is NULL or points at `len` readable bytes that stay unchanged for `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const c_void, len: usize, name: &str) -> FResult<&'a [u8]> {
    if p.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(Failure::invalid(format!(
            "{name} is NULL but its length is {len}"
        )));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "{name} length {len} is impossible"
        )));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
}

/// A text argument from C: `len` bytes of UTF-8 at `p`, which must not be NULL (an
/// empty text may be given as any non-NULL pointer with length 0).
///
/// # Safety
///
/// As for [`bytes`].
pub(crate) unsafe fn text<'a>(p: *const c_char, len: usize, name: &str) -> FResult<&'a str> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{name} is NULL")));
    }
    // SAFETY: forwarded contract.
    let b = unsafe { bytes(p as *const c_void, len, name) }?;
    std::str::from_utf8(b).map_err(|_| Failure::invalid(format!("{name} is not UTF-8")))
}

/// A key from C: at most `MAX_KEY_LEN` bytes of UTF-8 (emptiness is the server's call).
///
/// # Safety
///
/// As for [`bytes`].
pub(crate) unsafe fn key<'a>(p: *const c_char, len: usize, name: &str) -> FResult<&'a str> {
    // SAFETY: forwarded contract.
    let b = unsafe { bytes(p as *const c_void, len, name) }?;
    if b.len() > MAX_KEY_LEN {
        return Err(Failure::new(
            RINGBASE_E_TOO_LARGE,
            format!(
                "{name} of {} bytes is too large (maximum {MAX_KEY_LEN})",
                b.len()
            ),
        ));
    }
    std::str::from_utf8(b).map_err(|e| {
        Failure::new(
            RINGBASE_E_INVALID_KEY,
            format!("{name} is not valid UTF-8: {e}"),
        )
    })
}

/// The arguments of a put from C, checked in this order: the key (as for [`key`]), then
/// the value and its kind (as for [`value_args`]).
///
/// # Safety
///
/// As for [`bytes`], for `key` with `key_len` and for `value` with `value_len`.
pub(crate) unsafe fn put_args<'a>(
    key_ptr: *const c_char,
    key_len: usize,
    value: *const c_void,
    value_len: usize,
    kind: c_int,
) -> FResult<(&'a str, &'a [u8], ValueKind)> {
    // SAFETY: `key_len` readable bytes (forwarded contract).
    let key = unsafe { key(key_ptr, key_len, "key") }?;
    // SAFETY: `value_len` readable bytes (forwarded contract).
    let (value, kind) = unsafe { value_args(value, value_len, kind) }?;
    Ok((key, value, kind))
}

/// The value of a put from C: its bytes (as for [`bytes`]), then its kind (as for
/// [`value_kind`]).
///
/// # Safety
///
/// As for [`bytes`].
pub(crate) unsafe fn value_args<'a>(
    value: *const c_void,
    value_len: usize,
    kind: c_int,
) -> FResult<(&'a [u8], ValueKind)> {
    // SAFETY: forwarded contract.
    let value = unsafe { bytes(value, value_len, "value") }?;
    Ok((value, value_kind(kind)?))
}

/// Frees an object the caller owns (a batch or a list iterator) made by
/// `Box::into_raw`. NULL is a no-op; a panic in its destructor is caught.
///
/// # Safety
///
/// `p` is NULL or came from `Box::into_raw` and is not used again after this call.
pub(crate) unsafe fn free_box<T>(p: *mut T) {
    guard_value((), || {
        if !p.is_null() {
            // SAFETY: from `Box::into_raw` and freed once (caller's contract).
            drop(unsafe { Box::from_raw(p) });
        }
    })
}

/// An optional NUL-terminated UTF-8 string from C (NULL = `None`).
///
/// # Safety
///
/// `p` is NULL or a NUL-terminated string readable for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> FResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|e| Failure::invalid(format!("{name} is not valid UTF-8: {e}")))
}

/// `b` with a NUL byte appended (not counted in the lengths handed to C), so text can
/// also be used as a C string.
pub(crate) fn nul_terminated(b: impl Into<Vec<u8>>) -> Vec<u8> {
    let mut b = b.into();
    b.push(0);
    b
}

/// A value kind from C.
pub(crate) fn value_kind(kind: c_int) -> FResult<ValueKind> {
    match kind {
        RINGBASE_JSON => Ok(ValueKind::Json),
        RINGBASE_BYTES => Ok(ValueKind::Bytes),
        other => Err(Failure::invalid(format!(
            "kind {other} is neither RINGBASE_JSON ({RINGBASE_JSON}) nor RINGBASE_BYTES ({RINGBASE_BYTES})"
        ))),
    }
}

/// A value kind for C.
pub(crate) fn kind_code(kind: ValueKind) -> c_int {
    match kind {
        ValueKind::Json => RINGBASE_JSON,
        ValueKind::Bytes => RINGBASE_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> Arc<Shared> {
        Arc::new(Mutex::new(State::default()))
    }

    #[test]
    fn a_panic_breaks_the_handle() {
        let h = handle();
        assert_eq!(on_state(&h, |_| panic!("bug")), RINGBASE_E_INTERNAL);
        let st = h.lock().unwrap();
        assert!(st.last_error.to_str().unwrap().contains("bug"));
        drop(st);
        assert_eq!(on_state(&h, |_| Ok(())), RINGBASE_E_INTERNAL);
    }

    #[test]
    fn a_second_thread_is_refused() {
        let h = handle();
        let h2 = Arc::clone(&h);
        let code = on_state(&h, move |_| {
            let inner = std::thread::spawn(move || on_state(&h2, |_| Ok(())))
                .join()
                .unwrap();
            assert_eq!(inner, RINGBASE_E_INVALID);
            Ok(())
        });
        assert_eq!(code, RINGBASE_OK);
    }

    #[test]
    fn closed_handles_fail_cleanly() {
        let h = handle();
        let code = on_state(&h, |st| st.settle().map(|_| ()));
        assert_eq!(code, RINGBASE_E_INVALID);
    }

    #[test]
    fn keys_are_checked() {
        // SAFETY: pointers to live local data with their true lengths.
        unsafe {
            assert_eq!(key(c"ab".as_ptr(), 2, "key").unwrap(), "ab");
            assert_eq!(key(std::ptr::null(), 0, "key").unwrap(), "");
            assert_eq!(
                key(std::ptr::null(), 1, "key").unwrap_err().code,
                RINGBASE_E_INVALID
            );
            let bad = [0xffu8, 0xfe];
            assert_eq!(
                key(bad.as_ptr() as *const c_char, 2, "key")
                    .unwrap_err()
                    .code,
                RINGBASE_E_INVALID_KEY
            );
            let long = vec![b'a'; MAX_KEY_LEN + 1];
            assert_eq!(
                key(long.as_ptr() as *const c_char, long.len(), "key")
                    .unwrap_err()
                    .code,
                RINGBASE_E_TOO_LARGE
            );
        }
        assert_eq!(value_kind(3).unwrap_err().code, RINGBASE_E_INVALID);
    }
}
