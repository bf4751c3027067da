//! Status: what the server is and holds.

use ringbase_protocol::message::{Response, StatusInfo, VectorStatus};

use super::{ClientState, Engine};
use crate::store::StoreError;

/// Status, as seen by client `c` (its read connection counts the records).
pub(super) fn status(engine: &Engine, c: &mut ClientState) -> Result<Response, StoreError> {
    let store = &engine.store;
    let stats = store.stats();
    Ok(Response::Status(Box::new(StatusInfo {
        records: c.reader.count(None)?,
        sessions: c.transport.session_count() as u32,
        uptime_ms: engine.started.elapsed().as_millis() as u64,
        data_dir: engine.data_dir.display().to_string(),
        db_size_bytes: store.db_size_bytes(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: ringbase_protocol::PROTOCOL_VERSION,
        replica_id: store.replica_id(),
        pid: std::process::id(),
        commits: stats.transactions,
        write_jobs: stats.jobs,
        indexes: c.reader.indexes()?,
        fulltext: c.reader.fulltext_on()?,
        vectors: VectorStatus {
            embedder: engine
                .embed
                .as_ref()
                .map_or_else(String::new, |e| e.embedder.name().to_string()),
            ..engine.vectors.status(store.vector_dim())
        },
        sync: engine
            .sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.status()),
    })))
}
