//! Tests of the storage engine against real SQLite files in temporary directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// A unique directory under the system temp dir, removed on drop.
pub(super) struct TestDir(PathBuf);

impl TestDir {
    pub(super) fn new(name: &str) -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "ringbase-store-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TestDir(p)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TestDir) -> Store {
    Store::open(dir.path(), StoreOptions::default()).expect("open store")
}

fn put_json(key: &str, json: &str) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: json.as_bytes().to_vec(),
        kind: ValueKind::Json,
        vector: None,
    }
}

fn put_bytes(key: &str, value: &[u8]) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: value.to_vec(),
        kind: ValueKind::Bytes,
        vector: None,
    }
}

fn put_vec(key: &str, vector: &[f32]) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: b"1".to_vec(),
        kind: ValueKind::Json,
        vector: Some(vector.to_vec()),
    }
}

/// Every stored vector, in key order.
fn stored_vectors(store: &Store) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    store
        .vector_snapshot(|k, v| {
            out.push((k.to_string(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

fn del(key: &str) -> WriteOp {
    WriteOp::Delete { key: key.into() }
}

/// A separate connection holding the database write lock until dropped, so that jobs
/// submitted meanwhile pile up in the writer's queue.
struct WriteBlocker(rusqlite::Connection);

impl WriteBlocker {
    fn new(dir: &TestDir) -> WriteBlocker {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteBlocker(conn)
    }
}

impl Drop for WriteBlocker {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

fn all_keys(r: &mut Reader) -> Vec<String> {
    let (recs, more) = r.list("", None, u32::MAX, None).unwrap();
    assert!(!more);
    recs.into_iter().map(|r| r.key).collect()
}

#[test]
fn store_and_reader_are_send_sync_as_documented() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send_sync::<Arc<Store>>();
    send::<Reader>();
    send::<ChangeSubscription>();
}

#[test]
fn put_get_delete_list_count_roundtrip() {
    let dir = TestDir::new("roundtrip");
    let store = open(&dir);
    let mut r = store.reader().unwrap();
    assert_eq!(r.get("a").unwrap(), None);
    assert_eq!(r.count(None).unwrap(), 0);

    let out = store.write(vec![put_json("a", r#"{"x":1}"#)]).unwrap();
    assert_eq!(out.len(), 1);
    assert!(!out[0].existed);
    let v1 = out[0].version.expect("put has a version");
    assert_eq!(v1.replica, store.replica_id());
    assert_eq!(v1.seq, 1);

    let rec = r.get("a").unwrap().expect("record a");
    assert_eq!(rec.key, "a");
    assert_eq!(rec.value, br#"{"x":1}"#);
    assert_eq!(rec.kind, ValueKind::Json);
    assert_eq!(rec.version, v1);
    assert!(!rec.deleted);
    let now = clock::now_ms();
    assert!(rec.updated_at_ms <= now && rec.updated_at_ms + 60_000 > now);

    // Overwrite: existed, new greater version.
    let out = store.write(vec![put_bytes("a", b"\x00\xffraw")]).unwrap();
    assert!(out[0].existed);
    let v2 = out[0].version.unwrap();
    assert!(v2 > v1);
    let rec = r.get("a").unwrap().unwrap();
    assert_eq!(rec.value, b"\x00\xffraw");
    assert_eq!(rec.kind, ValueKind::Bytes);
    assert_eq!(rec.version, v2);

    store
        .write(vec![put_json("b", "2"), put_json("c", "\"three\"")])
        .unwrap();
    assert_eq!(r.count(None).unwrap(), 3);
    assert_eq!(all_keys(&mut r), ["a", "b", "c"]);

    // Delete: tombstone, invisible to reads; deleting again writes nothing.
    let out = store.write(vec![del("b")]).unwrap();
    assert!(out[0].existed);
    assert!(out[0].version.unwrap() > v2);
    assert_eq!(r.get("b").unwrap(), None);
    assert_eq!(r.count(None).unwrap(), 2);
    assert_eq!(all_keys(&mut r), ["a", "c"]);
    let out = store.write(vec![del("b"), del("never")]).unwrap();
    let none = WriteOutcome {
        version: None,
        existed: false,
    };
    assert_eq!(out, vec![none.clone(), none]);

    // Resurrect a tombstoned key: it did not exist (live) before.
    let out = store.write(vec![put_json("b", "[]")]).unwrap();
    assert!(!out[0].existed);
    assert_eq!(r.get("b").unwrap().unwrap().value, b"[]");
    assert_eq!(r.count(Some("b")).unwrap(), 1);
    assert_eq!(r.count(Some("z")).unwrap(), 0);

    // The tombstone row is really kept with an empty value (for replication).
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    store.write(vec![del("c")]).unwrap();
    let (deleted, len): (i64, i64) = raw
        .query_row(
            "SELECT deleted, length(value) FROM records WHERE key = 'c'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((deleted, len), (1, 0));
}

#[test]
fn invalid_json_key_and_size_errors_store_nothing() {
    let dir = TestDir::new("invalid");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            max_value_len: 100,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let mut r = store.reader().unwrap();

    let e = store.write(vec![put_json("j", "{not json")]).unwrap_err();
    assert!(
        matches!(e, StoreError::InvalidJson(ref m) if m.contains("\"j\"")),
        "{e:?}"
    );
    assert_eq!(e.code(), 2);
    let e = store.write(vec![put_json("j", "")]).unwrap_err();
    assert!(matches!(e, StoreError::InvalidJson(_)));
    let e = store.write(vec![put_json("j", "{} trailing")]).unwrap_err();
    assert!(matches!(e, StoreError::InvalidJson(_)));
    // Not-JSON is fine as Bytes.
    store.write(vec![put_bytes("bytes", b"{not json")]).unwrap();

    let e = store.write(vec![put_json("", "1")]).unwrap_err();
    assert!(matches!(e, StoreError::InvalidKey(_)), "{e:?}");
    assert_eq!(e.code(), 1);
    let e = store.write(vec![del("")]).unwrap_err();
    assert!(matches!(e, StoreError::InvalidKey(_)));
    let e = store.write(vec![put_json("a\0b", "1")]).unwrap_err();
    assert!(matches!(e, StoreError::InvalidKey(_)));

    let long = "k".repeat(1025);
    let e = store.write(vec![put_json(&long, "1")]).unwrap_err();
    assert_eq!(
        e,
        StoreError::TooLarge {
            what: "key",
            len: 1025,
            max: 1024
        }
    );
    assert_eq!(e.code(), 3);
    // Exactly at the limit is fine, counted in bytes (3 bytes per char here).
    store.write(vec![put_json(&"k".repeat(1024), "1")]).unwrap();
    let e = store
        .write(vec![put_json(&"€".repeat(342), "1")])
        .unwrap_err();
    assert!(matches!(
        e,
        StoreError::TooLarge {
            what: "key",
            len: 1026,
            ..
        }
    ));

    let e = store.write(vec![put_bytes("big", &[7; 101])]).unwrap_err();
    assert_eq!(
        e,
        StoreError::TooLarge {
            what: "value",
            len: 101,
            max: 100
        }
    );
    store.write(vec![put_bytes("big", &[7; 100])]).unwrap();

    assert_eq!(all_keys(&mut r), ["big", "bytes", &"k".repeat(1024)]);
    let stats = store.stats();
    assert_eq!(stats.rejected_jobs, 9);
    assert_eq!(stats.failed_jobs, 0);
}

#[test]
fn batch_is_atomic() {
    let dir = TestDir::new("batch");
    let store = open(&dir);
    let mut r = store.reader().unwrap();
    store.write(vec![put_json("keep", "0")]).unwrap();

    // One invalid op anywhere: nothing of the batch is stored.
    let e = store
        .write(vec![
            put_json("x1", "1"),
            del("keep"),
            put_json("x2", "nope"),
            put_json("x3", "3"),
        ])
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidJson(ref m) if m.contains("x2")));
    assert_eq!(all_keys(&mut r), ["keep"]);

    // A valid mixed batch lands whole, applied in order.
    let out = store
        .write(vec![
            put_json("m1", "1"),
            put_bytes("m2", b"two"),
            del("keep"),
            put_json("m1", "11"),
            del("m2"),
            del("absent"),
        ])
        .unwrap();
    assert_eq!(out.len(), 6);
    assert!(!out[0].existed && out[2].existed && out[3].existed && out[4].existed);
    assert_eq!(out[5].version, None);
    let seqs: Vec<u64> = out
        .iter()
        .filter_map(|o| o.version.map(|v| v.seq))
        .collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6]);
    assert_eq!(all_keys(&mut r), ["m1"]);
    assert_eq!(r.get("m1").unwrap().unwrap().value, b"11");
}

/// Runs SQL (triggers) on the store's database from another connection.
fn exec_on_db(dir: &TestDir, sql: &str) {
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute_batch(sql).unwrap();
}

/// Makes every insert of the key "poison" fail inside SQLite (after validation), with a
/// trigger.
fn poison_inserts(dir: &TestDir) {
    exec_on_db(
        dir,
        "CREATE TRIGGER poison BEFORE INSERT ON records WHEN NEW.key = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
    );
}

/// Submits `jobs` so that the writer applies all but the first in one transaction (the
/// first takes the writer into BEGIN behind a held write lock while the rest queue up),
/// and returns their results in order.
fn run_grouped(
    dir: &TestDir,
    store: &Store,
    jobs: Vec<Vec<WriteOp>>,
) -> Vec<Result<Vec<WriteOutcome>, StoreError>> {
    let (done, results) = crossbeam_channel::unbounded();
    let n = jobs.len();
    {
        let _blocker = WriteBlocker::new(dir);
        for (i, ops) in jobs.into_iter().enumerate() {
            store.submit(i as u64, ops, done.clone()).unwrap();
            if i == 0 {
                std::thread::sleep(Duration::from_millis(50)); // writer takes job 0, waits
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut got: Vec<_> = (0..n).map(|_| results.recv().unwrap()).collect();
    got.sort_by_key(|(t, _)| *t);
    got.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn failing_job_rolls_back_alone_within_a_group() {
    let dir = TestDir::new("savepoint");
    let store = open(&dir);
    poison_inserts(&dir);
    let got = run_grouped(
        &dir,
        &store,
        vec![
            vec![put_json("ok1", "1")],
            vec![put_json("x", "1"), put_json("poison", "2")],
            vec![put_json("ok2", "3")],
        ],
    );
    let v1 = got[0].as_ref().unwrap()[0].version.unwrap();
    let e = got[1].as_ref().unwrap_err();
    assert!(
        matches!(e, StoreError::Sqlite(m) if m.contains("poisoned")),
        "{e:?}"
    );
    let v3 = got[2].as_ref().unwrap()[0].version.unwrap();
    // The failed job's sequence numbers were given back: no gap in the dots.
    assert_eq!(v3.seq, v1.seq + 1);

    let mut r = store.reader().unwrap();
    assert_eq!(all_keys(&mut r), ["ok1", "ok2"]);
    let stats = store.stats();
    assert_eq!(stats.failed_jobs, 1);
    assert_eq!(stats.jobs, 3);
    assert!(stats.transactions <= 2, "{stats:?}");
}

#[test]
fn failing_single_op_jobs_fail_alone_without_a_savepoint() {
    let dir = TestDir::new("single-op-fail");
    let store = open(&dir);
    store.write(vec![put_json("held", "\"old\"")]).unwrap();
    // Inserting "poison" fails, and so does any update of "held" (overwrite or delete).
    exec_on_db(
        &dir,
        "CREATE TRIGGER poison_insert BEFORE INSERT ON records WHEN NEW.key = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned insert'); END;
         CREATE TRIGGER poison_update BEFORE UPDATE ON records WHEN NEW.key = 'held'
         BEGIN SELECT RAISE(ABORT, 'poisoned update'); END;",
    );
    let got = run_grouped(
        &dir,
        &store,
        vec![
            vec![put_json("ok1", "1")],
            vec![put_json("poison", "2")],
            vec![put_json("held", "3")],
            vec![del("held")],
            vec![put_json("ok2", "5")],
        ],
    );
    let v1 = got[0].as_ref().unwrap()[0].version.unwrap();
    for (i, want) in [
        (1, "poisoned insert"),
        (2, "poisoned update"),
        (3, "poisoned update"),
    ] {
        let e = got[i].as_ref().unwrap_err();
        assert!(
            matches!(e, StoreError::Sqlite(m) if m.contains(want)),
            "job {i}: {e:?}"
        );
    }
    let v5 = got[4].as_ref().unwrap()[0].version.unwrap();
    // The failed jobs' sequence numbers were given back.
    assert_eq!(v5.seq, v1.seq + 1);
    let mut r = store.reader().unwrap();
    assert_eq!(all_keys(&mut r), ["held", "ok1", "ok2"]);
    assert_eq!(r.get("held").unwrap().unwrap().value, b"\"old\"");
    let stats = store.stats();
    assert_eq!(stats.failed_jobs, 3);
    assert!(stats.transactions <= 3, "{stats:?}");
}

#[test]
fn group_commit_from_four_threads() {
    let dir = TestDir::new("group");
    let store = Arc::new(open(&dir));
    let (done, results) = crossbeam_channel::unbounded();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    let ticket = t * 1000 + i;
                    let op = put_json(&format!("t{t}/k{i:03}"), &ticket.to_string());
                    store.submit(ticket, vec![op], done.clone()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut tickets = Vec::new();
    let mut seqs = Vec::new();
    for _ in 0..1000 {
        let (ticket, res) = results.recv_timeout(Duration::from_secs(30)).unwrap();
        tickets.push(ticket);
        seqs.push(res.unwrap()[0].version.unwrap().seq);
    }
    tickets.sort_unstable();
    tickets.dedup();
    assert_eq!(tickets.len(), 1000);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>());

    let stats = store.stats();
    assert_eq!(stats.jobs, 1000);
    assert_eq!(stats.ops, 1000);
    assert!(
        stats.transactions < stats.jobs,
        "no grouping happened: {stats:?}"
    );
    assert!(stats.max_jobs_per_transaction > 1);
    assert_eq!(store.reader().unwrap().count(None).unwrap(), 1000);
}

#[test]
fn queued_jobs_are_grouped_into_one_transaction() {
    let dir = TestDir::new("group-det");
    let store = open(&dir);
    let (done, results) = crossbeam_channel::unbounded();
    {
        let _blocker = WriteBlocker::new(&dir);
        store
            .submit(0, vec![put_json("first", "0")], done.clone())
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..500u64 {
            store
                .submit(i, vec![put_json(&format!("k{i}"), "1")], done.clone())
                .unwrap();
        }
    }
    for _ in 0..500 {
        results
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .1
            .unwrap();
    }
    let stats = store.stats();
    // The first job's transaction, then (at most) a couple holding the other 499.
    assert!(stats.transactions <= 3, "{stats:?}");
    assert!(stats.max_jobs_per_transaction >= 250, "{stats:?}");
}

#[test]
fn versions_strictly_increase_across_writes_and_reopen() {
    let dir = TestDir::new("versions");
    let far_future = (clock::now_ms() + 10 * 365 * 24 * 3600 * 1000) << 16;
    let mut last: Option<Version> = None;
    let mut check = |v: Version| {
        if let Some(prev) = last {
            assert!(v > prev, "{v:?} not > {prev:?}");
            assert!(v.hlc > prev.hlc);
            assert_eq!(v.seq, prev.seq + 1);
        }
        last = Some(v);
    };
    {
        let store = open(&dir);
        for i in 0..200 {
            let out = store
                .write(vec![put_json(&format!("k{}", i % 7), "1")])
                .unwrap();
            check(out[0].version.unwrap());
        }
        // A remote clock far ahead: our next write must still be greater.
        store.observe_hlc(far_future);
        let out = store.write(vec![put_json("after-observe", "1")]).unwrap();
        let v = out[0].version.unwrap();
        assert!(v.hlc > far_future);
        check(v);
        // Absurd values (would exhaust the 63-bit range) are ignored.
        store.observe_hlc(u64::MAX);
        let out = store.write(vec![put_json("x", "1")]).unwrap();
        assert!(out[0].version.unwrap().hlc < MAX_HLC);
        check(out[0].version.unwrap());
    }
    {
        // Reopen: the stored max hlc is in the future relative to the wall clock.
        let store = open(&dir);
        for _ in 0..50 {
            let out = store.write(vec![del("x"), put_json("x", "2")]).unwrap();
            check(out[0].version.unwrap());
            check(out[1].version.unwrap());
        }
    }
    {
        let store = open(&dir);
        let out = store.write(vec![put_json("y", "1")]).unwrap();
        check(out[0].version.unwrap());
    }
}

#[test]
fn replica_id_persists_and_seq_continues_across_reopen() {
    let dir = TestDir::new("replica");
    let (id, seq) = {
        let store = open(&dir);
        let out = store
            .write(vec![put_json("a", "1"), put_json("b", "2"), del("a")])
            .unwrap();
        (store.replica_id(), out[2].version.unwrap().seq)
    };
    assert_eq!(seq, 3);
    assert_ne!(id, [0u8; 16]);
    let store = open(&dir);
    assert_eq!(store.replica_id(), id);
    let v = store.write(vec![put_json("c", "3")]).unwrap()[0]
        .version
        .unwrap();
    assert_eq!(v.seq, 4);
    assert_eq!(v.replica, id);
    assert_eq!(
        store
            .reader()
            .unwrap()
            .get("b")
            .unwrap()
            .unwrap()
            .version
            .replica,
        id
    );

    // A different data dir gets a different replica id.
    let other_dir = TestDir::new("replica-other");
    assert_ne!(open(&other_dir).replica_id(), id);
}

#[test]
fn list_pagination_is_exact() {
    let dir = TestDir::new("paging");
    let store = open(&dir);
    let mut keys: Vec<String> = (0..1000u32)
        .map(|i| format!("item/{:x}/{}", i.wrapping_mul(2_654_435_761), i))
        .collect();
    for chunk in keys.chunks(100) {
        store
            .write(chunk.iter().map(|k| put_json(k, "{}")).collect())
            .unwrap();
    }
    // Some tombstones and records outside the prefix must not disturb paging.
    store
        .write(vec![
            put_json("item", "0"),
            put_json("itemz", "0"),
            put_json("j", "0"),
        ])
        .unwrap();
    let dead: Vec<String> = keys.iter().step_by(10).cloned().collect();
    store.write(dead.iter().map(|k| del(k)).collect()).unwrap();
    keys.retain(|k| !dead.contains(k));
    keys.sort();

    let mut r = store.reader().unwrap();
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let (recs, more) = r.list("item/", after.as_deref(), 37, None).unwrap();
        pages += 1;
        assert!(recs.len() <= 37);
        if more {
            assert_eq!(recs.len(), 37);
        }
        paged.extend(recs.into_iter().map(|r| r.key));
        if !more {
            break;
        }
        after = paged.last().cloned();
    }
    assert_eq!(paged, keys);
    assert_eq!(pages, keys.len().div_ceil(37));
    assert_eq!(r.count(Some("item/")).unwrap(), keys.len() as u64);

    // Whole list at once; limit 0 reports whether anything exists.
    let (all, more) = r.list("item/", None, 10_000, None).unwrap();
    assert!(!more);
    assert_eq!(all.len(), keys.len());
    let (none, more) = r.list("item/", None, 0, None).unwrap();
    assert!(none.is_empty() && more);
    // start_after before the prefix range starts at the prefix; after it, nothing.
    let (recs, _) = r.list("item/", Some("a"), 1, None).unwrap();
    assert_eq!(recs[0].key, keys[0]);
    let (recs, more) = r.list("item/", Some("item0"), 5, None).unwrap();
    assert!(recs.is_empty() && !more);
    let (recs, more) = r
        .list("item/", Some(keys.last().unwrap()), 5, None)
        .unwrap();
    assert!(recs.is_empty() && !more);
}

#[test]
fn prefix_successor_is_the_exclusive_upper_bound() {
    assert_eq!(prefix_successor(""), None);
    assert_eq!(prefix_successor("a").as_deref(), Some("b"));
    assert_eq!(prefix_successor("az").as_deref(), Some("a{"));
    assert_eq!(prefix_successor("é").as_deref(), Some("ê"));
    assert_eq!(prefix_successor("a\u{7f}").as_deref(), Some("a\u{80}"));
    assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
    assert_eq!(prefix_successor("x\u{10FFFF}").as_deref(), Some("y"));
    assert_eq!(
        prefix_successor("x\u{10FFFF}\u{10FFFF}").as_deref(),
        Some("y")
    );
    assert_eq!(prefix_successor("\u{10FFFF}"), None);
    assert_eq!(prefix_successor("\u{10FFFF}\u{10FFFF}"), None);
}

#[test]
fn list_prefix_edge_cases_match_brute_force() {
    let dir = TestDir::new("prefix");
    let store = open(&dir);
    let keys = [
        "a",
        "a0",
        "ab",
        "a\u{7f}",
        "a\u{80}",
        "a\u{10FFFF}",
        "a\u{10FFFF}x",
        "a\u{10FFFF}\u{10FFFF}",
        "b",
        "b0",
        "é",
        "éa",
        "é\u{10FFFF}",
        "ê",
        "f",
        "\u{D7FF}",
        "\u{D7FF}z",
        "\u{E000}",
        "\u{FFFF}",
        "\u{10000}",
        "\u{10FFFF}",
        "\u{10FFFF}a",
        "\u{10FFFF}\u{10FFFF}",
        "~",
        "\u{1}",
    ];
    store
        .write(keys.iter().map(|k| put_bytes(k, k.as_bytes())).collect())
        .unwrap();
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort();
    let mut r = store.reader().unwrap();
    let prefixes = [
        "",
        "a",
        "a\u{10FFFF}",
        "a\u{7f}",
        "b",
        "é",
        "ê",
        "\u{D7FF}",
        "\u{10FFFF}",
        "\u{10FFFF}\u{10FFFF}",
        "zzz",
        "\u{1}",
    ];
    for p in prefixes {
        let want: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|k| k.starts_with(p))
            .collect();
        let (recs, more) = r.list(p, None, 1000, None).unwrap();
        let got: Vec<&str> = recs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(got, want, "prefix {p:?}");
        assert!(!more);
        let cnt = r.count(if p.is_empty() { None } else { Some(p) }).unwrap();
        assert_eq!(cnt, want.len() as u64, "count prefix {p:?}");
        // Paging one at a time gives the same.
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (recs, more) = r.list(p, after.as_deref(), 1, None).unwrap();
            paged.extend(recs.iter().map(|r| r.key.clone()));
            after = paged.last().cloned();
            if !more {
                break;
            }
        }
        assert_eq!(paged, want, "paged prefix {p:?}");
    }
    // Prefix "a" does not include "b".
    let (recs, _) = r.list("a", None, 100, None).unwrap();
    assert!(recs.iter().all(|r| r.key.starts_with('a')));
    assert_eq!(r.list("b", None, 100, None).unwrap().0.len(), 2);
}

#[test]
fn list_uses_the_primary_key_range() {
    let dir = TestDir::new("plan");
    let store = open(&dir);
    store.write(vec![put_json("a", "1")]).unwrap();
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let plan: Vec<String> = raw
        .prepare(
            "EXPLAIN QUERY PLAN SELECT key FROM records WHERE key > ?1 AND key < ?3 \
             AND deleted = 0 ORDER BY key LIMIT ?2",
        )
        .unwrap()
        .query_map(rusqlite::params!["a", 10, "b"], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let plan = plan.join(" | ");
    assert!(
        plan.contains("SEARCH records USING PRIMARY KEY (key>? AND key<?)"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}

#[test]
fn subscriber_receives_committed_changes() {
    let dir = TestDir::new("subscribe");
    let store = open(&dir);
    store.write(vec![put_json("before", "0")]).unwrap();
    let sub = store.subscribe();
    let out = store
        .write(vec![
            put_json("a", "1"),
            put_bytes("b", b"2"),
            del("a"),
            del("missing"),
        ])
        .unwrap();
    let ev = sub.recv_timeout(Duration::from_secs(5)).expect("event");
    let ChangeEvent::Committed(recs) = ev else {
        panic!("expected a batch, got {ev:?}");
    };
    assert_eq!(recs.len(), 3, "the no-op delete publishes nothing");
    assert_eq!(recs[0].key, "a");
    assert_eq!(recs[0].value, b"1");
    assert_eq!(recs[0].kind, ValueKind::Json);
    assert_eq!(Some(recs[0].version), out[0].version);
    assert_eq!(recs[1].key, "b");
    assert_eq!(recs[1].kind, ValueKind::Bytes);
    assert_eq!(recs[2].key, "a");
    assert!(recs[2].deleted && recs[2].value.is_empty());
    assert_eq!(recs[2].kind, ValueKind::Json);
    assert_eq!(Some(recs[2].version), out[2].version);

    // Failed and rejected jobs publish nothing.
    assert!(store.write(vec![put_json("bad", "{")]).is_err());
    store.write(vec![put_json("c", "3")]).unwrap();
    let Some(ChangeEvent::Committed(recs)) = sub.recv_timeout(Duration::from_secs(5)) else {
        panic!("expected a batch");
    };
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].key, "c");
    assert!(sub.try_recv().is_none());
    assert_eq!(sub.dropped(), 0);

    // Two subscribers both get it; a dropped subscription is removed.
    let sub2 = store.subscribe();
    drop(sub);
    store.write(vec![put_json("d", "4")]).unwrap();
    assert!(matches!(
        sub2.recv_timeout(Duration::from_secs(5)),
        Some(ChangeEvent::Committed(_))
    ));

    // Shutdown ends the stream.
    store.shutdown();
    assert_eq!(sub2.recv(), None);
}

#[test]
fn stalled_subscriber_does_not_block_the_writer() {
    let dir = TestDir::new("overflow");
    let store = open(&dir);
    let stalled = store.subscribe_with_limits(4, usize::MAX);
    let live = store.subscribe();
    let start = Instant::now();
    for i in 0..50 {
        store
            .write(vec![put_json(&format!("k{i:02}"), "1")])
            .unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    // The live subscriber got everything.
    let mut n = 0;
    while let Some(ev) = live.try_recv() {
        assert!(matches!(ev, ChangeEvent::Committed(_)));
        n += 1;
    }
    assert_eq!(n, 50);
    assert_eq!(live.dropped(), 0);

    // The stalled one: 3 batches (capacity - 1), then the overflow marker.
    assert_eq!(stalled.dropped(), 47);
    let mut seen = Vec::new();
    while let Some(ev) = stalled.try_recv() {
        seen.push(ev);
    }
    assert_eq!(seen.len(), 4);
    for (i, ev) in seen[..3].iter().enumerate() {
        let ChangeEvent::Committed(recs) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(recs[0].key, format!("k{i:02}"));
    }
    assert_eq!(seen[3], ChangeEvent::Overflow);

    // Once drained, delivery resumes after the gap.
    store.write(vec![put_json("resume", "1")]).unwrap();
    let Some(ChangeEvent::Committed(recs)) = stalled.recv_timeout(Duration::from_secs(5)) else {
        panic!("expected delivery to resume");
    };
    assert_eq!(recs[0].key, "resume");
    assert_eq!(stalled.dropped(), 47);

    // A second stall produces a second marker.
    for i in 0..5 {
        store
            .write(vec![put_json(&format!("again{i}"), "1")])
            .unwrap();
    }
    let evs: Vec<_> = std::iter::from_fn(|| stalled.try_recv()).collect();
    assert_eq!(evs.len(), 4);
    assert_eq!(evs[3], ChangeEvent::Overflow);
    assert_eq!(stalled.dropped(), 49);
}

#[test]
fn reopen_after_drop_keeps_data() {
    let dir = TestDir::new("reopen");
    {
        let store = open(&dir);
        store
            .write(
                (0..100)
                    .map(|i| put_json(&format!("k{i:03}"), &i.to_string()))
                    .collect(),
            )
            .unwrap();
        store.write(vec![del("k050")]).unwrap();
        assert!(store.db_size_bytes() > 0);
    }
    // Drop checkpointed and truncated the WAL.
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
    let store = open(&dir);
    let mut r = store.reader().unwrap();
    assert_eq!(r.count(None).unwrap(), 99);
    assert_eq!(r.get("k007").unwrap().unwrap().value, b"7");
    assert_eq!(r.get("k050").unwrap(), None);
    assert_eq!(store.data_dir(), dir.path());
}

#[cfg(unix)]
#[test]
fn data_dir_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("perms");
    let nested = dir.path().join("a/b");
    let store = Store::open(&nested, StoreOptions::default()).unwrap();
    let mode = std::fs::metadata(&nested).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(nested.join(DB_FILE).exists());
    drop(store);
}

#[test]
fn newer_schema_is_refused() {
    let dir = TestDir::new("schema");
    drop(open(&dir));
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let v: u32 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    raw.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .unwrap();
    drop(raw);
    let e = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert_eq!(
        e,
        StoreError::SchemaTooNew {
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION
        }
    );
    assert_eq!(e.code(), 7);
    assert!(e.to_string().contains("newer"));
}

#[test]
fn corrupt_replica_id_is_reported() {
    let dir = TestDir::new("corrupt");
    drop(open(&dir));
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute("UPDATE meta SET v = x'0102' WHERE k = 'replica_id'", [])
        .unwrap();
    drop(raw);
    let e = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert_eq!(e.code(), 6);
}

#[test]
fn reads_do_not_wait_for_a_writer_holding_the_lock() {
    let dir = TestDir::new("readers");
    let store = open(&dir);
    store.write(vec![put_json("a", "1")]).unwrap();
    let mut r = store.reader().unwrap();
    let blocker = WriteBlocker::new(&dir);
    blocker
        .0
        .execute(
            "UPDATE records SET value = CAST('2' AS BLOB) WHERE key = 'a'",
            [],
        )
        .unwrap();
    let start = Instant::now();
    assert_eq!(r.get("a").unwrap().unwrap().value, b"1");
    assert_eq!(r.count(None).unwrap(), 1);
    assert!(start.elapsed() < Duration::from_secs(1));
    drop(blocker);
}

#[test]
fn shutdown_drains_queue_then_rejects() {
    let dir = TestDir::new("shutdown");
    let store = open(&dir);
    let (done, results) = crossbeam_channel::unbounded();
    for i in 0..100u64 {
        store
            .submit(i, vec![put_json(&format!("k{i}"), "1")], done.clone())
            .unwrap();
    }
    store.shutdown();
    let n = results.try_iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(
        n, 100,
        "every queued job was applied before shutdown returned"
    );
    assert_eq!(
        store.submit(1, vec![put_json("late", "1")], done),
        Err(StoreError::Closed)
    );
    assert_eq!(
        store.write(vec![put_json("late", "1")]),
        Err(StoreError::Closed)
    );
    assert_eq!(store.reader().unwrap_err(), StoreError::Closed);
    store.shutdown(); // idempotent
    drop(store);
    assert_eq!(open(&dir).reader().unwrap().count(None).unwrap(), 100);
}

#[test]
fn empty_job_completes_with_no_outcomes() {
    let dir = TestDir::new("empty");
    let store = open(&dir);
    assert_eq!(store.write(vec![]), Ok(vec![]));
    assert_eq!(store.stats().transactions, 0);
}

#[test]
fn value_kind_tags_and_error_codes() {
    assert_eq!(ValueKind::try_from(1), Ok(ValueKind::Json));
    assert_eq!(ValueKind::try_from(2), Ok(ValueKind::Bytes));
    assert_eq!(ValueKind::try_from(0), Err(0));
    assert_eq!(ValueKind::Json as u8, 1);
    let errors = [
        StoreError::InvalidKey(String::new()),
        StoreError::InvalidJson(String::new()),
        StoreError::TooLarge {
            what: "key",
            len: 0,
            max: 0,
        },
        StoreError::Sqlite(String::new()),
        StoreError::Closed,
        StoreError::Corrupt(String::new()),
        StoreError::SchemaTooNew {
            found: 0,
            supported: 0,
        },
        StoreError::Io(String::new()),
        StoreError::InvalidKind(0),
    ];
    let codes: Vec<u32> = errors.iter().map(StoreError::code).collect();
    assert_eq!(codes, (1..=9).collect::<Vec<u32>>());
}

/// Env var naming the data dir for the crash child (see `acknowledged_writes_survive_kill_9`).
const CRASH_DIR_ENV: &str = "RINGBASE_STORE_CRASH_CHILD_DIR";

/// Child half of the crash test: writes forever, printing each acknowledged key.
/// Does nothing unless started by the parent test with the env var set.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    use std::io::Write;
    let store = Store::open(Path::new(&dir), StoreOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let key = format!("crash/{i:08}");
        store
            .write(vec![
                put_json(&key, &i.to_string()),
                put_bytes(&format!("{key}/b"), &[1; 300]),
            ])
            .unwrap();
        writeln!(out, "ACK {key}").unwrap();
        out.flush().unwrap();
    }
}

#[cfg(unix)]
#[test]
fn acknowledged_writes_survive_kill_9() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = TestDir::new("crash");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(key) = line.strip_prefix("ACK ") {
            acked.push(key.to_owned());
            if acked.len() == 300 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(acked.len(), 300, "child stopped early");
    let store = open(&dir);
    let mut r = store.reader().unwrap();
    for key in &acked {
        let rec = r
            .get(key)
            .unwrap()
            .unwrap_or_else(|| panic!("acked {key} lost"));
        assert_eq!(rec.kind, ValueKind::Json);
        assert!(r.get(&format!("{key}/b")).unwrap().is_some());
    }
    // And the store is still writable with versions above everything recovered.
    let max_seq = r
        .list("crash/", None, u32::MAX, None)
        .unwrap()
        .0
        .iter()
        .map(|r| r.version.seq)
        .max()
        .unwrap();
    let v = store.write(vec![put_json("post", "1")]).unwrap()[0]
        .version
        .unwrap();
    assert!(v.seq > max_seq);
}

#[test]
fn subscriber_queue_is_bounded_in_bytes() {
    let dir = TestDir::new("overflow-bytes");
    let store = open(&dir);
    // Each batch: key "kN" (2 bytes) + 1000-byte value + 64 overhead = 1066 bytes.
    let sub = store.subscribe_with_limits(1000, 4 * 1066);
    for i in 0..10 {
        store
            .write(vec![put_bytes(&format!("k{i}"), &[0; 1000])])
            .unwrap();
    }
    assert_eq!(sub.queued_bytes(), 4 * 1066);
    assert_eq!(sub.dropped(), 6);
    let evs: Vec<ChangeEvent> = std::iter::from_fn(|| sub.try_recv()).collect();
    assert_eq!(evs.len(), 5);
    assert_eq!(evs[4], ChangeEvent::Overflow);
    // Received but still held batches keep counting; dropping them frees the budget.
    assert_eq!(sub.queued_bytes(), 4 * 1066);
    drop(evs);
    assert_eq!(sub.queued_bytes(), 0);

    // A batch larger than the whole budget is still delivered into an empty queue.
    store.write(vec![put_bytes("huge", &[0; 10_000])]).unwrap();
    let Some(ChangeEvent::Committed(batch)) = sub.try_recv() else {
        panic!("expected the oversized batch");
    };
    assert_eq!(batch[0].key, "huge");
    assert_eq!(batch.records().len(), 1);
    assert_eq!(sub.queued_bytes(), 10_068);
    drop(batch);
    assert_eq!(sub.queued_bytes(), 0);
}

/// The read cache never serves a value older than a write whose completion was sent:
/// readers on other connections chase a writer that acknowledges one version of a hot
/// key after another, and every read returns at least the last acknowledged version.
#[test]
fn read_cache_never_serves_a_value_older_than_an_acknowledged_write() {
    let dir = TestDir::new("cache-race");
    let store = Arc::new(open(&dir));
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, acked, done) = (store.clone(), acked.clone(), done.clone());
            std::thread::spawn(move || {
                let mut r = store.reader().unwrap();
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let floor = acked.load(Ordering::SeqCst);
                    let got = r.get("hot").unwrap().map(|rec| {
                        std::str::from_utf8(&rec.value)
                            .unwrap()
                            .parse::<u64>()
                            .unwrap()
                    });
                    let got = got.unwrap_or(0);
                    assert!(got >= floor, "read {got} after {floor} was acknowledged");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 1..=1500u64 {
        store.write(vec![put_json("hot", &i.to_string())]).unwrap();
        acked.store(i, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    // Once quiet, the cache serves the final value.
    let mut r = store.reader().unwrap();
    assert_eq!(r.get("hot").unwrap().unwrap().value, b"1500");
    assert_eq!(r.get("hot").unwrap().unwrap().value, b"1500");
}

/// Checkpoints happen while the store runs (on the checkpointer thread; the writer's
/// own autocheckpoint is off): committed pages reach the main database file without a
/// shutdown.
#[test]
fn checkpointer_folds_the_wal_into_the_database_while_running() {
    let dir = TestDir::new("ckpt");
    let store = open(&dir);
    let db = dir.path().join(DB_FILE);
    let before = std::fs::metadata(&db).unwrap().len();
    for chunk in 0..20 {
        let ops = (0..500)
            .map(|i| put_bytes(&format!("k{chunk:02}-{i:04}"), &[7u8; 200]))
            .collect();
        store.write(ops).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&db).unwrap().len() <= before + 1_000_000 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint reached the database file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(store.reader().unwrap().count(None).unwrap(), 10_000);
}

#[test]
fn queued_bytes_count_jobs_from_send_until_applied_and_never_leak() {
    let dir = TestDir::new("queued-bytes");
    let store = open(&dir);
    let (done, results) = crossbeam_channel::unbounded();
    let mut queue = store.job_queue();
    {
        let _blocker = WriteBlocker::new(&dir);
        // The writer takes this job and waits in BEGIN behind the blocker.
        store
            .submit(0, vec![put_bytes("first", b"0")], done.clone())
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..=10u64 {
            let job = store
                .prepare(
                    i,
                    vec![put_bytes(&format!("k{i:02}"), &[7; 1000])],
                    done.clone(),
                )
                .expect("valid job");
            assert_eq!(job.bytes, 3 + 1000);
            queue.push(job);
        }
        // Gathered, not yet sent: not counted.
        assert!(store.queued_bytes() <= 6, "{}", store.queued_bytes());
        queue.flush();
        assert!(queue.is_empty());
        assert!(
            store.queued_bytes() >= 10 * 1003,
            "{}",
            store.queued_bytes()
        );
    }
    for _ in 0..11 {
        results
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .1
            .unwrap();
    }
    assert_eq!(store.queued_bytes(), 0);
    // Invalid jobs are answered at once and never counted.
    assert!(store
        .prepare(99, vec![put_json("bad", "{")], done.clone())
        .is_none());
    assert!(results.recv().unwrap().1.is_err());
    // After shutdown, a flush answers each job with Closed and counts nothing.
    let job = store
        .prepare(100, vec![put_bytes("late", b"x")], done.clone())
        .unwrap();
    store.shutdown();
    queue.push(job);
    queue.flush();
    let (ticket, result) = results.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(ticket, 100);
    assert!(matches!(result, Err(StoreError::Closed)));
    assert_eq!(store.queued_bytes(), 0);
}

/// Records what a commit hook sees: one entry per call, the changes as records.
#[derive(Default)]
struct RecordingHook(std::sync::Mutex<Vec<Vec<Record>>>);

impl CommitHook for RecordingHook {
    fn committed(&self, commit: &Commit<'_>) {
        let changes = commit.changes().map(|c| c.to_record()).collect();
        self.0.lock().unwrap().push(changes);
    }
}

/// Commit hooks see every committed transaction once, in commit order, before its
/// writers are acknowledged; failed jobs and no-op deletes contribute nothing.
#[test]
fn commit_hooks_see_each_commit_before_its_acknowledgement() {
    let dir = TestDir::new("hooks");
    let first = Arc::new(RecordingHook::default());
    let second = Arc::new(RecordingHook::default());
    let store = Store::open_with_hooks(
        dir.path(),
        StoreOptions::default(),
        vec![first.clone(), second.clone()],
    )
    .unwrap();

    let out = store
        .write(vec![put_json("a", "1"), del("a"), del("missing")])
        .unwrap();
    // Acknowledged, so both hooks have it already.
    for hook in [&first, &second] {
        let seen = hook.0.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].len(), 2, "the no-op delete is not a change");
        assert_eq!(seen[0][0].key, "a");
        assert_eq!(seen[0][0].value, b"1");
        assert!(!seen[0][0].deleted);
        assert_eq!(Some(seen[0][0].version), out[0].version);
        assert!(seen[0][1].deleted && seen[0][1].value.is_empty());
        assert_eq!(seen[0][1].kind, ValueKind::Json);
        assert_eq!(Some(seen[0][1].version), out[1].version);
    }

    // A rejected job never reaches the writer; a job failing inside SQLite leaves no
    // change in an otherwise committed transaction.
    assert!(store.write(vec![put_json("bad", "{")]).is_err());
    poison_inserts(&dir);
    let got = run_grouped(
        &dir,
        &store,
        vec![
            vec![put_json("x0", "1")],
            vec![put_json("y", "1"), put_json("poison", "2")],
            vec![put_json("x1", "3")],
        ],
    );
    assert!(got[0].is_ok() && got[1].is_err() && got[2].is_ok());
    let all: Vec<Record> = first.0.lock().unwrap().concat();
    let keys: Vec<&str> = all.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["a", "a", "x0", "x1"]);

    // Concurrent writers: every change once, in commit order (sequence numbers rise).
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = &store;
            s.spawn(move || {
                for i in 0..200 {
                    store
                        .write(vec![put_json(&format!("t{t}-{i}"), "1")])
                        .unwrap();
                }
            });
        }
    });
    for hook in [&first, &second] {
        let all: Vec<Record> = hook.0.lock().unwrap().concat();
        assert_eq!(all.iter().filter(|r| r.key.starts_with('t')).count(), 800);
        assert!(all.windows(2).all(|w| w[0].version.seq < w[1].version.seq));
    }
}

#[test]
fn json_paths_are_checked() {
    for ok in ["$.type", "$.stats.hp", "$.tags[0]", "$._a1[12].b", "$[3]"] {
        assert_eq!(JsonPath::parse(ok).unwrap().as_str(), ok);
    }
    for bad in [
        "", "$", "type", "$.", "$..a", "$.1a", "$.a b", "$.a'", "$[x]", "$[1", "$.a-b", "$.\"q\"",
        "$[]",
    ] {
        let e = JsonPath::parse(bad).unwrap_err();
        assert!(matches!(e, StoreError::InvalidFilter(_)), "{bad}: {e}");
    }
    assert!(JsonPath::parse(&format!("$.{}", "a".repeat(MAX_PATH_LEN))).is_err());
    for bad in ["{", "null", "[1]", "{\"a\":1}"] {
        assert!(FieldFilter::parse("$.a", bad).is_err(), "{bad}");
    }
}

/// Filtered lists give the same pages with and without an index on the field; the
/// index is used by list and by the query view, survives a reopen, and drops.
#[test]
fn field_filters_and_json_indexes() {
    let dir = TestDir::new("json-index");
    let store = open(&dir);
    let mut ops = Vec::new();
    for i in 0..300 {
        let kind = ["enemy", "ally", "item"][i % 3];
        ops.push(put_json(
            &format!("e/{i:03}"),
            &format!(
                r#"{{"type":"{kind}","hp":{},"alive":{}}}"#,
                i % 7,
                i % 2 == 0
            ),
        ));
    }
    ops.push(put_bytes("e/bytes", b"\x00{\"type\":\"enemy\"}"));
    ops.push(put_json("e/array", "[1,2]"));
    store.write(ops).unwrap();
    store.write(vec![del("e/000")]).unwrap();

    let page_keys = |store: &Store, filter: &FieldFilter| {
        let mut r = store.reader().unwrap();
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (recs, more) = r.list("e/", after.as_deref(), 17, Some(filter)).unwrap();
            keys.extend(recs.iter().map(|r| r.key.clone()));
            match recs.last() {
                Some(l) if more => after = Some(l.key.clone()),
                _ => break,
            }
        }
        keys
    };
    let enemy = FieldFilter::parse("$.type", r#""enemy""#).unwrap();
    let hp3 = FieldFilter::parse("$.hp", "3").unwrap();
    let alive = FieldFilter::parse("$.alive", "true").unwrap();
    let want_enemy: Vec<String> = (3..300).step_by(3).map(|i| format!("e/{i:03}")).collect();
    let want_hp3: Vec<String> = (0..300)
        .filter(|i| i % 7 == 3)
        .map(|i| format!("e/{i:03}"))
        .collect();
    let want_alive: Vec<String> = (2..300).step_by(2).map(|i| format!("e/{i:03}")).collect();
    let check = |store: &Store| {
        assert_eq!(
            page_keys(store, &enemy),
            want_enemy,
            "deleted, bytes and arrays excluded"
        );
        assert_eq!(page_keys(store, &hp3), want_hp3);
        assert_eq!(page_keys(store, &alive), want_alive);
    };
    check(&store);

    let path = JsonPath::parse("$.type").unwrap();
    assert!(store.create_index(&path).unwrap());
    assert!(!store.create_index(&path).unwrap(), "exists already");
    assert_eq!(store.reader().unwrap().indexes().unwrap(), ["$.type"]);
    check(&store);

    // The index serves both the filtered list and the query view.
    let plan = |conn: &rusqlite::Connection, sql: &str| -> String {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    };
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let list_sql = format!(
        "SELECT key FROM records WHERE key >= 'e/' AND key < 'e0' AND {} = 'enemy' \
         AND deleted = 0 ORDER BY key LIMIT 10",
        path.expr()
    );
    assert!(
        plan(&raw, &list_sql).contains("USING INDEX json:$.type (<expr>=?"),
        "{}",
        plan(&raw, &list_sql)
    );
    let q = store.query_connection().unwrap();
    let view_sql = "SELECT key FROM records WHERE json_extract(value, '$.type') = 'enemy'";
    assert!(
        plan(&q, view_sql).contains("USING INDEX json:$.type (<expr>=?"),
        "{}",
        plan(&q, view_sql)
    );
    let view_param = "SELECT key FROM records WHERE json_extract(value, '$.type') = ?1 LIMIT 9";
    let mut st = q
        .prepare(&format!("EXPLAIN QUERY PLAN {view_param}"))
        .unwrap();
    let detail: Vec<String> = st
        .query_map(["enemy"], |r| r.get::<_, String>(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(
        detail
            .join("; ")
            .contains("USING INDEX json:$.type (<expr>=?"),
        "{detail:?}"
    );
    drop(st);
    drop((raw, q));

    // Writes after the index keep it right; it survives a reopen.
    store
        .write(vec![
            put_json("e/003", r#"{"type":"ally"}"#),
            put_json("e/999", r#"{"type":"enemy"}"#),
        ])
        .unwrap();
    store.shutdown();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.reader().unwrap().indexes().unwrap(), ["$.type"]);
    let mut want = want_enemy.clone();
    want.retain(|k| k != "e/003");
    want.push("e/999".into());
    assert_eq!(page_keys(&store, &enemy), want);

    assert!(store.drop_index(&path).unwrap());
    assert!(!store.drop_index(&path).unwrap());
    assert!(store.reader().unwrap().indexes().unwrap().is_empty());
    assert_eq!(page_keys(&store, &enemy), want);
}

/// The full-text index: built over stored records when turned on, kept in step with
/// every write (in the write's own transaction), bm25 order, snippets, and off again.
#[test]
fn fulltext_follows_writes_and_deletes() {
    let dir = TestDir::new("fulltext");
    let store = open(&dir);
    store
        .write(vec![
            put_json("a", r#"{"name":"Red Dragon","lore":"a dragon of fire"}"#),
            put_json(
                "b",
                r#"{"name":"Blue slime","tags":["small","dragon-food"]}"#,
            ),
            put_json("c", r#"{"hp":3}"#),
            put_bytes("d", b"dragon dragon dragon"),
        ])
        .unwrap();
    store
        .write(vec![put_json("gone", r#""dragon""#), del("gone")])
        .unwrap();
    let keys = |store: &Store, text: &str| -> Vec<String> {
        let mut r = store.reader().unwrap();
        r.search(text, 0)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect()
    };
    assert_eq!(
        store.reader().unwrap().search("dragon", 0).unwrap_err(),
        StoreError::FulltextOff
    );
    assert!(store.set_fulltext(true).unwrap());
    assert!(!store.set_fulltext(true).unwrap());
    assert!(store.reader().unwrap().fulltext_on().unwrap());
    // Backfilled: JSON string leaves only, best match first (two hits in "a").
    assert_eq!(keys(&store, "dragon"), ["a", "b"]);
    assert_eq!(keys(&store, "DRAGON fire"), ["a"], "all words, any case");
    assert!(keys(&store, "hp").is_empty(), "member names are not text");
    let hits = store.reader().unwrap().search("fire", 0).unwrap();
    assert!(hits[0].1 > 0.0);
    assert!(hits[0].2.contains("[fire]"), "{}", hits[0].2);
    // Query syntax is plain text: quotes and operators are just characters.
    assert!(keys(&store, "\"dragon OR NEAR(").is_empty());
    assert!(store.reader().unwrap().search("   ", 0).is_err());

    // Writes show at once: put, overwrite, bytes over JSON, delete.
    store
        .write(vec![put_json("e", r#"{"note":"the dragon sleeps"}"#)])
        .unwrap();
    assert_eq!(keys(&store, "sleeps"), ["e"]);
    store
        .write(vec![put_json("e", r#"{"note":"awake now"}"#)])
        .unwrap();
    assert!(keys(&store, "sleeps").is_empty());
    assert_eq!(keys(&store, "awake"), ["e"]);
    store.write(vec![put_bytes("e", b"awake")]).unwrap();
    assert!(keys(&store, "awake").is_empty());
    store.write(vec![del("a")]).unwrap();
    assert_eq!(keys(&store, "dragon"), ["b"]);

    // A failing job leaves no trace in the index (its savepoint covers the upkeep).
    poison_inserts(&dir);
    let got = run_grouped(
        &dir,
        &store,
        vec![
            vec![put_json("ok", r#""phoenix""#)],
            vec![put_json("b", r#""phoenix""#)],
            vec![put_json("poison", r#""phoenix""#)],
        ],
    );
    assert!(got[0].is_ok() && got[1].is_ok() && got[2].is_err());
    let mut found = keys(&store, "phoenix");
    found.sort();
    assert_eq!(found, ["b", "ok"]);
    assert!(keys(&store, "dragon").is_empty(), "b was overwritten");

    // Survives a reopen; off drops it.
    store.shutdown();
    drop(store);
    let store = open(&dir);
    assert!(store.reader().unwrap().fulltext_on().unwrap());
    store.write(vec![put_json("f", r#"["phoenix"]"#)]).unwrap();
    assert_eq!(keys(&store, "phoenix").len(), 3);
    assert!(store.set_fulltext(false).unwrap());
    assert_eq!(
        store.reader().unwrap().search("phoenix", 0).unwrap_err(),
        StoreError::FulltextOff
    );
    store.write(vec![put_json("g", r#""phoenix""#)]).unwrap();
}

#[test]
fn vectors_follow_their_records_and_bad_ones_store_nothing() {
    let dir = TestDir::new("vectors");
    let store = open(&dir);
    assert_eq!(store.vector_dim(), 0);
    // A put without a vector in a database without any costs nothing and stores none.
    store.write(vec![put_json("plain", "1")]).unwrap();
    assert!(stored_vectors(&store).is_empty());
    // The first vector sets the dimension, also inside one job.
    store
        .write(vec![
            put_vec("a", &[1.0, 2.0, 3.0]),
            put_vec("b", &[0.0, 0.0, 1.0]),
        ])
        .unwrap();
    assert_eq!(store.vector_dim(), 3);
    assert_eq!(
        stored_vectors(&store),
        [
            ("a".into(), vec![1.0, 2.0, 3.0]),
            ("b".into(), vec![0.0, 0.0, 1.0])
        ]
    );
    // Wrong dimension, NaN, zero: refused, nothing of the job stored.
    for bad in [vec![1.0, 2.0], vec![f32::NAN, 1.0, 1.0], vec![0.0; 3]] {
        let e = store
            .write(vec![put_json("c", "1"), put_vec("d", &bad)])
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidVector(_)), "{e}");
        let mut r = store.reader().unwrap();
        assert_eq!(r.get("c").unwrap(), None);
    }
    // Two first vectors of different dimensions in one transaction: the writer's check
    // (the caller's saw no dimension yet) fails the second job alone.
    let dir2 = TestDir::new("vectors-first");
    let store2 = open(&dir2);
    let got = run_grouped(
        &dir2,
        &store2,
        vec![
            vec![put_json("x", "1")],
            vec![put_vec("p", &[1.0, 0.0])],
            vec![put_vec("q", &[1.0, 0.0, 0.0])],
        ],
    );
    assert!(got[1].is_ok());
    assert!(
        matches!(got[2], Err(StoreError::InvalidVector(_))),
        "{:?}",
        got[2]
    );
    assert_eq!(store2.vector_dim(), 2);
    assert_eq!(stored_vectors(&store2), [("p".into(), vec![1.0, 0.0])]);
    drop(store2);
    // A plain put replaces the record and drops its vector; so does a delete.
    store.write(vec![put_json("a", "2")]).unwrap();
    store.write(vec![del("b")]).unwrap();
    assert!(stored_vectors(&store).is_empty());
    // The dimension is part of the database.
    store.write(vec![put_vec("e", &[0.5, 0.5, 0.5])]).unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.vector_dim(), 3);
    assert_eq!(stored_vectors(&store), [("e".into(), vec![0.5, 0.5, 0.5])]);
    let e = store.write(vec![put_vec("f", &[1.0])]).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 dimensions, but this database's vectors have 3"),
        "{e}"
    );
}

#[test]
fn a_failing_job_leaves_no_vector_behind() {
    let dir = TestDir::new("vectors-fail");
    let store = open(&dir);
    store.write(vec![put_vec("keep", &[1.0, 0.0])]).unwrap();
    poison_inserts(&dir);
    let got = run_grouped(
        &dir,
        &store,
        vec![
            vec![put_vec("ok1", &[0.0, 1.0])],
            // One op: the vector is written before the record's insert fails.
            vec![put_vec("poison", &[1.0, 1.0])],
            vec![put_vec("ok2", &[1.0, 2.0])],
        ],
    );
    assert!(got[0].is_ok() && got[2].is_ok());
    assert!(got[1].is_err());
    let keys: Vec<String> = stored_vectors(&store).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["keep", "ok1", "ok2"]);
}
