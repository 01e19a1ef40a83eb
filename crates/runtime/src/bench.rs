//! Timing and device memory of the generated kernels on one device: what `sparsecube bench`
//! reports, the tuner measures and `scripts/device-check.sh` joins with the PyTorch baselines.
//!
//! A step is an op's plans — the forward, then the backward binding the forward's saved
//! buffers (and, for SaRA, the sparse AdamW step over the packed values) — executed on
//! device-resident random inputs. Time: the median (and min, max) wall time of `repeats` steps,
//! each followed by a device synchronisation, after `warmup` steps (compilation and the
//! allocator's first reservations stay out). Memory: the allocator's bytes in use while every
//! buffer of the step is alive (inputs, saved, outputs, gradients) plus the largest scratch the
//! plans hold at once (exact, from the plans): the counterpart of
//! `torch.cuda.max_memory_allocated` over a step.

use crate::exec::{self, Executed, Mode};
use crate::execute::{HostFloat, device_spec, lower_for, stores};
use crate::{Device, RuntimeError};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels_ir::pattern::{Pattern, Sara, SaraSelect};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{DType, Direction, KernelSpec, OpKind};
use sparsecube_codegen::plan::{Elem, LaunchPlan, Lowering};
use sparsecube_codegen::sara::{AdamW, adamw_plan};
use std::collections::BTreeMap;
use std::time::Instant;

/// What one benchmarked step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Median step time, ms.
    pub median_ms: f64,
    /// Fastest step, ms.
    pub min_ms: f64,
    /// Slowest step, ms.
    pub max_ms: f64,
    /// Timed steps.
    pub repeats: usize,
    /// Peak device bytes of a step (see the module docs).
    pub peak_bytes: u64,
    /// Bytes kept between forward and backward besides the inputs and the outputs (from the
    /// forward plan).
    pub saved_bytes: u64,
}

/// Which attention is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// SPT sparse attention (PQ top-k), the spec's schedule.
    Sparse,
    /// Dense attention in the same kernel style (every key kept; per-row log-sum-exp saved).
    Dense,
}

/// Which linear map is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linear {
    /// The spec's Monarch map (two block-diagonal tile products per pass).
    Monarch,
    /// The dense linear it replaces (n_in → n_out, with a bias), on the same tile program.
    Dense,
}

/// Which SaRA training step [`sara_step`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaraStep {
    /// Ours: forward on W_eff, backward with dv at the mask positions only, sparse AdamW
    /// (moments of nnz values).
    Sparse,
    /// What the paper's code does: the dense weight gradient dw [out, in], on the same tile
    /// program (the dense linear of the same shape).
    DenseGrad,
}

/// Which PST training step [`pst_step`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PstStep {
    /// Ours: score, selection, masked product forward, straight-through backward.
    Masked,
    /// The dense linear of the same shape (forward + backward), the product PST replaces.
    Dense,
}

/// An error unless `spec` is an `op` spec (`bench` says which bench refused it).
fn expect_op(spec: &KernelSpec, op: OpKind, bench: &str) -> Result<(), RuntimeError> {
    if spec.op == op {
        return Ok(());
    }
    Err(sparsecube_codegen::LowerError::Unsupported {
        op: spec.op,
        what: bench.to_string(),
    }
    .into())
}

/// The standard deviation of the N(0, std²) values a bench fills input `name` of `op` with:
/// 1 for activations and upstream gradients, 1/√fan-in for weights (fan-in = the last axis),
/// 0.1 for biases; PST's trained factors so that its selection is not trivial.
pub fn input_std(op: OpKind, name: &str, shape: &[usize]) -> f64 {
    let fan = |n: usize| 1.0 / (n.max(1) as f64).sqrt();
    let last = shape.last().copied().unwrap_or(1);
    match (op, name) {
        (OpKind::PstLinear, "u" | "v" | "ma") => 0.1,
        (OpKind::PstLinear, "mb" | "mc") => 0.1 * fan(last),
        (OpKind::PstLinear, "mr") => 0.1 * 0.1,
        (_, "w" | "w1" | "w2" | "wr" | "wc" | "wh") => fan(last),
        (_, "bias" | "b1" | "b2" | "br") => 0.1,
        _ => 1.0,
    }
}

