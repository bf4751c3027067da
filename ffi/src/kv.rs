//! Sessions (connect, close) and the blocking key-value calls.

use std::ffi::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::ptr::null_mut;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use ::ringbase_client::{Client, ConnectOptions, RingSizes, SpawnOptions, WaitMode};

use crate::error::{
    guard, guard_value, FResult, Failure, RINGBASE_E_INVALID, RINGBASE_E_NOMEM,
    RINGBASE_E_NOT_FOUND,
};
use crate::handle::{
    c_str, enter, enter_out, handle, key as key_arg, kind_code, out, out_opt, put_args,
    ringbase_client, State,
};

fn new_handle(client: Client) -> *mut ringbase_client {
    Box::into_raw(Box::new(ringbase_client {
        shared: Arc::new(Mutex::new(State::new(client))),
    }))
}

/// The body of `ringbase_connect*`: checks `out` and sets it to NULL, then connects
/// with `connect` and stores the new handle in `*out`.
///
/// # Safety
///
/// `out` is NULL or writable.
unsafe fn connect_into(
    out: *mut *mut ringbase_client,
    connect: impl FnOnce() -> FResult<Client>,
) -> c_int {
    guard(|| {
        // SAFETY: `out` is NULL or writable (caller's contract).
        let out = unsafe { crate::handle::out(out, "out") }?;
        *out = null_mut();
        let client = connect()?;
        *out = new_handle(client);
        Ok(())
    })
}

/// Default options for the server `name` (NULL = `"default"`).
///
/// # Safety
///
/// `name` is NULL or NUL-terminated.
unsafe fn options_for(name: *const c_char) -> FResult<ConnectOptions> {
    // SAFETY: caller's contract.
    let name = unsafe { c_str(name, "name") }?.unwrap_or("default");
    Ok(ConnectOptions::new(name))
}

fn not_found(key: &str) -> Failure {
    Failure::new(RINGBASE_E_NOT_FOUND, format!("no record for key {key:?}"))
}

/// The body of `ringbase_get` and `ringbase_get_view`: checks the out-arguments and
/// clears them (`*value = null`, `*value_len = 0`), decodes the key and reads the
/// record; then `*value` is what `place` makes of the value bytes, `*value_len` their
/// length and `*kind` (if wanted) the record's kind.
///
/// # Safety
///
/// As for `ringbase_get`.
#[allow(clippy::too_many_arguments)]
unsafe fn get_into<P>(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    value: *mut P,
    value_len: *mut usize,
    kind: *mut c_int,
    null: P,
    place: impl FnOnce(&[u8]) -> FResult<P>,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract), for each of the three.
        let (value_out, len_out, kind_out) = unsafe {
            (
                out(value, "value")?,
                out(value_len, "value_len")?,
                out_opt(kind),
            )
        };
        *value_out = null;
        *len_out = 0;
        // SAFETY: `key_len` readable bytes (caller's contract).
        let key = unsafe { key_arg(key, key_len, "key") }?;
        let view = st.settle()?.get_view(key)?.ok_or_else(|| not_found(key))?;
        *value_out = place(view.value)?;
        *len_out = view.value.len();
        if let Some(k) = kind_out {
            *k = kind_code(view.kind);
        }
        Ok(())
    })
}

/// Connects to the running server `name` (NULL = `"default"`).
///
/// The server is found through its control socket in the runtime directory:
/// `$RINGBASE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/ringbase`, else `/tmp/ringbase-<uid>`.
///
/// Ownership: on success `*out` is a new handle owned by the caller, to be released
/// with `ringbase_close`. On failure `*out` is set to NULL (when `out` is not NULL).
///
/// Errors (detail in `ringbase_last_error(NULL)`):
/// `RINGBASE_E_INVALID` (`out` NULL, `name` not UTF-8 or not a valid server name),
/// `RINGBASE_E_NOT_RUNNING` (no server listens under this name),
/// `RINGBASE_E_PROTOCOL` (the server speaks another protocol version),
/// `RINGBASE_E_REFUSED` (session limit, permission, shutting down),
/// `RINGBASE_E_DISCONNECTED` (the server died during the handshake),
/// `RINGBASE_E_CORRUPT`, `RINGBASE_E_IO`.
///
/// Threads: any thread may connect; the new handle may be used by one thread at a time.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_connect(
    name: *const c_char,
    out: *mut *mut ringbase_client,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        connect_into(out, || {
            let opts = options_for(name)?;
            Ok(Client::connect_with(opts)?)
        })
    }
}

