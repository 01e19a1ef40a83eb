//! The IR: text format round trip, serde, verifier (every error at once), parse errors with
//! positions, builder ⇒ verifier, and snapshots of the printed IR of one canonical spec per method.

use kernels_ir::pattern::*;
use kernels_ir::{DType, Direction, KernelSpec, Module, OpKind, Role, Schedule, verify_module};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -10.0f64..10.0,
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(0.0),
        Just(2e-3),
    ]
}

fn any_pattern() -> impl Strategy<Value = Pattern> {
    let topk = prop_oneof![
        (0usize..300).prop_map(TopK::Fixed),
        (0usize..64).prop_map(TopK::SeqFraction)
    ];
    let pq = (
        topk,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..20,
        0usize..40,
        prop::sample::select(vec![1usize, 16, 64, 256]),
    )
        .prop_map(|(topk, adc, causal, clamp, sub_dim, codewords, block)| {
            Pattern::PqTopK(PqTopK {
                topk,
                selector: if adc {
                    Selector::PqAdc
                } else {
                    Selector::PqMatch
                },
                causal,
                clamp,
                sub_dim,
                codewords,
                block,
            })
        });
    let routed = (
        0usize..20,
        0usize..20,
        0usize..2,
        0usize..3,
        finite(),
        any::<bool>(),
    )
        .prop_map(|(blocks, top, router, gate, gate_scale, gelu)| {
            Pattern::Routed(Routed {
                blocks,
                top,
                router: Router::ALL[router],
                gate: GateMode::ALL[gate],
                gate_scale,
                act: if gelu {
                    Activation::Gelu
                } else {
                    Activation::Relu
                },
            })
        });
    let monarch = (
        0usize..9,
        0usize..9,
        0usize..9,
        0usize..9,
        0usize..9,
        0usize..9,
    )
        .prop_map(|(k, q, p, l, s, r)| Pattern::Monarch(MonarchShape { k, q, p, l, s, r }));
    let sara = (any::<bool>(), finite()).prop_map(|(ratio, v)| {
        Pattern::Sara(Sara {
            select: if ratio {
                SaraSelect::Ratio(v)
            } else {
                SaraSelect::Threshold(v)
            },
        })
    });
    let pst = (
        finite(),
        0usize..16,
        0usize..16,
        finite(),
        finite(),
        finite(),
        finite(),
        finite(),
        finite(),
    )
        .prop_map(
            |(sparsity, rank, mask_rank, alpha1, alpha2, beta, s0, warmup, cooldown)| {
                Pattern::Pst(Pst {
                    sparsity,
                    rank,
                    mask_rank,
                    alpha1,
                    alpha2,
                    beta,
                    schedule: CubicSchedule {
                        s0,
                        warmup,
                        cooldown,
                    },
                })
            },
        );
    prop_oneof![
        Just(Pattern::Dense),
        pq,
        routed,
        monarch,
        (0usize..9).prop_map(|blocks| Pattern::BlockDiagonal(BlockDiagonal { blocks })),
        sara,
        pst,
        (0usize..64).prop_map(|topk| Pattern::Cbm(Cbm { topk })),
        (0usize..9, 0usize..9).prop_map(|(n, m)| Pattern::Nm(Nm { n, m })),
    ]
}

