//! Benchmark of queries, full-text search and change feeds (issue 10).
//!
//! One run loads N records (1M; 100k with `--quick`) of small JSON values
//! (`{"type": one of 16 words, "hp": 0..1000, "name": two words of a 64-word
//! vocabulary}`) into a fresh `ringbase serve`, and the same rows into an in-process
//! SQLite database with the same page size and an equivalent schema (the baseline, same
//! run). Then, one client, sequential calls, each timed:
//!
//! - queries: a point lookup by key through SQL, a JSON-field equality with `LIMIT 10`
//!   on an indexed field, the same field through `list --where`, and a COUNT over a
//!   field range (a full scan; a few samples);
//! - full text: turning the index on (build time over N records), then one-word and
//!   two-word searches, 20 hits;
//! - change feed: a writer puts while 1 and then 4 watcher clients (threads of this
//!   process, each its own session) follow every change; latency = from the put's send
//!   to the event's arrival at each watcher (so it includes the put's round trip and the
//!   commit; the put round trip alone is measured in the same phase), and throughput =
//!   changes per second each watcher received while a writer pipelines puts.
//!
//! ```text
//! cargo build --release -p ringbase-server -p ringbase-benches
//! ./target/release/query [--quick] [--records N] [--server PATH] [--json PATH]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringbase_benches::harness::{
    check_server, exit_code, usage_error, write_json, Args, ChildGuard, DefaultPaths, TempDir,
    Watchdog, SERVER_READY,
};
use ringbase_benches::stats::{us, Summary};
use ringbase_client::{
    BatchOp, Client, ConnectOptions, FieldFilter, QueryOptions, Request, Response, SqlValue,
    ValueKind, WatchEvent,
};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "\
usage: query [--quick] [--records N] [--server PATH] [--json PATH]

  --quick        100k records and fewer samples (smoke run)
  --records N    records to load [default: 1000000]
  --server PATH  the ringbase binary [default: ringbase next to this binary]
  --json PATH    where to write the results [default: target/bench-query.json]";

const SERVER_NAME: &str = "bench-query";
const TYPES: usize = 16;
const WORDS: [&str; 64] = [
    "amber", "basalt", "cinder", "delta", "ember", "fjord", "garnet", "harbor", "iris", "jade",
    "kestrel", "lumen", "marble", "nectar", "onyx", "pollen", "quartz", "raven", "sable", "tundra",
    "umber", "velvet", "willow", "xenon", "yarrow", "zephyr", "acorn", "birch", "cedar", "dune",
    "elm", "flint", "grove", "heath", "ivy", "juniper", "kelp", "lichen", "moss", "nettle", "oak",
    "pine", "quill", "reed", "sage", "thorn", "umbra", "vale", "wren", "yew", "zinc", "alder",
    "bramble", "clover", "dew", "fern", "gorse", "hazel", "iron", "jet", "knoll", "larch", "maple",
    "nook",
];

#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    records: usize,
    server: PathBuf,
    json: PathBuf,
}

fn parse_args(
    args: impl IntoIterator<Item = String>,
) -> std::result::Result<Option<Config>, String> {
    let defaults = DefaultPaths::new("bench-query.json");
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
        Ok(Some(cfg)) => exit_code("query", run(&cfg)),
        Err(msg) => usage_error("query", &msg, USAGE),
    }
}

fn key(i: usize) -> String {
    format!("rec:{i:08}")
}

fn value(i: usize) -> String {
    let w1 = WORDS[(i * 7) % WORDS.len()];
    let w2 = WORDS[(i * 13 + 5) % WORDS.len()];
    format!(
        r#"{{"type":"t{}","hp":{},"name":"{w1} {w2}"}}"#,
        i % TYPES,
        (i * 31) % 1000
    )
}

/// Times `f` `n` times; the summary of the samples.
fn time_n(n: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Summary> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Summary::from_samples(&mut samples).ok_or_else(|| "no samples".into())
}

