//! Operations, directions and tensor signatures.

use crate::dtype::DType;
use crate::pattern::{PatternKind, text_enum};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One operation of METHODS.md (the `run` contract's `OP`), plus the dense baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// SPT sparse multi-head attention: PQ encode, top-k select, SDDMM, softmax, SpMM.
    SptAttention,
    /// PQ encoding of row vectors (L1 argmin per subspace).
    PqEncode,
    /// SPT routed FFN / MoE.
    RoutedFfn,
    /// Monarch linear map.
    Monarch,
    /// Dense → Monarch projection (truncated SVD per sub-block).
    MonarchProject,
    /// One block-diagonal linear map.
    BlockDiagLinear,
    /// SaRA linear layer over the retrained smallest weights.
    SaraLinear,
    /// PST linear layer with importance-score mask.
    PstLinear,
    /// Sparse-CBM concept layer + top-k head.
    CbmHead,
    /// Dense linear layer (baseline).
    DenseLinear,
    /// N:M semi-structured sparse linear layer.
    NmLinear,
}
text_enum!(OpKind, "op", {
    SptAttention => "spt-attention", PqEncode => "pq-encode", RoutedFfn => "routed-ffn",
    Monarch => "monarch", MonarchProject => "monarch-project", BlockDiagLinear => "block-diag-linear",
    SaraLinear => "sara-linear", PstLinear => "pst-linear", CbmHead => "cbm-head",
    DenseLinear => "dense-linear", NmLinear => "nm-linear",
});

impl OpKind {
    /// The pattern family this op is defined for.
    pub fn pattern_kind(self) -> PatternKind {
        match self {
            OpKind::SptAttention | OpKind::PqEncode => PatternKind::PqTopK,
            OpKind::RoutedFfn => PatternKind::Routed,
            OpKind::Monarch | OpKind::MonarchProject => PatternKind::Monarch,
            OpKind::BlockDiagLinear => PatternKind::BlockDiagonal,
            OpKind::SaraLinear => PatternKind::Sara,
            OpKind::PstLinear => PatternKind::Pst,
            OpKind::CbmHead => PatternKind::Cbm,
            OpKind::DenseLinear => PatternKind::Dense,
            OpKind::NmLinear => PatternKind::Nm,
        }
    }

    /// The named problem sizes the op needs, in canonical order (shapes that the pattern fixes,
    /// such as Monarch's factors, are not dims).
    pub fn dim_names(self) -> &'static [&'static str] {
        match self {
            OpKind::SptAttention => &["B", "H", "L", "D"],
            OpKind::PqEncode => &["N", "D"],
            OpKind::RoutedFfn => &["T", "d_model", "d_ff"],
            OpKind::Monarch => &["N"],
            OpKind::MonarchProject => &[],
            OpKind::BlockDiagLinear => &["N", "in", "out"],
            OpKind::SaraLinear | OpKind::PstLinear | OpKind::DenseLinear | OpKind::NmLinear => {
                &["T", "in", "out"]
            }
            OpKind::CbmHead => &["B", "C", "K"],
        }
    }

    /// Whether the op has a backward (gradient) form.
    pub fn has_backward(self) -> bool {
        !matches!(self, OpKind::PqEncode | OpKind::MonarchProject)
    }

    /// The name of the upstream gradient input of the backward form.
    pub fn upstream_grad(self) -> Option<&'static str> {
        match self {
            OpKind::SptAttention => Some("dout"),
            OpKind::CbmHead => Some("dlogits"),
            OpKind::PqEncode | OpKind::MonarchProject => None,
            _ => Some("dy"),
        }
    }
}

/// Forward or backward form of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Computes the op's outputs.
    Forward,
    /// Computes the gradients of the op's inputs from the upstream gradient.
    Backward,
}
text_enum!(Direction, "direction", { Forward => "forward", Backward => "backward" });

/// Whether a kernel reads or writes a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read by the kernel.
    Input,
    /// Written by the kernel.
    Output,
}

/// One axis length of a tensor signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Extent {
    /// Known from the spec.
    Fixed(usize),
    /// The number of selected entries, known only from the data (SaRA's mask).
    Nnz,
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extent::Fixed(n) => write!(f, "{n}"),
            Extent::Nnz => f.write_str("nnz"),
        }
    }
}

/// A named tensor a kernel reads or writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The name `run` reads from / writes to safetensors files.
    pub name: String,
    /// Axis lengths, row-major.
    pub shape: Vec<Extent>,
    /// Element type.
    pub dtype: DType,
    /// Read or written.
    pub role: Role,
    /// An input that may be absent (a default is derived instead).
    pub optional: bool,
}

impl TensorSpec {
    /// Whether `shape` matches this signature; `nnz` is the value an [`Extent::Nnz`] axis must
    /// take (`None`: any).
    pub fn matches(&self, shape: &[usize], nnz: Option<usize>) -> bool {
        shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(e, &n)| match e {
                Extent::Fixed(m) => *m == n,
                Extent::Nnz => nnz.is_none_or(|k| k == n),
            })
    }

    /// The shape as text, e.g. `[2, 4, nnz]`.
    pub fn shape_text(&self) -> String {
        let parts: Vec<String> = self.shape.iter().map(|e| e.to_string()).collect();
        format!("[{}]", parts.join(", "))
    }
}