fn any_spec() -> impl Strategy<Value = KernelSpec> {
    let dim_names = prop::sample::subsequence(
        vec![
            "B", "H", "L", "D", "N", "T", "d_model", "d_ff", "in", "out", "C", "K", "extra_1",
        ],
        0..6,
    );
    let schedule = (
        0u32..300,
        0u32..300,
        0u32..300,
        0u32..9,
        0u32..6,
        any::<bool>(),
        0u32..40,
        0usize..3,
        any::<bool>(),
    )
        .prop_map(
            |(tile_m, tile_n, tile_k, vector, stages, fused, lanes, mma, tf32)| Schedule {
                tile_m,
                tile_n,
                tile_k,
                vector,
                stages,
                fused,
                lanes,
                mma: kernels_ir::Mma::ALL[mma],
                precision: if tf32 {
                    kernels_ir::Precision::Tf32
                } else {
                    kernels_ir::Precision::Ieee
                },
            },
        );
    (
        "[a-zA-Z_][a-zA-Z0-9_]{0,12}",
        0usize..OpKind::ALL.len(),
        any::<bool>(),
        0usize..4,
        any_pattern(),
        dim_names,
        prop::collection::vec(0usize..100_000, 6),
        schedule,
    )
        .prop_map(
            |(name, op, bwd, dtype, pattern, names, values, schedule)| KernelSpec {
                name,
                op: OpKind::ALL[op],
                direction: if bwd {
                    Direction::Backward
                } else {
                    Direction::Forward
                },
                dtype: DType::ALL[dtype],
                pattern,
                dims: names
                    .into_iter()
                    .zip(values)
                    .map(|(n, v)| (n.to_string(), v))
                    .collect::<BTreeMap<_, _>>(),
                schedule,
            },
        )
}

proptest! {
    #![proptest_config(sparsecube_tests::proptest_config(256))]

    /// print → parse → print is the identity, and parse(print(spec)) == spec, valid or not.
    #[test]
    fn text_round_trip(spec in any_spec()) {
        let text = spec.to_string();
        let parsed: KernelSpec = text.parse().map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(parsed.to_string(), text);
        prop_assert_eq!(parsed, spec);
    }

    /// The same for a module of several kernels, and for serde (JSON).
    #[test]
    fn module_text_and_serde_round_trip(kernels in prop::collection::vec(any_spec(), 0..4)) {
        let module = Module { kernels };
        let text = module.to_string();
        let parsed: Module = text.parse().map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(parsed.to_string(), text);
        let json = serde_json::to_string(&module).unwrap();
        let back: Module = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, module);
    }

    /// What the builder builds, the verifier accepts, its tensors are consistent, and its text
    /// round-trips.
    #[test]
    fn builder_output_verifies(
        op in 0usize..OpKind::ALL.len(), bwd: bool, dtype in 0usize..3,
        a in 1usize..6, b in 1usize..6, c in 1usize..6, blocks in 1usize..5, top_pick in 0usize..5,
    ) {
        let op = OpKind::ALL[op];
        let direction = if bwd && op.has_backward() { Direction::Backward } else { Direction::Forward };
        let builder = KernelSpec::builder("k", op).direction(direction).dtype(DType::ALL[dtype]);
        let builder = match op {
            OpKind::SptAttention => builder.dims([("B", a), ("H", b), ("L", 8 * c), ("D", 8 * blocks)]),
            OpKind::PqEncode => builder.dims([("N", a), ("D", 8 * blocks)]),
            OpKind::RoutedFfn => builder
                .dims([("T", a), ("d_model", b), ("d_ff", blocks * c)])
                .pattern(Pattern::Routed(Routed { blocks, top: 1 + top_pick % blocks, ..Routed::default() })),
            OpKind::Monarch | OpKind::MonarchProject => {
                let m = MonarchShape { k: blocks, q: a, p: b, l: a, s: c, r: blocks };
                let b2 = builder.pattern(Pattern::Monarch(m));
                if op == OpKind::Monarch { b2.dim("N", c) } else { b2 }
            }
            OpKind::BlockDiagLinear => builder
                .dims([("N", a), ("in", blocks * b), ("out", blocks * c)])
                .pattern(Pattern::BlockDiagonal(BlockDiagonal { blocks })),
            OpKind::SaraLinear | OpKind::PstLinear | OpKind::DenseLinear => builder.dims([("T", a), ("in", b), ("out", c)]),
            OpKind::CbmHead => builder.dims([("B", a), ("C", b + blocks), ("K", c)]).pattern(Pattern::Cbm(Cbm { topk: blocks })),
            OpKind::NmLinear => builder
                .dims([("T", a), ("in", 4 * b), ("out", c)])
                .pattern(Pattern::Nm(Nm { n: 1 + top_pick % 4, m: 4 })),
        };
        let spec = builder.build().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(spec.verify().is_ok());
        let tensors = spec.tensors().unwrap();
        prop_assert!(tensors.iter().any(|t| t.role == Role::Input));
        prop_assert!(tensors.iter().any(|t| t.role == Role::Output));
        // Costs exist for every valid spec (Monarch and PST may exceed dense at tiny sizes).
        let cost = spec.cost(None).unwrap();
        prop_assert!(cost.dense_nnz > 0);
        prop_assert_eq!(spec.to_string().parse::<KernelSpec>().unwrap(), spec);
    }
}

