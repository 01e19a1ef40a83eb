//! Every generated CUDA kernel through NVIDIA's real compilers, offline: NVRTC for compute_90,
//! ptxas for sm_90 (from the PyPI wheels `scripts/fetch-cuda-wheels.sh` unpacks). Without the
//! wheels the tests print why and are skipped, unless `SPARSECUBE_REQUIRE_NVRTC` is set (CI).

use crate::sources::canonical;
use kernels_ir::{DType, KernelSpec};
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

/// Registers a thread may use under `__launch_bounds__(64)` on sm_90: the 255 architectural limit
/// (65536 registers per SM / 64 threads would allow more).
const MAX_REGISTERS: u32 = 255;

/// Spill budget in bytes: 0, except the spills measured when this check landed. ptxas itself
/// settles at 32 registers there and spills a few bytes: `--maxrregcount` 40 or 48 leaves
/// the f16 `pq_encode` result unchanged (measured), so it is ptxas's choice, not a register cap.
/// They are capped at their measured size so that any new or larger spill fails; removing them
/// (e.g. by restructuring the unrolled 16-bit loads) is open work.
fn spill_budget(config: &str, dtype: DType, kernel: &str) -> u32 {
    match (config, dtype, kernel) {
        (_, DType::F16 | DType::BF16, "pq_encode") => 8,
        // The weight tile recomputes M ⊙ W' from rank-8 factors per element (16 half loads
        // converted to f32 each): 8 B at 64 registers in bf16.
        (_, DType::F16 | DType::BF16, "pst_bwd_dx") => 8,
        // The straight-through epilogue recomputes W' and S per element of the tile in bf16.
        (_, DType::BF16, "pst_bwd_w") => 40,
        // 16 blocks (the group search unrolled over 16 offsets), the GELU epilogue and the
        // default 32-step slices: 8 B at 64 registers in f32 (tile_k = 16 has none; the tuner
        // picks between them on the device).
        ("routed_softmax_gelu_lora_f16", DType::F32, "routed_up") => 8,
        _ => 0,
    }
}

#[test]
fn every_generated_cuda_kernel_compiles_for_hopper_without_spills() {
    let Some(cuda) = toolchain_or_skip("every_generated_cuda_kernel_compiles_for_hopper") else {
        return;
    };
    let (major, minor) = cuda.nvrtc_version().unwrap();
    let mut report = format!("NVRTC {major}.{minor}, ptxas -arch=sm_90\n");
    for (name, spec) in canonical() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let spec = KernelSpec {
                dtype,
                ..spec.clone()
            };
            for k in sources(&spec, Target::Cuda).unwrap() {
                let resources = cuda
                    .check(k.kernel, &k.source)
                    .unwrap_or_else(|e| panic!("{name} {dtype}: {e}"));
                assert_eq!(
                    resources.len(),
                    1,
                    "{name} {dtype} {}: one entry function expected",
                    k.kernel
                );
                let r = &resources[0];
                let budget = spill_budget(name, dtype, k.kernel);
                assert!(
                    r.spill_stores <= budget && r.spill_loads <= budget,
                    "{name} {dtype}: {r} (spill budget {budget} B)"
                );
                assert!(r.registers <= MAX_REGISTERS, "{name} {dtype}: {r}");
                report.push_str(&format!("{name} {dtype} {r}\n"));
            }
        }
    }
    insta::assert_snapshot!("cuda_resources_sm90", report);
}

#[test]
fn a_broken_cuda_source_fails_with_nvrtcs_own_message() {
    let Some(cuda) = toolchain_or_skip("a_broken_cuda_source_fails") else {
        return;
    };
    let spec = &canonical()[0].1;
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
    match cuda.check(good.kernel, &broken) {
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