/// Random inputs for every buffer the plans of `lowering` bind that the forward does not
/// produce, in storage dtype `F` (indices are never inputs of a timed step).
fn random_inputs<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    lowering: &Lowering,
    seed: u64,
) -> BTreeMap<String, Handle> {
    let mut rng = SplitMix64::new(seed);
    let mut out = BTreeMap::new();
    for plan in lowering.plans() {
        for buf in plan.inputs() {
            if out.contains_key(&buf.name)
                || (plan.pass == sparsecube_codegen::plan::Pass::Backward
                    && lowering
                        .forward
                        .buffer(&buf.name)
                        .is_some_and(|b| lowering.forward.is_returned(b)))
            {
                continue;
            }
            let shape = buf.dims(0);
            let std = input_std(plan.op, &buf.name, &shape);
            let n = buf.elements(0).max(1);
            let h = match buf.elem {
                Elem::F32 => {
                    let v: Vec<f32> = (0..n).map(|_| (std * rng.normal()) as f32).collect();
                    client.create_from_slice(f32::as_bytes(&v))
                }
                _ => {
                    let v: Vec<F> = (0..n).map(|_| F::from_f64(std * rng.normal())).collect();
                    client.create_from_slice(F::as_bytes(&v))
                }
            };
            out.insert(buf.name.clone(), h);
        }
    }
    out
}

fn median_min_max(mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

/// Runs `warmup` untimed steps, then `repeats` (at least one) timed ones; each step returns the
/// bytes in use at its high point. The median, min and max step time (ms) and the peak bytes
/// (at least `peak`).
fn time_steps(
    warmup: usize,
    repeats: usize,
    mut peak: u64,
    mut step: impl FnMut() -> Result<u64, RuntimeError>,
) -> Result<(f64, f64, f64, u64), RuntimeError> {
    for _ in 0..warmup {
        peak = peak.max(step()?);
    }
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        peak = peak.max(step()?);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (median, min, max) = median_min_max(times);
    Ok((median, min, max, peak))
}

/// The handles `plan` binds: the caller's inputs, then the forward's returned buffers.
fn bindings(
    plan: &LaunchPlan,
    inputs: &BTreeMap<String, Handle>,
    fwd: Option<&Executed>,
) -> BTreeMap<String, Handle> {
    plan.inputs()
        .iter()
        .filter_map(|b| {
            let h = fwd
                .and_then(|f| f.handle(&b.name))
                .or_else(|| inputs.get(&b.name))?;
            Some((b.name.clone(), h.clone()))
        })
        .collect()
}

/// Times `repeats` steps of `lowering` on `client` after `warmup` (see the module docs); with
/// `adamw`, each step ends with SaRA's sparse AdamW over the forward's `v` and the backward's
/// `dv`.
fn time_plans<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    lowering: &Lowering,
    adamw: bool,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    let device_err = |e: String| RuntimeError::Device { kind, message: e };
    let inputs = random_inputs::<R, F>(client, lowering, seed);
    let mode = Mode::from_env();
    let scratch = lowering
        .plans()
        .iter()
        .map(|p| p.scratch_peak())
        .max()
        .unwrap_or(0);
    let mut moments: Option<(Handle, Handle)> = None;
    let mut step = 0u32;
    let run = || -> Result<u64, RuntimeError> {
        step += 1;
        let fwd = exec::execute(
            client,
            kind,
            &lowering.forward,
            &bindings(&lowering.forward, &inputs, None),
            mode,
        )?;
        let bwd = match &lowering.backward {
            Some(p) => Some(exec::execute(
                client,
                kind,
                p,
                &bindings(p, &inputs, Some(&fwd)),
                mode,
            )?),
            None => None,
        };
        if adamw && let Some(bwd) = &bwd {
            let nnz = fwd.nnz.max(bwd.buffers.get("dv").map_or(0, |r| r.shape[0]));
            let (m, s) = moments.get_or_insert_with(|| {
                let zeros = vec![0.0f32; nnz.max(1)];
                (
                    client.create_from_slice(f32::as_bytes(&zeros)),
                    client.create_from_slice(f32::as_bytes(&zeros)),
                )
            });
            let h = AdamW {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-2,
            };
            let plan = adamw_plan(lowering.forward.dtype, nnz, step, &h);
            let mut bound = BTreeMap::new();
            if let (Some(v), Some(dv)) = (fwd.handle("v"), bwd.handle("dv")) {
                bound.insert("v".to_string(), v.clone());
                bound.insert("dv".to_string(), dv.clone());
                bound.insert("m".to_string(), m.clone());
                bound.insert("s".to_string(), s.clone());
                exec::execute(client, kind, &plan, &bound, mode)?;
            }
        }
        exec::sync(client, kind)?;
        let bytes = client
            .memory_usage()
            .map(|u| u.bytes_in_use)
            .map_err(|e| device_err(format!("{e:?}")))?;
        drop((fwd, bwd));
        Ok(bytes + scratch)
    };
    let (median_ms, min_ms, max_ms, peak) = time_steps(warmup, repeats, 0, run)?;
    Ok(Measured {
        median_ms,
        min_ms,
        max_ms,
        repeats: repeats.max(1),
        peak_bytes: peak,
        saved_bytes: lowering.forward.saved_bytes(),
    })
}

