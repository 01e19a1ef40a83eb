//! The *schedule* half of a kernel spec: how a kernel is tiled and vectorised. It never changes a
//! result (the reference executor ignores it); the autotuner searches it.

use crate::args::{ArgError, Args};
use serde::{Deserialize, Serialize};
use std::fmt;

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
