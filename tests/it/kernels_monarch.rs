//! Monarch kernels on wgpu (lavapipe in CI) against the reference executor, on random shapes:
//! non-square factors (k ≠ l, p ≠ q, s ≠ r), a single block, rows not a multiple of the fused
//! kernel's row tile; forward (y) and every gradient (dx, dw1, dw2). The single block-diagonal map
//! (`block-diag-linear`), and the dense linear Monarch is benchmarked against.

use kernels_ir::DType;
use kernels_ir::pattern::MonarchShape;
use proptest::prelude::*;
use sparsecube_runtime::selftest::{
    BlockDiagCase, LinearCase, MonarchCase, check_linear, check_monarch,
};
use sparsecube_tests::{proptest_config, wgpu_or_skip};

fn case(dtype: DType) -> impl Strategy<Value = MonarchCase> {
    (
        1usize..7,
        1usize..7,
        1usize..4,
        1usize..13,
        1usize..13,
        1usize..40,
        any::<u64>(),
    )
        .prop_map(move |(k, l, mult, p, s, n, seed)| {
            // q a multiple of l / gcd(k, l), so that l divides the intermediate width k·q.
            let g = (1..=k.min(l))
                .rev()
                .find(|d| k % d == 0 && l % d == 0)
                .unwrap_or(1);
            let q = l / g * mult;
            MonarchCase {
                n,
                shape: MonarchShape {
                    k,
                    q,
                    p,
                    l,
                    s,
                    r: k * q / l,
                },
                dtype,
                seed,
            }
        })
}

/// The same comparison `sparsecube selftest` runs on a GPU.
fn check(c: &MonarchCase) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("monarch kernels") else {
        return Ok(());
    };
    let report = check_monarch(&device, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn monarch_kernels_match_reference_f32(c in case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(6))]

    /// Half storage (f16; bf16 is held as f32 on wgpu), f32 accumulation.
    #[test]
    fn monarch_kernels_match_reference_half(c in case(DType::F16)) {
        check(&c)?;
    }
}

/// A square Monarch of a real layer's shape (n = 256, 4 blocks) and a rectangular one past the
/// fused kernel's row tile and unit count (n_in 384 → n_out 160 through a 192-wide
/// intermediate, 70 rows): several cubes per block, several loop rounds per unit.
#[test]
fn layer_sized_monarch_matches_reference() {
    for (n, shape) in [
        (33, MonarchShape::square(256, 4)),
        (
            70,
            MonarchShape {
                k: 3,
                q: 64,
                p: 128,
                l: 4,
                s: 40,
                r: 48,
            },
        ),
    ] {
        let c = MonarchCase {
            n,
            shape,
            dtype: DType::F32,
            seed: 9,
        };
        check(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
}

/// The dense linear Monarch is benchmarked against (the same tile mainloop as the routed
/// products), against the reference: y, dx, dw and dbias, past one tile in every dimension.
#[test]
fn dense_linear_baseline_matches_reference() {
    let Some(device) = wgpu_or_skip("dense linear") else {
        return;
    };
    let mut rng = kernels_ir::reference::rng::SplitMix64::new(17);
    let mut cases = vec![LinearCase {
        t: 130,
        n_in: 97,
        n_out: 70,
        dtype: DType::F32,
        seed: 3,
    }];
    cases.extend((0..6).map(|_| LinearCase::draw(&mut rng, &[DType::F32, DType::F16])));
    for c in &cases {
        let report = check_linear(&device, c).unwrap();
        assert!(report.passed(), "{report}");
    }
}

/// `block-diag-linear` forward (y) and backward (dx, dw) against the reference.
fn check_block_diag(
    n: usize,
    blocks: usize,
    pi: usize,
    qo: usize,
    dtype: DType,
    seed: u64,
) -> Result<(), String> {
    let Some(device) = wgpu_or_skip("block-diag-linear") else {
        return Ok(());
    };
    let case = BlockDiagCase {
        n,
        blocks,
        pi,
        qo,
        dtype,
        seed,
    };
    let report = sparsecube_runtime::selftest::check_block_diag(&device, &case)
        .map_err(|e| e.to_string())?;
    if report.passed() {
        Ok(())
    } else {
        Err(report.to_string())
    }
}

proptest! {
    #![proptest_config(proptest_config(16))]

    #[test]
    fn block_diag_matches_reference(
        n in 1usize..90,
        blocks in 1usize..5,
        pi in 1usize..40,
        qo in 1usize..40,
        half in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dtype = if half { DType::F16 } else { DType::F32 };
        check_block_diag(n, blocks, pi, qo, dtype, seed).map_err(TestCaseError::fail)?;
    }
}

/// Past one 64×64 tile in every dimension of every product (rows, a block's inputs and
/// outputs), none a multiple of 16, with several blocks: the per-block bases and reduction
/// ranges of the tile mainloop.
#[test]
fn block_diag_past_one_tile_matches_reference() {
    check_block_diag(130, 3, 70, 66, DType::F32, 7).unwrap();
}
