//! CreateIndex and DropIndex: indexes on JSON fields, made by the store's writer.

use ringbase_protocol::message::Response;

use crate::store::{JsonPath, Store, StoreError};

/// CreateIndex: `Done(true)` if created, `Done(false)` if it existed.
pub(super) fn create(store: &Store, path: &str) -> Result<Response, StoreError> {
    Ok(Response::Done(store.create_index(&JsonPath::parse(path)?)?))
}

/// DropIndex: `Done(true)` if it existed.
pub(super) fn drop(store: &Store, path: &str) -> Result<Response, StoreError> {
    Ok(Response::Done(store.drop_index(&JsonPath::parse(path)?)?))
}
