//! Samples, and ratios over interleaved rounds.

use std::time::Duration;

/// Latency samples, sorted.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort();
        Self(v)
    }

    /// Every sample of `rounds`, as one set.
    pub fn pooled(rounds: &[Samples]) -> Self {
        Self::new(rounds.iter().flat_map(|s| s.0.iter().copied()).collect())
    }

    /// The nearest-rank percentile, in microseconds.
    pub fn pct_us(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.0.len()) - 1;
        self.0[i].as_secs_f64() * 1e6
    }

    pub fn p50(&self) -> f64 {
        self.pct_us(50.0)
    }

    pub fn p99(&self) -> f64 {
        self.pct_us(99.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The median of a set of per-round ratios, and their spread: one noisy
/// moment moves the spread, not the median.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Self {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// The per-round ratios `ours[i] / base[i]`.
    pub fn ratios(ours: &[f64], base: &[f64]) -> Self {
        Self::of(ours.iter().zip(base).map(|(a, b)| ratio(*a, *b)).collect())
    }

    /// "2.1x (1.9-2.4)".
    pub fn shown(&self) -> String {
        format!("{:.2}x ({:.2}-{:.2})", self.median, self.min, self.max)
    }
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        return 0.0;
    }
    a / b
}

pub fn mb_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / 1e6 / secs
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    Spread::of(v.to_vec()).median
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Samples::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(s.p50(), 50.0);
        assert_eq!(s.p99(), 99.0);
        assert_eq!(Samples::new(vec![Duration::from_micros(7)]).p99(), 7.0);
    }

    #[test]
    fn spreads_take_the_median_of_the_rounds() {
        let s = Spread::ratios(&[2.0, 9.0, 3.0, 4.0, 5.0], &[1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(
            s,
            Spread {
                median: 4.0,
                min: 2.0,
                max: 9.0
            }
        );
        assert_eq!(Spread::of(vec![1.0, 3.0]).median, 2.0);
        assert_eq!(Spread::of(vec![]), Spread::default());
        assert_eq!(s.shown(), "4.00x (2.00-9.00)");
    }
}
