//! Model and training configs (`CONFIG.toml`). `[model]` is the shape of the transformer and
//! the method (what `sparsecube tune --model` and `sparsecube finetune` both read); `[train]`
//! is the fine-tuning run. Unknown keys and bad values are errors naming the key.
//!
//! ```toml
//! [model]
//! batch = 32         # sequences per step
//! seq_len = 32       # tokens per sequence
//! d_model = 64
//! heads = 4          # d_model / heads is the head dimension
//! d_ff = 256
//! layers = 2
//! vocab = 64
//! classes = 4
//! method = "spt"     # dense | lora | spt | spt-block | sara | pst | monarch | cbm | nm
//! blocks = 4         # routed-FFN / Monarch blocks
//! concepts = 16      # cbm: concept-bottleneck width
//! # checkpoint = "model.safetensors"   # a Hugging Face BERT checkpoint to start from
//!
//! [train]
//! epochs = 3
//! lr = 1e-3         # every method; absent: each method's own default (below)
//! seed = 0
//!
//! [data]            # absent: the built-in synthetic task
//! source = "/usr/share/games/fortunes"
//! classes = ["computers", "food", "law", "sports"]
//! ```

use crate::TrainError;
use kernels_ir::pattern::{BlockDiagonal, Cbm, MonarchShape, Pattern, PqTopK, Routed, SaraSelect};
use kernels_ir::{DType, KernelSpec, OpKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A config file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The model.
    pub model: ModelConfig,
    /// The run (defaults when absent).
    #[serde(default)]
    pub train: TrainConfig,
    /// The data (absent: the built-in task).
    #[serde(default, skip_serializing_if = "is_builtin")]
    pub data: crate::text::DataConfig,
}

fn is_builtin(d: &crate::text::DataConfig) -> bool {
    *d == crate::text::DataConfig::default()
}

/// How the learning rate moves over a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// The same rate every step (after the warm-up).
    Constant,
    /// Linearly down to 0 at the last step (BERT's schedule).
    Linear,
}

/// A run's learning-rate schedule: `lr` peak, reached linearly over the first `warmup` share of
/// the steps, then `decay`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak rate.
    pub lr: f64,
    /// Share of the steps spent warming up.
    pub warmup: f64,
    /// After the warm-up.
    pub decay: Decay,
}

impl LrSchedule {
    /// The rate at `step` (from 0) of `total`.
    pub fn at(&self, step: usize, total: usize) -> f64 {
        let total = total.max(1) as f64;
        let s = step as f64 + 1.0;
        let warm = (self.warmup * total).round();
        if s <= warm {
            return self.lr * s / warm;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Linear => {
                self.lr * ((total - s + 1.0) / (total - warm).max(1.0)).clamp(0.0, 1.0)
            }
        }
    }
}

impl Method {
    /// The peak learning rate a pretrained checkpoint is fine-tuned with. Dense full
    /// fine-tuning keeps BERT's 5e-5: its weights start where pretraining left them. The
    /// methods that start from a changed network — Monarch's projection, N:M's pruning, SPT's
    /// sparse attention and routed FFN — must recover what the change lost and take 5e-4; the
    /// adapters LoRA (Hu et al. use 4e-4–5e-4 on RoBERTa-base) and SaRA (1e-3·exp(−350·2e-3) ≈
    /// 5e-4 at the default threshold) 5e-4; PST's masked low-rank factors 3e-3; the CBM head
    /// over a frozen encoder, a fresh layer alone, 1e-2. Measured on MiniLM (docs/accuracy.md):
    /// one rate of 1e-3 for all diverged dense, Monarch and SPT; 5e-5 for all left Monarch,
    /// N:M, SPT and the CBM head far below dense.
    pub fn pretrained_lr(self) -> f64 {
        match self {
            Method::Dense => 5e-5,
            Method::Spt | Method::SptBlock | Method::Monarch | Method::Nm => 5e-4,
            Method::Lora => 5e-4,
            Method::Sara => 1e-3 * (-350.0f64 * 2e-3).exp(),
            Method::Pst => 3e-3,
            Method::Cbm => 1e-2,
        }
    }
}

