//! The device self-test: every generated kernel, forward and backward, against the reference
//! executor on random shapes, on whichever device is given. The proptest suite (`tests/it`) and
//! `sparsecube selftest` (the check run on a lent GPU) both go through [`check_spt`] and
//! [`check_dense`], so the GPU is held to exactly what CI holds lavapipe to.
//!
//! Inputs are drawn in f64, rounded through the storage dtype, and handed unchanged to both sides;
//! the reference computes in f64 on those rounded values. Tolerances (norm-wise relative error):
//! 1e-5 for f32 storage, 1e-2 for f16/bf16 storage (f32 accumulation in both).

use crate::{Device, RuntimeError};
use kernels_ir::pattern::{
    Activation, BlockDiagonal, Cbm, GateMode, MonarchShape, Pattern, PqTopK, Pst, Routed, Router,
    Sara, SaraSelect, Selector, TopK,
};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{self, Tensor, TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec, OpKind, Schedule};
use std::fmt;

/// One SPT attention problem: sizes, pattern flags, schedule, storage dtype and input seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SptCase {
    /// Batch.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Sequence length.
    pub l: usize,
    /// Head dimension (a multiple of 8: the PQ sub-vector length).
    pub d: usize,
    /// Kept keys per query.
    pub topk: usize,
    /// Causal candidates only (key ≤ query).
    pub causal: bool,
    /// Scores clamped to ±10 (with a zero gradient outside).
    pub clamp: bool,
    /// `pq-adc` selection (else `pq-match`).
    pub adc: bool,
    /// The fused forward kernel (else the SDDMM → softmax → SpMM chain).
    pub fused: bool,
    /// Storage dtype of q, k, v, codebook, dout and the outputs.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for SptCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "B={} H={} L={} D={} topk={} {}{}{} {} {} seed={}",
            self.b,
            self.h,
            self.l,
            self.d,
            self.topk,
            if self.causal { "causal " } else { "" },
            if self.clamp { "clamp " } else { "" },
            if self.adc { "pq-adc" } else { "pq-match" },
            if self.fused { "fused" } else { "unfused" },
            self.dtype,
            self.seed
        )
    }
}

