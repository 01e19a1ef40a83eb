//! `sparsecube bench`: the benchmark suites, on one device, as a table or JSON, with the ratio
//! of each of our kernels to its dense baseline measured in the same run.
//!
//! The `all` suite holds one workload per op that has kernels and a dense counterpart.
//!
//! The `paper` suite holds the shapes of the published settings (the SPT paper's layer: d_model
//! 2048, 32 heads, d_ff 8192, sequence 512, batch 16) for every workload that
//! `benches/torch_baselines.py` times with PyTorch; `scripts/device-check.sh` joins the two JSON
//! files by workload id into one table of ratios. Workloads whose kernels do not exist yet are
//! listed with that status, so the table shows the gap instead of hiding it.

use anyhow::{Result, bail};
use kernels_ir::pattern::{
    BlockDiagonal, Cbm, GateMode, MonarchShape, Pattern, PqTopK, Pst, Routed, Sara, TopK,
};
use kernels_ir::{DType, KernelSpec, OpKind};
use serde_json::{Value as Json, json};
use sparsecube_runtime::Device;
use sparsecube_runtime::bench::{self, Attention, Cubek, Linear, Measured, PstStep, SaraStep};

/// Problem sizes of a suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// `full` on CUDA, `small` on other devices.
    Auto,
    /// The published shapes (needs a GPU).
    Full,
    /// Layer-sized shapes a CPU adapter (lavapipe) times in seconds per step.
    Small,
    /// The smallest shapes with the same structure, for CI.
    Tiny,
}

impl Scale {
    /// `Auto` made concrete for `device` (`full` without one: what `--list` shows).
    pub fn on(self, device: Option<&Device>) -> Scale {
        match (self, device) {
            (Scale::Auto, Some(Device::Cuda(_)) | None) => Scale::Full,
            (Scale::Auto, Some(_)) => Scale::Small,
            (s, _) => s,
        }
    }
}

/// A benchmark suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// One workload per op with kernels and a dense counterpart.
    All,
    /// The published settings, joined with the PyTorch baselines by `scripts/device-check.sh`.
    Paper,
}

impl Suite {
    /// The suite called `name`.
    pub fn from_name(name: &str) -> Result<Suite> {
        match name {
            "all" => Ok(Suite::All),
            "paper" => Ok(Suite::Paper),
            _ => bail!("unknown suite `{name}`: the suites are `all` and `paper`"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Suite::All => "all",
            Suite::Paper => "paper",
        }
    }

    fn workloads(self, scale: Scale) -> Vec<Workload> {
        match self {
            Suite::All => all(scale),
            Suite::Paper => paper(scale),
        }
    }
}

/// Which workloads of a suite run.
pub struct Filter<'a> {
    /// Only this op's.
    pub op: Option<OpKind>,
    /// Only those whose id contains this text.
    pub workload: Option<&'a str>,
}

/// The op a workload kind times.
fn op_of(kind: &str) -> Option<OpKind> {
    Some(match kind {
        "attention" => OpKind::SptAttention,
        "ffn" => OpKind::RoutedFfn,
        "monarch" => OpKind::Monarch,
        "block-diag" => OpKind::BlockDiagLinear,
        "sara-linear" => OpKind::SaraLinear,
        "pst-linear" => OpKind::PstLinear,
        "cbm-head" => OpKind::CbmHead,
        "gemm" => OpKind::DenseLinear,
        _ => return None,
    })
}

/// The `all` suite at `scale`: one f32 workload per op with kernels and a dense counterpart.
pub fn all(scale: Scale) -> Vec<Workload> {
    use DType::F32;
    // (B, H, L, D), (T, d_model, d_ff), (rows, n) of the linears, (B, C, K, topk) of the CBM.
    let ((b, h, l, d), (t, dm, dff), (rows, n), (cb, cc, ck, ctop)) = match scale {
        Scale::Full | Scale::Auto => (
            (16, 32, 512, 64),
            (8192, 2048, 8192),
            (8192, 2048),
            (4096, 2048, 1000, 32),
        ),
        Scale::Small => (
            (1, 4, 256, 64),
            (512, 256, 1024),
            (512, 512),
            (256, 512, 10, 32),
        ),
        Scale::Tiny => ((1, 2, 64, 32), (64, 64, 256), (64, 64), (16, 64, 4, 8)),
    };
    vec![
        workload(
            "attention",
            &[("B", b), ("H", h), ("L", l), ("D", d), ("topk", l / 8)],
            F32,
        ),
        workload(
            "ffn",
            &[
                ("T", t),
                ("d_model", dm),
                ("d_ff", dff),
                ("blocks", 4),
                ("r", 2),
            ],
            F32,
        ),
        workload("monarch", &[("T", rows), ("n", n), ("blocks", 4)], F32),
        workload("block-diag", &[("T", rows), ("n", n), ("blocks", 4)], F32),
        workload("sara-linear", &[("T", rows), ("in", n), ("out", n)], F32),
        workload(
            "pst-linear",
            &[("T", rows), ("in", n), ("out", n), ("rank", 8)],
            F32,
        ),
        workload(
            "cbm-head",
            &[("B", cb), ("C", cc), ("K", ck), ("topk", ctop)],
            F32,
        ),
    ]
}

