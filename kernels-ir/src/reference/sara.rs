//! SaRA (METHODS.md §4): mask of the smallest weights, forward with packed values, the sampled
//! backward, sparse AdamW, the nuclear-norm subgradient and merge.

use super::ReferenceError;
use super::linalg::thin_svd;
use super::tensor::{Tensor, bottom_k_asc, mat};
use crate::pattern::SaraSelect;

/// Flat indices of the retrained weights, ascending: `|w| < threshold`, or the `⌊ratio·n⌋`
/// smallest `|w|` with ties → lower flat index.
pub fn mask(w: &Tensor, select: SaraSelect) -> Vec<usize> {
    match select {
        SaraSelect::Threshold(t) => (0..w.numel()).filter(|&i| w.data[i].abs() < t).collect(),
        SaraSelect::Ratio(r) => {
            let k = (r * w.numel() as f64).floor() as usize;
            let mut idx = bottom_k_asc(w.numel(), k, |i| w.data[i].abs());
            idx.sort_unstable();
            idx
        }
    }
}

/// `W_eff`: `w` with the packed values `v` written at `mask`.
pub fn effective_weight(w: &Tensor, mask: &[usize], v: &[f64]) -> Tensor {
    let mut we = w.clone();
    for (&i, &val) in mask.iter().zip(v) {
        we.data[i] = val;
    }
    we
}

/// y [T, out] = x · W_effᵀ + bias.
pub fn forward(x: &Tensor, w: &Tensor, bias: &Tensor, mask: &[usize], v: &[f64]) -> Tensor {
    let we = effective_weight(w, mask, v);
    super::dense::linear_forward(x, &we, bias)
}

/// `(dx, dv, dbias)`: dv is the sampled product Σ_t dy[t,o]·x[t,i] at the mask positions only;
/// no [out, in] gradient is formed.
pub fn backward(
    x: &Tensor,
    w: &Tensor,
    mask: &[usize],
    v: &[f64],
    dy: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (t, i_n, o_n) = (x.shape[0], x.shape[1], w.shape[0]);
    let we = effective_weight(w, mask, v);
    let dx = Tensor {
        shape: vec![t, i_n],
        data: mat::nn(&dy.data, &we.data, t, o_n, i_n),
    };
    let dv = mask
        .iter()
        .map(|&flat| {
            let (o, i) = (flat / i_n, flat % i_n);
            (0..t)
                .map(|r| dy.data[r * o_n + o] * x.data[r * i_n + i])
                .sum()
        })
        .collect();
    let dbias = Tensor {
        shape: vec![o_n],
        data: mat::colsum(&dy.data, t, o_n),
    };
    (
        dx,
        Tensor {
            shape: vec![mask.len()],
            data: dv,
        },
        dbias,
    )
}

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate (SaRA's default: 1e-3·exp(−350·threshold), see [`AdamW::sara_lr`]).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl AdamW {
    /// SaRA's learning rate for a threshold: 1e-3·exp(−350·threshold).
    pub fn sara_lr(threshold: f64) -> f64 {
        1e-3 * (-350.0 * threshold).exp()
    }
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// One AdamW step (PyTorch's formulation) over the packed values, in place; `step` counts from 1.
/// State size is nnz: `m` and `s` have the length of `v`.
pub fn adamw_step(v: &mut [f64], dv: &[f64], m: &mut [f64], s: &mut [f64], step: u32, h: &AdamW) {
    let c1 = 1.0 - h.beta1.powi(step as i32);
    let c2 = 1.0 - h.beta2.powi(step as i32);
    for i in 0..v.len() {
        v[i] *= 1.0 - h.lr * h.weight_decay;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * dv[i];
        s[i] = h.beta2 * s[i] + (1.0 - h.beta2) * dv[i] * dv[i];
        v[i] -= h.lr * (m[i] / c1) / ((s[i] / c2).sqrt() + h.eps);
    }
}

/// Subgradient of ‖Z‖_* with Z [out, in] holding `v` at `mask` and 0 elsewhere: (U·Vᵀ) over the
/// singular vectors whose singular value exceeds a rounding tolerance, restricted to `mask`.
/// The SVD runs on the host in f64: SaRA applies the term to one weight per step, so a host
/// SVD of an [out, in] matrix (a few thousand rows at most) is off the hot path.
pub fn nuclear_subgradient(
    shape: [usize; 2],
    mask: &[usize],
    v: &[f64],
) -> Result<Vec<f64>, ReferenceError> {
    let [o_n, i_n] = shape;
    let mut z = vec![0.0; o_n * i_n];
    for (&flat, &val) in mask.iter().zip(v) {
        z[flat] = val;
    }
    let svd = thin_svd(o_n, i_n, "v", |o, i| z[o * i_n + i])?;
    let tol = svd.s.first().copied().unwrap_or(0.0) * (o_n.max(i_n) as f64) * f64::EPSILON;
    let keep: Vec<usize> = (0..svd.k).filter(|&c| svd.s[c] > tol).collect();
    Ok(mask
        .iter()
        .map(|&flat| {
            let (o, i) = (flat / i_n, flat % i_n);
            keep.iter()
                .map(|&c| svd.u[o * svd.k + c] * svd.v[i * svd.k + c])
                .sum()
        })
        .collect())
}

/// Merged weight for export: `w` with `v` written back at `mask` (zero inference overhead).
pub fn merge(w: &Tensor, mask: &[usize], v: &[f64]) -> Tensor {
    effective_weight(w, mask, v)
}
