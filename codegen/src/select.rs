//! Exact selection of the smallest magnitudes on the device, without a sort: a radix select over
//! the bit patterns of |w| (non-negative f32 values order like their u32 bits) finds the k-th
//! smallest magnitude in four 8-bit passes, then a counting compaction writes the selected flat
//! indices in ascending order — every |w| below the k-th value, and of those equal to it the
//! lowest flat indices first (the reference's tie rule). A threshold mask (|w| < t) is the same
//! compaction with the threshold as the pivot and no ties taken.
//!
//! Every pass is chunked ([`SELECT_CHUNK`] elements per unit) with per-chunk counts and
//! fixed-order prefix sums: deterministic, no atomics, and no invocation loops more than a few
//! thousand times (lavapipe's loop limit, see docs/perf.md).

pub mod kernels {
    //! `#[cube]` kernels of the selection.

    // `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
    #![allow(missing_docs)]

    use cubecl::prelude::*;

    /// Elements per unit of the chunked passes.
    pub const SELECT_CHUNK: u32 = 1024;
    /// Buckets of one radix pass (8 bits).
    pub const RADIX: u32 = 256;

    /// The sortable key of a value: the bits of |v| as f32, or, `signed`, the bits of v mapped
    /// so that unsigned order is float order (negative: all bits flipped; else the sign bit
    /// set).
    #[cube]
    pub fn key<F: Float>(v: F, #[comptime] signed: bool) -> u32 {
        let mut k = u32::reinterpret(f32::abs(f32::cast_from(v)));
        if signed {
            let bits = u32::reinterpret(f32::cast_from(v));
            k = bits | 0x8000_0000u32;
            if (bits >> 31u32) == 1u32 {
                k = !bits;
            }
        }
        k
    }

    /// Whether the element at `flat` with key `k` is selected, by the pivot state of a finished
    /// selection: below the pivot, or equal to it and at or before the tie cutoff.
    #[cube]
    pub fn selected(k: u32, flat: usize, state: &Array<u32>) -> bool {
        let pivot = state[0];
        let mut take = k < pivot;
        if k == pivot && state[1] > 0u32 {
            take = (flat as u32) <= state[3];
        }
        take
    }

    /// Comptime layout of [`row_topk`].
    #[derive_cube_comptime]
    pub struct TopkConfig {
        /// Entries per row.
        pub c: u32,
        /// Entries kept per row.
        pub topk: u32,
        /// The score includes the f32 `base`.
        pub base: bool,
        /// The score includes the storage-typed `term`.
        pub term: bool,
        /// Rank by magnitude.
        pub abs: bool,
        /// Write flat indices `row·c + column` (else columns).
        pub flat: bool,
    }

    /// The score of entry `at`: base[at] + term[at] (each when present), by magnitude with `abs`.
    #[cube]
    fn topk_score<F: Float>(
        base: &Array<f32>,
        term: &Array<F>,
        at: usize,
        #[comptime] cfg: TopkConfig,
    ) -> f32 {
        let mut s = 0.0f32;
        if cfg.base {
            s += base[at];
        }
        if cfg.term {
            s += f32::cast_from(term[at]);
        }
        if cfg.abs {
            s = f32::abs(s);
        }
        s
    }

