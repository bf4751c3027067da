//! Anti-entropy over real stores: three SQLite databases, each with its
//! `SqliteVersionStore` and the real protocol, exchange messages in process (random
//! order, duplicates; the network transport is not part of this test) while each
//! writes puts (some with vectors) and deletes. They converge to the same versions,
//! replicated changes reach the commit hooks, the version vector survives a restart,
//! and a local write after a merge wins over it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::TempDir;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringbase_server::store::{
    Commit, CommitHook, RemoteVersion, Store, StoreOptions, ValueKind, Version, WriteOp,
};
use ringbase_server::sync::protocol::{Message, Replica, SyncConfig, VersionStore};
use ringbase_server::sync::sqlite::SqliteVersionStore;

/// Counts the changes a store's commit hook sees that other replicas made.
struct RemoteChanges {
    own: [u8; 16],
    seen: AtomicU64,
}

impl CommitHook for RemoteChanges {
    fn committed(&self, commit: &Commit<'_>) {
        let n = commit
            .changes()
            .filter(|c| c.version.replica != self.own)
            .count();
        self.seen.fetch_add(n as u64, Ordering::Relaxed);
    }
}

struct Node {
    store: Arc<Store>,
    vs: SqliteVersionStore,
    proto: Replica<usize>,
    hook: Arc<RemoteChanges>,
}

fn open(dir: &std::path::Path) -> Node {
    // The hook needs the replica id, known once the store is open: open, read it,
    // reopen with the hook.
    let id = {
        let s = Store::open(dir, StoreOptions::default()).unwrap();
        let id = s.replica_id();
        s.shutdown();
        id
    };
    let hook = Arc::new(RemoteChanges {
        own: id,
        seen: AtomicU64::new(0),
    });
    let store = Arc::new(
        Store::open_with_hooks(
            dir,
            StoreOptions::default(),
            vec![hook.clone() as Arc<dyn CommitHook>],
        )
        .unwrap(),
    );
    let vs = SqliteVersionStore::open(Arc::clone(&store)).unwrap();
    Node {
        store,
        vs,
        proto: Replica::new(SyncConfig {
            max_page_bytes: 300,
            retry_ticks: 2,
            ..SyncConfig::default()
        }),
        hook,
    }
}

