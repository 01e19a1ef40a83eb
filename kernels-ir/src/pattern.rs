//! Sparsity patterns: the *algorithm* half of a kernel spec (the schedule is the other half).
//! One variant per family of `METHODS.md`; every field has the papers' published default.

use crate::args::{ArgError, Args};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Implements `Display`/`FromStr` for a fieldless enum from a list of text spellings.
macro_rules! text_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in text-format order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// The text-format spelling.
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.name()) }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $ty::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<&str> = $ty::ALL.iter().map(|v| v.name()).collect();
                    format!("unknown {} `{}` (expected one of {})", $what, s, names.join(", "))
                })
            }
        }
    };
}
pub(crate) use text_enum;

/// How many keys each query keeps: a fixed count, or the sequence length divided by a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TopK {
    /// Exactly this many keys (clamped to the candidates a row has).
    Fixed(usize),
    /// `L / n` keys (at least 1); SPT's default is `L/8`.
    SeqFraction(usize),
}

impl TopK {
    /// The number of slots per query row for sequence length `l`.
    pub fn resolve(self, l: usize) -> usize {
        match self {
            TopK::Fixed(k) => k,
            TopK::SeqFraction(n) => (l / n.max(1)).max(1),
        }
    }
}

impl fmt::Display for TopK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopK::Fixed(k) => write!(f, "{k}"),
            TopK::SeqFraction(n) => write!(f, "L/{n}"),
        }
    }
}

impl FromStr for TopK {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(n) = compact.strip_prefix("L/") {
            return n
                .parse::<usize>()
                .map(TopK::SeqFraction)
                .map_err(|_| format!("`{s}`: expected `L/<integer>` such as `L/8`"));
        }
        compact
            .parse::<usize>()
            .map(TopK::Fixed)
            .map_err(|_| format!("`{s}`: expected an integer or `L/<integer>`"))
    }
}

/// How a query scores candidate keys before the top-k cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Selector {
    /// Number of PQ subspaces whose codes agree (SPT's default).
    PqMatch,
    /// Asymmetric distance: Σ_s q_s · codebook[s, code_k[s]].
    PqAdc,
}
text_enum!(Selector, "selector", { PqMatch => "pq-match", PqAdc => "pq-adc" });

/// SPT's product-quantised top-k attention (METHODS.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Hash, Serialize, Deserialize)]
pub struct PqTopK {
    /// Keys kept per query (default `L/8`).
    pub topk: TopK,
    /// Candidate scoring.
    pub selector: Selector,
    /// Only keys `j <= i` are candidates.
    pub causal: bool,
    /// Clamp the scaled scores to ±10 (SPT-proto).
    pub clamp: bool,
    /// Length of one PQ sub-vector, `d_c` (default 8).
    pub sub_dim: usize,
    /// Codewords per subspace, `E` (default 16).
    pub codewords: usize,
    /// Selection granularity `G` (METHODS.md §7): 1 keeps keys per query row; a power of two
    /// ≥ 16 keeps ⌈topk / G⌉ key blocks of G rows per query block of G rows.
    #[serde(default = "one")]
    pub block: usize,
}

fn one() -> usize {
    1
}

impl PqTopK {
    /// Key blocks kept per query block, ⌈topk / G⌉, for a resolved `topk` (block 1: `topk`).
    pub fn kept_blocks(&self, topk: usize) -> usize {
        topk.div_ceil(self.block.max(1))
    }

    /// Query (and key) blocks of a sequence of `l` rows, ⌈L / G⌉.
    pub fn blocks_of(&self, l: usize) -> usize {
        l.div_ceil(self.block.max(1))
    }
}

impl Default for PqTopK {
    fn default() -> Self {
        Self {
            topk: TopK::SeqFraction(8),
            selector: Selector::PqMatch,
            causal: false,
            clamp: false,
            sub_dim: 8,
            codewords: 16,
            block: 1,
        }
    }
}

/// The router's gate non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Router {
    /// Independent sigmoid per block (SPT).
    Sigmoid,
    /// Softmax over blocks (general MoE).
    Softmax,
}
text_enum!(Router, "router", { Sigmoid => "sigmoid", Softmax => "softmax" });