/// One benchmarked problem.
pub struct Workload {
    /// Stable id, the join key with the PyTorch baselines.
    pub id: String,
    /// attention | ffn | monarch | sara-linear | pst-linear | spt-layer | gemm | block-diag |
    /// cbm-head.
    pub kind: &'static str,
    /// Sizes by name.
    pub dims: Vec<(&'static str, usize)>,
    /// Storage dtype.
    pub dtype: DType,
}

impl Workload {
    fn dim(&self, name: &str) -> usize {
        self.dims
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            // Unreachable from input: the workload tables are constants (every workload is run by
            // `bench --list` in the tests).
            .unwrap_or_else(|| panic!("workload {} has no dim {name}", self.id))
    }

    /// Dim `name`, or `default` where the workload has none.
    fn dim_or(&self, name: &str, default: usize) -> usize {
        self.dims
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(default, |(_, v)| *v)
    }

    fn to_json(&self) -> Json {
        let dims: serde_json::Map<String, Json> = self
            .dims
            .iter()
            .map(|(n, v)| ((*n).to_string(), json!(v)))
            .collect();
        json!({"id": self.id, "kind": self.kind, "dims": dims, "dtype": self.dtype.to_string()})
    }
}

fn workload(kind: &'static str, dims: &[(&'static str, usize)], dtype: DType) -> Workload {
    let shape: Vec<String> = dims.iter().map(|(n, v)| format!("{n}{v}")).collect();
    Workload {
        id: format!("{kind}/{}/{dtype}", shape.join("-")),
        kind,
        dims: dims.to_vec(),
        dtype,
    }
}

