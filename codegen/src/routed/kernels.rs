//! `#[cube]` kernels of the routed FFN (METHODS.md §2) besides its products: router, token
//! grouping by block (a deterministic counting sort on the device), the weighted un-permutes and
//! the router and bias gradients. Every shape-independent choice is a comptime value of
//! [`RoutedConfig`].
//!
//! Storage dtype `F` for x, the weights and the outputs; every accumulation and every saved
//! intermediate is f32. Pairs = kept (token, block) pairs, `P = T·top`, listed grouped by block
//! and, within a block, in ascending token order. No kernel uses atomics: every sum has a fixed
//! order, so results are deterministic.
//!
//! The six products (x·w1ᵀ, h·w2ᵀ, dy·w2, dpre·w1 over the kept pairs, and the per-block weight
//! gradients with db1 as their row sums) are tile programs ([`crate::tile`]), lowered in
//! [`super`]. The router products and the remaining bias gradients here are one output element
//! per unit, each a fixed-order sum.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Tokens per chunk of the grouping passes: the unit of parallelism of [`routed_count`] and
/// [`routed_fill`].
pub const TOKEN_CHUNK: u32 = 64;

/// Comptime configuration of the routed FFN kernels, derived from a verified `routed-ffn` spec.
#[derive_cube_comptime]
pub struct RoutedConfig {
    /// Model width `d_model`.
    pub dm: u32,
    /// Hidden width of one block, `d_ff / blocks`.
    pub bs: u32,
    /// Blocks `E`.
    pub blocks: u32,
    /// Blocks kept per token.
    pub top: u32,
    /// Softmax router (else sigmoid).
    pub softmax: bool,
    /// Gate mode: 0 = output, 1 = none, 2 = spt-lora.
    pub gate: u32,
    /// Exact-erf GELU (else ReLU).
    pub gelu: bool,
}

/// Router: the gates `g` [T, E] (sigmoid or softmax of x·wrᵀ + br) and the `top` blocks each token
/// keeps, `blocks` [T, top] (highest gate first, ties to the lower block; written in ascending
/// block order). One unit per token.
#[cube(launch, launch_unchecked)]
pub fn routed_gate<F: Float>(
    x: &Array<F>,
    wr: &Array<F>,
    br: &Array<F>,
    gates: &mut Array<f32>,
    blocks: &mut Array<i32>,
    #[comptime] cfg: RoutedConfig,
) {
    let t = ABSOLUTE_POS;
    let e_n = cfg.blocks as usize;
    let dm = cfg.dm as usize;
    if t < gates.len() / e_n {
        // Every loop over the blocks is unrolled (E is comptime), so `g` lives in registers.
        let mut g = Array::<f32>::new(comptime!(cfg.blocks as usize));
        let mut m = f32::new(-f32::MAX);
        #[unroll]
        for e in 0..cfg.blocks {
            let mut z = f32::cast_from(br[e as usize]);
            for i in 0..dm {
                z += f32::cast_from(x[t * dm + i]) * f32::cast_from(wr[(e as usize) * dm + i]);
            }
            g[e as usize] = z;
            m = f32::max(m, z);
        }
        if cfg.softmax {
            let mut sum = 0.0f32;
            #[unroll]
            for e in 0..cfg.blocks {
                g[e as usize] = f32::exp(g[e as usize] - m);
                sum += g[e as usize];
            }
            #[unroll]
            for e in 0..cfg.blocks {
                g[e as usize] = g[e as usize] / sum;
            }
        } else {
            #[unroll]
            for e in 0..cfg.blocks {
                g[e as usize] = 1.0f32 / (1.0f32 + f32::exp(-g[e as usize]));
            }
        }
        #[unroll]
        for e in 0..cfg.blocks {
            gates[t * e_n + e as usize] = g[e as usize];
        }
        // Rank blocks by (gate descending, index ascending). Each round picks the first block
        // after the previous pick in that order, so `top` rounds end at the top-th block
        // (ties keep the lower block) with no per-block flags.
        let mut last_g = f32::new(f32::MAX);
        let mut last_e = i32::new(-1);
        for _round in 0..cfg.top {
            let mut best_g = f32::new(-f32::MAX);
            let mut best_e = i32::new(-1);
            #[unroll]
            for e in 0..cfg.blocks {
                let ge = g[e as usize];
                let ei = i32::cast_from(e);
                let after_last = ge < last_g || (ge == last_g && ei > last_e);
                let before_best = best_e < 0 || ge > best_g;
                if after_last && before_best {
                    best_g = ge;
                    best_e = ei;
                }
            }
            last_g = best_g;
            last_e = best_e;
        }
        // Kept = every block up to the last pick in that order, written in ascending order.
        let mut slot = 0usize;
        #[unroll]
        for e in 0..cfg.blocks {
            let ge = g[e as usize];
            let ei = i32::cast_from(e);
            if ge > last_g || (ge == last_g && ei <= last_e) {
                blocks[t * (cfg.top as usize) + slot] = ei;
                slot += 1;
            }
        }
    }
}

