//! Vector search against a real server process: each vector finds itself, prefix
//! filters, updates and deletes, restarts and `kill -9`, and concurrent clients.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use ringbase_client::{Client, Error, ErrorCode, Neighbor, ValueKind, VectorSearch};

/// Child roles (this binary re-executed by `spawn_child`).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let args = child_args();
    match role.as_str() {
        // writer FROM TO: puts keys v/FROM..v/TO with their vectors, then (second pass)
        // re-puts every third with its "moved" vector and deletes every fifth; prints
        // "done" at the end.
        "writer" => {
            let from: u32 = args[0].parse().unwrap();
            let to: u32 = args[1].parse().unwrap();
            let mut c = child_connect();
            // The server may be killed under it (kill -9 test): then stop quietly.
            let gone = |r: Result<_, ringbase_client::Error>| {
                if let Err(e) = r {
                    eprintln!("writer stops: {e}");
                    std::process::exit(3);
                }
            };
            for i in from..to {
                gone(
                    c.put_json_with_vector(&key(i), &format!("{{\"i\":{i}}}"), &vector(i, DIM, 0))
                        .map(drop),
                );
            }
            for i in from..to {
                if i % 3 == 0 {
                    gone(
                        c.put_json_with_vector(&key(i), "{\"moved\":true}", &vector(i, DIM, 1))
                            .map(drop),
                    );
                }
                if i % 5 == 0 {
                    gone(c.delete(&key(i)).map(drop));
                }
            }
            println!("done");
            std::process::exit(0);
        }
        // searcher N: N searches with random vectors and prefixes; checks each result
        // list and prints "ok N".
        "searcher" => {
            let n: u32 = args[0].parse().unwrap();
            let mut c = child_connect();
            for i in 0..n {
                let q = vector(10_000 + i, DIM, 7);
                let prefix = ["v/", "v/1", "v/2", ""][i as usize % 4];
                let opts = VectorSearch::k(10).prefix(prefix);
                let hits = c.vector_search_with(&q, &opts).unwrap();
                check_hits(&hits, prefix);
            }
            println!("ok {n}");
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
}

/// Dimension of the test vectors.
const DIM: usize = 16;

fn key(i: u32) -> String {
    format!("v/{i:05}")
}

/// A deterministic pseudo-random vector for `i` (and a `salt` for variants).
fn vector(i: u32, dim: usize, salt: u64) -> Vec<f32> {
    let mut x = (u64::from(i) << 8 | salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}

/// Results are best first, each key once, under the prefix, scores in [0, 1].
fn check_hits(hits: &[Neighbor], prefix: &str) {
    let mut seen = HashSet::new();
    for w in hits.windows(2) {
        assert!(w[0].score >= w[1].score, "not best first: {hits:?}");
    }
    for h in hits {
        assert!(
            h.key.starts_with(prefix),
            "{} outside prefix {prefix:?}",
            h.key
        );
        assert!((0.0..=1.0).contains(&h.score), "score {}", h.score);
        assert!(seen.insert(h.key.clone()), "{} twice", h.key);
    }
}

fn server(tag: &str, extra: &[&str]) -> (TempDir, ServerProc) {
    let rt = TempDir::new(tag);
    let srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), tag, extra);
    (rt, srv)
}

