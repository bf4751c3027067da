//! Connection setup (pragmas), schema migrations and the `meta` table.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::error::StoreError;
use super::ReplicaId;

/// Memory-map at most this much of the database file (RSS matters more than the last
/// few percent of read speed).
const MMAP_SIZE: i64 = 256 * 1024 * 1024;
/// Page cache of the writer connection, in KiB (negative pragma value).
const WRITER_CACHE_KIB: i64 = 64_000;
/// Page cache of each reader connection, in KiB.
const READER_CACHE_KIB: i64 = 8_000;
/// After a checkpoint, truncate the WAL file to at most this many bytes.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// Page size of a new database. Every commit writes each page it changed to the WAL
/// (and a checkpoint copies it again), so a put of a small record to a random key costs
/// a whole page twice: 1 KiB pages make that a quarter of 4 KiB pages' cost (durable
/// pipelined puts to random keys ~100k -> ~160k/s), for one more B-tree level on
/// large tables and more overflow pages for large values. An existing database keeps
/// the page size it was created with.
const PAGE_SIZE: i64 = 1024;
/// How long a connection waits for a lock before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Schema migrations; migration `i` (0-based) brings the schema to version `i + 1`.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // v1: records keyed (and clustered) by key for ordered range scans; meta key/value.
    "CREATE TABLE records(
        key        TEXT    NOT NULL PRIMARY KEY,
        value      BLOB    NOT NULL,
        kind       INTEGER NOT NULL,
        hlc        INTEGER NOT NULL,
        replica    BLOB    NOT NULL,
        seq        INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        deleted    INTEGER NOT NULL DEFAULT 0
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE meta(k TEXT NOT NULL PRIMARY KEY, v BLOB) WITHOUT ROWID;",
    // v2: `json`, a live JSON record's value as text, else NULL (a virtual column:
    // computed when read, stored only in the indexes built on it). It is the query
    // view's `value` and the base of every JSON-field index: the view selects the
    // column itself, because SQLite matches an index expression against a view's
    // column only when that column is a plain column reference. A tombstone (empty
    // value, `deleted = 1`, the kind of the record it removed) is NULL too, so JSON
    // functions never see its empty text, whatever order SQLite evaluates conditions
    // in. The guard tests the empty value, not `deleted`: SQLite propagates a
    // `deleted = 0` WHERE term into other terms (a `deleted = 0` inside the CASE would
    // fold to true) and may evaluate them first. A live JSON value is never empty, and
    // `length` of a blob reads no content.
    "ALTER TABLE records ADD COLUMN json TEXT GENERATED ALWAYS AS
        (CASE WHEN kind = 1 AND length(value) > 0 THEN CAST(value AS TEXT) END) VIRTUAL;",
    // v3: the embeddings of records that have one (`vec`: little-endian f32s, as given),
    // keyed like `records` so a key prefix is a range. A separate table keeps the
    // records' rows small for scans; the writer keeps it in step with `records` in the
    // same transaction (a put without a vector, or a delete, removes the key's row).
    "CREATE TABLE vectors(key TEXT NOT NULL PRIMARY KEY, vec BLOB NOT NULL) STRICT, WITHOUT ROWID;",
    // v4: replication's version vector: for each other replica, the sequence numbers
    // of its writes this replica has delivered, as inclusive intervals `lo..=hi`
    // (this replica's own writes are `1..=meta.seq`, not stored here). Written by the
    // writer in the transaction that merges the versions it covers.
    "CREATE TABLE sync_vv(replica BLOB NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
        PRIMARY KEY(replica, lo)) STRICT, WITHOUT ROWID;",
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// `meta` key of the persistent replica id (16-byte blob).
pub const META_REPLICA: &str = "replica_id";
/// `meta` key of the last local write sequence number used.
pub const META_SEQ: &str = "seq";
/// `meta` key of the highest HLC stored in `records`.
pub const META_HLC: &str = "hlc_high";
/// `meta` key of the last change sequence number used (see [`super::Change::seq`]).
pub const META_CHANGES: &str = "changes";
/// `meta` key of the dimension of the database's vectors (absent or 0: none stored yet).
pub const META_VECTOR_DIM: &str = "vector_dim";

/// SQLite's `unix-excl` VFS: the server process holds the database file exclusively
/// (one server per data dir is already guaranteed by the data dir's lock file) and
/// keeps the WAL index in heap memory shared by its connections, instead of a `-shm`
/// file locked with `fcntl`. That removes the lock/unlock system calls every read
/// transaction made (~0.6 µs of a ~2.2 µs get round trip). Durability is unchanged:
/// the WAL file is written and synced exactly as before, and is recovered on open.
/// The cost: another process (say, the `sqlite3` shell) cannot open the database while
/// the server runs.
const VFS: &str = "unix-excl";

