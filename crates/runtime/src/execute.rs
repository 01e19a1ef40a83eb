//! Running a verified spec on host tensors on a device: upload, launch the generated kernels,
//! read back. Ops without generated kernels yet are a clear error (use the reference device).

use crate::{Device, RuntimeError};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels_ir::reference::{self, IndexTensor, ReferenceError, Tensor, TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec, OpKind};
use sparsecube_codegen::{LowerError, blockdiag, cbm, dense, monarch, pst, routed, sara, spt};

/// Runs `spec` on `inputs` on `device` and returns the outputs its signature names.
pub fn run(
    device: &Device,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let spec = &crate::tune::resolve(device, spec);
    match device {
        Device::Reference => Ok(reference::run(spec, inputs)?),
        Device::Wgpu(client) => on_device(client, "wgpu", spec, inputs),
        Device::Cuda(client) => on_device(client, "cuda", spec, inputs),
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

fn on_device<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    reference::check_inputs(spec, inputs)?;
    let native_bf16 = client
        .properties()
        .supports_type(half::bf16::as_type_native_unchecked());
    // `$op::<R, F>` for the spec's storage dtype; bf16 where the adapter cannot store it is held
    // as f32 (see `bf16_as_f32`).
    macro_rules! per_dtype {
        ($op:ident) => {
            match spec.dtype {
                DType::F32 => $op::<R, f32>(client, kind, spec, inputs),
                DType::F16 => $op::<R, half::f16>(client, kind, spec, inputs),
                DType::BF16 if native_bf16 => $op::<R, half::bf16>(client, kind, spec, inputs),
                DType::BF16 => bf16_as_f32(inputs, |ins| $op::<R, f32>(client, kind, spec, ins)),
                DType::I64 => Err(LowerError::Unsupported {
                    op: spec.op,
                    what: "i64 storage".into(),
                }
                .into()),
            }
        };
    }
    match spec.op {
        OpKind::SptAttention => per_dtype!(spt_attention),
        OpKind::PqEncode => per_dtype!(pq_encode),
        OpKind::RoutedFfn => per_dtype!(routed_ffn),
        OpKind::CbmHead => per_dtype!(cbm_head),
        OpKind::DenseLinear => per_dtype!(dense_linear),
        OpKind::SaraLinear => per_dtype!(sara_linear),
        OpKind::PstLinear => per_dtype!(pst_linear),
        OpKind::Monarch => per_dtype!(monarch_op),
        OpKind::BlockDiagLinear => per_dtype!(block_diag_linear),
        // The projection is a truncated SVD per sub-block, a one-time conversion: it runs on the
        // host in f64 (reference quality, METHODS.md §3) whichever device is asked for.
        OpKind::MonarchProject => Ok(reference::run(spec, inputs)?),
    }
}

/// bf16 on an adapter without bf16 storage (WGSL has none): the bf16 values are held as f32 on
/// the device (exactly; twice the memory) and the outputs are rounded to bf16 on the way out, so
/// the results are those of bf16 storage.
fn bf16_as_f32(
    inputs: &TensorMap,
    run: impl FnOnce(&TensorMap) -> Result<TensorMap, RuntimeError>,
) -> Result<TensorMap, RuntimeError> {
    let rounded: TensorMap = inputs
        .iter()
        .map(|(n, v)| (n.clone(), round_bf16(v)))
        .collect();
    let out = run(&rounded)?;
    Ok(out
        .iter()
        .map(|(n, v)| (n.clone(), round_bf16(v)))
        .collect())
}

/// A typed error where the adapter cannot hold `F` (`dtype` is its name).
pub(crate) fn ensure_storable<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    dtype: DType,
) -> Result<(), RuntimeError> {
    if client
        .properties()
        .supports_type(F::as_type_native_unchecked())
    {
        Ok(())
    } else {
        Err(RuntimeError::Unavailable {
            kind,
            reason: format!("this adapter cannot store {dtype} (WGSL has no bf16)"),
        })
    }
}

/// `v` rounded to bf16 (index tensors unchanged).
fn round_bf16(v: &Value) -> Value {
    match v {
        Value::F(t) => Value::F(Tensor {
            shape: t.shape.clone(),
            data: t
                .data
                .iter()
                .map(|&x| half::bf16::from_f64(x).to_f64())
                .collect(),
        }),
        Value::I(_) => v.clone(),
    }
}

