//! Read connections: one per client session, never queued behind the writer (WAL).

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row};

use super::cache::ReadCache;
use super::error::StoreError;
use super::fields::{FieldFilter, INDEX_PREFIX};
use super::{Record, ValueKind, Version};

/// The columns `row_to_record` decodes, in its order.
const COLS: &str = "key, value, kind, hlc, replica, seq, updated_at";

/// A read-only connection to the store. Each method runs in its own implicit read
/// transaction, so it sees every write whose completion was sent before it started.
///
/// `Reader` is `Send` (move it to a session thread) but not `Sync`.
#[derive(Debug)]
pub struct Reader {
    /// Also used by the vector reads (`vectors.rs`).
    pub(super) conn: Connection,
    cache: Arc<ReadCache>,
}

impl Reader {
    pub(super) fn new(conn: Connection, cache: Arc<ReadCache>) -> Reader {
        Reader { conn, cache }
    }

    /// The live record under `key`, or `None` if there is none (or it was deleted).
    /// Served from the shared read cache when the key is hot.
    pub fn get(&mut self, key: &str) -> Result<Option<Record>, StoreError> {
        if let Some(r) = self.cache.get(key) {
            return Ok(Some((*r).clone()));
        }
        // Taken before the SQLite read starts (cache.rs explains why).
        let generation = self.cache.generation();
        let found = self.get_uncached(key)?;
        if let Some(r) = &found {
            self.cache.insert_if_current(generation, r.clone());
        }
        Ok(found)
    }

