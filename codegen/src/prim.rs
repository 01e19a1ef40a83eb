//! Deterministic parallel primitives: the building blocks every plan uses where it counts,
//! groups, sorts, sums columns or selects — instead of serial passes in global memory.
//!
//! - **Scan** (exclusive or inclusive, u32, segmented): reduce-then-scan. A cube owns a tile of
//!   [`TILE`] elements ([`ITEMS`] consecutive ones per unit); tile totals are scanned by the same
//!   primitive one level up (so any length runs, and any number of segments), then each tile
//!   scans itself in shared memory and adds its carry. u32 addition is exact, and the
//!   combination order is fixed anyway.
//! - **Histograms** in shared memory: per-cube bins (integer counts: the order in which a
//!   cube's units add to a bin cannot change a count), merged across cubes by a segmented
//!   reduction in tile order.
//! - **Stable LSD radix sort** of u32 keys carrying their original positions, 4 bits per pass:
//!   per tile a 16-bin histogram, one device scan of the digit-major histogram, then a stable
//!   scatter whose in-tile ranks come from a shared-memory scan over (digit, unit). Segmented
//!   sorts (per head, per block) sort composite keys `segment·bins + key`; dropped entries go to
//!   each segment's last bin ([`group`]: values, ranks and each bin's offset by binary search).
//! - **Stable counting sort of rows of distinct bins** ([`group_rows`]): [`group`]'s result where
//!   a row's entries name distinct bins — SPT's key index (a query's kept keys) and the routed
//!   FFN's grouping (a token's kept blocks) — counted and filled in shared memory one row at a
//!   time, a segmented scan between: two passes over the entries and scratch the size of the
//!   counts, against a sort's ⌈bits / 4⌉ passes and four copies of the entries.
//! - **Column reductions** (bias and router gradients): `out[e, i] = Σ_t w[t, e]·a[t, i]` (w
//!   absent: plain column sums) as a two-level tree: row chunks in parallel, then the chunk
//!   partials in chunk order.
//!
//! Every kernel here is a pure function of its inputs: results are bit-identical from run to
//! run, on every device, whatever the scheduling. A launch over N elements runs ⌈N / [`TILE`]⌉
//! cubes or more, but for [`group_rows`] (a cube per [`GROUP_ROWS`] rows: SPT's key index at
//! B16 H32 L512 runs 4096) and [`column_sums`] (a cube per 256 columns and 64 or more rows).
//! The radix sort's scatter holds 17 KiB of shared memory (lavapipe and CUDA have 32 KiB or
//! more; WebGPU's baseline is 16 KiB).

pub mod kernels {
    //! `#[cube]` kernels of the primitives.

    // `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
    #![allow(missing_docs)]

    use cubecl::prelude::*;

    /// Units per cube of the tiled primitives.
    pub const UNITS: u32 = 256;
    /// Consecutive elements per unit.
    pub const ITEMS: u32 = 4;
    /// Elements per cube (per tile).
    pub const TILE: u32 = UNITS * ITEMS;
    /// Bits of a radix-sort digit.
    pub const DIGIT_BITS: u32 = 4;
    /// Buckets of a radix-sort digit.
    pub const DIGITS: u32 = 1 << DIGIT_BITS;

    /// Exclusive prefix of `v` over the cube's units in unit order, and the cube's total. Every
    /// unit of the cube must call it (it synchronises the cube); `smem` holds [`UNITS`] words.
    #[cube]
    pub fn cube_scan(v: u32, smem: &mut SharedMemory<u32>) -> (u32, u32) {
        let u = UNIT_POS as usize;
        sync_cube();
        smem[u] = v;
        let mut d = 1usize;
        // Hillis–Steele: after step s, smem[u] sums the 2^s units ending at u.
        for _step in 0..8u32 {
            sync_cube();
            let mut add = 0u32;
            if u >= d {
                add = smem[u - d];
            }
            sync_cube();
            smem[u] += add;
            d *= 2;
        }
        sync_cube();
        let inclusive = smem[u];
        let total = smem[(UNITS - 1) as usize];
        sync_cube();
        (inclusive - v, total)
    }

    /// The tile (cube) and the segment it belongs to: segments of `seg_len` elements, each cut
    /// into `tiles_per_seg` tiles. Returns (segment, first element of the unit within the
    /// segment).
    #[cube]
    fn tile_of(tiles_per_seg: u32) -> (usize, usize) {
        let c = CUBE_POS;
        let tps = tiles_per_seg as usize;
        let seg = c / tps;
        let first = (c % tps) * (TILE as usize) + (UNIT_POS * ITEMS) as usize;
        (seg, first)
    }

