//! Generated CUDA C++ and WGSL of every SPT kernel for canonical configs, as insta snapshots
//! (generated without a device, so they run everywhere), and their stability.

use kernels_ir::pattern::{
    Activation, BlockDiagonal, Cbm, GateMode, MonarchShape, Nm, Pattern, PqTopK, Pst, Routed,
    Router, Sara, SaraSelect, Selector, TopK,
};
use kernels_ir::{DType, KernelSpec, OpKind, Schedule};
use sparsecube_codegen::emit::{Target, sources};

/// The canonical configs: SPT's defaults (D = 64, topk = L/8, pq-match, f32, fused forward), and
/// the other branch of every switch (causal, clamp, pq-adc, f16, D = 32, unfused forward chain)
/// and block-granular selection (G 64, causal, pq-adc);
/// the routed FFN's defaults (4 blocks, top 2, sigmoid, gate on the output, ReLU) and the other
/// branches (16 blocks top 4, softmax, spt-lora, GELU, f16); the Sparse-CBM head keeping 16 of
/// 512 concepts; the dense linear baseline (8192 rows, 1024 → 1024); SaRA keeping 10 % of a
/// 1024 × 1024 weight; PST's defaults (90 % sparsity, ranks 8) on the same weight; 2:4 N:M on
/// it; Monarch at the bench's square shape (n 1024, 4 blocks, batch 8192; the default schedule
/// and the narrow-rows, one-stage, scalar-load corner) and a rectangular one (384 → 160 through
/// 192, k 3, l 4, f16); the block-diagonal map (4 blocks of 256 × 256); PQ encoding alone
/// (D 64); the dense linear at tile_k = 32 (the tile program's deepest double-buffered slices).
pub(crate) fn canonical() -> Vec<(&'static str, KernelSpec)> {
    let b = |name: &str, d: usize, p: PqTopK, dtype, fused| {
        KernelSpec::builder(name, OpKind::SptAttention)
            .dims([("B", 16), ("H", 32), ("L", 512), ("D", d)])
            .pattern(Pattern::PqTopK(p))
            .dtype(dtype)
            .schedule(Schedule {
                fused,
                ..Schedule::default()
            })
            .build()
            .unwrap()
    };
    vec![
        (
            "spt_default_f32",
            b("spt_default", 64, PqTopK::default(), DType::F32, true),
        ),
        (
            "spt_causal_clamp_adc_f16_unfused",
            b(
                "spt_variant",
                32,
                PqTopK {
                    topk: TopK::Fixed(24),
                    causal: true,
                    clamp: true,
                    selector: Selector::PqAdc,
                    ..PqTopK::default()
                },
                DType::F16,
                false,
            ),
        ),
        (
            "spt_blocks_causal_adc_f32",
            b(
                "spt_blocks",
                64,
                PqTopK {
                    causal: true,
                    selector: Selector::PqAdc,
                    block: 64,
                    ..PqTopK::default()
                },
                DType::F32,
                true,
            ),
        ),
        (
            "routed_default_f32",
            routed("routed_default", Routed::default(), DType::F32),
        ),
        (
            "routed_softmax_gelu_lora_f16",
            routed(
                "routed_variant",
                Routed {
                    blocks: 16,
                    top: 4,
                    router: Router::Softmax,
                    gate: GateMode::SptLora,
                    act: Activation::Gelu,
                    ..Routed::default()
                },
                DType::F16,
            ),
        ),
        (
            "cbm_top16_f32",
            KernelSpec::builder("cbm_top16", OpKind::CbmHead)
                .dims([("B", 256), ("C", 512), ("K", 200)])
                .pattern(Pattern::Cbm(Cbm { topk: 16 }))
                .build()
                .unwrap(),
        ),
        (
            "dense_linear_f32",
            KernelSpec::builder("dense_linear", OpKind::DenseLinear)
                .dims([("T", 8192), ("in", 1024), ("out", 1024)])
                .pattern(Pattern::Dense)
                .build()
                .unwrap(),
        ),
        // The tile program's deepest staging point: 32-deep slices, double-buffered (32.5 KiB of
        // shared memory per cube).
        (
            "dense_linear_tk32_f32",
            KernelSpec::builder("dense_linear_tk32", OpKind::DenseLinear)
                .dims([("T", 8192), ("in", 1024), ("out", 1024)])
                .pattern(Pattern::Dense)
                .schedule(Schedule {
                    tile_k: 32,
                    ..Schedule::default()
                })
                .build()
                .unwrap(),
        ),
        (
            "nm_2of4_f32",
            KernelSpec::builder("nm_2of4", OpKind::NmLinear)
                .dims([("T", 8192), ("in", 1024), ("out", 1024)])
                .pattern(Pattern::Nm(Nm::default()))
                .build()
                .unwrap(),
        ),
        (
            "block_diag_f32",
            KernelSpec::builder("block_diag", OpKind::BlockDiagLinear)
                .dims([("N", 8192), ("in", 1024), ("out", 1024)])
                .pattern(Pattern::BlockDiagonal(BlockDiagonal { blocks: 4 }))
                .build()
                .unwrap(),
        ),
        (
            "pq_encode_f32",
            KernelSpec::builder("pq_encode", OpKind::PqEncode)
                .dims([("N", 8192), ("D", 64)])
                .pattern(Pattern::PqTopK(PqTopK::default()))
                .build()
                .unwrap(),
        ),
        (
            "sara_ratio_f32",
            KernelSpec::builder("sara_ratio", OpKind::SaraLinear)
                .dims([("T", 8192), ("in", 1024), ("out", 1024)])
                .pattern(Pattern::Sara(Sara {
                    select: SaraSelect::Ratio(0.1),
                }))
                .build()
                .unwrap(),
        ),
        (
            "pst_default_f32",
            KernelSpec::builder("pst_default", OpKind::PstLinear)
                .dims([("T", 8192), ("in", 1024), ("out", 1024)])
                .pattern(Pattern::Pst(Pst::default()))
                .build()
                .unwrap(),
        ),
        (
            "monarch_square_f32",
            monarch(
                "monarch_square",
                8192,
                MonarchShape::square(1024, 4),
                DType::F32,
            ),
        ),
        // Monarch on the tile program's other corner: narrow rows, wide columns, one stage, no
        // vector loads (the schedule space's least-register point).
        (
            "monarch_narrow_f32",
            KernelSpec {
                name: "monarch_narrow".into(),
                schedule: Schedule {
                    tile_m: 32,
                    tile_n: 128,
                    stages: 1,
                    vector: 1,
                    ..Schedule::default()
                },
                ..monarch(
                    "monarch_narrow",
                    8192,
                    MonarchShape::square(1024, 4),
                    DType::F32,
                )
            },
        ),
        (
            "monarch_rect_f16",
            monarch(
                "monarch_rect",
                64,
                MonarchShape {
                    k: 3,
                    q: 64,
                    p: 128,
                    l: 4,
                    s: 40,
                    r: 48,
                },
                DType::F16,
            ),
        ),
    ]
}

