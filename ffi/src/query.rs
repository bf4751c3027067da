//! Queries: read-only SQL over the server's `records` view, and the rows they return.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::{null, null_mut};
use std::time::Duration;

use ::ringbase_client::{QueryOptions, SqlValue};

use crate::error::{Failure, RINGBASE_E_NOT_FOUND};
use crate::handle::{bytes, enter, free_box, handle, nul_terminated, out, ringbase_client, text};

/// `ringbase_value.type`: SQL NULL.
pub const RINGBASE_SQL_NULL: c_int = 0;
/// `ringbase_value.type`: a 64-bit signed integer in `integer`.
pub const RINGBASE_SQL_INTEGER: c_int = 1;
/// `ringbase_value.type`: a double in `real`.
pub const RINGBASE_SQL_REAL: c_int = 2;
/// `ringbase_value.type`: UTF-8 text, `len` bytes at `data`.
pub const RINGBASE_SQL_TEXT: c_int = 3;
/// `ringbase_value.type`: bytes, `len` bytes at `data`.
pub const RINGBASE_SQL_BLOB: c_int = 4;

/// A query parameter or result cell: one of SQLite's five types.
///
/// `type` says which fields hold the value: `integer` for `RINGBASE_SQL_INTEGER`,
/// `real` for `RINGBASE_SQL_REAL`, `data` and `len` for `RINGBASE_SQL_TEXT` (UTF-8)
/// and `RINGBASE_SQL_BLOB`; the other fields are 0 / NULL. For a result cell, `data` is
/// owned by its `ringbase_rows` (text is followed by a NUL byte not counted in `len`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ringbase_value {
    /// `RINGBASE_SQL_NULL`, `_INTEGER`, `_REAL`, `_TEXT` or `_BLOB`.
    pub r#type: c_int,
    /// The value of an integer.
    pub integer: i64,
    /// The value of a real.
    pub real: f64,
    /// The bytes of a text or blob (NULL is allowed with `len` 0).
    pub data: *const c_void,
    /// Their length in bytes.
    pub len: usize,
}

/// The rows of a query (opaque), made by `ringbase_query` and freed by
/// `ringbase_rows_free`; owned by the caller.
///
/// It holds the whole result, independent of the client it came from (which may be
/// closed or used for other calls meanwhile). Not thread-safe: use it from one thread
/// at a time.
pub struct ringbase_rows {
    columns: Vec<Vec<u8>>,
    rows: Vec<Vec<Cell>>,
    truncated: bool,
    /// The current row of the iterator: 0 before the first `ringbase_rows_next`, then
    /// the 1-based row number.
    cursor: usize,
}

/// A result cell; text and blob bytes are kept with a trailing NUL (not counted).
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Cell {
    fn from_sql(v: SqlValue) -> Cell {
        match v {
            SqlValue::Null => Cell::Null,
            SqlValue::Integer(i) => Cell::Integer(i),
            SqlValue::Real(f) => Cell::Real(f),
            SqlValue::Text(t) => Cell::Text(nul_terminated(t)),
            SqlValue::Blob(b) => Cell::Blob(nul_terminated(b)),
        }
    }

    fn to_c(&self) -> ringbase_value {
        let mut v = ringbase_value {
            r#type: RINGBASE_SQL_NULL,
            integer: 0,
            real: 0.0,
            data: null(),
            len: 0,
        };
        match self {
            Cell::Null => {}
            Cell::Integer(i) => {
                v.r#type = RINGBASE_SQL_INTEGER;
                v.integer = *i;
            }
            Cell::Real(f) => {
                v.r#type = RINGBASE_SQL_REAL;
                v.real = *f;
            }
            Cell::Text(b) | Cell::Blob(b) => {
                v.r#type = if matches!(self, Cell::Text(_)) {
                    RINGBASE_SQL_TEXT
                } else {
                    RINGBASE_SQL_BLOB
                };
                v.data = b.as_ptr() as *const c_void;
                v.len = b.len() - 1;
            }
        }
        v
    }
}

