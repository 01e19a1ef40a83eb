//! Running a verified spec on host tensors on a device: lower it to its plans, upload the inputs
//! the plans bind, execute the forward (and the backward, binding the forward's saved buffers),
//! and read back the outputs the spec's signature names. Nothing here is op-specific: every op
//! is its plans.

use crate::exec::{self, Executed, Mode};
use crate::{Device, RuntimeError};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels_ir::reference::{self, IndexTensor, ReferenceError, Tensor, TensorMap, Value};
use kernels_ir::{DType, KernelSpec, OpKind, Role as SigRole};
use sparsecube_codegen::plan::{Elem, LaunchPlan, LowerOptions, Lowering, lower};
use sparsecube_codegen::{LowerError, spt};
use std::collections::BTreeMap;

/// Runs `spec` on `inputs` on `device` and returns the outputs its signature names.
pub fn run(
    device: &Device,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    run_with(device, spec, inputs, Mode::from_env())
}

/// [`run`] with launches checked or unchecked as `mode` says.
pub fn run_with(
    device: &Device,
    spec: &KernelSpec,
    inputs: &TensorMap,
    mode: Mode,
) -> Result<TensorMap, RuntimeError> {
    let spec = &crate::tune::resolve(device, spec);
    match device {
        Device::Reference => Ok(reference::run(spec, inputs)?),
        Device::Wgpu(client) => on_device(client, "wgpu", spec, inputs, mode),
        Device::Cuda(client) => on_device(client, "cuda", spec, inputs, mode),
    }
}

/// A storage dtype the host converts to and from f64.
pub(crate) trait HostFloat: Float + CubeElement {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl HostFloat for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl HostFloat for half::f16 {
    fn from_f64(v: f64) -> Self {
        half::f16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }
}

impl HostFloat for half::bf16 {
    fn from_f64(v: f64) -> Self {
        half::bf16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        half::bf16::to_f64(self)
    }
}

/// Whether the adapter stores `dtype` natively.
pub(crate) fn stores<R: Runtime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    match dtype {
        DType::F32 | DType::I64 => true,
        DType::F16 => client
            .properties()
            .supports_type(half::f16::as_type_native_unchecked()),
        DType::BF16 => client
            .properties()
            .supports_type(half::bf16::as_type_native_unchecked()),
    }
}

/// The spec a device runs for `spec`: bf16 on an adapter without bf16 storage (WGSL has none) is
/// held as f32 on the device (exactly; twice the memory), the results rounded to bf16 on the way
/// out — so they are those of bf16 storage. Other dtypes the adapter cannot store are an error.
pub(crate) fn device_spec<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
) -> Result<(KernelSpec, bool), RuntimeError> {
    if stores(client, spec.dtype) {
        return Ok((spec.clone(), false));
    }
    if spec.dtype == DType::BF16 {
        let mut s = spec.clone();
        s.dtype = DType::F32;
        return Ok((s, true));
    }
    Err(RuntimeError::Unavailable {
        kind,
        reason: format!("this adapter cannot store {}", spec.dtype),
    })
}

/// The plans of `spec` for this device, with the optional inputs `inputs` holds.
pub(crate) fn lower_for<R: Runtime>(
    client: &ComputeClient<R>,
    spec: &KernelSpec,
    given: &[&str],
    nnz: Option<usize>,
) -> Result<Lowering, RuntimeError> {
    let mut opts = LowerOptions::new(exec::limits(client)).given(given.iter().copied());
    opts.nnz = nnz;
    Ok(lower(spec, &opts)?)
}

