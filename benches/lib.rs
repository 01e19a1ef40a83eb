//! Shared helpers of the benchmarks: device-synchronised timing (median after warm-up) and
//! environment overrides.

use std::time::Instant;

/// `name` from the environment, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median wall time in milliseconds of `repeats` runs of `f` after `warmup` runs; `f` must wait
/// for the device before returning.
pub fn median_ms(warmup: usize, repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
