//! Monarch (METHODS.md §3): block-diagonal · permutation · block-diagonal, its backward, the
//! dense materialisation and the dense → Monarch projection; plus a single block-diagonal factor.

use super::ReferenceError;
use super::linalg::thin_svd;
use super::tensor::Tensor;
use crate::pattern::MonarchShape;

/// u[b, ki·q + qi] = Σ_pi w1[ki, qi, pi] · x[b, ki·p + pi]  → [N, k·q]
fn first(x: &Tensor, w1: &Tensor, m: &MonarchShape) -> Vec<f64> {
    let n = x.shape[0];
    let (n_in, inner) = (m.n_in(), m.inner());
    let mut u = vec![0.0; n * inner];
    for b in 0..n {
        for ki in 0..m.k {
            let xs = &x.data[b * n_in + ki * m.p..b * n_in + (ki + 1) * m.p];
            for qi in 0..m.q {
                let w = &w1.data[(ki * m.q + qi) * m.p..(ki * m.q + qi + 1) * m.p];
                u[b * inner + ki * m.q + qi] = xs.iter().zip(w).map(|(a, c)| a * c).sum();
            }
        }
    }
    u
}

/// `y` [N, l·s] = Monarch(w1, w2) applied to the rows of `x` [N, k·p].
pub fn forward(x: &Tensor, w1: &Tensor, w2: &Tensor, m: &MonarchShape) -> Tensor {
    let n = x.shape[0];
    let (inner, n_out) = (m.inner(), m.n_out());
    let u = first(x, w1, m);
    let mut y = Tensor::zeros(&[n, n_out]);
    for b in 0..n {
        for li in 0..m.l {
            for si in 0..m.s {
                let w = &w2.data[(li * m.s + si) * m.r..(li * m.s + si + 1) * m.r];
                y.data[b * n_out + si * m.l + li] = (0..m.r)
                    .map(|ri| w[ri] * u[b * inner + ri * m.l + li])
                    .sum();
            }
        }
    }
    y
}

/// `(dx, dw1, dw2)` from `dy` [N, l·s].
pub fn backward(
    x: &Tensor,
    w1: &Tensor,
    w2: &Tensor,
    dy: &Tensor,
    m: &MonarchShape,
) -> (Tensor, Tensor, Tensor) {
    let n = x.shape[0];
    let (n_in, inner, n_out) = (m.n_in(), m.inner(), m.n_out());
    let u = first(x, w1, m);
    let mut du = vec![0.0; n * inner];
    let mut dw2 = Tensor::zeros(&w2.shape);
    for b in 0..n {
        for li in 0..m.l {
            for si in 0..m.s {
                let g = dy.data[b * n_out + si * m.l + li];
                for ri in 0..m.r {
                    let wi = (li * m.s + si) * m.r + ri;
                    du[b * inner + ri * m.l + li] += w2.data[wi] * g;
                    dw2.data[wi] += g * u[b * inner + ri * m.l + li];
                }
            }
        }
    }
    let mut dx = Tensor::zeros(&x.shape);
    let mut dw1 = Tensor::zeros(&w1.shape);
    for b in 0..n {
        for ki in 0..m.k {
            for qi in 0..m.q {
                let g = du[b * inner + ki * m.q + qi];
                for pi in 0..m.p {
                    let wi = (ki * m.q + qi) * m.p + pi;
                    dx.data[b * n_in + ki * m.p + pi] += w1.data[wi] * g;
                    dw1.data[wi] += g * x.data[b * n_in + ki * m.p + pi];
                }
            }
        }
    }
    (dx, dw1, dw2)
}

/// The intermediate indices that couple first-factor block `ki` with second-factor block `li`,
/// as `(qi, ri)` pairs in ascending `qi`: m = ki·q + qi with m mod l = li, ri = m / l.
fn coupling(m: &MonarchShape, ki: usize, li: usize) -> Vec<(usize, usize)> {
    (0..m.q)
        .map(|qi| (qi, ki * m.q + qi))
        .filter(|(_, mid)| mid % m.l == li)
        .map(|(qi, mid)| (qi, mid / m.l))
        .collect()
}

