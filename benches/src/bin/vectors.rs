//! `vectors`: the vector index benchmark (issue 9).
//!
//! For each dimension (128 and 384), a generated data set: a seeded Gaussian mixture
//! of 1,000 centres (centre components N(0,1), points = centre + N(0,1) noise),
//! L2-normalised, N base vectors (100k) and Q held-out queries (1,000) from the same
//! mixture, with the exact top-10 of every query by brute force. Then, single-threaded
//! searches, for ef = 16 … 256, recall@10 and queries/s of:
//!
//! - **ringbase**: a fresh `ringbase serve`, loaded with pipelined puts with vectors
//!   (the server's index thread inserts them as they commit); searches through the
//!   shared-memory client, one at a time (each timed: p50 is reported too);
//! - **in-process**: the same graph code (`ringbase_server::vectors::Graph`, hnsw_rs,
//!   same M and ef_construction) built and searched in this process: the cost of the
//!   server and the transport is the difference;
//! - **hnswlib** (Python package, same run, same data, `space="cosine"`, same M and
//!   ef_construction, one thread for build and search, one batch call per run of 50
//!   queries so no Python overhead per query): `benches/python/hnswlib_bench.py`, kept
//!   running for the rounds and sent one ef and run of queries at a time, run with
//!   `--python` (default `python3`); skipped with a note if `import hnswlib` fails.
//!
//! The searches run in rounds (`--rounds`, default 5): each round searches every system
//! at every ef, so that all three meet the same moments of a noisy machine (within a
//! round and ef, the three take turns in runs of 50 queries); queries/s and recall are
//! the medians over the rounds, p50 is over all the rounds' searches, and the two
//! ratio goals (queries/s against hnswlib's, the client against in process) are the
//! medians of the rounds' own ratios.
//!
//! Build time, and memory (server RSS growth from before the load to after indexing;
//! this process's RSS growth for the in-process graph; hnswlib's peak RSS growth).
//!
//! **Prefix filters**: every key is `G/NNNNNNNN` with a group `G` that holds 0.1%, 1%,
//! 5% or 25% of the vectors (the rest are in `z/`). For each group, searches under its
//! prefix through the server (which scans exactly or walks the graph, by its rule), and
//! in process both the prefix-filtered graph walk and an exact scan of the group's
//! vectors in memory, each with its recall against the exact top-10 of the group: where
//! the exact scan stops being the cheaper way is where the server's switch belongs.
//!
//! ```text
//! pip install numpy hnswlib        # hnswlib builds from source: needs g++
//! cargo build --release -p ringbase-server -p ringbase-benches
//! ./target/release/vectors [--quick] [--n N] [--queries Q] [--rounds R]
//!                          [--dims 128,384] [--server PATH] [--json PATH] [--python PATH]
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringbase_benches::harness::{
    check_server, exit_code, proc_memory, usage_error, write_json, Args, ChildGuard, DefaultPaths,
    TempDir, Watchdog, SERVER_READY,
};
use ringbase_benches::stats::{us, Summary};
use ringbase_client::{Client, ConnectOptions, Request, Response, ValueKind, VectorSearch};
use ringbase_protocol::trace::{self, Point as Mark};
use ringbase_server::vectors::{normalized, Graph, VectorConfig};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "\
usage: vectors [--quick] [--n N] [--queries Q] [--rounds R] [--dims D,D] [--server PATH]
               [--json PATH] [--python PATH]

  --quick        10k vectors, 200 queries, 2 rounds (smoke run)
  --n N          base vectors per data set [default: 100000]
  --queries Q    held-out queries [default: 1000]
  --rounds R     rounds of searches, every system at every ef in each [default: 5]
  --dims D,D     dimensions [default: 128,384]
  --server PATH  the ringbase binary [default: ringbase next to this binary]
  --json PATH    where to write the results [default: target/bench-vectors.json]
  --python PATH  Python with numpy and hnswlib [default: python3]";

const SERVER_NAME: &str = "bench-vectors";
/// Neighbours asked for.
const K: usize = 10;
/// Search breadths measured.
const EFS: [usize; 5] = [16, 32, 64, 128, 256];
/// Rounds of searches. Each round runs every system at every ef, one after another,
/// so that all of them meet the same moments of a noisy machine (a shared 2-vCPU VM
/// here: the same search can take twice as long one minute as the next); each figure
/// is the median over the rounds, each ratio the median of the rounds' ratios.
const ROUNDS: usize = 5;
/// Within a round, the searches through the client and in process take turns in runs
/// of this many queries (the machine's speed drifts within seconds, so two systems
/// searched one after the other can meet different machines).
const TURN: usize = 50;
/// Mixture components.
const CENTRES: usize = 1000;
/// Pipelining window of the load.
const WINDOW: usize = 64;
/// Prefix groups: (prefix, one vector in this many is in the group, offset).
const GROUPS: [(&str, usize, usize); 4] =
    [("a/", 1000, 0), ("b/", 100, 1), ("c/", 20, 2), ("d/", 4, 3)];
