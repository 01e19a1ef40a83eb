//! Timing and device memory of the generated kernels on one device: what `sparsecube bench`
//! reports and `scripts/device-check.sh` joins with the PyTorch baselines.
//!
//! Time: the median (and min, max) wall time of `repeats` training steps (forward + backward,
//! each followed by a device synchronisation) after `warmup` steps, so compilation and the
//! allocator's first reservations stay out. Memory: the device allocator's bytes in use while
//! every tensor of the step is alive (inputs, saved tensors, outputs, gradients) plus the scratch
//! the launchers allocate and release within a call (exact, from the plan): the counterpart of
//! `torch.cuda.max_memory_allocated` over a step.

use crate::{Device, RuntimeError};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{DType, KernelSpec, OpKind};
use sparsecube_codegen::dense::{self as linear, LinearPlan};
use sparsecube_codegen::monarch::{self, MonarchPlan};
use sparsecube_codegen::pst::{self, PstPlan};
use sparsecube_codegen::routed::{self, RoutedPlan};
use sparsecube_codegen::sara::{self, SaraPlan};
use sparsecube_codegen::spt::{self, SptPlan};
use sparsecube_codegen::{blockdiag, cbm};
use std::time::Instant;

/// Runs `$on::<R, F>(client, kind, $args)` for the device and storage dtype (bf16 only where
/// the adapter stores it), or says why the bench cannot run there.
macro_rules! on_device {
    ($device:expr, $dtype:expr, $on:ident, $args:expr) => {
        match ($device, $dtype) {
            (Device::Cuda(c), DType::F32) => $on::<_, f32>(c, "cuda", $args),
            (Device::Cuda(c), DType::F16) => $on::<_, half::f16>(c, "cuda", $args),
            (Device::Cuda(c), DType::BF16) => $on::<_, half::bf16>(c, "cuda", $args),
            (Device::Wgpu(c), DType::F32) => $on::<_, f32>(c, "wgpu", $args),
            (Device::Wgpu(c), DType::F16) => $on::<_, half::f16>(c, "wgpu", $args),
            (Device::Reference, _) => Err(RuntimeError::Unavailable {
                kind: "reference",
                reason: "the bench times generated kernels: use --device cuda or wgpu".into(),
            }),
            (_, dtype) => Err(RuntimeError::Unavailable {
                kind: $device.kind().name(),
                reason: format!("this adapter cannot store {dtype} (WGSL has no bf16)"),
            }),
        }
    };
}

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
    /// Bytes kept between forward and backward besides the inputs and the output.
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

/// `len` (at least one) N(0, std²) values from `rng`, uploaded in dtype `F`.
fn normal<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    rng: &mut SplitMix64,
    len: usize,
    std: f64,
) -> Handle {
    let v: Vec<F> = (0..len.max(1))
        .map(|_| F::from_f64(std * rng.normal()))
        .collect();
    client.create_from_slice(F::as_bytes(&v))
}

fn median_min_max(mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0], times[times.len() - 1])
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
    match (device, spec.dtype) {
        (Device::Cuda(c), DType::F32) => {
            attention_on::<_, f32>(c, "cuda", spec, which, warmup, repeats, seed)
        }
        (Device::Cuda(c), DType::F16) => {
            attention_on::<_, half::f16>(c, "cuda", spec, which, warmup, repeats, seed)
        }
        (Device::Cuda(c), DType::BF16) => {
            attention_on::<_, half::bf16>(c, "cuda", spec, which, warmup, repeats, seed)
        }
        (Device::Wgpu(c), DType::F32) => {
            attention_on::<_, f32>(c, "wgpu", spec, which, warmup, repeats, seed)
        }
        (Device::Wgpu(c), DType::F16) => {
            attention_on::<_, half::f16>(c, "wgpu", spec, which, warmup, repeats, seed)
        }
        (Device::Reference, _) => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "the bench times generated kernels: use --device cuda or wgpu".into(),
        }),
        (_, dtype) => Err(RuntimeError::Unavailable {
            kind: device.kind().name(),
            reason: format!("this adapter cannot store {dtype} (WGSL has no bf16)"),
        }),
    }
}