/// The server error code of a failed call.
fn code_of<T: std::fmt::Debug>(r: Result<T, Error>) -> (ErrorCode, String) {
    match r {
        Err(Error::Server { code, message, .. }) => (code.expect("a known code"), message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Waits until the server's vector graph is built (or loaded) and holds every vector.
fn wait_indexed(c: &mut Client) {
    let ok = eventually(Duration::from_secs(60), || {
        let v = c.status().unwrap().vectors;
        v.ready && v.pending == 0
    });
    assert!(
        ok,
        "vector index not built: {:?}",
        c.status().unwrap().vectors
    );
}

#[test]
fn each_vector_finds_itself_and_bad_vectors_store_nothing() {
    let (_rt, srv) = server("v-self", &[]);
    let mut c = srv.connect();
    // Nothing stored yet: any usable query finds nothing.
    assert!(c.vector_search(&vector(0, DIM, 0)).unwrap().is_empty());
    let n = 600;
    for i in 0..n {
        c.put_json_with_vector(&key(i), &format!("{{\"i\":{i}}}"), &vector(i, DIM, 0))
            .unwrap();
    }
    // Found at once (pending vectors are searched exactly), and after indexing.
    for round in 0..2 {
        if round == 1 {
            wait_indexed(&mut c);
        }
        for i in 0..n {
            let hits = c
                .vector_search_with(&vector(i, DIM, 0), &VectorSearch::k(3))
                .unwrap();
            assert_eq!(
                hits[0].key,
                key(i),
                "round {round}: vector {i} finds {hits:?}"
            );
            assert!(
                (hits[0].score - 1.0).abs() < 1e-4,
                "score {}",
                hits[0].score
            );
            check_hits(&hits, "");
        }
    }
    // The score is the cosine similarity (clamped at 0), whatever the lengths.
    let q: Vec<f32> = vector(7, DIM, 0).iter().map(|x| x * 1000.0).collect();
    let hits = c.vector_search_with(&q, &VectorSearch::k(5)).unwrap();
    for h in &hits {
        let i: u32 = h.key[2..].parse().unwrap();
        let want = cosine(&q, &vector(i, DIM, 0)).max(0.0);
        assert!(
            (h.score - want).abs() < 1e-4,
            "{}: {} vs {want}",
            h.key,
            h.score
        );
    }
    // min_score and with_values.
    let hits = c
        .vector_search_with(
            &vector(3, DIM, 0),
            &VectorSearch::k(50).min_score(0.5).with_values(),
        )
        .unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h.score >= 0.5));
    let r = hits[0].record.as_ref().expect("a record");
    assert_eq!(
        (r.key.as_str(), r.value.as_slice()),
        ("v/00003", &b"{\"i\":3}"[..])
    );

    // Bad vectors: a clear error, nothing stored.
    let status = c.status().unwrap();
    assert_eq!(
        (status.vectors.dim, status.vectors.vectors),
        (DIM as u32, u64::from(n))
    );
    let bad: [(&str, Vec<f32>, &str); 5] = [
        (
            "wrong dim",
            vec![1.0; DIM + 1],
            "17 dimensions, but this database's vectors have 16",
        ),
        ("nan", [vec![f32::NAN], vec![1.0; DIM - 1]].concat(), "NaN"),
        (
            "inf",
            [vec![1.0; DIM - 1], vec![f32::NEG_INFINITY]].concat(),
            "-inf",
        ),
        ("zero", vec![0.0; DIM], "no direction"),
        ("empty", vec![], "empty"),
    ];
    for (what, v, msg) in &bad {
        let (code, m) = code_of(c.put_json_with_vector("bad", "1", v));
        assert_eq!(code, ErrorCode::InvalidVector, "{what}");
        assert!(m.contains(msg), "{what}: {m}");
        assert_eq!(c.get("bad").unwrap(), None, "{what}: nothing stored");
        let (code, m) = code_of(c.vector_search(v));
        assert_eq!(code, ErrorCode::InvalidVector, "{what} as a query");
        assert!(m.contains(msg), "{what}: {m}");
    }
    let status = c.status().unwrap();
    assert_eq!(status.vectors.vectors, u64::from(n));
    assert_eq!(status.records, u64::from(n));
}

#[test]
fn prefix_filters_return_k_when_k_exist() {
    let (_rt, srv) = server("v-prefix", &[]);
    let mut c = srv.connect();
    // 3000 under a/ (broad), 300 under b/, 5 under c/ (selective), 40 under d/.
    let groups = [("a/", 3000u32), ("b/", 300), ("c/", 5), ("d/", 40)];
    let mut n = 0;
    for (p, count) in groups {
        for i in 0..count {
            c.put_with_vector(
                &format!("{p}{i}"),
                b"x",
                ValueKind::Bytes,
                &vector(n, DIM, 3),
            )
            .unwrap();
            n += 1;
        }
    }
    wait_indexed(&mut c);
    for (p, count) in groups {
        for q in 0..20 {
            for k in [1u32, 10, 50] {
                let hits = c
                    .vector_search_with(&vector(90_000 + q, DIM, 4), &VectorSearch::k(k).prefix(p))
                    .unwrap();
                check_hits(&hits, p);
                assert_eq!(hits.len() as u32, k.min(count), "prefix {p} k {k}");
            }
        }
    }
    // Exact answers where the exact scan applies (c/): compare with brute force.
    let q = vector(424_242, DIM, 9);
    let hits = c
        .vector_search_with(&q, &VectorSearch::k(5).prefix("c/"))
        .unwrap();
    let mut want: Vec<(f32, String)> = (0..5)
        .map(|i| {
            (
                cosine(&q, &vector(3300 + i, DIM, 3)).max(0.0),
                format!("c/{i}"),
            )
        })
        .collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0));
    let got: Vec<&str> = hits.iter().map(|h| h.key.as_str()).collect();
    let want_keys: Vec<&str> = want.iter().map(|w| w.1.as_str()).collect();
    assert_eq!(got, want_keys);
}