/// The fine-tuning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Full fine-tuning: every weight trained, dense kernels.
    Dense,
    /// LoRA adapters on every linear of the frozen encoder.
    Lora,
    /// SPT: PQ top-k sparse attention and the routed FFN; every weight trained.
    Spt,
    /// SPT with block-granular selection (METHODS.md §7): PQ picks key blocks of G rows per
    /// query block (`methods.spt_block`, at least 16) instead of keys per query row.
    SptBlock,
    /// SaRA: the smallest weights of every linear retrained.
    Sara,
    /// PST: low-rank updates masked by low-rank importance scores.
    Pst,
    /// Monarch: every linear replaced by its Monarch projection and trained factored.
    Monarch,
    /// Sparse-CBM: a concept-bottleneck head on the frozen encoder.
    Cbm,
    /// N:M: every linear pruned to 2 of every 4 weights (largest |w|), the kept ones trained.
    Nm,
}

impl Method {
    /// Every method, in the order `--compare` reports them.
    pub const ALL: [Method; 9] = [
        Method::Dense,
        Method::Lora,
        Method::Spt,
        Method::SptBlock,
        Method::Sara,
        Method::Pst,
        Method::Monarch,
        Method::Cbm,
        Method::Nm,
    ];

    /// SPT attention with a routed FFN: `spt` or `spt-block`.
    pub fn is_spt(self) -> bool {
        matches!(self, Method::Spt | Method::SptBlock)
    }

    /// The method's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Dense => "dense",
            Method::Lora => "lora",
            Method::Spt => "spt",
            Method::SptBlock => "spt-block",
            Method::Sara => "sara",
            Method::Pst => "pst",
            Method::Monarch => "monarch",
            Method::Cbm => "cbm",
            Method::Nm => "nm",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                format!("unknown method `{s}`; expected one of {}", names.join(", "))
            })
    }
}

/// The transformer's sizes and method.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// Transformer layers.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab: usize,
    /// Positions the model has embeddings for (default: seq_len).
    #[serde(default)]
    pub max_positions: Option<usize>,
    /// Causal decoder (each token sees itself and earlier ones) instead of an encoder.
    #[serde(default)]
    pub causal: bool,
    /// Storage dtype (`f32`, `f16`, `bf16`) of the tuned kernels.
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
    /// Classes of the head.
    #[serde(default = "default_classes")]
    pub classes: usize,
    /// LayerNorm ε (BERT's 1e-12).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// A Hugging Face BERT safetensors checkpoint to start from (else a fresh initialisation).
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
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
fn default_layers() -> usize {
    2
}
fn default_vocab() -> usize {
    64
}
fn default_eps() -> f64 {
    1e-12
}

/// The run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// AdamW's peak learning rate for every method; absent: `lr_by_method`, else the method's
    /// default (1e-3 from a fresh initialisation; from a pretrained checkpoint,
    /// [`Method::pretrained_lr`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Peak learning rates by method name (`{ dense = 3e-5, lora = 1e-3 }`), over `lr`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lr_by_method: std::collections::BTreeMap<String, f64>,
    /// Share of the steps spent warming the rate up from 0 (default: 0.06 from a pretrained
    /// checkpoint, as RoBERTa and LoRA do; 0 from scratch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<f64>,
    /// After the warm-up: `linear` decay to 0 (default from a checkpoint) or `constant`
    /// (default from scratch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay: Option<Decay>,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the data, the initialisation and the methods' random choices.
    pub seed: u64,
    /// Training samples of the built-in task.
    pub train_samples: usize,
    /// Held-out samples.
    pub eval_samples: usize,
    /// Per-method settings.
    pub methods: MethodOptions,
    /// Clip the global L2 norm of the trained tensors' gradients to this before each
    /// optimizer step (PyTorch's `clip_grad_norm_`); none: no clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            lr: None,
            lr_by_method: Default::default(),
            warmup: None,
            decay: None,
            weight_decay: 0.01,
            seed: 0,
            train_samples: 2048,
            eval_samples: 512,
            methods: MethodOptions::default(),
            max_grad_norm: None,
        }
    }
}

