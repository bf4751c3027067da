//! Request and response messages, carried as rkyv archives in ring frames.
//!
//! The frame header carries each message's correlation id (see [`crate::ring`]); a
//! response carries the id of its request, and per session responses come in request
//! order. Messages are read in place: the client accesses [`ArchivedResponse`] directly in
//! the response ring. The server copies each request frame into private memory once and
//! validates the copy with bytecheck ([`access_request`]) before using it, because the
//! client can write its ring at any time.
//!
//! Later protocol versions add requests (Query, Search, VectorSearch, Watch, …) as new
//! variants; a changed archive layout is a new [`crate::PROTOCOL_VERSION`].

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// Value encoding, stored with every record.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq), attr(allow(missing_docs)))]
#[repr(u8)]
pub enum ValueKind {
    /// UTF-8 JSON text, validated on put.
    Json = 1,
    /// Opaque bytes.
    Bytes = 2,
}

impl TryFrom<u8> for ValueKind {
    /// The unknown tag.
    type Error = u8;

    fn try_from(tag: u8) -> Result<Self, u8> {
        match tag {
            1 => Ok(ValueKind::Json),
            2 => Ok(ValueKind::Bytes),
            other => Err(other),
        }
    }
}

impl ValueKind {
    /// The owned kind of an archived one.
    pub fn from_archived(a: &ArchivedValueKind) -> ValueKind {
        match a {
            ArchivedValueKind::Json => ValueKind::Json,
            ArchivedValueKind::Bytes => ValueKind::Bytes,
        }
    }
}

/// The version of a record: the CRDT coordinates of the write that made it.
/// Ordered by `(hlc, replica, seq)` (field order); merge keeps the greatest, and
/// `(replica, seq)` is the dot of the write that made it.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct Version {
    /// Hybrid logical clock: unix milliseconds << 16 | logical counter.
    pub hlc: u64,
    /// Id of the replica (server) that made the write.
    pub replica: [u8; 16],
    /// That replica's write sequence number.
    pub seq: u64,
}

/// One operation of an atomic batch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum BatchOp {
    /// Insert or replace.
    Put {
        /// key
        key: String,
        /// value bytes
        value: Vec<u8>,
        /// value encoding
        kind: ValueKind,
    },
    /// Remove (tombstone).
    Delete {
        /// key
        key: String,
    },
}

/// A value of a query parameter or result cell: one of SQLite's five storage classes.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text (JSON values are text in the `records` view).
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// The rows of a query ([`Response::Rows`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct QueryRows {
    /// Column names, in result order.
    pub columns: Vec<String>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<SqlValue>>,
    /// Whether the statement had more rows than came back (the row limit, or the
    /// session's response frame size, cut it short).
    pub truncated: bool,
}

/// An equality filter on one field of JSON values: records whose value at `path`
/// equals `value`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct FieldFilter {
    /// A JSON path: `$` followed by `.name` and `[index]` steps, e.g. `$.stats.hp`.
    pub path: String,
    /// A JSON scalar (string, number or boolean), e.g. `"enemy"` or `3`.
    pub value: String,
}

/// One result of a full-text search ([`Response::Hits`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct SearchHit {
    /// The record's key.
    pub key: String,
    /// Relevance: SQLite FTS5's bm25, negated so that higher is better.
    pub score: f64,
    /// The text around the matches, matched terms in `[` `]`.
    pub snippet: String,
}

/// One committed change, as a watcher receives it ([`Event::Changes`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct Change {
    /// Change sequence number: every committed change has the next one, in commit order.
    pub seq: u64,
    /// The `seq` of the first change of this change's transaction: the changes of one
    /// transaction (a batch, or writes committed together) share it and arrive in a row.
    pub txn: u64,
    /// The key.
    pub key: String,
    /// The value's kind (for a delete, the kind of the record it removed).
    pub kind: ValueKind,
    /// True for a delete.
    pub deleted: bool,
    /// The version of the write.
    pub version: Version,
    /// Wall-clock time of the write, unix milliseconds.
    pub updated_at_ms: u64,
    /// The new value, if the watch asked for values (never for a delete) and it fits in
    /// an event frame.
    pub value: Option<Vec<u8>>,
    /// The watch asked for values but this one was too large for the event ring: read
    /// it with Get (the version tells whether it is still current).
    pub value_omitted: bool,
}