fn attention_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    which: Attention,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    let plan = SptPlan::from_spec(spec)?;
    crate::execute::ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let mut rng = SplitMix64::new(seed);
    let d = plan.cfg.d as usize;
    let n = plan.rows() * d;
    let mut upload = |len: usize| -> Handle {
        let v: Vec<F> = (0..len).map(|_| F::from_f64(rng.normal())).collect();
        client.create_from_slice(F::as_bytes(&v))
    };
    let [q, k, v, dout] = [n; 4].map(&mut upload);
    let codebook = upload((d / plan.cfg.dc as usize) * plan.cfg.e as usize * plan.cfg.dc as usize);
    match which {
        Attention::Sparse => timed(
            client,
            kind,
            warmup,
            repeats,
            plan.scratch_bytes(),
            plan.saved_bytes(),
            || {
                let saved = spt::forward::<R, F>(client, &plan, &q, &k, &v, &codebook);
                let grads = spt::backward::<R, F>(client, &plan, &q, &k, &v, &saved, &dout);
                (saved, grads)
            },
        ),
        Attention::Dense => timed(
            client,
            kind,
            warmup,
            repeats,
            plan.dense_scratch_bytes(),
            plan.rows() * 4,
            || spt::dense_forward_backward::<R, F>(client, &plan, &q, &k, &v, &dout),
        ),
    }
}

/// Times the routed FFN, forward + backward (every gradient), at the sizes, pattern and dtype of
/// `spec` (a `routed-ffn` spec) on `device`, on N(0, 1/fan-in) weights from `seed`. With
/// one block, `top = 1` and gate `none` it is the dense FFN in the same kernel style.
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
    match (device, spec.dtype) {
        (Device::Cuda(c), DType::F32) => {
            routed_on::<_, f32>(c, "cuda", spec, warmup, repeats, seed)
        }
        (Device::Cuda(c), DType::F16) => {
            routed_on::<_, half::f16>(c, "cuda", spec, warmup, repeats, seed)
        }
        (Device::Cuda(c), DType::BF16) => {
            routed_on::<_, half::bf16>(c, "cuda", spec, warmup, repeats, seed)
        }
        (Device::Wgpu(c), DType::F32) => {
            routed_on::<_, f32>(c, "wgpu", spec, warmup, repeats, seed)
        }
        (Device::Wgpu(c), DType::F16) => {
            routed_on::<_, half::f16>(c, "wgpu", spec, warmup, repeats, seed)
        }
        (Device::Reference, _) => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "the bench times generated kernels: use --device cuda or wgpu".into(),
        }),
        (_, dtype) => Err(RuntimeError::Unavailable {
            kind: device.kind().name(),
            reason: format!("this adapter cannot store {dtype} (WGSL has no bf16)"),
        }),
    }
}

fn routed_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    let plan = RoutedPlan::from_spec(spec)?;
    let mut rng = SplitMix64::new(seed);
    let (t, dm, dff, e) = (
        plan.t,
        plan.cfg.dm as usize,
        plan.dff(),
        plan.cfg.blocks as usize,
    );
    let mut upload = |len: usize, std: f64| normal::<R, F>(client, &mut rng, len, std);
    let fan = |n: usize| 1.0 / (n as f64).sqrt();
    let x = upload(t * dm, 1.0);
    let w1 = upload(dff * dm, fan(dm));
    let b1 = upload(dff, 0.1);
    let w2 = upload(dm * dff, fan(dff));
    let b2 = upload(dm, 0.1);
    let wr = upload(e * dm, fan(dm));
    let br = upload(e, 0.1);
    let dy = upload(t * dm, 1.0);
    timed(
        client,
        kind,
        warmup,
        repeats,
        plan.scratch_bytes(),
        plan.saved_bytes(),
        || {
            let saved = routed::forward::<R, F>(client, &plan, &x, &w1, &b1, &w2, &b2, &wr, &br);
            let grads = routed::backward::<R, F>(client, &plan, &x, &w1, &w2, &wr, &saved, &dy);
            (saved, grads)
        },
    )
}

