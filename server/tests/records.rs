//! Database tests: real server processes, real writer/reader processes, `kill -9`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ringbase_client::{
    BatchOp, Client, Error, ErrorCode, Request, Response, SpawnOptions, ValueKind,
};
use ringbase_protocol::message::encode_request;
use ringbase_protocol::ring::FRAME_REQUEST;

/// Child roles (this binary re-executed by `spawn_child`).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let args = child_args();
    match role.as_str() {
        // writer ID COUNT KEYS: COUNT puts over KEYS keys "w{ID}/k{j}"; value {"w":ID,"i":i}.
        "writer" => {
            let id: u32 = args[0].parse().unwrap();
            let count: u32 = args[1].parse().unwrap();
            let keys: u32 = args[2].parse().unwrap();
            let mut c = child_connect();
            println!("ready");
            for i in 0..count {
                let key = format!("w{id}/k{:05}", (i * 7919) % keys);
                c.put_json(&key, &format!("{{\"w\":{id},\"i\":{i}}}"))
                    .unwrap_or_else(|e| panic!("put {key}: {e}"));
            }
            std::process::exit(0);
        }
        // reader ROUNDS: reads and pages while writers run; checks ordering and JSON.
        "reader" => {
            let rounds: u32 = args[0].parse().unwrap();
            let mut c = child_connect();
            println!("ready");
            for r in 0..rounds {
                let mut after: Option<String> = None;
                loop {
                    let page = c.list("w", after.as_deref(), 97).unwrap();
                    for pair in page.records.windows(2) {
                        assert!(pair[0].key < pair[1].key, "list out of order");
                    }
                    if let (Some(a), Some(first)) = (&after, page.records.first()) {
                        assert!(first.key > *a, "page does not start after start_after");
                    }
                    for rec in &page.records {
                        serde_json::from_slice::<serde_json::Value>(&rec.value)
                            .expect("stored JSON parses");
                    }
                    match page.records.last() {
                        Some(l) if page.more => after = Some(l.key.clone()),
                        _ => break,
                    }
                }
                let key = format!("w{}/k{:05}", r % 8, r % 1000);
                if let Some(v) = c.get(&key).unwrap() {
                    assert_eq!(v.key, key);
                }
            }
            std::process::exit(0);
        }
        // durable SEED: sequential puts "d/{i % 97}" = {"i":i}; prints "ack KEY I" after
        // each acknowledgement and "send I" before each request; exits 3 on Disconnected.
        "durable" => {
            let mut c = child_connect();
            println!("ready");
            let mut i: u64 = 0;
            loop {
                let key = format!("d/{:03}", i % 97);
                println!("send {i}");
                match c.put_json(&key, &format!("{{\"i\":{i}}}")) {
                    Ok(_) => println!("ack {key} {i}"),
                    Err(Error::Disconnected) => std::process::exit(3),
                    Err(e) => panic!("put: {e}"),
                }
                i += 1;
            }
        }
        // batches: atomic batches of 16 puts "b{n:06}/{j}" plus a delete of an older
        // batch's first key; prints "ack N" after each; exits 3 on Disconnected.
        "batches" => {
            let mut c = child_connect();
            println!("ready");
            let mut n: u64 = 0;
            loop {
                let mut ops: Vec<BatchOp> = (0..16)
                    .map(|j| BatchOp::Put {
                        key: format!("b{n:06}/{j:02}"),
                        value: format!("{{\"n\":{n},\"j\":{j}}}").into_bytes(),
                        kind: ValueKind::Json,
                    })
                    .collect();
                ops.push(BatchOp::Put {
                    key: "b-last".into(),
                    value: n.to_string().into_bytes(),
                    kind: ValueKind::Json,
                });
                match c.batch(ops) {
                    Ok(r) => {
                        assert_eq!(r.len(), 17);
                        println!("ack {n}");
                    }
                    Err(Error::Disconnected) => std::process::exit(3),
                    Err(e) => panic!("batch: {e}"),
                }
                n += 1;
            }
        }
        // spawner BIN DATA: connect_or_spawn, print the server's pid, exit.
        "spawner" => {
            let name = std::env::var("RINGBASE_TEST_NAME").unwrap();
            let dir = std::env::var("RINGBASE_RUNTIME_DIR").unwrap();
            let opts = ringbase_client::ConnectOptions::new(&name).runtime_dir(dir);
            let mut c = Client::connect_or_spawn(
                opts,
                SpawnOptions {
                    server_path: Some(args[0].clone().into()),
                    data_dir: Some(args[1].clone().into()),
                    timeout: Some(Duration::from_secs(60)),
                },
            )
            .expect("connect_or_spawn");
            let pid = c.status().unwrap().pid;
            println!("pid {pid}");
            std::process::exit(0);
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn eight_writers_with_concurrent_readers_last_value_wins_and_pagination_is_exact() {
    let rt = TempDir::new("writers");
    let srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), "w", &[]);
    let count: u32 = 10_000;
    let keys: u32 = 1000;
    let mut kids: Vec<Child> = (0..8)
        .map(|id| {
            spawn_child(
                "writer",
                &srv,
                &[id.to_string(), count.to_string(), keys.to_string()],
            )
        })
        .collect();
    let mut readers: Vec<Child> = (0..2)
        .map(|_| spawn_child("reader", &srv, &["40".into()]))
        .collect();
    for k in kids.iter_mut().chain(readers.iter_mut()) {
        assert_eq!(
            read_line(k, Duration::from_secs(30)).as_deref(),
            Some("ready")
        );
    }
    for k in kids.iter_mut().chain(readers.iter_mut()) {
        let st = wait_child(k, Duration::from_secs(900));
        assert!(st.success(), "a writer or reader failed: {st:?}");
    }
    // Expected final state: for each key, the last i written to it.
    let mut expect: BTreeMap<String, String> = BTreeMap::new();
    for id in 0..8u32 {
        for i in 0..count {
            expect.insert(
                format!("w{id}/k{:05}", (i * 7919) % keys),
                format!("{{\"w\":{id},\"i\":{i}}}"),
            );
        }
    }
    let mut c = srv.connect();
    for (k, v) in &expect {
        let got = c.get(k).unwrap().unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(String::from_utf8(got.value).unwrap(), *v, "{k}");
    }
    assert_eq!(c.count(Some("w")).unwrap(), expect.len() as u64);
    // Pagination by 37 equals the full sorted key list exactly.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = c.list("w", after.as_deref(), 37).unwrap();
        assert!(page.records.len() <= 37);
        paged.extend(page.records.iter().map(|r| r.key.clone()));
        match page.records.last() {
            Some(l) if page.more => after = Some(l.key.clone()),
            _ => break,
        }
    }
    assert_eq!(paged, expect.keys().cloned().collect::<Vec<_>>());
    // A prefix that is a proper subset.
    let w3 = c.list("w3/", None, 10_000).unwrap();
    assert_eq!(w3.records.len(), keys as usize);
    assert!(!w3.more);
    assert!(w3.records.iter().all(|r| r.key.starts_with("w3/")));
}