/// Queries per prefix group.
const GROUP_QUERIES: usize = 200;
/// The hnswlib driver, embedded.
const HNSWLIB_PY: &str = include_str!("../../python/hnswlib_bench.py");
/// Goal: recall@10 at the server's default ef.
const GOAL_RECALL: f64 = 0.95;
/// Goal: queries/s at least this fraction of hnswlib's at equal recall.
const GOAL_QPS_RATIO: f64 = 0.7;
/// Goal: a search through the client within this factor of the same search in process.
const GOAL_SHM_OVERHEAD: f64 = 1.10;

#[derive(Debug, Clone)]
struct Config {
    n: usize,
    queries: usize,
    dims: Vec<usize>,
    server: PathBuf,
    json: PathBuf,
    python: String,
    quick: bool,
    /// Rounds of searches (see [`ROUNDS`]).
    rounds: usize,
}

fn parse_args(
    args: impl IntoIterator<Item = String>,
) -> std::result::Result<Option<Config>, String> {
    let defaults = DefaultPaths::new("bench-vectors.json");
    let mut args = Args::new(args);
    let mut cfg = Config {
        n: 0,
        queries: 0,
        dims: vec![128, 384],
        server: defaults.server,
        json: defaults.json,
        python: "python3".into(),
        quick: false,
        rounds: 0,
    };
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--quick" => cfg.quick = true,
            "--n" => cfg.n = args.at_least_one("--n")?,
            "--queries" => cfg.queries = args.at_least_one("--queries")?,
            "--rounds" => cfg.rounds = args.at_least_one("--rounds")?,
            "--dims" => {
                cfg.dims = args
                    .value("--dims")?
                    .split(',')
                    .map(|d| {
                        d.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--dims: {e}"))
                    })
                    .collect::<std::result::Result<_, _>>()?;
                if cfg.dims.iter().any(|&d| d == 0 || d > 4096) {
                    return Err("--dims: each dimension must be 1 to 4096".into());
                }
            }
            "--server" => cfg.server = args.path("--server")?,
            "--json" => cfg.json = args.path("--json")?,
            "--python" => cfg.python = args.value("--python")?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if cfg.n == 0 {
        cfg.n = if cfg.quick { 10_000 } else { 100_000 };
    }
    if cfg.queries == 0 {
        cfg.queries = if cfg.quick { 200 } else { 1000 };
    }
    if cfg.rounds == 0 {
        cfg.rounds = if cfg.quick { 2 } else { ROUNDS };
    }
    Ok(Some(cfg))
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(cfg)) => {
            let result = run(&cfg);
            trace::flush("bench", 1);
            exit_code("vectors", result)
        }
        Err(msg) => usage_error("vectors", &msg, USAGE),
    }
}

/// A standard normal sample (Box-Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `n` base and `q` query vectors of `dim` dimensions, row-major, normalised.
fn dataset(n: usize, q: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..CENTRES * dim).map(|_| gaussian(&mut rng)).collect();
    let point = |rng: &mut StdRng| {
        let c = rng.gen_range(0..CENTRES);
        let v: Vec<f32> = (0..dim)
            .map(|j| centres[c * dim + j] + gaussian(rng))
            .collect();
        normalized(&v)
    };
    let base = (0..n).flat_map(|_| point(&mut rng)).collect();
    let queries = (0..q).flat_map(|_| point(&mut rng)).collect();
    (base, queries)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    ringbase_server::vectors::dot(a, b)
}

/// The key of base vector `i`: its prefix group, then its number.
fn key_of(i: usize) -> String {
    let group = GROUPS
        .iter()
        .find(|(_, every, offset)| i % every == *offset)
        .map_or("z/", |g| g.0);
    format!("{group}{i:08}")
}

/// The id in a key made by [`key_of`].
fn id_of(key: &str) -> std::result::Result<u32, String> {
    key.get(2..)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected key {key:?}"))
}

/// The exact top-`K` ids among `members` for each query.
fn ground_truth_among(base: &[f32], members: &[u32], queries: &[f32], dim: usize) -> Vec<Vec<u32>> {
    queries
        .chunks_exact(dim)
        .map(|q| exact_scan(base, members, q, dim))
        .collect()
}

/// The exact top-`K` ids among `members` for one query: a scan of their vectors.
fn exact_scan(base: &[f32], members: &[u32], q: &[f32], dim: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(K + 1);
    for &id in members {
        let i = id as usize;
        let s = dot(q, &base[i * dim..(i + 1) * dim]);
        if best.len() < K || s > best[best.len() - 1].0 {
            let at = best.partition_point(|e| e.0 >= s);
            best.insert(at, (s, id));
            best.truncate(K);
        }
    }
    best.into_iter().map(|e| e.1).collect()
}

