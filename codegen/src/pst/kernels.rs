//! `#[cube]` kernels of PST (METHODS.md §5). The updated weight W' = W + β·U·V and the score
//! S = |W'| + α1·A·B + α2·(R·1ᵀ + 1·Cᵀ) are recomputed element by element wherever they are
//! needed ([`weight_score`], rank-r sums in registers), so neither W' nor the masked weight
//! M ⊙ W' is ever stored: the forward and dx products apply the mask while staging their weight
//! tile in shared memory. Only the selection reads a materialised score (once per step), and the
//! straight-through backward writes dW' and dS, which the low-rank gradients reduce.
//!
//! `coef` = [α1, α2, β] (f32). The mask is the pivot state of [`crate::select`] over S (signed
//! order): weight (o, i) is zeroed when it is among the ⌊n·sparsity⌋ lowest scores.

// `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
#![allow(missing_docs)]

use crate::select::kernels::{key, selected};
use crate::tile::{
    MICRO, PITCH, TILE, TILE_UNITS, TileShape, load_a_slice, multiply_slice, store_tile,
    tile_product, zero_tile,
};
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
    /// Reduction steps per staged slice of the tile mainloop (the schedule's `tile_k`).
    pub tk: u32,
}

/// (W'[o, i], S[o, i]) in f32.
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
    #[comptime] cfg: PstConfig,
) -> (f32, f32) {
    let n_in = cfg.n_in as usize;
    let mut uv = 0.0f32;
    #[unroll]
    for r in 0..cfg.rank {
        uv += f32::cast_from(u[o * (cfg.rank as usize) + r as usize])
            * f32::cast_from(v[(r as usize) * n_in + i]);
    }
    let mut ab = 0.0f32;
    #[unroll]
    for k in 0..cfg.mrank {
        ab += f32::cast_from(ma[o * (cfg.mrank as usize) + k as usize])
            * f32::cast_from(mb[(k as usize) * n_in + i]);
    }
    let wp = f32::cast_from(w[o * n_in + i]) + coef[2] * uv;
    let s = f32::abs(wp) + coef[0] * ab + coef[1] * (f32::cast_from(mr[o]) + f32::cast_from(mc[i]));
    (wp, s)
}

/// M ⊙ W' at (o, i).
#[cube]
#[allow(clippy::too_many_arguments)]
fn masked_weight<F: Float>(
    w: &Array<F>,
    u: &Array<F>,
    v: &Array<F>,
    ma: &Array<F>,
    mb: &Array<F>,
    mr: &Array<F>,
    mc: &Array<F>,
    coef: &Array<f32>,
    state: &Array<u32>,
    o: usize,
    i: usize,
    #[comptime] cfg: PstConfig,
) -> f32 {
    let (wp, s) = weight_score::<F>(w, u, v, ma, mb, mr, mc, coef, o, i, cfg);
    let mut out = wp;
    if selected(key::<f32>(s, true), o * (cfg.n_in as usize) + i, state) {
        out = 0.0f32;
    }
    out
}

/// The score S [out, in] f32, one unit per weight: what the selection reads.
#[cube(launch)]
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
        let (_wp, s) =
            weight_score::<F>(w, u, v, ma, mb, mr, mc, coef, pos / n_in, pos % n_in, cfg);
        score[pos] = s;
    }
}

/// The 0/1 mask [out, in] in the storage dtype (an output of the op), one unit per weight.
#[cube(launch)]
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

