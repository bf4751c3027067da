//! The client subcommands of `ringbase`: they talk to a running server through shared
//! memory like any other client.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use ringbase_client::{Client, Record, ValueKind, Version};
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

/// `ringbase put KEY JSON` / `ringbase put KEY --bytes-file F`
pub fn put(name: &str, key: &str, json: Option<&str>, bytes_file: Option<&Path>) -> ExitCode {
    let (value, kind) = match (json, bytes_file) {
        (Some(j), None) => (j.as_bytes().to_vec(), ValueKind::Json),
        (None, Some(f)) => match std::fs::read(f) {
            Ok(b) => (b, ValueKind::Bytes),
            Err(e) => return fail(&format!("reading {}: {e}", f.display())),
        },
        _ => return fail(&"give either a JSON value or --bytes-file FILE"),
    };
    with_client(name, |c| match c.put(key, &value, kind) {
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
pub fn list(name: &str, prefix: &str, limit: Option<u64>) -> ExitCode {
    with_client(name, |c| {
        let mut left = limit.unwrap_or(u64::MAX);
        let mut after: Option<String> = None;
        let mut out = std::io::stdout().lock();
        while left > 0 {
            let page = match c.list(prefix, after.as_deref(), left.min(1000) as u32) {
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
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    })
}
