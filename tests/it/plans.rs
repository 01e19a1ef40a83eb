//! Launch plans: every op's printed plan as a snapshot (`sparsecube gen OP --plan`), the set of
//! kernels a plan launches against the set `gen` and the NVRTC check compile, launch calls only
//! in the executor, checked and unchecked launches bit for bit equal, and sizes refused before
//! anything is allocated.

use kernels_ir::pattern::{MonarchShape, Pattern, Routed, Selector};
use kernels_ir::reference::{TensorMap, Value};
use kernels_ir::{Direction, Extent, KernelSpec, OpKind};
use sparsecube_codegen::LowerError;
use sparsecube_codegen::emit::{Target, printed_lowering, sources};
use sparsecube_codegen::plan::{Cubes, DeviceLimits, Kernel, LowerOptions, Step, lower};
use sparsecube_runtime::exec::Mode;
use sparsecube_runtime::selftest::{
    BlockDiagCase, CbmCase, EncodeCase, LinearCase, MonarchCase, NmCase, PstCase, RoutedCase,
    SaraCase, SptCase,
};
use sparsecube_tests::wgpu_or_skip;

/// Every op with kernels (all but the host projection).
fn ops() -> impl Iterator<Item = OpKind> {
    OpKind::ALL
        .iter()
        .copied()
        .filter(|&op| op != OpKind::MonarchProject)
}

#[test]
fn every_op_prints_its_plan() {
    for op in ops() {
        let spec = KernelSpec::example(op);
        let text = printed_lowering(&spec)
            .unwrap_or_else(|e| panic!("{op}: {e}"))
            .to_string();
        insta::assert_snapshot!(format!("plan_{}", op.name().replace('-', "_")), text);
    }
}

#[test]
fn a_plan_launches_exactly_the_kernels_gen_compiles() {
    for op in ops() {
        let spec = KernelSpec::example(op);
        let lowering = printed_lowering(&spec).unwrap();
        let launched: Vec<String> = lowering.kernels().iter().map(|l| l.name.clone()).collect();
        for target in [Target::Wgsl, Target::Cuda] {
            let emitted: Vec<String> = sources(&spec, target)
                .unwrap()
                .into_iter()
                .map(|k| k.kernel)
                .collect();
            assert_eq!(launched, emitted, "{op} ({target:?})");
        }
        // Every launch's kernel is among them (the distinct set covers every launch).
        for plan in lowering.plans() {
            for l in plan.launches() {
                assert!(
                    lowering.kernels().iter().any(|k| k.same_kernel(l)),
                    "{op}: `{}` is not compiled",
                    l.name
                );
            }
        }
    }
}

#[test]
fn every_product_runs_on_the_tile_program() {
    // Monarch's, the block-diagonal map's and the dense linear's plans are tile programs only:
    // the untiled one-element-per-unit kernels are gone.
    for op in [
        OpKind::Monarch,
        OpKind::BlockDiagLinear,
        OpKind::DenseLinear,
    ] {
        let lowering = printed_lowering(&KernelSpec::example(op)).unwrap();
        for plan in lowering.plans() {
            for l in plan.launches() {
                assert!(
                    matches!(l.kernel, Kernel::Tile(_)),
                    "{op}: `{}` runs {}",
                    l.name,
                    l.kernel.function()
                );
            }
        }
    }
    // N:M has no kernel of its own: a primitive selection, a gather and tile programs.
    let lowering = printed_lowering(&KernelSpec::example(OpKind::NmLinear)).unwrap();
    let functions: Vec<&str> = lowering
        .kernels()
        .iter()
        .map(|l| l.kernel.function())
        .collect();
    assert_eq!(
        functions,
        [
            "group_topk",
            "gather",
            "tile_gemm",
            "tile_gemm",
            "tile_gemm"
        ],
        "{functions:?}"
    );
}

/// The lines of the workspace's Rust sources that call a kernel launch outside the executor.
fn launches_outside_the_executor() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    let needles = [
        "::launch::<",
        "::launch_unchecked::<",
        "launch_unchecked(",
        "::launch(",
        ".launch(",
    ];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "snapshots" | "ui") {
                    stack.push(path);
                }
                continue;
            }
            if !name.ends_with(".rs") || path.ends_with("tests/it/plans.rs") {
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel == "crates/runtime/src/exec.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if needles.iter().any(|n| code.contains(n)) {
                    found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn kernel_launches_exist_only_in_the_executor() {
    let found = launches_outside_the_executor();
    assert!(
        found.is_empty(),
        "kernel launches outside crates/runtime/src/exec.rs:\n{}",
        found.join("\n")
    );
    // And the executor holds them (the test would pass vacuously if the needles went stale).
    let exec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/runtime/src/exec.rs"),
    )
    .unwrap();
    assert!(exec.contains("::launch)") && exec.contains("::launch_unchecked)"));
}

