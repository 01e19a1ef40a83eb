//! The reference executor: f64 implementations of every op of METHODS.md, forward and backward,
//! with exact tie-breaking and empty slots. It is the oracle every kernel is compared with, so it
//! favours plain loops that read like the formulas over speed.
//!
//! [`run`] executes a verified [`KernelSpec`] on named tensors, checking every input against the
//! spec's tensor signature first; the per-family modules expose the pieces (selection held fixed,
//! gradients for a given mask) that tests and kernels compare against one by one.

pub mod cbm;
pub mod dense;
pub mod linalg;
pub mod monarch;
pub mod nm;
pub mod pst;
pub mod rng;
pub mod routed;
pub mod sara;
pub mod spt;
pub mod tensor;

use crate::op::{Direction, OpKind, Role};
use crate::pattern::Pattern;
use crate::spec::KernelSpec;
use crate::verify::VerifyErrors;
use std::collections::BTreeMap;
pub use tensor::{IndexTensor, Tensor, Value};

/// Named tensors in and out of [`run`].
pub type TensorMap = BTreeMap<String, Value>;

/// Why the reference executor refused its inputs.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The spec itself is invalid.
    #[error(transparent)]
    Spec(#[from] VerifyErrors),
    /// An input the op does not read.
    #[error("unknown tensor `{name}` for {op}: it reads {expected}")]
    UnknownTensor {
        /// The op.
        op: OpKind,
        /// The offending name.
        name: String,
        /// The names it reads.
        expected: String,
    },
    /// A required input is absent.
    #[error("missing tensor `{name}` for {op}: expected shape {expected}")]
    MissingTensor {
        /// The op.
        op: OpKind,
        /// The missing name.
        name: String,
        /// Its expected shape.
        expected: String,
    },
    /// An input has the wrong shape.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// Expected shape, e.g. `[2, 4, 16, 64]`.
        expected: String,
        /// Actual shape.
        actual: Vec<usize>,
    },
    /// A float tensor where indices are expected, or the reverse.
    #[error("tensor `{name}` must hold {expected} values")]
    WrongKind {
        /// The tensor.
        name: String,
        /// `f32` or `i64`.
        expected: String,
    },
    /// A value outside what the op accepts.
    #[error("tensor `{name}`: {message}")]
    BadValue {
        /// The tensor.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The outputs would not fit in this machine's memory.
    #[error(
        "{op}: the reference's outputs need {} of host memory, {} are available; run a smaller problem (or on a device: --device cuda or wgpu)",
        gib(*need),
        gib(*limit)
    )]
    TooLarge {
        /// The op.
        op: OpKind,
        /// Bytes the outputs need (f64 and i64: 8 bytes an element).
        need: u128,
        /// Bytes the machine has available.
        limit: u128,
    },
}

fn gib(bytes: u128) -> String {
    format!(
        "{:.1} GiB ({bytes} bytes)",
        bytes as f64 / f64::from(1u32 << 30)
    )
}

/// Bytes of host memory available now (Linux `MemAvailable`), when known.
pub fn host_memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Refuses a run whose outputs (8 bytes an element in the executor) exceed the host memory
/// available: the allocation would abort the process otherwise.
fn check_host_memory(spec: &KernelSpec, inputs: &TensorMap) -> Result<(), ReferenceError> {
    let nnz = inputs
        .get("v")
        .or_else(|| inputs.get("mask_index"))
        .map(|v| v.shape().iter().product::<usize>());
    let need: u128 = spec
        .tensors()?
        .iter()
        .filter(|t| t.role != Role::Input)
        .map(|t| {
            t.shape
                .iter()
                .map(|e| match e {
                    crate::op::Extent::Fixed(n) => *n as u128,
                    crate::op::Extent::Nnz => nnz.unwrap_or(0) as u128,
                })
                .fold(8u128, u128::saturating_mul)
        })
        .fold(0, u128::saturating_add);
    match host_memory_available() {
        Some(limit) if need > u128::from(limit) => Err(ReferenceError::TooLarge {
            op: spec.op,
            need,
            limit: u128::from(limit),
        }),
        _ => Ok(()),
    }
}

