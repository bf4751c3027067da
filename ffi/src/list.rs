//! List iterators: records in key order, fetched from the server a page at a time.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::null_mut;
use std::sync::Arc;

use ::ringbase_client::{FieldFilter, Record};

use crate::error::{Failure, RINGBASE_E_NOT_FOUND};
use crate::handle::{enter, fail, free_box, handle, key as key_arg, kind_code, on_state, text};
use crate::handle::{out, out_opt, ringbase_client, Shared, State};

/// Records asked for per request (the server may return fewer: it caps a page at what
/// fits in one response).
const PAGE: u64 = 256;

/// An iterator over live records in key order (opaque), made by `ringbase_list_begin`
/// and freed by `ringbase_list_free`; owned by the caller.
///
/// It fetches records from the server a page at a time as `ringbase_list_next` needs
/// them, so it sees a consistent order but not a snapshot: records written meanwhile
/// may or may not appear. It belongs to the client it was made on and follows its
/// thread rule; it stays safe to free after that client was closed.
pub struct ringbase_list {
    shared: Arc<Shared>,
    cursor: Cursor,
}

#[derive(Debug)]
struct Cursor {
    prefix: String,
    /// Key of the last record fetched (the next page starts after it).
    after: Option<String>,
    /// Records the caller's limit still allows.
    remaining: u64,
    /// Whether the server may have records after the current page.
    more: bool,
    page: std::vec::IntoIter<Record>,
    /// Only JSON records whose field equals a value (`ringbase_list_where`).
    filter: Option<FieldFilter>,
    /// Whether a page was fetched (the filter is fixed from then on).
    started: bool,
    /// The record handed out by the last `next`: its key followed by a NUL byte.
    key: Vec<u8>,
    /// Its value.
    value: Vec<u8>,
}

impl Cursor {
    /// Moves to the next record and returns its kind code, or `None` at the end.
    fn advance(&mut self, st: &mut State) -> Result<Option<c_int>, Failure> {
        loop {
            if self.remaining == 0 {
                return Ok(None);
            }
            if let Some(r) = self.page.next() {
                self.remaining -= 1;
                let Record {
                    key, value, kind, ..
                } = r;
                self.key = key.into_bytes();
                self.key.push(0);
                self.value = value;
                return Ok(Some(kind_code(kind)));
            }
            if !self.more {
                return Ok(None);
            }
            let want = u32::try_from(self.remaining.min(PAGE)).unwrap_or(PAGE as u32);
            self.started = true;
            let client = st.settle()?;
            let page = match &self.filter {
                None => client.list(&self.prefix, self.after.as_deref(), want)?,
                Some(f) => client.list_where(&self.prefix, self.after.as_deref(), want, f)?,
            };
            // An empty page ends the listing even if the server claims more, so a
            // confused server cannot make `next` loop forever.
            self.more = page.more && !page.records.is_empty();
            if let Some(last) = page.records.last() {
                self.after = Some(last.key.clone());
            }
            self.page = page.records.into_iter();
        }
    }
}

/// Begins listing the live records of `c` whose key starts with `prefix` and, if
/// `start_after` is not NULL, is greater than `start_after` (exclusive; use it to
/// resume after the last key seen), in key order, at most `limit` of them (0 = no
/// limit). Nothing is sent to the server before the first `ringbase_list_next`.
///
/// `prefix` (NULL or empty = every key) and `start_after` are `*_len` bytes of UTF-8,
/// not NUL-terminated, copied by this call.
///
/// Ownership: on success `*out` is a new iterator owned by the caller, freed with
/// `ringbase_list_free`. On failure `*out` is NULL.
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `out` NULL, a string NULL with a non-zero
/// length), `RINGBASE_E_INVALID_KEY` (not UTF-8), `RINGBASE_E_TOO_LARGE` (longer than
/// `RINGBASE_MAX_KEY_LEN`).
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `prefix` and `start_after` point at `prefix_len` and
/// `start_after_len` readable bytes (or are NULL: for `prefix` only with length 0);
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_list_begin(
    c: *mut ringbase_client,
    prefix: *const c_char,
    prefix_len: usize,
    start_after: *const c_char,
    start_after_len: usize,
    limit: u64,
    out: *mut *mut ringbase_list,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |_| {
        // SAFETY: NULL or writable (caller's contract).
        let out = unsafe { crate::handle::out(out, "out") }?;
        *out = null_mut();
        // SAFETY: `prefix_len` readable bytes (caller's contract).
        let prefix = unsafe { key_arg(prefix, prefix_len, "prefix") }?;
        let after = if start_after.is_null() {
            None
        } else {
            // SAFETY: `start_after_len` readable bytes (caller's contract).
            Some(unsafe { key_arg(start_after, start_after_len, "start_after") }?.to_string())
        };
        let shared = Arc::clone(&h.expect("enter checked it").shared);
        *out = Box::into_raw(Box::new(ringbase_list {
            shared,
            cursor: Cursor {
                prefix: prefix.to_string(),
                after,
                remaining: if limit == 0 { u64::MAX } else { limit },
                more: true,
                page: Vec::new().into_iter(),
                filter: None,
                started: false,
                key: Vec::new(),
                value: Vec::new(),
            },
        }));
        Ok(())
    })
}

