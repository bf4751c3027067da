//! A compact copy of an hnsw_rs graph's links, and the search over it.
//!
//! hnsw_rs builds the graph (its insert chooses each point's neighbours); searching
//! its own structure costs as much in bookkeeping as in distances: a lock per
//! neighbour list, an `Arc` per neighbour, a hashed visited set. [`Links`] copies the
//! links into flat arrays of point ids (layer 0: one fixed-size row per point; upper
//! layers, which hold few points: a list per point and layer), and [`Links::search`]
//! walks them the way hnswlib does: a greedy descent through the upper layers, then a
//! best-first search of layer 0 with a candidate heap, a bounded result heap and a
//! visited array stamped per search (reused per thread), reading vectors from one
//! contiguous array owned by the caller.
//!
//! A copy describes the graph as it was when made: points inserted later are not in
//! it (the caller scans them exactly, and makes a new copy when they add up; see
//! `super::graph`).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use hnsw_rs::hnsw::{Hnsw, Neighbour};

use super::distance::{dot, prefetch, UnitCosine};
use super::pages;

/// How many vectors ahead of the distance being computed a search starts loading them
/// (a point's vector is far from the last one's in memory, so each is a cache miss
/// otherwise). Measured on 100k-vector graphs, p50 at ef 64, in process: 384 dims
/// 185 µs without prefetching, 139 µs one ahead, 128-131 µs four ahead, worse from 8
/// on (the loads evict what the search still reads); 128 dims 112 -> 94 µs.
const AHEAD: usize = 4;

/// The links of the first `len()` points of a graph.
#[derive(Debug, Default)]
pub struct Links {
    /// Points covered: ids `0..n`.
    n: usize,
    /// Layer 0: per point, `stride` slots: the neighbour count, then the neighbours.
    layer0: Vec<u32>,
    stride: usize,
    /// Upper layers: for each point above layer 0, its neighbours on layers `1..=level`
    /// (index `layer - 1`).
    upper: HashMap<u32, Vec<Vec<u32>>>,
    /// Where searches start: a point on the top layer, and that layer.
    entry: Option<(u32, u8)>,
}

/// The distance of two unit vectors, as the graph measures it.
#[inline]
fn distance(a: &[f32], b: &[f32]) -> f32 {
    (1.0 - dot(a, b)).clamp(0.0, 2.0)
}

/// A distance (never negative, so its bits order like it) and a point id, in one
/// integer that orders by distance, then id.
#[inline]
fn pack(d: f32, id: u32) -> u64 {
    (u64::from(d.to_bits()) << 32) | u64::from(id)
}

#[inline]
fn unpack(x: u64) -> (f32, u32) {
    (f32::from_bits((x >> 32) as u32), x as u32)
}

/// Marks of the points a search has visited: a stamp per point, the search's own
/// stamp meaning "visited", so starting a search costs nothing.
struct Visited {
    marks: Vec<u32>,
    stamp: u32,
    /// Scratch: the unvisited neighbours of the point being expanded.
    fresh: Vec<u32>,
}

impl Visited {
    /// Starts a search over `n` points.
    fn start(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            // Wrapped: old stamps could read as this one.
            self.marks.fill(0);
            self.stamp = 1;
        }
    }

    /// Marks `id`; whether it was unvisited.
    #[inline]
    fn first_visit(&mut self, id: u32) -> bool {
        let m = &mut self.marks[id as usize];
        let first = *m != self.stamp;
        *m = self.stamp;
        first
    }

    /// Marks the points of `row`; those that were unvisited, in order.
    #[inline]
    fn first_visits(&mut self, row: &[u32]) -> &[u32] {
        self.fresh.clear();
        for &id in row {
            if self.first_visit(id) {
                self.fresh.push(id);
            }
        }
        &self.fresh
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const {
        RefCell::new(Visited {
            marks: Vec::new(),
            stamp: 0,
            fresh: Vec::new(),
        })
    };
}

/// The ids of point `id`'s neighbours on `layer` that are below `n`.
fn neighbour_ids(hood: &[Vec<Neighbour>], layer: usize, id: usize, n: usize) -> Vec<u32> {
    hood.get(layer).map_or_else(Vec::new, |ns| {
        ns.iter()
            .filter(|x| x.d_id < n && x.d_id != id)
            .map(|x| x.d_id as u32)
            .collect()
    })
}

