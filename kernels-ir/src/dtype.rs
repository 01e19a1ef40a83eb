//! Element types of the tensors a kernel reads and writes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Storage type of a tensor. Floating-point kernels accumulate in f32 whatever the storage type;
/// index tensors (selected keys, routed blocks, mask positions) are always [`DType::I64`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 storage, f32 accumulation.
    F16,
    /// bfloat16 storage, f32 accumulation.
    BF16,
    /// 64-bit signed integers, for index tensors (−1 marks an empty slot).
    I64,
}

impl DType {
    /// Every dtype, in text-format order.
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I64];

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }

    /// The largest finite value a float type stores (None for integers): an input beyond it
    /// would be ±∞ once stored.
    pub fn max_finite(self) -> Option<f64> {
        match self {
            DType::F32 => Some(f64::from(f32::MAX)),
            DType::F16 => Some(65504.0),
            // (2 − 2⁻⁷)·2¹²⁷
            DType::BF16 => Some(3.389_531_389_251_535_5e38),
            DType::I64 => None,
        }
    }

    /// Whether this is a floating-point storage type (valid as a kernel's compute dtype).
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64)
    }

    /// The text-format spelling.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}` (expected one of f32, f16, bf16, i64)"))
    }
}