/// How the gate value enters the routed FFN output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GateMode {
    /// `gate_scale · g` multiplies the block's output (default).
    Output,
    /// Unweighted sum of the kept blocks; the router gets no gradient.
    None,
    /// `gate_scale · g` multiplies the pre-activation and the block's output.
    SptLora,
}
text_enum!(GateMode, "gate mode", { Output => "output", None => "none", SptLora => "spt-lora" });

/// FFN activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Activation {
    /// max(0, x) (OPT).
    Relu,
    /// Exact GELU, x·Φ(x) with erf (BERT).
    Gelu,
}
text_enum!(Activation, "activation", { Relu => "relu", Gelu => "gelu" });

/// Expert-routed FFN blocks (METHODS.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    /// Blocks the hidden dimension is cut into, `E` (default 4).
    pub blocks: usize,
    /// Blocks each token keeps (default 2).
    pub top: usize,
    /// Gate non-linearity (default sigmoid).
    pub router: Router,
    /// How the gate enters the output (default `output`).
    pub gate: GateMode,
    /// Gate multiplier (default 2.0).
    pub gate_scale: f64,
    /// Activation (default ReLU).
    pub act: Activation,
}

impl Default for Routed {
    fn default() -> Self {
        Self {
            blocks: 4,
            top: 2,
            router: Router::Sigmoid,
            gate: GateMode::Output,
            gate_scale: 2.0,
            act: Activation::Relu,
        }
    }
}

/// Monarch factor shapes `w1: [k, q, p]`, `w2: [l, s, r]` (METHODS.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MonarchShape {
    /// Blocks of the first factor.
    pub k: usize,
    /// Output rows per first-factor block.
    pub q: usize,
    /// Input columns per first-factor block.
    pub p: usize,
    /// Blocks of the second factor.
    pub l: usize,
    /// Output rows per second-factor block.
    pub s: usize,
    /// Input columns per second-factor block.
    pub r: usize,
}

impl MonarchShape {
    /// The square Monarch of size `n` with `blocks` blocks per factor (`n` divisible by `blocks`).
    pub fn square(n: usize, blocks: usize) -> Self {
        let b = n / blocks.max(1);
        Self {
            k: blocks,
            q: b,
            p: b,
            l: blocks,
            s: b,
            r: b,
        }
    }
    /// Input features, `k·p`.
    pub fn n_in(&self) -> usize {
        self.k * self.p
    }
    /// Output features, `l·s`.
    pub fn n_out(&self) -> usize {
        self.l * self.s
    }
    /// Intermediate width, `k·q` (must equal `l·r`).
    pub fn inner(&self) -> usize {
        self.k * self.q
    }
    /// Parameters in both factors.
    pub fn params(&self) -> usize {
        self.k * self.q * self.p + self.l * self.s * self.r
    }
}

/// A single block-diagonal factor `w: [blocks, n_out/blocks, n_in/blocks]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockDiagonal {
    /// Number of diagonal blocks.
    pub blocks: usize,
}

impl Default for BlockDiagonal {
    fn default() -> Self {
        Self { blocks: 4 }
    }
}

/// Which weights SaRA retrains.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum SaraSelect {
    /// Every weight with `|w| < threshold` (default 2e-3).
    Threshold(f64),
    /// The `⌊ratio·out·in⌋` smallest `|w|` (ties → lower flat index).
    Ratio(f64),
}

/// SaRA: retrain the smallest weights (METHODS.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sara {
    /// Mask selection rule.
    pub select: SaraSelect,
}

impl Default for Sara {
    fn default() -> Self {
        Self {
            select: SaraSelect::Threshold(2e-3),
        }
    }
}

/// PST's cubic sparsity schedule: held at `s0` for the first `warmup` fraction of steps, at the
/// final sparsity for the last `cooldown` fraction, cubic in between.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CubicSchedule {
    /// Initial sparsity (default 0).
    pub s0: f64,
    /// Fraction of steps held at `s0` (default 0.1).
    pub warmup: f64,
    /// Fraction of steps held at the final sparsity (default 0.3).
    pub cooldown: f64,
}