fn tensor<'a>(inputs: &'a TensorMap, name: &str) -> &'a Tensor {
    match inputs.get(name) {
        Some(Value::F(t)) => t,
        _ => unreachable!("check_inputs validated `{name}`"),
    }
}

fn upload<R: Runtime, F: HostFloat>(client: &ComputeClient<R>, t: &Tensor) -> Handle {
    let values: Vec<F> = t.data.iter().map(|&v| F::from_f64(v)).collect();
    client.create_from_slice(F::as_bytes(&values))
}

/// Waits for queued work and turns a failed launch (compilation, validation) into an error
/// rather than returning stale buffer contents.
fn sync<R: Runtime>(client: &ComputeClient<R>, kind: &'static str) -> Result<(), RuntimeError> {
    cubecl::future::block_on(client.sync()).map_err(|e| RuntimeError::Device {
        kind,
        message: format!("{e:?}"),
    })
}

fn download<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    h: Handle,
    shape: Vec<usize>,
) -> Result<Tensor, RuntimeError> {
    let bytes = client.read_one(h).map_err(|e| RuntimeError::Device {
        kind,
        message: format!("{e:?}"),
    })?;
    let data = F::from_bytes(&bytes)
        .iter()
        .map(|v| HostFloat::to_f64(*v))
        .collect();
    Ok(Tensor::new(shape, data)?)
}

/// Downloads each `(name, handle, shape)` into `out` as a float tensor of dtype `F`.
fn download_into<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    out: &mut TensorMap,
    items: impl IntoIterator<Item = (&'static str, Handle, Vec<usize>)>,
) -> Result<(), RuntimeError> {
    for (name, h, shape) in items {
        out.insert(
            name.into(),
            Value::F(download::<R, F>(client, kind, h, shape)?),
        );
    }
    Ok(())
}

/// An i32 index tensor on the device, as the i64 `IndexTensor` the outputs hold.
fn download_indices<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    h: Handle,
    shape: Vec<usize>,
) -> Result<IndexTensor, RuntimeError> {
    let bytes = client.read_one(h).map_err(|e| RuntimeError::Device {
        kind,
        message: format!("{e:?}"),
    })?;
    let data = i32::from_bytes(&bytes)
        .iter()
        .map(|&j| i64::from(j))
        .collect();
    Ok(IndexTensor::new(shape, data)?)
}

fn spt_attention<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = spt::SptPlan::from_spec(spec)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let [q, k, v, cb] =
        ["q", "k", "v", "codebook"].map(|n| upload::<R, F>(client, tensor(inputs, n)));
    let shape = tensor(inputs, "q").shape.clone();
    let saved = spt::forward::<R, F>(client, &plan, &q, &k, &v, &cb);
    sync(client, kind)?;
    let mut out = TensorMap::new();
    match spec.direction {
        Direction::Forward => {
            out.insert(
                "out".into(),
                Value::F(download::<R, F>(
                    client,
                    kind,
                    saved.out.clone(),
                    shape.clone(),
                )?),
            );
            let mut ishape = shape;
            ishape[3] = plan.cfg.topk as usize;
            out.insert(
                "indices".into(),
                Value::I(download_indices(
                    client,
                    kind,
                    saved.indices.clone(),
                    ishape,
                )?),
            );
        }
        Direction::Backward => {
            let dout = upload::<R, F>(client, tensor(inputs, "dout"));
            let g = spt::backward::<R, F>(client, &plan, &q, &k, &v, &saved, &dout);
            sync(client, kind)?;
            for (name, h) in [("dq", g.dq), ("dk", g.dk), ("dv", g.dv)] {
                out.insert(
                    name.into(),
                    Value::F(download::<R, F>(client, kind, h, shape.clone())?),
                );
            }
        }
    }
    Ok(out)
}

