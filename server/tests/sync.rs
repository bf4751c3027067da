//! Replication between real `ringbase serve` processes on 127.0.0.1 over libp2p
//! (TCP, private network, Noise, Yamux), with explicit peers: concurrent writers on
//! each server converge; a server stopped while the others write catches up when it
//! restarts; values larger than a sync page travel in split pages; replicated changes
//! reach watchers (with their origin's version) and the vector and full-text indexes;
//! a server with another secret never connects and receives nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ringbase_client::{Client, Version};

fn addr(port: u16) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}")
}

/// Starts server `i` of a replicated database: listening on `ports[i]`, peering with
/// every other port.
fn start(rt: &Path, i: usize, ports: &[u16], secret: &Path) -> ServerProc {
    let mut args: Vec<String> = vec![
        "--sync".into(),
        "peers".into(),
        "--db-id".into(),
        "sync-test".into(),
        "--secret-file".into(),
        secret.display().to_string(),
        "--listen".into(),
        addr(ports[i]),
    ];
    for (j, &p) in ports.iter().enumerate() {
        if j != i {
            args.push("--peer".into());
            args.push(addr(p));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProc::start(
        &rt.join(format!("run{i}")),
        &rt.join(format!("data{i}")),
        &format!("sync{i}"),
        &args,
    )
}

/// Every live record of a server: key, value and version, in key order.
fn digest(c: &mut Client) -> Vec<(String, Vec<u8>, Version)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = c.list("", after.as_deref(), 1000).unwrap();
        for r in &page.records {
            out.push((r.key.clone(), r.value.clone(), r.version));
        }
        match page.records.last() {
            Some(last) if page.more => after = Some(last.key.clone()),
            _ => return out,
        }
    }
}

fn converged(clients: &mut [Client]) -> bool {
    let first = digest(&mut clients[0]);
    clients[1..].iter_mut().all(|c| digest(c) == first)
}

/// `n` writes on `c`: puts and deletes of keys `k0..k39`, tagged with `tag`.
fn write_some(c: &mut Client, tag: &str, n: u32, seed: u32) {
    for i in 0..n {
        let k = format!("k{}", (i * 7 + seed * 13) % 40);
        if (i + seed).is_multiple_of(5) {
            c.delete(&k).unwrap();
        } else {
            c.put_json(&k, &format!("{{\"by\":\"{tag}\",\"i\":{i}}}"))
                .unwrap();
        }
    }
}