impl Default for CubicSchedule {
    fn default() -> Self {
        Self {
            s0: 0.0,
            warmup: 0.1,
            cooldown: 0.3,
        }
    }
}

impl CubicSchedule {
    /// Sparsity at `step` of `total` steps towards final sparsity `sf`.
    pub fn sparsity_at(&self, step: usize, total: usize, sf: f64) -> f64 {
        if total == 0 {
            return sf;
        }
        let t = step as f64 / total as f64;
        let start = self.warmup;
        let end = 1.0 - self.cooldown;
        if t <= start {
            self.s0
        } else if t >= end || end <= start {
            sf
        } else {
            let progress = (t - start) / (end - start);
            sf + (self.s0 - sf) * (1.0 - progress).powi(3)
        }
    }
}

/// PST: low-rank importance scores select the mask (METHODS.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pst {
    /// Final fraction of weights masked out, `s_f` (default 0.9).
    pub sparsity: f64,
    /// Rank of the weight update `U·V` (default 8).
    pub rank: usize,
    /// Rank of the score term `A·B` (default 8).
    pub mask_rank: usize,
    /// Weight of `A·B` in the score (default 1).
    pub alpha1: f64,
    /// Weight of `R·1ᵀ + 1·Cᵀ` in the score (default 1).
    pub alpha2: f64,
    /// Weight of `U·V` in `W'` (default 1).
    pub beta: f64,
    /// How the sparsity ramps up during training.
    pub schedule: CubicSchedule,
}

impl Default for Pst {
    fn default() -> Self {
        Self {
            sparsity: 0.9,
            rank: 8,
            mask_rank: 8,
            alpha1: 1.0,
            alpha2: 1.0,
            beta: 1.0,
            schedule: CubicSchedule::default(),
        }
    }
}

/// Sparse-CBM's top-k concept gate (METHODS.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Cbm {
    /// Concepts kept per sample; 0 keeps all (dense head).
    pub topk: usize,
}

/// N:M semi-structured sparsity (METHODS.md §8): `n` of every `m` consecutive columns of each
/// weight row are kept (2:4 is the sparsity of sparse tensor cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nm {
    /// Entries kept per group (default 2).
    pub n: usize,
    /// Entries per group (default 4).
    pub m: usize,
}

impl Default for Nm {
    fn default() -> Self {
        Self { n: 2, m: 4 }
    }
}

/// The sparsity pattern of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "kebab-case")]
pub enum Pattern {
    /// No sparsity: the baseline every method is compared with.
    Dense,
    /// SPT's PQ top-k attention.
    PqTopK(PqTopK),
    /// Routed FFN blocks / experts.
    Routed(Routed),
    /// Monarch: block-diagonal · permutation · block-diagonal.
    Monarch(MonarchShape),
    /// One block-diagonal factor.
    BlockDiagonal(BlockDiagonal),
    /// SaRA's unstructured mask of the smallest weights.
    Sara(Sara),
    /// PST's importance-score mask.
    Pst(Pst),
    /// Sparse-CBM's top-k concept gate.
    Cbm(Cbm),
    /// N:M semi-structured weight sparsity.
    Nm(Nm),
}

/// The family of a [`Pattern`], without its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PatternKind {
    /// [`Pattern::Dense`].
    Dense,
    /// [`Pattern::PqTopK`].
    PqTopK,
    /// [`Pattern::Routed`].
    Routed,
    /// [`Pattern::Monarch`].
    Monarch,
    /// [`Pattern::BlockDiagonal`].
    BlockDiagonal,
    /// [`Pattern::Sara`].
    Sara,
    /// [`Pattern::Pst`].
    Pst,
    /// [`Pattern::Cbm`].
    Cbm,
    /// [`Pattern::Nm`].
    Nm,
}
text_enum!(PatternKind, "pattern", {
    Dense => "dense", PqTopK => "pq-topk", Routed => "routed", Monarch => "monarch",
    BlockDiagonal => "block-diagonal", Sara => "sara", Pst => "pst", Cbm => "cbm", Nm => "nm",
});

fn f(v: f64) -> String {
    format!("{v}")
}