/// The `paper` suite at `scale`.
pub fn paper(scale: Scale) -> Vec<Workload> {
    use DType::{BF16, F32};
    let (b, h, l, d, long_b, long_l, t, dm, dff, n, small_t) = match scale {
        Scale::Full | Scale::Auto => (16, 32, 512, 64, 2, 2048, 8192, 2048, 8192, 2048, 16),
        Scale::Small => (1, 4, 256, 64, 1, 512, 512, 512, 2048, 512, 16),
        Scale::Tiny => (1, 2, 64, 32, 1, 128, 64, 64, 256, 64, 4),
    };
    // The square GEMM's side: 4096³ at full scale.
    let g = 2 * n;
    // Block-granular attention (METHODS.md §7, G 64): one long sequence, L/8 keys per row.
    let block_l = match scale {
        Scale::Full | Scale::Auto => 4096,
        Scale::Small => 1024,
        Scale::Tiny => 128,
    };
    vec![
        workload(
            "attention",
            &[
                ("B", 1),
                ("H", h),
                ("L", block_l),
                ("D", d),
                ("topk", block_l / 8),
                ("block", 64),
            ],
            BF16,
        ),
        workload(
            "attention",
            &[("B", b), ("H", h), ("L", l), ("D", d), ("topk", l / 8)],
            F32,
        ),
        workload(
            "attention",
            &[("B", b), ("H", h), ("L", l), ("D", d), ("topk", l / 8)],
            BF16,
        ),
        workload(
            "attention",
            &[
                ("B", long_b),
                ("H", h),
                ("L", long_l),
                ("D", d),
                ("topk", long_l / 8),
            ],
            F32,
        ),
        workload(
            "ffn",
            &[
                ("T", t),
                ("d_model", dm),
                ("d_ff", dff),
                ("blocks", 4),
                ("r", 2),
            ],
            BF16,
        ),
        // Issue 4's routed-FFN bench shapes (d_model 1024, d_ff 4096, T 8192), in f32.
        workload(
            "ffn",
            &[
                ("T", t),
                ("d_model", dm / 2),
                ("d_ff", dff / 2),
                ("blocks", 4),
                ("r", 2),
            ],
            F32,
        ),
        workload(
            "ffn",
            &[
                ("T", t),
                ("d_model", dm / 2),
                ("d_ff", dff / 2),
                ("blocks", 16),
                ("r", 4),
            ],
            F32,
        ),
        workload("monarch", &[("T", t), ("n", n), ("blocks", 4)], BF16),
        // Issue 5's Monarch bench shapes (4 blocks; n 1024 and 4096; batch 16 and 8192), in f32.
        workload(
            "monarch",
            &[("T", small_t), ("n", n / 2), ("blocks", 4)],
            F32,
        ),
        workload("monarch", &[("T", t), ("n", n / 2), ("blocks", 4)], F32),
        workload(
            "monarch",
            &[("T", small_t), ("n", 2 * n), ("blocks", 4)],
            F32,
        ),
        workload("monarch", &[("T", t), ("n", 2 * n), ("blocks", 4)], F32),
        workload("sara-linear", &[("T", t), ("in", n), ("out", n)], BF16),
        workload(
            "sara-linear",
            &[("T", t), ("in", n / 2), ("out", n / 2)],
            F32,
        ),
        workload(
            "pst-linear",
            &[("T", t), ("in", n), ("out", n), ("rank", 8)],
            BF16,
        ),
        workload(
            "pst-linear",
            &[("T", t), ("in", n / 2), ("out", n / 2), ("rank", 8)],
            F32,
        ),
        // The tile program's dense product, forward + backward (3 GEMMs of 2·T·in·out FLOPs):
        // tensor cores against the scalar loop, PyTorch's linear and cubek's best (issue 18).
        workload("gemm", &[("T", g), ("in", g), ("out", g)], BF16),
        workload("gemm", &[("T", t), ("in", n), ("out", t)], BF16),
        workload("gemm", &[("T", g), ("in", g), ("out", g)], F32),
        workload(
            "spt-layer",
            &[
                ("B", b),
                ("L", l),
                ("d_model", dm),
                ("H", h),
                ("d_ff", dff),
                ("topk", l / 8),
                ("blocks", 4),
                ("r", 2),
            ],
            BF16,
        ),
    ]
}

/// What we time for a workload.
#[derive(Clone, Copy)]
enum Ours {
    Attention(Attention),
    /// The routed FFN with the workload's blocks and top.
    Routed,
    /// The same kernels with one block of all d_ff, kept by every token, no gate: the dense FFN.
    RoutedDense,
    /// A Monarch map or the dense GEMM it replaces.
    Linear(Linear),
    /// A SaRA training step (default threshold 2e-3) or the dense-gradient step.
    Sara(SaraStep),
    /// A PST training step (defaults, the workload's rank) or the dense linear.
    Pst(PstStep),
    /// The CBM head with the workload's top-k, or with every concept kept (dense).
    Cbm {
        dense: bool,
    },
    /// The block-diagonal map, or the dense linear of the same shape.
    BlockDiag {
        dense: bool,
    },
    /// The dense linear on tensor cores (`mma = cmma`; f32 as TF32) or the scalar loop.
    Gemm {
        tensor: bool,
    },
    /// The dense linear's three products with a cubek-matmul strategy (the ecosystem's GEMM).
    Cubek(Cubek),
}

