//! Queries: one read-only SQL statement over the `records` view, with positional
//! parameters, a row limit, a byte limit and a time/step budget.
//!
//! Each client that queries gets its own [`QueryConn`] (a read-only SQLite connection
//! from [`Store::query_connection`]), so a query never waits for the writer and never
//! holds up another client. Three fences keep a query harmless:
//!
//! - **What it may touch**: an authorizer admits `SELECT`, reads of the `records` view
//!   (the view's reads of the table underneath), functions and recursive CTEs; it
//!   refuses everything else at prepare time (writes, `PRAGMA`, `ATTACH`, transactions,
//!   direct reads of the tables), with an error that says what was refused. The
//!   connection is also read-only and `query_only`, and a prepared statement that is not
//!   read-only is refused before it runs.
//! - **How long it runs**: a progress handler stops the statement once it has run past
//!   its time budget or [`MAX_STEPS`] virtual-machine steps; the client gets
//!   [`QueryError::Budget`] and its session goes on.
//! - **How much it makes**: at most the row limit, at most what fits in the client's
//!   response frame (a longer result is cut short and marked `truncated`), and no string
//!   or blob larger than that frame (SQLite's length limit).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringbase_protocol::message::{ErrorCode, QueryRows, SqlValue};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Batch, Connection, ErrorCode as SqliteCode};

use crate::store::{Store, StoreError};

/// Rows a query returns when the client asks for 0 (the default).
pub const DEFAULT_ROWS: u32 = 1_000;
/// Most rows a query returns, whatever the client asks for.
pub const MAX_ROWS: u32 = 100_000;
/// Time budget of a query when the client asks for 0 (the default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time budget a client may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Most SQLite virtual-machine steps one query may take (a CPU budget that does not
/// depend on how busy the machine is).
pub const MAX_STEPS: u64 = 2_000_000_000;
/// Prepared statements a query connection keeps (by SQL text).
const CACHED_STATEMENTS: usize = 32;
/// Virtual-machine steps between two looks at the budget.
const STEPS_PER_CHECK: u64 = 1_000;
/// Bytes charged per value on top of its payload, and per row, when fitting a result
/// into a response frame (archive overhead, generously).
const VALUE_OVERHEAD: u64 = 16;

/// Why a query failed. Nothing is ever changed by a query, failed or not.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The statement cannot run as given: syntax, unknown names, parameters, more than
    /// one statement.
    #[error("invalid query: {0}")]
    Invalid(String),
    /// The statement would write, or touch something other than the `records` view.
    #[error("query refused: {0}")]
    ReadOnly(String),
    /// The statement ran past its budget and was stopped.
    #[error("query stopped: {0}")]
    Budget(String),
    /// The first row alone does not fit in the response frame.
    #[error("{0}")]
    TooLarge(String),
    /// SQLite failed for another reason.
    #[error("query failed: {0}")]
    Storage(String),
}

impl QueryError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            QueryError::Invalid(_) => ErrorCode::InvalidQuery,
            QueryError::ReadOnly(_) => ErrorCode::ReadOnly,
            QueryError::Budget(_) => ErrorCode::Budget,
            QueryError::TooLarge(_) => ErrorCode::TooLarge,
            QueryError::Storage(_) => ErrorCode::Storage,
        }
    }
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        QueryError::Storage(e.to_string())
    }
}

/// What a query may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Most rows.
    pub max_rows: u32,
    /// Time budget.
    pub timeout: Duration,
    /// Most bytes of the response (the client's frame size).
    pub max_bytes: u64,
}

impl QueryLimits {
    /// The limits of a request asking for `max_rows` rows and `timeout_ms` (0 = default
    /// for each), capped by the server's maximums, for a client whose responses carry
    /// at most `max_bytes`.
    pub fn new(max_rows: u32, timeout_ms: u32, max_bytes: u64) -> QueryLimits {
        let max_rows = match max_rows {
            0 => DEFAULT_ROWS,
            n => n.min(MAX_ROWS),
        };
        let timeout = match timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms.into()).min(MAX_TIMEOUT),
        };
        QueryLimits {
            max_rows,
            timeout,
            max_bytes,
        }
    }
}

/// The budget of the running statement, shared with the progress handler.
#[derive(Debug)]
struct Budget {
    /// Reference point of `deadline_ns`.
    epoch: Instant,
    /// Nanoseconds after `epoch` when the running statement must stop.
    deadline_ns: AtomicU64,
    /// Progress-handler calls left before the step budget is spent.
    checks_left: AtomicU64,
    /// What stopped the statement: 0 nothing, [`STOPPED_TIME`], [`STOPPED_STEPS`].
    stopped: AtomicU8,
}

const STOPPED_TIME: u8 = 1;
const STOPPED_STEPS: u8 = 2;