/// A parameter from C.
///
/// # Safety
///
/// `p.data` points at `p.len` readable bytes (or is NULL with `len` 0) for text and blob.
unsafe fn param(p: &ringbase_value, i: usize) -> Result<SqlValue, Failure> {
    let data = || {
        // SAFETY: `len` readable bytes (caller's contract).
        unsafe { bytes(p.data, p.len, &format!("params[{i}].data")) }
    };
    Ok(match p.r#type {
        RINGBASE_SQL_NULL => SqlValue::Null,
        RINGBASE_SQL_INTEGER => SqlValue::Integer(p.integer),
        RINGBASE_SQL_REAL => SqlValue::Real(p.real),
        RINGBASE_SQL_TEXT => SqlValue::Text(
            std::str::from_utf8(data()?)
                .map_err(|_| Failure::invalid(format!("params[{i}] is text but not UTF-8")))?
                .to_string(),
        ),
        RINGBASE_SQL_BLOB => SqlValue::Blob(data()?.to_vec()),
        t => {
            return Err(Failure::invalid(format!(
                "params[{i}] has an unknown type {t}"
            )))
        }
    })
}

/// Runs one read-only SQL statement over the `records` view of `c`'s server and
/// returns all its rows (up to the limits) in `*out`.
///
/// The view has one row per live record: `key` (text), `kind` (`'json'` or
/// `'bytes'`), `value` (a JSON record's value as text, so `json_extract(value, '$.hp')`
/// works; NULL for a bytes record), `bytes` (a bytes record's value as a blob; NULL for
/// JSON), `updated_at` (unix ms), `hlc`, `replica` (hex text) and `seq`. The query
/// sees every write made earlier on `c`. `sql` is `sql_len` bytes of UTF-8 (not
/// NUL-terminated), one statement; `params` are `n_params` positional parameters
/// (`?`, `?NNN`), copied by this call (NULL if `n_params` is 0). `max_rows` caps the
/// rows (0 = the server's default, 1000; the server allows at most 100,000) and
/// `timeout_ms` is the query's time budget (0 = the server's default, 2000 ms; at most
/// 30,000). A result cut short by either limit, or by the session's response size,
/// has `ringbase_rows_truncated` set.
///
/// Ownership: on success `*out` is a new result owned by the caller, freed with
/// `ringbase_rows_free`. On failure `*out` is NULL.
///
/// Errors: `RINGBASE_E_INVALID` (`c`, `sql` or `out` NULL, `params` NULL with
/// `n_params` > 0, a parameter of unknown type, or text that is not UTF-8),
/// `RINGBASE_E_INVALID_QUERY` (syntax, unknown table or column, wrong parameter count,
/// several statements), `RINGBASE_E_READ_ONLY` (a writing statement, a pragma, or
/// anything but the `records` view), `RINGBASE_E_BUDGET` (ran past its time budget),
/// `RINGBASE_E_TOO_LARGE` (one row, or one value, larger than the session's response
/// ring), `RINGBASE_E_STORAGE`, `RINGBASE_E_DISCONNECTED`. Nothing is ever changed by a
/// query.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `sql` points at `sql_len` readable bytes; `params`
/// points at `n_params` readable values whose text and blob pointers are readable for
/// their lengths; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_query(
    c: *mut ringbase_client,
    sql: *const c_char,
    sql_len: usize,
    params: *const ringbase_value,
    n_params: usize,
    max_rows: u32,
    timeout_ms: u32,
    out: *mut *mut ringbase_rows,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let out = unsafe { crate::handle::out(out, "out") }?;
        *out = null_mut();
        // SAFETY: `sql_len` readable bytes (caller's contract).
        let sql = unsafe { text(sql, sql_len, "sql") }?;
        let params: &[ringbase_value] = match (params.is_null(), n_params) {
            (_, 0) => &[],
            (true, _) => return Err(Failure::invalid("params is NULL but n_params > 0")),
            // SAFETY: `n_params` readable values (caller's contract).
            (false, n) => unsafe { std::slice::from_raw_parts(params, n) },
        };
        let params = params
            .iter()
            .enumerate()
            // SAFETY: each value's bytes are readable (caller's contract).
            .map(|(i, p)| unsafe { param(p, i) })
            .collect::<Result<Vec<_>, _>>()?;
        let opts = QueryOptions {
            max_rows,
            timeout: Duration::from_millis(timeout_ms.into()),
        };
        let result = st.settle()?.query_with(sql, &params, opts)?;
        *out = Box::into_raw(Box::new(ringbase_rows {
            columns: result.columns.into_iter().map(nul_terminated).collect(),
            rows: result
                .rows
                .into_iter()
                .map(|r| r.into_iter().map(Cell::from_sql).collect())
                .collect(),
            truncated: result.truncated,
            cursor: 0,
        }));
        Ok(())
    })
}