/// Lowers `spec` (as a training step) for `device` and times it; `lowering` may replace the
/// spec's own plans (the dense attention baseline).
fn timed_on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    dense_attention: bool,
    (warmup, repeats, seed): (usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    let mut spec = spec.clone();
    if spec.op.has_backward() {
        spec.direction = Direction::Backward;
    }
    // A bench times what the adapter stores: bf16 held as f32 (how `run` serves it on WGSL)
    // would time f32 kernels under a bf16 label.
    if !stores(client, spec.dtype) {
        return Err(RuntimeError::Unavailable {
            kind,
            reason: format!(
                "this adapter cannot store {} (WGSL has no bf16)",
                spec.dtype
            ),
        });
    }
    let dspec = device_spec(client, kind, &spec)?.0;
    let lowering = if dense_attention {
        crate::execute::dense_lowering(client, &dspec)?
    } else {
        lower_for(client, &dspec, &[], None)?
    };
    let adamw = spec.op == OpKind::SaraLinear;
    match dspec.dtype {
        DType::F32 => time_plans::<R, f32>(client, kind, &lowering, adamw, warmup, repeats, seed),
        DType::F16 => {
            time_plans::<R, half::f16>(client, kind, &lowering, adamw, warmup, repeats, seed)
        }
        DType::BF16 => {
            time_plans::<R, half::bf16>(client, kind, &lowering, adamw, warmup, repeats, seed)
        }
        DType::I64 => Err(sparsecube_codegen::LowerError::Unsupported {
            op: spec.op,
            what: "i64 storage".into(),
        }
        .into()),
    }
}

fn timed(
    device: &Device,
    spec: &KernelSpec,
    dense_attention: bool,
    run: (usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    match device {
        Device::Cuda(c) => timed_on(c, "cuda", spec, dense_attention, run),
        Device::Wgpu(c) => timed_on(c, "wgpu", spec, dense_attention, run),
        Device::Reference => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "the bench times generated kernels: use --device cuda or wgpu".into(),
        }),
    }
}

/// Times one training step (forward + backward) of our kernels for `spec` with its schedule:
/// what the autotuner measures per candidate. Every op with kernels can be timed; `pq-encode`
/// (no backward) times its forward, `monarch-project` is an error.
pub fn step(
    device: &Device,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    timed(device, spec, false, (warmup, repeats, seed))
}

