//! `sync`: the replication benchmark (issue 11), on loopback.
//!
//! Two `ringbase serve` processes, A and B, replicating with each other (`--sync peers`):
//!
//! - **lag**: a client puts on A, one at a time; a watcher on A and a watcher on B
//!   follow the key prefix. Latency from before the put is sent to the event's arrival,
//!   at A (the local change feed: the baseline, same run) and at B (push over libp2p,
//!   merge in B's writer, B's change feed). p50/p99.
//! - **catch-up**: B stops; N records (1M; 100k with `--quick`) are written on A with
//!   pipelined batches (the baseline: how fast A itself takes them); B restarts and the
//!   time until it holds all N gives its catch-up rate (anti-entropy pages over libp2p,
//!   each merged in one transaction).
//!
//! ```text
//! cargo build --release -p ringbase-server -p ringbase-benches
//! ./target/release/sync [--quick] [--records N] [--server PATH] [--json PATH]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ringbase_benches::harness::{
    check_server, exit_code, usage_error, write_json, Args, ChildGuard, DefaultPaths, TempDir,
    Watchdog, SERVER_READY,
};
use ringbase_benches::stats::{us, Summary};
use ringbase_client::{BatchOp, Client, ConnectOptions, Request, Response, ValueKind, WatchEvent};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "\
usage: sync [--quick] [--records N] [--server PATH] [--json PATH]

  --quick        100k records for the catch-up, 300 lag samples (smoke run)
  --records N    records written while B is down [default: 1000000]
  --server PATH  the ringbase binary [default: ringbase next to this binary]
  --json PATH    where to write the results [default: target/bench-sync.json]";

struct Config {
    quick: bool,
    records: usize,
    server: PathBuf,
    json: PathBuf,
}

fn parse_args(
    args: impl IntoIterator<Item = String>,
) -> std::result::Result<Option<Config>, String> {
    let defaults = DefaultPaths::new("bench-sync.json");
    let mut args = Args::new(args);
    let mut cfg = Config {
        quick: false,
        records: 0,
        server: defaults.server,
        json: defaults.json,
    };
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--quick" => cfg.quick = true,
            "--records" => cfg.records = args.at_least_one("--records")?,
            "--server" => cfg.server = args.path("--server")?,
            "--json" => cfg.json = args.path("--json")?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if cfg.records == 0 {
        cfg.records = if cfg.quick { 100_000 } else { 1_000_000 };
    }
    Ok(Some(cfg))
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(cfg)) => exit_code("sync", run(&cfg)),
        Err(msg) => usage_error("sync", &msg, USAGE),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts server `name` listening on `port`, peering with `peer`.
fn start(cfg: &Config, tmp: &Path, name: &str, port: u16, peer: u16) -> Result<ChildGuard> {
    let (g, _) = ChildGuard::spawn_ready(
        name,
        Command::new(&cfg.server)
            .args(["serve", "--name", name, "--data-dir"])
            .arg(tmp.join(format!("data-{name}")))
            .args(["--sync", "peers", "--db-id", "bench", "--secret-file"])
            .arg(tmp.join("secret"))
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
            .args(["--peer", &format!("/ip4/127.0.0.1/tcp/{peer}")])
            .env("RINGBASE_RUNTIME_DIR", tmp.join("run")),
        SERVER_READY,
        Duration::from_secs(30),
    )?;
    Ok(g)
}

fn connect(tmp: &Path, name: &str) -> Result<Client> {
    Ok(Client::connect_with(
        ConnectOptions::new(name).runtime_dir(tmp.join("run")),
    )?)
}

/// Waits for the change of `key` on watcher `w`; when it arrived.
fn wait_event(w: &mut Client, key: &str) -> Result<Instant> {
    loop {
        match w.next_event(Some(Duration::from_secs(30)))? {
            Some(WatchEvent::Change(c)) if c.key == key => return Ok(Instant::now()),
            Some(_) => {}
            None => return Err(format!("no event for {key} within 30 s").into()),
        }
    }
}

