//! The tile program's tensor-core mainloop, without a GPU: which strategy `mma` resolves to for
//! each dtype, precision and device, the typed error of a schedule that insists on tensor cores
//! a device or tile lacks, the WMMA calls in the printed CUDA (and none in WGSL), the shared
//! memory the tensor-core tiles need, and the autotuner's space on a device without them.
//! (Their numbers are checked on a GPU: `sparsecube selftest --device cuda` in the device check;
//! every tensor-core kernel compiles with NVRTC + ptxas in `cuda_offline`.)

use kernels_ir::{DType, KernelSpec, Mma, OpKind, Precision, Schedule};
use sparsecube_codegen::LowerError;
use sparsecube_codegen::emit::{Target, sources};
use sparsecube_codegen::plan::{DeviceLimits, Kernel, LowerOptions, TensorCores, lower};
use sparsecube_codegen::tile::{self, Mainloop};
use sparsecube_tests::wgpu_or_skip;

fn no_tensor_cores() -> DeviceLimits {
    DeviceLimits {
        tensor_cores: TensorCores::default(),
        ..DeviceLimits::sm90()
    }
}

fn with(schedule: impl FnOnce(&mut Schedule)) -> Schedule {
    let mut s = Schedule::default();
    schedule(&mut s);
    s
}

#[test]
fn auto_takes_tensor_cores_only_where_the_device_and_tile_have_them() {
    let op = OpKind::DenseLinear;
    let sm90 = DeviceLimits::sm90();
    let shape =
        |s: &Schedule, dtype, device: &DeviceLimits| tile::shape(s, op, dtype, device).unwrap().mma;
    let auto = Schedule::default();
    let tf32 = with(|s| s.precision = Precision::Tf32);
    assert_eq!(shape(&auto, DType::BF16, &sm90), Mainloop::Half);
    assert_eq!(shape(&auto, DType::F16, &sm90), Mainloop::Half);
    // f32 stays exact unless the spec opts into TF32.
    assert_eq!(shape(&auto, DType::F32, &sm90), Mainloop::Scalar);
    assert_eq!(shape(&tf32, DType::F32, &sm90), Mainloop::Tf32);
    // A device without them, a slice shallower than the WMMA depth, or `mma = scalar`: scalar.
    assert_eq!(
        shape(&auto, DType::BF16, &no_tensor_cores()),
        Mainloop::Scalar
    );
    let shallow = with(|s| {
        s.tile_k = 8;
        s.vector = 2;
    });
    assert_eq!(shape(&shallow, DType::BF16, &sm90), Mainloop::Scalar);
    let tf32_shallow = with(|s| {
        s.tile_k = 8;
        s.vector = 2;
        s.precision = Precision::Tf32;
    });
    assert_eq!(shape(&tf32_shallow, DType::F32, &sm90), Mainloop::Tf32);
    let scalar = with(|s| s.mma = Mma::Scalar);
    assert_eq!(shape(&scalar, DType::BF16, &sm90), Mainloop::Scalar);
    // Ops off the tile program ignore the field.
    let cmma = with(|s| s.mma = Mma::Cmma);
    assert_eq!(
        tile::shape(&cmma, OpKind::SptAttention, DType::F32, &no_tensor_cores())
            .unwrap()
            .mma,
        Mainloop::Scalar
    );
}

#[test]
fn insisting_on_tensor_cores_a_device_or_tile_lacks_is_a_typed_error() {
    let spec = |dtype, schedule| KernelSpec {
        dtype,
        schedule,
        ..KernelSpec::example(OpKind::DenseLinear)
    };
    let cmma = with(|s| s.mma = Mma::Cmma);
    let cases = [
        (
            spec(DType::BF16, cmma),
            no_tensor_cores(),
            "no bf16 tensor cores",
        ),
        (
            spec(DType::F32, cmma),
            DeviceLimits::sm90(),
            "set precision = tf32",
        ),
        (
            spec(
                DType::F16,
                with(|s| {
                    s.mma = Mma::Cmma;
                    s.tile_k = 8;
                    s.vector = 2;
                }),
            ),
            DeviceLimits::sm90(),
            "tile_k = 8 is not a multiple of the tensor cores' depth 16",
        ),
    ];
    for (spec, device, want) in cases {
        let err = lower(&spec, &LowerOptions::new(device)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LowerError::NoTensorCores { .. }), "{err:?}");
        assert!(
            text.contains(want)
                && text.starts_with("dense-linear with schedule (")
                && !text.contains('\n'),
            "{text}"
        );
    }
}

