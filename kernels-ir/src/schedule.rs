//! The *schedule* half of a kernel spec: how a kernel is tiled and vectorised. It never changes a
//! result (the reference executor ignores it); the autotuner searches it. Every field is read by
//! the code generator: the tile program's `tile_m`, `tile_n`, `tile_k`, `vector`, `stages` and
//! `mma` (its mainloop: scalar FMA or tensor cores) for every tiled product, SPT's `fused` and
//! `lanes` for attention. One field is a user's choice the autotuner never makes for them:
//! `precision = tf32` lets f32 products run on tensor cores with TF32 operands (a 10-bit
//! mantissa: results within about 1e-3 relative of the f32 ones, not bit-close).

use crate::args::{ArgError, Args};
use crate::op::OpKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A schedule field an op's kernels read: what the autotuner varies for that op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Knob {
    /// `tile_m`: rows of the output tile one cube of the tile program computes.
    TileM,
    /// `tile_n`: columns of that tile.
    TileN,
    /// `tile_k`: reduction steps staged in shared memory per slice.
    TileK,
    /// `vector`: consecutive elements each unit stages per load along the contiguous axis.
    Vector,
    /// `stages`: shared-memory buffers of the mainloop's pipeline (2: the next slice is loaded
    /// while the current one is multiplied).
    Stages,
    /// `fused`: SPT attention as one fused kernel per query block, or the unfused chain.
    Fused,
    /// `lanes`: lanes per query row of SPT's row kernels (a power of two; several rows share a
    /// plane below the plane size).
    Lanes,
    /// `mma`: the tile program's mainloop — scalar FMA, tensor cores (WMMA), or whichever the
    /// device supports for the dtype (`auto`).
    Mma,
}

/// The tile program's mainloop strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mma {
    /// Tensor cores where the device has them for the dtype and precision (f16/bf16 operands,
    /// or f32 with `precision = tf32`) and the tile fits their shape; scalar FMA elsewhere.
    #[default]
    Auto,
    /// Scalar f32 FMA on every device (the exact path: products of f32 storage are IEEE f32).
    Scalar,
    /// Tensor cores through WMMA (16×16×16 for f16/bf16, 16×16×8 for tf32), f32 accumulation:
    /// a device without them for the dtype is an error, not a fallback.
    Cmma,
}

impl Mma {
    /// Every strategy, in the text format's spelling.
    pub const ALL: [Mma; 3] = [Mma::Auto, Mma::Scalar, Mma::Cmma];

    /// The text format's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Mma::Auto => "auto",
            Mma::Scalar => "scalar",
            Mma::Cmma => "cmma",
        }
    }
}

impl fmt::Display for Mma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mma {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mma::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| "use `auto`, `scalar` or `cmma`".to_string())
    }
}

/// The arithmetic precision of f32 products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE f32 products and sums (what the reference executor's tolerances assume).
    #[default]
    Ieee,
    /// TF32 operands (10-bit mantissa, truncated) with f32 accumulation on tensor cores, for
    /// f32 storage: about 1e-3 relative. f16/bf16 storage is unaffected (its operands are
    /// already narrower).
    Tf32,
}

impl Precision {
    /// The text format's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Ieee => "ieee",
            Precision::Tf32 => "tf32",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ieee" => Ok(Precision::Ieee),
            "tf32" => Ok(Precision::Tf32),
            _ => Err("use `ieee` or `tf32`".into()),
        }
    }
}

impl Knob {
    /// `tile_m` and `tile_n` values of the tile program (the first is the default).
    pub const TILE_MN: [u32; 3] = [64, 128, 32];
    /// `tile_k` values of the tile program.
    pub const TILE_K: [u32; 3] = [16, 32, 8];
    /// `vector` values of the tile program.
    pub const VECTOR: [u32; 3] = [4, 1, 2];
    /// `stages` values of the tile program.
    pub const STAGES: [u32; 2] = [2, 1];
    /// `lanes` values of SPT's row kernels.
    pub const LANES: [u32; 4] = [8, 4, 16, 32];
    /// Units of one tile-program cube (16 × 16).
    pub const TILE_UNITS: u32 = 256;
    /// Shared memory a tile program may use per cube on any device: sm_90's opt-in maximum
    /// (227 KiB). Lowering checks the target device's own limit, and a device's schedule space
    /// holds only the points it can run.
    pub const TILE_SHARED_BYTES: u32 = 227 * 1024;

    /// The knobs of the tile program, in the order the space varies them.
    pub const TILE: [Knob; 6] = [
        Knob::TileM,
        Knob::TileN,
        Knob::TileK,
        Knob::Vector,
        Knob::Stages,
        Knob::Mma,
    ];

