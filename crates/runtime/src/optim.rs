//! Optimizer steps on the device over packed trainable values (SaRA's sparse AdamW: state size
//! = nnz, never a dense [out, in] moment).

use crate::{Device, RuntimeError};
use cubecl::prelude::*;
use sparsecube_codegen::sara::{self, AdamW};

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
        let dv = up(g);
        sara::adamw_step::<R, f32>(client, &v, &dv, &m, &s, n, first_step + i as u32, h);
    }
    let down = |handle| -> Result<Vec<f32>, RuntimeError> {
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
