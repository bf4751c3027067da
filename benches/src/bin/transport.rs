//! `transport`: the Ringbase transport benchmark.
//!
//! Starts a real `ringbase serve` (fresh runtime and data dirs) and measures a Ping and
//! a 100-byte Echo, one session at a time, over:
//!
//! - **shm busy-poll**: the shared-memory rings, client in [`WaitMode::BusyPoll`];
//! - **shm adaptive**: the same, client in [`WaitMode::Adaptive`] (spin for a bounded,
//!   adaptive time, then sleep on the futex);
//! - **shm adaptive, pinned same CPU**: adaptive again, with the bench and the whole
//!   server pinned to one CPU, where a waiter that spins would hold the CPU its peer
//!   needs (the rings yield it: see "Sharing a CPU" in `protocol/src/ring.rs`);
//! - **shm adaptive, 1 ms / 16 ms idle**: adaptive again, but with a pause before every
//!   call (1 ms, and a 60 Hz frame's 16 ms), so that the server's session thread has used
//!   up its spin budget and sleeps on its futex when the request arrives: the cost of
//!   waking a quiet sidecar, for a Ping and for a 100-byte Get through the database;
//! - **futex floor, 1 ms / 16 ms idle**: with the same pauses, in the same run and
//!   interleaved with those rows in blocks of 50 calls, the raw two-process futex
//!   ping-pong (see [`ringbase_benches::floor`]: one word each way, FUTEX_WAIT and
//!   FUTEX_WAKE, nothing else; a peer process that this binary re-executes with the
//!   hidden `--futex-peer PATH`). The after-idle rows are reported as ratios to it;
//! - **uds**: a Unix-domain-socket baseline measured in the same run: the same two
//!   messages as length-prefixed frames (`u32` LE payload length, kind byte, payload) to
//!   a tight blocking server in another process (this binary re-executed with the
//!   hidden `--uds-server PATH [--cpu N]` arguments, one thread per connection). It runs
//!   three times: placed by the scheduler, then with client and server pinned to the
//!   same CPU, then pinned to two different CPUs. Where the two ends run changes a
//!   socket round trip by an order of magnitude on a small VM (a blocked reader on another, idle
//!   CPU costs a cross-CPU wake-up; on the same CPU it is a direct context switch), so
//!   the ratio goal is checked against the fastest of the three: the baseline at its
//!   best.
//!
//! For each it records the round-trip time of every sequential call (after a warm-up)
//! and reports p50, p99, p99.9 and the mean; the single-session rate without pipelining
//! (`1 / mean`); and the pipelined rate: send a window of W requests, then receive the W
//! responses, repeated. It prints a Markdown table, the UDS/busy-poll p50 ratio and the
//! goals, and writes everything as JSON.
//!
//! It also measures how much CPU other processes used during each row (from `/proc`):
//! on a 2-CPU machine a concurrent build takes the core a spinning peer needs, and the
//! numbers of such a row are flagged as disturbed.
//!
//! ```text
//! cargo build --release -p ringbase-server -p ringbase-benches
//! ./target/release/transport [--quick] [--idle-only] [--server PATH] [--json PATH] [--window W]
//! ```
//!
//! Every wait has a limit: the server and the UDS server must be ready within 10 s,
//! socket reads and writes time out after 10 s, and a watchdog ends the process (and its
//! children) if a phase runs for more than two minutes. The children are killed when the
//! bench ends, panics included.

use std::error::Error;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ringbase_benches::floor::Words;
use ringbase_benches::harness::{
    allowed_cpus, check_server, exit_code, set_process_cpus, usage_error, write_json, Args,
    ChildGuard, CpuMeter, DefaultPaths, OtherCpu, PinGuard, TempDir, Watchdog, SERVER_READY,
};
use ringbase_benches::stats::{clock_read_ns, rate, us, Summary};
use ringbase_client::{Client, ConnectOptions, Request, Response, ValueKind, WaitMode};
use ringbase_protocol::trace::{self, Point};

/// Result type of the bench.
type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Name of the server the bench starts.
const SERVER_NAME: &str = "bench";
/// Readiness line of the UDS baseline server.
const UDS_READY: &str = "uds-server: ready";
/// Longest wait for a server's readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write timeout on the UDS baseline's client socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connect may take before the watchdog ends the bench.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Longest one measured phase may take before the watchdog ends the bench.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Readiness line of the futex floor's peer.
const FUTEX_READY: &str = "futex-peer: ready";
/// Calls of each after-idle row measured back to back before switching to the next row
/// (the rows of one pause take turns, so a slow spell of the VM hits them alike).
const IDLE_BLOCK: usize = 50;
/// Key of the record the Get rows read.
const GET_KEY: &str = "bench/get100";
/// Size of the Echo payload.
const ECHO_LEN: usize = 100;
/// Largest frame payload the UDS baseline server accepts.
const UDS_MAX_PAYLOAD: usize = 1 << 20;
/// Buffer size of the UDS baseline's readers and writers.
const UDS_BUF: usize = 64 * 1024;

/// UDS frame kind of a Ping request (no payload).
const KIND_PING: u8 = 1;
/// UDS frame kind of an Echo request (payload: the bytes to echo).
const KIND_ECHO: u8 = 2;
/// UDS frame kind of the answer to Ping (no payload).
const KIND_PONG: u8 = 0x81;
/// UDS frame kind of the answer to Echo (payload: the echoed bytes).
const KIND_ECHO_REPLY: u8 = 0x82;