fn on_device<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
    mode: Mode,
) -> Result<TensorMap, RuntimeError> {
    reference::check_inputs(spec, inputs)?;
    if spec.op == OpKind::MonarchProject {
        // The projection is a truncated SVD per sub-block, a one-time conversion: it runs on the
        // host in f64 (reference quality, METHODS.md §3) whichever device is asked for.
        return Ok(reference::run(spec, inputs)?);
    }
    let (dspec, bf16_as_f32) = device_spec(client, kind, spec)?;
    let rounded: TensorMap;
    let inputs = if bf16_as_f32 {
        rounded = inputs
            .iter()
            .map(|(n, v)| (n.clone(), round_to(v, DType::BF16)))
            .collect();
        &rounded
    } else {
        inputs
    };
    let signature = spec.tensors()?;
    let given: Vec<&str> = signature
        .iter()
        .filter(|t| t.optional && inputs.contains_key(&t.name))
        .map(|t| t.name.as_str())
        .collect();
    let lowering = lower_for(client, &dspec, &given, None)?;
    for plan in lowering.plans() {
        check_shapes(plan, inputs, &signature)?;
    }
    let mut handles: BTreeMap<String, Handle> = BTreeMap::new();
    let fwd = run_plan(
        client,
        kind,
        &lowering.forward,
        inputs,
        &mut handles,
        None,
        mode,
    )?;
    let last = match &lowering.backward {
        Some(plan) => run_plan(client, kind, plan, inputs, &mut handles, Some(&fwd), mode)?,
        None => fwd,
    };
    exec::sync(client, kind)?;
    let mut out = TensorMap::new();
    for t in signature.iter().filter(|t| t.role == SigRole::Output) {
        let value = match last.buffers.get(&t.name) {
            Some(r) => download(client, kind, &r.handle, r.elem, &r.shape, dspec.dtype)?,
            // An output the op echoes from its inputs (SaRA's and N:M's given `v`).
            None => inputs
                .get(&t.name)
                .cloned()
                .ok_or_else(|| malformed_outputs(spec, &t.name))?,
        };
        let value = match value {
            Value::F(_) => round_to(&value, spec.dtype),
            v => v,
        };
        out.insert(t.name.clone(), value);
    }
    Ok(out)
}

/// Every input `plan` binds from `inputs` has the shape its buffer table gives (a count known
/// only on the device is checked by the executor once it is read back). The message says when
/// the length is the mask's nnz.
fn check_shapes(
    plan: &LaunchPlan,
    inputs: &TensorMap,
    signature: &[kernels_ir::TensorSpec],
) -> Result<(), RuntimeError> {
    for buf in plan.inputs().into_iter().filter(|b| b.is_fixed()) {
        let Some(v) = inputs.get(&buf.name) else {
            continue;
        };
        let want = buf.dims(0);
        if v.shape() != want.as_slice() {
            let nnz = signature
                .iter()
                .any(|t| t.name == buf.name && t.shape.contains(&kernels_ir::Extent::Nnz));
            return Err(ReferenceError::ShapeMismatch {
                name: buf.name.clone(),
                expected: format!("{want:?}{}", if nnz { " (nnz of the mask)" } else { "" }),
                actual: v.shape().to_vec(),
            }
            .into());
        }
    }
    Ok(())
}

fn malformed_outputs(spec: &KernelSpec, name: &str) -> RuntimeError {
    LowerError::Unsupported {
        op: spec.op,
        what: format!("the output `{name}` (no plan returns it)"),
    }
    .into()
}

/// Uploads the inputs `plan` binds from `inputs` (reusing `handles` uploaded by an earlier plan)
/// or takes them from the forward's returned buffers `fwd`, and executes it.
fn run_plan<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    plan: &LaunchPlan,
    inputs: &TensorMap,
    handles: &mut BTreeMap<String, Handle>,
    fwd: Option<&Executed>,
    mode: Mode,
) -> Result<Executed, RuntimeError> {
    let mut bound = BTreeMap::new();
    for buf in plan.inputs() {
        let name = &buf.name;
        let h = if let Some(r) = fwd.and_then(|f| f.buffers.get(name)) {
            r.handle.clone()
        } else if let Some(h) = handles.get(name) {
            h.clone()
        } else if let Some(v) = inputs.get(name) {
            let h = upload(client, v, buf.elem, plan.dtype);
            handles.insert(name.clone(), h.clone());
            h
        } else {
            return Err(ReferenceError::MissingTensor {
                op: plan.op,
                name: name.clone(),
                expected: sparsecube_codegen::plan::shape_text(&buf.shape),
            }
            .into());
        };
        bound.insert(name.clone(), h);
    }
    exec::execute(client, kind, plan, &bound, mode)
}