/// Connects to the server `name` (NULL = `"default"`), starting it first if none is
/// running: the sidecar start. The server is started detached (`ringbase serve
/// --name NAME`, its output appended to `server.log` in the name's runtime directory),
/// and this call waits (at most 10 s) until it accepts sessions. Several processes may
/// race here: exactly one server starts and all of them connect to it.
///
/// `server_path`: the `ringbase` binary to start; NULL = `$RINGBASE_SERVER`, else
/// `ringbase` in the directory of the calling program's executable, else `ringbase`
/// on `PATH`. The server's data directory is `$RINGBASE_DATA_DIR`, else its default
/// for the name (see `ringbase serve --help`); the spawned server inherits the
/// environment.
///
/// Ownership and threads: as for `ringbase_connect`.
///
/// Errors (detail in `ringbase_last_error(NULL)`): those of `ringbase_connect`;
/// `RINGBASE_E_IO` if the binary cannot be started; `RINGBASE_E_NOT_RUNNING` if no
/// server became ready in time (see `server.log`).
///
/// # Safety
///
/// `name` and `server_path` are NULL or NUL-terminated strings; `out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_connect_or_spawn(
    name: *const c_char,
    server_path: *const c_char,
    out: *mut *mut ringbase_client,
) -> c_int {
    // SAFETY: forwarded contract (`name`, `server_path` NULL or NUL-terminated).
    unsafe {
        connect_into(out, || {
            let opts = options_for(name)?;
            Ok(Client::connect_or_spawn(opts, spawn_options(server_path)?)?)
        })
    }
}

/// Spawn options with `server_path` (NULL = default lookup).
///
/// # Safety
///
/// `server_path` is NULL or NUL-terminated.
unsafe fn spawn_options(server_path: *const c_char) -> FResult<SpawnOptions> {
    // SAFETY: caller's contract.
    let server_path = unsafe { c_str(server_path, "server_path") }?;
    Ok(SpawnOptions {
        server_path: server_path.map(PathBuf::from),
        ..SpawnOptions::default()
    })
}

/// `ringbase_options::wait_mode`: spin briefly, then sleep (the default).
pub const RINGBASE_WAIT_ADAPTIVE: c_int = 0;
/// `ringbase_options::wait_mode`: never sleep while waiting for the server (lowest
/// latency; the waiting thread and the server's session thread keep a core busy
/// while calls are in flight, and the server's for 10 ms after the last one).
pub const RINGBASE_WAIT_BUSY_POLL: c_int = 1;

/// Options for `ringbase_connect_with`. Zero-initialise the struct (`= {0}`) and set
/// what you need: all-zero means `ringbase_connect(NULL, …)`. The library only reads it
/// during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ringbase_options {
    /// Server name, NUL-terminated; NULL = `"default"`.
    pub name: *const c_char,
    /// Runtime directory holding the servers' control sockets, NUL-terminated; NULL =
    /// `$RINGBASE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/ringbase`, else
    /// `/tmp/ringbase-<uid>`.
    pub runtime_dir: *const c_char,
    /// `RINGBASE_WAIT_ADAPTIVE` (0) or `RINGBASE_WAIT_BUSY_POLL`.
    pub wait_mode: c_int,
    /// Non-zero: start the server if none is running, as `ringbase_connect_or_spawn`.
    pub spawn: c_int,
    /// With `spawn`: the `ringbase` binary, NUL-terminated; NULL = the default lookup of
    /// `ringbase_connect_or_spawn`.
    pub server_path: *const c_char,
    /// Wanted request and response ring sizes in bytes (0 = server default, 2 MiB).
    /// The server rounds them up to powers of two within 4 KiB..256 MiB; the largest
    /// request or response is half the smaller ring (`ringbase_max_value_len`).
    pub request_ring: u64,
    /// See `request_ring`.
    pub response_ring: u64,
    /// Longest a blocking call waits for a live server, in milliseconds (0 = no
    /// limit). A call that times out returns `RINGBASE_E_TIMEOUT` and ends the session:
    /// close the handle and connect again.
    pub call_timeout_ms: u64,
}