impl SptCase {
    /// A random case with L in 1..=`max_l` (so L is rarely a multiple of any tile), topk in
    /// 1..=min(L, 13) (rarely a power of two; with `causal`, the first rows have fewer than topk
    /// candidates), D ∈ {16, 32, 64}, every flag drawn, and the dtype drawn from `dtypes`.
    pub fn draw(rng: &mut SplitMix64, max_l: usize, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let l = 1 + pick(max_l);
        let d = [16, 32, 64][pick(3)];
        let topk = 1 + pick(l.min(13));
        let (b, h) = (1 + pick(2), 1 + pick(2));
        let [causal, clamp, adc, fused] = [(); 4].map(|_| pick(2) == 1);
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            b,
            h,
            l,
            d,
            topk,
            causal,
            clamp,
            adc,
            fused,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        let selector = if self.adc {
            Selector::PqAdc
        } else {
            Selector::PqMatch
        };
        KernelSpec::builder("spt", OpKind::SptAttention)
            .dims([("B", self.b), ("H", self.h), ("L", self.l), ("D", self.d)])
            .pattern(Pattern::PqTopK(PqTopK {
                topk: TopK::Fixed(self.topk),
                causal: self.causal,
                clamp: self.clamp,
                selector,
                ..PqTopK::default()
            }))
            .dtype(self.dtype)
            .direction(direction)
            .schedule(Schedule {
                fused: self.fused,
                ..Schedule::default()
            })
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// `q`, `k`, `v`, `codebook` and `dout`, N(0, 1) (q, k and the codebook N(0, 9) with clamp on,
    /// so that some scores pass ±10), rounded through the storage dtype.
    pub fn inputs(&self) -> TensorMap {
        let mut rng = SplitMix64::new(self.seed);
        let shape = [self.b, self.h, self.l, self.d];
        let std = if self.clamp { 3.0 } else { 1.0 };
        let mut m = TensorMap::new();
        for (name, s) in [("q", std), ("k", std), ("v", 1.0), ("dout", 1.0)] {
            let t = round_to(&rng.normal_tensor(&shape, s), self.dtype);
            m.insert(name.into(), Value::F(t));
        }
        let cb = rng.normal_tensor(&[self.d / 8, 16, 8], std);
        m.insert("codebook".into(), Value::F(round_to(&cb, self.dtype)));
        m
    }
}

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

/// Runs `case` forward and backward on `device` and on the reference executor and compares:
/// selected indices exactly, `out`, `dq`, `dk`, `dv` within [`tolerance`].
pub fn check_spt(device: &Device, case: &SptCase) -> Result<CaseReport, RuntimeError> {
    let mut ins = case.inputs();
    let dout = ins.remove("dout").expect("inputs() draws dout");
    let tol = tolerance(case.dtype);
    let mut report = CaseReport {
        case: case.to_string(),
        index_mismatches: 0,
        outputs: Vec::new(),
    };

    let fwd = case.spec(Direction::Forward)?;
    let (got, want) = both(device, &fwd, &ins)?;
    report.index_mismatches = mismatches(&got, &want, "indices")?;
    report.outputs.push(compare(&got, &want, "out", tol)?);

    ins.insert("dout".into(), dout);
    let bwd = case.spec(Direction::Backward)?;
    let (got, want) = both(device, &bwd, &ins)?;
    for name in ["dq", "dk", "dv"] {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    Ok(report)
}

/// The dense attention baseline on `device` against the reference with every candidate kept
/// (topk = L, `pq-match`, f32): `out`, `dq`, `dk`, `dv` within 1e-5.
pub fn check_dense(device: &Device, case: &SptCase) -> Result<CaseReport, RuntimeError> {
    let case = SptCase {
        topk: case.l,
        adc: false,
        dtype: DType::F32,
        ..case.clone()
    };
    let ins = case.inputs();
    let mut fwd_ins = ins.clone();
    fwd_ins.remove("dout");
    let want_fwd = reference::run(&case.spec(Direction::Forward)?, &fwd_ins)?;
    let want_bwd = reference::run(&case.spec(Direction::Backward)?, &ins)?;
    let got = crate::dense_attention(device, &case.spec(Direction::Forward)?, &ins)?;
    let mut outputs = Vec::new();
    for (name, want) in [
        ("out", &want_fwd),
        ("dq", &want_bwd),
        ("dk", &want_bwd),
        ("dv", &want_bwd),
    ] {
        outputs.push(Compared {
            name,
            error: rel_err(&values(&got, name)?, &values(want, name)?, 1e-12),
            tolerance: tolerance(DType::F32),
        });
    }
    Ok(CaseReport {
        case: format!("dense baseline {case}"),
        index_mismatches: 0,
        outputs,
    })
}

/// Two fixed small cases that between them launch every SPT kernel once (fused forward with
/// `pq-adc`, the unfused chain with `pq-match`; both backward): what the memory and race
/// checkers run over.
pub fn quick_cases(dtype: DType) -> [SptCase; 2] {
    let base = SptCase {
        b: 1,
        h: 2,
        l: 37,
        d: 32,
        topk: 5,
        causal: true,
        clamp: true,
        adc: true,
        fused: true,
        dtype,
        seed: 7,
    };
    [
        base.clone(),
        SptCase {
            causal: false,
            clamp: false,
            adc: false,
            fused: false,
            seed: 8,
            ..base
        },
    ]
}

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

/// One Monarch problem: x [N, k·p], w1 [k, q, p], w2 [l, s, r] with k·q = l·r.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonarchCase {
    /// Rows of x.
    pub n: usize,
    /// Factor shapes.
    pub shape: MonarchShape,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for MonarchCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.shape;
        write!(
            f,
            "monarch N={} w1=[{},{},{}] w2=[{},{},{}] {} seed={}",
            self.n, m.k, m.q, m.p, m.l, m.s, m.r, self.dtype, self.seed
        )
    }
}