/// What we run for a workload kind: (implementation, what to time, or the issue that builds it).
fn ours(kind: &str) -> Vec<(&'static str, Result<Ours, &'static str>)> {
    match kind {
        "attention" => vec![
            (
                "sparsecube-spt-sparse",
                Ok(Ours::Attention(Attention::Sparse)),
            ),
            ("sparsecube-dense", Ok(Ours::Attention(Attention::Dense))),
        ],
        "ffn" => vec![
            ("sparsecube-routed-ffn", Ok(Ours::Routed)),
            ("sparsecube-dense-ffn", Ok(Ours::RoutedDense)),
        ],
        "monarch" => vec![
            ("sparsecube-monarch", Ok(Ours::Linear(Linear::Monarch))),
            ("sparsecube-dense-linear", Ok(Ours::Linear(Linear::Dense))),
        ],
        "sara-linear" => vec![
            ("sparsecube-sara", Ok(Ours::Sara(SaraStep::Sparse))),
            (
                "sparsecube-sara-dense-grad",
                Ok(Ours::Sara(SaraStep::DenseGrad)),
            ),
        ],
        "pst-linear" => vec![
            ("sparsecube-pst", Ok(Ours::Pst(PstStep::Masked))),
            ("sparsecube-dense-linear", Ok(Ours::Pst(PstStep::Dense))),
        ],
        "block-diag" => vec![
            (
                "sparsecube-block-diag",
                Ok(Ours::BlockDiag { dense: false }),
            ),
            (
                "sparsecube-dense-linear",
                Ok(Ours::BlockDiag { dense: true }),
            ),
        ],
        "cbm-head" => vec![
            ("sparsecube-sparse-cbm", Ok(Ours::Cbm { dense: false })),
            ("sparsecube-dense-cbm", Ok(Ours::Cbm { dense: true })),
        ],
        "gemm" => vec![
            (
                "sparsecube-gemm-tensor-cores",
                Ok(Ours::Gemm { tensor: true }),
            ),
            ("sparsecube-gemm-scalar", Ok(Ours::Gemm { tensor: false })),
        ]
        .into_iter()
        .chain(Cubek::ALL.map(|c| (c.name(), Ok(Ours::Cubek(c)))))
        .collect(),
        _ => vec![(
            "sparsecube-spt-layer",
            Err("not implemented yet (issues 4 and 7)"),
        )],
    }
}

fn attention_spec(w: &Workload) -> Result<KernelSpec> {
    Ok(KernelSpec::builder("bench", OpKind::SptAttention)
        .dims([
            ("B", w.dim("B")),
            ("H", w.dim("H")),
            ("L", w.dim("L")),
            ("D", w.dim("D")),
        ])
        .pattern(Pattern::PqTopK(PqTopK {
            topk: TopK::Fixed(w.dim("topk")),
            block: w.dim_or("block", 1),
            ..PqTopK::default()
        }))
        .dtype(w.dtype)
        .build()?)
}

fn routed_spec(w: &Workload, dense: bool) -> Result<KernelSpec> {
    // The dense FFN: one block holding all of d_ff, kept by every token, no gate — the same
    // kernels with one group of T rows (every block kept of `blocks` would grow the per-pair
    // un-permute buffer to T·blocks rows).
    let r = if dense {
        Routed {
            blocks: 1,
            top: 1,
            gate: GateMode::None,
            ..Routed::default()
        }
    } else {
        Routed {
            blocks: w.dim("blocks"),
            top: w.dim("r"),
            ..Routed::default()
        }
    };
    Ok(KernelSpec::builder("bench", OpKind::RoutedFfn)
        .dims([
            ("T", w.dim("T")),
            ("d_model", w.dim("d_model")),
            ("d_ff", w.dim("d_ff")),
        ])
        .pattern(Pattern::Routed(r))
        .dtype(w.dtype)
        .build()?)
}

fn monarch_spec(w: &Workload) -> Result<KernelSpec> {
    let n = w.dim("n");
    Ok(KernelSpec::builder("bench", OpKind::Monarch)
        .dims([("N", w.dim("T"))])
        .pattern(Pattern::Monarch(MonarchShape::square(n, w.dim("blocks"))))
        .dtype(w.dtype)
        .build()?)
}

fn pst_spec(w: &Workload) -> Result<KernelSpec> {
    Ok(KernelSpec::builder("bench", OpKind::PstLinear)
        .dims([
            ("T", w.dim("T")),
            ("in", w.dim("in")),
            ("out", w.dim("out")),
        ])
        .pattern(Pattern::Pst(Pst {
            rank: w.dim("rank"),
            ..Pst::default()
        }))
        .dtype(w.dtype)
        .build()?)
}

fn sara_spec(w: &Workload) -> Result<KernelSpec> {
    Ok(KernelSpec::builder("bench", OpKind::SaraLinear)
        .dims([
            ("T", w.dim("T")),
            ("in", w.dim("in")),
            ("out", w.dim("out")),
        ])
        .pattern(Pattern::Sara(Sara::default()))
        .dtype(w.dtype)
        .build()?)
}