/// A frame of the event ring.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum Event {
    /// Committed changes under the watched prefix, in commit order.
    Changes {
        /// the watch they belong to ([`Response::Watching`]); events of an earlier
        /// watch of the session may still be in the ring after a new Watch
        watch: u64,
        /// the changes
        changes: Vec<Change>,
    },
    /// The watcher fell too far behind: the watch has ended after the change with
    /// sequence number `last_seq` (nothing after it was sent). Watch again with
    /// `since = last_seq` to go on without missing anything, while the server's change
    /// log still holds it.
    Overflow {
        /// the watch that ended
        watch: u64,
        /// the last change sent before the gap
        last_seq: u64,
    },
}

/// A client request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Returns the bytes unchanged ([`Response::Echo`]).
    Echo(Vec<u8>),
    /// Reads one record ([`Response::Value`]).
    Get {
        /// key
        key: String,
    },
    /// Writes one record ([`Response::Written`]).
    Put {
        /// key
        key: String,
        /// value bytes
        value: Vec<u8>,
        /// value encoding
        kind: ValueKind,
    },
    /// Deletes one record ([`Response::Deleted`]).
    Delete {
        /// key
        key: String,
    },
    /// Applies all operations atomically ([`Response::Batch`]).
    Batch {
        /// operations, applied in order
        ops: Vec<BatchOp>,
    },
    /// Lists live records by key order ([`Response::List`]).
    List {
        /// only keys starting with this
        prefix: String,
        /// only keys strictly greater than this
        start_after: Option<String>,
        /// at most this many records
        limit: u32,
        /// only JSON records whose field equals a value
        filter: Option<FieldFilter>,
    },
    /// Counts live records ([`Response::Count`]).
    Count {
        /// only keys starting with this
        prefix: Option<String>,
    },
    /// Server status ([`Response::Status`]).
    Status,
    /// Runs one read-only SQL statement over the `records` view ([`Response::Rows`]).
    Query {
        /// the statement (one; a writing statement is refused)
        sql: String,
        /// positional parameters (`?`, `?NNN`), in order
        params: Vec<SqlValue>,
        /// at most this many rows (0: the server's default; capped by the server)
        max_rows: u32,
        /// time budget in milliseconds (0: the server's default; capped by the server)
        timeout_ms: u32,
    },
    /// Creates an index on a JSON field, for `List` filters and queries on that field
    /// ([`Response::Done`]: whether it was created, i.e. did not exist).
    CreateIndex {
        /// the JSON path (see [`FieldFilter::path`])
        path: String,
    },
    /// Drops an index on a JSON field ([`Response::Done`]: whether it existed).
    DropIndex {
        /// the JSON path
        path: String,
    },
    /// Turns the full-text index on (building it over the stored records) or off
    /// ([`Response::Done`]: whether that changed anything).
    SetFulltext {
        /// on or off
        enabled: bool,
    },
    /// Starts delivering committed changes under `prefix` through the session's event
    /// ring ([`Response::Watching`]). One watch per session; a new Watch replaces it.
    Watch {
        /// only keys starting with this
        prefix: String,
        /// deliver the changes after this sequence number (from the server's change
        /// log); `None`: from now on
        since: Option<u64>,
        /// include values in the events
        with_values: bool,
    },
    /// Stops the session's watch ([`Response::Done`]: whether one was active).
    Unwatch,
    /// Full-text search over the string leaves of JSON values ([`Response::Hits`]).
    Search {
        /// words to find (all of them), plain text
        text: String,
        /// at most this many hits (0: the server's default)
        limit: u32,
    },
    /// Put with an embedding ([`Response::Written`]): the record and its vector are
    /// stored together and indexed for [`Request::VectorSearch`]. Every vector of a
    /// database has the same dimension (set by the first one stored); a vector of
    /// another dimension, with a NaN or an infinity, or all zeros is refused
    /// ([`ErrorCode::InvalidVector`]) and nothing is stored. A plain Put (or a Delete)
    /// of the key removes its vector.
    PutVector {
        /// key
        key: String,
        /// value bytes
        value: Vec<u8>,
        /// value encoding
        kind: ValueKind,
        /// the embedding
        vector: Vec<f32>,
    },
    /// The `k` records whose vectors are nearest to `vector` by cosine similarity
    /// ([`Response::Neighbors`], best first).
    VectorSearch {
        /// the query vector (the database's dimension)
        vector: Vec<f32>,
        /// how many (at most [`MAX_NEIGHBORS`]; 0: 10)
        k: u32,
        /// only records scoring at least this (`max(0, cosine similarity)`, 0 to 1)
        min_score: f32,
        /// only keys starting with this; `k` results still come back whenever `k`
        /// matching records with vectors exist
        prefix: Option<String>,
        /// HNSW search breadth (0: the server's default; raised to at least `k`)
        ef: u32,
        /// include each record's value
        with_values: bool,
    },
    /// The `k` records nearest to the meaning of `text` ([`Response::Neighbors`], best
    /// first): the server embeds `text` with its embedding model (the one that gives
    /// JSON puts their vectors) and searches like [`Request::VectorSearch`]. A server
    /// without a model answers [`ErrorCode::NoEmbedder`].
    SearchText {
        /// the query text
        text: String,
        /// how many (at most [`MAX_NEIGHBORS`]; 0: 10)
        k: u32,
        /// only records scoring at least this (`max(0, cosine similarity)`, 0 to 1)
        min_score: f32,
        /// only keys starting with this
        prefix: Option<String>,
        /// HNSW search breadth (0: the server's default)
        ef: u32,
        /// include each record's value
        with_values: bool,
    },
}

