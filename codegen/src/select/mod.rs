//! Exact selection of the smallest magnitudes on the device, without a sort: a radix select over
//! the bit patterns of |w| (non-negative f32 values order like their u32 bits) finds the k-th
//! smallest magnitude in four 8-bit passes, then a counting compaction writes the selected flat
//! indices in ascending order — every |w| below the k-th value, and of those equal to it the
//! lowest flat indices first (the reference's tie rule). A threshold mask (|w| < t) is the same
//! compaction with the threshold as the pivot and no ties taken.
//!
//! Every pass runs on the primitives of [`crate::prim`]: one cube per tile of 1024 elements, its
//! histogram in shared memory, merged across tiles in tile order; the compaction's counts
//! scanned by the device scan; ranks inside a tile from a cube scan. Deterministic, no float
//! atomics, and no unit loops over more than its four elements.
//!
//! Per-row top-k (every row's best entries, for SPT, Sparse-CBM, the routed FFN and N:M) is
//! [`row`]: the same radix select and compaction inside one cube per row.

pub mod row;

pub mod kernels {
    //! `#[cube]` kernels of the selection.

    // `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
    #![allow(missing_docs)]

    use cubecl::prelude::*;

    use super::row::{RowShape, best_first, place, row_select, row_valid, short_select};
    use crate::prim::kernels::{ITEMS, TILE, UNITS, cube_scan};

    /// Buckets of one radix pass (8 bits): one per unit of a cube.
    pub const RADIX: u32 = UNITS;

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

    /// Comptime layout of [`row_topk`] and [`group_topk`].
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
    /// written in ascending order into `kept` [rows, topk] (columns, or flat indices `row·c +
    /// column` with `flat`): the Sparse-CBM head's concepts (z + noise). One cube per row, the
    /// row spread over its units ([`super::row::row_select`]).
    #[cube(launch, launch_unchecked)]
    pub fn row_topk<F: Float>(
        base: &Array<f32>,
        term: &Array<F>,
        kept: &mut Array<u32>,
        #[comptime] cfg: TopkConfig,
        #[comptime] shape: RowShape,
    ) {
        let row = CUBE_POS;
        let c = cfg.c as usize;
        let topk = cfg.topk as usize;
        let active = row < kept.len() / topk;
        let mut valid = 0u32;
        if active {
            valid = row_valid(cfg.c, shape);
        }
        let first = (UNIT_POS * shape.per) as usize;
        let mut keys = Array::<u32>::new(comptime!(shape.per as usize));
        for i in 0..shape.per {
            if i < valid {
                let s = topk_score::<F>(base, term, row * c + first + i as usize, cfg);
                keys[i as usize] = best_first(s);
            }
        }
        let mut offset = 0u32;
        if cfg.flat {
            offset = (row * c) as u32;
        }
        let _written = row_select::<u32>(
            &keys,
            valid,
            cfg.c,
            cfg.topk,
            kept,
            row * topk,
            offset,
            active,
            shape,
        );
    }

    /// [`row_topk`] for short rows (N:M's groups of M): one unit per row, each entry ranked against the row's others
    /// ([`super::row::short_select`]).
    #[cube(launch, launch_unchecked)]
    pub fn group_topk<F: Float>(
        base: &Array<f32>,
        term: &Array<F>,
        kept: &mut Array<u32>,
        #[comptime] cfg: TopkConfig,
    ) {
        let row = ABSOLUTE_POS;
        let c = cfg.c as usize;
        let topk = cfg.topk as usize;
        if row < kept.len() / topk {
            let mut keys = Array::<u32>::new(comptime!(cfg.c as usize));
            for j in 0..c {
                keys[j] = best_first(topk_score::<F>(base, term, row * c + j, cfg));
            }
            let mut offset = 0u32;
            if cfg.flat {
                offset = (row * c) as u32;
            }
            short_select::<u32>(&keys, cfg.c, cfg.topk, kept, row * topk, offset);
        }
    }

