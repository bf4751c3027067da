//! Embeddings stored with their records: validation, the on-disk encoding, and the
//! reads the vector index needs (exact scans under a key prefix, snapshots to build the
//! graph from).
//!
//! SQLite is the source of truth: a record's vector lives in the `vectors` table (schema
//! v3), written by the writer in the transaction of the record's put, removed by a put
//! without a vector or a delete. The HNSW graph (`crate::vectors`) is built from here.

use rusqlite::Connection;

use super::error::StoreError;
use super::reader::{prefix_successor, Reader};

/// Largest dimension a vector may have.
pub const MAX_VECTOR_DIM: usize = 4096;

/// Checks that `v` can be stored or searched with in a database whose vectors have
/// dimension `dim` (0: none stored yet, any dimension up to [`MAX_VECTOR_DIM`] goes):
/// the right length, every component finite, not all zeros.
pub fn check_vector(v: &[f32], dim: usize) -> Result<(), StoreError> {
    if v.is_empty() {
        return Err(StoreError::InvalidVector("the vector is empty".into()));
    }
    if v.len() > MAX_VECTOR_DIM {
        return Err(StoreError::InvalidVector(format!(
            "{} dimensions (at most {MAX_VECTOR_DIM})",
            v.len()
        )));
    }
    if dim != 0 && v.len() != dim {
        return Err(StoreError::InvalidVector(format!(
            "{} dimensions, but this database's vectors have {dim}",
            v.len()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(StoreError::InvalidVector(format!(
            "component {i} is {} (every component must be finite)",
            v[i]
        )));
    }
    if v.iter().all(|&x| x == 0.0) {
        return Err(StoreError::InvalidVector(
            "all components are zero: the vector has no direction".into(),
        ));
    }
    Ok(())
}

/// The stored form of a vector: its components as little-endian `f32`s.
pub fn encode(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// A stored vector back as `f32`s into `out` (cleared first, its allocation reused);
/// `Corrupt` if the blob is not a whole number of them.
pub(super) fn decode_into(key: &str, blob: &[u8], out: &mut Vec<f32>) -> Result<(), StoreError> {
    if blob.is_empty() || !blob.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt(format!(
            "the vector of {key:?} has {} bytes",
            blob.len()
        )));
    }
    out.clear();
    out.extend(
        blob.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    Ok(())
}

/// Calls `f(key, vector)` for every stored vector whose key starts with `prefix`, in key
/// order, in one read transaction of `conn`. Stops early (with `Ok`) when `f` returns
/// false.
pub fn scan(
    conn: &Connection,
    prefix: &str,
    mut f: impl FnMut(&str, &[f32]) -> bool,
) -> Result<(), StoreError> {
    // Two statements, not `(?2 IS NULL OR key < ?2)`: SQLite uses only a plain upper
    // bound to end the range scan (with the OR it read to the end of the table).
    let upper = prefix_successor(prefix);
    let mut stmt = match upper {
        Some(_) => conn.prepare_cached(
            "SELECT key, vec FROM vectors WHERE key >= ?1 AND key < ?2 ORDER BY key",
        )?,
        None => conn.prepare_cached("SELECT key, vec FROM vectors WHERE key >= ?1 ORDER BY key")?,
    };
    let mut rows = match &upper {
        Some(up) => stmt.query(rusqlite::params![prefix, up])?,
        None => stmt.query(rusqlite::params![prefix])?,
    };
    let mut v = Vec::new();
    while let Some(row) = rows.next()? {
        let corrupt =
            |e: rusqlite::types::FromSqlError| StoreError::Corrupt(format!("vectors table: {e}"));
        let key = row.get_ref(0)?.as_str().map_err(corrupt)?;
        decode_into(key, row.get_ref(1)?.as_blob().map_err(corrupt)?, &mut v)?;
        if !f(key, &v) {
            break;
        }
    }
    Ok(())
}

/// Number of stored vectors whose key starts with `prefix`, counting no further than
/// `limit`.
pub fn count(conn: &Connection, prefix: &str, limit: u64) -> Result<u64, StoreError> {
    let limit = limit.min(i64::MAX as u64) as i64;
    let n: i64 = match prefix_successor(prefix) {
        Some(up) => conn
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM vectors WHERE key >= ?1 AND key < ?2 LIMIT ?3)",
            )?
            .query_row(rusqlite::params![prefix, up, limit], |r| r.get(0))?,
        None => conn
            .prepare_cached("SELECT count(*) FROM (SELECT 1 FROM vectors WHERE key >= ?1 LIMIT ?2)")?
            .query_row(rusqlite::params![prefix, limit], |r| r.get(0))?,
    };
    Ok(n as u64)
}

impl Reader {
    /// Calls `f(key, vector)` for every stored vector whose key starts with `prefix`, in
    /// key order, in one read transaction; stops when `f` returns false.
    pub fn scan_vectors(
        &mut self,
        prefix: &str,
        f: impl FnMut(&str, &[f32]) -> bool,
    ) -> Result<(), StoreError> {
        scan(&self.conn, prefix, f)
    }

    /// Number of stored vectors whose key starts with `prefix`, counting no further
    /// than `limit`.
    pub fn count_vectors(&mut self, prefix: &str, limit: u64) -> Result<u64, StoreError> {
        count(&self.conn, prefix, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_vectors_are_named() {
        let err = |v: &[f32], dim| check_vector(v, dim).unwrap_err().to_string();
        assert!(err(&[], 0).contains("empty"));
        assert!(err(&[1.0, 2.0], 3).contains("2 dimensions, but this database's vectors have 3"));
        assert!(err(&[1.0, f32::NAN], 2).contains("component 1 is NaN"));
        assert!(err(&[f32::INFINITY], 0).contains("component 0 is inf"));
        assert!(err(&[0.0, -0.0], 0).contains("no direction"));
        assert!(err(&vec![1.0; MAX_VECTOR_DIM + 1], 0).contains("at most"));
        check_vector(&[0.0, 1e-30], 2).unwrap();
        check_vector(&vec![1.0; MAX_VECTOR_DIM], 0).unwrap();
    }

    fn decode(key: &str, blob: &[u8]) -> Result<Vec<f32>, StoreError> {
        let mut out = vec![9.0];
        decode_into(key, blob, &mut out)?;
        Ok(out)
    }

    #[test]
    fn encoding_round_trips_and_rejects_ragged_blobs() {
        let v = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3e38];
        assert_eq!(decode("k", &encode(&v)).unwrap(), v);
        assert!(matches!(
            decode("k", &[1, 2, 3]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(decode("k", &[]), Err(StoreError::Corrupt(_))));
    }
}