/// Recall of `found` against per-query truths: the fraction of each query's true
/// top-`K` (or all of its truth, if fewer) found.
fn recall(found: &[Vec<u32>], truth: &[Vec<u32>]) -> f64 {
    let mut hits = 0usize;
    let mut want = 0usize;
    for (f, t) in found.iter().zip(truth) {
        hits += f.iter().filter(|id| t.contains(id)).count();
        want += t.len().min(K);
    }
    hits as f64 / want.max(1) as f64
}

/// Prefix-filtered search at one group.
#[derive(Debug, Clone)]
struct PrefixRow {
    prefix: &'static str,
    members: usize,
    server: (Summary, f64),
    graph: (Summary, f64),
    scan: Summary,
}

/// The exact top-`K` ids of each query among all base vectors, best first (two
/// threads, half of the queries each).
fn ground_truth(base: &[f32], queries: &[f32], dim: usize) -> Vec<Vec<u32>> {
    let all: Vec<u32> = (0..(base.len() / dim) as u32).collect();
    let half = (queries.len() / dim).div_ceil(2) * dim;
    let (first, second) = queries.split_at(half.min(queries.len()));
    std::thread::scope(|s| {
        let other = s.spawn(|| ground_truth_among(base, &all, second, dim));
        let mut out = ground_truth_among(base, &all, first, dim);
        out.extend(other.join().expect("ground-truth thread"));
        out
    })
}

/// One system at one ef.
#[derive(Debug, Clone)]
struct Point {
    ef: usize,
    recall: f64,
    qps: f64,
    /// Per-search latency, where each search was timed.
    latency: Option<Summary>,
}

/// One system on one data set.
#[derive(Debug, Clone)]
struct SystemRun {
    name: &'static str,
    build_s: f64,
    memory_mib: Option<f64>,
    points: Vec<Point>,
    note: Option<String>,
}

fn write_f32(path: &Path, v: &[f32]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for x in v {
        f.write_all(&x.to_le_bytes())?;
    }
    Ok(f.flush()?)
}

fn write_u32(path: &Path, v: &[u32]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for x in v {
        f.write_all(&x.to_le_bytes())?;
    }
    Ok(f.flush()?)
}

fn rss_mib(pid: u32) -> Option<f64> {
    proc_memory(pid).map(|m| m.rss_kib as f64 / 1024.0)
}

/// The same graph code as the server, built in this process (searched by the rounds,
/// and kept for the prefix searches): build seconds, memory (RSS growth), the graph.
fn in_process(base: &[f32], dim: usize) -> (f64, Option<f64>, Graph) {
    let params = VectorConfig::default().graph;
    let before = rss_mib(std::process::id());
    let graph = Graph::new(params, dim, base.len() / dim);
    let t = Instant::now();
    for (i, v) in base.chunks_exact(dim).enumerate() {
        graph.insert(Arc::from(key_of(i)), v);
    }
    // As the server's index thread does once it has nothing left to insert.
    graph.refresh_links();
    let build_s = t.elapsed().as_secs_f64();
    let memory_mib = rss_mib(std::process::id()).zip(before).map(|(a, b)| a - b);
    (build_s, memory_mib, graph)
}

/// One system's searches at one ef in one round.
#[derive(Debug, Clone)]
struct Block {
    recall: f64,
    qps: f64,
    /// Each search's latency (ns), where each search was timed.
    samples: Vec<u64>,
}

/// One search: a query's ids, nearest first.
type Search<'a> = dyn FnMut(&[f32]) -> Result<Vec<u32>> + 'a;

/// A run of queries (by index) searched in one call, untimed per query (hnswlib's
/// batch): the seconds it took and how many of the queries' true top-K it found. An
/// `Err` says why the system stops taking part.
type Batch<'a> =
    dyn FnMut(std::ops::Range<usize>) -> std::result::Result<(f64, usize), String> + 'a;

/// The batch system's block, or why it stopped taking part.
type BatchBlock = std::result::Result<Block, String>;

