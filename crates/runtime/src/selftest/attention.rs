//! Self-test cases of SPT attention, its dense baseline and PQ encoding.

use super::{
    CaseReport, Compared, both, compare, mismatches, rel_err, round_to, tolerance, values,
};
use crate::{Device, RuntimeError};
use kernels_ir::pattern::{Pattern, PqTopK, Selector, TopK};
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
    /// Selection granularity G (METHODS.md §7): 1 keeps keys per row, else key blocks.
    pub block: usize,
    /// Storage dtype of q, k, v, codebook, dout and the outputs.
    pub dtype: DType,
    /// Seed of the inputs.
    pub seed: u64,
}

impl fmt::Display for SptCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "B={} H={} L={} D={} topk={}{} {}{}{} {} {} seed={}",
            self.b,
            self.h,
            self.l,
            self.d,
            self.topk,
            if self.block > 1 {
                format!(" block={}", self.block)
            } else {
                String::new()
            },
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
            block: 1,
            dtype,
            seed: rng.next_u64(),
        }
    }

    /// A random block-granular case (METHODS.md §7): G ∈ {16, 32}, L in 1..=`max_l` (a ragged
    /// last block in most draws, sometimes a single block), topk in 1..=L (kb = ⌈topk/G⌉ blocks,
    /// often every candidate with causal rows), the other fields as [`SptCase::draw`].
    pub fn draw_blocks(rng: &mut SplitMix64, max_l: usize, dtypes: &[DType]) -> Self {
        let mut case = Self::draw(rng, max_l, dtypes);
        case.block = [16, 32][rng.below(2)];
        case.topk = 1 + rng.below(case.l);
        case
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
                block: self.block,
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

/// Three fixed small cases that between them launch every SPT kernel once (fused forward with
/// `pq-adc`, the unfused chain with `pq-match`, block-granular selection with a ragged last
/// block; all backward): what the memory and race checkers run over.
pub fn quick_cases(dtype: DType) -> [SptCase; 3] {
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
        block: 1,
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
            ..base.clone()
        },
        SptCase {
            topk: 20,
            block: 16,
            seed: 9,
            ..base
        },
    ]
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
