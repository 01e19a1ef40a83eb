//! Every [`SparseOp`] as a composition of Burn tensor ops, following METHODS.md line by line: what
//! ndarray runs, and (through Burn's autodiff of it) the gradients the kernel backends are tested
//! against. Selections (PST's mask) are computed on detached values, as the methods define them.

use crate::backend::SparseOp;
use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive};
use kernels_ir::pattern::{Activation, Cbm, GateMode, MonarchShape, PqTopK, Pst, Routed, Router};
use kernels_ir::reference::tensor::{IndexTensor, Tensor as Host, top_k_desc};

fn t<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn p<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// The op's tensors as an array of its arity (the modules build these lists; a wrong count is a
/// bug in the caller, reported with the op's name).
pub(crate) fn take<T, const N: usize>(op: &SparseOp, v: Vec<T>) -> [T; N] {
    let len = v.len();
    v.try_into()
        .unwrap_or_else(|_| panic!("{}: {len} tensors given, the op takes {N}", op.name()))
}

/// y = op(inputs) as tensor ops.
pub(crate) fn forward<B: Backend>(
    op: &SparseOp,
    inputs: Vec<FloatTensor<B>>,
    ints: Vec<IntTensor<B>>,
) -> FloatTensor<B> {
    match op {
        SparseOp::SptAttention(pq) => {
            let [q, k, v, codebook] = take(op, inputs);
            p(spt_attention::<B>(t(q), t(k), t(v), t(codebook), pq))
        }
        SparseOp::RoutedFfn(r) => {
            let [x, w1, b1, w2, b2, wr, br] = take(op, inputs);
            p(routed_ffn::<B>(
                t(x),
                [t(w1), t(w2), t(wr)],
                [t(b1), t(b2), t(br)],
                r,
            ))
        }
        SparseOp::CbmHead(c) => {
            let [x, wc, wh, noise] = take(op, inputs);
            p(cbm_head::<B>(t(x), t(wc), t(wh), t(noise), c))
        }
        SparseOp::Monarch(m) => {
            let [x, w1, w2] = take(op, inputs);
            p(monarch::<B>(t(x), t(w1), t(w2), m))
        }
        SparseOp::Sara => {
            let [x, w, v, bias] = take(op, inputs);
            let [index] = take(op, ints);
            p(sara::<B>(
                t(x),
                t(w),
                t(v),
                t(bias),
                Tensor::from_primitive(index),
            ))
        }
        SparseOp::Nm(_) => {
            let [x, v, bias] = take(op, inputs);
            let [index] = take(op, ints);
            p(nm_linear::<B>(
                t(x),
                t(v),
                t(bias),
                Tensor::from_primitive(index),
            ))
        }
        SparseOp::Pst(pst) => {
            let [x, w, bias, u, v, ma, mb, mr, mc] = take(op, inputs);
            let factors = [t(u), t(v), t(ma), t(mb)];
            p(pst_linear::<B>(
                t(x),
                t(w),
                t(bias),
                factors,
                [t(mr), t(mc)],
                pst,
            ))
        }
    }
}

/// u[b, k_i·q + q_i] = Σ_p w1[k_i, q_i, p]·x[b, k_i·p + p]; y[b, s_i·l + l_i] =
/// Σ_r w2[l_i, s_i, r]·u[b, r·l + l_i]: two batched products and the (k q) → (r l) reading.
pub(crate) fn monarch<B: Backend>(
    x: Tensor<B, 2>,
    w1: Tensor<B, 3>,
    w2: Tensor<B, 3>,
    m: &MonarchShape,
) -> Tensor<B, 2> {
    let [n, _] = x.dims();
    let xk = x.reshape([n, m.k, m.p]).swap_dims(0, 1); // [k, N, p]
    let u = xk.matmul(w1.swap_dims(1, 2)); // [k, N, q]
    let u = u.swap_dims(0, 1).reshape([n, m.r, m.l]); // u read as [N, r, l]
    let y = u.permute([2, 0, 1]).matmul(w2.swap_dims(1, 2)); // [l, N, s]
    y.permute([1, 2, 0]).reshape([n, m.s * m.l])
}

