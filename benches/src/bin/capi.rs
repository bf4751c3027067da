//! `capi`: round-trip times through the C API (libringbase) next to the Rust client's,
//! in the same run.
//!
//! Starts a real `ringbase serve` (fresh runtime and data dirs), preloads 10k records
//! of 100-byte values (raw bytes kind), then measures, one call at a time and every
//! call timed, three operations on uniformly random keys of that key space:
//!
//! - **get**: a copy of the value, released inside the timed region (Rust:
//!   [`Client::get`], the `Record` dropped; C: `ringbase_get` then `ringbase_free`);
//! - **get_view**: the value read in place from the response ring (Rust:
//!   [`Client::get_view`]; C: `ringbase_get_view`);
//! - **put**: overwrite a record with a 100-byte value, acknowledged once committed
//!   (Rust: [`Client::put`]; C: `ringbase_put` with `RINGBASE_BYTES`).
//!
//! The **Rust** side runs in this process. The **C** side is `benches/c/capi_bench.c`
//! (embedded in this binary, with `ffi/include/ringbase.h`), compiled at start-up with
//! `cc -O2` (or `$CC`, or `--cc`) against `libringbase.so` (next to this binary unless
//! `--lib-dir`; rpath set) and run as a child process that times each call with
//! `clock_gettime(CLOCK_MONOTONIC)` (what `Instant::now()` reads) and prints its
//! nearest-rank percentiles as JSON. Both sides use the same keys (the same splitmix64
//! streams), the same values, and the same warm-up and sample counts.
//!
//! **Wait mode.** libringbase has no wait-mode setting: `ringbase_connect` uses the
//! client's default, [`WaitMode::Adaptive`] (spin for a bounded, adaptive time, then
//! sleep on the futex). So the comparison is Rust adaptive against C (adaptive). A Rust
//! busy-poll run is measured once at the end as a reference, outside the comparison.
//!
//! The runs are interleaved, Rust and C alternately (R C, C R, R C, ... so that neither
//! always goes first), 3 rounds each by default, so that machine noise hits both alike;
//! the table shows, per API and operation, the median across rounds of each statistic,
//! and the goal is checked on the ratio of the C and Rust medians of p50: within 10%.
//!
//! The bench also measures how much CPU other processes used during each run (from
//! `/proc`; the C child and the server count as ours): on a 2-CPU machine a concurrent
//! build takes the core the server or the client needs, and such runs are flagged as
//! disturbed: rerun.
//!
//! ```text
//! cargo build --release -p ringbase-server -p ringbase-ffi -p ringbase-benches
//! ./target/release/capi [--quick] [--server PATH] [--json PATH] [--lib-dir DIR]
//!                       [--cc CC] [--rounds N]
//! ```
//!
//! Every wait has a limit: the server and the C child must be ready within 10 s, a
//! watchdog ends the process (and the server) if a phase runs past its limit, and the
//! C child ends itself (`alarm`) past its own limit. The children are killed and the
//! temp dir removed when the bench ends, errors and panics included.

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ringbase_benches::harness::{
    allowed_cpus, check_server, exit_code, usage_error, write_json, Args, ChildGuard, ChildLines,
    CpuMeter, DefaultPaths, OtherCpu, TempDir, Watchdog, SERVER_READY,
};
use ringbase_benches::stats::{clock_read_ns, us, Summary};
use ringbase_client::{Client, ConnectOptions, ValueKind, WaitMode};
use serde_json::{json, Value};

/// Result type of the bench.
type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The C side, compiled at start-up.
const C_SOURCE: &str = include_str!("../../c/capi_bench.c");
/// The header it includes (the one libringbase was built with).
const C_HEADER: &str = include_str!("../../../ffi/include/ringbase.h");

/// Name of the server the bench starts.
const SERVER_NAME: &str = "bench-capi";
/// Prefix of the C child's readiness line (after connecting).
const C_READY: &str = "capi: ready";
/// Prefix of the C child's result line.
const C_RESULT: &str = "capi: result ";
/// Longest wait for a server's or the C child's readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connect or the preload may take before the watchdog ends the bench.
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// Longest the C compiler may take.
const COMPILE_LIMIT: Duration = Duration::from_secs(120);
/// Longest one measured run (three operations) may take.
const PHASE_LIMIT: Duration = Duration::from_secs(180);
/// Longest the C child may take to exit once its stdin is closed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Goal: C p50 at most this many times the Rust p50, per operation.
const GOAL_RATIO: f64 = 1.10;

