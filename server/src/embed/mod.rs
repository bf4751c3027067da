//! Auto-embedding: the server computes a record's vector from its text.
//!
//! When the server is started with an embedder (`ringbase serve --embed-model DIR`), a
//! JSON put without a vector gets one: the text of the configured fields (by default
//! every string in the value, object keys in sorted order, one per line) goes through the
//! [`Embedder`] and the vector is stored with the record in the same transaction, as if
//! the client had sent it (a put that brings its own vector keeps it). A record with
//! no text gets no vector. `SearchText` embeds the query the same way and searches
//! the vector index.
//!
//! Where the work runs: in the session of the client that wrote, after it has read its
//! burst of requests and before the burst's jobs go to the writer (so one model call
//! embeds a whole burst, and the per-client order of writes is kept). Other clients'
//! sessions never wait for it, nor does the writer: their reads and writes go on.
//!
//! The one backend is [`onnx::OnnxEmbedder`]: a local ONNX sentence-embedding model
//! run by tract. Without an embedder, `SearchText` answers a clear error and puts store
//! no vector (a fake vector is never made up).

pub mod onnx;
pub mod wordpiece;

use std::sync::Arc;

use crate::store::JsonPath;

/// Texts per model call.
pub const BATCH: usize = 16;

/// Largest text, in bytes, that is embedded; the rest of a longer text is cut (at a
/// char boundary). The model reads only its first few hundred tokens anyway.
pub const MAX_TEXT_BYTES: usize = 16 << 10;

/// What went wrong embedding.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EmbedError {
    /// The model cannot be loaded (names the file and the reason).
    #[error("embedding model {0}")]
    Model(String),
    /// The model failed on a text.
    #[error("embedding failed: {0}")]
    Failed(String),
}

/// Turns texts into vectors. Implementations are shared by every session, so they
/// must be usable from several threads at once.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// Dimension of the vectors.
    fn dim(&self) -> usize;
    /// What the embedder is (the model's path), for status and logs.
    fn name(&self) -> &str;
    /// One vector of [`Embedder::dim`] numbers per text, in order. The vectors need
    /// not be normalised (the index normalises every vector).
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Which text of a JSON record is embedded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TextFields {
    /// Every string leaf of the value (object keys in sorted order, arrays in order).
    #[default]
    AllStrings,
    /// The strings at these paths (and every string under each), in this order.
    Paths(Vec<JsonPath>),
}

impl TextFields {
    /// The text of a JSON value: the strings of the fields, one per line, at most
    /// [`MAX_TEXT_BYTES`]; `None` when there is no text (no such field, or only
    /// blanks), and for bytes that are not JSON.
    pub fn text_of(&self, json: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(json).ok()?;
        let mut text = String::new();
        match self {
            TextFields::AllStrings => collect_strings(&value, &mut text),
            TextFields::Paths(paths) => {
                for p in paths {
                    if let Some(v) = lookup(&value, p.as_str()) {
                        collect_strings(v, &mut text);
                    }
                }
            }
        }
        if text.trim().is_empty() {
            return None;
        }
        let keep = clip(&text).len();
        text.truncate(keep);
        Some(text)
    }
}

/// The part of `text` that is embedded: at most [`MAX_TEXT_BYTES`], cut at a char
/// boundary.
pub fn clip(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Appends every string under `v` to `out`, one per line, stopping past
/// [`MAX_TEXT_BYTES`].
fn collect_strings(v: &serde_json::Value, out: &mut String) {
    if out.len() > MAX_TEXT_BYTES {
        return;
    }
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// The value at a validated JSON path (`$` then `.name` and `[index]` steps).
fn lookup<'a>(mut v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut rest = path.strip_prefix('$')?;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            v = v.get(&r[..end])?;
            rest = &r[end..];
        } else {
            let r = rest.strip_prefix('[')?;
            let end = r.find(']')?;
            v = v.get(r[..end].parse::<usize>().ok()?)?;
            rest = &r[end + 1..];
        }
    }
    Some(v)
}

/// The server's embedder and the fields it reads.
#[derive(Debug, Clone)]
pub struct AutoEmbed {
    /// The model.
    pub embedder: Arc<dyn Embedder>,
    /// Which text of a record is embedded.
    pub fields: TextFields,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_reads_every_string_or_the_configured_fields() {
        let json =
            br#"{"title":"Red sword","stats":{"hp":3,"lore":"old"},"tags":["a"," "],"n":null}"#;
        assert_eq!(
            TextFields::AllStrings.text_of(json).as_deref(),
            Some("old\na\nRed sword")
        );
        let paths = TextFields::Paths(vec![
            JsonPath::parse("$.stats").unwrap(),
            JsonPath::parse("$.tags[0]").unwrap(),
            JsonPath::parse("$.missing").unwrap(),
            JsonPath::parse("$.title").unwrap(),
        ]);
        assert_eq!(paths.text_of(json).as_deref(), Some("old\na\nRed sword"));
        // No text, or not JSON: nothing to embed.
        assert_eq!(
            TextFields::AllStrings.text_of(br#"{"hp":3,"s":"  "}"#),
            None
        );
        assert_eq!(TextFields::AllStrings.text_of(b"\xff\x00"), None);
        // A long text is cut at a char boundary.
        let long = format!("\"{}\"", "é".repeat(MAX_TEXT_BYTES));
        let t = TextFields::AllStrings.text_of(long.as_bytes()).unwrap();
        assert!(t.len() <= MAX_TEXT_BYTES && t.chars().all(|c| c == 'é'));
    }
}
