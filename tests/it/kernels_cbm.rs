//! Sparse-CBM head kernels on wgpu (lavapipe in CI) against the reference executor, on random
//! shapes: topk 0 (dense head), 1, any, and every concept; with and without the optional noise;
//! forward (z, logits) and every gradient (dx, dwc, dwh).

use kernels_ir::DType;
use proptest::prelude::*;
use sparsecube_runtime::selftest::{CbmCase, check_cbm};
use sparsecube_tests::{proptest_config, wgpu_or_skip};

fn case(dtype: DType) -> impl Strategy<Value = CbmCase> {
    (
        1usize..40,
        1usize..30,
        1usize..10,
        0usize..4,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |(b, c, k, pick, noise, seed)| CbmCase {
            b,
            c,
            k,
            // 0 (dense head), 1, a middle count, every concept.
            topk: [0, 1, 1 + (seed as usize) % c, c][pick],
            noise,
            dtype,
            seed,
        })
}

/// The same comparison `sparsecube selftest` runs on a GPU.
fn check(c: &CbmCase) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("cbm kernels") else {
        return Ok(());
    };
    let report = check_cbm(&device, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn cbm_kernels_match_reference_f32(c in case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(6))]

    /// Half storage (f16; bf16 is held as f32 on wgpu), f32 accumulation.
    #[test]
    fn cbm_kernels_match_reference_half(c in case(DType::F16)) {
        check(&c)?;
    }
}
