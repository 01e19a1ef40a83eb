//! Linears, one per method, and [`Linear`], the switch the encoder holds. Inputs are token rows
//! `x` [T, in]; weights are [out, in].

use super::{frozen, normal, param};
use crate::TrainError;
use crate::backend::{SparseOp, float, sparse};
use crate::compose::host;
use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kernels_ir::pattern::{MonarchShape, Pattern, Pst, SaraSelect};
use kernels_ir::reference::pst::PstWeights;
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{
    Tensor as Host, monarch as ref_monarch, pst as ref_pst, sara as ref_sara,
};
use kernels_ir::{KernelSpec, OpKind};

/// y = x·Wᵀ + b: the full fine-tuning baseline, and the frozen base of the other methods.
#[derive(Module, Debug)]
pub struct DenseLinear<B: Backend> {
    /// W [out, in].
    pub weight: Param<Tensor<B, 2>>,
    /// b [out].
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> DenseLinear<B> {
    /// A trainable linear over the given weight and bias.
    pub fn new(weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Self {
        Self {
            weight: param(weight),
            bias: param(bias),
        }
    }

    /// BERT's initialisation: W ~ N(0, 0.02²), b = 0.
    pub fn init(n_in: usize, n_out: usize, rng: &mut SplitMix64, device: &B::Device) -> Self {
        Self::new(
            normal(rng, [n_out, n_in], 0.02, device),
            Tensor::zeros([n_out], device),
        )
    }

    /// (in, out).
    pub fn sizes(&self) -> (usize, usize) {
        let [o, i] = self.weight.dims();
        (i, o)
    }

    /// The same linear with both tensors frozen.
    pub fn frozen(self) -> Self {
        Self {
            weight: self.weight.set_require_grad(false),
            bias: self.bias.set_require_grad(false),
        }
    }

    /// y = x·Wᵀ + b.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.val().transpose()) + self.bias.val().unsqueeze()
    }

    fn host_weight(&self) -> Host {
        host(&self.weight.val())
    }
}

/// LoRA: the frozen base plus `scale·B·A` with A [r, in] random and B [out, r] zero.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The frozen base.
    pub base: DenseLinear<B>,
    /// A [r, in].
    pub a: Param<Tensor<B, 2>>,
    /// B [out, r] (starts at 0: the adapted layer starts equal to the base).
    pub b: Param<Tensor<B, 2>>,
    /// α / r.
    pub scale: f64,
}

impl<B: Backend> LoraLinear<B> {
    /// LoRA of rank `rank` and scale `alpha / rank` on `dense`.
    pub fn from_dense(
        dense: DenseLinear<B>,
        rank: usize,
        alpha: f64,
        rng: &mut SplitMix64,
    ) -> Self {
        let (n_in, n_out) = dense.sizes();
        let device = dense.weight.device();
        Self {
            a: param(normal(
                rng,
                [rank, n_in],
                1.0 / (n_in as f64).sqrt(),
                &device,
            )),
            b: param(Tensor::zeros([n_out, rank], &device)),
            base: dense.frozen(),
            scale: alpha / rank as f64,
        }
    }

    /// y = base(x) + scale·(x·Aᵀ)·Bᵀ.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let low = x
            .clone()
            .matmul(self.a.val().transpose())
            .matmul(self.b.val().transpose());
        self.base.forward(x) + low.mul_scalar(self.scale)
    }

    /// The merged dense linear W + scale·B·A.
    pub fn merge(&self) -> DenseLinear<B> {
        let delta = self.b.val().matmul(self.a.val()).mul_scalar(self.scale);
        DenseLinear::new(self.base.weight.val() + delta, self.base.bias.val())
    }
}

/// SaRA: the weights selected by `rule` (the smallest |W|) are retrained as packed values `v`;
/// the rest of W stays frozen. Forward and backward run the `sara-linear` kernels; only `v` and
/// the bias get gradients, `v`'s optimizer state is nnz long.
#[derive(Module, Debug)]
pub struct SaraLinear<B: Backend> {
    /// The frozen W [out, in].
    pub weight: Param<Tensor<B, 2>>,
    /// b [out].
    pub bias: Param<Tensor<B, 1>>,
    /// The retrained values v [nnz], in row-major order of the mask.
    pub values: Param<Tensor<B, 1>>,
    /// Their flat positions in W [nnz], ascending.
    pub index: Param<Tensor<B, 1, Int>>,
    /// The selection rule's threshold, or minus the ratio (kept in checkpoints).
    pub rule: f64,
}

