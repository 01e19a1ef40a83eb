//! PST (METHODS.md §5): W' = W + β·U·V, score S, the k-th-value mask, the masked linear layer
//! and its straight-through backward.

use super::tensor::{Tensor, bottom_k_asc, mat};
use crate::pattern::Pst;

/// PST's trainable and frozen weights of one layer.
#[derive(Clone, Debug)]
pub struct PstWeights<'a> {
    /// Frozen W [out, in].
    pub w: &'a Tensor,
    /// U [out, r].
    pub u: &'a Tensor,
    /// V [r, in].
    pub v: &'a Tensor,
    /// A [out, r_m].
    pub ma: &'a Tensor,
    /// B [r_m, in].
    pub mb: &'a Tensor,
    /// R [out].
    pub mr: &'a Tensor,
    /// C [in].
    pub mc: &'a Tensor,
}

/// Gradients of a PST layer.
#[derive(Clone, Debug)]
pub struct PstGrads {
    /// d x
    pub dx: Tensor,
    /// d bias
    pub dbias: Tensor,
    /// d U
    pub du: Tensor,
    /// d V
    pub dv: Tensor,
    /// d A
    pub dma: Tensor,
    /// d B
    pub dmb: Tensor,
    /// d R
    pub dmr: Tensor,
    /// d C
    pub dmc: Tensor,
}

/// `(W', S)`: the updated weight and the importance score, both [out, in].
pub fn weight_and_score(w: &PstWeights<'_>, p: &Pst) -> (Tensor, Tensor) {
    let (o_n, i_n) = (w.w.shape[0], w.w.shape[1]);
    let (r, rm) = (w.u.shape[1], w.ma.shape[1]);
    let uv = mat::nn(&w.u.data, &w.v.data, o_n, r, i_n);
    let ab = mat::nn(&w.ma.data, &w.mb.data, o_n, rm, i_n);
    let wp: Vec<f64> =
        w.w.data
            .iter()
            .zip(&uv)
            .map(|(a, b)| a + p.beta * b)
            .collect();
    let s = (0..o_n * i_n)
        .map(|f| {
            let (o, i) = (f / i_n, f % i_n);
            wp[f].abs() + p.alpha1 * ab[f] + p.alpha2 * (w.mr.data[o] + w.mc.data[i])
        })
        .collect();
    (
        Tensor {
            shape: vec![o_n, i_n],
            data: wp,
        },
        Tensor {
            shape: vec![o_n, i_n],
            data: s,
        },
    )
}

/// The 0/1 mask: 0 at the ⌊n·sparsity⌋ lowest scores (ties → lower flat index first), 1 elsewhere.
pub fn mask(score: &Tensor, sparsity: f64) -> Tensor {
    let n = score.numel();
    let zeros = ((n as f64) * sparsity).floor() as usize;
    let mut m = Tensor {
        shape: score.shape.clone(),
        data: vec![1.0; n],
    };
    for i in bottom_k_asc(n, zeros.min(n), |i| score.data[i]) {
        m.data[i] = 0.0;
    }
    m
}

/// `(y, mask)`: y = x·(M ⊙ W')ᵀ + bias.
pub fn forward(x: &Tensor, bias: &Tensor, w: &PstWeights<'_>, p: &Pst) -> (Tensor, Tensor) {
    let (wp, s) = weight_and_score(w, p);
    let m = mask(&s, p.sparsity);
    (forward_with_mask(x, bias, &wp, &m), m)
}

/// y = x·(M ⊙ W')ᵀ + bias for a given mask.
pub fn forward_with_mask(x: &Tensor, bias: &Tensor, wp: &Tensor, m: &Tensor) -> Tensor {
    let eff = Tensor {
        shape: wp.shape.clone(),
        data: wp.data.iter().zip(&m.data).map(|(a, b)| a * b).collect(),
    };
    super::dense::linear_forward(x, &eff, bias)
}

/// Straight-through backward for a given mask: dM = dW_eff ⊙ W' passes unchanged to S.
pub fn backward(x: &Tensor, w: &PstWeights<'_>, m: &Tensor, dy: &Tensor, p: &Pst) -> PstGrads {
    let (t, i_n, o_n) = (x.shape[0], x.shape[1], w.w.shape[0]);
    let (r, rm) = (w.u.shape[1], w.ma.shape[1]);
    let (wp, _) = weight_and_score(w, p);
    let eff: Vec<f64> = wp.data.iter().zip(&m.data).map(|(a, b)| a * b).collect();
    let dx = mat::nn(&dy.data, &eff, t, o_n, i_n);
    let dbias = mat::colsum(&dy.data, t, o_n);
    let dweff = mat::tn(&dy.data, &x.data, t, o_n, i_n);
    let ds: Vec<f64> = dweff.iter().zip(&wp.data).map(|(g, a)| g * a).collect();
    let dwp: Vec<f64> = (0..o_n * i_n)
        .map(|f| dweff[f] * m.data[f] + wp.data[f].signum_or_zero() * ds[f])
        .collect();
    let scale = |v: Vec<f64>, c: f64| v.into_iter().map(|x| x * c).collect::<Vec<_>>();
    // dU = β·dW'·Vᵀ  (V [r, in] → nt); dV = β·Uᵀ·dW' (tn)
    let du = scale(mat::nt(&dwp, &w.v.data, o_n, i_n, r), p.beta);
    let dv = scale(mat::tn(&w.u.data, &dwp, o_n, r, i_n), p.beta);
    let dma = scale(mat::nt(&ds, &w.mb.data, o_n, i_n, rm), p.alpha1);
    let dmb = scale(mat::tn(&w.ma.data, &ds, o_n, rm, i_n), p.alpha1);
    let dmr = (0..o_n)
        .map(|o| p.alpha2 * ds[o * i_n..(o + 1) * i_n].iter().sum::<f64>())
        .collect();
    let dmc = scale(mat::colsum(&ds, o_n, i_n), p.alpha2);
    let t2 = |s: &[usize], d: Vec<f64>| Tensor {
        shape: s.to_vec(),
        data: d,
    };
    PstGrads {
        dx: t2(&[t, i_n], dx),
        dbias: t2(&[o_n], dbias),
        du: t2(&[o_n, r], du),
        dv: t2(&[r, i_n], dv),
        dma: t2(&[o_n, rm], dma),
        dmb: t2(&[rm, i_n], dmb),
        dmr: t2(&[o_n], dmr),
        dmc: t2(&[i_n], dmc),
    }
}

/// sign(x) with sign(0) = 0, as `torch.sign` (the subgradient of |x| used by PST's code).
trait SignOrZero {
    fn signum_or_zero(self) -> f64;
}
impl SignOrZero for f64 {
    fn signum_or_zero(self) -> f64 {
        if self > 0.0 {
            1.0
        } else if self < 0.0 {
            -1.0
        } else {
            0.0
        }
    }
}
