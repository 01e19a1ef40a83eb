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

    // `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
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

    /// Radix pass `pass` (0 = the top 8 bits), step 1: per chunk, the histogram of digit `pass`
    /// of the keys whose higher digits equal the pivot found so far (`state[0]`).
    /// `hist` [chunks, 256]; one unit per chunk.
    #[cube(launch)]
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
    #[cube(launch)]
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
    #[cube(launch)]
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
    #[cube(launch)]
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
    #[cube(launch)]
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
    #[cube(launch)]
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
    #[cube(launch)]
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

use crate::launch::{arr, grid};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{
    RADIX, SELECT_CHUNK, select_bins, select_count, select_cutoff, select_fill, select_hist,
    select_pick, select_scan,
};

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

/// Runs the selection up to the pivot state on the device, without reading anything back:
/// `state` = [pivot key, pivot-equal elements taken, total selected, flat index of the last
/// pivot-equal one taken] (u32 ×4), plus the per-chunk prefixes `counts` the compaction uses.
/// `signed` orders by value instead of magnitude.
pub fn pivot<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    w: &Handle,
    len: usize,
    keep: Keep,
    signed: bool,
) -> (Handle, Handle) {
    let chunks = len.div_ceil(SELECT_CHUNK as usize).max(1);
    let radix = RADIX as usize;
    let init: [u32; 4] = match keep {
        Keep::Smallest(k) if k >= len => [u32::MAX, 0, 0, 0],
        Keep::Smallest(0) => [0, 0, 0, 0],
        Keep::Smallest(k) => [0, k as u32, 0, 0],
        Keep::Below(t) => [f32_at_or_above(t), 0, 0, 0],
    };
    let state = client.create_from_slice(u32::as_bytes(&init));
    let (ccount, cdim) = grid(client, chunks);
    let (one, one_dim) = grid(client, 1);
    if let Keep::Smallest(k) = keep
        && k > 0
        && k < len
    {
        let hist = client.empty(chunks * radix * 4);
        let totals = client.empty(radix * 4);
        let (bcount, bdim) = grid(client, radix);
        for pass in 0..4u32 {
            select_hist::launch::<F, R>(
                client,
                ccount.clone(),
                cdim,
                arr(w, len),
                arr(&state, 4),
                arr(&hist, chunks * radix),
                pass,
                signed,
            );
            select_bins::launch::<R>(
                client,
                bcount.clone(),
                bdim,
                arr(&hist, chunks * radix),
                arr(&totals, radix),
            );
            select_pick::launch::<R>(
                client,
                one.clone(),
                one_dim,
                arr(&totals, radix),
                arr(&state, 4),
            );
        }
    }
    let counts = client.empty(chunks * 2 * 4);
    select_count::launch::<F, R>(
        client,
        ccount.clone(),
        cdim,
        arr(w, len),
        arr(&state, 4),
        arr(&counts, chunks * 2),
        signed,
    );
    select_scan::launch::<R>(
        client,
        one,
        one_dim,
        arr(&counts, chunks * 2),
        arr(&state, 4),
    );
    select_cutoff::launch::<F, R>(
        client,
        ccount,
        cdim,
        arr(w, len),
        arr(&state, 4),
        arr(&counts, chunks * 2),
        signed,
    );
    (state, counts)
}

/// Selects among the `len` elements of `w` (dtype `F`, by magnitude) on the device. Returns the
/// flat indices [nnz] (u32, ascending; a 4-byte placeholder when nnz = 0) and nnz, read back
/// once (the count decides the packed buffers' sizes).
pub fn select<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    w: &Handle,
    len: usize,
    keep: Keep,
) -> Result<(Handle, usize), String> {
    let chunks = len.div_ceil(SELECT_CHUNK as usize).max(1);
    let (state, counts) = pivot::<R, F>(client, w, len, keep, false);
    let bytes = client
        .read_one(state.clone())
        .map_err(|e| format!("{e:?}"))?;
    let nnz = u32::from_bytes(&bytes)[2] as usize;
    let index = client.empty(nnz.max(1) * 4);
    let (ccount, cdim) = grid(client, chunks);
    select_fill::launch::<F, R>(
        client,
        ccount,
        cdim,
        arr(w, len),
        arr(&state, 4),
        arr(&counts, chunks * 2),
        arr(&index, nnz.max(1)),
        false,
    );
    Ok((index, nnz))
}
