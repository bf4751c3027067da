//! Change-feed tests: real server, real writer processes, a watcher reading its event
//! ring.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use ringbase_client::{
    BatchOp, Change, Client, Error, ErrorCode, RingSizes, ValueKind, WatchEvent,
};

/// Child roles (this binary re-executed by `spawn_child`).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let args = child_args();
    match role.as_str() {
        // writer ID: 200 puts, 40 deletes of its own keys, 10 batches of 5 puts.
        "writer" => {
            let id: u32 = args[0].parse().unwrap();
            let mut c = child_connect();
            for i in 0..200 {
                c.put_json(&format!("w{id}/k{:03}", i % 120), &format!("{{\"i\":{i}}}"))
                    .unwrap();
                if i % 5 == 4 {
                    c.delete(&format!("w{id}/k{:03}", (i * 7) % 120)).unwrap();
                }
                if i % 20 == 0 {
                    let ops = (0..5)
                        .map(|j| BatchOp::Put {
                            key: format!("w{id}/b{i:03}-{j}"),
                            value: b"1".to_vec(),
                            kind: ValueKind::Json,
                        })
                        .collect();
                    c.batch(ops).unwrap();
                }
            }
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
}

fn server(tag: &str, extra: &[&str]) -> (TempDir, ServerProc) {
    let rt = TempDir::new(tag);
    let srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), tag, extra);
    (rt, srv)
}

/// Reads changes until `done` says stop; panics on an overflow.
fn collect(c: &mut Client, mut done: impl FnMut(&[Change]) -> bool) -> Vec<Change> {
    let mut got = Vec::new();
    while !done(&got) {
        match c.next_event(Some(Duration::from_secs(30))).unwrap() {
            Some(WatchEvent::Change(ch)) => got.push(ch),
            Some(WatchEvent::Overflow { last_seq }) => panic!("overflow after {last_seq}"),
            None => panic!("no event for 30 s after {} changes", got.len()),
        }
    }
    got
}