/// Most neighbors one [`Request::VectorSearch`] returns.
pub const MAX_NEIGHBORS: u32 = 1000;

/// One result of a vector search ([`Response::Neighbors`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct Neighbor {
    /// The record's key.
    pub key: String,
    /// `max(0, cosine similarity)`: 1 for the same direction, 0 for orthogonal or
    /// opposite.
    pub score: f32,
    /// The record, if the search asked for values.
    pub record: Option<Record>,
}

/// The vector index, as Status reports it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct VectorStatus {
    /// Dimension of the database's vectors (0: none stored yet).
    pub dim: u32,
    /// Records with a vector.
    pub vectors: u64,
    /// Points in the HNSW graph, live or dead.
    pub points: u64,
    /// Dead points: replaced or deleted vectors still in the graph (skipped by
    /// searches; a rebuild drops them).
    pub dead: u64,
    /// Vectors stored but not yet in the graph, or in it but not yet in the copy of its
    /// links that searches walk (searches scan them exactly).
    pub pending: u64,
    /// Graph rebuilds since the server started (the first build at start counts).
    pub rebuilds: u64,
    /// When the last rebuild finished, unix milliseconds (0: none yet).
    pub last_rebuild_ms: u64,
    /// Whether a complete graph serves searches: false while the first build after a
    /// start runs (searches then scan storage exactly); true at once when the graph
    /// saved at the last shutdown was loaded.
    pub ready: bool,
    /// The embedding model that gives JSON puts their vectors and answers
    /// [`Request::SearchText`] (its path; empty: none).
    pub embedder: String,
}

/// A stored record as returned by reads.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct Record {
    /// key
    pub key: String,
    /// value bytes
    pub value: Vec<u8>,
    /// value encoding
    pub kind: ValueKind,
    /// CRDT version of the write that made this value
    pub version: Version,
    /// wall-clock time of that write, unix milliseconds
    pub updated_at_ms: u64,
}

/// The outcome of one write.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct WriteResult {
    /// Version written; `None` when a delete found nothing to delete.
    pub version: Option<Version>,
    /// Whether a live record existed before.
    pub existed: bool,
}

/// Server status.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct StatusInfo {
    /// Live records.
    pub records: u64,
    /// Open sessions.
    pub sessions: u32,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Data directory.
    pub data_dir: String,
    /// Database size on disk (database + WAL), bytes.
    pub db_size_bytes: u64,
    /// Server version (crate version).
    pub version: String,
    /// Protocol version.
    pub protocol: u32,
    /// Replica id of this server's data dir.
    pub replica_id: [u8; 16],
    /// Server process id.
    pub pid: u32,
    /// Write transactions committed since start (group commits).
    pub commits: u64,
    /// Write jobs (puts, deletes, batches) applied since start.
    pub write_jobs: u64,
    /// JSON paths with an index (`CreateIndex`), in path order.
    pub indexes: Vec<String>,
    /// Whether the full-text index is on (`SetFulltext`).
    pub fulltext: bool,
    /// The vector index.
    pub vectors: VectorStatus,
    /// Replication (`None`: off, no network activity).
    pub sync: Option<SyncStatusInfo>,
}

