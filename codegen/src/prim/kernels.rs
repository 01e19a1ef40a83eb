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
    cube_scan_width(v, smem, UNITS)
}

/// [`cube_scan`] over a cube of `units` units (a power of two, at most [`UNITS`]).
#[cube]
pub fn cube_scan_width(v: u32, smem: &mut SharedMemory<u32>, #[comptime] units: u32) -> (u32, u32) {
    let u = UNIT_POS as usize;
    sync_cube();
    smem[u] = v;
    let mut d = 1usize;
    // Hillis–Steele: after step s, smem[u] sums the 2^s units ending at u.
    for _step in 0..comptime!(units.trailing_zeros()) {
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
    let total = smem[(units - 1) as usize];
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
pub fn scan_reduce(input: &Array<u32>, sums: &mut Array<u32>, seg_len: u32, tiles_per_seg: u32) {
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
fn rows_chunk(seg_rows: u32, segments: u32, #[comptime] cfg: RowsConfig) -> (usize, usize, bool) {
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

/// Column reduction, level 2: the chunk partials of each (e, i) summed into `out` [groups,
/// cols] (storage type) and, with `bias`, column `cols` into `out_bias` [groups]. A cube holds
/// `columns` consecutive columns of one group (cubes (column blocks, groups)) and
/// 256 / `columns` lanes per column: lane l sums chunks l, l + lanes, … in order, then lane 0
/// adds the lanes' sums in lane order — a fixed tree, the same bits on every run.
#[cube(launch, launch_unchecked)]
pub fn column_finish<F: Float>(
    partial: &Array<f32>,
    out: &mut Array<F>,
    out_bias: &mut Array<F>,
    cols: u32,
    chunks: u32,
    #[comptime] cfg: ColumnConfig,
    #[comptime] columns: u32,
) {
    let lanes = comptime!(UNITS / columns);
    let mut smem = SharedMemory::<f32>::new(UNITS as usize);
    let x = UNIT_POS_X as usize;
    let lane = UNIT_POS_Y as usize;
    let n = cols as usize;
    let mut width = n;
    if cfg.bias {
        width = n + 1;
    }
    let e = CUBE_POS_Y as usize;
    let i = CUBE_POS_X as usize * (columns as usize) + x;
    let active = i < width && e < cfg.groups as usize;
    let mut acc = 0.0f32;
    if active {
        let mut c = lane;
        for _step in 0..(chunks as usize + lanes as usize - 1 - lane) / (lanes as usize) {
            acc += partial[(e * chunks as usize + c) * width + i];
            c += lanes as usize;
        }
    }
    smem[lane * (columns as usize) + x] = acc;
    sync_cube();
    if active && lane == 0 {
        let mut total = 0.0f32;
        for l in 0..lanes {
            total += smem[(l * columns) as usize + x];
        }
        if i < n {
            out[e * n + i] = F::cast_from(total);
        } else {
            out_bias[e] = F::cast_from(total);
        }
    }
}

/// Units of a [`row_sums`] cube.
pub const ROW_UNITS: u32 = 128;

/// Row sums in f32, a cube per row: `out[r] = Σ_j a[r, j]` (+ `b[r, j]` with `two`) over the
/// `cols` columns. Each unit sums the columns u, u + 128, … in order, then a tree over the units
/// in shared memory in a fixed order: the same bits on every run.
#[cube(launch, launch_unchecked)]
// `usize::div_ceil` has no `#[cube]` expansion.
#[allow(clippy::manual_div_ceil)]
pub fn row_sums(
    a: &Array<f32>,
    b: &Array<f32>,
    out: &mut Array<f32>,
    cols: u32,
    #[comptime] two: bool,
) {
    let mut smem = SharedMemory::<f32>::new(ROW_UNITS as usize);
    let row = CUBE_POS;
    let u = UNIT_POS as usize;
    let n = cols as usize;
    let active = row < out.len();
    let mut acc = 0.0f32;
    if active {
        for k in 0..(n + ROW_UNITS as usize - 1) / (ROW_UNITS as usize) {
            let j = u + k * (ROW_UNITS as usize);
            if j < n {
                acc += a[row * n + j];
                if two {
                    acc += b[row * n + j];
                }
            }
        }
    }
    smem[u] = acc;
    for level in 0..comptime!(ROW_UNITS.trailing_zeros()) {
        sync_cube();
        let half = (ROW_UNITS as usize / 2) >> level as usize;
        if u < half {
            smem[u] = smem[u] + smem[u + half];
        }
    }
    sync_cube();
    if active && u == 0 {
        out[row] = smem[0];
    }
}
