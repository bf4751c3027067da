//! The key-value API on top of the session.

use ringbase_protocol::message::{
    ArchivedResponse, BatchOp, FieldFilter, Record, Request, Response, StatusInfo, ValueKind,
    Version, WriteResult,
};

use rkyv::option::ArchivedOption;

use crate::client::Client;
use crate::error::{Error, Result};

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// Room a request needs besides its key and value (archive envelope), in bytes.
const ENVELOPE: u64 = 256;

/// A borrowed, zero-copy view of a record in the response ring, returned by
/// [`Client::get_view`]. Valid until the next call on the client (the borrow checker
/// enforces it).
#[derive(Debug, Clone, Copy)]
pub struct ValueView<'a> {
    /// The value bytes, in shared memory.
    pub value: &'a [u8],
    /// Value encoding.
    pub kind: ValueKind,
    /// Version of the write that made this value.
    pub version: Version,
    /// Wall-clock time of that write (unix ms).
    pub updated_at_ms: u64,
}

/// One page of [`Client::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Records in key order.
    pub records: Vec<Record>,
    /// Whether more records follow the last one (ask again with `start_after` = its key).
    pub more: bool,
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::TooLarge {
            what: "key",
            len: key.len() as u64,
            max: MAX_KEY_LEN as u64,
        });
    }
    Ok(())
}

pub(crate) fn unexpected(r: Response) -> Error {
    match r {
        Response::Error { code, message } => Error::server(code, &message),
        other => Error::Protocol(format!("unexpected response {other:?}")),
    }
}

impl Client {
    /// Largest value a put on this session can carry (set by the ring sizes: a request
    /// must fit in half of the smaller ring).
    pub fn max_value_len(&self) -> u64 {
        self.max_payload()
            .saturating_sub(MAX_KEY_LEN as u64 + ENVELOPE)
    }

    /// Checks a key, and the size of what a put carries besides it, against this
    /// session's limits.
    pub(crate) fn check_write(&self, key: &str, value_len: u64) -> Result<()> {
        check_key(key)?;
        let max = self.max_value_len();
        if value_len > max {
            return Err(Error::TooLarge {
                what: "value",
                len: value_len,
                max,
            });
        }
        Ok(())
    }