/// y [T, out] = x·(M ⊙ W')ᵀ + bias, one 64×64 tile of y per cube; the weight tile is staged as
/// M ⊙ W' computed from the factors (no masked copy of the weight exists).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn pst_fwd<F: Float>(
    x: &Array<F>,
    w: &Array<F>,
    u: &Array<F>,
    v: &Array<F>,
    ma: &Array<F>,
    mb: &Array<F>,
    mr: &Array<F>,
    mc: &Array<F>,
    coef: &Array<f32>,
    state: &Array<u32>,
    bias: &Array<F>,
    y: &mut Array<F>,
    #[comptime] cfg: PstConfig,
) {
    let n_in = cfg.n_in as usize;
    let n_out = cfg.n_out as usize;
    let rows = y.len() / n_out;
    let r0 = (CUBE_POS_X * TILE) as usize;
    let n0 = (CUBE_POS_Y * TILE) as usize;
    let unit = (UNIT_POS_Y * TILE_UNITS + UNIT_POS_X) as usize;
    let shape = comptime!(TileShape {
        n: cfg.n_out,
        lda: cfg.n_in,
        a_kmajor: false,
        gather_a: false,
        sk: 1,
        sn: cfg.n_in,
        gather_b: false,
        scale_b: false,
        tk: cfg.tk,
    });
    let mut sa = SharedMemory::<f32>::new(comptime!((cfg.tk * PITCH) as usize));
    let mut sb = SharedMemory::<f32>::new(comptime!((cfg.tk * PITCH) as usize));
    let mut acc = zero_tile();
    let mut k0 = 0usize;
    while k0 < n_in {
        load_a_slice::<F>(&mut sa, x, state, r0, rows, k0, n_in, shape);
        // B[k = i, n = o] = (M ⊙ W')[o, i], read along i (contiguous in w, v and mb).
        #[unroll]
        for q in 0..comptime!(TILE * cfg.tk / (TILE_UNITS * TILE_UNITS)) {
            let l = unit + (q * TILE_UNITS * TILE_UNITS) as usize;
            let k = l % (cfg.tk as usize);
            let n = l / (cfg.tk as usize);
            let mut value = 0.0f32;
            if k0 + k < n_in && n0 + n < n_out {
                value =
                    masked_weight::<F>(w, u, v, ma, mb, mr, mc, coef, state, n0 + n, k0 + k, cfg);
            }
            sb[k * (PITCH as usize) + n] = value;
        }
        sync_cube();
        multiply_slice(&sa, &sb, &mut acc, cfg.tk);
        sync_cube();
        k0 += cfg.tk as usize;
    }
    let mut out = Array::<f32>::new(comptime!((MICRO * MICRO) as usize));
    #[unroll]
    for j in 0..MICRO {
        let col = n0 + (UNIT_POS_X + j * TILE_UNITS) as usize;
        let mut b = 0.0f32;
        if col < n_out {
            b = f32::cast_from(bias[col]);
        }
        #[unroll]
        for i in 0..MICRO {
            out[(i * MICRO + j) as usize] = acc[(i * MICRO + j) as usize] + b;
        }
    }
    store_tile::<F>(y, &out, r0, rows, n0, 0, cfg.n_out, cfg.n_out);
}

/// dx [T, in] = dy·(M ⊙ W'), one tile of dx per cube, the weight tile staged like [`pst_fwd`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn pst_bwd_dx<F: Float>(
    dy: &Array<F>,
    w: &Array<F>,
    u: &Array<F>,
    v: &Array<F>,
    ma: &Array<F>,
    mb: &Array<F>,
    mr: &Array<F>,
    mc: &Array<F>,
    coef: &Array<f32>,
    state: &Array<u32>,
    dx: &mut Array<F>,
    #[comptime] cfg: PstConfig,
) {
    let n_in = cfg.n_in as usize;
    let n_out = cfg.n_out as usize;
    let rows = dx.len() / n_in;
    let r0 = (CUBE_POS_X * TILE) as usize;
    let n0 = (CUBE_POS_Y * TILE) as usize;
    let unit = (UNIT_POS_Y * TILE_UNITS + UNIT_POS_X) as usize;
    let shape = comptime!(TileShape {
        n: cfg.n_in,
        lda: cfg.n_out,
        a_kmajor: false,
        gather_a: false,
        sk: cfg.n_in,
        sn: 1,
        gather_b: false,
        scale_b: false,
        tk: cfg.tk,
    });
    let mut sa = SharedMemory::<f32>::new(comptime!((cfg.tk * PITCH) as usize));
    let mut sb = SharedMemory::<f32>::new(comptime!((cfg.tk * PITCH) as usize));
    let mut acc = zero_tile();
    let mut k0 = 0usize;
    while k0 < n_out {
        load_a_slice::<F>(&mut sa, dy, state, r0, rows, k0, n_out, shape);
        // B[k = o, n = i] = (M ⊙ W')[o, i], read along i.
        #[unroll]
        for q in 0..comptime!(TILE * cfg.tk / (TILE_UNITS * TILE_UNITS)) {
            let l = unit + (q * TILE_UNITS * TILE_UNITS) as usize;
            let k = l / (TILE as usize);
            let n = l % (TILE as usize);
            let mut value = 0.0f32;
            if k0 + k < n_out && n0 + n < n_in {
                value =
                    masked_weight::<F>(w, u, v, ma, mb, mr, mc, coef, state, k0 + k, n0 + n, cfg);
            }
            sb[k * (PITCH as usize) + n] = value;
        }
        sync_cube();
        multiply_slice(&sa, &sb, &mut acc, cfg.tk);
        sync_cube();
        k0 += cfg.tk as usize;
    }
    store_tile::<F>(dx, &acc, r0, rows, n0, 0, cfg.n_in, cfg.n_in);
}