/// The number of columns of `rows` (0 if `rows` is NULL).
///
/// Threads: any, one at a time per `rows`.
///
/// # Safety
///
/// `rows` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn ringbase_rows_column_count(rows: *const ringbase_rows) -> usize {
    crate::error::guard_value(0, || {
        // SAFETY: NULL or a live result (caller's contract).
        unsafe { rows.as_ref() }.map_or(0, |r| r.columns.len())
    })
}

/// The name of column `i` of `rows`: a NUL-terminated string owned by `rows`, valid
/// until `ringbase_rows_free`. NULL if `rows` is NULL or `i` is out of range.
///
/// Threads: any, one at a time per `rows`.
///
/// # Safety
///
/// `rows` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn ringbase_rows_column_name(
    rows: *const ringbase_rows,
    i: usize,
) -> *const c_char {
    crate::error::guard_value(null(), || {
        // SAFETY: NULL or a live result (caller's contract).
        unsafe { rows.as_ref() }
            .and_then(|r| r.columns.get(i))
            .map_or(null(), |c| c.as_ptr() as *const c_char)
    })
}

/// The number of rows in `rows` (0 if `rows` is NULL).
///
/// Threads: any, one at a time per `rows`.
///
/// # Safety
///
/// `rows` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn ringbase_rows_count(rows: *const ringbase_rows) -> usize {
    crate::error::guard_value(0, || {
        // SAFETY: NULL or a live result (caller's contract).
        unsafe { rows.as_ref() }.map_or(0, |r| r.rows.len())
    })
}

/// 1 if the statement had more rows than `rows` holds (cut short by the row limit or
/// the session's response size), else 0 (also for NULL).
///
/// Threads: any, one at a time per `rows`.
///
/// # Safety
///
/// `rows` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn ringbase_rows_truncated(rows: *const ringbase_rows) -> c_int {
    crate::error::guard_value(0, || {
        // SAFETY: NULL or a live result (caller's contract).
        c_int::from(unsafe { rows.as_ref() }.is_some_and(|r| r.truncated))
    })
}

/// Moves the row iterator of `rows` to the next row (the first, on the first call);
/// read its cells with `ringbase_rows_get`.
///
/// Errors: `RINGBASE_E_NOT_FOUND` after the last row (calling again returns it again),
/// `RINGBASE_E_INVALID` (`rows` NULL).
///
/// Threads: any, one at a time per `rows`.
///
/// # Safety
///
/// `rows` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn ringbase_rows_next(rows: *mut ringbase_rows) -> c_int {
    crate::error::guard(|| {
        // SAFETY: NULL or a live result used by one thread at a time (caller's contract).
        let r = unsafe { rows.as_mut() }.ok_or_else(|| Failure::invalid("rows is NULL"))?;
        if r.cursor >= r.rows.len() {
            r.cursor = r.rows.len() + 1;
            return Err(Failure::new(RINGBASE_E_NOT_FOUND, "no more rows"));
        }
        r.cursor += 1;
        Ok(())
    })
}

