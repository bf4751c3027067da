//! Vector search: records stored with an embedding, and the nearest records to a vector.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::{null, null_mut};

use ::ringbase_client::VectorSearch;

use crate::error::{Failure, RINGBASE_E_NOT_FOUND};
use crate::handle::{
    enter, free_box, handle, kind_code, nul_terminated as nul, out, put_args, ringbase_client, text,
};

/// A vector from C: `dim` floats at `p` (NULL only with `dim` 0).
///
/// # Safety
///
/// `p` is NULL or points at `dim` readable floats.
unsafe fn floats<'a>(p: *const f32, dim: usize, name: &str) -> Result<&'a [f32], Failure> {
    if p.is_null() {
        if dim == 0 {
            return Ok(&[]);
        }
        return Err(Failure::invalid(format!("{name} is NULL but dim is {dim}")));
    }
    if dim > isize::MAX as usize / 4 {
        return Err(Failure::invalid(format!("{name} dim {dim} is impossible")));
    }
    if !p.is_aligned() {
        return Err(Failure::invalid(format!("{name} is not aligned for float")));
    }
    // SAFETY: non-NULL and aligned; the caller guarantees `dim` readable floats.
    Ok(unsafe { std::slice::from_raw_parts(p, dim) })
}

/// Writes `value` under `key` together with its embedding `vector` (`dim` floats), in
/// one transaction, and returns once it is committed; the vector is then found by
/// `ringbase_vsearch` (also by searches on other clients that start after this
/// returns). Every vector of a database has the dimension of the first one stored. A
/// later `ringbase_put` (without a vector) or `ringbase_delete` of the key removes
/// its vector. Arguments as for `ringbase_put`; `vector` is only read during the call.
///
/// Errors: as for `ringbase_put`, and `RINGBASE_E_INVALID_VECTOR` (a dimension other
/// than the database's, a NaN or an infinity, all zeros, or `dim` 0),
/// `RINGBASE_E_INVALID` (`vector` NULL with `dim` > 0, or not aligned for `float`).
/// On any error but `RINGBASE_E_DISCONNECTED`, nothing was written.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `key` and `value` point at `key_len` and `value_len`
/// readable bytes (or are NULL with length 0); `vector` points at `dim` readable floats
/// (or is NULL with `dim` 0).
#[no_mangle]
pub unsafe extern "C" fn ringbase_put_with_vector(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_void,
    value_len: usize,
    kind: c_int,
    vector: *const f32,
    dim: usize,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: `key_len` and `value_len` readable bytes (caller's contract).
        let (key, value, kind) = unsafe { put_args(key, key_len, value, value_len, kind) }?;
        // SAFETY: `dim` readable floats (caller's contract).
        let vector = unsafe { floats(vector, dim, "vector") }?;
        st.settle()?.put_with_vector(key, value, kind, vector)?;
        Ok(())
    })
}

/// Options of `ringbase_vsearch`. All zero (or a NULL pointer) means: 10 results, no
/// minimum score, no prefix, the server's search breadth, no values.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ringbase_vsearch_options {
    /// How many results (0: 10; at most 1000).
    pub k: u32,
    /// Search breadth of the HNSW graph (0: the server's default): higher finds the
    /// true nearest more often, and takes longer.
    pub ef: u32,
    /// Only results scoring at least this (0 to 1).
    pub min_score: f32,
    /// 1: return each result's value too.
    pub with_values: c_int,
    /// Only keys starting with these `prefix_len` bytes of UTF-8 (NULL with 0: all
    /// keys). `k` results still come back whenever `k` such records with vectors exist.
    pub prefix: *const c_char,
    /// Length of `prefix` in bytes.
    pub prefix_len: usize,
}

/// One result of `ringbase_vsearch`, filled in by `ringbase_neighbors_next`. The key
/// and value belong to the `ringbase_neighbors` and stay valid until
/// `ringbase_neighbors_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ringbase_neighbor {
    /// The key: `key_len` bytes, followed by a NUL byte.
    pub key: *const c_char,
    /// Its length in bytes.
    pub key_len: usize,
    /// `max(0, cosine similarity)` with the query: 1 for the same direction.
    pub score: f32,
    /// `RINGBASE_JSON` or `RINGBASE_BYTES` if the search asked for values, else 0.
    pub kind: c_int,
    /// The value if the search asked for values (`value_len` bytes, followed by a NUL
    /// byte), else NULL.
    pub value: *const c_void,
    /// Its length in bytes (0 without values).
    pub value_len: usize,
}

