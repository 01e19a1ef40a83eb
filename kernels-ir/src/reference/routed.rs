//! SPT routed FFN / MoE (METHODS.md §2).

use super::tensor::{IndexTensor, Tensor, mat, top_k_desc};
use crate::pattern::{Activation, GateMode, Routed, Router};

/// Parameters of a routed FFN layer, shapes as in the `run` contract.
#[derive(Clone, Debug)]
pub struct RoutedWeights<'a> {
    /// [d_ff, d_model]
    pub w1: &'a Tensor,
    /// [d_ff]
    pub b1: &'a Tensor,
    /// [d_model, d_ff]
    pub w2: &'a Tensor,
    /// [d_model]
    pub b2: &'a Tensor,
    /// [E, d_model]
    pub wr: &'a Tensor,
    /// [E]
    pub br: &'a Tensor,
}

/// Gradients of a routed FFN layer.
#[derive(Clone, Debug)]
pub struct RoutedGrads {
    /// d x
    pub dx: Tensor,
    /// d w1
    pub dw1: Tensor,
    /// d b1
    pub db1: Tensor,
    /// d w2
    pub dw2: Tensor,
    /// d b2
    pub db2: Tensor,
    /// d wr
    pub dwr: Tensor,
    /// d br
    pub dbr: Tensor,
}

fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
    }
}

fn act_grad(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Gelu => {
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
    }
}