/// Runs `step` (one forward + backward, returning what must stay alive until the device is
/// synchronised) `warmup` times untimed and `repeats` times timed; the peak is the allocator's
/// bytes in use after each synchronised step plus `scratch` (what the launchers release within a
/// call).
fn timed<R: Runtime, T>(
    client: &ComputeClient<R>,
    kind: &'static str,
    warmup: usize,
    repeats: usize,
    scratch: usize,
    saved: usize,
    mut step: impl FnMut() -> T,
) -> Result<Measured, RuntimeError> {
    let device_err = |e: String| RuntimeError::Device { kind, message: e };
    let mut run = || -> Result<u64, RuntimeError> {
        let alive = step();
        cubecl::future::block_on(client.sync()).map_err(|e| device_err(format!("{e:?}")))?;
        let bytes = client
            .memory_usage()
            .map(|u| u.bytes_in_use)
            .map_err(|e| device_err(format!("{e:?}")))?;
        drop(alive);
        Ok(bytes + scratch as u64)
    };
    let mut peak = 0;
    for _ in 0..warmup {
        peak = peak.max(run()?);
    }
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        peak = peak.max(run()?);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (median_ms, min_ms, max_ms) = median_min_max(times);
    Ok(Measured {
        median_ms,
        min_ms,
        max_ms,
        repeats: repeats.max(1),
        peak_bytes: peak,
        saved_bytes: saved as u64,
    })
}

/// Which linear map is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linear {
    /// The spec's Monarch map (the fused forward and its backward).
    Monarch,
    /// The dense linear it replaces (n_in → n_out, with a bias), on the same tile mainloop as
    /// the grouped products.
    Dense,
}

/// Times `which` linear map, forward + backward (dx and the weight gradients), at the sizes and
/// dtype of `spec` (a `monarch` spec) on `device`, on N(0, 1/fan-in) weights from `seed`.
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
    let args = (spec, which, warmup, repeats, seed);
    on_device!(device, spec.dtype, linear_on, args)
}

fn linear_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    (spec, which, warmup, repeats, seed): (&KernelSpec, Linear, usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    let plan = MonarchPlan::from_spec(spec)?;
    crate::execute::ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let (n, n_in, inner, n_out) = plan.sizes();
    let (s1, s2) = plan.factor_sizes();
    let mut rng = SplitMix64::new(seed);
    let mut upload = |len: usize, std: f64| normal::<R, F>(client, &mut rng, len, std);
    let fan = |k: usize| 1.0 / (k as f64).sqrt();
    let x = upload(n * n_in, 1.0);
    let dy = upload(n * n_out, 1.0);
    match which {
        Linear::Monarch => {
            let w1 = upload(s1, fan(plan.cfg.p as usize));
            let w2 = upload(s2, fan(plan.cfg.r as usize));
            // Backward's du [N, k·q] f32 is released within the call.
            timed(
                client,
                kind,
                warmup,
                repeats,
                4 * n * inner,
                plan.saved_bytes(),
                || {
                    let saved = monarch::forward::<R, F>(client, &plan, &x, &w1, &w2, true);
                    let grads =
                        monarch::backward::<R, F>(client, &plan, &x, &w1, &w2, &saved.u, &dy);
                    (saved, grads)
                },
            )
        }
        Linear::Dense => {
            let dense = LinearPlan::new(n, n_in, n_out, kernels_ir::Schedule::default().tile_k);
            let (w, bias) = (upload(n_out * n_in, fan(n_in)), upload(n_out, 0.1));
            linear_step::<R, F>(client, kind, &dense, [&x, &w, &bias, &dy], warmup, repeats)
        }
    }
}

/// Times the dense linear of `spec` (a `dense-linear` spec: x [T, in] · wᵀ + bias, then dx, dw
/// and dbias) with its schedule's `tile_k`, on N(0, 1/fan-in) weights from `seed`.
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
    spec.verify()?;
    let args = (spec, warmup, repeats, seed);
    on_device!(device, spec.dtype, dense_linear_on, args)
}

fn dense_linear_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    (spec, warmup, repeats, seed): (&KernelSpec, usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    crate::execute::ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let plan = LinearPlan::from_spec(spec);
    let (n, n_in, n_out) = (plan.n, plan.cfg.n_in as usize, plan.cfg.n_out as usize);
    let mut rng = SplitMix64::new(seed);
    let mut upload = |len: usize, std: f64| normal::<R, F>(client, &mut rng, len, std);
    let x = upload(n * n_in, 1.0);
    let dy = upload(n * n_out, 1.0);
    let w = upload(n_out * n_in, 1.0 / (n_in as f64).sqrt());
    let bias = upload(n_out, 0.1);
    linear_step::<R, F>(client, kind, &plan, [&x, &w, &bias, &dy], warmup, repeats)
}

