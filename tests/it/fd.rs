//! Every backward of the reference executor against central finite differences in f64, on
//! random shapes. Selections (kept keys, routed blocks, masks, kept concepts) are held at their
//! value for the unperturbed inputs, since METHODS.md does not differentiate them; PST's
//! straight-through gradients are checked against the surrogate whose true gradient they are.

use kernels_ir::pattern::{
    Activation, GateMode, MonarchShape, PqTopK, Pst, Routed, Router, SaraSelect, Selector, TopK,
};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{Tensor, cbm, dense, monarch, nm, pst, routed, sara, spt};
use proptest::prelude::*;
use sparsecube_tests::{FD_STEP, FD_TOL, dot, numeric_grad, proptest_config, randn, rel_err};

#[track_caller]
fn check(analytic: &Tensor, numeric: &[f64], what: &str) -> Result<(), TestCaseError> {
    let err = rel_err(&analytic.data, numeric, 1.0);
    prop_assert!(
        err < FD_TOL,
        "{}: relative error {:.3e} against finite differences",
        what,
        err
    );
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(64))]

    #[test]
    fn spt_attention_backward(
        b in 1usize..3, h in 1usize..3, l in 1usize..8, s in 1usize..3, frac in 0.0f64..1.0,
        causal: bool, clamp: bool, adc: bool, seed: u64,
    ) {
        let d = 8 * s;
        let topk = 1 + (frac * l as f64) as usize % l;
        let mut rng = SplitMix64::new(seed);
        // With clamp on, scale the inputs so that some scores pass ±10.
        let std = if clamp { 3.0 } else { 1.0 };
        let (q, k, v) = (randn(&mut rng, &[b, h, l, d], std), randn(&mut rng, &[b, h, l, d], std), randn(&mut rng, &[b, h, l, d], 1.0));
        let dout = randn(&mut rng, &[b, h, l, d], 1.0);
        let cb = randn(&mut rng, &[s, 16, 8], 1.0);
        let selector = if adc { Selector::PqAdc } else { Selector::PqMatch };
        let p = PqTopK { topk: TopK::Fixed(topk), causal, clamp, selector, ..PqTopK::default() };
        let idx = spt::select(&q, &k, &cb, &p, topk);
        let (dq, dk, dv) = spt::attention_backward(&q, &k, &v, &idx, &dout, clamp);
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| dot(&spt::attention_forward(q, k, v, &idx, clamp).0, &dout);
        check(&dq, &numeric_grad(&q, FD_STEP, |t| loss(t, &k, &v)), "dq")?;
        check(&dk, &numeric_grad(&k, FD_STEP, |t| loss(&q, t, &v)), "dk")?;
        check(&dv, &numeric_grad(&v, FD_STEP, |t| loss(&q, &k, t)), "dv")?;
    }

    #[test]
    fn routed_ffn_backward(
        t in 1usize..5, dm in 1usize..5, blocks in prop::sample::select(vec![1usize, 2, 4]), bs in 1usize..3,
        top_pick in 0usize..4, gate in 0usize..3, gelu: bool, softmax: bool, scale in 0.5f64..3.0, seed: u64,
    ) {
        let top = 1 + top_pick % blocks;
        let dff = blocks * bs;
        let mut rng = SplitMix64::new(seed);
        let x = randn(&mut rng, &[t, dm], 1.0);
        let (w1, b1, w2, b2) = (randn(&mut rng, &[dff, dm], 1.0), randn(&mut rng, &[dff], 1.0), randn(&mut rng, &[dm, dff], 1.0), randn(&mut rng, &[dm], 1.0));
        let (wr, br) = (randn(&mut rng, &[blocks, dm], 1.0), randn(&mut rng, &[blocks], 1.0));
        let dy = randn(&mut rng, &[t, dm], 1.0);
        let r = Routed {
            blocks, top, gate_scale: scale,
            gate: [GateMode::Output, GateMode::None, GateMode::SptLora][gate],
            act: if gelu { Activation::Gelu } else { Activation::Relu },
            router: if softmax { Router::Softmax } else { Router::Sigmoid },
        };
        let w = routed::RoutedWeights { w1: &w1, b1: &b1, w2: &w2, b2: &b2, wr: &wr, br: &br };
        let kept = routed::route(&routed::gates(&x, &w, &r), top);
        let g = routed::backward(&x, &w, &kept, &dy, &r);
        let loss = |x: &Tensor, w: &routed::RoutedWeights<'_>| dot(&routed::forward(x, w, &kept, &r), &dy);
        check(&g.dx, &numeric_grad(&x, FD_STEP, |p| loss(p, &w)), "dx")?;
        check(&g.dw1, &numeric_grad(&w1, FD_STEP, |p| loss(&x, &routed::RoutedWeights { w1: p, ..w.clone() })), "dw1")?;
        check(&g.db1, &numeric_grad(&b1, FD_STEP, |p| loss(&x, &routed::RoutedWeights { b1: p, ..w.clone() })), "db1")?;
        check(&g.dw2, &numeric_grad(&w2, FD_STEP, |p| loss(&x, &routed::RoutedWeights { w2: p, ..w.clone() })), "dw2")?;
        check(&g.db2, &numeric_grad(&b2, FD_STEP, |p| loss(&x, &routed::RoutedWeights { b2: p, ..w.clone() })), "db2")?;
        check(&g.dwr, &numeric_grad(&wr, FD_STEP, |p| loss(&x, &routed::RoutedWeights { wr: p, ..w.clone() })), "dwr")?;
        check(&g.dbr, &numeric_grad(&br, FD_STEP, |p| loss(&x, &routed::RoutedWeights { br: p, ..w.clone() })), "dbr")?;
    }

    #[test]
    fn monarch_backward(k in 1usize..4, q in 1usize..4, p in 1usize..4, s in 1usize..4, pick in 0usize..8, n in 1usize..4, seed: u64) {
        let inner = k * q;
        let divisors: Vec<usize> = (1..=inner).filter(|l| inner % l == 0).collect();
        let l = divisors[pick % divisors.len()];
        let m = MonarchShape { k, q, p, l, s, r: inner / l };
        let mut rng = SplitMix64::new(seed);
        let x = randn(&mut rng, &[n, m.n_in()], 1.0);
        let (w1, w2) = (randn(&mut rng, &[k, q, p], 1.0), randn(&mut rng, &[l, s, m.r], 1.0));
        let dy = randn(&mut rng, &[n, m.n_out()], 1.0);
        let (dx, dw1, dw2) = monarch::backward(&x, &w1, &w2, &dy, &m);
        check(&dx, &numeric_grad(&x, FD_STEP, |t| dot(&monarch::forward(t, &w1, &w2, &m), &dy)), "dx")?;
        check(&dw1, &numeric_grad(&w1, FD_STEP, |t| dot(&monarch::forward(&x, t, &w2, &m), &dy)), "dw1")?;
        check(&dw2, &numeric_grad(&w2, FD_STEP, |t| dot(&monarch::forward(&x, &w1, t, &m), &dy)), "dw2")?;
    }

    #[test]
    fn block_diagonal_backward(nb in 1usize..4, qo in 1usize..4, pi in 1usize..4, n in 1usize..4, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let x = randn(&mut rng, &[n, nb * pi], 1.0);
        let w = randn(&mut rng, &[nb, qo, pi], 1.0);
        let dy = randn(&mut rng, &[n, nb * qo], 1.0);
        let (dx, dw) = monarch::block_diag_backward(&x, &w, &dy);
        check(&dx, &numeric_grad(&x, FD_STEP, |t| dot(&monarch::block_diag_forward(t, &w), &dy)), "dx")?;
        check(&dw, &numeric_grad(&w, FD_STEP, |t| dot(&monarch::block_diag_forward(&x, t), &dy)), "dw")?;
    }

    #[test]
    fn sara_backward(t in 1usize..5, i_n in 1usize..6, o_n in 1usize..6, ratio in 0.05f64..1.0, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let (x, w, b, dy) = (randn(&mut rng, &[t, i_n], 1.0), randn(&mut rng, &[o_n, i_n], 1.0), randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[t, o_n], 1.0));
        let mask = sara::mask(&w, SaraSelect::Ratio(ratio));
        let v = randn(&mut rng, &[mask.len()], 1.0);
        let (dx, dv, db) = sara::backward(&x, &w, &mask, &v.data, &dy);
        check(&dx, &numeric_grad(&x, FD_STEP, |p| dot(&sara::forward(p, &w, &b, &mask, &v.data), &dy)), "dx")?;
        check(&dv, &numeric_grad(&v, FD_STEP, |p| dot(&sara::forward(&x, &w, &b, &mask, &p.data), &dy)), "dv")?;
        check(&db, &numeric_grad(&b, FD_STEP, |p| dot(&sara::forward(&x, &w, p, &mask, &v.data), &dy)), "dbias")?;
    }

    #[test]
    fn nm_backward(t in 1usize..5, groups in 1usize..3, o_n in 1usize..5, pick in 0usize..3, seed: u64) {
        let (n, m) = [(2, 4), (1, 2), (3, 4)][pick];
        let i_n = groups * m;
        let mut rng = SplitMix64::new(seed);
        let (x, w, b, dy) = (randn(&mut rng, &[t, i_n], 1.0), randn(&mut rng, &[o_n, i_n], 1.0), randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[t, o_n], 1.0));
        let mask = nm::mask(&w, n, m);
        let v = randn(&mut rng, &[mask.len()], 1.0);
        let (dx, dv, db) = nm::backward(&x, &w, &mask, &v.data, &dy);
        check(&dx, &numeric_grad(&x, FD_STEP, |p| dot(&nm::forward(p, &w, &b, &mask, &v.data), &dy)), "dx")?;
        check(&dv, &numeric_grad(&v, FD_STEP, |p| dot(&nm::forward(&x, &w, &b, &mask, &p.data), &dy)), "dv")?;
        check(&db, &numeric_grad(&b, FD_STEP, |p| dot(&nm::forward(&x, &w, p, &mask, &v.data), &dy)), "dbias")?;
    }

    #[test]
    fn pst_straight_through_backward(
        t in 1usize..4, i_n in 1usize..5, o_n in 1usize..5, r in 1usize..3, rm in 1usize..3,
        sparsity in 0.0f64..0.95, a1 in -2.0f64..2.0, a2 in -2.0f64..2.0, beta in -2.0f64..2.0, seed: u64,
    ) {
        let mut rng = SplitMix64::new(seed);
        let x = randn(&mut rng, &[t, i_n], 1.0);
        let (w, b, dy) = (randn(&mut rng, &[o_n, i_n], 1.0), randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[t, o_n], 1.0));
        let ps: Vec<Tensor> = [[o_n, r], [r, i_n], [o_n, rm], [rm, i_n]].iter().map(|s| randn(&mut rng, s, 1.0)).collect();
        let (mr, mc) = (randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[i_n], 1.0));
        let p = Pst { sparsity, alpha1: a1, alpha2: a2, beta, ..Pst::default() };
        let weights = |u: &Tensor, v: &Tensor, ma: &Tensor, mb: &Tensor, mr: &Tensor, mc: &Tensor| -> (Tensor, Tensor) {
            pst::weight_and_score(&pst::PstWeights { w: &w, u, v, ma, mb, mr, mc }, &p)
        };
        let (wp0, s0) = weights(&ps[0], &ps[1], &ps[2], &ps[3], &mr, &mc);
        let m0 = pst::mask(&s0, sparsity);
        let pw = pst::PstWeights { w: &w, u: &ps[0], v: &ps[1], ma: &ps[2], mb: &ps[3], mr: &mr, mc: &mc };
        let g = pst::backward(&x, &pw, &m0, &dy, &p);
        // The straight-through surrogate: y = x·((M0 + S − S0) ⊙ W')ᵀ + b. At the unperturbed
        // point it equals the forward; its true gradient is the straight-through estimator.
        let surrogate = |u: &Tensor, v: &Tensor, ma: &Tensor, mb: &Tensor, mr: &Tensor, mc: &Tensor| -> f64 {
            let (wp, s) = weights(u, v, ma, mb, mr, mc);
            let soft = Tensor { shape: s.shape.clone(), data: (0..s.numel()).map(|f| m0.data[f] + s.data[f] - s0.data[f]).collect() };
            dot(&pst::forward_with_mask(&x, &b, &wp, &soft), &dy)
        };
        check(&g.dx, &numeric_grad(&x, FD_STEP, |p| dot(&pst::forward_with_mask(p, &b, &wp0, &m0), &dy)), "dx")?;
        check(&g.dbias, &numeric_grad(&b, FD_STEP, |p| dot(&pst::forward_with_mask(&x, p, &wp0, &m0), &dy)), "dbias")?;
        check(&g.du, &numeric_grad(&ps[0], FD_STEP, |t| surrogate(t, &ps[1], &ps[2], &ps[3], &mr, &mc)), "du")?;
        check(&g.dv, &numeric_grad(&ps[1], FD_STEP, |t| surrogate(&ps[0], t, &ps[2], &ps[3], &mr, &mc)), "dv")?;
        check(&g.dma, &numeric_grad(&ps[2], FD_STEP, |t| surrogate(&ps[0], &ps[1], t, &ps[3], &mr, &mc)), "dma")?;
        check(&g.dmb, &numeric_grad(&ps[3], FD_STEP, |t| surrogate(&ps[0], &ps[1], &ps[2], t, &mr, &mc)), "dmb")?;
        check(&g.dmr, &numeric_grad(&mr, FD_STEP, |t| surrogate(&ps[0], &ps[1], &ps[2], &ps[3], t, &mc)), "dmr")?;
        check(&g.dmc, &numeric_grad(&mc, FD_STEP, |t| surrogate(&ps[0], &ps[1], &ps[2], &ps[3], &mr, t)), "dmc")?;
    }

    #[test]
    fn cbm_head_backward(b in 1usize..4, c in 1usize..6, k in 1usize..4, topk_pick in 0usize..6, noisy: bool, seed: u64) {
        let topk = topk_pick % (c + 1);
        let mut rng = SplitMix64::new(seed);
        let (x, wc, wh) = (randn(&mut rng, &[b, c], 1.0), randn(&mut rng, &[c, c], 1.0), randn(&mut rng, &[k, c], 1.0));
        let noise = randn(&mut rng, &[b, c], 1.0);
        let dl = randn(&mut rng, &[b, k], 1.0);
        let (_, keep, _) = cbm::forward(&x, &wc, &wh, noisy.then_some(&noise), topk);
        let (dx, dwc, dwh) = cbm::backward(&x, &wc, &wh, &keep, &dl);
        // logits for a fixed gate: (keep ⊙ x·wcᵀ)·whᵀ, via the dense head (topk 0) on masked wc rows
        let logits = |x: &Tensor, wc: &Tensor, wh: &Tensor| -> f64 {
            let (z, _, _) = cbm::forward(x, wc, wh, None, 0);
            let zs = Tensor { shape: z.shape.clone(), data: z.data.iter().zip(&keep.data).map(|(a, m)| a * m).collect() };
            let zero = Tensor::zeros(&[k]);
            dot(&dense::linear_forward(&zs, wh, &zero), &dl)
        };
        check(&dx, &numeric_grad(&x, FD_STEP, |t| logits(t, &wc, &wh)), "dx")?;
        check(&dwc, &numeric_grad(&wc, FD_STEP, |t| logits(&x, t, &wh)), "dwc")?;
        check(&dwh, &numeric_grad(&wh, FD_STEP, |t| logits(&x, &wc, t)), "dwh")?;
    }

    #[test]
    fn dense_linear_backward(t in 1usize..5, i_n in 1usize..6, o_n in 1usize..6, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let (x, w, b, dy) = (randn(&mut rng, &[t, i_n], 1.0), randn(&mut rng, &[o_n, i_n], 1.0), randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[t, o_n], 1.0));
        let (dx, dw, db) = dense::linear_backward(&x, &w, &dy);
        check(&dx, &numeric_grad(&x, FD_STEP, |p| dot(&dense::linear_forward(p, &w, &b), &dy)), "dx")?;
        check(&dw, &numeric_grad(&w, FD_STEP, |p| dot(&dense::linear_forward(&x, p, &b), &dy)), "dw")?;
        check(&db, &numeric_grad(&b, FD_STEP, |p| dot(&dense::linear_forward(&x, &w, p), &dy)), "dbias")?;
    }
}

