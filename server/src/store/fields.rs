//! JSON fields: paths, equality filters on them, and the indexes that make those fast.
//!
//! A field is named by a JSON path of a restricted form: `$` followed by `.name` steps
//! (`name`: ASCII letters, digits and `_`, not starting with a digit) and `[index]` steps,
//! e.g. `$.type` or `$.stats.hp` or `$.tags[0]`. The restriction keeps a path safe to
//! write into SQL text, which an expression index needs: SQLite uses an index on an
//! expression only for the same expression, literal path included.
//!
//! The expression reads the table's `json` column (schema v2), which the query view
//! shows as `value`, so an index serves `list` filters and queries alike
//! (`json_extract(value, '$.type') = ?` on the `records` view flattens to it).

use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::ToSql;

use super::error::StoreError;

/// Longest JSON path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 256;
/// Prefix of the SQLite names of JSON-field indexes (followed by the path).
pub(super) const INDEX_PREFIX: &str = "json:";

/// A validated JSON path (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(String);

impl JsonPath {
    /// Checks `path` against the accepted form.
    pub fn parse(path: &str) -> Result<JsonPath, StoreError> {
        let bad = |why: &str| {
            Err(StoreError::InvalidFilter(format!(
                "JSON path {path:?}: {why} (write it as $ followed by .name and [index] steps, e.g. $.stats.hp)"
            )))
        };
        if path.len() > MAX_PATH_LEN {
            return bad("too long");
        }
        let Some(mut rest) = path.strip_prefix('$') else {
            return bad("must start with $");
        };
        if rest.is_empty() {
            return bad("names the whole value, not a field");
        }
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(r.len());
                let name = &r[..end];
                if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
                    return bad("a .name step needs a name of letters, digits and _");
                }
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let Some(end) = r.find(']') else {
                    return bad("unclosed [");
                };
                let index = &r[..end];
                if index.is_empty() || index.len() > 9 || !index.bytes().all(|b| b.is_ascii_digit())
                {
                    return bad("an [index] step takes a number");
                }
                rest = &r[end + 1..];
            } else {
                return bad("expected . or [");
            }
        }
        Ok(JsonPath(path.to_string()))
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SQL expression of this field over the `records` table (see the module docs).
    /// The path's characters are all safe inside a string literal.
    pub(super) fn expr(&self) -> String {
        format!("json_extract(json, '{}')", self.0)
    }

    /// The SQLite name of this field's index (a quoted identifier).
    pub(super) fn index_name(&self) -> String {
        format!("\"{INDEX_PREFIX}{}\"", self.0)
    }
}

/// Records whose JSON value has `value` at `path`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldFilter {
    path: JsonPath,
    value: Value,
}

impl FieldFilter {
    /// A filter on `path` for `value_json`, a JSON string, number or boolean (booleans
    /// compare as SQLite does, 1 and 0).
    pub fn parse(path: &str, value_json: &str) -> Result<FieldFilter, StoreError> {
        let path = JsonPath::parse(path)?;
        let v: serde_json::Value = serde_json::from_str(value_json).map_err(|e| {
            StoreError::InvalidFilter(format!("filter value {value_json:?} is not JSON: {e}"))
        })?;
        let value = match v {
            serde_json::Value::String(s) => Value::Text(s),
            serde_json::Value::Bool(b) => Value::Integer(i64::from(b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Real(n.as_f64().ok_or_else(|| {
                    StoreError::InvalidFilter(format!("filter value {n} is out of range"))
                })?),
            },
            other => {
                return Err(StoreError::InvalidFilter(format!(
                    "filter value {other} is not a string, number or boolean"
                )))
            }
        };
        Ok(FieldFilter { path, value })
    }

    /// The field's path.
    pub fn path(&self) -> &JsonPath {
        &self.path
    }
}

impl ToSql for FieldFilter {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.value.to_sql()
    }
}
