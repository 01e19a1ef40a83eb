//! The device self-test: every generated kernel, forward and backward, against the reference
//! executor on random shapes, on whichever device is given. The proptest suite (`tests/it`) and
//! `sparsecube selftest` (the check run on a lent GPU) both go through [`check_spt`] and
//! [`check_dense`], so the GPU is held to exactly what CI holds lavapipe to.
//!
//! Inputs are drawn in f64, rounded through the storage dtype, and handed unchanged to both sides;
//! the reference computes in f64 on those rounded values. Tolerances (norm-wise relative error):
//! 1e-5 for f32 storage, 1e-2 for f16/bf16 storage (f32 accumulation in both).

mod attention;
mod ffn;
mod linear;

pub use attention::{EncodeCase, SptCase, check_dense, check_encode, check_spt, quick_cases};
pub use ffn::{CbmCase, RoutedCase, check_cbm, check_routed};
pub use linear::{
    BlockDiagCase, LinearCase, MonarchCase, NmCase, PstCase, SaraCase, check_block_diag,
    check_linear, check_monarch, check_nm, check_pst, check_sara,
};

use crate::{Device, RuntimeError};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{self, Tensor, TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec};
use std::fmt;
/// Rounds every value through the storage dtype, so host reference and device see equal inputs.
pub fn round_to(t: &Tensor, dtype: DType) -> Tensor {
    let r = |v: f64| match dtype {
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        _ => f64::from(v as f32),
    };
    Tensor {
        shape: t.shape.clone(),
        data: t.data.iter().map(|&v| r(v)).collect(),
    }
}

/// ‖a − b‖₂ / max(‖b‖₂, floor); NaN when either side holds a NaN or the lengths differ.
pub fn rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>();
    diff.sqrt() / norm.sqrt().max(floor)
}

/// The relative error a storage dtype is held to.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// One compared output.
#[derive(Clone, Debug)]
pub struct Compared {
    /// Output name (`out`, `dq`, …).
    pub name: &'static str,
    /// Norm-wise relative error against the reference.
    pub error: f64,
    /// What it is held to.
    pub tolerance: f64,
}

/// What one case measured.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case, as text.
    pub case: String,
    /// Selected key slots that differ from the reference's (0 where indices are not compared).
    pub index_mismatches: usize,
    /// Every compared floating-point output.
    pub outputs: Vec<Compared>,
}

impl CaseReport {
    /// Indices identical and every error within its tolerance (a NaN fails).
    pub fn passed(&self) -> bool {
        self.index_mismatches == 0
            && self
                .outputs
                .iter()
                .all(|c| c.error.is_finite() && c.error <= c.tolerance)
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}]: indices {}",
            if self.passed() { "ok  " } else { "FAIL" },
            self.case,
            if self.index_mismatches == 0 {
                "equal".to_string()
            } else {
                format!("{} differ", self.index_mismatches)
            }
        )?;
        for c in &self.outputs {
            let mark = if c.error.is_finite() && c.error <= c.tolerance {
                ""
            } else {
                " (over)"
            };
            write!(f, ", {} {:.2e}/{:.0e}{mark}", c.name, c.error, c.tolerance)?;
        }
        Ok(())
    }
}

fn values(m: &TensorMap, name: &str) -> Result<Vec<f64>, RuntimeError> {
    match m.get(name) {
        Some(Value::F(t)) => Ok(t.data.clone()),
        Some(Value::I(t)) => Ok(t.data.iter().map(|&v| v as f64).collect()),
        None => Err(RuntimeError::Device {
            kind: "selftest",
            message: format!("the run returned no `{name}`"),
        }),
    }
}

/// Each `(name, shape, std)` drawn N(0, std²) from `rng` in order, rounded through `dtype`.
fn draw_normal(
    rng: &mut SplitMix64,
    dtype: DType,
    items: impl IntoIterator<Item = (&'static str, Vec<usize>, f64)>,
) -> TensorMap {
    items
        .into_iter()
        .map(|(name, shape, std)| {
            let t = round_to(&rng.normal_tensor(&shape, std), dtype);
            (name.to_string(), Value::F(t))
        })
        .collect()
}

/// Index slots of `name` that differ between the device and the reference (all of them when the
/// lengths differ).
fn mismatches(got: &TensorMap, want: &TensorMap, name: &str) -> Result<usize, RuntimeError> {
    let (g, w) = (values(got, name)?, values(want, name)?);
    Ok(if g.len() == w.len() {
        g.iter().zip(&w).filter(|(a, b)| a != b).count()
    } else {
        w.len().max(1)
    })
}

/// The device's and the reference executor's outputs of `spec` on `ins`.
fn both(
    device: &Device,
    spec: &KernelSpec,
    ins: &TensorMap,
) -> Result<(TensorMap, TensorMap), RuntimeError> {
    Ok((crate::run(device, spec, ins)?, reference::run(spec, ins)?))
}

/// `name` of the device run against the reference's, norm-wise relative.
fn compare(
    got: &TensorMap,
    want: &TensorMap,
    name: &'static str,
    tolerance: f64,
) -> Result<Compared, RuntimeError> {
    Ok(Compared {
        name,
        error: rel_err(&values(got, name)?, &values(want, name)?, 1e-12),
        tolerance,
    })
}

/// The forward of a case (its inputs without the upstream gradient `upstream`; outputs `fwd`)
/// and its backward (with it; outputs `bwd`), each on `device` and on the reference executor,
/// compared within [`tolerance`] of `dtype`.
#[allow(clippy::too_many_arguments)]
fn check_forward_backward(
    device: &Device,
    case: &dyn fmt::Display,
    dtype: DType,
    mut ins: TensorMap,
    spec: impl Fn(Direction) -> Result<KernelSpec, RuntimeError>,
    upstream: &str,
    fwd: &[&'static str],
    bwd: &[&'static str],
) -> Result<CaseReport, RuntimeError> {
    let grad = ins.remove(upstream).ok_or_else(|| RuntimeError::Device {
        kind: "selftest",
        message: format!("the case draws no `{upstream}`"),
    })?;
    let tol = tolerance(dtype);
    let mut report = CaseReport {
        case: case.to_string(),
        index_mismatches: 0,
        outputs: Vec::new(),
    };
    let (got, want) = both(device, &spec(Direction::Forward)?, &ins)?;
    for name in fwd {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    ins.insert(upstream.into(), grad);
    let (got, want) = both(device, &spec(Direction::Backward)?, &ins)?;
    for name in bwd {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    Ok(report)
}