/// The rule as one number: ≥ 0 a threshold, < 0 minus a ratio.
fn rule_of(select: SaraSelect) -> f64 {
    match select {
        SaraSelect::Threshold(t) => t,
        SaraSelect::Ratio(r) => -r,
    }
}

fn select_of(rule: f64) -> SaraSelect {
    if rule < 0.0 {
        SaraSelect::Ratio(-rule)
    } else {
        SaraSelect::Threshold(rule)
    }
}

impl<B: Backend> SaraLinear<B> {
    /// Selects the retrained weights of `dense` by `select` (METHODS.md §4). A rule that
    /// selects nothing is an error naming the layer's weight range.
    pub fn from_dense(dense: DenseLinear<B>, select: SaraSelect) -> Result<Self, TrainError> {
        let w = dense.host_weight();
        let mask = ref_sara::mask(&w, select);
        if mask.is_empty() {
            let smallest = w.data.iter().map(|v| v.abs()).fold(f64::INFINITY, f64::min);
            return Err(TrainError::Config {
                module: "SaraLinear",
                problem: format!(
                    "{select:?} selects none of the {} weights (smallest |w| = {smallest:.3e})",
                    w.numel()
                ),
                fix: "raise the threshold or give a ratio (e.g. ratio = 0.1)",
            });
        }
        let device = dense.weight.device();
        let index: Vec<i64> = mask.iter().map(|&i| i as i64).collect();
        let v: Vec<f32> = mask.iter().map(|&i| w.data[i] as f32).collect();
        let nnz = mask.len();
        Ok(Self {
            values: param(Tensor::from_data(TensorData::new(v, [nnz]), &device)),
            index: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(index, [nnz]), &device),
            ),
            weight: frozen(dense.weight.val()),
            bias: dense.bias,
            rule: rule_of(select),
        })
    }

    /// (flat positions, values) of the retrained weights on the host.
    pub fn packed(&self) -> (Vec<usize>, Vec<f64>) {
        let index = self
            .index
            .val()
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap_or_default();
        let v = host(&self.values.val()).data;
        (index.into_iter().map(|i| i as usize).collect(), v)
    }

    /// y = x·W_effᵀ + b with W_eff = W holding `v` at the mask.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2>
    where
        B: crate::SparseBackend,
    {
        let inputs = vec![
            float(x),
            float(self.weight.val()),
            float(self.values.val()),
            float(self.bias.val()),
        ];
        sparse(&SparseOp::Sara, inputs, vec![self.index.val()])
    }

    /// The subgradient of λ‖Z‖_* (Z = v at the mask, 0 elsewhere) with respect to `v`,
    /// restricted to the mask (host SVD, f64).
    pub fn nuclear_subgradient(&self, lambda: f64) -> Result<Tensor<B, 1>, TrainError> {
        let (index, v) = self.packed();
        let [o, i] = self.weight.dims();
        let g = ref_sara::nuclear_subgradient([o, i], &index, &v)?;
        let g: Vec<f32> = g.iter().map(|x| (lambda * x) as f32).collect();
        Ok(Tensor::from_data(
            TensorData::new(g, [index.len()]),
            &self.values.device(),
        ))
    }

    /// Progressive re-masking: the mask chosen again by the same rule on the current W_eff,
    /// with the new packed values (their optimizer state starts afresh).
    pub fn remask(self) -> Result<Self, TrainError> {
        let merged = self.merge();
        let rule = self.rule;
        Self::from_dense(merged, select_of(rule))
    }

    /// W with `v` written back: a dense linear with no inference overhead.
    pub fn merge(&self) -> DenseLinear<B> {
        let (index, v) = self.packed();
        let merged = ref_sara::merge(&host(&self.weight.val()), &index, &v);
        DenseLinear::new(to_device(&merged, &self.weight.device()), self.bias.val())
    }
}