/// Every query searched once by each system, the systems taking turns in runs of
/// [`TURN`] queries (who goes first rotates), so that all of them meet the same
/// moments of the machine: two that search one query at a time (each search timed),
/// and optionally a third that searches each run in one call. Recall against `gt`;
/// queries/s over each system's own time. The third's block is `None` if it failed
/// (with why) and took no further part.
fn taking_turns(
    queries: &[f32],
    dim: usize,
    gt: &[Vec<u32>],
    searches: [&mut Search<'_>; 2],
    mut batch: Option<&mut Batch<'_>>,
) -> Result<([Block; 2], Option<BatchBlock>)> {
    let mut samples: [Vec<u64>; 2] = Default::default();
    let mut found: [Vec<Vec<u32>>; 2] = Default::default();
    let mut secs = [0.0f64; 2];
    let (mut batch_secs, mut batch_hits, mut batch_queries) = (0.0f64, 0usize, 0usize);
    let mut batch_failed = None;
    let qs: Vec<&[f32]> = queries.chunks_exact(dim).collect();
    let systems = if batch.is_some() { 3 } else { 2 };
    for (i, turn) in qs.chunks(TURN).enumerate() {
        let first = i * TURN;
        for s in (0..systems).map(|j| (i + j) % systems) {
            if s == 2 {
                let Some(b) = batch.as_mut() else { continue };
                match b(first..first + turn.len()) {
                    Ok((t, hits)) => {
                        batch_secs += t;
                        batch_hits += hits;
                        batch_queries += turn.len();
                    }
                    Err(e) => {
                        batch_failed = Some(e);
                        batch = None;
                    }
                }
                continue;
            }
            let t = Instant::now();
            for q in turn {
                let tq = Instant::now();
                found[s].push(searches[s](q)?);
                samples[s].push(tq.elapsed().as_nanos() as u64);
            }
            secs[s] += t.elapsed().as_secs_f64();
        }
    }
    let pair = [0, 1].map(|s| Block {
        recall: recall(&found[s], gt),
        qps: found[s].len() as f64 / secs[s],
        samples: std::mem::take(&mut samples[s]),
    });
    let third = match (batch_failed, systems) {
        (Some(e), _) => Some(Err(e)),
        (None, 3) => Some(Ok(Block {
            recall: batch_hits as f64 / (batch_queries * K).max(1) as f64,
            qps: batch_queries as f64 / batch_secs,
            samples: Vec::new(),
        })),
        _ => None,
    };
    Ok((pair, third))
}

/// The median of `v` (the mean of the middle two for an even count; NaN if empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The points of a system from its blocks (`blocks[round][i]` at `EFS[i]`): median
/// recall and queries/s over the rounds, the latency of all the rounds' searches.
fn points_of(blocks: &[Vec<Block>]) -> Vec<Point> {
    EFS.iter()
        .enumerate()
        .map(|(i, &ef)| {
            let at: Vec<&Block> = blocks.iter().filter_map(|r| r.get(i)).collect();
            let mut samples: Vec<u64> = at.iter().flat_map(|b| b.samples.iter().copied()).collect();
            Point {
                ef,
                recall: median(at.iter().map(|b| b.recall).collect()),
                qps: median(at.iter().map(|b| b.qps).collect()),
                latency: Summary::from_samples(&mut samples),
            }
        })
        .collect()
}

/// Searches under each group's prefix: through the server (`c`), and in process with
/// the filtered graph and with an exact scan of the group's vectors.
fn prefix_rows(
    c: &mut Client,
    graph: &Graph,
    base: &[f32],
    queries: &[f32],
    dim: usize,
) -> Result<Vec<PrefixRow>> {
    let n = base.len() / dim;
    let ef = VectorConfig::default().ef_search;
    let qs = &queries[..GROUP_QUERIES.min(queries.len() / dim) * dim];
    let mut rows = Vec::new();
    for (prefix, every, offset) in GROUPS {
        let members: Vec<u32> = (0..n)
            .filter(|i| i % every == offset)
            .map(|i| i as u32)
            .collect();
        let truth = ground_truth_among(base, &members, qs, dim);
        let timed =
            |f: &mut dyn FnMut(&[f32]) -> Result<Vec<u32>>| -> Result<(Summary, Vec<Vec<u32>>)> {
                let mut samples = Vec::new();
                let mut found = Vec::new();
                for q in qs.chunks_exact(dim) {
                    let t = Instant::now();
                    found.push(f(q)?);
                    samples.push(t.elapsed().as_nanos() as u64);
                }
                Ok((
                    Summary::from_samples(&mut samples).ok_or("no samples")?,
                    found,
                ))
            };
        let opts = VectorSearch::k(K as u32).prefix(prefix);
        let (s_lat, s_found) = timed(&mut |q| {
            c.vector_search_with(q, &opts)?
                .iter()
                .map(|h| id_of(&h.key).map_err(Into::into))
                .collect()
        })?;
        let (g_lat, g_found) = timed(&mut |q| {
            graph
                .search(q, K, ef, prefix)
                .into_iter()
                .map(|(_, key, _)| id_of(&key).map_err(Into::into))
                .collect()
        })?;
        let (x_lat, _) = timed(&mut |q| Ok(exact_scan(base, &members, q, dim)))?;
        rows.push(PrefixRow {
            prefix,
            members: members.len(),
            server: (s_lat, recall(&s_found, &truth)),
            graph: (g_lat, recall(&g_found, &truth)),
            scan: x_lat,
        });
    }
    Ok(rows)
}

/// A real server, loaded with the base vectors through the shared-memory client, once
/// its index holds them all (searched by the rounds): its build figures (no points
/// yet), the client, the server.
fn through_server(
    cfg: &Config,
    wd: &Watchdog,
    tmp: &Path,
    base: &[f32],
    dim: usize,
) -> Result<(SystemRun, Client, ChildGuard)> {
    let runtime = tmp.join(format!("run-{dim}"));
    let (server, _) = ChildGuard::spawn_ready(
        "ringbase",
        Command::new(&cfg.server)
            .args(["serve", "--name", SERVER_NAME, "--data-dir"])
            .arg(tmp.join(format!("data-{dim}")))
            .env("RINGBASE_RUNTIME_DIR", &runtime),
        SERVER_READY,
        Duration::from_secs(10),
    )?;
    let mut c = Client::connect_with(ConnectOptions::new(SERVER_NAME).runtime_dir(&runtime))?;
    let before = rss_mib(server.pid());
    wd.arm(
        format!("loading {} vectors of {dim}", base.len() / dim),
        Duration::from_secs(1800),
    );
    let t = Instant::now();
    let mut sent = 0;
    let n = base.len() / dim;
    while sent < n {
        let w = WINDOW.min(n - sent);
        for i in sent..sent + w {
            c.send(&Request::PutVector {
                key: key_of(i),
                value: Vec::new(),
                kind: ValueKind::Bytes,
                vector: base[i * dim..(i + 1) * dim].to_vec(),
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
    let load_s = t.elapsed().as_secs_f64();
    loop {
        let v = c.status()?.vectors;
        if v.pending == 0 && v.vectors == n as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let build_s = t.elapsed().as_secs_f64();
    let memory_mib = rss_mib(server.pid()).zip(before).map(|(a, b)| a - b);
    wd.disarm();
    let run = SystemRun {
        name: "ringbase (shm client)",
        build_s,
        memory_mib,
        points: Vec::new(),
        note: Some(format!(
            "loaded in {load_s:.1} s (pipelined puts, window {WINDOW}); indexed {:.1} s after the first put",
            build_s
        )),
    };
    Ok((run, c, server))
}

/// hnswlib through its Python package: a child process that has built the index on the
/// data set's files in `dir` and searches them at the ef it is sent
/// (`benches/python/hnswlib_bench.py`).
struct Hnswlib {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
    /// The script's stderr, for the reason it failed.
    errors: PathBuf,
    version: String,
    build_s: f64,
    memory_mib: Option<f64>,
}

impl Hnswlib {
    /// Starts the script and waits for its build; `Err` says why hnswlib is skipped.
    fn start(cfg: &Config, dir: &Path, dim: usize) -> std::result::Result<Hnswlib, String> {
        let params = VectorConfig::default().graph;
        let script = dir.join("hnswlib_bench.py");
        std::fs::write(&script, HNSWLIB_PY).map_err(|e| format!("writing the script: {e}"))?;
        let errors = dir.join("hnswlib.stderr");
        let err =
            std::fs::File::create(&errors).map_err(|e| format!("{}: {e}", errors.display()))?;
        let mut child = Command::new(&cfg.python)
            .arg(&script)
            .arg(dir)
            .args([
                dim.to_string(),
                params.m.to_string(),
                params.ef_construction.to_string(),
                K.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cfg.python))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the script".into());
        };
        let mut h = Hnswlib {
            child,
            input,
            output: BufReader::new(output),
            errors,
            version: String::new(),
            build_s: f64::NAN,
            memory_mib: None,
        };
        let v = h.answer()?;
        h.version = v["version"].as_str().unwrap_or("?").to_string();
        h.build_s = v["build_s"].as_f64().unwrap_or(f64::NAN);
        h.memory_mib = v["peak_rss_growth_mib"].as_f64();
        Ok(h)
    }

    /// The script's next line of output; if it ended, the last line it wrote to stderr.
    fn answer(&mut self) -> std::result::Result<Value, String> {
        let mut line = String::new();
        match self.output.read_line(&mut line) {
            Ok(n) if n > 0 => {
                serde_json::from_str(&line).map_err(|e| format!("bad output from the script: {e}"))
            }
            _ => {
                let err = std::fs::read_to_string(&self.errors).unwrap_or_default();
                Err(format!(
                    "the script failed: {}",
                    err.lines().last().unwrap_or("(nothing on stderr)")
                ))
            }
        }
    }

    /// The queries `range` searched at `ef` in one batch call (no latency per search):
    /// seconds, and how many of their true top-K were found.
    fn search(
        &mut self,
        ef: usize,
        range: std::ops::Range<usize>,
    ) -> std::result::Result<(f64, usize), String> {
        writeln!(self.input, "{ef} {} {}", range.start, range.end)
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("writing to the script: {e}"))?;
        let v = self.answer()?;
        match (v["secs"].as_f64(), v["hits"].as_u64()) {
            (Some(secs), Some(hits)) => Ok((secs, hits as usize)),
            _ => Err(format!("bad answer from the script: {v}")),
        }
    }
}

impl Drop for Hnswlib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median latency of a block's searches, in ns.
fn pooled_p50(b: &Block) -> Option<f64> {
    let mut s = b.samples.clone();
    Summary::from_samples(&mut s).map(|x| x.p50_ns as f64)
}

/// The queries/s at recall `r` of a system measured at the ef points `pts`,
/// interpolated between them (the fastest point reaching `r` if it is not bracketed);
/// `None` if it never reaches it.
fn qps_at_recall(pts: &[Point], r: f64) -> Option<f64> {
    for w in pts.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.recall >= r {
            return Some(a.qps);
        }
        if b.recall >= r {
            let f = (r - a.recall) / (b.recall - a.recall).max(1e-12);
            return Some(a.qps + f * (b.qps - a.qps));
        }
    }
    pts.iter().find(|p| p.recall >= r).map(|p| p.qps)
}

fn run(cfg: &Config) -> Result<()> {
    check_server(&cfg.server)?;
    let wd = Watchdog::start()?;
    let tmp = TempDir::new("ringbase-bench-vectors")?;
    let default_ef = VectorConfig::default().ef_search;
    let mut report = Vec::new();
    let mut md = String::new();
    let mut goals = Vec::new();
    for &dim in &cfg.dims {
        eprintln!("data set: {} x {dim}, {} queries", cfg.n, cfg.queries);
        wd.arm(format!("ground truth {dim}"), Duration::from_secs(1800));
        let (base, queries) = dataset(cfg.n, cfg.queries, dim, 0x5eed + dim as u64);
        let t = Instant::now();
        let gt = ground_truth(&base, &queries, dim);
        eprintln!("  ground truth in {:.1} s", t.elapsed().as_secs_f64());
        let dir = tmp.path().join(format!("data-set-{dim}"));
        std::fs::create_dir_all(&dir)?;
        write_f32(&dir.join("base.f32"), &base)?;
        write_f32(&dir.join("queries.f32"), &queries)?;
        write_u32(&dir.join("gt.u32"), &gt.concat())?;
        wd.arm(format!("ringbase {dim}"), Duration::from_secs(3600));
        let (mut server, mut client, server_proc) =
            through_server(cfg, &wd, tmp.path(), &base, dim)?;
        eprintln!("  ringbase: built in {:.1} s", server.build_s);
        wd.arm(format!("in-process {dim}"), Duration::from_secs(3600));
        let (local_build_s, local_memory, graph) = in_process(&base, dim);
        eprintln!("  in-process: built in {local_build_s:.1} s");
        wd.arm(format!("hnswlib {dim}"), Duration::from_secs(3600));
        let mut py = Hnswlib::start(cfg, &dir, dim);
        match &py {
            Ok(h) => eprintln!("  hnswlib {}: built in {:.1} s", h.version, h.build_s),
            Err(e) => eprintln!("  hnswlib skipped: {e}"),
        }
        // The rounds: blocks[system][round][ef index].
        let mut blocks: [Vec<Vec<Block>>; 3] = Default::default();
        for round in 0..cfg.rounds {
            wd.arm(
                format!("searches {dim}, round {}", round + 1),
                Duration::from_secs(1800),
            );
            for b in &mut blocks {
                b.push(Vec::new());
            }
            for &ef in &EFS {
                let opts = VectorSearch::k(K as u32).ef(ef as u32);
                let running = py.is_ok();
                let mut hnswlib = py.as_mut().ok();
                let mut batch = |range: std::ops::Range<usize>| match hnswlib.as_mut() {
                    Some(h) => h.search(ef, range),
                    None => Err("not running".to_string()),
                };
                let ([shm, local], third) = taking_turns(
                    &queries,
                    dim,
                    &gt,
                    [
                        &mut |q| {
                            trace::mark(Mark::BenchCall);
                            let hits = client.vector_search_with(q, &opts)?;
                            trace::mark(Mark::BenchDone);
                            hits.iter()
                                .map(|h| id_of(&h.key).map_err(Into::into))
                                .collect()
                        },
                        &mut |q| {
                            trace::mark(Mark::GraphSearch);
                            let r = graph.search(q, K, ef, "");
                            trace::mark(Mark::GraphSearched);
                            Ok(r.into_iter().map(|(id, _, _)| id).collect())
                        },
                    ],
                    running.then_some(&mut batch as &mut Batch<'_>),
                )?;
                blocks[0][round].push(shm);
                blocks[1][round].push(local);
                match third {
                    Some(Ok(b)) => blocks[2][round].push(b),
                    Some(Err(e)) => py = Err(e),
                    None => {}
                }
            }
        }
        eprintln!("  searches: {} rounds", cfg.rounds);
        for (i, ef) in EFS.iter().enumerate() {
            let per_round: Vec<String> = (0..cfg.rounds)
                .map(|r| {
                    let p50 = |s: usize| pooled_p50(&blocks[s][r][i]).map_or(f64::NAN, |x| x / 1e3);
                    format!("{:.0}/{:.0}", p50(0), p50(1))
                })
                .collect();
            eprintln!(
                "    ef {ef}: p50 µs client/in-process by round: {}",
                per_round.join(" ")
            );
        }
        if let Some(i) = EFS.iter().position(|&e| e == default_ef) {
            let per_round: Vec<String> = (0..cfg.rounds)
                .map(|r| {
                    let qps = |s: usize| blocks[s][r].get(i).map_or(f64::NAN, |b| b.qps);
                    format!("{:.0}/{:.0}", qps(0), qps(2))
                })
                .collect();
            eprintln!(
                "    ef {default_ef}: queries/s client/hnswlib by round: {}",
                per_round.join(" ")
            );
        }
        server.points = points_of(&blocks[0]);
        let local = SystemRun {
            name: "in-process (hnsw_rs)",
            build_s: local_build_s,
            memory_mib: local_memory,
            points: points_of(&blocks[1]),
            note: Some(format!(
                "M={} ef_construction={}",
                VectorConfig::default().graph.m,
                VectorConfig::default().graph.ef_construction
            )),
        };
        let py = match py {
            Ok(h) => SystemRun {
                name: "hnswlib (Python)",
                build_s: h.build_s,
                memory_mib: h.memory_mib,
                points: points_of(&blocks[2]),
                note: Some(format!("hnswlib {}", h.version)),
            },
            Err(why) => SystemRun {
                name: "hnswlib (Python)",
                build_s: f64::NAN,
                memory_mib: None,
                points: Vec::new(),
                note: Some(format!("skipped: {why}")),
            },
        };
        // Through the client vs in process, round by round (same minutes).
        let def = EFS.iter().position(|&e| e == default_ef);
        let shm_ratio = def.map(|i| {
            median(
                (0..cfg.rounds)
                    .filter_map(|r| {
                        let s = pooled_p50(&blocks[0][r][i])?;
                        let l = pooled_p50(&blocks[1][r][i])?;
                        Some(s / l.max(1.0))
                    })
                    .collect(),
            )
        });
        // Queries/s through the client against hnswlib's at the same recall, round by
        // round (they took turns: same moments), then the median.
        let qps_ratio = def.and_then(|i| {
            let ratios: Vec<f64> = (0..cfg.rounds)
                .filter_map(|r| {
                    let ours = blocks[0][r].get(i)?;
                    let theirs = points_of(std::slice::from_ref(blocks[2].get(r)?));
                    Some(ours.qps / qps_at_recall(&theirs, ours.recall)?)
                })
                .collect();
            (!ratios.is_empty()).then(|| median(ratios))
        });
        wd.arm(format!("prefixes {dim}"), Duration::from_secs(1800));
        let prefixes = prefix_rows(&mut client, &graph, &base, &queries, dim)?;
        drop((client, server_proc, graph));
        wd.disarm();
        let runs = [server, local, py];

        md += &format!(
            "\n### {} x {dim} (1,000 centres), {} queries, recall@{K}, one thread, median of {} rounds\n\n",
            cfg.n, cfg.queries, cfg.rounds
        );
        md += "| system | build s | memory MiB | ef | recall@10 | queries/s | p50 µs |\n";
        md += "|---|---:|---:|---:|---:|---:|---:|\n";
        for r in &runs {
            for p in &r.points {
                md += &format!(
                    "| {} | {:.1} | {} | {} | {:.4} | {:.0} | {} |\n",
                    r.name,
                    r.build_s,
                    r.memory_mib.map_or("—".into(), |m| format!("{m:.0}")),
                    p.ef,
                    p.recall,
                    p.qps,
                    p.latency.map_or("—".into(), |l| us(l.p50_ns)),
                );
            }
            if let Some(n) = &r.note {
                md += &format!("| {} | {n} | | | | | |\n", r.name);
            }
        }
        md += &format!(
            "\nPrefix filters ({dim}): p50 µs and recall@10 against the exact top-10 under the prefix, \
             {GROUP_QUERIES} queries, ef {default_ef}\n\n"
        );
        md += "| prefix holds | vectors | ringbase (server picks) | in-process filtered graph | in-process exact scan (memory) |\n";
        md += "|---|---:|---:|---:|---:|\n";
        for p in &prefixes {
            md += &format!(
                "| {:.1}% | {} | {} µs, {:.3} | {} µs, {:.3} | {} µs |\n",
                100.0 * p.members as f64 / cfg.n as f64,
                p.members,
                us(p.server.0.p50_ns),
                p.server.1,
                us(p.graph.0.p50_ns),
                p.graph.1,
                us(p.scan.p50_ns),
            );
        }
        let at = |r: &SystemRun| r.points.iter().find(|p| p.ef == default_ef).cloned();
        if let Some(p) = at(&runs[0]) {
            goals.push(json!({
                "goal": format!("{dim}: ringbase recall@10 at the default ef {default_ef} ≥ {GOAL_RECALL}"),
                "value": p.recall, "pass": p.recall >= GOAL_RECALL,
            }));
            if let Some(ratio) = qps_ratio.filter(|r| r.is_finite()) {
                goals.push(json!({
                    "goal": format!("{dim}: ringbase queries/s ≥ {GOAL_QPS_RATIO}× hnswlib's at recall {:.4} (median of the rounds' ratios)", p.recall),
                    "value": ratio, "pass": ratio >= GOAL_QPS_RATIO,
                }));
            }
            if let Some(ratio) = shm_ratio.filter(|r| r.is_finite()) {
                goals.push(json!({
                    "goal": format!("{dim}: search p50 through the client ≤ {GOAL_SHM_OVERHEAD}× in process (ef {default_ef}, median of the rounds' ratios)"),
                    "value": ratio, "pass": ratio <= GOAL_SHM_OVERHEAD,
                }));
            }
        }
        report.push(json!({
            "dim": dim, "n": cfg.n, "queries": cfg.queries,
            "prefixes": prefixes.iter().map(|p| json!({
                "prefix": p.prefix, "vectors": p.members,
                "server": { "latency": p.server.0.to_json(), "recall": p.server.1 },
                "graph": { "latency": p.graph.0.to_json(), "recall": p.graph.1 },
                "exact_scan_memory": p.scan.to_json(),
            })).collect::<Vec<_>>(),
            "systems": runs.iter().map(|r| json!({
                "name": r.name, "build_s": r.build_s, "memory_mib": r.memory_mib, "note": r.note,
                "points": r.points.iter().map(|p| json!({
                    "ef": p.ef, "recall": p.recall, "qps": p.qps,
                    "latency": p.latency.map(|l| l.to_json()),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
    }
    println!("{md}");
    println!("Goals:");
    for g in &goals {
        println!(
            "- [{}] {}: {:.3}",
            if g["pass"].as_bool() == Some(true) {
                "PASS"
            } else {
                "FAIL"
            },
            g["goal"].as_str().unwrap_or(""),
            g["value"].as_f64().unwrap_or(f64::NAN)
        );
    }
    write_json(
        &cfg.json,
        &json!({ "bench": "vectors", "quick": cfg.quick, "k": K, "efs": EFS,
                 "default_ef": default_ef, "data_sets": report, "goals": goals }),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ground_truth_is_exact_and_recall_counts() {
        let (base, queries) = dataset(500, 7, 8, 1);
        let gt = ground_truth(&base, &queries, 8);
        for (qi, q) in queries.chunks_exact(8).enumerate() {
            let mut all: Vec<(f32, u32)> = base
                .chunks_exact(8)
                .enumerate()
                .map(|(i, b)| (dot(q, b), i as u32))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            let want: Vec<u32> = all[..K].iter().map(|e| e.1).collect();
            assert_eq!(gt[qi], want);
        }
        assert_eq!(gt.len(), 7);
        let found: Vec<Vec<u32>> = gt.iter().map(|t| t[..5].to_vec()).collect();
        assert_eq!(recall(&found, &gt), 0.5);
    }

    #[test]
    fn medians_and_points_over_rounds() {
        assert!(median(Vec::new()).is_nan());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        // Three rounds, every ef: the middle round's q/s, all searches' latencies.
        let rounds: Vec<Vec<Block>> = [1.0, 9.0, 5.0]
            .iter()
            .map(|&q| {
                EFS.iter()
                    .map(|&ef| Block {
                        recall: 1.0,
                        qps: q * ef as f64,
                        samples: vec![q as u64; 2],
                    })
                    .collect()
            })
            .collect();
        let points = points_of(&rounds);
        assert_eq!(points.len(), EFS.len());
        for (p, &ef) in points.iter().zip(&EFS) {
            assert_eq!((p.ef, p.qps), (ef, 5.0 * ef as f64));
            let l = p.latency.expect("timed");
            assert_eq!((l.samples, l.p50_ns, l.max_ns), (6, 5, 9));
        }
    }

    #[test]
    fn interpolates_qps_at_a_recall() {
        let run = SystemRun {
            name: "x",
            build_s: 0.0,
            memory_mib: None,
            note: None,
            points: vec![
                Point {
                    ef: 16,
                    recall: 0.8,
                    qps: 1000.0,
                    latency: None,
                },
                Point {
                    ef: 32,
                    recall: 0.9,
                    qps: 600.0,
                    latency: None,
                },
            ],
        };
        let mid = qps_at_recall(&run.points, 0.85).unwrap();
        assert!((mid - 800.0).abs() < 1e-6, "{mid}");
        assert_eq!(qps_at_recall(&run.points, 0.7), Some(1000.0));
        assert_eq!(qps_at_recall(&run.points, 0.95), None);
    }
}