#[test]
fn a_watcher_sees_every_change_of_three_writer_processes_once_in_commit_order() {
    let (_rt, srv) = server("w-three", &[]);
    let mut watcher = srv.connect();
    let start = watcher.watch("", None, true).unwrap();
    let mut other = srv.connect();
    let mut children: Vec<_> = (0..3)
        .map(|id| spawn_child("writer", &srv, &[id.to_string()]))
        .collect();
    for child in &mut children {
        assert!(wait_child(child, Duration::from_secs(120)).success());
    }
    // Every change the store made is what the watcher must see: the store's own count.
    let total = watcher_head(&mut other).unwrap() - start.head;
    let got = watchdog(Duration::from_secs(120), move || {
        collect(&mut watcher, |g| g.len() as u64 >= total)
    });
    assert_eq!(got.len() as u64, total);
    // Exactly once, in commit order: consecutive sequence numbers.
    for (i, ch) in got.iter().enumerate() {
        assert_eq!(ch.seq, start.head + 1 + i as u64, "{ch:?}");
    }
    // A batch's changes arrive together: same txn, in a row, all five.
    let mut txns: BTreeMap<u64, Vec<&Change>> = BTreeMap::new();
    for ch in &got {
        txns.entry(ch.txn).or_default().push(ch);
    }
    for ch in got.iter().filter(|c| c.key.contains("/b")) {
        let prefix = &ch.key[..ch.key.len() - 1];
        let members: Vec<_> = txns[&ch.txn]
            .iter()
            .filter(|c| c.key.starts_with(prefix))
            .collect();
        assert_eq!(members.len(), 5, "batch of {} split: {members:?}", ch.key);
        let seqs: Vec<u64> = members.iter().map(|c| c.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }
    // The last change per key is the stored state (value and version; deletes gone).
    let mut last: HashMap<&str, &Change> = HashMap::new();
    for ch in &got {
        last.insert(&ch.key, ch);
    }
    for (key, ch) in last {
        match other.get(key).unwrap() {
            Some(rec) => {
                assert!(!ch.deleted, "{key}");
                assert_eq!(Some(rec.version), Some(ch.version), "{key}");
                assert_eq!(ch.value.as_deref(), Some(&rec.value[..]), "{key}");
            }
            None => assert!(ch.deleted, "{key}"),
        }
    }
}

/// The newest change sequence number, as a fresh watch reports it.
fn watcher_head(c: &mut Client) -> Result<u64, Error> {
    let start = c.watch("", None, false)?;
    c.unwatch()?;
    Ok(start.head)
}

#[test]
fn a_stalled_watcher_gets_an_overflow_marker_and_resumes_without_missing_anything() {
    let (_rt, srv) = server("w-stall", &["--watch-max-lag", "500"]);
    let mut opts = srv.options();
    opts.rings = RingSizes {
        request: 0,
        response: 0,
        event: 16 * 1024,
    };
    let mut watcher = Client::connect_with(opts).unwrap();
    let start = watcher.watch("s/", None, false).unwrap();
    // The watcher reads nothing while 3000 puts (and puts under another prefix) go in:
    // the writer is never held up by it (the watchdog only bounds a hang).
    let mut writer = srv.connect();
    watchdog(Duration::from_secs(120), move || {
        for i in 0..3000 {
            writer.put_json(&format!("s/{i:05}"), "1").unwrap();
            writer.put_json(&format!("t/{i:05}"), "1").unwrap();
        }
    });
    // The server gives a watcher whose ring stays full 500 ms before the marker.
    std::thread::sleep(Duration::from_millis(1200));
    // Now it reads: changes, then the overflow marker at its last change.
    let mut seen: Vec<u64> = Vec::new();
    let last = loop {
        match watcher.next_event(Some(Duration::from_secs(30))).unwrap() {
            Some(WatchEvent::Change(ch)) => seen.push(ch.seq),
            Some(WatchEvent::Overflow { last_seq }) => break last_seq,
            None => panic!("neither changes nor an overflow marker"),
        }
    };
    assert!(seen.len() < 3000, "the watcher should have overflowed");
    assert_eq!(seen.last().copied().unwrap_or(start.head), last);
    // Resume from the cursor: everything after it, nothing twice.
    watcher.watch("s/", Some(last), false).unwrap();
    let rest = watchdog(Duration::from_secs(60), move || {
        let n = 3000 - seen.len();
        let rest = collect(&mut watcher, |g| g.len() >= n);
        (seen, rest)
    });
    let (seen, rest) = rest;
    let keys: Vec<u64> = seen.into_iter().chain(rest.iter().map(|c| c.seq)).collect();
    assert_eq!(keys.len(), 3000);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert!(rest.iter().all(|c| c.key.starts_with("s/")));
    // Puts alternate s/ and t/: the s/ changes are every other sequence number.
    assert!(
        keys.windows(2).all(|w| w[1] == w[0] + 2),
        "a change was missed"
    );
}

#[test]
fn cursors_expire_values_travel_by_reference_when_large_and_sequence_numbers_survive_restarts() {
    let rt = TempDir::new("w-log");
    let run = rt.path().join("run");
    let data = rt.path().join("data");
    let mut srv = ServerProc::start(&run, &data, "w-log", &["--change-log", "10"]);
    let mut c = srv.connect();
    let start = c.watch("", None, true).unwrap();
    for i in 0..30 {
        c.put_json(&format!("k{i}"), "1").unwrap();
    }
    let big = vec![b'7'; 100_000];
    c.put("big", &big, ValueKind::Bytes).unwrap();
    c.delete("k0").unwrap();
    let got = collect(&mut c, |g| g.len() == 32);
    assert_eq!(got[0].value.as_deref(), Some(&b"1"[..]));
    assert!(!got[0].value_omitted);
    assert_eq!(
        (got[30].key.as_str(), got[30].value.is_none()),
        ("big", true)
    );
    assert!(got[30].value_omitted, "a 100 kB value goes by reference");
    assert!(got[31].deleted && got[31].value.is_none() && !got[31].value_omitted);
    assert_eq!(c.get("big").unwrap().unwrap().version, got[30].version);
    // The log keeps 10 changes: an older cursor is refused, a recent one resumes.
    let err = c.watch("", Some(start.head), false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server {
                code: Some(ErrorCode::Expired),
                ..
            }
        ),
        "{err:?}"
    );
    let head = got[31].seq;
    let s = c.watch("", Some(head - 5), false).unwrap();
    assert_eq!(s.head, head);
    let again = collect(&mut c, |g| g.len() == 5);
    assert_eq!(
        again.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (head - 4..=head).collect::<Vec<_>>()
    );
    let err = c.watch("", Some(head + 1), false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server {
                code: Some(ErrorCode::BadRequest),
                ..
            }
        ),
        "{err:?}"
    );
    // A failed watch leaves the last one in place.
    assert!(c.unwatch().unwrap());
    assert!(!c.unwatch().unwrap());
    // After a restart the numbers go on where they stopped.
    drop(c);
    srv.terminate();
    let srv = ServerProc::start(&run, &data, "w-log", &[]);
    let mut c = srv.connect();
    let s = c.watch("", None, false).unwrap();
    assert_eq!(s.head, head);
    c.put_json("after", "1").unwrap();
    let next = collect(&mut c, |g| g.len() == 1);
    assert_eq!(next[0].seq, head + 1);
}