/// `v` uploaded as `elem` (the storage dtype `dtype`, or indices).
pub(crate) fn upload<R: Runtime>(
    client: &ComputeClient<R>,
    v: &Value,
    elem: Elem,
    dtype: DType,
) -> Handle {
    fn floats<R: Runtime, F: HostFloat>(client: &ComputeClient<R>, data: &[f64]) -> Handle {
        let values: Vec<F> = data.iter().map(|&v| F::from_f64(v)).collect();
        if values.is_empty() {
            return client.create_from_slice(F::as_bytes(&[F::from_f64(0.0)]));
        }
        client.create_from_slice(F::as_bytes(&values))
    }
    match (v, elem) {
        (Value::F(t), Elem::F32) => floats::<R, f32>(client, &t.data),
        (Value::F(t), _) => match dtype {
            DType::F16 => floats::<R, half::f16>(client, &t.data),
            DType::BF16 => floats::<R, half::bf16>(client, &t.data),
            _ => floats::<R, f32>(client, &t.data),
        },
        (Value::I(t), Elem::I32) => {
            let v: Vec<i32> = t.data.iter().map(|&i| i as i32).collect();
            client.create_from_slice(i32::as_bytes(if v.is_empty() { &[0] } else { &v }))
        }
        (Value::I(t), _) => {
            let v: Vec<u32> = t.data.iter().map(|&i| i as u32).collect();
            client.create_from_slice(u32::as_bytes(if v.is_empty() { &[0] } else { &v }))
        }
    }
}

/// Reads `h` back as a host tensor of `shape`: floats (storage dtype `dtype` or f32) as f64,
/// indices as i64.
pub(crate) fn download<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    h: &Handle,
    elem: Elem,
    shape: &[usize],
    dtype: DType,
) -> Result<Value, RuntimeError> {
    let n: usize = shape.iter().product();
    let bytes = if n == 0 {
        Vec::new()
    } else {
        client
            .read_one(h.clone())
            .map_err(|e| RuntimeError::Device {
                kind,
                message: format!("{e:?}"),
            })?
            .to_vec()
    };
    fn floats<F: HostFloat>(bytes: &[u8], n: usize) -> Vec<f64> {
        if n == 0 {
            return Vec::new();
        }
        F::from_bytes(bytes)[..n]
            .iter()
            .map(|v| HostFloat::to_f64(*v))
            .collect()
    }
    let shape = shape.to_vec();
    Ok(match elem {
        Elem::F32 => Value::F(Tensor::new(shape, floats::<f32>(&bytes, n))?),
        Elem::Storage => {
            let data = match dtype {
                DType::F16 => floats::<half::f16>(&bytes, n),
                DType::BF16 => floats::<half::bf16>(&bytes, n),
                _ => floats::<f32>(&bytes, n),
            };
            Value::F(Tensor::new(shape, data)?)
        }
        Elem::U32 => {
            let data = if n == 0 {
                Vec::new()
            } else {
                u32::from_bytes(&bytes)[..n]
                    .iter()
                    .map(|&i| i64::from(i))
                    .collect()
            };
            Value::I(IndexTensor::new(shape, data)?)
        }
        Elem::I32 => {
            let data = if n == 0 {
                Vec::new()
            } else {
                i32::from_bytes(&bytes)[..n]
                    .iter()
                    .map(|&i| i64::from(i))
                    .collect()
            };
            Value::I(IndexTensor::new(shape, data)?)
        }
    })
}

/// `v` rounded to `dtype` (index tensors unchanged).
fn round_to(v: &Value, dtype: DType) -> Value {
    match (v, dtype) {
        (Value::F(t), DType::F16) => Value::F(Tensor {
            shape: t.shape.clone(),
            data: t
                .data
                .iter()
                .map(|&x| half::f16::from_f64(x).to_f64())
                .collect(),
        }),
        (Value::F(t), DType::BF16) => Value::F(Tensor {
            shape: t.shape.clone(),
            data: t
                .data
                .iter()
                .map(|&x| half::bf16::from_f64(x).to_f64())
                .collect(),
        }),
        (Value::F(t), DType::F32) => Value::F(Tensor {
            shape: t.shape.clone(),
            data: t.data.iter().map(|&x| (x as f32) as f64).collect(),
        }),
        _ => v.clone(),
    }
}

