//! What the DSL's macros expand to (`sparse_kernel!`, `#[derive(SparseModel)]`): the paths the
//! generated code names, the typed launch's shape check, and the per-field conversions of an
//! annotated model. Users rarely call these directly.

use crate::TrainError;
use crate::backend::{SparseOp, sparse};
use crate::modules::attention::{MultiHeadAttention, SptAttention};
use crate::modules::ffn::{DenseFfn, Ffn, RoutedFfn};
use crate::modules::linear::{
    DenseLinear, Linear, LoraLinear, MonarchLinear, PstLinear, SaraLinear,
};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use kernels_ir::pattern::{Pattern, PatternKind};
use kernels_ir::{Extent, KernelSpec, Role};

pub use crate::backend::{SparseBackend, float};
pub use burn;
pub use burn::tensor::{Int, Tensor};
pub use kernels_ir;
pub use kernels_ir::reference::rng::SplitMix64;

/// Why a typed launch refused its tensors.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The sizes read off the tensors do not make a valid spec.
    #[error(transparent)]
    Spec(#[from] kernels_ir::VerifyErrors),
    /// A tensor's shape differs from the spec's.
    #[error("`{tensor}` has shape {actual:?}; the kernel expects {expected}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// Its shape.
        actual: Vec<usize>,
        /// What the spec says.
        expected: String,
    },
}

/// The pattern of `family` from the canonical arguments kernels-ir accepted when the macro
/// expanded (the same function checked them then, so this cannot fail for generated calls).
pub fn pattern(family: &str, args: &[(&str, &str)]) -> Pattern {
    // The DSL spells families with `_` (a Rust identifier), the IR's text format with `-`.
    let kind: PatternKind = match family.replace('_', "-").parse() {
        Ok(k) => k,
        Err(e) => panic!("{family}: a family the macro accepted is unknown now: {e}"),
    };
    let items = args
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    match Pattern::from_args(kind, items) {
        Ok(p) => p,
        Err(e) => {
            panic!("{family}: arguments checked when the macro expanded are refused now: {e}")
        }
    }
}

/// Checks every named tensor against the spec's signature (axes the data decides, such as
/// SaRA's nnz, are free); tensors the signature does not list (SaRA's index) pass.
pub fn check_shapes(spec: &KernelSpec, tensors: &[(&str, Vec<usize>)]) -> Result<(), LaunchError> {
    let signature = spec.tensors()?;
    for (name, shape) in tensors {
        let Some(t) = signature
            .iter()
            .find(|t| t.role == Role::Input && t.name == *name)
        else {
            continue;
        };
        let fits = t.shape.len() == shape.len()
            && t.shape.iter().zip(shape).all(|(e, n)| match e {
                Extent::Fixed(v) => v == n,
                Extent::Nnz => true,
            });
        if !fits {
            return Err(LaunchError::Shape {
                tensor: name.to_string(),
                actual: shape.clone(),
                expected: t.shape_text(),
            });
        }
    }
    Ok(())
}

/// Runs the op of `spec` on its tensors (launch order of `SparseOp`).
pub fn run<B: SparseBackend, const D: usize>(
    spec: &KernelSpec,
    inputs: Vec<FloatTensor<B>>,
    ints: Vec<Tensor<B, 1, Int>>,
) -> Tensor<B, D> {
    let op = match spec.pattern {
        Pattern::PqTopK(p) => SparseOp::SptAttention(p),
        Pattern::Routed(r) => SparseOp::RoutedFfn(r),
        Pattern::Monarch(m) => SparseOp::Monarch(m),
        Pattern::Sara(_) => SparseOp::Sara,
        Pattern::Pst(p) => SparseOp::Pst(p),
        Pattern::Cbm(c) => SparseOp::CbmHead(c),
        Pattern::Nm(nm) => SparseOp::Nm(nm),
        other => panic!(
            "{}: the DSL generates typed launches only for the six op families with kernels, not {other:?}",
            spec.op
        ),
    };
    sparse(&op, inputs, ints)
}

/// How an annotated `Linear` field is converted.
#[derive(Clone, Debug, PartialEq)]
pub enum LinearMethod {
    /// A kernel pattern: `sara(..)`, `pst(..)` or `nm(..)`.
    Pattern(Pattern),
    /// `monarch(blocks = ..)`: the projection of the dense weight.
    Monarch {
        /// Blocks per factor.
        blocks: usize,
    },
    /// `lora(rank = .., alpha = ..)`.
    Lora {
        /// Rank.
        rank: usize,
        /// α.
        alpha: f64,
    },
}

fn dense_of<B: Backend>(l: Linear<B>, what: &str) -> Result<DenseLinear<B>, TrainError> {
    match l {
        Linear::Dense(d) => Ok(d),
        _ => Err(TrainError::Config {
            module: "SparseModel::from_dense",
            problem: format!("the {what} field is already sparse"),
            fix: "convert a dense model (merge() gives one back)",
        }),
    }
}

