//! Routed FFN kernels on wgpu (lavapipe in CI) against the reference executor, on random shapes:
//! T not a multiple of the grouping chunk (64 tokens) and past it, blocks ∈ {2, 4, 8, 16},
//! top ∈ {1, 2, blocks}, groups that are empty (top 1 of 16 blocks over a few tokens) and groups
//! that hold every token (top = blocks), both routers, every gate mode, ReLU and exact-erf GELU.
//! Forward (`y`, the kept blocks) and every gradient (dx, dw1, db1, dw2, db2, dwr, dbr).

use kernels_ir::pattern::{Activation, GateMode, Routed, Router};
use kernels_ir::reference::{TensorMap, Value};
use kernels_ir::{DType, Direction};
use proptest::prelude::*;
use sparsecube_runtime::selftest::{RoutedCase, check_routed, rel_err};
use sparsecube_tests::{proptest_config, wgpu_or_skip};

fn case(dtype: DType) -> impl Strategy<Value = RoutedCase> {
    (
        1usize..150,
        1usize..20,
        1usize..6,
        prop::sample::select(vec![2usize, 4, 8, 16]),
        0usize..3,
        any::<[bool; 2]>(),
        prop::sample::select(vec![GateMode::Output, GateMode::None, GateMode::SptLora]),
        prop::sample::select(vec![2.0f64, 0.5]),
        any::<u64>(),
    )
        .prop_map(
            move |(t, dm, bs, blocks, top_pick, [softmax, gelu], gate, gate_scale, seed)| {
                RoutedCase {
                    t,
                    dm,
                    bs,
                    routed: Routed {
                        blocks,
                        top: [1, 2.min(blocks), blocks][top_pick],
                        router: if softmax {
                            Router::Softmax
                        } else {
                            Router::Sigmoid
                        },
                        gate,
                        gate_scale,
                        act: if gelu {
                            Activation::Gelu
                        } else {
                            Activation::Relu
                        },
                    },
                    dtype,
                    seed,
                }
            },
        )
}

/// The same comparison `sparsecube selftest` runs on a GPU (see `check_routed` for the router
/// gradients' error scale).
fn check(c: &RoutedCase) -> Result<(), TestCaseError> {
    let Some(device) = wgpu_or_skip("routed kernels") else {
        return Ok(());
    };
    let report = check_routed(&device, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

fn values(m: &TensorMap, name: &str) -> Vec<f64> {
    match &m[name] {
        Value::F(t) => t.data.clone(),
        Value::I(t) => t.data.iter().map(|&v| v as f64).collect(),
    }
}

proptest! {
    #![proptest_config(proptest_config(20))]

    #[test]
    fn routed_kernels_match_reference_f32(c in case(DType::F32)) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(8))]

    /// Half storage (f16; bf16 is held as f32 on wgpu), f32 accumulation.
    #[test]
    fn routed_kernels_match_reference_half(c in case(DType::F16)) {
        check(&c)?;
    }
}

/// Past one tile in every dimension of the tiled products (64 × 64 tiles, 16-step slices): a
/// group of more than 64 pairs (several row tiles of one block, and a group with a partial
/// tile), block width and d_model over 64 and not multiples of 16 (several column tiles, a
/// partial last slice), so tile scheduling across groups and every edge guard are exercised.
#[test]
fn products_past_one_tile_in_every_dimension() {
    for (t, dm, bs, blocks, top) in [(150, 130, 70, 2, 1), (97, 67, 81, 4, 2)] {
        check(&RoutedCase {
            t,
            dm,
            bs,
            routed: Routed {
                blocks,
                top,
                router: Router::Softmax,
                gate: GateMode::SptLora,
                act: Activation::Gelu,
                ..Routed::default()
            },
            dtype: DType::F32,
            seed: 5,
        })
        .unwrap_or_else(|e| panic!("T {t} d_model {dm} bs {bs} blocks {blocks} top {top}: {e}"));
    }
}

/// With every block kept and no gate, the routed FFN on the device is the dense FFN:
/// y = b2 + act(x·w1ᵀ + b1)·w2ᵀ, computed here in f64 by hand.
#[test]
fn every_block_and_no_gate_is_the_dense_ffn_on_the_device() {
    let Some(device) = wgpu_or_skip("routed identity") else {
        return;
    };
    let c = RoutedCase {
        t: 70,
        dm: 12,
        bs: 5,
        routed: Routed {
            blocks: 4,
            top: 4,
            gate: GateMode::None,
            act: Activation::Gelu,
            ..Routed::default()
        },
        dtype: DType::F32,
        seed: 11,
    };
    let mut ins = c.inputs();
    ins.remove("dy");
    let got = sparsecube_runtime::run(&device, &c.spec(Direction::Forward).unwrap(), &ins).unwrap();
    let (x, w1, b1, w2, b2) = (
        values(&ins, "x"),
        values(&ins, "w1"),
        values(&ins, "b1"),
        values(&ins, "w2"),
        values(&ins, "b2"),
    );
    let (t, dm, dff) = (c.t, c.dm, c.bs * 4);
    let gelu = |z: f64| 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2));
    let mut want = vec![0.0; t * dm];
    for tok in 0..t {
        let h: Vec<f64> = (0..dff)
            .map(|j| {
                gelu(
                    b1[j]
                        + (0..dm)
                            .map(|i| x[tok * dm + i] * w1[j * dm + i])
                            .sum::<f64>(),
                )
            })
            .collect();
        for o in 0..dm {
            want[tok * dm + o] = b2[o] + (0..dff).map(|j| h[j] * w2[o * dff + j]).sum::<f64>();
        }
    }
    let err = rel_err(&values(&got, "y"), &want, 1e-12);
    assert!(
        err <= 1e-5,
        "routed (every block, no gate) vs dense FFN: {err:.3e}"
    );
}