/// Replication, as Status reports it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct SyncStatusInfo {
    /// The database id.
    pub db_id: String,
    /// How peers are found: `peers`, `lan`, `dht` or `relay`.
    pub mode: String,
    /// This server's libp2p peer id (kept in the data dir, so stable across restarts).
    pub peer_id: String,
    /// Addresses replication listens on.
    pub listening: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Messages from peers that could not be used (undecodable, or a bad page).
    pub bad_messages: u64,
    /// The last replication error ("" if none).
    pub last_error: String,
}

/// What a replica has delivered of one writer's writes (a row of a version vector:
/// replication's `Have`, and Status's peers).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct Runs {
    /// The writer.
    pub replica: [u8; 16],
    /// Its delivered sequence numbers, as inclusive intervals `[lo, hi]`.
    pub runs: Vec<[u64; 2]>,
}

/// A connected peer, as Status reports it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct PeerStatus {
    /// Its libp2p peer id.
    pub peer: String,
    /// Writes this server has that the peer lacks, by the peer's version vector as
    /// last heard (0: it is up to date).
    pub behind: u64,
    /// Writes the peer has that this server lacks.
    pub ahead: u64,
    /// The peer's version vector as last heard (empty before its first).
    pub vv: Vec<Runs>,
    /// Whether the connection runs through a relay (`--sync relay`).
    pub relayed: bool,
}

/// Stable error codes carried by [`Response::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame or message could not be decoded or validated.
    BadRequest = 1,
    /// A key, value or frame over its size limit.
    TooLarge = 2,
    /// A key that is empty, too long or otherwise unusable.
    InvalidKey = 3,
    /// A JSON value that does not parse.
    InvalidJson = 4,
    /// The storage engine failed.
    Storage = 5,
    /// The request is not supported by this server.
    Unsupported = 6,
    /// The server is shutting down.
    ShuttingDown = 7,
    /// An internal error.
    Internal = 8,
    /// A query that cannot run: a syntax error, an unknown table or column, a wrong
    /// number of parameters, or more than one statement.
    InvalidQuery = 9,
    /// A query that would write, or touch anything but the `records` view.
    ReadOnly = 10,
    /// A query that ran past its time or step budget (it was stopped; nothing changed).
    Budget = 11,
    /// A watch cursor older than the server's change log: re-read what you follow, then
    /// watch from now.
    Expired = 12,
    /// A vector of the wrong dimension, with a NaN or an infinity, or all zeros.
    InvalidVector = 13,
    /// A text search (or an embedding) asked of a server without an embedding model.
    NoEmbedder = 14,
}

impl ErrorCode {
    /// The code for a raw value, if known.
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => BadRequest,
            2 => TooLarge,
            3 => InvalidKey,
            4 => InvalidJson,
            5 => Storage,
            6 => Unsupported,
            7 => ShuttingDown,
            8 => Internal,
            9 => InvalidQuery,
            10 => ReadOnly,
            11 => Budget,
            12 => Expired,
            13 => InvalidVector,
            14 => NoEmbedder,
            _ => return None,
        })
    }
}

/// A server response.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum Response {
    /// Answer to Ping.
    Pong,
    /// Answer to Echo.
    Echo(Vec<u8>),
    /// Answer to Get: the live record, or `None`.
    Value(Option<Record>),
    /// Answer to Put.
    Written(WriteResult),
    /// Answer to Delete.
    Deleted(WriteResult),
    /// Answer to Batch: one result per operation.
    Batch(Vec<WriteResult>),
    /// Answer to List.
    List {
        /// records in key order
        records: Vec<Record>,
        /// whether more records follow the last one
        more: bool,
    },
    /// Answer to Count.
    Count(u64),
    /// Answer to Status.
    Status(Box<StatusInfo>),
    /// Answer to Query.
    Rows(QueryRows),
    /// Answer to CreateIndex, DropIndex and SetFulltext: whether anything changed.
    Done(bool),
    /// Answer to Search: the best hits first.
    Hits(Vec<SearchHit>),
    /// Answer to VectorSearch: the nearest records first.
    Neighbors(Vec<Neighbor>),
    /// Answer to Watch: events follow in the event ring.
    Watching {
        /// the watch's id, carried by its events
        watch: u64,
        /// sequence number of the last committed change when the watch started: the
        /// first event has a greater one
        head: u64,
        /// the oldest sequence number the server's change log still holds
        oldest: u64,
    },
    /// The request failed; nothing was changed.
    Error {
        /// an [`ErrorCode`] value
        code: u32,
        /// human-readable detail
        message: String,
    },
}

