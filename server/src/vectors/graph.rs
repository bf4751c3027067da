//! One HNSW graph (hnsw_rs) over L2-normalised vectors, and the key of each point.
//!
//! hnsw_rs cannot delete or update: a point stays in its graph for the graph's life.
//! The index (`super`) decides which points are live; here a point is just an id, its
//! key and its vector. Every vector that reaches this module has been checked (finite,
//! non-zero, the graph's dimension) and normalised, so no input can reach hnsw_rs that
//! makes it panic (its distances assert on NaNs and on negative rounding errors; the
//! distance below clamps).
//!
//! hnsw_rs builds the graph; searches walk a compact copy of its links
//! ([`super::links::Links`]) over a contiguous copy of the vectors. Points inserted
//! after the copy was made (the tail) are scanned exactly by each search; the copy is
//! made again when the tail passes [`TAIL_MAX`] (by the inserter, after an insert) or
//! when the inserter is idle ([`Graph::settle`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;

use super::distance::UnitCosine;
use super::links::Links;
use super::pages;

/// Layers of the graph (hnsw_rs's maximum; it needs at least one).
const MAX_LAYERS: usize = 16;

/// Most points inserted since the links were copied before an insert copies them again
/// (each search scans these exactly): at least this, or a 64th of the graph.
pub const TAIL_MAX: usize = 1024;

/// HNSW build settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphParams {
    /// Neighbours kept per point and layer (`M`; layer 0 keeps twice as many), 2..=256.
    pub m: usize,
    /// Candidates examined when a point is inserted.
    pub ef_construction: usize,
}

impl Default for GraphParams {
    fn default() -> Self {
        GraphParams {
            m: 16,
            ef_construction: 200,
        }
    }
}

/// A graph and the key of each of its points (point id = index in `keys`).
pub struct Graph {
    hnsw: Hnsw<'static, f32, UnitCosine>,
    points: RwLock<Points>,
    /// The links searches walk: a copy of `hnsw`'s, for a prefix of the points.
    links: RwLock<Arc<Links>>,
    /// When the links were last copied, and how long that took (idle copies are
    /// spaced so that they take at most a 20th of the inserter's time).
    last_copy: RwLock<(Instant, Duration)>,
    dim: usize,
}

/// The key, the unit vector and the liveness of each point, by id.
#[derive(Debug, Default)]
struct Points {
    keys: Vec<Arc<str>>,
    /// Point `id`'s vector at `id * dim`.
    vectors: Vec<f32>,
    /// Whether point `id` is its key's current vector: a copy of the index's `live`
    /// map (`super`), which sets it under its state lock, so that a search checks a
    /// result with one load instead of a hash lookup. A new point starts dead.
    alive: Vec<AtomicBool>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("points", &self.len())
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// An empty graph for vectors of `dim` dimensions, sized for about `capacity`
    /// points (it grows past that).
    pub fn new(params: GraphParams, dim: usize, capacity: usize) -> Graph {
        let m = params.m.clamp(2, 256);
        let vectors = Vec::with_capacity(capacity.saturating_mul(dim));
        pages::advise_huge(&vectors);
        Graph {
            hnsw: Hnsw::new(
                m,
                capacity.max(1024),
                MAX_LAYERS,
                params.ef_construction.max(m),
                UnitCosine,
            ),
            points: RwLock::new(Points {
                keys: Vec::with_capacity(capacity),
                vectors,
                alive: Vec::with_capacity(capacity),
            }),
            links: RwLock::new(Arc::new(Links::default())),
            last_copy: RwLock::new((Instant::now(), Duration::ZERO)),
            dim,
        }
    }

    /// hnsw_rs's dump of the graph into `dir` (which must not hold one yet): files
    /// `BASENAME.hnsw.graph` and `BASENAME.hnsw.data`. No insert may run meanwhile.
    pub fn dump(&self, dir: &std::path::Path, basename: &str) -> Result<(), String> {
        if self.is_empty() {
            return Err("the graph is empty".into());
        }
        let written = self
            .hnsw
            .file_dump(dir, basename)
            .map_err(|e| e.to_string())?;
        if written != basename {
            return Err(format!("hnsw_rs wrote {written:?} instead of {basename:?}"));
        }
        Ok(())
    }

