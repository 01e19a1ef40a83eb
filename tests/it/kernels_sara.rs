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

/// Progressive re-masking on the device: the new mask is the reference's mask of the current
/// effective weight (trained values in place), the packed values are read from it, and the
/// moments of surviving positions are carried over exactly (new positions start at zero).
#[test]
fn progressive_remask_carries_the_state_of_surviving_positions() {
    use kernels_ir::reference::Tensor;
    use kernels_ir::reference::rng::SplitMix64;
    use kernels_ir::reference::sara::{effective_weight, mask};
    use sparsecube_runtime::optim::{AdamState, SaraSet, sara_remask};
    use std::collections::HashMap;
    let Some(device) = wgpu_or_skip("sara remask") else {
        return;
    };
    let (o, i) = (37usize, 53usize);
    let mut rng = SplitMix64::new(12);
    let round = |t: Tensor| Tensor {
        data: t.data.iter().map(|&x| f64::from(x as f32)).collect(),
        ..t
    };
    let w = round(rng.normal_tensor(&[o, i], 0.1));
    let rule = SaraSelect::Ratio(0.2);
    let old_index = mask(&w, rule);
    let n = old_index.len();
    let draw = |rng: &mut SplitMix64, s: f64| -> Vec<f32> {
        (0..n).map(|_| (s * rng.normal()) as f32).collect()
    };
    // Training moved the retrained values (some grew past their neighbours: they leave the mask).
    let old = SaraSet {
        index: old_index.iter().map(|&f| f as u32).collect(),
        state: AdamState {
            v: draw(&mut rng, 0.1),
            m: draw(&mut rng, 1.0),
            s: draw(&mut rng, 1.0).iter().map(|x| x.abs()).collect(),
        },
    };
    let v64: Vec<f64> = old.state.v.iter().map(|&x| f64::from(x)).collect();
    let w_eff = effective_weight(&w, &old_index, &v64);
    let w32: Vec<f32> = w_eff.data.iter().map(|&x| x as f32).collect();
    let got = sara_remask(&device, &w32, [o, i], rule, &old).unwrap();

    let want_index = mask(&w_eff, rule);
    let got_index: Vec<usize> = got.index.iter().map(|&f| f as usize).collect();
    assert_eq!(got_index, want_index);
    let carried: HashMap<usize, (f32, f32)> = old_index
        .iter()
        .enumerate()
        .map(|(j, &f)| (f, (old.state.m[j], old.state.s[j])))
        .collect();
    let (mut survived, mut fresh) = (0, 0);
    for (j, &f) in want_index.iter().enumerate() {
        assert_eq!(got.state.v[j], w32[f], "v at flat {f}");
        let (m, s) = carried.get(&f).copied().unwrap_or((0.0, 0.0));
        if carried.contains_key(&f) {
            survived += 1;
        } else {
            fresh += 1;
        }
        assert_eq!(
            (got.state.m[j], got.state.s[j]),
            (m, s),
            "moments at flat {f}"
        );
    }
    assert!(
        survived > 0 && fresh > 0,
        "{survived} survived, {fresh} new"
    );
}