/// The results of a vector search (opaque), made by `ringbase_vsearch` or
/// `ringbase_search_text` and freed by
/// `ringbase_neighbors_free`; owned by the caller.
///
/// It holds every result, independent of the client it came from. Not thread-safe: use
/// it from one thread at a time.
pub struct ringbase_neighbors {
    items: Vec<Item>,
    /// Results handed out by `ringbase_neighbors_next` so far.
    next: usize,
}

/// One result: key (NUL-terminated), score, and kind with value (NUL-terminated) if
/// the search asked for values.
type Item = (Vec<u8>, f32, Option<(c_int, Vec<u8>)>);

/// The records whose vectors are nearest to `vector` (`dim` floats) by cosine
/// similarity, best first, as `opts` asks (NULL: the defaults, see
/// `ringbase_vsearch_options`). The search sees every write made earlier on `c`. No
/// results (not an error) while no vector is stored.
///
/// Ownership: on success `*out` is a new result owned by the caller (walk it with
/// `ringbase_neighbors_next`, free it with `ringbase_neighbors_free`). On failure
/// `*out` is NULL. `vector`, `opts` and its prefix are only read during the call.
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `out` NULL, `vector` NULL with `dim` > 0 or not
/// aligned, a prefix that is NULL with a length or not UTF-8),
/// `RINGBASE_E_INVALID_VECTOR` (a dimension other than the database's, a NaN or an
/// infinity, all zeros, or `dim` 0), `RINGBASE_E_TOO_LARGE` (a prefix longer than
/// `RINGBASE_MAX_KEY_LEN`), `RINGBASE_E_STORAGE`, `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `vector` points at `dim` readable floats (or is NULL
/// with `dim` 0); `opts` is NULL or readable, its `prefix` pointing at `prefix_len`
/// readable bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_vsearch(
    c: *mut ringbase_client,
    vector: *const f32,
    dim: usize,
    opts: *const ringbase_vsearch_options,
    out: *mut *mut ringbase_neighbors,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let out = unsafe { crate::handle::out(out, "out") }?;
        *out = null_mut();
        // SAFETY: `dim` readable floats (caller's contract).
        let vector = unsafe { floats(vector, dim, "vector") }?;
        // SAFETY: NULL or readable, its prefix `prefix_len` bytes (caller's contract).
        let search = unsafe { options(opts) }?;
        let found = st.settle()?.vector_search_with(vector, &search)?;
        *out = results(found);
        Ok(())
    })
}

/// The records nearest in meaning to `text` (`text_len` bytes of UTF-8), best first,
/// as `opts` asks (NULL: the defaults, see `ringbase_vsearch_options`): the server
/// embeds the text with its embedding model (`ringbase serve --embed-model DIR`, the
/// model that also gives JSON puts their vectors) and searches like
/// `ringbase_vsearch`. The search sees every write made earlier on `c`.
///
/// Ownership: on success `*out` is a new result owned by the caller (walk it with
/// `ringbase_neighbors_next`, free it with `ringbase_neighbors_free`). On failure
/// `*out` is NULL. `text`, `opts` and its prefix are only read during the call.
///
/// Errors: `RINGBASE_E_NO_EMBEDDER` (the server has no embedding model),
/// `RINGBASE_E_INVALID` (`c` or `out` NULL, `text` NULL with a length, not UTF-8, or
/// a prefix that is NULL with a length or not UTF-8), `RINGBASE_E_BAD_REQUEST` (an
/// empty text), `RINGBASE_E_TOO_LARGE` (a prefix longer than `RINGBASE_MAX_KEY_LEN`, a
/// text larger than a request), `RINGBASE_E_SERVER` (the model failed),
/// `RINGBASE_E_STORAGE`, `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `text` points at `text_len` readable bytes (or is
/// NULL with 0); `opts` is NULL or readable, its `prefix` pointing at `prefix_len`
/// readable bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_search_text(
    c: *mut ringbase_client,
    text_ptr: *const c_char,
    text_len: usize,
    opts: *const ringbase_vsearch_options,
    out: *mut *mut ringbase_neighbors,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let out = unsafe { crate::handle::out(out, "out") }?;
        *out = null_mut();
        // SAFETY: `text_len` readable bytes (caller's contract).
        let query = unsafe { text(text_ptr, text_len, "text") }?;
        // SAFETY: NULL or readable, its prefix `prefix_len` bytes (caller's contract).
        let search = unsafe { options(opts) }?;
        let found = st.settle()?.search_text_with(query, &search)?;
        *out = results(found);
        Ok(())
    })
}