fn monarch(name: &str, n: usize, m: MonarchShape, dtype: DType) -> KernelSpec {
    KernelSpec::builder(name, OpKind::Monarch)
        .dims([("N", n)])
        .pattern(Pattern::Monarch(m))
        .dtype(dtype)
        .build()
        .unwrap()
}

/// A routed FFN at the bench's shape (d_model 1024, d_ff 4096, T 8192).
fn routed(name: &str, r: Routed, dtype: DType) -> KernelSpec {
    KernelSpec::builder(name, OpKind::RoutedFfn)
        .dims([("T", 8192), ("d_model", 1024), ("d_ff", 4096)])
        .pattern(Pattern::Routed(r))
        .dtype(dtype)
        .build()
        .unwrap()
}

fn joined(spec: &KernelSpec, target: Target) -> String {
    sources(spec, target)
        .unwrap()
        .into_iter()
        .map(|k| format!("// ===== {} =====\n{}\n", k.kernel, k.source))
        .collect()
}

#[test]
fn generated_sources_snapshots() {
    for (name, spec) in canonical() {
        for (target, ext) in [(Target::Cuda, "cuda"), (Target::Wgsl, "wgsl")] {
            let text = joined(&spec, target);
            // Every kernel of the chain is there: the shared ones and the chosen forward path.
            let expected: Vec<&str> = match spec.op {
                OpKind::SptAttention => {
                    let forward: &[&str] = if spec.schedule.fused {
                        &["spt_attend_fwd"]
                    } else {
                        &["spt_sddmm", "spt_softmax", "spt_spmm"]
                    };
                    let blocks = matches!(spec.pattern, Pattern::PqTopK(p) if p.block > 1);
                    let select: &[&str] = if blocks {
                        &["spt_block_codes", "spt_block_select", "spt_block_expand"]
                    } else {
                        &["pq_encode", "spt_select"]
                    };
                    [
                        "spt_bwd_rows",
                        "spt_keys_count",
                        "spt_keys_scan_apply",
                        "spt_keys_fill",
                        "spt_keys_offsets",
                        "spt_bwd_keys",
                    ]
                    .into_iter()
                    .chain(forward.iter().copied())
                    .chain(select.iter().copied())
                    .collect()
                }
                // The bias gradient is a column sum in the weight gradient's epilogue.
                OpKind::DenseLinear => vec!["linear_fwd", "linear_bwd_dx", "linear_bwd_dw"],
                // The mask M ⊙ W' is built in the products' prologue, never stored.
                OpKind::PstLinear => vec![
                    "pst_score",
                    "select_hist_pass0",
                    "select_hist_pass3",
                    "select_bins0_reduce0",
                    "select_pick",
                    "select_count",
                    "select_scan_apply",
                    "select_total",
                    "select_cutoff",
                    "pst_fwd",
                    "pst_bwd_dx",
                    "pst_bwd_w",
                    "pst_bwd_rows_partial",
                    "pst_bwd_rows_finish",
                    "pst_bwd_cols_partial",
                    "pst_bwd_cols_finish",
                ],
                // (SaRA's AdamW and re-mask are the optimiser's plans, not the op's.)
                OpKind::SaraLinear => vec![
                    "select_hist_pass0",
                    "select_hist_pass3",
                    "select_bins0_reduce0",
                    "select_pick",
                    "select_count",
                    "select_scan_apply",
                    "select_total",
                    "select_cutoff",
                    "select_fill",
                    "gather",
                    "copy",
                    "scatter",
                    "linear_fwd",
                    "linear_bwd_dx",
                    "sara_bwd_dv",
                ],
                OpKind::NmLinear => vec!["nm_select", "nm_fwd", "nm_bwd_dx", "nm_bwd_dv"],
                OpKind::Monarch => vec![
                    "monarch_fwd_first",
                    "monarch_fwd_second",
                    "monarch_bwd_du",
                    "monarch_bwd_dx",
                    "monarch_bwd_dw1",
                    "monarch_bwd_dw2",
                ],
                OpKind::PqEncode => vec!["pq_encode"],
                OpKind::BlockDiagLinear => {
                    vec!["block_diag_fwd", "block_diag_bwd_dx", "block_diag_bwd_dw"]
                }
                OpKind::CbmHead => vec![
                    "cbm_concepts",
                    "cbm_select",
                    "cbm_logits",
                    "cbm_bwd_dz",
                    "cbm_bwd_dwh",
                    "cbm_bwd_dwc",
                    "cbm_bwd_dx",
                ],
                _ => vec![
                    "routed_router",
                    "routed_gate",
                    "routed_group_count",
                    "routed_group_scan_apply",
                    "routed_group_fill",
                    "routed_group_offsets",
                    "routed_up",
                    "routed_down",
                    "routed_combine",
                    "routed_bwd_hidden",
                    "routed_bwd_router",
                    "routed_bwd_dx",
                    "routed_bwd_dx_combine",
                    "routed_bwd_w1",
                    "routed_bwd_w2",
                    "routed_bwd_db2_partial",
                    "routed_bwd_router_w_partial",
                ],
            };
            for k in expected {
                assert!(
                    text.contains(&format!("// ===== {k} =====")),
                    "{name}/{ext}: {k} missing"
                );
            }
            assert_eq!(
                text,
                joined(&spec, target),
                "{name}/{ext}: generation is not deterministic"
            );
            insta::assert_snapshot!(format!("{name}.{ext}"), text);
        }
    }
}