/// SaRA's optimizer pieces: AdamW matches PyTorch's update written out for one step, and the
/// nuclear-norm subgradient is U·Vᵀ at the mask (checked on a diagonal Z, whose SVD is known).
#[test]
fn sara_adamw_step_and_nuclear_subgradient() {
    let h = sara::AdamW::default();
    let (mut v, dv) = (vec![1.0, -2.0], vec![0.5, 0.0]);
    let (mut m, mut s) = (vec![0.0; 2], vec![0.0; 2]);
    sara::adamw_step(&mut v, &dv, &mut m, &mut s, 1, &h);
    // step 1: m̂ = g, ŝ = g² → update lr·g/(|g| + eps) = lr·sign(g) (for g ≠ 0), after decay.
    let decayed = 1.0 * (1.0 - h.lr * h.weight_decay);
    assert!((v[0] - (decayed - h.lr * 0.5 / (0.5 + h.eps))).abs() < 1e-15);
    assert!((v[1] - (-2.0 * (1.0 - h.lr * h.weight_decay))).abs() < 1e-15);
    assert!((sara::AdamW::sara_lr(2e-3) - 1e-3 * (-0.7f64).exp()).abs() < 1e-18);
    // Z = diag(3, -2) on a 2×3 weight, mask = the two diagonal entries plus one zero entry:
    // Z = U Σ Vᵀ with U = I, V = diag(1, -1) columns → U·Vᵀ = diag(1, -1), 0 elsewhere.
    let g = sara::nuclear_subgradient([2, 3], &[0, 2, 4], &[3.0, 0.0, -2.0]).unwrap();
    assert!(
        (g[0] - 1.0).abs() < 1e-12 && g[1].abs() < 1e-12 && (g[2] + 1.0).abs() < 1e-12,
        "{g:?}"
    );
}
