//! Summary statistics: median and spread over repetitions, percentiles over latencies.

use serde::Serialize;

/// The centre and spread of a set of measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// How many measurements.
    pub n: usize,
    /// The median.
    pub median: f64,
    /// The arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (0 for fewer than two values).
    pub stddev: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (NaNs are dropped); all zeros when nothing is left.
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let stddev = if n > 1 {
            (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Summary {
            n,
            median: percentile_sorted(&v, 50.0),
            mean,
            stddev,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// Half the min-to-max range as a fraction of the median (0 when the median is 0).
    pub fn rel_spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / 2.0 / self.median.abs()
        }
    }
}

/// The `p`-th percentile (0..=100) of sorted values, interpolating linearly between ranks
/// (numpy's default); 0 for an empty slice.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Latency percentiles of a distribution, in the unit the values were given in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many values.
    pub n: usize,
    /// The mean.
    pub mean: f64,
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The largest value.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `values` (NaNs dropped); all zeros when nothing is left.
    pub fn of(values: &[f64]) -> Percentiles {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Percentiles {
            n,
            mean: v.iter().sum::<f64>() / n as f64,
            p50: percentile_sorted(&v, 50.0),
            p90: percentile_sorted(&v, 90.0),
            p99: percentile_sorted(&v, 99.0),
            max: v[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 3.0, 2.0]).median, 2.5);
    }

    #[test]
    fn spread_of_known_values() {
        let s = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.n, 8);
        assert_eq!(s.mean, 5.0);
        assert_eq!(s.min, 2.0);
        assert_eq!(s.max, 9.0);
        // Sample stddev: sqrt(32 / 7).
        assert!((s.stddev - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert!((s.rel_spread() - 3.5 / 4.5).abs() < 1e-12);
    }

    #[test]
    fn empty_and_single_and_nan() {
        assert_eq!(Summary::of(&[]), Summary::default());
        let one = Summary::of(&[7.0]);
        assert_eq!(
            (one.median, one.stddev, one.min, one.max),
            (7.0, 0.0, 7.0, 7.0)
        );
        assert_eq!(Summary::of(&[f64::NAN, 1.0]).n, 1);
        assert_eq!(Percentiles::of(&[f64::NAN]), Percentiles::default());
        assert_eq!(Summary::default().rel_spread(), 0.0);
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        // numpy.percentile(range(1, 101), [50, 90, 99]) == [50.5, 90.1, 99.01]
        assert!((p.p50 - 50.5).abs() < 1e-9);
        assert!((p.p90 - 90.1).abs() < 1e-9);
        assert!((p.p99 - 99.01).abs() < 1e-9);
        assert_eq!(p.max, 100.0);
        assert_eq!(p.mean, 50.5);
        assert_eq!(percentile_sorted(&[1.0, 2.0], 0.0), 1.0);
        assert_eq!(percentile_sorted(&[1.0, 2.0], 100.0), 2.0);
        assert_eq!(percentile_sorted(&[1.0, 2.0], 250.0), 2.0);
        assert_eq!(percentile_sorted(&[], 50.0), 0.0);
    }

    #[test]
    fn unsorted_input_is_sorted_first() {
        let p = Percentiles::of(&[5.0, 1.0, 3.0]);
        assert_eq!((p.p50, p.max), (3.0, 5.0));
    }
}