/// Connects with explicit options: server name, runtime directory, wait mode (busy-poll
/// for the lowest latency), ring sizes, a call timeout, and optionally the sidecar
/// start of `ringbase_connect_or_spawn`.
///
/// Ownership and threads: as for `ringbase_connect`; `opts` is only read during the
/// call.
///
/// Errors (detail in `ringbase_last_error(NULL)`): those of `ringbase_connect` (and of
/// `ringbase_connect_or_spawn` with `spawn`); `RINGBASE_E_INVALID` if `opts` is NULL,
/// `wait_mode` is unknown, or a string is not UTF-8.
///
/// # Safety
///
/// `opts` is NULL or points to a `ringbase_options` whose string fields are NULL or
/// NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_connect_with(
    opts: *const ringbase_options,
    out: *mut *mut ringbase_client,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        connect_into(out, || {
            // SAFETY: `opts` is NULL or a valid ringbase_options (caller's contract).
            let o = opts
                .as_ref()
                .ok_or_else(|| Failure::new(RINGBASE_E_INVALID, "opts is NULL".to_string()))?;
            let mut c = options_for(o.name)?;
            if let Some(dir) = c_str(o.runtime_dir, "runtime_dir")? {
                c = c.runtime_dir(dir);
            }
            c = c.wait(match o.wait_mode {
                RINGBASE_WAIT_ADAPTIVE => WaitMode::Adaptive,
                RINGBASE_WAIT_BUSY_POLL => WaitMode::BusyPoll,
                other => {
                    return Err(Failure::new(
                        RINGBASE_E_INVALID,
                        format!("unknown wait_mode {other}"),
                    ))
                }
            });
            c = c.rings(RingSizes {
                request: o.request_ring,
                response: o.response_ring,
                event: 0,
            });
            if o.call_timeout_ms > 0 {
                c = c.call_timeout(Duration::from_millis(o.call_timeout_ms));
            }
            if o.spawn != 0 {
                Ok(Client::connect_or_spawn(c, spawn_options(o.server_path)?)?)
            } else {
                Ok(Client::connect_with(c)?)
            }
        })
    }
}

/// Closes the session and frees the handle. NULL is a no-op.
///
/// Every pointer obtained from `c` (views, status strings, completion values, the
/// last error) becomes invalid. Batches and list iterators made from `c` stay safe to
/// free; any other call on them fails with `RINGBASE_E_INVALID`. Submitted requests
/// not yet polled are abandoned (writes among them may or may not be applied).
///
/// Threads: must not race with another call on `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn ringbase_close(c: *mut ringbase_client) {
    guard_value((), || {
        if c.is_null() {
            return;
        }
        // SAFETY: `c` came from `Box::into_raw` in `new_handle` and is closed once
        // (caller's contract).
        let h = unsafe { Box::from_raw(c) };
        // End the session now, even if batches or iterators still share the state.
        let client = match h.shared.lock() {
            Ok(mut st) => st.client.take(),
            Err(p) => p.into_inner().client.take(),
        };
        drop(client);
        drop(h);
    })
}

/// A round trip with no work on the server: checks that the session is alive.
///
/// Errors: `RINGBASE_E_INVALID` (`c` NULL), `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ringbase_ping(c: *mut ringbase_client) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| Ok(st.settle()?.ping()?))
}

