//! Vector search: the `k` nearest records by cosine similarity ([`crate::vectors`]),
//! to a vector or to a text the server embeds ([`crate::embed`]). Puts with an
//! embedding go through `writes` like every write.

use ringbase_protocol::message::{ErrorCode, Neighbor, Response, MAX_NEIGHBORS};

use super::{store_error, ClientState, Engine};
use crate::store::{check_vector, StoreError};

/// Default `k` when the request says 0.
const DEFAULT_K: u32 = 10;

/// A VectorSearch request, decoded.
pub(super) struct SearchArgs<'a> {
    pub vector: Vec<f32>,
    pub k: u32,
    pub min_score: f32,
    pub prefix: &'a str,
    pub ef: u32,
    pub with_values: bool,
}

/// SearchText: embeds `text` with the server's model, then searches like
/// VectorSearch (`args.vector` is ignored).
pub(super) fn search_text(
    engine: &Engine,
    c: &mut ClientState,
    text: &str,
    mut args: SearchArgs<'_>,
) -> Response {
    let Some(embed) = &engine.embed else {
        return Response::error(
            ErrorCode::NoEmbedder,
            "this server has no embedding model, so it cannot search by text: start it with `ringbase serve --embed-model DIR` (DIR holds model.onnx and vocab.txt), or search with a vector",
        );
    };
    if text.trim().is_empty() {
        return Response::error(ErrorCode::BadRequest, "the search text is empty");
    }
    match embed.embedder.embed(&[crate::embed::clip(text)]) {
        Ok(mut v) if v.len() == 1 => args.vector = v.remove(0),
        Ok(_) => {
            return Response::error(
                ErrorCode::Internal,
                "the embedding model answered no vector",
            )
        }
        Err(e) => return Response::error(ErrorCode::Internal, e.to_string()),
    }
    search(engine, c, &args).unwrap_or_else(|e| store_error(&e))
}

/// VectorSearch, on client `c`'s read connection (which sees the client's own writes).
pub(super) fn search(
    engine: &Engine,
    c: &mut ClientState,
    args: &SearchArgs<'_>,
) -> Result<Response, StoreError> {
    let dim = engine.store.vector_dim();
    if dim == 0 {
        // No vector stored yet: nothing is near anything. The query vector itself must
        // still be usable.
        check_vector(&args.vector, 0)?;
        return Ok(Response::Neighbors(Vec::new()));
    }
    check_vector(&args.vector, dim)?;
    if !args.min_score.is_finite() {
        return Err(StoreError::InvalidVector(format!(
            "min_score is {} (it must be a number from 0 to 1)",
            args.min_score
        )));
    }
    let k = match args.k {
        0 => DEFAULT_K,
        k => k.min(MAX_NEIGHBORS),
    } as usize;
    let hits = engine.vectors.search(
        &mut c.reader,
        &args.vector,
        k,
        args.prefix,
        args.ef as usize,
        args.min_score,
    )?;
    // Keep the response within the client's frame: drop the worst results if need be.
    let budget = c.max_payload.saturating_sub(256);
    let mut used = 0u64;
    let mut out = Vec::with_capacity(hits.len());
    for (key, score) in hits {
        let record = if args.with_values {
            // Deleted since the search looked? Then it is no longer a result.
            let Some(r) = c.reader.get(&key)? else {
                continue;
            };
            Some(super::records::to_wire(r))
        } else {
            None
        };
        used += key.len() as u64 + record.as_ref().map_or(0, |r| r.value.len() as u64 + 64) + 32;
        if used > budget {
            break;
        }
        out.push(Neighbor { key, score, record });
    }
    Ok(Response::Neighbors(out))
}