    fn get_uncached(&mut self, key: &str) -> Result<Option<Record>, StoreError> {
        // A literal (not `format!`): the statement cache is keyed by the SQL text, and
        // this is the hot path.
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value, kind, hlc, replica, seq, updated_at FROM records \
             WHERE key = ?1 AND deleted = 0",
        )?;
        stmt.query_row([key], row_to_record)
            .optional()
            .map_err(StoreError::from)
    }

    /// Live records whose key starts with `prefix` and (if given) is greater than
    /// `start_after`, in ascending key order (bytewise UTF-8, i.e. `str` order), at most
    /// `limit` of them. The flag is true if more such records follow the last one
    /// returned, so the next page is `list(prefix, Some(last_key), limit)`.
    ///
    /// This is an index range scan `key >= prefix AND key < successor(prefix)`. With a
    /// `filter`, only JSON records whose field equals the filter's value count; an index
    /// on that field ([`super::Store::create_index`]) lets SQLite find them without
    /// reading every record in the range.
    pub fn list(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
        filter: Option<&FieldFilter>,
    ) -> Result<(Vec<Record>, bool), StoreError> {
        // One lower bound, so SQLite seeks straight to it: the tighter of the two.
        let (lower, exclusive) = match start_after {
            Some(after) if after >= prefix => (after, true),
            _ => (prefix, false),
        };
        let upper = prefix_successor(prefix);
        let lower_op = if exclusive { ">" } else { ">=" };
        let fetch = i64::from(limit) + 1;
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&lower, &fetch];
        let upper_clause = match &upper {
            Some(up) => {
                params.push(up);
                format!("AND key < ?{}", params.len())
            }
            None => String::new(),
        };
        let filter_clause = match filter {
            Some(f) => {
                params.push(f);
                format!("AND {} = ?{}", f.path().expr(), params.len())
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT {COLS} FROM records WHERE key {lower_op} ?1 {upper_clause} \
             {filter_clause} AND deleted = 0 ORDER BY key LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params.as_slice())?;
        let mut out = Vec::with_capacity((limit as usize).min(1024));
        let mut more = false;
        while let Some(row) = rows.next()? {
            if out.len() == limit as usize {
                more = true;
                break;
            }
            out.push(row_to_record(row)?);
        }
        Ok((out, more))
    }

    /// Whether the full-text index is on ([`super::Store::set_fulltext`]).
    pub fn fulltext_on(&mut self) -> Result<bool, StoreError> {
        Ok(super::fulltext::is_on(&self.conn)?)
    }

    /// Full-text search: the live JSON records whose string leaves contain every word
    /// of `text` (case- and diacritics-insensitive; words are matched whole, and no
    /// character of `text` is query syntax), best first, at most `limit` (clamped to
    /// 1..=[`super::MAX_HITS`]; 0 means [`super::DEFAULT_HITS`]). Each hit: the key,
    /// the relevance (FTS5's bm25, negated: higher is better) and a snippet with the
    /// matched words in `[` `]`.
    pub fn search(
        &mut self,
        text: &str,
        limit: u32,
    ) -> Result<Vec<(String, f64, String)>, StoreError> {
        let expr = super::fulltext::match_expr(text)?;
        if !self.fulltext_on()? {
            return Err(StoreError::FulltextOff);
        }
        let limit = match limit {
            0 => super::DEFAULT_HITS,
            n => n.min(super::MAX_HITS),
        };
        let mut stmt = self.conn.prepare_cached(super::fulltext::SEARCH)?;
        let rows = stmt.query_map(rusqlite::params![expr, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The JSON paths that have an index ([`super::Store::create_index`]), in order.
    pub fn indexes(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT substr(name, ?1) FROM sqlite_master
             WHERE type = 'index' AND substr(name, 1, ?2) = ?3 ORDER BY name",
        )?;
        let rows = stmt.query_map(
            rusqlite::params![INDEX_PREFIX.len() + 1, INDEX_PREFIX.len(), INDEX_PREFIX],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of live records, all of them or those whose key starts with `prefix`.
    pub fn count(&mut self, prefix: Option<&str>) -> Result<u64, StoreError> {
        let n: i64 = match prefix {
            None | Some("") => self
                .conn
                .prepare_cached("SELECT count(*) FROM records WHERE deleted = 0")?
                .query_row([], |r| r.get(0))?,
            Some(p) => match prefix_successor(p) {
                Some(up) => self
                    .conn
                    .prepare_cached(
                        "SELECT count(*) FROM records WHERE key >= ?1 AND key < ?2 \
                         AND deleted = 0",
                    )?
                    .query_row([p, up.as_str()], |r| r.get(0))?,
                None => self
                    .conn
                    .prepare_cached("SELECT count(*) FROM records WHERE key >= ?1 AND deleted = 0")?
                    .query_row([p], |r| r.get(0))?,
            },
        };
        Ok(n as u64)
    }
}

/// Decode a row selected as `COLS` (live rows only: `deleted` is false).
pub(super) fn row_to_record(row: &Row<'_>) -> rusqlite::Result<Record> {
    let kind_tag: i64 = row.get(2)?;
    let kind = u8::try_from(kind_tag)
        .ok()
        .and_then(|k| ValueKind::try_from(k).ok())
        .ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Integer,
                format!("unknown value kind {kind_tag}").into(),
            )
        })?;
    let replica = row.get_ref(4)?.as_blob()?;
    let replica = replica.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Blob,
            format!("replica id has {} bytes", replica.len()).into(),
        )
    })?;
    Ok(Record {
        key: row.get(0)?,
        value: row.get(1)?,
        kind,
        version: Version {
            hlc: row.get::<_, i64>(3)? as u64,
            replica,
            seq: row.get::<_, i64>(5)? as u64,
        },
        updated_at_ms: row.get::<_, i64>(6)? as u64,
        deleted: false,
    })
}

/// The smallest string greater than every string that starts with `prefix`, or `None`
/// if there is none (empty prefix, or one made only of `char::MAX`).
///
/// UTF-8 bytewise order equals code point order, so it suffices to replace the last
/// char that is not `char::MAX` by the next valid char (skipping surrogates) and drop
/// everything after it. The result is always valid UTF-8, so it binds as TEXT and
/// compares with the `key` column under BINARY collation.
pub fn prefix_successor(prefix: &str) -> Option<String> {
    let mut s = prefix.to_owned();
    while let Some(c) = s.pop() {
        let next = match c {
            char::MAX => continue,
            '\u{D7FF}' => '\u{E000}',
            c => char::from_u32(c as u32 + 1).expect("next char of a non-surrogate"),
        };
        s.push(next);
        return Some(s);
    }
    None
}
