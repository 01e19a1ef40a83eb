//! Shared helpers of the benchmarks: environment overrides (timing is the runtime's
//! `sparsecube_runtime::bench`, the step `sparsecube bench` and the tuner time).

/// `name` from the environment, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