impl MonarchCase {
    /// A random, generally non-square case: N in 1..40, k and l in 1..=6, p and s in 1..=12, and
    /// an intermediate width k·q that l divides (q drawn as a multiple of l / gcd(k, l)).
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let (k, l) = (1 + pick(6), 1 + pick(6));
        let step = l / gcd(k, l);
        let q = step * (1 + pick(3));
        let r = k * q / l;
        let (p, s) = (1 + pick(12), 1 + pick(12));
        let n = 1 + pick(39);
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            n,
            shape: MonarchShape { k, q, p, l, s, r },
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("monarch", OpKind::Monarch)
            .dims([("N", self.n)])
            .pattern(Pattern::Monarch(self.shape))
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// x (N(0, 1)), w1 (N(0, 1/p)), w2 (N(0, 1/r)) and dy, rounded through the storage dtype.
    pub fn inputs(&self) -> TensorMap {
        let m = &self.shape;
        draw_normal(
            &mut SplitMix64::new(self.seed),
            self.dtype,
            [
                ("x", vec![self.n, m.n_in()], 1.0),
                ("w1", vec![m.k, m.q, m.p], 1.0 / (m.p as f64).sqrt()),
                ("w2", vec![m.l, m.s, m.r], 1.0 / (m.r as f64).sqrt()),
                ("dy", vec![self.n, m.n_out()], 1.0),
            ],
        )
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Runs `case` forward and backward on `device` and on the reference executor and compares y,
/// dx, dw1 and dw2 within [`tolerance`].
pub fn check_monarch(device: &Device, case: &MonarchCase) -> Result<CaseReport, RuntimeError> {
    check_forward_backward(
        device,
        case,
        case.dtype,
        case.inputs(),
        |d| case.spec(d),
        "dy",
        &["y"],
        &["dx", "dw1", "dw2"],
    )
}

/// One dense linear problem (`dense-linear`, the baseline the structured linears are timed
/// against): x [T, in], w [out, in], bias [out].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearCase {
    /// Rows.
    pub t: usize,
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for LinearCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dense-linear T={} in={} out={} {} seed={}",
            self.t, self.n_in, self.n_out, self.dtype, self.seed
        )
    }
}

impl LinearCase {
    /// A random case past one 64-wide tile in every dimension: T in 1..150, in and out in 1..100.
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let (t, n_in, n_out) = (1 + pick(149), 1 + pick(99), 1 + pick(99));
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            t,
            n_in,
            n_out,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("linear", OpKind::DenseLinear)
            .dims([("T", self.t), ("in", self.n_in), ("out", self.n_out)])
            .pattern(Pattern::Dense)
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// x, w (N(0, 1/in)), bias and dy, rounded through the storage dtype.
    pub fn inputs(&self) -> TensorMap {
        draw_normal(
            &mut SplitMix64::new(self.seed),
            self.dtype,
            [
                ("x", vec![self.t, self.n_in], 1.0),
                (
                    "w",
                    vec![self.n_out, self.n_in],
                    1.0 / (self.n_in as f64).sqrt(),
                ),
                ("bias", vec![self.n_out], 0.5),
                ("dy", vec![self.t, self.n_out], 1.0),
            ],
        )
    }
}

/// Runs `case` forward and backward on `device` and on the reference executor and compares y,
/// dx, dw and dbias within [`tolerance`].
pub fn check_linear(device: &Device, case: &LinearCase) -> Result<CaseReport, RuntimeError> {
    check_forward_backward(
        device,
        case,
        case.dtype,
        case.inputs(),
        |d| case.spec(d),
        "dy",
        &["y"],
        &["dx", "dw", "dbias"],
    )
}

/// One block-diagonal map (`block-diag-linear`): x [N, blocks·pi], w [blocks, qo, pi].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDiagCase {
    /// Rows.
    pub n: usize,
    /// Blocks.
    pub blocks: usize,
    /// Inputs per block.
    pub pi: usize,
    /// Outputs per block.
    pub qo: usize,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for BlockDiagCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block-diag-linear N={} blocks={} in/block={} out/block={} {} seed={}",
            self.n, self.blocks, self.pi, self.qo, self.dtype, self.seed
        )
    }
}

