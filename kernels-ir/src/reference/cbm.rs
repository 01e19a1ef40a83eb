//! Sparse-CBM head (METHODS.md §6): concept layer, per-row top-k concept gate, sparse head.

use super::tensor::{Tensor, mat, top_k_desc};

/// `(z, keep, logits)`: z = x·wcᵀ [B, C]; keep [B, C] is 1 at the `topk` largest entries of
/// z + noise per row (ties → lower concept; `topk` = 0 keeps all); logits = (keep ⊙ z)·whᵀ.
pub fn forward(
    x: &Tensor,
    wc: &Tensor,
    wh: &Tensor,
    noise: Option<&Tensor>,
    topk: usize,
) -> (Tensor, Tensor, Tensor) {
    let (b, c, k) = (x.shape[0], x.shape[1], wh.shape[0]);
    let z = mat::nt(&x.data, &wc.data, b, c, c);
    let mut keep = vec![0.0; b * c];
    for row in 0..b {
        let kept = if topk == 0 {
            (0..c).collect()
        } else {
            top_k_desc(c, topk, |j| {
                z[row * c + j] + noise.map_or(0.0, |n| n.data[row * c + j])
            })
        };
        for j in kept {
            keep[row * c + j] = 1.0;
        }
    }
    let zs: Vec<f64> = z.iter().zip(&keep).map(|(a, m)| a * m).collect();
    let logits = mat::nt(&zs, &wh.data, b, c, k);
    (
        Tensor {
            shape: vec![b, c],
            data: z,
        },
        Tensor {
            shape: vec![b, c],
            data: keep,
        },
        Tensor {
            shape: vec![b, k],
            data: logits,
        },
    )
}

/// `(dx, dwc, dwh)` for a given gate (the selection is not differentiated).
pub fn backward(
    x: &Tensor,
    wc: &Tensor,
    wh: &Tensor,
    keep: &Tensor,
    dlogits: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (b, c, k) = (x.shape[0], x.shape[1], wh.shape[0]);
    let z = mat::nt(&x.data, &wc.data, b, c, c);
    let zs: Vec<f64> = z.iter().zip(&keep.data).map(|(a, m)| a * m).collect();
    let dwh = mat::tn(&dlogits.data, &zs, b, k, c);
    let dz: Vec<f64> = mat::nn(&dlogits.data, &wh.data, b, k, c)
        .iter()
        .zip(&keep.data)
        .map(|(g, m)| g * m)
        .collect();
    let dwc = mat::tn(&dz, &x.data, b, c, c);
    let dx = mat::nn(&dz, &wc.data, b, c, c);
    (
        Tensor {
            shape: vec![b, c],
            data: dx,
        },
        Tensor {
            shape: vec![c, c],
            data: dwc,
        },
        Tensor {
            shape: vec![k, c],
            data: dwh,
        },
    )
}