/// Reads a child's stdout lines on a thread, forwarding them on a channel.
fn line_pump(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// A small deterministic PRNG (xorshift) for seeds that can be replayed.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn seeds() -> Vec<u64> {
    match std::env::var("RINGBASE_TEST_SEED") {
        Ok(s) => vec![s.parse().expect("RINGBASE_TEST_SEED is a number")],
        Err(_) => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..3)
                .map(|i| base.wrapping_add(i * 0x9E37_79B9) | 1)
                .collect()
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    for seed in seeds() {
        eprintln!("acknowledged_writes_survive_kill_9: seed {seed} (replay with RINGBASE_TEST_SEED={seed})");
        let mut s = seed;
        let rt = TempDir::new("durable");
        let run = rt.path().join("run");
        let data = rt.path().join("data");
        let mut srv = ServerProc::start(&run, &data, "dur", &[]);
        let mut w = spawn_child("durable", &srv, &[]);
        let lines = line_pump(&mut w);
        let mut acked: HashMap<String, u64> = HashMap::new();
        let mut last_sent: Option<u64> = None;
        let take = |l: String, acked: &mut HashMap<String, u64>, last_sent: &mut Option<u64>| {
            let l = l.rsplit(" ... ").next().unwrap().to_string();
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts.as_slice() {
                ["ack", key, i] => {
                    acked.insert(key.to_string(), i.parse().unwrap());
                }
                ["send", i] => *last_sent = Some(i.parse().unwrap()),
                _ => {}
            }
        };
        // Let it write for a random time, then kill the server mid-stream.
        let run_for = Duration::from_millis(100 + rng(&mut s) % 900);
        let start = Instant::now();
        while start.elapsed() < run_for {
            if let Ok(l) = lines.recv_timeout(Duration::from_millis(10)) {
                take(l, &mut acked, &mut last_sent);
            }
        }
        srv.kill9();
        let st = wait_child(&mut w, Duration::from_secs(30));
        assert_eq!(st.code(), Some(3), "writer did not see Disconnected");
        while let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            take(l, &mut acked, &mut last_sent);
        }
        assert!(
            !acked.is_empty(),
            "seed {seed}: no write was acknowledged before the kill"
        );
        let srv2 = ServerProc::start(&run, &data, "dur", &[]);
        let mut c = srv2.connect();
        for (key, i) in &acked {
            let rec = c
                .get(key)
                .unwrap()
                .unwrap_or_else(|| panic!("seed {seed}: acknowledged {key} lost"));
            let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
            let got = v["i"].as_u64().unwrap();
            // The last acknowledged value, or the one write in flight at the kill.
            let in_flight = last_sent.filter(|s| format!("d/{:03}", s % 97) == *key);
            assert!(
                got == *i || Some(got) == in_flight,
                "seed {seed}: {key} holds i={got}, last acknowledged {i}, in flight {in_flight:?}"
            );
        }
    }
}

