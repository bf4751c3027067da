//! A bounded cache of live records, shared by every session's reader, so that hot
//! reads skip SQLite.
//!
//! Consistency rests on a generation counter and the order of two events:
//!
//! * the writer, after `COMMIT` and *before* it sends any completion, bumps the
//!   generation and then removes every key the transaction wrote
//!   ([`ReadCache::invalidate`]);
//! * a reader that misses takes the generation *before* its SQLite read starts, and
//!   inserts what it read only if the generation is still the same, under the shard
//!   lock ([`ReadCache::insert_if_current`]).
//!
//! A reader whose snapshot predates a commit of key K either sees the bumped generation
//! (and does not insert), or inserts before the writer's removal of K, which then takes
//! the stale entry out (both happen under K's shard lock). So after a write's completion
//! is sent, no reader can find an older value of its keys in the cache: read-your-writes
//! holds through the cache as it does through SQLite.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Record;

const SHARDS: usize = 16;

/// Bytes an entry is charged: key, value and a fixed overhead.
fn cost(r: &Record) -> usize {
    r.key.len() + r.value.len() + 128
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<str>, Arc<Record>>,
    bytes: usize,
}

/// The shared read cache (see the module docs).
#[derive(Debug)]
pub struct ReadCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    generation: AtomicU64,
    budget_per_shard: usize,
}

impl ReadCache {
    /// A cache holding at most about `budget` bytes (0 disables it).
    pub fn new(budget: usize) -> ReadCache {
        ReadCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            generation: AtomicU64::new(0),
            budget_per_shard: budget / SHARDS,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The current generation; take it before a SQLite read whose result may be
    /// inserted.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The cached live record under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Record>> {
        if self.budget_per_shard == 0 {
            return None;
        }
        self.shard(key)
            .lock()
            .expect("cache shard")
            .map
            .get(key)
            .cloned()
    }

    /// Inserts `record` (read from SQLite) unless a commit happened since `generation`
    /// was taken. Evicts arbitrary entries to stay within the budget.
    pub fn insert_if_current(&self, generation: u64, record: Record) {
        let c = cost(&record);
        if c > self.budget_per_shard {
            return;
        }
        let mut shard = self.shard(&record.key).lock().expect("cache shard");
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        while shard.bytes + c > self.budget_per_shard {
            let Some(victim) = shard.map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = shard.map.remove(&victim) {
                shard.bytes -= cost(&old);
            }
        }
        let key: Box<str> = record.key.as_str().into();
        if let Some(old) = shard.map.insert(key, Arc::new(record)) {
            shard.bytes -= cost(&old);
        }
        shard.bytes += c;
    }

    /// Called by the writer after COMMIT, before completions go out: bumps the
    /// generation, then drops every written key.
    pub fn invalidate<'a>(&self, keys: impl Iterator<Item = &'a str>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.budget_per_shard == 0 {
            return;
        }
        for key in keys {
            let mut shard = self.shard(key).lock().expect("cache shard");
            if let Some(old) = shard.map.remove(key) {
                shard.bytes -= cost(&old);
            }
        }
    }

    /// Bytes charged to entries now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("cache shard").bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ValueKind, Version};

    fn rec(key: &str, value: &[u8]) -> Record {
        Record {
            key: key.into(),
            value: value.to_vec(),
            kind: ValueKind::Bytes,
            version: Version {
                hlc: 1,
                replica: [0; 16],
                seq: 1,
            },
            updated_at_ms: 0,
            deleted: false,
        }
    }

    #[test]
    fn stale_reads_are_not_inserted_and_writes_invalidate() {
        let c = ReadCache::new(1 << 20);
        let g = c.generation();
        c.insert_if_current(g, rec("a", b"1"));
        assert_eq!(c.get("a").unwrap().value, b"1");
        // A reader that started before a commit must not insert what it read.
        let g_before = c.generation();
        c.invalidate(["a"].into_iter());
        assert!(c.get("a").is_none());
        c.insert_if_current(g_before, rec("a", b"old"));
        assert!(
            c.get("a").is_none(),
            "a read older than the commit was cached"
        );
        c.insert_if_current(c.generation(), rec("a", b"2"));
        assert_eq!(c.get("a").unwrap().value, b"2");
    }

    #[test]
    fn stays_within_budget() {
        let c = ReadCache::new(SHARDS * 4096);
        for i in 0..10_000 {
            c.insert_if_current(c.generation(), rec(&format!("k{i}"), &[0u8; 100]));
        }
        assert!(c.bytes() <= SHARDS * 4096);
        assert!(c.bytes() > 0);
        let off = ReadCache::new(0);
        off.insert_if_current(0, rec("a", b"1"));
        assert!(off.get("a").is_none());
    }
}
