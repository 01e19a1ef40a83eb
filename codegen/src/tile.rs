//! The shared-memory tiled product every grouped GEMM of the crate is built on: one cube computes a
//! [`TILE`] × [`TILE`] block of `C = A·B` for rows of one group, stepping through the reduction in
//! `tk`-wide slices staged in shared memory (f32, whatever the storage dtype), each unit
//! holding a [`MICRO`] × [`MICRO`] register tile.
//!
//! Cubes are [`TILE_UNITS`] × [`TILE_UNITS`] units. Unit (x, y) owns rows `y + 16·i` and columns
//! `x + 16·j` of the tile (i, j < 4): neighbouring units write neighbouring columns (coalesced
//! stores) and read the same A value (a shared-memory broadcast). Both staging buffers are padded
//! to `TILE + 1` per slice row, so the column-wise stores of a slice hit distinct banks.
//!
//! Rows may be gathered (row `p` of the tile reads row `rows[p]` of `A`, how routed pairs read
//! their token), `B` is addressed through comptime strides from a runtime base, and either operand
//! may be stored reduction-major, so one mainloop serves `x·w1ᵀ`, `h·w2ᵀ`, `dy·w2`, `dpre·w1` and
//! the weight gradients `dpreᵀ·x`, `dyᵀ·h` of every block without a transposed copy.

// `#[cube]` generates undocumented expansion items next to each function.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Rows and columns of one output tile.
pub const TILE: u32 = 64;
/// The reduction slices staged in shared memory per step that the mainloop supports (the
/// schedule's `tile_k`; the IR's schedule space of every tiled op).
pub const TILE_KS: [u32; 2] = [16, 32];
/// Units per side of a cube (`TILE_UNITS²` units per cube).
pub const TILE_UNITS: u32 = 16;
/// Rows and columns each unit accumulates.
pub const MICRO: u32 = TILE / TILE_UNITS;
/// Row pitch of the staging buffers (padded against bank conflicts).
pub const PITCH: u32 = TILE + 1;

/// Comptime layout of one tiled product `C[r, n] = Σ_k A[r, k]·B[k, n]` for rows r of C in
/// `r0..r_end`, columns below `n`, reduction steps `k` in `k_begin..k_end` (runtime).
///
/// - `A[r, k] = a[ra·lda + r]` when `a_kmajor` (ra = the row of step k: a weight gradient's
///   reduction runs over pairs), else `a[ra·lda + k]` (ra = the row of r); ra goes through the
///   index array when `gather_a`.
/// - `B[k, n] = b[b0 + rb·sk + n·sn]` with rb = k, or the index array's entry for k when
///   `gather_b`; times `scale[k]` when `scale_b`.
#[derive_cube_comptime]
pub struct TileShape {
    /// Columns of `C`.
    pub n: u32,
    /// Row stride of `A`.
    pub lda: u32,
    /// `A` is stored reduction-major (its rows are the reduction steps).
    pub a_kmajor: bool,
    /// `A`'s row index goes through the index array.
    pub gather_a: bool,
    /// Stride of `B` along the reduction.
    pub sk: u32,
    /// Stride of `B` along the columns.
    pub sn: u32,
    /// `B`'s reduction index goes through the index array.
    pub gather_b: bool,
    /// `B`'s rows are scaled by `scale[k]`.
    pub scale_b: bool,
    /// Reduction steps staged per slice (one of [`TILE_KS`]).
    pub tk: u32,
}

/// The cube dimension every tiled kernel is launched with.
pub fn cube_dim() -> CubeDim {
    CubeDim::new_2d(TILE_UNITS, TILE_UNITS)
}