/// The search options from C (NULL: the defaults).
///
/// # Safety
///
/// `opts` is NULL or readable, its `prefix` pointing at `prefix_len` readable bytes.
unsafe fn options(opts: *const ringbase_vsearch_options) -> Result<VectorSearch, Failure> {
    let mut search = VectorSearch::default();
    // SAFETY: NULL or readable (caller's contract).
    if let Some(o) = unsafe { opts.as_ref() } {
        search.k = o.k;
        search.ef = o.ef;
        search.min_score = o.min_score;
        search.with_values = o.with_values != 0;
        if !(o.prefix.is_null() && o.prefix_len == 0) {
            // SAFETY: `prefix_len` readable bytes (caller's contract).
            search.prefix = Some(unsafe { text(o.prefix, o.prefix_len, "prefix") }?.to_string());
        }
    }
    Ok(search)
}

/// The results handed to C, owned by the caller.
fn results(found: Vec<::ringbase_client::Neighbor>) -> *mut ringbase_neighbors {
    let items = found
        .into_iter()
        .map(|n| {
            let value = n.record.map(|r| (kind_code(r.kind), nul(r.value)));
            (nul(n.key), n.score, value)
        })
        .collect();
    Box::into_raw(Box::new(ringbase_neighbors { items, next: 0 }))
}

/// The number of results in `n` (0 if NULL). Threads: any, one at a time per `n`.
///
/// # Safety
///
/// `n` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn ringbase_neighbors_count(n: *const ringbase_neighbors) -> usize {
    crate::error::guard_value(0, || {
        // SAFETY: NULL or a live result (caller's contract).
        unsafe { n.as_ref() }.map_or(0, |n| n.items.len())
    })
}

/// The next result, best first, into `*neighbor` (its key and value belong to `n` and
/// stay valid until `ringbase_neighbors_free`).
///
/// Errors: `RINGBASE_E_NOT_FOUND` after the last result (calling again returns it
/// again), `RINGBASE_E_INVALID` (`n` or `neighbor` NULL).
///
/// Threads: any, one at a time per `n`.
///
/// # Safety
///
/// `n` is NULL or a live result; `neighbor` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_neighbors_next(
    n: *mut ringbase_neighbors,
    neighbor: *mut ringbase_neighbor,
) -> c_int {
    crate::error::guard(|| {
        // SAFETY: NULL or a live result used by one thread at a time (caller's contract).
        let n = unsafe { n.as_mut() }.ok_or_else(|| Failure::invalid("neighbors is NULL"))?;
        // SAFETY: NULL or writable (caller's contract).
        let neighbor = unsafe { out(neighbor, "neighbor") }?;
        let Some((key, score, value)) = n.items.get(n.next) else {
            return Err(Failure::new(RINGBASE_E_NOT_FOUND, "no more results"));
        };
        n.next += 1;
        let (kind, value, value_len) = match value {
            Some((kind, v)) => (*kind, v.as_ptr() as *const c_void, v.len() - 1),
            None => (0, null(), 0),
        };
        *neighbor = ringbase_neighbor {
            key: key.as_ptr() as *const c_char,
            key_len: key.len() - 1,
            score: *score,
            kind,
            value,
            value_len,
        };
        Ok(())
    })
}

/// Frees `n` and every key and value it holds. NULL is a no-op. Threads: any, one at a
/// time per `n`.
///
/// # Safety
///
/// `n` is NULL or a live result, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn ringbase_neighbors_free(n: *mut ringbase_neighbors) {
    // SAFETY: `n` is NULL or came from `Box::into_raw` in `results` and is
    // freed once (caller's contract).
    unsafe { free_box(n) }
}
