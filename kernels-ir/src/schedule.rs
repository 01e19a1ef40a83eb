//! The *schedule* half of a kernel spec: how a kernel is tiled and vectorised. It never changes a
//! result (the reference executor ignores it); the autotuner searches it.

use crate::args::{ArgError, Args};
use crate::op::OpKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A schedule field an op's kernels read: what the autotuner varies for that op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Knob {
    /// `tile_k`: reduction steps the shared-memory tile mainloop stages per slice (routed FFN,
    /// dense, SaRA, PST and block-diagonal linears), one of [`Knob::TILE_K`].
    TileK,
    /// `tile_m`: rows of x per cube of Monarch's fused forward, a power of two up to
    /// [`Knob::MONARCH_MAX_ROWS`] (larger values mean that many; the lowering halves it further
    /// while the cube's loops or shared slice would not fit).
    MonarchRows,
    /// `fused`: SPT attention as one fused kernel per query block, or the unfused chain.
    Fused,
}

impl Knob {
    /// `tile_k` values of the tile mainloop.
    pub const TILE_K: [u32; 2] = [16, 32];
    /// Most rows per cube of Monarch's fused forward.
    pub const MONARCH_MAX_ROWS: u32 = 16;
    /// Rows-per-cube values the Monarch space sweeps.
    pub const MONARCH_ROWS: [u32; 3] = [16, 8, 4];

    /// The schedule field's name in the text format.
    pub fn field(self) -> &'static str {
        match self {
            Knob::TileK => "tile_k",
            Knob::MonarchRows => "tile_m",
            Knob::Fused => "fused",
        }
    }

    /// The knobs `op`'s kernels read (every other schedule field is ignored by that op).
    pub fn of(op: OpKind) -> &'static [Knob] {
        match op {
            OpKind::RoutedFfn
            | OpKind::DenseLinear
            | OpKind::SaraLinear
            | OpKind::PstLinear
            | OpKind::BlockDiagLinear => &[Knob::TileK],
            OpKind::Monarch => &[Knob::MonarchRows],
            OpKind::SptAttention => &[Knob::Fused],
            OpKind::PqEncode | OpKind::MonarchProject | OpKind::CbmHead => &[],
        }
    }
}

/// Tiling and vectorisation choices for one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schedule {
    /// Rows of the output tile one cube computes (queries, tokens, batch rows).
    pub tile_m: u32,
    /// Columns of the output tile (keys, output features).
    pub tile_n: u32,
    /// Reduction depth staged through shared memory per step.
    pub tile_k: u32,
    /// Elements per vectorised load (1, 2, 4 or 8).
    pub vector: u32,
    /// Software pipeline depth (1–4).
    pub stages: u32,
    /// Fused single-kernel path (true) or the unfused chain of simpler kernels.
    pub fused: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            tile_m: 64,
            tile_n: 64,
            tile_k: 32,
            vector: 4,
            stages: 2,
            fused: true,
        }
    }
}

impl Schedule {
    /// Argument names of the text form.
    pub const ARGS: [&'static str; 6] = ["tile_m", "tile_n", "tile_k", "vector", "stages", "fused"];

    /// Canonical `(name, text)` pairs.
    pub fn args(&self) -> Vec<(&'static str, String)> {
        vec![
            ("tile_m", self.tile_m.to_string()),
            ("tile_n", self.tile_n.to_string()),
            ("tile_k", self.tile_k.to_string()),
            ("vector", self.vector.to_string()),
            ("stages", self.stages.to_string()),
            ("fused", self.fused.to_string()),
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
        };
        a.finish(&Self::ARGS)?;
        Ok(s)
    }
}

impl Schedule {
    /// The value of `knob` in this schedule as its kernels see it (Monarch's rows clamped to
    /// [`Knob::MONARCH_MAX_ROWS`]).
    pub fn knob(&self, knob: Knob) -> String {
        match knob {
            Knob::TileK => self.tile_k.to_string(),
            Knob::MonarchRows => self.tile_m.min(Knob::MONARCH_MAX_ROWS).to_string(),
            Knob::Fused => self.fused.to_string(),
        }
    }

    /// A short name of this schedule as `op` reads it, e.g. `tile_k=16`, `fused=false`, or
    /// `default` for an op without knobs: the candidate names of the autotuner.
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

    /// The autotuner's search space for `op` starting from `self`: `self` first (the spec's own
    /// schedule, what runs when nothing is tuned), then every other point of the op's knobs, the
    /// remaining fields kept. Points that `op` reads the same (same [`label`](Self::label)) appear
    /// once. An op without knobs has a space of one.
    pub fn space(&self, op: OpKind) -> Vec<Schedule> {
        let mut points = vec![*self];
        for knob in Knob::of(op) {
            let mut next = Vec::new();
            for p in &points {
                next.push(*p);
                match knob {
                    Knob::TileK => next.extend(Knob::TILE_K.map(|v| Schedule { tile_k: v, ..*p })),
                    Knob::MonarchRows => next.extend(
                        Knob::MONARCH_ROWS
                            .iter()
                            .map(|&v| Schedule { tile_m: v, ..*p }),
                    ),
                    Knob::Fused => next.extend([true, false].map(|v| Schedule { fused: v, ..*p })),
                }
            }
            points = next;
        }
        let mut seen = std::collections::HashSet::new();
        points.retain(|p| seen.insert(p.label(op)));
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