/// W_eff = w with v written at `index`; y = x·W_effᵀ + bias. The gradient reaches v through
/// the written positions only; `w` is frozen.
pub(crate) fn sara<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    v: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    index: Tensor<B, 1, Int>,
) -> Tensor<B, 2> {
    let [o, i] = w.dims();
    let flat = w.reshape([o * i]);
    let delta = v - flat.clone().select(0, index.clone());
    let w_eff = flat
        .select_assign(0, index, delta, IndexingUpdateOp::Add)
        .reshape([o, i]);
    x.matmul(w_eff.transpose()) + bias.unsqueeze()
}

/// N:M linear (METHODS.md §8) over its fixed mask: W_eff = `v` scattered at `index` into zeros
/// [out, in] (out from `bias`, in from `x`); y = x·W_effᵀ + bias.
pub(crate) fn nm_linear<B: Backend>(
    x: Tensor<B, 2>,
    v: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    index: Tensor<B, 1, Int>,
) -> Tensor<B, 2> {
    let [_, i] = x.dims();
    let [o] = bias.dims();
    let w_eff = Tensor::<B, 1>::zeros([o * i], &x.device())
        .select_assign(0, index, v, IndexingUpdateOp::Add)
        .reshape([o, i]);
    x.matmul(w_eff.transpose()) + bias.unsqueeze()
}

/// The 0/1 mask with 0 at the `zeros` lowest entries of `score` [out, in] (ties: lower flat
/// index first, as a stable ascending sort orders them).
pub(crate) fn lowest_mask<B: Backend>(score: Tensor<B, 2>, zeros: usize) -> Tensor<B, 2> {
    let [o, i] = score.dims();
    let ones = Tensor::<B, 1>::ones([o * i], &score.device());
    if zeros == 0 {
        return ones.reshape([o, i]);
    }
    let order = score.reshape([o * i]).argsort(0).slice(0..zeros);
    let off = Tensor::<B, 1>::ones([zeros], &ones.device()).neg();
    ones.select_assign(0, order, off, IndexingUpdateOp::Add)
        .reshape([o, i])
}

/// PST (METHODS.md §5) with the straight-through estimator written as
/// `M + (S − stop_grad(S))`: its value is the mask, its gradient passes dM to S unchanged.
pub(crate) fn pst_linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    [u, v, ma, mb]: [Tensor<B, 2>; 4],
    [mr, mc]: [Tensor<B, 1>; 2],
    pst: &Pst,
) -> Tensor<B, 2> {
    let [o, i] = w.dims();
    let wp = w + u.matmul(v).mul_scalar(pst.beta);
    let rows_cols = mr.reshape([o, 1]) + mc.reshape([1, i]);
    let score =
        wp.clone().abs() + ma.matmul(mb).mul_scalar(pst.alpha1) + rows_cols.mul_scalar(pst.alpha2);
    let zeros = ((o * i) as f64 * pst.sparsity).floor() as usize;
    let mask = lowest_mask(score.clone().detach(), zeros);
    let ste = mask + (score.clone() - score.detach());
    x.matmul((ste * wp).transpose()) + bias.unsqueeze()
}

/// A tensor's values on the host, as the reference executor's f64 tensor (the selections of
/// the compositions run there, with the reference's tie rules).
pub(crate) fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Host {
    let shape = t.dims().to_vec();
    let data = t
        .clone()
        .detach()
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .unwrap_or_default();
    Host { shape, data }
}

/// A 0/1 selection over `width` columns per row from per-row index lists (−1 = empty slot).
fn selection<B: Backend, const D: usize>(
    idx: &IndexTensor,
    width: usize,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, Bool> {
    let per_row = *idx.shape.last().unwrap_or(&1);
    let rows = idx.data.len() / per_row.max(1);
    let mut keep = vec![false; rows * width];
    for (r, row) in idx.data.chunks(per_row.max(1)).enumerate() {
        for &j in row.iter().filter(|&&j| j >= 0) {
            keep[r * width + j as usize] = true;
        }
    }
    Tensor::from_data(TensorData::new(keep, shape), device)
}

/// SPT attention: keys (or, with `block` > 1, key blocks) selected by PQ codes on the host
/// (reference rules), then softmax over the kept scores (the others masked to −∞) and the
/// weighted sum of values.
pub(crate) fn spt_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    codebook: Tensor<B, 3>,
    pq: &PqTopK,
) -> Tensor<B, 4> {
    let [b, h, l, d] = q.dims();
    let topk = pq.topk.resolve(l);
    let (hq, hk, hc) = (host(&q), host(&k), host(&codebook));
    let idx = if pq.block > 1 {
        let blocks = kernels_ir::reference::spt::select_blocks(&hq, &hk, &hc, pq, topk);
        kernels_ir::reference::spt::expand_blocks(&blocks, l, pq.block, pq.causal)
    } else {
        kernels_ir::reference::spt::select(&hq, &hk, &hc, pq, topk)
    };
    let kept = selection::<B, 4>(&idx, l, [b, h, l, l], &q.device());
    let mut scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt());
    if pq.clamp {
        scores = scores.clamp(-10.0, 10.0);
    }
    let probs = softmax(scores.mask_fill(kept.bool_not(), f32::NEG_INFINITY), 3);
    probs.matmul(v)
}

