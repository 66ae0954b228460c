//! A latency histogram that many client tasks record into without locks and that worker
//! processes merge: 10 µs buckets up to 100 ms, then 1 ms buckets up to 60 s.

use std::sync::atomic::{AtomicU64, Ordering};

const FINE_US: u64 = 10;
const FINE_BUCKETS: u64 = 10_000; // 0..100 ms
const COARSE_US: u64 = 1_000;
const COARSE_BUCKETS: u64 = 59_900; // 100 ms..60 s
const BUCKETS: usize = (FINE_BUCKETS + COARSE_BUCKETS + 1) as usize;

pub struct Histogram {
    counts: Vec<AtomicU64>,
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bucket(us: u64) -> usize {
        let fine_end = FINE_US * FINE_BUCKETS;
        if us < fine_end {
            (us / FINE_US) as usize
        } else {
            ((FINE_BUCKETS + (us - fine_end) / COARSE_US) as usize).min(BUCKETS - 1)
        }
    }

    /// The upper bound of a bucket, in microseconds.
    fn upper(bucket: usize) -> u64 {
        let b = bucket as u64;
        if b < FINE_BUCKETS {
            (b + 1) * FINE_US
        } else {
            FINE_US * FINE_BUCKETS + (b - FINE_BUCKETS + 1) * COARSE_US
        }
    }

    pub fn record(&self, us: u64) {
        self.counts[Self::bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Non-empty buckets as (bucket, count), for a worker's report.
    pub fn nonzero(&self) -> Vec<(usize, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((i, n))
            })
            .collect()
    }

    pub fn add(&self, buckets: &[(usize, u64)]) {
        for (i, n) in buckets {
            if let Some(c) = self.counts.get(*i) {
                c.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The latency at quantile `q`, in milliseconds (the bucket's upper bound).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::upper(i) as f64 / 1e3;
            }
        }
        Self::upper(BUCKETS - 1) as f64 / 1e3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_have_ten_microsecond_resolution_below_100_ms() {
        let h = Histogram::new();
        for us in 1..=1000 {
            h.record(us * 10);
        }
        assert_eq!(h.quantile_ms(0.5), 5.01);
        assert!((h.quantile_ms(0.99) - 9.91).abs() < 1e-9);
        h.record(5_000_000);
        assert_eq!(h.quantile_ms(1.0), 5000.0 + 1.0);
        let merged = Histogram::new();
        merged.add(&h.nonzero());
        assert_eq!(merged.count(), 1001);
    }
}
