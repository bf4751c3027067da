//! Latency summaries from raw nanosecond samples, and how the benches show them.

use std::time::Instant;

/// Percentiles and mean of a set of latency samples, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub samples: usize,
    /// Smallest sample.
    pub min_ns: u64,
    /// Median (nearest rank).
    pub p50_ns: u64,
    /// 99th percentile (nearest rank).
    pub p99_ns: u64,
    /// 99.9th percentile (nearest rank).
    pub p999_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
    /// Arithmetic mean.
    pub mean_ns: f64,
}

impl Summary {
    /// Summarises `samples` (sorted in place). Returns `None` if there are none.
    pub fn from_samples(samples: &mut [u64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Some(Summary {
            samples: samples.len(),
            min_ns: samples[0],
            p50_ns: percentile(samples, 0.50),
            p99_ns: percentile(samples, 0.99),
            p999_ns: percentile(samples, 0.999),
            max_ns: samples[samples.len() - 1],
            mean_ns: sum as f64 / samples.len() as f64,
        })
    }

    /// Round trips per second one caller achieves back to back: `1 / mean`.
    pub fn rate_per_sec(&self) -> f64 {
        if self.mean_ns > 0.0 {
            1e9 / self.mean_ns
        } else {
            f64::INFINITY
        }
    }
}

impl Summary {
    /// The summary as JSON fields, times in microseconds: `samples`, `min_us`, `p50_us`,
    /// `p99_us`, `p999_us`, `max_us`, `mean_us`.
    pub fn json_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let serde_json::Value::Object(fields) = serde_json::json!({
            "samples": self.samples,
            "min_us": self.min_ns as f64 / 1e3,
            "p50_us": self.p50_ns as f64 / 1e3,
            "p99_us": self.p99_ns as f64 / 1e3,
            "p999_us": self.p999_ns as f64 / 1e3,
            "max_us": self.max_ns as f64 / 1e3,
            "mean_us": self.mean_ns / 1e3,
        }) else {
            unreachable!("json!({{..}}) is an object")
        };
        fields
    }

    /// [`Summary::json_fields`] as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.json_fields())
    }
}

/// Nanoseconds as microseconds with two decimals.
pub fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e3)
}

/// A rate with thousands separators (`∞` if not finite).
pub fn rate(r: f64) -> String {
    if !r.is_finite() {
        return "∞".into();
    }
    let digits = format!("{:.0}", r);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Cost of one `Instant::now()` in nanoseconds (included once in every timed sample).
pub fn clock_read_ns() -> f64 {
    const N: u32 = 1_000_000;
    let t0 = Instant::now();
    let mut last = t0;
    for _ in 0..N {
        last = std::hint::black_box(Instant::now());
    }
    (last - t0).as_nanos() as f64 / f64::from(N)
}

/// The nearest-rank `q`-quantile (`0 < q <= 1`) of `sorted` (ascending, non-empty): the
/// smallest sample with at least `q` of all samples at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.999), 7);
    }

    #[test]
    fn rate_format() {
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(999.0), "999");
        assert_eq!(rate(1000.0), "1,000");
    }

    #[test]
    fn summary() {
        let mut v = vec![5, 1, 3, 2, 4];
        let s = Summary::from_samples(&mut v).unwrap();
        assert_eq!((s.min_ns, s.p50_ns, s.max_ns), (1, 3, 5));
        assert_eq!(s.mean_ns, 3.0);
        assert!(Summary::from_samples(&mut []).is_none());
    }
}