/// An annotated `Linear` field converted by `method`.
pub fn linear<B: Backend>(
    l: Linear<B>,
    method: LinearMethod,
    rng: &mut SplitMix64,
) -> Result<Linear<B>, TrainError> {
    let d = dense_of(l, "linear")?;
    Ok(match method {
        LinearMethod::Monarch { blocks } => Linear::Monarch(MonarchLinear::from_dense(d, blocks)?),
        LinearMethod::Lora { rank, alpha } => {
            Linear::Lora(LoraLinear::from_dense(d, rank, alpha, rng))
        }
        LinearMethod::Pattern(Pattern::Sara(s)) => {
            Linear::Sara(SaraLinear::from_dense(d.frozen_bias(), s.select)?)
        }
        LinearMethod::Pattern(Pattern::Pst(p)) => {
            Linear::Pst(PstLinear::from_dense(d.frozen_bias(), p, rng)?)
        }
        LinearMethod::Pattern(Pattern::Nm(nm)) => {
            Linear::Nm(crate::modules::NmLinear::from_dense(d, nm)?)
        }
        LinearMethod::Pattern(other) => {
            return Err(TrainError::Config {
                module: "SparseModel::from_dense",
                problem: format!("{:?} is not a linear's method", other.kind()),
                fix: "use monarch, sara, pst, nm or lora on a Linear field",
            });
        }
    })
}

/// An annotated attention field with SPT's sparse core (`pq_topk(..)`): a codebook for its head
/// dimension; re-fit it to real activations (`Encoder::refit_codebooks`, `SptAttention::refit`).
pub fn attention<B: Backend>(
    mut a: MultiHeadAttention<B>,
    pattern: Pattern,
    rng: &mut SplitMix64,
) -> Result<MultiHeadAttention<B>, TrainError> {
    let Pattern::PqTopK(p) = pattern else {
        return Err(TrainError::Config {
            module: "SparseModel::from_dense",
            problem: "an attention field takes pq_topk(..)".into(),
            fix: "write #[sparse(attention = pq_topk(..))]",
        });
    };
    let d = a.query.to_dense();
    let (_, d_model) = d.sizes();
    let head_dim = d_model / a.heads.max(1);
    let seq = match p.topk {
        kernels_ir::pattern::TopK::Fixed(k) => 8 * k.max(1),
        kernels_ir::pattern::TopK::SeqFraction(n) => 8 * n.max(1),
    };
    let device = d.weight.device();
    a.spt = Some(SptAttention::new(p, seq, head_dim, 0.5, rng, &device)?);
    Ok(a)
}

/// An annotated FFN field routed (`routed(..)`), its weights kept.
pub fn ffn<B: Backend>(
    f: Ffn<B>,
    pattern: Pattern,
    rng: &mut SplitMix64,
) -> Result<Ffn<B>, TrainError> {
    let Pattern::Routed(r) = pattern else {
        return Err(TrainError::Config {
            module: "SparseModel::from_dense",
            problem: "an ffn field takes routed(..)".into(),
            fix: "write #[sparse(ffn = routed(..))]",
        });
    };
    let Ffn::Dense(DenseFfn {
        intermediate,
        output,
    }) = f
    else {
        return Err(TrainError::Config {
            module: "SparseModel::from_dense",
            problem: "the ffn field is already routed".into(),
            fix: "convert a dense model (merge() gives one back)",
        });
    };
    let (up, down) = (dense_of(intermediate, "ffn")?, dense_of(output, "ffn")?);
    Ok(Ffn::Routed(RoutedFfn::from_dense(up, down, r, rng)?))
}

/// A linear field dense again.
pub fn merge_linear<B: Backend>(l: Linear<B>) -> Linear<B> {
    Linear::Dense(l.to_dense())
}

/// An attention field with dense softmax attention again.
pub fn merge_attention<B: Backend>(mut a: MultiHeadAttention<B>) -> MultiHeadAttention<B> {
    a.spt = None;
    a
}

/// An FFN field dense again (a routed one over the same weights).
pub fn merge_ffn<B: Backend>(f: Ffn<B>) -> Ffn<B> {
    match f {
        Ffn::Routed(r) => Ffn::Dense(DenseFfn {
            intermediate: Linear::Dense(DenseLinear::new(r.w1.val(), r.b1.val())),
            output: Linear::Dense(DenseLinear::new(r.w2.val(), r.b2.val())),
        }),
        Ffn::Dense(d) => Ffn::Dense(DenseFfn {
            intermediate: merge_linear(d.intermediate),
            output: merge_linear(d.output),
        }),
    }
}