/// Dense attention (every candidate kept) on `device`, forward and backward, f32: the baseline
/// that sparse attention is benchmarked against. `inputs` hold `q`, `k`, `v`, `dout`
/// [B, H, L, D]; `spec` gives the sizes and the causal flag. Returns `out`, `dq`, `dk`, `dv`.
pub fn dense_attention(
    device: &Device,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    match device {
        Device::Wgpu(client) => dense_on(client, "wgpu", spec, inputs),
        Device::Cuda(client) => dense_on(client, "cuda", spec, inputs),
        Device::Reference => Err(LowerError::Unsupported {
            op: spec.op,
            what: "the dense baseline on the reference device".into(),
        }
        .into()),
    }
}

/// The dense attention baseline's plans for `spec` (an `spt-attention` spec, f32) on `client`.
pub(crate) fn dense_lowering<R: Runtime>(
    client: &ComputeClient<R>,
    spec: &KernelSpec,
) -> Result<Lowering, RuntimeError> {
    let mut spec = spec.clone();
    spec.dtype = DType::F32;
    spec.direction = kernels_ir::Direction::Backward;
    spec.verify()?;
    let opts = LowerOptions::new(exec::limits(client));
    let ctx = sparsecube_codegen::plan::lower::Ctx {
        spec: &spec,
        opts: &opts,
        shape: sparsecube_codegen::tile::shape(&spec.schedule, spec.op, spec.dtype, &opts.device)?,
        backward: true,
    };
    Ok(spt::lower_dense(&ctx)?)
}

fn dense_on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    check_dense_inputs(spec, inputs)?;
    let lowering = dense_lowering(client, spec)?;
    let mode = Mode::from_env();
    let mut handles = BTreeMap::new();
    let fwd = run_plan(
        client,
        kind,
        &lowering.forward,
        inputs,
        &mut handles,
        None,
        mode,
    )?;
    let bwd = match &lowering.backward {
        Some(plan) => run_plan(client, kind, plan, inputs, &mut handles, Some(&fwd), mode)?,
        // Unreachable from input: `dense_baseline` always builds a backward spec.
        None => unreachable!("the dense baseline is lowered with its backward"),
    };
    exec::sync(client, kind)?;
    let mut map = TensorMap::new();
    for (name, from) in [("out", &fwd), ("dq", &bwd), ("dk", &bwd), ("dv", &bwd)] {
        let r = &from.buffers[name];
        map.insert(
            name.into(),
            download(client, kind, &r.handle, r.elem, &r.shape, DType::F32)?,
        );
    }
    Ok(map)
}

/// `q`, `k`, `v` and `dout` present, floating-point, of shape [B, H, L, D].
fn check_dense_inputs(spec: &KernelSpec, inputs: &TensorMap) -> Result<(), RuntimeError> {
    let shape: Vec<usize> = ["B", "H", "L", "D"].iter().map(|n| spec.dim(n)).collect();
    for name in ["q", "k", "v", "dout"] {
        match inputs.get(name) {
            Some(Value::F(t)) if t.shape == shape => {}
            Some(Value::F(t)) => {
                return Err(ReferenceError::ShapeMismatch {
                    name: name.into(),
                    expected: format!("{shape:?}"),
                    actual: t.shape.clone(),
                }
                .into());
            }
            Some(Value::I(_)) => {
                return Err(ReferenceError::WrongKind {
                    name: name.into(),
                    expected: "floating-point".into(),
                }
                .into());
            }
            None => {
                return Err(ReferenceError::MissingTensor {
                    op: spec.op,
                    name: name.into(),
                    expected: format!("{shape:?}"),
                }
                .into());
            }
        }
    }
    Ok(())
}