/// Every version a node holds (records and tombstones), by key.
fn dump(n: &mut Node) -> BTreeMap<String, RemoteVersion> {
    let vv = n.vs.version_vector();
    let mut out = BTreeMap::new();
    for (origin, _) in vv.iter() {
        for v in n.vs.versions_by_origin(origin, 0, usize::MAX).unwrap() {
            assert!(out.insert(v.key.clone(), v).is_none());
        }
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Delivers messages in random order (some twice) until none are left.
fn pump(
    nodes: &mut [Node],
    queue: &mut Vec<(usize, usize, Message)>,
    rng: &mut StdRng,
    tick: &mut u64,
) {
    for _ in 0..10_000 {
        if queue.is_empty() {
            // Let every node retry what it lacks.
            *tick += 1;
            for (i, n) in nodes.iter_mut().enumerate() {
                n.vs.refresh().unwrap();
                for (to, m) in n.proto.tick(&n.vs, *tick) {
                    queue.push((i, to, m));
                }
            }
            if queue.is_empty() {
                return;
            }
        }
        let k = rng.gen_range(0..queue.len());
        let (from, to, msg) = queue.swap_remove(k);
        if rng.gen_bool(0.1) {
            queue.push((from, to, msg.clone()));
        }
        let n = &mut nodes[to];
        n.vs.refresh().unwrap();
        for m in n.proto.receive(&from, msg, &mut n.vs, now_ms()).unwrap() {
            queue.push((to, from, m));
        }
    }
    panic!("messages never stopped");
}

#[test]
fn three_stores_converge_and_replicated_changes_reach_the_hooks() {
    let dirs: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("sync-store-{i}")))
        .collect();
    let mut nodes: Vec<Node> = dirs.iter().map(|d| open(d.path())).collect();
    let mut rng = StdRng::seed_from_u64(11);
    let mut queue = Vec::new();
    let mut tick = 0;
    for (i, n) in nodes.iter_mut().enumerate() {
        for j in 0..3 {
            if i != j {
                let m = n.proto.connected(j, &n.vs, tick);
                queue.push((i, j, m));
            }
        }
    }
    for round in 0..6 {
        for _ in 0..40 {
            let i = rng.gen_range(0..3);
            let key = format!("k{}", rng.gen_range(0..30));
            let op = if rng.gen_bool(0.2) {
                WriteOp::Delete { key }
            } else {
                WriteOp::Put {
                    key,
                    value: format!("{{\"n\":{round},\"by\":{i}}}").into_bytes(),
                    kind: ValueKind::Json,
                    vector: rng
                        .gen_bool(0.5)
                        .then(|| vec![1.0 + i as f32, rng.gen_range(0.1..1.0), 0.5]),
                }
            };
            nodes[i].store.write(vec![op]).unwrap();
        }
        // Some rounds deliver only part of the traffic before more writes.
        if round % 2 == 1 {
            pump(&mut nodes, &mut queue, &mut rng, &mut tick);
        } else {
            for _ in 0..queue.len() / 2 {
                let k = rng.gen_range(0..queue.len());
                let (from, to, msg) = queue.swap_remove(k);
                let n = &mut nodes[to];
                n.vs.refresh().unwrap();
                for m in n.proto.receive(&from, msg, &mut n.vs, now_ms()).unwrap() {
                    queue.push((to, from, m));
                }
            }
        }
    }
    pump(&mut nodes, &mut queue, &mut rng, &mut tick);
    let first = dump(&mut nodes[0]);
    assert!(first.len() > 20, "{}", first.len());
    for n in &mut nodes[1..] {
        assert_eq!(dump(n), first);
    }
    // Replicated puts carried their vectors into the vectors table.
    let with_vectors = first.values().filter(|v| v.vector.is_some()).count();
    assert!(with_vectors > 0);
    let mut r = nodes[1].store.reader().unwrap();
    assert_eq!(
        r.count_vectors("", u64::MAX).unwrap() as usize,
        with_vectors
    );
    // Every node's hook saw changes made elsewhere.
    for n in &nodes {
        assert!(n.hook.seen.load(Ordering::Relaxed) > 0);
    }

    // The version vector is stored with the versions: a reopened store has the same.
    let vv = nodes[2].vs.version_vector();
    let dir = nodes[2].store.data_dir().to_path_buf();
    let node = nodes.pop().unwrap();
    node.store.shutdown();
    drop(node);
    let reopened = open(&dir);
    assert_eq!(reopened.vs.version_vector(), vv);
}

#[test]
fn a_merge_applies_only_newer_stamps_and_a_later_local_write_wins() {
    let dir = TempDir::new("sync-merge");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let remote = [9u8; 16];
    let at = |hlc: u64, seq: u64, value: &str, deleted: bool| {
        WriteOp::Merge(Box::new(RemoteVersion {
            key: "a".into(),
            value: value.as_bytes().to_vec(),
            kind: ValueKind::Json,
            deleted,
            vector: None,
            version: Version {
                hlc,
                replica: remote,
                seq,
            },
            updated_at_ms: 1,
        }))
    };
    // A stamp 30 s ahead of this machine's clock (within the allowed drift).
    let ahead = (now_ms() + 30_000) << 16;
    let out = store
        .merge(vec![at(ahead, 2, "2", false)], Vec::new())
        .unwrap();
    assert!(out[0].version.is_some());
    // An older version of the same key loses (and is not a change).
    let out = store
        .merge(vec![at(ahead - 1, 1, "1", false)], Vec::new())
        .unwrap();
    assert!(out[0].version.is_none());
    let mut r = store.reader().unwrap();
    assert_eq!(r.get("a").unwrap().unwrap().value, b"2");
    // A newer remote tombstone wins; an old put arriving later never resurrects it.
    store
        .merge(vec![at(ahead + 1, 3, "", true)], Vec::new())
        .unwrap();
    store
        .merge(vec![at(ahead, 2, "2", false)], Vec::new())
        .unwrap();
    assert!(r.get("a").unwrap().is_none());
    // A local write now is stamped after everything merged, though the clock is behind.
    let out = store
        .write(vec![WriteOp::Put {
            key: "a".into(),
            value: b"3".to_vec(),
            kind: ValueKind::Json,
            vector: None,
        }])
        .unwrap();
    assert!(out[0].version.unwrap().hlc > ahead + 1);
    assert_eq!(r.get("a").unwrap().unwrap().value, b"3");
    // Only merges go through `merge`.
    assert!(store
        .merge(vec![WriteOp::Delete { key: "a".into() }], Vec::new())
        .is_err());
}