impl BlockDiagCase {
    /// A random case, past one 64-wide tile in some draws: N in 1..130, 1–4 blocks of 1..80
    /// inputs and outputs.
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let (n, blocks, pi, qo) = (1 + pick(129), 1 + pick(4), 1 + pick(79), 1 + pick(79));
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            n,
            blocks,
            pi,
            qo,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("block_diag", OpKind::BlockDiagLinear)
            .dims([
                ("N", self.n),
                ("in", self.blocks * self.pi),
                ("out", self.blocks * self.qo),
            ])
            .pattern(Pattern::BlockDiagonal(BlockDiagonal {
                blocks: self.blocks,
            }))
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// x, w (N(0, 1/pi)) and dy, rounded through the storage dtype.
    pub fn inputs(&self) -> TensorMap {
        draw_normal(
            &mut SplitMix64::new(self.seed),
            self.dtype,
            [
                ("x", vec![self.n, self.blocks * self.pi], 1.0),
                (
                    "w",
                    vec![self.blocks, self.qo, self.pi],
                    1.0 / (self.pi as f64).sqrt(),
                ),
                ("dy", vec![self.n, self.blocks * self.qo], 1.0),
            ],
        )
    }
}

/// Runs `case` forward and backward on `device` and on the reference executor and compares y,
/// dx and dw within [`tolerance`].
pub fn check_block_diag(device: &Device, case: &BlockDiagCase) -> Result<CaseReport, RuntimeError> {
    check_forward_backward(
        device,
        case,
        case.dtype,
        case.inputs(),
        |d| case.spec(d),
        "dy",
        &["y"],
        &["dx", "dw"],
    )
}

/// One `pq-encode` problem: N rows of S subspaces of `sub_dim`, E codewords; every row a noisy
/// copy of random codewords (as PQ sees them), so the nearest codeword is never a near-tie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeCase {
    /// Rows.
    pub n: usize,
    /// Subspaces.
    pub subspaces: usize,
    /// Sub-vector length.
    pub sub_dim: usize,
    /// Codewords per subspace.
    pub codewords: usize,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for EncodeCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pq-encode N={} S={} d_c={} E={} {} seed={}",
            self.n, self.subspaces, self.sub_dim, self.codewords, self.dtype, self.seed
        )
    }
}

impl EncodeCase {
    /// A random case: N in 1..300, 1–8 subspaces of 4, 8 or 16, 2–32 codewords.
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let (n, subspaces) = (1 + pick(299), 1 + pick(8));
        let sub_dim = [4, 8, 16][pick(3)];
        let codewords = 2 + pick(31);
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            n,
            subspaces,
            sub_dim,
            codewords,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case.
    pub fn spec(&self) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("pq_encode", OpKind::PqEncode)
            .dims([("N", self.n), ("D", self.subspaces * self.sub_dim)])
            .pattern(Pattern::PqTopK(PqTopK {
                sub_dim: self.sub_dim,
                codewords: self.codewords,
                ..PqTopK::default()
            }))
            .dtype(self.dtype)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// The codebook (N(0, 1)) and x (codewords plus N(0, 0.01²) noise), rounded through the
    /// storage dtype.
    pub fn inputs(&self) -> TensorMap {
        let mut rng = SplitMix64::new(self.seed);
        let (s, e, dc) = (self.subspaces, self.codewords, self.sub_dim);
        let codebook = round_to(&rng.normal_tensor(&[s, e, dc], 1.0), self.dtype);
        let d = s * dc;
        let mut x = Tensor::zeros(&[self.n, d]);
        for r in 0..self.n {
            for sub in 0..s {
                let w = rng.below(e);
                for t in 0..dc {
                    x.data[r * d + sub * dc + t] =
                        codebook.data[(sub * e + w) * dc + t] + 0.01 * rng.normal();
                }
            }
        }
        let mut out = TensorMap::new();
        out.insert("x".into(), Value::F(round_to(&x, self.dtype)));
        out.insert("codebook".into(), Value::F(codebook));
        out
    }
}

/// Runs `case` on `device` and on the reference executor: the codes must be equal.
pub fn check_encode(device: &Device, case: &EncodeCase) -> Result<CaseReport, RuntimeError> {
    let (got, want) = both(device, &case.spec()?, &case.inputs())?;
    Ok(CaseReport {
        case: case.to_string(),
        index_mismatches: mismatches(&got, &want, "codes")?,
        outputs: Vec::new(),
    })
}