/// Times `which` attention, forward + backward, at the sizes and dtype of `spec` (an
/// `spt-attention` spec) on `device`, on N(0, 1) inputs from `seed`.
pub fn attention(
    device: &Device,
    spec: &KernelSpec,
    which: Attention,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::SptAttention,
        "the attention bench (it times spt-attention)",
    )?;
    timed(
        device,
        spec,
        which == Attention::Dense,
        (warmup, repeats, seed),
    )
}

/// Times the routed FFN, forward + backward (every gradient), at the sizes, pattern and dtype of
/// `spec` (a `routed-ffn` spec). With one block, `top = 1` and gate `none` it is the dense FFN
/// on the same tile programs.
pub fn routed_ffn(
    device: &Device,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::RoutedFfn,
        "the routed FFN bench (it times routed-ffn)",
    )?;
    step(device, spec, warmup, repeats, seed)
}

/// The `dense-linear` spec of the same rows, features, dtype and schedule as a linear-shaped
/// `spec` (Monarch, the block-diagonal map, SaRA, PST, N:M): the dense counterpart every such
/// bench compares with.
pub fn dense_counterpart(spec: &KernelSpec) -> Result<KernelSpec, RuntimeError> {
    let (rows, n_in, n_out) = match (spec.op, &spec.pattern) {
        (OpKind::Monarch, Pattern::Monarch(m)) => (spec.dim("N"), m.n_in(), m.n_out()),
        (OpKind::BlockDiagLinear, _) => (spec.dim("N"), spec.dim("in"), spec.dim("out")),
        (OpKind::SaraLinear | OpKind::PstLinear | OpKind::NmLinear | OpKind::DenseLinear, _) => {
            (spec.dim("T"), spec.dim("in"), spec.dim("out"))
        }
        (op, _) => {
            return Err(sparsecube_codegen::LowerError::Unsupported {
                op,
                what: "a dense linear counterpart".into(),
            }
            .into());
        }
    };
    let mut dense = KernelSpec::builder(format!("{}_dense", spec.name), OpKind::DenseLinear)
        .dims([("T", rows), ("in", n_in), ("out", n_out)])
        .pattern(Pattern::Dense)
        .dtype(spec.dtype)
        .schedule(spec.schedule)
        .direction(spec.direction)
        .build()?;
    dense.name = format!("{}_dense", spec.name);
    Ok(dense)
}

/// The dense counterpart a bench times next to `spec`: [`dense_counterpart`] with its own
/// schedule — the default one, or its own tuned winner on this device ([`crate::tune::resolve`])
/// — never the sparse side's, whose winner was chosen for another product.
fn counterpart(device: &Device, spec: &KernelSpec) -> Result<KernelSpec, RuntimeError> {
    let dense = KernelSpec {
        schedule: kernels_ir::Schedule::default(),
        ..dense_counterpart(spec)?
    };
    Ok(crate::tune::resolve(device, &dense))
}

/// Times `which` linear map, forward + backward (dx and the weight gradients), at the sizes and
/// dtype of `spec` (a `monarch` spec).
pub fn linear(
    device: &Device,
    spec: &KernelSpec,
    which: Linear,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::Monarch,
        "the linear bench (it times monarch and its dense counterpart)",
    )?;
    match which {
        Linear::Monarch => step(device, spec, warmup, repeats, seed),
        Linear::Dense => step(device, &counterpart(device, spec)?, warmup, repeats, seed),
    }
}

/// Times the dense linear of `spec` (a `dense-linear` spec: forward, then dx, dw and dbias).
pub fn dense_linear(
    device: &Device,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::DenseLinear,
        "the dense linear bench (it times dense-linear)",
    )?;
    step(device, spec, warmup, repeats, seed)
}