/// The register tile of this unit: rows `r0 + y + 16·i` and columns `n0 + x + 16·j` of `C`
/// (see [`TileShape`] for how `A`, `B`, the index array `rows` and `scale` are read).
/// Out-of-range rows, columns and reduction steps read as 0. Every unit of the cube must call it
/// (it synchronises the cube). Element `i·MICRO + j` of the result is (row i, column j).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn tile_product<FA: Float, FB: Float>(
    a: &Array<FA>,
    b: &Array<FB>,
    rows: &Array<u32>,
    scale: &Array<f32>,
    r0: usize,
    r_end: usize,
    n0: usize,
    b0: usize,
    k_begin: usize,
    k_end: usize,
    #[comptime] s: TileShape,
) -> Array<f32> {
    let mut sa = SharedMemory::<f32>::new(comptime!((s.tk * PITCH) as usize));
    let mut sb = SharedMemory::<f32>::new(comptime!((s.tk * PITCH) as usize));
    let mut acc = zero_tile();
    let mut k0 = k_begin;
    while k0 < k_end {
        load_a_slice::<FA>(&mut sa, a, rows, r0, r_end, k0, k_end, s);
        load_b_slice::<FB>(&mut sb, b, rows, scale, n0, b0, k0, k_end, s);
        sync_cube();
        multiply_slice(&sa, &sb, &mut acc, s.tk);
        sync_cube();
        k0 += s.tk as usize;
    }
    acc
}

/// A zeroed register tile.
#[cube]
pub fn zero_tile() -> Array<f32> {
    let mut acc = Array::<f32>::new(comptime!((MICRO * MICRO) as usize));
    #[unroll]
    for i in 0..comptime!(MICRO * MICRO) {
        acc[i as usize] = 0.0f32;
    }
    acc
}

/// This unit's part of staging the A slice (TILE rows × `tk` steps from `k0`) into `sa`,
/// read along whichever axis is contiguous; out of range reads as 0.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_a_slice<FA: Float>(
    sa: &mut SharedMemory<f32>,
    a: &Array<FA>,
    rows: &Array<u32>,
    r0: usize,
    r_end: usize,
    k0: usize,
    k_end: usize,
    #[comptime] s: TileShape,
) {
    let unit = (UNIT_POS_Y * TILE_UNITS + UNIT_POS_X) as usize;
    let tile = TILE as usize;
    let tk = s.tk as usize;
    #[unroll]
    for q in 0..comptime!(TILE * s.tk / (TILE_UNITS * TILE_UNITS)) {
        let l = unit + (q * TILE_UNITS * TILE_UNITS) as usize;
        let mut m = l / tk;
        let mut k = l % tk;
        if s.a_kmajor {
            m = l % tile;
            k = l / tile;
        }
        let r = r0 + m;
        let kk = k0 + k;
        let mut v = 0.0f32;
        if r < r_end && kk < k_end {
            if s.a_kmajor {
                let mut ra = kk;
                if s.gather_a {
                    ra = rows[kk] as usize;
                }
                v = f32::cast_from(a[ra * (s.lda as usize) + r]);
            } else {
                let mut ra = r;
                if s.gather_a {
                    ra = rows[r] as usize;
                }
                v = f32::cast_from(a[ra * (s.lda as usize) + kk]);
            }
        }
        sa[k * (PITCH as usize) + m] = v;
    }
}

/// This unit's part of staging the B slice (`tk` steps from `k0` × TILE columns from `n0`)
/// into `sb`, read along whichever axis is contiguous; out of range reads as 0.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_b_slice<FB: Float>(
    sb: &mut SharedMemory<f32>,
    b: &Array<FB>,
    rows: &Array<u32>,
    scale: &Array<f32>,
    n0: usize,
    b0: usize,
    k0: usize,
    k_end: usize,
    #[comptime] s: TileShape,
) {
    let unit = (UNIT_POS_Y * TILE_UNITS + UNIT_POS_X) as usize;
    let tile = TILE as usize;
    let tk = s.tk as usize;
    #[unroll]
    for q in 0..comptime!(TILE * s.tk / (TILE_UNITS * TILE_UNITS)) {
        let l = unit + (q * TILE_UNITS * TILE_UNITS) as usize;
        let mut k = l / tile;
        let mut n = l % tile;
        if comptime!(s.sk == 1 && !s.gather_b) {
            k = l % tk;
            n = l / tk;
        }
        let kk = k0 + k;
        let mut v = 0.0f32;
        if kk < k_end && n0 + n < s.n as usize {
            let mut rb = kk;
            if s.gather_b {
                rb = rows[kk] as usize;
            }
            v = f32::cast_from(b[b0 + rb * (s.sk as usize) + (n0 + n) * (s.sn as usize)]);
            if s.scale_b {
                v *= scale[kk];
            }
        }
        sb[k * (PITCH as usize) + n] = v;
    }
}

