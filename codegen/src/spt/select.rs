//! `#[cube]` kernels of SPT's selection: PQ encoding (L1 argmin per subspace, ties to the lower
//! codeword) and the exact per-row top-k of the candidate keys (pq-match or pq-adc), written in
//! ascending key order and padded with −1.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]
// Kernel code is expanded by `#[cube]`, which understands comparisons but not `Range::contains`.
#![allow(clippy::manual_range_contains)]

use super::kernels::SptConfig;
use crate::select::row::{RowShape, best_first, row_select, row_valid};
use cubecl::prelude::*;

/// Codes of the rows of `x` [rows, S·d_c]: per subspace the codeword at the least L1 distance,
/// ties to the lower codeword. One unit per (row, subspace); `codes` is [rows, S].
#[cube(launch, launch_unchecked)]
pub fn pq_encode<F: Float>(
    x: &Array<F>,
    codebook: &Array<F>,
    codes: &mut Array<u32>,
    #[comptime] cfg: SptConfig,
) {
    let pos = ABSOLUTE_POS;
    if pos < codes.len() {
        let s = cfg.s as usize;
        let row = pos / s;
        let sub = pos % s;
        let base = row * (cfg.d as usize) + sub * (cfg.dc as usize);
        let mut xs = Array::<f32>::new(comptime!(cfg.dc as usize));
        #[unroll]
        for t in 0..cfg.dc {
            xs[t as usize] = f32::cast_from(x[base + t as usize]);
        }
        codes[pos] = nearest_word::<F>(&xs, codebook, sub, cfg);
    }
}

/// The codeword of subspace `sub` at the least L1 distance from the sub-vector `xs` (d_c values
/// in registers), ties to the lower codeword.
#[cube]
pub(crate) fn nearest_word<F: Float>(
    xs: &Array<f32>,
    codebook: &Array<F>,
    sub: usize,
    #[comptime] cfg: SptConfig,
) -> u32 {
    let dc = cfg.dc as usize;
    // Seed with codeword 0 (WGSL has no infinity literal), then strict `<`: ties keep the lower word.
    let mut best = 0.0f32;
    #[unroll]
    for t in 0..cfg.dc {
        best += f32::abs(
            xs[t as usize] - f32::cast_from(codebook[sub * (cfg.e as usize) * dc + t as usize]),
        );
    }
    let mut best_word = 0u32;
    for w in 1..cfg.e {
        let cb = (sub * (cfg.e as usize) + w as usize) * dc;
        let mut dist = 0.0f32;
        #[unroll]
        for t in 0..cfg.dc {
            dist += f32::abs(xs[t as usize] - f32::cast_from(codebook[cb + t as usize]));
        }
        if dist < best {
            best = dist;
            best_word = w;
        }
    }
    best_word
}

/// Top-k selection per query row: the kept set (highest key first, ties to the lower key index)
/// written in ascending key order, padded with −1. Exact: one cube per row
/// ([`crate::select::row`]); the pq-adc table q_s · codebook[s, w] is built once per row in
/// shared memory, then each unit scores its chunk of candidates — pq-match: the number of equal
/// codes (a key of a few bits, S − matches); pq-adc: Σ_s table[s, code_k[s]] — and the radix
/// select keeps the best `topk`. `indices` is [rows, topk].
#[cube(launch, launch_unchecked)]
pub fn spt_select<F: Float>(
    q: &Array<F>,
    codebook: &Array<F>,
    codes_q: &Array<u32>,
    codes_k: &Array<u32>,
    indices: &mut Array<i32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] shape: RowShape,
) {
    let row = CUBE_POS;
    let topk = cfg.topk as usize;
    let active = row < indices.len() / topk;
    let l = seq_len as usize;
    let head = row / l;
    let mut n = seq_len;
    if cfg.causal {
        n = (row % l + 1) as u32;
    }
    let written = pq_row_select::<F, F>(
        q,
        codebook,
        codes_q,
        codes_k,
        indices,
        row,
        head * l,
        n,
        cfg.topk,
        active,
        cfg,
        shape,
    );
    // Slots past the kept set (a causal row shorter than topk) are empty.
    pad_slots(indices, row * topk, written, active, cfg, shape);
}