/// Writes `value` under `key` and returns once it is committed (durable against a
/// crash of the server process). `kind` is `RINGBASE_JSON` (the server checks that the
/// value parses) or `RINGBASE_BYTES`.
///
/// The key is `key_len` bytes of UTF-8 (not NUL-terminated; at most
/// `RINGBASE_MAX_KEY_LEN`). `value` may be NULL when `value_len` is 0. Both are only
/// read during the call.
///
/// Errors: `RINGBASE_E_INVALID` (`c` NULL, `key`/`value` NULL with a non-zero length,
/// bad `kind`), `RINGBASE_E_INVALID_KEY` (empty, not UTF-8, or with a NUL), `RINGBASE_E_TOO_LARGE`
/// (key over `RINGBASE_MAX_KEY_LEN`, value over `ringbase_max_value_len`),
/// `RINGBASE_E_INVALID_JSON`, `RINGBASE_E_STORAGE`, `RINGBASE_E_DISCONNECTED` (the
/// write may or may not have been applied). On any error but the last, nothing was
/// written.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `key` and `value` point at `key_len` and `value_len`
/// readable bytes (or are NULL with length 0).
#[no_mangle]
pub unsafe extern "C" fn ringbase_put(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_void,
    value_len: usize,
    kind: c_int,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: `key_len` and `value_len` readable bytes (caller's contract).
        let (key, value, kind) = unsafe { put_args(key, key_len, value, value_len, kind) }?;
        st.settle()?.put(key, value, kind)?;
        Ok(())
    })
}

/// Reads the record under `key` into a new buffer.
///
/// On success `*value` is a buffer of `*value_len` bytes followed by one NUL byte (so a
/// JSON value can be used as a C string), owned by the caller and freed with
/// `ringbase_free`; `*kind` (if `kind` is not NULL) is `RINGBASE_JSON` or
/// `RINGBASE_BYTES`. On failure `*value` is NULL and `*value_len` is 0.
///
/// Errors: `RINGBASE_E_NOT_FOUND` (no live record), `RINGBASE_E_INVALID` (`c`,
/// `value` or `value_len` NULL, `key` NULL with a non-zero length),
/// `RINGBASE_E_INVALID_KEY`, `RINGBASE_E_TOO_LARGE` (key too long, or a record too
/// large for this session's response ring), `RINGBASE_E_NOMEM`, `RINGBASE_E_STORAGE`,
/// `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`; the returned buffer may go to any thread.
///
/// # Safety
///
/// `c` is NULL or a live handle; `key` points at `key_len` readable bytes (or is NULL
/// with length 0); `value`, `value_len` and `kind` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_get(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    value: *mut *mut c_void,
    value_len: *mut usize,
    kind: *mut c_int,
) -> c_int {
    let copy = |v: &[u8]| {
        let n = v.len();
        // SAFETY: plain allocation of n + 1 bytes (never 0).
        let buf = unsafe { libc::malloc(n + 1) } as *mut u8;
        if buf.is_null() {
            return Err(Failure::new(
                RINGBASE_E_NOMEM,
                format!("allocating {} bytes for the value", n + 1),
            ));
        }
        // SAFETY: `buf` has n + 1 writable bytes; the view has n readable bytes that
        // stay valid until the next call on the client (none happens here).
        // Index n is inside the n + 1 allocated bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), buf, n);
            *buf.add(n) = 0;
        }
        Ok(buf as *mut c_void)
    };
    // SAFETY: forwarded contract.
    unsafe { get_into(c, key, key_len, value, value_len, kind, null_mut(), copy) }
}

/// Reads the record under `key` without copying it: `*value` points at the value bytes
/// in the session's shared memory.
///
/// Ownership and lifetime: the bytes belong to the library and stay valid (and
/// unchanged) until the next call that takes `c`, or one of its batches or iterators,
/// other than `ringbase_last_error`; do not write to them or free them. Copy what you
/// need to keep. On failure `*value` is NULL and `*value_len` 0. `*kind` as for
/// `ringbase_get`.
///
/// Errors: as for `ringbase_get`, except `RINGBASE_E_NOMEM`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// As for `ringbase_get`.
#[no_mangle]
pub unsafe extern "C" fn ringbase_get_view(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
    value: *mut *const c_void,
    value_len: *mut usize,
    kind: *mut c_int,
) -> c_int {
    // The frame stays held in the response ring until the next call on the client,
    // which is the lifetime documented above.
    let point = |v: &[u8]| Ok(v.as_ptr() as *const c_void);
    // SAFETY: forwarded contract.
    unsafe {
        get_into(
            c,
            key,
            key_len,
            value,
            value_len,
            kind,
            std::ptr::null(),
            point,
        )
    }
}