/// The dense linear of a `gemm` workload with its mainloop fixed: tensor cores (`mma = cmma`,
/// f32 storage as TF32) or the scalar loop. Never the tuned schedule: the row names the
/// strategy it times.
fn gemm_spec(w: &Workload, tensor: bool) -> Result<KernelSpec> {
    let schedule = kernels_ir::Schedule {
        mma: if tensor {
            kernels_ir::Mma::Cmma
        } else {
            kernels_ir::Mma::Scalar
        },
        precision: if tensor && w.dtype == DType::F32 {
            kernels_ir::Precision::Tf32
        } else {
            kernels_ir::Precision::Ieee
        },
        ..kernels_ir::Schedule::default()
    };
    Ok(KernelSpec::builder("bench", OpKind::DenseLinear)
        .dims([
            ("T", w.dim("T")),
            ("in", w.dim("in")),
            ("out", w.dim("out")),
        ])
        .pattern(Pattern::Dense)
        .dtype(w.dtype)
        .schedule(schedule)
        .build()?)
}

fn block_diag_spec(w: &Workload, dense: bool) -> Result<KernelSpec> {
    let n = w.dim("n");
    let (op, pattern) = if dense {
        (OpKind::DenseLinear, Pattern::Dense)
    } else {
        (
            OpKind::BlockDiagLinear,
            Pattern::BlockDiagonal(BlockDiagonal {
                blocks: w.dim("blocks"),
            }),
        )
    };
    let rows = if dense { "T" } else { "N" };
    Ok(KernelSpec::builder("bench", op)
        .dims([(rows, w.dim("T")), ("in", n), ("out", n)])
        .pattern(pattern)
        .dtype(w.dtype)
        .build()?)
}

fn cbm_spec(w: &Workload, dense: bool) -> Result<KernelSpec> {
    Ok(KernelSpec::builder("bench", OpKind::CbmHead)
        .dims([("B", w.dim("B")), ("C", w.dim("C")), ("K", w.dim("K"))])
        .pattern(Pattern::Cbm(Cbm {
            topk: if dense { 0 } else { w.dim("topk") },
        }))
        .dtype(w.dtype)
        .build()?)
}

fn measured_json(m: &Measured) -> Json {
    json!({
        "status": "ok",
        "median_ms": m.median_ms,
        "min_ms": m.min_ms,
        "max_ms": m.max_ms,
        "repeats": m.repeats,
        "peak_bytes": m.peak_bytes,
        "saved_bytes": m.saved_bytes,
    })
}