/// A cubek-matmul strategy (cubek 0.2, the CubeCL ecosystem's GEMM) the gemm workloads time
/// next to our tile program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cubek {
    /// What Burn's matmul launches in this build (no autotune): single-buffered WMMA, else the
    /// unit (scalar) algorithm.
    Auto,
    /// Double-buffered WMMA with cyclic loading.
    DoubleCyclicCmma,
    /// Double-buffered mma.sync with cyclic loading.
    DoubleCyclicMma,
    /// Warp-specialised WMMA fed by TMA (sm_90).
    SpecializedTmaCmma,
    /// The unit (scalar) algorithm: what runs without tensor cores (wgpu).
    SimpleUnit,
}

impl Cubek {
    /// Every strategy, in the bench's row order.
    pub const ALL: [Cubek; 5] = [
        Cubek::Auto,
        Cubek::DoubleCyclicCmma,
        Cubek::DoubleCyclicMma,
        Cubek::SpecializedTmaCmma,
        Cubek::SimpleUnit,
    ];

    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            Cubek::Auto => "cubek-auto",
            Cubek::DoubleCyclicCmma => "cubek-double-cyclic-cmma",
            Cubek::DoubleCyclicMma => "cubek-double-cyclic-mma",
            Cubek::SpecializedTmaCmma => "cubek-specialized-tma-cmma",
            Cubek::SimpleUnit => "cubek-simple-unit",
        }
    }

    fn strategy(self) -> cubek::matmul::launch::Strategy {
        use cubek::matmul::launch::Strategy;
        match self {
            Cubek::Auto => Strategy::Auto,
            Cubek::DoubleCyclicCmma => Strategy::DoubleCyclicCmma(Default::default()),
            Cubek::DoubleCyclicMma => Strategy::DoubleCyclicMma(Default::default()),
            Cubek::SpecializedTmaCmma => Strategy::SpecializedTmaCmma(Default::default()),
            Cubek::SimpleUnit => Strategy::SimpleUnit(Default::default()),
        }
    }
}

/// Times the three products of a dense linear's training step — y = x·Wᵀ, dx = dy·W,
/// dw = dyᵀ·x, transposes as strides — with cubek-matmul's `strategy`, at the sizes and dtype
/// of `spec` (a `dense-linear` spec). The bias add and its gradient (O(T·out), a few percent of
/// our dense-linear step) are not in it. Products accumulate in f32; f32 inputs run as cubek
/// runs them (TF32 on tensor cores).
pub fn cubek_linear(
    device: &Device,
    spec: &KernelSpec,
    strategy: Cubek,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::DenseLinear,
        "the cubek-matmul bench (it times dense-linear's products)",
    )?;
    let run = (warmup, repeats, seed);
    match device {
        Device::Cuda(c) => cubek_on(c, "cuda", spec, strategy, run),
        Device::Wgpu(c) => cubek_on(c, "wgpu", spec, strategy, run),
        Device::Reference => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "the bench times device kernels: use --device cuda or wgpu".into(),
        }),
    }
}

