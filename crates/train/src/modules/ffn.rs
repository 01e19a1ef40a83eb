//! The feed-forward block: dense (intermediate → GELU → output, BERT's layout) or SPT's routed
//! FFN ([`RoutedFfn`]), whose hidden dimension is cut into blocks each token keeps `top` of.

use super::linear::{DenseLinear, Linear};
use super::{normal, param};
use crate::TrainError;
use crate::backend::{SparseOp, float, sparse};
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use kernels_ir::pattern::{Pattern, Routed};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{KernelSpec, OpKind};

/// SPT's routed FFN: a sigmoid router picks `top` of `blocks` slices of the hidden dimension per
/// token; only those are computed (the `routed-ffn` kernels: grouped GEMMs over the kept
/// (token, block) pairs), weighted by `gate_scale`·gate.
#[derive(Module, Debug)]
pub struct RoutedFfn<B: Backend> {
    /// w1 [d_ff, d_model].
    pub w1: Param<Tensor<B, 2>>,
    /// b1 [d_ff].
    pub b1: Param<Tensor<B, 1>>,
    /// w2 [d_model, d_ff].
    pub w2: Param<Tensor<B, 2>>,
    /// b2 [d_model].
    pub b2: Param<Tensor<B, 1>>,
    /// Router wr [E, d_model].
    pub wr: Param<Tensor<B, 2>>,
    /// Router bias br [E].
    pub br: Param<Tensor<B, 1>>,
    /// Blocks, top, gate mode and scale, activation.
    #[module(skip)]
    pub pattern: Routed,
}

impl<B: Backend> RoutedFfn<B> {
    /// The routed form of a dense FFN: w1/b1 from `intermediate`, w2/b2 from `output`, a new
    /// router (N(0, 0.02²), zero bias). The IR checks the block count divides d_ff.
    pub fn from_dense(
        intermediate: DenseLinear<B>,
        output: DenseLinear<B>,
        pattern: Routed,
        rng: &mut SplitMix64,
    ) -> Result<Self, TrainError> {
        let (dm, dff) = intermediate.sizes();
        KernelSpec::builder("routed", OpKind::RoutedFfn)
            .pattern(Pattern::Routed(pattern))
            .dims([("T", 1), ("d_model", dm), ("d_ff", dff)])
            .build()?;
        let device = intermediate.weight.device();
        Ok(Self {
            w1: intermediate.weight,
            b1: intermediate.bias,
            w2: output.weight,
            b2: output.bias,
            wr: param(normal(rng, [pattern.blocks, dm], 0.02, &device)),
            br: param(Tensor::zeros([pattern.blocks], &device)),
            pattern,
        })
    }

    /// y [T, d_model] for x [T, d_model].
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2>
    where
        B: crate::SparseBackend,
    {
        let inputs = vec![
            float(x),
            float(self.w1.val()),
            float(self.b1.val()),
            float(self.w2.val()),
            float(self.b2.val()),
            float(self.wr.val()),
            float(self.br.val()),
        ];
        sparse(&SparseOp::RoutedFfn(self.pattern), inputs, Vec::new())
    }
}

/// BERT's dense FFN: output(GELU(intermediate(x))).
#[derive(Module, Debug)]
pub struct DenseFfn<B: Backend> {
    /// d_model → d_ff.
    pub intermediate: Linear<B>,
    /// d_ff → d_model.
    pub output: Linear<B>,
}

/// The FFN a layer holds.
// Variants hold parameter handles; one per layer, never in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Ffn<B: Backend> {
    /// Dense (with any method's linears).
    Dense(DenseFfn<B>),
    /// SPT's routed FFN.
    Routed(RoutedFfn<B>),
}

impl<B: crate::SparseBackend> Ffn<B> {
    /// y [T, d_model] for x [T, d_model].
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Ffn::Dense(f) => f
                .output
                .forward(crate::gelu_exact(f.intermediate.forward(x))),
            Ffn::Routed(f) => f.forward(x),
        }
    }
}