#[test]
fn batch_cut_by_kill_9_is_all_or_nothing() {
    for seed in seeds() {
        eprintln!("batch_cut_by_kill_9_is_all_or_nothing: seed {seed} (replay with RINGBASE_TEST_SEED={seed})");
        let mut s = seed;
        let rt = TempDir::new("batch");
        let run = rt.path().join("run");
        let data = rt.path().join("data");
        let mut srv = ServerProc::start(&run, &data, "bat", &[]);
        let mut w = spawn_child("batches", &srv, &[]);
        let lines = line_pump(&mut w);
        let mut last_ack: Option<u64> = None;
        let run_for = Duration::from_millis(100 + rng(&mut s) % 900);
        let start = Instant::now();
        let parse = |l: &str| {
            l.rsplit(" ... ")
                .next()
                .unwrap()
                .strip_prefix("ack ")
                .and_then(|n| n.parse::<u64>().ok())
        };
        while start.elapsed() < run_for {
            if let Ok(l) = lines.recv_timeout(Duration::from_millis(10)) {
                if let Some(n) = parse(&l) {
                    last_ack = Some(n);
                }
            }
        }
        srv.kill9();
        assert_eq!(wait_child(&mut w, Duration::from_secs(30)).code(), Some(3));
        while let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(n) = parse(&l) {
                last_ack = Some(n);
            }
        }
        let last_ack = last_ack.unwrap_or_else(|| panic!("seed {seed}: no batch acknowledged"));
        let srv2 = ServerProc::start(&run, &data, "bat", &[]);
        let mut c = srv2.connect();
        // Every batch: 16 keys or none; every acknowledged one: all 16.
        let last_stored: u64 = String::from_utf8(c.get("b-last").unwrap().unwrap().value)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            last_stored == last_ack || last_stored == last_ack + 1,
            "seed {seed}: b-last {last_stored}, acked {last_ack}"
        );
        for n in 0..=last_ack + 1 {
            let got = c.count(Some(&format!("b{n:06}/"))).unwrap();
            if n <= last_ack {
                assert_eq!(got, 16, "seed {seed}: acknowledged batch {n} incomplete");
            } else {
                assert!(
                    got == 0 || got == 16,
                    "seed {seed}: torn batch {n}: {got} of 16 keys"
                );
                assert_eq!(
                    got == 16,
                    last_stored == n,
                    "seed {seed}: batch {n} and b-last disagree"
                );
            }
        }
    }
}