#[test]
fn updates_and_deletes_never_return_old_or_deleted_vectors() {
    let (_rt, srv) = server("v-update", &[]);
    let mut c = srv.connect();
    let n = 3000u32;
    for i in 0..n {
        c.put_json_with_vector(&key(i), "{}", &vector(i, DIM, 0))
            .unwrap();
    }
    wait_indexed(&mut c);
    // Move half (enough dead points for a background rebuild), delete a tenth, and
    // drop the vector of a tenth with a plain put.
    let mut current: HashMap<u32, Option<u64>> = (0..n).map(|i| (i, Some(0))).collect();
    for i in 0..n {
        if i % 2 == 0 {
            c.put_json_with_vector(&key(i), "{}", &vector(i, DIM, 1))
                .unwrap();
            current.insert(i, Some(1));
        }
        if i % 10 == 1 {
            c.delete(&key(i)).unwrap();
            current.insert(i, None);
        }
        if i % 10 == 3 {
            c.put_json(&key(i), "{\"no vector\":1}").unwrap();
            current.insert(i, None);
        }
    }
    let check = |c: &mut Client, when: &str| {
        for i in (0..n).step_by(7) {
            for salt in [0u64, 1] {
                let hits = c
                    .vector_search_with(&vector(i, DIM, salt), &VectorSearch::k(5))
                    .unwrap();
                check_hits(&hits, "");
                for h in &hits {
                    let j: u32 = h.key[2..].parse().unwrap();
                    let Some(Some(s)) = current.get(&j) else {
                        panic!("{when}: {} has no vector now but was returned", h.key);
                    };
                    // The score is that of the key's current vector.
                    let want = cosine(&vector(i, DIM, salt), &vector(j, DIM, *s)).max(0.0);
                    assert!(
                        (h.score - want).abs() < 1e-4,
                        "{when}: {} scored by an old vector",
                        h.key
                    );
                }
                if current[&i] == Some(salt) {
                    assert_eq!(hits[0].key, key(i), "{when}: {i}/{salt} finds itself");
                }
            }
        }
    };
    check(&mut c, "right after the writes");
    let rebuilt = eventually(Duration::from_secs(60), || {
        let v = c.status().unwrap().vectors;
        v.rebuilds >= 2 && v.pending == 0
    });
    let v = c.status().unwrap().vectors;
    assert!(rebuilt, "no background rebuild: {v:?}");
    let live = current.values().filter(|s| s.is_some()).count() as u64;
    assert_eq!(v.vectors, live);
    assert!(
        v.dead < v.points / 4,
        "rebuild dropped the dead points: {v:?}"
    );
    check(&mut c, "after the rebuild");
}

#[test]
fn restart_and_kill9_leave_index_and_storage_in_agreement() {
    let (_rt, mut srv) = server("v-kill", &[]);
    let mut c = srv.connect();
    for i in 0..500 {
        c.put_json_with_vector(&key(i), "{}", &vector(i, DIM, 0))
            .unwrap();
    }
    c.delete(&key(1)).unwrap();
    c.put_json(&key(2), "{}").unwrap();
    wait_indexed(&mut c);
    drop(c);
    // Clean restart: the graph saved at shutdown is loaded (no build), same answers.
    assert_eq!(srv.terminate(), Some(0));
    srv = srv.restart();
    let mut c = srv.connect();
    let v = c.status().unwrap().vectors;
    assert!(v.ready && v.rebuilds == 0, "loaded, not rebuilt: {v:?}");
    assert_eq!((v.vectors, v.points, v.dead), (498, 500, 2));
    let check = |c: &mut Client| {
        for i in (0..500).step_by(3) {
            let hits = c.vector_search(&vector(i, DIM, 0)).unwrap();
            if i == 1 || i == 2 {
                assert!(hits.iter().all(|h| h.key != key(i)), "{i} has no vector");
            } else {
                assert_eq!(hits[0].key, key(i));
            }
        }
    };
    check(&mut c);
    drop(c);
    // A damaged save is not loaded: the graph is rebuilt from storage, same answers.
    assert_eq!(srv.terminate(), Some(0));
    let data = srv.data.join("vectors").join("graph.hnsw.data");
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    srv = srv.restart();
    let mut c = srv.connect();
    wait_indexed(&mut c);
    assert_eq!(c.status().unwrap().vectors.rebuilds, 1);
    check(&mut c);
    drop(c);
    // kill -9 while a writer is busy.
    let mut w = spawn_child("writer", &srv, &["500".into(), "3500".into()]);
    std::thread::sleep(Duration::from_millis(700));
    srv.kill9();
    let _ = wait_child(&mut w, Duration::from_secs(30));
    srv = srv.restart();
    let mut c = srv.connect();
    wait_indexed(&mut c);
    // Storage is the truth: every record the writer left has its latest vector
    // (the writer's order: first pass salt 0, second pass salt 1 or a delete).
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let page = c.list("v/", after.as_deref(), 1000).unwrap();
        records.extend(
            page.records
                .iter()
                .map(|r| (r.key.clone(), r.value.clone())),
        );
        if !page.more {
            break;
        }
        after = page.records.last().map(|r| r.key.clone());
    }
    assert!(records.len() > 500, "the writer wrote something");
    // v/00002 was put without a vector above.
    records.retain(|(k, _)| k != "v/00002");
    let status = c.status().unwrap().vectors;
    assert_eq!(
        status.vectors,
        records.len() as u64,
        "every record has a vector, no more"
    );
    for (k, value) in &records {
        let i: u32 = k[2..].parse().unwrap();
        let salt = if value == b"{\"moved\":true}" { 1 } else { 0 };
        let hits = c.vector_search(&vector(i, DIM, salt)).unwrap();
        assert_eq!(&hits[0].key, k, "{k} finds itself after kill -9");
    }
}