#[test]
fn cli_watch_prints_json_lines() {
    let (rt, srv) = server("w-cli", &[]);
    let mut c = srv.connect();
    let start = c.watch("", None, false).unwrap();
    c.unwatch().unwrap();
    let mut cli = std::process::Command::new(ringbase_bin())
        .args([
            "watch", "--name", "w-cli", "--prefix", "c:", "--values", "--count", "3",
        ])
        .env("RINGBASE_RUNTIME_DIR", rt.path().join("run"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI's watch starts from now: keep writing until it has seen three changes.
    let mut n = 0;
    let exited = loop {
        c.put_json(&format!("c:{n}"), &format!("{{\"n\":{n}}}"))
            .unwrap();
        c.put_json("skip", "0").unwrap();
        n += 1;
        if let Some(status) = cli.try_wait().unwrap() {
            break status;
        }
        assert!(n < 20_000, "the CLI watcher did not finish");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(exited.success());
    let mut out = String::new();
    std::io::Read::read_to_string(cli.stdout.as_mut().unwrap(), &mut out).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for pair in lines.windows(2) {
        // c: and skip alternate: consecutive c: changes are two apart.
        assert_eq!(
            pair[1]["seq"].as_u64().unwrap(),
            pair[0]["seq"].as_u64().unwrap() + 2
        );
    }
    let first = &lines[0];
    assert!(first["seq"].as_u64().unwrap() > start.head);
    let k = first["key"].as_str().unwrap();
    let i: u64 = k[2..].parse().unwrap();
    assert_eq!(first["value"], serde_json::json!({ "n": i }));
    assert_eq!(first["kind"], "json");
}

#[test]
fn a_blocked_watcher_learns_that_the_server_died() {
    let (_rt, mut srv) = server("w-dead", &[]);
    let mut c = srv.connect();
    c.watch("", None, false).unwrap();
    let waiter = std::thread::spawn(move || c.next_event(None));
    std::thread::sleep(Duration::from_millis(100)); // let it block (not needed for correctness)
    srv.kill9();
    let r = watchdog(Duration::from_secs(30), move || waiter.join().unwrap());
    assert!(matches!(r, Err(Error::Disconnected)), "{r:?}");
}
