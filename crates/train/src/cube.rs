//! [`SparseOp`]s on Burn's CubeCL backends: each op builds its IR spec from the tensors' shapes,
//! lowers it to launch plans (`sparsecube_codegen::plan`) and runs them with the runtime's
//! executor on the tensors' own buffers (made contiguous first). The forward plan's saved
//! buffers (Monarch's u, PST's selection state, SPT's indices and log-sum-exp, the routed FFN's
//! grouping, SaRA's W_eff) stay in the node until the backward plan binds them by name.

use crate::backend::SparseOp;
use burn::tensor::DType as BurnDType;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeRuntime, FloatElement, IntElement};
use cubecl::server::Handle;
use kernels_ir::pattern::{Nm, Pattern, Sara};
use kernels_ir::{DType, Direction, KernelSpec, OpKind};
use sparsecube_codegen::plan::{LowerOptions, Lowering, lower};
use sparsecube_runtime::exec::{self, Executed, Mode};
use std::collections::BTreeMap;

type T<R> = CubeTensor<R>;

fn dims<R: CubeRuntime>(t: &T<R>) -> Vec<usize> {
    t.meta.shape().to_vec()
}

/// The IR dtype of the backend's float element.
fn ir_dtype<F: FloatElement>() -> DType {
    match F::dtype() {
        BurnDType::F16 => DType::F16,
        BurnDType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

/// The plans' names of an op's tensors: its float inputs and integer inputs (in the order of
/// [`SparseOp`]), its output, and the gradient each float input gets (None: not differentiated).
struct Names {
    floats: &'static [&'static str],
    ints: &'static [&'static str],
    output: &'static str,
    upstream: &'static str,
    grads: &'static [Option<&'static str>],
}

fn names(op: &SparseOp) -> Names {
    match op {
        SparseOp::SptAttention(_) => Names {
            floats: &["q", "k", "v", "codebook"],
            ints: &[],
            output: "out",
            upstream: "dout",
            grads: &[Some("dq"), Some("dk"), Some("dv"), None],
        },
        SparseOp::RoutedFfn(_) => Names {
            floats: &["x", "w1", "b1", "w2", "b2", "wr", "br"],
            ints: &[],
            output: "y",
            upstream: "dy",
            grads: &[
                Some("dx"),
                Some("dw1"),
                Some("db1"),
                Some("dw2"),
                Some("db2"),
                Some("dwr"),
                Some("dbr"),
            ],
        },
        SparseOp::Monarch(_) => Names {
            floats: &["x", "w1", "w2"],
            ints: &[],
            output: "y",
            upstream: "dy",
            grads: &[Some("dx"), Some("dw1"), Some("dw2")],
        },
        SparseOp::Sara => Names {
            floats: &["x", "w", "v", "bias"],
            ints: &["mask_index"],
            output: "y",
            upstream: "dy",
            grads: &[Some("dx"), None, Some("dv"), Some("dbias")],
        },
        SparseOp::Pst(_) => Names {
            floats: &["x", "w", "bias", "u", "v", "ma", "mb", "mr", "mc"],
            ints: &[],
            output: "y",
            upstream: "dy",
            grads: &[
                Some("dx"),
                None,
                Some("dbias"),
                Some("du"),
                Some("dv"),
                Some("dma"),
                Some("dmb"),
                Some("dmr"),
                Some("dmc"),
            ],
        },
        SparseOp::CbmHead(_) => Names {
            floats: &["x", "wc", "wh", "noise"],
            ints: &[],
            output: "logits",
            upstream: "dlogits",
            grads: &[Some("dx"), Some("dwc"), Some("dwh"), None],
        },
        SparseOp::Nm(_) => Names {
            floats: &["x", "v", "bias"],
            ints: &["mask_index"],
            output: "y",
            upstream: "dy",
            grads: &[Some("dx"), Some("dv"), Some("dbias")],
        },
    }
}

