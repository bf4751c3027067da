//! The ONNX backend: a BERT-family sentence-embedding model (for example
//! all-MiniLM-L6-v2) run by tract, a pure-Rust inference engine, from files on disk:
//! nothing is downloaded, ever.
//!
//! A model directory holds `model.onnx` and the `vocab.txt` of its tokenizer, and may
//! hold Hugging Face's `tokenizer_config.json` (its `do_lower_case` is read; without it
//! the model is taken as uncased, like MiniLM). The model's inputs are recognised by
//! name: `input_ids` (required), `attention_mask` and `token_type_ids` (given when the
//! model has them), each `int64 [batch, sequence]`. Its first output is either the
//! token states `[batch, sequence, dim]`, mean-pooled over the attended tokens (what
//! sentence-transformers does for MiniLM), or an already pooled `[batch, dim]`. The
//! vector is normalised by the index, as every vector is.
//!
//! At load, every part of the graph that depends only on constants is computed once,
//! whatever its size: an int8 model dequantizes its whole token-embedding table at
//! every run otherwise (tract keeps such a node when its result is larger than its
//! inputs), which was most of the time of a short text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{DimLike, TypedModelPatch};

use super::wordpiece::WordPiece;
use super::{EmbedError, Embedder};

/// Token ids per text the model reads by default: BERT's position table has 512, and
/// MiniLM was trained on 256 (sentence-transformers cuts there).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// What the model's inputs are, in its order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Input {
    Ids,
    Mask,
    TypeIds,
}

/// A sentence-embedding model in ONNX form with its WordPiece tokenizer.
#[derive(Debug)]
pub struct OnnxEmbedder {
    plan: Arc<TypedRunnableModel>,
    tokenizer: WordPiece,
    inputs: Vec<Input>,
    /// The output is `[batch, dim]`, not token states.
    pooled: bool,
    dim: usize,
    max_tokens: usize,
    name: String,
    /// Nodes evaluated once at load ([`fold_constants`]).
    folded: usize,
}

impl OnnxEmbedder {
    /// Loads the model in `dir` (see the module docs), reading at most `max_tokens`
    /// token ids of each text (`[CLS]` and `[SEP]` included).
    pub fn load(dir: &Path, max_tokens: usize) -> Result<OnnxEmbedder, EmbedError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            EmbedError::Model(format!("{}: {what}: {e}", dir.display()))
        };
        let model_path: PathBuf = dir.join("model.onnx");
        let vocab = std::fs::read_to_string(dir.join("vocab.txt"))
            .map_err(|e| bad("reading vocab.txt", &e))?;
        let lower_case = match std::fs::read(dir.join("tokenizer_config.json")) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| bad("reading tokenizer_config.json", &e))?
                .get("do_lower_case")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
            Err(_) => true,
        };
        let tokenizer =
            WordPiece::from_vocab(&vocab, lower_case).map_err(|e| bad("vocab.txt", &e))?;

        let mut model = tract_onnx::onnx()
            .model_for_path(&model_path)
            .map_err(|e| bad("loading model.onnx", &e))?;
        let mut inputs = Vec::new();
        let batch = model.sym("batch");
        let seq = model.sym("sequence");
        for (i, outlet) in model
            .input_outlets()
            .map_err(|e| bad("inputs", &e))?
            .to_vec()
            .iter()
            .enumerate()
        {
            let name = model.node(outlet.node).name.clone();
            let input = match name.as_str() {
                "input_ids" => Input::Ids,
                "attention_mask" => Input::Mask,
                "token_type_ids" => Input::TypeIds,
                other => {
                    return Err(bad(
                        "inputs",
                        &format!("unknown input {other:?} (a BERT-family model takes input_ids, attention_mask and token_type_ids)"),
                    ))
                }
            };
            model
                .set_input_fact(
                    i,
                    InferenceFact::dt_shape(i64::datum_type(), tvec!(batch.to_dim(), seq.to_dim())),
                )
                .map_err(|e| bad("inputs", &e))?;
            inputs.push(input);
        }
        if !inputs.contains(&Input::Ids) {
            return Err(bad("inputs", &"the model has no input_ids input"));
        }
        // Only the first output is computed.
        let first = *model
            .output_outlets()
            .map_err(|e| bad("outputs", &e))?
            .first()
            .ok_or_else(|| bad("outputs", &"the model has no output"))?;
        model
            .select_output_outlets(&[first])
            .map_err(|e| bad("outputs", &e))?;
        let (typed, folded) = model
            .into_optimized()
            .and_then(fold_constants)
            .map_err(|e| bad("optimizing the model", &e))?;
        let fact = typed
            .output_fact(0)
            .map_err(|e| bad("outputs", &e))?
            .clone();
        let rank = fact.rank();
        let dim = fact
            .shape
            .last()
            .and_then(|d| d.to_usize().ok())
            .filter(|&d| d > 0 && (rank == 2 || rank == 3));
        let Some(dim) = dim else {
            return Err(bad(
                "outputs",
                &format!("the first output is {fact:?}: expected [batch, sequence, dim] token states or a [batch, dim] embedding with a fixed dim"),
            ));
        };
        if fact.datum_type != f32::datum_type() {
            return Err(bad(
                "outputs",
                &format!("the first output is {:?}, not f32", fact.datum_type),
            ));
        }
        let plan = typed
            .into_runnable()
            .map_err(|e| bad("preparing the model", &e))?;
        Ok(OnnxEmbedder {
            plan,
            tokenizer,
            inputs,
            pooled: rank == 2,
            dim,
            max_tokens: max_tokens.clamp(2, 512),
            name: model_path.display().to_string(),
            folded,
        })
    }

    /// How many nodes of the model were computed once at load rather than at every
    /// run (see the module docs: an int8 model's dequantized embedding table).
    pub fn folded_at_load(&self) -> usize {
        self.folded
    }

    /// Embeds one batch: pads every text to the longest.
    fn run_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let ids: Vec<Vec<i64>> = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, self.max_tokens))
            .collect();
        let b = ids.len();
        let s = ids.iter().map(Vec::len).max().unwrap_or(2);
        let mut flat_ids = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        for (row, t) in ids.iter().enumerate() {
            flat_ids[row * s..row * s + t.len()].copy_from_slice(t);
            mask[row * s..row * s + t.len()].fill(1);
        }
        let tensor = |data: &[i64]| -> Result<TValue, EmbedError> {
            Ok(Tensor::from_shape(&[b, s], data)
                .map_err(|e| EmbedError::Failed(e.to_string()))?
                .into_tvalue())
        };
        let zeros = vec![0i64; b * s];
        let mut inputs = TVec::new();
        for input in &self.inputs {
            inputs.push(match input {
                Input::Ids => tensor(&flat_ids)?,
                Input::Mask => tensor(&mask)?,
                Input::TypeIds => tensor(&zeros)?,
            });
        }
        let outputs = self
            .plan
            .run(inputs)
            .map_err(|e| EmbedError::Failed(format!("running the model: {e}")))?;
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| EmbedError::Failed(e.to_string()))?;
        let shape = view.shape().to_vec();
        let flat: Vec<f32> = view.iter().copied().collect();
        let d = self.dim;
        let mut out = Vec::with_capacity(b);
        if self.pooled {
            if shape != [b, d] {
                return Err(EmbedError::Failed(format!(
                    "the model answered {shape:?}, expected [{b}, {d}]"
                )));
            }
            out.extend(flat.chunks_exact(d).map(<[f32]>::to_vec));
        } else {
            if shape != [b, s, d] {
                return Err(EmbedError::Failed(format!(
                    "the model answered {shape:?}, expected [{b}, {s}, {d}]"
                )));
            }
            // Mean over the attended tokens ([CLS] and [SEP] included, as
            // sentence-transformers does).
            for (row, t) in ids.iter().enumerate() {
                let mut v = vec![0f32; d];
                for tok in 0..t.len() {
                    let at = (row * s + tok) * d;
                    for (acc, x) in v.iter_mut().zip(&flat[at..at + d]) {
                        *acc += x;
                    }
                }
                let n = t.len() as f32;
                v.iter_mut().for_each(|x| *x /= n);
                out.push(v);
            }
        }
        Ok(out)
    }
}