impl Links {
    /// A copy of the links of the points of `hnsw` with ids below `n` (links to points
    /// at or above `n` are left out). No insert may run meanwhile: hnsw_rs's iterator
    /// holds its point table's read lock, and the caller is the graph's only inserter.
    pub fn copy(hnsw: &Hnsw<'static, f32, UnitCosine>, n: usize) -> Links {
        let mut links = Links {
            n,
            ..Links::default()
        };
        if n == 0 || hnsw.get_nb_point() == 0 {
            links.n = 0;
            return links;
        }
        let index = hnsw.get_point_indexation();
        let top = index.get_max_level_observed();
        // Each point sits in the table of its own (highest) layer.
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut seen = vec![false; n];
        let mut max_row = 0;
        for layer in 0..=top {
            for p in index.get_layer_iterator(usize::from(layer)) {
                let id = p.get_origin_id();
                if id >= n {
                    continue;
                }
                seen[id] = true;
                let hood = p.get_neighborhood_id();
                rows[id] = neighbour_ids(&hood, 0, id, n);
                max_row = max_row.max(rows[id].len());
                if layer > 0 {
                    let lists = (1..=usize::from(layer))
                        .map(|l| neighbour_ids(&hood, l, id, n))
                        .collect();
                    links.upper.insert(id as u32, lists);
                }
                if links.entry.is_none_or(|(_, l)| layer > l) {
                    links.entry = Some((id as u32, layer));
                }
            }
        }
        if seen.iter().any(|s| !s) {
            // Not every id below `n` is in the graph (cannot happen with ids given in
            // order by the graph's inserter): cover only the prefix that is.
            links.n = seen.iter().position(|s| !s).unwrap_or(n);
            return Links::prefix(links, rows);
        }
        links.set_layer0(&rows, max_row);
        links
    }

    /// Lays out the layer-0 rows of points `0..n` (`rows[id]`, at most `max_row` each).
    fn set_layer0(&mut self, rows: &[Vec<u32>], max_row: usize) {
        self.stride = max_row + 1;
        self.layer0 = vec![0; self.n * self.stride];
        pages::advise_huge(&self.layer0);
        for (id, row) in rows.iter().enumerate().take(self.n) {
            let at = id * self.stride;
            self.layer0[at] = row.len() as u32;
            self.layer0[at + 1..at + 1 + row.len()].copy_from_slice(row);
        }
    }

    /// `links` cut to its first `links.n` points.
    fn prefix(mut links: Links, mut rows: Vec<Vec<u32>>) -> Links {
        let n = links.n as u32;
        rows.truncate(links.n);
        for row in &mut rows {
            row.retain(|&x| x < n);
        }
        links.upper.retain(|&id, _| id < n);
        for lists in links.upper.values_mut() {
            for l in lists {
                l.retain(|&x| x < n);
            }
        }
        links.entry = links
            .upper
            .iter()
            .map(|(&id, lists)| (id, lists.len() as u8))
            .max_by_key(|&(id, l)| (l, Reverse(id)))
            .or((n > 0).then_some((0, 0)));
        let max_row = rows.iter().map(Vec::len).max().unwrap_or(0);
        links.set_layer0(&rows, max_row);
        links
    }

    /// Points covered (ids `0..len()`).
    pub fn len(&self) -> usize {
        self.n
    }

    #[inline]
    fn row(&self, id: u32) -> &[u32] {
        let at = id as usize * self.stride;
        let count = self.layer0[at] as usize;
        &self.layer0[at + 1..at + 1 + count]
    }