/// Usage text.
const USAGE: &str = "\
usage: capi [--quick] [--server PATH] [--json PATH] [--lib-dir DIR] [--cc CC] [--rounds N]

  --quick         10x fewer samples (smoke run)
  --server PATH   the ringbase binary [default: ringbase next to this binary]
  --json PATH     where to write the results [default: target/bench-capi.json,
                  i.e. bench-capi.json one level above this binary's dir]
  --lib-dir DIR   where libringbase.so is [default: this binary's dir]
  --cc CC         the C compiler [default: $CC, else cc]
  --rounds N      interleaved rounds of each API [default: 3]";

/// The operations measured, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A copy of the value, released inside the timed region.
    Get,
    /// The value in place (zero-copy).
    GetView,
    /// Overwrite with a 100-byte value.
    Put,
}

impl Op {
    /// All, in table order.
    const ALL: [Op; 3] = [Op::Get, Op::GetView, Op::Put];

    /// Key in the JSON (of the C child and of the output).
    fn key(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetView => "get_view",
            Op::Put => "put",
        }
    }

    /// Position in [`Op::ALL`].
    fn index(self) -> usize {
        match self {
            Op::Get => 0,
            Op::GetView => 1,
            Op::Put => 2,
        }
    }

    /// Seed of this operation's key-index stream (as in capi_bench.c).
    fn seed(self) -> u64 {
        match self {
            Op::Get => 1,
            Op::GetView => 2,
            Op::Put => 3,
        }
    }

    /// What the two APIs call.
    fn calls(self) -> &'static str {
        match self {
            Op::Get => "Client::get / ringbase_get + ringbase_free",
            Op::GetView => "Client::get_view / ringbase_get_view",
            Op::Put => "Client::put / ringbase_put",
        }
    }
}

/// Who made the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// The Rust client in this process, adaptive wait (the default).
    Rust,
    /// libringbase from the C child (adaptive wait: it has no other).
    C,
    /// The Rust client in busy-poll wait mode (reference only).
    RustBusy,
}

impl Api {
    /// Label in the table and the JSON.
    fn label(self) -> &'static str {
        match self {
            Api::Rust => "Rust (adaptive)",
            Api::C => "C API (adaptive)",
            Api::RustBusy => "Rust (busy-poll, reference)",
        }
    }
}

/// Benchmark settings.
#[derive(Debug, Clone)]
struct Config {
    /// 10x fewer samples.
    quick: bool,
    /// The `ringbase` binary.
    server: PathBuf,
    /// Where the JSON results go.
    json: PathBuf,
    /// Directory of `libringbase.so`.
    lib_dir: PathBuf,
    /// The C compiler.
    cc: String,
    /// Interleaved rounds of each API.
    rounds: usize,
    /// Preloaded records (the key space).
    records: usize,
    /// Value size, bytes.
    value_len: usize,
    /// Unmeasured calls before each operation's samples.
    warmup: usize,
    /// Measured gets (and get_views) per run.
    gets: usize,
    /// Measured puts per run.
    puts: usize,
}

impl Config {
    /// Defaults, scaled down 10x if `quick`.
    fn new(quick: bool) -> Config {
        let div = if quick { 10 } else { 1 };
        let paths = DefaultPaths::new("bench-capi.json");
        Config {
            quick,
            server: paths.server,
            json: paths.json,
            lib_dir: paths
                .exe_dir
                .unwrap_or_else(|| PathBuf::from("target/release")),
            cc: std::env::var("CC")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "cc".into()),
            rounds: 3,
            records: 10_000,
            value_len: 100,
            warmup: 5_000 / div,
            gets: 100_000 / div,
            puts: 30_000 / div,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
enum Mode {
    /// Run the benchmark.
    Bench(Config),
    /// Print usage.
    Help,
}

/// Parses the command line (without the program name).
fn parse_args(args: impl IntoIterator<Item = String>) -> std::result::Result<Mode, String> {
    let mut args = Args::new(args);
    let mut quick = false;
    let (mut server, mut json, mut lib_dir, mut cc, mut rounds) = (None, None, None, None, None);
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--quick" => quick = true,
            "--server" => server = Some(args.path("--server")?),
            "--json" => json = Some(args.path("--json")?),
            "--lib-dir" => lib_dir = Some(args.path("--lib-dir")?),
            "--cc" => cc = Some(args.value("--cc")?),
            "--rounds" => rounds = Some(args.at_least_one("--rounds")?),
            "-h" | "--help" => return Ok(Mode::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut cfg = Config::new(quick);
    cfg.server = server.unwrap_or(cfg.server);
    cfg.json = json.unwrap_or(cfg.json);
    cfg.lib_dir = lib_dir.unwrap_or(cfg.lib_dir);
    cfg.cc = cc.unwrap_or(cfg.cc);
    cfg.rounds = rounds.unwrap_or(cfg.rounds);
    Ok(Mode::Bench(cfg))
}

/// Runs the benchmark.
fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Mode::Bench(cfg)) => exit_code("capi", run(&cfg)),
        Err(msg) => usage_error("capi", &msg, USAGE),
    }
}

