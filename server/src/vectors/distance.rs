//! Distances between vectors: the dot product (AVX2 + FMA where the CPU has them), unit
//! vectors, and the cosine distance of unit vectors that the graph and its searches use.

use hnsw_rs::anndists::dist::distances::Distance;

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

/// Asks the CPU to start loading the cache lines of `v` (a hint: it never faults and
/// changes nothing). A search calls it for the vectors it measures next, so their loads
/// from memory overlap the distance it is computing (as hnswlib does).
#[inline]
pub fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = v.as_ptr().cast::<i8>();
        for at in (0..std::mem::size_of_val(v)).step_by(64) {
            // SAFETY: a prefetch is only a hint: it never faults, whatever the address
            // (these are inside `v` anyway), and neither reads nor writes for the program.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at)) };
        }
    }
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

/// `n` seeded pseudo-random unit vectors of `dim` dimensions (tests).
#[cfg(test)]
pub(crate) fn random_units(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = seed;
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((rng >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect();
            normalized(&v)
        })
        .collect()
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
}