/// One case of every op family with kernels: (label, spec of a direction, inputs of the
/// backward; the forward drops the upstream gradient).
type Case = (String, Box<dyn Fn(Direction) -> KernelSpec>, TensorMap);

fn one_case_per_family() -> Vec<Case> {
    use kernels_ir::reference::rng::SplitMix64;
    let mut rng = SplitMix64::new(0xC4EC);
    let f32s = [kernels_ir::DType::F32];
    let mut cases: Vec<Case> = Vec::new();
    macro_rules! push {
        ($c:expr) => {{
            let c = $c;
            let inputs = c.inputs();
            let label = c.to_string();
            cases.push((label, Box::new(move |d| c.spec(d).unwrap()), inputs));
        }};
    }
    push!(SptCase::draw(&mut rng, 40, &f32s));
    push!(RoutedCase::draw(&mut rng, 70, &f32s));
    push!(CbmCase::draw(&mut rng, &f32s));
    push!(MonarchCase::draw(&mut rng, &f32s));
    push!(LinearCase::draw(&mut rng, &f32s));
    push!(BlockDiagCase::draw(&mut rng, &f32s));
    push!(SaraCase::draw(&mut rng, &f32s));
    push!(PstCase::draw(&mut rng, &f32s));
    push!(NmCase::draw(&mut rng, &f32s));
    let encode = EncodeCase::draw(&mut rng, &f32s);
    let inputs = encode.inputs();
    let label = encode.to_string();
    cases.push((label, Box::new(move |_| encode.spec().unwrap()), inputs));
    cases
}

fn bits(m: &TensorMap) -> Vec<(String, Vec<u64>)> {
    m.iter()
        .map(|(n, v)| {
            let b = match v {
                Value::F(t) => t.data.iter().map(|x| x.to_bits()).collect(),
                Value::I(t) => t.data.iter().map(|&x| x as u64).collect(),
            };
            (n.clone(), b)
        })
        .collect()
}

#[test]
fn launches_are_deterministic_and_checked_equals_unchecked() {
    let Some(device) = wgpu_or_skip("launches_are_deterministic_and_checked_equals_unchecked")
    else {
        return;
    };
    for (label, spec_of, inputs) in one_case_per_family() {
        for direction in [Direction::Forward, Direction::Backward] {
            let spec = spec_of(direction);
            if direction == Direction::Backward && !spec.op.has_backward() {
                continue;
            }
            let mut ins = inputs.clone();
            if let (Direction::Forward, Some(g)) = (direction, spec.op.upstream_grad()) {
                ins.remove(g);
            }
            let run = |mode| {
                sparsecube_runtime::run_with(&device, &spec, &ins, mode)
                    .unwrap_or_else(|e| panic!("{label} {direction} {mode:?}: {e}"))
            };
            let (checked, unchecked) = (run(Mode::Checked), run(Mode::Unchecked));
            assert_eq!(
                bits(&checked),
                bits(&unchecked),
                "{label} {direction}: checked and unchecked launches differ"
            );
            // Deterministic: a second run gives the same bits.
            assert_eq!(
                bits(&run(Mode::Unchecked)),
                bits(&unchecked),
                "{label} {direction}: two runs differ"
            );
        }
    }
}

