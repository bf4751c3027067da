//! Reads of records: Get, Count and List (optionally filtered on a JSON field), on the client's own SQLite read connection
//! (readers never wait for the writer).

use ringbase_protocol::message::{self, ArchivedFieldFilter, ErrorCode, Response};

use super::{ClientState, MAX_LIST};
use crate::store::{self, FieldFilter, StoreError};

/// Get: the live record under `key`, if any.
pub(super) fn get(c: &mut ClientState, key: &str) -> Result<Response, StoreError> {
    Ok(Response::Value(c.reader.get(key)?.map(to_wire)))
}

/// Count: live records, all or under `prefix`.
pub(super) fn count(c: &mut ClientState, prefix: Option<&str>) -> Result<Response, StoreError> {
    Ok(Response::Count(c.reader.count(prefix)?))
}

/// List with the record limit clamped and the response kept within the client's
/// frame size: a page that would not fit stops early with `more = true`, so paging
/// with `start_after` stays exact.
pub(super) fn list(
    c: &mut ClientState,
    prefix: &str,
    start_after: Option<&str>,
    limit: u32,
    filter: Option<&ArchivedFieldFilter>,
) -> Result<Response, StoreError> {
    let limit = limit.clamp(1, MAX_LIST);
    let filter = filter
        .map(|f| FieldFilter::parse(f.path.as_str(), f.value.as_str()))
        .transpose()?;
    let (records, mut more) = c.reader.list(prefix, start_after, limit, filter.as_ref())?;
    // Leave room for the response envelope and per-record archive overhead.
    let budget = c.max_payload.saturating_sub(256);
    let mut used = 0u64;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let size = (r.key.len() + r.value.len()) as u64 + 96;
        if used + size > budget {
            if out.is_empty() {
                return Ok(Response::error(
                    ErrorCode::TooLarge,
                    format!(
                        "record {:?} ({} bytes) does not fit in this session's response frame ({} bytes)",
                        r.key,
                        r.value.len(),
                        c.max_payload
                    ),
                ));
            }
            more = true;
            break;
        }
        used += size;
        out.push(to_wire(r));
    }
    Ok(Response::List { records: out, more })
}

/// Search: full-text hits, best first.
pub(super) fn search(c: &mut ClientState, text: &str, limit: u32) -> Result<Response, StoreError> {
    let hits = c.reader.search(text, limit)?;
    // Keep the response within the client's frame: drop the worst hits if need be.
    let budget = c.max_payload.saturating_sub(256);
    let mut used = 0u64;
    let mut out = Vec::with_capacity(hits.len());
    for (key, score, snippet) in hits {
        used += (key.len() + snippet.len()) as u64 + 48;
        if used > budget {
            break;
        }
        out.push(message::SearchHit {
            key,
            score,
            snippet,
        });
    }
    Ok(Response::Hits(out))
}

pub(super) fn to_wire(r: store::Record) -> message::Record {
    message::Record {
        key: r.key,
        value: r.value,
        kind: r.kind,
        version: r.version,
        updated_at_ms: r.updated_at_ms,
    }
}
