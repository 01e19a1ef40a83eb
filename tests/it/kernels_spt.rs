//! SPT attention kernels on wgpu (lavapipe in CI) against the reference executor, on random
//! shapes: L not a multiple of any tile, topk not a power of two, causal rows with fewer than topk
//! candidates, D ∈ {16, 32, 64}, both selectors, clamp on and off, fused and unfused forward,
//! f32, f16 and bf16 storage.

use kernels_ir::reference::{TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec};
use proptest::prelude::*;
use sparsecube_runtime::selftest::{EncodeCase, SptCase, check_dense, check_encode, check_spt};
use sparsecube_tests::{proptest_config, wgpu_or_skip};

/// L up to 150: several chunks of the key-major index (64 query rows each), rarely a multiple of
/// any tile; topk not a power of two in most draws, causal rows with fewer than topk candidates.
fn case(dtype: DType) -> impl Strategy<Value = SptCase> {
    (
        1usize..3,
        1usize..3,
        1usize..151,
        prop::sample::select(vec![16usize, 32, 64]),
        0usize..1000,
        any::<[bool; 4]>(),
        any::<u64>(),
    )
        .prop_map(
            move |(b, h, l, d, t, [causal, clamp, adc, fused], seed)| SptCase {
                b,
                h,
                l,
                d,
                topk: 1 + t % l.min(13),
                causal,
                clamp,
                adc,
                fused,
                block: 1,
                dtype,
                seed,
            },
        )
}

fn spec(c: &SptCase, direction: Direction) -> KernelSpec {
    c.spec(direction).unwrap()
}

fn inputs(c: &SptCase) -> TensorMap {
    c.inputs()
}

/// The same comparison `sparsecube selftest` runs on a GPU: indices exactly, values and
/// gradients within 1e-5 (f32) / 1e-2 (half storage).
fn check(c: &SptCase) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("spt kernels") else {
        return Ok(());
    };
    let report = check_spt(&device, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn spt_kernels_match_reference_f32(c in case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(8))]

    /// Half-precision storage, f32 accumulation.
    #[test]
    fn spt_kernels_match_reference_f16(c in case(DType::F16)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(8))]

    /// bf16 storage. WGSL has no bf16: on wgpu the runtime holds the bf16 values as f32 on the
    /// device and rounds the outputs to bf16, so this checks that path; native bf16 kernels run
    /// on CUDA (`sparsecube selftest --device cuda`).
    #[test]
    fn spt_kernels_match_reference_bf16(c in case(DType::BF16)) {
        check(&c)?;
    }
}

/// Block-granular selection (METHODS.md §7): G ∈ {16, 32}, L up to 150 (a ragged last block in
/// most draws, a single block in some), topk up to L (kb = ⌈topk / G⌉ up to every block), causal
/// rows whose diagonal block is always kept.
fn block_case(dtype: DType) -> impl Strategy<Value = SptCase> {
    (
        case(dtype),
        prop::sample::select(vec![16usize, 32]),
        any::<u16>(),
    )
        .prop_map(|(c, block, t)| SptCase {
            block,
            topk: 1 + t as usize % c.l,
            ..c
        })
}

proptest! {
    #![proptest_config(proptest_config(16))]

    /// Kept blocks identical to the reference's, out and gradients within 1e-5.
    #[test]
    fn spt_blocks_match_reference_f32(c in block_case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(6))]

    /// Half storage (f16, and bf16 held as f32 on wgpu), f32 accumulation: within 1e-2.
    #[test]
    fn spt_blocks_match_reference_half(
        c in block_case(DType::F16),
        bf16 in any::<bool>(),
    ) {
        let dtype = if bf16 { DType::BF16 } else { DType::F16 };
        check(&SptCase { dtype, ..c })?;
    }
}

proptest! {
    #![proptest_config(proptest_config(16))]

    /// `pq-encode` on its own (the attention chain's encoding kernel): codes equal the
    /// reference's exactly, f32 and f16 (rows are noisy copies of codewords: no near-ties).
    #[test]
    fn pq_encode_matches_reference(
        n in 1usize..300,
        sub_dim in prop::sample::select(vec![4usize, 8, 16]),
        subspaces in 1usize..9,
        codewords in 2usize..33,
        half in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let Some(device) = wgpu_or_skip("pq-encode") else { return Ok(()) };
        let dtype = if half { DType::F16 } else { DType::F32 };
        let case = EncodeCase { n, subspaces, sub_dim, codewords, dtype, seed };
        let report = check_encode(&device, &case).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(report.passed(), "{}", report);
    }
}

proptest! {
    #![proptest_config(proptest_config(12))]

    /// The dense baseline equals the reference with every candidate kept (topk = L).
    #[test]
    fn dense_baseline_matches_reference_with_topk_l(c in case(DType::F32)) {
        let Some(device) = wgpu_or_skip("dense baseline") else { return Ok(()) };
        let report = check_dense(&device, &c).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(report.passed(), "{}", report);
    }
}

#[test]
fn dense_baseline_rejects_missing_or_misshapen_inputs() {
    let Some(device) = wgpu_or_skip("dense baseline inputs") else {
        return;
    };
    let c = SptCase {
        b: 1,
        h: 1,
        l: 4,
        d: 16,
        topk: 4,
        causal: false,
        clamp: false,
        adc: false,
        fused: true,
        block: 1,
        dtype: DType::F32,
        seed: 2,
    };
    let spec = spec(&c, Direction::Forward);
    let mut ins = inputs(&c);
    ins.remove("dout");
    let err = sparsecube_runtime::dense_attention(&device, &spec, &ins)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "missing tensor `dout` for spt-attention: expected shape [1, 1, 4, 16]"
    );
    ins.insert(
        "dout".into(),
        Value::F(kernels_ir::reference::Tensor::zeros(&[1, 1, 3, 16])),
    );
    let err = sparsecube_runtime::dense_attention(&device, &spec, &ins)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tensor `dout` has shape [1, 1, 3, 16], expected [1, 1, 4, 16]"
    );
}

/// Rows long enough that one invocation of the earlier one-unit-per-head key index (L·topk ≥
/// 32 256) and one-unit-per-row dense kernels (L = 1100, D = 64) passed lavapipe's cap of about
/// 65 535 loop iterations per invocation and silently returned wrong values; the chunked index and
/// the plane-per-row kernels stay far below it.
#[test]
fn long_rows_match_the_reference() {
    let Some(device) = wgpu_or_skip("long rows") else {
        return;
    };
    let sparse = SptCase {
        b: 1,
        h: 1,
        l: 512,
        d: 64,
        topk: 64,
        causal: false,
        clamp: false,
        adc: true,
        fused: true,
        block: 1,
        dtype: DType::F32,
        seed: 3,
    };
    let report = check_spt(&device, &sparse).unwrap();
    assert!(report.passed(), "{report}");
    let dense = SptCase {
        l: 1100,
        adc: false,
        ..sparse
    };
    let report = check_dense(&device, &dense).unwrap();
    assert!(report.passed(), "{report}");
}