fn routed_ffn<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = routed::RoutedPlan::from_spec(spec)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let [x, w1, b1, w2, b2, wr, br] = ["x", "w1", "b1", "w2", "b2", "wr", "br"]
        .map(|n| upload::<R, F>(client, tensor(inputs, n)));
    let saved = routed::forward::<R, F>(client, &plan, &x, &w1, &b1, &w2, &b2, &wr, &br);
    sync(client, kind)?;
    let (t, dm) = (plan.t, plan.cfg.dm as usize);
    let mut out = TensorMap::new();
    match spec.direction {
        Direction::Forward => {
            out.insert(
                "y".into(),
                Value::F(download::<R, F>(
                    client,
                    kind,
                    saved.y.clone(),
                    vec![t, dm],
                )?),
            );
            out.insert(
                "blocks".into(),
                Value::I(download_indices(
                    client,
                    kind,
                    saved.blocks.clone(),
                    vec![t, plan.cfg.top as usize],
                )?),
            );
        }
        Direction::Backward => {
            let dy = upload::<R, F>(client, tensor(inputs, "dy"));
            let g = routed::backward::<R, F>(client, &plan, &x, &w1, &w2, &wr, &saved, &dy);
            sync(client, kind)?;
            let (dff, e_n) = (plan.dff(), plan.cfg.blocks as usize);
            download_into::<R, F>(
                client,
                kind,
                &mut out,
                [
                    ("dx", g.dx, vec![t, dm]),
                    ("dw1", g.dw1, vec![dff, dm]),
                    ("db1", g.db1, vec![dff]),
                    ("dw2", g.dw2, vec![dm, dff]),
                    ("db2", g.db2, vec![dm]),
                    ("dwr", g.dwr, vec![e_n, dm]),
                    ("dbr", g.dbr, vec![e_n]),
                ],
            )?;
        }
    }
    Ok(out)
}

fn dense_linear<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    spec.verify()?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let plan = dense::LinearPlan::from_spec(spec);
    let (n, n_in, n_out) = (plan.n, plan.cfg.n_in as usize, plan.cfg.n_out as usize);
    let [x, w, bias] = ["x", "w", "bias"].map(|n| upload::<R, F>(client, tensor(inputs, n)));
    let mut out = TensorMap::new();
    match spec.direction {
        Direction::Forward => {
            let y = dense::forward::<R, F>(client, &plan, &x, &w, &bias);
            sync(client, kind)?;
            out.insert(
                "y".into(),
                Value::F(download::<R, F>(client, kind, y, vec![n, n_out])?),
            );
        }
        Direction::Backward => {
            let dy = upload::<R, F>(client, tensor(inputs, "dy"));
            let (dx, dw, dbias) = dense::backward::<R, F>(client, &plan, &x, &w, &dy);
            sync(client, kind)?;
            download_into::<R, F>(
                client,
                kind,
                &mut out,
                [
                    ("dx", dx, vec![n, n_in]),
                    ("dw", dw, vec![n_out, n_in]),
                    ("dbias", dbias, vec![n_out]),
                ],
            )?;
        }
    }
    Ok(out)
}

fn sara_linear<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = sara::SaraPlan::from_spec(spec)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let device = |message: String| RuntimeError::Device { kind, message };
    let [x, w, bias] = ["x", "w", "bias"].map(|n| upload::<R, F>(client, tensor(inputs, n)));
    let len = plan.weights();
    let (index, nnz) = sara::mask::<R, F>(client, &plan, &w).map_err(device)?;
    let v = match inputs.get("v") {
        Some(_) => {
            let given = tensor(inputs, "v");
            if given.numel() != nnz {
                return Err(kernels_ir::reference::ReferenceError::ShapeMismatch {
                    name: "v".into(),
                    expected: format!("[{nnz}] (nnz of the mask)"),
                    actual: given.shape.clone(),
                }
                .into());
            }
            upload::<R, F>(client, given)
        }
        None => sara::gather::<R, F>(client, &w, &index, nnz, len),
    };
    // `w` is this call's own copy: it becomes W_eff in place.
    sara::scatter::<R, F>(client, &w, &index, &v, nnz, len);
    let mut out = TensorMap::new();
    match spec.direction {
        Direction::Forward => {
            let y = sara::forward::<R, F>(client, &plan, &x, &w, &bias);
            sync(client, kind)?;
            out.insert(
                "y".into(),
                Value::F(download::<R, F>(client, kind, y, vec![plan.t, plan.n_out])?),
            );
            let index = if nnz == 0 {
                Vec::new()
            } else {
                u32::from_bytes(
                    &client
                        .read_one(index)
                        .map_err(|e| device(format!("{e:?}")))?,
                )
                .iter()
                .map(|&i| i64::from(i))
                .collect()
            };
            out.insert(
                "mask_index".into(),
                Value::I(IndexTensor::new(vec![nnz], index)?),
            );
            out.insert(
                "v".into(),
                Value::F(download_len::<R, F>(client, kind, v, nnz)?),
            );
        }
        Direction::Backward => {
            let dy = upload::<R, F>(client, tensor(inputs, "dy"));
            let g = sara::backward::<R, F>(client, &plan, &x, &w, &index, nnz, &dy);
            sync(client, kind)?;
            out.insert(
                "dx".into(),
                Value::F(download::<R, F>(
                    client,
                    kind,
                    g.dx,
                    vec![plan.t, plan.n_in],
                )?),
            );
            out.insert(
                "dbias".into(),
                Value::F(download::<R, F>(client, kind, g.dbias, vec![plan.n_out])?),
            );
            out.insert(
                "dv".into(),
                Value::F(download_len::<R, F>(client, kind, g.dv, nnz)?),
            );
        }
    }
    Ok(out)
}