/// Checks `inputs` against the tensor signature of `spec`: no unknown names, nothing required
/// missing, the right kind (float or index) and shape, finite values.
pub fn check_inputs(spec: &KernelSpec, inputs: &TensorMap) -> Result<(), ReferenceError> {
    let sig = spec.tensors()?;
    let ins: Vec<_> = sig.iter().filter(|t| t.role == Role::Input).collect();
    for name in inputs.keys() {
        if !ins.iter().any(|t| &t.name == name) {
            let expected: Vec<String> = ins.iter().map(|t| format!("`{}`", t.name)).collect();
            return Err(ReferenceError::UnknownTensor {
                op: spec.op,
                name: name.clone(),
                expected: expected.join(", "),
            });
        }
    }
    for t in ins {
        match inputs.get(&t.name) {
            None if t.optional => {}
            None => {
                return Err(ReferenceError::MissingTensor {
                    op: spec.op,
                    name: t.name.clone(),
                    expected: t.shape_text(),
                });
            }
            Some(v) => {
                let is_index = matches!(v, Value::I(_));
                if is_index != (t.dtype == crate::DType::I64) {
                    let expected = if t.dtype == crate::DType::I64 {
                        "i64"
                    } else {
                        "floating-point"
                    };
                    return Err(ReferenceError::WrongKind {
                        name: t.name.clone(),
                        expected: expected.into(),
                    });
                }
                if !t.matches(v.shape(), None) {
                    return Err(ReferenceError::ShapeMismatch {
                        name: t.name.clone(),
                        expected: t.shape_text(),
                        actual: v.shape().to_vec(),
                    });
                }
                // Finite, and finite once stored in the kernel's dtype (what the device holds).
                let max = t.dtype.max_finite().unwrap_or(f64::MAX);
                if let Value::F(x) = v
                    && let Some(pos) = x.data.iter().position(|a| a.is_nan() || a.abs() > max)
                {
                    let a = x.data[pos];
                    let message = if a.is_finite() {
                        format!(
                            "element {pos} is {a:e}, beyond {}'s range (±{max:e}): it would be ±inf once stored; scale the input",
                            t.dtype
                        )
                    } else {
                        format!("element {pos} is {a}; inputs must be finite")
                    };
                    return Err(ReferenceError::BadValue {
                        name: t.name.clone(),
                        message,
                    });
                }
            }
        }
    }
    Ok(())
}

fn put(out: &mut TensorMap, name: &str, v: impl Into<Value>) {
    out.insert(name.to_string(), v.into());
}

fn f<'a>(inputs: &'a TensorMap, name: &str) -> &'a Tensor {
    match inputs.get(name) {
        Some(Value::F(t)) => t,
        _ => unreachable!("check_inputs validated `{name}`"),
    }
}

fn opt<'a>(inputs: &'a TensorMap, name: &str) -> Option<&'a Tensor> {
    match inputs.get(name) {
        Some(Value::F(t)) => Some(t),
        _ => None,
    }
}

