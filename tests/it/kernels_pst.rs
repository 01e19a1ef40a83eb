//! PST kernels on wgpu (lavapipe in CI) against the reference executor, on random shapes: the
//! score from the factors, the exact k-th value selection of the lowest scores on the device
//! (ties at the threshold → lower flat index, at PST's initialisation on a tie grid), the masked
//! GEMM, and the straight-through backward (dx, dbias, du, dv, dma, dmb, dmr, dmc).
//!
//! Scores are computed in f32 on the device and in f64 by the reference: two trained scores
//! closer than f32 rounding could order differently (never seen in these draws); exact ties
//! (equal weights at initialisation) order identically.

use kernels_ir::DType;
use kernels_ir::pattern::Pst;
use proptest::prelude::*;
use sparsecube_runtime::selftest::{PstCase, check_pst};
use sparsecube_tests::{proptest_config, wgpu_or_skip};

fn case(dtype: DType) -> impl Strategy<Value = PstCase> {
    (
        1usize..50,
        1usize..80,
        1usize..80,
        prop::sample::select(vec![0.0, 0.3, 0.9]),
        1usize..9,
        1usize..9,
        any::<[bool; 2]>(),
        any::<u64>(),
    )
        .prop_map(
            move |(t, n_in, n_out, sparsity, rank, mask_rank, [at_init, ties], seed)| PstCase {
                t,
                n_in,
                n_out,
                pst: Pst {
                    sparsity,
                    rank,
                    mask_rank,
                    ..Pst::default()
                },
                at_init,
                ties,
                dtype,
                seed,
            },
        )
}

/// The same comparison `sparsecube selftest` runs on a GPU.
fn check(c: &PstCase) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("pst kernels") else {
        return Ok(());
    };
    let report = check_pst(&device, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

// Every case specialises the kernels to its sizes and ranks (a fresh lavapipe compile), so the
// draws are fewer than for the other families.
proptest! {
    #![proptest_config(proptest_config(8))]

    #[test]
    fn pst_kernels_match_reference_f32(c in case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(4))]

    /// Half storage (f16; bf16 is held as f32 on wgpu), f32 accumulation.
    #[test]
    fn pst_kernels_match_reference_half(c in case(DType::F16)) {
        check(&c)?;
    }
}

/// Past one tile and one selection chunk, with alpha/beta off their defaults: 200 × 90 weights
/// at 90 % sparsity, at initialisation on the tie grid (many scores equal to the k-th) and
/// trained.
#[test]
fn layer_past_one_tile_and_one_chunk_matches_reference() {
    for at_init in [true, false] {
        let c = PstCase {
            t: 70,
            n_in: 90,
            n_out: 200,
            pst: Pst {
                alpha1: 0.5,
                alpha2: 2.0,
                beta: 1.5,
                ..Pst::default()
            },
            at_init,
            ties: at_init,
            dtype: DType::F32,
            seed: 8,
        };
        check(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
}
