//! SaRA kernels on wgpu (lavapipe in CI) against the reference executor, on random shapes: the
//! mask selected on the device (ratio by an exact k-th value radix select, or a threshold),
//! identical to the reference's including ties at the k-th value and at the threshold, nnz = 0
//! and nnz = all; y, v, dx, dv and dbias; and the memory claim: the backward holds no
//! [out, in] float buffer.

use kernels_ir::DType;
use kernels_ir::pattern::SaraSelect;
use proptest::prelude::*;
use sparsecube_runtime::bench::{Backward, backward_allocation};
use sparsecube_runtime::selftest::{SaraCase, check_sara};
use sparsecube_tests::{proptest_config, wgpu_or_skip};

fn case(dtype: DType) -> impl Strategy<Value = SaraCase> {
    (
        1usize..60,
        1usize..90,
        1usize..90,
        0usize..6,
        any::<[bool; 2]>(),
        any::<u64>(),
    )
        .prop_map(move |(t, n_in, n_out, rule, [ties, with_v], seed)| {
            let std = 1.0 / (n_in as f64).sqrt();
            let select = match rule {
                // nnz = 0 and nnz = all.
                0 => SaraSelect::Ratio(1e-9),
                1 => SaraSelect::Ratio(1.0),
                2 => SaraSelect::Ratio(0.1),
                3 => SaraSelect::Ratio(0.37),
                // On the tie grid (multiples of std/8) the threshold std/4 is itself a weight
                // value: |w| = threshold must stay unselected.
                4 => SaraSelect::Threshold(std / 4.0),
                _ => SaraSelect::Threshold(2e-3),
            };
            SaraCase {
                t,
                n_in,
                n_out,
                select,
                ties,
                with_v,
                dtype,
                seed,
            }
        })
}

/// The same comparison `sparsecube selftest` runs on a GPU.
fn check(c: &SaraCase) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("sara kernels") else {
        return Ok(());
    };
    let report = check_sara(&device, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn sara_kernels_match_reference_f32(c in case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(8))]

    /// Half storage (f16; bf16 is held as f32 on wgpu): more ties among the magnitudes.
    #[test]
    fn sara_kernels_match_reference_half(c in case(DType::F16)) {
        check(&c)?;
    }
}

/// More weights than one selection chunk (1024) and one radix pass can tell apart: 300 × 70
/// weights on the tie grid, 10 % kept, so the k-th value is shared by many weights across chunks.
#[test]
fn mask_over_many_chunks_with_ties_matches_reference() {
    for select in [
        SaraSelect::Ratio(0.1),
        SaraSelect::Threshold(0.5 / 70f64.sqrt()),
    ] {
        let c = SaraCase {
            t: 9,
            n_in: 70,
            n_out: 300,
            select,
            ties: true,
            with_v: false,
            dtype: DType::F32,
            seed: 21,
        };
        check(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
}

/// The SaRA backward leaves no [out, in] float buffer behind: what it holds when it returns is
/// dx, dbias and the packed dv (measured through the allocator), while the dense backward of the
/// same layer holds its full dw — the measurement sees such a buffer when there is one.
#[test]
fn sara_backward_holds_no_dense_weight_gradient() {
    let Some(device) = wgpu_or_skip("sara backward allocation") else {
        return;
    };
    let (t, n_in, n_out, ratio) = (8usize, 512usize, 384usize, 0.1);
    let full = (n_in * n_out * 4) as u64;
    let nnz = (ratio * (n_in * n_out) as f64).floor() as u64;
    let sara = backward_allocation(&device, Backward::Sara, (t, n_in, n_out), ratio, 1).unwrap();
    let dense = backward_allocation(&device, Backward::Dense, (t, n_in, n_out), ratio, 1).unwrap();
    let outputs = 4 * ((t * n_in + n_out) as u64 + nnz);
    println!(
        "backward holds: SaRA {sara} B (dx + dbias + dv = {outputs} B), dense {dense} B, dw {full} B"
    );
    assert!(
        sara < full / 2,
        "SaRA backward holds {sara} B, an [out, in] f32 buffer is {full} B"
    );
    assert!(
        sara <= outputs + 64 * 1024,
        "SaRA backward holds {sara} B; dx + dbias + dv are {outputs} B"
    );
    assert!(
        dense >= full,
        "dense backward holds {dense} B, less than its dw ({full} B): the measurement is blind"
    );
}

/// The sparse AdamW on the device against the reference's f64 step, over several steps (bias
/// corrections change with the step), with weight decay: values and both moments.
#[test]
fn sparse_adamw_matches_reference() {
    use kernels_ir::reference::rng::SplitMix64;
    use kernels_ir::reference::sara::{AdamW as RefAdamW, adamw_step};
    use sparsecube_codegen::sara::AdamW;
    use sparsecube_runtime::optim::{AdamState, sparse_adamw};
    let Some(device) = wgpu_or_skip("sparse adamw") else {
        return;
    };
    let mut rng = SplitMix64::new(4);
    let n = 1000;
    let mut draw = |s: f64| -> Vec<f32> { (0..n).map(|_| (s * rng.normal()) as f32).collect() };
    let state = AdamState {
        v: draw(0.05),
        m: vec![0.0; n],
        s: vec![0.0; n],
    };
    let grads: Vec<Vec<f32>> = (0..5).map(|_| draw(1.0)).collect();
    let h = RefAdamW {
        lr: RefAdamW::sara_lr(2e-3),
        ..RefAdamW::default()
    };
    let got = sparse_adamw(
        &device,
        &state,
        &grads,
        1,
        &AdamW {
            lr: h.lr,
            beta1: h.beta1,
            beta2: h.beta2,
            eps: h.eps,
            weight_decay: h.weight_decay,
        },
    )
    .unwrap();
    let wide = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    let (mut v, mut m, mut s) = (wide(&state.v), wide(&state.m), wide(&state.s));
    for (i, g) in grads.iter().enumerate() {
        adamw_step(&mut v, &wide(g), &mut m, &mut s, i as u32 + 1, &h);
    }
    for (name, got, want) in [("v", &got.v, &v), ("m", &got.m, &m), ("s", &got.s, &s)] {
        let err = sparsecube_runtime::selftest::rel_err(&wide(got), want, 1e-12);
        assert!(err <= 1e-5, "{name}: {err:.3e}");
    }
}
