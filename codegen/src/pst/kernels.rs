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

/// The low-rank gradients' sums, level 1, two ways. `rows` true: per output row o and chunk of
/// `chunk` inputs, Σ_i dW'[o, i]·V[r, i] (r < rank), Σ_i dS[o, i]·B[k, i] (k < mrank) and
/// Σ_i dS[o, i]; `rows` false: per input column i and chunk of `chunk` outputs, Σ_o
/// U[o, r]·dW'[o, i], Σ_o A[o, k]·dS[o, i] and Σ_o dS[o, i]. Into `partial` [chunks, n,
/// rank + mrank + 1] (n = outputs or inputs), in order. Cubes: (blocks of n, chunks); a unit per
/// (line, chunk).
#[cube(launch, launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn pst_grad_partial<F: Float>(
    dwp: &Array<f32>,
    ds: &Array<f32>,
    fu: &Array<F>,
    fa: &Array<F>,
    partial: &mut Array<f32>,
    chunk: u32,
    #[comptime] cfg: PstConfig,
    #[comptime] rows: bool,
) {
    let line = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let c = CUBE_POS_Y as usize;
    let n_in = cfg.n_in as usize;
    let rank = cfg.rank as usize;
    let mrank = cfg.mrank as usize;
    let width = (cfg.rank + cfg.mrank + 1) as usize;
    let lines = comptime!(if rows { cfg.n_out } else { cfg.n_in }) as usize;
    let along = comptime!(if rows { cfg.n_in } else { cfg.n_out }) as usize;
    if line < lines {
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
        let first = c * chunk as usize;
        let mut last = first + chunk as usize;
        if last > along {
            last = along;
        }
        for j in first..last {
            // rows: j is the input i of output row `line`; else j is the output o of column
            // `line`.
            let mut at = line * n_in + j;
            if !rows {
                at = j * n_in + line;
            }
            let a = dwp[at];
            let b = ds[at];
            #[unroll]
            for r in 0..cfg.rank {
                let mut fi = j * rank + r as usize;
                if rows {
                    fi = (r as usize) * n_in + j;
                }
                gu[r as usize] += a * f32::cast_from(fu[fi]);
            }
            #[unroll]
            for k in 0..cfg.mrank {
                let mut fi = j * mrank + k as usize;
                if rows {
                    fi = (k as usize) * n_in + j;
                }
                ga[k as usize] += b * f32::cast_from(fa[fi]);
            }
            gr += b;
        }
        let base = (c * lines + line) * width;
        #[unroll]
        for r in 0..cfg.rank {
            partial[base + r as usize] = gu[r as usize];
        }
        #[unroll]
        for k in 0..cfg.mrank {
            partial[base + rank + k as usize] = ga[k as usize];
        }
        partial[base + rank + mrank] = gr;
    }
}

/// The low-rank gradients, level 2: the chunk partials of each (line, q) summed in chunk order
/// and scaled. `rows` true: dU[o, :] = β·Σ, dA[o, :] = α1·Σ, dR[o] = α2·Σ; `rows` false:
/// dV[:, i], dB[:, i], dC[i] likewise. One unit per (line, q): lines · (rank + mrank + 1)
/// units, each summing its chunks.
#[cube(launch, launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn pst_grad_finish<F: Float>(
    partial: &Array<f32>,
    coef: &Array<f32>,
    g1: &mut Array<F>,
    g2: &mut Array<F>,
    g3: &mut Array<F>,
    chunks: u32,
    #[comptime] cfg: PstConfig,
    #[comptime] rows: bool,
) {
    let pos = ABSOLUTE_POS;
    let n_in = cfg.n_in as usize;
    let rank = cfg.rank as usize;
    let mrank = cfg.mrank as usize;
    let width = (cfg.rank + cfg.mrank + 1) as usize;
    let lines = comptime!(if rows { cfg.n_out } else { cfg.n_in }) as usize;
    if pos < lines * width {
        let line = pos / width;
        let q = pos % width;
        let mut acc = 0.0f32;
        for c in 0..chunks as usize {
            acc += partial[(c * lines + line) * width + q];
        }
        if q < rank {
            let v = F::cast_from(coef[2] * acc);
            if rows {
                g1[line * rank + q] = v;
            } else {
                g1[q * n_in + line] = v;
            }
        } else if q < rank + mrank {
            let v = F::cast_from(coef[0] * acc);
            let k = q - rank;
            if rows {
                g2[line * mrank + k] = v;
            } else {
                g2[k * n_in + line] = v;
            }
        } else {
            g3[line] = F::cast_from(coef[1] * acc);
        }
    }
}
