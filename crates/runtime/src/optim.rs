//! Optimizer steps on the device over packed trainable values (SaRA's sparse AdamW: state size
//! = nnz, never a dense [out, in] moment), and SaRA's progressive re-masking, which carries the
//! optimizer state of every surviving position.

use crate::exec::{self, Mode};
use crate::{Device, RuntimeError};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels_ir::DType;
use kernels_ir::pattern::SaraSelect;
use sparsecube_codegen::sara::{self, AdamW};
use std::collections::BTreeMap;

/// Packed values and their two f32 moments, host side.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    /// The trainable values.
    pub v: Vec<f32>,
    /// First moments.
    pub m: Vec<f32>,
    /// Second moments.
    pub s: Vec<f32>,
}

/// Runs `steps` AdamW steps (numbered from `first_step`, PyTorch's formulation) on `device` over
/// `state`, with gradient `grads[i]` at step i, and returns the new state. Every buffer is nnz
/// long.
pub fn sparse_adamw(
    device: &Device,
    state: &AdamState,
    grads: &[Vec<f32>],
    first_step: u32,
    h: &AdamW,
) -> Result<AdamState, RuntimeError> {
    let n = state.v.len();
    if state.m.len() != n || state.s.len() != n || grads.iter().any(|g| g.len() != n) {
        return Err(kernels_ir::reference::ReferenceError::ShapeMismatch {
            name: "adamw state".into(),
            expected: format!("v, m, s and every gradient of length {n}"),
            actual: vec![state.m.len(), state.s.len()],
        }
        .into());
    }
    match device {
        Device::Cuda(c) => on(c, "cuda", state, grads, first_step, h),
        Device::Wgpu(c) => on(c, "wgpu", state, grads, first_step, h),
        Device::Reference => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "the device optimizer runs on cuda or wgpu (the reference has its own)".into(),
        }),
    }
}

fn on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    state: &AdamState,
    grads: &[Vec<f32>],
    first_step: u32,
    h: &AdamW,
) -> Result<AdamState, RuntimeError> {
    let n = state.v.len();
    let up =
        |x: &[f32]| client.create_from_slice(f32::as_bytes(if x.is_empty() { &[0.0] } else { x }));
    let (v, m, s) = (up(&state.v), up(&state.m), up(&state.s));
    for (i, g) in grads.iter().enumerate() {
        let plan = sara::adamw_plan(DType::F32, n, first_step + i as u32, h);
        let bound: BTreeMap<String, Handle> = [
            ("v", v.clone()),
            ("dv", up(g)),
            ("m", m.clone()),
            ("s", s.clone()),
        ]
        .into_iter()
        .map(|(k, h)| (k.to_string(), h))
        .collect();
        exec::execute(client, kind, &plan, &bound, Mode::from_env())?;
    }
    let down = |handle| -> Result<Vec<f32>, RuntimeError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let bytes = client.read_one(handle).map_err(|e| RuntimeError::Device {
            kind,
            message: format!("{e:?}"),
        })?;
        Ok(f32::from_bytes(&bytes)[..n].to_vec())
    };
    Ok(AdamState {
        v: down(v)?,
        m: down(m)?,
        s: down(s)?,
    })
}

/// SaRA's packed trainable set of one weight: the mask (ascending flat indices), the values and
/// the AdamW moments, host side.
#[derive(Clone, Debug, PartialEq)]
pub struct SaraSet {
    /// Flat indices of the retrained weights, ascending.
    pub index: Vec<u32>,
    /// Values and moments, one per index.
    pub state: AdamState,
}

/// Progressive re-masking on `device` (METHODS.md §4): the mask recomputed by `select` on the
/// current effective weight `w_eff` [out, in] (row-major, f32), the packed values read from it,
/// and the moments of every surviving position carried over from `old` (new positions start at
/// zero).
pub fn sara_remask(
    device: &Device,
    w_eff: &[f32],
    shape: [usize; 2],
    select: SaraSelect,
    old: &SaraSet,
) -> Result<SaraSet, RuntimeError> {
    let len = shape[0] * shape[1];
    let n = old.index.len();
    if w_eff.len() != len
        || old.state.v.len() != n
        || old.state.m.len() != n
        || old.state.s.len() != n
    {
        return Err(kernels_ir::reference::ReferenceError::ShapeMismatch {
            name: "sara set".into(),
            expected: format!("w_eff of {len} values and index, v, m, s of equal length"),
            actual: vec![w_eff.len(), n, old.state.m.len(), old.state.s.len()],
        }
        .into());
    }
    match device {
        Device::Cuda(c) => remask_on(c, "cuda", w_eff, shape, select, old),
        Device::Wgpu(c) => remask_on(c, "wgpu", w_eff, shape, select, old),
        Device::Reference => Err(RuntimeError::Unavailable {
            kind: "reference",
            reason: "the device optimizer runs on cuda or wgpu (the reference has its own)".into(),
        }),
    }
}

fn remask_on<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    w_eff: &[f32],
    shape: [usize; 2],
    select: SaraSelect,
    old: &SaraSet,
) -> Result<SaraSet, RuntimeError> {
    let up_f =
        |x: &[f32]| client.create_from_slice(f32::as_bytes(if x.is_empty() { &[0.0] } else { x }));
    let up_u =
        |x: &[u32]| client.create_from_slice(u32::as_bytes(if x.is_empty() { &[0] } else { x }));
    let plan = sara::remask_plan(DType::F32, shape, select, old.index.len());
    let bound: BTreeMap<String, Handle> = [
        ("w_eff", up_f(w_eff)),
        ("old_index", up_u(&old.index)),
        ("old_m", up_f(&old.state.m)),
        ("old_s", up_f(&old.state.s)),
    ]
    .into_iter()
    .map(|(k, h)| (k.to_string(), h))
    .collect();
    let out = exec::execute(client, kind, &plan, &bound, Mode::from_env())?;
    let nnz = out.buffers["mask_index"].shape[0];
    let read = |name: &str| -> Result<Vec<u8>, RuntimeError> {
        if nnz == 0 {
            return Ok(Vec::new());
        }
        let bytes = client
            .read_one(out.buffers[name].handle.clone())
            .map_err(|e| RuntimeError::Device {
                kind,
                message: format!("{e:?}"),
            })?;
        Ok(bytes[..4 * nnz].to_vec())
    };
    let floats = |b: Vec<u8>| f32::from_bytes(&b).to_vec();
    Ok(SaraSet {
        index: u32::from_bytes(&read("mask_index")?).to_vec(),
        state: AdamState {
            v: floats(read("v")?),
            m: floats(read("m")?),
            s: floats(read("s")?),
        },
    })
}