    /// The `ef` points nearest to `query` that `accept` takes, nearest first, as
    /// `(id, distance)`. `vectors` holds point `id`'s unit vector at `id * dim`, for
    /// every covered point.
    pub fn search(
        &self,
        vectors: &[f32],
        dim: usize,
        query: &[f32],
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let Some((entry, top)) = self.entry else {
            return Vec::new();
        };
        if ef == 0 || vectors.len() < self.n * dim || query.len() != dim {
            return Vec::new();
        }
        let vec_of = |id: u32| &vectors[id as usize * dim..(id as usize + 1) * dim];
        // Greedy descent: on each upper layer, move to the nearest neighbour while one
        // is nearer.
        let mut cur = entry;
        let mut cur_d = distance(query, vec_of(cur));
        for layer in (1..=usize::from(top)).rev() {
            loop {
                let mut moved = false;
                let lists = self.upper.get(&cur);
                for &nb in lists.and_then(|ls| ls.get(layer - 1)).into_iter().flatten() {
                    let d = distance(query, vec_of(nb));
                    if d < cur_d {
                        (cur, cur_d) = (nb, d);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        VISITED.with(|v| {
            let mut visited = v.borrow_mut();
            visited.start(self.n);
            self.search_layer0(vec_of, query, cur, cur_d, ef, accept, &mut visited)
        })
    }

    /// Best-first search of layer 0 from `start` (hnswlib's `searchBaseLayerST`).
    #[allow(clippy::too_many_arguments)]
    fn search_layer0<'v>(
        &self,
        vec_of: impl Fn(u32) -> &'v [f32],
        query: &[f32],
        start: u32,
        start_d: f32,
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
        visited: &mut Visited,
    ) -> Vec<(u32, f32)> {
        // Candidates to expand, nearest first; results (accepted points), farthest on
        // top. Only accepted points fill the results, but every point can be a step.
        let mut candidates: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(ef * 2);
        let mut results: BinaryHeap<u64> = BinaryHeap::with_capacity(ef + 1);
        visited.first_visit(start);
        candidates.push(Reverse(pack(start_d, start)));
        if accept(start) {
            results.push(pack(start_d, start));
        }
        let mut bound = if results.len() >= ef {
            start_d
        } else {
            f32::INFINITY
        };
        while let Some(Reverse(c)) = candidates.pop() {
            let (d, id) = unpack(c);
            if d > bound {
                break;
            }
            // The unvisited neighbours first, then their distances, each vector's
            // loads started a step ahead.
            let fresh = visited.first_visits(self.row(id));
            for &nb in &fresh[..fresh.len().min(AHEAD)] {
                prefetch(vec_of(nb));
            }
            for (i, &nb) in fresh.iter().enumerate() {
                if let Some(&next) = fresh.get(i + AHEAD) {
                    prefetch(vec_of(next));
                }
                let dn = distance(query, vec_of(nb));
                if results.len() < ef || dn < bound {
                    candidates.push(Reverse(pack(dn, nb)));
                    if accept(nb) {
                        results.push(pack(dn, nb));
                        if results.len() > ef {
                            results.pop();
                        }
                        if results.len() >= ef {
                            bound = results.peek().map_or(f32::INFINITY, |&x| unpack(x).0);
                        }
                    }
                }
            }
            // The next point to expand: start loading its row.
            if let Some(&Reverse(next)) = candidates.peek() {
                let at = unpack(next).1 as usize * self.stride;
                prefetch(&self.layer0[at..at + self.stride]);
            }
        }
        let mut out: Vec<(u32, f32)> = results
            .into_vec()
            .into_iter()
            .map(|x| {
                let (d, id) = unpack(x);
                (id, d)
            })
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::distance::random_units as points;

    #[test]
    fn packed_distances_order_like_distances() {
        let ds = [0.0f32, 1e-30, 1e-7, 0.25, 0.5, 1.0, 1.0 + f32::EPSILON, 2.0];
        for w in ds.windows(2) {
            assert!(pack(w[0], 7) < pack(w[1], 3));
            assert_eq!(unpack(pack(w[0], 7)), (w[0], 7));
        }
        assert!(pack(0.5, 1) < pack(0.5, 2));
    }

    #[test]
    fn the_copy_finds_what_brute_force_finds() {
        let dim = 16;
        let pts = points(2000, dim, 11);
        let hnsw = Hnsw::<f32, UnitCosine>::new(16, 2000, 16, 200, UnitCosine);
        for (i, p) in pts.iter().enumerate() {
            hnsw.insert_slice((p, i));
        }
        let links = Links::copy(&hnsw, pts.len());
        assert_eq!(links.len(), 2000);
        let flat: Vec<f32> = pts.iter().flatten().copied().collect();
        let queries = points(100, dim, 99);
        let mut hits = 0;
        for q in &queries {
            let mut exact: Vec<(u32, f32)> = pts
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u32, distance(q, p)))
                .collect();
            exact.sort_by(|a, b| a.1.total_cmp(&b.1));
            let found = links.search(&flat, dim, q, 64, &|_| true);
            assert_eq!(found.len(), 64);
            assert!(found.windows(2).all(|w| w[0].1 <= w[1].1), "nearest first");
            let top: Vec<u32> = found[..10].iter().map(|x| x.0).collect();
            hits += exact[..10].iter().filter(|e| top.contains(&e.0)).count();
        }
        // Recall@10 at ef 64 on 2,000 points in 16 dimensions.
        assert!(hits >= 950, "recall {hits}/1000");
        // Every point finds itself first.
        for (i, p) in pts.iter().enumerate().step_by(7) {
            assert_eq!(links.search(&flat, dim, p, 16, &|_| true)[0].0, i as u32);
        }
        // A filter: only accepted points come back, and ef of them when they exist.
        let odd = links.search(&flat, dim, &queries[0], 20, &|id| id % 2 == 1);
        assert_eq!(odd.len(), 20);
        assert!(odd.iter().all(|(id, _)| id % 2 == 1));
        // A copy of a prefix leaves the later points (and links to them) out.
        let part = Links::copy(&hnsw, 500);
        assert_eq!(part.len(), 500);
        let found = part.search(&flat[..500 * dim], dim, &queries[1], 30, &|_| true);
        assert_eq!(found.len(), 30);
        assert!(found.iter().all(|(id, _)| *id < 500));
        // Nothing to search: nothing found, no panic.
        assert!(Links::default()
            .search(&flat, dim, &queries[0], 10, &|_| true)
            .is_empty());
        assert!(links
            .search(&flat, dim, &[1.0; 3], 10, &|_| true)
            .is_empty());
    }
}