/// Deletes the record under `key` (the server keeps a tombstone for replication).
///
/// Errors: `RINGBASE_E_NOT_FOUND` (no live record: nothing changed),
/// `RINGBASE_E_INVALID`, `RINGBASE_E_INVALID_KEY`, `RINGBASE_E_TOO_LARGE`,
/// `RINGBASE_E_STORAGE`, `RINGBASE_E_DISCONNECTED` (the delete may or may not have
/// been applied).
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `key` points at `key_len` readable bytes (or is NULL
/// with length 0).
#[no_mangle]
pub unsafe extern "C" fn ringbase_delete(
    c: *mut ringbase_client,
    key: *const c_char,
    key_len: usize,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: `key_len` readable bytes (caller's contract).
        let key = unsafe { key_arg(key, key_len, "key") }?;
        if st.settle()?.delete(key)? {
            Ok(())
        } else {
            Err(not_found(key))
        }
    })
}

/// Counts live records whose key starts with `prefix` (`prefix_len` bytes; NULL or
/// empty = all records) into `*count`.
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `count` NULL, `prefix` NULL with a non-zero
/// length), `RINGBASE_E_INVALID_KEY` (prefix not UTF-8), `RINGBASE_E_TOO_LARGE`,
/// `RINGBASE_E_STORAGE`, `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `prefix` points at `prefix_len` readable bytes (or
/// is NULL with length 0); `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_count(
    c: *mut ringbase_client,
    prefix: *const c_char,
    prefix_len: usize,
    count: *mut u64,
) -> c_int {
    let count_prefix = |st: &mut State| {
        // SAFETY: `prefix_len` readable bytes (caller's contract).
        let prefix = unsafe { key_arg(prefix, prefix_len, "prefix") }?;
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Ok(st.settle()?.count(prefix)?)
    };
    // SAFETY: `c` is NULL or a live handle; `count` is NULL or writable (caller's
    // contract).
    unsafe { enter_out(c, count, "count", count_prefix) }
}

/// The largest value `ringbase_put` (or a batch or submitted put) accepts on this
/// session, in bytes, into `*max` (set by the session's ring sizes).
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `max` NULL).
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `max` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_max_value_len(c: *mut ringbase_client, max: *mut usize) -> c_int {
    // SAFETY: `c` is NULL or a live handle; `max` is NULL or writable (caller's
    // contract).
    unsafe {
        enter_out(c, max, "max", |st| {
            Ok(usize::try_from(st.client()?.max_value_len()).unwrap_or(usize::MAX))
        })
    }
}

/// Server status, filled in by `ringbase_status`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ringbase_status_info {
    /// Live records.
    pub records: u64,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Database size on disk (database and write-ahead log), bytes.
    pub db_size_bytes: u64,
    /// Open sessions.
    pub sessions: u32,
    /// Server process id.
    pub pid: u32,
    /// Protocol version the server speaks.
    pub protocol: u32,
    /// Replica id of the server's database (stable across restarts).
    pub replica_id: [u8; 16],
    /// The server's data directory: NUL-terminated, owned by the client handle, valid
    /// until the next call on it.
    pub data_dir: *const c_char,
    /// The server's version, e.g. `"0.1.0"`: NUL-terminated, owned by the client
    /// handle, valid until the next call on it.
    pub version: *const c_char,
    /// The JSON paths with an index (`ringbase_index_create`), one per line (`"\n"`
    /// between them, `""` if none): NUL-terminated, owned by the client handle, valid
    /// until the next call on it.
    pub indexes: *const c_char,
    /// 1 if the full-text index is on (`ringbase_fulltext`), else 0.
    pub fulltext: c_int,
    /// Dimension of the database's vectors (0: none stored yet).
    pub vector_dim: u32,
    /// Records with a vector (`ringbase_put_with_vector`).
    pub vectors: u64,
    /// Points in the vector index's HNSW graph, live or dead.
    pub vector_points: u64,
    /// Dead points in the graph (replaced or deleted vectors; a rebuild drops them).
    pub vector_dead: u64,
    /// Vectors not yet in the graph, or not yet in the copy of its links that searches
    /// walk (searches scan them exactly).
    pub vector_pending: u64,
    /// Graph builds since the server started.
    pub vector_rebuilds: u64,
    /// When the last build finished, unix milliseconds (0: none yet).
    pub vector_last_rebuild_ms: u64,
    /// 1 if a complete graph serves vector searches; 0 while the first build after a
    /// start runs (searches then scan storage exactly).
    pub vector_ready: c_int,
    /// The server's embedding model (its path), which gives JSON puts their vectors
    /// and answers `ringbase_search_text`; "" if it has none. Belongs to `c`, like
    /// `data_dir`.
    pub vector_embedder: *const c_char,
    /// 1 if the server replicates with other servers (`serve --sync`), else 0.
    pub sync_enabled: c_int,
    /// Replication peers connected now.
    pub sync_peers: u32,
    /// The most writes any connected peer lacks of this server's (0: all up to date).
    pub sync_behind: u64,
    /// How the server finds its peers: `"peers"`, `"lan"`, `"dht"` or `"relay"`; `""`
    /// if it does not replicate. Belongs to `c`, like `data_dir`.
    pub sync_mode: *const c_char,
    /// The server's replication node id (libp2p peer id, stable across restarts);
    /// `""` if it does not replicate. Belongs to `c`, like `data_dir`.
    pub sync_peer_id: *const c_char,
}