/// Runs `spec` on `inputs` and returns every output its signature names (forward: the op's
/// outputs; backward: the gradients).
pub fn run(spec: &KernelSpec, inputs: &TensorMap) -> Result<TensorMap, ReferenceError> {
    check_inputs(spec, inputs)?;
    check_host_memory(spec, inputs)?;
    let mut out = TensorMap::new();
    let bwd = spec.direction == Direction::Backward;
    let g = |name| f(inputs, name);
    match (spec.op, &spec.pattern) {
        (OpKind::SptAttention, Pattern::PqTopK(p)) => {
            let (q, k, v) = (g("q"), g("k"), g("v"));
            // Block-granular selection keeps key blocks; the attention runs over their keys.
            let (idx, blocks) = if p.block > 1 {
                let blocks = spt::select_blocks(q, k, g("codebook"), p, spec.topk());
                let l = spec.dim("L");
                (
                    spt::expand_blocks(&blocks, l, p.block, p.causal),
                    Some(blocks),
                )
            } else {
                (spt::select(q, k, g("codebook"), p, spec.topk()), None)
            };
            if bwd {
                let (dq, dk, dv) = spt::attention_backward(q, k, v, &idx, g("dout"), p.clamp);
                put(&mut out, "dq", dq);
                put(&mut out, "dk", dk);
                put(&mut out, "dv", dv);
            } else {
                put(
                    &mut out,
                    "out",
                    spt::attention_forward(q, k, v, &idx, p.clamp).0,
                );
                put(&mut out, "indices", blocks.unwrap_or(idx));
            }
        }
        (OpKind::PqEncode, Pattern::PqTopK(_)) => {
            put(&mut out, "codes", spt::pq_encode(g("x"), g("codebook")));
        }
        (OpKind::RoutedFfn, Pattern::Routed(r)) => {
            let w = routed::RoutedWeights {
                w1: g("w1"),
                b1: g("b1"),
                w2: g("w2"),
                b2: g("b2"),
                wr: g("wr"),
                br: g("br"),
            };
            let x = g("x");
            let blocks = routed::route(&routed::gates(x, &w, r), r.top);
            if bwd {
                let gr = routed::backward(x, &w, &blocks, g("dy"), r);
                for (n, t) in [
                    ("dx", gr.dx),
                    ("dw1", gr.dw1),
                    ("db1", gr.db1),
                    ("dw2", gr.dw2),
                    ("db2", gr.db2),
                    ("dwr", gr.dwr),
                    ("dbr", gr.dbr),
                ] {
                    put(&mut out, n, t);
                }
            } else {
                put(&mut out, "y", routed::forward(x, &w, &blocks, r));
                put(&mut out, "blocks", blocks);
            }
        }
        (OpKind::Monarch, Pattern::Monarch(m)) => {
            if bwd {
                let (dx, dw1, dw2) = monarch::backward(g("x"), g("w1"), g("w2"), g("dy"), m);
                put(&mut out, "dx", dx);
                put(&mut out, "dw1", dw1);
                put(&mut out, "dw2", dw2);
            } else {
                put(&mut out, "y", monarch::forward(g("x"), g("w1"), g("w2"), m));
            }
        }
        (OpKind::MonarchProject, Pattern::Monarch(m)) => {
            let (w1, w2) = monarch::project(g("w"), m)?;
            put(&mut out, "w1", w1);
            put(&mut out, "w2", w2);
        }
        (OpKind::BlockDiagLinear, Pattern::BlockDiagonal(_)) => {
            if bwd {
                let (dx, dw) = monarch::block_diag_backward(g("x"), g("w"), g("dy"));
                put(&mut out, "dx", dx);
                put(&mut out, "dw", dw);
            } else {
                put(&mut out, "y", monarch::block_diag_forward(g("x"), g("w")));
            }
        }
        (OpKind::SaraLinear, Pattern::Sara(s)) => {
            let (x, w) = (g("x"), g("w"));
            let mask = sara::mask(w, s.select);
            let v: Vec<f64> = match opt(inputs, "v") {
                Some(v) if v.numel() != mask.len() => {
                    return Err(ReferenceError::ShapeMismatch {
                        name: "v".into(),
                        expected: format!("[{}] (nnz of the mask)", mask.len()),
                        actual: v.shape.clone(),
                    });
                }
                Some(v) => v.data.clone(),
                None => mask.iter().map(|&i| w.data[i]).collect(),
            };
            if bwd {
                let (dx, dv, dbias) = sara::backward(x, w, &mask, &v, g("dy"));
                put(&mut out, "dx", dx);
                put(&mut out, "dv", dv);
                put(&mut out, "dbias", dbias);
            } else {
                put(&mut out, "y", sara::forward(x, w, g("bias"), &mask, &v));
                put(
                    &mut out,
                    "mask_index",
                    IndexTensor {
                        shape: vec![mask.len()],
                        data: mask.iter().map(|&i| i as i64).collect(),
                    },
                );
                put(
                    &mut out,
                    "v",
                    Tensor {
                        shape: vec![v.len()],
                        data: v,
                    },
                );
            }
        }
        (OpKind::PstLinear, Pattern::Pst(p)) => {
            let w = pst::PstWeights {
                w: g("w"),
                u: g("u"),
                v: g("v"),
                ma: g("ma"),
                mb: g("mb"),
                mr: g("mr"),
                mc: g("mc"),
            };
            let (y, mask) = pst::forward(g("x"), g("bias"), &w, p);
            if bwd {
                let gr = pst::backward(g("x"), &w, &mask, g("dy"), p);
                for (n, t) in [
                    ("dx", gr.dx),
                    ("dbias", gr.dbias),
                    ("du", gr.du),
                    ("dv", gr.dv),
                    ("dma", gr.dma),
                    ("dmb", gr.dmb),
                    ("dmr", gr.dmr),
                    ("dmc", gr.dmc),
                ] {
                    put(&mut out, n, t);
                }
            } else {
                put(&mut out, "y", y);
                put(&mut out, "mask", mask);
            }
        }
        (OpKind::CbmHead, Pattern::Cbm(c)) => {
            let (x, wc, wh) = (g("x"), g("wc"), g("wh"));
            let (z, keep, logits) = cbm::forward(x, wc, wh, opt(inputs, "noise"), c.topk);
            if bwd {
                let (dx, dwc, dwh) = cbm::backward(x, wc, wh, &keep, g("dlogits"));
                put(&mut out, "dx", dx);
                put(&mut out, "dwc", dwc);
                put(&mut out, "dwh", dwh);
            } else {
                put(&mut out, "z", z);
                put(&mut out, "logits", logits);
            }
        }
        (OpKind::NmLinear, Pattern::Nm(nm)) => {
            let (x, w) = (g("x"), g("w"));
            let mask = nm::mask(w, nm.n, nm.m);
            let v: Vec<f64> = match opt(inputs, "v") {
                Some(v) => v.data.clone(),
                None => mask.iter().map(|&i| w.data[i]).collect(),
            };
            if bwd {
                let (dx, dv, dbias) = nm::backward(x, w, &mask, &v, g("dy"));
                put(&mut out, "dx", dx);
                put(&mut out, "dv", dv);
                put(&mut out, "dbias", dbias);
            } else {
                put(&mut out, "y", nm::forward(x, w, g("bias"), &mask, &v));
                put(
                    &mut out,
                    "mask_index",
                    IndexTensor {
                        shape: vec![mask.len()],
                        data: mask.iter().map(|&i| i as i64).collect(),
                    },
                );
                put(
                    &mut out,
                    "v",
                    Tensor {
                        shape: vec![v.len()],
                        data: v,
                    },
                );
            }
        }
        (OpKind::DenseLinear, Pattern::Dense) => {
            if bwd {
                let (dx, dw, dbias) = dense::linear_backward(g("x"), g("w"), g("dy"));
                put(&mut out, "dx", dx);
                put(&mut out, "dw", dw);
                put(&mut out, "dbias", dbias);
            } else {
                put(
                    &mut out,
                    "y",
                    dense::linear_forward(g("x"), g("w"), g("bias")),
                );
            }
        }
        _ => unreachable!("spec.tensors() verified the op/pattern pairing"),
    }
    Ok(out)
}
