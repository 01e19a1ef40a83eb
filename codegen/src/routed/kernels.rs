//! `#[cube]` kernels of the routed FFN (METHODS.md §2): router, token grouping by block (a
//! deterministic counting sort on the device), the two grouped products with their epilogues, and
//! the backward. Every shape-independent choice is a comptime value of [`RoutedConfig`].
//!
//! Storage dtype `F` for x, the weights and the outputs; every accumulation and every saved
//! intermediate is f32. Pairs = kept (token, block) pairs, `P = T·top`, listed grouped by block
//! and, within a block, in ascending token order. No kernel uses atomics: every sum has a fixed
//! order, so results are deterministic.
//!
//! This first version computes one output element per unit (no shared-memory tiling): correct on
//! every backend and the reference for the tiled grouped GEMM that autotuning will choose.

// `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
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

/// The activation.
#[cube]
fn act(z: f32, #[comptime] gelu: bool) -> f32 {
    let mut a = f32::max(z, 0.0f32);
    if gelu {
        a = 0.5f32 * z * (1.0f32 + Erf::erf(z * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
    }
    a
}

/// Its derivative.
#[cube]
fn act_grad(z: f32, #[comptime] gelu: bool) -> f32 {
    let mut g = 0.0f32;
    if z > 0.0f32 {
        g = 1.0f32;
    }
    if gelu {
        let cdf = 0.5f32 * (1.0f32 + Erf::erf(z * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
        let pdf = f32::exp(f32::new(-0.5) * z * z) * f32::new(0.398_942_3);
        g = cdf + z * pdf;
    }
    g
}

/// The gate coefficients (on the pre-activation, on the output) of gate value `g`.
#[cube]
fn coefs(g: f32, gate_scale: f32, #[comptime] gate: u32) -> (f32, f32) {
    let c = gate_scale * g;
    let mut c_in = 1.0f32;
    let mut c_out = c;
    if gate == 1 {
        c_out = 1.0f32;
    }
    if gate == 2 {
        c_in = c;
    }
    (c_in, c_out)
}

/// Router: the gates `g` [T, E] (sigmoid or softmax of x·wrᵀ + br) and the `top` blocks each token
/// keeps, `blocks` [T, top] (highest gate first, ties to the lower block; written in ascending
/// block order). One unit per token.
#[cube(launch)]
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
#[cube(launch)]
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
#[cube(launch)]
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
#[cube(launch)]
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
/// token), `pair_block` [P] (the block) and `slot_of` [T·top] (where pair (t, slot) went). Chunks
/// own ordered sub-ranges of each group and walk their tokens in order, so each group lists its
/// tokens in ascending order. One unit per chunk; `counts` (from pass 2) is its cursor.
#[cube(launch)]
pub fn routed_fill(
    blocks: &Array<i32>,
    counts: &mut Array<u32>,
    offsets: &Array<u32>,
    pair_token: &mut Array<u32>,
    pair_block: &mut Array<u32>,
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
                pair_block[at] = e as u32;
                slot_of[t * top + s] = at as u32;
            }
        }
    }
}

/// First grouped product with its epilogue, one unit per (pair p, hidden unit j of the pair's
/// block): `pre` = x_t·w1[e·bs + j] + b1[e·bs + j] and `h` = act(c_in·pre), both [P, bs] f32 (the
/// block output before the gate's output coefficient; kept for backward).
#[cube(launch)]
pub fn routed_up<F: Float>(
    x: &Array<F>,
    w1: &Array<F>,
    b1: &Array<F>,
    gates: &Array<f32>,
    pair_token: &Array<u32>,
    pair_block: &Array<u32>,
    pre: &mut Array<f32>,
    h: &mut Array<f32>,
    gate_scale: f32,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let bs = cfg.bs as usize;
    let dm = cfg.dm as usize;
    if pos < h.len() {
        let p = pos / bs;
        let j = pos % bs;
        let t = pair_token[p] as usize;
        let e = pair_block[p] as usize;
        let col = e * bs + j;
        let mut z = f32::cast_from(b1[col]);
        for i in 0..dm {
            z += f32::cast_from(x[t * dm + i]) * f32::cast_from(w1[col * dm + i]);
        }
        let (c_in, _c_out) = coefs(gates[t * (cfg.blocks as usize) + e], gate_scale, cfg.gate);
        pre[pos] = z;
        h[pos] = act(c_in * z, cfg.gelu);
    }
}

/// Second grouped product, gate scaling and the weighted un-permute, one unit per output element
/// (t, o): y[t, o] = b2[o] + Σ over the token's kept blocks (ascending) of
/// c_out · Σ_j h[pair, j] · w2[o, e·bs + j].
#[cube(launch)]
pub fn routed_down<F: Float>(
    h: &Array<f32>,
    w2: &Array<F>,
    b2: &Array<F>,
    gates: &Array<f32>,
    blocks: &Array<i32>,
    slot_of: &Array<u32>,
    y: &mut Array<F>,
    gate_scale: f32,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let dm = cfg.dm as usize;
    let bs = cfg.bs as usize;
    let top = cfg.top as usize;
    let dff = bs * (cfg.blocks as usize);
    if pos < y.len() {
        let t = pos / dm;
        let o = pos % dm;
        let mut acc = f32::cast_from(b2[o]);
        for s in 0..top {
            let e = blocks[t * top + s] as usize;
            let p = slot_of[t * top + s] as usize;
            let (_c_in, c_out) = coefs(gates[t * (cfg.blocks as usize) + e], gate_scale, cfg.gate);
            let mut dot = 0.0f32;
            for j in 0..bs {
                dot += h[p * bs + j] * f32::cast_from(w2[o * dff + e * bs + j]);
            }
            acc += c_out * dot;
        }
        y[pos] = F::cast_from(acc);
    }
}

/// Backward through the second product and the activation, one unit per (pair, j):
/// w2dy = Σ_o w2[o, col]·dy[t, o]; dz = c_out·w2dy·act'(c_in·pre); `dpre` = c_in·dz, and the two
/// per-element terms of the gate's gradient, `dco` = h·w2dy (output coefficient) and
/// `dci` = dz·pre (input coefficient), all [P, bs] f32.
#[cube(launch)]
pub fn routed_bwd_hidden<F: Float>(
    dy: &Array<F>,
    w2: &Array<F>,
    gates: &Array<f32>,
    pair_token: &Array<u32>,
    pair_block: &Array<u32>,
    pre: &Array<f32>,
    h: &Array<f32>,
    dpre: &mut Array<f32>,
    dco: &mut Array<f32>,
    dci: &mut Array<f32>,
    gate_scale: f32,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let bs = cfg.bs as usize;
    let dm = cfg.dm as usize;
    let dff = bs * (cfg.blocks as usize);
    if pos < dpre.len() {
        let p = pos / bs;
        let j = pos % bs;
        let t = pair_token[p] as usize;
        let e = pair_block[p] as usize;
        let col = e * bs + j;
        let mut w2dy = 0.0f32;
        for o in 0..dm {
            w2dy += f32::cast_from(w2[o * dff + col]) * f32::cast_from(dy[t * dm + o]);
        }
        let (c_in, c_out) = coefs(gates[t * (cfg.blocks as usize) + e], gate_scale, cfg.gate);
        let z = pre[pos];
        let dz = c_out * w2dy * act_grad(c_in * z, cfg.gelu);
        dpre[pos] = c_in * dz;
        dco[pos] = h[pos] * w2dy;
        dci[pos] = dz * z;
    }
}

/// Router backward, one unit per token: the gate gradient of each kept block (Σ_j of `dco`, and
/// of `dci` for spt-lora, times gate_scale; 0 for gate none), through the sigmoid or softmax to
/// the logits: `dlogit` [T, E] f32 (0 where nothing flows).
#[cube(launch)]
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

/// dx, one unit per (t, i): Σ over the token's kept blocks of Σ_j dpre·w1[e·bs + j, i], plus
/// Σ_e dlogit[t, e]·wr[e, i].
#[cube(launch)]
pub fn routed_bwd_dx<F: Float>(
    w1: &Array<F>,
    wr: &Array<F>,
    blocks: &Array<i32>,
    slot_of: &Array<u32>,
    dpre: &Array<f32>,
    dlogit: &Array<f32>,
    dx: &mut Array<F>,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let dm = cfg.dm as usize;
    let bs = cfg.bs as usize;
    let top = cfg.top as usize;
    let e_n = cfg.blocks as usize;
    if pos < dx.len() {
        let t = pos / dm;
        let i = pos % dm;
        let mut acc = 0.0f32;
        for s in 0..top {
            let e = blocks[t * top + s] as usize;
            let p = slot_of[t * top + s] as usize;
            for j in 0..bs {
                acc += dpre[p * bs + j] * f32::cast_from(w1[(e * bs + j) * dm + i]);
            }
        }
        for e in 0..e_n {
            acc += dlogit[t * e_n + e] * f32::cast_from(wr[e * dm + i]);
        }
        dx[pos] = F::cast_from(acc);
    }
}

/// dw1 and db1, one unit per (column col = e·bs + j, input i ∈ 0..=d_model; i = d_model is the
/// bias): Σ over the pairs of block e, in group order, of dpre·x_t (or dpre). Columns of a block
/// no token kept are 0.
#[cube(launch)]
pub fn routed_bwd_w1<F: Float>(
    x: &Array<F>,
    pair_token: &Array<u32>,
    offsets: &Array<u32>,
    dpre: &Array<f32>,
    dw1: &mut Array<F>,
    db1: &mut Array<F>,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let dm = cfg.dm as usize;
    let bs = cfg.bs as usize;
    let width = dm + 1;
    if pos < db1.len() * width {
        let col = pos / width;
        let i = pos % width;
        let e = col / bs;
        let j = col % bs;
        let mut acc = 0.0f32;
        let start = offsets[e] as usize;
        let end = offsets[e + 1] as usize;
        for p in start..end {
            let mut xv = 1.0f32;
            if i < dm {
                xv = f32::cast_from(x[(pair_token[p] as usize) * dm + i]);
            }
            acc += dpre[p * bs + j] * xv;
        }
        if i < dm {
            dw1[col * dm + i] = F::cast_from(acc);
        } else {
            db1[col] = F::cast_from(acc);
        }
    }
}

/// dw2, one unit per (o, col = e·bs + j): Σ over the pairs of block e of c_out·h·dy[t, o].
#[cube(launch)]
pub fn routed_bwd_w2<F: Float>(
    dy: &Array<F>,
    gates: &Array<f32>,
    pair_token: &Array<u32>,
    offsets: &Array<u32>,
    h: &Array<f32>,
    dw2: &mut Array<F>,
    gate_scale: f32,
    #[comptime] cfg: RoutedConfig,
) {
    let pos = ABSOLUTE_POS;
    let dm = cfg.dm as usize;
    let bs = cfg.bs as usize;
    let e_n = cfg.blocks as usize;
    let dff = bs * e_n;
    if pos < dw2.len() {
        let o = pos / dff;
        let col = pos % dff;
        let e = col / bs;
        let j = col % bs;
        let mut acc = 0.0f32;
        let start = offsets[e] as usize;
        let end = offsets[e + 1] as usize;
        for p in start..end {
            let t = pair_token[p] as usize;
            let (_c_in, c_out) = coefs(gates[t * e_n + e], gate_scale, cfg.gate);
            acc += c_out * h[p * bs + j] * f32::cast_from(dy[t * dm + o]);
        }
        dw2[pos] = F::cast_from(acc);
    }
}

/// db2 = Σ_t dy[t, ·], one unit per output column.
#[cube(launch)]
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
#[cube(launch)]
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
