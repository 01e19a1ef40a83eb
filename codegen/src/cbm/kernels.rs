//! `#[cube]` kernels of the Sparse-CBM head (METHODS.md §6) that read only the kept concepts:
//! the sparse head logits = (keep ⊙ z)·whᵀ, the backward to the kept concepts and dx. The concept
//! layer z = x·wcᵀ and the weight gradients are tile programs, the per-row top-k selection is
//! [`crate::select::row_topk`] (both lowered in [`super`]). Storage dtype `F`, f32
//! accumulation, one output element per unit.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Comptime configuration of the Sparse-CBM head kernels.
#[derive_cube_comptime]
pub struct CbmConfig {
    /// Concepts `C`.
    pub c: u32,
    /// Classes `K`.
    pub k: u32,
    /// Concepts kept per row (`C` when the spec's topk is 0: dense).
    pub topk: u32,
}

/// Sparse head, one unit per (row b, class k): logits[b, k] = Σ over the row's kept concepts of
/// z[b, j]·wh[k, j] — only the kept concepts are read.
#[cube(launch, launch_unchecked)]
pub fn cbm_logits<F: Float>(
    z: &Array<f32>,
    wh: &Array<F>,
    kept: &Array<u32>,
    logits: &mut Array<F>,
    #[comptime] cfg: CbmConfig,
) {
    let pos = ABSOLUTE_POS;
    let (c, k_n, topk) = (cfg.c as usize, cfg.k as usize, cfg.topk as usize);
    if pos < logits.len() {
        let b = pos / k_n;
        let k = pos % k_n;
        let mut acc = 0.0f32;
        for s in 0..topk {
            let j = kept[b * topk + s] as usize;
            acc += z[b * c + j] * f32::cast_from(wh[k * c + j]);
        }
        logits[pos] = F::cast_from(acc);
    }
}

/// Backward to the kept concepts, one unit per (row b, concept j): dz[b, j] = keep·Σ_k
/// dlogits[b, k]·wh[k, j], with `keep` read from the row's kept list; also zs = keep·z for dwh.
#[cube(launch, launch_unchecked)]
pub fn cbm_bwd_dz<F: Float>(
    z: &Array<f32>,
    wh: &Array<F>,
    kept: &Array<u32>,
    dlogits: &Array<F>,
    dz: &mut Array<f32>,
    zs: &mut Array<f32>,
    #[comptime] cfg: CbmConfig,
) {
    let pos = ABSOLUTE_POS;
    let (c, k_n, topk) = (cfg.c as usize, cfg.k as usize, cfg.topk as usize);
    if pos < dz.len() {
        let b = pos / c;
        let j = pos % c;
        let mut keep = false;
        for s in 0..topk {
            if kept[b * topk + s] as usize == j {
                keep = true;
            }
        }
        let mut g = 0.0f32;
        let mut kept_z = 0.0f32;
        if keep {
            for k in 0..k_n {
                g += f32::cast_from(dlogits[b * k_n + k]) * f32::cast_from(wh[k * c + j]);
            }
            kept_z = z[pos];
        }
        dz[pos] = g;
        zs[pos] = kept_z;
    }
}

/// dx, one unit per (row b, input i): Σ over the row's kept concepts of dz[b, j]·wc[j, i].
#[cube(launch, launch_unchecked)]
pub fn cbm_bwd_dx<F: Float>(
    wc: &Array<F>,
    kept: &Array<u32>,
    dz: &Array<f32>,
    dx: &mut Array<F>,
    #[comptime] cfg: CbmConfig,
) {
    let pos = ABSOLUTE_POS;
    let (c, topk) = (cfg.c as usize, cfg.topk as usize);
    if pos < dx.len() {
        let b = pos / c;
        let i = pos % c;
        let mut acc = 0.0f32;
        for s in 0..topk {
            let j = kept[b * topk + s] as usize;
            acc += dz[b * c + j] * f32::cast_from(wc[j * c + i]);
        }
        dx[pos] = F::cast_from(acc);
    }
}
