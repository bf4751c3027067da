//! The client subcommands of `ringbase`: they talk to a running server through shared
//! memory like any other client.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use ringbase_client::{
    Client, FieldFilter, QueryOptions, Record, SqlValue, ValueKind, VectorSearch, Version,
    WatchEvent,
};
use serde_json::{json, Value};

/// Exit code for a failure to reach the server or a server error.
const FAIL: u8 = 2;

/// Connects to the server `name` and runs `f` on the session; a failure to connect
/// prints the error and exits with [`FAIL`].
fn with_client(name: &str, f: impl FnOnce(&mut Client) -> ExitCode) -> ExitCode {
    match Client::connect(name) {
        Ok(mut c) => f(&mut c),
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ringbase: {e}");
    ExitCode::from(FAIL)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn version_json(v: &Version) -> Value {
    json!({ "hlc": v.hlc, "replica": hex(&v.replica), "seq": v.seq })
}

/// One record as a JSON object: JSON values inline, byte values as hex.
fn record_json(r: &Record) -> Value {
    let mut o = json!({
        "key": r.key,
        "kind": match r.kind { ValueKind::Json => "json", ValueKind::Bytes => "bytes" },
        "version": version_json(&r.version),
        "updated_at_ms": r.updated_at_ms,
    });
    match r.kind {
        ValueKind::Json => {
            o["value"] = serde_json::from_slice(&r.value)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.value).into_owned()))
        }
        ValueKind::Bytes => o["value_hex"] = Value::String(hex(&r.value)),
    }
    o
}

