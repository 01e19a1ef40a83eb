//! The Sparse-CBM head lowered to CubeCL: [`CbmPlan::from_spec`] derives the comptime
//! [`CbmConfig`]; [`forward`] runs `cbm_concepts` → `cbm_select` → `cbm_logits`, [`backward`]
//! runs `cbm_bwd_dz` → `cbm_bwd_dwh`, `cbm_bwd_dwc`, `cbm_bwd_dx`. The head reads only the kept
//! concepts (forward and dx); the selection is not differentiated.

pub mod kernels;

use crate::LowerError;
use crate::launch::{arr, grid};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{
    CbmConfig, cbm_bwd_dwc, cbm_bwd_dwh, cbm_bwd_dx, cbm_bwd_dz, cbm_concepts, cbm_logits,
    cbm_select,
};
use kernels_ir::pattern::Pattern;
use kernels_ir::{KernelSpec, OpKind};

/// Problem sizes and the comptime config of one `cbm-head` spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CbmPlan {
    /// Comptime config of every kernel.
    pub cfg: CbmConfig,
    /// Rows (samples) `B`.
    pub b: usize,
}

impl CbmPlan {
    /// Lowers a verified `cbm-head` spec; `noise` says whether a noise tensor comes with the
    /// inputs (it is optional, so the spec alone does not say).
    pub fn from_spec(spec: &KernelSpec, noise: bool) -> Result<Self, LowerError> {
        spec.verify()?;
        let Pattern::Cbm(p) = spec.pattern else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "a pattern other than cbm".into(),
            });
        };
        if spec.op != OpKind::CbmHead {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is cbm-head's)".into(),
            });
        }
        let c = spec.dim("C");
        let topk = if p.topk == 0 { c } else { p.topk.min(c) };
        Ok(Self {
            cfg: CbmConfig {
                c: c as u32,
                k: spec.dim("K") as u32,
                topk: topk as u32,
                noise,
            },
            b: spec.dim("B"),
        })
    }
}

/// Handles written by [`forward`].
#[derive(Clone, Debug)]
pub struct CbmForward {
    /// z [B, C], f32.
    pub z: Handle,
    /// Kept concepts [B, topk], u32, ascending per row.
    pub kept: Handle,
    /// logits [B, K] in the storage dtype.
    pub logits: Handle,
}

/// Handles written by [`backward`], in the storage dtype.
#[derive(Clone, Debug)]
pub struct CbmGrads {
    /// dx [B, C].
    pub dx: Handle,
    /// dwc [C, C].
    pub dwc: Handle,
    /// dwh [K, C].
    pub dwh: Handle,
}

/// Runs the forward chain: x [B, C], wc [C, C], wh [K, C] and, when the plan says so, noise
/// [B, C] (any handle of at least one element otherwise), all in dtype `F`.
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &CbmPlan,
    x: &Handle,
    wc: &Handle,
    wh: &Handle,
    noise: &Handle,
) -> CbmForward {
    let cfg = plan.cfg;
    let (b, c, k, topk) = (plan.b, cfg.c as usize, cfg.k as usize, cfg.topk as usize);
    let z = client.empty(b * c * 4);
    let (count, dim) = grid(client, b * c);
    cbm_concepts::launch::<F, R>(
        client,
        count,
        dim,
        arr(x, b * c),
        arr(wc, c * c),
        arr(&z, b * c),
        cfg,
    );
    let kept = client.empty(b * topk * 4);
    let noise_len = if cfg.noise { b * c } else { 1 };
    let (count, dim) = grid(client, b);
    cbm_select::launch::<F, R>(
        client,
        count,
        dim,
        arr(&z, b * c),
        arr(noise, noise_len),
        arr(&kept, b * topk),
        cfg,
    );
    let logits = client.empty(b * k * size_of::<F>());
    let (count, dim) = grid(client, b * k);
    cbm_logits::launch::<F, R>(
        client,
        count,
        dim,
        arr(&z, b * c),
        arr(wh, k * c),
        arr(&kept, b * topk),
        arr(&logits, b * k),
        cfg,
    );
    CbmForward { z, kept, logits }
}

/// Runs the backward chain for upstream gradient `dlogits` [B, K].
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &CbmPlan,
    x: &Handle,
    wc: &Handle,
    wh: &Handle,
    saved: &CbmForward,
    dlogits: &Handle,
) -> CbmGrads {
    let cfg = plan.cfg;
    let (b, c, k, topk) = (plan.b, cfg.c as usize, cfg.k as usize, cfg.topk as usize);
    let dz = client.empty(b * c * 4);
    let zs = client.empty(b * c * 4);
    let (count, dim) = grid(client, b * c);
    cbm_bwd_dz::launch::<F, R>(
        client,
        count,
        dim,
        arr(&saved.z, b * c),
        arr(wh, k * c),
        arr(&saved.kept, b * topk),
        arr(dlogits, b * k),
        arr(&dz, b * c),
        arr(&zs, b * c),
        cfg,
    );
    let dwh = client.empty(k * c * size_of::<F>());
    let (count, dim) = grid(client, k * c);
    cbm_bwd_dwh::launch::<F, R>(
        client,
        count,
        dim,
        arr(dlogits, b * k),
        arr(&zs, b * c),
        arr(&dwh, k * c),
        b as u32,
        cfg,
    );
    let dwc = client.empty(c * c * size_of::<F>());
    let (count, dim) = grid(client, c * c);
    cbm_bwd_dwc::launch::<F, R>(
        client,
        count,
        dim,
        arr(x, b * c),
        arr(&dz, b * c),
        arr(&dwc, c * c),
        b as u32,
        cfg,
    );
    let dx = client.empty(b * c * size_of::<F>());
    let (count, dim) = grid(client, b * c);
    cbm_bwd_dx::launch::<F, R>(
        client,
        count,
        dim,
        arr(wc, c * c),
        arr(&saved.kept, b * topk),
        arr(&dz, b * c),
        arr(&dx, b * c),
        cfg,
    );
    CbmGrads { dx, dwc, dwh }
}
