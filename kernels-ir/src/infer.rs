//! Building a kernel spec from the tensors a user hands to `run`: problem sizes and the
//! shape-determined pattern arguments (codebook size, block counts, ranks) are read off the
//! input shapes, the rest comes from `--param NAME=VALUE`.

use crate::args::ArgError;
use crate::op::{Direction, OpKind};
use crate::pattern::Pattern;
use crate::spec::KernelSpec;
use crate::verify::VerifyErrors;
use std::collections::BTreeMap;

/// Why no spec could be built from the inputs.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A tensor the sizes are read from is absent.
    #[error("missing tensor `{name}` for {op}: expected shape {expected}")]
    Missing {
        /// The op.
        op: OpKind,
        /// The tensor.
        name: String,
        /// Its shape in symbols, e.g. `[B, H, L, D]`.
        expected: String,
    },
    /// A tensor has the wrong number of axes.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected} for {op}")]
    Rank {
        /// The op.
        op: OpKind,
        /// The tensor.
        name: String,
        /// Its shape in symbols.
        expected: String,
        /// Its actual shape.
        actual: Vec<usize>,
    },
    /// A `--param` that the shapes already determine.
    #[error("param `{name}` of {op} is read from the shape of `{from}`; drop `--param {name}=...`")]
    Derived {
        /// The op.
        op: OpKind,
        /// The param.
        name: String,
        /// The tensor it comes from.
        from: String,
    },
    /// A param that does not parse or is unknown.
    #[error(transparent)]
    Param(#[from] ArgError),
    /// The resulting spec breaks a constraint.
    #[error(transparent)]
    Verify(#[from] VerifyErrors),
}

/// The spec `run OP` executes on tensors of the given shapes with the given params.
pub fn spec_for_inputs(
    op: OpKind,
    direction: Direction,
    params: &[(String, String)],
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<KernelSpec, InferError> {
    let get = |name: &str, symbols: &[&str]| -> Result<Vec<usize>, InferError> {
        let expected = format!("[{}]", symbols.join(", "));
        match shapes.get(name) {
            None => Err(InferError::Missing {
                op,
                name: name.into(),
                expected,
            }),
            Some(s) if s.len() != symbols.len() => Err(InferError::Rank {
                op,
                name: name.into(),
                expected,
                actual: s.clone(),
            }),
            Some(s) => Ok(s.clone()),
        }
    };
    let mut dims: Vec<(&str, usize)> = Vec::new();
    let mut derived: Vec<(&str, usize, &str)> = Vec::new();
    match op {
        OpKind::SptAttention | OpKind::PqEncode => {
            if op == OpKind::SptAttention {
                let q = get("q", &["B", "H", "L", "D"])?;
                dims.extend([("B", q[0]), ("H", q[1]), ("L", q[2]), ("D", q[3])]);
            } else {
                let x = get("x", &["N", "D"])?;
                dims.extend([("N", x[0]), ("D", x[1])]);
            }
            let cb = get("codebook", &["S", "E", "d_c"])?;
            derived.extend([
                ("codewords", cb[1], "codebook"),
                ("sub_dim", cb[2], "codebook"),
            ]);
        }
        OpKind::RoutedFfn => {
            let x = get("x", &["T", "d_model"])?;
            let w1 = get("w1", &["d_ff", "d_model"])?;
            let wr = get("wr", &["E", "d_model"])?;
            dims.extend([("T", x[0]), ("d_model", x[1]), ("d_ff", w1[0])]);
            derived.push(("blocks", wr[0], "wr"));
        }
        OpKind::Monarch => {
            let x = get("x", &["N", "k·p"])?;
            let w1 = get("w1", &["k", "q", "p"])?;
            let w2 = get("w2", &["l", "s", "r"])?;
            dims.push(("N", x[0]));
            derived.extend([
                ("k", w1[0], "w1"),
                ("q", w1[1], "w1"),
                ("p", w1[2], "w1"),
                ("l", w2[0], "w2"),
                ("s", w2[1], "w2"),
                ("r", w2[2], "w2"),
            ]);
        }
        OpKind::MonarchProject => {
            get("w", &["n_out", "n_in"])?;
        }
        OpKind::BlockDiagLinear => {
            let x = get("x", &["N", "in"])?;
            let w = get("w", &["blocks", "out/blocks", "in/blocks"])?;
            dims.extend([("N", x[0]), ("in", x[1]), ("out", w[0] * w[1])]);
            derived.push(("blocks", w[0], "w"));
        }
        OpKind::SaraLinear | OpKind::PstLinear | OpKind::DenseLinear | OpKind::NmLinear => {
            let x = get("x", &["T", "in"])?;
            let w = get("w", &["out", "in"])?;
            dims.extend([("T", x[0]), ("in", x[1]), ("out", w[0])]);
            if op == OpKind::PstLinear {
                let u = get("u", &["out", "r"])?;
                let ma = get("ma", &["out", "rm"])?;
                derived.extend([("rank", u[1], "u"), ("mask_rank", ma[1], "ma")]);
            }
        }
        OpKind::CbmHead => {
            let x = get("x", &["B", "C"])?;
            let wh = get("wh", &["K", "C"])?;
            dims.extend([("B", x[0]), ("C", x[1]), ("K", wh[0])]);
        }
    }
    let mut args: Vec<(String, String)> = params.to_vec();
    for (name, value, from) in derived {
        if params.iter().any(|(n, _)| n == name) {
            return Err(InferError::Derived {
                op,
                name: name.into(),
                from: from.into(),
            });
        }
        args.push((name.to_string(), value.to_string()));
    }
    let pattern = Pattern::from_args(op.pattern_kind(), args)?;
    Ok(KernelSpec::builder(op.name().replace('-', "_"), op)
        .direction(direction)
        .dims(dims)
        .pattern(pattern)
        .build()?)
}
