//! `#[cube]` kernels of PST (METHODS.md §5) besides its products. The updated weight
//! W' = W + β·U·V and the score S = |W'| + α1·A·B + α2·(R·1ᵀ + 1·Cᵀ) are recomputed element by
//! element wherever they are needed ([`weight_score`], rank-r sums in registers), so neither W'
//! nor the masked weight M ⊙ W' is ever stored: the tile program's PST prologue applies the mask
//! while staging the weight, and its PST epilogue writes the straight-through dW' and dS. Only
//! the selection reads a materialised score (once per step), and the low-rank gradients here
//! reduce dW' and dS.
//!
//! `coef` = [α1, α2, β] (f32). The mask is the pivot state of [`crate::select`] over S (signed
//! order): weight (o, i) is zeroed when it is among the ⌊n·sparsity⌋ lowest scores.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]

use crate::select::kernels::{key, selected};
use cubecl::prelude::*;

/// Comptime sizes of a PST layer.
#[derive_cube_comptime]
pub struct PstConfig {
    /// Input features.
    pub n_in: u32,
    /// Output features.
    pub n_out: u32,
    /// Rank of U·V.
    pub rank: u32,
    /// Rank of A·B.
    pub mrank: u32,
}

/// (W'[o, i], S[o, i]) in f32, for `n_in` inputs and ranks `rank` (U·V), `mrank` (A·B).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn weight_score<F: Float>(
    w: &Array<F>,
    u: &Array<F>,
    v: &Array<F>,
    ma: &Array<F>,
    mb: &Array<F>,
    mr: &Array<F>,
    mc: &Array<F>,
    coef: &Array<f32>,
    o: usize,
    i: usize,
    #[comptime] n_in: u32,
    #[comptime] rank: u32,
    #[comptime] mrank: u32,
) -> (f32, f32) {
    let n_in = n_in as usize;
    let mut uv = 0.0f32;
    #[unroll]
    for r in 0..rank {
        uv += f32::cast_from(u[o * (rank as usize) + r as usize])
            * f32::cast_from(v[(r as usize) * n_in + i]);
    }
    let mut ab = 0.0f32;
    #[unroll]
    for k in 0..mrank {
        ab += f32::cast_from(ma[o * (mrank as usize) + k as usize])
            * f32::cast_from(mb[(k as usize) * n_in + i]);
    }
    let wp = f32::cast_from(w[o * n_in + i]) + coef[2] * uv;
    let s = f32::abs(wp) + coef[0] * ab + coef[1] * (f32::cast_from(mr[o]) + f32::cast_from(mc[i]));
    (wp, s)
}

/// The score S [out, in] f32, one unit per weight: what the selection reads.
#[cube(launch, launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn pst_score<F: Float>(
    w: &Array<F>,
    u: &Array<F>,
    v: &Array<F>,
    ma: &Array<F>,
    mb: &Array<F>,
    mr: &Array<F>,
    mc: &Array<F>,
    coef: &Array<f32>,
    score: &mut Array<f32>,
    #[comptime] cfg: PstConfig,
) {
    let pos = ABSOLUTE_POS;
    if pos < score.len() {
        let n_in = cfg.n_in as usize;
        let (_wp, s) = weight_score::<F>(
            w,
            u,
            v,
            ma,
            mb,
            mr,
            mc,
            coef,
            pos / n_in,
            pos % n_in,
            cfg.n_in,
            cfg.rank,
            cfg.mrank,
        );
        score[pos] = s;
    }
}

/// The 0/1 mask [out, in] in the storage dtype (an output of the op), one unit per weight.
#[cube(launch, launch_unchecked)]
pub fn pst_mask<F: Float>(score: &Array<f32>, state: &Array<u32>, mask: &mut Array<F>) {
    let pos = ABSOLUTE_POS;
    if pos < mask.len() {
        let mut m = F::new(1.0);
        if selected(key::<f32>(score[pos], true), pos, state) {
            m = F::new(0.0);
        }
        mask[pos] = m;
    }
}

