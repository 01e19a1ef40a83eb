//! Self-test cases of the routed FFN and the Sparse-CBM head.

use super::{
    CaseReport, Compared, both, check_forward_backward, compare, draw_normal, mismatches,
    tolerance, values,
};
use crate::{Device, RuntimeError};
use kernels_ir::pattern::{Activation, Cbm, GateMode, Pattern, Routed, Router};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{self, Tensor, TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec, OpKind};
use std::fmt;

/// One routed FFN problem: sizes, pattern, storage dtype and input seed.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedCase {
    /// Tokens.
    pub t: usize,
    /// Model width.
    pub dm: usize,
    /// Hidden width per block (d_ff = bs · blocks).
    pub bs: usize,
    /// The routed pattern.
    pub routed: Routed,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for RoutedCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.routed;
        write!(
            f,
            "routed T={} d_model={} d_ff={} blocks={} top={} {} gate={} scale={} {} {} seed={}",
            self.t,
            self.dm,
            self.bs * r.blocks,
            r.blocks,
            r.top,
            r.router.name(),
            r.gate.name(),
            r.gate_scale,
            r.act.name(),
            self.dtype,
            self.seed
        )
    }
}

impl RoutedCase {
    /// A random case: T in 1..=`max_t` (past the 64-token grouping chunk when large), d_model in
    /// 1..20, block size 1..6, blocks ∈ {2, 4, 8, 16}, top ∈ {1, 2, blocks} (so some groups are
    /// empty and some hold every token), every router, gate mode and activation.
    pub fn draw(rng: &mut SplitMix64, max_t: usize, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let blocks = [2, 4, 8, 16][pick(4)];
        let top = [1, 2.min(blocks), blocks][pick(3)];
        let routed = Routed {
            blocks,
            top,
            router: [Router::Sigmoid, Router::Softmax][pick(2)],
            gate: [GateMode::Output, GateMode::None, GateMode::SptLora][pick(3)],
            gate_scale: [2.0, 0.5][pick(2)],
            act: [Activation::Relu, Activation::Gelu][pick(2)],
        };
        let (t, dm, bs) = (1 + pick(max_t), 1 + pick(19), 1 + pick(5));
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            t,
            dm,
            bs,
            routed,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("routed", OpKind::RoutedFfn)
            .dims([
                ("T", self.t),
                ("d_model", self.dm),
                ("d_ff", self.bs * self.routed.blocks),
            ])
            .pattern(Pattern::Routed(self.routed))
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// x, the weights and dy, rounded through the storage dtype. Weights are N(0, 1/fan-in), so
    /// router logits stay O(1): a saturated sigmoid ties in f32 where f64 does not, and the kept
    /// blocks would then legitimately differ.
    pub fn inputs(&self) -> TensorMap {
        let mut rng = SplitMix64::new(self.seed);
        let (t, dm, e) = (self.t, self.dm, self.routed.blocks);
        let dff = self.bs * e;
        let fan = |n: usize| 1.0 / (n as f64).sqrt();
        let mut m = TensorMap::new();
        m.extend(draw_normal(
            &mut rng,
            self.dtype,
            [
                ("x", vec![t, dm], 1.0),
                ("w1", vec![dff, dm], fan(dm)),
                ("b1", vec![dff], 0.1),
                ("w2", vec![dm, dff], fan(dff)),
                ("b2", vec![dm], 0.1),
                ("wr", vec![e, dm], fan(dm)),
                ("br", vec![e], 0.1),
                ("dy", vec![t, dm], 1.0),
            ],
        ));
        m
    }

    /// ‖Σ_t |dlogit_t|·|x_t|‖ and ‖Σ_t |dlogit_t|‖ (each token's router-logit gradient is the `dbr`
    /// of a one-token reference run): the scale of the sums behind dwr and dbr.
    fn router_term_scale(&self, ins: &TensorMap) -> Result<(f64, f64), RuntimeError> {
        let (dm, e) = (self.dm, self.routed.blocks);
        let mut abs_w = vec![0.0; e * dm];
        let mut abs_b = vec![0.0; e];
        let one = RoutedCase {
            t: 1,
            ..self.clone()
        };
        let spec = one.spec(Direction::Backward)?;
        for tok in 0..self.t {
            let mut row = ins.clone();
            for name in ["x", "dy"] {
                let full = values(ins, name)?;
                let t = Tensor {
                    shape: vec![1, dm],
                    data: full[tok * dm..(tok + 1) * dm].to_vec(),
                };
                row.insert(name.into(), Value::F(t));
            }
            let g = reference::run(&spec, &row)?;
            let dlogit = values(&g, "dbr")?;
            let x = values(&row, "x")?;
            for k in 0..e {
                abs_b[k] += dlogit[k].abs();
                for i in 0..dm {
                    abs_w[k * dm + i] += (dlogit[k] * x[i]).abs();
                }
            }
        }
        let norm = |v: &[f64]| v.iter().map(|y| y * y).sum::<f64>().sqrt();
        Ok((norm(&abs_w), norm(&abs_b)))
    }
}

/// Runs `case` forward and backward on `device` and on the reference executor and compares: the
/// kept blocks exactly; `y`, dx, dw1, db1, dw2, db2 within [`tolerance`]; dwr and dbr within
/// [`tolerance`] of the larger of their norm and the norm of their sums' absolute terms. (The
/// router gradients are sums over tokens of per-token logit gradients that cancel — for a softmax
/// over 2 blocks, exactly per token — so their size can fall below what f32 terms resolve.)
pub fn check_routed(device: &Device, case: &RoutedCase) -> Result<CaseReport, RuntimeError> {
    let mut ins = case.inputs();
    let dy = ins.remove("dy").expect("inputs() draws dy");
    let tol = tolerance(case.dtype);
    let mut report = CaseReport {
        case: case.to_string(),
        index_mismatches: 0,
        outputs: Vec::new(),
    };
    let fwd = case.spec(Direction::Forward)?;
    let (got, want) = both(device, &fwd, &ins)?;
    report.index_mismatches = mismatches(&got, &want, "blocks")?;
    report.outputs.push(compare(&got, &want, "y", tol)?);
    ins.insert("dy".into(), dy);
    let bwd = case.spec(Direction::Backward)?;
    let (got, want) = both(device, &bwd, &ins)?;
    for name in ["dx", "dw1", "db1", "dw2", "db2"] {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    let (kappa_w, kappa_b) = case.router_term_scale(&ins)?;
    for (name, kappa) in [("dwr", kappa_w), ("dbr", kappa_b)] {
        let (a, b) = (values(&got, name)?, values(&want, name)?);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        report.outputs.push(Compared {
            name,
            error: diff / norm.max(kappa).max(1e-12),
            tolerance: tol,
        });
    }
    Ok(report)
}

/// One Sparse-CBM head problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CbmCase {
    /// Rows (samples).
    pub b: usize,
    /// Concepts.
    pub c: usize,
    /// Classes.
    pub k: usize,
    /// Concepts kept per row (0: all, the dense head).
    pub topk: usize,
    /// With the optional noise input.
    pub noise: bool,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for CbmCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cbm-head B={} C={} K={} topk={}{} {} seed={}",
            self.b,
            self.c,
            self.k,
            self.topk,
            if self.noise { " noise" } else { "" },
            self.dtype,
            self.seed
        )
    }
}

