//! `db`: the Ringbase database benchmark.
//!
//! Starts a real `ringbase serve` (fresh runtime and data dirs), preloads a key space
//! (100k records by default) and measures gets and puts of 100-byte values (JSON values
//! of exactly 100 bytes, validated by the server on put; `--bytes` switches to the raw
//! bytes kind):
//!
//! - with **1 client process** and with **4 client processes** (this process plus
//!   three children: the bench binary re-executed with the hidden `--client-role`
//!   arguments; each child reports its raw samples back as one JSON line on stdout, and
//!   the bench merges them: percentiles over all samples, throughput = the sum of each
//!   client's ops/s);
//! - **sequential** (one call, wait for its answer, repeat; every call timed) and
//!   **pipelined** (send a window of 64 requests, then receive the 64 responses);
//! - with the client in [`WaitMode::BusyPoll`] and in [`WaitMode::Adaptive`].
//!
//! Gets pick uniformly random keys of the key space and read the value zero-copy
//! (`get_view` / `recv_view`); puts overwrite uniformly random keys and are acknowledged
//! when committed (SQLite WAL, `synchronous=NORMAL`: durable against a crash of the
//! server process). Each phase runs for a fixed time after a warm-up; with 4 clients all
//! start on one signal.
//!
//! The **baseline**, in the same run, is rusqlite in this process on its own database
//! in a temp dir, with the server's VFS (`unix-excl`: WAL index in heap memory, no
//! `fcntl` per read transaction; `--baseline-vfs default` for SQLite's default) and
//! pragmas (1 KiB pages, WAL, `synchronous=NORMAL`,
//! `temp_store=MEMORY`, `cache_size=-64000`, `mmap_size` 256 MiB) and the server's table
//! (`records(key TEXT PRIMARY KEY, value BLOB, kind, hlc, replica, seq, updated_at,
//! deleted) STRICT, WITHOUT ROWID`): get = a prepared `SELECT` by key into an owned
//! record; put = `INSERT OR REPLACE` in its own (autocommit) transaction; and, next to
//! pipelined puts, 64 puts per transaction. With 1 thread and with 4 threads (one
//! connection each, in this process).
//!
//! Then **memory and start-up**: a fresh server is loaded with 1M records of 100 bytes
//! (100k with `--quick`) through pipelined `Batch` requests of 256 puts; the bench reads
//! the server's `VmRSS`/`VmHWM` (and the anon/file/shmem split) from `/proc` after the
//! load and again after reading every record once, and the size on disk. It then stops
//! the server (SIGTERM; it checkpoints) and restarts it on the same data dir three
//! times, measuring from spawn to the readiness line and to the first successful get.
//!
//! Around each Ringbase put phase the bench reads the server's `commits` and
//! `write_jobs` counters (`Status`) and reports write jobs per SQLite transaction: how
//! well group commit batches. A server that crashes or hangs when stopped (SIGTERM) is
//! reported as a problem (with the rest of the results) rather than ending the bench.
//!
//! Everything is printed as Markdown (with PASS/FAIL against the goals) and written as
//! JSON.
//!
//! ```text
//! cargo build --release -p ringbase-server -p ringbase-benches
//! ./target/release/db [--quick] [--server PATH] [--json PATH] [--window W] [--bytes]
//!                     [--keys N] [--rss-records N] [--secs S] [--baseline-vfs NAME]
//! ```
//!
//! Every wait has a limit (server and client readiness, phase results, server stop),
//! a watchdog ends the process and its children if a phase overruns, and the children
//! and temp dirs are removed when the bench ends, errors and panics included. A child
//! exits when its stdin closes (the bench is gone) and has its own watchdog.
//!
//! The bench measures how much CPU other processes used during each row (from
//! `/proc`): on a 2-CPU machine a concurrent build takes a core a spinning client or
//! server thread needs, and such rows are flagged as disturbed.

use std::error::Error;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringbase_benches::harness::{
    allowed_cpus, check_server, dir_size, exit_code, proc_memory, usage_error, write_json, Args,
    ChildGuard, ChildLines, CpuMeter, DefaultPaths, OtherCpu, ProcMemory, TempDir, Watchdog,
    SERVER_READY,
};
use ringbase_benches::stats::{clock_read_ns, rate, us, Summary};
use ringbase_client::{BatchOp, Client, ConnectOptions, Request, ValueKind, WaitMode};
use ringbase_protocol::message::ArchivedResponse;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Value};

/// Result type of the bench.
type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Name of the servers the bench starts.
const SERVER_NAME: &str = "bench-db";
/// Longest wait for the server's readiness line (the goal is 2 s; this is a hang guard).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the server to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// A client child says this once connected for a phase.
const CHILD_READY: &str = "db-client: ready";
/// A client child prints this, then the phase's results as JSON.
const CHILD_RESULT: &str = "db-client: result ";
/// Longest wait for a client child to connect.
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of a phase's own duration before waiting for its result gives up.
const PHASE_SLACK: Duration = Duration::from_secs(60);
/// Longest a load (preload, or the 1M-record load) may take.
const LOAD_LIMIT: Duration = Duration::from_secs(600);
/// Value size.
const VALUE_LEN: usize = 100;
/// Puts per `Batch` request when loading.
const LOAD_BATCH: usize = 256;
/// `Batch` requests in flight when loading.
const LOAD_WINDOW: usize = 8;
/// Server restarts measured.
const RESTARTS: usize = 3;
/// The VFS the server opens its database with (server/src/store/schema.rs).
const SERVER_VFS: &str = "unix-excl";
/// Records per transaction when preloading the SQLite baseline.
const BASELINE_LOAD_TXN: usize = 10_000;

/// Goal: get RTT p50 (busy-poll, one client), µs.
const GOAL_GET_P50_US: f64 = 2.0;
/// Goal: pipelined gets per second on one session.
const GOAL_PIPELINED_GETS: f64 = 1_000_000.0;
/// Goal: durable pipelined puts per second (the server's, from pipelining clients in the
/// default wait mode).
const GOAL_PIPELINED_PUTS: f64 = 200_000.0;
/// Goal: single put RTT p50 (busy-poll, one client), µs.
const GOAL_PUT_P50_US: f64 = 50.0;
/// Goal: server RSS holding 1M records of 100 bytes, bytes (400 MB, decimal).
const GOAL_RSS_BYTES: f64 = 400e6;
/// Goal: start to ready with 1M records, seconds.
const GOAL_START_SECS: f64 = 2.0;

/// Usage text.
const USAGE: &str = "\
usage: db [--quick] [--server PATH] [--json PATH] [--window W] [--bytes]
          [--keys N] [--rss-records N] [--secs S] [--baseline-vfs NAME]

  --quick          short phases and 100k records for the memory/start-up part
  --server PATH    the ringbase binary [default: ringbase next to this binary]
  --json PATH      where to write the results [default: target/bench-db.json,
                   i.e. bench-db.json one level above this binary's dir]
  --window W       pipelining depth [default: 64]
  --bytes          100-byte raw-bytes values instead of 100-byte JSON values
  --keys N         preloaded key space of the get/put rows [default: 100000]
  --rss-records N  records loaded for the memory/start-up part
                   [default: 1000000; 100000 with --quick]
  --secs S         measured seconds per phase [default: 2; 0.4 with --quick]
  --baseline-vfs NAME
                   SQLite VFS of the baseline: unix-excl (as the server), or
                   default (SQLite's default VFS) [default: unix-excl]";

/// What the command line asks for.
#[derive(Debug)]
enum Mode {
    /// Run the benchmark.
    Bench(Config),
    /// Be one of the extra client processes (hidden; the bench re-executes itself).
    Client(ClientArgs),
    /// Print usage.
    Help,
}

/// Arguments of a client child.
#[derive(Debug, Clone)]
struct ClientArgs {
    /// The server's runtime dir.
    runtime_dir: PathBuf,
    /// Key space size.
    keys: usize,
    /// Value kind.
    kind: ValueKind,
    /// Seed of the key choice.
    seed: u64,
}

/// Benchmark settings.
#[derive(Debug, Clone)]
struct Config {
    /// Short run.
    quick: bool,
    /// The `ringbase` binary.
    server: PathBuf,
    /// Where the JSON results go.
    json: PathBuf,
    /// Pipelining window (and puts per baseline transaction).
    window: usize,
    /// Value kind.
    kind: ValueKind,
    /// Preloaded key space of the get/put rows.
    keys: usize,
    /// Client processes of the multi-client rows (this one included).
    clients: usize,
    /// Records loaded for the memory and start-up measurements.
    rss_records: usize,
    /// Warm-up per phase.
    warmup: Duration,
    /// Measured time per phase.
    secs: Duration,
    /// SQLite VFS of the baseline (`None`: SQLite's default).
    baseline_vfs: Option<String>,
}

impl Config {
    /// Defaults, shorter if `quick`.
    fn new(quick: bool) -> Config {
        let paths = DefaultPaths::new("bench-db.json");
        Config {
            quick,
            server: paths.server,
            json: paths.json,
            window: 64,
            kind: ValueKind::Json,
            keys: 100_000,
            clients: 4,
            rss_records: if quick { 100_000 } else { 1_000_000 },
            warmup: Duration::from_millis(if quick { 100 } else { 300 }),
            secs: Duration::from_millis(if quick { 400 } else { 2_000 }),
            baseline_vfs: Some(SERVER_VFS.to_string()),
        }
    }
}

/// Parses a positive count.
fn count_arg(flag: &str, v: &str) -> std::result::Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: expected a positive number, got {v:?}")),
    }
}