impl Response {
    /// The error response with `code` and a human-readable `message`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code: code as u32,
            message: message.into(),
        }
    }
}

/// Serializes a request into `buf` (cleared first).
pub fn encode_request(req: &Request, buf: &mut AlignedVec<16>) -> Result<(), rancor::Error> {
    buf.clear();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(req, &mut *buf)?;
    Ok(())
}

/// Serializes a response into `buf` (cleared first).
pub fn encode_response(resp: &Response, buf: &mut AlignedVec<16>) -> Result<(), rancor::Error> {
    buf.clear();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(resp, &mut *buf)?;
    Ok(())
}

/// Serializes an event into `buf` (cleared first).
pub fn encode_event(ev: &Event, buf: &mut AlignedVec<16>) -> Result<(), rancor::Error> {
    buf.clear();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(ev, &mut *buf)?;
    Ok(())
}

/// Validates and accesses an archived event (bytecheck).
pub fn access_event(bytes: &[u8]) -> Result<&ArchivedEvent, rancor::Error> {
    rkyv::access::<ArchivedEvent, rancor::Error>(bytes)
}

/// Deserializes an archived event into an owned one.
pub fn to_owned_event(a: &ArchivedEvent) -> Event {
    rkyv::deserialize::<Event, rancor::Error>(a).expect("deserializing a validated archive")
}

/// Validates and accesses an archived request (bytecheck). `bytes` must be 16-byte
/// aligned (an `AlignedVec<16>`, or a ring payload).
pub fn access_request(bytes: &[u8]) -> Result<&ArchivedRequest, rancor::Error> {
    rkyv::access::<ArchivedRequest, rancor::Error>(bytes)
}

/// Validates and accesses an archived response (bytecheck).
pub fn access_response(bytes: &[u8]) -> Result<&ArchivedResponse, rancor::Error> {
    rkyv::access::<ArchivedResponse, rancor::Error>(bytes)
}

/// Deserializes an archived response into an owned one.
pub fn to_owned_response(a: &ArchivedResponse) -> Response {
    rkyv::deserialize::<Response, rancor::Error>(a).expect("deserializing a validated archive")
}

