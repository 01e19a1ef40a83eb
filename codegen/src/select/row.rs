//! Per-row top-k on the device: the one selection rule of every op that keeps the best entries of
//! each row — SPT's candidate keys, the Sparse-CBM head's concepts, the routed FFN's blocks and
//! N:M's groups. An entry's rank order is its u32 key ascending (the caller maps "best first" to
//! small keys, [`best_first`]), ties to the lower column; the kept columns are written in
//! ascending column order.
//!
//! Two schedules of that rule:
//! - **a cube per row** ([`row_select`], long rows): each unit holds a contiguous chunk of the
//!   row's keys in registers; a radix select over 8-bit digits (histograms in shared memory, the
//!   digit found by a cube scan of the bins) finds the k-th key and how many keys equal to it are
//!   taken, then a cube scan of per-unit counts gives every kept entry its output slot. Integer
//!   counts only: the result is the same whatever order the units count in.
//! - **a unit per row** ([`short_select`], rows of a few dozen entries): each entry's rank is
//!   the number of entries ordered before it: O(n²) compares on a local array, for rows of at
//!   most [`super::SHORT_ROW`] entries (N:M's groups) or a token's E router gates.

// `#[cube]` expands to code that clippy reads as written.
#![allow(missing_docs)]

use cubecl::prelude::*;

use super::kernels::key;
use crate::prim::kernels::{UNITS, cube_scan_width};

/// Buckets of one radix digit.
const BINS: u32 = 256;

/// Comptime shape of a cube-per-row selection: `units` units (a power of two from 32 to 256),
/// each holding `per` consecutive entries of the row, keys of `bits` significant bits.
#[derive_cube_comptime]
pub struct RowShape {
    /// Units per cube (one cube per row).
    pub units: u32,
    /// Consecutive entries per unit.
    pub per: u32,
    /// Significant bits of a key (keys are below 2^bits).
    pub bits: u32,
}

impl RowShape {
    /// The shape for rows of at most `n` entries with keys of `bits` bits: 32 to 256 units, about
    /// 4 entries per unit until 256 units are used, then the entries per unit rounded up to a
    /// power of two (so nearby row lengths share a compiled kernel).
    pub fn for_rows(n: usize, bits: u32) -> RowShape {
        let n = n.max(1);
        let units = n.div_ceil(4).next_power_of_two().clamp(32, UNITS as usize);
        let per = n.div_ceil(units).next_power_of_two();
        RowShape {
            units: units as u32,
            per: per as u32,
            bits: bits.clamp(1, 32),
        }
    }

    /// The longest row the shape holds.
    pub fn capacity(&self) -> usize {
        self.units as usize * self.per as usize
    }

    /// The launch's cube dimension.
    pub fn dim(&self) -> (u32, u32, u32) {
        (self.units, 1, 1)
    }
}

/// The smaller of `a` and `b`.
#[cube]
fn at_most(a: u32, b: u32) -> u32 {
    let mut m = a;
    if b < a {
        m = b;
    }
    m
}

/// The key that ranks `v` best-first (the largest value gets the smallest key): the float order
/// reversed onto u32, with −0 ranked as +0 (they compare equal, as in the reference).
#[cube]
pub fn best_first(v: f32) -> u32 {
    let mut x = v;
    if x == 0.0f32 {
        x = 0.0f32;
    }
    !key::<f32>(x, true)
}

/// The pivot of the `rank`-th smallest key (1-based) of a row spread over the cube — unit `u`
/// holds `keys[0..valid]`, the row's entries u·per.. — and how many keys equal to it are taken:
/// the kept entries are every key below the pivot and the first `need` equal to it. Rank 0
/// keeps nothing. Every unit of the cube must call it.
#[cube]
pub fn row_pivot(
    keys: &Array<u32>,
    valid: u32,
    rank: u32,
    #[comptime] shape: RowShape,
) -> (u32, u32) {
    let bins = SharedMemory::<Atomic<u32>>::new(BINS as usize);
    let mut smem = SharedMemory::<u32>::new(shape.units as usize);
    let mut pick = SharedMemory::<u32>::new(2usize);
    let u = UNIT_POS;
    let per_unit = comptime!(BINS / shape.units);
    let passes = comptime!(shape.bits.div_ceil(8));
    let mut prefix = 0u32;
    let mut left = rank;
    #[unroll]
    for pass in 0..passes {
        let low = (comptime!(passes - 1) - pass) * 8u32;
        for b in 0..per_unit {
            bins[(u * per_unit + b) as usize].store(0u32);
        }
        sync_cube();
        for i in 0..shape.per {
            if i < valid {
                let k = keys[i as usize];
                // The digits above this pass equal the pivot's found so far (two shifts: a
                // shift by 32 is undefined).
                if ((k >> low) >> 8u32) == prefix {
                    bins[((k >> low) & 255u32) as usize].fetch_add(1u32);
                }
            }
        }
        sync_cube();
        let mut mine = 0u32;
        for b in 0..per_unit {
            mine += bins[(u * per_unit + b) as usize].load();
        }
        let (below, _total) = cube_scan_width(mine, &mut smem, shape.units);
        let mut run = below;
        for b in 0..per_unit {
            let c = bins[(u * per_unit + b) as usize].load();
            if run < left && left <= run + c {
                pick[0] = (prefix << 8u32) | (u * per_unit + b);
                pick[1] = left - run;
            }
            run += c;
        }
        sync_cube();
        if left > 0u32 {
            prefix = pick[0];
            left = pick[1];
        }
        // Every unit has read the pick before the next pass writes it.
        sync_cube();
    }
    (prefix, left)
}