    /// Per row of `c` entries, the `topk` with the highest score (ties to the lower column),
    /// written in ascending order into `kept` [rows, topk]: the Sparse-CBM head's concepts (z +
    /// noise) and N:M's kept entries of each group (|w|, flat indices). Rank order (score
    /// descending, column ascending): each of `topk` rounds takes the first entry after the
    /// previous pick, so no per-entry flags are needed. One unit per row.
    #[cube(launch, launch_unchecked)]
    pub fn row_topk<F: Float>(
        base: &Array<f32>,
        term: &Array<F>,
        kept: &mut Array<u32>,
        #[comptime] cfg: TopkConfig,
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
                    let s = topk_score::<F>(base, term, b * c + j, cfg);
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
                let s = topk_score::<F>(base, term, b * c + j, cfg);
                let ji = j as i32;
                if s > last_s || (s == last_s && ji <= last_j) {
                    let mut out = j as u32;
                    if cfg.flat {
                        out = (b * c + j) as u32;
                    }
                    kept[b * topk + slot] = out;
                    slot += 1;
                }
            }
        }
    }

    /// Radix pass `pass` (0 = the top 8 bits), step 1: per chunk, the histogram of digit `pass`
    /// of the keys whose higher digits equal the pivot found so far (`state[0]`).
    /// `hist` [chunks, 256]; one unit per chunk.
    #[cube(launch, launch_unchecked)]
    pub fn select_hist<F: Float>(
        w: &Array<F>,
        state: &Array<u32>,
        hist: &mut Array<u32>,
        #[comptime] pass: u32,
        #[comptime] signed: bool,
    ) {
        let chunk = ABSOLUTE_POS;
        let radix = RADIX as usize;
        if chunk < hist.len() / radix {
            for b in 0..radix {
                hist[chunk * radix + b] = 0u32;
            }
            let first = chunk * (SELECT_CHUNK as usize);
            let mut last = first + SELECT_CHUNK as usize;
            if last > w.len() {
                last = w.len();
            }
            let prefix = state[0];
            for at in first..last {
                let k = key::<F>(w[at], signed);
                let mut matches = true;
                if pass > 0 {
                    matches = (k >> comptime!(32 - 8 * pass)) == prefix;
                }
                if matches {
                    let digit = ((k >> comptime!(24 - 8 * pass)) & 255u32) as usize;
                    hist[chunk * radix + digit] += 1u32;
                }
            }
        }
    }

    /// Step 2: the total of each bucket over the chunks, in chunk order. One unit per bucket.
    #[cube(launch, launch_unchecked)]
    pub fn select_bins(hist: &Array<u32>, totals: &mut Array<u32>) {
        let b = ABSOLUTE_POS;
        let radix = RADIX as usize;
        if b < radix {
            let mut acc = 0u32;
            for c in 0..hist.len() / radix {
                acc += hist[c * radix + b];
            }
            totals[b] = acc;
        }
    }

    /// Step 3: the bucket holding the wanted rank. `state` = [pivot prefix, rank (1-based) among
    /// the keys that share it]: the prefix gains the bucket's digit and the rank drops by the
    /// keys of the lower buckets. One unit.
    #[cube(launch, launch_unchecked)]
    pub fn select_pick(totals: &Array<u32>, state: &mut Array<u32>) {
        if ABSOLUTE_POS == 0 {
            let rank = state[1];
            let mut below = 0u32;
            let mut digit = 0u32;
            let mut found = false;
            for b in 0..RADIX {
                let n = totals[b as usize];
                if !found {
                    if below + n >= rank {
                        digit = b;
                        found = true;
                    } else {
                        below += n;
                    }
                }
            }
            state[0] = (state[0] << 8u32) | digit;
            state[1] = rank - below;
        }
    }

    /// Compaction, step 1: per chunk, how many keys are below the pivot (`state[0]`) and how
    /// many equal it. `counts` [chunks, 2]; one unit per chunk.
    #[cube(launch, launch_unchecked)]
    pub fn select_count<F: Float>(
        w: &Array<F>,
        state: &Array<u32>,
        counts: &mut Array<u32>,
        #[comptime] signed: bool,
    ) {
        let chunk = ABSOLUTE_POS;
        if chunk < counts.len() / 2 {
            let first = chunk * (SELECT_CHUNK as usize);
            let mut last = first + SELECT_CHUNK as usize;
            if last > w.len() {
                last = w.len();
            }
            let pivot = state[0];
            let mut less = 0u32;
            let mut equal = 0u32;
            for at in first..last {
                let k = key::<F>(w[at], signed);
                if k < pivot {
                    less += 1u32;
                }
                if k == pivot {
                    equal += 1u32;
                }
            }
            counts[chunk * 2] = less;
            counts[chunk * 2 + 1] = equal;
        }
    }

    /// Step 2: per chunk, in place, the selected elements before it and the pivot-equal elements
    /// before it (exclusive prefixes, equal ones taken while fewer than `state[1]` came before),
    /// and the total selected into `state[2]`. One unit (chunks are 1024 elements: a 16M-weight
    /// matrix is 16 384 iterations).
    #[cube(launch, launch_unchecked)]
    pub fn select_scan(counts: &mut Array<u32>, state: &mut Array<u32>) {
        if ABSOLUTE_POS == 0 {
            let need = state[1];
            let mut selected = 0u32;
            let mut equal = 0u32;
            for c in 0..counts.len() / 2 {
                let less = counts[c * 2];
                let eq = counts[c * 2 + 1];
                counts[c * 2] = selected;
                counts[c * 2 + 1] = equal;
                let mut take = 0u32;
                if equal < need {
                    take = need - equal;
                    if eq < take {
                        take = eq;
                    }
                }
                selected += less + take;
                equal += eq;
            }
            state[2] = selected;
        }
    }

    /// Step 3: every selected flat index, ascending, into `index`. One unit per chunk.
    #[cube(launch, launch_unchecked)]
    pub fn select_fill<F: Float>(
        w: &Array<F>,
        state: &Array<u32>,
        counts: &Array<u32>,
        index: &mut Array<u32>,
        #[comptime] signed: bool,
    ) {
        let chunk = ABSOLUTE_POS;
        if chunk < counts.len() / 2 {
            let first = chunk * (SELECT_CHUNK as usize);
            let mut last = first + SELECT_CHUNK as usize;
            if last > w.len() {
                last = w.len();
            }
            let pivot = state[0];
            let need = state[1];
            let mut at_out = counts[chunk * 2] as usize;
            let mut equal = counts[chunk * 2 + 1];
            for at in first..last {
                let k = key::<F>(w[at], signed);
                let mut take = k < pivot;
                if k == pivot {
                    take = equal < need;
                    equal += 1u32;
                }
                if take {
                    index[at_out] = at as u32;
                    at_out += 1;
                }
            }
        }
    }

    /// The flat index of the last pivot-equal element taken, into `state[3]` (when any is
    /// taken): the chunk holding it walks its elements. One unit per chunk.
    #[cube(launch, launch_unchecked)]
    pub fn select_cutoff<F: Float>(
        w: &Array<F>,
        state: &mut Array<u32>,
        counts: &Array<u32>,
        #[comptime] signed: bool,
    ) {
        let chunk = ABSOLUTE_POS;
        if chunk < counts.len() / 2 {
            let first = chunk * (SELECT_CHUNK as usize);
            let mut last = first + SELECT_CHUNK as usize;
            if last > w.len() {
                last = w.len();
            }
            let pivot = state[0];
            let need = state[1];
            let mut equal = counts[chunk * 2 + 1];
            if need > 0u32 && equal < need {
                for at in first..last {
                    if key::<F>(w[at], signed) == pivot {
                        if equal + 1u32 == need {
                            state[3] = at as u32;
                        }
                        equal += 1u32;
                    }
                }
            }
        }
    }
}