fn cubek_on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    strategy: Cubek,
    (warmup, repeats, seed): (usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek::std::InputBinding;
    let device_err = |e: String| RuntimeError::Device { kind, message: e };
    if !stores(client, spec.dtype) {
        return Err(RuntimeError::Unavailable {
            kind,
            reason: format!("this adapter cannot store {}", spec.dtype),
        });
    }
    let features = &client.properties().features.matmul;
    let needs = match strategy {
        Cubek::DoubleCyclicCmma | Cubek::SpecializedTmaCmma => {
            Some(("WMMA", features.cmma.is_empty()))
        }
        Cubek::DoubleCyclicMma => Some(("mma.sync", features.mma.is_empty())),
        Cubek::Auto | Cubek::SimpleUnit => None,
    };
    // Launching a tensor-core kernel where there are none can panic in the compiler (WGSL).
    if let Some((what, true)) = needs {
        return Err(RuntimeError::Unavailable {
            kind,
            reason: format!("this device has no {what} tensor cores"),
        });
    }
    let dim = |n: &str| spec.dims.get(n).copied().unwrap_or(1).max(1);
    let (t, n_in, n_out) = (dim("T"), dim("in"), dim("out"));
    let (elem, size): (cubecl::ir::StorageType, usize) = match spec.dtype {
        DType::F32 => (f32::as_type_native_unchecked().storage_type(), 4),
        DType::F16 => (half::f16::as_type_native_unchecked().storage_type(), 2),
        DType::BF16 => (half::bf16::as_type_native_unchecked().storage_type(), 2),
        DType::I64 => {
            return Err(sparsecube_codegen::LowerError::Unsupported {
                op: spec.op,
                what: "i64 storage".into(),
            }
            .into());
        }
    };
    let mut rng = SplitMix64::new(seed);
    // Each input on the device, and on the host as the device holds it (for the check).
    let mut fill = |n: usize, std: f64| -> (Handle, Vec<f32>) {
        let v: Vec<f64> = (0..n).map(|_| std * rng.normal()).collect();
        match spec.dtype {
            DType::F16 => {
                let d: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f64(x)).collect();
                let h = d.iter().map(|x| x.to_f32()).collect();
                (client.create_from_slice(half::f16::as_bytes(&d)), h)
            }
            DType::BF16 => {
                let d: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f64(x)).collect();
                let h = d.iter().map(|x| x.to_f32()).collect();
                (client.create_from_slice(half::bf16::as_bytes(&d)), h)
            }
            _ => {
                let d: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                (client.create_from_slice(f32::as_bytes(&d)), d)
            }
        }
    };
    let (x, hx) = fill(t * n_in, 1.0);
    let (w, hw) = fill(n_out * n_in, 1.0 / (n_in as f64).sqrt());
    let (dy, hdy) = fill(t * n_out, 1.0);
    let decode = |bytes: &[u8]| -> Vec<f32> {
        match spec.dtype {
            DType::F16 => half::f16::from_bytes(bytes)
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            DType::BF16 => half::bf16::from_bytes(bytes)
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            _ => f32::from_bytes(bytes).to_vec(),
        }
    };
    // A [rows, cols] view of `h` with the given strides.
    let view = |h: &Handle, shape: [usize; 2], strides: [usize; 2]| TensorBinding::<R> {
        handle: h.clone().binding(),
        strides: strides.to_vec().into(),
        shape: shape.to_vec().into(),
        runtime: std::marker::PhantomData,
    };
    let input = |b: TensorBinding<R>| InputBinding::new(b, elem);
    let launch_strategy = strategy.strategy();
    let product =
        |lhs: TensorBinding<R>, rhs: TensorBinding<R>, rows: usize, cols: usize, verify: bool| {
            // The checked step's outputs start as NaN (all-ones bytes, NaN in every float dtype):
            // a launch that did nothing cannot pass the check on a previous row's results left in
            // pooled memory.
            let out = if verify {
                client.create_from_slice(&vec![0xFFu8; rows * cols * size])
            } else {
                client.empty(rows * cols * size)
            };
            let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
                lhs: elem,
                rhs: elem,
                out: elem,
            });
            let out_view = view(&out, [rows, cols], [cols, 1]);
            // cubek reports a strategy the device or the shape cannot take as an error, and
            // panics on some (`Auto`'s fallback unwraps).
            crate::quietly(|| {
                cubek::matmul::launch::launch_ref(
                    &launch_strategy,
                    client,
                    input(lhs),
                    input(rhs),
                    out_view,
                    &mut dtypes,
                )
            })
            .map_err(|e| device_err(format!("cubek-matmul panicked: {e}")))?
            .map_err(|e| device_err(format!("cubek-matmul: {e:?}")))?;
            Ok::<Handle, RuntimeError>(out)
        };
    // The bench times what it claims only if the strided views mean the products above: 16
    // entries of each output, against the host, within 1 % of the sum of the terms' magnitudes
    // (TF32 and bf16 rounding, f32 accumulation).
    let check = |y: &Handle, dx: &Handle, dw: &Handle| -> Result<(), RuntimeError> {
        let mut pick = SplitMix64::new(seed ^ 0xC0BE);
        let outputs: [(&str, &Handle, usize, usize, usize); 3] = [
            ("y = x·Wᵀ", y, t, n_out, n_in),
            ("dx = dy·W", dx, t, n_in, n_out),
            ("dw = dyᵀ·x", dw, n_out, n_in, t),
        ];
        for (name, h, rows, cols, depth) in outputs {
            let bytes = client
                .read_one(h.clone())
                .map_err(|e| device_err(format!("{e:?}")))?;
            let got = decode(&bytes);
            for _ in 0..16 {
                let (i, j) = (
                    (pick.next_u64() % rows as u64) as usize,
                    (pick.next_u64() % cols as u64) as usize,
                );
                let term = |k: usize| -> f64 {
                    let (a, b) = match name {
                        "y = x·Wᵀ" => (hx[i * n_in + k], hw[j * n_in + k]),
                        "dx = dy·W" => (hdy[i * n_out + k], hw[k * n_in + j]),
                        _ => (hdy[k * n_out + i], hx[k * n_in + j]),
                    };
                    f64::from(a) * f64::from(b)
                };
                let exact: f64 = (0..depth).map(term).sum();
                let scale: f64 = (0..depth).map(|k| term(k).abs()).sum::<f64>().max(1e-30);
                let g = f64::from(got[i * cols + j]);
                // A NaN (an output never written) fails too.
                if g.is_nan() || (g - exact).abs() > 1e-2 * scale {
                    return Err(device_err(format!(
                        "cubek-matmul ({}) computed {name} [{i}, {j}] = {g}, the host {exact}",
                        strategy.name()
                    )));
                }
            }
        }
        Ok(())
    };
    let run = |verify: bool| -> Result<u64, RuntimeError> {
        // y = x·Wᵀ: W [out, in] read as [in, out].
        let y = product(
            view(&x, [t, n_in], [n_in, 1]),
            view(&w, [n_in, n_out], [1, n_in]),
            t,
            n_out,
            verify,
        )?;
        // dx = dy·W.
        let dx = product(
            view(&dy, [t, n_out], [n_out, 1]),
            view(&w, [n_out, n_in], [n_in, 1]),
            t,
            n_in,
            verify,
        )?;
        // dw = dyᵀ·x: dy [T, out] read as [out, T].
        let dw = product(
            view(&dy, [n_out, t], [1, n_out]),
            view(&x, [t, n_in], [n_in, 1]),
            n_out,
            n_in,
            verify,
        )?;
        exec::sync(client, kind)?;
        let bytes = client
            .memory_usage()
            .map(|u| u.bytes_in_use)
            .map_err(|e| device_err(format!("{e:?}")))?;
        if verify {
            check(&y, &dx, &dw)?;
        }
        drop((y, dx, dw));
        Ok(bytes)
    };
    // One untimed step checked against the host (it also compiles the kernels), then the
    // warm-up and the timed steps.
    let first = run(true)?;
    let (median_ms, min_ms, max_ms, peak) = time_steps(warmup, repeats, first, || run(false))?;
    Ok(Measured {
        median_ms,
        min_ms,
        max_ms,
        repeats: repeats.max(1),
        peak_bytes: peak,
        saved_bytes: 0,
    })
}