/// A host tensor of rank `D` on the device.
pub(crate) fn to_device<B: Backend, const D: usize>(t: &Host, device: &B::Device) -> Tensor<B, D> {
    let data: Vec<f32> = t.to_f32();
    let shape: [usize; D] = std::array::from_fn(|i| t.shape[i]);
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// PST: the frozen W with a low-rank update U·V, masked by importance scores
/// S = |W'| + α1·A·B + α2·(R·1ᵀ + 1·Cᵀ) at the sparsity of the current step. Runs the
/// `pst-linear` kernels; only the factors and the bias are trained.
#[derive(Module, Debug)]
pub struct PstLinear<B: Backend> {
    /// The frozen W [out, in].
    pub weight: Param<Tensor<B, 2>>,
    /// b [out].
    pub bias: Param<Tensor<B, 1>>,
    /// U [out, r].
    pub u: Param<Tensor<B, 2>>,
    /// V [r, in] (starts at 0).
    pub v: Param<Tensor<B, 2>>,
    /// A [out, r_m].
    pub ma: Param<Tensor<B, 2>>,
    /// B [r_m, in] (starts at 0).
    pub mb: Param<Tensor<B, 2>>,
    /// R [out] (starts at 0).
    pub mr: Param<Tensor<B, 1>>,
    /// C [in] (starts at 0).
    pub mc: Param<Tensor<B, 1>>,
    /// Ranks, coefficients, final sparsity and schedule.
    #[module(skip)]
    pub pattern: Pst,
    /// The sparsity of the current step (see [`PstLinear::at_step`]).
    pub sparsity: f64,
}

impl<B: Backend> PstLinear<B> {
    /// PST on `dense` with the paper's initialisation (U, A ~ N(0, 0.02²); V, B, R, C = 0),
    /// starting at the schedule's initial sparsity.
    pub fn from_dense(
        dense: DenseLinear<B>,
        pattern: Pst,
        rng: &mut SplitMix64,
    ) -> Result<Self, TrainError> {
        let (n_in, n_out) = dense.sizes();
        KernelSpec::builder("pst", OpKind::PstLinear)
            .pattern(Pattern::Pst(pattern))
            .dims([("T", 1), ("in", n_in), ("out", n_out)])
            .build()?;
        let device = dense.weight.device();
        let (r, rm) = (pattern.rank, pattern.mask_rank);
        Ok(Self {
            weight: frozen(dense.weight.val()),
            bias: dense.bias,
            u: param(normal(rng, [n_out, r], 0.02, &device)),
            v: param(Tensor::zeros([r, n_in], &device)),
            ma: param(normal(rng, [n_out, rm], 0.02, &device)),
            mb: param(Tensor::zeros([rm, n_in], &device)),
            mr: param(Tensor::zeros([n_out], &device)),
            mc: param(Tensor::zeros([n_in], &device)),
            sparsity: pattern.schedule.s0,
            pattern,
        })
    }

    /// The module at step `step` of `total`: the cubic schedule's sparsity.
    pub fn at_step(mut self, step: usize, total: usize) -> Self {
        self.sparsity = self
            .pattern
            .schedule
            .sparsity_at(step, total, self.pattern.sparsity);
        self
    }

    /// y = x·(M ⊙ W')ᵀ + b.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2>
    where
        B: crate::SparseBackend,
    {
        let op = SparseOp::Pst(Pst {
            sparsity: self.sparsity,
            ..self.pattern
        });
        let inputs = vec![
            float(x),
            float(self.weight.val()),
            float(self.bias.val()),
            float(self.u.val()),
            float(self.v.val()),
            float(self.ma.val()),
            float(self.mb.val()),
            float(self.mr.val()),
            float(self.mc.val()),
        ];
        sparse(&op, inputs, Vec::new())
    }

    /// M ⊙ W' baked into one dense (sparse-valued) weight at the current sparsity.
    pub fn export(&self) -> DenseLinear<B> {
        let h = |t: Tensor<B, 2>| host(&t);
        let (w, u, v, ma, mb) = (
            h(self.weight.val()),
            h(self.u.val()),
            h(self.v.val()),
            h(self.ma.val()),
            h(self.mb.val()),
        );
        let (mr, mc) = (host(&self.mr.val()), host(&self.mc.val()));
        let weights = PstWeights {
            w: &w,
            u: &u,
            v: &v,
            ma: &ma,
            mb: &mb,
            mr: &mr,
            mc: &mc,
        };
        let (wp, score) = ref_pst::weight_and_score(&weights, &self.pattern);
        let mask = ref_pst::mask(&score, self.sparsity);
        let baked = Host {
            shape: wp.shape.clone(),
            data: wp.data.iter().zip(&mask.data).map(|(a, m)| a * m).collect(),
        };
        DenseLinear::new(to_device(&baked, &self.weight.device()), self.bias.val())
    }
}

/// Monarch: W ≈ P·block-diag(w2)·P·block-diag(w1), trained in factored form (the `monarch`
/// kernels), plus a bias.
#[derive(Module, Debug)]
pub struct MonarchLinear<B: Backend> {
    /// w1 [k, q, p].
    pub w1: Param<Tensor<B, 3>>,
    /// w2 [l, s, r].
    pub w2: Param<Tensor<B, 3>>,
    /// b [out].
    pub bias: Param<Tensor<B, 1>>,
    /// The factor shapes.
    #[module(skip)]
    pub shape: MonarchShape,
}

impl<B: Backend> MonarchLinear<B> {
    /// The factor shapes of an `n_in → n_out` Monarch with `blocks` blocks per factor and an
    /// intermediate as wide as the narrower side (both sizes must divide by `blocks`): with b
    /// blocks, a square layer keeps 2/b of its weights, an `n → 4n` one 5/(4b).
    pub fn shape_for(n_in: usize, n_out: usize, blocks: usize) -> Result<MonarchShape, TrainError> {
        let inner = n_in.min(n_out);
        let bad = |what: &str| TrainError::Config {
            module: "MonarchLinear",
            problem: format!("{what} ({n_in} → {n_out}, {blocks} blocks)"),
            fix: "choose a block count that divides both feature sizes (e.g. 4)",
        };
        if blocks == 0 || !n_in.is_multiple_of(blocks) || !n_out.is_multiple_of(blocks) {
            return Err(bad("the feature sizes do not divide by the block count"));
        }
        let shape = MonarchShape {
            k: blocks,
            q: inner / blocks,
            p: n_in / blocks,
            l: blocks,
            s: n_out / blocks,
            r: inner / blocks,
        };
        KernelSpec::builder("monarch", OpKind::Monarch)
            .pattern(Pattern::Monarch(shape))
            .dim("N", 1)
            .build()?;
        Ok(shape)
    }

    /// The Frobenius-optimal Monarch factors of `dense`'s weight (the projection of METHODS.md
    /// §3, host SVD per block pair); the bias is kept.
    pub fn from_dense(dense: DenseLinear<B>, blocks: usize) -> Result<Self, TrainError> {
        let (n_in, n_out) = dense.sizes();
        let shape = Self::shape_for(n_in, n_out, blocks)?;
        let (w1, w2) = ref_monarch::project(&dense.host_weight(), &shape)?;
        let device = dense.weight.device();
        Ok(Self {
            w1: param(to_device(&w1, &device)),
            w2: param(to_device(&w2, &device)),
            bias: dense.bias,
            shape,
        })
    }

    /// y = monarch(x; w1, w2) + b.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2>
    where
        B: crate::SparseBackend,
    {
        let inputs = vec![float(x), float(self.w1.val()), float(self.w2.val())];
        let y: Tensor<B, 2> = sparse(&SparseOp::Monarch(self.shape), inputs, Vec::new());
        y + self.bias.val().unsqueeze()
    }

    /// The dense weight the factors represent ("reverse sparsification").
    pub fn to_dense(&self) -> DenseLinear<B> {
        let w = ref_monarch::to_dense(&host(&self.w1.val()), &host(&self.w2.val()), &self.shape);
        DenseLinear::new(to_device(&w, &self.w1.device()), self.bias.val())
    }
}

/// The linear a layer holds: one variant per method.
// Variants hold parameter handles (a few hundred bytes); one per layer, never in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Linear<B: Backend> {
    /// Full fine-tuning.
    Dense(DenseLinear<B>),
    /// LoRA.
    Lora(LoraLinear<B>),
    /// SaRA.
    Sara(SaraLinear<B>),
    /// PST.
    Pst(PstLinear<B>),
    /// Monarch.
    Monarch(MonarchLinear<B>),
    /// N:M semi-structured sparsity.
    Nm(super::nm::NmLinear<B>),
}

