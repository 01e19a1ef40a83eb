//! Self-test cases of the linears: Monarch, the dense linear, the block-diagonal map, SaRA, PST
//! and N:M.

use super::{
    CaseReport, both, check_forward_backward, compare, draw_normal, mismatches, round_to, tolerance,
};
use crate::{Device, RuntimeError};
use kernels_ir::pattern::{BlockDiagonal, MonarchShape, Nm, Pattern, Pst, Sara, SaraSelect};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{self, TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec, OpKind};
use std::fmt;

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
    check_masked(
        device,
        case.to_string(),
        case.dtype,
        case.inputs(),
        [
            case.spec(Direction::Forward)?,
            case.spec(Direction::Backward)?,
        ],
    )
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

/// One N:M linear problem: x [T, in], w [out, in] (in a multiple of m), bias [out], `n` of every
/// `m` kept, optionally the packed values `v` (else v = w at the mask).
#[derive(Clone, Debug, PartialEq)]
pub struct NmCase {
    /// Rows.
    pub t: usize,
    /// Input features (a multiple of `m`).
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// The pattern.
    pub nm: Nm,
    /// Weights on a coarse grid (multiples of std/4): many equal magnitudes in a group, so the
    /// tie rule (lower column first) decides.
    pub ties: bool,
    /// Give trained packed values `v` (random) instead of w's own.
    pub with_v: bool,
    /// Storage dtype.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for NmCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nm-linear T={} in={} out={} {}:{}{}{} {} seed={}",
            self.t,
            self.n_in,
            self.n_out,
            self.nm.n,
            self.nm.m,
            if self.ties { " ties" } else { "" },
            if self.with_v { " v" } else { "" },
            self.dtype,
            self.seed
        )
    }
}

impl NmCase {
    /// A random case: T in 1..80, out in 1..100, in a multiple of m below 100; 2:4, 1:4, 4:8,
    /// 1:2 or m:m (everything kept); ties or not; v given or not.
    pub fn draw(rng: &mut SplitMix64, dtypes: &[DType]) -> Self {
        let mut pick = |n: usize| rng.below(n.max(1));
        let nm = [
            Nm { n: 2, m: 4 },
            Nm { n: 1, m: 4 },
            Nm { n: 4, m: 8 },
            Nm { n: 1, m: 2 },
            Nm { n: 3, m: 3 },
        ][pick(5)];
        let (t, groups, n_out) = (1 + pick(79), 1 + pick(99 / nm.m), 1 + pick(99));
        let (ties, with_v) = (pick(2) == 1, pick(2) == 1);
        let dtype = dtypes[pick(dtypes.len())];
        Self {
            t,
            n_in: groups * nm.m,
            n_out,
            nm,
            ties,
            with_v,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// The spec of this case in `direction`.
    pub fn spec(&self, direction: Direction) -> Result<KernelSpec, RuntimeError> {
        KernelSpec::builder("nm", OpKind::NmLinear)
            .dims([("T", self.t), ("in", self.n_in), ("out", self.n_out)])
            .pattern(Pattern::Nm(self.nm))
            .dtype(self.dtype)
            .direction(direction)
            .build()
            .map_err(RuntimeError::Spec)
    }

    /// x, w (N(0, 1/in), on the grid when `ties`), bias, dy and, when `with_v`, v (one value per
    /// kept position), rounded through the storage dtype.
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
                    *x = (*x * 4.0 / std).round() * std / 4.0;
                }
            }
            out.insert(name.into(), Value::F(round_to(&v, self.dtype)));
        }
        if self.with_v {
            let kept = self.n_out * self.n_in / self.nm.m * self.nm.n;
            let v = rng.normal_tensor(&[kept], std);
            out.insert("v".into(), Value::F(round_to(&v, self.dtype)));
        }
        out
    }
}

/// Runs `case` forward and backward on `device` and on the reference executor: the mask indices
/// exactly, y, v, dx, dv and dbias within [`tolerance`].
pub fn check_nm(device: &Device, case: &NmCase) -> Result<CaseReport, RuntimeError> {
    check_masked(
        device,
        case.to_string(),
        case.dtype,
        case.inputs(),
        [
            case.spec(Direction::Forward)?,
            case.spec(Direction::Backward)?,
        ],
    )
}

/// The check of a linear with a mask and packed values (SaRA, N:M): forward and backward of the
/// `[forward, backward]` specs on `device` and on the reference executor over `ins` (which hold
/// dy for the backward), the mask indices exactly, y, v, dx, dv and dbias within [`tolerance`].
fn check_masked(
    device: &Device,
    case: String,
    dtype: DType,
    mut ins: TensorMap,
    [forward, backward]: [KernelSpec; 2],
) -> Result<CaseReport, RuntimeError> {
    let dy = ins.remove("dy").expect("inputs() draws dy");
    let tol = tolerance(dtype);
    let mut report = CaseReport {
        case,
        index_mismatches: 0,
        outputs: Vec::new(),
    };
    let (got, want) = both(device, &forward, &ins)?;
    report.index_mismatches = mismatches(&got, &want, "mask_index")?;
    for name in ["y", "v"] {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    ins.insert("dy".into(), dy);
    let (got, want) = both(device, &backward, &ins)?;
    for name in ["dx", "dv", "dbias"] {
        report.outputs.push(compare(&got, &want, name, tol)?);
    }
    Ok(report)
}
