//! The engine: turns validated requests into responses.
//!
//! Transport requests (Ping, Echo, Status) are answered here directly; record requests
//! go to the storage engine.

use std::path::PathBuf;
use std::time::Duration;

use ringbase_protocol::message::{ArchivedRequest, ErrorCode, Response, StatusInfo};

use crate::ipc::Shared;
use crate::session::error;

/// What the engine answers to one request.
pub(crate) enum Reply {
    /// The response, ready now.
    Now(Response),
    /// A write was queued under this ticket; its response comes through
    /// [`EngineSession::try_completion`].
    #[allow(dead_code)]
    Pending(u64),
}

/// The engine shared by all sessions.
#[derive(Debug)]
pub struct Engine {
    data_dir: PathBuf,
}

impl Engine {
    /// Opens the engine on `data_dir`.
    pub fn open(data_dir: PathBuf) -> Result<Engine, String> {
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("creating data dir {}: {e}", data_dir.display()))?;
        Ok(Engine { data_dir })
    }

    /// Flushes and closes storage.
    pub fn shutdown(&self) {}

    pub(crate) fn open_session(&self) -> Result<EngineSession, String> {
        Ok(EngineSession {})
    }

    pub(crate) fn handle(
        &self,
        _s: &mut EngineSession,
        req: &ArchivedRequest,
        shared: &Shared,
    ) -> Reply {
        Reply::Now(match req {
            ArchivedRequest::Ping => Response::Pong,
            ArchivedRequest::Echo(b) => Response::Echo(b.as_slice().to_vec()),
            ArchivedRequest::Status => Response::Status(self.status(shared)),
            _ => error(
                ErrorCode::Unsupported,
                "request not supported by this server".into(),
            ),
        })
    }

    fn status(&self, shared: &Shared) -> StatusInfo {
        StatusInfo {
            records: 0,
            sessions: shared.session_count() as u32,
            uptime_ms: shared.started.elapsed().as_millis() as u64,
            data_dir: self.data_dir.display().to_string(),
            db_size_bytes: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: ringbase_protocol::PROTOCOL_VERSION,
            replica_id: [0; 16],
            pid: std::process::id(),
        }
    }
}

/// Per-session engine state.
pub(crate) struct EngineSession {}

impl EngineSession {
    /// Whether `req` must see this session's earlier writes (all reads).
    pub(crate) fn needs_barrier(&self, req: &ArchivedRequest) -> bool {
        !matches!(
            req,
            ArchivedRequest::Put { .. }
                | ArchivedRequest::Delete { .. }
                | ArchivedRequest::Batch { .. }
        )
    }

    /// A finished write, if any.
    pub(crate) fn try_completion(&mut self) -> Option<(u64, Response)> {
        None
    }

    /// Waits at most `timeout` for a finished write.
    pub(crate) fn wait_completion(&mut self, timeout: Duration) -> Option<(u64, Response)> {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        None
    }
}
