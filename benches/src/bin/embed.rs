//! `embed`: the auto-embedding benchmark (issue 9, point 6).
//!
//! A real sentence-embedding model (`--model DIR`: `model.onnx` + `vocab.txt`, e.g.
//! all-MiniLM-L6-v2 as int8 ONNX, see the README) on generated English-like texts (a
//! seeded choice of 6 to 24 words from a list of common words). In the same run:
//!
//! - **in process**: `ringbase_server::embed::onnx::OnnxEmbedder` (tract) embedding
//!   one text per call (latency) and 16 per call (throughput): the cost of the model;
//! - **puts**: pipelined JSON puts of the texts (`{"text": …}`, window 64) to a server
//!   without a model (the baseline: storage alone) and to one started with
//!   `--embed-model` (each put gets its vector from its text): the difference is the
//!   embedding, and its throughput next to the in-process batch throughput is the
//!   server's overhead around the model;
//! - **searches**: `search_text` through the shared-memory client, next to
//!   `vector_search` with the same query already embedded in process (the difference
//!   is embedding the query) and to embedding one text in process; each stored text
//!   searched for finds its own record first (self-hit rate);
//! - **reference** (optional, `--python`, needs `onnxruntime` and `tokenizers`): the
//!   same model and texts in onnxruntime with the model's own Hugging Face tokenizer
//!   (`--tokenizer tokenizer.json`): cosine agreement of the two runtimes' vectors
//!   (tokenizer + model + pooling) and onnxruntime's single-thread texts/s.
//!
//! ```text
//! cargo build --release -p ringbase-server -p ringbase-benches
//! ./target/release/embed --model DIR [--texts N] [--queries Q] [--quick]
//!                        [--tokenizer tokenizer.json] [--python PATH]
//!                        [--server PATH] [--json PATH]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringbase_benches::harness::{
    check_server, exit_code, usage_error, write_json, Args, ChildGuard, DefaultPaths, TempDir,
    Watchdog, SERVER_READY,
};
use ringbase_benches::stats::{us, Summary};
use ringbase_client::{Client, ConnectOptions, Request, Response, ValueKind, VectorSearch};
use ringbase_server::embed::onnx::{OnnxEmbedder, DEFAULT_MAX_TOKENS};
use ringbase_server::embed::Embedder;
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "\
usage: embed --model DIR [--texts N] [--queries Q] [--quick] [--tokenizer FILE]
             [--python PATH] [--server PATH] [--json PATH]

  --model DIR       model.onnx + vocab.txt (required)
  --texts N         texts stored [default: 2000]
  --queries Q       timed searches and single-text embeddings [default: 300]
  --quick           300 texts, 100 queries (smoke run)
  --tokenizer FILE  the model's tokenizer.json, for the onnxruntime reference
  --python PATH     Python with onnxruntime and tokenizers [default: python3]
  --server PATH     the ringbase binary [default: ringbase next to this binary]
  --json PATH       where to write the results [default: target/bench-embed.json]";

const SERVER_NAME: &str = "bench-embed";
/// Pipelining window of the puts.
const WINDOW: usize = 64;
/// Texts per call in the throughput row.
const BATCH: usize = 16;
/// The onnxruntime reference, embedded.
const ORT_PY: &str = include_str!("../../python/embed_reference.py");
/// Words the texts are made of.
const WORDS: &str = "time person year way day thing man world life hand part child eye \
woman place work week case point government company number group problem fact be have \
do say get make go know take see come think look want give use find tell ask seem feel \
try leave call good new first last long great little own other old right big high \
different small large next early young important few public bad same able to of in for \
on with at by from up about into over after the a that this it not but or as what all \
their there when which one so if out just than then now only also well back even very \
sword shield dragon castle river forest mountain village king queen knight wizard \
potion fire ice storm gold silver map quest battle song ship sea island city market \
bread wine horse road night morning winter summer spring autumn rain snow wind light \
dark red blue green black white stone iron wood glass book letter secret door key";

#[derive(Debug, Clone)]
struct Config {
    model: PathBuf,
    texts: usize,
    queries: usize,
    tokenizer: Option<PathBuf>,
    python: String,
    server: PathBuf,
    json: PathBuf,
}