/// Grouping, pass 1 of 4: per chunk of [`TOKEN_CHUNK`] tokens, how many of its kept pairs name
/// each block. `counts` [chunks, E]; one unit per chunk, the only writer of its row.
#[cube(launch, launch_unchecked)]
pub fn routed_count(
    blocks: &Array<i32>,
    counts: &mut Array<u32>,
    tokens: u32,
    #[comptime] cfg: RoutedConfig,
) {
    let chunk = ABSOLUTE_POS;
    let e_n = cfg.blocks as usize;
    let top = cfg.top as usize;
    if chunk < counts.len() / e_n {
        for e in 0..e_n {
            counts[chunk * e_n + e] = 0u32;
        }
        let first = chunk * (TOKEN_CHUNK as usize);
        let mut last = first + TOKEN_CHUNK as usize;
        if last > tokens as usize {
            last = tokens as usize;
        }
        for t in first..last {
            for s in 0..top {
                let e = blocks[t * top + s] as usize;
                counts[chunk * e_n + e] += 1u32;
            }
        }
    }
}

/// Pass 2 of 4: per block, the exclusive prefix of `counts` over the chunks, in place, and the
/// block's total into `offsets[e]`. One unit per block.
#[cube(launch, launch_unchecked)]
pub fn routed_scan(
    counts: &mut Array<u32>,
    offsets: &mut Array<u32>,
    #[comptime] cfg: RoutedConfig,
) {
    let e = ABSOLUTE_POS;
    let e_n = cfg.blocks as usize;
    if e < e_n {
        let chunks = counts.len() / e_n;
        let mut running = 0u32;
        for c in 0..chunks {
            let n = counts[c * e_n + e];
            counts[c * e_n + e] = running;
            running += n;
        }
        offsets[e] = running;
    }
}

/// Pass 3 of 4: the exclusive prefix of the block totals, in place: `offsets` [E + 1] becomes the
/// first pair of each block's group, `offsets[E]` = P. One unit.
#[cube(launch, launch_unchecked)]
pub fn routed_offsets(offsets: &mut Array<u32>, #[comptime] cfg: RoutedConfig) {
    if ABSOLUTE_POS == 0 {
        let e_n = cfg.blocks as usize;
        let mut running = 0u32;
        for e in 0..e_n {
            let n = offsets[e];
            offsets[e] = running;
            running += n;
        }
        offsets[e_n] = running;
    }
}

/// Pass 4 of 4: every kept (token, slot) written to its block's group: `pair_token` [P] (the
/// token) and `slot_of` [T·top] (where pair (t, slot) went). Chunks
/// own ordered sub-ranges of each group and walk their tokens in order, so each group lists its
/// tokens in ascending order. One unit per chunk; `counts` (from pass 2) is its cursor.
#[cube(launch, launch_unchecked)]
pub fn routed_fill(
    blocks: &Array<i32>,
    counts: &mut Array<u32>,
    offsets: &Array<u32>,
    pair_token: &mut Array<u32>,
    slot_of: &mut Array<u32>,
    tokens: u32,
    #[comptime] cfg: RoutedConfig,
) {
    let chunk = ABSOLUTE_POS;
    let e_n = cfg.blocks as usize;
    let top = cfg.top as usize;
    if chunk < counts.len() / e_n {
        let first = chunk * (TOKEN_CHUNK as usize);
        let mut last = first + TOKEN_CHUNK as usize;
        if last > tokens as usize {
            last = tokens as usize;
        }
        for t in first..last {
            for s in 0..top {
                let e = blocks[t * top + s] as usize;
                let cursor = counts[chunk * e_n + e];
                let at = (offsets[e] + cursor) as usize;
                counts[chunk * e_n + e] = cursor + 1u32;
                pair_token[at] = t as u32;
                slot_of[t * top + s] = at as u32;
            }
        }
    }
}

/// The weighted un-permute, one unit per output element (t, o): y[t, o] = b2[o] + Σ over the
/// token's kept blocks, in ascending order, of zp[pair, o].
#[cube(launch, launch_unchecked)]
pub fn routed_combine<F: Float>(
    zp: &Array<f32>,
    b2: &Array<F>,
    slot_of: &Array<u32>,
    y: &mut Array<F>,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let dm = cfg.dm as usize;
    let top = cfg.top as usize;
    if pos < y.len() {
        let t = pos / dm;
        let o = pos % dm;
        let mut acc = f32::cast_from(b2[o]);
        for s in 0..top {
            acc += zp[(slot_of[t * top + s] as usize) * dm + o];
        }
        y[pos] = F::cast_from(acc);
    }
}

