//! CreateIndex, DropIndex and SetFulltext: indexes on JSON fields and the full-text
//! index, made by the store's writer.

use ringbase_protocol::message::Response;

use crate::store::{JsonPath, Store, StoreError};

/// CreateIndex: `Done(true)` if created, `Done(false)` if it existed.
pub(super) fn create(store: &Store, path: &str) -> Result<Response, StoreError> {
    Ok(Response::Done(store.create_index(&JsonPath::parse(path)?)?))
}

/// SetFulltext: `Done(true)` if that turned the index on or off.
pub(super) fn set_fulltext(store: &Store, on: bool) -> Result<Response, StoreError> {
    Ok(Response::Done(store.set_fulltext(on)?))
}

/// DropIndex: `Done(true)` if it existed.
pub(super) fn drop(store: &Store, path: &str) -> Result<Response, StoreError> {
    Ok(Response::Done(store.drop_index(&JsonPath::parse(path)?)?))
}