fn row(name: &str, rb: &Summary, base: Option<&Summary>) -> Value {
    let mut o = json!({ "name": name, "ringbase": rb.to_json() });
    if let Some(b) = base {
        o["sqlite_in_process"] = b.to_json();
        o["p50_ratio"] = json!(rb.p50_ns as f64 / b.p50_ns.max(1) as f64);
    }
    o
}

fn print_row(name: &str, rb: &Summary, base: Option<&Summary>) {
    match base {
        Some(b) => println!(
            "| {name} | {} | {} | {} | {} | {:.2} |",
            us(rb.p50_ns),
            us(rb.p99_ns),
            us(b.p50_ns),
            us(b.p99_ns),
            rb.p50_ns as f64 / b.p50_ns.max(1) as f64
        ),
        None => println!(
            "| {name} | {} | {} | — | — | — |",
            us(rb.p50_ns),
            us(rb.p99_ns)
        ),
    }
}

fn run(cfg: &Config) -> Result<()> {
    check_server(&cfg.server)?;
    let watchdog = Watchdog::start()?;
    let tmp = TempDir::new("ringbase-bench-query")?;
    let runtime = tmp.path().join("run");
    let (server, line) = ChildGuard::spawn_ready(
        "ringbase",
        Command::new(&cfg.server)
            .args(["serve", "--name", SERVER_NAME, "--data-dir"])
            .arg(tmp.path().join("data"))
            .env("RINGBASE_RUNTIME_DIR", &runtime),
        SERVER_READY,
        Duration::from_secs(10),
    )?;
    eprintln!("{line} (pid {})", server.pid());
    let opts = ConnectOptions::new(SERVER_NAME).runtime_dir(&runtime);
    let mut c = Client::connect_with(opts.clone())?;
    let n = cfg.records;
    let samples = if cfg.quick { 300 } else { 2000 };

    // Load.
    watchdog.arm("loading", Duration::from_secs(600));
    let t = Instant::now();
    load(&mut c, n)?;
    let load_s = t.elapsed().as_secs_f64();
    let base = baseline(tmp.path(), n)?;
    eprintln!("loaded {n} records in {load_s:.1} s");
    c.create_index("$.type")?;

    println!("query bench: {n} records of ~60-byte JSON; one client, sequential calls; 2 CPUs");
    println!();
    println!("| operation | ringbase p50 µs | p99 µs | in-process SQLite p50 µs | p99 µs | ratio (p50) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);

    // Queries.
    watchdog.arm("queries", Duration::from_secs(600));
    let keys: Vec<usize> = (0..samples).map(|_| rng.gen_range(0..n)).collect();
    let q_point = "SELECT value FROM records WHERE key = ?1";
    let rb = time_n(samples, |i| {
        let r = c.query(q_point, &[SqlValue::Text(key(keys[i]))])?;
        assert_eq!(r.rows.len(), 1);
        Ok(())
    })?;
    let b = time_n(samples, |i| {
        let mut st = base.prepare_cached("SELECT value FROM records WHERE key = ?1")?;
        let v: String = st.query_row([key(keys[i])], |r| r.get(0))?;
        assert!(!v.is_empty());
        Ok(())
    })?;
    print_row("SQL point lookup by key", &rb, Some(&b));
    rows.push(row("sql_point_lookup", &rb, Some(&b)));

    let q_field = "SELECT key FROM records WHERE json_extract(value, '$.type') = ?1 LIMIT 10";
    let rb = time_n(samples, |i| {
        let r = c.query(q_field, &[SqlValue::Text(format!("t{}", i % TYPES))])?;
        assert_eq!(r.rows.len(), 10);
        Ok(())
    })?;
    let b = time_n(samples, |i| {
        let mut st = base.prepare_cached(q_field)?;
        let n = st
            .query_map([format!("t{}", i % TYPES)], |r| r.get::<_, String>(0))?
            .count();
        assert_eq!(n, 10);
        Ok(())
    })?;
    print_row("SQL JSON field = ? LIMIT 10 (indexed)", &rb, Some(&b));
    rows.push(row("sql_json_field_indexed", &rb, Some(&b)));

    let rb = time_n(samples, |i| {
        let f = FieldFilter {
            path: "$.type".into(),
            value: format!("\"t{}\"", i % TYPES),
        };
        let page = c.list_where("rec:", None, 10, &f)?;
        assert_eq!(page.records.len(), 10);
        Ok(())
    })?;
    print_row("list --where $.type (indexed), 10 records", &rb, Some(&b));
    rows.push(row("list_where_indexed", &rb, Some(&b)));

    let scans = if cfg.quick { 5 } else { 7 };
    let q_scan = "SELECT count(*) FROM records WHERE json_extract(value, '$.hp') < 10";
    let long = QueryOptions {
        timeout: Duration::from_secs(30),
        ..QueryOptions::default()
    };
    let rb = time_n(scans, |_| {
        c.query_with(q_scan, &[], long)?;
        Ok(())
    })?;
    let b = time_n(scans, |_| {
        let _: i64 = base.query_row(q_scan, [], |r| r.get(0))?;
        Ok(())
    })?;
    print_row("SQL COUNT over a JSON field (full scan)", &rb, Some(&b));
    rows.push(row("sql_full_scan_count", &rb, Some(&b)));

    // Full text.
    watchdog.arm("full text", Duration::from_secs(900));
    let t = Instant::now();
    c.set_fulltext(true)?;
    let fts_build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    base.execute_batch(
        "CREATE VIRTUAL TABLE fts USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');
         INSERT INTO fts(rowid, text) SELECT rowid, json_extract(value, '$.name') FROM records;",
    )?;
    let base_fts_build_s = t.elapsed().as_secs_f64();
    // A search ranks every match (tens of ms over 1M records): fewer samples.
    let searches = samples.min(300);
    let one_word = |i: usize| WORDS[i % WORDS.len()].to_string();
    let two_words = |i: usize| {
        format!(
            "{} {}",
            WORDS[(i * 7) % WORDS.len()],
            WORDS[(i * 13 + 5) % WORDS.len()]
        )
    };
    // The baseline runs the server's search (every word quoted, best first, snippets).
    let base_search = |text: &str| -> Result<usize> {
        let mut st = base.prepare_cached(
            "SELECT rowid, -rank, snippet(fts, 0, '[', ']', '…', 12) FROM fts
             WHERE fts MATCH ?1 ORDER BY rank LIMIT 20",
        )?;
        let q: Vec<String> = text
            .split_whitespace()
            .map(|w| format!("\"{w}\""))
            .collect();
        let n = st.query_map([q.join(" ")], |r| r.get::<_, i64>(0))?.count();
        Ok(n)
    };
    let rb = time_n(searches, |i| {
        assert!(!c.search(&one_word(i), 20)?.is_empty());
        Ok(())
    })?;
    let b = time_n(searches, |i| {
        assert!(base_search(&one_word(i))? > 0);
        Ok(())
    })?;
    print_row("search one word, 20 hits", &rb, Some(&b));
    rows.push(row("search_one_word", &rb, Some(&b)));
    let rb = time_n(searches, |i| {
        c.search(&two_words(i), 20)?;
        Ok(())
    })?;
    let b = time_n(searches, |i| {
        base_search(&two_words(i))?;
        Ok(())
    })?;
    print_row("search two words, 20 hits", &rb, Some(&b));
    rows.push(row("search_two_words", &rb, Some(&b)));
    c.set_fulltext(false)?;
    println!();
    println!(
        "Load: {n} records in {load_s:.1} s. Full-text index build over them: ringbase {fts_build_s:.1} s, in-process FTS5 of the name field {base_fts_build_s:.1} s."
    );

    // Change feed.
    watchdog.arm("change feed", Duration::from_secs(600));
    println!();
    println!("| change feed | watchers | send→event p50 µs | p99 µs | put RTT p50 µs (same phase) | pipelined puts/s | events/s per watcher |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut feed_rows = Vec::new();
    for watchers in [1usize, 4] {
        let r = feed_phase(
            &opts,
            watchers,
            if cfg.quick { 500 } else { 3000 },
            cfg.quick,
        )?;
        println!(
            "| put → watcher | {watchers} | {} | {} | {} | {:.0} | {:.0} |",
            us(r.latency.p50_ns),
            us(r.latency.p99_ns),
            us(r.put_rtt.p50_ns),
            r.puts_per_s,
            r.events_per_s
        );
        feed_rows.push(json!({
            "watchers": watchers,
            "latency": r.latency.to_json(),
            "put_rtt": r.put_rtt.to_json(),
            "pipelined_puts_per_s": r.puts_per_s,
            "events_per_s_per_watcher": r.events_per_s,
        }));
    }
    // A watcher that stops reading must not slow the writers: pipelined puts with no
    // watcher and with one stalled watcher (its 16 KiB event ring full), alternated.
    watchdog.arm("stalled watcher", Duration::from_secs(600));
    let per_run = if cfg.quick { 10_000 } else { 50_000 };
    let (mut free, mut stalled) = (Vec::new(), Vec::new());
    for round in 0..2 {
        free.push(pipelined_puts(&mut c, &format!("free{round}:"), per_run)?);
        let mut sopts = opts.clone();
        sopts.rings.event = 16 * 1024;
        let mut idle = Client::connect_with(sopts)?;
        idle.watch(&format!("stall{round}:"), None, false)?;
        stalled.push(pipelined_puts(&mut c, &format!("stall{round}:"), per_run)?);
        drop(idle);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0] + v[1]) / 2.0
    };
    let (free, stalled) = (med(&mut free), med(&mut stalled));
    println!();
    println!(
        "Pipelined puts/s while a watcher has stopped reading: {stalled:.0} (no watcher, same run: {free:.0}; ratio {:.2}).",
        stalled / free
    );
    watchdog.disarm();
    drop(server);
    let results = json!({
        "bench": "query",
        "records": n,
        "quick": cfg.quick,
        "load_s": load_s,
        "fulltext_build_s": fts_build_s,
        "baseline_fts_build_s": base_fts_build_s,
        "rows": rows,
        "feed": feed_rows,
        "puts_per_s_no_watcher": free,
        "puts_per_s_stalled_watcher": stalled,
    });
    write_json(&cfg.json, &results).map_err(|e| e.to_string())?;
    eprintln!("results written to {}", cfg.json.display());
    Ok(())
}