use crate::plan::{Arg, BufId, Elem, Float, Kernel, PlanBuilder, Role};
use kernels::{RADIX, SELECT_CHUNK};
use kernels_ir::Extent;

/// Which elements a selection keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keep {
    /// The `k` smallest |w| (ties → lower flat index).
    Smallest(usize),
    /// Every |w| strictly below the threshold.
    Below(f64),
}

/// The smallest f32 not below `t` (for t ≥ 0): for any f32 value v, v < t ⟺ v < that value, so
/// the device compares f32 keys exactly as the reference compares in f64.
fn f32_at_or_above(t: f64) -> u32 {
    let f = t as f32;
    let f = if (f as f64) < t { f.next_up() } else { f };
    f.abs().to_bits()
}

/// Chunks of [`SELECT_CHUNK`] elements covering `len`.
pub fn chunks(len: usize) -> usize {
    len.div_ceil(SELECT_CHUNK as usize).max(1)
}

/// Appends the selection over the `len` elements of buffer `w` (float type `float`) up to its
/// pivot state, without reading anything back: the state buffer `select_state` = [pivot key,
/// pivot-equal elements taken, total selected, flat index of the last pivot-equal one taken]
/// (u32 ×4, with role `state_role`), and the per-chunk prefixes `select_counts` the compaction
/// uses. `signed` orders by value instead of magnitude. Returns (state, counts).
pub fn pivot(
    b: &mut PlanBuilder,
    w: BufId,
    float: Float,
    len: usize,
    keep: Keep,
    signed: bool,
    state_role: Role,
) -> (BufId, BufId) {
    let chunks = chunks(len);
    let radix = RADIX as usize;
    let init: Vec<u32> = match keep {
        Keep::Smallest(k) if k >= len => vec![u32::MAX, 0, 0, 0],
        Keep::Smallest(0) => vec![0, 0, 0, 0],
        Keep::Smallest(k) => vec![0, k as u32, 0, 0],
        Keep::Below(t) => vec![f32_at_or_above(t), 0, 0, 0],
    };
    let state = b.buffer(
        "select_state",
        Elem::U32,
        vec![Extent::Fixed(4)],
        state_role,
    );
    b.initialise(state, crate::plan::ConstData::U32(init));
    if let Keep::Smallest(k) = keep
        && k > 0
        && k < len
    {
        let hist = b.scratch("select_hist", Elem::U32, &[chunks, radix]);
        let totals = b.scratch("select_totals", Elem::U32, &[radix]);
        for pass in 0..4u32 {
            b.elementwise_as(
                &format!("select_hist_pass{pass}"),
                Kernel::SelectHist(pass, signed),
                float,
                chunks,
                vec![Arg::Buf(w), Arg::Buf(state), Arg::Buf(hist)],
            );
            b.elementwise(
                "select_bins",
                Kernel::SelectBins(),
                radix,
                vec![Arg::Buf(hist), Arg::Buf(totals)],
            );
            b.elementwise(
                "select_pick",
                Kernel::SelectPick(),
                1,
                vec![Arg::Buf(totals), Arg::Buf(state)],
            );
        }
    }
    let counts = b.scratch("select_counts", Elem::U32, &[chunks, 2]);
    b.elementwise_as(
        "select_count",
        Kernel::SelectCount(signed),
        float,
        chunks,
        vec![Arg::Buf(w), Arg::Buf(state), Arg::Buf(counts)],
    );
    b.elementwise(
        "select_scan",
        Kernel::SelectScan(),
        1,
        vec![Arg::Buf(counts), Arg::Buf(state)],
    );
    b.elementwise_as(
        "select_cutoff",
        Kernel::SelectCutoff(signed),
        float,
        chunks,
        vec![Arg::Buf(w), Arg::Buf(state), Arg::Buf(counts)],
    );
    (state, counts)
}

/// Appends the compaction: every selected flat index of `w` (by magnitude), ascending, into
/// `index` (the selection's total long).
pub fn fill(b: &mut PlanBuilder, w: BufId, len: usize, state: BufId, counts: BufId, index: BufId) {
    b.elementwise(
        "select_fill",
        Kernel::SelectFill(false),
        chunks(len),
        vec![
            Arg::Buf(w),
            Arg::Buf(state),
            Arg::Buf(counts),
            Arg::Buf(index),
        ],
    );
}
