//! Query: read-only SQL over the `records` view, run by the query subsystem
//! ([`crate::query`]) on the client's own query connection, opened at its first query.

use ringbase_protocol::message::{ArchivedSqlValue, Response};
use rkyv::vec::ArchivedVec;

use super::ClientState;
use crate::query::{self, QueryConn, QueryLimits};
use crate::store::Store;

/// Query.
pub(super) fn query(
    store: &Store,
    c: &mut ClientState,
    sql: &str,
    params: &ArchivedVec<ArchivedSqlValue>,
    max_rows: u32,
    timeout_ms: u32,
) -> Response {
    let conn = match &mut c.query {
        Some(conn) => conn,
        empty => match QueryConn::open(store, c.max_payload) {
            Ok(conn) => empty.insert(conn),
            Err(e) => return Response::error(e.code(), e.to_string()),
        },
    };
    let params: Vec<_> = params.iter().map(query::param).collect();
    let limits = QueryLimits::new(max_rows, timeout_ms, c.max_payload);
    match conn.run(sql, &params, limits) {
        Ok(rows) => Response::Rows(rows),
        Err(e) => Response::error(e.code(), e.to_string()),
    }
}