#[test]
fn verifier_reports_every_error_at_once() {
    let text = "
        kernel bad {
          op = routed-ffn
          dtype = i64
          pattern = routed(blocks = 7, top = 9, gate_scale = -1)
          dims = (T = 0, d_model = 64, d_ff = 3000, L = 5)
          schedule = (tile_m = 48, vector = 3)
        }
        kernel bad {
          op = monarch-project
          direction = backward
          pattern = monarch(k = 4, q = 8, p = 8, l = 3, s = 8, r = 10)
        }";
    let module: Module = text.parse().unwrap();
    let errors = verify_module(&module).unwrap_err();
    let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
    let expected = [
        "kernel `bad`: dtype: i64 is an index type; a kernel's dtype must be f32, f16 or bf16",
        "kernel `bad`: dims: T = 0 must be at least 1",
        "kernel `bad`: dims: `L` is not a dim of routed-ffn (expected T, d_model, d_ff)",
        "kernel `bad`: routed: d_ff = 3000 is not divisible by blocks = 7",
        "kernel `bad`: routed: top = 9 must be between 1 and blocks = 7",
        "kernel `bad`: routed: gate_scale = -1 must be a positive finite number",
        "kernel `bad`: schedule: tile_m = 48 must be a power of two between 1 and 256",
        "kernel `bad`: schedule: vector = 3 must be 1, 2, 4 or 8",
        "kernel `bad`: name: `bad` is already the name of an earlier kernel; rename one",
        "kernel `bad`: direction: monarch-project has no backward (it is not differentiated)",
        "kernel `bad`: monarch: k·q = 4·8 = 32 must equal l·r = 3·10 = 30",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn verifier_checks_attention_and_weight_patterns() {
    let spec = |op, dims: &[(&'static str, usize)], pattern| {
        KernelSpec::builder("k", op)
            .dims(dims.iter().copied())
            .pattern(pattern)
            .build()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.message)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        spec(
            OpKind::SptAttention,
            &[("B", 1), ("H", 1), ("L", 16), ("D", 20)],
            Pattern::PqTopK(PqTopK {
                topk: TopK::Fixed(17),
                ..PqTopK::default()
            })
        ),
        [
            "D = 20 is not divisible by sub_dim = 8",
            "topk = 17 resolves to 17, more than L = 16"
        ]
    );
    assert_eq!(
        spec(
            OpKind::SptAttention,
            &[("B", 1), ("H", 1), ("L", 64), ("D", 16)],
            Pattern::PqTopK(PqTopK {
                block: 24,
                ..PqTopK::default()
            })
        ),
        [
            "block = 24 must be 1 (a key per query row) or a power of two ≥ 16 (rows per selected block), e.g. 64"
        ]
    );
    assert_eq!(
        spec(
            OpKind::PstLinear,
            &[("T", 1), ("in", 2), ("out", 2)],
            Pattern::Pst(Pst {
                sparsity: 1.0,
                rank: 0,
                schedule: CubicSchedule {
                    warmup: 0.8,
                    ..CubicSchedule::default()
                },
                ..Pst::default()
            })
        ),
        [
            "sparsity = 1 is outside [0, 1)",
            "rank = 0 must be at least 1",
            "warmup + cooldown = 1.1 exceeds 1 (the schedule has no room to ramp)"
        ]
    );
    assert_eq!(
        spec(
            OpKind::SaraLinear,
            &[("T", 1), ("in", 2), ("out", 2)],
            Pattern::Sara(Sara {
                select: SaraSelect::Ratio(1.5)
            })
        ),
        ["ratio = 1.5 is outside (0, 1]"]
    );
    assert_eq!(
        spec(
            OpKind::CbmHead,
            &[("B", 1), ("C", 4)],
            Pattern::Cbm(Cbm { topk: 5 })
        ),
        [
            "`K` is missing (cbm-head needs B, C, K)",
            "topk = 5 is more than C = 4 concepts (0 keeps all)"
        ]
    );
    assert_eq!(
        spec(OpKind::Monarch, &[("N", 2)], Pattern::Dense),
        ["monarch needs a `monarch` pattern, got `dense`"]
    );
}

#[test]
fn parse_errors_name_position_and_fix() {
    let err = |src: &str| src.parse::<Module>().unwrap_err().to_string();
    assert_eq!(
        err("kernel k {\n  op = spt-attention\n  pattern = pq-topk(topk = x)\n}"),
        "line 3, column 13: pq-topk: `topk` = `x` is not a key count: `x`: expected an integer or `L/<integer>`"
    );
    assert_eq!(
        err("kernel k {\n  op = spt-attention\n  colour = red\n}"),
        "line 3, column 3: unknown field `colour` (fields: op, direction, dtype, pattern, dims, schedule)"
    );
    assert_eq!(
        err("kernel k {\n  dtype = f32\n}"),
        "line 1, column 1: kernel `k` has no `op = ...` field"
    );
    assert_eq!(
        err("kernel k { op = routed-ffn pattern = routed(blocks = 4, blokcs = 2) }"),
        "line 1, column 38: routed: unknown argument `blokcs`; accepted: blocks, top, router, gate, gate_scale, act"
    );
    assert_eq!(
        err("kernel k { op = monarch }").lines().next().unwrap(),
        "line 1, column 1: kernel `k`: monarch needs `pattern = monarch(k = .., q = .., p = .., l = .., s = .., r = ..)`"
    );
    assert_eq!(
        err("kernel k { op = dense-linear dims = (T = 1, T = 2) }"),
        "line 1, column 30: dim `T` is given twice"
    );
    assert_eq!(
        err("kernel k { op = conv2d }"),
        "line 1, column 12: unknown op `conv2d` (expected one of spt-attention, pq-encode, routed-ffn, monarch, monarch-project, block-diag-linear, sara-linear, pst-linear, cbm-head, dense-linear, nm-linear)"
    );
    assert_eq!(
        err("kernel k { op = dense-linear } }"),
        "line 1, column 32: expected `kernel`, found `}`"
    );
    assert_eq!(
        err("kernel k { op = dense-linear ; }"),
        "line 1, column 30: unexpected character `;`"
    );
}

#[test]
fn omitted_fields_take_published_defaults() {
    let spec: KernelSpec = "kernel a { op = spt-attention dims = (B = 1, H = 2, L = 64, D = 64) }"
        .parse()
        .unwrap();
    assert_eq!(spec.pattern, Pattern::PqTopK(PqTopK::default()));
    assert_eq!(spec.topk(), 8);
    assert_eq!(
        (spec.direction, spec.dtype, spec.schedule),
        (Direction::Forward, DType::F32, Schedule::default())
    );
    let routed: KernelSpec = "kernel b { op = routed-ffn pattern = routed(top = 1) }"
        .parse()
        .unwrap();
    assert_eq!(
        routed.pattern,
        Pattern::Routed(Routed {
            top: 1,
            ..Routed::default()
        })
    );
    assert_eq!(Routed::default().gate_scale, 2.0);
    assert_eq!(Sara::default().select, SaraSelect::Threshold(2e-3));
    let p = Pst::default();
    assert_eq!(
        (p.sparsity, p.rank, p.mask_rank, p.alpha1, p.alpha2, p.beta),
        (0.9, 8, 8, 1.0, 1.0, 1.0)
    );
}

#[test]
fn cubic_schedule_holds_then_ramps_then_holds() {
    let s = CubicSchedule::default();
    assert_eq!(s.sparsity_at(0, 100, 0.9), 0.0);
    assert_eq!(s.sparsity_at(10, 100, 0.9), 0.0);
    assert_eq!(s.sparsity_at(70, 100, 0.9), 0.9);
    assert_eq!(s.sparsity_at(100, 100, 0.9), 0.9);
    // halfway through the ramp (t = 0.4): 0.9 + (0 − 0.9)·(1 − 0.5)³
    assert!((s.sparsity_at(40, 100, 0.9) - (0.9 - 0.9 / 8.0)).abs() < 1e-12);
    let mut last = 0.0;
    for step in 0..=100 {
        let v = s.sparsity_at(step, 100, 0.9);
        assert!(v >= last - 1e-15, "not monotone at {step}");
        last = v;
    }
}

/// One canonical spec per method, printed, with its tensor signature as comments.
fn canonical() -> Vec<(&'static str, KernelSpec)> {
    let b = KernelSpec::builder;
    vec![
        (
            "spt_attention",
            b("spt_attention_fwd", OpKind::SptAttention)
                .dims([("B", 16), ("H", 32), ("L", 512), ("D", 64)])
                .build()
                .unwrap(),
        ),
        (
            "routed_ffn",
            b("routed_ffn_bwd", OpKind::RoutedFfn)
                .direction(Direction::Backward)
                .dims([("T", 8192), ("d_model", 2048), ("d_ff", 8192)])
                .build()
                .unwrap(),
        ),
        (
            "monarch",
            b("monarch_fwd", OpKind::Monarch)
                .dim("N", 4096)
                .pattern(Pattern::Monarch(MonarchShape::square(1024, 4)))
                .build()
                .unwrap(),
        ),
        (
            "sara",
            b("sara_linear_bwd", OpKind::SaraLinear)
                .direction(Direction::Backward)
                .dims([("T", 4096), ("in", 768), ("out", 768)])
                .build()
                .unwrap(),
        ),
        (
            "pst",
            b("pst_linear_fwd", OpKind::PstLinear)
                .dtype(DType::BF16)
                .dims([("T", 4096), ("in", 768), ("out", 3072)])
                .build()
                .unwrap(),
        ),
        (
            "cbm",
            b("cbm_head_fwd", OpKind::CbmHead)
                .dims([("B", 256), ("C", 512), ("K", 200)])
                .pattern(Pattern::Cbm(Cbm { topk: 32 }))
                .build()
                .unwrap(),
        ),
        (
            "dense",
            b("dense_linear_fwd", OpKind::DenseLinear)
                .dims([("T", 4096), ("in", 768), ("out", 768)])
                .build()
                .unwrap(),
        ),
    ]
}

#[test]
fn printed_ir_snapshots() {
    for (name, spec) in canonical() {
        let mut text = String::new();
        for t in spec.tensors().unwrap() {
            let role = if t.role == Role::Input { "in " } else { "out" };
            text.push_str(&format!(
                "# {role} {:<10} {:<22} {}\n",
                t.name,
                t.shape_text(),
                t.dtype
            ));
        }
        text.push_str(&spec.to_string());
        // The snapshot is itself valid IR (the signature is in comments).
        assert_eq!(text.parse::<KernelSpec>().unwrap(), spec);
        insta::assert_snapshot!(name, text);
    }
}