impl Budget {
    fn arm(&self, timeout: Duration) {
        let deadline = self.epoch.elapsed() + timeout;
        self.deadline_ns
            .store(deadline.as_nanos() as u64, Ordering::Relaxed);
        self.checks_left
            .store(MAX_STEPS / STEPS_PER_CHECK, Ordering::Relaxed);
        self.stopped.store(0, Ordering::Relaxed);
    }

    /// The progress handler: `true` stops the statement.
    fn check(&self) -> bool {
        // Only the connection's own thread calls this and `arm`: Relaxed suffices.
        let left = self.checks_left.load(Ordering::Relaxed);
        if left == 0 {
            self.stopped.store(STOPPED_STEPS, Ordering::Relaxed);
            return true;
        }
        self.checks_left.store(left - 1, Ordering::Relaxed);
        if self.epoch.elapsed().as_nanos() as u64 > self.deadline_ns.load(Ordering::Relaxed) {
            self.stopped.store(STOPPED_TIME, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// One client's query connection.
pub struct QueryConn {
    conn: Connection,
    budget: Arc<Budget>,
    /// Why the authorizer refused the statement being prepared, if it did.
    refused: Arc<Mutex<Option<String>>>,
    /// SQL texts known to hold exactly one statement that prepares.
    single: HashSet<String>,
}

impl std::fmt::Debug for QueryConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryConn").finish_non_exhaustive()
    }
}

impl QueryConn {
    /// Opens a query connection on `store` whose strings and blobs are limited to
    /// `max_value_bytes` (what one response can carry).
    pub fn open(store: &Store, max_value_bytes: u64) -> Result<QueryConn, QueryError> {
        let conn = store.query_connection()?;
        let budget = Arc::new(Budget {
            epoch: Instant::now(),
            deadline_ns: AtomicU64::new(0),
            checks_left: AtomicU64::new(0),
            stopped: AtomicU8::new(0),
        });
        let b = Arc::clone(&budget);
        conn.progress_handler(STEPS_PER_CHECK as i32, Some(move || b.check()));
        let refused = Arc::new(Mutex::new(None));
        let r = Arc::clone(&refused);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| match authorize(&ctx) {
            Ok(()) => Authorization::Allow,
            Err(why) => {
                *r.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Authorization::Deny
            }
        }));
        let max_len = i32::try_from(max_value_bytes.max(1)).unwrap_or(i32::MAX);
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_len);
        conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
        Ok(QueryConn {
            conn,
            budget,
            refused,
            single: HashSet::new(),
        })
    }

    /// Runs `sql` with `params` bound to its positional parameters, within `limits`.
    pub fn run(
        &mut self,
        sql: &str,
        params: &[ValueRef<'_>],
        limits: QueryLimits,
    ) -> Result<QueryRows, QueryError> {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.budget.arm(limits.timeout);
        if !self.single.contains(sql) {
            self.check_single(sql, limits)?;
            if self.single.len() >= CACHED_STATEMENTS {
                self.single.clear();
            }
            self.single.insert(sql.to_string());
        }
        // Prepared once per text: the connection keeps CACHED_STATEMENTS of them (and
        // prepares, so authorizes, again after a schema change).
        let mut stmt = match self.conn.prepare_cached(sql) {
            Ok(s) => s,
            Err(e) => return Err(self.error(e, limits)),
        };
        if !stmt.readonly() {
            return Err(QueryError::ReadOnly(
                "the statement would write; queries are read-only".into(),
            ));
        }
        let expected = stmt.parameter_count();
        if expected != params.len() {
            return Err(QueryError::Invalid(format!(
                "the statement has {expected} parameter(s), {} given",
                params.len()
            )));
        }
        for (i, p) in params.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, ToSqlOutput::Borrowed(*p))
                .map_err(|e| self.error(e, limits))?;
        }
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let ncols = columns.len();
        // Room for the envelope and the column names; the rest is for rows.
        let mut used: u64 = 256
            + columns
                .iter()
                .map(|c| c.len() as u64 + VALUE_OVERHEAD)
                .sum::<u64>();
        let mut out = Vec::new();
        let mut truncated = false;
        let mut rows = stmt.raw_query();
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    drop(rows);
                    drop(stmt);
                    return Err(self.error(e, limits));
                }
            };
            if out.len() as u32 >= limits.max_rows {
                truncated = true;
                break;
            }
            let mut values = Vec::with_capacity(ncols);
            let mut size = VALUE_OVERHEAD;
            for i in 0..ncols {
                let v = match row.get_ref(i) {
                    Ok(v) => v,
                    Err(e) => return Err(QueryError::Storage(e.to_string())),
                };
                let v = to_wire(v);
                size += value_size(&v);
                values.push(v);
            }
            if used + size > limits.max_bytes {
                if out.is_empty() {
                    return Err(QueryError::TooLarge(format!(
                        "the first row ({size} bytes) does not fit in this session's response frame ({} bytes)",
                        limits.max_bytes
                    )));
                }
                truncated = true;
                break;
            }
            used += size;
            out.push(values);
        }
        Ok(QueryRows {
            columns,
            rows: out,
            truncated,
        })
    }

    /// Checks that `sql` holds exactly one statement that prepares (so passes the
    /// authorizer).
    fn check_single(&self, sql: &str, limits: QueryLimits) -> Result<(), QueryError> {
        let mut batch = Batch::new(&self.conn, sql);
        match batch.next() {
            Ok(Some(_)) => {}
            Ok(None) => return Err(QueryError::Invalid("the statement is empty".into())),
            Err(e) => return Err(self.error(e, limits)),
        }
        // Whatever follows the first statement must be blank (or comments): anything
        // else, even something that would not prepare, is a second statement.
        if !matches!(batch.next(), Ok(None)) {
            return Err(QueryError::Invalid(
                "more than one statement; send one at a time".into(),
            ));
        }
        Ok(())
    }

    /// The query error for a SQLite error of the running statement.
    fn error(&self, e: rusqlite::Error, limits: QueryLimits) -> QueryError {
        if let Some(why) = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return QueryError::ReadOnly(why);
        }
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == SqliteCode::OperationInterrupted => {
                QueryError::Budget(match self.budget.stopped.load(Ordering::Relaxed) {
                    STOPPED_STEPS => format!("it ran past {MAX_STEPS} SQLite steps"),
                    _ => format!(
                        "it ran past its time budget of {} ms",
                        limits.timeout.as_millis()
                    ),
                })
            }
            rusqlite::Error::SqliteFailure(f, msg) if f.code == SqliteCode::TooBig => {
                QueryError::TooLarge(format!(
                    "query: {} (a string or blob longer than this session's response frame)",
                    msg.as_deref().unwrap_or("string or blob too big")
                ))
            }
            rusqlite::Error::SqlInputError { msg, .. }
            | rusqlite::Error::SqliteFailure(_, Some(msg))
                if msg.starts_with("cannot modify") =>
            {
                QueryError::ReadOnly(format!("queries are read-only ({msg})"))
            }
            rusqlite::Error::SqlInputError { msg, offset, .. } => {
                QueryError::Invalid(format!("{msg} (at byte {offset})"))
            }
            rusqlite::Error::SqliteFailure(f, msg)
                if f.code == SqliteCode::Unknown || f.code == SqliteCode::ConstraintViolation =>
            {
                // SQLITE_ERROR: the statement is wrong (unknown table or column, bad
                // function arguments, malformed JSON, ...).
                QueryError::Invalid(msg.clone().unwrap_or_else(|| e.to_string()))
            }
            _ => QueryError::Storage(e.to_string()),
        }
    }
}