/// Routed FFN: gates, the `top` blocks per token chosen on the host (reference rules), every
/// block computed densely and weighted by its coefficient (0 for blocks a token does not keep).
pub(crate) fn routed_ffn<B: Backend>(
    x: Tensor<B, 2>,
    [w1, w2, wr]: [Tensor<B, 2>; 3],
    [b1, b2, br]: [Tensor<B, 1>; 3],
    r: &Routed,
) -> Tensor<B, 2> {
    let [t, _] = x.dims();
    let dff = w1.dims()[0];
    let bs = dff / r.blocks;
    let logits = x.clone().matmul(wr.transpose()) + br.unsqueeze();
    let g = match r.router {
        Router::Sigmoid => sigmoid(logits),
        Router::Softmax => softmax(logits, 1),
    };
    let blocks = kernels_ir::reference::routed::route(&host(&g), r.top);
    let kept = selection::<B, 2>(&blocks, r.blocks, [t, r.blocks], &x.device());
    let kept = Tensor::<B, 2>::zeros([t, r.blocks], &x.device()).mask_fill(kept, 1.0);
    let c = g.mul_scalar(r.gate_scale) * kept.clone();
    // Per hidden unit: the coefficient of its block.
    let per_unit = |c: Tensor<B, 2>| c.unsqueeze_dim::<3>(2).repeat_dim(2, bs).reshape([t, dff]);
    let (c_in, c_out) = match r.gate {
        GateMode::Output => (None, per_unit(c)),
        GateMode::None => (None, per_unit(kept)),
        GateMode::SptLora => (Some(per_unit(c.clone())), per_unit(c)),
    };
    let mut pre = x.matmul(w1.transpose()) + b1.unsqueeze();
    if let Some(c_in) = c_in {
        pre = pre * c_in;
    }
    let hidden = match r.act {
        Activation::Relu => relu(pre),
        Activation::Gelu => gelu_exact(pre),
    };
    (hidden * c_out).matmul(w2.transpose()) + b2.unsqueeze()
}

/// Sparse-CBM head: z = x·wcᵀ, the `topk` largest of z + noise kept per row (host, reference
/// rules; 0 keeps all), logits = (keep ⊙ z)·whᵀ.
pub(crate) fn cbm_head<B: Backend>(
    x: Tensor<B, 2>,
    wc: Tensor<B, 2>,
    wh: Tensor<B, 2>,
    noise: Tensor<B, 2>,
    c: &Cbm,
) -> Tensor<B, 2> {
    let z = x.matmul(wc.transpose());
    let [b, n] = z.dims();
    if c.topk == 0 {
        return z.matmul(wh.transpose());
    }
    let (zs, ns) = (host(&z), host(&noise));
    let rows: Vec<i64> = (0..b)
        .flat_map(|row| {
            let key = |j: usize| zs.data[row * n + j] + ns.data[row * n + j];
            top_k_desc(n, c.topk, key).into_iter().map(|j| j as i64)
        })
        .collect();
    let idx = IndexTensor {
        shape: vec![b, c.topk],
        data: rows,
    };
    let keep = selection::<B, 2>(&idx, n, [b, n], &z.device());
    let keep = Tensor::<B, 2>::zeros([b, n], &z.device()).mask_fill(keep, 1.0);
    (z * keep).matmul(wh.transpose())
}

/// Exact GELU, x·Φ(x) = x·(1 + erf(x/√2))/2, as tensor ops so that its gradient is exact too
/// (Burn 0.21's `gelu` has the exact forward but the tanh approximation's derivative).
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let phi = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0);
    x * phi.mul_scalar(0.5)
}