/// The methods' own settings (METHODS.md defaults unless said).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodOptions {
    /// LoRA rank.
    pub lora_rank: usize,
    /// LoRA α (scale α / rank).
    pub lora_alpha: f64,
    /// SaRA: retrain |w| < threshold ...
    pub sara_threshold: Option<f64>,
    /// ... or the smallest `ratio` of each weight (used when set; default 0.1).
    pub sara_ratio: Option<f64>,
    /// SaRA's nuclear-norm weight λ (applied to one random weight with min dim > 64 per step).
    pub sara_nuclear: f64,
    /// SaRA: the step at which the masks are chosen again (0: never).
    pub sara_progressive_step: usize,
    /// PST's final sparsity.
    pub pst_sparsity: f64,
    /// Routed-FFN and Monarch blocks.
    pub blocks: usize,
    /// Routed FFN: blocks each token keeps.
    pub top: usize,
    /// SPT: kept keys per query (default L/8).
    pub topk: Option<usize>,
    /// SPT: rows per selected block G (1: keys per query row; a power of two ≥ 16: key blocks
    /// per query block, METHODS.md §7). `spt-block` uses it when > 1, else 16.
    pub spt_block: usize,
    /// SPT: re-fit the codebooks every this many steps (0: only before training).
    pub refit_every: usize,
    /// CBM: concepts kept per sample.
    pub cbm_topk: usize,
}

impl Default for MethodOptions {
    fn default() -> Self {
        Self {
            lora_rank: 8,
            lora_alpha: 16.0,
            sara_threshold: None,
            sara_ratio: None,
            sara_nuclear: 5e-4,
            sara_progressive_step: 2500,
            pst_sparsity: 0.9,
            blocks: 4,
            top: 2,
            topk: None,
            spt_block: 1,
            refit_every: 50,
            cbm_topk: 4,
        }
    }
}

impl MethodOptions {
    /// SPT's selection granularity G for `method`: `spt_block` for `spt`, at least 16 for
    /// `spt-block`.
    pub fn block_for(&self, method: Method) -> usize {
        match method {
            Method::SptBlock => self.spt_block.max(16),
            _ => self.spt_block.max(1),
        }
    }

    /// SaRA's rule: the threshold when given, else the ratio (default 0.1: the paper retrains
    /// 10–20%; a fixed threshold selects nothing in layers with large weights).
    pub fn sara_select(&self) -> SaraSelect {
        match (self.sara_threshold, self.sara_ratio) {
            (Some(t), None) => SaraSelect::Threshold(t),
            (_, r) => SaraSelect::Ratio(r.unwrap_or(0.1)),
        }
    }
}

impl ConfigFile {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            what: "read the model config",
            source: e,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a config's text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, TrainError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| TrainError::Config {
            module: "config",
            problem: format!("{origin}: {e}"),
            fix: "see the keys in docs/training.md",
        })?;
        file.model.check()?;
        file.train.check()?;
        file.data.check()?;
        Ok(file)
    }
}

impl TrainConfig {
    /// The learning-rate schedule `method` runs with, starting from a pretrained checkpoint
    /// or not.
    pub fn schedule(&self, method: Method, pretrained: bool) -> LrSchedule {
        let lr = self
            .lr_by_method
            .get(method.name())
            .copied()
            .or(self.lr)
            .unwrap_or(if pretrained {
                method.pretrained_lr()
            } else {
                1e-3
            });
        LrSchedule {
            lr,
            warmup: self.warmup.unwrap_or(if pretrained { 0.06 } else { 0.0 }),
            decay: self.decay.unwrap_or(if pretrained {
                Decay::Linear
            } else {
                Decay::Constant
            }),
        }
    }