/// Times the block-diagonal map of `spec` (a `block-diag-linear` spec), forward + backward.
pub fn block_diag(
    device: &Device,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::BlockDiagLinear,
        "the block-diagonal bench (it times block-diag-linear)",
    )?;
    step(device, spec, warmup, repeats, seed)
}

/// Times the Sparse-CBM head of `spec` (a `cbm-head` spec; `topk = 0` is the dense head),
/// forward + backward, without Gumbel noise.
pub fn cbm_head(
    device: &Device,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(spec, OpKind::CbmHead, "the CBM bench (it times cbm-head)")?;
    step(device, spec, warmup, repeats, seed)
}

/// Times one SaRA training step at the sizes, rule and dtype of `spec` (a `sara-linear` spec):
/// ours (mask, forward, sampled backward, sparse AdamW) or the dense-gradient step.
pub fn sara_step(
    device: &Device,
    spec: &KernelSpec,
    which: SaraStep,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::SaraLinear,
        "the SaRA bench (it times sara-linear)",
    )?;
    match which {
        SaraStep::Sparse => step(device, spec, warmup, repeats, seed),
        SaraStep::DenseGrad => step(device, &counterpart(device, spec)?, warmup, repeats, seed),
    }
}

/// Times one PST training step at the sizes, pattern and dtype of `spec` (a `pst-linear` spec).
pub fn pst_step(
    device: &Device,
    spec: &KernelSpec,
    which: PstStep,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(
        spec,
        OpKind::PstLinear,
        "the PST bench (it times pst-linear)",
    )?;
    match which {
        PstStep::Masked => step(device, spec, warmup, repeats, seed),
        PstStep::Dense => step(device, &counterpart(device, spec)?, warmup, repeats, seed),
    }
}