/// A 1-D tensor of `len` values (a placeholder handle when `len` = 0).
fn download_len<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    h: Handle,
    len: usize,
) -> Result<Tensor, RuntimeError> {
    if len == 0 {
        return Ok(Tensor::new(vec![0], Vec::new())?);
    }
    let t = download::<R, F>(client, kind, h, vec![len])?;
    Ok(t)
}

fn pst_linear<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = pst::PstPlan::from_spec(spec)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let up = |n: &str| upload::<R, F>(client, tensor(inputs, n));
    let factors = pst::PstFactors {
        w: up("w"),
        u: up("u"),
        v: up("v"),
        ma: up("ma"),
        mb: up("mb"),
        mr: up("mr"),
        mc: up("mc"),
    };
    let (x, bias) = (up("x"), up("bias"));
    let (t, n_in, n_out, r, rm) = plan.sizes();
    let mask = pst::select_mask::<R, F>(client, &plan, &factors);
    let mut out = TensorMap::new();
    match spec.direction {
        Direction::Forward => {
            let y = pst::forward::<R, F>(client, &plan, &x, &factors, &mask, &bias);
            let m = pst::mask_values::<R, F>(client, &plan, &mask);
            sync(client, kind)?;
            download_into::<R, F>(
                client,
                kind,
                &mut out,
                [("y", y, vec![t, n_out]), ("mask", m, vec![n_out, n_in])],
            )?;
        }
        Direction::Backward => {
            let dy = up("dy");
            let g = pst::backward::<R, F>(client, &plan, &x, &factors, &mask, &dy);
            sync(client, kind)?;
            download_into::<R, F>(
                client,
                kind,
                &mut out,
                [
                    ("dx", g.dx, vec![t, n_in]),
                    ("dbias", g.dbias, vec![n_out]),
                    ("du", g.du, vec![n_out, r]),
                    ("dv", g.dv, vec![r, n_in]),
                    ("dma", g.dma, vec![n_out, rm]),
                    ("dmb", g.dmb, vec![rm, n_in]),
                    ("dmr", g.dmr, vec![n_out]),
                    ("dmc", g.dmc, vec![n_in]),
                ],
            )?;
        }
    }
    Ok(out)
}

fn monarch_op<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = monarch::MonarchPlan::from_spec(spec)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let [x, w1, w2] = ["x", "w1", "w2"].map(|n| upload::<R, F>(client, tensor(inputs, n)));
    let backward = spec.direction == Direction::Backward;
    let saved = monarch::forward::<R, F>(client, &plan, &x, &w1, &w2, backward);
    let mut out = TensorMap::new();
    if backward {
        let dy = upload::<R, F>(client, tensor(inputs, "dy"));
        let g = monarch::backward::<R, F>(client, &plan, &x, &w1, &w2, &saved.u, &dy);
        sync(client, kind)?;
        for (name, h, like) in [
            ("dx", g.dx, "x"),
            ("dw1", g.dw1, "w1"),
            ("dw2", g.dw2, "w2"),
        ] {
            let shape = tensor(inputs, like).shape.clone();
            out.insert(
                name.into(),
                Value::F(download::<R, F>(client, kind, h, shape)?),
            );
        }
    } else {
        sync(client, kind)?;
        let (n, _, _, n_out) = plan.sizes();
        out.insert(
            "y".into(),
            Value::F(download::<R, F>(client, kind, saved.y, vec![n, n_out])?),
        );
    }
    Ok(out)
}

fn pq_encode<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = spt::EncodePlan::from_spec(spec)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let [x, codebook] = ["x", "codebook"].map(|n| upload::<R, F>(client, tensor(inputs, n)));
    let codes = spt::encode::<R, F>(client, &plan, &x, &codebook);
    sync(client, kind)?;
    let mut out = TensorMap::new();
    out.insert(
        "codes".into(),
        Value::I(download_indices(
            client,
            kind,
            codes,
            vec![plan.n, plan.cfg.s as usize],
        )?),
    );
    Ok(out)
}