#[test]
fn three_servers_converge_through_writes_a_stop_and_a_restart() {
    let rt = TempDir::new("sync3");
    let secret = rt.path().join("secret");
    std::fs::write(&secret, "a shared secret of the sync test\n").unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<ServerProc> = (0..3)
        .map(|i| start(rt.path(), i, &ports, &secret))
        .collect();

    // Concurrent writers on every server.
    let writers: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let opts = s.options();
            std::thread::spawn(move || {
                let mut c = Client::connect_with(opts).unwrap();
                write_some(&mut c, &format!("s{i}"), 150, i as u32);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // Values larger than a sync page (256 KiB) travel in pages of their own.
    let big = format!("\"{}\"", "x".repeat(300 << 10));
    let mut c0 = servers[0].connect();
    for i in 0..3 {
        c0.put_json(&format!("big{i}"), &big).unwrap();
    }
    drop(c0);
    let mut clients: Vec<Client> = servers.iter().map(ServerProc::connect).collect();
    assert!(
        eventually(Duration::from_secs(60), || converged(&mut clients)),
        "not converged: {:?}",
        clients
            .iter_mut()
            .map(|c| digest(c).len())
            .collect::<Vec<_>>()
    );
    assert!(digest(&mut clients[0]).len() > 10);

    // Stop server 2; both others write; restart it: it catches up with what they
    // wrote meanwhile, and its new writes reach them.
    drop(clients);
    servers[2].terminate();
    let mut a = servers[0].connect();
    let mut b = servers[1].connect();
    write_some(&mut a, "a-while-2-down", 60, 5);
    write_some(&mut b, "b-while-2-down", 60, 6);
    a.put_json("down-a", "1").unwrap();
    b.put_json("down-b", "2").unwrap();
    drop((a, b));
    let s2 = servers.pop().unwrap().restart();
    servers.push(s2);
    let mut c2 = servers[2].connect();
    write_some(&mut c2, "2-after-restart", 30, 7);
    drop(c2);
    let mut clients: Vec<Client> = servers.iter().map(ServerProc::connect).collect();
    assert!(
        eventually(Duration::from_secs(60), || converged(&mut clients)),
        "not converged after the restart"
    );
    // Status: each server sees the two others, none of them behind once every
    // version vector has been heard again (every second while they differ).
    assert!(
        eventually(Duration::from_secs(30), || clients.iter_mut().all(|c| {
            let st = c.status().unwrap().sync.expect("sync status");
            st.db_id == "sync-test"
                && st.peers.len() == 2
                && st
                    .peers
                    .iter()
                    .all(|p| p.behind == 0 && p.ahead == 0 && !p.vv.is_empty())
        })),
        "{:?}",
        clients[0].status().unwrap().sync
    );
    let (code, out, _) = servers[0].cli(&["status"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sync"]["peers"].as_array().unwrap().len(), 2, "{out}");
    let (code, out, _) = servers[1].cli(&["peers"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(clients[2].get("down-a").unwrap().unwrap().value, b"1");
    assert_eq!(clients[2].get("down-b").unwrap().unwrap().value, b"2");
}

#[test]
fn replicated_changes_reach_watchers_and_indexes() {
    let rt = TempDir::new("sync-reach");
    let secret = rt.path().join("secret");
    std::fs::write(&secret, "a shared secret of the sync test\n").unwrap();
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let a = start(rt.path(), 0, &ports, &secret);
    let b = start(rt.path(), 1, &ports, &secret);
    let mut ca = a.connect();
    let mut cb = b.connect();
    let a_id = ca.status().unwrap().replica_id;
    let b_id = cb.status().unwrap().replica_id;
    assert!(cb.set_fulltext(true).unwrap());
    let mut watcher = b.connect();
    watcher.watch("item/", None, true).unwrap();

    // Writes on A: text for the full-text index, vectors for the vector index.
    ca.put_json_with_vector(
        "item/sword",
        r#"{"name":"crimson sword"}"#,
        &[1.0, 0.0, 0.0],
    )
    .unwrap();
    ca.put_json_with_vector("item/shield", r#"{"name":"oak shield"}"#, &[0.0, 1.0, 0.0])
        .unwrap();
    let next = |w: &mut Client| match w.next_event(Some(Duration::from_secs(30))).unwrap() {
        Some(ringbase_client::WatchEvent::Change(c)) => c,
        other => panic!("expected a change, got {other:?}"),
    };
    for want in ["item/sword", "item/shield"] {
        let c = next(&mut watcher);
        assert_eq!(c.key, want);
        assert!(!c.deleted);
        // The origin is A: the version A gave it, not a new one of B's.
        assert_eq!(c.version.replica, a_id);
        assert_ne!(c.version.replica, b_id);
        assert!(c.value.is_some());
    }
    // At once: the vector index follows a commit before the feed tells watchers.
    let hits = cb.vector_search(&[0.9, 0.1, 0.0]).unwrap();
    assert_eq!(hits[0].key, "item/sword");
    assert_eq!(hits.len(), 2);
    let found = cb.search("crimson", 10).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key, "item/sword");

    // A replicated delete leaves both indexes too.
    ca.delete("item/sword").unwrap();
    let c = next(&mut watcher);
    assert_eq!((c.key.as_str(), c.deleted), ("item/sword", true));
    assert_eq!(c.version.replica, a_id);
    let hits = cb.vector_search(&[0.9, 0.1, 0.0]).unwrap();
    assert_eq!(
        hits.iter().map(|h| h.key.as_str()).collect::<Vec<_>>(),
        ["item/shield"]
    );
    assert!(cb.search("crimson", 10).unwrap().is_empty());
    // B's own write is B's, and reaches A's storage the same way.
    cb.put_json("item/bow", r#"{"name":"yew bow"}"#).unwrap();
    let c = next(&mut watcher);
    assert_eq!((c.key.as_str(), c.version.replica), ("item/bow", b_id));
    assert!(eventually(Duration::from_secs(30), || ca
        .get("item/bow")
        .unwrap()
        .is_some()));
    // Nothing echoes back: B's watcher sees no more changes.
    assert!(watcher
        .next_event(Some(Duration::from_millis(1500)))
        .unwrap()
        .is_none());
}

#[test]
fn a_server_with_another_secret_never_connects() {
    let rt = TempDir::new("sync-secret");
    let good = rt.path().join("good");
    let bad = rt.path().join("bad");
    std::fs::write(&good, "the right secret, 32 bytes long!").unwrap();
    std::fs::write(&bad, "the wrong secret, 32 bytes long!").unwrap();
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let s0 = start(rt.path(), 0, &ports, &good);
    let s1 = start(rt.path(), 1, &ports, &bad);
    let mut c0 = s0.connect();
    let mut c1 = s1.connect();
    c0.put_json("from-good", "1").unwrap();
    c1.put_json("from-bad", "1").unwrap();
    // Long enough for several dial attempts and anti-entropy rounds.
    std::thread::sleep(Duration::from_secs(5));
    assert!(c0.get("from-bad").unwrap().is_none());
    assert!(c1.get("from-good").unwrap().is_none());
    assert!(c0.status().unwrap().sync.unwrap().peers.is_empty());
    // Same secret, other database id: also apart (the key is derived from both).
    let s2 = {
        let args = [
            "--sync",
            "peers",
            "--db-id",
            "another-db",
            "--secret-file",
            good.to_str().unwrap(),
            "--listen",
            &addr(free_port()),
            "--peer",
            &addr(ports[0]),
        ];
        ServerProc::start(
            &rt.path().join("run2"),
            &rt.path().join("data2"),
            "sync-other",
            &args,
        )
    };
    s2.connect().put_json("from-other-db", "1").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(c0.get("from-other-db").unwrap().is_none());
    assert!(s2.connect().get("from-good").unwrap().is_none());
}

#[test]
fn sync_flags_are_checked() {
    // A start refused with exit code 2 and a message that says `why`.
    let refused = |(code, err): (Option<i32>, String), why: &str| {
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(why), "{err}");
    };
    let rt = TempDir::new("sync-flags");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(ringbase_bin())
            .args(["serve", "--name", "sync-flags", "--data-dir"])
            .arg(rt.path().join("data"))
            .args(args)
            .env("RINGBASE_RUNTIME_DIR", rt.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    refused(run(&["--peer", "/ip4/127.0.0.1/tcp/1"]), "--sync peers");
    refused(run(&["--max-clock-skew", "5"]), "--sync peers");
    refused(run(&["--sync", "dht", "--db-id", "x"]), "--secret-file");
    let short = rt.path().join("short");
    std::fs::write(&short, "too short").unwrap();
    refused(
        run(&[
            "--sync",
            "peers",
            "--db-id",
            "x",
            "--secret-file",
            short.to_str().unwrap(),
        ]),
        "at least 16",
    );
    let good = rt.path().join("good");
    std::fs::write(&good, "a secret of 32 bytes, or nearly.").unwrap();
    let good = good.to_str().unwrap();
    let with = |extra: &[&str]| {
        let mut a = vec!["--db-id", "x", "--secret-file", good];
        a.extend_from_slice(extra);
        run(&a)
    };
    refused(with(&["--sync", "relay"]), "relay's address");
    refused(
        with(&[
            "--sync",
            "relay",
            "--peer",
            "/ip4/127.0.0.1/tcp/1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ]),
        "drop --listen",
    );
    refused(with(&["--sync", "dht"]), "bootstrap");
    refused(with(&["--sync", "peers"]), "--peer");
    refused(
        run(&[
            "--sync",
            "peers",
            "--db-id",
            "x",
            "--secret-file",
            short.to_str().unwrap(),
            "--peer",
            "nonsense",
        ]),
        "--peer",
    );
}
