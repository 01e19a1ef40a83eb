//! Sparse-CBM's concept bottleneck as a classification head: pooled features → concept
//! similarities (cosine with learned concept embeddings, CLIP-style scale) → the concept layer and
//! the top-k sparse head of the `cbm-head` kernels, with the method's training losses.

use super::{normal, param};
use crate::TrainError;
use crate::backend::{SparseOp, float, sparse};
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use kernels_ir::pattern::{Cbm, Pattern};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{KernelSpec, OpKind};

/// The scale of the cosine similarities (CLIP's logit scale is learned; 10 is a fixed stand-in).
pub const SIMILARITY_SCALE: f64 = 10.0;
/// The weight of the Gumbel-softmax loss in [`ConceptBottleneck::losses`].
pub const GUMBEL_LOSS_WEIGHT: f64 = 1e-2;

/// The concept bottleneck head.
#[derive(Module, Debug)]
pub struct ConceptBottleneck<B: Backend> {
    /// Concept embeddings [C, d] (the "text" side of the similarity).
    pub concepts: Param<Tensor<B, 2>>,
    /// Concept layer wc [C, C] (no bias).
    pub wc: Param<Tensor<B, 2>>,
    /// Head wh [K, C] (no bias).
    pub wh: Param<Tensor<B, 2>>,
    /// Concepts kept per sample (0: dense head).
    #[module(skip)]
    pub pattern: Cbm,
    /// Gumbel-softmax temperature τ.
    pub tau: f64,
}

/// What the head returns.
pub struct CbmOutput<B: Backend> {
    /// Class logits [B, K].
    pub logits: Tensor<B, 2>,
    /// The method's auxiliary losses (Gumbel-softmax and L1 on wc), summed.
    pub aux: Tensor<B, 1>,
    /// Concept similarities x [B, C] (Concept Matrix Search reads them).
    pub similarities: Tensor<B, 2>,
}

impl<B: Backend> ConceptBottleneck<B> {
    /// A head of `concepts` concepts over `d`-wide features for `classes` classes; the IR
    /// checks `topk` against the concept count.
    pub fn new(
        d: usize,
        concepts: usize,
        classes: usize,
        pattern: Cbm,
        rng: &mut SplitMix64,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        KernelSpec::builder("cbm", OpKind::CbmHead)
            .pattern(Pattern::Cbm(pattern))
            .dims([("B", 1), ("C", concepts), ("K", classes)])
            .build()?;
        let std = 1.0 / (concepts as f64).sqrt();
        Ok(Self {
            concepts: param(normal(rng, [concepts, d], 1.0, device)),
            wc: param(normal(rng, [concepts, concepts], std, device)),
            wh: param(normal(rng, [classes, concepts], std, device)),
            pattern,
            tau: 1.0,
        })
    }

    /// Concept similarities x [B, C]: scaled cosine of the pooled features with each concept.
    pub fn similarities(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        let unit = |t: Tensor<B, 2>| {
            let norm = (t.clone() * t.clone()).sum_dim(1).sqrt().clamp_min(1e-6);
            t / norm
        };
        unit(pooled)
            .matmul(unit(self.concepts.val()).transpose())
            .mul_scalar(SIMILARITY_SCALE)
    }

    /// Logits and losses for `pooled` [B, d]. In training (`train`), Gumbel noise perturbs the
    /// top-k selection (hard Gumbel for k = 1); in evaluation the selection is by value.
    pub fn forward(&self, pooled: Tensor<B, 2>, train: bool) -> CbmOutput<B>
    where
        B: crate::SparseBackend,
    {
        let x = self.similarities(pooled);
        let [b, c] = x.dims();
        let noise = if train {
            gumbel::<B>([b, c], &x.device())
        } else {
            Tensor::zeros([b, c], &x.device())
        };
        let inputs = vec![
            float(x.clone()),
            float(self.wc.val()),
            float(self.wh.val()),
            float(noise.clone()),
        ];
        let logits = sparse(&SparseOp::CbmHead(self.pattern), inputs, Vec::new());
        // Gumbel-softmax (soft, τ) over the concept activations: loss = mean(−log sample).
        let z = x.clone().matmul(self.wc.val().transpose());
        let sample = softmax((z + noise).div_scalar(self.tau), 1);
        let gumbel_loss = sample.clamp_min(1e-9).log().neg().mean();
        let l1 = self.wc.val().abs().sum().mul_scalar(1e-3 / c as f64);
        CbmOutput {
            logits,
            aux: gumbel_loss.mul_scalar(GUMBEL_LOSS_WEIGHT) + l1,
            similarities: x,
        }
    }
}

/// Gumbel(0, 1) noise: −log(−log U).
fn gumbel<B: Backend>(shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    let u = Tensor::<B, 2>::random(shape, Distribution::Uniform(1e-6, 1.0 - 1e-6), device);
    u.log().neg().log().neg()
}

/// Concept Matrix Search (training-free): with the rows of the sample–concept matrix `v`
/// [B, C] and the class–concept matrix `t` [K, C] normalised, the class of each sample is
/// argmax_c cos(v_b, t_c).
pub fn concept_matrix_search<B: Backend>(v: Tensor<B, 2>, t: Tensor<B, 2>) -> Tensor<B, 1, Int> {
    let unit = |m: Tensor<B, 2>| {
        let norm = (m.clone() * m.clone()).sum_dim(1).sqrt().clamp_min(1e-12);
        m / norm
    };
    let [b, _] = v.dims();
    unit(v).matmul(unit(t).transpose()).argmax(1).reshape([b])
}