fn block_diag_linear<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = blockdiag::BlockDiagPlan::from_spec(spec)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let [x, w] = ["x", "w"].map(|n| upload::<R, F>(client, tensor(inputs, n)));
    let (n, n_in, n_out) = plan.sizes();
    let mut out = TensorMap::new();
    match spec.direction {
        Direction::Forward => {
            let y = blockdiag::forward::<R, F>(client, &plan, &x, &w);
            sync(client, kind)?;
            out.insert(
                "y".into(),
                Value::F(download::<R, F>(client, kind, y, vec![n, n_out])?),
            );
        }
        Direction::Backward => {
            let dy = upload::<R, F>(client, tensor(inputs, "dy"));
            let (dx, dw) = blockdiag::backward::<R, F>(client, &plan, &x, &w, &dy);
            sync(client, kind)?;
            let w_shape = tensor(inputs, "w").shape.clone();
            download_into::<R, F>(
                client,
                kind,
                &mut out,
                [("dx", dx, vec![n, n_in]), ("dw", dw, w_shape)],
            )?;
        }
    }
    Ok(out)
}

fn cbm_head<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let noise = inputs.get("noise").is_some();
    let plan = cbm::CbmPlan::from_spec(spec, noise)?;
    ensure_storable::<R, F>(client, kind, spec.dtype)?;
    let [x, wc, wh] = ["x", "wc", "wh"].map(|n| upload::<R, F>(client, tensor(inputs, n)));
    // Without noise the kernel never reads it; any one-element buffer stands in.
    let noise_h = if noise {
        upload::<R, F>(client, tensor(inputs, "noise"))
    } else {
        client.create_from_slice(F::as_bytes(&[F::from_f64(0.0)]))
    };
    let saved = cbm::forward::<R, F>(client, &plan, &x, &wc, &wh, &noise_h);
    sync(client, kind)?;
    let (b, c, k) = (plan.b, plan.cfg.c as usize, plan.cfg.k as usize);
    let mut out = TensorMap::new();
    match spec.direction {
        Direction::Forward => {
            // z is kept in f32 on the device; the op's `z` is in the storage dtype.
            let z = download::<R, f32>(client, kind, saved.z.clone(), vec![b, c])?;
            let z = Tensor {
                shape: z.shape,
                data: z.data.iter().map(|&v| F::from_f64(v).to_f64()).collect(),
            };
            out.insert("z".into(), Value::F(z));
            out.insert(
                "logits".into(),
                Value::F(download::<R, F>(
                    client,
                    kind,
                    saved.logits.clone(),
                    vec![b, k],
                )?),
            );
        }
        Direction::Backward => {
            let dlogits = upload::<R, F>(client, tensor(inputs, "dlogits"));
            let g = cbm::backward::<R, F>(client, &plan, &x, &wc, &wh, &saved, &dlogits);
            sync(client, kind)?;
            download_into::<R, F>(
                client,
                kind,
                &mut out,
                [
                    ("dx", g.dx, vec![b, c]),
                    ("dwc", g.dwc, vec![c, c]),
                    ("dwh", g.dwh, vec![k, c]),
                ],
            )?;
        }
    }
    Ok(out)
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
        Device::Wgpu(client) => dense_on::<_>(client, "wgpu", spec, inputs),
        Device::Cuda(client) => dense_on::<_>(client, "cuda", spec, inputs),
        Device::Reference => Err(LowerError::Unsupported {
            op: spec.op,
            what: "the dense baseline on the reference device".into(),
        }
        .into()),
    }
}

fn dense_on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    spec: &KernelSpec,
    inputs: &TensorMap,
) -> Result<TensorMap, RuntimeError> {
    let plan = spt::SptPlan::from_spec(spec)?;
    check_dense_inputs(spec, inputs)?;
    let [q, k, v, dout] =
        ["q", "k", "v", "dout"].map(|n| upload::<R, f32>(client, tensor(inputs, n)));
    let shape = tensor(inputs, "q").shape.clone();
    let (out, g) = spt::dense_forward_backward::<R, f32>(client, &plan, &q, &k, &v, &dout);
    sync(client, kind)?;
    let mut map = TensorMap::new();
    for (name, h) in [("out", out), ("dq", g.dq), ("dk", g.dk), ("dv", g.dv)] {
        map.insert(
            name.into(),
            Value::F(download::<R, f32>(client, kind, h, shape.clone())?),
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
