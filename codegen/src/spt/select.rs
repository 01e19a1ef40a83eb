//! `#[cube]` kernels of SPT's selection: PQ encoding (L1 argmin per subspace, ties to the lower
//! codeword) and the exact per-row top-k of the candidate keys (pq-match or pq-adc), written in
//! ascending key order and padded with −1.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]
// Kernel code is expanded by `#[cube]`, which understands comparisons but not `Range::contains`.
#![allow(clippy::manual_range_contains)]

use super::kernels::SptConfig;
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
        let dc = cfg.dc as usize;
        let row = pos / s;
        let sub = pos % s;
        let base = row * (cfg.d as usize) + sub * dc;
        // Seed with codeword 0 (WGSL has no infinity literal), then strict `<`: ties keep the lower word.
        let mut best = 0.0f32;
        #[unroll]
        for t in 0..cfg.dc {
            best += f32::abs(
                f32::cast_from(x[base + t as usize])
                    - f32::cast_from(codebook[sub * (cfg.e as usize) * dc + t as usize]),
            );
        }
        let mut best_word = 0u32;
        for w in 1..cfg.e {
            let cb = (sub * (cfg.e as usize) + w as usize) * dc;
            let mut dist = 0.0f32;
            #[unroll]
            for t in 0..cfg.dc {
                dist += f32::abs(
                    f32::cast_from(x[base + t as usize])
                        - f32::cast_from(codebook[cb + t as usize]),
                );
            }
            if dist < best {
                best = dist;
                best_word = w;
            }
        }
        codes[pos] = best_word;
    }
}

/// An order-preserving map of f32 onto u32 (larger float ⇒ larger key).
#[cube]
fn ordered_key(v: f32) -> u32 {
    let bits = u32::reinterpret(v);
    if bits >= 0x8000_0000u32 {
        !bits
    } else {
        bits | 0x8000_0000u32
    }
}

/// The selection key of candidate key row `krow` for the query whose codes start at `qbase`
/// (pq-match: equal codes) or whose ADC table is `table` (pq-adc: Σ_s table[s, code_k[s]]).
#[cube]
fn candidate_key(
    codes_q: &Array<u32>,
    codes_k: &Array<u32>,
    table: &Array<f32>,
    qbase: usize,
    krow: usize,
    #[comptime] cfg: SptConfig,
) -> u32 {
    let s = cfg.s as usize;
    let mut key = 0u32;
    if cfg.adc {
        let mut score = 0.0f32;
        for sub in 0..s {
            score += table[sub * (cfg.e as usize) + codes_k[krow * s + sub] as usize];
        }
        key = ordered_key(score);
    } else {
        for sub in 0..s {
            if codes_q[qbase + sub] == codes_k[krow * s + sub] {
                key += 1u32;
            }
        }
    }
    key
}

/// Top-k selection per query row: the kept set (highest key first, ties to the lower key index)
/// written in ascending key order, padded with −1. Exact: the k-th largest key is found first —
/// from a histogram of the S+1 possible match counts (pq-match, one pass) or bit by bit (pq-adc,
/// one counting pass per key bit) — then keys above it and the first ones equal to it are kept.
/// One unit per row; `indices` is [rows, topk].
#[cube(launch, launch_unchecked)]
pub fn spt_select<F: Float>(
    q: &Array<F>,
    codebook: &Array<F>,
    codes_q: &Array<u32>,
    codes_k: &Array<u32>,
    indices: &mut Array<i32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
) {
    let row = ABSOLUTE_POS;
    let topk = cfg.topk as usize;
    if row < indices.len() / topk {
        let l = seq_len as usize;
        let s = cfg.s as usize;
        let e = cfg.e as usize;
        let dc = cfg.dc as usize;
        let head = row / l;
        let i = row % l;
        let n = if cfg.causal { i + 1 } else { l };
        let mut kept = n;
        if topk < n {
            kept = topk;
        }
        let qbase = row * s;

        let mut table = Array::<f32>::new(comptime!(if cfg.adc {
            (cfg.s * cfg.e) as usize
        } else {
            1usize
        }));
        if cfg.adc {
            for sub in 0..s {
                for w in 0..e {
                    let mut dot = 0.0f32;
                    for t in 0..dc {
                        dot += f32::cast_from(q[row * (cfg.d as usize) + sub * dc + t])
                            * f32::cast_from(codebook[(sub * e + w) * dc + t]);
                    }
                    table[sub * e + w] = dot;
                }
            }
        }

        // The kept-th largest key: the largest t with #{key >= t} >= kept, and #{key > t}.
        let mut threshold = 0u32;
        let mut above = 0usize;
        if cfg.adc {
            // f32 keys: decide the threshold bit by bit, one counting pass per bit.
            for b in 0..32u32 {
                let candidate = threshold | (1u32 << (31u32 - b));
                let mut count = 0usize;
                for j in 0..n {
                    if candidate_key(codes_q, codes_k, &table, qbase, head * l + j, cfg)
                        >= candidate
                    {
                        count += 1;
                    }
                }
                if count >= kept {
                    threshold = candidate;
                }
            }
            for j in 0..n {
                if candidate_key(codes_q, codes_k, &table, qbase, head * l + j, cfg) > threshold {
                    above += 1;
                }
            }
        } else {
            // Match counts lie in 0..=S: one histogram pass, then a scan from the top.
            let mut hist = Array::<u32>::new(comptime!((cfg.s + 1) as usize));
            for b in 0..cfg.s + 1 {
                hist[b as usize] = 0u32;
            }
            for j in 0..n {
                let key = candidate_key(codes_q, codes_k, &table, qbase, head * l + j, cfg);
                hist[key as usize] += 1u32;
            }
            let mut cumulative = 0usize;
            let mut found = false;
            for b in 0..cfg.s + 1 {
                let t = cfg.s - b;
                let before = cumulative;
                cumulative += hist[t as usize] as usize;
                if !found && cumulative >= kept {
                    threshold = t;
                    above = before;
                    found = true;
                }
            }
        }
        let mut equal_left = kept - above;
        let mut slot = 0usize;
        for j in 0..n {
            let key = candidate_key(codes_q, codes_k, &table, qbase, head * l + j, cfg);
            let mut take = key > threshold;
            if key == threshold && equal_left > 0 {
                take = true;
                equal_left -= 1;
            }
            if take {
                indices[row * topk + slot] = j as i32;
                slot += 1;
            }
        }
        while slot < topk {
            indices[row * topk + slot] = -1i32;
            slot += 1;
        }
    }
}