/// Open the writer connection, set its pragmas and run pending migrations.
pub fn open_writer(db: &Path) -> Result<Connection, StoreError> {
    // The writer's WAL appends go through the gathering shim over unix-excl.
    super::walbuf::register().map_err(StoreError::Sqlite)?;
    let conn = Connection::open_with_flags_and_vfs(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        super::walbuf::VFS_NAME,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    // page_size only takes effect on a new database, before WAL mode is entered.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite(format!(
            "could not enable WAL journal mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    set_mmap(&conn)?;
    migrate(&conn)?;
    // Checkpoints run on the writer's checkpointer thread (writer.rs), not inside
    // commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// The WAL file of the database at `db` (`<db>-wal`).
pub fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Open the checkpointer's connection: it only runs `wal_checkpoint`.
pub fn open_checkpointer(db: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags_and_vfs(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        VFS,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// A read-only connection with the readers' settings; temporary tables and sorts in
/// memory, or (`temp_in_memory` false) in temporary files.
fn open_read_only(db: &Path, temp_in_memory: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags_and_vfs(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        VFS,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let temp = if temp_in_memory { "MEMORY" } else { "FILE" };
    conn.pragma_update(None, "temp_store", temp)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    set_mmap(&conn)?;
    Ok(conn)
}

/// Open a read-only connection for a [`super::Reader`].
pub fn open_reader(db: &Path) -> Result<Connection, StoreError> {
    let conn = open_read_only(db, true)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// The `records` view that queries see: live records only, the kind as `'json'` or
/// `'bytes'`, a JSON record's value as text in `value` (so SQLite's JSON functions read
/// it) and a bytes record's value as a blob in `bytes` (each NULL for the other kind, so
/// `json_extract(value, ...)` never meets a blob), and the version's fields. A TEMP
/// view, so it shadows the table of the same name for unqualified names and needs no
/// migration.
const RECORDS_VIEW: &str = "CREATE TEMP VIEW records AS SELECT
    key,
    CASE kind WHEN 1 THEN 'json' ELSE 'bytes' END AS kind,
    json AS value,
    CASE kind WHEN 1 THEN NULL ELSE value END AS bytes,
    updated_at,
    hlc,
    lower(hex(replica)) AS replica,
    seq
  FROM main.records WHERE deleted = 0";

/// Open a read-only connection for queries: the `records` view (see [`RECORDS_VIEW`]),
/// then `query_only`. Sorts and temporary tables of large queries go to temporary
/// files rather than the heap.
pub fn open_query(db: &Path) -> Result<Connection, StoreError> {
    let conn = open_read_only(db, false)?;
    // Before query_only, which refuses even TEMP schema changes.
    conn.execute_batch(RECORDS_VIEW)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

fn set_mmap(conn: &Connection) -> Result<(), StoreError> {
    // The pragma returns the new value as a row; read it so the statement runs to completion.
    let _: Option<i64> = conn
        .query_row(&format!("PRAGMA mmap_size={MMAP_SIZE}"), [], |r| r.get(0))
        .optional()?;
    Ok(())
}

/// Bring the schema up to [`SCHEMA_VERSION`]; refuse databases from a newer build.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as u32 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    }
    Ok(())
}

/// Read an integer from `meta` (0 if absent).
pub fn meta_u64(conn: &Connection, k: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = conn
        .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
        .optional()
        .map_err(|e| StoreError::Corrupt(format!("meta {k}: {e}")))?;
    Ok(v.unwrap_or(0) as u64)
}

/// Load the replica id, creating (and persisting) a random one on first open.
pub fn load_or_create_replica(conn: &Connection) -> Result<ReplicaId, StoreError> {
    let existing: Option<Vec<u8>> = conn
        .query_row("SELECT v FROM meta WHERE k = ?1", [META_REPLICA], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| StoreError::Corrupt(format!("replica id: {e}")))?;
    match existing {
        Some(v) => v.as_slice().try_into().map_err(|_| {
            StoreError::Corrupt(format!("replica id has {} bytes, expected 16", v.len()))
        }),
        None => {
            let id: ReplicaId = rand::random();
            conn.execute(
                "INSERT INTO meta(k, v) VALUES (?1, ?2)",
                rusqlite::params![META_REPLICA, &id[..]],
            )?;
            Ok(id)
        }
    }
}
