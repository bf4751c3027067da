//! Anti-entropy on a simulated network (tests only): 3 to 5 replicas, each an
//! in-memory [`VersionStore`] driven by the real [`Replica`], write random puts and
//! deletes while the network delays, reorders, duplicates and loses messages and
//! partitions come and go; a replica may join late, one may run an hour ahead. After
//! healing, every replica must hold exactly the reference model (per key, the version
//! with the greatest stamp among all writes ever made, tombstones included), and once
//! they agree no message flows. Every case is a seed: a failure prints it.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringbase_protocol::message::ValueKind;

use super::merge::{wins, RecordVersion};
use super::protocol::{Message, Replica, SyncConfig, VersionStore};
use super::vv::{ReplicaId, VersionVector};
use crate::store::{Hlc, StoreError, Version};

/// A replica's storage, in memory.
#[derive(Debug)]
struct MemStore {
    id: ReplicaId,
    records: BTreeMap<String, RecordVersion>,
    vv: VersionVector,
    hlc: Hlc,
    next_seq: u64,
}

impl MemStore {
    fn new(id: ReplicaId) -> MemStore {
        MemStore {
            id,
            records: BTreeMap::new(),
            vv: VersionVector::new(),
            hlc: Hlc::new(0),
            next_seq: 0,
        }
    }

    /// A local put (`Some`) or delete (`None`) at wall clock `now_ms`.
    fn write(&mut self, key: &str, value: Option<Vec<u8>>, now_ms: u64) -> RecordVersion {
        self.next_seq += 1;
        let v = RecordVersion {
            key: key.to_string(),
            deleted: value.is_none(),
            value: value.unwrap_or_default(),
            kind: ValueKind::Bytes,
            vector: None,
            version: Version {
                hlc: self.hlc.tick_at(now_ms),
                replica: self.id,
                seq: self.next_seq,
            },
            updated_at_ms: now_ms,
        };
        self.records.insert(v.key.clone(), v.clone());
        self.vv.insert(self.id, v.seq());
        v
    }
}

impl VersionStore for MemStore {
    fn replica_id(&self) -> ReplicaId {
        self.id
    }

    fn version_vector(&self) -> VersionVector {
        self.vv.clone()
    }

    fn versions_by_origin(
        &mut self,
        origin: &ReplicaId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordVersion>, StoreError> {
        let mut vs: Vec<RecordVersion> = self
            .records
            .values()
            .filter(|v| &v.origin() == origin && v.seq() > after)
            .cloned()
            .collect();
        vs.sort_by_key(|v| v.seq());
        vs.truncate(limit);
        Ok(vs)
    }

    fn apply(&mut self, versions: Vec<RecordVersion>, vv: VersionVector) -> Result<(), StoreError> {
        for v in versions {
            self.hlc.observe(v.version.hlc);
            if wins(v.stamp(), self.records.get(&v.key).map(|c| c.stamp())) {
                self.records.insert(v.key.clone(), v);
            }
        }
        self.vv = vv;
        Ok(())
    }
}

/// One simulated server.
struct Node {
    store: MemStore,
    proto: Replica<usize>,
    /// Its wall clock minus the true time.
    offset_ms: u64,
    joined: bool,
}

/// The simulated world.
struct Sim {
    rng: StdRng,
    nodes: Vec<Node>,
    /// Messages in flight: (delivery tick, from, to, message).
    queue: Vec<(u64, usize, usize, Message)>,
    tick: u64,
    now_ms: u64,
    loss: f64,
    dup: f64,
    cut: HashSet<(usize, usize)>,
    /// Every write ever made (the reference model's input).
    log: Vec<RecordVersion>,
    sent: u64,
    config: SyncConfig,
}

const KEYS: usize = 8;
const START_MS: u64 = 1_700_000_000_000;

impl Sim {
    fn new(seed: u64, n: usize, config: SyncConfig) -> Sim {
        let nodes = (0..n)
            .map(|i| Node {
                store: MemStore::new([i as u8 + 1; 16]),
                proto: Replica::new(config),
                offset_ms: 0,
                joined: false,
            })
            .collect();
        Sim {
            rng: StdRng::seed_from_u64(seed),
            nodes,
            queue: Vec::new(),
            tick: 0,
            now_ms: START_MS,
            loss: 0.0,
            dup: 0.0,
            cut: HashSet::new(),
            log: Vec::new(),
            sent: 0,
            config,
        }
    }

    fn wall(&self, i: usize) -> u64 {
        self.now_ms + self.nodes[i].offset_ms
    }

