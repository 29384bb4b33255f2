//! Telling two timing distributions apart, for the claims that two paths take the same time.

use std::time::Duration;

/// The Mann–Whitney U test's z-score (normal approximation, ties averaged): how far apart
/// two samples' ranks are. |z| above 3.29 tells them apart at p < 0.001 (two-sided).
pub fn mann_whitney_z(a: &[Duration], b: &[Duration]) -> f64 {
    let mut all: Vec<(Duration, bool)> =
        a.iter().map(|d| (*d, true)).chain(b.iter().map(|d| (*d, false))).collect();
    all.sort_by_key(|(d, _)| *d);
    let mut rank_sum_a = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += rank * all[i..=j].iter().filter(|(_, from_a)| *from_a).count() as f64;
        i = j + 1;
    }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let sd = (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt();
    (u - mean) / sd
}

/// The critical |z| for p < 0.001, two-sided.
pub const Z_P001: f64 = 3.29;

/// The `q` quantile (0..=1) of `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// "p10 / p50 / p90 / p99" in milliseconds.
pub fn distribution(samples: &[Duration]) -> String {
    let ms = |q| quantile(samples, q).as_secs_f64() * 1e3;
    format!("p10 {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms", ms(0.1), ms(0.5), ms(0.9), ms(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_tells_shifted_samples_apart_and_not_shuffled_ones() {
        let ms = |v: u64| Duration::from_millis(v);
        let a: Vec<Duration> = (0..60).map(|i| ms(100 + i % 7)).collect();
        let b: Vec<Duration> = (0..60).map(|i| ms(100 + (i * 3) % 7)).collect();
        assert!(mann_whitney_z(&a, &b).abs() < 1.0);
        let slow: Vec<Duration> = a.iter().map(|d| *d + ms(5)).collect();
        assert!(mann_whitney_z(&a, &slow) < -Z_P001);
        assert_eq!(quantile(&a, 0.0), ms(100));
    }
}