/// Times the dense linear's training step (forward, then dx, dw and dbias) of `plan` on
/// device-resident x, w, bias and dy: the dense baseline of every linear bench.
fn linear_step<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    plan: &LinearPlan,
    [x, w, bias, dy]: [&Handle; 4],
    warmup: usize,
    repeats: usize,
) -> Result<Measured, RuntimeError> {
    timed(client, kind, warmup, repeats, 0, 0, || {
        let y = linear::forward::<R, F>(client, plan, x, w, bias);
        let grads = linear::backward::<R, F>(client, plan, x, w, dy);
        (y, grads)
    })
}

/// Times the block-diagonal map of `spec` (a `block-diag-linear` spec), forward + backward (dx,
/// dw), with its schedule's `tile_k`, on N(0, 1/fan-in) weights from `seed`.
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
    let args = (spec, warmup, repeats, seed);
    on_device!(device, spec.dtype, block_diag_on, args)
}

fn block_diag_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    (spec, warmup, repeats, seed): (&KernelSpec, usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    let plan = blockdiag::BlockDiagPlan::from_spec(spec)?;
    crate::execute::ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let (n, n_in, n_out) = plan.sizes();
    let per_block_in = plan.cfg.pi as usize;
    let mut rng = SplitMix64::new(seed);
    let mut upload = |len: usize, std: f64| normal::<R, F>(client, &mut rng, len, std);
    let x = upload(n * n_in, 1.0);
    let dy = upload(n * n_out, 1.0);
    let w = upload(n_out * per_block_in, 1.0 / (per_block_in as f64).sqrt());
    timed(client, kind, warmup, repeats, 0, 0, || {
        let y = blockdiag::forward::<R, F>(client, &plan, &x, &w);
        let grads = blockdiag::backward::<R, F>(client, &plan, &x, &w, &dy);
        (y, grads)
    })
}

/// Times the Sparse-CBM head of `spec` (a `cbm-head` spec; `topk = 0` is the dense head, every
/// concept kept), forward + backward (dx, dwc, dwh), without Gumbel noise, on N(0, 1/fan-in)
/// weights from `seed`.
pub fn cbm_head(
    device: &Device,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    expect_op(spec, OpKind::CbmHead, "the CBM bench (it times cbm-head)")?;
    let args = (spec, warmup, repeats, seed);
    on_device!(device, spec.dtype, cbm_on, args)
}

fn cbm_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    (spec, warmup, repeats, seed): (&KernelSpec, usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    let plan = cbm::CbmPlan::from_spec(spec, false)?;
    crate::execute::ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let (b, c, k) = (plan.b, plan.cfg.c as usize, plan.cfg.k as usize);
    let mut rng = SplitMix64::new(seed);
    let mut upload = |len: usize, std: f64| normal::<R, F>(client, &mut rng, len, std);
    let fan = 1.0 / (c as f64).sqrt();
    let x = upload(b * c, 1.0);
    let wc = upload(c * c, fan);
    let wh = upload(k * c, fan);
    let dlogits = upload(b * k, 1.0);
    let noise = upload(1, 0.0);
    timed(client, kind, warmup, repeats, 0, 0, || {
        let saved = cbm::forward::<R, F>(client, &plan, &x, &wc, &wh, &noise);
        let grads = cbm::backward::<R, F>(client, &plan, &x, &wc, &wh, &saved, &dlogits);
        (saved, grads)
    })
}