/// Which linear backward [`backward_allocation`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backward {
    /// SaRA: dx, the packed dv at the mask positions and dbias.
    Sara,
    /// The dense linear: dx, the full dw [out, in] and dbias.
    Dense,
}

/// Device bytes the backward of a `T`×`n_in` → `n_out` linear allocates and still holds when it
/// returns (its outputs and anything else it left alive), f32, with a SaRA mask of the
/// `⌊ratio·out·in⌋` smallest weights: the allocator's bytes in use after the backward minus
/// before it, both synchronised. What the memory claim of SaRA is tested on.
pub fn backward_allocation(
    device: &Device,
    which: Backward,
    (t, n_in, n_out): (usize, usize, usize),
    ratio: f64,
    seed: u64,
) -> Result<u64, RuntimeError> {
    let spec = match which {
        Backward::Sara => KernelSpec::builder("sara", OpKind::SaraLinear)
            .pattern(Pattern::Sara(Sara {
                select: SaraSelect::Ratio(ratio),
            }))
            .dims([("T", t), ("in", n_in), ("out", n_out)])
            .direction(Direction::Backward)
            .build()?,
        Backward::Dense => KernelSpec::builder("dense", OpKind::DenseLinear)
            .dims([("T", t), ("in", n_in), ("out", n_out)])
            .direction(Direction::Backward)
            .build()?,
    };
    match device {
        Device::Cuda(c) => backward_allocation_on(c, "cuda", &spec, seed),
        Device::Wgpu(c) => backward_allocation_on(c, "wgpu", &spec, seed),
        Device::Reference => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "device allocations are measured on cuda or wgpu".into(),
        }),
    }
}

fn backward_allocation_on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    seed: u64,
) -> Result<u64, RuntimeError> {
    let lowering = lower_for(client, spec, &[], None)?;
    let inputs = random_inputs::<R, f32>(client, &lowering, seed);
    let mode = Mode::from_env();
    let in_use = || -> Result<u64, RuntimeError> {
        exec::sync(client, kind)?;
        client
            .memory_usage()
            .map(|u| u.bytes_in_use)
            .map_err(|e| RuntimeError::Device {
                kind,
                message: format!("{e:?}"),
            })
    };
    let fwd = exec::execute(
        client,
        kind,
        &lowering.forward,
        &bindings(&lowering.forward, &inputs, None),
        mode,
    )?;
    let Some(plan) = &lowering.backward else {
        return Ok(0);
    };
    let before = in_use()?;
    let bwd = exec::execute(
        client,
        kind,
        plan,
        &bindings(plan, &inputs, Some(&fwd)),
        mode,
    )?;
    let after = in_use()?;
    drop((fwd, bwd));
    Ok(after.saturating_sub(before))
}