    /// Radix pass `pass` (0 = the top 8 bits), step 1: per tile of [`TILE`] elements, the
    /// histogram of digit `pass` of the keys whose higher digits equal the pivot found so far
    /// (`state[0]`), counted in shared memory, into `hist` [256, tiles] (digit-major). One cube
    /// per tile.
    #[cube(launch, launch_unchecked)]
    pub fn select_hist<F: Float>(
        w: &Array<F>,
        state: &Array<u32>,
        hist: &mut Array<u32>,
        #[comptime] pass: u32,
        #[comptime] signed: bool,
    ) {
        // Integer counts: the order in which the cube's units add to a bin cannot change them.
        let bins = SharedMemory::<Atomic<u32>>::new(RADIX as usize);
        let u = UNIT_POS as usize;
        let tiles = hist.len() / (RADIX as usize);
        let tile = CUBE_POS;
        bins[u].store(0u32);
        sync_cube();
        if tile < tiles {
            let prefix = state[0];
            let first = tile * (TILE as usize) + u * (ITEMS as usize);
            for i in 0..ITEMS as usize {
                if first + i < w.len() {
                    let k = key::<F>(w[first + i], signed);
                    let mut matches = true;
                    if pass > 0 {
                        matches = (k >> comptime!(32 - 8 * pass)) == prefix;
                    }
                    if matches {
                        let digit = ((k >> comptime!(24 - 8 * pass)) & 255u32) as usize;
                        bins[digit].fetch_add(1u32);
                    }
                }
            }
        }
        sync_cube();
        if tile < tiles {
            hist[u * tiles + tile] = bins[u].load();
        }
    }

    /// Step 3: the bucket holding the wanted rank. `state` = [pivot prefix, rank (1-based) among
    /// the keys that share it]: the prefix gains the bucket's digit and the rank drops by the
    /// keys of the lower buckets. One cube: a scan of the 256 bucket totals.
    #[cube(launch, launch_unchecked)]
    pub fn select_pick(totals: &Array<u32>, state: &mut Array<u32>) {
        let mut smem = SharedMemory::<u32>::new(UNITS as usize);
        let u = UNIT_POS;
        let prefix = state[0];
        let rank = state[1];
        // Every unit has read the state before the one that picks rewrites it.
        sync_storage();
        let n = totals[u as usize];
        let (below, _total) = cube_scan(n, &mut smem);
        if below < rank && rank <= below + n {
            state[0] = (prefix << 8u32) | u;
            state[1] = rank - below;
        }
    }

    /// Keys of the unit's elements below the pivot (low 16 bits) and equal to it (high 16
    /// bits): a tile has at most 1024 of each.
    #[cube]
    fn unit_counts<F: Float>(
        w: &Array<F>,
        first: usize,
        pivot: u32,
        valid: bool,
        #[comptime] signed: bool,
    ) -> u32 {
        let mut packed = 0u32;
        if valid {
            for i in 0..ITEMS as usize {
                if first + i < w.len() {
                    let k = key::<F>(w[first + i], signed);
                    if k < pivot {
                        packed += 1u32;
                    }
                    if k == pivot {
                        packed += 65536u32;
                    }
                }
            }
        }
        packed
    }

    /// Compaction, step 1: per tile, how many keys are below the pivot (`state[0]`) and how
    /// many equal it, into `counts` [2, tiles]. One cube per tile.
    #[cube(launch, launch_unchecked)]
    pub fn select_count<F: Float>(
        w: &Array<F>,
        state: &Array<u32>,
        counts: &mut Array<u32>,
        #[comptime] signed: bool,
    ) {
        let mut smem = SharedMemory::<u32>::new(UNITS as usize);
        let tiles = counts.len() / 2;
        let tile = CUBE_POS;
        let first = tile * (TILE as usize) + (UNIT_POS * ITEMS) as usize;
        let packed = unit_counts::<F>(w, first, state[0], tile < tiles, signed);
        let (_prefix, total) = cube_scan(packed, &mut smem);
        if tile < tiles && UNIT_POS == 0 {
            counts[tile] = total & 65535u32;
            counts[tiles + tile] = total >> 16u32;
        }
    }