/// The splitmix64 step (as in capi_bench.c).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Key indexes of `n` calls of `op` over `records` keys (as in capi_bench.c).
fn key_indexes(op: Op, n: usize, records: usize) -> Vec<usize> {
    let mut st = op.seed();
    (0..n)
        .map(|_| (splitmix64(&mut st) % records as u64) as usize)
        .collect()
}

/// Key number `i` (as in capi_bench.c).
fn key_name(i: usize) -> String {
    format!("k{i:06}")
}

/// The value pattern (as in capi_bench.c).
fn value_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 37 + 11) as u8).collect()
}

/// One measured run of one API: a summary per operation.
#[derive(Debug, Clone)]
struct Run {
    /// Who made the calls.
    api: Api,
    /// Round (0-based; the reference run has its own).
    round: usize,
    /// Position in the interleaved order (0-based).
    seq: usize,
    /// Summaries by [`Op::index`].
    ops: [Summary; 3],
    /// CPU used by other processes meanwhile, if known.
    others_cpu: Option<OtherCpu>,
    /// Cost of one clock read on that side, ns.
    clock_read_ns: f64,
    /// CPU time of the calling process during the run (C child only), ms.
    cpu_ms: Option<f64>,
}

impl Run {
    /// Whether other processes used enough CPU meanwhile to distrust the numbers.
    fn disturbed(&self) -> Option<f64> {
        self.others_cpu.filter(OtherCpu::disturbed).map(|o| o.cores)
    }
}

/// Where the server is, for the runs.
struct Ctx<'a> {
    /// Settings.
    cfg: &'a Config,
    /// The watchdog.
    wd: &'a Watchdog,
    /// The server's runtime dir.
    runtime_dir: PathBuf,
    /// The server's pid (its CPU time is ours).
    server_pid: u32,
    /// The compiled C side.
    c_bin: PathBuf,
}