/// Parses a value kind name.
fn kind_arg(v: &str) -> std::result::Result<ValueKind, String> {
    match v {
        "json" => Ok(ValueKind::Json),
        "bytes" => Ok(ValueKind::Bytes),
        _ => Err(format!("--kind: expected json or bytes, got {v:?}")),
    }
}

/// Name of a value kind.
fn kind_name(k: ValueKind) -> &'static str {
    match k {
        ValueKind::Json => "json",
        ValueKind::Bytes => "bytes",
    }
}

/// Parses the command line (without the program name).
fn parse_args(args: impl IntoIterator<Item = String>) -> std::result::Result<Mode, String> {
    let mut args = Args::new(args);
    let mut quick = false;
    let mut server = None;
    let mut json = None;
    let mut window = None;
    let mut bytes = false;
    let mut keys = None;
    let mut rss_records = None;
    let mut secs = None;
    let mut baseline_vfs = None;
    let mut client_role = false;
    let mut runtime_dir = None;
    let mut kind = None;
    let mut seed = 1u64;
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--quick" => quick = true,
            "--server" => server = Some(args.path("--server")?),
            "--json" => json = Some(args.path("--json")?),
            "--window" => window = Some(count_arg("--window", &args.value("--window")?)?),
            "--bytes" => bytes = true,
            "--keys" => keys = Some(count_arg("--keys", &args.value("--keys")?)?),
            "--rss-records" => {
                rss_records = Some(count_arg("--rss-records", &args.value("--rss-records")?)?)
            }
            "--secs" => {
                let v = args.value("--secs")?;
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 600.0)
                    .ok_or_else(|| format!("--secs: expected seconds in (0, 600], got {v:?}"))?;
                secs = Some(Duration::from_secs_f64(s));
            }
            "--baseline-vfs" => baseline_vfs = Some(args.value("--baseline-vfs")?),
            "--client-role" => client_role = true,
            "--runtime-dir" => runtime_dir = Some(args.path("--runtime-dir")?),
            "--kind" => kind = Some(kind_arg(&args.value("--kind")?)?),
            "--seed" => seed = args.number("--seed")?,
            "-h" | "--help" => return Ok(Mode::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if client_role {
        return Ok(Mode::Client(ClientArgs {
            runtime_dir: runtime_dir.ok_or("--client-role needs --runtime-dir")?,
            keys: keys.ok_or("--client-role needs --keys")?,
            kind: kind.unwrap_or(ValueKind::Json),
            seed,
        }));
    }
    let mut cfg = Config::new(quick);
    cfg.server = server.unwrap_or(cfg.server);
    cfg.json = json.unwrap_or(cfg.json);
    cfg.window = window.unwrap_or(cfg.window);
    cfg.keys = keys.unwrap_or(cfg.keys);
    cfg.rss_records = rss_records.unwrap_or(cfg.rss_records);
    cfg.secs = secs.unwrap_or(cfg.secs);
    if let Some(v) = baseline_vfs {
        cfg.baseline_vfs = (v != "default").then_some(v);
    }
    if bytes {
        cfg.kind = ValueKind::Bytes;
    }
    Ok(Mode::Bench(cfg))
}

/// Runs the benchmark, or (hidden) a client child.
fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Mode::Client(args)) => {
            let who = format!("db-client {}", std::process::id());
            exit_code(&who, client_role(&args))
        }
        Ok(Mode::Bench(cfg)) => exit_code("db", run(&cfg)),
        Err(msg) => usage_error("db", &msg, USAGE),
    }
}

// ---------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------

/// The operation measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Read a random key.
    Get,
    /// Overwrite a random key (durable).
    Put,
}

impl Op {
    /// Name in the table, the JSON and the child protocol.
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
        }
    }

    /// Parses [`Op::name`].
    fn parse(s: &str) -> Option<Op> {
        match s {
            "get" => Some(Op::Get),
            "put" => Some(Op::Put),
            _ => None,
        }
    }
}

/// Name of a wait mode.
fn wait_name(w: WaitMode) -> &'static str {
    match w {
        WaitMode::BusyPoll => "busy-poll",
        WaitMode::Adaptive => "adaptive",
    }
}

/// Parses [`wait_name`].
fn parse_wait(s: &str) -> Option<WaitMode> {
    match s {
        "busy-poll" => Some(WaitMode::BusyPoll),
        "adaptive" => Some(WaitMode::Adaptive),
        _ => None,
    }
}

/// Key `i` of the get/put key space.
fn key(i: usize) -> String {
    format!("user:{i:08}")
}

/// Key `i` of the memory/start-up data set.
fn rss_key(i: usize) -> String {
    format!("rec:{i:08}")
}

/// The value written under key `i`: exactly [`VALUE_LEN`] bytes.
fn value(i: usize, kind: ValueKind) -> Vec<u8> {
    match kind {
        ValueKind::Json => {
            let mut s = format!(
                r#"{{"id":{i},"name":"user-{i:08}","score":{},"active":true,"pad":""#,
                i % 997
            );
            while s.len() < VALUE_LEN - 2 {
                s.push('x');
            }
            s.push_str("\"}");
            debug_assert_eq!(s.len(), VALUE_LEN);
            s.into_bytes()
        }
        ValueKind::Bytes => (0..VALUE_LEN)
            .map(|j| (i.wrapping_mul(31) + j * 7) as u8)
            .collect(),
    }
}

/// xorshift64*: cheap, good enough to pick keys.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n < 2^32`).
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// Keys, values and ready-made requests of the key space.
#[derive(Debug)]
struct Data {
    /// Value kind.
    kind: ValueKind,
    /// Keys.
    keys: Vec<String>,
    /// Values, by key index.
    values: Vec<Vec<u8>>,
    /// `Request::Get` of each key (for the pipelined runs).
    gets: Vec<Request>,
    /// `Request::Put` of each key with its value (for the pipelined runs).
    puts: Vec<Request>,
}

impl Data {
    /// The key space of `n` keys.
    fn new(n: usize, kind: ValueKind) -> Data {
        let keys: Vec<String> = (0..n).map(key).collect();
        let values: Vec<Vec<u8>> = (0..n).map(|i| value(i, kind)).collect();
        let gets = keys
            .iter()
            .map(|k| Request::Get { key: k.clone() })
            .collect();
        let puts = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| Request::Put {
                key: k.clone(),
                value: v.clone(),
                kind,
            })
            .collect();
        Data {
            kind,
            keys,
            values,
            gets,
            puts,
        }
    }
}

/// One client's view of the workload: the data and its own random key choice.
#[derive(Debug)]
struct Workload {
    /// The key space.
    data: Arc<Data>,
    /// Key choice.
    rng: Rng,
}

impl Workload {
    /// A random key index.
    fn pick(&mut self) -> usize {
        self.rng.below(self.data.keys.len())
    }
}

/// Something that can do the measured operations.
trait Target {
    /// One operation, waited for.
    fn one(&mut self, op: Op, w: &mut Workload) -> Result<()>;
    /// `n` operations as one unit: pipelined (send `n`, then receive `n`) for the
    /// server, one transaction of `n` for SQLite.
    fn window(&mut self, op: Op, w: &mut Workload, n: usize) -> Result<()>;
}

