//! SPT attention kernels on wgpu (lavapipe in CI) against the reference executor, on random
//! shapes: L not a multiple of any tile, topk not a power of two, causal rows with fewer than topk
//! candidates, D ∈ {16, 32, 64}, both selectors, clamp on and off, f32 and bf16 storage.

use kernels_ir::pattern::{Pattern, PqTopK, Selector, TopK};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{self, TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec, OpKind, Schedule};
use proptest::prelude::*;
use sparsecube_tests::{proptest_config, randn, rel_err, round_to, wgpu_or_skip};

#[derive(Debug)]
struct Case {
    b: usize,
    h: usize,
    l: usize,
    d: usize,
    topk: usize,
    causal: bool,
    clamp: bool,
    adc: bool,
    /// Fused forward kernel, or the unfused SDDMM → softmax → SpMM chain.
    fused: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..3,
        1usize..41,
        prop::sample::select(vec![16usize, 32, 64]),
        0usize..1000,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(b, h, l, d, t, causal, clamp, adc, fused, seed)| Case {
            b,
            h,
            l,
            d,
            topk: 1 + t % l.min(13),
            causal,
            clamp,
            adc,
            fused,
            seed,
        })
}

fn spec(c: &Case, dtype: DType, direction: Direction) -> KernelSpec {
    let selector = if c.adc {
        Selector::PqAdc
    } else {
        Selector::PqMatch
    };
    KernelSpec::builder("spt", OpKind::SptAttention)
        .dims([("B", c.b), ("H", c.h), ("L", c.l), ("D", c.d)])
        .pattern(Pattern::PqTopK(PqTopK {
            topk: TopK::Fixed(c.topk),
            causal: c.causal,
            clamp: c.clamp,
            selector,
            ..PqTopK::default()
        }))
        .dtype(dtype)
        .direction(direction)
        .schedule(Schedule {
            fused: c.fused,
            ..Schedule::default()
        })
        .build()
        .unwrap()
}

fn inputs(c: &Case, dtype: DType) -> TensorMap {
    let mut rng = SplitMix64::new(c.seed);
    let shape = [c.b, c.h, c.l, c.d];
    // With clamp on, scale q and k so that some scores pass ±10.
    let std = if c.clamp { 3.0 } else { 1.0 };
    let mut m = TensorMap::new();
    for (name, s) in [("q", std), ("k", std), ("v", 1.0), ("dout", 1.0)] {
        m.insert(
            name.into(),
            Value::F(round_to(&randn(&mut rng, &shape, s), dtype)),
        );
    }
    m.insert(
        "codebook".into(),
        Value::F(round_to(&randn(&mut rng, &[c.d / 8, 16, 8], std), dtype)),
    );
    m
}

fn floats(m: &TensorMap, name: &str) -> Vec<f64> {
    match &m[name] {
        Value::F(t) => t.data.clone(),
        Value::I(t) => t.data.iter().map(|&v| v as f64).collect(),
    }
}

fn check(c: &Case, dtype: DType, tol: f64) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("spt kernels") else {
        return Ok(());
    };
    let mut ins = inputs(c, dtype);
    let dout = ins.remove("dout").unwrap();
    let fwd = spec(c, dtype, Direction::Forward);
    let want = reference::run(&fwd, &ins).unwrap();
    let got = sparsecube_runtime::run(&device, &fwd, &ins)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        floats(&got, "indices"),
        floats(&want, "indices"),
        "selected indices differ"
    );
    let err = rel_err(&floats(&got, "out"), &floats(&want, "out"), 1e-12);
    prop_assert!(err <= tol, "out: relative error {:.3e} > {:.0e}", err, tol);

    ins.insert("dout".into(), dout);
    let bwd = spec(c, dtype, Direction::Backward);
    let want = reference::run(&bwd, &ins).unwrap();
    let got = sparsecube_runtime::run(&device, &bwd, &ins)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for g in ["dq", "dk", "dv"] {
        let err = rel_err(&floats(&got, g), &floats(&want, g), 1e-12);
        prop_assert!(
            err <= tol,
            "{}: relative error {:.3e} > {:.0e}",
            g,
            err,
            tol
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn spt_kernels_match_reference_f32(c in case()) {
        check(&c, DType::F32, 1e-5)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(8))]

    /// Half-precision storage, f32 accumulation. WGSL stores f16 (not bf16); bf16 runs on CUDA.
    #[test]
    fn spt_kernels_match_reference_f16(c in case()) {
        check(&c, DType::F16, 1e-2)?;
    }
}

#[test]
fn bf16_on_wgpu_is_a_clear_error() {
    let Some(device) = wgpu_or_skip("bf16_on_wgpu") else {
        return;
    };
    let c = Case {
        b: 1,
        h: 1,
        l: 4,
        d: 16,
        topk: 2,
        causal: false,
        clamp: false,
        adc: false,
        fused: true,
        seed: 1,
    };
    let err = sparsecube_runtime::run(
        &device,
        &spec(&c, DType::BF16, Direction::Backward),
        &inputs(&c, DType::BF16),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "device `wgpu` is not available: this adapter cannot store bf16 (WGSL has no bf16); use f32 or f16"
    );
}

#[test]
fn ops_without_kernels_are_a_clear_error_on_wgpu() {
    let Some(device) = wgpu_or_skip("ops_without_kernels") else {
        return;
    };
    let spec = KernelSpec::builder("m", OpKind::DenseLinear)
        .dims([("T", 1), ("in", 1), ("out", 1)])
        .build()
        .unwrap();
    let mut ins = TensorMap::new();
    for (n, s) in [("x", vec![1, 1]), ("w", vec![1, 1]), ("bias", vec![1])] {
        ins.insert(n.into(), Value::F(kernels_ir::reference::Tensor::zeros(&s)));
    }
    let err = sparsecube_runtime::run(&device, &spec, &ins)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "dense-linear: no generated kernel for the wgpu device yet; run it with --device reference"
    );
}

proptest! {
    #![proptest_config(proptest_config(12))]

    /// The dense baseline equals the reference with every candidate kept (topk = L).
    #[test]
    fn dense_baseline_matches_reference_with_topk_l(c in case()) {
        let Some(device) = wgpu_or_skip("dense baseline") else { return Ok(()) };
        let c = Case { topk: c.l, adc: false, ..c };
        let ins = inputs(&c, DType::F32);
        let mut fwd_ins = ins.clone();
        fwd_ins.remove("dout");
        let want_fwd = reference::run(&spec(&c, DType::F32, Direction::Forward), &fwd_ins).unwrap();
        let want_bwd = reference::run(&spec(&c, DType::F32, Direction::Backward), &ins).unwrap();
        let got = sparsecube_runtime::dense_attention(&device, &spec(&c, DType::F32, Direction::Forward), &ins)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (name, want) in [("out", &want_fwd), ("dq", &want_bwd), ("dk", &want_bwd), ("dv", &want_bwd)] {
            let err = rel_err(&floats(&got, name), &floats(want, name), 1e-12);
            prop_assert!(err <= 1e-5, "{}: relative error {:.3e}", name, err);
        }
    }
}

#[test]
fn dense_baseline_rejects_missing_or_misshapen_inputs() {
    let Some(device) = wgpu_or_skip("dense baseline inputs") else {
        return;
    };
    let c = Case {
        b: 1,
        h: 1,
        l: 4,
        d: 16,
        topk: 4,
        causal: false,
        clamp: false,
        adc: false,
        fused: true,
        seed: 2,
    };
    let spec = spec(&c, DType::F32, Direction::Forward);
    let mut ins = inputs(&c, DType::F32);
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