/// Goal: busy-poll round-trip p50 at most this many µs.
const GOAL_BUSY_P50_US: f64 = 1.0;
/// Goal: UDS p50 at least this many times the busy-poll p50.
const GOAL_UDS_RATIO: f64 = 5.0;
/// Goal: pipelined messages per second on one session.
const GOAL_PIPELINED: f64 = 2_000_000.0;
/// Goal: after an idle pause, p50 and p99 at most this many times the futex floor's.
const GOAL_IDLE_RATIO: f64 = 1.2;
/// Goal: after an idle pause, p99.9 at most this many times the futex floor's.
const GOAL_IDLE_P999_RATIO: f64 = 2.0;

/// One idle pause measured: the pause and the labels of its rows.
#[derive(Debug, Clone, Copy)]
struct Idle {
    /// Pause before each call.
    gap: Duration,
    /// Label of the Ringbase rows.
    shm: &'static str,
    /// Label of the futex floor row.
    floor: &'static str,
}

/// The idle pauses: 1 ms (well past every spin budget) and one 60 Hz frame.
const IDLES: [Idle; 2] = [
    Idle {
        gap: Duration::from_millis(1),
        shm: "shm adaptive, 1 ms idle",
        floor: "futex floor, 1 ms idle",
    },
    Idle {
        gap: Duration::from_millis(16),
        shm: "shm adaptive, 16 ms idle",
        floor: "futex floor, 16 ms idle",
    },
];

/// Usage text.
const USAGE: &str = "\
usage: transport [--quick] [--idle-only] [--server PATH] [--json PATH] [--window W]

  --quick        10x fewer iterations (smoke run)
  --idle-only    only the after-idle rows and their futex floor
  --server PATH  the ringbase binary [default: ringbase next to this binary]
  --json PATH    where to write the results [default: target/bench-transport.json,
                 i.e. bench-transport.json one level above this binary's dir]
  --window W     pipelining depth [default: 64]";

/// What the command line asks for.
#[derive(Debug)]
enum Mode {
    /// Run the benchmark.
    Bench(Config),
    /// Serve the UDS baseline on this socket path, optionally pinned to one CPU (hidden;
    /// the bench re-executes itself).
    UdsServer {
        /// Socket path to bind.
        path: PathBuf,
        /// CPU to pin every thread to.
        cpu: Option<usize>,
    },
    /// Answer the futex floor's round trips on the words in this file (hidden; the
    /// bench re-executes itself).
    FutexPeer {
        /// The file holding the two words.
        path: PathBuf,
    },
    /// Print usage.
    Help,
}

/// Benchmark settings.
#[derive(Debug, Clone)]
struct Config {
    /// 10x fewer iterations.
    quick: bool,
    /// Only the after-idle rows and the futex floor.
    idle_only: bool,
    /// The `ringbase` binary.
    server: PathBuf,
    /// Where the JSON results go.
    json: PathBuf,
    /// Pipelining window.
    window: usize,
    /// Warm-up calls before each latency measurement (and messages before each
    /// pipelined one).
    warmup: usize,
    /// Sequential calls measured for shm busy-poll.
    busy_calls: usize,
    /// Sequential calls measured for shm adaptive and for UDS.
    slow_calls: usize,
    /// Sequential calls measured per row with each idle pause, by [`IDLES`] index.
    idle_calls: [usize; 2],
    /// Messages sent pipelined over shm.
    shm_pipelined: usize,
    /// Messages sent pipelined over UDS.
    uds_pipelined: usize,
}

impl Config {
    /// Defaults, scaled down 10x if `quick`.
    fn new(quick: bool) -> Config {
        let div = if quick { 10 } else { 1 };
        let paths = DefaultPaths::new("bench-transport.json");
        Config {
            quick,
            idle_only: false,
            server: paths.server,
            json: paths.json,
            window: 64,
            warmup: 10_000 / div,
            busy_calls: 200_000 / div,
            slow_calls: 100_000 / div,
            idle_calls: [3_000 / div, 1_500 / div],
            shm_pipelined: 2_000_000 / div,
            uds_pipelined: 500_000 / div,
        }
    }
}

/// Parses the command line (without the program name).
fn parse_args(args: impl IntoIterator<Item = String>) -> std::result::Result<Mode, String> {
    let mut args = Args::new(args);
    let mut quick = false;
    let mut idle_only = false;
    let mut futex_peer = None;
    let mut server = None;
    let mut json = None;
    let mut window = None;
    let mut uds_server = None;
    let mut cpu = None;
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--quick" => quick = true,
            "--idle-only" => idle_only = true,
            "--futex-peer" => futex_peer = Some(args.path("--futex-peer")?),
            "--server" => server = Some(args.path("--server")?),
            "--json" => json = Some(args.path("--json")?),
            "--window" => window = Some(args.at_least_one("--window")?),
            "--uds-server" => uds_server = Some(args.path("--uds-server")?),
            "--cpu" => cpu = Some(args.number("--cpu")?),
            "-h" | "--help" => return Ok(Mode::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(path) = uds_server {
        return Ok(Mode::UdsServer { path, cpu });
    }
    if let Some(path) = futex_peer {
        return Ok(Mode::FutexPeer { path });
    }
    let mut cfg = Config::new(quick);
    cfg.idle_only = idle_only;
    cfg.server = server.unwrap_or(cfg.server);
    cfg.json = json.unwrap_or(cfg.json);
    cfg.window = window.unwrap_or(cfg.window);
    Ok(Mode::Bench(cfg))
}

/// Runs the benchmark, or (hidden) the UDS baseline server.
fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Mode::UdsServer { path, cpu }) => exit_code("uds-server", uds_server(&path, cpu)),
        Ok(Mode::FutexPeer { path }) => exit_code("futex-peer", futex_peer(&path)),
        Ok(Mode::Bench(cfg)) => exit_code("transport", run(&cfg)),
        Err(msg) => usage_error("transport", &msg, USAGE),
    }
}

