//! `#[cube]` kernels of the Sparse-CBM head (METHODS.md §6): the concept layer z = x·wcᵀ, the
//! per-row top-k concept selection (on z + noise, ties to the lower concept), the sparse head
//! logits = (keep ⊙ z)·whᵀ over the kept concepts only, and the backward. Every
//! shape-independent choice is a comptime value of [`CbmConfig`]; storage dtype `F`, f32
//! accumulation, one output element (or one row, for the selection) per unit.

// `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
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
    /// A noise tensor is added before the selection.
    pub noise: bool,
}

/// Concept layer, one unit per (row b, concept j): z[b, j] = x_b·wc_j, f32.
#[cube(launch)]
pub fn cbm_concepts<F: Float>(
    x: &Array<F>,
    wc: &Array<F>,
    z: &mut Array<f32>,
    #[comptime] cfg: CbmConfig,
) {
    let pos = ABSOLUTE_POS;
    let c = cfg.c as usize;
    if pos < z.len() {
        let b = pos / c;
        let j = pos % c;
        let mut acc = 0.0f32;
        for i in 0..c {
            acc += f32::cast_from(x[b * c + i]) * f32::cast_from(wc[j * c + i]);
        }
        z[pos] = acc;
    }
}

/// Per row, the `topk` concepts with the largest z + noise (ties to the lower concept), written
/// in ascending order into `kept` [B, topk]. Rank order (score descending, concept ascending):
/// each of `topk` rounds takes the first concept after the previous pick, so no per-concept flags
/// are needed. One unit per row.
#[cube(launch)]
pub fn cbm_select<F: Float>(
    z: &Array<f32>,
    noise: &Array<F>,
    kept: &mut Array<u32>,
    #[comptime] cfg: CbmConfig,
) {
    let b = ABSOLUTE_POS;
    let c = cfg.c as usize;
    let topk = cfg.topk as usize;
    if b < kept.len() / topk {
        let mut last_s = f32::new(f32::MAX);
        let mut last_j = i32::new(-1);
        for _round in 0..topk {
            let mut best_s = f32::new(-f32::MAX);
            let mut best_j = i32::new(-1);
            for j in 0..c {
                let mut s = z[b * c + j];
                if cfg.noise {
                    s += f32::cast_from(noise[b * c + j]);
                }
                let ji = j as i32;
                let after_last = s < last_s || (s == last_s && ji > last_j);
                let before_best = best_j < 0 || s > best_s;
                if after_last && before_best {
                    best_s = s;
                    best_j = ji;
                }
            }
            last_s = best_s;
            last_j = best_j;
        }
        let mut slot = 0usize;
        for j in 0..c {
            let mut s = z[b * c + j];
            if cfg.noise {
                s += f32::cast_from(noise[b * c + j]);
            }
            let ji = j as i32;
            if s > last_s || (s == last_s && ji <= last_j) {
                kept[b * topk + slot] = j as u32;
                slot += 1;
            }
        }
    }
}

/// Sparse head, one unit per (row b, class k): logits[b, k] = Σ over the row's kept concepts of
/// z[b, j]·wh[k, j] — only the kept concepts are read.
#[cube(launch)]
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
#[cube(launch)]
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

/// dwh, one unit per (class k, concept j): Σ_b dlogits[b, k]·zs[b, j].
#[cube(launch)]
pub fn cbm_bwd_dwh<F: Float>(
    dlogits: &Array<F>,
    zs: &Array<f32>,
    dwh: &mut Array<F>,
    rows: u32,
    #[comptime] cfg: CbmConfig,
) {
    let pos = ABSOLUTE_POS;
    let (c, k_n) = (cfg.c as usize, cfg.k as usize);
    if pos < dwh.len() {
        let k = pos / c;
        let j = pos % c;
        let mut acc = 0.0f32;
        for b in 0..rows as usize {
            acc += f32::cast_from(dlogits[b * k_n + k]) * zs[b * c + j];
        }
        dwh[pos] = F::cast_from(acc);
    }
}

/// dwc, one unit per (concept j, input i): Σ_b dz[b, j]·x[b, i].
#[cube(launch)]
pub fn cbm_bwd_dwc<F: Float>(
    x: &Array<F>,
    dz: &Array<f32>,
    dwc: &mut Array<F>,
    rows: u32,
    #[comptime] cfg: CbmConfig,
) {
    let pos = ABSOLUTE_POS;
    let c = cfg.c as usize;
    if pos < dwc.len() {
        let j = pos / c;
        let i = pos % c;
        let mut acc = 0.0f32;
        for b in 0..rows as usize {
            acc += dz[b * c + j] * f32::cast_from(x[b * c + i]);
        }
        dwc[pos] = F::cast_from(acc);
    }
}

/// dx, one unit per (row b, input i): Σ over the row's kept concepts of dz[b, j]·wc[j, i].
#[cube(launch)]
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