    /// Every number a run reads is finite and in range.
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |problem: String, fix: &'static str| {
            Err(TrainError::Config {
                module: "config",
                problem,
                fix,
            })
        };
        let rates = self
            .lr
            .map(|lr| ("train.lr".to_string(), lr))
            .into_iter()
            .chain(
                self.lr_by_method
                    .iter()
                    .map(|(m, lr)| (format!("train.lr_by_method.{m}"), *lr)),
            );
        for (key, lr) in rates {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(
                    format!("{key} = {lr}"),
                    "the learning rate must be a finite number above 0 (1e-3 is a usual start)",
                );
            }
        }
        if let Some(m) = self
            .lr_by_method
            .keys()
            .find(|m| m.parse::<Method>().is_err())
        {
            return Err(TrainError::Config {
                module: "config",
                problem: format!("train.lr_by_method names `{m}`, which is not a method"),
                fix: "use the methods' names: dense, lora, spt, spt-block, sara, pst, monarch, cbm, nm",
            });
        }
        if let Some(w) = self.warmup
            && !(w.is_finite() && (0.0..1.0).contains(&w))
        {
            return bad(
                format!("train.warmup = {w}"),
                "the warm-up is a share of the steps, at least 0 and below 1 (0.06 is usual)",
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                format!("train.weight_decay = {}", self.weight_decay),
                "weight decay must be a finite number ≥ 0",
            );
        }
        if let Some(m) = self.max_grad_norm
            && !(m.is_finite() && m > 0.0)
        {
            return bad(
                format!("train.max_grad_norm = {m}"),
                "the gradient-norm bound must be a finite number above 0 (1.0 is usual), or absent",
            );
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Positions the model has embeddings for.
    pub fn max_len(&self) -> usize {
        self.max_positions.unwrap_or(self.seq_len).max(self.seq_len)
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |problem: String, fix: &'static str| {
            Err(TrainError::Config {
                module: "config",
                problem,
                fix,
            })
        };
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) {
            return bad(
                format!(
                    "model.heads = {} must divide d_model = {}",
                    self.heads, self.d_model
                ),
                "choose heads so that d_model / heads is a whole head dimension",
            );
        }
        for (key, v) in [
            ("batch", self.batch),
            ("seq_len", self.seq_len),
            ("d_ff", self.d_ff),
            ("layers", self.layers),
            ("vocab", self.vocab),
            ("classes", self.classes),
        ] {
            if v == 0 {
                return bad(format!("model.{key} = 0"), "every size must be at least 1");
            }
        }
        // The largest tensors a step holds: activations T × d_ff, attention scores
        // B × H × L², embeddings vocab × d_model. Their element counts must fit a usize (and
        // the f32 bytes a u64) before anything is allocated.
        let tokens = self.batch.checked_mul(self.max_len());
        let sizes = [
            (
                "batch × seq_len × d_ff",
                tokens.and_then(|t| t.checked_mul(self.d_ff)),
            ),
            (
                "batch × seq_len × d_model",
                tokens.and_then(|t| t.checked_mul(self.d_model)),
            ),
            (
                "batch × heads × seq_len²",
                tokens.and_then(|t| t.checked_mul(self.heads)?.checked_mul(self.max_len())),
            ),
            ("vocab × d_model", self.vocab.checked_mul(self.d_model)),
            ("d_model × d_ff", self.d_model.checked_mul(self.d_ff)),
        ];
        for (what, n) in sizes {
            if n.and_then(|n| n.checked_mul(4)).is_none() {
                return bad(
                    format!("{what} overflows a {}-bit size", usize::BITS),
                    "these sizes describe tensors no machine can hold; lower them",
                );
            }
        }
        if self.dtype.parse::<DType>().is_err() {
            return bad(
                format!("model.dtype = `{}`", self.dtype),
                "use f32, f16 or bf16",
            );
        }
        Ok(())
    }

    /// The kernel specs of one layer's training step (forward specs; a tuned key covers the
    /// backward too), each verified: what `sparsecube tune --model` tunes.
    pub fn specs(&self) -> Result<Vec<KernelSpec>, TrainError> {
        self.check()?;
        let dtype: DType = self.dtype.parse().unwrap_or(DType::F32);
        let tokens = self.batch * self.seq_len;
        let (dm, dff) = (self.d_model, self.d_ff);
        let spec = |name: &str, op: OpKind, dims: &[(&str, usize)], pattern: Option<Pattern>| {
            let mut b = KernelSpec::builder(name, op)
                .dtype(dtype)
                .dims(dims.iter().copied());
            if let Some(p) = pattern {
                b = b.pattern(p);
            }
            b.build().map_err(TrainError::from)
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
            Method::Spt | Method::SptBlock => {
                specs.push(spec(
                    "attention",
                    OpKind::SptAttention,
                    &[
                        ("B", self.batch),
                        ("H", self.heads),
                        ("L", self.seq_len),
                        ("D", dm / self.heads),
                    ],
                    Some(Pattern::PqTopK(PqTopK {
                        block: MethodOptions::default().block_for(self.method),
                        ..PqTopK::default()
                    })),
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
            Method::Sara | Method::Pst | Method::Nm => {
                let op = match self.method {
                    Method::Sara => OpKind::SaraLinear,
                    Method::Pst => OpKind::PstLinear,
                    _ => OpKind::NmLinear,
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
                    return Err(TrainError::Config {
                        module: "config",
                        problem: format!(
                            "model.blocks = {} must divide d_model = {dm} (Monarch's square factors)",
                            self.blocks
                        ),
                        fix: "choose a block count that divides d_model (e.g. 4)",
                    });
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

/// The embedded default of `sparsecube finetune`: a MiniLM-shaped encoder scaled down (2 layers,
/// d 64, 4 heads, d_ff 256) on the built-in task, a few minutes on 2 CPU cores.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");
