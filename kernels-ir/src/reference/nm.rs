//! N:M semi-structured sparsity (METHODS.md §8): in every group of `m` consecutive columns of
//! each row of W, the `n` entries of largest |W| are kept (ties → lower column); the kept values
//! are trained, the others are zero.

use super::tensor::{Tensor, mat, top_k_desc};

/// The kept flat indices of `w` [out, in], ascending: per group of `m` columns, the `n` of
/// largest magnitude, ties → lower column.
pub fn mask(w: &Tensor, n: usize, m: usize) -> Vec<usize> {
    let groups = w.numel() / m;
    let mut out = Vec::with_capacity(groups * n);
    for g in 0..groups {
        let mut kept = top_k_desc(m, n, |j| w.data[g * m + j].abs());
        kept.sort_unstable();
        out.extend(kept.into_iter().map(|j| g * m + j));
    }
    out
}

/// `W_eff` [out, in]: the values `v` at `mask`, zero elsewhere.
pub fn effective_weight(shape: &[usize], mask: &[usize], v: &[f64]) -> Tensor {
    let mut we = Tensor {
        shape: shape.to_vec(),
        data: vec![0.0; shape.iter().product()],
    };
    for (&i, &val) in mask.iter().zip(v) {
        we.data[i] = val;
    }
    we
}

/// y [T, out] = x · W_effᵀ + bias.
pub fn forward(x: &Tensor, w: &Tensor, bias: &Tensor, mask: &[usize], v: &[f64]) -> Tensor {
    super::dense::linear_forward(x, &effective_weight(&w.shape, mask, v), bias)
}

/// `(dx, dv, dbias)`: dx = dy·W_eff; dv the gradient of W_eff at the kept positions only (the
/// sampled product Σ_t dy[t, o]·x[t, i]); dbias the column sums of dy.
pub fn backward(
    x: &Tensor,
    w: &Tensor,
    mask: &[usize],
    v: &[f64],
    dy: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (t, i_n, o_n) = (x.shape[0], x.shape[1], w.shape[0]);
    let we = effective_weight(&w.shape, mask, v);
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