/// Times one training step (forward + backward) of our kernels for `spec` with its schedule:
/// what the autotuner measures per candidate. Every op with kernels can be timed (SPT attention,
/// the routed FFN, Monarch, the block-diagonal map, SaRA, PST, the CBM head, the dense linear);
/// `pq-encode` and `monarch-project` are an error.
pub fn step(
    device: &Device,
    spec: &KernelSpec,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    match spec.op {
        OpKind::SptAttention => attention(device, spec, Attention::Sparse, warmup, repeats, seed),
        OpKind::RoutedFfn => routed_ffn(device, spec, warmup, repeats, seed),
        OpKind::Monarch => linear(device, spec, Linear::Monarch, warmup, repeats, seed),
        OpKind::SaraLinear => sara_step(device, spec, SaraStep::Sparse, warmup, repeats, seed),
        OpKind::PstLinear => pst_step(device, spec, PstStep::Masked, warmup, repeats, seed),
        OpKind::DenseLinear => dense_linear(device, spec, warmup, repeats, seed),
        OpKind::CbmHead => cbm_head(device, spec, warmup, repeats, seed),
        OpKind::BlockDiagLinear => block_diag(device, spec, warmup, repeats, seed),
        op => Err(sparsecube_codegen::LowerError::Unsupported {
            op,
            what: "a timed step (no bench for this op)".into(),
        }
        .into()),
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
    match device {
        Device::Cuda(c) => backward_allocation_on(c, "cuda", which, (t, n_in, n_out), ratio, seed),
        Device::Wgpu(c) => backward_allocation_on(c, "wgpu", which, (t, n_in, n_out), ratio, seed),
        Device::Reference => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "device allocations are measured on cuda or wgpu".into(),
        }),
    }
}

fn backward_allocation_on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    which: Backward,
    (t, n_in, n_out): (usize, usize, usize),
    ratio: f64,
    seed: u64,
) -> Result<u64, RuntimeError> {
    let device_err = |e: String| RuntimeError::Device { kind, message: e };
    let mut rng = SplitMix64::new(seed);
    let mut upload = |len: usize| -> Handle {
        let v: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
        client.create_from_slice(f32::as_bytes(&v))
    };
    let (x, w, dy) = (upload(t * n_in), upload(n_out * n_in), upload(t * n_out));
    let in_use = || -> Result<u64, RuntimeError> {
        cubecl::future::block_on(client.sync()).map_err(|e| device_err(format!("{e:?}")))?;
        client
            .memory_usage()
            .map(|u| u.bytes_in_use)
            .map_err(|e| device_err(format!("{e:?}")))
    };
    match which {
        Backward::Sara => {
            let spec = KernelSpec::builder("sara", OpKind::SaraLinear)
                .dims([("T", t), ("in", n_in), ("out", n_out)])
                .pattern(kernels_ir::pattern::Pattern::Sara(
                    kernels_ir::pattern::Sara {
                        select: kernels_ir::pattern::SaraSelect::Ratio(ratio),
                    },
                ))
                .build()?;
            let plan = SaraPlan::from_spec(&spec)?;
            let (index, nnz) = sara::mask::<R, f32>(client, &plan, &w).map_err(device_err)?;
            let before = in_use()?;
            let grads = sara::backward::<R, f32>(client, &plan, &x, &w, &index, nnz, &dy);
            let after = in_use()?;
            drop(grads);
            Ok(after.saturating_sub(before))
        }
        Backward::Dense => {
            let plan = LinearPlan::new(t, n_in, n_out, kernels_ir::Schedule::default().tile_k);
            let before = in_use()?;
            let grads = linear::backward::<R, f32>(client, &plan, &x, &w, &dy);
            let after = in_use()?;
            drop(grads);
            Ok(after.saturating_sub(before))
        }
    }
}

/// Which SaRA training step [`sara_step`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaraStep {
    /// Ours: forward on W_eff, backward with dv at the mask positions only, sparse AdamW
    /// (moments of nnz values).
    Sparse,
    /// What the paper's code does: the dense weight gradient dw [out, in] (then masked), on the
    /// same GEMM kernels.
    DenseGrad,
}

/// Times one SaRA training step at the sizes, rule and dtype of `spec` (a `sara-linear` spec) on
/// `device`, on N(0, 1/in) weights from `seed`; the mask is selected once, outside the timing.
pub fn sara_step(
    device: &Device,
    spec: &KernelSpec,
    which: SaraStep,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    let args = (spec, which, warmup, repeats, seed);
    on_device!(device, spec.dtype, sara_on, args)
}