/// The messages measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    /// `Request::Ping` / a UDS frame with no payload.
    Ping,
    /// `Request::Echo` of [`ECHO_LEN`] bytes / a UDS frame with that payload.
    Echo,
    /// `Request::Get` of a record with a 100-byte value: through the database, Ringbase
    /// only (the after-idle rows).
    Get,
}

impl Msg {
    /// The two that every transport answers, in table order.
    const ALL: [Msg; 2] = [Msg::Ping, Msg::Echo];

    /// Position in [`Msg::ALL`] (Get is not one of them).
    fn index(self) -> usize {
        match self {
            Msg::Ping => 0,
            Msg::Echo | Msg::Get => 1,
        }
    }

    /// Key in the JSON output.
    fn key(self) -> &'static str {
        match self {
            Msg::Ping => "ping",
            Msg::Echo => "echo100",
            Msg::Get => "get100",
        }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Ping => f.write_str("ping"),
            Msg::Echo => write!(f, "echo {ECHO_LEN} B"),
            Msg::Get => write!(f, "get {ECHO_LEN} B"),
        }
    }
}

/// The Echo payload: a fixed, non-trivial byte pattern.
fn echo_payload() -> Vec<u8> {
    (0..ECHO_LEN).map(|i| (i * 37 + 11) as u8).collect()
}

/// One way of doing request/response with a server.
trait Transport {
    /// One request, then its response (checked).
    fn round_trip(&mut self, msg: Msg) -> Result<()>;
    /// `w` requests without waiting, then their `w` responses (checked).
    fn window(&mut self, msg: Msg, w: usize) -> Result<()>;
}

/// A Ringbase session over the shared-memory rings.
struct Shm {
    /// The session.
    client: Client,
    /// The Echo payload.
    payload: Vec<u8>,
    /// `Request::Echo(payload)`, built once for the pipelined runs.
    echo: Request,
}

impl Shm {
    /// Opens a session with the bench server.
    fn connect(runtime_dir: &Path, wait: WaitMode) -> Result<Shm> {
        let opts = ConnectOptions::new(SERVER_NAME)
            .runtime_dir(runtime_dir)
            .wait(wait);
        let client = Client::connect_with(opts)?;
        let payload = echo_payload();
        Ok(Shm {
            client,
            echo: Request::Echo(payload.clone()),
            payload,
        })
    }

    /// Checks a response to `msg`.
    fn check(&self, msg: Msg, r: &Response) -> Result<()> {
        match (msg, r) {
            (Msg::Ping, Response::Pong) => Ok(()),
            (Msg::Echo, Response::Echo(b)) if *b == self.payload => Ok(()),
            (Msg::Get, _) => Err("no pipelined get in this bench".into()),
            _ => Err(format!("unexpected response to {msg}: {r:?}").into()),
        }
    }
}

impl Transport for Shm {
    fn round_trip(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Ping => self.client.ping()?,
            Msg::Echo => {
                let back = self.client.echo(&self.payload)?;
                if back != self.payload {
                    return Err("echo came back different".into());
                }
            }
            Msg::Get => {
                let v = self
                    .client
                    .get_view(GET_KEY)?
                    .ok_or("the get record is gone")?;
                if v.value != self.payload.as_slice() {
                    return Err("get returned a different value".into());
                }
            }
        }
        Ok(())
    }

    fn window(&mut self, msg: Msg, w: usize) -> Result<()> {
        let req = match msg {
            Msg::Ping => &Request::Ping,
            Msg::Echo => &self.echo,
            Msg::Get => return Err("no pipelined get in this bench".into()),
        };
        for _ in 0..w {
            self.client.send(req)?;
        }
        for _ in 0..w {
            let (_, r) = self.client.recv()?;
            self.check(msg, &r)?;
        }
        Ok(())
    }
}

/// Appends one UDS frame to `out`.
fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("UDS payloads are small");
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Reads one UDS frame header: `(payload length, kind)`.
fn read_header(r: &mut impl Read) -> io::Result<(usize, u8)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    Ok((len, h[4]))
}

/// A connection to the UDS baseline server.
struct Uds {
    /// The socket, for writing (unbuffered: each write is one syscall).
    writer: UnixStream,
    /// The same socket, for reading.
    reader: BufReader<UnixStream>,
    /// The Echo payload.
    payload: Vec<u8>,
    /// One encoded request frame per [`Msg`], by [`Msg::index`].
    frames: [Vec<u8>; 2],
    /// `w` request frames back to back, for the pipelined window it was built for.
    batch: Vec<u8>,
    /// What `batch` holds: message and window.
    batch_for: Option<(Msg, usize)>,
    /// Response payload buffer.
    buf: Vec<u8>,
}

impl Uds {
    /// Connects to the baseline server at `path`.
    fn connect(path: &Path) -> Result<Uds> {
        let writer = UnixStream::connect(path)?;
        writer.set_read_timeout(Some(IO_TIMEOUT))?;
        writer.set_write_timeout(Some(IO_TIMEOUT))?;
        let reader = BufReader::with_capacity(UDS_BUF, writer.try_clone()?);
        let payload = echo_payload();
        let mut ping = Vec::new();
        put_frame(&mut ping, KIND_PING, &[]);
        let mut echo = Vec::new();
        put_frame(&mut echo, KIND_ECHO, &payload);
        Ok(Uds {
            writer,
            reader,
            payload,
            frames: [ping, echo],
            batch: Vec::new(),
            batch_for: None,
            buf: Vec::with_capacity(ECHO_LEN),
        })
    }