fn parse_args(
    args: impl IntoIterator<Item = String>,
) -> std::result::Result<Option<Config>, String> {
    let defaults = DefaultPaths::new("bench-embed.json");
    let mut args = Args::new(args);
    let mut model = None;
    let (mut texts, mut queries, mut quick) = (0, 0, false);
    let mut cfg = Config {
        model: PathBuf::new(),
        texts: 0,
        queries: 0,
        tokenizer: None,
        python: "python3".into(),
        server: defaults.server,
        json: defaults.json,
    };
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--model" => model = Some(args.path("--model")?),
            "--texts" => texts = args.at_least_one("--texts")?,
            "--queries" => queries = args.at_least_one("--queries")?,
            "--quick" => quick = true,
            "--tokenizer" => cfg.tokenizer = Some(args.path("--tokenizer")?),
            "--python" => cfg.python = args.value("--python")?,
            "--server" => cfg.server = args.path("--server")?,
            "--json" => cfg.json = args.path("--json")?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    cfg.model = model.ok_or("--model DIR is required")?;
    let (dt, dq) = if quick { (300, 100) } else { (2000, 300) };
    cfg.texts = if texts > 0 { texts } else { dt };
    cfg.queries = if queries > 0 { queries } else { dq };
    Ok(Some(cfg))
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(cfg)) => exit_code("embed", run(&cfg)),
        Err(msg) => usage_error("embed", &msg, USAGE),
    }
}

/// `n` texts of 6 to 24 words, seeded.
fn texts(n: usize, seed: u64) -> Vec<String> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.gen_range(6..=24);
            let mut t: Vec<&str> = (0..len)
                .map(|_| words[rng.gen_range(0..words.len())])
                .collect();
            t[0] = words[rng.gen_range(0..words.len())];
            let mut s = t.join(" ");
            s.push('.');
            s
        })
        .collect()
}

fn run(cfg: &Config) -> Result<()> {
    check_server(&cfg.server)?;
    let wd = Watchdog::start()?;
    let tmp = TempDir::new("ringbase-bench-embed")?;
    let stored = texts(cfg.texts, 1);
    let queries = texts(cfg.queries, 2);
    println!(
        "embed bench: {} texts stored, {} queries, model {}",
        stored.len(),
        queries.len(),
        cfg.model.display()
    );

    // In process.
    wd.arm("loading the model", Duration::from_secs(300));
    let t = Instant::now();
    let model = OnnxEmbedder::load(&cfg.model, DEFAULT_MAX_TOKENS)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    wd.arm("embedding in process", Duration::from_secs(1800));
    let mut single = Vec::with_capacity(queries.len());
    let mut query_vectors = Vec::with_capacity(queries.len());
    for q in &queries {
        let t = Instant::now();
        let v = model.embed(&[q.as_str()])?;
        single.push(t.elapsed().as_nanos() as u64);
        query_vectors.extend(v);
    }
    let single = Summary::from_samples(&mut single).ok_or("no samples")?;
    let refs: Vec<&str> = stored.iter().map(String::as_str).collect();
    let t = Instant::now();
    let mut stored_vectors = Vec::with_capacity(stored.len());
    for chunk in refs.chunks(BATCH) {
        stored_vectors.extend(model.embed(chunk)?);
    }
    let batch_tps = stored.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "in process (tract): load {load_ms:.0} ms; one text per call p50 {} ({:.0} texts/s); {BATCH} per call {batch_tps:.0} texts/s",
        us(single.p50_ns),
        1e9 / single.p50_ns as f64
    );

    // Through servers: without a model (baseline), then with it.
    wd.arm("puts without a model", Duration::from_secs(1800));
    let (plain_rate, _plain) = put_all(cfg, &tmp.path().join("plain"), &stored, false)?;
    wd.arm("puts with the model", Duration::from_secs(1800));
    let (embed_rate, (mut c, _server)) = put_all(cfg, &tmp.path().join("embed"), &stored, true)?;
    println!(
        "puts (pipelined, window {WINDOW}): no model {plain_rate:.0}/s; with the model {embed_rate:.0}/s ({:.2}x the in-process batch rate)",
        embed_rate / batch_tps
    );
    loop {
        let v = c.status()?.vectors;
        if v.pending == 0 && v.vectors == stored.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    wd.arm("searches", Duration::from_secs(1800));
    let (mut by_text, mut by_vector) = (Vec::new(), Vec::new());
    // Taking turns, so a slow spell of the machine hits both alike.
    for (q, v) in queries.iter().zip(&query_vectors) {
        let t = Instant::now();
        let hits = c.search_text(q, 10)?;
        by_text.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        let hits2 = c.vector_search_with(v, &VectorSearch::k(10))?;
        by_vector.push(t.elapsed().as_nanos() as u64);
        if hits.is_empty() || hits2.is_empty() {
            return Err("a search found nothing".into());
        }
    }
    let by_text = Summary::from_samples(&mut by_text).ok_or("no samples")?;
    let by_vector = Summary::from_samples(&mut by_vector).ok_or("no samples")?;
    let probes = stored.len().min(200);
    let mut self_hits = 0;
    for (i, t) in stored.iter().enumerate().take(probes) {
        if c.search_text(t, 1)?
            .first()
            .is_some_and(|h| h.key == key_of(i))
        {
            self_hits += 1;
        }
    }
    println!(
        "search_text p50 {} p99 {}; vector_search (query embedded in process) p50 {} p99 {}; embedding one text in process p50 {}",
        us(by_text.p50_ns),
        us(by_text.p99_ns),
        us(by_vector.p50_ns),
        us(by_vector.p99_ns),
        us(single.p50_ns)
    );
    println!(
        "search_text p50 / (vector_search p50 + in-process embedding p50): {:.2}; each stored text finds its own record first: {self_hits} of {probes}",
        by_text.p50_ns as f64 / (by_vector.p50_ns + single.p50_ns) as f64
    );

    let reference = onnxruntime(cfg, tmp.path(), &stored, &stored_vectors);
    match &reference {
        Ok(r) => println!(
            "onnxruntime reference: cosine(tract, onnxruntime) min {:.5} mean {:.5} over {} texts; onnxruntime one text per call {:.0} texts/s, {BATCH} per call {:.0} texts/s",
            r["cos_min"].as_f64().unwrap_or(f64::NAN),
            r["cos_mean"].as_f64().unwrap_or(f64::NAN),
            r["compared"],
            r["single_tps"].as_f64().unwrap_or(f64::NAN),
            r["batch_tps"].as_f64().unwrap_or(f64::NAN),
        ),
        Err(e) => println!("onnxruntime reference skipped: {e}"),
    }

    let results = json!({
        "bench": "embed",
        "model": cfg.model.display().to_string(),
        "texts": stored.len(),
        "queries": queries.len(),
        "in_process": {
            "load_ms": load_ms,
            "single": single.to_json(),
            "batch": BATCH,
            "batch_texts_per_s": batch_tps,
        },
        "puts_per_s": { "no_model": plain_rate, "with_model": embed_rate },
        "search_text": by_text.to_json(),
        "vector_search": by_vector.to_json(),
        "self_hits": self_hits,
        "self_probes": probes,
        "onnxruntime": reference.unwrap_or_else(|e| json!({ "skipped": e })),
    });
    write_json(&cfg.json, &results).map_err(|e| e.to_string())?;
    println!("results: {}", cfg.json.display());
    Ok(())
}