/// Router gates `g` [T, E] for `x` [T, d_model].
pub fn gates(x: &Tensor, w: &RoutedWeights<'_>, r: &Routed) -> Tensor {
    let (t, dm, e) = (x.shape[0], x.shape[1], w.wr.shape[0]);
    let mut g = mat::nt(&x.data, &w.wr.data, t, dm, e);
    for tok in 0..t {
        let row = &mut g[tok * e..(tok + 1) * e];
        for (v, b) in row.iter_mut().zip(&w.br.data) {
            *v += b;
        }
        match r.router {
            Router::Sigmoid => row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            Router::Softmax => {
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                row.iter_mut().for_each(|v| *v = (*v - m).exp());
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
    }
    Tensor {
        shape: vec![t, e],
        data: g,
    }
}

/// The `top` blocks each token keeps: highest gate first, ties → lower block; each row listed in
/// ascending block order. [T, top].
pub fn route(g: &Tensor, top: usize) -> IndexTensor {
    let (t, e) = (g.shape[0], g.shape[1]);
    let mut out = Vec::with_capacity(t * top);
    for tok in 0..t {
        let mut kept = top_k_desc(e, top, |i| g.data[tok * e + i]);
        kept.sort_unstable();
        out.extend(kept.into_iter().map(|i| i as i64));
    }
    IndexTensor {
        shape: vec![t, top],
        data: out,
    }
}

/// Per (token, kept block): the gate coefficient on the pre-activation and on the output.
fn coefs(r: &Routed, g: f64) -> (f64, f64) {
    let c = r.gate_scale * g;
    match r.gate {
        GateMode::Output => (1.0, c),
        GateMode::None => (1.0, 1.0),
        GateMode::SptLora => (c, c),
    }
}

/// `y` [T, d_model] for a given routing.
pub fn forward(x: &Tensor, w: &RoutedWeights<'_>, blocks: &IndexTensor, r: &Routed) -> Tensor {
    let (t, dm, dff) = (x.shape[0], x.shape[1], w.w1.shape[0]);
    let bs = dff / r.blocks;
    let g = gates(x, w, r);
    let mut y = Tensor::zeros(&[t, dm]);
    for tok in 0..t {
        let xt = &x.data[tok * dm..(tok + 1) * dm];
        let yt = &mut y.data[tok * dm..(tok + 1) * dm];
        yt.copy_from_slice(&w.b2.data);
        for &e in &blocks.data[tok * r.top..(tok + 1) * r.top] {
            let e = e as usize;
            let (c_in, c_out) = coefs(r, g.data[tok * r.blocks + e]);
            for j in e * bs..(e + 1) * bs {
                let pre: f64 = w.b1.data[j]
                    + xt.iter()
                        .zip(&w.w1.data[j * dm..(j + 1) * dm])
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
                let a = c_out * act(r.act, c_in * pre);
                for o in 0..dm {
                    yt[o] += a * w.w2.data[o * dff + j];
                }
            }
        }
    }
    y
}

/// All gradients for a given routing (the routing itself is not differentiated).
pub fn backward(
    x: &Tensor,
    w: &RoutedWeights<'_>,
    blocks: &IndexTensor,
    dy: &Tensor,
    r: &Routed,
) -> RoutedGrads {
    let (t, dm, dff, e_n) = (x.shape[0], x.shape[1], w.w1.shape[0], r.blocks);
    let bs = dff / e_n;
    let g = gates(x, w, r);
    let mut gr = RoutedGrads {
        dx: Tensor::zeros(&[t, dm]),
        dw1: Tensor::zeros(&[dff, dm]),
        db1: Tensor::zeros(&[dff]),
        dw2: Tensor::zeros(&[dm, dff]),
        db2: Tensor {
            shape: vec![dm],
            data: mat::colsum(&dy.data, t, dm),
        },
        dwr: Tensor::zeros(&[e_n, dm]),
        dbr: Tensor::zeros(&[e_n]),
    };
    let mut dg = vec![0.0; e_n];
    for tok in 0..t {
        let xt = &x.data[tok * dm..(tok + 1) * dm];
        let dyt = &dy.data[tok * dm..(tok + 1) * dm];
        dg.iter_mut().for_each(|v| *v = 0.0);
        for &e in &blocks.data[tok * r.top..(tok + 1) * r.top] {
            let e = e as usize;
            let (c_in, c_out) = coefs(r, g.data[tok * e_n + e]);
            let mut dcoef_out = 0.0;
            let mut dcoef_in = 0.0;
            for j in e * bs..(e + 1) * bs {
                let pre: f64 = w.b1.data[j]
                    + xt.iter()
                        .zip(&w.w1.data[j * dm..(j + 1) * dm])
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
                let z = c_in * pre;
                let a = act(r.act, z);
                // Block output before scaling, projected on dy: o·dy = Σ_o a·w2[o,j]·dy[o].
                let w2dy: f64 = (0..dm).map(|o| w.w2.data[o * dff + j] * dyt[o]).sum();
                dcoef_out += a * w2dy;
                for o in 0..dm {
                    gr.dw2.data[o * dff + j] += c_out * a * dyt[o];
                }
                let dz = c_out * w2dy * act_grad(r.act, z);
                dcoef_in += dz * pre;
                let dpre = c_in * dz;
                gr.db1.data[j] += dpre;
                for i in 0..dm {
                    gr.dw1.data[j * dm + i] += dpre * xt[i];
                    gr.dx.data[tok * dm + i] += dpre * w.w1.data[j * dm + i];
                }
            }
            dg[e] = match r.gate {
                GateMode::Output => r.gate_scale * dcoef_out,
                GateMode::None => 0.0,
                GateMode::SptLora => r.gate_scale * (dcoef_out + dcoef_in),
            };
        }
        // Through the gate non-linearity to the router logits.
        let gt = &g.data[tok * e_n..(tok + 1) * e_n];
        let dlogit: Vec<f64> = match r.router {
            Router::Sigmoid => (0..e_n).map(|e| dg[e] * gt[e] * (1.0 - gt[e])).collect(),
            Router::Softmax => {
                let dot: f64 = (0..e_n).map(|e| gt[e] * dg[e]).sum();
                (0..e_n).map(|e| gt[e] * (dg[e] - dot)).collect()
            }
        };
        for e in 0..e_n {
            if dlogit[e] == 0.0 {
                continue;
            }
            gr.dbr.data[e] += dlogit[e];
            for i in 0..dm {
                gr.dwr.data[e * dm + i] += dlogit[e] * xt[i];
                gr.dx.data[tok * dm + i] += dlogit[e] * w.wr.data[e * dm + i];
            }
        }
    }
    gr
}
