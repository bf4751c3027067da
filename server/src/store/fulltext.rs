//! The full-text index: SQLite FTS5 over the string leaves of JSON values.
//!
//! Off by default (it costs the writer a few statements per put); turned on with
//! [`super::Store::set_fulltext`], which builds it over the stored records in one
//! transaction. While on, the writer updates it in the same transaction (and the same
//! savepoint) as each write, so a search sees exactly the committed records.
//!
//! Tables: `fts_docs(docid INTEGER PRIMARY KEY, key TEXT UNIQUE)` maps a record to its
//! FTS5 row, and `fts(text)` holds, per JSON record with any string in it, the record's
//! string leaves (object member values and array elements, at any depth; not member
//! names) joined by newlines.

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};

use super::error::StoreError;

/// The text of a JSON document `X`: its string leaves joined by newlines (NULL if none).
macro_rules! leaves_of {
    ($($x:tt)*) => {
        concat!(
            "(SELECT group_concat(j.value, char(10)) FROM json_tree(",
            $($x)*,
            ") AS j WHERE j.type = 'text')"
        )
    };
}

/// Creates the tables and indexes every live JSON record that has text.
const ENABLE: &str = concat!(
    "CREATE TABLE fts_docs(docid INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
     CREATE VIRTUAL TABLE fts USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');
     INSERT INTO fts_docs(key) SELECT r.key FROM records AS r WHERE ",
    leaves_of!("r.json"),
    " IS NOT NULL ORDER BY r.key;
     INSERT INTO fts(rowid, text) SELECT d.docid, ",
    leaves_of!("r.json"),
    " FROM fts_docs AS d JOIN records AS r ON r.key = d.key;"
);

const DISABLE: &str = "DROP TABLE fts; DROP TABLE fts_docs;";

/// Whether the full-text index exists on `conn`'s database.
pub(super) fn is_on(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'fts'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Turns the index on or off inside the caller's transaction; `Ok(changed)`.
pub(super) fn set(conn: &Connection, on: bool) -> rusqlite::Result<bool> {
    if is_on(conn)? == on {
        return Ok(false);
    }
    conn.execute_batch(if on { ENABLE } else { DISABLE })?;
    Ok(true)
}

/// The writer's statements that keep the index up to date, prepared per transaction
/// while the index is on.
pub(super) struct Maintain<'c> {
    del_doc: CachedStatement<'c>,
    del_text: CachedStatement<'c>,
    text_of: CachedStatement<'c>,
    add_doc: CachedStatement<'c>,
    add_text: CachedStatement<'c>,
}

impl<'c> Maintain<'c> {
    pub(super) fn prepare(conn: &'c Connection) -> rusqlite::Result<Maintain<'c>> {
        Ok(Maintain {
            del_doc: conn.prepare_cached("DELETE FROM fts_docs WHERE key = ?1 RETURNING docid")?,
            del_text: conn.prepare_cached("DELETE FROM fts WHERE rowid = ?1")?,
            text_of: conn.prepare_cached(concat!("SELECT ", leaves_of!("?1")))?,
            add_doc: conn
                .prepare_cached("INSERT INTO fts_docs(key) VALUES (?1) RETURNING docid")?,
            add_text: conn.prepare_cached("INSERT INTO fts(rowid, text) VALUES (?1, ?2)")?,
        })
    }

    /// The record under `key` now holds `json` (a JSON value's text), or something the
    /// index does not cover (`None`: bytes, or deleted).
    pub(super) fn update(&mut self, key: &str, json: Option<&[u8]>) -> rusqlite::Result<()> {
        let old: Option<i64> = self.del_doc.query_row([key], |r| r.get(0)).optional()?;
        if let Some(docid) = old {
            self.del_text.execute([docid])?;
        }
        let Some(json) = json else { return Ok(()) };
        // Validated JSON is UTF-8; anything else has no text to index.
        let Ok(json) = std::str::from_utf8(json) else {
            return Ok(());
        };
        let text: Option<String> = self.text_of.query_row([json], |r| r.get(0))?;
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            let docid: i64 = self.add_doc.query_row([key], |r| r.get(0))?;
            self.add_text.execute(params![docid, text])?;
        }
        Ok(())
    }
}

/// Default number of hits of a search.
pub const DEFAULT_HITS: u32 = 20;
/// Most hits of one search.
pub const MAX_HITS: u32 = 1_000;

/// The FTS5 query for plain `text`: every whitespace-separated word as a quoted string
/// (so no character is FTS5 syntax), all of them required.
pub(super) fn match_expr(text: &str) -> Result<String, StoreError> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return Err(StoreError::InvalidFilter(
            "the search text has no words".into(),
        ));
    }
    Ok(words.join(" "))
}

/// The search over `fts`: best first. `ORDER BY rank` (bm25, lower for better matches)
/// inside the subquery lets FTS5 sort the matches itself, so the snippet is made only
/// for the hits returned and only they are joined to their keys (ordering by
/// `bm25(fts)` made a snippet and a key lookup for every match: 110 ms instead of
/// a few for a common word in 1M records).
pub(super) const SEARCH: &str = "SELECT d.key, h.score, h.snip FROM (
        SELECT rowid, -rank AS score, snippet(fts, 0, '[', ']', '…', 12) AS snip
        FROM fts WHERE fts MATCH ?1 ORDER BY rank LIMIT ?2
    ) AS h JOIN fts_docs AS d ON d.docid = h.rowid ORDER BY h.score DESC";
