//! Full-text search and its hits.

use std::ffi::{c_char, c_int};
use std::ptr::null_mut;

use crate::error::{Failure, RINGBASE_E_NOT_FOUND};
use crate::handle::{
    enter, free_box, handle, nul_terminated as nul, out, out_opt, ringbase_client, text as text_arg,
};

/// The hits of a full-text search (opaque), made by `ringbase_search` and freed by
/// `ringbase_hits_free`; owned by the caller.
///
/// It holds every hit, independent of the client it came from. Not thread-safe: use it
/// from one thread at a time.
pub struct ringbase_hits {
    /// Key and snippet of each hit, each followed by a NUL byte, and the score.
    hits: Vec<(Vec<u8>, f64, Vec<u8>)>,
    /// Hits handed out by `ringbase_hits_next` so far.
    next: usize,
}

/// Full-text search on `c`'s server: the live JSON records whose string values (at
/// any depth; not member names) contain every word of `text` (`text_len` bytes of
/// UTF-8; words match whole, ignoring case and diacritics; no character is query
/// syntax), best first, at most `limit` (0 = the server's default, 20; at most 1000).
/// The search sees every write made earlier on `c`.
///
/// Ownership: on success `*out` is a new result owned by the caller (walk it with
/// `ringbase_hits_next`, free it with `ringbase_hits_free`). On failure `*out` is NULL.
///
/// Errors: `RINGBASE_E_INVALID` (`c`, `text` or `out` NULL, `text` not UTF-8),
/// `RINGBASE_E_UNSUPPORTED` (the full-text index is off: see `ringbase_fulltext`),
/// `RINGBASE_E_INVALID_QUERY` (`text` has no words), `RINGBASE_E_STORAGE`,
/// `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `text` points at `text_len` readable bytes; `out` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_search(
    c: *mut ringbase_client,
    text: *const c_char,
    text_len: usize,
    limit: u32,
    out: *mut *mut ringbase_hits,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let out = unsafe { crate::handle::out(out, "out") }?;
        *out = null_mut();
        // SAFETY: `text_len` readable bytes (caller's contract).
        let text = unsafe { text_arg(text, text_len, "text") }?;
        let hits = st.settle()?.search(text, limit)?;
        *out = Box::into_raw(Box::new(ringbase_hits {
            hits: hits
                .into_iter()
                .map(|h| (nul(h.key), h.score, nul(h.snippet)))
                .collect(),
            next: 0,
        }));
        Ok(())
    })
}

/// The number of hits in `hits` (0 if NULL). Threads: any, one at a time per `hits`.
///
/// # Safety
///
/// `hits` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn ringbase_hits_count(hits: *const ringbase_hits) -> usize {
    crate::error::guard_value(0, || {
        // SAFETY: NULL or a live result (caller's contract).
        unsafe { hits.as_ref() }.map_or(0, |h| h.hits.len())
    })
}

/// The next hit, best first: `*key` (`*key_len` bytes, NUL-terminated), `*score`
/// (relevance, higher is better) and, if `snippet` is not NULL, `*snippet`
/// (`*snippet_len` bytes if that is not NULL, NUL-terminated; matched words in `[`
/// `]`). The strings belong to `hits` and stay valid until `ringbase_hits_free`.
///
/// Errors: `RINGBASE_E_NOT_FOUND` after the last hit (calling again returns it
/// again), `RINGBASE_E_INVALID` (`hits`, `key`, `key_len` or `score` NULL).
///
/// Threads: any, one at a time per `hits`.
///
/// # Safety
///
/// `hits` is NULL or a live result; the out-pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_hits_next(
    hits: *mut ringbase_hits,
    key: *mut *const c_char,
    key_len: *mut usize,
    score: *mut f64,
    snippet: *mut *const c_char,
    snippet_len: *mut usize,
) -> c_int {
    crate::error::guard(|| {
        // SAFETY: NULL or a live result used by one thread at a time (caller's contract).
        let h = unsafe { hits.as_mut() }.ok_or_else(|| Failure::invalid("hits is NULL"))?;
        // SAFETY: NULL or writable (caller's contract), for each out-pointer.
        let (key, key_len, score, snippet, snippet_len) = unsafe {
            (
                out(key, "key")?,
                out(key_len, "key_len")?,
                out(score, "score")?,
                out_opt(snippet),
                out_opt(snippet_len),
            )
        };
        let Some((k, s, snip)) = h.hits.get(h.next) else {
            return Err(Failure::new(RINGBASE_E_NOT_FOUND, "no more hits"));
        };
        h.next += 1;
        *key = k.as_ptr() as *const c_char;
        *key_len = k.len() - 1;
        *score = *s;
        if let Some(p) = snippet {
            *p = snip.as_ptr() as *const c_char;
        }
        if let Some(n) = snippet_len {
            *n = snip.len() - 1;
        }
        Ok(())
    })
}

/// Frees `hits` and every string it holds. NULL is a no-op. Threads: any, one at a
/// time per `hits`.
///
/// # Safety
///
/// `hits` is NULL or a live result, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn ringbase_hits_free(hits: *mut ringbase_hits) {
    // SAFETY: `hits` is NULL or came from `Box::into_raw` in `ringbase_search` and is
    // freed once (caller's contract).
    unsafe { free_box(hits) }
}

/// Turns the full-text index of `c`'s server on (`on` != 0) or off. Off by default;
/// while on, every write also updates the index, which costs write throughput; turning
/// it on indexes every stored record first (the server's writes wait meanwhile). The
/// setting persists. `*changed` (if `changed` is not NULL) is 1 if this turned it on or
/// off, 0 if it already was.
///
/// Errors: `RINGBASE_E_INVALID` (`c` NULL), `RINGBASE_E_STORAGE`,
/// `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `changed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_fulltext(
    c: *mut ringbase_client,
    on: c_int,
    changed: *mut c_int,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        let did = st.settle()?.set_fulltext(on != 0)?;
        // SAFETY: NULL or writable (caller's contract).
        if let Some(changed) = unsafe { out_opt(changed) } {
            *changed = c_int::from(did);
        }
        Ok(())
    })
}