/// One SaRA linear problem: x [T, in], w [out, in], bias [out], the mask rule, optionally the
/// packed values `v` (else v = w at the mask).
#[derive(Clone, Debug, PartialEq)]
pub struct SaraCase {
    /// Rows.
    pub t: usize,
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// Mask rule.
    pub select: SaraSelect,
    /// Weights on a coarse grid (multiples of std/8): many equal magnitudes, so ties at the
    /// k-th value and at the threshold.
    pub ties: bool,
    /// Give trained packed values `v` (random) instead of w's own.
    pub with_v: bool,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for SaraCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let select = match self.select {
            SaraSelect::Threshold(t) => format!("threshold={t:e}"),
            SaraSelect::Ratio(r) => format!("ratio={r}"),
        };
        write!(
            f,
            "sara-linear T={} in={} out={} {select}{}{} {} seed={}",
            self.t,
            self.n_in,
            self.n_out,
            if self.ties { " ties" } else { "" },
            if self.with_v { " v" } else { "" },
            self.dtype,
            self.seed
        )
    }
}

impl SaraCase {
    /// A random case: T in 1..80, in and out in 1..100; a ratio (with nnz = 0 and nnz = all among
    /// the draws) or a threshold around the weights' scale; ties or not; v given or not.
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let (t, n_in, n_out) = (1 + pick(79), 1 + pick(99), 1 + pick(99));
        let std = 1.0 / (n_in as f64).sqrt();
        let select = match pick(5) {
            0 => SaraSelect::Ratio(1e-9),
            1 => SaraSelect::Ratio(1.0),
            2 => SaraSelect::Ratio([0.1, 0.2, 0.5][pick(3)]),
            3 => SaraSelect::Threshold(std * [0.125, 0.25, 0.5][pick(3)]),
            _ => SaraSelect::Threshold(2e-3),
        };
        let (ties, with_v) = (pick(2) == 1, pick(2) == 1);
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            t,
            n_in,
            n_out,
            select,
            ties,
            with_v,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("sara", OpKind::SaraLinear)
            .dims([("T", self.t), ("in", self.n_in), ("out", self.n_out)])
            .pattern(Pattern::Sara(Sara {
                select: self.select,
            }))
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// x, w (N(0, 1/in), on the grid when `ties`), bias, dy and, when `with_v`, v (one value
    /// per mask position), rounded through the storage dtype.
    pub fn inputs(&self) -> TensorMap {
        let mut rng = SplitMix64::new(self.seed);
        let std = 1.0 / (self.n_in as f64).sqrt();
        let mut out = TensorMap::new();
        for (name, shape, s) in [
            ("x", vec![self.t, self.n_in], 1.0),
            ("w", vec![self.n_out, self.n_in], std),
            ("bias", vec![self.n_out], 0.5),
            ("dy", vec![self.t, self.n_out], 1.0),
        ] {
            let mut v = rng.normal_tensor(&shape, s);
            if self.ties && name == "w" {
                for x in &mut v.data {
                    *x = (*x * 8.0 / std).round() * std / 8.0;
                }
            }
            out.insert(name.into(), Value::F(round_to(&v, self.dtype)));
        }
        if self.with_v {
            let Value::F(w) = &out["w"] else {
                unreachable!("w is a float tensor")
            };
            let nnz = reference::sara::mask(w, self.select).len();
            let v = rng.normal_tensor(&[nnz], std);
            out.insert("v".into(), Value::F(round_to(&v, self.dtype)));
        }
        out
    }
}

/// Runs `case` forward and backward on `device` and on the reference executor: the mask indices
/// exactly, y, v, dx, dv and dbias within [`tolerance`].
pub fn check_sara(device: &Device, case: &SaraCase) -> Result<CaseReport, RuntimeError> {
    let mut ins = case.inputs();
    let dy = ins.remove("dy").expect("inputs() draws dy");
    let tol = tolerance(case.dtype);
    let mut report = CaseReport {
        case: case.to_string(),
        index_mismatches: 0,
        outputs: Vec::new(),
    };
    let (got, want) = both(device, &case.spec(Direction::Forward)?, &ins)?;
    report.index_mismatches = mismatches(&got, &want, "mask_index")?;
    for name in ["y", "v"] {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    ins.insert("dy".into(), dy);
    let (got, want) = both(device, &case.spec(Direction::Backward)?, &ins)?;
    for name in ["dx", "dv", "dbias"] {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    Ok(report)
}

/// One PST linear problem: x [T, in], the frozen w [out, in], bias, and the trainable factors
/// u [out, r], v [r, in], ma [out, rm], mb [rm, in], mr [out], mc [in].
#[derive(Clone, Debug, PartialEq)]
pub struct PstCase {
    /// Rows.
    pub t: usize,
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// The pattern (sparsity, ranks, coefficients).
    pub pst: Pst,
    /// Factors at PST's initialisation (v, mb, mr, mc = 0: the score is |w|), so scores tie
    /// exactly wherever weights do.
    pub at_init: bool,
    /// Weights on a coarse grid (multiples of std/8): many equal scores at init.
    pub ties: bool,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for PstCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pst-linear T={} in={} out={} sparsity={} rank={} mask_rank={}{}{} {} seed={}",
            self.t,
            self.n_in,
            self.n_out,
            self.pst.sparsity,
            self.pst.rank,
            self.pst.mask_rank,
            if self.at_init { " init" } else { "" },
            if self.ties { " ties" } else { "" },
            self.dtype,
            self.seed
        )
    }
}

