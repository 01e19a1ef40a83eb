//! Multi-head self-attention (BERT layout: query, key, value, output linears) whose core is
//! dense softmax attention or SPT's PQ top-k sparse attention ([`SptAttention`]).

use super::linear::Linear;
use super::{normal, param, values};
use crate::TrainError;
use crate::backend::{SparseOp, float, sparse};
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use kernels_ir::pattern::{Pattern, PqTopK};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{KernelSpec, OpKind};

/// The weight of the codebook's auxiliary loss, MSE(x, quantize(x)) (METHODS.md §1.6).
pub const CODEBOOK_LOSS_WEIGHT: f64 = 1e-2;

/// SPT's sparse attention core: keys chosen per query by PQ code matches, softmax over the kept
/// `topk` only (the `spt-attention` kernels), with a codebook trained by an auxiliary loss and
/// re-fitted to the activations by k-means ([`SptAttention::refit`]).
#[derive(Module, Debug)]
pub struct SptAttention<B: Backend> {
    /// The PQ codebook [S, E, d_c].
    pub codebook: Param<Tensor<B, 3>>,
    /// topk, selector, causal, clamp, sub-vector length, codewords.
    #[module(skip)]
    pub pattern: PqTopK,
}

impl<B: Backend> SptAttention<B> {
    /// A core for heads of dimension `head_dim` over sequences of `seq_len` tokens, codebook
    /// drawn from N(0, std²) (re-fit it to real activations before training); the pattern is
    /// checked by the IR (D divisible by the sub-vector length, topk within L).
    pub fn new(
        pattern: PqTopK,
        seq_len: usize,
        head_dim: usize,
        std: f64,
        rng: &mut SplitMix64,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        KernelSpec::builder("spt", OpKind::SptAttention)
            .pattern(Pattern::PqTopK(pattern))
            .dims([("B", 1), ("H", 1), ("L", seq_len), ("D", head_dim)])
            .build()?;
        let s = head_dim / pattern.sub_dim;
        Ok(Self {
            codebook: param(normal(
                rng,
                [s, pattern.codewords, pattern.sub_dim],
                std,
                device,
            )),
            pattern,
        })
    }

    /// out = softmax over the kept keys of (q·kᵀ/√D)·v; q, k, v [B, H, L, D].
    pub fn forward(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: crate::SparseBackend,
    {
        let inputs = vec![
            float(q),
            float(k),
            float(v),
            float(self.codebook.val().detach()),
        ];
        sparse(&SparseOp::SptAttention(self.pattern), inputs, Vec::new())
    }

    /// x [B, H, L, D] with every sub-vector replaced by its nearest codeword (L1), differentiable
    /// in the codebook.
    pub fn quantize(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, l, d] = x.dims();
        let [s, e, dc] = self.codebook.dims();
        let n = b * h * l;
        let cb = self.codebook.val();
        let sub = x.reshape([n, s, 1, dc]);
        let dist = (sub - cb.clone().reshape([1, s, e, dc])).abs().sum_dim(3); // [n, s, e, 1]
        let codes = dist.argmin(2).repeat_dim(3, dc); // [n, s, 1, dc]
        let table = cb.reshape([1, s, e, dc]).repeat_dim(0, n);
        table.gather(2, codes).reshape([b, h, l, d])
    }

    /// The auxiliary loss weight·MSE(x, quantize(x)) for the activations `x`, which trains the
    /// codebook only (x is detached).
    pub fn codebook_loss(&self, x: Tensor<B, 4>) -> Tensor<B, 1> {
        let x = x.detach();
        let err = self.quantize(x.clone()) - x;
        (err.clone() * err).mean().mul_scalar(CODEBOOK_LOSS_WEIGHT)
    }

