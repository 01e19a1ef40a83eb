//! `#[cube]` kernels of SPT's block-granular selection (METHODS.md §7): the block
//! representatives' codes, the per-query-block top-k of key blocks, and the expansion of the kept
//! blocks into each query row's key list, which the row kernels of [`super::kernels`] attend
//! over. In these kernels `cfg.block` is G and `cfg.topk` the kept blocks kb = ⌈topk / G⌉.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]
// Kernel code is expanded by `#[cube]`, which understands comparisons but not `Range::contains`.
#![allow(clippy::manual_range_contains)]
// `usize::div_ceil` does not expand inside `#[cube]`.
#![allow(clippy::manual_div_ceil)]

use super::kernels::SptConfig;
use super::select::{nearest_word, pad_slots, pq_row_select};
use crate::select::row::RowShape;
use cubecl::prelude::*;

/// The representative of every block of G rows of `x` [heads, L, D] — the f32 mean of its rows
/// (the last block of a head may be shorter) — into `means` [heads·⌈L/G⌉, D], and its PQ codes
/// into `codes` [heads·⌈L/G⌉, S]. One unit per (block, subspace).
#[cube(launch, launch_unchecked)]
pub fn spt_block_codes<F: Float>(
    x: &Array<F>,
    codebook: &Array<F>,
    means: &mut Array<f32>,
    codes: &mut Array<u32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
) {
    let pos = ABSOLUTE_POS;
    if pos < codes.len() {
        let (s, d, dc) = (cfg.s as usize, cfg.d as usize, cfg.dc as usize);
        let g = cfg.block as usize;
        let l = seq_len as usize;
        let blocks = (l + g - 1) / g;
        let row = pos / s;
        let sub = pos % s;
        let first = (row / blocks) * l + (row % blocks) * g;
        let mut count = l - (row % blocks) * g;
        if count > g {
            count = g;
        }
        let mut xs = Array::<f32>::new(comptime!(cfg.dc as usize));
        #[unroll]
        for t in 0..cfg.dc {
            xs[t as usize] = 0.0f32;
        }
        for r in 0..count {
            let base = (first + r) * d + sub * dc;
            #[unroll]
            for t in 0..cfg.dc {
                xs[t as usize] += f32::cast_from(x[base + t as usize]);
            }
        }
        let n = f32::cast_from(count as u32);
        #[unroll]
        for t in 0..cfg.dc {
            let mean = xs[t as usize] / n;
            xs[t as usize] = mean;
            means[row * d + sub * dc + t as usize] = mean;
        }
        codes[pos] = nearest_word::<F>(&xs, codebook, sub, cfg);
    }
}

/// The kept key blocks of every query block, a cube per query block
/// ([`crate::select::row`]): scored like [`super::select::spt_select`]'s candidates, from the
/// blocks' mean codes (pq-adc: the query block's mean against the key blocks' codewords); the
/// best kb written in ascending block order, then −1. With `causal`, the diagonal block is always
/// kept and the other kb − 1 are the best of the blocks before it. `blocks` is [heads·⌈L/G⌉, kb].
#[cube(launch, launch_unchecked)]
pub fn spt_block_select<F: Float>(
    means_q: &Array<f32>,
    codebook: &Array<F>,
    codes_q: &Array<u32>,
    codes_k: &Array<u32>,
    blocks: &mut Array<i32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] shape: RowShape,
) {
    let row = CUBE_POS;
    let kb = cfg.topk as usize;
    let active = row < blocks.len() / kb;
    let g = cfg.block;
    let nb = (seq_len + g - 1) / g;
    let head = row / nb as usize;
    let qb = (row % nb as usize) as u32;
    let want = comptime!(if cfg.causal { cfg.topk - 1 } else { cfg.topk });
    let mut n = nb;
    if cfg.causal {
        n = qb;
    }
    let mut written = pq_row_select::<f32, F>(
        means_q,
        codebook,
        codes_q,
        codes_k,
        blocks,
        row,
        head * nb as usize,
        n,
        want,
        active,
        cfg,
        shape,
    );
    // The diagonal follows every kept block before it.
    if cfg.causal {
        if active && UNIT_POS == 0 {
            blocks[row * kb + written as usize] = i32::cast_from(qb);
        }
        written += 1u32;
    }
    pad_slots(blocks, row * kb, written, active, cfg, shape);
}

/// Each query row's keys under block-granular selection, `keys` [heads·L, kb·G]: slot t holds
/// key c·G + t mod G of the row's query block's kept block c = blocks[·, t / G], or −1 where the
/// block slot is empty, the key is past L (a ragged last block) or, with `causal`, after the
/// query. One unit per slot.
#[cube(launch, launch_unchecked)]
pub fn spt_block_expand(
    blocks: &Array<i32>,
    keys: &mut Array<i32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
) {
    let pos = ABSOLUTE_POS;
    if pos < keys.len() {
        let g = cfg.block as usize;
        let kb = cfg.topk as usize;
        let l = seq_len as usize;
        let nb = (l + g - 1) / g;
        let width = kb * g;
        let row = pos / width;
        let slot = pos % width;
        let i = row % l;
        let c = blocks[((row / l) * nb + i / g) * kb + slot / g];
        let j = usize::cast_from(c) * g + slot % g;
        if c >= 0i32 && j < l && (!cfg.causal || j <= i) {
            keys[pos] = i32::cast_from(j);
        } else {
            keys[pos] = -1i32;
        }
    }
}
