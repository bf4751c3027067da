//! Queries: read-only SQL over the server's `records` view.

use std::time::Duration;

use ringbase_protocol::message::{QueryRows, Request, Response, SqlValue};

use crate::client::Client;
use crate::error::Result;
use crate::records::unexpected;

/// Limits of one query; zero fields take the server's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Most rows to return (0: the server's default, 1000; the server caps it at
    /// 100,000). A longer result comes back with `truncated` set.
    pub max_rows: u32,
    /// Time budget (zero: the server's default, 2 s; the server caps it at 30 s). A query
    /// that runs longer is stopped and fails with [`crate::ErrorCode::Budget`].
    pub timeout: Duration,
}

impl Client {
    /// Runs one read-only SQL statement over the `records` view with positional
    /// parameters (`?` or `?N`), with the server's default limits.
    ///
    /// The view has one row per live record: `key` (text), `kind` (`'json'` or
    /// `'bytes'`), `value` (a JSON record's value as text, so `json_extract(value,
    /// '$.hp')` works; NULL for a bytes record), `bytes` (a bytes record's value as a
    /// blob; NULL for JSON), `updated_at` (unix ms), and the version as `hlc`, `replica`
    /// (hex text) and `seq`. The query sees every write this session made before it.
    ///
    /// ```no_run
    /// # use ringbase_client::{Client, SqlValue};
    /// let mut db = Client::connect("default")?;
    /// let rows = db.query(
    ///     "SELECT key, json_extract(value, '$.hp') AS hp FROM records WHERE key >= ? ORDER BY key",
    ///     &[SqlValue::Text("player:".into())],
    /// )?;
    /// for row in &rows.rows {
    ///     println!("{:?}", row);
    /// }
    /// # Ok::<(), ringbase_client::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`crate::Error::Server`] with [`crate::ErrorCode::InvalidQuery`] (syntax, unknown
    /// names, wrong parameter count, several statements), [`crate::ErrorCode::ReadOnly`]
    /// (a writing statement, a pragma, anything but the `records` view),
    /// [`crate::ErrorCode::Budget`] (ran past its time budget), or
    /// [`crate::ErrorCode::TooLarge`] (one row does not fit this session's rings);
    /// [`crate::Error::Disconnected`].
    pub fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<QueryRows> {
        self.query_with(sql, params, QueryOptions::default())
    }

    /// [`Client::query`] with explicit limits.
    pub fn query_with(
        &mut self,
        sql: &str,
        params: &[SqlValue],
        opts: QueryOptions,
    ) -> Result<QueryRows> {
        let timeout_ms = u32::try_from(opts.timeout.as_millis()).unwrap_or(u32::MAX);
        // A sub-millisecond budget still means a budget, not the default.
        let timeout_ms = if timeout_ms == 0 && !opts.timeout.is_zero() {
            1
        } else {
            timeout_ms
        };
        match self.call(&Request::Query {
            sql: sql.to_string(),
            params: params.to_vec(),
            max_rows: opts.max_rows,
            timeout_ms,
        })? {
            Response::Rows(rows) => Ok(rows),
            other => Err(unexpected(other)),
        }
    }
}