fn sara_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    (spec, which, warmup, repeats, seed): (&KernelSpec, SaraStep, usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    let plan = SaraPlan::from_spec(spec)?;
    crate::execute::ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let (t, n_in, n_out) = (plan.t, plan.n_in, plan.n_out);
    let mut rng = SplitMix64::new(seed);
    let mut upload = |len: usize, std: f64| normal::<R, F>(client, &mut rng, len, std);
    let x = upload(t * n_in, 1.0);
    let w = upload(n_out * n_in, 1.0 / (n_in as f64).sqrt());
    let bias = upload(n_out, 0.1);
    let dy = upload(t * n_out, 1.0);
    let (index, nnz) = sara::mask::<R, F>(client, &plan, &w)
        .map_err(|message| RuntimeError::Device { kind, message })?;
    let v = sara::gather::<R, F>(client, &w, &index, nnz, plan.weights());
    let zeros = vec![0.0f32; nnz.max(1)];
    let m = client.create_from_slice(f32::as_bytes(&zeros));
    let s = client.create_from_slice(f32::as_bytes(&zeros));
    let h = sara::AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
    };
    let lin = plan.linear();
    let mut step = 0u32;
    match which {
        SaraStep::Sparse => timed(client, kind, warmup, repeats, 0, 4 * nnz, || {
            step += 1;
            sara::scatter::<R, F>(client, &w, &index, &v, nnz, plan.weights());
            let y = sara::forward::<R, F>(client, &plan, &x, &w, &bias);
            let g = sara::backward::<R, F>(client, &plan, &x, &w, &index, nnz, &dy);
            sara::adamw_step::<R, F>(client, &v, &g.dv, &m, &s, nnz, step, &h);
            (y, g)
        }),
        SaraStep::DenseGrad => timed(client, kind, warmup, repeats, 0, 0, || {
            step += 1;
            sara::scatter::<R, F>(client, &w, &index, &v, nnz, plan.weights());
            let y = linear::forward::<R, F>(client, &lin, &x, &w, &bias);
            let g = linear::backward::<R, F>(client, &lin, &x, &w, &dy);
            (y, g)
        }),
    }
}

/// Which PST training step [`pst_step`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PstStep {
    /// Ours: score, selection, masked GEMM forward, straight-through backward (every gradient).
    Masked,
    /// The dense linear of the same shape (forward + backward), the GEMM PST replaces.
    Dense,
}

/// Times one PST training step at the sizes, pattern and dtype of `spec` (a `pst-linear` spec)
/// on `device`, from `seed` (trained factors, so the selection is not trivial).
pub fn pst_step(
    device: &Device,
    spec: &KernelSpec,
    which: PstStep,
    warmup: usize,
    repeats: usize,
    seed: u64,
) -> Result<Measured, RuntimeError> {
    let args = (spec, which, warmup, repeats, seed);
    on_device!(device, spec.dtype, pst_on, args)
}

fn pst_on<R: Runtime, F: crate::execute::HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    (spec, which, warmup, repeats, seed): (&KernelSpec, PstStep, usize, usize, u64),
) -> Result<Measured, RuntimeError> {
    let plan = PstPlan::from_spec(spec)?;
    crate::execute::ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let (t, n_in, n_out, r, rm) = plan.sizes();
    let mut rng = SplitMix64::new(seed);
    let mut upload = |len: usize, std: f64| normal::<R, F>(client, &mut rng, len, std);
    let std = 1.0 / (n_in as f64).sqrt();
    let x = upload(t * n_in, 1.0);
    let dy = upload(t * n_out, 1.0);
    let bias = upload(n_out, 0.1);
    let f = pst::PstFactors {
        w: upload(n_out * n_in, std),
        u: upload(n_out * r, 0.1),
        v: upload(r * n_in, 0.1),
        ma: upload(n_out * rm, 0.1),
        mb: upload(rm * n_in, 0.1 * std),
        mr: upload(n_out, 0.1 * std),
        mc: upload(n_in, 0.1 * std),
    };
    match which {
        // Scratch within the step: the score (f32, [out, in]) and backward's dW', dS.
        PstStep::Masked => timed(client, kind, warmup, repeats, 8 * n_out * n_in, 0, || {
            let m = pst::select_mask::<R, F>(client, &plan, &f);
            let y = pst::forward::<R, F>(client, &plan, &x, &f, &m, &bias);
            let g = pst::backward::<R, F>(client, &plan, &x, &f, &m, &dy);
            (m, y, g)
        }),
        PstStep::Dense => {
            let lin = LinearPlan::new(t, n_in, n_out, plan.cfg.tk);
            linear_step::<R, F>(client, kind, &lin, [&x, &f.w, &bias, &dy], warmup, repeats)
        }
    }
}