    /// Reads a record; `None` if the key has no live record.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for a key over [`MAX_KEY_LEN`]; [`Error::Server`] for a
    /// server-side failure (e.g. the record does not fit this session's rings);
    /// [`Error::Disconnected`].
    pub fn get(&mut self, key: &str) -> Result<Option<Record>> {
        check_key(key)?;
        match self.call(&Request::Get {
            key: key.to_string(),
        })? {
            Response::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Reads a record without copying its value: the view points into the response ring
    /// and stays valid until the next call on this client. Errors as for [`Client::get`].
    pub fn get_view(&mut self, key: &str) -> Result<Option<ValueView<'_>>> {
        check_key(key)?;
        if self.in_flight() != 0 {
            return Err(Error::Invalid(
                "receive pipelined responses before get_view".into(),
            ));
        }
        self.send(&Request::Get {
            key: key.to_string(),
        })?;
        let (_, resp) = self.recv_view()?;
        match resp {
            ArchivedResponse::Value(ArchivedOption::Some(r)) => Ok(Some(ValueView {
                value: r.value.as_slice(),
                kind: ValueKind::from_archived(&r.kind),
                version: Version {
                    hlc: r.version.hlc.to_native(),
                    replica: r.version.replica,
                    seq: r.version.seq.to_native(),
                },
                updated_at_ms: r.updated_at_ms.to_native(),
            })),
            ArchivedResponse::Value(ArchivedOption::None) => Ok(None),
            ArchivedResponse::Error { code, message } => {
                Err(Error::server(code.to_native(), message.as_str()))
            }
            other => Err(Error::Protocol(format!("unexpected response {other:?}"))),
        }
    }

    /// Writes a record and returns its new version once it is committed (durable
    /// against a crash of the server process).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for a key or value over its limit; [`Error::Server`] with
    /// `InvalidKey` (empty key) or `InvalidJson` (a `Json` value that does not parse);
    /// [`Error::Disconnected`] (the write may or may not have been applied).
    pub fn put(&mut self, key: &str, value: &[u8], kind: ValueKind) -> Result<Version> {
        self.check_write(key, value.len() as u64)?;
        match self.call(&Request::Put {
            key: key.to_string(),
            value: value.to_vec(),
            kind,
        })? {
            Response::Written(WriteResult {
                version: Some(v), ..
            }) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Writes a JSON value (validated by the server). See [`Client::put`].
    pub fn put_json(&mut self, key: &str, json: &str) -> Result<Version> {
        self.put(key, json.as_bytes(), ValueKind::Json)
    }

    /// Deletes a record (leaves a tombstone); returns whether a live record existed.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        check_key(key)?;
        match self.call(&Request::Delete {
            key: key.to_string(),
        })? {
            Response::Deleted(r) => Ok(r.existed),
            other => Err(unexpected(other)),
        }
    }

    /// Applies puts and deletes atomically: all of them or, on any error, none.
    /// Returns one result per operation.
    pub fn batch(&mut self, ops: Vec<BatchOp>) -> Result<Vec<WriteResult>> {
        for op in &ops {
            match op {
                BatchOp::Put { key, .. } | BatchOp::Delete { key } => check_key(key)?,
            }
        }
        match self.call(&Request::Batch { ops })? {
            Response::Batch(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Lists live records whose key starts with `prefix`, after `start_after` (exclusive),
    /// in key order, at most `limit` (the server also caps a page at 10 000 records and
    /// at what fits in one response frame; `more` tells whether to ask again).
    pub fn list(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListPage> {
        self.list_request(prefix, start_after, limit, None)
    }

    /// [`Client::list`] of only the JSON records whose field at `filter.path` equals
    /// `filter.value` (a JSON string, number or boolean), e.g.
    /// `FieldFilter { path: "$.type".into(), value: r#""enemy""#.into() }`. Paging
    /// works the same way. Fast when the field has an index ([`Client::create_index`]);
    /// without one the server reads every record under the prefix.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Server`] with [`crate::ErrorCode::InvalidQuery`] for a path not
    /// of the form `$` + `.name` / `[index]` steps, or a value that is not a JSON
    /// scalar; otherwise as [`Client::list`].
    pub fn list_where(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
        filter: &FieldFilter,
    ) -> Result<ListPage> {
        self.list_request(prefix, start_after, limit, Some(filter.clone()))
    }

    fn list_request(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
        filter: Option<FieldFilter>,
    ) -> Result<ListPage> {
        match self.call(&Request::List {
            prefix: prefix.to_string(),
            start_after: start_after.map(String::from),
            limit,
            filter,
        })? {
            Response::List { records, more } => Ok(ListPage { records, more }),
            other => Err(unexpected(other)),
        }
    }

    /// Creates an index on the JSON field at `path` (e.g. `"$.type"`), making
    /// [`Client::list_where`] filters and queries (`json_extract(value, '$.type') = ?`)
    /// on it fast. Returns `true` if it was created, `false` if it existed. Building it
    /// over many records takes a while, during which writes wait. The index persists
    /// and is listed in [`StatusInfo::indexes`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Server`] with [`crate::ErrorCode::InvalidQuery`] for a bad path;
    /// [`crate::ErrorCode::Storage`]; [`crate::Error::Disconnected`].
    pub fn create_index(&mut self, path: &str) -> Result<bool> {
        match self.call(&Request::CreateIndex {
            path: path.to_string(),
        })? {
            Response::Done(created) => Ok(created),
            other => Err(unexpected(other)),
        }
    }

    /// Drops the index on the JSON field at `path`; returns whether it existed.
    /// Errors as for [`Client::create_index`].
    pub fn drop_index(&mut self, path: &str) -> Result<bool> {
        match self.call(&Request::DropIndex {
            path: path.to_string(),
        })? {
            Response::Done(existed) => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    /// Counts live records, optionally only those whose key starts with `prefix`.
    pub fn count(&mut self, prefix: Option<&str>) -> Result<u64> {
        match self.call(&Request::Count {
            prefix: prefix.map(String::from),
        })? {
            Response::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Server status.
    pub fn status(&mut self) -> Result<StatusInfo> {
        match self.call(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }
}