impl Pattern {
    /// The family.
    pub fn kind(&self) -> PatternKind {
        match self {
            Pattern::Dense => PatternKind::Dense,
            Pattern::PqTopK(_) => PatternKind::PqTopK,
            Pattern::Routed(_) => PatternKind::Routed,
            Pattern::Monarch(_) => PatternKind::Monarch,
            Pattern::BlockDiagonal(_) => PatternKind::BlockDiagonal,
            Pattern::Sara(_) => PatternKind::Sara,
            Pattern::Pst(_) => PatternKind::Pst,
            Pattern::Cbm(_) => PatternKind::Cbm,
            Pattern::Nm(_) => PatternKind::Nm,
        }
    }

    /// The pattern's arguments as canonical `(name, text)` pairs, every field spelled out.
    pub fn args(&self) -> Vec<(&'static str, String)> {
        match self {
            Pattern::Dense => vec![],
            Pattern::PqTopK(p) => vec![
                ("topk", p.topk.to_string()),
                ("selector", p.selector.to_string()),
                ("causal", p.causal.to_string()),
                ("clamp", p.clamp.to_string()),
                ("sub_dim", p.sub_dim.to_string()),
                ("codewords", p.codewords.to_string()),
                ("block", p.block.to_string()),
            ],
            Pattern::Routed(r) => vec![
                ("blocks", r.blocks.to_string()),
                ("top", r.top.to_string()),
                ("router", r.router.to_string()),
                ("gate", r.gate.to_string()),
                ("gate_scale", f(r.gate_scale)),
                ("act", r.act.to_string()),
            ],
            Pattern::Monarch(m) => vec![
                ("k", m.k.to_string()),
                ("q", m.q.to_string()),
                ("p", m.p.to_string()),
                ("l", m.l.to_string()),
                ("s", m.s.to_string()),
                ("r", m.r.to_string()),
            ],
            Pattern::BlockDiagonal(b) => vec![("blocks", b.blocks.to_string())],
            Pattern::Sara(s) => match s.select {
                SaraSelect::Threshold(t) => vec![("threshold", f(t))],
                SaraSelect::Ratio(r) => vec![("ratio", f(r))],
            },
            Pattern::Pst(p) => vec![
                ("sparsity", f(p.sparsity)),
                ("rank", p.rank.to_string()),
                ("mask_rank", p.mask_rank.to_string()),
                ("alpha1", f(p.alpha1)),
                ("alpha2", f(p.alpha2)),
                ("beta", f(p.beta)),
                ("s0", f(p.schedule.s0)),
                ("warmup", f(p.schedule.warmup)),
                ("cooldown", f(p.schedule.cooldown)),
            ],
            Pattern::Cbm(c) => vec![("topk", c.topk.to_string())],
            Pattern::Nm(nm) => vec![("n", nm.n.to_string()), ("m", nm.m.to_string())],
        }
    }