    /// The schedule field's name in the text format.
    pub fn field(self) -> &'static str {
        match self {
            Knob::TileM => "tile_m",
            Knob::TileN => "tile_n",
            Knob::TileK => "tile_k",
            Knob::Vector => "vector",
            Knob::Stages => "stages",
            Knob::Fused => "fused",
            Knob::Lanes => "lanes",
            Knob::Mma => "mma",
        }
    }

    /// The values the autotuner tries.
    pub fn values(self) -> Vec<String> {
        let nums = |v: &[u32]| v.iter().map(|x| x.to_string()).collect();
        match self {
            Knob::TileM | Knob::TileN => nums(&Self::TILE_MN),
            Knob::TileK => nums(&Self::TILE_K),
            Knob::Vector => nums(&Self::VECTOR),
            Knob::Stages => nums(&Self::STAGES),
            Knob::Lanes => nums(&Self::LANES),
            Knob::Fused => vec!["true".into(), "false".into()],
            Knob::Mma => Mma::ALL.iter().map(|m| m.name().to_string()).collect(),
        }
    }

    /// The knobs `op`'s kernels read (every other schedule field is ignored by that op).
    pub fn of(op: OpKind) -> &'static [Knob] {
        if op.tiled() {
            return &Self::TILE;
        }
        match op {
            OpKind::SptAttention => &[Knob::Fused, Knob::Lanes],
            _ => &[],
        }
    }
}

impl OpKind {
    /// Whether the op's products run on the tile program (its schedule's tile fields are read).
    pub fn tiled(self) -> bool {
        matches!(
            self,
            OpKind::RoutedFfn
                | OpKind::DenseLinear
                | OpKind::SaraLinear
                | OpKind::PstLinear
                | OpKind::BlockDiagLinear
                | OpKind::Monarch
                | OpKind::CbmHead
                | OpKind::NmLinear
        )
    }
}

/// Tiling and vectorisation choices for one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schedule {
    /// Rows of the output tile one cube computes (32, 64 or 128).
    pub tile_m: u32,
    /// Columns of the output tile (32, 64 or 128).
    pub tile_n: u32,
    /// Reduction depth staged through shared memory per step (8, 16 or 32).
    pub tile_k: u32,
    /// Elements each unit stages per load along the contiguous axis (1, 2 or 4).
    pub vector: u32,
    /// Software pipeline depth: shared-memory buffers of the mainloop (1 or 2).
    pub stages: u32,
    /// Fused single-kernel path (true) or the unfused chain of simpler kernels.
    pub fused: bool,
    /// Lanes per row of SPT's row kernels (a power of two up to 32; capped at the plane size).
    #[serde(default = "default_lanes")]
    pub lanes: u32,
    /// The tile program's mainloop strategy.
    #[serde(default)]
    pub mma: Mma,
    /// The precision of f32 products (`tf32`: tensor cores with TF32 operands).
    #[serde(default)]
    pub precision: Precision,
}

fn default_lanes() -> u32 {
    Schedule::default().lanes
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            tile_m: 64,
            tile_n: 64,
            tile_k: 16,
            vector: 4,
            stages: 2,
            fused: true,
            lanes: 8,
            mma: Mma::Auto,
            precision: Precision::Ieee,
        }
    }
}

impl Schedule {
    /// Argument names of the text form.
    pub const ARGS: [&'static str; 9] = [
        "tile_m",
        "tile_n",
        "tile_k",
        "vector",
        "stages",
        "fused",
        "lanes",
        "mma",
        "precision",
    ];

    /// Canonical `(name, text)` pairs.
    pub fn args(&self) -> Vec<(&'static str, String)> {
        vec![
            ("tile_m", self.tile_m.to_string()),
            ("tile_n", self.tile_n.to_string()),
            ("tile_k", self.tile_k.to_string()),
            ("vector", self.vector.to_string()),
            ("stages", self.stages.to_string()),
            ("fused", self.fused.to_string()),
            ("lanes", self.lanes.to_string()),
            ("mma", self.mma.to_string()),
            ("precision", self.precision.to_string()),
        ]
    }

    /// Builds a schedule from `name = value` pairs; absent ones take the defaults.
    pub fn from_args(items: Vec<(String, String)>) -> Result<Self, ArgError> {
        let d = Schedule::default();
        let mut a = Args::new("schedule", items)?;
        let s = Schedule {
            tile_m: a.parse_or("tile_m", d.tile_m, "a tile size")?,
            tile_n: a.parse_or("tile_n", d.tile_n, "a tile size")?,
            tile_k: a.parse_or("tile_k", d.tile_k, "a tile size")?,
            vector: a.parse_or("vector", d.vector, "a vector width")?,
            stages: a.parse_or("stages", d.stages, "a stage count")?,
            fused: a.bool_or("fused", d.fused)?,
            lanes: a.parse_or("lanes", d.lanes, "a lane count")?,
            mma: a.parse_or("mma", d.mma, "a mainloop strategy")?,
            precision: a.parse_or("precision", d.precision, "a precision")?,
        };
        a.finish(&Self::ARGS)?;
        Ok(s)
    }