/// Fills `*info` with the server's status.
///
/// Ownership: `info` is the caller's; its `data_dir`, `version`, `indexes`,
/// `vector_embedder`, `sync_mode` and `sync_peer_id` strings belong to `c` and stay
/// valid until the next call on `c` other than `ringbase_last_error` (copy them to
/// keep them).
///
/// Errors: `RINGBASE_E_INVALID` (`c` or `info` NULL), `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `info` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_status(
    c: *mut ringbase_client,
    info: *mut ringbase_status_info,
) -> c_int {
    let status = |st: &mut State| {
        let s = st.settle()?.status()?;
        st.out_data_dir = crate::error::c_message(&s.data_dir);
        st.out_version = crate::error::c_message(&s.version);
        st.out_indexes = crate::error::c_message(&s.indexes.join("\n"));
        st.out_embedder = crate::error::c_message(&s.vectors.embedder);
        let (mode, peer_id) = s
            .sync
            .as_ref()
            .map_or(("", ""), |y| (y.mode.as_str(), y.peer_id.as_str()));
        st.out_sync_mode = crate::error::c_message(mode);
        st.out_sync_peer_id = crate::error::c_message(peer_id);
        Ok(ringbase_status_info {
            records: s.records,
            uptime_ms: s.uptime_ms,
            db_size_bytes: s.db_size_bytes,
            sessions: s.sessions,
            pid: s.pid,
            protocol: s.protocol,
            replica_id: s.replica_id,
            data_dir: st.out_data_dir.as_ptr(),
            version: st.out_version.as_ptr(),
            indexes: st.out_indexes.as_ptr(),
            fulltext: c_int::from(s.fulltext),
            vector_dim: s.vectors.dim,
            vectors: s.vectors.vectors,
            vector_points: s.vectors.points,
            vector_dead: s.vectors.dead,
            vector_pending: s.vectors.pending,
            vector_rebuilds: s.vectors.rebuilds,
            vector_last_rebuild_ms: s.vectors.last_rebuild_ms,
            vector_ready: c_int::from(s.vectors.ready),
            vector_embedder: st.out_embedder.as_ptr(),
            sync_enabled: c_int::from(s.sync.is_some()),
            sync_peers: s.sync.as_ref().map_or(0, |y| y.peers.len() as u32),
            sync_behind: s
                .sync
                .as_ref()
                .and_then(|y| y.peers.iter().map(|p| p.behind).max())
                .unwrap_or(0),
            sync_mode: st.out_sync_mode.as_ptr(),
            sync_peer_id: st.out_sync_peer_id.as_ptr(),
        })
    };
    // SAFETY: `c` is NULL or a live handle; `info` is NULL or writable (caller's
    // contract).
    unsafe { enter_out(c, info, "info", status) }
}
