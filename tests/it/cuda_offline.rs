//! Every generated CUDA kernel through NVIDIA's real compilers, offline: NVRTC for compute_90,
//! ptxas for sm_90 (from the PyPI wheels `scripts/fetch-cuda-wheels.sh` unpacks). Without the
//! wheels the tests print why and are skipped, unless `SPARSECUBE_REQUIRE_NVRTC` is set (CI).

use crate::sources::in_every_dtype;
use sparsecube_codegen::cuda_check::{CheckError, CudaToolchain, WHEELS_ENV};
use sparsecube_codegen::emit::{Target, sources};

fn toolchain_or_skip(test: &str) -> Option<CudaToolchain> {
    match CudaToolchain::from_env() {
        Ok(Some(t)) => Some(t),
        Ok(None) if std::env::var_os("SPARSECUBE_REQUIRE_NVRTC").is_some() => {
            panic!(
                "{test}: SPARSECUBE_REQUIRE_NVRTC is set but {WHEELS_ENV} is not (run scripts/fetch-cuda-wheels.sh)"
            )
        }
        Ok(None) => {
            eprintln!(
                "SKIPPED {test}: {WHEELS_ENV} is unset (run scripts/fetch-cuda-wheels.sh and export it)"
            );
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Registers a thread may use on sm_90: the 255 architectural limit (the tile program's
/// `__launch_bounds__(256)` allows 65536 / 256 = 256, the small kernels' 64 threads more).
const MAX_REGISTERS: u32 = 255;

/// A resource line that stays the same from run to run: ptxas's register count of the same
/// source varied between runs of this test (48, 62 or 64 for one kernel; not explained yet, and
/// not seen from `sparsecube gen` in separate processes), so the snapshot records the occupancy
/// bucket (≤ 64, ≤ 128, ≤ 255 registers: 4, 2 or 1 cubes of 256 units per SM) with the exact
/// spills, stack, shared memory and barriers. The limits above are checked on the exact numbers.
fn stable(r: &sparsecube_codegen::cuda_check::Resources) -> String {
    let bucket = match r.registers {
        0..=64 => 64,
        65..=128 => 128,
        _ => 255,
    };
    format!(
        "{}: ≤ {bucket} registers, {} B stack, {}/{} B spill stores/loads, {} B smem, {} barriers",
        r.function, r.stack_frame, r.spill_stores, r.spill_loads, r.shared, r.barriers
    )
}

/// The kernels allowed to spill, with the bytes (stores + loads) ptxas may report: every other
/// kernel spills nothing. One: PST's weight-gradient product on TF32 tensor cores, whose
/// epilogue recomputes W′ and the score from the rank-r factors per element (4 + 4 B; its
/// f16/bf16 and scalar versions do not spill).
const SPILL_BUDGET: [(&str, &str, &str, u32); 1] = [("pst_default_f32", "tf32", "pst_bwd_w", 8)];

#[test]
fn every_generated_cuda_kernel_compiles_for_hopper_without_spills() {
    let Some(cuda) = toolchain_or_skip("every_generated_cuda_kernel_compiles_for_hopper") else {
        return;
    };
    let (major, minor) = cuda.nvrtc_version().unwrap();
    let mut report = format!("NVRTC {major}.{minor}, ptxas -arch=sm_90\n");
    // Every kernel over budget, reported together.
    let mut problems = Vec::new();
    for (name, spec) in in_every_dtype() {
        let variant = spec.name.rsplit('_').next().unwrap_or("f32").to_string();
        for k in sources(&spec, Target::Cuda).unwrap() {
            let resources = cuda
                .check(&k.kernel, &k.source)
                .unwrap_or_else(|e| panic!("{name} {variant}: {e}"));
            assert_eq!(
                resources.len(),
                1,
                "{name} {variant} {}: one entry function expected",
                k.kernel
            );
            let r = &resources[0];
            let budget = SPILL_BUDGET
                .iter()
                .find(|b| (b.0, b.1, b.2) == (name, variant.as_str(), k.kernel.as_str()))
                .map_or(0, |b| b.3);
            if r.spill_stores + r.spill_loads > budget {
                problems.push(format!(
                    "{name} {variant} {}: {r} spills (budget {budget} B)",
                    k.kernel
                ));
            }
            if r.registers > MAX_REGISTERS {
                problems.push(format!(
                    "{name} {variant} {}: {r} (register limit {MAX_REGISTERS})",
                    k.kernel
                ));
            }
            report.push_str(&format!("{name} {variant} {} = {}\n", k.kernel, stable(r)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    insta::assert_snapshot!("cuda_resources_sm90", report);
}

#[test]
fn a_broken_cuda_source_fails_with_nvrtcs_own_message() {
    let Some(cuda) = toolchain_or_skip("a_broken_cuda_source_fails") else {
        return;
    };
    let spec = &in_every_dtype()[0].1;
    let good = sources(spec, Target::Cuda).unwrap().remove(0);
    // What a broken emitter could produce: a statement using an identifier nothing declares.
    let broken = good.source.replacen(
        "const info_st& info = *info_ptr;",
        "const info_st& info = *info_ptr;\nundeclared = 1;",
        1,
    );
    assert_ne!(
        broken, good.source,
        "the injection point moved; update the test"
    );
    match cuda.check(&good.kernel, &broken) {
        Err(CheckError::Nvrtc { kernel, log }) => {
            assert_eq!(kernel, good.kernel);
            assert!(
                log.contains("identifier \"undeclared\" is undefined"),
                "{log}"
            );
        }
        other => panic!("expected NVRTC to reject the source, got {other:?}"),
    }
    // ptxas failures carry ptxas's own log too.
    match cuda.assemble(
        "bad",
        ".version 9.0\n.target sm_90\n.address_size 64\n.visible .entry bad() { bogus; }\n",
    ) {
        Err(CheckError::Ptxas { log, .. }) => assert!(log.contains("error"), "{log}"),
        other => panic!("expected ptxas to reject the PTX, got {other:?}"),
    }
}
