//! Writes: Put, Delete and Batch. Each request becomes one job for the store's
//! group-commit writer, sent with the rest of its burst, and is answered when its
//! transaction has committed. Per client this module keeps the writes in flight (by
//! ticket) and bounds the bytes they hold.
//!
//! With an embedder ([`crate::embed`]), a JSON put without a vector is held until the
//! end of the burst, with every write after it (the client's order is kept); `flush`
//! then embeds the held records' text in one model call and queues their jobs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ringbase_protocol::message::{
    self, ArchivedBatchOp, ArchivedRequest, ArchivedValueKind, ErrorCode, Response, ValueKind,
};
use rkyv::string::ArchivedString;
use rkyv::vec::ArchivedVec;

use super::{store_error, Reply};
use crate::embed::AutoEmbed;
use crate::store::{JobQueue, Store, StoreError, WriteOp, WriteOutcome};

/// Most key+value bytes of one client's writes in flight before the client's requests
/// wait for them: the transport does not bound a client's writes (the session copies
/// each request out of its ring), this does.
pub const MAX_SESSION_INFLIGHT_BYTES: usize = 64 << 20;
/// Most key+value bytes queued for the writer (all clients) before a client with
/// writes in flight waits for them.
pub const MAX_QUEUED_WRITE_BYTES: usize = 256 << 20;

type Done = (u64, Result<Vec<WriteOutcome>, StoreError>);

/// Whether `req` is a write (answered once committed).
pub(super) fn is_write(req: &ArchivedRequest) -> bool {
    matches!(
        req,
        ArchivedRequest::Put { .. }
            | ArchivedRequest::PutVector { .. }
            | ArchivedRequest::Delete { .. }
            | ArchivedRequest::Batch { .. }
    )
}

/// Which response a write gets.
#[derive(Clone, Copy, Debug)]
enum WriteKind {
    Put,
    Delete,
    Batch,
}

/// One client's writes in flight.
pub(super) struct Writes {
    tx: Sender<Done>,
    rx: Receiver<Done>,
    next_ticket: u64,
    /// Writes in flight: their kind and key+value bytes.
    pending: HashMap<u64, (WriteKind, usize)>,
    /// Key+value bytes of the writes in flight.
    inflight_bytes: usize,
    /// Write jobs of the current burst of requests, not yet sent to the writer.
    outbox: JobQueue,
    store: Arc<Store>,
    /// The server's embedder, if it has one.
    embed: Option<AutoEmbed>,
    /// Writes of the current burst waiting for vectors to be computed: from the first
    /// JSON put with text on, in order (see the module docs).
    held: Vec<Held>,
}

/// A write held for embedding.
struct Held {
    ticket: u64,
    ops: Vec<WriteOp>,
    /// Which ops get a vector, and of what text.
    texts: Vec<(usize, String)>,
}

impl Writes {
    pub(super) fn new(store: &Arc<Store>, embed: Option<AutoEmbed>) -> Writes {
        let (tx, rx) = crossbeam_channel::unbounded();
        Writes {
            tx,
            rx,
            next_ticket: 1,
            pending: HashMap::new(),
            inflight_bytes: 0,
            outbox: store.job_queue(),
            store: Arc::clone(store),
            embed,
            held: Vec::new(),
        }
    }

    /// Put.
    pub(super) fn put(
        &mut self,
        store: &Store,
        key: &ArchivedString,
        value: &ArchivedVec<u8>,
        kind: &ArchivedValueKind,
    ) -> Reply {
        let op = WriteOp::Put {
            key: key.as_str().to_string(),
            value: value.as_slice().to_vec(),
            kind: ValueKind::from_archived(kind),
            vector: None,
        };
        self.submit(store, vec![op], WriteKind::Put)
    }