#[test]
fn printed_cuda_of_half_and_tf32_products_calls_wmma_and_wgsl_never_does() {
    for op in OpKind::ALL.iter().copied().filter(|op| op.tiled()) {
        let example = KernelSpec::example(op);
        let variants = [
            (DType::BF16, Precision::Ieee, "__nv_bfloat16"),
            (DType::F16, Precision::Ieee, "matrix_a, 16, 16, 16, __half"),
            (DType::F32, Precision::Tf32, "wmma::precision::tf32"),
        ];
        for (dtype, precision, fragment) in variants {
            let spec = KernelSpec {
                dtype,
                schedule: Schedule {
                    precision,
                    ..example.schedule
                },
                ..example.clone()
            };
            let cuda = sources(&spec, Target::Cuda).unwrap();
            let tiles: Vec<_> = cuda
                .iter()
                .filter(|k| k.source.contains("tile_gemm_"))
                .collect();
            assert!(!tiles.is_empty(), "{op} {dtype}: no tile kernel");
            for k in tiles {
                assert!(
                    k.source.contains("wmma::mma_sync") && k.source.contains(fragment),
                    "{op} {dtype} {precision}: the tile kernel does not run on tensor cores:\n{}",
                    k.source
                );
            }
            if dtype != DType::BF16 {
                for k in sources(&spec, Target::Wgsl).unwrap() {
                    assert!(!k.source.contains("wmma"), "{op} {dtype}: WGSL with WMMA");
                }
            }
        }
        // f32 at IEEE precision stays on the scalar loop.
        for k in sources(&example, Target::Cuda).unwrap() {
            assert!(!k.source.contains("wmma"), "{op} f32: WMMA without tf32");
        }
    }
}

#[test]
fn the_largest_tensor_core_tiles_fit_an_h100() {
    let sm90 = DeviceLimits::sm90();
    for (dtype, precision) in [
        (DType::BF16, Precision::Ieee),
        (DType::F32, Precision::Tf32),
    ] {
        let s = with(|s| {
            s.tile_m = 128;
            s.tile_n = 128;
            s.tile_k = 32;
            s.precision = precision;
        });
        let shape = tile::shape(&s, OpKind::DenseLinear, dtype, &sm90).unwrap();
        assert!(shape.tensor());
        // Every plane owns fragments; 64 × 32 per plane at 128 × 128.
        assert_eq!(shape.warp_grid(), (2, 4));
        assert_eq!(shape.warp_frags(), (4, 2));
        assert!(shape.shared_bytes() <= sm90.max_shared_bytes, "{shape:?}");
        let spec = KernelSpec {
            dtype,
            schedule: s,
            ..KernelSpec::example(OpKind::DenseLinear)
        };
        let lowering = lower(&spec, &LowerOptions::new(sm90)).unwrap();
        let tiled = lowering
            .plans()
            .iter()
            .flat_map(|p| p.kernels())
            .filter(|l| matches!(l.kernel, Kernel::Tile(p) if p.shape.tensor()))
            .count();
        assert!(tiled > 0, "{dtype}: no tensor-core launch in the plan");
    }
    // The smallest tiles leave planes without fragments, which is allowed.
    let small = half_shape(32, 32);
    assert_eq!(small.warp_grid(), (2, 2));
}

/// A 16-bit tensor-core tile shape of `tm` × `tn` (for the plane-grid arithmetic).
fn half_shape(tm: u32, tn: u32) -> tile::TileShape {
    tile::TileShape {
        tm,
        tn,
        tk: 16,
        stages: 2,
        vector: 4,
        mma: Mainloop::Half,
    }
}

/// On a device without tensor cores (lavapipe) the tuner never sees `mma = cmma`, and `auto`
/// and `scalar` are one point there.
#[test]
fn a_device_without_tensor_cores_tunes_only_the_scalar_mainloop() {
    let Some(device) = wgpu_or_skip("a_device_without_tensor_cores_tunes_only_the_scalar_mainloop")
    else {
        return;
    };
    let limits = device.limits().unwrap();
    assert_eq!(limits.tensor_cores, TensorCores::default());
    let spec = KernelSpec {
        dtype: DType::F16,
        ..KernelSpec::example(OpKind::DenseLinear)
    };
    let space = device.schedule_space(&spec);
    assert!(space.len() > 1);
    assert!(space.iter().all(|s| s.mma != Mma::Cmma), "{space:?}");
    let scalar = Schedule {
        mma: Mma::Scalar,
        ..spec.schedule
    };
    assert!(!space.contains(&scalar), "auto and scalar counted twice");
    // Nor what its 32 KiB of shared memory cannot stage (66 KiB for 128×128×32, two stages).
    assert!(
        !space
            .iter()
            .any(|s| (s.tile_m, s.tile_n, s.tile_k, s.stages) == (128, 128, 32, 2)),
        "{space:?}"
    );
    // What the user asked for, refused with the fix.
    let insist = KernelSpec {
        schedule: with(|s| s.mma = Mma::Cmma),
        ..spec
    };
    let err = lower(&insist, &LowerOptions::new(limits)).unwrap_err();
    assert!(
        err.to_string().contains("use mma = auto or mma = scalar"),
        "{err}"
    );
}