/// Checks a response to `op`.
fn check_response(op: Op, r: &ArchivedResponse) -> Result<()> {
    match (op, r) {
        (Op::Get, ArchivedResponse::Value(v)) => match v.as_ref() {
            Some(rec) if rec.value.len() == VALUE_LEN => Ok(()),
            Some(rec) => Err(format!("get returned {} bytes", rec.value.len()).into()),
            None => Err("get found no record (key space not loaded?)".into()),
        },
        (Op::Put, ArchivedResponse::Written(_)) => Ok(()),
        (_, ArchivedResponse::Error { code, message }) => Err(format!(
            "{} failed: error {}: {}",
            op.name(),
            code.to_native(),
            message.as_str()
        )
        .into()),
        (_, other) => Err(format!("unexpected response to {}: {other:?}", op.name()).into()),
    }
}

/// A Ringbase session.
struct Ringbase {
    /// The session.
    client: Client,
}

impl Ringbase {
    /// Connects to the bench server.
    fn connect(runtime_dir: &Path, wait: WaitMode) -> Result<Ringbase> {
        let opts = ConnectOptions::new(SERVER_NAME)
            .runtime_dir(runtime_dir)
            .wait(wait);
        Ok(Ringbase {
            client: Client::connect_with(opts)?,
        })
    }
}

impl Target for Ringbase {
    fn one(&mut self, op: Op, w: &mut Workload) -> Result<()> {
        let i = w.pick();
        let d = &*w.data;
        match op {
            Op::Get => {
                let v = self
                    .client
                    .get_view(&d.keys[i])?
                    .ok_or("get found no record (key space not loaded?)")?;
                if v.value.len() != VALUE_LEN {
                    return Err(format!("get returned {} bytes", v.value.len()).into());
                }
            }
            Op::Put => {
                self.client.put(&d.keys[i], &d.values[i], d.kind)?;
            }
        }
        Ok(())
    }

    fn window(&mut self, op: Op, w: &mut Workload, n: usize) -> Result<()> {
        for _ in 0..n {
            let i = w.pick();
            let req = match op {
                Op::Get => &w.data.gets[i],
                Op::Put => &w.data.puts[i],
            };
            self.client.send(req)?;
        }
        for _ in 0..n {
            let (_, r) = self.client.recv_view()?;
            check_response(op, r)?;
        }
        Ok(())
    }
}

/// What one client measured in one phase.
#[derive(Debug, Clone, Default)]
struct Outcome {
    /// Operations completed in the measured time.
    ops: u64,
    /// Measured time, seconds.
    secs: f64,
    /// Time of each call (sequential) or each window (pipelined), ns.
    samples: Vec<u64>,
}

impl Outcome {
    /// Operations per second.
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// As JSON (the child protocol).
    fn to_json(&self) -> Value {
        json!({ "ops": self.ops, "secs": self.secs, "samples": self.samples })
    }

    /// From [`Outcome::to_json`].
    fn from_json(v: &Value) -> Result<Outcome> {
        let bad = || "malformed client result";
        Ok(Outcome {
            ops: v["ops"].as_u64().ok_or_else(bad)?,
            secs: v["secs"].as_f64().ok_or_else(bad)?,
            samples: v["samples"]
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|s| s.as_u64().ok_or_else(bad))
                .collect::<std::result::Result<_, _>>()?,
        })
    }
}

/// One measured phase.
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// Operation.
    op: Op,
    /// Windows of `window` (true) or single calls.
    pipelined: bool,
    /// Client wait mode (Ringbase only).
    wait: WaitMode,
    /// Window size.
    window: usize,
    /// Unmeasured warm-up.
    warmup: Duration,
    /// Measured time.
    secs: Duration,
}

impl Phase {
    /// As JSON (the child protocol).
    fn to_json(self) -> Value {
        json!({
            "op": self.op.name(),
            "pipelined": self.pipelined,
            "wait": wait_name(self.wait),
            "window": self.window,
            "warmup_ns": self.warmup.as_nanos() as u64,
            "secs_ns": self.secs.as_nanos() as u64,
        })
    }

    /// From [`Phase::to_json`].
    fn from_json(v: &Value) -> Result<Phase> {
        let bad = || "malformed phase";
        Ok(Phase {
            op: v["op"].as_str().and_then(Op::parse).ok_or_else(bad)?,
            pipelined: v["pipelined"].as_bool().ok_or_else(bad)?,
            wait: v["wait"].as_str().and_then(parse_wait).ok_or_else(bad)?,
            window: v["window"].as_u64().ok_or_else(bad)? as usize,
            warmup: Duration::from_nanos(v["warmup_ns"].as_u64().ok_or_else(bad)?),
            secs: Duration::from_nanos(v["secs_ns"].as_u64().ok_or_else(bad)?),
        })
    }

    /// Longest the phase may take, connecting and warming up included.
    fn limit(&self) -> Duration {
        self.warmup + self.secs + PHASE_SLACK
    }
}

/// Runs `p` on `t`: warm-up, then calls (or windows) until the measured time is up,
/// timing each.
fn run_phase<T: Target>(t: &mut T, w: &mut Workload, p: &Phase) -> Result<Outcome> {
    let step = |t: &mut T, w: &mut Workload| -> Result<u64> {
        if p.pipelined {
            t.window(p.op, w, p.window)?;
            Ok(p.window as u64)
        } else {
            t.one(p.op, w)?;
            Ok(1)
        }
    };
    let warm_end = Instant::now() + p.warmup;
    while Instant::now() < warm_end {
        step(t, w)?;
    }
    let mut samples = Vec::with_capacity(if p.pipelined { 1 << 16 } else { 1 << 20 });
    let mut ops = 0;
    let start = Instant::now();
    let end = start + p.secs;
    let mut last = start;
    while last < end {
        let t0 = Instant::now();
        ops += step(t, w)?;
        last = Instant::now();
        samples.push((last - t0).as_nanos() as u64);
    }
    Ok(Outcome {
        ops,
        secs: (last - start).as_secs_f64(),
        samples,
    })
}

// ---------------------------------------------------------------------------------------
// Client children
// ---------------------------------------------------------------------------------------

/// A client child: reads `run {phase}` lines on stdin; for each, connects, prints
/// [`CHILD_READY`], waits for a `go` line, runs the phase and prints [`CHILD_RESULT`]
/// with the outcome. Ends at EOF (the bench is gone) or `quit`.
fn client_role(args: &ClientArgs) -> Result<()> {
    let wd = Watchdog::start()?;
    let mut w = Workload {
        data: Arc::new(Data::new(args.keys, args.kind)),
        rng: Rng::new(args.seed),
    };
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = io::stdout();
    loop {
        let Some(line) = lines.next() else {
            return Ok(());
        };
        let line = line?;
        if line == "quit" {
            return Ok(());
        }
        let spec = line
            .strip_prefix("run ")
            .ok_or_else(|| format!("unexpected command {line:?}"))?;
        let phase = Phase::from_json(&serde_json::from_str(spec)?)?;
        wd.arm(format!("client phase {}", phase.op.name()), phase.limit());
        let mut t = Ringbase::connect(&args.runtime_dir, phase.wait)?;
        writeln!(out, "{CHILD_READY}")?;
        out.flush()?;
        match lines.next() {
            Some(Ok(go)) if go == "go" => {}
            Some(Ok(other)) => return Err(format!("expected go, got {other:?}").into()),
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(()),
        }
        let outcome = run_phase(&mut t, &mut w, &phase)?;
        drop(t);
        writeln!(out, "{CHILD_RESULT}{}", outcome.to_json())?;
        out.flush()?;
        wd.disarm();
    }
}

/// The extra client processes.
struct Children {
    /// Each child and its stdout.
    procs: Vec<(ChildGuard, ChildLines)>,
}

impl Children {
    /// Starts `n` client children for the server at `runtime_dir`.
    fn spawn(n: usize, runtime_dir: &Path, keys: usize, kind: ValueKind) -> Result<Children> {
        let exe = std::env::current_exe()?;
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.arg("--client-role")
                .arg("--runtime-dir")
                .arg(runtime_dir)
                .args(["--keys", &keys.to_string()])
                .args(["--kind", kind_name(kind)])
                .args(["--seed", &(1000 + i as u64).to_string()]);
            procs.push(ChildGuard::spawn_lines(
                &format!("db-client-{i}"),
                &mut cmd,
            )?);
        }
        Ok(Children { procs })
    }

    /// Process ids.
    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(g, _)| g.pid()).collect()
    }
}