/// The authorizer's rule: `Ok` admits the action.
fn authorize(ctx: &AuthContext<'_>) -> Result<(), String> {
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive | AuthAction::Function { .. } => Ok(()),
        // The view's columns (it lives in the temp schema), and the table underneath
        // when the view reads it.
        AuthAction::Read { table_name, .. }
            if table_name == "records"
                && match ctx.database_name {
                    Some("temp") => ctx.accessor.is_none(),
                    Some("main") => ctx.accessor == Some("records"),
                    _ => false,
                } =>
        {
            Ok(())
        }
        // Common table expressions and subqueries: the statement's own rows.
        AuthAction::Read { .. } if ctx.database_name.is_none() => Ok(()),
        AuthAction::Read { table_name, .. } => Err(format!(
            "queries read the records view only, not the table {table_name:?}"
        )),
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. } => {
            Err(format!("queries are read-only (a write to {table_name:?})"))
        }
        AuthAction::Pragma { pragma_name, .. } => {
            Err(format!("PRAGMA {pragma_name} is not allowed in queries"))
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Err("ATTACH and DETACH are not allowed in queries".into())
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Err(
            "queries run in their own read transaction; BEGIN/COMMIT/SAVEPOINT are not allowed"
                .into(),
        ),
        other => Err(format!("queries are read-only ({other:?} is not allowed)")),
    }
}

/// A result cell on the wire.
fn to_wire(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

/// Bytes a value takes in a response, roughly (payload plus overhead).
fn value_size(v: &SqlValue) -> u64 {
    VALUE_OVERHEAD
        + match v {
            SqlValue::Text(t) => t.len() as u64,
            SqlValue::Blob(b) => b.len() as u64,
            _ => 8,
        }
}

/// A wire parameter as a SQLite value, borrowing its text or bytes.
pub fn param(v: &ringbase_protocol::message::ArchivedSqlValue) -> ValueRef<'_> {
    use ringbase_protocol::message::ArchivedSqlValue as A;
    match v {
        A::Null => ValueRef::Null,
        A::Integer(i) => ValueRef::Integer(i.to_native()),
        A::Real(f) => ValueRef::Real(f.to_native()),
        A::Text(t) => ValueRef::Text(t.as_bytes()),
        A::Blob(b) => ValueRef::Blob(b.as_slice()),
    }
}
