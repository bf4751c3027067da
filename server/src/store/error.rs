//! Errors of the storage engine, with stable numeric codes.

/// An error from the storage engine.
///
/// Every variant has a stable numeric code ([`StoreError::code`]) that the IPC layer
/// and the C ABI can expose; codes are never reused or renumbered:
///
/// | code | variant          | meaning                                                  |
/// |------|------------------|----------------------------------------------------------|
/// | 1    | `InvalidKey`     | key empty, too long, or contains NUL                      |
/// | 2    | `InvalidJson`    | a `ValueKind::Json` value does not parse as JSON          |
/// | 3    | `TooLarge`       | a key or value exceeds its configured limit               |
/// | 4    | `Sqlite`         | SQLite reported an error (I/O, disk full, constraint...)  |
/// | 5    | `Closed`         | the store was shut down; no more writes are accepted      |
/// | 6    | `Corrupt`        | the data directory holds data this engine cannot trust    |
/// | 7    | `SchemaTooNew`   | the database was written by a newer Ringbase              |
/// | 8    | `Io`             | a filesystem error outside SQLite (creating the data dir) |
/// | 9    | `InvalidKind`    | an unknown value-kind tag                                 |
/// | 10   | `InvalidFilter`  | a JSON path, filter value or search text that cannot be used |
/// | 11   | `FulltextOff`    | a full-text search while the full-text index is off       |
/// | 12   | `InvalidVector`  | a vector of the wrong dimension, with NaN/inf, or all zero |
/// | 13   | `Embedding`      | the embedding model failed on a record's text              |
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The key is empty, longer than the configured limit, or contains a NUL character.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A value tagged `ValueKind::Json` is not valid JSON (names the key, then the
    /// parser's message with line and column).
    #[error("invalid JSON value: {0}")]
    InvalidJson(String),
    /// A key or value is larger than the configured maximum (`what` is `"key"` or `"value"`).
    #[error("{what} too large: {len} bytes (max {max})")]
    TooLarge {
        /// Which item was too large: `"key"` or `"value"`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The configured maximum in bytes.
        max: usize,
    },
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(String),
    /// The store has been shut down.
    #[error("store is closed")]
    Closed,
    /// The stored data is inconsistent (for example a malformed replica id).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database has a schema version newer than this build knows.
    #[error("database schema version {found} is newer than the newest this build supports ({supported}); upgrade Ringbase")]
    SchemaTooNew {
        /// The `user_version` found in the database file.
        found: u32,
        /// The newest schema version this build can open.
        supported: u32,
    },
    /// A filesystem error outside SQLite.
    #[error("i/o: {0}")]
    Io(String),
    /// A value-kind tag that is not one of the known kinds.
    #[error("unknown value kind tag {0}")]
    InvalidKind(u8),
    /// A JSON path that is not `$` followed by `.name` / `[index]` steps, or a filter
    /// value that is not a JSON string, number or boolean.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// A full-text search while the full-text index is off.
    #[error("full-text search is off: turn it on first (Client::set_fulltext(true), ringbase_fulltext, or `ringbase fulltext on`)")]
    FulltextOff,
    /// A vector that cannot be stored or searched with: empty or longer than
    /// [`super::MAX_VECTOR_DIM`], not the database's dimension, with a NaN or an
    /// infinity, or all zeros (it has no direction).
    #[error("invalid vector: {0}")]
    InvalidVector(String),
    /// The server's embedding model failed on a record's text (see
    /// [`crate::embed`]); the record was not stored.
    #[error("{0}")]
    Embedding(String),
}

impl StoreError {
    /// The stable numeric code of this error (see the table on [`StoreError`]).
    pub fn code(&self) -> u32 {
        match self {
            StoreError::InvalidKey(_) => 1,
            StoreError::InvalidJson(_) => 2,
            StoreError::TooLarge { .. } => 3,
            StoreError::Sqlite(_) => 4,
            StoreError::Closed => 5,
            StoreError::Corrupt(_) => 6,
            StoreError::SchemaTooNew { .. } => 7,
            StoreError::Io(_) => 8,
            StoreError::InvalidKind(_) => 9,
            StoreError::InvalidFilter(_) => 10,
            StoreError::FulltextOff => 11,
            StoreError::InvalidVector(_) => 12,
            StoreError::Embedding(_) => 13,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}