/// Restricts the iterator `it` to JSON records whose field at `path` equals `value`:
/// `path` is a JSON path (`$` followed by `.name` and `[index]` steps, e.g. `$.type`),
/// `value` a JSON string, number or boolean (e.g. `"enemy"` with its quotes, or `3`),
/// `path_len` and `value_len` bytes of UTF-8, copied by this call. Call it before the
/// first `ringbase_list_next`. The server checks both when the first page is fetched:
/// a bad path or value makes that `ringbase_list_next` fail with
/// `RINGBASE_E_INVALID_QUERY`. Fast when the field has an index
/// (`ringbase_index_create`).
///
/// Errors: `RINGBASE_E_INVALID` (`it`, `path` or `value` NULL, not UTF-8, or called
/// after the first `ringbase_list_next`).
///
/// Threads: the thread using the iterator's client.
///
/// # Safety
///
/// `it` is NULL or a live iterator; `path` and `value` point at `path_len` and
/// `value_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn ringbase_list_where(
    it: *mut ringbase_list,
    path: *const c_char,
    path_len: usize,
    value: *const c_char,
    value_len: usize,
) -> c_int {
    crate::error::guard(|| {
        // SAFETY: NULL or a live iterator used by this thread only (caller's contract).
        let it =
            unsafe { it.as_mut() }.ok_or_else(|| Failure::invalid("the list iterator is NULL"))?;
        if it.cursor.started {
            return Err(Failure::invalid(
                "ringbase_list_where must come before the first ringbase_list_next",
            ));
        }
        // SAFETY: `path_len` and `value_len` readable bytes (caller's contract).
        let (path, value) = unsafe {
            (
                text(path, path_len, "path")?,
                text(value, value_len, "value")?,
            )
        };
        it.cursor.filter = Some(FieldFilter {
            path: path.to_string(),
            value: value.to_string(),
        });
        Ok(())
    })
}

/// Moves to the next record and returns pointers to it.
///
/// On `RINGBASE_OK`: `*key` points at the key's `*key_len` bytes, followed by a NUL
/// byte (keys never contain NUL, so it is also a C string); `*value` at the value's
/// `*value_len` bytes; `*kind` (if `kind` is not NULL) is `RINGBASE_JSON` or
/// `RINGBASE_BYTES`. Both buffers belong to the iterator and stay valid until the next
/// `ringbase_list_next` on it or `ringbase_list_free` (other calls on the client do not
/// invalidate them). At the end, or on failure, the out-pointers are set to NULL / 0.
///
/// Errors: `RINGBASE_E_NOT_FOUND` at the end (no more records; calling again returns
/// it again), `RINGBASE_E_INVALID` (`it`, `key`, `key_len`, `value` or `value_len`
/// NULL, or the client was closed), `RINGBASE_E_TOO_LARGE` (a record too large for
/// the session's response ring), `RINGBASE_E_INVALID_QUERY` (a bad
/// `ringbase_list_where` path or value), `RINGBASE_E_STORAGE`,
/// `RINGBASE_E_DISCONNECTED`.
/// Detail in `ringbase_last_error` of the iterator's client.
///
/// Threads: the thread using the iterator's client. Fetching a page is a call on that
/// client (it invalidates the pointers of `ringbase_get_view`).
///
/// # Safety
///
/// `it` is NULL or a live iterator; the out-pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_list_next(
    it: *mut ringbase_list,
    key: *mut *const c_char,
    key_len: *mut usize,
    value: *mut *const c_void,
    value_len: *mut usize,
    kind: *mut c_int,
) -> c_int {
    // SAFETY: NULL or a live iterator used by this thread only (caller's contract).
    let Some(ringbase_list { shared, cursor }) = (unsafe { it.as_mut() }) else {
        return fail(Failure::invalid("the list iterator is NULL"));
    };
    on_state(shared, |st| {
        // SAFETY: NULL or writable (caller's contract), for each of the five.
        let (key, key_len, value, value_len, kind) = unsafe {
            (
                out(key, "key")?,
                out(key_len, "key_len")?,
                out(value, "value")?,
                out(value_len, "value_len")?,
                out_opt(kind),
            )
        };
        *key = std::ptr::null();
        *key_len = 0;
        *value = std::ptr::null();
        *value_len = 0;
        let Some(k) = cursor.advance(st)? else {
            return Err(Failure::new(RINGBASE_E_NOT_FOUND, "end of the list"));
        };
        *key = cursor.key.as_ptr() as *const c_char;
        *key_len = cursor.key.len() - 1;
        *value = cursor.value.as_ptr() as *const c_void;
        *value_len = cursor.value.len();
        if let Some(kind) = kind {
            *kind = k;
        }
        Ok(())
    })
}

/// Frees the iterator and the record it points at. NULL is a no-op.
///
/// Threads: the thread using the iterator's client.
///
/// # Safety
///
/// `it` is NULL or a live iterator, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn ringbase_list_free(it: *mut ringbase_list) {
    // SAFETY: `it` is NULL or came from `Box::into_raw` in `ringbase_list_begin` and is
    // freed once (caller's contract).
    unsafe { free_box(it) }
}