/// The spec of `op` at the shapes of its tensors (by plan name), as a training step (backward).
fn spec_of<F: FloatElement>(op: &SparseOp, s: &BTreeMap<&str, Vec<usize>>) -> KernelSpec {
    let (kind, pattern, dims): (OpKind, Pattern, Vec<(&str, usize)>) = match op {
        SparseOp::SptAttention(pq) => {
            let q = &s["q"];
            let dims = vec![("B", q[0]), ("H", q[1]), ("L", q[2]), ("D", q[3])];
            (OpKind::SptAttention, Pattern::PqTopK(*pq), dims)
        }
        SparseOp::RoutedFfn(r) => {
            let dims = vec![
                ("T", s["x"][0]),
                ("d_model", s["x"][1]),
                ("d_ff", s["w1"][0]),
            ];
            (OpKind::RoutedFfn, Pattern::Routed(*r), dims)
        }
        SparseOp::Monarch(m) => (
            OpKind::Monarch,
            Pattern::Monarch(*m),
            vec![("N", s["x"][0])],
        ),
        SparseOp::Sara => {
            // The mask is the module's (chosen once from the dense weight, given as
            // `mask_index`), not this spec's rule: the spec carries the sizes and the schedule.
            let dims = vec![("T", s["x"][0]), ("in", s["x"][1]), ("out", s["w"][0])];
            (OpKind::SaraLinear, Pattern::Sara(Sara::default()), dims)
        }
        SparseOp::Pst(p) => {
            let mut p = *p;
            p.rank = s["u"][1];
            p.mask_rank = s["ma"][1];
            let dims = vec![("T", s["x"][0]), ("in", s["x"][1]), ("out", s["w"][0])];
            (OpKind::PstLinear, Pattern::Pst(p), dims)
        }
        SparseOp::CbmHead(c) => {
            let dims = vec![("B", s["x"][0]), ("C", s["x"][1]), ("K", s["wh"][0])];
            (OpKind::CbmHead, Pattern::Cbm(*c), dims)
        }
        SparseOp::Nm(nm) => {
            let dims = vec![("T", s["x"][0]), ("in", s["x"][1]), ("out", s["bias"][0])];
            (OpKind::NmLinear, Pattern::Nm(Nm { n: nm.n, m: nm.m }), dims)
        }
    };
    KernelSpec::builder(kind.name().replace('-', "_"), kind)
        .pattern(pattern)
        .dtype(ir_dtype::<F>())
        .direction(Direction::Backward)
        .dims(dims)
        .build()
        // The modules verify the same op at construction (their constructors return the IR's
        // errors), so a spec that fails here is a bug in this crate, reported with the IR's
        // message.
        .unwrap_or_else(|e| panic!("{}: a module built a spec the IR rejects: {e}", kind))
}

/// A contiguous tensor of `shape` over `handle`, in dtype `dtype`, on `like`'s device.
fn wrap<R: CubeRuntime>(like: &T<R>, handle: Handle, shape: &[usize], dtype: BurnDType) -> T<R> {
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape.to_vec()),
        handle,
        dtype,
    )
}

/// A 32-bit view of an index tensor (the kernels read u32 indices): the tensor itself when the
/// backend's int element is 32 bits wide, else a cast.
fn index32<R: CubeRuntime, I: IntElement>(index: T<R>) -> T<R> {
    let index = into_contiguous(index);
    if size_of::<I>() == 4 {
        index
    } else {
        burn_cubecl::kernel::cast(index, BurnDType::I32)
    }
}

/// What a forward keeps for its backward: the op's (contiguous) tensors by plan name, the plans,
/// and the buffers the forward plan returned.
#[derive(Clone, Debug)]
pub struct Saved<R: CubeRuntime> {
    tensors: BTreeMap<&'static str, T<R>>,
    lowering: Lowering,
    forward: Executed,
}

fn kind<R: CubeRuntime>(t: &T<R>) -> &'static str {
    if R::name(&t.client).contains("cuda") {
        "cuda"
    } else {
        "wgpu"
    }
}