/// The placement rule of every selection's compaction, for the next key `k` in index order given
/// the keys below the pivot (`less`) and equal to it (`equal`) before it: whether it is kept,
/// its output slot, and the two counts after it. Kept: every key below the pivot, and the first
/// `need` equal to it; a kept key goes after every kept key before it.
#[cube]
pub fn place(k: u32, pivot: u32, need: u32, less: u32, equal: u32) -> (bool, u32, u32, u32) {
    let mut take = false;
    let mut slot = 0u32;
    let mut l = less;
    let mut e = equal;
    if k < pivot {
        take = true;
        slot = less + at_most(equal, need);
        l += 1u32;
    }
    if k == pivot {
        take = equal < need;
        slot = less + equal;
        e += 1u32;
    }
    (take, slot, l, e)
}

/// The kept entries of a row spread over the cube (as in [`row_pivot`]), given its pivot and
/// ties taken: each kept entry's column plus `offset`, in ascending column order, into
/// `out[base..]`. Returns how many were written. Every unit of the cube must call it.
#[cube]
pub fn row_place<I: Int>(
    keys: &Array<u32>,
    valid: u32,
    pivot: u32,
    need: u32,
    out: &mut Array<I>,
    base: usize,
    offset: u32,
    active: bool,
    #[comptime] shape: RowShape,
) -> u32 {
    let mut smem = SharedMemory::<u32>::new(shape.units as usize);
    let mut less = 0u32;
    let mut equal = 0u32;
    for i in 0..shape.per {
        if i < valid {
            let k = keys[i as usize];
            if k < pivot {
                less += 1u32;
            }
            if k == pivot {
                equal += 1u32;
            }
        }
    }
    // Counts below and equal to the pivot before this unit: one scan of both packed in 16-bit
    // halves where a row cannot reach 2^16 entries, else a scan each.
    let (mut less_before, mut equal_before, less_total, equal_total) =
        if comptime!(shape.units * shape.per < 65536) {
            let (p, t) = cube_scan_width(less | (equal << 16u32), &mut smem, shape.units);
            (p & 65535u32, p >> 16u32, t & 65535u32, t >> 16u32)
        } else {
            let (p, t) = cube_scan_width(less, &mut smem, shape.units);
            let (p2, t2) = cube_scan_width(equal, &mut smem, shape.units);
            (p, p2, t, t2)
        };
    if active {
        let first = UNIT_POS * shape.per;
        for i in 0..shape.per {
            if i < valid {
                let k = keys[i as usize];
                let (take, slot, less, equal) = place(k, pivot, need, less_before, equal_before);
                if take {
                    out[base + slot as usize] = I::cast_from(offset + first + i);
                }
                less_before = less;
                equal_before = equal;
            }
        }
    }
    less_total + at_most(equal_total, need)
}

/// The `kept` best entries of a row spread over the cube, written as in [`row_place`]: the
/// pivot, then the placement. Returns how many were written (`kept`, or fewer when the row is
/// shorter; 0 in a cube past the last row, `active` false). Every unit of the cube must call it.
#[cube]
pub fn row_select<I: Int>(
    keys: &Array<u32>,
    valid: u32,
    n: u32,
    kept: u32,
    out: &mut Array<I>,
    base: usize,
    offset: u32,
    active: bool,
    #[comptime] shape: RowShape,
) -> u32 {
    // A cube past the last row keeps nothing (its pick would never be written).
    let mut rank = 0u32;
    if active {
        rank = at_most(kept, n);
    }
    let (pivot, need) = row_pivot(keys, valid, rank, shape);
    row_place::<I>(keys, valid, pivot, need, out, base, offset, active, shape)
}

/// How many of this unit's entries a row of `n` entries spread over the cube gives it.
#[cube]
pub fn row_valid(n: u32, #[comptime] shape: RowShape) -> u32 {
    let first = UNIT_POS * shape.per;
    let mut valid = 0u32;
    if first < n {
        valid = at_most(n - first, shape.per);
    }
    valid
}

/// The `kept` best of the `n` keys of a short row held by one unit, written as their column
/// plus `offset`, ascending, into `out[base..]`: an entry is kept when fewer than `kept` entries
/// rank before it (a smaller key, or an equal key in a lower column).
#[cube]
pub fn short_select<I: Int>(
    keys: &Array<u32>,
    #[comptime] n: u32,
    kept: u32,
    out: &mut Array<I>,
    base: usize,
    offset: u32,
) {
    let mut slot = 0usize;
    for j in 0..n {
        let kj = keys[j as usize];
        let mut before = 0u32;
        for i in 0..n {
            let ki = keys[i as usize];
            if ki < kj || (ki == kj && i < j) {
                before += 1u32;
            }
        }
        if before < kept {
            out[base + slot] = I::cast_from(offset + j);
            slot += 1;
        }
    }
}