    /// Reads and checks the response to `msg`.
    fn read_response(&mut self, msg: Msg) -> Result<()> {
        let (len, kind) = read_header(&mut self.reader)?;
        let (want_kind, want_len) = match msg {
            Msg::Ping => (KIND_PONG, 0),
            Msg::Echo => (KIND_ECHO_REPLY, ECHO_LEN),
            Msg::Get => return Err("the UDS baseline has no get".into()),
        };
        if kind != want_kind || len != want_len {
            return Err(format!("bad UDS response to {msg}: kind {kind:#x}, {len} bytes").into());
        }
        self.buf.resize(len, 0);
        self.reader.read_exact(&mut self.buf)?;
        if msg == Msg::Echo && self.buf != self.payload {
            return Err("UDS echo came back different".into());
        }
        Ok(())
    }
}

impl Transport for Uds {
    fn round_trip(&mut self, msg: Msg) -> Result<()> {
        self.writer.write_all(&self.frames[msg.index()])?;
        self.read_response(msg)
    }

    fn window(&mut self, msg: Msg, w: usize) -> Result<()> {
        if self.batch_for != Some((msg, w)) {
            self.batch.clear();
            for _ in 0..w {
                self.batch.extend_from_slice(&self.frames[msg.index()]);
            }
            self.batch_for = Some((msg, w));
        }
        self.writer.write_all(&self.batch)?;
        for _ in 0..w {
            self.read_response(msg)?;
        }
        Ok(())
    }
}

/// The UDS baseline server: pins itself to `cpu` (if given), binds `path`, says it is
/// ready on stdout, and serves each connection on its own thread. It exits when its
/// stdin closes (the bench is gone).
fn uds_server(path: &Path, cpu: Option<usize>) -> io::Result<()> {
    // Threads spawned below inherit the pinning; the guard lives as long as the server.
    let _pin = cpu.map(|c| PinGuard::pin(&[c])).transpose()?;
    let listener = UnixListener::bind(path)?;
    println!("{UDS_READY} on {}", path.display());
    io::stdout().flush()?;
    exit_when_stdin_closes()?;
    for conn in listener.incoming() {
        let conn = conn?;
        std::thread::Builder::new()
            .name("uds-conn".into())
            .spawn(move || {
                if let Err(e) = serve_uds_conn(conn) {
                    eprintln!("uds-server: connection ended: {e}");
                }
            })?;
    }
    Ok(())
}

/// One connection of the UDS baseline: a tight blocking loop. Each request frame is read
/// (`read_exact` through a buffered reader, so one `read` syscall usually brings in a
/// whole frame, or many when the client pipelines) and answered with a frame of the
/// same shape: Ping gets an empty Pong, Echo gets its payload back. Responses are
/// written with one `write` per frame when the client waits for each, and coalesced
/// when more requests are already buffered (as Redis does), so the baseline is a fair
/// one for both sequential and pipelined use.
fn serve_uds_conn(conn: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(UDS_BUF, conn.try_clone()?);
    let mut writer = BufWriter::with_capacity(UDS_BUF, conn);
    let mut payload = Vec::new();
    loop {
        let (len, kind) = match read_header(&mut reader) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if len > UDS_MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload)?;
        let (reply_kind, body): (u8, &[u8]) = match kind {
            KIND_PING => (KIND_PONG, &[]),
            KIND_ECHO => (KIND_ECHO_REPLY, &payload),
            k => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown frame kind {k}"),
                ))
            }
        };
        writer.write_all(&(body.len() as u32).to_le_bytes())?;
        writer.write_all(&[reply_kind])?;
        writer.write_all(body)?;
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

/// One line of the results.
#[derive(Debug, Clone)]
struct Row {
    /// Transport label.
    transport: &'static str,
    /// Message.
    msg: Msg,
    /// Round-trip times.
    latency: Summary,
    /// `1 / mean RTT`, unless the calls were paced (idle runs).
    rtt_rate: Option<f64>,
    /// Pipelined messages per second, and how many were sent.
    pipelined: Option<(f64, usize)>,
    /// CPU used by other processes meanwhile, if known.
    others_cpu: Option<OtherCpu>,
}

/// Round-trip time of each of `calls` sequential calls, after `warmup` unmeasured ones.
fn sample_rtts<T: Transport>(t: &mut T, msg: Msg, warmup: usize, calls: usize) -> Result<Summary> {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let t0 = Instant::now();
        t.round_trip(msg)?;
        let ns = t0.elapsed().as_nanos() as u64;
        if i >= warmup {
            samples.push(ns);
        }
    }
    Ok(Summary::from_samples(&mut samples).ok_or("no samples")?)
}