fn run_plan<R: CubeRuntime>(
    like: &T<R>,
    plan: &sparsecube_codegen::plan::LaunchPlan,
    bound: &BTreeMap<String, Handle>,
) -> Executed {
    exec::execute(&like.client, kind(like), plan, bound, Mode::from_env())
        // Reachable (device out of memory, a refused launch): as above, `finetune` turns the panic
        // into `TrainError::Device`.
        .unwrap_or_else(|e| panic!("{}: the kernels of a verified op failed: {e}", plan.label))
}

/// Runs `op` forward; returns y and what [`backward`] reads.
pub(crate) fn forward<R: CubeRuntime, F: FloatElement, I: IntElement>(
    op: &SparseOp,
    inputs: Vec<T<R>>,
    ints: Vec<T<R>>,
) -> (T<R>, Saved<R>) {
    let n = names(op);
    assert!(
        inputs.len() == n.floats.len() && ints.len() == n.ints.len(),
        "{}: {} float and {} integer tensors given, the op takes {} and {}",
        op.name(),
        inputs.len(),
        ints.len(),
        n.floats.len(),
        n.ints.len()
    );
    let mut tensors: BTreeMap<&'static str, T<R>> = BTreeMap::new();
    for (name, t) in n.floats.iter().zip(inputs) {
        tensors.insert(name, into_contiguous(t));
    }
    for (name, t) in n.ints.iter().zip(ints) {
        tensors.insert(name, index32::<R, I>(t));
    }
    let shapes: BTreeMap<&str, Vec<usize>> = tensors.iter().map(|(k, t)| (*k, dims(t))).collect();
    let spec = spec_of::<F>(op, &shapes);
    let like = tensors[n.floats[0]].clone();
    let mut opts = LowerOptions::new(exec::limits(&like.client));
    for optional in ["noise", "v", "mask_index"] {
        if tensors.contains_key(optional) {
            opts = opts.given([optional]);
        }
    }
    if let Some(index) = tensors.get("mask_index") {
        opts = opts.nnz(dims(index)[0]);
    }
    let lowering = lower(&spec, &opts)
        // Reachable (a problem too large for the device): Burn's ops cannot return errors, so this
        // panics, and `finetune` turns the panic into `TrainError::Device` naming the method.
        .unwrap_or_else(|e| panic!("{}: the op cannot be lowered: {e}", op.name()));
    let bound: BTreeMap<String, Handle> = lowering
        .forward
        .inputs()
        .iter()
        .map(|b| (b.name.clone(), tensors[b.name.as_str()].handle.clone()))
        .collect();
    let fwd = run_plan(&like, &lowering.forward, &bound);
    let out = &fwd.buffers[n.output];
    let y = wrap(&like, out.handle.clone(), &out.shape, F::dtype());
    (
        y,
        Saved {
            tensors,
            lowering,
            forward: fwd,
        },
    )
}

/// The gradient of every float input of `op` (None for the inputs it does not differentiate),
/// from [`forward`]'s saved tensors and the upstream gradient `dy`.
pub(crate) fn backward<R: CubeRuntime, F: FloatElement>(
    op: &SparseOp,
    saved: Saved<R>,
    dy: T<R>,
) -> Vec<Option<T<R>>> {
    let n = names(op);
    let dy = into_contiguous(dy);
    let Some(plan) = &saved.lowering.backward else {
        // Unreachable from input: `forward` lowers every op with its backward.
        panic!("{}: lowered without its backward", op.name());
    };
    let bound: BTreeMap<String, Handle> = plan
        .inputs()
        .iter()
        .map(|b| {
            let name = b.name.as_str();
            let h = if name == n.upstream {
                dy.handle.clone()
            } else if let Some(h) = saved.forward.handle(name) {
                h.clone()
            } else {
                saved.tensors[name].handle.clone()
            };
            (b.name.clone(), h)
        })
        .collect();
    let grads = run_plan(&dy, plan, &bound);
    n.grads
        .iter()
        .zip(n.floats)
        .map(|(g, input)| {
            g.map(|g| {
                let r = &grads.buffers[g];
                let shape = if r.shape.is_empty() {
                    dims(&saved.tensors[input])
                } else {
                    r.shape.clone()
                };
                wrap(&dy, r.handle.clone(), &shape, F::dtype())
            })
        })
        .collect()
}
