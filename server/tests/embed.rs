//! Auto-embedding against a real server process: a small ONNX model that this test
//! writes (token embeddings by table lookup, the same input and output contract as a
//! BERT sentence-embedding model) is loaded by `ringbase serve --embed-model`, run by
//! tract; JSON puts get their vectors from their text and `search_text` finds them.

mod common;

use std::path::Path;

use common::*;
use prost::Message;
use ringbase_client::{Error, ErrorCode, Request, Response, ValueKind, VectorSearch};
use ringbase_server::embed::onnx::OnnxEmbedder;
use ringbase_server::embed::Embedder;
use tract_onnx::pb;

/// The toy vocabulary: the special tokens, then one word per dimension.
const WORDS: [&str; 8] = [
    "red", "blue", "sword", "shield", "fire", "ice", "dragon", "potion",
];
/// Dimensions: one per word, and one that only `[CLS]` has (so every text, even one
/// of unknown words, has a direction).
const DIM: usize = WORDS.len() + 1;

/// Writes `model.onnx` and `vocab.txt` into `dir`: `last_hidden_state[b, t] =
/// E[input_ids[b, t]] * attention_mask[b, t] + token_type_ids[b, t]`, where `E` (int8
/// times a scale per row) gives word `i` the unit vector `e_i` and `[CLS]` 0.25 `e_8`. Mean pooling then makes a
/// text's vector the sum of its words' unit vectors (plus the `[CLS]` part), over its
/// token count.
fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]"];
    vocab.extend(WORDS);
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n")).unwrap();
    // The table is int8 with a scale per row, dequantized in the graph (Cast, Mul)
    // before the lookup, as in an int8-quantized BERT: the server folds that at load.
    // More rows than the vocabulary (never looked up): large enough that tract's own
    // optimizer would leave the dequantization to every run (over 4 MB as f32).
    let rows = 120_000;
    let mut table = vec![0i8; rows * DIM];
    table[2 * DIM + WORDS.len()] = 1;
    for w in 0..WORDS.len() {
        table[(4 + w) * DIM + w] = 4;
    }
    let scale = vec![0.25f32; rows];
    let int64 = pb::tensor_proto::DataType::Int64 as i32;
    let float = pb::tensor_proto::DataType::Float as i32;
    let value_info = |name: &str, elem_type: i32, dims: &[&str]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            value: Some(match d.parse::<i64>() {
                                Ok(n) => pb::tensor_shape_proto::dimension::Value::DimValue(n),
                                Err(_) => pb::tensor_shape_proto::dimension::Value::DimParam(
                                    d.to_string(),
                                ),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node =
        |op: &str, inputs: &[&str], output: &str, attrs: Vec<pb::AttributeProto>| pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        };
    let int_attr = |name: &str, i: i64| pb::AttributeProto {
        name: name.into(),
        i,
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        ..Default::default()
    };
    let axes = pb::TensorProto {
        name: "axes".into(),
        dims: vec![1],
        data_type: int64,
        int64_data: vec![2],
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "toy-sentence-embedding".into(),
        node: vec![
            node("Cast", &["E_q"], "E_f", vec![int_attr("to", float as i64)]),
            node("Mul", &["E_f", "E_scale"], "E", vec![]),
            node(
                "Gather",
                &["E", "input_ids"],
                "tokens",
                vec![int_attr("axis", 0)],
            ),
            node(
                "Cast",
                &["attention_mask"],
                "mask_f",
                vec![int_attr("to", float as i64)],
            ),
            node("Unsqueeze", &["mask_f", "axes"], "mask_3d", vec![]),
            node("Mul", &["tokens", "mask_3d"], "masked", vec![]),
            node(
                "Cast",
                &["token_type_ids"],
                "types_f",
                vec![int_attr("to", float as i64)],
            ),
            node("Unsqueeze", &["types_f", "axes"], "types_3d", vec![]),
            node("Add", &["masked", "types_3d"], "last_hidden_state", vec![]),
        ],
        initializer: vec![
            pb::TensorProto {
                name: "E_q".into(),
                dims: vec![rows as i64, DIM as i64],
                data_type: pb::tensor_proto::DataType::Int8 as i32,
                raw_data: table.iter().map(|&q| q as u8).collect(),
                ..Default::default()
            },
            pb::TensorProto {
                name: "E_scale".into(),
                dims: vec![rows as i64, 1],
                data_type: float,
                float_data: scale,
                ..Default::default()
            },
            axes,
        ],
        input: vec![
            value_info("input_ids", int64, &["batch", "sequence"]),
            value_info("attention_mask", int64, &["batch", "sequence"]),
            value_info("token_type_ids", int64, &["batch", "sequence"]),
        ],
        output: vec![value_info(
            "last_hidden_state",
            float,
            &["batch", "sequence", &DIM.to_string()],
        )],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "ringbase tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn the_onnx_backend_tokenizes_runs_and_pools() {
    let dir = TempDir::new("embed-model");
    write_model(dir.path());
    let model = OnnxEmbedder::load(dir.path(), 256).unwrap();
    assert_eq!(model.dim(), DIM);
    // The dequantization of the table (Cast, Mul) was computed at load.
    assert!(model.folded_at_load() >= 2, "{}", model.folded_at_load());
    let texts = ["Red SWORD!", "blue shield", "red sword", "", "zzz unknown"];
    let v = model.embed(&texts).unwrap();
    assert_eq!(v.len(), texts.len());
    // [CLS] red sword ! [SEP]: five tokens, "!" unknown ([UNK] row is zero).
    let mut want = vec![0f32; DIM];
    want[0] = 1.0 / 5.0;
    want[2] = 1.0 / 5.0;
    want[WORDS.len()] = 0.25 / 5.0;
    for (got, want) in v[0].iter().zip(&want) {
        assert!((got - want).abs() < 1e-6, "{:?} vs {want:?}", v[0]);
    }
    // Padding in a batch changes nothing: the same text alone gives the same vector.
    let alone = model.embed(&["Red SWORD!"]).unwrap();
    assert_eq!(alone[0], v[0]);
    assert!(cosine(&v[0], &v[2]) > 0.99);
    assert!(cosine(&v[0], &v[1]) < 0.1);
    // A text of no known word is its [CLS] part alone, never zero.
    assert!(v[3][WORDS.len()] > 0.0 && v[4][WORDS.len()] > 0.0);
    // A long text is cut at the token limit, not refused.
    let long = "dragon ".repeat(2000);
    let short = OnnxEmbedder::load(dir.path(), 8).unwrap();
    assert_eq!(short.embed(&[&long]).unwrap()[0].len(), DIM);
}

#[test]
fn a_missing_or_broken_model_is_a_clear_error() {
    let dir = TempDir::new("embed-broken");
    let err = OnnxEmbedder::load(dir.path(), 256).unwrap_err().to_string();
    assert!(err.contains("vocab.txt"), "{err}");
    write_model(dir.path());
    std::fs::write(dir.path().join("model.onnx"), b"not a model").unwrap();
    let err = OnnxEmbedder::load(dir.path(), 256).unwrap_err().to_string();
    assert!(err.contains("model.onnx"), "{err}");

    // The server refuses to start with it, saying why.
    let rt = TempDir::new("embed-broken-rt");
    let out = std::process::Command::new(ringbase_bin())
        .args(["serve", "--name", "embed-broken", "--data-dir"])
        .arg(rt.path().join("data"))
        .arg("--embed-model")
        .arg(dir.path())
        .env("RINGBASE_RUNTIME_DIR", rt.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.onnx"), "{stderr}");
}

#[test]
fn puts_get_vectors_from_their_text_and_search_text_finds_them() {
    let rt = TempDir::new("embed-e2e");
    let model = rt.path().join("model");
    write_model(&model);
    let model_arg = model.to_str().unwrap().to_string();
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "embed-e2e",
        &[
            "--embed-model",
            &model_arg,
            "--embed-fields",
            "$.name,$.lore",
        ],
    );
    let mut c = srv.connect();
    let items = [
        ("item/1", r#"{"name":"red sword","lore":"fire","price":3}"#),
        ("item/2", r#"{"name":"blue shield","lore":"ice"}"#),
        (
            "item/3",
            r#"{"name":"dragon potion","other":"red red red"}"#,
        ),
        ("item/4", r#"{"price":7}"#),
        ("other/1", r#"{"name":"red sword"}"#),
    ];
    // One burst through the pipeline (held, embedded together, committed in order)
    // and one plain put.
    for (k, v) in &items[..4] {
        c.send(&Request::Put {
            key: k.to_string(),
            value: v.as_bytes().to_vec(),
            kind: ValueKind::Json,
        })
        .unwrap();
    }
    for _ in 0..4 {
        let (_, resp) = c.recv().unwrap();
        assert!(matches!(resp, Response::Written(_)), "{resp:?}");
    }
    c.put_json(items[4].0, items[4].1).unwrap();

    let st = c.status().unwrap();
    assert_eq!(st.vectors.dim as usize, DIM);
    // item/4 has no text in the fields: no vector.
    assert_eq!(st.vectors.vectors, 4);
    assert_eq!(
        st.vectors.embedder,
        model.join("model.onnx").display().to_string()
    );

    let hits = c.search_text("a red sword of fire", 3).unwrap();
    let keys: Vec<&str> = hits.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(keys[0], "item/1", "{hits:?}");
    assert!(keys.contains(&"other/1"), "{hits:?}");
    assert!(hits[0].score > 0.9, "{hits:?}");
    // Only the configured fields were embedded: item/3's "red red red" is not read.
    let hits = c.search_text("red", 10).unwrap();
    assert!(
        hits.iter().all(|h| h.key != "item/3" || h.score < 0.2),
        "{hits:?}"
    );
    // Prefix and values, as for a vector search.
    let hits = c
        .search_text_with(
            "ice shield",
            &VectorSearch {
                with_values: true,
                ..VectorSearch::k(5).prefix("item/")
            },
        )
        .unwrap();
    assert_eq!(hits[0].key, "item/2");
    assert!(hits.iter().all(|h| h.key.starts_with("item/")));
    assert!(hits[0]
        .record
        .as_ref()
        .unwrap()
        .value
        .starts_with(b"{\"name\":\"blue"));

    // A put that brings its own vector keeps it; a re-put of the text re-embeds.
    let mut own = vec![0f32; DIM];
    own[6] = 1.0; // "dragon"
    c.put_json_with_vector("item/2", r#"{"name":"blue shield"}"#, &own)
        .unwrap();
    let hits = c.search_text("dragon", 1).unwrap();
    assert_eq!(hits[0].key, "item/2", "{hits:?}");
    c.put_json("item/2", r#"{"name":"blue shield"}"#).unwrap();
    let hits = c.search_text("dragon", 1).unwrap();
    assert_eq!(hits[0].key, "item/3", "{hits:?}");

    // Empty text: a clear error. The CLI prints the same results.
    match c.search_text("  ", 3) {
        Err(Error::Server { code, .. }) => assert_eq!(code, Some(ErrorCode::BadRequest)),
        other => panic!("expected an error, got {other:?}"),
    }
    let (code, out, err) = srv.cli(&["search-text", "red sword", "--k", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let keys = json_line_keys(&out);
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"item/1".to_string()), "{out}");
}

#[test]
fn without_a_model_text_search_is_refused_and_puts_store_no_vector() {
    let rt = TempDir::new("embed-none");
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "embed-none",
        &[],
    );
    let mut c = srv.connect();
    c.put_json("a", r#"{"name":"red sword"}"#).unwrap();
    assert_eq!(c.status().unwrap().vectors.vectors, 0);
    assert_eq!(c.status().unwrap().vectors.embedder, "");
    match c.search_text("red sword", 3) {
        Err(Error::Server { code, message, .. }) => {
            assert_eq!(code, Some(ErrorCode::NoEmbedder));
            assert!(message.contains("--embed-model"), "{message}");
        }
        other => panic!("expected NoEmbedder, got {other:?}"),
    }
    let (code, _, err) = srv.cli(&["search-text", "red sword"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("embedding model"), "{err}");
    // Nor does it replicate.
    let (code, _, err) = srv.cli(&["peers"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not replicate"), "{err}");
}

#[test]
fn a_model_of_another_dimension_than_the_stored_vectors_is_refused_at_start() {
    let rt = TempDir::new("embed-dim");
    let model = rt.path().join("model");
    write_model(&model);
    let data = rt.path().join("data");
    let mut srv = ServerProc::start(&rt.path().join("run"), &data, "embed-dim", &[]);
    srv.connect()
        .put_json_with_vector("a", "{}", &[1.0, 2.0, 3.0])
        .unwrap();
    srv.terminate();
    let out = std::process::Command::new(ringbase_bin())
        .args(["serve", "--name", "embed-dim", "--data-dir"])
        .arg(&data)
        .arg("--embed-model")
        .arg(&model)
        .env("RINGBASE_RUNTIME_DIR", rt.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3 dimensions") && stderr.contains("makes 9"),
        "{stderr}"
    );
}