/// `ringbase ping`
pub fn ping(name: &str) -> ExitCode {
    with_client(name, |c| {
        let t = Instant::now();
        match c.ping() {
            Ok(()) => {
                println!(
                    "pong from {name:?} in {:.1} µs",
                    t.elapsed().as_secs_f64() * 1e6
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    })
}

/// A vector given on the command line: a JSON array of numbers.
fn parse_vector(text: &str) -> Result<Vec<f32>, String> {
    let v: Vec<f64> = serde_json::from_str(text)
        .map_err(|e| format!("the vector must be a JSON array of numbers ({e}): {text:?}"))?;
    Ok(v.into_iter().map(|x| x as f32).collect())
}

/// `ringbase put KEY JSON [--vector V]` / `ringbase put KEY --bytes-file F [--vector V]`
pub fn put(
    name: &str,
    key: &str,
    json: Option<&str>,
    bytes_file: Option<&Path>,
    vector: Option<&str>,
) -> ExitCode {
    let vector = match vector.map(parse_vector).transpose() {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let (value, kind) = match (json, bytes_file) {
        (Some(j), None) => (j.as_bytes().to_vec(), ValueKind::Json),
        (None, Some(f)) => match std::fs::read(f) {
            Ok(b) => (b, ValueKind::Bytes),
            Err(e) => return fail(&format!("reading {}: {e}", f.display())),
        },
        _ => return fail(&"give either a JSON value or --bytes-file FILE"),
    };
    let put = |c: &mut Client| match &vector {
        Some(vec) => c.put_with_vector(key, &value, kind, vec),
        None => c.put(key, &value, kind),
    };
    with_client(name, |c| match put(c) {
        Ok(v) => {
            println!("{}", json!({ "key": key, "version": version_json(&v) }));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// `ringbase get KEY`: the value on stdout (JSON text, or the raw bytes); a missing key
/// prints a message on stderr and exits 1.
pub fn get(name: &str, key: &str) -> ExitCode {
    with_client(name, |c| match c.get_view(key) {
        Ok(Some(v)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(v.value);
            if v.kind == ValueKind::Json {
                let _ = out.write_all(b"\n");
            }
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("ringbase: key {key:?} not found");
            ExitCode::from(1)
        }
        Err(e) => fail(&e),
    })
}

/// `ringbase delete KEY`
pub fn delete(name: &str, key: &str) -> ExitCode {
    with_client(name, |c| match c.delete(key) {
        Ok(existed) => {
            println!("{}", json!({ "key": key, "deleted": existed }));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// `ringbase list [--prefix P] [--limit N]`: one JSON object per line, paging through
/// the server until `limit` records (or all) are printed.
pub fn list(name: &str, prefix: &str, limit: Option<u64>, filter: Option<&str>) -> ExitCode {
    let filter = match filter.map(parse_filter).transpose() {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    with_client(name, |c| {
        let mut left = limit.unwrap_or(u64::MAX);
        let mut after: Option<String> = None;
        let mut out = std::io::stdout().lock();
        while left > 0 {
            let want = left.min(1000) as u32;
            let page = match &filter {
                None => c.list(prefix, after.as_deref(), want),
                Some(f) => c.list_where(prefix, after.as_deref(), want, f),
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => return fail(&e),
            };
            for r in &page.records {
                if writeln!(out, "{}", record_json(r)).is_err() {
                    return ExitCode::SUCCESS; // stdout closed (e.g. piped into head)
                }
            }
            left -= page.records.len() as u64;
            match page.records.last() {
                Some(last) if page.more => after = Some(last.key.clone()),
                _ => break,
            }
        }
        ExitCode::SUCCESS
    })
}

/// `PATH = JSON` of `list --where`.
fn parse_filter(s: &str) -> Result<FieldFilter, String> {
    let (path, value) = s.split_once('=').ok_or_else(|| {
        format!("--where {s:?}: write it as 'PATH = JSON', e.g. '$.type = \"enemy\"'")
    })?;
    Ok(FieldFilter {
        path: path.trim().to_string(),
        value: value.trim().to_string(),
    })
}

/// `ringbase index create PATH`
pub fn index_create(name: &str, path: &str) -> ExitCode {
    with_client(name, |c| match c.create_index(path) {
        Ok(created) => {
            println!("{}", json!({ "path": path, "created": created }));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// `ringbase index drop PATH`
pub fn index_drop(name: &str, path: &str) -> ExitCode {
    with_client(name, |c| match c.drop_index(path) {
        Ok(existed) => {
            println!("{}", json!({ "path": path, "dropped": existed }));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// `ringbase search TEXT [--limit N]`: one JSON object per hit.
pub fn search(name: &str, text: &str, limit: u32) -> ExitCode {
    with_client(name, |c| match c.search(text, limit) {
        Ok(hits) => {
            let mut out = std::io::stdout().lock();
            for h in hits {
                let line = json!({ "key": h.key, "score": h.score, "snippet": h.snippet });
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// `ringbase vsearch VECTOR [--k N] [--prefix P] [--min-score S] [--ef N] [--values]`:
/// one JSON line per result, best first.
pub fn vsearch(name: &str, vector: &str, opts: &VectorSearch) -> ExitCode {
    let vector = match parse_vector(vector) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    with_client(name, |c| {
        print_neighbors(c.vector_search_with(&vector, opts))
    })
}

/// `ringbase search-text TEXT [--k N] [--prefix P] [--min-score S] [--ef N] [--values]`:
/// the records nearest in meaning to TEXT (the server embeds it), as `vsearch` prints
/// them.
pub fn search_text(name: &str, text: &str, opts: &VectorSearch) -> ExitCode {
    with_client(name, |c| print_neighbors(c.search_text_with(text, opts)))
}

/// Search results, one JSON line each, best first.
fn print_neighbors(found: ringbase_client::Result<Vec<ringbase_client::Neighbor>>) -> ExitCode {
    match found {
        Ok(hits) => {
            let mut out = std::io::stdout().lock();
            for h in hits {
                let mut line = match &h.record {
                    Some(r) => record_json(r),
                    None => json!({ "key": h.key }),
                };
                line["score"] = json!(h.score);
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `ringbase watch [--prefix P] [--since N] [--values] [--count N]`: JSON lines. An
/// overflow marker (the watcher fell behind) prints `{"overflow": LAST}` and resumes
/// after LAST, so nothing is missed while the server's change log holds it.
pub fn watch(
    name: &str,
    prefix: &str,
    since: Option<u64>,
    values: bool,
    count: Option<u64>,
) -> ExitCode {
    with_client(name, |c| {
        if let Err(e) = c.watch(prefix, since, values) {
            return fail(&e);
        }
        let mut out = std::io::stdout().lock();
        let mut left = count.unwrap_or(u64::MAX);
        while left > 0 {
            let line = match c.next_event(None) {
                Ok(Some(WatchEvent::Change(ch))) => {
                    left -= 1;
                    let mut o = json!({
                        "seq": ch.seq,
                        "txn": ch.txn,
                        "key": ch.key,
                        "kind": match ch.kind { ValueKind::Json => "json", ValueKind::Bytes => "bytes" },
                        "deleted": ch.deleted,
                        "version": version_json(&ch.version),
                        "updated_at_ms": ch.updated_at_ms,
                    });
                    match (&ch.value, ch.kind) {
                        (Some(v), ValueKind::Json) => {
                            o["value"] = serde_json::from_slice(v).unwrap_or(Value::Null)
                        }
                        (Some(v), ValueKind::Bytes) => o["value_hex"] = Value::String(hex(v)),
                        (None, _) if ch.value_omitted => o["value_omitted"] = Value::Bool(true),
                        _ => {}
                    }
                    o
                }
                Ok(Some(WatchEvent::Overflow { last_seq })) => {
                    if let Err(e) = c.watch(prefix, Some(last_seq), values) {
                        return fail(&e);
                    }
                    json!({ "overflow": last_seq })
                }
                Ok(None) => continue,
                Err(e) => return fail(&e),
            };
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                break; // stdout closed
            }
        }
        ExitCode::SUCCESS
    })
}

/// `ringbase fulltext on|off`
pub fn fulltext(name: &str, on: bool) -> ExitCode {
    with_client(name, |c| match c.set_fulltext(on) {
        Ok(changed) => {
            println!("{}", json!({ "fulltext": on, "changed": changed }));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// `ringbase index list`: one path per line.
pub fn index_list(name: &str) -> ExitCode {
    with_client(name, |c| match c.status() {
        Ok(s) => {
            for p in s.indexes {
                println!("{p}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// A replication peer as JSON.
fn peer_json(p: &ringbase_protocol::message::PeerStatus) -> Value {
    json!({
        "peer": p.peer,
        "behind": p.behind,
        "ahead": p.ahead,
        "vv": p.vv.iter().map(|r| json!({
            "replica": hex(&r.replica),
            "runs": r.runs,
        })).collect::<Vec<_>>(),
        "relayed": p.relayed,
    })
}

/// `ringbase peers`: the replication peers, one JSON line each.
pub fn peers(name: &str) -> ExitCode {
    with_client(name, |c| match c.status() {
        Ok(s) => match s.sync {
            Some(y) => {
                for p in &y.peers {
                    println!("{}", peer_json(p));
                }
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("ringbase: this server does not replicate (start it with --sync)");
                ExitCode::from(1)
            }
        },
        Err(e) => fail(&e),
    })
}

/// `ringbase status`: JSON.
pub fn status(name: &str) -> ExitCode {
    with_client(name, |c| match c.status() {
        Ok(s) => {
            let v = json!({
                "records": s.records,
                "sessions": s.sessions,
                "uptime_ms": s.uptime_ms,
                "data_dir": s.data_dir,
                "db_size_bytes": s.db_size_bytes,
                "version": s.version,
                "protocol": s.protocol,
                "replica_id": hex(&s.replica_id),
                "pid": s.pid,
                "commits": s.commits,
                "write_jobs": s.write_jobs,
                "indexes": s.indexes,
                "fulltext": s.fulltext,
                "vectors": {
                    "dim": s.vectors.dim,
                    "vectors": s.vectors.vectors,
                    "points": s.vectors.points,
                    "dead": s.vectors.dead,
                    "pending": s.vectors.pending,
                    "rebuilds": s.vectors.rebuilds,
                    "last_rebuild_ms": s.vectors.last_rebuild_ms,
                    "ready": s.vectors.ready,
                    "embedder": s.vectors.embedder,
                },
                "sync": s.sync.as_ref().map(|y| json!({
                    "db_id": y.db_id,
                    "mode": y.mode,
                    "peer_id": y.peer_id,
                    "listening": y.listening,
                    "bad_messages": y.bad_messages,
                    "last_error": y.last_error,
                    "peers": y.peers.iter().map(peer_json).collect::<Vec<_>>(),
                })),
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}

/// Output of `ringbase query`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormat {
    /// One JSON object per row, keyed by column name.
    Json,
    /// An aligned text table with a header.
    Table,
}

/// A query parameter from JSON: null, numbers (integers stay integers), strings,
/// booleans (1/0), `{"blob": "HEX"}` for bytes, and any other object or array as its JSON
/// text.
fn param_from_json(v: &Value) -> Result<SqlValue, String> {
    Ok(match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(
                n.as_f64()
                    .ok_or_else(|| format!("number {n} out of range"))?,
            ),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Object(o) if o.len() == 1 && o.contains_key("blob") => {
            let hex = o["blob"].as_str().ok_or("\"blob\" takes a hex string")?;
            SqlValue::Blob(unhex(hex).ok_or_else(|| format!("bad hex in blob: {hex:?}"))?)
        }
        other => SqlValue::Text(other.to_string()),
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A result cell as JSON: blobs as `{"blob": "HEX"}`, non-finite floats as strings.
fn cell_json(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Real(f) if f.is_finite() => json!(f),
        SqlValue::Real(f) => Value::String(f.to_string()),
        SqlValue::Text(t) => Value::String(t.clone()),
        SqlValue::Blob(b) => json!({ "blob": hex(b) }),
    }
}

/// A result cell as table text.
fn cell_text(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "NULL".into(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) => f.to_string(),
        SqlValue::Text(t) => t.clone(),
        SqlValue::Blob(b) => format!("x'{}'", hex(b)),
    }
}

/// `ringbase query SQL [--params JSON] [--format json|table] [--max-rows N] [--timeout-ms T]`
pub fn query(
    name: &str,
    sql: &str,
    params: Option<&str>,
    format: QueryFormat,
    opts: QueryOptions,
) -> ExitCode {
    let params = match params.map(serde_json::from_str::<Value>) {
        None => Vec::new(),
        Some(Ok(Value::Array(items))) => match items.iter().map(param_from_json).collect() {
            Ok(p) => p,
            Err(e) => return fail(&format!("--params: {e}")),
        },
        Some(Ok(_)) => return fail(&"--params takes a JSON array, e.g. '[\"player:\", 3]'"),
        Some(Err(e)) => return fail(&format!("--params is not JSON: {e}")),
    };
    with_client(name, |c| {
        let rows = match c.query_with(sql, &params, opts) {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        let mut out = std::io::stdout().lock();
        let written = match format {
            QueryFormat::Json => rows.rows.iter().try_for_each(|row| {
                let obj: serde_json::Map<String, Value> = rows
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| (c.clone(), cell_json(v)))
                    .collect();
                writeln!(out, "{}", Value::Object(obj))
            }),
            QueryFormat::Table => write_table(&mut out, &rows.columns, &rows.rows),
        };
        if written.is_err() {
            return ExitCode::SUCCESS; // stdout closed (e.g. piped into head)
        }
        if rows.truncated {
            eprintln!(
                "ringbase: result cut short after {} rows (raise --max-rows, or page with a WHERE on the key)",
                rows.rows.len()
            );
        }
        ExitCode::SUCCESS
    })
}

fn write_table(
    out: &mut impl Write,
    columns: &[String],
    rows: &[Vec<SqlValue>],
) -> std::io::Result<()> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(cell_text).collect())
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([columns[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut dyn Write, items: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = items
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        writeln!(out, "{}", parts.join(" | ").trim_end())
    };
    line(out, &mut columns.iter().map(String::as_str))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", rule.join("-+-"))?;
    for r in &cells {
        line(out, &mut r.iter().map(String::as_str))?;
    }
    Ok(())
}