    /// A graph loaded from a dump made by [`Graph::dump`], with no keys yet (see
    /// [`Graph::set_keys`]). The files must be exactly those the dump wrote: hnsw_rs's
    /// loader does not survive damaged input (the caller checks them first).
    pub fn load(dir: &std::path::Path, basename: &str, dim: usize) -> Result<Graph, String> {
        // hnsw_rs ties the graph's lifetime to its loader; the loader is small and a
        // graph is loaded once per start, so it lives for the rest of the process.
        let io: &'static HnswIo = Box::leak(Box::new(HnswIo::new(dir, basename)));
        let hnsw: Hnsw<'static, f32, UnitCosine> = io
            .load_hnsw_with_dist(UnitCosine)
            .map_err(|e| e.to_string())?;
        // The vectors, by id, from the loaded points.
        let n = hnsw.get_nb_point();
        let mut vectors = vec![0f32; n * dim];
        pages::advise_huge(&vectors);
        let mut seen = 0;
        let index = hnsw.get_point_indexation();
        for layer in 0..=index.get_max_level_observed() {
            for p in index.get_layer_iterator(usize::from(layer)) {
                let (id, v) = (p.get_origin_id(), p.get_v());
                if id >= n || v.len() != dim {
                    return Err(format!(
                        "saved point {id} (of {n}) has {} dimensions, not {dim}",
                        v.len()
                    ));
                }
                vectors[id * dim..(id + 1) * dim].copy_from_slice(v);
                seen += 1;
            }
        }
        if seen != n {
            return Err(format!("the saved graph lists {seen} of its {n} points"));
        }
        let links = Links::copy(&hnsw, n);
        Ok(Graph {
            hnsw,
            points: RwLock::new(Points {
                keys: Vec::new(),
                vectors,
                alive: (0..n).map(|_| AtomicBool::new(false)).collect(),
            }),
            links: RwLock::new(Arc::new(links)),
            last_copy: RwLock::new((Instant::now(), Duration::ZERO)),
            dim,
        })
    }

    fn points(&self) -> std::sync::RwLockReadGuard<'_, Points> {
        self.points.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of each point, by id.
    pub fn keys(&self) -> Vec<Arc<str>> {
        self.points().keys.clone()
    }

    /// Sets the key of each point of a loaded graph, by id.
    pub fn set_keys(&self, keys: Vec<Arc<str>>) {
        self.points.write().unwrap_or_else(|p| p.into_inner()).keys = keys;
    }

    /// Points in the graph (live or not). A loaded graph counts its points before its
    /// keys are set.
    pub fn point_count(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Marks point `id` live (its key's current vector) or dead. For the index, under
    /// its state lock; an id past the end is ignored.
    pub fn set_live(&self, id: u32, live: bool) {
        if let Some(a) = self.points().alive.get(id as usize) {
            a.store(live, Ordering::Relaxed);
        }
    }

    /// Calls `f` with a test of each point's liveness (see [`Graph::set_live`]), all
    /// under one read of the points.
    pub fn with_liveness<R>(&self, f: impl FnOnce(&dyn Fn(u32) -> bool) -> R) -> R {
        let points = self.points();
        f(&|id| {
            points
                .alive
                .get(id as usize)
                .is_some_and(|a| a.load(Ordering::Relaxed))
        })
    }

    /// Points in the graph (live or not).
    pub fn len(&self) -> usize {
        self.points().keys.len()
    }

    /// Whether it has no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dimension of its vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Adds `unit` (normalised, of the graph's dimension) under `key`; returns its
    /// point id. One inserter at a time (the index thread); searches may run meanwhile.
    pub fn insert(&self, key: Arc<str>, unit: &[f32]) -> u32 {
        assert_eq!(
            unit.len(),
            self.dim,
            "vector dimension checked before insert"
        );
        let id = {
            let mut points = self.points.write().unwrap_or_else(|p| p.into_inner());
            points.keys.push(key);
            let capacity = points.vectors.capacity();
            points.vectors.extend_from_slice(unit);
            if points.vectors.capacity() != capacity {
                pages::advise_huge(&points.vectors);
            }
            points.alive.push(AtomicBool::new(false));
            points.keys.len() - 1
        };
        self.hnsw.insert_slice((unit, id));
        let covered = self.links.read().unwrap_or_else(|p| p.into_inner()).len();
        if id + 1 - covered > TAIL_MAX.max(covered / 64) {
            self.refresh_links();
        }
        id as u32
    }

    /// Copies the links again if points were inserted since the last copy and the
    /// inserter has not spent more than a 20th of its time copying. For the inserter,
    /// when it has nothing to insert.
    pub fn settle(&self) {
        let covered = self.links.read().unwrap_or_else(|p| p.into_inner()).len();
        let (at, took) = *self.last_copy.read().unwrap_or_else(|p| p.into_inner());
        if self.len() > covered && at.elapsed() >= took * 20 {
            self.refresh_links();
        }
    }

    /// Points inserted since the links were copied (searches scan them exactly).
    pub fn tail(&self) -> usize {
        let covered = self.links.read().unwrap_or_else(|p| p.into_inner()).len();
        self.len().saturating_sub(covered)
    }

    /// Copies hnsw_rs's links for searches (if points were inserted since the last
    /// copy). The inserter's job: no insert may run meanwhile.
    pub fn refresh_links(&self) {
        if self.tail() == 0 {
            return;
        }
        let t = Instant::now();
        let n = self.len();
        let links = Arc::new(Links::copy(&self.hnsw, n));
        *self.links.write().unwrap_or_else(|p| p.into_inner()) = links;
        *self.last_copy.write().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), t.elapsed());
    }

