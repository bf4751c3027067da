//! One HNSW graph (hnsw_rs) over L2-normalised vectors, and the key of each point.
//!
//! hnsw_rs cannot delete or update: a point stays in its graph for the graph's life.
//! The index (`super`) decides which points are live; here a point is just an id, its
//! key and its vector. Every vector that reaches this module has been checked (finite,
//! non-zero, the graph's dimension) and normalised, so no input can reach hnsw_rs that
//! makes it panic (its distances assert on NaNs and on negative rounding errors; the
//! distance below clamps).

use std::sync::{Arc, RwLock};

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;

/// Layers of the graph (hnsw_rs's maximum; it needs at least one).
const MAX_LAYERS: usize = 16;

/// Cosine distance of two L2-normalised vectors: `1 - a·b`, clamped to `[0, 2]` (a dot
/// product of two unit vectors can come out a rounding error above 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).clamp(0.0, 2.0)
    }
}

/// The dot product of two vectors of the same length: with AVX2 and FMA where the CPU
/// has them (checked once), else over 8 independent accumulators that the compiler
/// vectorises for the baseline target.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2_FMA: OnceLock<bool> = OnceLock::new();
        let fast = *AVX2_FMA.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        });
        if fast {
            // SAFETY: the CPU has AVX2 and FMA (checked above), all `dot_avx2` needs.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// [`dot`] with 256-bit fused multiply-adds: two accumulators of 8 lanes.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n` and both slices have at least `n` elements, so each
        // unaligned 8-lane load reads inside them.
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
        }
        i += 16;
    }
    if i + 8 <= n {
        // SAFETY: `i + 8 <= n`: both loads read inside the slices.
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        }
        i += 8;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` has room for 8 floats; an unaligned store.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1)) };
    let mut sum: f32 = lanes.iter().sum();
    for j in i..n {
        sum += a[j] * b[j];
    }
    sum
}

/// [`dot`] for any CPU.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// `v` scaled to unit length (`v` must be finite and not all zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    // In f64: a vector of large finite components must not overflow to infinity.
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}

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
    keys: RwLock<Vec<Arc<str>>>,
    dim: usize,
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
        Graph {
            hnsw: Hnsw::new(
                m,
                capacity.max(1024),
                MAX_LAYERS,
                params.ef_construction.max(m),
                UnitCosine,
            ),
            keys: RwLock::new(Vec::with_capacity(capacity)),
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
        Ok(Graph {
            hnsw,
            keys: RwLock::new(Vec::new()),
            dim,
        })
    }

    /// The key of each point, by id.
    pub fn keys(&self) -> Vec<Arc<str>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the key of each point of a loaded graph, by id.
    pub fn set_keys(&self, keys: Vec<Arc<str>>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Points in the graph (live or not). A loaded graph counts its points before its
    /// keys are set.
    pub fn points(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Points in the graph (live or not).
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
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
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            keys.push(key);
            keys.len() - 1
        };
        self.hnsw.insert_slice((unit, id));
        id as u32
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
        // Held for the search: the filter looks keys up by id, and the inserter waits.
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let found = if prefix.is_empty() {
            self.hnsw.search(unit, want, ef.max(want))
        } else {
            let filter = |id: &usize| keys.get(*id).is_some_and(|k| k.starts_with(prefix));
            self.hnsw
                .search_filter(unit, want, ef.max(want), Some(&filter))
        };
        found
            .into_iter()
            .filter_map(|n| {
                let key = keys.get(n.d_id)?;
                Some((n.d_id as u32, Arc::clone(key), n.distance))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_normalisation() {
        // Every length around the 8- and 16-lane steps, against a plain sum in f64.
        for n in 0..70 {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 3) as f32 - 1.0).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-3, "n {n}");
            assert!(
                (f64::from(dot_portable(&a, &b)) - want).abs() < 1e-3,
                "n {n}"
            );
        }
        let u = normalized(&[3e38, 3e38]);
        assert!((dot(&u, &u) - 1.0).abs() < 1e-6);
        assert!(UnitCosine.eval(&u, &u) < 1e-6);
        let v = normalized(&[-3e38, -3e38]);
        assert!(UnitCosine.eval(&u, &v) > 2.0 - 1e-6 && UnitCosine.eval(&u, &v) <= 2.0);
        // Never negative, whatever the rounding.
        let w = normalized(&[1.0, 1e-8, 3.0]);
        assert!(UnitCosine.eval(&w, &w) >= 0.0);
    }

    #[test]
    fn finds_each_point_and_filters_by_prefix() {
        let g = Graph::new(GraphParams::default(), 4, 10);
        let mut rng = 7u64;
        let mut pts = Vec::new();
        for i in 0..300 {
            let v: Vec<f32> = (0..4)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((rng >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect();
            let u = normalized(&v);
            let key: Arc<str> = format!("{}/{i}", if i % 2 == 0 { "even" } else { "odd" }).into();
            assert_eq!(g.insert(key, &u), i as u32);
            pts.push(u);
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
}