impl PstCase {
    /// A random case: T in 1..60, in and out in 1..90, sparsity 0, 0.5 or 0.9, ranks 1..=8,
    /// at init or trained factors, ties or not.
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let (t, n_in, n_out) = (1 + pick(59), 1 + pick(89), 1 + pick(89));
        let pst = Pst {
            sparsity: [0.0, 0.5, 0.9][pick(3)],
            rank: 1 + pick(8),
            mask_rank: 1 + pick(8),
            ..Pst::default()
        };
        let (at_init, ties) = (pick(2) == 1, pick(2) == 1);
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            t,
            n_in,
            n_out,
            pst,
            at_init,
            ties,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("pst", OpKind::PstLinear)
            .dims([("T", self.t), ("in", self.n_in), ("out", self.n_out)])
            .pattern(Pattern::Pst(self.pst))
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// Every input, rounded through the storage dtype (see [`PstCase::at_init`], `ties`).
    pub fn inputs(&self) -> TensorMap {
        let mut rng = SplitMix64::new(self.seed);
        let std = 1.0 / (self.n_in as f64).sqrt();
        let (o, i, r, rm) = (self.n_out, self.n_in, self.pst.rank, self.pst.mask_rank);
        let mut out = TensorMap::new();
        for (name, shape, s, zero_at_init) in [
            ("x", vec![self.t, i], 1.0, false),
            ("w", vec![o, i], std, false),
            ("bias", vec![o], 0.5, false),
            ("u", vec![o, r], 0.1, false),
            ("v", vec![r, i], 0.1, true),
            ("ma", vec![o, rm], 0.1, false),
            ("mb", vec![rm, i], 0.1 * std, true),
            ("mr", vec![o], 0.1 * std, true),
            ("mc", vec![i], 0.1 * std, true),
            ("dy", vec![self.t, o], 1.0, false),
        ] {
            let mut v = rng.normal_tensor(&shape, s);
            if self.at_init && zero_at_init {
                v.data.iter_mut().for_each(|x| *x = 0.0);
            }
            if self.ties && name == "w" {
                for x in &mut v.data {
                    *x = (*x * 8.0 / std).round() * std / 8.0;
                }
            }
            out.insert(name.into(), Value::F(round_to(&v, self.dtype)));
        }
        out
    }
}

/// Runs `case` forward and backward on `device` and on the reference executor: the mask exactly,
/// y and every gradient within [`tolerance`].
pub fn check_pst(device: &Device, case: &PstCase) -> Result<CaseReport, RuntimeError> {
    let mut ins = case.inputs();
    let dy = ins.remove("dy").expect("inputs() draws dy");
    let tol = tolerance(case.dtype);
    let mut report = CaseReport {
        case: case.to_string(),
        index_mismatches: 0,
        outputs: Vec::new(),
    };
    let (got, want) = both(device, &case.spec(Direction::Forward)?, &ins)?;
    report.index_mismatches = mismatches(&got, &want, "mask")?;
    report.outputs.push(compare(&got, &want, "y", tol)?);
    ins.insert("dy".into(), dy);
    let (got, want) = both(device, &case.spec(Direction::Backward)?, &ins)?;
    for name in ["dx", "dbias", "du", "dv", "dma", "dmb", "dmr", "dmc"] {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    Ok(report)
}