    /// Shared memory of the tile program's staging buffers, bytes: `stages` slices of
    /// `tile_k` × (`tile_m` + 1) and `tile_k` × (`tile_n` + 1) f32 values.
    /// (Saturating: the u32 knobs of a written schedule can make the product overflow.)
    pub fn tile_shared_bytes(&self) -> u64 {
        u64::from(self.stages)
            .saturating_mul(u64::from(self.tile_k))
            .saturating_mul(u64::from(self.tile_m) + 1 + u64::from(self.tile_n) + 1)
            .saturating_mul(4)
    }

    /// The value of `knob` in this schedule.
    pub fn knob(&self, knob: Knob) -> String {
        match knob {
            Knob::TileM => self.tile_m.to_string(),
            Knob::TileN => self.tile_n.to_string(),
            Knob::TileK => self.tile_k.to_string(),
            Knob::Vector => self.vector.to_string(),
            Knob::Stages => self.stages.to_string(),
            Knob::Fused => self.fused.to_string(),
            Knob::Lanes => self.lanes.to_string(),
            Knob::Mma => self.mma.to_string(),
        }
    }

    /// This schedule with `knob` set to `value` (one of [`Knob::values`]).
    pub fn with(&self, knob: Knob, value: &str) -> Self {
        let mut s = *self;
        let n = || value.parse::<u32>().unwrap_or(0);
        match knob {
            Knob::TileM => s.tile_m = n(),
            Knob::TileN => s.tile_n = n(),
            Knob::TileK => s.tile_k = n(),
            Knob::Vector => s.vector = n(),
            Knob::Stages => s.stages = n(),
            Knob::Lanes => s.lanes = n(),
            Knob::Fused => s.fused = value == "true",
            Knob::Mma => s.mma = value.parse().unwrap_or_default(),
        }
        s
    }

    /// A short name of this schedule as `op` reads it, e.g.
    /// `tile_m=64,tile_n=64,tile_k=16,vector=4,stages=2`, `fused=false,lanes=8`, or `default`
    /// for an op without knobs: the candidate names of the autotuner.
    pub fn label(&self, op: OpKind) -> String {
        let knobs = Knob::of(op);
        if knobs.is_empty() {
            return "default".into();
        }
        knobs
            .iter()
            .map(|k| format!("{}={}", k.field(), self.knob(*k)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `self`, then every single-knob change of it: each value of each of `op`'s knobs once, the
    /// other fields kept (the points a test runs to cover every value; the first points the
    /// autotuner times). Only points the verifier accepts for `op`; each label once.
    pub fn axes(&self, op: OpKind) -> Vec<Schedule> {
        let mut points = vec![*self];
        for knob in Knob::of(op) {
            points.extend(knob.values().iter().map(|v| self.with(*knob, v)));
        }
        self.valid_once(op, points)
    }

    /// The autotuner's search space for `op` starting from `self`: [`axes`](Self::axes) first
    /// (`self` — the spec's own schedule, what runs when nothing is tuned — then each single-knob
    /// change), then every other point of the product of the op's knobs; only points the verifier
    /// accepts for `op`, each label once. An op without knobs has a space of one.
    pub fn space(&self, op: OpKind) -> Vec<Schedule> {
        let mut product = vec![*self];
        for knob in Knob::of(op) {
            let mut next = Vec::new();
            for p in &product {
                next.push(*p);
                next.extend(knob.values().iter().map(|v| p.with(*knob, v)));
            }
            product = next;
        }
        let mut points = self.axes(op);
        points.extend(product);
        self.valid_once(op, points)
    }

    /// `points` without those the verifier rejects for `op` (but `self`, always first) and
    /// without repeated labels.
    fn valid_once(&self, op: OpKind, mut points: Vec<Schedule>) -> Vec<Schedule> {
        let mut seen = std::collections::HashSet::new();
        let first = *self;
        points.retain(|p| {
            (*p == first || crate::verify::schedule_problems(op, p).is_empty())
                && seen.insert(p.label(op))
        });
        points
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .args()
            .iter()
            .map(|(n, v)| format!("{n} = {v}"))
            .collect();
        write!(f, "({})", parts.join(", "))
    }
}