/// Messages per second over `total` messages (rounded up to whole windows of `w`),
/// after about `warmup` unmeasured ones. Returns the rate and the count.
fn pipelined_rate<T: Transport>(
    t: &mut T,
    msg: Msg,
    w: usize,
    warmup: usize,
    total: usize,
) -> Result<(f64, usize)> {
    for _ in 0..warmup.div_ceil(w) {
        t.window(msg, w)?;
    }
    let rounds = total.div_ceil(w).max(1);
    let t0 = Instant::now();
    for _ in 0..rounds {
        t.window(msg, w)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = rounds * w;
    Ok((n as f64 / secs, n))
}

/// Latency and pipelined throughput of `msg` over `t`, under the watchdog. `pids` are
/// the processes taking part (for the CPU meter).
#[allow(clippy::too_many_arguments)]
fn measure<T: Transport>(
    wd: &Watchdog,
    cfg: &Config,
    t: &mut T,
    pids: &[u32],
    transport: &'static str,
    msg: Msg,
    calls: usize,
    pipelined: usize,
) -> Result<Row> {
    let meter = CpuMeter::start(pids);
    wd.arm(format!("{transport} {msg} round trips"), PHASE_LIMIT);
    let latency = sample_rtts(t, msg, cfg.warmup, calls)?;
    wd.arm(format!("{transport} {msg} pipelined"), PHASE_LIMIT);
    let pipe = pipelined_rate(t, msg, cfg.window, cfg.warmup, pipelined)?;
    wd.disarm();
    let row = Row {
        transport,
        msg,
        latency,
        rtt_rate: Some(latency.rate_per_sec()),
        pipelined: Some(pipe),
        others_cpu: meter.and_then(|m| m.others()),
    };
    eprintln!("  done: {transport} / {msg}");
    Ok(row)
}

/// Label of the busy-poll rows (the reference of the ratio goal).
const BUSY: &str = "shm busy-poll";

/// Runs the benchmark.
fn run(cfg: &Config) -> Result<()> {
    check_server(&cfg.server)?;
    let wd = Watchdog::start()?;
    // Dropped last: the children are killed before their files are removed.
    let tmp = TempDir::new("ringbase-bench")?;

    let cpus = allowed_cpus()?;
    let clock_ns = clock_read_ns();
    eprintln!(
        "transport bench{}: CPUs {cpus:?}, Instant::now() ≈ {clock_ns:.0} ns, window {}",
        if cfg.quick { " (quick)" } else { "" },
        cfg.window
    );

    let mut rows = shm_rows(cfg, &wd, tmp.path())?;
    if !cfg.idle_only {
        rows.extend(uds_rows(cfg, &wd, tmp.path(), &cpus)?);
    }
    wd.disarm();

    let report = Report::new(cfg, rows, cpus.len(), clock_ns);
    println!("{}", report.markdown());
    write_json(&cfg.json, &report.json())
}

/// Starts `ringbase serve` with runtime and data dirs under `tmp`, measures the shm
/// rows, and stops the server.
fn shm_rows(cfg: &Config, wd: &Watchdog, tmp: &Path) -> Result<Vec<Row>> {
    let runtime_dir = tmp.join("run");
    let (server, line) = ChildGuard::spawn_ready(
        "ringbase",
        Command::new(&cfg.server)
            .args(["serve", "--name", SERVER_NAME, "--data-dir"])
            .arg(tmp.join("data"))
            .env("RINGBASE_RUNTIME_DIR", &runtime_dir),
        SERVER_READY,
        READY_TIMEOUT,
    )
    .map_err(|e| format!("starting {}: {e}", cfg.server.display()))?;
    eprintln!("{line} (pid {})", server.pid());
    let pids = [std::process::id(), server.pid()];

    let mut rows = Vec::new();
    let modes: [(&'static str, WaitMode, usize); 2] = [
        (BUSY, WaitMode::BusyPoll, cfg.busy_calls),
        ("shm adaptive", WaitMode::Adaptive, cfg.slow_calls),
    ];
    for (label, wait, calls) in modes {
        if cfg.idle_only {
            break;
        }
        wd.arm(format!("connecting ({label})"), CONNECT_LIMIT);
        let mut t = Shm::connect(&runtime_dir, wait)?;
        for msg in Msg::ALL {
            let n = cfg.shm_pipelined;
            rows.push(measure(wd, cfg, &mut t, &pids, label, msg, calls, n)?);
        }
    }
    if !cfg.idle_only {
        rows.extend(pinned_shm_rows(cfg, wd, &runtime_dir, &pids)?);
    }
    rows.extend(idle_rows(cfg, wd, tmp, &runtime_dir, &pids)?);
    // Stopped here so that it cannot disturb the baseline.
    drop(server);
    Ok(rows)
}

/// The adaptive rows again with the bench and the whole server (`pids[1]`, its new
/// session thread included) pinned to one CPU: the placement in which a waiter that
/// spins holds the CPU its peer needs for the answer (the rings' "Sharing a CPU"). The
/// server gets all of its CPUs back afterwards.
fn pinned_shm_rows(
    cfg: &Config,
    wd: &Watchdog,
    runtime_dir: &Path,
    pids: &[u32; 2],
) -> Result<Vec<Row>> {
    let cpus = allowed_cpus()?;
    let Some(&cpu) = cpus.first() else {
        return Ok(Vec::new());
    };
    let label = "shm adaptive, pinned same CPU";
    wd.arm(format!("connecting ({label})"), CONNECT_LIMIT);
    let mut t = Shm::connect(runtime_dir, WaitMode::Adaptive)?;
    set_process_cpus(pids[1], &[cpu])?;
    let rows = {
        let _pin = PinGuard::pin(&[cpu])?;
        Msg::ALL
            .into_iter()
            .map(|msg| {
                let n = cfg.shm_pipelined;
                measure(wd, cfg, &mut t, pids, label, msg, cfg.slow_calls, n)
            })
            .collect::<Result<Vec<Row>>>()
    };
    set_process_cpus(pids[1], &cpus)?;
    rows
}

/// The after-idle rows: for each pause in [`IDLES`], a Ping and a 100-byte Get over an
/// adaptive session, and the futex floor, taking turns in blocks of [`IDLE_BLOCK`]
/// calls. `pids` are the bench and the server (the floor's peer is added).
fn idle_rows(
    cfg: &Config,
    wd: &Watchdog,
    tmp: &Path,
    runtime_dir: &Path,
    pids: &[u32],
) -> Result<Vec<Row>> {
    let words_path = tmp.join("futex-words");
    let words = Words::map(&words_path, true)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--futex-peer").arg(&words_path);
    let (peer, line) = ChildGuard::spawn_ready("futex-peer", &mut cmd, FUTEX_READY, READY_TIMEOUT)?;
    eprintln!("{line} (pid {})", peer.pid());
    let mut pids = pids.to_vec();
    pids.push(peer.pid());

    wd.arm("connecting (idle)", CONNECT_LIMIT);
    let mut t = Shm::connect(runtime_dir, WaitMode::Adaptive)?;
    t.client
        .put(GET_KEY, &t.payload.clone(), ValueKind::Bytes)?;
    let mut seq = 0u32;
    let mut floor_call = |_: Msg| -> Result<()> {
        trace::mark(Point::BenchFloor);
        seq = seq.wrapping_add(1).max(1);
        Ok(words.round_trip(seq, IO_TIMEOUT)?)
    };
    let mut rows = Vec::new();
    for (idle, &calls) in IDLES.iter().zip(&cfg.idle_calls) {
        let meter = CpuMeter::start(&pids);
        wd.arm(format!("{} round trips", idle.shm), PHASE_LIMIT * 2);
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        let blocks = calls.div_ceil(IDLE_BLOCK);
        for block in 0..blocks {
            // The first block of each row is a warm-up, not measured.
            let keep = block > 0 || blocks == 1;
            sample_into(
                &mut floor_call,
                Msg::Ping,
                IDLE_BLOCK,
                idle.gap,
                keep,
                &mut samples[0],
            )?;
            let mut shm = |m| {
                trace::mark(if m == Msg::Get {
                    Point::BenchGet
                } else {
                    Point::BenchPing
                });
                t.round_trip(m)
            };
            sample_into(
                &mut shm,
                Msg::Ping,
                IDLE_BLOCK,
                idle.gap,
                keep,
                &mut samples[1],
            )?;
            sample_into(
                &mut shm,
                Msg::Get,
                IDLE_BLOCK,
                idle.gap,
                keep,
                &mut samples[2],
            )?;
        }
        let others_cpu = meter.and_then(|m| m.others());
        let rows_of_idle = [
            (idle.floor, Msg::Ping),
            (idle.shm, Msg::Ping),
            (idle.shm, Msg::Get),
        ];
        for ((transport, msg), mut s) in rows_of_idle.into_iter().zip(samples) {
            rows.push(Row {
                transport,
                msg,
                latency: Summary::from_samples(&mut s).ok_or("no samples")?,
                rtt_rate: None,
                pipelined: None,
                others_cpu,
            });
        }
        eprintln!("  done: {} (and its futex floor)", idle.shm);
    }
    wd.disarm();
    trace::flush("bench", 1);
    Ok(rows)
}

/// `calls` round trips of `msg` through `call`, each after a pause of `gap`; their
/// times are appended to `out` if `keep`.
fn sample_into(
    call: &mut impl FnMut(Msg) -> Result<()>,
    msg: Msg,
    calls: usize,
    gap: Duration,
    keep: bool,
    out: &mut Vec<u64>,
) -> Result<()> {
    for _ in 0..calls {
        std::thread::sleep(gap);
        trace::mark(Point::BenchCall);
        let t0 = Instant::now();
        call(msg)?;
        let ns = t0.elapsed().as_nanos() as u64;
        trace::mark(Point::BenchDone);
        if keep {
            out.push(ns);
        }
    }
    Ok(())
}

/// The futex floor's peer: maps the words at `path`, says it is ready, and answers
/// until its stdin closes (the bench is gone).
fn futex_peer(path: &Path) -> io::Result<()> {
    let words = Words::map(path, false)?;
    println!("{FUTEX_READY}");
    io::stdout().flush()?;
    exit_when_stdin_closes()?;
    words.serve()
}

/// Starts a thread that ends this process when its stdin closes: a child of the bench
/// learns so of the bench's end, even if the bench was killed.
fn exit_when_stdin_closes() -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(|| {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            std::process::exit(0);
        })?;
    Ok(())
}

/// Measures the UDS baseline: unpinned, both ends on the first CPU, and (with two CPUs
/// or more) the ends on the first two CPUs. Each run uses a fresh server process.
fn uds_rows(cfg: &Config, wd: &Watchdog, tmp: &Path, cpus: &[usize]) -> Result<Vec<Row>> {
    let exe = std::env::current_exe()?;
    let mut placements: Vec<(&'static str, Option<(usize, usize)>)> = vec![("uds", None)];
    if let Some(&first) = cpus.first() {
        placements.push(("uds, pinned same CPU", Some((first, first))));
    }
    if let [first, second, ..] = *cpus {
        placements.push(("uds, pinned 2 CPUs", Some((first, second))));
    }
    let mut rows = Vec::new();
    for (i, (label, pin)) in placements.into_iter().enumerate() {
        let sock = tmp.join(format!("uds-{i}.sock"));
        let mut cmd = Command::new(&exe);
        cmd.arg("--uds-server").arg(&sock);
        if let Some((_, server_cpu)) = pin {
            cmd.arg("--cpu").arg(server_cpu.to_string());
        }
        let (server, line) =
            ChildGuard::spawn_ready("uds-server", &mut cmd, UDS_READY, READY_TIMEOUT)?;
        eprintln!("{line} (pid {})", server.pid());
        let _pin = pin
            .map(|(client_cpu, _)| PinGuard::pin(&[client_cpu]))
            .transpose()?;
        wd.arm(format!("connecting ({label})"), CONNECT_LIMIT);
        let mut t = Uds::connect(&sock)?;
        let pids = [std::process::id(), server.pid()];
        for msg in Msg::ALL {
            let (calls, n) = (cfg.slow_calls, cfg.uds_pipelined);
            rows.push(measure(wd, cfg, &mut t, &pids, label, msg, calls, n)?);
        }
    }
    Ok(rows)
}

/// One goal checked against the measurements.
#[derive(Debug, Clone)]
struct Goal {
    /// What is checked.
    what: String,
    /// Measured value.
    value: f64,
    /// Target.
    target: f64,
    /// Met?
    pass: bool,
}

/// All results, ready to print.
#[derive(Debug)]
struct Report {
    /// Settings of the run.
    cfg: Config,
    /// Results, in table order.
    rows: Vec<Row>,
    /// CPUs the bench could use.
    cpus: usize,
    /// Cost of one clock read, in ns.
    clock_ns: f64,
}

impl Report {
    /// Collects the results.
    fn new(cfg: &Config, rows: Vec<Row>, cpus: usize, clock_ns: f64) -> Report {
        Report {
            cfg: cfg.clone(),
            rows,
            cpus,
            clock_ns,
        }
    }

    /// The row of `transport` and `msg`.
    fn row(&self, transport: &str, msg: Msg) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.transport == transport && r.msg == msg)
    }

    /// UDS p50 / busy-poll p50 for `msg`, for each UDS row.
    fn ratios(&self, msg: Msg) -> Vec<(&'static str, f64)> {
        let Some(busy) = self.row(BUSY, msg) else {
            return Vec::new();
        };
        let busy = busy.latency.p50_ns.max(1) as f64;
        self.rows
            .iter()
            .filter(|r| r.msg == msg && r.transport.starts_with("uds"))
            .map(|r| (r.transport, r.latency.p50_ns as f64 / busy))
            .collect()
    }

    /// The smallest of [`Report::ratios`]: against the fastest UDS placement.
    fn min_ratio(&self, msg: Msg) -> Option<(&'static str, f64)> {
        self.ratios(msg)
            .into_iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// For each after-idle Ringbase row: its p50, p99 and p99.9 over the futex floor's
    /// with the same pause.
    fn idle_ratios(&self) -> Vec<(&Row, [f64; 3])> {
        let mut out = Vec::new();
        for idle in IDLES {
            let Some(floor) = self.row(idle.floor, Msg::Ping) else {
                continue;
            };
            let f = &floor.latency;
            for r in self.rows.iter().filter(|r| r.transport == idle.shm) {
                let l = &r.latency;
                let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
                out.push((
                    r,
                    [
                        ratio(l.p50_ns, f.p50_ns),
                        ratio(l.p99_ns, f.p99_ns),
                        ratio(l.p999_ns, f.p999_ns),
                    ],
                ));
            }
        }
        out
    }

    /// Every goal, checked.
    fn goals(&self) -> Vec<Goal> {
        let mut goals = Vec::new();
        for (r, ratios) in self.idle_ratios() {
            let targets = [
                ("p50", GOAL_IDLE_RATIO),
                ("p99", GOAL_IDLE_RATIO),
                ("p99.9", GOAL_IDLE_P999_RATIO),
            ];
            for ((what, target), value) in targets.into_iter().zip(ratios) {
                goals.push(Goal {
                    what: format!(
                        "{} {}: {what} ≤ {target}× the futex floor's",
                        r.transport, r.msg
                    ),
                    value,
                    target,
                    pass: value <= target,
                });
            }
        }
        for msg in Msg::ALL {
            if let Some(r) = self.row(BUSY, msg) {
                let p50 = r.latency.p50_ns as f64 / 1e3;
                goals.push(Goal {
                    what: format!("busy-poll {msg} RTT p50 ≤ {GOAL_BUSY_P50_US} µs"),
                    value: p50,
                    target: GOAL_BUSY_P50_US,
                    pass: p50 <= GOAL_BUSY_P50_US,
                });
            }
            if let Some((uds, ratio)) = self.min_ratio(msg) {
                goals.push(Goal {
                    what: format!(
                        "{msg}: UDS p50 / busy-poll p50 ≥ {GOAL_UDS_RATIO}× \
                         (against the fastest UDS placement, {uds})"
                    ),
                    value: ratio,
                    target: GOAL_UDS_RATIO,
                    pass: ratio >= GOAL_UDS_RATIO,
                });
            }
        }
        for r in &self.rows {
            if let (true, Some((rate, _))) = (r.transport.starts_with("shm"), r.pipelined) {
                goals.push(Goal {
                    what: format!(
                        "{} {} pipelined ≥ 2M msg/s on one session",
                        r.transport, r.msg
                    ),
                    value: rate,
                    target: GOAL_PIPELINED,
                    pass: rate >= GOAL_PIPELINED,
                });
            }
        }
        goals
    }

    /// The table, ratios and goals as Markdown.
    fn markdown(&self) -> String {
        let mut s = String::new();
        s += "| transport | message | p50 µs | p99 µs | p99.9 µs | mean µs | RTT msgs/s | pipelined msgs/s |\n";
        s += "|---|---|---:|---:|---:|---:|---:|---:|\n";
        for r in &self.rows {
            let l = &r.latency;
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.2} | {} | {} |\n",
                r.transport,
                r.msg,
                us(l.p50_ns),
                us(l.p99_ns),
                us(l.p999_ns),
                l.mean_ns / 1e3,
                r.rtt_rate.map_or("—".into(), rate),
                r.pipelined.map_or("—".into(), |(p, _)| rate(p)),
            );
        }
        s += &format!(
            "\nRTT samples: busy-poll {}, adaptive {}, after 1 ms / 16 ms idle {} / {} per row \
             (taking turns in blocks of {IDLE_BLOCK}, the first block not measured), uds {} \
             (after {} warm-up calls); \
             pipelined: window {}, {} msgs shm, {} msgs uds. {} CPUs; each sample includes \
             one Instant::now() (≈ {:.0} ns).\n",
            self.cfg.busy_calls,
            self.cfg.slow_calls,
            self.cfg.idle_calls[0],
            self.cfg.idle_calls[1],
            self.cfg.slow_calls,
            self.cfg.warmup,
            self.cfg.window,
            self.cfg.shm_pipelined,
            self.cfg.uds_pipelined,
            self.cpus,
            self.clock_ns,
        );
        s += "The uds rows: placed by the scheduler, then both ends pinned to one CPU, then \
              to two CPUs; the ratio goal is checked against the fastest.\n\n";
        let mut disturbed = false;
        for r in &self.rows {
            if let Some(c) = r.others_cpu.filter(OtherCpu::disturbed).map(|o| o.cores) {
                disturbed = true;
                s += &format!(
                    "DISTURBED: other processes kept {c:.2} CPUs busy during {} / {}: \
                     these numbers are not trustworthy.\n",
                    r.transport, r.msg
                );
            }
        }
        if disturbed {
            s += "\n";
        }
        for msg in Msg::ALL {
            for (uds, ratio) in self.ratios(msg) {
                s += &format!("UDS p50 / busy-poll p50 ({msg}, {uds}): {ratio:.1}×\n");
            }
        }
        for (r, [p50, p99, p999]) in self.idle_ratios() {
            s += &format!(
                "{} / {} over the futex floor: p50 {p50:.2}×, p99 {p99:.2}×, p99.9 {p999:.2}×\n",
                r.transport, r.msg
            );
        }
        s += "\nGoals:\n";
        for g in self.goals() {
            let v = if g.target >= 1e6 {
                rate(g.value)
            } else {
                format!("{:.2}", g.value)
            };
            s += &format!(
                "- [{}] {}: {v}\n",
                if g.pass { "PASS" } else { "FAIL" },
                g.what
            );
        }
        s
    }

    /// The results as JSON.
    fn json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                let mut row = serde_json::json!({
                    "transport": r.transport,
                    "message": r.msg.key(),
                    "rtt_msgs_per_s": r.rtt_rate,
                    "pipelined_msgs_per_s": r.pipelined.map(|p| p.0),
                    "pipelined_msgs": r.pipelined.map(|p| p.1),
                    "others_cpu_cores": r.others_cpu.map(|o| o.cores),
                    "others_cpu_ms": r.others_cpu.map(|o| o.cpu_time.as_secs_f64() * 1e3),
                });
                // The latency fields go into the row itself.
                row.as_object_mut()
                    .expect("a JSON object")
                    .extend(r.latency.json_fields());
                row
            })
            .collect();
        let ratios: serde_json::Map<_, _> = Msg::ALL
            .iter()
            .map(|&m| {
                let per_row: serde_json::Map<_, _> = self
                    .ratios(m)
                    .into_iter()
                    .map(|(uds, r)| (uds.to_string(), r.into()))
                    .collect();
                (m.key().to_string(), per_row.into())
            })
            .collect();
        let goals: Vec<_> = self
            .goals()
            .into_iter()
            .map(|g| {
                serde_json::json!({
                    "goal": g.what, "value": g.value, "target": g.target, "pass": g.pass,
                })
            })
            .collect();
        let idle: Vec<_> = self
            .idle_ratios()
            .into_iter()
            .map(|(r, [p50, p99, p999])| {
                serde_json::json!({
                    "transport": r.transport, "message": r.msg.key(),
                    "p50": p50, "p99": p99, "p999": p999,
                })
            })
            .collect();
        serde_json::json!({
            "bench": "transport",
            "quick": self.cfg.quick,
            "config": {
                "window": self.cfg.window,
                "warmup": self.cfg.warmup,
                "busy_poll_calls": self.cfg.busy_calls,
                "adaptive_calls": self.cfg.slow_calls,
                "uds_calls": self.cfg.slow_calls,
                "idle_calls": self.cfg.idle_calls,
                "idle_gaps_us": IDLES.map(|i| i.gap.as_micros() as u64),
                "idle_block": IDLE_BLOCK,
                "shm_pipelined_msgs": self.cfg.shm_pipelined,
                "uds_pipelined_msgs": self.cfg.uds_pipelined,
                "echo_bytes": ECHO_LEN,
                "server": self.cfg.server.display().to_string(),
            },
            "machine": { "cpus": self.cpus, "clock_read_ns": self.clock_ns },
            "rows": rows,
            "uds_p50_over_busy_poll_p50": ratios,
            "idle_over_futex_floor": idle,
            "goals": goals,
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
        let Ok(Mode::Bench(c)) = parse_args(args(&["--quick", "--window", "8", "--json", "x"]))
        else {
            panic!("expected a bench config")
        };
        assert!(c.quick);
        assert_eq!(c.window, 8);
        assert_eq!(c.json, PathBuf::from("x"));
        assert_eq!(c.busy_calls, 20_000);
        assert!(matches!(
            parse_args(args(&["--uds-server", "/s"])),
            Ok(Mode::UdsServer { path, cpu: None }) if path == Path::new("/s")
        ));
        assert!(matches!(
            parse_args(args(&["--uds-server", "/s", "--cpu", "1"])),
            Ok(Mode::UdsServer { cpu: Some(1), .. })
        ));
        assert!(parse_args(args(&["--window", "0"])).is_err());
        assert!(parse_args(args(&["--window"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
    }

    #[test]
    fn uds_round_trip_in_process() {
        let dir = TempDir::new("rb-uds-test").unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (c, _) = listener.accept().unwrap();
            serve_uds_conn(c).unwrap();
        });
        let mut u = Uds::connect(&path).unwrap();
        for msg in Msg::ALL {
            u.round_trip(msg).unwrap();
            u.window(msg, 16).unwrap();
        }
        drop(u);
        server.join().unwrap();
    }
}
