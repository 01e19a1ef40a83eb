//! N:M semi-structured sparsity (`nm-linear`) on wgpu (lavapipe in CI) against the reference
//! executor: random shapes and patterns (2:4, 1:4, 4:8, 1:2, m:m), weights on a tie grid, given
//! packed values; forward (mask, y, v) and every gradient (dx, dv, dbias). The op has no kernel
//! of its own: its plans are the row top-k primitive, a gather and tile programs.

use kernels_ir::DType;
use kernels_ir::pattern::Nm;
use proptest::prelude::*;
use sparsecube_runtime::selftest::{NmCase, check_nm};
use sparsecube_tests::{proptest_config, wgpu_or_skip};

fn case(dtype: DType) -> impl Strategy<Value = NmCase> {
    (
        1usize..60,
        1usize..16,
        1usize..70,
        0usize..5,
        any::<[bool; 2]>(),
        any::<u64>(),
    )
        .prop_map(move |(t, groups, n_out, pattern, [ties, with_v], seed)| {
            let nm = [
                Nm { n: 2, m: 4 },
                Nm { n: 1, m: 4 },
                Nm { n: 4, m: 8 },
                Nm { n: 1, m: 2 },
                Nm { n: 3, m: 3 },
            ][pattern];
            NmCase {
                t,
                n_in: groups * nm.m,
                n_out,
                nm,
                ties,
                with_v,
                dtype,
                seed,
            }
        })
}

/// The same comparison `sparsecube selftest` runs on a GPU.
fn check(c: &NmCase) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("nm kernels") else {
        return Ok(());
    };
    let report = check_nm(&device, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(16))]

    #[test]
    fn nm_kernels_match_reference_f32(c in case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(4))]

    /// Half storage (f16), f32 accumulation.
    #[test]
    fn nm_kernels_match_reference_half(c in case(DType::F16)) {
        check(&c)?;
    }
}

/// A layer-sized 2:4 layer past one tile in every dimension (T 70, 256 → 96), on the tie grid.
#[test]
fn layer_sized_2_4_matches_reference() {
    let c = NmCase {
        t: 70,
        n_in: 256,
        n_out: 96,
        nm: Nm { n: 2, m: 4 },
        ties: true,
        with_v: true,
        dtype: DType::F32,
        seed: 24,
    };
    check(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
}
