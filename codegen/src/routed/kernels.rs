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

use crate::select::row::{best_first, short_select};
use cubecl::prelude::*;

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

/// Router, after the `routed_router` product has written the logits x·wrᵀ + br into `gates`
/// [T, E]: each row of `gates` becomes its sigmoid or softmax, and `blocks` [T, top] the `top`
/// blocks the token keeps (highest gate first, ties to the lower block; written in ascending
/// block order, [`short_select`]). One unit per token, O(E²) compares: the d_model-long dot
/// products are the product's.
#[cube(launch, launch_unchecked)]
pub fn routed_gate(gates: &mut Array<f32>, blocks: &mut Array<i32>, #[comptime] cfg: RoutedConfig) {
    let t = ABSOLUTE_POS;
    let e_n = cfg.blocks as usize;
    if t < gates.len() / e_n {
        // Every loop over the blocks is unrolled (E is comptime), so `g` lives in registers.
        let mut g = Array::<f32>::new(comptime!(cfg.blocks as usize));
        let mut m = f32::new(-f32::MAX);
        #[unroll]
        for e in 0..cfg.blocks {
            let z = gates[t * e_n + e as usize];
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
        // The kept blocks: the `top` highest gates, ties to the lower block, ascending.
        let mut keys = Array::<u32>::new(comptime!(cfg.blocks as usize));
        #[unroll]
        for e in 0..cfg.blocks {
            keys[e as usize] = best_first(g[e as usize]);
        }
        short_select::<i32>(
            &keys,
            cfg.blocks,
            cfg.top,
            blocks,
            t * (cfg.top as usize),
            0u32,
        );
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

/// Router backward, one unit per token: the gate gradient of each kept block (`dgate`, the
/// pair's row sum of `dco` (+ `dci` for spt-lora), times gate_scale; 0 for gate none), through
/// the sigmoid or softmax to the logits: `dlogit` [T, E] f32 (0 where nothing flows).
#[cube(launch, launch_unchecked)]
pub fn routed_bwd_router(
    gates: &Array<f32>,
    blocks: &Array<i32>,
    slot_of: &Array<u32>,
    dgate: &Array<f32>,
    dlogit: &mut Array<f32>,
    gate_scale: f32,
    #[comptime] cfg: RoutedConfig,
) {
    let t = ABSOLUTE_POS;
    let e_n = cfg.blocks as usize;
    let top = cfg.top as usize;
    if t < dlogit.len() / e_n {
        let mut dg = Array::<f32>::new(comptime!(cfg.blocks as usize));
        for e in 0..e_n {
            dg[e] = 0.0f32;
        }
        if cfg.gate != 1 {
            for s in 0..top {
                let e = blocks[t * top + s] as usize;
                let p = slot_of[t * top + s] as usize;
                dg[e] = gate_scale * dgate[p];
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