#[test]
fn bad_input_gets_clear_errors_stores_nothing_and_the_session_stays_usable() {
    let rt = TempDir::new("bad");
    let srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), "bad", &[]);
    watchdog(Duration::from_secs(120), move || {
        let mut c = srv.connect();
        let server_code = |e: Error| match e {
            Error::Server { code, message, .. } => {
                assert!(!message.is_empty());
                code
            }
            other => panic!("expected a server error, got {other:?}"),
        };
        // Oversized key: the client refuses it, and so does the server when a raw
        // request bypasses the client's check.
        let long = "k".repeat(1025);
        assert!(matches!(
            c.put_json(&long, "1"),
            Err(Error::TooLarge { what: "key", .. })
        ));
        let e = c
            .call(&Request::Put {
                key: long.clone(),
                value: b"1".to_vec(),
                kind: ValueKind::Json,
            })
            .unwrap_err();
        assert_eq!(server_code(e), Some(ErrorCode::TooLarge));
        // Oversized value.
        let big = vec![b'1'; c.max_value_len() as usize + 1];
        assert!(matches!(
            c.put("v", &big, ValueKind::Bytes),
            Err(Error::TooLarge { what: "value", .. })
        ));
        // Invalid JSON.
        let e = c.put_json("j", "{\"a\":").unwrap_err();
        assert_eq!(server_code(e), Some(ErrorCode::InvalidJson));
        // Empty key.
        let e = c.put_json("", "1").unwrap_err();
        assert_eq!(server_code(e), Some(ErrorCode::InvalidKey));
        // A batch with one bad op stores nothing.
        let e = c
            .batch(vec![
                BatchOp::Put {
                    key: "ok1".into(),
                    value: b"1".to_vec(),
                    kind: ValueKind::Json,
                },
                BatchOp::Put {
                    key: "ok2".into(),
                    value: b"nope".to_vec(),
                    kind: ValueKind::Json,
                },
            ])
            .unwrap_err();
        assert_eq!(server_code(e), Some(ErrorCode::InvalidJson));
        assert_eq!(c.count(None).unwrap(), 0, "nothing stored");
        assert_eq!(c.get("ok1").unwrap(), None);

        // Invalid UTF-8 in a key: only a raw writer can send it; rkyv's validation
        // rejects it with an error response.
        let s = raw_session(&srv);
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        encode_request(
            &Request::Put {
                key: "zzzzzzzzzzzzzzzz".into(),
                value: b"1".to_vec(),
                kind: ValueKind::Json,
            },
            &mut buf,
        )
        .unwrap();
        // A 16-byte key is stored out of line: patch bytes in its middle.
        let at = buf
            .windows(16)
            .position(|w| w == b"zzzzzzzzzzzzzzzz")
            .expect("key bytes in the archive");
        buf[at + 4] = 0xFF;
        buf[at + 5] = 0xFE;
        let mut p = s.seg.request_ring().producer().unwrap();
        assert!(p.try_push(FRAME_REQUEST, 0, 1, &buf).unwrap());
        let mut q = s.seg.response_ring().consumer().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let resp = loop {
            if let Some(f) = q.peek().unwrap() {
                let mut out = rkyv::util::AlignedVec::<16>::new();
                q.copy_payload(&f, &mut out);
                q.release(&f);
                let a = ringbase_protocol::message::access_response(&out).unwrap();
                break ringbase_protocol::message::to_owned_response(a);
            }
            assert!(
                Instant::now() < deadline,
                "no response to the invalid-UTF-8 put"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        match resp {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest as u32),
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(c.count(None).unwrap(), 0, "nothing stored");

        // The session is still usable.
        c.put_json("fine", "{\"ok\":true}").unwrap();
        assert_eq!(c.get("fine").unwrap().unwrap().value, b"{\"ok\":true}");
        // Read-your-writes, delete, tombstones.
        assert!(c.delete("fine").unwrap());
        assert_eq!(c.get("fine").unwrap(), None);
        assert!(!c.delete("fine").unwrap());
        // Versions increase.
        let v1 = c.put_json("x", "1").unwrap();
        let v2 = c.put_json("x", "2").unwrap();
        assert!(v2 > v1);
        // Zero-copy view.
        let view = c.get_view("x").unwrap().unwrap();
        assert_eq!(view.value, b"2");
        assert_eq!(view.version, v2);
    });
}

#[test]
fn pipelined_writes_share_group_commits_and_reads_see_them() {
    let rt = TempDir::new("pipe");
    let srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), "pipe", &[]);
    watchdog(Duration::from_secs(120), move || {
        let mut c = srv.connect();
        let before = c.status().unwrap();
        for i in 0..2000u32 {
            c.send(&Request::Put {
                key: format!("p/{i:05}"),
                value: i.to_string().into_bytes(),
                kind: ValueKind::Json,
            })
            .unwrap();
        }
        // A read pipelined right behind the writes sees all of them.
        c.send(&Request::Count {
            prefix: Some("p/".into()),
        })
        .unwrap();
        for _ in 0..2000 {
            assert!(matches!(c.recv().unwrap().1, Response::Written(_)));
        }
        assert_eq!(c.recv().unwrap().1, Response::Count(2000));
        // Pipelined writes reached the writer together: far fewer commits than writes.
        let after = c.status().unwrap();
        let jobs = after.write_jobs - before.write_jobs;
        let commits = after.commits - before.commits;
        assert_eq!(jobs, 2000);
        assert!(
            commits < jobs / 4,
            "2000 pipelined puts took {commits} commits"
        );
    });
}