/// Scores the `n` candidates of query row `row` (key rows `kfirst..kfirst + n` of `codes_k`;
/// pq-adc from the query vector, row `row` of `x`) and writes the `kept` best, ascending, into
/// `out[row · cfg.topk ..]` ([`row_select`]). Returns how many were written. Every unit of the
/// cube must call it; shared by the row-exact and the block-granular selection.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pq_row_select<X: Float, F: Float>(
    x: &Array<X>,
    codebook: &Array<F>,
    codes_q: &Array<u32>,
    codes_k: &Array<u32>,
    out: &mut Array<i32>,
    row: usize,
    kfirst: usize,
    n: u32,
    kept: u32,
    active: bool,
    #[comptime] cfg: SptConfig,
    #[comptime] shape: RowShape,
) -> u32 {
    let mut table = SharedMemory::<f32>::new(comptime!(if cfg.adc {
        (cfg.s * cfg.e) as usize
    } else {
        1usize
    }));
    adc_table::<X, F>(
        x,
        row * (cfg.d as usize),
        codebook,
        &mut table,
        active,
        cfg,
        shape,
    );
    let mut valid = 0u32;
    if active {
        valid = row_valid(n, shape);
    }
    let mut keys = Array::<u32>::new(comptime!(shape.per as usize));
    pq_keys(
        &mut keys,
        &table,
        codes_q,
        row * (cfg.s as usize),
        codes_k,
        kfirst + (UNIT_POS * shape.per) as usize,
        valid,
        cfg,
        shape,
    );
    row_select::<i32>(
        &keys,
        valid,
        n,
        kept,
        out,
        row * (cfg.topk as usize),
        0u32,
        active,
        shape,
    )
}

/// Empties (−1) the slots `written..cfg.topk` of the row at `base` of `out`, spread over the
/// cube.
#[cube]
pub(crate) fn pad_slots(
    out: &mut Array<i32>,
    base: usize,
    written: u32,
    active: bool,
    #[comptime] cfg: SptConfig,
    #[comptime] shape: RowShape,
) {
    for x in 0..comptime!(cfg.topk.div_ceil(shape.units)) {
        let slot = written + UNIT_POS + x * shape.units;
        if active && slot < cfg.topk {
            out[base + slot as usize] = -1i32;
        }
    }
}

/// pq-adc's score table of one query, table[s·E + w] = x_s · codebook[s, w] for the row of `x`
/// at `base` (d_c values per subspace), filled by the whole cube into shared memory; nothing
/// for pq-match. Every unit of the cube must call it.
#[cube]
pub(crate) fn adc_table<X: Float, F: Float>(
    x: &Array<X>,
    base: usize,
    codebook: &Array<F>,
    table: &mut SharedMemory<f32>,
    active: bool,
    #[comptime] cfg: SptConfig,
    #[comptime] shape: RowShape,
) {
    if cfg.adc {
        let (e, dc) = (cfg.e as usize, cfg.dc as usize);
        for c in 0..comptime!((cfg.s * cfg.e).div_ceil(shape.units)) {
            let at = (UNIT_POS + c * shape.units) as usize;
            if active && at < (cfg.s * cfg.e) as usize {
                let sub = at / e;
                let mut dot = 0.0f32;
                for t in 0..dc {
                    dot += f32::cast_from(x[base + sub * dc + t])
                        * f32::cast_from(codebook[at * dc + t]);
                }
                table[at] = dot;
            }
        }
        sync_cube();
    }
}

/// The selection keys of this unit's `valid` candidates, key rows `first..first + valid` of
/// `codes_k`, against the query whose codes start at `qbase`: pq-match S − matches, pq-adc
/// the order-mapped Σ_s table[s, code_k[s]] (small keys first).
#[cube]
pub(crate) fn pq_keys(
    keys: &mut Array<u32>,
    table: &SharedMemory<f32>,
    codes_q: &Array<u32>,
    qbase: usize,
    codes_k: &Array<u32>,
    first: usize,
    valid: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] shape: RowShape,
) {
    let (s, e) = (cfg.s as usize, cfg.e as usize);
    for x in 0..shape.per {
        if x < valid {
            let krow = first + x as usize;
            if cfg.adc {
                let mut score = 0.0f32;
                for sub in 0..s {
                    score += table[sub * e + codes_k[krow * s + sub] as usize];
                }
                keys[x as usize] = best_first(score);
            } else {
                let mut matches = 0u32;
                for sub in 0..s {
                    if codes_q[qbase + sub] == codes_k[krow * s + sub] {
                        matches += 1u32;
                    }
                }
                keys[x as usize] = cfg.s - matches;
            }
        }
    }
}

/// Bits of SPT's selection key for `cfg`: S − matches (at most S) for pq-match, an order-mapped
/// f32 for pq-adc.
pub fn key_bits(cfg: &SptConfig) -> u32 {
    if cfg.adc {
        32
    } else {
        32 - cfg.s.leading_zeros()
    }
}