/// Router backward, one unit per token: the gate gradient of each kept block (Σ_j of `dco`, and
/// of `dci` for spt-lora, times gate_scale; 0 for gate none), through the sigmoid or softmax to
/// the logits: `dlogit` [T, E] f32 (0 where nothing flows).
#[cube(launch, launch_unchecked)]
pub fn routed_bwd_router(
    gates: &Array<f32>,
    blocks: &Array<i32>,
    slot_of: &Array<u32>,
    dco: &Array<f32>,
    dci: &Array<f32>,
    dlogit: &mut Array<f32>,
    gate_scale: f32,
    #[comptime] cfg: RoutedConfig,
) {
    let t = ABSOLUTE_POS;
    let e_n = cfg.blocks as usize;
    let top = cfg.top as usize;
    let bs = cfg.bs as usize;
    if t < dlogit.len() / e_n {
        let mut dg = Array::<f32>::new(comptime!(cfg.blocks as usize));
        for e in 0..e_n {
            dg[e] = 0.0f32;
        }
        if cfg.gate != 1 {
            for s in 0..top {
                let e = blocks[t * top + s] as usize;
                let p = slot_of[t * top + s] as usize;
                let mut sum = 0.0f32;
                for j in 0..bs {
                    sum += dco[p * bs + j];
                    if cfg.gate == 2 {
                        sum += dci[p * bs + j];
                    }
                }
                dg[e] = gate_scale * sum;
            }
        }
        if cfg.softmax {
            let mut dot = 0.0f32;
            for e in 0..e_n {
                dot += gates[t * e_n + e] * dg[e];
            }
            for e in 0..e_n {
                let g = gates[t * e_n + e];
                dlogit[t * e_n + e] = g * (dg[e] - dot);
            }
        } else {
            for e in 0..e_n {
                let g = gates[t * e_n + e];
                dlogit[t * e_n + e] = dg[e] * g * (1.0f32 - g);
            }
        }
    }
}

/// dx, one unit per (t, i): Σ over the token's kept blocks, in ascending order, of zdx[pair, i],
/// plus the router path Σ_e dlogit[t, e]·wr[e, i].
#[cube(launch, launch_unchecked)]
pub fn routed_bwd_dx_combine<F: Float>(
    zdx: &Array<f32>,
    wr: &Array<F>,
    slot_of: &Array<u32>,
    dlogit: &Array<f32>,
    dx: &mut Array<F>,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let dm = cfg.dm as usize;
    let top = cfg.top as usize;
    let e_n = cfg.blocks as usize;
    if pos < dx.len() {
        let t = pos / dm;
        let i = pos % dm;
        let mut acc = 0.0f32;
        for s in 0..top {
            acc += zdx[(slot_of[t * top + s] as usize) * dm + i];
        }
        for e in 0..e_n {
            acc += dlogit[t * e_n + e] * f32::cast_from(wr[e * dm + i]);
        }
        dx[pos] = F::cast_from(acc);
    }
}

/// db2 = Σ_t dy[t, ·], one unit per output column.
#[cube(launch, launch_unchecked)]
pub fn routed_bwd_db2<F: Float>(dy: &Array<F>, db2: &mut Array<F>, tokens: u32) {
    let o = ABSOLUTE_POS;
    let dm = db2.len();
    if o < dm {
        let mut acc = 0.0f32;
        for t in 0..tokens as usize {
            acc += f32::cast_from(dy[t * dm + o]);
        }
        db2[o] = F::cast_from(acc);
    }
}

/// dwr and dbr, one unit per (e, i ∈ 0..=d_model; i = d_model is the bias): Σ_t dlogit[t, e]·x.
#[cube(launch, launch_unchecked)]
pub fn routed_bwd_router_w<F: Float>(
    x: &Array<F>,
    dlogit: &Array<f32>,
    dwr: &mut Array<F>,
    dbr: &mut Array<F>,
    tokens: u32,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let dm = cfg.dm as usize;
    let e_n = cfg.blocks as usize;
    let width = dm + 1;
    if pos < e_n * width {
        let e = pos / width;
        let i = pos % width;
        let mut acc = 0.0f32;
        for t in 0..tokens as usize {
            let mut xv = 1.0f32;
            if i < dm {
                xv = f32::cast_from(x[t * dm + i]);
            }
            acc += dlogit[t * e_n + e] * xv;
        }
        if i < dm {
            dwr[e * dm + i] = F::cast_from(acc);
        } else {
            dbr[e] = F::cast_from(acc);
        }
    }
}