    /// The `want` nearest points to `unit` (normalised) found with search breadth
    /// `ef`, among those whose key starts with `prefix` (all if empty), nearest first,
    /// as `(id, key, distance)`.
    pub fn search(
        &self,
        unit: &[f32],
        want: usize,
        ef: usize,
        prefix: &str,
    ) -> Vec<(u32, Arc<str>, f32)> {
        if unit.len() != self.dim || want == 0 {
            return Vec::new();
        }
        // Held for the search: keys and vectors are read by id, and the inserter waits.
        let points = self.points();
        let links = Arc::clone(&self.links.read().unwrap_or_else(|p| p.into_inner()));
        let accept = |id: u32| {
            prefix.is_empty()
                || points
                    .keys
                    .get(id as usize)
                    .is_some_and(|k| k.starts_with(prefix))
        };
        let mut found = links.search(&points.vectors, self.dim, unit, ef.max(want), &accept);
        // The tail: points inserted since the links were copied.
        let tail = links.len()..points.keys.len();
        if !tail.is_empty() {
            for id in tail {
                if accept(id as u32) {
                    let v = &points.vectors[id * self.dim..(id + 1) * self.dim];
                    found.push((id as u32, UnitCosine.eval(unit, v)));
                }
            }
            found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        }
        found.truncate(want);
        found
            .into_iter()
            .filter_map(|(id, d)| {
                let key = points.keys.get(id as usize)?;
                Some((id, Arc::clone(key), d))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::distance::random_units;

    #[test]
    fn finds_each_point_and_filters_by_prefix() {
        let g = Graph::new(GraphParams::default(), 4, 10);
        let pts = random_units(300, 4, 7);
        for (i, u) in pts.iter().enumerate() {
            let key: Arc<str> = format!("{}/{i}", if i % 2 == 0 { "even" } else { "odd" }).into();
            assert_eq!(g.insert(key, u), i as u32);
        }
        for (i, u) in pts.iter().enumerate() {
            let hits = g.search(u, 1, 64, "");
            assert_eq!(hits[0].0, i as u32, "point {i} finds itself");
        }
        let hits = g.search(&pts[0], 10, 64, "odd/");
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|(_, k, _)| k.starts_with("odd/")));
        assert!(
            g.search(&[1.0, 0.0], 5, 64, "").is_empty(),
            "wrong dimension"
        );
    }

    #[test]
    fn searches_see_the_copied_links_and_the_tail() {
        let g = Graph::new(GraphParams::default(), 8, 10);
        let n = 2 * TAIL_MAX + 300;
        let pts = random_units(n, 8, 5);
        for (i, u) in pts.iter().enumerate() {
            g.insert(format!("p/{i}").into(), u);
        }
        // Copied twice on the way (after 1,025 and 2,050 points); the rest is the tail.
        assert_eq!(g.tail(), n - 2 * (TAIL_MAX + 1));
        let check = |g: &Graph| {
            for (i, u) in pts.iter().enumerate() {
                let hits = g.search(u, 3, 32, "");
                assert_eq!(hits[0].0, i as u32, "point {i} finds itself");
                assert_eq!(&*hits[0].1, format!("p/{i}"));
                assert!(hits[0].2 < 1e-5 && hits[0].2 <= hits[1].2);
            }
        };
        check(&g);
        g.refresh_links();
        assert_eq!(g.tail(), 0);
        check(&g);
        // A prefix that only tail points and a few others match.
        let hits = g.search(&pts[n - 1], 5, 32, &format!("p/{}", n - 1));
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0 as usize, n - 1);
    }
}