#[test]
fn searches_from_several_processes_while_another_writes() {
    let (_rt, srv) = server("v-multi", &[]);
    let mut c = srv.connect();
    for i in 0..300 {
        c.put_json_with_vector(&key(i), "{}", &vector(i, DIM, 0))
            .unwrap();
    }
    let mut writer = spawn_child("writer", &srv, &["300".into(), "2300".into()]);
    let mut searchers: Vec<_> = (0..2)
        .map(|_| spawn_child("searcher", &srv, &["400".into()]))
        .collect();
    for s in &mut searchers {
        assert!(
            wait_line(s, "ok 400", Duration::from_secs(120)).is_some(),
            "a searcher failed"
        );
        assert!(wait_child(s, Duration::from_secs(10)).success());
    }
    assert!(wait_line(&mut writer, "done", Duration::from_secs(120)).is_some());
    assert!(wait_child(&mut writer, Duration::from_secs(10)).success());
    wait_indexed(&mut c);
    // After the writer: every live key finds itself with its latest vector.
    for i in (300..2300).step_by(11) {
        if i % 5 == 0 {
            continue;
        }
        let salt = u64::from(i % 3 == 0);
        assert_eq!(
            c.vector_search(&vector(i, DIM, salt)).unwrap()[0].key,
            key(i)
        );
    }
}

#[test]
fn cli_put_with_vector_vsearch_and_status() {
    let (_rt, srv) = server("v-cli", &[]);
    let (code, _, err) = srv.cli(&["put", "a", "{\"n\":1}", "--vector", "[1, 0, 0]"]);
    assert_eq!(code, Some(0), "{err}");
    srv.cli(&["put", "b", "{\"n\":2}", "--vector", "[0, 1, 0]"]);
    srv.cli(&["put", "c/x", "{\"n\":3}", "--vector", "[0.9, 0.1, 0]"]);
    let (code, out, err) = srv.cli(&["vsearch", "[1, 0, 0]", "--k", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json_line_keys(&out), ["a", "c/x"]);
    let (_, out, _) = srv.cli(&["vsearch", "[1, 0, 0]", "--prefix", "b", "--values"]);
    assert_eq!(json_line_keys(&out), ["b"]);
    assert!(out.contains("\"value\":{\"n\":2}"), "{out}");
    let (_, out, _) = srv.cli(&["vsearch", "[1, 0, 0]", "--min-score", "0.5"]);
    assert_eq!(json_line_keys(&out), ["a", "c/x"]);
    let (code, _, err) = srv.cli(&["put", "d", "1", "--vector", "[1, 0]"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("2 dimensions, but this database's vectors have 3"),
        "{err}"
    );
    let (code, _, err) = srv.cli(&["vsearch", "[1, 0, nope]"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("vector"), "{err}");
    let (_, out, _) = srv.cli(&["status"]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["vectors"]["dim"], 3);
    assert_eq!(s["vectors"]["vectors"], 3);
}