/// Loads `n` records through pipelined batches of 256.
fn load(c: &mut Client, n: usize) -> Result<()> {
    let mut sent = 0;
    let mut i = 0;
    while i < n {
        let ops = (i..(i + 256).min(n))
            .map(|j| BatchOp::Put {
                key: key(j),
                value: value(j).into_bytes(),
                kind: ValueKind::Json,
            })
            .collect();
        i = (i + 256).min(n);
        c.send(&Request::Batch { ops })?;
        sent += 1;
        if sent == 16 {
            for _ in 0..sent {
                expect_batch(c.recv()?.1)?;
            }
            sent = 0;
        }
    }
    for _ in 0..sent {
        expect_batch(c.recv()?.1)?;
    }
    Ok(())
}

fn expect_batch(r: Response) -> Result<()> {
    match r {
        Response::Batch(_) => Ok(()),
        other => Err(format!("load: {other:?}").into()),
    }
}

/// The in-process baseline: the same rows and page size, a unique index on the key, an
/// expression index on `$.type` (a rowid table, so the FTS5 baseline can join on rowid).
fn baseline(dir: &Path, n: usize) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(dir.join("baseline.db"))?;
    conn.execute_batch(
        "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE records(key TEXT NOT NULL UNIQUE, value TEXT NOT NULL);",
    )?;
    let tx = conn.unchecked_transaction()?;
    {
        let mut st = tx.prepare("INSERT INTO records(key, value) VALUES (?1, ?2)")?;
        for i in 0..n {
            st.execute([key(i), value(i)])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("CREATE INDEX ix_type ON records(json_extract(value, '$.type'));")?;
    Ok(conn)
}

/// Puts `n` records under `prefix` in pipelined windows of 64; puts per second.
fn pipelined_puts(c: &mut Client, prefix: &str, n: usize) -> Result<f64> {
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let w = 64.min(n - i);
        for j in 0..w {
            c.send(&Request::Put {
                key: format!("{prefix}{:08}", i + j),
                value: b"{\"x\":3}".to_vec(),
                kind: ValueKind::Json,
            })?;
        }
        for _ in 0..w {
            c.recv()?;
        }
        i += w;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

struct FeedResult {
    latency: Summary,
    put_rtt: Summary,
    puts_per_s: f64,
    events_per_s: f64,
}

/// `watchers` sessions follow `feed:`; a writer puts `n` records one at a time (latency
/// from send to each watcher's event), then pipelines puts for a while (throughput).
fn feed_phase(opts: &ConnectOptions, watchers: usize, n: usize, quick: bool) -> Result<FeedResult> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let lat: Arc<Mutex<Vec<u64>>> = Arc::default();
    let ready = Arc::new(Barrier::new(watchers + 1));
    let tag = format!("feed{watchers}:");
    let throughput_keys = if quick { 20_000 } else { 100_000 };
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let (opts, sent, lat, ready, tag) = (
            opts.clone(),
            sent.clone(),
            lat.clone(),
            ready.clone(),
            tag.clone(),
        );
        handles.push(std::thread::spawn(move || -> Result<(usize, f64)> {
            let mut w = Client::connect_with(opts)?;
            w.watch(&tag, None, false)?;
            ready.wait();
            let mut got = 0;
            let mut first_bulk: Option<Instant> = None;
            let mut bulk = 0usize;
            while got < n + throughput_keys {
                match w.next_event(Some(Duration::from_secs(60)))? {
                    Some(WatchEvent::Change(ch)) => {
                        let now = Instant::now();
                        got += 1;
                        if got <= n {
                            if let Some(t) = sent.lock().unwrap().get(&ch.key) {
                                lat.lock().unwrap().push((now - *t).as_nanos() as u64);
                            }
                        } else {
                            first_bulk.get_or_insert(now);
                            bulk += 1;
                        }
                    }
                    Some(WatchEvent::Overflow { last_seq }) => {
                        return Err(format!("watcher overflowed after {last_seq}").into())
                    }
                    None => return Err("watcher: no event for 60 s".into()),
                }
            }
            let secs = first_bulk.map_or(0.0, |t| t.elapsed().as_secs_f64());
            Ok((got, if secs > 0.0 { bulk as f64 / secs } else { 0.0 }))
        }));
    }
    let mut c = Client::connect_with(opts.clone())?;
    ready.wait();
    let mut rtt = Vec::with_capacity(n);
    for i in 0..n {
        let k = format!("{tag}{i:07}");
        let t = Instant::now();
        sent.lock().unwrap().insert(k.clone(), t);
        c.put(&k, b"{\"x\":1}", ValueKind::Json)?;
        rtt.push(t.elapsed().as_nanos() as u64);
        // Let the watchers drain between puts: one change in flight at a time.
        std::thread::sleep(Duration::from_micros(200));
    }
    // Throughput: pipelined puts, windows of 64.
    let puts_per_s = pipelined_puts(&mut c, &format!("{tag}bulk"), throughput_keys)?;
    let mut rates = Vec::new();
    for h in handles {
        let (_, rate) = h.join().map_err(|_| "watcher panicked")??;
        rates.push(rate);
    }
    let mut lat = std::mem::take(&mut *lat.lock().unwrap());
    Ok(FeedResult {
        latency: Summary::from_samples(&mut lat).ok_or("no feed samples")?,
        put_rtt: Summary::from_samples(&mut rtt).ok_or("no put samples")?,
        puts_per_s,
        events_per_s: rates.iter().sum::<f64>() / rates.len() as f64,
    })
}