/// The dense matrix W [l·s, k·p] with `y = x·Wᵀ`.
pub fn to_dense(w1: &Tensor, w2: &Tensor, m: &MonarchShape) -> Tensor {
    let n_in = m.n_in();
    let mut w = Tensor::zeros(&[m.n_out(), n_in]);
    for ki in 0..m.k {
        for li in 0..m.l {
            for (qi, ri) in coupling(m, ki, li) {
                for si in 0..m.s {
                    let a = w2.data[(li * m.s + si) * m.r + ri];
                    for pi in 0..m.p {
                        w.data[(si * m.l + li) * n_in + ki * m.p + pi] +=
                            a * w1.data[(ki * m.q + qi) * m.p + pi];
                    }
                }
            }
        }
    }
    w
}

/// Frobenius-optimal Monarch factors of the dense `w` [l·s, k·p]: for every block pair
/// (ki, li), the truncated SVD of W's sub-block {rows si·l + li} × {cols ki·p + pi}, at the rank
/// given by the number of coupling indices. Entries outside every coupled sub-block are not
/// representable and are dropped. A matrix that is already Monarch is recovered to rounding.
pub fn project(w: &Tensor, m: &MonarchShape) -> Result<(Tensor, Tensor), ReferenceError> {
    let n_in = m.n_in();
    let mut w1 = Tensor::zeros(&[m.k, m.q, m.p]);
    let mut w2 = Tensor::zeros(&[m.l, m.s, m.r]);
    for ki in 0..m.k {
        for li in 0..m.l {
            let pairs = coupling(m, ki, li);
            if pairs.is_empty() {
                continue;
            }
            let svd = thin_svd(m.s, m.p, "w", |si, pi| {
                w.data[(si * m.l + li) * n_in + ki * m.p + pi]
            })?;
            for (c, &(qi, ri)) in pairs.iter().enumerate().take(svd.k) {
                let root = svd.s[c].sqrt();
                for pi in 0..m.p {
                    w1.data[(ki * m.q + qi) * m.p + pi] = root * svd.v[pi * svd.k + c];
                }
                for si in 0..m.s {
                    w2.data[(li * m.s + si) * m.r + ri] = root * svd.u[si * svd.k + c];
                }
            }
        }
    }
    Ok((w1, w2))
}

/// A block-diagonal map: y[b, ki·qo + qi] = Σ_pi w[ki, qi, pi] · x[b, ki·pi_n + pi], `w`
/// [blocks, out/blocks, in/blocks].
pub fn block_diag_forward(x: &Tensor, w: &Tensor) -> Tensor {
    let (n, n_in) = (x.shape[0], x.shape[1]);
    let (nb, qo, pi_n) = (w.shape[0], w.shape[1], w.shape[2]);
    let n_out = nb * qo;
    let mut y = Tensor::zeros(&[n, n_out]);
    for b in 0..n {
        for ki in 0..nb {
            let xs = &x.data[b * n_in + ki * pi_n..b * n_in + (ki + 1) * pi_n];
            for qi in 0..qo {
                let wr = &w.data[(ki * qo + qi) * pi_n..(ki * qo + qi + 1) * pi_n];
                y.data[b * n_out + ki * qo + qi] = xs.iter().zip(wr).map(|(a, c)| a * c).sum();
            }
        }
    }
    y
}

/// `(dx, dw)` of [`block_diag_forward`].
pub fn block_diag_backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
    let (n, n_in) = (x.shape[0], x.shape[1]);
    let (nb, qo, pi_n) = (w.shape[0], w.shape[1], w.shape[2]);
    let n_out = nb * qo;
    let mut dx = Tensor::zeros(&x.shape);
    let mut dw = Tensor::zeros(&w.shape);
    for b in 0..n {
        for ki in 0..nb {
            for qi in 0..qo {
                let g = dy.data[b * n_out + ki * qo + qi];
                for p in 0..pi_n {
                    let wi = (ki * qo + qi) * pi_n + p;
                    dx.data[b * n_in + ki * pi_n + p] += w.data[wi] * g;
                    dw.data[wi] += g * x.data[b * n_in + ki * pi_n + p];
                }
            }
        }
    }
    (dx, dw)
}