#[test]
fn comptime_config_specialises_the_source() {
    let specs = canonical();
    let (a, b) = (
        joined(&specs[0].1, Target::Cuda),
        joined(&specs[1].1, Target::Cuda),
    );
    assert_ne!(a, b);
    // bf16 has no WGSL form: a typed error, not a panic.
    let bf16 = KernelSpec {
        dtype: DType::BF16,
        ..specs[0].1.clone()
    };
    assert!(sources(&bf16, Target::Cuda).is_ok());
    let err = sources(&bf16, Target::Wgsl).unwrap_err().to_string();
    assert_eq!(
        err,
        "spt-attention: no generated kernel for bf16 storage in WGSL (WGSL has no bf16) yet; run it with --device reference"
    );
}

#[test]
fn canonicalize_sorts_only_runs_of_uninitialised_declarations() {
    use sparsecube_codegen::emit::canonicalize;
    let src = "float l_mut_77;\nuint32 l_mut_72;\nfloat l_arr_9[64];\nconst uint32 l_0 = x;\nbool l_mut_3;\nbool l_mut_1;\n";
    assert_eq!(
        canonicalize(src),
        "float l_arr_9[64];\nuint32 l_mut_72;\nfloat l_mut_77;\nconst uint32 l_0 = x;\nbool l_mut_1;\nbool l_mut_3;\n"
    );
    let wgsl = "var l_mut_72: u32;\nvar l_mut_7: f32;\nl_mut_7 = 0.0;\n";
    assert_eq!(
        canonicalize(wgsl),
        "var l_mut_7: f32;\nvar l_mut_72: u32;\nl_mut_7 = 0.0;\n"
    );
}