impl CbmCase {
    /// A random case: B in 1..40, C in 1..30, K in 1..10, topk 0 (dense head), 1, a middle count
    /// or every concept, with or without noise.
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let (b, c, k) = (1 + pick(39), 1 + pick(29), 1 + pick(9));
        let topk = [0, 1, 1 + pick(c), c][pick(4)];
        let noise = pick(2) == 1;
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            b,
            c,
            k,
            topk,
            noise,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("cbm", OpKind::CbmHead)
            .dims([("B", self.b), ("C", self.c), ("K", self.k)])
            .pattern(Pattern::Cbm(Cbm { topk: self.topk }))
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// x, wc, wh (N(0, 1/C)), noise (N(0, 1/4), when drawn) and dlogits, rounded through the
    /// storage dtype.
    pub fn inputs(&self) -> TensorMap {
        let mut rng = SplitMix64::new(self.seed);
        let fan = 1.0 / (self.c as f64).sqrt();
        let mut m = TensorMap::new();
        m.extend(draw_normal(
            &mut rng,
            self.dtype,
            [
                ("x", vec![self.b, self.c], 1.0),
                ("wc", vec![self.c, self.c], fan),
                ("wh", vec![self.k, self.c], fan),
                ("noise", vec![self.b, self.c], 0.5),
                ("dlogits", vec![self.b, self.k], 1.0),
            ],
        ));
        if !self.noise {
            m.remove("noise");
        }
        m
    }
}

/// Runs `case` forward and backward on `device` and on the reference executor and compares z,
/// logits, dx, dwc and dwh within [`tolerance`] (a different kept set shows as a logits error).
pub fn check_cbm(device: &Device, case: &CbmCase) -> Result<CaseReport, RuntimeError> {
    check_forward_backward(
        device,
        case,
        case.dtype,
        case.inputs(),
        |d| case.spec(d),
        "dlogits",
        &["z", "logits"],
        &["dx", "dwc", "dwh"],
    )
}
