//! Helpers shared by the workspace's integration tests (`tests/it`): random tensors, norm-wise
//! comparisons and central finite differences in f64.

use kernels_ir::reference::Tensor;
use kernels_ir::reference::rng::SplitMix64;
use proptest::test_runner::{Config, RngSeed};

/// A tensor of N(0, std²) values from `rng`.
pub fn randn(rng: &mut SplitMix64, shape: &[usize], std: f64) -> Tensor {
    rng.normal_tensor(shape, std)
}

/// ‖a − b‖₂ / max(‖b‖₂, floor): relative for ordinary magnitudes, absolute near zero.
pub fn rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max(floor)
}

/// Panics with both tensors' first differing element when `rel_err(actual, expected, 1.0)`
/// exceeds `tol`.
#[track_caller]
pub fn assert_close(actual: &[f64], expected: &[f64], tol: f64, what: &str) {
    let err = rel_err(actual, expected, 1.0);
    if err > tol || err.is_nan() {
        let i = actual
            .iter()
            .zip(expected)
            .position(|(a, b)| (a - b).abs() > tol * b.abs().max(1.0))
            .unwrap_or(0);
        panic!(
            "{what}: relative error {err:.3e} > {tol:.0e} (first difference at {i}: {} vs expected {})",
            actual.get(i).copied().unwrap_or(f64::NAN),
            expected.get(i).copied().unwrap_or(f64::NAN)
        );
    }
}

/// Central finite differences of the scalar `loss` with respect to every element of `x`,
/// step `h·max(1, |x_i|)`.
pub fn numeric_grad(x: &Tensor, h: f64, mut loss: impl FnMut(&Tensor) -> f64) -> Vec<f64> {
    let mut probe = x.clone();
    (0..x.numel())
        .map(|i| {
            let step = h * x.data[i].abs().max(1.0);
            probe.data[i] = x.data[i] + step;
            let up = loss(&probe);
            probe.data[i] = x.data[i] - step;
            let down = loss(&probe);
            probe.data[i] = x.data[i];
            (up - down) / (2.0 * step)
        })
        .collect()
}

/// Σ a ⊙ b: the scalar loss whose gradient with respect to an op's output is `b`.
pub fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum()
}

/// The finite-difference tolerance every backward is held to (relative, norm-wise).
pub const FD_TOL: f64 = 1e-6;
/// The finite-difference step.
pub const FD_STEP: f64 = 1e-6;

/// The proptest configuration of every property here: `cases` cases from a fixed seed, so a CI
/// run is reproducible; set `PROPTEST_RNG_SEED=<u64>` to explore other inputs.
pub fn proptest_config(cases: u32) -> Config {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026);
    Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}

/// The wgpu device for kernel tests. Absent device: the test prints why and is skipped, unless
/// `SPARSECUBE_REQUIRE_WGPU` is set (CI sets it), where an absent device fails the test.
pub fn wgpu_or_skip(test: &str) -> Option<sparsecube_runtime::Device> {
    // Kernel tests run the schedule their spec is written with, whatever a developer's tuning
    // cache holds (every schedule point is tested on its own in `tune`).
    sparsecube_runtime::tune::set_policy(sparsecube_runtime::tune::Policy::Off);
    match sparsecube_runtime::wgpu() {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("SPARSECUBE_REQUIRE_WGPU").is_some() => {
            panic!("{test}: SPARSECUBE_REQUIRE_WGPU is set but {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// Rounds every value through the storage dtype, so host reference and device see equal inputs.
pub fn round_to(t: &Tensor, dtype: kernels_ir::DType) -> Tensor {
    let r = |v: f64| match dtype {
        kernels_ir::DType::F16 => half::f16::from_f64(v).to_f64(),
        kernels_ir::DType::BF16 => half::bf16::from_f64(v).to_f64(),
        _ => f64::from(v as f32),
    };
    Tensor {
        shape: t.shape.clone(),
        data: t.data.iter().map(|&v| r(v)).collect(),
    }
}
