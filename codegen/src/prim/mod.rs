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

pub mod kernels;

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
    // Columns per finish cube: the most that still give 256 cubes (a large GPU's SMs, twice),
    // the rest of the cube's 256 units splitting each column's chunks.
    let columns = [32usize, 16, 8]
        .into_iter()
        .find(|&c| width.div_ceil(c) * groups >= 256)
        .unwrap_or(8);
    b.append_as(
        &format!("{name}_finish"),
        Kernel::ColumnFinish(cfg, columns as u32),
        Float::Storage,
        Cubes::Fixed(width.div_ceil(columns) as u32, groups as u32, 1),
        (columns as u32, UNITS / columns as u32, 1),
        vec![
            Arg::Buf(partial),
            Arg::Buf(out),
            Arg::Buf(bias),
            Arg::U32(cols as u32),
            Arg::U32(chunks as u32),
        ],
    );
}

/// Appends the f32 row sums `out[r] = Σ_j a[r, j]` (+ `b[r, j]` when given) of [rows, cols]
/// buffers into `out` [rows]: a cube per row, a fixed-order tree ([`kernels::row_sums`]).
pub fn row_sums(
    b: &mut PlanBuilder,
    name: &str,
    a: BufId,
    also: Option<BufId>,
    rows: usize,
    cols: usize,
    out: BufId,
) {
    let units = kernels::ROW_UNITS as usize;
    let second = also.unwrap_or_else(|| unused(b, name, Elem::F32));
    b.append(
        name,
        Kernel::RowSums(also.is_some()),
        Cubes::Units(Extent::Fixed(rows * units), 1),
        (kernels::ROW_UNITS, 1, 1),
        vec![
            Arg::Buf(a),
            Arg::Buf(second),
            Arg::Buf(out),
            Arg::U32(cols as u32),
        ],
    );
}