#[test]
fn a_problem_too_large_for_the_device_is_refused_before_allocating() {
    let spec = KernelSpec::builder("ffn", OpKind::RoutedFfn)
        .dims([("T", 400_000_000), ("d_model", 4096), ("d_ff", 16384)])
        .pattern(Pattern::Routed(Routed::default()))
        .build()
        .unwrap();
    let lavapipe_like = DeviceLimits {
        max_cube_count: (65_535, 65_535, 65_535),
        plane_size: 8,
        max_shared_bytes: 32 * 1024,
        max_buffer_bytes: 128 << 20,
        memory_bytes: 24 << 30,
        tensor_cores: Default::default(),
    };
    let err = lower(&spec, &LowerOptions::new(lavapipe_like)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LowerError::TooLarge(_)), "{err:?}");
    assert!(
        text.contains("buffer `x` [400000000, 4096]")
            && text.contains("TiB")
            && text.contains("128.0 MiB")
            && !text.contains('\n'),
        "{text}"
    );
    // On an 80 GiB GPU too.
    let err = lower(&spec, &LowerOptions::new(DeviceLimits::sm90()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("80.0 GiB"), "{err}");
    // Dims whose product overflows are refused by the verifier before any product is formed,
    // also for a spec assembled without the builder (`lower` verifies first).
    let err = KernelSpec::builder("lin", OpKind::DenseLinear)
        .dims([("T", usize::MAX / 2), ("in", 1 << 20), ("out", 1 << 20)])
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 2^63 elements"), "{err}");
    let mut huge = KernelSpec::example(OpKind::DenseLinear);
    huge.dims.insert("T".into(), usize::MAX / 2);
    huge.dims.insert("in".into(), 1 << 20);
    let err = lower(&huge, &LowerOptions::new(DeviceLimits::sm90()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 2^63 elements"), "{err}");
    // A tile program past the device's shared memory: a typed error naming the schedule.
    let mut wide = KernelSpec::example(OpKind::DenseLinear);
    wide.schedule.tile_m = 128;
    wide.schedule.tile_n = 128;
    wide.schedule.tile_k = 16;
    wide.schedule.stages = 2;
    let err = lower(&wide, &LowerOptions::new(lavapipe_like))
        .unwrap_err()
        .to_string();
    assert!(err.contains("of shared memory per cube"), "{err}");
    // pq-adc's per-row score table past the device's shared memory: a typed error with the fix.
    let mut adc = KernelSpec::example(OpKind::SptAttention);
    if let Pattern::PqTopK(p) = &mut adc.pattern {
        p.selector = Selector::PqAdc;
        p.codewords = 4096;
    }
    let err = lower(&adc, &LowerOptions::new(lavapipe_like)).unwrap_err();
    assert!(matches!(err, LowerError::Unsupported { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("4096 codewords") && text.contains("larger sub_dim"),
        "{text}"
    );
    lower(&adc, &LowerOptions::new(DeviceLimits::sm90())).unwrap();
}

#[test]
fn a_threshold_mask_reads_its_count_back_once() {
    let lowering = printed_lowering(&KernelSpec::example(OpKind::SaraLinear)).unwrap();
    let reads = lowering
        .forward
        .steps
        .iter()
        .filter(|s| matches!(s, Step::ReadNnz { .. }))
        .count();
    assert_eq!(reads, 1, "{}", lowering.forward);
    // A ratio mask knows its count from the spec: no read-back.
    let mut spec = KernelSpec::example(OpKind::SaraLinear);
    spec.pattern = Pattern::Sara(kernels_ir::pattern::Sara {
        select: kernels_ir::pattern::SaraSelect::Ratio(0.1),
    });
    let lowering = printed_lowering(&spec).unwrap();
    assert!(!lowering.forward.reads_nnz());
}

/// Issue 19's rule at the published shapes on an H100 (132 SMs), forward and backward: no
/// launch whose largest buffer holds at least 1M elements runs on fewer cubes than the device
/// has SMs. (Launches sized by a read-back count, `nnz`, run a unit per kept element.)
#[test]
fn launches_on_large_problems_fill_an_h100() {
    const SMS: usize = 132;
    let paper: [(OpKind, &[(&str, usize)]); 9] = [
        (
            OpKind::SptAttention,
            &[("B", 16), ("H", 32), ("L", 512), ("D", 64)],
        ),
        (
            OpKind::SptAttention,
            &[("B", 2), ("H", 32), ("L", 2048), ("D", 64)],
        ),
        (
            OpKind::RoutedFfn,
            &[("T", 8192), ("d_model", 2048), ("d_ff", 8192)],
        ),
        (OpKind::Monarch, &[("N", 8192)]),
        (
            OpKind::BlockDiagLinear,
            &[("N", 8192), ("in", 2048), ("out", 2048)],
        ),
        (
            OpKind::SaraLinear,
            &[("T", 8192), ("in", 2048), ("out", 2048)],
        ),
        (
            OpKind::PstLinear,
            &[("T", 8192), ("in", 2048), ("out", 2048)],
        ),
        (
            OpKind::NmLinear,
            &[("T", 8192), ("in", 2048), ("out", 2048)],
        ),
        (OpKind::CbmHead, &[("B", 4096), ("C", 2048), ("K", 1000)]),
    ];
    let mut thin = Vec::new();
    for (op, dims) in paper {
        let mut spec = KernelSpec::example(op);
        spec.direction = Direction::Backward;
        for (name, v) in dims {
            spec.dims.insert((*name).to_string(), *v);
        }
        if let Pattern::Monarch(m) = &mut spec.pattern {
            *m = MonarchShape::square(2048, 4);
        }
        let lowering = lower(&spec, &LowerOptions::new(DeviceLimits::sm90()))
            .unwrap_or_else(|e| panic!("{op} {dims:?}: {e}"));
        for plan in lowering.plans() {
            for l in plan.launches() {
                let largest = l
                    .buffers()
                    .iter()
                    .map(|&b| plan.buffers[b].elements(0))
                    .max()
                    .unwrap_or(0);
                let cubes = match &l.cubes {
                    Cubes::Fixed(x, y, z) => (*x as usize) * (*y as usize) * (*z as usize),
                    Cubes::Units(Extent::Fixed(n), scale) => {
                        (n * scale).div_ceil(l.units_per_cube() as usize)
                    }
                    Cubes::Units(Extent::Nnz, _) => continue,
                };
                if largest >= 1 << 20 && cubes < SMS {
                    thin.push(format!(
                        "{op} {dims:?} {}: `{}` on {cubes} cubes over {largest} elements",
                        plan.label, l.name
                    ));
                }
            }
        }
    }
    assert!(thin.is_empty(), "{thin:#?}");
}