    /// The argument names a family accepts.
    pub fn accepted_args(kind: PatternKind) -> &'static [&'static str] {
        match kind {
            PatternKind::Dense => &[],
            PatternKind::PqTopK => &[
                "topk",
                "selector",
                "causal",
                "clamp",
                "sub_dim",
                "codewords",
                "block",
            ],
            PatternKind::Routed => &["blocks", "top", "router", "gate", "gate_scale", "act"],
            PatternKind::Monarch => &["k", "q", "p", "l", "s", "r"],
            PatternKind::BlockDiagonal => &["blocks"],
            PatternKind::Sara => &["threshold", "ratio"],
            PatternKind::Pst => &[
                "sparsity",
                "rank",
                "mask_rank",
                "alpha1",
                "alpha2",
                "beta",
                "s0",
                "warmup",
                "cooldown",
            ],
            PatternKind::Cbm => &["topk"],
            PatternKind::Nm => &["n", "m"],
        }
    }

    /// Builds a pattern of family `kind` from `name = value` arguments; absent ones take the
    /// published defaults (Monarch's six sizes are required).
    pub fn from_args(kind: PatternKind, items: Vec<(String, String)>) -> Result<Self, ArgError> {
        let mut a = Args::new(kind.name(), items)?;
        let pattern = match kind {
            PatternKind::Dense => Pattern::Dense,
            PatternKind::PqTopK => {
                let d = PqTopK::default();
                Pattern::PqTopK(PqTopK {
                    topk: a.parse_or("topk", d.topk, "a key count")?,
                    selector: a.parse_or("selector", d.selector, "a selector")?,
                    causal: a.bool_or("causal", d.causal)?,
                    clamp: a.bool_or("clamp", d.clamp)?,
                    sub_dim: a.usize_or("sub_dim", d.sub_dim)?,
                    codewords: a.usize_or("codewords", d.codewords)?,
                    block: a.usize_or("block", d.block)?,
                })
            }
            PatternKind::Routed => {
                let d = Routed::default();
                Pattern::Routed(Routed {
                    blocks: a.usize_or("blocks", d.blocks)?,
                    top: a.usize_or("top", d.top)?,
                    router: a.parse_or("router", d.router, "a router")?,
                    gate: a.parse_or("gate", d.gate, "a gate mode")?,
                    gate_scale: a.f64_or("gate_scale", d.gate_scale)?,
                    act: a.parse_or("act", d.act, "an activation")?,
                })
            }
            PatternKind::Monarch => Pattern::Monarch(MonarchShape {
                k: a.usize_required("k")?,
                q: a.usize_required("q")?,
                p: a.usize_required("p")?,
                l: a.usize_required("l")?,
                s: a.usize_required("s")?,
                r: a.usize_required("r")?,
            }),
            PatternKind::BlockDiagonal => Pattern::BlockDiagonal(BlockDiagonal {
                blocks: a.usize_or("blocks", BlockDiagonal::default().blocks)?,
            }),
            PatternKind::Sara => {
                let threshold = a.raw("threshold");
                let ratio = a.raw("ratio");
                let select = match (threshold, ratio) {
                    (Some(_), Some(_)) => {
                        return Err(ArgError {
                            owner: "sara".into(),
                            message: "give `threshold` or `ratio`, not both".into(),
                        });
                    }
                    (None, Some(r)) => SaraSelect::Ratio(parse_finite("sara", "ratio", &r)?),
                    (Some(t), None) => {
                        SaraSelect::Threshold(parse_finite("sara", "threshold", &t)?)
                    }
                    (None, None) => Sara::default().select,
                };
                Pattern::Sara(Sara { select })
            }
            PatternKind::Pst => {
                let d = Pst::default();
                Pattern::Pst(Pst {
                    sparsity: a.f64_or("sparsity", d.sparsity)?,
                    rank: a.usize_or("rank", d.rank)?,
                    mask_rank: a.usize_or("mask_rank", d.mask_rank)?,
                    alpha1: a.f64_or("alpha1", d.alpha1)?,
                    alpha2: a.f64_or("alpha2", d.alpha2)?,
                    beta: a.f64_or("beta", d.beta)?,
                    schedule: CubicSchedule {
                        s0: a.f64_or("s0", d.schedule.s0)?,
                        warmup: a.f64_or("warmup", d.schedule.warmup)?,
                        cooldown: a.f64_or("cooldown", d.schedule.cooldown)?,
                    },
                })
            }
            PatternKind::Cbm => Pattern::Cbm(Cbm {
                topk: a.usize_or("topk", 0)?,
            }),
            PatternKind::Nm => Pattern::Nm(Nm {
                n: a.usize_or("n", Nm::default().n)?,
                m: a.usize_or("m", Nm::default().m)?,
            }),
        };
        a.finish(Self::accepted_args(kind))?;
        Ok(pattern)
    }
}

fn parse_finite(owner: &str, name: &str, text: &str) -> Result<f64, ArgError> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ArgError {
            owner: owner.into(),
            message: format!("`{name}` = `{text}` is not a finite number"),
        }),
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().name())?;
        let args = self.args();
        if !args.is_empty() {
            let parts: Vec<String> = args.iter().map(|(n, v)| format!("{n} = {v}")).collect();
            write!(f, "({})", parts.join(", "))?;
        }
        Ok(())
    }
}