    /// Step 3: the total selected into `state[2]`: every key below the pivot and the first
    /// `state[1]` equal to it, from the last tile's prefixes (`prefix`, the exclusive scan of
    /// `counts` per row). One unit.
    #[cube(launch, launch_unchecked)]
    pub fn select_total(counts: &Array<u32>, prefix: &Array<u32>, state: &mut Array<u32>) {
        if ABSOLUTE_POS == 0 {
            let tiles = counts.len() / 2;
            let last = tiles - 1;
            let less = prefix[last] + counts[last];
            let equal = prefix[tiles + last] + counts[tiles + last];
            let mut take = state[1];
            if equal < take {
                take = equal;
            }
            state[2] = less + take;
        }
    }

    /// The flat index of the last pivot-equal element taken, into `state[3]` (when any is
    /// taken): the one tile holding it ranks its equal keys by a cube scan. One cube per tile.
    #[cube(launch, launch_unchecked)]
    pub fn select_cutoff<F: Float>(
        w: &Array<F>,
        state: &mut Array<u32>,
        counts: &Array<u32>,
        prefix: &Array<u32>,
        #[comptime] signed: bool,
    ) {
        let mut smem = SharedMemory::<u32>::new(UNITS as usize);
        let tiles = counts.len() / 2;
        let tile = CUBE_POS;
        let pivot = state[0];
        let need = state[1];
        let mut active = false;
        let mut before = 0u32;
        if tile < tiles {
            before = prefix[tiles + tile];
            active = need > 0u32 && before < need && need <= before + counts[tiles + tile];
        }
        let first = tile * (TILE as usize) + (UNIT_POS * ITEMS) as usize;
        let packed = unit_counts::<F>(w, first, pivot, active, signed);
        let (p, _total) = cube_scan(packed, &mut smem);
        if active {
            let mut rank = before + (p >> 16u32);
            for i in 0..ITEMS as usize {
                let at = first + i;
                if at < w.len() && key::<F>(w[at], signed) == pivot {
                    if rank + 1u32 == need {
                        state[3] = at as u32;
                    }
                    rank += 1u32;
                }
            }
        }
    }

    /// Compaction, step 4: every selected flat index, ascending, into `index`: a selected key
    /// goes after every key below the pivot before it and the equal ones taken before it. One
    /// cube per tile.
    #[cube(launch, launch_unchecked)]
    pub fn select_fill<F: Float>(
        w: &Array<F>,
        state: &Array<u32>,
        prefix: &Array<u32>,
        index: &mut Array<u32>,
        #[comptime] signed: bool,
    ) {
        let mut smem = SharedMemory::<u32>::new(UNITS as usize);
        let tiles = prefix.len() / 2;
        let tile = CUBE_POS;
        let pivot = state[0];
        let need = state[1];
        let first = tile * (TILE as usize) + (UNIT_POS * ITEMS) as usize;
        let packed = unit_counts::<F>(w, first, pivot, tile < tiles, signed);
        let (p, _total) = cube_scan(packed, &mut smem);
        if tile < tiles {
            let mut less = prefix[tile] + (p & 65535u32);
            let mut equal = prefix[tiles + tile] + (p >> 16u32);
            for i in 0..ITEMS as usize {
                let at = first + i;
                if at < w.len() {
                    let k = key::<F>(w[at], signed);
                    let (take, slot, l, e) = place(k, pivot, need, less, equal);
                    if take {
                        index[slot as usize] = at as u32;
                    }
                    less = l;
                    equal = e;
                }
            }
        }
    }
}

use crate::plan::{Arg, BufId, Cubes, Elem, Float, Kernel, PlanBuilder, Role};
use crate::prim::{self, kernels::UNITS};
use kernels::RADIX;
use kernels_ir::Extent;

/// Rows up to this long rank in one unit ([`kernels::group_topk`]); longer rows take a cube
/// ([`kernels::row_topk`]).
pub const SHORT_ROW: u32 = 32;

