//! Nearest-rank percentiles: the one definition behind every percentile the gateway reports
//! (the sliding windows on `/metrics` and [`super::monitor::Monitor::window_quantiles`], the
//! usage reports, the canary's p95 against production's).
//!
//! The p-th percentile of n values is the value of rank ⌈p·n⌉ (at least 1) in ascending order
//! (by [`f64::total_cmp`]): always one of the values, never an interpolation between two.
//! `p` is given in per mille, an integer, so the rank is exact: ⌈950·20/1000⌉ is 19, where a
//! float product can land either side of an integer. For the percentiles used here (50, 95,
//! 99) and any count below 10^13 this is the rank `(p as f64 * n as f64).ceil()` gives too.
//! What goes in (which window, which samples, unknowns left out) is the caller's.

/// The median, in per mille.
pub const P50: u64 = 500;
/// The 95th percentile, in per mille.
pub const P95: u64 = 950;
/// The 99th percentile, in per mille.
pub const P99: u64 = 990;

/// The values at the percentiles `permille` (each in 1..=1000) of `values`, which are sorted
/// here; None when there are none.
pub fn nearest_rank<const N: usize>(values: &mut [f64], permille: [u64; N]) -> Option<[f64; N]> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len() as u64;
    Some(permille.map(|p| values[((p * n).div_ceil(1000).clamp(1, n) - 1) as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_at_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(nearest_rank(&mut v, [P50, P95, P99]), Some([50.0, 95.0, 99.0]));
        assert_eq!(nearest_rank(&mut [7.0], [P50, P95, P99]), Some([7.0; 3]));
        assert_eq!(nearest_rank(&mut [2.0, 1.0], [P50, P95]), Some([1.0, 2.0]), "rank ⌈0.5·2⌉ = 1");
        assert_eq!(nearest_rank(&mut [3.0, 1.0, 2.0], [1, 1000]), Some([1.0, 3.0]), "min and max");
        assert_eq!(nearest_rank(&mut [], [P95]), None);
    }

    #[test]
    fn twenty_values_p95_is_the_nineteenth() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&mut v, [P95]), Some([19.0]));
    }

    #[test]
    fn the_same_rank_as_the_float_formula_it_replaced() {
        for n in 1..=5000u64 {
            let mut v: Vec<f64> = (1..=n).map(|i| i as f64).collect();
            let float = [0.50, 0.95, 0.99].map(|q: f64| ((q * n as f64).ceil() as u64).clamp(1, n) as f64);
            assert_eq!(nearest_rank(&mut v, [P50, P95, P99]), Some(float), "n = {n}");
        }
    }

    #[test]
    fn orders_by_total_cmp() {
        let mut v = [0.0, -0.0, -1.0];
        let [lo, mid] = nearest_rank(&mut v, [1, P50]).unwrap();
        assert_eq!((lo, mid.to_bits()), (-1.0, (-0.0f64).to_bits()));
    }
}