    /// Zeroes the unit's column of `counts` [DIGITS, UNITS] (digit-major) and counts its
    /// [`ITEMS`] keys' 4-bit digits at `shift` into it (keys past `n`, or any when `valid` is
    /// false, are not counted). The caller synchronises before reading other columns.
    #[cube]
    fn digit_counts(
        keys: &Array<u32>,
        counts: &mut SharedMemory<u32>,
        first: usize,
        n: u32,
        shift: u32,
        valid: bool,
    ) {
        let u = UNIT_POS as usize;
        let units = UNITS as usize;
        for d in 0..DIGITS as usize {
            counts[d * units + u] = 0u32;
        }
        if valid {
            for i in 0..ITEMS as usize {
                if first + i < n as usize {
                    let d = ((keys[first + i] >> shift) & (DIGITS - 1)) as usize;
                    counts[d * units + u] += 1u32;
                }
            }
        }
    }

    /// The sum of the unit's [`ITEMS`] elements of segment `seg` (of `n` elements) from
    /// `first` on (none when `valid` is false).
    #[cube]
    fn unit_sum(input: &Array<u32>, seg: usize, first: usize, n: usize, valid: bool) -> u32 {
        let mut v = 0u32;
        if valid {
            for i in 0..ITEMS as usize {
                if first + i < n {
                    v += input[seg * n + first + i];
                }
            }
        }
        v
    }

    /// Scan, level 1: the total of each tile of each segment into `sums` [segments ·
    /// tiles_per_seg]. One cube per tile.
    #[cube(launch, launch_unchecked)]
    pub fn scan_reduce(
        input: &Array<u32>,
        sums: &mut Array<u32>,
        seg_len: u32,
        tiles_per_seg: u32,
    ) {
        let mut smem = SharedMemory::<u32>::new(UNITS as usize);
        let (seg, first) = tile_of(tiles_per_seg);
        let n = seg_len as usize;
        let valid = CUBE_POS < sums.len();
        let v = unit_sum(input, seg, first, n, valid);
        let (_prefix, total) = cube_scan(v, &mut smem);
        if valid && UNIT_POS == 0 {
            sums[CUBE_POS] = total;
        }
    }

    /// Comptime form of [`scan_apply`].
    #[derive_cube_comptime]
    pub struct ScanConfig {
        /// Inclusive (else exclusive) prefixes.
        pub inclusive: bool,
        /// Add each tile's carry (the exclusive scan of the tile totals).
        pub carry: bool,
    }

    /// Scan, level 2: each tile's prefixes, plus its carry, into `output` (same layout as
    /// `input`). `tiles` is the number of tiles (segments · tiles_per_seg). One cube per tile.
    #[cube(launch, launch_unchecked)]
    pub fn scan_apply(
        input: &Array<u32>,
        output: &mut Array<u32>,
        carry: &Array<u32>,
        seg_len: u32,
        tiles_per_seg: u32,
        tiles: u32,
        #[comptime] cfg: ScanConfig,
    ) {
        let mut smem = SharedMemory::<u32>::new(UNITS as usize);
        let (seg, first) = tile_of(tiles_per_seg);
        let n = seg_len as usize;
        let valid = CUBE_POS < tiles as usize;
        let v = unit_sum(input, seg, first, n, valid);
        let (prefix, _total) = cube_scan(v, &mut smem);
        if valid {
            let mut running = prefix;
            if cfg.carry {
                running += carry[CUBE_POS];
            }
            for i in 0..ITEMS as usize {
                if first + i < n {
                    let at = seg * n + first + i;
                    let x = input[at];
                    if cfg.inclusive {
                        running += x;
                        output[at] = running;
                    } else {
                        output[at] = running;
                        running += x;
                    }
                }
            }
        }
    }

    /// Radix sort, step 1: per tile, how many keys have each value of the 4-bit digit at
    /// `shift`, into `hist` [DIGITS, tiles] (digit-major, so one exclusive scan gives every
    /// (digit, tile) its first output position). One cube per tile.
    #[cube(launch, launch_unchecked)]
    pub fn sort_hist(keys: &Array<u32>, hist: &mut Array<u32>, n: u32, shift: u32) {
        let mut counts = SharedMemory::<u32>::new((DIGITS * UNITS) as usize);
        let u = UNIT_POS as usize;
        let tiles = hist.len() / (DIGITS as usize);
        let tile = CUBE_POS;
        let first = tile * (TILE as usize) + u * (ITEMS as usize);
        digit_counts(keys, &mut counts, first, n, shift, tile < tiles);
        sync_cube();
        // Unit u sums 16 consecutive columns of digit u / 16; then 16 units sum those.
        let mut part = 0u32;
        for j in 0..16usize {
            part += counts[u * 16 + j];
        }
        sync_cube();
        counts[u] = part;
        sync_cube();
        if tile < tiles && u < DIGITS as usize {
            let mut total = 0u32;
            for j in 0..16usize {
                total += counts[u * 16 + j];
            }
            hist[u * tiles + tile] = total;
        }
    }