    /// PutVector: a put that stores the record's embedding with it.
    pub(super) fn put_vector(
        &mut self,
        store: &Store,
        key: &ArchivedString,
        value: &ArchivedVec<u8>,
        kind: &ArchivedValueKind,
        vector: &ArchivedVec<rkyv::Archived<f32>>,
    ) -> Reply {
        let op = WriteOp::Put {
            key: key.as_str().to_string(),
            value: value.as_slice().to_vec(),
            kind: ValueKind::from_archived(kind),
            vector: Some(vector.iter().map(|x| x.to_native()).collect()),
        };
        self.submit(store, vec![op], WriteKind::Put)
    }

    /// Delete.
    pub(super) fn delete(&mut self, store: &Store, key: &ArchivedString) -> Reply {
        let op = WriteOp::Delete {
            key: key.as_str().to_string(),
        };
        self.submit(store, vec![op], WriteKind::Delete)
    }

    /// Batch: all ops in one job, applied all or none.
    pub(super) fn batch(&mut self, store: &Store, ops: &ArchivedVec<ArchivedBatchOp>) -> Reply {
        let ops = ops
            .iter()
            .map(|op| match op {
                ArchivedBatchOp::Put { key, value, kind } => WriteOp::Put {
                    key: key.as_str().to_string(),
                    value: value.as_slice().to_vec(),
                    kind: ValueKind::from_archived(kind),
                    vector: None,
                },
                ArchivedBatchOp::Delete { key } => WriteOp::Delete {
                    key: key.as_str().to_string(),
                },
            })
            .collect();
        self.submit(store, ops, WriteKind::Batch)
    }

    /// Validates the job and queues it in the outbox (an invalid job is answered
    /// through the completion channel at once), or holds it for embedding.
    fn submit(&mut self, store: &Store, ops: Vec<WriteOp>, kind: WriteKind) -> Reply {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let texts = self.texts_of(&ops);
        if !texts.is_empty() || !self.held.is_empty() {
            // Counted at its raw size until it is prepared.
            let bytes = ops.iter().map(WriteOp::raw_len).sum();
            self.inflight_bytes += bytes;
            self.pending.insert(ticket, (kind, bytes));
            self.held.push(Held { ticket, ops, texts });
            return Reply::Pending(ticket);
        }
        let bytes = self.prepare(store, ticket, ops);
        self.inflight_bytes += bytes;
        self.pending.insert(ticket, (kind, bytes));
        Reply::Pending(ticket)
    }

    /// Validates a job and queues it in the outbox; its bytes (0 if it was refused,
    /// then answered through the completion channel).
    fn prepare(&mut self, store: &Store, ticket: u64, ops: Vec<WriteOp>) -> usize {
        match store.prepare(ticket, ops, self.tx.clone()) {
            Some(job) => {
                let bytes = job.bytes;
                // Sent with the rest of the burst (see `Writes::flush`).
                self.outbox.push(job);
                bytes
            }
            None => 0,
        }
    }