/// Appends the per-row top-k of `cfg` over `rows` rows: `args` = [f32 base, storage-typed term,
/// u32 kept [rows, topk]] (see [`kernels::TopkConfig`]). Rows of at most [`SHORT_ROW`] entries
/// rank in a unit each, longer ones in a cube each. Nothing is launched for no rows or `topk` 0.
pub fn row_topk(
    b: &mut PlanBuilder,
    name: &str,
    cfg: kernels::TopkConfig,
    rows: usize,
    args: Vec<Arg>,
) {
    if rows == 0 || cfg.topk == 0 {
        return;
    }
    if cfg.c <= SHORT_ROW {
        b.elementwise(name, Kernel::GroupTopk(cfg), rows, args);
    } else {
        let shape = row::RowShape::for_rows(cfg.c as usize, 32);
        b.append(
            name,
            Kernel::RowTopk(cfg, shape),
            Cubes::Units(Extent::Fixed(rows * shape.units as usize), 1),
            shape.dim(),
            args,
        );
    }
}

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

/// `n` cubes of the primitives' width.
fn tiles_launch(n: usize) -> Cubes {
    Cubes::Units(Extent::Fixed(n * UNITS as usize), 1)
}

/// Appends the selection over the `len` elements of buffer `w` (float type `float`) up to its
/// pivot state, without reading anything back: the state buffer `select_state` = [pivot key,
/// pivot-equal elements taken, total selected, flat index of the last pivot-equal one taken]
/// (u32 ×4, with role `state_role`), and the per-tile exclusive prefixes `select_prefix` [2,
/// tiles] (keys below the pivot, keys equal to it) the compaction uses. `signed` orders by
/// value instead of magnitude. Returns (state, prefix).
pub fn pivot(
    b: &mut PlanBuilder,
    w: BufId,
    float: Float,
    len: usize,
    keep: Keep,
    signed: bool,
    state_role: Role,
) -> (BufId, BufId) {
    let tiles = prim::tiles(len);
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
    let dim = (UNITS, 1, 1);
    if let Keep::Smallest(k) = keep
        && k > 0
        && k < len
    {
        let hist = b.scratch("select_hist", Elem::U32, &[radix, tiles]);
        for pass in 0..4u32 {
            b.append_as(
                &format!("select_hist_pass{pass}"),
                Kernel::SelectHist(pass, signed),
                float,
                tiles_launch(tiles),
                dim,
                vec![Arg::Buf(w), Arg::Buf(state), Arg::Buf(hist)],
            );
            let totals = prim::segment_sums(b, &format!("select_bins{pass}"), hist, radix, tiles);
            b.append(
                "select_pick",
                Kernel::SelectPick(),
                tiles_launch(1),
                dim,
                vec![Arg::Buf(totals), Arg::Buf(state)],
            );
        }
    }
    let counts = b.scratch("select_counts", Elem::U32, &[2, tiles]);
    let prefix = b.scratch("select_prefix", Elem::U32, &[2, tiles]);
    b.append_as(
        "select_count",
        Kernel::SelectCount(signed),
        float,
        tiles_launch(tiles),
        dim,
        vec![Arg::Buf(w), Arg::Buf(state), Arg::Buf(counts)],
    );
    prim::scan(b, "select_scan", counts, prefix, 2, tiles, false);
    b.elementwise(
        "select_total",
        Kernel::SelectTotal(),
        1,
        vec![Arg::Buf(counts), Arg::Buf(prefix), Arg::Buf(state)],
    );
    b.append_as(
        "select_cutoff",
        Kernel::SelectCutoff(signed),
        float,
        tiles_launch(tiles),
        dim,
        vec![
            Arg::Buf(w),
            Arg::Buf(state),
            Arg::Buf(counts),
            Arg::Buf(prefix),
        ],
    );
    (state, prefix)
}

/// Appends the compaction: every selected flat index of `w` (by magnitude), ascending, into
/// `index` (the selection's total long).
pub fn fill(b: &mut PlanBuilder, w: BufId, len: usize, state: BufId, prefix: BufId, index: BufId) {
    b.append(
        "select_fill",
        Kernel::SelectFill(false),
        tiles_launch(prim::tiles(len)),
        (UNITS, 1, 1),
        vec![
            Arg::Buf(w),
            Arg::Buf(state),
            Arg::Buf(prefix),
            Arg::Buf(index),
        ],
    );
}