/// Deserializes an archived request into an owned one.
pub fn to_owned_request(a: &ArchivedRequest) -> Request {
    rkyv::deserialize::<Request, rancor::Error>(a).expect("deserializing a validated archive")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_kind() -> impl Strategy<Value = ValueKind> {
        prop_oneof![Just(ValueKind::Json), Just(ValueKind::Bytes)]
    }

    fn arb_sql_value() -> impl Strategy<Value = SqlValue> {
        prop_oneof![
            Just(SqlValue::Null),
            any::<i64>().prop_map(SqlValue::Integer),
            // NaN never equals itself; every other float round-trips exactly.
            any::<f64>()
                .prop_filter("not NaN", |f| !f.is_nan())
                .prop_map(SqlValue::Real),
            ".{0,20}".prop_map(SqlValue::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(SqlValue::Blob),
        ]
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (
                ".{0,60}",
                proptest::collection::vec(arb_sql_value(), 0..6),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(sql, params, max_rows, timeout_ms)| Request::Query {
                    sql,
                    params,
                    max_rows,
                    timeout_ms
                }),
            Just(Request::Ping),
            Just(Request::Status),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Request::Echo),
            ".{0,40}".prop_map(|key| Request::Get { key }),
            (
                ".{0,40}",
                proptest::collection::vec(any::<u8>(), 0..300),
                arb_kind()
            )
                .prop_map(|(key, value, kind)| Request::Put { key, value, kind }),
            (
                ".{0,10}",
                proptest::option::of(".{0,10}"),
                any::<u32>(),
                proptest::option::of((".{0,10}", ".{0,10}"))
            )
                .prop_map(|(prefix, start_after, limit, filter)| Request::List {
                    prefix,
                    start_after,
                    limit,
                    filter: filter.map(|(path, value)| FieldFilter { path, value }),
                }),
            ".{0,20}".prop_map(|path| Request::CreateIndex { path }),
            any::<bool>().prop_map(|enabled| Request::SetFulltext { enabled }),
            (".{0,10}", proptest::option::of(any::<u64>()), any::<bool>()).prop_map(
                |(prefix, since, with_values)| Request::Watch {
                    prefix,
                    since,
                    with_values
                }
            ),
            Just(Request::Unwatch),
            (".{0,20}", any::<u32>()).prop_map(|(text, limit)| Request::Search { text, limit }),
            ".{0,20}".prop_map(|path| Request::DropIndex { path }),
            (
                ".{0,20}",
                proptest::collection::vec(any::<u8>(), 0..30),
                arb_kind(),
                proptest::collection::vec(-1e6f32..1e6, 0..20)
            )
                .prop_map(|(key, value, kind, vector)| Request::PutVector {
                    key,
                    value,
                    kind,
                    vector
                }),
            (
                proptest::collection::vec(-1e6f32..1e6, 0..20),
                any::<u32>(),
                0f32..1.0,
                proptest::option::of(".{0,10}"),
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(vector, k, min_score, prefix, ef, with_values)| {
                    Request::VectorSearch {
                        vector,
                        k,
                        min_score,
                        prefix,
                        ef,
                        with_values,
                    }
                }),
            (
                ".{0,40}",
                any::<u32>(),
                0f32..1.0,
                proptest::option::of(".{0,10}"),
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(text, k, min_score, prefix, ef, with_values)| {
                    Request::SearchText {
                        text,
                        k,
                        min_score,
                        prefix,
                        ef,
                        with_values,
                    }
                }),
            proptest::collection::vec(
                prop_oneof![
                    ".{0,10}".prop_map(|key| BatchOp::Delete { key }),
                    (
                        ".{0,10}",
                        proptest::collection::vec(any::<u8>(), 0..30),
                        arb_kind()
                    )
                        .prop_map(|(key, value, kind)| BatchOp::Put {
                            key,
                            value,
                            kind
                        }),
                ],
                0..10
            )
            .prop_map(|ops| Request::Batch { ops }),
        ]
    }

    proptest! {
        /// Every request survives encode → validate → deserialize unchanged.
        #[test]
        fn request_roundtrip(req in arb_request()) {
            let mut buf = AlignedVec::<16>::new();
            encode_request(&req, &mut buf).unwrap();
            let a = access_request(&buf).unwrap();
            prop_assert_eq!(to_owned_request(a), req);
        }

        /// Arbitrary bytes never make validation panic or accept garbage silently
        /// (whatever it accepts must deserialize).
        #[test]
        fn garbage_is_rejected_or_valid(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = AlignedVec::<16>::new();
            buf.extend_from_slice(&bytes);
            if let Ok(a) = access_request(&buf) {
                let _ = to_owned_request(a);
            }
        }

        /// Corrupting one byte of a valid archive is detected or yields a valid request.
        #[test]
        fn bit_flips(req in arb_request(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = AlignedVec::<16>::new();
            encode_request(&req, &mut buf).unwrap();
            if !buf.is_empty() {
                let i = pos.index(buf.len());
                buf[i] ^= 1 << bit;
                if let Ok(a) = access_request(&buf) {
                    let _ = to_owned_request(a);
                }
            }
        }
    }

    #[test]
    fn response_roundtrip() {
        let r = Response::List {
            records: vec![Record {
                key: "k".into(),
                value: b"{}".to_vec(),
                kind: ValueKind::Json,
                version: Version {
                    hlc: 1,
                    replica: [7; 16],
                    seq: 3,
                },
                updated_at_ms: 5,
            }],
            more: true,
        };
        let mut buf = AlignedVec::<16>::new();
        encode_response(&r, &mut buf).unwrap();
        assert_eq!(to_owned_response(access_response(&buf).unwrap()), r);

        let rows = Response::Rows(QueryRows {
            columns: vec!["a".into(), "b".into()],
            rows: vec![
                vec![SqlValue::Null, SqlValue::Integer(-3)],
                vec![SqlValue::Real(0.5), SqlValue::Text("t".into())],
                vec![SqlValue::Blob(vec![0, 255]), SqlValue::Integer(i64::MAX)],
            ],
            truncated: true,
        });
        encode_response(&rows, &mut buf).unwrap();
        assert_eq!(to_owned_response(access_response(&buf).unwrap()), rows);
    }
}