    /// The texts to embed for `ops`: each JSON put without a vector whose value has
    /// text in the embedder's fields (none without an embedder).
    fn texts_of(&self, ops: &[WriteOp]) -> Vec<(usize, String)> {
        let Some(embed) = &self.embed else {
            return Vec::new();
        };
        ops.iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                WriteOp::Put {
                    value,
                    kind: ValueKind::Json,
                    vector: None,
                    ..
                } => Some((i, embed.fields.text_of(value)?)),
                _ => None,
            })
            .collect()
    }

    /// Embeds the held writes' texts (one model call for the burst) and queues their
    /// jobs, in order. A write whose text the model fails on is answered with the
    /// error and stores nothing; the others go on.
    fn embed_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        let Some(embed) = self.embed.clone() else {
            return;
        };
        let texts: Vec<&str> = held
            .iter()
            .flat_map(|h| h.texts.iter().map(|(_, t)| t.as_str()))
            .collect();
        let mut all = embed.embedder.embed(&texts).ok().map(Vec::into_iter);
        let store = Arc::clone(&self.store);
        for mut h in held {
            // The burst's call failed: embed this write alone, so a text the model
            // fails on fails only its own write.
            let vectors: Result<Vec<Vec<f32>>, String> = match all.as_mut() {
                Some(it) => Ok(it.by_ref().take(h.texts.len()).collect()),
                None if h.texts.is_empty() => Ok(Vec::new()),
                None => {
                    let texts: Vec<&str> = h.texts.iter().map(|(_, t)| t.as_str()).collect();
                    embed.embedder.embed(&texts).map_err(|e| e.to_string())
                }
            };
            let raw = self.pending.get(&h.ticket).map_or(0, |p| p.1);
            let bytes = match vectors {
                Ok(vectors) => {
                    for ((i, _), v) in h.texts.iter().zip(vectors) {
                        if let WriteOp::Put { vector, .. } = &mut h.ops[*i] {
                            *vector = Some(v);
                        }
                    }
                    self.prepare(&store, h.ticket, h.ops)
                }
                Err(e) => {
                    let _ = self.tx.send((h.ticket, Err(StoreError::Embedding(e))));
                    0
                }
            };
            self.inflight_bytes = self.inflight_bytes - raw + bytes;
            if let Some(p) = self.pending.get_mut(&h.ticket) {
                p.1 = bytes;
            }
        }
    }

    /// Sends the gathered jobs to the writer (embedding the held ones first).
    pub(super) fn flush(&mut self) {
        if !self.held.is_empty() {
            self.embed_held();
        }
        self.outbox.flush();
    }

    /// Whether the client should wait for its writes in flight before more of its
    /// requests are read: its own writes hold [`MAX_SESSION_INFLIGHT_BYTES`] or more, or
    /// the writer's queue (all clients) holds [`MAX_QUEUED_WRITE_BYTES`] or more. Without
    /// this a client streaming large puts faster than SQLite commits them would make
    /// the server hold them all in memory.
    pub(super) fn over_budget(&self, store: &Store) -> bool {
        self.inflight_bytes >= MAX_SESSION_INFLIGHT_BYTES
            || (self.inflight_bytes > 0 && store.queued_bytes() >= MAX_QUEUED_WRITE_BYTES)
    }

    /// A finished write, if any.
    pub(super) fn try_completion(&mut self) -> Option<(u64, Response)> {
        self.flush();
        let (ticket, result) = self.rx.try_recv().ok()?;
        Some(self.finish(ticket, result))
    }

    /// Whether a finished write waits to be taken.
    pub(super) fn completion_ready(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Waits at most `timeout` until a finished write is ready, without taking it.
    pub(super) fn wait_completion_ready(&mut self, timeout: Duration) -> bool {
        self.flush();
        let mut sel = crossbeam_channel::Select::new();
        sel.recv(&self.rx);
        sel.ready_timeout(timeout).is_ok()
    }

    /// Waits at most `timeout` for a finished write.
    pub(super) fn wait_completion(&mut self, timeout: Duration) -> Option<(u64, Response)> {
        self.flush();
        let (ticket, result) = self.rx.recv_timeout(timeout).ok()?;
        Some(self.finish(ticket, result))
    }

    /// The response of a finished write.
    fn finish(
        &mut self,
        ticket: u64,
        result: Result<Vec<WriteOutcome>, StoreError>,
    ) -> (u64, Response) {
        let (kind, bytes) = self
            .pending
            .remove(&ticket)
            .unwrap_or((WriteKind::Batch, 0));
        self.inflight_bytes -= bytes;
        let resp = match result {
            Err(e) => store_error(&e),
            Ok(outcomes) => {
                let mut results: Vec<message::WriteResult> = outcomes
                    .into_iter()
                    .map(|o| message::WriteResult {
                        version: o.version,
                        existed: o.existed,
                    })
                    .collect();
                match kind {
                    WriteKind::Put if results.len() == 1 => Response::Written(results.remove(0)),
                    WriteKind::Delete if results.len() == 1 => Response::Deleted(results.remove(0)),
                    WriteKind::Batch => Response::Batch(results),
                    _ => Response::error(
                        ErrorCode::Internal,
                        "write completed with an unexpected outcome count",
                    ),
                }
            }
        };
        (ticket, resp)
    }
}