/// The server's anonymous (heap) resident memory, bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A client streams 500 puts of ~1 MB each without waiting for answers: every put is
/// acknowledged and stored, and the server's heap stays far below the stream's size (no
/// value is kept once written). The write budget that bounds a session's writes in
/// flight (engine.rs) is checked by the store's unit tests: in this debug build the
/// client's encoding, not SQLite, limits the stream, so no backlog forms here.
#[test]
fn streaming_large_puts_are_all_stored_with_bounded_server_memory() {
    let rt = TempDir::new("stream");
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "stream",
        &[],
    );
    watchdog(Duration::from_secs(300), move || {
        let mut c = srv.connect();
        let len = 1_000_000usize.min(c.max_value_len() as usize);
        let puts = 500;
        let pid = srv.pid();
        let base = rss_anon(pid);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss_anon(pid));
                    std::thread::sleep(Duration::from_millis(2));
                }
                peak
            })
        };
        for i in 0..puts {
            let value = vec![b'a' + (i % 26) as u8; len];
            c.send(&Request::Put {
                key: format!("big/{i:04}"),
                value,
                kind: ValueKind::Bytes,
            })
            .unwrap();
        }
        for _ in 0..puts {
            let (_, r) = c.recv().unwrap();
            assert!(matches!(r, Response::Written(_)), "{r:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        let grew = peak.saturating_sub(base);
        eprintln!(
            "server heap grew by {} MiB at most while {} MiB streamed in",
            grew >> 20,
            (puts * len) >> 20
        );
        // 64 MiB of SQLite page cache on the writer, writes in flight, allocator slack.
        assert!(
            grew < 220 << 20,
            "server heap grew by {} MiB while {} MiB streamed in",
            grew >> 20,
            (puts * len) >> 20
        );
        let last = c.get(&format!("big/{:04}", puts - 1)).unwrap().unwrap();
        assert_eq!(last.value.len(), len);
        assert_eq!(c.count(Some("big/")).unwrap(), puts as u64);
    });
}

