//! Vector search: store a record with its embedding, find the nearest records.

use ringbase_protocol::message::{Neighbor, Request, Response, ValueKind, Version, WriteResult};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::records::unexpected;

/// Options of [`Client::vector_search_with`]; [`VectorSearch::default`] is `k = 10`, no
/// minimum score, no prefix, the server's search breadth, no values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VectorSearch {
    /// How many results (0: 10; at most 1000).
    pub k: u32,
    /// Only results scoring at least this (`max(0, cosine similarity)`, 0 to 1).
    pub min_score: f32,
    /// Only keys starting with this. `k` results still come back whenever `k` such
    /// records with vectors exist.
    pub prefix: Option<String>,
    /// HNSW search breadth (0: the server's default): higher finds the true nearest
    /// more often, and takes longer.
    pub ef: u32,
    /// Return each result's record too.
    pub with_values: bool,
}

impl VectorSearch {
    /// `k` results, otherwise the defaults.
    pub fn k(k: u32) -> VectorSearch {
        VectorSearch {
            k,
            ..VectorSearch::default()
        }
    }

    /// Only keys starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> VectorSearch {
        self.prefix = Some(prefix.into());
        self
    }

    /// Only results scoring at least `min_score`.
    pub fn min_score(mut self, min_score: f32) -> VectorSearch {
        self.min_score = min_score;
        self
    }

    /// Search breadth.
    pub fn ef(mut self, ef: u32) -> VectorSearch {
        self.ef = ef;
        self
    }

    /// Return the records too.
    pub fn with_values(mut self) -> VectorSearch {
        self.with_values = true;
        self
    }
}

impl Client {
    /// Writes a record together with its embedding: both are stored in one
    /// transaction, and the vector is indexed for [`Client::vector_search`] (a search
    /// after this returns includes it). Every vector of a database has the dimension of
    /// the first one stored. A later plain [`Client::put`] or [`Client::delete`] of the
    /// key removes the vector.
    ///
    /// # Errors
    ///
    /// [`Error::Server`] with [`crate::ErrorCode::InvalidVector`] for a vector of the
    /// wrong dimension, with a NaN or an infinity, or all zeros (nothing is stored);
    /// otherwise as [`Client::put`].
    pub fn put_with_vector(
        &mut self,
        key: &str,
        value: &[u8],
        kind: ValueKind,
        vector: &[f32],
    ) -> Result<Version> {
        self.check_write(key, value.len() as u64 + vector.len() as u64 * 4)?;
        match self.call(&Request::PutVector {
            key: key.to_string(),
            value: value.to_vec(),
            kind,
            vector: vector.to_vec(),
        })? {
            Response::Written(WriteResult {
                version: Some(v), ..
            }) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// [`Client::put_with_vector`] of a JSON value.
    pub fn put_json_with_vector(
        &mut self,
        key: &str,
        json: &str,
        vector: &[f32],
    ) -> Result<Version> {
        self.put_with_vector(key, json.as_bytes(), ValueKind::Json, vector)
    }

    /// The 10 records whose vectors are nearest to `vector` by cosine similarity, best
    /// first. See [`Client::vector_search_with`].
    pub fn vector_search(&mut self, vector: &[f32]) -> Result<Vec<Neighbor>> {
        self.vector_search_with(vector, &VectorSearch::default())
    }

    /// The records whose vectors are nearest to `vector` by cosine similarity, best
    /// first, as `opts` asks. Each result's score is `max(0, cosine similarity)`. An
    /// empty result if no vector is stored yet.
    ///
    /// # Errors
    ///
    /// [`Error::Server`] with [`crate::ErrorCode::InvalidVector`] for a query vector of
    /// the wrong dimension, with a NaN or an infinity, or all zeros.
    pub fn vector_search_with(
        &mut self,
        vector: &[f32],
        opts: &VectorSearch,
    ) -> Result<Vec<Neighbor>> {
        check_prefix(opts)?;
        match self.call(&Request::VectorSearch {
            vector: vector.to_vec(),
            k: opts.k,
            min_score: opts.min_score,
            prefix: opts.prefix.clone(),
            ef: opts.ef,
            with_values: opts.with_values,
        })? {
            Response::Neighbors(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// The `k` records nearest in meaning to `query`, best first: the server embeds
    /// the text with its embedding model (the one that gives JSON puts their vectors:
    /// `ringbase serve --embed-model DIR`) and searches the vector index. See
    /// [`Client::search_text_with`].
    pub fn search_text(&mut self, query: &str, k: u32) -> Result<Vec<Neighbor>> {
        self.search_text_with(query, &VectorSearch::k(k))
    }

    /// [`Client::search_text`] with the options of a vector search (prefix, minimum
    /// score, ef, values).
    ///
    /// # Errors
    ///
    /// [`Error::Server`] with [`crate::ErrorCode::NoEmbedder`] if the server has no
    /// embedding model; [`crate::ErrorCode::BadRequest`] for an empty text.
    pub fn search_text_with(&mut self, query: &str, opts: &VectorSearch) -> Result<Vec<Neighbor>> {
        check_prefix(opts)?;
        match self.call(&Request::SearchText {
            text: query.to_string(),
            k: opts.k,
            min_score: opts.min_score,
            prefix: opts.prefix.clone(),
            ef: opts.ef,
            with_values: opts.with_values,
        })? {
            Response::Neighbors(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }
}

/// A prefix longer than any key is refused before it is sent.
fn check_prefix(opts: &VectorSearch) -> Result<()> {
    if let Some(p) = &opts.prefix {
        if p.len() > crate::MAX_KEY_LEN {
            return Err(Error::TooLarge {
                what: "prefix",
                len: p.len() as u64,
                max: crate::MAX_KEY_LEN as u64,
            });
        }
    }
    Ok(())
}
