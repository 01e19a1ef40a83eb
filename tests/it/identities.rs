//! Identities that tie each sparse op to a dense computation written out independently here.

use kernels_ir::pattern::{
    Activation, GateMode, MonarchShape, PqTopK, Pst, Routed, Router, SaraSelect, TopK,
};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{Tensor, monarch, pst, routed, sara, spt};
use proptest::prelude::*;
use sparsecube_tests::{assert_close, proptest_config, randn, rel_err};

/// Plain softmax attention, optionally causal, per (b, h) slice.
fn dense_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Vec<f64> {
    let (b, h, l, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; q.numel()];
    for bh in 0..b * h {
        for i in 0..l {
            let n = if causal { i + 1 } else { l };
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    scale
                        * (0..d)
                            .map(|t| q.data[(bh * l + i) * d + t] * k.data[(bh * l + j) * d + t])
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for j in 0..n {
                let p = (s[j] - m).exp() / z;
                for t in 0..d {
                    out[(bh * l + i) * d + t] += p * v.data[(bh * l + j) * d + t];
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(proptest_config(64))]

    /// topk = L keeps every candidate: SPT attention is dense (causal) softmax attention.
    #[test]
    fn spt_attention_with_topk_l_is_dense_attention(
        b in 1usize..3, h in 1usize..3, l in 1usize..12, s in 1usize..4, causal: bool, seed: u64,
    ) {
        let d = 8 * s;
        let mut rng = SplitMix64::new(seed);
        let (q, k, v) = (randn(&mut rng, &[b, h, l, d], 1.0), randn(&mut rng, &[b, h, l, d], 1.0), randn(&mut rng, &[b, h, l, d], 1.0));
        let cb = randn(&mut rng, &[s, 16, 8], 1.0);
        let p = PqTopK { topk: TopK::Fixed(l), causal, ..PqTopK::default() };
        let idx = spt::select(&q, &k, &cb, &p, l);
        let (out, _) = spt::attention_forward(&q, &k, &v, &idx, false);
        assert_close(&out.data, &dense_attention(&q, &k, &v, causal), 1e-12, "spt vs dense attention");
    }

    /// top = blocks with gate none is the dense FFN act(x·w1ᵀ + b1)·w2ᵀ + b2.
    #[test]
    fn routed_ffn_with_every_block_and_no_gate_is_dense_ffn(
        t in 1usize..8, dm in 1usize..6, blocks in 1usize..5, bs in 1usize..4, gelu: bool, softmax: bool, seed: u64,
    ) {
        let dff = blocks * bs;
        let mut rng = SplitMix64::new(seed);
        let x = randn(&mut rng, &[t, dm], 1.0);
        let (w1, b1, w2, b2) = (randn(&mut rng, &[dff, dm], 1.0), randn(&mut rng, &[dff], 1.0), randn(&mut rng, &[dm, dff], 1.0), randn(&mut rng, &[dm], 1.0));
        let (wr, br) = (randn(&mut rng, &[blocks, dm], 1.0), randn(&mut rng, &[blocks], 1.0));
        let act = if gelu { Activation::Gelu } else { Activation::Relu };
        let router = if softmax { Router::Softmax } else { Router::Sigmoid };
        let r = Routed { blocks, top: blocks, gate: GateMode::None, act, router, ..Routed::default() };
        let w = routed::RoutedWeights { w1: &w1, b1: &b1, w2: &w2, b2: &b2, wr: &wr, br: &br };
        let y = routed::forward(&x, &w, &routed::route(&routed::gates(&x, &w, &r), blocks), &r);
        let mut expected = vec![0.0; t * dm];
        for tok in 0..t {
            let hidden: Vec<f64> = (0..dff).map(|j| {
                let z = b1.data[j] + (0..dm).map(|i| x.data[tok * dm + i] * w1.data[j * dm + i]).sum::<f64>();
                if gelu { 0.5 * z * (1.0 + libm::erf(z / 2f64.sqrt())) } else { z.max(0.0) }
            }).collect();
            for o in 0..dm {
                expected[tok * dm + o] = b2.data[o] + (0..dff).map(|j| hidden[j] * w2.data[o * dff + j]).sum::<f64>();
            }
        }
        assert_close(&y.data, &expected, 1e-12, "routed vs dense FFN");
    }
}

fn monarch_shapes() -> impl Strategy<Value = MonarchShape> {
    // k·q = l·r: pick k, q, then l among the divisors of k·q.
    (1usize..5, 1usize..5, 1usize..4, 1usize..4, 0usize..16).prop_map(|(k, q, p, s, pick)| {
        let inner = k * q;
        let divisors: Vec<usize> = (1..=inner).filter(|l| inner % l == 0).collect();
        let l = divisors[pick % divisors.len()];
        MonarchShape {
            k,
            q,
            p,
            l,
            s,
            r: inner / l,
        }
    })
}

/// The Monarch matrix as P_out · BD(w2) · P_mid · BD(w1), each factor a dense matrix here.
fn materialise_by_permutations(w1: &Tensor, w2: &Tensor, m: &MonarchShape) -> Vec<f64> {
    let (n_in, inner, n_out) = (m.n_in(), m.inner(), m.n_out());
    let matmul = |a: &[f64], b: &[f64], r: usize, c: usize, n: usize| -> Vec<f64> {
        let mut o = vec![0.0; r * n];
        for i in 0..r {
            for t in 0..c {
                for j in 0..n {
                    o[i * n + j] += a[i * c + t] * b[t * n + j];
                }
            }
        }
        o
    };
    // BD(w1): [inner, n_in], block ki maps cols ki·p.. to rows ki·q..
    let mut bd1 = vec![0.0; inner * n_in];
    for ki in 0..m.k {
        for qi in 0..m.q {
            for pi in 0..m.p {
                bd1[(ki * m.q + qi) * n_in + ki * m.p + pi] = w1.data[(ki * m.q + qi) * m.p + pi];
            }
        }
    }
    // P_mid: position (li·r + ri) of the second stage's input takes u[ri·l + li]
    let mut pm = vec![0.0; inner * inner];
    for li in 0..m.l {
        for ri in 0..m.r {
            pm[(li * m.r + ri) * inner + ri * m.l + li] = 1.0;
        }
    }
    // BD(w2): [n_out, inner], block li maps cols li·r.. to rows li·s..
    let mut bd2 = vec![0.0; n_out * inner];
    for li in 0..m.l {
        for si in 0..m.s {
            for ri in 0..m.r {
                bd2[(li * m.s + si) * inner + li * m.r + ri] = w2.data[(li * m.s + si) * m.r + ri];
            }
        }
    }
    // P_out: output si·l + li takes row li·s + si of BD(w2)'s result
    let mut po = vec![0.0; n_out * n_out];
    for li in 0..m.l {
        for si in 0..m.s {
            po[(si * m.l + li) * n_out + li * m.s + si] = 1.0;
        }
    }
    let a = matmul(&pm, &bd1, inner, inner, n_in);
    let b = matmul(&bd2, &a, n_out, inner, n_in);
    matmul(&po, &b, n_out, n_out, n_in)
}

fn frob_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

proptest! {
    #![proptest_config(proptest_config(96))]

    /// monarch(x) = x·Wᵀ with W built from permutation and block-diagonal matrices.
    #[test]
    fn monarch_is_multiplication_by_its_materialised_matrix(m in monarch_shapes(), n in 1usize..4, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let x = randn(&mut rng, &[n, m.n_in()], 1.0);
        let (w1, w2) = (randn(&mut rng, &[m.k, m.q, m.p], 1.0), randn(&mut rng, &[m.l, m.s, m.r], 1.0));
        let w = materialise_by_permutations(&w1, &w2, &m);
        assert_close(&monarch::to_dense(&w1, &w2, &m).data, &w, 1e-12, "to_dense vs permutation product");
        let y = monarch::forward(&x, &w1, &w2, &m);
        let mut expected = vec![0.0; n * m.n_out()];
        for b in 0..n { for o in 0..m.n_out() {
            expected[b * m.n_out() + o] = (0..m.n_in()).map(|i| x.data[b * m.n_in() + i] * w[o * m.n_in() + i]).sum();
        } }
        assert_close(&y.data, &expected, 1e-12, "monarch vs dense product");
    }

    /// A matrix that is already Monarch is recovered (to 1e-10), for rectangular shapes and any
    /// dividing block counts.
    #[test]
    fn monarch_projection_recovers_a_monarch_matrix(m in monarch_shapes(), seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let (w1, w2) = (randn(&mut rng, &[m.k, m.q, m.p], 1.0), randn(&mut rng, &[m.l, m.s, m.r], 1.0));
        let w = monarch::to_dense(&w1, &w2, &m);
        let (p1, p2) = monarch::project(&w, &m).unwrap();
        let back = monarch::to_dense(&p1, &p2, &m);
        prop_assert!(rel_err(&back.data, &w.data, 1e-300) <= 1e-10, "relative error {:.3e}", rel_err(&back.data, &w.data, 1e-300));
    }

    /// The projection of a dense matrix is never farther from it than a random Monarch matrix
    /// of the same shape, nor than a small perturbation of the projection itself.
    #[test]
    fn monarch_projection_is_frobenius_optimal(m in monarch_shapes(), seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let w = randn(&mut rng, &[m.n_out(), m.n_in()], 1.0);
        let (p1, p2) = monarch::project(&w, &m).unwrap();
        let best = frob_dist(&monarch::to_dense(&p1, &p2, &m).data, &w.data);
        let (r1, r2) = (randn(&mut rng, &[m.k, m.q, m.p], 1.0), randn(&mut rng, &[m.l, m.s, m.r], 1.0));
        prop_assert!(best <= frob_dist(&monarch::to_dense(&r1, &r2, &m).data, &w.data) + 1e-12);
        let mut q1 = p1.clone();
        let mut q2 = p2.clone();
        q1.data.iter_mut().for_each(|v| *v += 1e-3 * rng.normal());
        q2.data.iter_mut().for_each(|v| *v += 1e-3 * rng.normal());
        prop_assert!(best <= frob_dist(&monarch::to_dense(&q1, &q2, &m).data, &w.data) + 1e-12);
    }

    /// With every weight masked, SaRA is the dense linear layer and dv is the dense weight
    /// gradient (dyᵀ·x) at every position.
    #[test]
    fn sara_with_every_weight_masked_is_dense(t in 1usize..6, i_n in 1usize..6, o_n in 1usize..6, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let (x, w, b, dy) = (randn(&mut rng, &[t, i_n], 1.0), randn(&mut rng, &[o_n, i_n], 1.0), randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[t, o_n], 1.0));
        let mask = sara::mask(&w, SaraSelect::Ratio(1.0));
        prop_assert_eq!(mask.clone(), (0..o_n * i_n).collect::<Vec<_>>());
        let v: Vec<f64> = mask.iter().map(|&f| w.data[f]).collect();
        let y = sara::forward(&x, &w, &b, &mask, &v);
        let mut expected_y = vec![0.0; t * o_n];
        let mut expected_dw = vec![0.0; o_n * i_n];
        for r in 0..t { for o in 0..o_n {
            expected_y[r * o_n + o] = b.data[o] + (0..i_n).map(|i| x.data[r * i_n + i] * w.data[o * i_n + i]).sum::<f64>();
            for i in 0..i_n { expected_dw[o * i_n + i] += dy.data[r * o_n + o] * x.data[r * i_n + i]; }
        } }
        assert_close(&y.data, &expected_y, 1e-12, "sara(all) vs dense y");
        let (_, dv, _) = sara::backward(&x, &w, &mask, &v, &dy);
        assert_close(&dv.data, &expected_dw, 1e-12, "sara dv vs dense dW");
    }

    /// At sparsity 0 nothing is masked: PST is the linear layer with W' = W + β·U·V.
    #[test]
    fn pst_at_sparsity_zero_is_linear_with_updated_weight(t in 1usize..5, i_n in 1usize..6, o_n in 1usize..6, r in 1usize..4, rm in 1usize..4, beta in -2.0f64..2.0, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let x = randn(&mut rng, &[t, i_n], 1.0);
        let (w, b, u, v) = (randn(&mut rng, &[o_n, i_n], 1.0), randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[o_n, r], 1.0), randn(&mut rng, &[r, i_n], 1.0));
        let (ma, mb, mr, mc) = (randn(&mut rng, &[o_n, rm], 1.0), randn(&mut rng, &[rm, i_n], 1.0), randn(&mut rng, &[o_n], 1.0), randn(&mut rng, &[i_n], 1.0));
        let p = Pst { sparsity: 0.0, beta, ..Pst::default() };
        let pw = pst::PstWeights { w: &w, u: &u, v: &v, ma: &ma, mb: &mb, mr: &mr, mc: &mc };
        let (y, mask) = pst::forward(&x, &b, &pw, &p);
        prop_assert!(mask.data.iter().all(|&m| m == 1.0));
        let mut expected = vec![0.0; t * o_n];
        for row in 0..t { for o in 0..o_n {
            expected[row * o_n + o] = b.data[o] + (0..i_n).map(|i| {
                let wp = w.data[o * i_n + i] + beta * (0..r).map(|c| u.data[o * r + c] * v.data[c * i_n + i]).sum::<f64>();
                x.data[row * i_n + i] * wp
            }).sum::<f64>();
        } }
        assert_close(&y.data, &expected, 1e-12, "pst(s=0) vs linear with W'");
    }
}