/// Evaluates once, at load, every node whose inputs are all constants, and puts its
/// result in its place.
///
/// tract's optimizer leaves such a node alone when its result is larger than its
/// inputs: an int8-quantized model's token-embedding table (MiniLM: 30522 x 384) stays
/// int8 and is cast to f32 and scaled, all of it, at every run, to look up a few rows
/// (a profile put 57% of a one-text run there). Folded, the table is 4x larger in
/// memory (47 MB for MiniLM) and a run no longer touches it all.
fn fold_constants(mut model: TypedModel) -> TractResult<(TypedModel, usize)> {
    let mut folded = 0;
    'again: loop {
        for id in model.eval_order()? {
            let Some(patch) = fold_one(&model, id)? else {
                continue;
            };
            patch.apply(&mut model)?;
            folded += 1;
            // Bounded: each fold removes a node that has inputs.
            if folded < 10_000 {
                continue 'again;
            }
        }
        break;
    }
    if folded > 0 {
        model = model.into_optimized()?;
    }
    Ok((model, folded))
}

/// The patch that replaces node `id` by the constants it evaluates to, if all its
/// inputs are constants (and it is not a constant or an input itself).
fn fold_one(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    use tract_onnx::tract_core::internal::SpecialOps;
    use tract_onnx::tract_core::ops::konst::Const;
    use tract_onnx::tract_core::ops::source::TypedSource;

    let node = model.node(id);
    if node.inputs.is_empty() || node.op_is::<Const>() || node.op_is::<TypedSource>() {
        return Ok(None);
    }
    let Some(inputs) = model
        .node_input_facts(id)?
        .iter()
        .map(|f| f.konst.clone().map(|k| k.into_tvalue()))
        .collect::<Option<TVec<TValue>>>()
    else {
        return Ok(None);
    };
    let Ok(Some(outputs)) = node.op.eval_out_of_plan(inputs) else {
        return Ok(None);
    };
    let mut patch = TypedModelPatch::default();
    for (ix, t) in outputs.into_iter().enumerate() {
        let wire = patch.add_const(format!("{}.folded", node.name), t.into_arc_tensor())?;
        patch.shunt_outside(model, OutletId::new(id, ix), wire)?;
    }
    Ok(Some(patch))
}

impl Embedder for OnnxEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        // Texts of similar length share a batch (less padding to compute).
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(super::BATCH) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            for (&i, v) in chunk.iter().zip(self.run_batch(&batch)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}