    /// The codebook re-fitted to the sub-vectors of `x` [B, H, L, D] by `iters` Lloyd steps
    /// (L1 assignment, mean update; a codeword nothing is assigned to keeps its value).
    pub fn refit(mut self, x: &Tensor<B, 4>, iters: usize) -> Self {
        let [s, e, dc] = self.codebook.dims();
        let data = values(x);
        let rows = data.len() / (s * dc);
        let mut cb = values(&self.codebook.val());
        for _ in 0..iters {
            let mut sum = vec![0f64; s * e * dc];
            let mut count = vec![0usize; s * e];
            for r in 0..rows {
                for si in 0..s {
                    let v = &data[(r * s + si) * dc..(r * s + si + 1) * dc];
                    let code = (0..e)
                        .map(|ei| {
                            let c = &cb[(si * e + ei) * dc..(si * e + ei + 1) * dc];
                            let d: f32 = v.iter().zip(c).map(|(a, b)| (a - b).abs()).sum();
                            (d, ei)
                        })
                        .fold((f32::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a })
                        .1;
                    count[si * e + code] += 1;
                    for t in 0..dc {
                        sum[(si * e + code) * dc + t] += f64::from(v[t]);
                    }
                }
            }
            for c in 0..s * e {
                if count[c] > 0 {
                    for t in 0..dc {
                        cb[c * dc + t] = (sum[c * dc + t] / count[c] as f64) as f32;
                    }
                }
            }
        }
        let device = self.codebook.device();
        let fitted = Tensor::from_data(TensorData::new(cb, [s, e, dc]), &device);
        self.codebook = self.codebook.map(|old| {
            let fitted = fitted.clone();
            if old.is_require_grad() {
                fitted.require_grad()
            } else {
                fitted
            }
        });
        self
    }
}

/// Self-attention in BERT's layout. With `spt` set, the core is SPT's sparse attention and
/// [`MultiHeadAttention::forward`] also returns the codebook's auxiliary loss.
#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: Backend> {
    /// Query projection.
    pub query: Linear<B>,
    /// Key projection.
    pub key: Linear<B>,
    /// Value projection.
    pub value: Linear<B>,
    /// Output projection.
    pub output: Linear<B>,
    /// The sparse core (None: dense softmax attention).
    pub spt: Option<SptAttention<B>>,
    /// Heads.
    pub heads: usize,
    /// Each token attends to itself and earlier tokens only (decoder).
    pub causal: bool,
}

/// What one attention call returns.
pub struct AttentionOutput<B: Backend> {
    /// [T, d].
    pub y: Tensor<B, 2>,
    /// The codebook's auxiliary loss (SPT), else None.
    pub aux: Option<Tensor<B, 1>>,
    /// The queries and keys [B, H, L, D] when asked for (codebook re-fits).
    pub qk: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: crate::SparseBackend> MultiHeadAttention<B> {
    /// Attention over `x` [batch·seq, d] (rows of one sequence contiguous). `pad` [batch, seq]
    /// marks padded keys (true), which dense attention gives no weight; SPT's kernels take no
    /// key mask and ignore it.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        seq: usize,
        pad: Option<Tensor<B, 2, Bool>>,
        keep_qk: bool,
    ) -> AttentionOutput<B> {
        let [_, d] = x.dims();
        let (h, hd) = (self.heads, d / self.heads);
        let split = |t: Tensor<B, 2>| t.reshape([batch, seq, h, hd]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));
        let qk = keep_qk.then(|| (q.clone(), k.clone()));
        let (ctx, aux) = match &self.spt {
            Some(core) => {
                let aux = core.codebook_loss(q.clone()) + core.codebook_loss(k.clone());
                (core.forward(q, k, v), Some(aux))
            }
            None => (dense_attention_masked(q, k, v, self.causal, pad), None),
        };
        let ctx = ctx.swap_dims(1, 2).reshape([batch * seq, d]);
        AttentionOutput {
            y: self.output.forward(ctx),
            aux,
            qk,
        }
    }
}

/// softmax(q·kᵀ/√D (+ causal mask))·v, q, k, v [B, H, L, D].
pub fn dense_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    dense_attention_masked(q, k, v, causal, None)
}

/// [`dense_attention`] with the keys `pad` [B, L] marks (true) masked out; every query must
/// keep at least one key (BERT's [CLS] is never padding).
pub fn dense_attention_masked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
    pad: Option<Tensor<B, 2, Bool>>,
) -> Tensor<B, 4> {
    let [b, h, l, d] = q.dims();
    let mut scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt());
    if causal {
        let later: Vec<bool> = (0..l * l).map(|f| f % l > f / l).collect();
        let mask =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(later, [l, l]), &scores.device())
                .unsqueeze::<4>()
                .expand([b, h, l, l]);
        scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    }
    if let Some(pad) = pad {
        // The lowest finite value, not −∞: a row with every key padded (a text that tokenised
        // to nothing) averages them instead of turning NaN; beside any real key, its weight
        // still underflows to exactly 0.
        let keys = pad.reshape([b, 1, 1, l]).expand([b, h, l, l]);
        scores = scores.mask_fill(keys, f32::MIN);
    }
    softmax(scores, 3).matmul(v)
}