/// Runs phase `p` on this process's own session plus `children` (if any) at once, and
/// returns every client's outcome (ours first).
fn run_clients(
    runtime_dir: &Path,
    w: &mut Workload,
    p: &Phase,
    children: Option<&Children>,
) -> Result<Vec<Outcome>> {
    let procs: &[(ChildGuard, ChildLines)] = children.map_or(&[], |c| &c.procs);
    let spec = format!("run {}", p.to_json());
    for (g, _) in procs {
        g.send_line(&spec)?;
    }
    for (_, lines) in procs {
        lines.expect(CHILD_READY, CHILD_READY_TIMEOUT)?;
    }
    let mut me = Ringbase::connect(runtime_dir, p.wait)?;
    for (g, _) in procs {
        g.send_line("go")?;
    }
    let mut outcomes = vec![run_phase(&mut me, w, p)?];
    drop(me);
    for (_, lines) in procs {
        let line = lines.expect(CHILD_RESULT, p.limit())?;
        let v: Value = serde_json::from_str(&line[CHILD_RESULT.len()..])?;
        outcomes.push(Outcome::from_json(&v)?);
    }
    Ok(outcomes)
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// Merged outcomes of all clients of one phase.
#[derive(Debug, Clone, Copy)]
struct Merged {
    /// Sum over clients of their ops/s.
    rate: f64,
    /// Operations, all clients.
    ops: u64,
    /// Percentiles over all clients' samples (per call, or per window).
    latency: Summary,
}

/// Merges the outcomes of the clients of one phase.
fn merge(outcomes: Vec<Outcome>) -> Result<Merged> {
    let rate = outcomes.iter().map(Outcome::rate).sum();
    let ops = outcomes.iter().map(|o| o.ops).sum();
    let mut all: Vec<u64> = outcomes.into_iter().flat_map(|o| o.samples).collect();
    let latency = Summary::from_samples(&mut all).ok_or("no samples")?;
    Ok(Merged { rate, ops, latency })
}

/// One line of the results.
#[derive(Debug, Clone)]
struct Row {
    /// "ringbase" or the baseline.
    system: &'static str,
    /// Operation.
    op: Op,
    /// Client processes (Ringbase) or threads (baseline).
    clients: usize,
    /// Client wait mode (Ringbase only).
    wait: Option<WaitMode>,
    /// Sequential calls.
    seq: Merged,
    /// Pipelined windows (Ringbase) / transactions of `window` puts (baseline puts).
    pipelined: Option<Merged>,
    /// CPU used by other processes meanwhile.
    others_cpu: Option<OtherCpu>,
    /// Server commits and write jobs during the sequential and the pipelined phase
    /// (Ringbase puts), from `Status`.
    group: [Option<GroupCommit>; 2],
}

/// What the server's writer did during a phase.
#[derive(Debug, Clone, Copy, Default)]
struct GroupCommit {
    /// Transactions committed.
    commits: u64,
    /// Write jobs (requests) committed.
    jobs: u64,
}

impl GroupCommit {
    /// Jobs per transaction.
    fn per_commit(&self) -> f64 {
        self.jobs as f64 / self.commits.max(1) as f64
    }
}

/// The server's (commits, write jobs) counters now.
fn writer_counters(runtime_dir: &Path) -> Result<(u64, u64)> {
    let mut c = Ringbase::connect(runtime_dir, WaitMode::Adaptive)?;
    let s = c.client.status()?;
    Ok((s.commits, s.write_jobs))
}

/// Runs `p` (see [`run_clients`]) and, for puts, reads the writer's counters around it.
fn run_clients_counted(
    runtime_dir: &Path,
    w: &mut Workload,
    p: &Phase,
    children: Option<&Children>,
) -> Result<(Merged, Option<GroupCommit>)> {
    let before = (p.op == Op::Put)
        .then(|| writer_counters(runtime_dir))
        .transpose()?;
    let merged = merge(run_clients(runtime_dir, w, p, children)?)?;
    let group = match before {
        Some((c0, j0)) => {
            let (c1, j1) = writer_counters(runtime_dir)?;
            Some(GroupCommit {
                commits: c1.saturating_sub(c0),
                jobs: j1.saturating_sub(j0),
            })
        }
        None => None,
    };
    Ok((merged, group))
}

/// Label of the Ringbase rows.
const RINGBASE: &str = "ringbase";
/// Label of the baseline rows.
const SQLITE: &str = "sqlite in-process";

/// Memory and start-up measurements.
#[derive(Debug, Clone, Default)]
struct RssReport {
    /// Records loaded.
    records: usize,
    /// Load time, seconds.
    load_secs: f64,
    /// Server memory after the load.
    after_load: ProcMemory,
    /// Pipelined gets of every record, per second.
    read_rate: f64,
    /// Server memory after reading every record once.
    after_read: ProcMemory,
    /// Database size as the server reports it (database + WAL), bytes.
    db_size: u64,
    /// Everything in the data dir while serving, bytes.
    dir_size_serving: u64,
    /// Everything in the data dir after a clean stop, bytes.
    dir_size_stopped: u64,
    /// Time from SIGTERM to exit (`None`: the stop failed, see the problems).
    stop_secs: Option<f64>,
    /// Per restart: (spawn to readiness line, spawn to first get, memory after it).
    restarts: Vec<(f64, f64, ProcMemory)>,
}

impl RssReport {
    /// The larger RSS of the two readings, bytes.
    fn max_rss_bytes(&self) -> f64 {
        (self.after_load.rss_kib.max(self.after_read.rss_kib) * 1024) as f64
    }

    /// The slowest restart, spawn to first get, seconds.
    fn worst_start(&self) -> f64 {
        self.restarts.iter().map(|r| r.1).fold(0.0, f64::max)
    }
}

/// One goal checked against the measurements.
#[derive(Debug, Clone)]
struct Goal {
    /// What is checked.
    what: String,
    /// Measured value (in the unit of `shown`).
    value: f64,
    /// How to show the value.
    shown: String,
    /// Target.
    target: f64,
    /// Met?
    pass: bool,
}

/// All results, ready to print.
#[derive(Debug)]
struct Report {
    /// Settings.
    cfg: Config,
    /// Results, in table order.
    rows: Vec<Row>,
    /// Memory and start-up.
    rss: RssReport,
    /// Server misbehaviour seen on the way (e.g. a crash on SIGTERM).
    problems: Vec<String>,
    /// CPUs the bench could use.
    cpus: usize,
    /// Cost of one clock read, ns.
    clock_ns: f64,
}

// ---------------------------------------------------------------------------------------
// Ringbase rows
// ---------------------------------------------------------------------------------------

/// Starts `ringbase serve` on `data_dir` with runtime dir `runtime_dir`; returns the
/// guard and the time from spawn to the readiness line.
fn start_server(cfg: &Config, runtime_dir: &Path, data_dir: &Path) -> Result<(ChildGuard, f64)> {
    let t0 = Instant::now();
    let (server, line) = ChildGuard::spawn_ready(
        "ringbase",
        Command::new(&cfg.server)
            .args(["serve", "--name", SERVER_NAME, "--data-dir"])
            .arg(data_dir)
            .env("RINGBASE_RUNTIME_DIR", runtime_dir),
        SERVER_READY,
        READY_TIMEOUT,
    )
    .map_err(|e| format!("starting {}: {e}", cfg.server.display()))?;
    let ready = t0.elapsed().as_secs_f64();
    eprintln!("{line} (pid {})", server.pid());
    Ok((server, ready))
}

/// Stops a server cleanly (SIGTERM, at most [`STOP_TIMEOUT`]); returns how long it
/// took to exit, or what went wrong (a finding to report: the bench goes on).
fn stop_server(server: &ChildGuard, what: &str) -> std::result::Result<f64, String> {
    let r = match server.terminate(STOP_TIMEOUT) {
        Ok(Some((status, took))) if status.success() => return Ok(took.as_secs_f64()),
        Ok(Some((status, _))) => format!("{what}: the server exited with {status} on SIGTERM"),
        Ok(None) => {
            format!("{what}: the server did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)")
        }
        Err(e) => format!("{what}: stopping the server: {e}"),
    };
    eprintln!("PROBLEM: {r}");
    Err(r)
}

/// Writes `n` records (`key_of(i)`, `value(i)`) through pipelined `Batch` requests of
/// [`LOAD_BATCH`] puts, [`LOAD_WINDOW`] in flight. Returns the time taken, seconds.
fn load(
    client: &mut Client,
    n: usize,
    kind: ValueKind,
    key_of: impl Fn(usize) -> String,
) -> Result<f64> {
    let t0 = Instant::now();
    let mut next = 0;
    while next < n {
        let mut sent = 0;
        while sent < LOAD_WINDOW && next < n {
            let end = (next + LOAD_BATCH).min(n);
            let ops = (next..end)
                .map(|i| BatchOp::Put {
                    key: key_of(i),
                    value: value(i, kind),
                    kind,
                })
                .collect();
            client.send(&Request::Batch { ops })?;
            next = end;
            sent += 1;
        }
        for _ in 0..sent {
            let (_, r) = client.recv_view()?;
            match r {
                ArchivedResponse::Batch(results) if !results.is_empty() => {}
                other => {
                    return Err(format!("unexpected response to a load batch: {other:?}").into())
                }
            }
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The Ringbase get/put rows: a server with `cfg.keys` preloaded records, then every
/// (op, clients, wait mode) combination, sequential and pipelined.
fn ringbase_rows(
    cfg: &Config,
    wd: &Watchdog,
    tmp: &Path,
    problems: &mut Vec<String>,
) -> Result<Vec<Row>> {
    let runtime_dir = tmp.join("run");
    let data_dir = tmp.join("data");
    let (server, _) = start_server(cfg, &runtime_dir, &data_dir)?;

    wd.arm("preloading the key space", LOAD_LIMIT);
    let mut c = Ringbase::connect(&runtime_dir, WaitMode::BusyPoll)?;
    let secs = load(&mut c.client, cfg.keys, cfg.kind, key)?;
    let n = c.client.count(None)?;
    if n != cfg.keys as u64 {
        return Err(format!("preloaded {} records, the server counts {n}", cfg.keys).into());
    }
    drop(c);
    eprintln!(
        "preloaded {} records in {secs:.2} s ({} records/s)",
        cfg.keys,
        rate(cfg.keys as f64 / secs)
    );

    wd.arm("starting client children", CHILD_READY_TIMEOUT);
    let children = Children::spawn(cfg.clients - 1, &runtime_dir, cfg.keys, cfg.kind)?;
    let data = Arc::new(Data::new(cfg.keys, cfg.kind));
    let mut w = Workload {
        data,
        rng: Rng::new(7),
    };

    let mut rows = Vec::new();
    for op in [Op::Get, Op::Put] {
        for clients in [1, cfg.clients] {
            for wait in [WaitMode::BusyPoll, WaitMode::Adaptive] {
                let kids = (clients > 1).then_some(&children);
                let mut pids = vec![std::process::id(), server.pid()];
                if let Some(k) = kids {
                    pids.extend(k.pids());
                }
                let meter = CpuMeter::start(&pids);
                let mut phase = Phase {
                    op,
                    pipelined: false,
                    wait,
                    window: cfg.window,
                    warmup: cfg.warmup,
                    secs: cfg.secs,
                };
                let what = format!("{} x{clients} {}", op.name(), wait_name(wait));
                wd.arm(format!("{what} sequential"), phase.limit());
                let (seq, g_seq) = run_clients_counted(&runtime_dir, &mut w, &phase, kids)?;
                phase.pipelined = true;
                wd.arm(format!("{what} pipelined"), phase.limit());
                let (pipe, g_pipe) = run_clients_counted(&runtime_dir, &mut w, &phase, kids)?;
                wd.disarm();
                eprintln!(
                    "  done: {what}: p50 {} µs, {} ops/s sequential, {} ops/s pipelined",
                    us(seq.latency.p50_ns),
                    rate(seq.rate),
                    rate(pipe.rate)
                );
                rows.push(Row {
                    system: RINGBASE,
                    op,
                    clients,
                    wait: Some(wait),
                    seq,
                    pipelined: Some(pipe),
                    others_cpu: meter.and_then(|m| m.others()),
                    group: [g_seq, g_pipe],
                });
            }
        }
    }
    for (g, _) in &children.procs {
        let _ = g.send_line("quit");
    }
    drop(children);
    wd.arm("stopping the server", STOP_TIMEOUT + PHASE_SLACK);
    if let Err(p) = stop_server(&server, "stop after the get/put rows") {
        problems.push(p);
    }
    wd.disarm();
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// SQLite baseline
// ---------------------------------------------------------------------------------------

/// Columns read by a get, as the server's reader reads them.
const SQL_GET: &str = "SELECT key, value, kind, hlc, replica, seq, updated_at FROM records \
                       WHERE key = ?1 AND deleted = 0";
/// A put.
const SQL_PUT: &str = "INSERT OR REPLACE INTO records(key, value, kind, hlc, replica, seq, \
                       updated_at, deleted) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)";

/// Opens (creating) the baseline database with the server's pragmas and table, with
/// VFS `vfs` (`None`: SQLite's default).
fn sqlite_open(path: &Path, vfs: Option<&str>) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match vfs {
        Some(v) => Connection::open_with_flags_and_vfs(path, flags, v)?,
        None => Connection::open_with_flags(path, flags)?,
    };
    conn.busy_timeout(Duration::from_secs(5))?;
    // The server's page size for new databases (server/src/store/schema.rs).
    conn.pragma_update(None, "page_size", 1024)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("baseline: could not enable WAL (got {mode})").into());
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -64_000)?;
    let _: Option<i64> = conn
        .query_row("PRAGMA mmap_size=268435456", [], |r| r.get(0))
        .optional()?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS records(
            key        TEXT    NOT NULL PRIMARY KEY,
            value      BLOB    NOT NULL,
            kind       INTEGER NOT NULL,
            hlc        INTEGER NOT NULL,
            replica    BLOB    NOT NULL,
            seq        INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            deleted    INTEGER NOT NULL DEFAULT 0
        ) STRICT, WITHOUT ROWID;",
    )?;
    Ok(conn)
}

/// A record as the server's reader materialises it.
type OwnedRecord = (String, Vec<u8>, i64, i64, Vec<u8>, i64, i64);

/// A baseline connection.
struct Sqlite {
    /// The connection.
    conn: Connection,
    /// Sequence number of the next put (stands in for the server's version).
    seq: i64,
}

impl Sqlite {
    /// One put, inside whatever transaction is open.
    fn put(&mut self, w: &mut Workload) -> Result<()> {
        let i = w.pick();
        let d = &*w.data;
        self.seq += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as i64);
        self.conn.prepare_cached(SQL_PUT)?.execute(params![
            d.keys[i],
            d.values[i],
            d.kind as u8,
            now << 16,
            &[7u8; 16][..],
            self.seq,
            now,
        ])?;
        Ok(())
    }
}

