//! Queries: read-only SQL over the server's `records` view.

use std::time::Duration;

use ringbase_protocol::message::{QueryRows, Request, Response, SearchHit, SqlValue};

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

    /// Full-text search: the live JSON records whose string values (at any depth; not
    /// member names) contain every word of `text`, best first, at most `limit` (0: the
    /// server's default, 20; at most 1000). Words match whole, ignoring case and
    /// diacritics; no character of `text` is query syntax. Each hit has the key, a
    /// relevance score (higher is better: FTS5's bm25, negated) and a snippet with the
    /// matched words in `[` `]`. The search sees this session's earlier writes.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Server`] with [`crate::ErrorCode::Unsupported`] while the
    /// full-text index is off ([`Client::set_fulltext`]),
    /// [`crate::ErrorCode::InvalidQuery`] for a text without words;
    /// [`crate::Error::Disconnected`].
    pub fn search(&mut self, text: &str, limit: u32) -> Result<Vec<SearchHit>> {
        match self.call(&Request::Search {
            text: text.to_string(),
            limit,
        })? {
            Response::Hits(hits) => Ok(hits),
            other => Err(unexpected(other)),
        }
    }

    /// Turns the server's full-text index on or off; returns whether that changed
    /// anything. Off by default: while on, each write also updates the index (in the
    /// same transaction), which costs write throughput. Turning it on indexes every
    /// stored record first (writes wait meanwhile). The setting persists.
    pub fn set_fulltext(&mut self, on: bool) -> Result<bool> {
        match self.call(&Request::SetFulltext { enabled: on })? {
            Response::Done(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
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
