//! The dense linear layer, the baseline every weight-sparse method is compared with.

use super::tensor::{Tensor, mat};

/// y [T, out] = x [T, in] · wᵀ + bias.
pub fn linear_forward(x: &Tensor, w: &Tensor, bias: &Tensor) -> Tensor {
    let (t, i_n, o_n) = (x.shape[0], x.shape[1], w.shape[0]);
    let mut y = mat::nt(&x.data, &w.data, t, i_n, o_n);
    for r in 0..t {
        for o in 0..o_n {
            y[r * o_n + o] += bias.data[o];
        }
    }
    Tensor {
        shape: vec![t, o_n],
        data: y,
    }
}

/// `(dx, dw, dbias)` of [`linear_forward`].
pub fn linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (t, i_n, o_n) = (x.shape[0], x.shape[1], w.shape[0]);
    (
        Tensor {
            shape: vec![t, i_n],
            data: mat::nn(&dy.data, &w.data, t, o_n, i_n),
        },
        Tensor {
            shape: vec![o_n, i_n],
            data: mat::tn(&dy.data, &x.data, t, o_n, i_n),
        },
        Tensor {
            shape: vec![o_n],
            data: mat::colsum(&dy.data, t, o_n),
        },
    )
}