    /// Radix sort, step 2: every key of the tile (and its value: its position when `first`)
    /// written to its place, stable: `starts` [DIGITS, tiles] (the exclusive scan of step 1)
    /// plus its rank among the tile's keys with the same digit, from a shared-memory scan over
    /// (digit, unit). One cube per tile.
    #[cube(launch, launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn sort_scatter(
        keys_in: &Array<u32>,
        vals_in: &Array<u32>,
        starts: &Array<u32>,
        keys_out: &mut Array<u32>,
        vals_out: &mut Array<u32>,
        n: u32,
        shift: u32,
        #[comptime] first_pass: bool,
    ) {
        let mut counts = SharedMemory::<u32>::new((DIGITS * UNITS) as usize);
        let mut smem = SharedMemory::<u32>::new(UNITS as usize);
        let mut digit_start = SharedMemory::<u32>::new(DIGITS as usize);
        let u = UNIT_POS as usize;
        let units = UNITS as usize;
        let tiles = starts.len() / (DIGITS as usize);
        let tile = CUBE_POS;
        let valid = tile < tiles;
        let first = tile * (TILE as usize) + u * (ITEMS as usize);
        digit_counts(keys_in, &mut counts, first, n, shift, valid);
        sync_cube();
        // Exclusive scan of counts in digit-major order: unit u owns entries u·16 .. u·16 + 16.
        let mut local = 0u32;
        for j in 0..16usize {
            local += counts[u * 16 + j];
        }
        let (prefix, _total) = cube_scan(local, &mut smem);
        let mut running = prefix;
        for j in 0..16usize {
            let x = counts[u * 16 + j];
            counts[u * 16 + j] = running;
            running += x;
        }
        sync_cube();
        if u < DIGITS as usize {
            digit_start[u] = counts[u * units];
        }
        sync_cube();
        if valid {
            for i in 0..ITEMS as usize {
                let at = first + i;
                if at < n as usize {
                    let k = keys_in[at];
                    let d = ((k >> shift) & (DIGITS - 1)) as usize;
                    let rank = counts[d * units + u];
                    counts[d * units + u] = rank + 1u32;
                    let pos = (starts[d * tiles + tile] + rank - digit_start[d]) as usize;
                    keys_out[pos] = k;
                    if first_pass {
                        vals_out[pos] = at as u32;
                    } else {
                        vals_out[pos] = vals_in[at];
                    }
                }
            }
        }
    }

    /// Grouping, step 0: the composite sort key of every entry of `src` (segments of
    /// `seg_len` entries, `bins` keys per segment): `segment·bins + v`, a negative `v` (a
    /// dropped entry) going to the segment's last bin. One unit per entry.
    #[cube(launch, launch_unchecked)]
    pub fn group_keys(src: &Array<i32>, keys: &mut Array<u32>, seg_len: u32, bins: u32) {
        let p = ABSOLUTE_POS;
        if p < keys.len() {
            let v = src[p];
            let mut bin = bins - 1u32;
            if v >= 0i32 {
                bin = v as u32;
            }
            keys[p] = (p as u32 / seg_len) * bins + bin;
        }
    }

    /// Grouping, last step: `out[p] = (g % modulus) / divisor` for the original position `g`
    /// of the p-th sorted entry and, with `rank`, `rank_of[g] = p`. One unit per entry.
    #[cube(launch, launch_unchecked)]
    pub fn group_values(
        vals: &Array<u32>,
        out: &mut Array<u32>,
        rank_of: &mut Array<u32>,
        modulus: u32,
        divisor: u32,
        #[comptime] rank: bool,
    ) {
        let p = ABSOLUTE_POS;
        if p < vals.len() {
            let g = vals[p];
            out[p] = (g % modulus) / divisor;
            if rank {
                rank_of[g as usize] = p as u32;
            }
        }
    }

    /// Grouping, offsets: for every composite key K, the first sorted position of a key ≥ K
    /// (binary search), relative to K's segment: `offsets[s·bins + b]` is where bin b starts
    /// in segment s. One unit per key.
    #[cube(launch, launch_unchecked)]
    pub fn group_offsets(sorted: &Array<u32>, offsets: &mut Array<u32>, bins: u32, seg_len: u32) {
        let key = ABSOLUTE_POS;
        if key < offsets.len() {
            let target = key as u32;
            let mut lo = 0u32;
            let mut hi = sorted.len() as u32;
            for _i in 0..33u32 {
                if lo < hi {
                    let mid = (lo + hi) / 2u32;
                    if sorted[mid as usize] < target {
                        lo = mid + 1u32;
                    } else {
                        hi = mid;
                    }
                }
            }
            offsets[key] = lo - (target / bins) * seg_len;
        }
    }

    /// Comptime form of the grouping of rows of distinct bins ([`rows_count`], [`rows_fill`]).
    #[derive_cube_comptime]
    pub struct RowsConfig {
        /// Entries per row.
        pub slots: u32,
        /// Rows per chunk (one cube each).
        pub rows: u32,
        /// Bins per segment (the last one is never counted: dropped entries).
        pub bins: u32,
        /// Units per cube.
        pub units: u32,
    }

    /// The segment and chunk of the cube, and whether it has one: `segments` segments of
    /// `seg_rows` rows, each cut into chunks of `cfg.rows` rows.
    #[cube]
    fn rows_chunk(
        seg_rows: u32,
        segments: u32,
        #[comptime] cfg: RowsConfig,
    ) -> (usize, usize, bool) {
        let rows = cfg.rows as usize;
        #[allow(clippy::manual_div_ceil)]
        let chunks = (seg_rows as usize + rows - 1) / rows;
        // Launched only with seg_rows > 0, so chunks > 0.
        let c = CUBE_POS;
        let seg = c / chunks;
        let chunk = c % chunks;
        (seg, chunk, seg < segments as usize)
    }

    /// Grouping of rows of distinct bins, step 1: per (segment, chunk of rows), how many entries
    /// name each bin, counted in shared memory one row at a time (a row's entries name distinct
    /// bins, so its units never touch the same counter), into `counts` [segments, bins, chunks]
    /// (so one segmented scan gives every (bin, chunk) its first slot). Negative entries are
    /// dropped. One cube per chunk.
    #[cube(launch, launch_unchecked)]
    pub fn rows_count(
        src: &Array<i32>,
        counts: &mut Array<u32>,
        seg_rows: u32,
        segments: u32,
        #[comptime] cfg: RowsConfig,
    ) {
        let mut cnt = SharedMemory::<u32>::new(cfg.bins as usize);
        let u = UNIT_POS as usize;
        let units = cfg.units as usize;
        let bins = cfg.bins as usize;
        let slots = cfg.slots as usize;
        let (seg, chunk, valid) = rows_chunk(seg_rows, segments, cfg);
        for k in 0..comptime!(cfg.bins.div_ceil(cfg.units)) {
            let b = k as usize * units + u;
            if b < bins {
                cnt[b] = 0u32;
            }
        }
        for r in 0..cfg.rows as usize {
            sync_cube();
            let row = chunk * (cfg.rows as usize) + r;
            if valid && row < seg_rows as usize {
                #[unroll]
                for k in 0..comptime!(cfg.slots.div_ceil(cfg.units)) {
                    let s = k as usize * units + u;
                    if s < slots {
                        let j = src[(seg * seg_rows as usize + row) * slots + s];
                        // Out-of-range entries are dropped like negative ones.
                        if j >= 0i32 && (j as u32) < cfg.bins - 1 {
                            cnt[j as usize] += 1u32;
                        }
                    }
                }
            }
        }
        sync_cube();
        if valid {
            #[allow(clippy::manual_div_ceil)]
            let chunks = (seg_rows as usize + cfg.rows as usize - 1) / (cfg.rows as usize);
            for k in 0..comptime!(cfg.bins.div_ceil(cfg.units)) {
                let b = k as usize * units + u;
                if b < bins {
                    counts[(seg * bins + b) * chunks + chunk] = cnt[b];
                }
            }
        }
    }

    /// Step 2: every kept entry of the chunk written to its place: the chunk's first slot of
    /// each bin (`starts`, the segmented exclusive scan of step 1) plus the entries of that bin
    /// in earlier rows of the chunk, one row at a time. `values[p] = (g % modulus) / divisor` of
    /// the entry's original position g, and with `rank`, `rank_of[g] = p`. One cube per chunk.
    #[cube(launch, launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn rows_fill(
        src: &Array<i32>,
        starts: &Array<u32>,
        values: &mut Array<u32>,
        rank_of: &mut Array<u32>,
        seg_rows: u32,
        segments: u32,
        modulus: u32,
        divisor: u32,
        #[comptime] cfg: RowsConfig,
        #[comptime] rank: bool,
    ) {
        let mut cur = SharedMemory::<u32>::new(cfg.bins as usize);
        let u = UNIT_POS as usize;
        let units = cfg.units as usize;
        let bins = cfg.bins as usize;
        let slots = cfg.slots as usize;
        let (seg, chunk, valid) = rows_chunk(seg_rows, segments, cfg);
        #[allow(clippy::manual_div_ceil)]
        let chunks = (seg_rows as usize + cfg.rows as usize - 1) / (cfg.rows as usize);
        for k in 0..comptime!(cfg.bins.div_ceil(cfg.units)) {
            let b = k as usize * units + u;
            if valid && b < bins {
                cur[b] = starts[(seg * bins + b) * chunks + chunk];
            }
        }
        let seg_len = seg_rows as usize * slots;
        for r in 0..cfg.rows as usize {
            sync_cube();
            let row = chunk * (cfg.rows as usize) + r;
            if valid && row < seg_rows as usize {
                #[unroll]
                for k in 0..comptime!(cfg.slots.div_ceil(cfg.units)) {
                    let s = k as usize * units + u;
                    if s < slots {
                        let g = (seg * seg_rows as usize + row) * slots + s;
                        let j = src[g];
                        if j >= 0i32 && (j as u32) < cfg.bins - 1 {
                            let at = cur[j as usize];
                            cur[j as usize] = at + 1u32;
                            let p = seg * seg_len + at as usize;
                            values[p] = (g as u32 % modulus) / divisor;
                            if rank {
                                rank_of[g] = p as u32;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Step 3: `offsets[s, b]` = the first slot of bin b in segment s (`starts` at chunk 0).
    /// One unit per (segment, bin).
    #[cube(launch, launch_unchecked)]
    pub fn rows_offsets(starts: &Array<u32>, offsets: &mut Array<u32>, chunks: u32) {
        let k = ABSOLUTE_POS;
        if k < offsets.len() {
            offsets[k] = starts[k * chunks as usize];
        }
    }

    /// Comptime form of the column reductions.
    #[derive_cube_comptime]
    pub struct ColumnConfig {
        /// Groups e: `w` [T, groups] weighs the rows (else one group of weight 1).
        pub groups: u32,
        /// Whether `w` is read.
        pub weighted: bool,
        /// One more column whose `a` is 1 (the bias of a weighted product).
        pub bias: bool,
    }

    /// Column reduction, level 1: `partial[e, chunk, i]` = Σ over the chunk's rows t of
    /// w[t, e]·a[t, i] (`a` is 1 on the bias column i = cols). Cubes: (column blocks of the
    /// cube's units, row chunks, groups); rows in order.
    #[cube(launch, launch_unchecked)]
    pub fn column_partial<F: Float>(
        a: &Array<F>,
        w: &Array<f32>,
        partial: &mut Array<f32>,
        rows: u32,
        cols: u32,
        chunk_rows: u32,
        #[comptime] cfg: ColumnConfig,
    ) {
        let i = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let chunk = CUBE_POS_Y as usize;
        let e = CUBE_POS_Z as usize;
        let n = cols as usize;
        let mut width = n;
        if cfg.bias {
            width = n + 1;
        }
        let chunks = CUBE_COUNT_Y as usize;
        if i < width {
            let first = chunk * chunk_rows as usize;
            let mut last = first + chunk_rows as usize;
            if last > rows as usize {
                last = rows as usize;
            }
            let groups = cfg.groups as usize;
            let mut acc = 0.0f32;
            if i < n {
                let mut at = first * n + i;
                let mut wat = first * groups + e;
                for _t in first..last {
                    let mut x = f32::cast_from(a[at]);
                    if cfg.weighted {
                        x *= w[wat];
                    }
                    acc += x;
                    at += n;
                    wat += groups;
                }
            } else {
                // The bias column: Σ_t w[t, e] (the row count without weights).
                let mut wat = first * groups + e;
                for _t in first..last {
                    if cfg.weighted {
                        acc += w[wat];
                    } else {
                        acc += 1.0f32;
                    }
                    wat += groups;
                }
            }
            partial[(e * chunks + chunk) * width + i] = acc;
        }
    }

    /// Column reduction, level 2: the chunk partials of each (e, i) summed in chunk order into
    /// `out` [groups, cols] (storage type) and, with `bias`, column `cols` into `out_bias`
    /// [groups]. One unit per (e, i).
    #[cube(launch, launch_unchecked)]
    pub fn column_finish<F: Float>(
        partial: &Array<f32>,
        out: &mut Array<F>,
        out_bias: &mut Array<F>,
        cols: u32,
        chunks: u32,
        #[comptime] cfg: ColumnConfig,
    ) {
        let pos = ABSOLUTE_POS;
        let n = cols as usize;
        let mut width = n;
        if cfg.bias {
            width = n + 1;
        }
        if pos < (cfg.groups as usize) * width {
            let e = pos / width;
            let i = pos % width;
            let mut acc = 0.0f32;
            for c in 0..chunks as usize {
                acc += partial[(e * chunks as usize + c) * width + i];
            }
            if i < n {
                out[e * n + i] = F::cast_from(acc);
            } else {
                out_bias[e] = F::cast_from(acc);
            }
        }
    }
}

use crate::plan::{Arg, BufId, Cubes, Elem, Float, Kernel, PlanBuilder};
use kernels::{ColumnConfig, DIGIT_BITS, DIGITS, RowsConfig, ScanConfig, TILE, UNITS};
use kernels_ir::Extent;

/// Tiles of [`TILE`] elements covering `len` (at least one).
pub fn tiles(len: usize) -> usize {
    len.div_ceil(TILE as usize).max(1)
}

/// `n` cubes of [`UNITS`] units (spread over the grid's axes where one runs out; none when
/// `n` is 0).
fn cubes(n: usize) -> Cubes {
    Cubes::Units(Extent::Fixed(n * UNITS as usize), 1)
}

/// A one-element placeholder for a parameter the launch's comptime config never reads (a
/// buffer is never bound twice in one launch).
fn unused(b: &mut PlanBuilder, name: &str, elem: Elem) -> BufId {
    let label = format!("{name}_unused");
    match b.find(&label) {
        Some(id) => id,
        None => b.zeros(&label, elem, &[1]),
    }
}

fn dim() -> (u32, u32, u32) {
    (UNITS, 1, 1)
}

/// Appends the scan of `segments` segments of `seg_len` u32 each of `input` into `output`
/// (distinct buffers of the same layout): per segment, exclusive (or `inclusive`) prefix
/// sums. Scratch buffers are named after `name`.
pub fn scan(
    b: &mut PlanBuilder,
    name: &str,
    input: BufId,
    output: BufId,
    segments: usize,
    seg_len: usize,
    inclusive: bool,
) {
    if segments == 0 {
        return;
    }
    let tps = tiles(seg_len);
    let count = segments * tps;
    let carry = (tps > 1).then(|| {
        let sums = b.scratch(&format!("{name}_tile_sums"), Elem::U32, &[count]);
        b.append(
            &format!("{name}_reduce"),
            Kernel::ScanReduce(),
            cubes(count),
            dim(),
            vec![
                Arg::Buf(input),
                Arg::Buf(sums),
                Arg::U32(seg_len as u32),
                Arg::U32(tps as u32),
            ],
        );
        let carry = b.scratch(&format!("{name}_carry"), Elem::U32, &[count]);
        scan(b, &format!("{name}_up"), sums, carry, segments, tps, false);
        carry
    });
    let cfg = ScanConfig {
        inclusive,
        carry: carry.is_some(),
    };
    let carry = match carry {
        Some(c) => c,
        None => unused(b, name, Elem::U32),
    };
    b.append(
        &format!("{name}_apply"),
        Kernel::ScanApply(cfg),
        cubes(count),
        dim(),
        vec![
            Arg::Buf(input),
            Arg::Buf(output),
            Arg::Buf(carry),
            Arg::U32(seg_len as u32),
            Arg::U32(tps as u32),
            Arg::U32(count as u32),
        ],
    );
}

/// Appends the totals of `segments` segments of `seg_len` u32 each of `input`, in segment
/// order, into a new scratch buffer [segments] (returned): the tile totals, reduced again
/// while a segment spans more than one tile.
pub fn segment_sums(
    b: &mut PlanBuilder,
    name: &str,
    input: BufId,
    segments: usize,
    seg_len: usize,
) -> BufId {
    let mut src = input;
    let mut len = seg_len;
    let mut level = 0;
    loop {
        let tps = tiles(len);
        let sums = b.scratch(&format!("{name}_sums{level}"), Elem::U32, &[segments * tps]);
        b.append(
            &format!("{name}_reduce{level}"),
            Kernel::ScanReduce(),
            cubes(segments * tps),
            dim(),
            vec![
                Arg::Buf(src),
                Arg::Buf(sums),
                Arg::U32(len as u32),
                Arg::U32(tps as u32),
            ],
        );
        if tps == 1 {
            return sums;
        }
        src = sums;
        len = tps;
        level += 1;
    }
}

/// Bits that hold every key below `bound` (at least one digit's worth).
fn key_bits(bound: u64) -> u32 {
    (64 - bound.saturating_sub(1).leading_zeros()).max(DIGIT_BITS)
}

/// Appends the stable LSD radix sort of the `n` keys of `keys` (each below `bound`), 4 bits a
/// pass; `keys` is overwritten (it is one of the two key buffers the passes alternate
/// between). Returns (sorted keys, original positions in sorted order), buffers [n].
pub fn sort(b: &mut PlanBuilder, name: &str, keys: BufId, n: usize, bound: u64) -> (BufId, BufId) {
    let passes = key_bits(bound).div_ceil(DIGIT_BITS) as usize;
    let t = tiles(n);
    let hist = b.scratch(&format!("{name}_hist"), Elem::U32, &[DIGITS as usize, t]);
    let starts = b.scratch(&format!("{name}_starts"), Elem::U32, &[DIGITS as usize, t]);
    // Keys alternate between `keys` itself and one scratch buffer; positions between two
    // (the first pass writes them without reading any).
    let keys1 = b.scratch(&format!("{name}_keys1"), Elem::U32, &[n]);
    let mut vals = vec![b.scratch(&format!("{name}_vals0"), Elem::U32, &[n])];
    if passes > 1 {
        vals.push(b.scratch(&format!("{name}_vals1"), Elem::U32, &[n]));
    }
    let (mut kin, mut vin) = (keys, unused(b, name, Elem::U32));
    for pass in 0..passes {
        let shift = Arg::U32(pass as u32 * DIGIT_BITS);
        let kout = if pass % 2 == 0 { keys1 } else { keys };
        let vout = vals[pass % 2];
        b.append(
            &format!("{name}_hist"),
            Kernel::SortHist(),
            cubes(t),
            dim(),
            vec![
                Arg::Buf(kin),
                Arg::Buf(hist),
                Arg::U32(n as u32),
                shift.clone(),
            ],
        );
        let scan_name = format!("{name}_scan{pass}");
        scan(b, &scan_name, hist, starts, 1, DIGITS as usize * t, false);
        b.append(
            &format!("{name}_scatter"),
            Kernel::SortScatter(pass == 0),
            cubes(t),
            dim(),
            vec![
                Arg::Buf(kin),
                Arg::Buf(vin),
                Arg::Buf(starts),
                Arg::Buf(kout),
                Arg::Buf(vout),
                Arg::U32(n as u32),
                shift,
            ],
        );
        (kin, vin) = (kout, vout);
    }
    (kin, vin)
}

/// Every bin of an empty grouping starts at 0: `offsets` (len words) as the scan of zeros.
fn zero_offsets(b: &mut PlanBuilder, name: &str, len: usize, offsets: BufId) {
    if len > 0 {
        let zeros = b.zeros(&format!("{name}_zeros"), Elem::U32, &[len]);
        scan(b, &format!("{name}_empty"), zeros, offsets, 1, len, false);
    }
}

/// Where [`group`] writes.
#[derive(Clone, Copy, Debug)]
pub struct Grouped {
    /// [segments · seg_len] u32: per sorted entry, `(position % modulus) / divisor` of its
    /// original position (kept entries of a segment first, by bin, in original order;
    /// [`group_rows`] writes the kept entries only).
    pub values: BufId,
    /// [segments, bins] u32: where each bin starts within its segment (the last bin holds the
    /// dropped entries, so `offsets[s, bins − 1]` is the segment's kept count).
    pub offsets: BufId,
    /// Optional [segments · seg_len] u32: the sorted position of each original entry
    /// ([`group_rows`]: of each kept entry).
    pub rank_of: Option<BufId>,
    /// The modulus of the written values.
    pub modulus: usize,
    /// The divisor of the written values.
    pub divisor: usize,
}

/// Appends the stable grouping of the i32 entries of `src` ([segments, seg_len]; a value in
/// `0..bins − 1` names the entry's bin, a negative one drops it into the last bin) into
/// `out`: a segmented counting sort by the radix sort, then the values and the offsets.
pub fn group(
    b: &mut PlanBuilder,
    name: &str,
    src: BufId,
    segments: usize,
    seg_len: usize,
    bins: usize,
    out: Grouped,
) {
    let n = segments * seg_len;
    if n == 0 {
        zero_offsets(b, name, segments * bins, out.offsets);
        return;
    }
    let keys = b.scratch(&format!("{name}_keys"), Elem::U32, &[n]);
    b.elementwise(
        &format!("{name}_keys"),
        Kernel::GroupKeys(),
        n,
        vec![
            Arg::Buf(src),
            Arg::Buf(keys),
            Arg::U32(seg_len as u32),
            Arg::U32(bins as u32),
        ],
    );
    let (sorted, vals) = sort(b, name, keys, n, (segments * bins) as u64);
    let rank_of = match out.rank_of {
        Some(r) => r,
        None => unused(b, name, Elem::U32),
    };
    b.elementwise(
        &format!("{name}_values"),
        Kernel::GroupValues(out.rank_of.is_some()),
        n,
        vec![
            Arg::Buf(vals),
            Arg::Buf(out.values),
            Arg::Buf(rank_of),
            Arg::U32(out.modulus as u32),
            Arg::U32(out.divisor as u32),
        ],
    );
    b.elementwise(
        &format!("{name}_offsets"),
        Kernel::GroupOffsets(),
        segments * bins,
        vec![
            Arg::Buf(sorted),
            Arg::Buf(out.offsets),
            Arg::U32(bins as u32),
            Arg::U32(seg_len as u32),
        ],
    );
}

/// Rows per chunk of [`group_rows`].
pub const GROUP_ROWS: usize = 64;

/// Whether [`group_rows`] can group `bins` bins on `device` (its counters live in shared
/// memory); else [`group`] does it.
pub fn rows_fit(bins: usize, device: &crate::plan::DeviceLimits) -> bool {
    bins * 4 <= device.max_shared_bytes.min(32 * 1024)
}

/// Appends the stable grouping of the i32 entries of `src` ([segments, seg_rows, slots]), whose
/// rows name distinct bins (`0..bins − 1`; a negative or larger entry is dropped; two equal
/// entries in one row would race): [`group`]'s result without a sort. A cube per chunk of [`GROUP_ROWS`] rows counts its bins in shared memory one
/// row at a time (a row's entries never share a counter); a segmented scan of the [segments,
/// bins, chunks] counts gives every (bin, chunk) its first slot; the fill repeats the count's
/// walk. Scratch: two u32 buffers of segments · bins · chunks. Kept entries only are written.
#[allow(clippy::too_many_arguments)]
pub fn group_rows(
    b: &mut PlanBuilder,
    name: &str,
    src: BufId,
    segments: usize,
    seg_rows: usize,
    slots: usize,
    bins: usize,
    out: Grouped,
) {
    if segments * seg_rows * slots == 0 {
        zero_offsets(b, name, segments * bins, out.offsets);
        return;
    }
    let chunks = seg_rows.div_ceil(GROUP_ROWS);
    let units = slots.next_power_of_two().clamp(32, UNITS as usize);
    let cfg = RowsConfig {
        slots: slots as u32,
        rows: GROUP_ROWS as u32,
        bins: bins as u32,
        units: units as u32,
    };
    let dim = (units as u32, 1, 1);
    let cubes = Cubes::Units(Extent::Fixed(segments * chunks * units), 1);
    let counts = b.scratch(
        &format!("{name}_counts"),
        Elem::U32,
        &[segments, bins, chunks],
    );
    let starts = b.scratch(
        &format!("{name}_starts"),
        Elem::U32,
        &[segments, bins, chunks],
    );
    b.append(
        &format!("{name}_count"),
        Kernel::RowsCount(cfg),
        cubes,
        dim,
        vec![
            Arg::Buf(src),
            Arg::Buf(counts),
            Arg::U32(seg_rows as u32),
            Arg::U32(segments as u32),
        ],
    );
    scan(
        b,
        &format!("{name}_scan"),
        counts,
        starts,
        segments,
        bins * chunks,
        false,
    );
    let rank_of = match out.rank_of {
        Some(r) => r,
        None => unused(b, name, Elem::U32),
    };
    b.append(
        &format!("{name}_fill"),
        Kernel::RowsFill(cfg, out.rank_of.is_some()),
        cubes,
        dim,
        vec![
            Arg::Buf(src),
            Arg::Buf(starts),
            Arg::Buf(out.values),
            Arg::Buf(rank_of),
            Arg::U32(seg_rows as u32),
            Arg::U32(segments as u32),
            Arg::U32(out.modulus as u32),
            Arg::U32(out.divisor as u32),
        ],
    );
    b.elementwise(
        &format!("{name}_offsets"),
        Kernel::RowsOffsets(),
        segments * bins,
        vec![
            Arg::Buf(starts),
            Arg::Buf(out.offsets),
            Arg::U32(chunks as u32),
        ],
    );
}

/// Rows per chunk of a column reduction over `rows` rows into `outputs` sums: enough chunks to
/// fill a large GPU (at least 64 rows a chunk), at most 1024 chunks (the second level's loop)
/// and at most 2^24 partial sums (64 MiB of scratch).
pub fn chunk_rows(rows: usize, outputs: usize) -> usize {
    let chunks = 1024.min((1usize << 24) / outputs.max(1)).max(1);
    64.max(rows.div_ceil(chunks))
}

/// Appends the column reduction `out[e, i] = Σ_t w[t, e]·a[t, i]` over `rows` rows of `a`
/// [rows, cols] (storage type) — with `w` [rows, groups] f32 (else plain column sums, one
/// group) and, with `out_bias`, the bias column (a = 1) into `out_bias` [groups] — as a
/// two-level tree in a fixed order.
#[allow(clippy::too_many_arguments)]
pub fn column_sums(
    b: &mut PlanBuilder,
    name: &str,
    a: BufId,
    w: Option<(BufId, usize)>,
    rows: usize,
    cols: usize,
    out: BufId,
    out_bias: Option<BufId>,
) {
    let groups = w.map_or(1, |(_, g)| g);
    let width = cols + usize::from(out_bias.is_some());
    if groups * width == 0 {
        return;
    }
    let cfg = ColumnConfig {
        groups: groups as u32,
        weighted: w.is_some(),
        bias: out_bias.is_some(),
    };
    let per = chunk_rows(rows, groups * width);
    let chunks = rows.div_ceil(per).max(1);
    let partial = b.scratch(
        &format!("{name}_partial"),
        Elem::F32,
        &[groups, chunks, width],
    );
    let blocks = width.div_ceil(UNITS as usize);
    let weights = match w {
        Some((w, _)) => w,
        None => unused(b, name, Elem::F32),
    };
    let bias = match out_bias {
        Some(o) => o,
        None => unused(b, &format!("{name}_bias"), Elem::Storage),
    };
    b.append(
        &format!("{name}_partial"),
        Kernel::ColumnPartial(cfg),
        Cubes::Fixed(blocks as u32, chunks as u32, groups as u32),
        dim(),
        vec![
            Arg::Buf(a),
            Arg::Buf(weights),
            Arg::Buf(partial),
            Arg::U32(rows as u32),
            Arg::U32(cols as u32),
            Arg::U32(per as u32),
        ],
    );
    b.append_as(
        &format!("{name}_finish"),
        Kernel::ColumnFinish(cfg),
        Float::Storage,
        Cubes::units(groups * width),
        (crate::plan::build::UNITS, 1, 1),
        vec![
            Arg::Buf(partial),
            Arg::Buf(out),
            Arg::Buf(bias),
            Arg::U32(cols as u32),
            Arg::U32(chunks as u32),
        ],
    );
}