impl<B: crate::SparseBackend> Linear<B> {
    /// y = linear(x), x [T, in].
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Linear::Dense(l) => l.forward(x),
            Linear::Lora(l) => l.forward(x),
            Linear::Sara(l) => l.forward(x),
            Linear::Pst(l) => l.forward(x),
            Linear::Monarch(l) => l.forward(x),
            Linear::Nm(l) => l.forward(x),
        }
    }
}

impl<B: Backend> Linear<B> {
    /// The layer at training step `step` of `total` (PST's sparsity schedule; others as they are).
    pub fn at_step(self, step: usize, total: usize) -> Self {
        match self {
            Linear::Pst(l) => Linear::Pst(l.at_step(step, total)),
            other => other,
        }
    }

    /// The dense linear the layer computes (merged LoRA/SaRA, exported PST, Monarch to dense).
    pub fn to_dense(&self) -> DenseLinear<B> {
        match self {
            Linear::Dense(l) => DenseLinear::new(l.weight.val(), l.bias.val()),
            Linear::Lora(l) => l.merge(),
            Linear::Sara(l) => l.merge(),
            Linear::Pst(l) => l.export(),
            Linear::Monarch(l) => l.to_dense(),
            Linear::Nm(l) => l.to_dense(),
        }
    }
}
