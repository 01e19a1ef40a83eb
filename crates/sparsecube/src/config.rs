//! Model configs (`CONFIG.toml`): the shape of a transformer layer and the sparse method its
//! training step uses, and the kernel specs that step launches — what `sparsecube tune --model`
//! tunes. Unknown keys and bad values are errors naming the key.
//!
//! ```toml
//! [model]
//! batch = 8          # sequences per step
//! seq_len = 256      # tokens per sequence
//! d_model = 384
//! heads = 6          # d_model / heads is the head dimension
//! d_ff = 1536
//! dtype = "f32"      # f32 | f16 | bf16
//! method = "spt"     # dense | lora | spt | sara | pst | monarch | cbm
//! blocks = 4         # routed-FFN / Monarch blocks (spt, monarch)
//! concepts = 512     # cbm: concept-bottleneck width and classes
//! classes = 2
//! ```

use anyhow::{Context, Result, bail};
use kernels_ir::pattern::{BlockDiagonal, Cbm, MonarchShape, Pattern, PqTopK, Routed};
use kernels_ir::{DType, KernelSpec, OpKind};
use serde::Deserialize;
use std::path::Path;

/// A config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The model.
    pub model: ModelConfig,
}

/// The fine-tuning method of a model's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Every layer dense.
    Dense,
    /// Dense layers with low-rank adapters (the adapters are dense products too).
    Lora,
    /// PQ top-k sparse attention and the routed FFN.
    Spt,
    /// SaRA linears.
    Sara,
    /// PST linears.
    Pst,
    /// Monarch linears.
    Monarch,
    /// A Sparse-CBM concept-bottleneck head on the encoder.
    Cbm,
}

/// One transformer layer's sizes and method.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN hidden width.
    pub d_ff: usize,
    /// Storage dtype (`f32`, `f16`, `bf16`).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// The method.
    pub method: Method,
    /// Blocks of the routed FFN and of Monarch.
    #[serde(default = "default_blocks")]
    pub blocks: usize,
    /// Concepts of the CBM head.
    #[serde(default = "default_concepts")]
    pub concepts: usize,
    /// Classes of the CBM head.
    #[serde(default = "default_classes")]
    pub classes: usize,
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_blocks() -> usize {
    4
}
fn default_concepts() -> usize {
    512
}
fn default_classes() -> usize {
    2
}

impl ModelConfig {
    /// Reads `[model]` from `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the model config `{}`", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("the model config `{}`", path.display()))?;
        Ok(file.model)
    }

    /// The kernel specs of one layer's training step (forward specs; a tuned key covers the
    /// backward too), each verified.
    pub fn specs(&self) -> Result<Vec<KernelSpec>> {
        let dtype: DType = self
            .dtype
            .parse()
            .map_err(|e| anyhow::anyhow!("model.dtype: {e}"))?;
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) {
            bail!(
                "model.heads = {} must divide d_model = {} (the head dimension is d_model / heads)",
                self.heads,
                self.d_model
            );
        }
        let tokens = self.batch * self.seq_len;
        let (dm, dff) = (self.d_model, self.d_ff);
        let spec = |name: &str, op: OpKind, dims: &[(&str, usize)], pattern: Option<Pattern>| {
            let mut b = KernelSpec::builder(name, op)
                .dtype(dtype)
                .dims(dims.iter().copied());
            if let Some(p) = pattern {
                b = b.pattern(p);
            }
            b.build()
                .with_context(|| format!("model config: the {name} kernel"))
        };
        let linear = |name: &str, n_in: usize, n_out: usize| {
            spec(
                name,
                OpKind::DenseLinear,
                &[("T", tokens), ("in", n_in), ("out", n_out)],
                None,
            )
        };
        let mut specs = Vec::new();
        match self.method {
            Method::Dense | Method::Lora => {
                specs.push(linear("qkv_proj", dm, 3 * dm)?);
                specs.push(linear("out_proj", dm, dm)?);
                specs.push(linear("ffn_up", dm, dff)?);
                specs.push(linear("ffn_down", dff, dm)?);
            }
            Method::Spt => {
                specs.push(spec(
                    "attention",
                    OpKind::SptAttention,
                    &[
                        ("B", self.batch),
                        ("H", self.heads),
                        ("L", self.seq_len),
                        ("D", dm / self.heads),
                    ],
                    Some(Pattern::PqTopK(PqTopK::default())),
                )?);
                specs.push(spec(
                    "ffn",
                    OpKind::RoutedFfn,
                    &[("T", tokens), ("d_model", dm), ("d_ff", dff)],
                    Some(Pattern::Routed(Routed {
                        blocks: self.blocks,
                        ..Routed::default()
                    })),
                )?);
            }
            Method::Sara | Method::Pst => {
                let op = if self.method == Method::Sara {
                    OpKind::SaraLinear
                } else {
                    OpKind::PstLinear
                };
                for (name, n_in, n_out) in [
                    ("out_proj", dm, dm),
                    ("ffn_up", dm, dff),
                    ("ffn_down", dff, dm),
                ] {
                    specs.push(spec(
                        name,
                        op,
                        &[("T", tokens), ("in", n_in), ("out", n_out)],
                        None,
                    )?);
                }
            }
            Method::Monarch => {
                if self.blocks == 0 || !dm.is_multiple_of(self.blocks) {
                    bail!(
                        "model.blocks = {} must divide d_model = {dm} (Monarch's square factors)",
                        self.blocks
                    );
                }
                specs.push(spec(
                    "out_proj",
                    OpKind::Monarch,
                    &[("N", tokens)],
                    Some(Pattern::Monarch(MonarchShape::square(dm, self.blocks))),
                )?);
                specs.push(spec(
                    "ffn_block_diag",
                    OpKind::BlockDiagLinear,
                    &[("N", tokens), ("in", dm), ("out", dff)],
                    Some(Pattern::BlockDiagonal(BlockDiagonal {
                        blocks: self.blocks,
                    })),
                )?);
            }
            Method::Cbm => {
                specs.push(linear("concept_proj", dm, self.concepts)?);
                specs.push(spec(
                    "cbm_head",
                    OpKind::CbmHead,
                    &[("B", self.batch), ("C", self.concepts), ("K", self.classes)],
                    Some(Pattern::Cbm(Cbm {
                        topk: 32.min(self.concepts),
                    })),
                )?);
            }
        }
        Ok(specs)
    }
}