/// Per output row o (one unit each): dU[o, :] = β·dW'[o, :]·Vᵀ, dA[o, :] = α1·dS[o, :]·Bᵀ,
/// dR[o] = α2·Σ_i dS[o, i], over the inputs in order.
#[cube(launch, launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn pst_bwd_rows<F: Float>(
    dwp: &Array<f32>,
    ds: &Array<f32>,
    v: &Array<F>,
    mb: &Array<F>,
    coef: &Array<f32>,
    du: &mut Array<F>,
    dma: &mut Array<F>,
    dmr: &mut Array<F>,
    #[comptime] cfg: PstConfig,
) {
    let o = ABSOLUTE_POS;
    let n_in = cfg.n_in as usize;
    if o < dmr.len() {
        let mut gu = Array::<f32>::new(comptime!(cfg.rank as usize));
        let mut ga = Array::<f32>::new(comptime!(cfg.mrank as usize));
        #[unroll]
        for r in 0..cfg.rank {
            gu[r as usize] = 0.0f32;
        }
        #[unroll]
        for k in 0..cfg.mrank {
            ga[k as usize] = 0.0f32;
        }
        let mut gr = 0.0f32;
        for i in 0..n_in {
            let a = dwp[o * n_in + i];
            let b = ds[o * n_in + i];
            #[unroll]
            for r in 0..cfg.rank {
                gu[r as usize] += a * f32::cast_from(v[(r as usize) * n_in + i]);
            }
            #[unroll]
            for k in 0..cfg.mrank {
                ga[k as usize] += b * f32::cast_from(mb[(k as usize) * n_in + i]);
            }
            gr += b;
        }
        #[unroll]
        for r in 0..cfg.rank {
            du[o * (cfg.rank as usize) + r as usize] = F::cast_from(coef[2] * gu[r as usize]);
        }
        #[unroll]
        for k in 0..cfg.mrank {
            dma[o * (cfg.mrank as usize) + k as usize] = F::cast_from(coef[0] * ga[k as usize]);
        }
        dmr[o] = F::cast_from(coef[1] * gr);
    }
}

/// Per input column i (one unit each): dV[:, i] = β·Uᵀ·dW'[:, i], dB[:, i] = α1·Aᵀ·dS[:, i],
/// dC[i] = α2·Σ_o dS[o, i], over the outputs in order.
#[cube(launch, launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn pst_bwd_cols<F: Float>(
    dwp: &Array<f32>,
    ds: &Array<f32>,
    u: &Array<F>,
    ma: &Array<F>,
    coef: &Array<f32>,
    dv: &mut Array<F>,
    dmb: &mut Array<F>,
    dmc: &mut Array<F>,
    #[comptime] cfg: PstConfig,
) {
    let i = ABSOLUTE_POS;
    let n_in = cfg.n_in as usize;
    let n_out = cfg.n_out as usize;
    if i < dmc.len() {
        let mut gv = Array::<f32>::new(comptime!(cfg.rank as usize));
        let mut gb = Array::<f32>::new(comptime!(cfg.mrank as usize));
        #[unroll]
        for r in 0..cfg.rank {
            gv[r as usize] = 0.0f32;
        }
        #[unroll]
        for k in 0..cfg.mrank {
            gb[k as usize] = 0.0f32;
        }
        let mut gc = 0.0f32;
        for o in 0..n_out {
            let a = dwp[o * n_in + i];
            let b = ds[o * n_in + i];
            #[unroll]
            for r in 0..cfg.rank {
                gv[r as usize] += f32::cast_from(u[o * (cfg.rank as usize) + r as usize]) * a;
            }
            #[unroll]
            for k in 0..cfg.mrank {
                gb[k as usize] += f32::cast_from(ma[o * (cfg.mrank as usize) + k as usize]) * b;
            }
            gc += b;
        }
        #[unroll]
        for r in 0..cfg.rank {
            dv[(r as usize) * n_in + i] = F::cast_from(coef[2] * gv[r as usize]);
        }
        #[unroll]
        for k in 0..cfg.mrank {
            dmb[(k as usize) * n_in + i] = F::cast_from(coef[0] * gb[k as usize]);
        }
        dmc[i] = F::cast_from(coef[1] * gc);
    }
}