/// Runs the benchmark.
fn run(cfg: &Config) -> Result<()> {
    check_server(&cfg.server)?;
    let lib = cfg.lib_dir.join("libringbase.so");
    if !lib.is_file() {
        return Err(format!(
            "no libringbase.so in {} (build it: cargo build --release -p ringbase-ffi, \
             or pass --lib-dir DIR)",
            cfg.lib_dir.display()
        )
        .into());
    }
    let wd = Watchdog::start()?;
    // Dropped last: the children are killed before their files are removed.
    let tmp = TempDir::new("ringbase-capi")?;

    wd.arm("compiling capi_bench.c", COMPILE_LIMIT);
    let c_bin = compile_c(cfg, tmp.path())?;
    wd.disarm();

    let cpus = allowed_cpus()?;
    let clock_ns = clock_read_ns();
    eprintln!(
        "capi bench{}: CPUs {cpus:?}, Instant::now() ≈ {clock_ns:.0} ns, {} rounds, \
         {} records of {} B, {} gets / {} puts per run after {} warm-up calls",
        if cfg.quick { " (quick)" } else { "" },
        cfg.rounds,
        cfg.records,
        cfg.value_len,
        cfg.gets,
        cfg.puts,
        cfg.warmup
    );

    let runtime_dir = tmp.path().join("run");
    let (server, line) = ChildGuard::spawn_ready(
        "ringbase",
        Command::new(&cfg.server)
            .args(["serve", "--name", SERVER_NAME, "--data-dir"])
            .arg(tmp.path().join("data"))
            .env("RINGBASE_RUNTIME_DIR", &runtime_dir),
        SERVER_READY,
        READY_TIMEOUT,
    )
    .map_err(|e| format!("starting {}: {e}", cfg.server.display()))?;
    eprintln!("{line} (pid {})", server.pid());
    let ctx = Ctx {
        cfg,
        wd: &wd,
        runtime_dir,
        server_pid: server.pid(),
        c_bin,
    };

    wd.arm("preloading", SETUP_LIMIT);
    preload(&ctx)?;
    wd.disarm();

    let mut runs = Vec::new();
    let mut seq = 0;
    for round in 0..cfg.rounds {
        let order = if round % 2 == 0 {
            [Api::Rust, Api::C]
        } else {
            [Api::C, Api::Rust]
        };
        for api in order {
            let r = match api {
                Api::C => c_run(&ctx, round, seq)?,
                _ => rust_run(&ctx, api, round, seq)?,
            };
            eprintln!(
                "  round {}: {:<28} p50 get {} / get_view {} / put {} µs{}",
                round + 1,
                api.label(),
                us(r.ops[0].p50_ns),
                us(r.ops[1].p50_ns),
                us(r.ops[2].p50_ns),
                r.disturbed()
                    .map_or(String::new(), |c| format!(" (DISTURBED: {c:.2} CPUs)"))
            );
            runs.push(r);
            seq += 1;
        }
    }
    let reference = rust_run(&ctx, Api::RustBusy, cfg.rounds, seq)?;
    eprintln!(
        "  reference: {:<26} p50 get {} / get_view {} / put {} µs",
        Api::RustBusy.label(),
        us(reference.ops[0].p50_ns),
        us(reference.ops[1].p50_ns),
        us(reference.ops[2].p50_ns),
    );
    wd.disarm();
    drop(server);

    let report = Report {
        cfg: cfg.clone(),
        runs,
        reference,
        cpus: cpus.len(),
        clock_ns,
    };
    println!("{}", report.markdown());
    write_json(&cfg.json, &report.json())
}

/// Writes the C source and header into `dir` and compiles them against libringbase.so
/// in `cfg.lib_dir`; returns the executable.
fn compile_c(cfg: &Config, dir: &Path) -> Result<PathBuf> {
    let src_dir = dir.join("c");
    std::fs::create_dir_all(&src_dir)?;
    let src = src_dir.join("capi_bench.c");
    std::fs::write(&src, C_SOURCE)?;
    std::fs::write(src_dir.join("ringbase.h"), C_HEADER)?;
    let lib_dir = cfg
        .lib_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", cfg.lib_dir.display()))?;
    let bin = src_dir.join("capi_bench");
    let out = Command::new(&cfg.cc)
        .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-I"])
        .arg(&src_dir)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lringbase", "-lm"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                format!(
                    "no C compiler: {:?} not found. Install one (e.g. apt-get install gcc), \
                     or name it with --cc CC or the CC environment variable",
                    cfg.cc
                )
            } else {
                format!("running the C compiler {:?}: {e}", cfg.cc)
            }
        })?;
    let diagnostics = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "compiling capi_bench.c with {:?} failed ({}):\n{diagnostics}",
            cfg.cc, out.status
        )
        .into());
    }
    if !diagnostics.trim().is_empty() {
        eprintln!("capi: C compiler warnings:\n{diagnostics}");
    }
    eprintln!(
        "compiled capi_bench.c with {} against {}",
        cfg.cc,
        lib_dir.join("libringbase.so").display()
    );
    Ok(bin)
}

/// Opens a Rust session with the bench server.
fn connect(ctx: &Ctx<'_>, wait: WaitMode) -> Result<Client> {
    let opts = ConnectOptions::new(SERVER_NAME)
        .runtime_dir(&ctx.runtime_dir)
        .wait(wait);
    Ok(Client::connect_with(opts)?)
}