#[test]
fn connect_or_spawn_from_four_processes_starts_exactly_one_server() {
    let rt = TempDir::new("spawn");
    let run = rt.path().join("run");
    let data = rt.path().join("data");
    // No server is started by the test itself: the children race to start it.
    let args = [ringbase_bin().to_string(), data.display().to_string()];
    let mut kids: Vec<Child> = (0..4)
        .map(|_| spawn_child_at("spawner", "sidecar", &run, &args))
        .collect();
    let mut pids = Vec::new();
    for k in &mut kids {
        let out = k.stdout.take().unwrap();
        let st = wait_child(k, Duration::from_secs(120));
        assert!(st.success(), "spawner failed: {st:?}");
        let text: String = BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n");
        let pid: u32 = text
            .split("pid ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {text:?}"));
        pids.push(pid);
    }
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "several servers answered: {pids:?}"
    );
    // Exactly one live ringbase server for this runtime dir.
    let servers: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("serve")
                && cmd.contains("sidecar")
                && String::from_utf8_lossy(&env).contains(&*run.display().to_string())
        })
        .collect();
    assert_eq!(servers, vec![pids[0]], "expected exactly one server");
    // SAFETY: signalling the server the children started.
    unsafe { libc::kill(pids[0] as i32, libc::SIGTERM) };
    assert!(eventually(
        Duration::from_secs(30),
        || !std::path::Path::new(&format!("/proc/{}", pids[0])).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", pids[0]))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    ));
}

#[test]
fn cli_put_get_delete_list_status() {
    let rt = TempDir::new("cli");
    let run = rt.path().join("run");
    let srv = ServerProc::start(&run, &rt.path().join("data"), "cli", &[]);
    let cli = |args: &[&str]| srv.cli(args);
    let (code, out, _) = cli(&["put", "p:1", r#"{"hp":3}"#]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["key"], "p:1");
    assert!(v["version"]["hlc"].as_u64().unwrap() > 0);
    assert_eq!(cli(&["put", "p:2", "[1,2,3]"]).0, Some(0));
    let file = rt.path().join("blob.bin");
    std::fs::write(&file, [0u8, 159, 146, 150]).unwrap();
    assert_eq!(
        cli(&["put", "q", "--bytes-file", file.to_str().unwrap()]).0,
        Some(0)
    );
    // get prints the value; raw bytes come out unchanged.
    let (code, out, _) = cli(&["get", "p:1"]);
    assert_eq!((code, out.trim()), (Some(0), r#"{"hp":3}"#));
    let raw = std::process::Command::new(ringbase_bin())
        .args(["get", "q", "--name", "cli"])
        .env("RINGBASE_RUNTIME_DIR", &run)
        .output()
        .unwrap();
    assert_eq!(raw.stdout, [0u8, 159, 146, 150]);
    // A missing key: message on stderr, exit 1.
    let (code, out, err) = cli(&["get", "nope"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert!(err.contains("not found"), "{err}");
    // Invalid JSON: a clear error, exit 2, nothing stored.
    let (code, _, err) = cli(&["put", "bad", "{"]);
    assert_eq!(code, Some(2));
    assert!(err.to_lowercase().contains("json"), "{err}");
    assert_eq!(cli(&["get", "bad"]).0, Some(1));
    // list: one JSON object per line, in key order, prefix and limit honoured.
    let (code, out, _) = cli(&["list", "--prefix", "p:"]);
    assert_eq!(code, Some(0));
    let keys = json_line_keys(&out);
    assert_eq!(keys, ["p:1", "p:2"]);
    assert_eq!(cli(&["list", "--limit", "1"]).1.lines().count(), 1);
    // delete, then the key is gone.
    let (code, out, _) = cli(&["delete", "p:1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"deleted\":true"), "{out}");
    assert_eq!(cli(&["get", "p:1"]).0, Some(1));
    // status is JSON with the documented fields.
    let (code, out, _) = cli(&["status"]);
    assert_eq!(code, Some(0));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["records"], 2);
    assert_eq!(s["pid"], srv.pid());
    for field in [
        "sessions",
        "uptime_ms",
        "data_dir",
        "db_size_bytes",
        "version",
        "replica_id",
    ] {
        assert!(!s[field].is_null(), "status lacks {field}");
    }
    // ping
    let (code, out, _) = cli(&["ping"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("pong"), "{out}");
}
