//! The built-in demo: every method's reference op, forward and backward, on a default problem,
//! with a table of work and kept entries against the dense baseline.

use anyhow::{Context, Result};
use kernels_ir::pattern::{Cbm, MonarchShape, Pattern};
use kernels_ir::reference::{self, TensorMap, Value, rng::SplitMix64};
use kernels_ir::{Direction, KernelSpec, OpKind, Role};
use std::time::Instant;

struct Case {
    method: &'static str,
    op: OpKind,
    dims: &'static [(&'static str, usize)],
    pattern: Option<Pattern>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            method: "SPT attention",
            op: OpKind::SptAttention,
            dims: &[("B", 1), ("H", 4), ("L", 256), ("D", 64)],
            pattern: None,
        },
        Case {
            method: "SPT routed FFN",
            op: OpKind::RoutedFfn,
            dims: &[("T", 256), ("d_model", 128), ("d_ff", 512)],
            pattern: None,
        },
        Case {
            method: "Monarch",
            op: OpKind::Monarch,
            dims: &[("N", 256)],
            pattern: Some(Pattern::Monarch(MonarchShape::square(256, 4))),
        },
        Case {
            method: "Monarch projection",
            op: OpKind::MonarchProject,
            dims: &[],
            pattern: Some(Pattern::Monarch(MonarchShape::square(256, 4))),
        },
        Case {
            method: "SaRA",
            op: OpKind::SaraLinear,
            dims: &[("T", 256), ("in", 256), ("out", 256)],
            pattern: None,
        },
        Case {
            method: "PST",
            op: OpKind::PstLinear,
            dims: &[("T", 256), ("in", 256), ("out", 256)],
            pattern: None,
        },
        Case {
            method: "Sparse-CBM head",
            op: OpKind::CbmHead,
            dims: &[("B", 256), ("C", 512), ("K", 10)],
            pattern: Some(Pattern::Cbm(Cbm { topk: 32 })),
        },
        Case {
            method: "dense (baseline)",
            op: OpKind::DenseLinear,
            dims: &[("T", 256), ("in", 256), ("out", 256)],
            pattern: None,
        },
    ]
}

/// Pretrained-scale weights (σ = 0.02) where SaRA's threshold must select a realistic share;
/// unit-scale values elsewhere.
fn std_for(op: OpKind, name: &str) -> f64 {
    match (op, name) {
        (OpKind::SaraLinear, "w") => 0.02,
        (_, "x" | "q" | "k" | "v" | "dy" | "dout" | "dlogits" | "codebook") => 1.0,
        _ => 0.1,
    }
}

fn inputs_for(spec: &KernelSpec, rng: &mut SplitMix64) -> Result<TensorMap> {
    let mut map = TensorMap::new();
    for t in spec.tensors()? {
        if t.role == Role::Input && !t.optional {
            let shape: Vec<usize> = t
                .shape
                .iter()
                .map(|e| match e {
                    kernels_ir::Extent::Fixed(n) => *n,
                    kernels_ir::Extent::Nnz => 0,
                })
                .collect();
            map.insert(
                t.name.clone(),
                Value::F(rng.normal_tensor(&shape, std_for(spec.op, &t.name))),
            );
        }
    }
    Ok(map)
}

fn si(n: u64) -> String {
    let v = n as f64;
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.3}", a as f64 / b as f64)
    }
}

/// Runs the demo and prints its table.
pub fn run(seed: u64) -> Result<()> {
    let mut rng = SplitMix64::new(seed);
    println!(
        "sparsecube demo: every method's reference op (f64), forward + backward, seed {seed}\n"
    );
    println!(
        "{:<19} {:<16} {:<28} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>9}",
        "method", "op", "problem", "FLOPs", "dense", "ratio", "kept", "dense", "ratio", "ms"
    );
    for case in cases() {
        let mut b = KernelSpec::builder(case.op.name().replace('-', "_"), case.op)
            .dims(case.dims.iter().copied());
        if let Some(p) = case.pattern {
            b = b.pattern(p);
        }
        let fwd = b
            .build()
            .with_context(|| format!("demo spec for {}", case.op))?;
        let mut inputs = inputs_for(&fwd, &mut rng)?;
        let start = Instant::now();
        let outputs = reference::run(&fwd, &inputs)?;
        let mut nnz = None;
        if let Some(Value::I(m)) = outputs.get("mask_index") {
            nnz = Some(m.data.len());
        }
        if let Some(grad) = case.op.upstream_grad() {
            let bwd = KernelSpec {
                direction: Direction::Backward,
                ..fwd.clone()
            };
            let shape = bwd
                .tensors()?
                .into_iter()
                .find(|t| t.name == grad)
                .map(|t| {
                    t.shape
                        .iter()
                        .map(|e| {
                            if let kernels_ir::Extent::Fixed(n) = e {
                                *n
                            } else {
                                0
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .context("backward spec names its upstream gradient")?;
            inputs.insert(grad.to_string(), Value::F(rng.normal_tensor(&shape, 1.0)));
            reference::run(&bwd, &inputs)?;
        }
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let cost = fwd.cost(nnz)?;
        let mut problem: Vec<String> = fwd
            .dims_in_order()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if let Pattern::Monarch(m) = fwd.pattern {
            problem.push(format!("{}x{} k={} l={}", m.n_out(), m.n_in(), m.k, m.l));
        }
        let problem = problem.join(" ");
        println!(
            "{:<19} {:<16} {:<28} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>9.1}",
            case.method,
            case.op.name(),
            problem,
            si(cost.flops),
            si(cost.dense_flops),
            ratio(cost.flops, cost.dense_flops),
            si(cost.nnz),
            si(cost.dense_nnz),
            ratio(cost.nnz, cost.dense_nnz),
            ms
        );
    }
    println!(
        "\nFLOPs: forward work of the sparse op vs its dense counterpart (SaRA: forward + weight gradient).\n\
         kept: attention scores stored for backward (SPT), active FFN weights (routed), factor\n\
         parameters (Monarch), trainable values (SaRA, PST), kept concepts (CBM).\n\
         ms: reference executor time (f64, plain loops) - a correctness oracle, not a benchmark."
    );
    Ok(())
}