/// Writes every record of the key space once.
fn preload(ctx: &Ctx<'_>) -> Result<()> {
    let t0 = Instant::now();
    let mut c = connect(ctx, WaitMode::Adaptive)?;
    let value = value_pattern(ctx.cfg.value_len);
    for i in 0..ctx.cfg.records {
        c.put(&key_name(i), &value, ValueKind::Bytes)?;
    }
    let n = c.count(None)?;
    if n != ctx.cfg.records as u64 {
        return Err(format!("preloaded {} records, the server has {n}", ctx.cfg.records).into());
    }
    eprintln!(
        "preloaded {n} records of {} B in {:.2} s",
        ctx.cfg.value_len,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Times `warmup + samples` calls of `call(i)` (i = call number) and summarises the
/// last `samples`.
fn sample(
    warmup: usize,
    samples: usize,
    mut call: impl FnMut(usize) -> Result<()>,
) -> Result<Summary> {
    let mut out = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let t0 = Instant::now();
        call(i)?;
        let ns = t0.elapsed().as_nanos() as u64;
        if i >= warmup {
            out.push(ns);
        }
    }
    Ok(Summary::from_samples(&mut out).ok_or("no samples")?)
}

/// One run of the Rust client (adaptive, or busy-poll for the reference).
fn rust_run(ctx: &Ctx<'_>, api: Api, round: usize, seq: usize) -> Result<Run> {
    let cfg = ctx.cfg;
    let wait = if api == Api::RustBusy {
        WaitMode::BusyPoll
    } else {
        WaitMode::Adaptive
    };
    ctx.wd.arm(format!("{} connect", api.label()), SETUP_LIMIT);
    let mut c = connect(ctx, wait)?;
    // Everything a sample needs is prepared before the clock runs.
    let keys: Vec<String> = (0..cfg.records).map(key_name).collect();
    let n_get = cfg.warmup + cfg.gets;
    let idx: Vec<Vec<usize>> = Op::ALL
        .iter()
        .map(|&op| {
            let n = if op == Op::Put {
                cfg.warmup + cfg.puts
            } else {
                n_get
            };
            key_indexes(op, n, cfg.records)
        })
        .collect();
    let mut value = value_pattern(cfg.value_len);
    let want = cfg.value_len;
    let clock_read = clock_read_ns();

    let meter = CpuMeter::start(&[std::process::id(), ctx.server_pid]);
    ctx.wd.arm(format!("{} run", api.label()), PHASE_LIMIT);
    let ix = &idx[Op::Get.index()];
    let get = sample(cfg.warmup, cfg.gets, |i| {
        let len = c.get(&keys[ix[i]])?.map(|r| r.value.len());
        check_len("get", &keys[ix[i]], len, want)
    })?;
    let ix = &idx[Op::GetView.index()];
    let get_view = sample(cfg.warmup, cfg.gets, |i| {
        let len = c.get_view(&keys[ix[i]])?.map(|v| v.value.len());
        check_len("get_view", &keys[ix[i]], len, want)
    })?;
    let ix = &idx[Op::Put.index()];
    let put = sample(cfg.warmup, cfg.puts, |i| {
        if let Some(b) = value.first_mut() {
            *b = i as u8; // as capi_bench.c does
        }
        c.put(&keys[ix[i]], &value, ValueKind::Bytes)?;
        Ok(())
    })?;
    let others_cpu = meter.and_then(|m| m.others());
    ctx.wd.disarm();
    drop(c);
    Ok(Run {
        api,
        round,
        seq,
        ops: [get, get_view, put],
        others_cpu,
        clock_read_ns: clock_read,
        cpu_ms: None,
    })
}

/// Checks a read value's length (`None`: the key was missing).
fn check_len(op: &str, key: &str, len: Option<usize>, want: usize) -> Result<()> {
    match len {
        Some(n) if n == want => Ok(()),
        Some(n) => Err(format!("{op} {key}: {n} bytes, expected {want}").into()),
        None => Err(format!("{op} {key}: no record").into()),
    }
}

/// The C child: killed (if still running) and reaped when dropped.
struct CChild {
    /// The process (closing its stdin tells it to exit).
    guard: ChildGuard,
    /// Its stdout lines.
    lines: ChildLines,
}

impl CChild {
    /// Starts the compiled C side with `args`, talking to the bench server.
    fn spawn(ctx: &Ctx<'_>, args: &[String]) -> Result<CChild> {
        let mut cmd = Command::new(&ctx.c_bin);
        cmd.args(args)
            .env("RINGBASE_RUNTIME_DIR", &ctx.runtime_dir)
            .env("LD_LIBRARY_PATH", &ctx.cfg.lib_dir);
        let (guard, lines) = ChildGuard::spawn_lines("capi_bench", &mut cmd)
            .map_err(|e| format!("starting {}: {e}", ctx.c_bin.display()))?;
        Ok(CChild { guard, lines })
    }

    /// Waits at most `timeout` for a stdout line starting with `prefix`; returns the
    /// rest of it. Other lines are copied to our stderr.
    fn expect(&self, prefix: &str, timeout: Duration) -> Result<String> {
        match self.lines.expect(prefix, timeout) {
            Ok(line) => Ok(line[prefix.len()..].to_string()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Err(format!("capi_bench printed no {prefix:?} within {timeout:?}").into())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let status = self.wait_exit(EXIT_TIMEOUT);
                Err(format!(
                    "capi_bench exited before a {prefix:?} line ({status}); \
                     its error is above"
                )
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Closes the child's stdin and waits at most `timeout` for it to exit (killing it
    /// after that); describes how it ended.
    fn wait_exit(&self, timeout: Duration) -> String {
        self.guard.close_and_wait(timeout)
    }
}

/// One run of the C API: the compiled child, started, released on our signal (after
/// the CPU meter starts), and its JSON read back.
fn c_run(ctx: &Ctx<'_>, round: usize, seq: usize) -> Result<Run> {
    let cfg = ctx.cfg;
    let limit = (READY_TIMEOUT + PHASE_LIMIT + EXIT_TIMEOUT).as_secs();
    let args: Vec<String> = [
        ("--name", SERVER_NAME.to_string()),
        ("--records", cfg.records.to_string()),
        ("--warmup", cfg.warmup.to_string()),
        ("--gets", cfg.gets.to_string()),
        ("--puts", cfg.puts.to_string()),
        ("--value-len", cfg.value_len.to_string()),
        ("--limit", limit.to_string()),
    ]
    .into_iter()
    .flat_map(|(f, v)| [f.to_string(), v])
    .chain(["--go-stdin".to_string()])
    .collect();
    ctx.wd.arm("C API connect", SETUP_LIMIT);
    let child = CChild::spawn(ctx, &args)?;
    let pid = child.expect(C_READY, READY_TIMEOUT)?;
    let meter = CpuMeter::start(&[std::process::id(), ctx.server_pid, child.guard.pid()]);
    ctx.wd.arm("C API run", PHASE_LIMIT);
    child.guard.send_line("go")?;
    let line = child.expect(C_RESULT, PHASE_LIMIT)?;
    let others_cpu = meter.and_then(|m| m.others());
    ctx.wd.arm("C API exit", SETUP_LIMIT);
    let status = child.wait_exit(EXIT_TIMEOUT);
    ctx.wd.disarm();
    if status != "exit status: 0" {
        return Err(format!("capi_bench (pid {}) ended badly: {status}", pid.trim()).into());
    }
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| format!("capi_bench printed bad JSON ({e}): {line}"))?;
    let op = |op: Op| -> Result<Summary> {
        let s = &v["ops"][op.key()];
        let n = |k: &str| {
            s[k].as_u64()
                .ok_or_else(|| format!("capi_bench JSON: no {}.{k}: {line}", op.key()))
        };
        let samples = n("samples")? as usize;
        let want = if op == Op::Put { cfg.puts } else { cfg.gets };
        if samples != want {
            return Err(format!(
                "capi_bench: {samples} {} samples, expected {want}",
                op.key()
            )
            .into());
        }
        Ok(Summary {
            samples,
            min_ns: n("min_ns")?,
            p50_ns: n("p50_ns")?,
            p99_ns: n("p99_ns")?,
            p999_ns: n("p999_ns")?,
            max_ns: n("max_ns")?,
            mean_ns: s["mean_ns"].as_f64().ok_or("capi_bench JSON: no mean_ns")?,
        })
    };
    Ok(Run {
        api: Api::C,
        round,
        seq,
        ops: [op(Op::Get)?, op(Op::GetView)?, op(Op::Put)?],
        others_cpu,
        clock_read_ns: v["clock_read_ns"].as_f64().unwrap_or(f64::NAN),
        cpu_ms: v["cpu_ms"].as_f64(),
    })
}

/// Medians across rounds of one API's statistics for one operation.
#[derive(Debug, Clone, Copy)]
struct Medians {
    /// Median of the rounds' p50s, ns.
    p50: f64,
    /// Median of the rounds' p99s, ns.
    p99: f64,
    /// Median of the rounds' p99.9s, ns.
    p999: f64,
    /// Median of the rounds' means, ns.
    mean: f64,
}

/// The median of `v` (non-empty; the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// All results, ready to print.
#[derive(Debug)]
struct Report {
    /// Settings of the run.
    cfg: Config,
    /// The interleaved runs, in order.
    runs: Vec<Run>,
    /// The busy-poll reference run.
    reference: Run,
    /// CPUs the bench could use.
    cpus: usize,
    /// Cost of one clock read, in ns.
    clock_ns: f64,
}

impl Report {
    /// The runs of `api`.
    fn runs_of(&self, api: Api) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |r| r.api == api)
    }

    /// Medians across the rounds of `api` for `op`.
    fn medians(&self, api: Api, op: Op) -> Medians {
        let col = |f: &dyn Fn(&Summary) -> f64| {
            median(self.runs_of(api).map(|r| f(&r.ops[op.index()])).collect())
        };
        Medians {
            p50: col(&|s| s.p50_ns as f64),
            p99: col(&|s| s.p99_ns as f64),
            p999: col(&|s| s.p999_ns as f64),
            mean: col(&|s| s.mean_ns),
        }
    }

    /// C / Rust ratio of the median p50s, and of the median means, for `op`.
    fn ratios(&self, op: Op) -> (f64, f64) {
        let (r, c) = (self.medians(Api::Rust, op), self.medians(Api::C, op));
        (c.p50 / r.p50.max(1.0), c.mean / r.mean.max(1.0))
    }

    /// Whether `op` meets the goal.
    fn pass(&self, op: Op) -> bool {
        self.ratios(op).0 <= GOAL_RATIO
    }

    /// The runs flagged as disturbed.
    fn disturbed(&self) -> Vec<&Run> {
        self.runs
            .iter()
            .chain(std::iter::once(&self.reference))
            .filter(|r| r.disturbed().is_some())
            .collect()
    }

    /// The tables, ratios and goals as Markdown.
    fn markdown(&self) -> String {
        let mut s = String::new();
        s += "| API | op | p50 µs | p99 µs | p99.9 µs | mean µs | p50 per round µs |\n";
        s += "|---|---|---:|---:|---:|---:|---|\n";
        for op in Op::ALL {
            for api in [Api::Rust, Api::C] {
                let m = self.medians(api, op);
                let rounds: Vec<String> = self
                    .runs_of(api)
                    .map(|r| us(r.ops[op.index()].p50_ns))
                    .collect();
                s += &format!(
                    "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
                    api.label(),
                    op.key(),
                    m.p50 / 1e3,
                    m.p99 / 1e3,
                    m.p999 / 1e3,
                    m.mean / 1e3,
                    rounds.join(", ")
                );
            }
        }
        for op in Op::ALL {
            let l = &self.reference.ops[op.index()];
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.2} | (1 run) |\n",
                Api::RustBusy.label(),
                op.key(),
                us(l.p50_ns),
                us(l.p99_ns),
                us(l.p999_ns),
                l.mean_ns / 1e3,
            );
        }
        s += "\n| op | calls | C/Rust p50 | C/Rust mean | goal (p50 within 10%) |\n";
        s += "|---|---|---:|---:|---|\n";
        for op in Op::ALL {
            let (p50, mean) = self.ratios(op);
            s += &format!(
                "| {} | {} | {p50:.3} | {mean:.3} | {} |\n",
                op.key(),
                op.calls(),
                if self.pass(op) { "PASS" } else { "FAIL" }
            );
        }
        let c_clock = median(self.runs_of(Api::C).map(|r| r.clock_read_ns).collect());
        s += &format!(
            "\nMedians across {} interleaved rounds per API (order R C, C R, ...); each run: \
             {} records of {} B (bytes kind), {} gets, {} get_views, {} puts on random keys \
             after {} warm-up calls each. Both APIs in the adaptive wait mode: libringbase \
             has no wait-mode setting (ringbase_connect uses the client default). {} CPUs; \
             each sample includes one clock read (Rust Instant::now ≈ {:.0} ns, C \
             clock_gettime ≈ {:.0} ns).\n",
            self.cfg.rounds,
            self.cfg.records,
            self.cfg.value_len,
            self.cfg.gets,
            self.cfg.gets,
            self.cfg.puts,
            self.cfg.warmup,
            self.cpus,
            self.clock_ns,
            c_clock,
        );
        let disturbed = self.disturbed();
        if !disturbed.is_empty() {
            s += "\n";
        }
        for r in disturbed {
            s += &format!(
                "DISTURBED: other processes kept {:.2} CPUs busy during {} round {}: these \
                 numbers are not trustworthy; rerun on a quiet machine.\n",
                r.disturbed().unwrap_or_default(),
                r.api.label(),
                r.round + 1
            );
        }
        s += "\nGoal: get and put RTT through the C API within 10% of the Rust client's:\n";
        for op in Op::ALL {
            let (p50, _) = self.ratios(op);
            s += &format!(
                "- [{}] {}: C p50 / Rust p50 = {p50:.3} (≤ {GOAL_RATIO:.2})\n",
                if self.pass(op) { "PASS" } else { "FAIL" },
                op.key()
            );
        }
        s
    }

    /// The results as JSON.
    fn json(&self) -> Value {
        let run = |r: &Run| {
            let ops: serde_json::Map<_, _> = Op::ALL
                .iter()
                .map(|&op| (op.key().to_string(), r.ops[op.index()].to_json()))
                .collect();
            json!({
                "api": r.api.label(),
                "round": r.round + 1,
                "order": r.seq + 1,
                "ops": ops,
                "clock_read_ns": r.clock_read_ns,
                "child_cpu_ms": r.cpu_ms,
                "others_cpu_cores": r.others_cpu.map(|o| o.cores),
                "others_cpu_ms": r.others_cpu.map(|o| o.cpu_time.as_secs_f64() * 1e3),
                "disturbed": r.disturbed().is_some(),
            })
        };
        let medians: Vec<_> = Op::ALL
            .iter()
            .flat_map(|&op| {
                [Api::Rust, Api::C].map(|api| {
                    let m = self.medians(api, op);
                    json!({
                        "api": api.label(), "op": op.key(),
                        "p50_us": m.p50 / 1e3, "p99_us": m.p99 / 1e3,
                        "p999_us": m.p999 / 1e3, "mean_us": m.mean / 1e3,
                    })
                })
            })
            .collect();
        let goals: Vec<_> = Op::ALL
            .iter()
            .map(|&op| {
                let (p50, mean) = self.ratios(op);
                json!({
                    "op": op.key(),
                    "goal": format!("{}: C API p50 within 10% of the Rust client's", op.key()),
                    "c_over_rust_p50": p50,
                    "c_over_rust_mean": mean,
                    "target": GOAL_RATIO,
                    "pass": self.pass(op),
                })
            })
            .collect();
        json!({
            "bench": "capi",
            "quick": self.cfg.quick,
            "config": {
                "rounds": self.cfg.rounds,
                "records": self.cfg.records,
                "value_len": self.cfg.value_len,
                "value_kind": "bytes",
                "warmup": self.cfg.warmup,
                "gets_per_run": self.cfg.gets,
                "puts_per_run": self.cfg.puts,
                "wait_mode": "adaptive (libringbase has no wait-mode setting)",
                "server": self.cfg.server.display().to_string(),
                "lib_dir": self.cfg.lib_dir.display().to_string(),
                "cc": self.cfg.cc,
            },
            "machine": { "cpus": self.cpus, "clock_read_ns": self.clock_ns },
            "medians": medians,
            "goals": goals,
            "runs": self.runs.iter().map(run).collect::<Vec<_>>(),
            "reference_busy_poll": run(&self.reference),
            "disturbed": !self.disturbed().is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags() {
        let Ok(Mode::Bench(c)) = parse_args(args(&[
            "--quick", "--rounds", "5", "--json", "x", "--cc", "clang",
        ])) else {
            panic!("expected a bench config")
        };
        assert!(c.quick);
        assert_eq!(c.rounds, 5);
        assert_eq!(c.json, PathBuf::from("x"));
        assert_eq!(c.cc, "clang");
        assert_eq!(c.gets, 10_000);
        assert!(parse_args(args(&["--rounds", "0"])).is_err());
        assert!(parse_args(args(&["--rounds"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
        assert!(matches!(parse_args(args(&["-h"])), Ok(Mode::Help)));
    }

    #[test]
    fn splitmix_matches_the_reference() {
        // First outputs of splitmix64 seeded with 1234567 (Vigna's reference code).
        let mut st = 1_234_567u64;
        assert_eq!(splitmix64(&mut st), 6_457_827_717_110_365_317);
        assert_eq!(splitmix64(&mut st), 3_203_168_211_198_807_973);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn keys_and_values_match_the_c_side() {
        assert_eq!(key_name(42), "k000042");
        assert_eq!(value_pattern(3), vec![11, 48, 85]);
        assert!(C_SOURCE.contains("\"k%06lu\""));
        assert!(C_SOURCE.contains("(i * 37 + 11)"));
        assert!(key_indexes(Op::Put, 1000, 10).iter().all(|&i| i < 10));
    }
}