/// The cell in column `col` of the iterator's current row, into `*value` (see
/// `ringbase_value`; its `data` belongs to `rows` and stays valid until
/// `ringbase_rows_free`).
///
/// Errors: `RINGBASE_E_INVALID` (`rows` or `value` NULL, no current row: before the
/// first or after the last `ringbase_rows_next`), `RINGBASE_E_NOT_FOUND` (`col` out of
/// range).
///
/// Threads: any, one at a time per `rows`.
///
/// # Safety
///
/// `rows` is NULL or a live result; `value` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_rows_get(
    rows: *const ringbase_rows,
    col: usize,
    value: *mut ringbase_value,
) -> c_int {
    crate::error::guard(|| {
        // SAFETY: NULL or a live result (caller's contract).
        let r = unsafe { rows.as_ref() }.ok_or_else(|| Failure::invalid("rows is NULL"))?;
        // SAFETY: NULL or writable (caller's contract).
        let value = unsafe { out(value, "value") }?;
        let row = r
            .cursor
            .checked_sub(1)
            .and_then(|i| r.rows.get(i))
            .ok_or_else(|| Failure::invalid("no current row: call ringbase_rows_next first"))?;
        let cell = row.get(col).ok_or_else(|| {
            Failure::new(
                RINGBASE_E_NOT_FOUND,
                format!("column {col} out of range ({} columns)", r.columns.len()),
            )
        })?;
        *value = cell.to_c();
        Ok(())
    })
}

/// Frees `rows` and every cell and name it holds. NULL is a no-op.
///
/// Threads: any, one at a time per `rows`.
///
/// # Safety
///
/// `rows` is NULL or a live result, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn ringbase_rows_free(rows: *mut ringbase_rows) {
    // SAFETY: `rows` is NULL or came from `Box::into_raw` in `ringbase_query` and is
    // freed once (caller's contract).
    unsafe { free_box(rows) }
}

/// Creates an index on the JSON field at `path` (`path_len` bytes of UTF-8, e.g.
/// `$.type`: `$` followed by `.name` and `[index]` steps), which makes
/// `ringbase_list_where` filters and queries on that field fast. `*created` (if
/// `created` is not NULL) is 1 if it was created, 0 if it existed. Building it over many
/// records takes a while, during which the server's writes wait. The index persists.
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `path` NULL, not UTF-8),
/// `RINGBASE_E_INVALID_QUERY` (not a path of that form), `RINGBASE_E_STORAGE`,
/// `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `path` points at `path_len` readable bytes; `created`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_index_create(
    c: *mut ringbase_client,
    path: *const c_char,
    path_len: usize,
    created: *mut c_int,
) -> c_int {
    // SAFETY: as for this function (caller's contract).
    unsafe { index_call(c, path, path_len, created, true) }
}

/// Drops the index on the JSON field at `path` (as for `ringbase_index_create`).
/// `*existed` (if not NULL) is 1 if it existed, else 0.
///
/// Errors: as for `ringbase_index_create`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// As for `ringbase_index_create`.
#[no_mangle]
pub unsafe extern "C" fn ringbase_index_drop(
    c: *mut ringbase_client,
    path: *const c_char,
    path_len: usize,
    existed: *mut c_int,
) -> c_int {
    // SAFETY: as for this function (caller's contract).
    unsafe { index_call(c, path, path_len, existed, false) }
}

/// `ringbase_index_create` (`create`) or `ringbase_index_drop`.
///
/// # Safety
///
/// As for `ringbase_index_create`.
unsafe fn index_call(
    c: *mut ringbase_client,
    path: *const c_char,
    path_len: usize,
    changed: *mut c_int,
    create: bool,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: `path_len` readable bytes (caller's contract).
        let path = unsafe { text(path, path_len, "path") }?;
        let client = st.settle()?;
        let did = if create {
            client.create_index(path)?
        } else {
            client.drop_index(path)?
        };
        // SAFETY: NULL or writable (caller's contract).
        if let Some(changed) = unsafe { crate::handle::out_opt(changed) } {
            *changed = c_int::from(did);
        }
        Ok(())
    })
}