impl Target for Sqlite {
    fn one(&mut self, op: Op, w: &mut Workload) -> Result<()> {
        match op {
            Op::Get => {
                let i = w.pick();
                let rec: Option<OwnedRecord> = self
                    .conn
                    .prepare_cached(SQL_GET)?
                    .query_row([&w.data.keys[i]], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    })
                    .optional()?;
                let rec = rec.ok_or("baseline get found no record")?;
                if rec.1.len() != VALUE_LEN {
                    return Err("baseline get: wrong value size".into());
                }
                Ok(())
            }
            Op::Put => self.put(w),
        }
    }

    fn window(&mut self, op: Op, w: &mut Workload, n: usize) -> Result<()> {
        if op != Op::Put {
            return Err("the baseline batches puts only".into());
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        for _ in 0..n {
            if let Err(e) = self.put(w) {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }
}

/// Runs `p` on `threads` baseline connections at once (each its own thread and
/// connection to `db`, with VFS `vfs`); returns their outcomes.
fn sqlite_threads(
    db: &Path,
    vfs: Option<&str>,
    data: &Arc<Data>,
    p: &Phase,
    threads: usize,
) -> Result<Vec<Outcome>> {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || -> std::result::Result<Outcome, String> {
                    let conn = sqlite_open(db, vfs).map_err(|e| e.to_string());
                    // Everyone passes the barrier, even a thread that failed to open.
                    barrier.wait();
                    let mut t = Sqlite {
                        conn: conn?,
                        seq: (i as i64) << 40,
                    };
                    let mut w = Workload {
                        data: Arc::clone(data),
                        rng: Rng::new(100 + i as u64),
                    };
                    run_phase(&mut t, &mut w, p).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a baseline thread panicked".to_string())?
                    .map_err(|e| format!("baseline: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, String>>()
    })
    .map_err(Into::into)
}

/// The baseline rows: get and put (and puts batched per transaction) with 1 and
/// `cfg.clients` threads.
fn sqlite_rows(cfg: &Config, wd: &Watchdog, tmp: &Path) -> Result<Vec<Row>> {
    let dir = tmp.join("sqlite");
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("baseline.db");
    let data = Arc::new(Data::new(cfg.keys, cfg.kind));

    wd.arm("preloading the baseline", LOAD_LIMIT);
    {
        let conn = sqlite_open(&db, cfg.baseline_vfs.as_deref())?;
        for chunk in (0..cfg.keys).collect::<Vec<_>>().chunks(BASELINE_LOAD_TXN) {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for &i in chunk {
                conn.prepare_cached(SQL_PUT)?.execute(params![
                    data.keys[i],
                    data.values[i],
                    cfg.kind as u8,
                    0i64,
                    &[7u8; 16][..],
                    i as i64,
                    0i64,
                ])?;
            }
            conn.execute_batch("COMMIT")?;
        }
    }

    let vfs = cfg.baseline_vfs.as_deref();
    let me = [std::process::id()];
    let mut rows = Vec::new();
    for op in [Op::Get, Op::Put] {
        for threads in [1, cfg.clients] {
            let meter = CpuMeter::start(&me);
            let mut phase = Phase {
                op,
                pipelined: false,
                wait: WaitMode::BusyPoll,
                window: cfg.window,
                warmup: cfg.warmup,
                secs: cfg.secs,
            };
            let what = format!("baseline {} x{threads}", op.name());
            wd.arm(what.clone(), phase.limit());
            let seq = merge(sqlite_threads(&db, vfs, &data, &phase, threads)?)?;
            let pipelined = if op == Op::Put {
                phase.pipelined = true;
                wd.arm(format!("{what} batched"), phase.limit());
                Some(merge(sqlite_threads(&db, vfs, &data, &phase, threads)?)?)
            } else {
                None
            };
            wd.disarm();
            eprintln!(
                "  done: {what}: p50 {} µs, {} ops/s{}",
                us(seq.latency.p50_ns),
                rate(seq.rate),
                pipelined.map_or(String::new(), |p| format!(
                    ", {} ops/s batched {}/txn",
                    rate(p.rate),
                    cfg.window
                ))
            );
            rows.push(Row {
                system: SQLITE,
                op,
                clients: threads,
                wait: None,
                seq,
                pipelined,
                others_cpu: meter.and_then(|m| m.others()),
                group: [None, None],
            });
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Memory and start-up
// ---------------------------------------------------------------------------------------

/// Pipelined gets of every record `0..n` (keys `rss_key`), in order; returns gets/s.
fn read_all(client: &mut Client, n: usize, window: usize) -> Result<f64> {
    let t0 = Instant::now();
    let mut next = 0;
    while next < n {
        let end = (next + window).min(n);
        for i in next..end {
            client.send(&Request::Get { key: rss_key(i) })?;
        }
        for _ in next..end {
            let (_, r) = client.recv_view()?;
            check_response(Op::Get, r)?;
        }
        next = end;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Reads the memory of `pid`.
fn memory(pid: u32) -> Result<ProcMemory> {
    Ok(proc_memory(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status"))?)
}

/// Loads `cfg.rss_records` records into a fresh server, reads its memory, stops it and
/// measures [`RESTARTS`] restarts.
fn rss_and_startup(
    cfg: &Config,
    wd: &Watchdog,
    tmp: &Path,
    problems: &mut Vec<String>,
) -> Result<RssReport> {
    let runtime_dir = tmp.join("run-rss");
    let data_dir = tmp.join("data-rss");
    let n = cfg.rss_records;
    let mut rep = RssReport {
        records: n,
        ..RssReport::default()
    };

    let (server, _) = start_server(cfg, &runtime_dir, &data_dir)?;
    wd.arm(format!("loading {n} records"), LOAD_LIMIT);
    let mut c = Ringbase::connect(&runtime_dir, WaitMode::BusyPoll)?;
    rep.load_secs = load(&mut c.client, n, cfg.kind, rss_key)?;
    let count = c.client.count(None)?;
    if count != n as u64 {
        return Err(format!("loaded {n} records, the server counts {count}").into());
    }
    eprintln!(
        "loaded {n} records in {:.2} s ({} records/s)",
        rep.load_secs,
        rate(n as f64 / rep.load_secs)
    );
    rep.after_load = memory(server.pid())?;
    wd.arm(format!("reading {n} records"), LOAD_LIMIT);
    rep.read_rate = read_all(&mut c.client, n, cfg.window)?;
    rep.after_read = memory(server.pid())?;
    rep.db_size = c.client.status()?.db_size_bytes;
    rep.dir_size_serving = dir_size(&data_dir)?;
    drop(c);

    wd.arm("stopping the server", STOP_TIMEOUT + PHASE_SLACK);
    rep.stop_secs = stop_server(&server, &format!("stop after loading {n} records"))
        .map_err(|p| problems.push(p))
        .ok();
    drop(server);
    rep.dir_size_stopped = dir_size(&data_dir)?;

    let probe = rss_key(n / 2);
    for i in 0..RESTARTS {
        wd.arm(format!("restart {}", i + 1), READY_TIMEOUT + PHASE_SLACK);
        let t0 = Instant::now();
        let (server, ready) = start_server(cfg, &runtime_dir, &data_dir)?;
        let mut c = Ringbase::connect(&runtime_dir, WaitMode::BusyPoll)?;
        let found = c.client.get_view(&probe)?.map(|v| v.value.len());
        let first_get = t0.elapsed().as_secs_f64();
        if found != Some(VALUE_LEN) {
            return Err(format!("after restart, {probe} reads as {found:?}").into());
        }
        let mem = memory(server.pid())?;
        drop(c);
        eprintln!(
            "restart {}: ready line after {:.1} ms, first get after {:.1} ms",
            i + 1,
            ready * 1e3,
            first_get * 1e3
        );
        rep.restarts.push((ready, first_get, mem));
        if let Err(p) = stop_server(&server, &format!("stop after restart {}", i + 1)) {
            problems.push(p);
        }
    }
    wd.disarm();
    Ok(rep)
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

impl Report {
    /// The Ringbase row of `op` with `clients` clients in `wait` mode.
    fn ringbase(&self, op: Op, clients: usize, wait: WaitMode) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.system == RINGBASE && r.op == op && r.clients == clients && r.wait == Some(wait)
        })
    }

    /// Every goal, checked.
    fn goals(&self) -> Vec<Goal> {
        let mut goals = Vec::new();
        let busy = WaitMode::BusyPoll;
        if let Some(r) = self.ringbase(Op::Get, 1, busy) {
            let p50 = r.seq.latency.p50_ns as f64 / 1e3;
            goals.push(Goal {
                what: format!("get RTT p50 ≤ {GOAL_GET_P50_US} µs (busy-poll, 1 client)"),
                value: p50,
                shown: format!("{p50:.2} µs"),
                target: GOAL_GET_P50_US,
                pass: p50 <= GOAL_GET_P50_US,
            });
            if let Some(p) = r.pipelined {
                goals.push(Goal {
                    what: format!(
                        "pipelined gets ≥ {} /s on one session (busy-poll, window {})",
                        rate(GOAL_PIPELINED_GETS),
                        self.cfg.window
                    ),
                    value: p.rate,
                    shown: format!("{} /s", rate(p.rate)),
                    target: GOAL_PIPELINED_GETS,
                    pass: p.rate >= GOAL_PIPELINED_GETS,
                });
            }
        }
        // The put throughput goal is the server's: durable puts per second from clients
        // that pipeline, with the client's default (adaptive) wait mode. The issue puts
        // "on one session" on the get goal and not on this one; the one-session and
        // busy-poll figures are shown next to it.
        let put_rate = |clients, wait| {
            self.ringbase(Op::Put, clients, wait)
                .and_then(|r| r.pipelined)
                .map(|p| p.rate)
        };
        if let Some(all) = put_rate(self.cfg.clients, WaitMode::Adaptive) {
            let others: Vec<String> = [
                (1, busy, "one session busy-poll"),
                (1, WaitMode::Adaptive, "one session adaptive"),
                (self.cfg.clients, busy, "busy-poll clients"),
            ]
            .into_iter()
            .filter_map(|(c, w, name)| put_rate(c, w).map(|r| format!("{name} {} /s", rate(r))))
            .collect();
            goals.push(Goal {
                what: format!(
                    "durable pipelined puts ≥ {} /s (server throughput: {} client processes, \
                     default adaptive wait, window {}; also {})",
                    rate(GOAL_PIPELINED_PUTS),
                    self.cfg.clients,
                    self.cfg.window,
                    others.join(", ")
                ),
                value: all,
                shown: format!("{} /s", rate(all)),
                target: GOAL_PIPELINED_PUTS,
                pass: all >= GOAL_PIPELINED_PUTS,
            });
        }
        if let Some(r) = self.ringbase(Op::Put, 1, busy) {
            let p50 = r.seq.latency.p50_ns as f64 / 1e3;
            goals.push(Goal {
                what: format!("single put RTT p50 ≤ {GOAL_PUT_P50_US} µs (busy-poll, 1 client)"),
                value: p50,
                shown: format!("{p50:.2} µs"),
                target: GOAL_PUT_P50_US,
                pass: p50 <= GOAL_PUT_P50_US,
            });
        }
        let scale = if self.rss.records == 1_000_000 {
            String::new()
        } else {
            format!(
                " [measured with {} records; the goal is for 1M]",
                rate(self.rss.records as f64)
            )
        };
        let rss = self.rss.max_rss_bytes();
        goals.push(Goal {
            what: format!(
                "server RSS holding the records ≤ 400 MB (larger of after-load and \
                 after-reading-all){scale}"
            ),
            value: rss,
            shown: format!("{:.1} MB", rss / 1e6),
            target: GOAL_RSS_BYTES,
            pass: rss <= GOAL_RSS_BYTES,
        });
        if !self.rss.restarts.is_empty() {
            let worst = self.rss.worst_start();
            goals.push(Goal {
                what: format!(
                    "start to ready ≤ {GOAL_START_SECS} s (spawn to first get, worst of \
                     {} restarts){scale}",
                    self.rss.restarts.len()
                ),
                value: worst,
                shown: format!("{:.1} ms", worst * 1e3),
                target: GOAL_START_SECS,
                pass: worst <= GOAL_START_SECS,
            });
        }
        goals
    }

    /// Tables and goals as Markdown.
    fn markdown(&self) -> String {
        let kind = match self.cfg.kind {
            ValueKind::Json => "JSON values of exactly 100 bytes (validated by the server)",
            ValueKind::Bytes => "raw-bytes values of 100 bytes",
        };
        let mut s = format!(
            "Gets and puts, {kind}, uniformly random keys over {} preloaded records; \
             puts acknowledged when committed (WAL, synchronous=NORMAL).\n\n",
            rate(self.cfg.keys as f64)
        );
        s += "| system | op | clients | wait | p50 µs | p99 µs | p99.9 µs | mean µs | \
              sequential ops/s | pipelined ops/s |\n";
        s += "|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n";
        for r in &self.rows {
            let l = &r.seq.latency;
            let clients = if r.system == SQLITE {
                format!("{} thr", r.clients)
            } else {
                format!("{} proc", r.clients)
            };
            let pipe = match (r.pipelined, r.system) {
                (Some(p), RINGBASE) => rate(p.rate),
                (Some(p), _) => format!("{} ({}/txn)", rate(p.rate), self.cfg.window),
                (None, _) => "—".into(),
            };
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |\n",
                r.system,
                r.op.name(),
                clients,
                r.wait.map_or("—", wait_name),
                us(l.p50_ns),
                us(l.p99_ns),
                us(l.p999_ns),
                l.mean_ns / 1e3,
                rate(r.seq.rate),
                pipe,
            );
        }
        s += &format!(
            "\nEach phase: {:.1} s warm-up, then {:.1} s measured; latency = every sequential \
             call timed (each sample includes one Instant::now(), ≈ {:.0} ns); throughput = \
             sum over clients of ops/s. Pipelined = send {w} requests, then receive {w} \
             responses, repeated. Multi-client ringbase rows: this process + {} child \
             processes, one session each; sqlite rows: threads of this process, one \
             connection each, SQLite VFS {}; its pipelined column is {w} puts per \
             transaction. Gets read zero-copy (get_view/recv_view). {} CPUs.\n\n",
            self.cfg.warmup.as_secs_f64(),
            self.cfg.secs.as_secs_f64(),
            self.clock_ns,
            self.cfg.clients - 1,
            self.cfg.baseline_vfs.as_deref().unwrap_or("default"),
            self.cpus,
            w = self.cfg.window,
        );
        let mut disturbed = false;
        for r in &self.rows {
            if let Some(c) = r.others_cpu.filter(OtherCpu::disturbed).map(|o| o.cores) {
                disturbed = true;
                s += &format!(
                    "DISTURBED: other processes kept {c:.2} CPUs busy during {} / {} / {} \
                     clients / {}: these numbers are not trustworthy.\n",
                    r.system,
                    r.op.name(),
                    r.clients,
                    r.wait.map_or("—", wait_name)
                );
            }
        }
        if disturbed {
            s += "\n";
        }

        let groups: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.group.iter().any(Option::is_some))
            .map(|r| {
                let g = |i: usize| {
                    r.group[i].map_or("—".into(), |g: GroupCommit| {
                        format!("{:.1}", g.per_commit())
                    })
                };
                format!(
                    "{} x{} {}: {} sequential, {} pipelined",
                    r.op.name(),
                    r.clients,
                    r.wait.map_or("—", wait_name),
                    g(0),
                    g(1)
                )
            })
            .collect();
        if !groups.is_empty() {
            s += &format!(
                "Group commit (server write jobs per SQLite transaction, from Status): {}.\n\n",
                groups.join("; ")
            );
        }
        if !self.problems.is_empty() {
            s += "Server problems seen during the run:\n";
            for p in &self.problems {
                s += &format!("- {p}\n");
            }
            s += "\n";
        }

        let rs = &self.rss;
        let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        s += &format!(
            "Server memory holding {} records of 100 bytes (loaded in {:.2} s = {} records/s \
             via pipelined batches of {LOAD_BATCH}; read back at {} gets/s):\n\n",
            rate(rs.records as f64),
            rs.load_secs,
            rate(rs.records as f64 / rs.load_secs.max(1e-9)),
            rate(rs.read_rate),
        );
        s += "| when | VmRSS MiB | VmHWM MiB | RssAnon MiB | RssFile MiB | RssShmem MiB |\n";
        s += "|---|---:|---:|---:|---:|---:|\n";
        let mut mem_rows = vec![
            ("after load".to_string(), rs.after_load),
            ("after reading every record".to_string(), rs.after_read),
        ];
        for (i, r) in rs.restarts.iter().enumerate() {
            mem_rows.push((format!("restart {} after first get", i + 1), r.2));
        }
        for (what, m) in mem_rows {
            s += &format!(
                "| {what} | {} | {} | {} | {} | {} |\n",
                mib(m.rss_kib),
                mib(m.hwm_kib),
                mib(m.anon_kib),
                mib(m.file_kib),
                mib(m.shmem_kib)
            );
        }
        s += &format!(
            "\nOn disk: {:.1} MB while serving (server's db+WAL figure: {:.1} MB), {:.1} MB \
             after the stop. SIGTERM to exit: {}.\n\n",
            rs.dir_size_serving as f64 / 1e6,
            rs.db_size as f64 / 1e6,
            rs.dir_size_stopped as f64 / 1e6,
            rs.stop_secs
                .map_or("failed (see problems)".into(), |s| format!(
                    "{:.0} ms",
                    s * 1e3
                ))
        );
        s += "| restart | spawn → ready line ms | spawn → first get ms |\n|---|---:|---:|\n";
        for (i, r) in rs.restarts.iter().enumerate() {
            s += &format!("| {} | {:.1} | {:.1} |\n", i + 1, r.0 * 1e3, r.1 * 1e3);
        }
        s += "\n(Restarts read a database in the OS page cache: a warm start.)\n\nGoals:\n";
        for g in self.goals() {
            s += &format!(
                "- [{}] {}: {}\n",
                if g.pass { "PASS" } else { "FAIL" },
                g.what,
                g.shown
            );
        }
        s
    }

    /// The results as JSON.
    fn json(&self) -> Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "system": r.system,
                    "op": r.op.name(),
                    "clients": r.clients,
                    "wait": r.wait.map(wait_name),
                    "sequential": {
                        "ops_per_s": r.seq.rate,
                        "ops": r.seq.ops,
                        "rtt": r.seq.latency.to_json(),
                    },
                    "pipelined": r.pipelined.map(|p| json!({
                        "ops_per_s": p.rate,
                        "ops": p.ops,
                        "window_rtt": p.latency.to_json(),
                    })),
                    "others_cpu_cores": r.others_cpu.map(|o| o.cores),
                    "others_cpu_ms": r.others_cpu.map(|o| o.cpu_time.as_secs_f64() * 1e3),
                    "group_commit": r.group.map(|g| g.map(|g| json!({
                        "commits": g.commits,
                        "jobs": g.jobs,
                        "jobs_per_commit": g.per_commit(),
                    }))),
                })
            })
            .collect();
        let mem = |m: &ProcMemory| {
            json!({
                "vm_rss_kib": m.rss_kib,
                "vm_hwm_kib": m.hwm_kib,
                "rss_anon_kib": m.anon_kib,
                "rss_file_kib": m.file_kib,
                "rss_shmem_kib": m.shmem_kib,
            })
        };
        let rs = &self.rss;
        let restarts: Vec<_> = rs
            .restarts
            .iter()
            .map(|r| {
                json!({
                    "spawn_to_ready_line_ms": r.0 * 1e3,
                    "spawn_to_first_get_ms": r.1 * 1e3,
                    "memory": mem(&r.2),
                })
            })
            .collect();
        let goals: Vec<_> = self
            .goals()
            .into_iter()
            .map(
                |g| json!({ "goal": g.what, "value": g.value, "target": g.target, "pass": g.pass }),
            )
            .collect();
        json!({
            "bench": "db",
            "quick": self.cfg.quick,
            "config": {
                "value_bytes": VALUE_LEN,
                "value_kind": kind_name(self.cfg.kind),
                "keys": self.cfg.keys,
                "window": self.cfg.window,
                "clients": self.cfg.clients,
                "warmup_s": self.cfg.warmup.as_secs_f64(),
                "measured_s": self.cfg.secs.as_secs_f64(),
                "baseline_vfs": self.cfg.baseline_vfs.as_deref().unwrap_or("default"),
                "server": self.cfg.server.display().to_string(),
            },
            "machine": { "cpus": self.cpus, "clock_read_ns": self.clock_ns },
            "rows": rows,
            "memory_and_startup": {
                "records": rs.records,
                "load_s": rs.load_secs,
                "read_all_gets_per_s": rs.read_rate,
                "after_load": mem(&rs.after_load),
                "after_read_all": mem(&rs.after_read),
                "db_size_bytes": rs.db_size,
                "data_dir_bytes_serving": rs.dir_size_serving,
                "data_dir_bytes_stopped": rs.dir_size_stopped,
                "sigterm_to_exit_ms": rs.stop_secs.map(|s| s * 1e3),
                "restarts": restarts,
            },
            "goals": goals,
            "problems": self.problems,
        })
    }
}

/// Runs the benchmark.
fn run(cfg: &Config) -> Result<()> {
    check_server(&cfg.server)?;
    let wd = Watchdog::start()?;
    // Dropped last: the children are killed before their files are removed.
    let tmp = TempDir::new("ringbase-bench-db")?;
    let cpus = allowed_cpus()?;
    let clock_ns = clock_read_ns();
    eprintln!(
        "db bench{}: CPUs {cpus:?}, Instant::now() ≈ {clock_ns:.0} ns, {} keys, {} values, \
         window {}, {} clients",
        if cfg.quick { " (quick)" } else { "" },
        cfg.keys,
        kind_name(cfg.kind),
        cfg.window,
        cfg.clients
    );

    let mut problems = Vec::new();
    let mut rows = ringbase_rows(cfg, &wd, tmp.path(), &mut problems)?;
    // Free the disk and page cache of the first server before the baseline.
    let _ = std::fs::remove_dir_all(tmp.path().join("data"));
    rows.extend(sqlite_rows(cfg, &wd, tmp.path())?);
    let _ = std::fs::remove_dir_all(tmp.path().join("sqlite"));
    let rss = rss_and_startup(cfg, &wd, tmp.path(), &mut problems)?;
    wd.disarm();

    let report = Report {
        cfg: cfg.clone(),
        rows,
        rss,
        problems,
        cpus: cpus.len(),
        clock_ns,
    };
    println!("{}", report.markdown());
    write_json(&cfg.json, &report.json())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags() {
        let Ok(Mode::Bench(c)) = parse_args(args(&["--quick", "--window", "8", "--bytes"])) else {
            panic!("expected a bench config")
        };
        assert!(c.quick);
        assert_eq!(c.window, 8);
        assert_eq!(c.kind, ValueKind::Bytes);
        assert_eq!(c.rss_records, 100_000);
        assert_eq!(c.baseline_vfs.as_deref(), Some(SERVER_VFS));
        let Ok(Mode::Bench(c)) = parse_args(args(&["--baseline-vfs", "default"])) else {
            panic!("expected a bench config")
        };
        assert_eq!(c.baseline_vfs, None);
        let Ok(Mode::Bench(c)) = parse_args(args(&["--secs", "0.5", "--rss-records", "10"])) else {
            panic!("expected a bench config")
        };
        assert_eq!(c.secs, Duration::from_millis(500));
        assert_eq!(c.rss_records, 10);
        assert!(matches!(
            parse_args(args(&[
                "--client-role",
                "--runtime-dir",
                "/r",
                "--keys",
                "5"
            ])),
            Ok(Mode::Client(ClientArgs {
                keys: 5,
                kind: ValueKind::Json,
                ..
            }))
        ));
        assert!(parse_args(args(&["--client-role", "--keys", "5"])).is_err());
        assert!(parse_args(args(&["--window", "0"])).is_err());
        assert!(parse_args(args(&["--secs", "-1"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
    }

    #[test]
    fn values_are_exactly_100_bytes() {
        for i in [0, 7, 99_999, 1_000_000, usize::MAX / 2] {
            let v = value(i, ValueKind::Json);
            assert_eq!(v.len(), VALUE_LEN, "{}", String::from_utf8_lossy(&v));
            serde_json::from_slice::<Value>(&v).unwrap();
            assert_eq!(value(i, ValueKind::Bytes).len(), VALUE_LEN);
        }
    }

    #[test]
    fn rng_is_in_range_and_spread() {
        let mut r = Rng::new(3);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[r.below(10)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn phase_and_outcome_round_trip() {
        let p = Phase {
            op: Op::Put,
            pipelined: true,
            wait: WaitMode::Adaptive,
            window: 64,
            warmup: Duration::from_millis(100),
            secs: Duration::from_millis(400),
        };
        let q = Phase::from_json(&p.to_json()).unwrap();
        assert_eq!(
            (q.op, q.pipelined, q.wait, q.window),
            (p.op, true, p.wait, 64)
        );
        assert_eq!((q.warmup, q.secs), (p.warmup, p.secs));
        let o = Outcome {
            ops: 3,
            secs: 1.5,
            samples: vec![1, 2, 3],
        };
        let back = Outcome::from_json(&o.to_json()).unwrap();
        assert_eq!((back.ops, back.secs, back.samples), (3, 1.5, vec![1, 2, 3]));
        let m = merge(vec![o.clone(), o]).unwrap();
        assert_eq!((m.ops, m.rate, m.latency.samples), (6, 4.0, 6));
    }

    #[test]
    fn baseline_get_and_put() {
        let dir = TempDir::new("rb-db-test").unwrap();
        let db = dir.path().join("t.db");
        let data = Arc::new(Data::new(100, ValueKind::Json));
        let mut t = Sqlite {
            conn: sqlite_open(&db, Some(SERVER_VFS)).unwrap(),
            seq: 0,
        };
        let mut w = Workload {
            data: Arc::clone(&data),
            rng: Rng::new(1),
        };
        for _ in 0..200 {
            t.one(Op::Put, &mut w).unwrap();
        }
        t.window(Op::Put, &mut w, 64).unwrap();
        // Fill every key, then every get must find its record.
        t.conn.execute_batch("BEGIN").unwrap();
        for i in 0..100 {
            t.conn
                .prepare_cached(SQL_PUT)
                .unwrap()
                .execute(params![
                    data.keys[i],
                    data.values[i],
                    1,
                    0,
                    &[0u8; 16][..],
                    0,
                    0
                ])
                .unwrap();
        }
        t.conn.execute_batch("COMMIT").unwrap();
        for _ in 0..200 {
            t.one(Op::Get, &mut w).unwrap();
        }
        let p = Phase {
            op: Op::Get,
            pipelined: false,
            wait: WaitMode::BusyPoll,
            window: 4,
            warmup: Duration::from_millis(5),
            secs: Duration::from_millis(20),
        };
        // Other connections of this process share the unix-excl database.
        let outs = sqlite_threads(&db, Some(SERVER_VFS), &data, &p, 2).unwrap();
        assert_eq!(outs.len(), 2);
        assert!(outs
            .iter()
            .all(|o| o.ops > 0 && o.samples.len() as u64 == o.ops));
    }
}