/// Every canonical config in f32, f16 and bf16 — on sm_90 the tile program's f16/bf16 products
/// take the tensor-core mainloop — and, for the ops on the tile program, in f32 with
/// `precision = tf32` (the TF32 tensor-core mainloop): each spec named `<config>_<variant>`,
/// with the config's name.
pub(crate) fn in_every_dtype() -> Vec<(&'static str, KernelSpec)> {
    let mut out = Vec::new();
    for (name, spec) in canonical() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            out.push((
                name,
                KernelSpec {
                    name: format!("{}_{dtype}", spec.name),
                    dtype,
                    ..spec.clone()
                },
            ));
        }
        if spec.op.tiled() {
            out.push((
                name,
                KernelSpec {
                    name: format!("{}_tf32", spec.name),
                    dtype: DType::F32,
                    schedule: kernels_ir::Schedule {
                        precision: kernels_ir::Precision::Tf32,
                        ..spec.schedule
                    },
                    ..spec.clone()
                },
            ));
        }
    }
    out
}

/// scripts/canonical-cuda.sc (what the GPU machine's own NVRTC compiles in
/// scripts/device-check.sh) holds exactly the canonical configs in every dtype, so its resource
/// report can be compared with the committed snapshot.
#[test]
fn device_check_compiles_the_canonical_configs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/canonical-cuda.sc");
    let want = kernels_ir::Module {
        kernels: in_every_dtype().into_iter().map(|(_, s)| s).collect(),
    };
    kernels_ir::verify_module(&want).unwrap();
    let text = format!(
        "# The canonical CUDA configs of tests/it/cuda_offline.rs (every dtype), for the GPU machine's own\n\
         # NVRTC + ptxas in scripts/device-check.sh. tests/it/sources.rs checks that they stay equal\n\
         # (SPARSECUBE_BLESS=1 rewrites this file from the test's list).\n\n{want}"
    );
    if std::env::var_os("SPARSECUBE_BLESS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let module: kernels_ir::Module = std::fs::read_to_string(path).unwrap().parse().unwrap();
    assert_eq!(
        module, want,
        "scripts/canonical-cuda.sc is stale; rerun this test with SPARSECUBE_BLESS=1"
    );
}