/// Accumulates the staged slices into this unit's register tile: acc[i, j] += Σ_k
/// sa[k, y + 16·i]·sb[k, x + 16·j].
#[cube]
pub fn multiply_slice(
    sa: &SharedMemory<f32>,
    sb: &SharedMemory<f32>,
    acc: &mut Array<f32>,
    #[comptime] tk: u32,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    // Not unrolled here: NVRTC unrolls a constant-trip loop itself, and the printed sources stay
    // readable.
    for k in 0..tk {
        let base = (k as usize) * (PITCH as usize);
        let mut av = Array::<f32>::new(comptime!(MICRO as usize));
        let mut bv = Array::<f32>::new(comptime!(MICRO as usize));
        #[unroll]
        for i in 0..MICRO {
            av[i as usize] = sa[base + ty + (i * TILE_UNITS) as usize];
            bv[i as usize] = sb[base + tx + (i * TILE_UNITS) as usize];
        }
        #[unroll]
        for i in 0..MICRO {
            #[unroll]
            for j in 0..MICRO {
                let at = (i * MICRO + j) as usize;
                acc[at] += av[i as usize] * bv[j as usize];
            }
        }
    }
}

/// Writes this unit's register tile to `c[(r0 + row)·ldc + c0 + n0 + column]` for rows below
/// `r_end` and columns below `n`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn store_tile<F: Float>(
    c: &mut Array<F>,
    acc: &Array<f32>,
    r0: usize,
    r_end: usize,
    n0: usize,
    c0: usize,
    #[comptime] n: u32,
    #[comptime] ldc: u32,
) {
    #[unroll]
    for i in 0..MICRO {
        let r = r0 + (UNIT_POS_Y + i * TILE_UNITS) as usize;
        if r < r_end {
            #[unroll]
            for j in 0..MICRO {
                let col = n0 + (UNIT_POS_X + j * TILE_UNITS) as usize;
                if col < n as usize {
                    c[r * (ldc as usize) + c0 + col] = F::cast_from(acc[(i * MICRO + j) as usize]);
                }
            }
        }
    }
}

/// The group of the row tile this cube computes (cube x = row-tile slot) and its rows: groups are
/// `offsets[g]..offsets[g + 1]`, each cut into tiles of [`TILE`] rows, tiles numbered group after
/// group. Returns (group, first row, end of the group's rows, whether the slot has a tile: a
/// launch covers the upper bound ⌈rows / TILE⌉ + groups).
#[cube]
pub fn group_tile(offsets: &Array<u32>, #[comptime] groups: u32) -> (usize, usize, usize, bool) {
    let slot = CUBE_POS_X as usize;
    let tile = TILE as usize;
    let mut seen = 0usize;
    let mut group = 0usize;
    let mut first = 0usize;
    let mut end = 0usize;
    let mut valid = false;
    #[unroll]
    for g in 0..groups {
        let start = offsets[g as usize] as usize;
        let stop = offsets[g as usize + 1] as usize;
        #[allow(clippy::manual_div_ceil)]
        let tiles = (stop - start + tile - 1) / tile;
        if slot >= seen && slot < seen + tiles {
            group = g as usize;
            first = start + (slot - seen) * tile;
            end = stop;
            valid = true;
        }
        seen += tiles;
    }
    (group, first, end, valid)
}

/// Row-tile slots that cover `rows` rows split into `groups` groups of any sizes.
pub fn group_tile_slots(rows: usize, groups: usize) -> usize {
    (rows.div_ceil(TILE as usize) + groups).max(1)
}

/// Column tiles of `n` columns.
pub fn column_tiles(n: usize) -> usize {
    n.div_ceil(TILE as usize).max(1)
}