/// The straight-through weight gradients, one tile of [out, in] per cube: dW_eff = dyᵀ·x
/// (reduced over the rows in order, never stored), then dS = dW_eff ⊙ W' and
/// dW' = dW_eff ⊙ M + sign(W') ⊙ dS, both f32 [out, in].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn pst_bwd_w<F: Float>(
    dy: &Array<F>,
    x: &Array<F>,
    w: &Array<F>,
    u: &Array<F>,
    v: &Array<F>,
    ma: &Array<F>,
    mb: &Array<F>,
    mr: &Array<F>,
    mc: &Array<F>,
    coef: &Array<f32>,
    state: &Array<u32>,
    dwp: &mut Array<f32>,
    ds: &mut Array<f32>,
    #[comptime] cfg: PstConfig,
) {
    let n_in = cfg.n_in as usize;
    let n_out = cfg.n_out as usize;
    let rows = x.len() / n_in;
    let r0 = (CUBE_POS_X * TILE) as usize;
    let n0 = (CUBE_POS_Y * TILE) as usize;
    let shape = comptime!(TileShape {
        n: cfg.n_in,
        lda: cfg.n_out,
        a_kmajor: true,
        gather_a: false,
        sk: cfg.n_in,
        sn: 1,
        gather_b: false,
        scale_b: false,
        tk: cfg.tk,
    });
    let acc = tile_product::<F, F>(dy, x, state, coef, r0, n_out, n0, 0, 0, rows, shape);
    #[unroll]
    for i in 0..MICRO {
        let o = r0 + (UNIT_POS_Y + i * TILE_UNITS) as usize;
        if o < n_out {
            #[unroll]
            for j in 0..MICRO {
                let c = n0 + (UNIT_POS_X + j * TILE_UNITS) as usize;
                if c < n_in {
                    let g = acc[(i * MICRO + j) as usize];
                    let (wp, s) = weight_score::<F>(w, u, v, ma, mb, mr, mc, coef, o, c, cfg);
                    let mut m = 1.0f32;
                    if selected(key::<f32>(s, true), o * n_in + c, state) {
                        m = 0.0f32;
                    }
                    let mut sign = 0.0f32;
                    if wp > 0.0f32 {
                        sign = 1.0f32;
                    }
                    if wp < 0.0f32 {
                        sign = f32::new(-1.0);
                    }
                    let dsv = g * wp;
                    ds[o * n_in + c] = dsv;
                    dwp[o * n_in + c] = g * m + sign * dsv;
                }
            }
        }
    }
}

/// Per output row o (one unit each): dU[o, :] = β·dW'[o, :]·Vᵀ, dA[o, :] = α1·dS[o, :]·Bᵀ,
/// dR[o] = α2·Σ_i dS[o, i], over the inputs in order.
#[cube(launch)]
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
#[cube(launch)]
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