fn run(cfg: &Config) -> Result<()> {
    check_server(&cfg.server)?;
    let wd = Watchdog::start()?;
    let tmp = TempDir::new("ringbase-bench-sync")?;
    std::fs::write(
        tmp.path().join("secret"),
        "the secret of the sync benchmark",
    )?;
    let (pa, pb) = (free_port()?, free_port()?);
    wd.arm("starting", Duration::from_secs(120));
    let server_a = start(cfg, tmp.path(), "bench-sync-a", pa, pb)?;
    let mut server_b = Some(start(cfg, tmp.path(), "bench-sync-b", pb, pa)?);
    let mut a = connect(tmp.path(), "bench-sync-a")?;
    let mut b = connect(tmp.path(), "bench-sync-b")?;
    // Connected once a write on A shows on B.
    a.put_json("hello", "1")?;
    let t = Instant::now();
    while b.get("hello")?.is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("the servers did not connect within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Lag.
    wd.arm("lag", Duration::from_secs(600));
    let samples = if cfg.quick { 300 } else { 2000 };
    let mut wa = connect(tmp.path(), "bench-sync-a")?;
    let mut wb = connect(tmp.path(), "bench-sync-b")?;
    wa.watch("lag/", None, false)?;
    wb.watch("lag/", None, false)?;
    let (mut local, mut remote, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..samples {
        let key = format!("lag/{i:06}");
        let t0 = Instant::now();
        a.put_json(&key, "{\"v\":1}")?;
        rtt.push(t0.elapsed().as_nanos() as u64);
        local.push((wait_event(&mut wa, &key)? - t0).as_nanos() as u64);
        remote.push((wait_event(&mut wb, &key)? - t0).as_nanos() as u64);
        // Writes spaced like a game's saves, not a flood.
        std::thread::sleep(Duration::from_millis(2));
    }
    let local = Summary::from_samples(&mut local).ok_or("no samples")?;
    let remote = Summary::from_samples(&mut remote).ok_or("no samples")?;
    let rtt = Summary::from_samples(&mut rtt).ok_or("no samples")?;
    println!("| lag ({samples} puts on A, one at a time) | p50 µs | p99 µs |");
    println!("|---|---:|---:|");
    println!(
        "| put round trip on A | {} | {} |",
        us(rtt.p50_ns),
        us(rtt.p99_ns)
    );
    println!(
        "| put → watcher on A (local, baseline) | {} | {} |",
        us(local.p50_ns),
        us(local.p99_ns)
    );
    println!(
        "| put → watcher on B (replicated) | {} | {} |",
        us(remote.p50_ns),
        us(remote.p99_ns)
    );
    drop((wa, wb));

    // Catch-up.
    wd.arm("catch-up", Duration::from_secs(3600));
    let before = b.count(None)?;
    drop(b);
    drop(server_b.take());
    let n = cfg.records;
    let t = Instant::now();
    let mut i = 0;
    let mut inflight = 0;
    while i < n {
        let ops = (i..(i + 256).min(n))
            .map(|j| BatchOp::Put {
                key: format!("bulk/{j:08}"),
                value: format!("{{\"n\":{j},\"name\":\"record {j}\"}}").into_bytes(),
                kind: ValueKind::Json,
            })
            .collect();
        i = (i + 256).min(n);
        a.send(&Request::Batch { ops })?;
        inflight += 1;
        if inflight == 16 {
            for _ in 0..inflight {
                match a.recv()?.1 {
                    Response::Batch(_) => {}
                    other => return Err(format!("batch failed: {other:?}").into()),
                }
            }
            inflight = 0;
        }
    }
    for _ in 0..inflight {
        match a.recv()?.1 {
            Response::Batch(_) => {}
            other => return Err(format!("batch failed: {other:?}").into()),
        }
    }
    let load_s = t.elapsed().as_secs_f64();
    let want = before + n as u64;
    let t = Instant::now();
    let _server_b = start(cfg, tmp.path(), "bench-sync-b", pb, pa)?;
    let mut b = connect(tmp.path(), "bench-sync-b")?;
    loop {
        if b.count(None)? >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let catch_s = t.elapsed().as_secs_f64();
    println!();
    println!(
        "catch-up: {n} records written on A while B was down ({:.0} records/s into A, the baseline); B restarted and held them all after {catch_s:.1} s: {:.0} records/s ({:.2}x A's write rate)",
        n as f64 / load_s,
        n as f64 / catch_s,
        load_s / catch_s
    );
    wd.disarm();
    drop(server_a);
    write_json(
        &cfg.json,
        &json!({
            "bench": "sync",
            "quick": cfg.quick,
            "lag_samples": samples,
            "put_rtt": rtt.to_json(),
            "local_watch": local.to_json(),
            "replicated_watch": remote.to_json(),
            "catch_up_records": n,
            "load_records_per_s": n as f64 / load_s,
            "catch_up_s": catch_s,
            "catch_up_records_per_s": n as f64 / catch_s,
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("results: {}", cfg.json.display());
    Ok(())
}