/// Runs `suite` (the workloads `filter` keeps) on `device` and prints JSON (`json_out`) or
/// markdown tables: every implementation's row, then per workload the ratios ours / dense of
/// the median step time and of the peak device memory, both measured in this run.
#[allow(clippy::too_many_arguments)]
pub fn run(
    suite: Suite,
    device: Option<&Device>,
    scale: Scale,
    filter: &Filter<'_>,
    warmup: usize,
    repeats: usize,
    json_out: bool,
    list: bool,
) -> Result<()> {
    let scale = scale.on(device);
    let workloads: Vec<Workload> = suite
        .workloads(scale)
        .into_iter()
        .filter(|w| filter.workload.is_none_or(|o| w.id.contains(o)))
        .filter(|w| filter.op.is_none_or(|op| op_of(w.kind) == Some(op)))
        .collect();
    if workloads.is_empty() {
        let what = match (filter.op, filter.workload) {
            (Some(op), _) => format!("op {op}"),
            (None, Some(w)) => format!("`{w}`"),
            (None, None) => "the filter".into(),
        };
        bail!(
            "no workload of the {} suite matches {what}; see `sparsecube bench --suite {} --list`",
            suite.name(),
            suite.name()
        );
    }
    let scale_name = format!("{scale:?}").to_lowercase();
    let listed: Vec<Json> = workloads.iter().map(Workload::to_json).collect();
    if list {
        let doc = json!({"suite": suite.name(), "scale": scale_name, "workloads": listed});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let Some(device) = device else {
        bail!("bench needs a device (or --list for the suite alone)");
    };
    let describe = sparsecube_runtime::describe(device.kind())?;
    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for w in &workloads {
        let mut rows = Vec::new();
        for (name, what) in ours(w.kind) {
            let mut row = match what {
                Err(status) => json!({"status": status}),
                Ok(what) => match measure(device, w, what, warmup, repeats) {
                    Ok(m) => measured_json(&m),
                    Err(e) => json!({"status": format!("error: {e:#}")}),
                },
            };
            row["workload"] = json!(w.id);
            row["impl"] = json!(name);
            if !json_out {
                eprintln!("{row}");
            }
            rows.push(row);
        }
        // The first implementation is ours, the second its dense baseline.
        if let [ours, dense, ..] = rows.as_slice() {
            let ratio = |k: &str| match (ours[k].as_f64(), dense[k].as_f64()) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            ratios.push(json!({
                "workload": w.id,
                "op": op_of(w.kind).map(|o| o.name()),
                "ours": ours["impl"],
                "baseline": dense["impl"],
                "time_ratio": ratio("median_ms"),
                "peak_ratio": ratio("peak_bytes"),
            }));
        }
        results.extend(rows);
    }
    let doc = json!({
        "suite": suite.name(),
        "scale": scale_name,
        "device": describe,
        "warmup": warmup,
        "repeats": repeats.max(1),
        "workloads": listed,
        "results": results,
        "ratios": ratios,
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("| workload | impl | median ms | peak MiB | saved MiB | status |");
    println!("|---|---|---|---|---|---|");
    for r in doc["results"].as_array().into_iter().flatten() {
        let mib = |k: &str| {
            r[k].as_f64()
                .map(|b| format!("{:.1}", b / 1048576.0))
                .unwrap_or_else(|| "—".into())
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r["workload"].as_str().unwrap_or(""),
            r["impl"].as_str().unwrap_or(""),
            r["median_ms"]
                .as_f64()
                .map(|t| format!("{t:.3}"))
                .unwrap_or_else(|| "—".into()),
            mib("peak_bytes"),
            mib("saved_bytes"),
            r["status"].as_str().unwrap_or("")
        );
    }
    println!("\n| workload | ours / dense time | ours / dense peak memory |");
    println!("|---|---|---|");
    for r in doc["ratios"].as_array().into_iter().flatten() {
        let f = |k: &str| {
            r[k].as_f64()
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "—".into())
        };
        println!(
            "| {} | {} | {} |",
            r["workload"].as_str().unwrap_or(""),
            f("time_ratio"),
            f("peak_ratio")
        );
    }
    Ok(())
}

/// Times one implementation of `w`, each spec with the schedule a launch would run (its key's
/// tuned winner, if the tuning cache has one; see `sparsecube_runtime::tune::resolve`).
fn measure(
    device: &Device,
    w: &Workload,
    what: Ours,
    warmup: usize,
    repeats: usize,
) -> Result<Measured> {
    const SEED: u64 = 0x5EED;
    let tuned = |spec: KernelSpec| sparsecube_runtime::tune::resolve(device, &spec);
    Ok(match what {
        Ours::Attention(which) => bench::attention(
            device,
            &tuned(attention_spec(w)?),
            which,
            warmup,
            repeats,
            SEED,
        )?,
        Ours::Routed | Ours::RoutedDense => bench::routed_ffn(
            device,
            &tuned(routed_spec(w, matches!(what, Ours::RoutedDense))?),
            warmup,
            repeats,
            SEED,
        )?,
        Ours::Linear(which) => bench::linear(
            device,
            &tuned(monarch_spec(w)?),
            which,
            warmup,
            repeats,
            SEED,
        )?,
        Ours::Sara(which) => {
            bench::sara_step(device, &tuned(sara_spec(w)?), which, warmup, repeats, SEED)?
        }
        Ours::Pst(which) => {
            bench::pst_step(device, &tuned(pst_spec(w)?), which, warmup, repeats, SEED)?
        }
        Ours::Cbm { dense } => {
            bench::cbm_head(device, &tuned(cbm_spec(w, dense)?), warmup, repeats, SEED)?
        }
        Ours::Gemm { tensor } => {
            bench::dense_linear(device, &gemm_spec(w, tensor)?, warmup, repeats, SEED)?
        }
        Ours::Cubek(strategy) => bench::cubek_linear(
            device,
            &gemm_spec(w, false)?,
            strategy,
            warmup,
            repeats,
            SEED,
        )?,
        Ours::BlockDiag { dense } => bench::step(
            device,
            &tuned(block_diag_spec(w, dense)?),
            warmup,
            repeats,
            SEED,
        )?,
    })
}