    /// Node `i` joins: it connects to every joined node.
    fn join(&mut self, i: usize) {
        self.nodes[i].joined = true;
        for j in 0..self.nodes.len() {
            if j == i || !self.nodes[j].joined {
                continue;
            }
            let tick = self.tick;
            let (a, b) = (i, j);
            let m = {
                let n = &mut self.nodes[a];
                n.proto.connected(b, &n.store, tick)
            };
            self.send(a, b, m);
            let m = {
                let n = &mut self.nodes[b];
                n.proto.connected(a, &n.store, tick)
            };
            self.send(b, a, m);
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        self.sent += 1;
        if self.cut.contains(&(from.min(to), from.max(to))) || self.rng.gen_bool(self.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.tick + self.rng.gen_range(1..=4);
            self.queue.push((at, from, to, msg.clone()));
        }
    }

    fn write(&mut self, i: usize) {
        let key = format!("k{}", self.rng.gen_range(0..KEYS));
        let value = self
            .rng
            .gen_bool(0.75)
            .then(|| vec![i as u8, self.rng.gen()]);
        let now = self.wall(i);
        let v = self.nodes[i].store.write(&key, value, now);
        // A local clock is never dragged past the drift by what it observed.
        assert!(
            v.stamp().millis() <= now + self.config.max_drift_ms,
            "node {i} stamped {} at wall {now}",
            v.stamp().millis()
        );
        self.log.push(v.clone());
        for (to, m) in self.nodes[i].proto.local_write(&v) {
            self.send(i, to, m);
        }
    }

    /// One step: deliver the due messages (in random order), then each node's tick.
    fn step(&mut self, tick_ms: u64) {
        self.tick += 1;
        self.now_ms += tick_ms;
        let tick = self.tick;
        let mut due: Vec<_> = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].0 <= tick {
                due.push(self.queue.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Reorder what arrives together.
        for k in (1..due.len()).rev() {
            let j = self.rng.gen_range(0..=k);
            due.swap(k, j);
        }
        for (_, from, to, msg) in due {
            let now = self.wall(to);
            let out = {
                let n = &mut self.nodes[to];
                n.proto.receive(&from, msg, &mut n.store, now)
            }
            .expect("an honest peer's page is never refused");
            for m in out {
                self.send(to, from, m);
            }
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].joined {
                continue;
            }
            let out = {
                let n = &mut self.nodes[i];
                n.proto.tick(&n.store, tick)
            };
            for (to, m) in out {
                self.send(i, to, m);
            }
        }
    }

    /// The reference model: per key, the greatest stamp among all writes.
    fn reference(&self) -> BTreeMap<String, RecordVersion> {
        let mut m: BTreeMap<String, RecordVersion> = BTreeMap::new();
        for v in &self.log {
            if wins(v.stamp(), m.get(&v.key).map(|c| c.stamp())) {
                m.insert(v.key.clone(), v.clone());
            }
        }
        m
    }

    fn converged(&self) -> bool {
        let want = self.reference();
        self.nodes.iter().all(|n| n.store.records == want)
    }
}

/// One simulated history (see the module docs). Returns an error naming what failed.
fn run_case(
    seed: u64,
    n: usize,
    late_joiner: bool,
    fast_clock: bool,
    writes: usize,
    max_page_bytes: usize,
    max_pages: usize,
) -> Result<(), String> {
    let config = SyncConfig {
        max_page_bytes,
        max_pages,
        retry_ticks: 5,
        ..SyncConfig::default()
    };
    let mut sim = Sim::new(seed, n, config);
    if fast_clock {
        // An hour ahead.
        sim.nodes[1].offset_ms = 3_600_000;
    }
    let first = if late_joiner { n - 1 } else { n };
    for i in 0..first {
        sim.join(i);
    }
    sim.loss = sim.rng.gen_range(0.0..0.3);
    sim.dup = sim.rng.gen_range(0.0..0.3);
    // Chaos: writes, partitions that come and go.
    let mut done = 0;
    while done < writes {
        if sim.rng.gen_bool(0.05) {
            sim.cut.clear();
            for a in 0..n {
                for b in a + 1..n {
                    if sim.rng.gen_bool(0.3) {
                        sim.cut.insert((a, b));
                    }
                }
            }
        }
        if sim.rng.gen_bool(0.5) {
            let i = sim.rng.gen_range(0..first);
            sim.write(i);
            done += 1;
        }
        sim.step(100);
    }
    // Heal: no partitions, no loss (delays, reordering and duplicates go on), the
    // late joiner joins; time runs fast enough for the fast clock's stamps to become
    // admissible everywhere.
    sim.cut.clear();
    sim.loss = 0.0;
    if late_joiner {
        sim.join(n - 1);
    }
    let mut steps = 0;
    while !(sim.converged() && sim.queue.is_empty()) {
        sim.step(10_000);
        steps += 1;
        if steps > 3_000 {
            let want = sim.reference();
            let differ: Vec<usize> = (0..n)
                .filter(|&i| sim.nodes[i].store.records != want)
                .collect();
            return Err(if differ.is_empty() {
                format!("seed {seed}: replicas agree but messages still flow after {steps} steps")
            } else {
                format!("seed {seed}: not converged after {steps} steps; replicas {differ:?} differ from the reference")
            });
        }
    }
    // Quiet: once every replica agrees (and knows it), nothing more is sent.
    for _ in 0..4 * config.retry_ticks {
        sim.step(10_000);
    }
    let before = sim.sent;
    for _ in 0..10 * config.retry_ticks {
        sim.step(10_000);
    }
    if sim.sent != before {
        return Err(format!(
            "seed {seed}: {} messages after convergence (echo or endless exchange)",
            sim.sent - before
        ));
    }
    if !sim.converged() {
        return Err(format!("seed {seed}: diverged after converging"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random histories converge to the reference model and then fall silent.
    #[test]
    fn replicas_converge_to_the_reference_model(
        seed in any::<u64>(),
        n in 3usize..=5,
        late_joiner in any::<bool>(),
        fast_clock in any::<bool>(),
        writes in 1usize..120,
        max_page_bytes in prop_oneof![Just(1usize), 60usize..300, Just(1 << 20)],
        max_pages in prop_oneof![Just(1usize), 2usize..5, Just(1000)],
    ) {
        if let Err(e) = run_case(seed, n, late_joiner, fast_clock, writes, max_page_bytes, max_pages) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn a_late_put_never_resurrects_a_delete_and_a_fast_clock_does_not_win_forever() {
    let config = SyncConfig {
        retry_ticks: 2,
        ..SyncConfig::default()
    };
    let mut sim = Sim::new(7, 3, config);
    // Node 1's clock runs an hour ahead.
    sim.nodes[1].offset_ms = 3_600_000;
    for i in 0..3 {
        sim.join(i);
    }
    let settle = |sim: &mut Sim, tick_ms: u64| {
        for _ in 0..50 {
            sim.step(tick_ms);
        }
    };
    settle(&mut sim, 100);
    // Node 0 puts while cut off from everyone; node 2 deletes later; when the
    // partition heals the old put arrives late: the delete holds everywhere.
    sim.cut.insert((0, 1));
    sim.cut.insert((0, 2));
    let now = sim.wall(0);
    let put = sim.nodes[0].store.write("a", Some(vec![1]), now);
    sim.log.push(put.clone());
    settle(&mut sim, 100);
    let now = sim.wall(2);
    let del = sim.nodes[2].store.write("a", None, now);
    sim.log.push(del.clone());
    for (to, m) in sim.nodes[2].proto.local_write(&del) {
        sim.send(2, to, m);
    }
    for (to, m) in sim.nodes[0].proto.local_write(&put) {
        sim.send(0, to, m);
    }
    settle(&mut sim, 100);
    sim.cut.clear();
    settle(&mut sim, 100);
    for n in &sim.nodes {
        assert!(n.store.records["a"].deleted, "{:?}", n.store.records);
    }

    // The fast node writes "b"; node 0 writes "b" ten seconds later (true time): the
    // fast write is an hour ahead, so others defer it.
    sim.write_key(1, "b", 1);
    settle(&mut sim, 100);
    sim.write_key(0, "b", 2);
    settle(&mut sim, 100);
    // Deferred at node 0 and 2: they keep their own view for now.
    assert_eq!(sim.nodes[0].store.records["b"].value, vec![2]);
    // An hour later everyone has admitted it: within the skew, the fast clock wins.
    settle(&mut sim, 80_000);
    for n in &sim.nodes {
        assert_eq!(n.store.records["b"].value, vec![1]);
    }
    // But not forever: a write made after the fast clock's time wins everywhere.
    sim.write_key(2, "b", 3);
    settle(&mut sim, 100);
    for n in &sim.nodes {
        assert_eq!(n.store.records["b"].value, vec![3]);
    }
    assert!(sim.converged());
}

impl Sim {
    /// Node `i` puts `[tag]` under `key` and pushes it.
    fn write_key(&mut self, i: usize, key: &str, tag: u8) {
        let now = self.wall(i);
        let v = self.nodes[i].store.write(key, Some(vec![tag]), now);
        self.log.push(v.clone());
        for (to, m) in self.nodes[i].proto.local_write(&v) {
            self.send(i, to, m);
        }
    }
}