fn key_of(i: usize) -> String {
    format!("t/{i:06}")
}

/// Starts a server (with the model if `embed`) in `dir`, puts every text pipelined,
/// and returns the puts per second with the client and the server.
fn put_all(
    cfg: &Config,
    dir: &Path,
    stored: &[String],
    embed: bool,
) -> Result<(f64, (Client, ChildGuard))> {
    let runtime = dir.join("run");
    let mut cmd = Command::new(&cfg.server);
    cmd.args(["serve", "--name", SERVER_NAME, "--data-dir"])
        .arg(dir.join("data"))
        .env("RINGBASE_RUNTIME_DIR", &runtime);
    if embed {
        cmd.arg("--embed-model").arg(&cfg.model);
    }
    let (server, _) =
        ChildGuard::spawn_ready("ringbase", &mut cmd, SERVER_READY, Duration::from_secs(60))?;
    let mut c = Client::connect_with(ConnectOptions::new(SERVER_NAME).runtime_dir(&runtime))?;
    let t = Instant::now();
    let mut sent = 0;
    while sent < stored.len() {
        let w = WINDOW.min(stored.len() - sent);
        for (i, text) in stored.iter().enumerate().skip(sent).take(w) {
            c.send(&Request::Put {
                key: key_of(i),
                value: json!({ "text": text }).to_string().into_bytes(),
                kind: ValueKind::Json,
            })?;
        }
        for _ in 0..w {
            match c.recv()?.1 {
                Response::Written(_) => {}
                other => return Err(format!("put failed: {other:?}").into()),
            }
        }
        sent += w;
    }
    Ok((stored.len() as f64 / t.elapsed().as_secs_f64(), (c, server)))
}

/// The onnxruntime reference (see the module docs), as the script's JSON.
fn onnxruntime(
    cfg: &Config,
    dir: &Path,
    stored: &[String],
    ours: &[Vec<f32>],
) -> std::result::Result<Value, String> {
    let tokenizer = cfg
        .tokenizer
        .as_ref()
        .ok_or("no --tokenizer tokenizer.json given")?;
    let script = dir.join("embed_reference.py");
    let input = dir.join("embed_reference.json");
    let n = stored.len().min(500);
    std::fs::write(&script, ORT_PY).map_err(|e| e.to_string())?;
    std::fs::write(
        &input,
        json!({ "texts": &stored[..n], "vectors": &ours[..n], "batch": BATCH }).to_string(),
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new(&cfg.python)
        .arg(&script)
        .arg(cfg.model.join("model.onnx"))
        .arg(tokenizer)
        .arg(&input)
        .arg(DEFAULT_MAX_TOKENS.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cfg.python))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            cfg.python,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bad output from the script: {e}"))
}
