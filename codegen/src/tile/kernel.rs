//! The one tile kernel: `tile_gemm` interprets a comptime [`TileProgram`] — rows and reduction
//! range of the cube, the staging of each operand slice into shared memory (gathers, strides,
//! scales and prologues resolved at expansion), the register-tiled multiply, pipelined over
//! `stages` buffers — and hands the accumulators to the program's epilogue.
//!
//! Cubes are 16 × 16 units. Unit (x, y) owns rows `y + 16·i` and columns `x + 16·j` of the
//! cube's `tm` × `tn` tile (i < tm/16, j < tn/16): neighbouring units write neighbouring columns
//! (coalesced stores) and read the same A value (a shared-memory broadcast). The staging buffers
//! are padded to `tile + 1` per slice row, so the transposing stores hit distinct banks.

// `#[cube]` generates undocumented expansion items next to each function.
#![allow(missing_docs)]

use super::epilogue::epilogue;
use super::mma::{add_row_sums, mainloop_mma, multiply_mma};
use super::program::{
    Mainloop, Operand, Packed, Prologue, PstWeight, Reduce, Rows, TileProgram, UNITS, at,
};
use crate::select::kernels::{key, selected};
use cubecl::prelude::*;

/// `i · stride`, where the comptime structure's `unit` (1 or 0) says whether the stride is 1: then
/// `i` itself, a contiguous address the shader compiler can see.
#[cube]
pub fn strided(i: usize, stride: usize, #[comptime] unit: u32) -> usize {
    let mut at = i;
    if comptime!(unit != 1) {
        at = i * stride;
    }
    at
}

/// Entry `at` of the launch's runtime sizes (see [`at`]).
#[cube]
pub fn size(sizes: &Sequence<u32>, #[comptime] at: usize) -> usize {
    let v = sizes.index(at);
    *v as usize
}

/// `C = A·B` and the epilogue of program `p` (its comptime structure), with the problem's sizes
/// — rows `m`, reduction length `k` (each ignored where the program takes them from group
/// offsets), columns, strides — in the runtime `sizes` (positions in [`at`]).
#[cube(launch, launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn tile_gemm<F: Float>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    outs: &mut Sequence<Array<F>>,
    outs32: &mut Sequence<Array<f32>>,
    sizes: &Sequence<u32>,
    #[comptime] p: TileProgram,
) {
    let tm = p.shape.tm as usize;
    let mut g = CUBE_POS_Z as usize;
    let mut r0 = (CUBE_POS_X as usize) * tm;
    let mut r_end = size(sizes, at::M);
    let mut valid = true;
    if comptime!(p.rows.offsets().is_some()) {
        let offsets = idx.index(comptime!(p.rows.offsets().unwrap_or(0) as usize));
        let (grp, first, end, ok) = group_tile(offsets, comptime!(p.rows.groups()), p.shape.tm);
        g = grp;
        r0 = first;
        r_end = end;
        valid = ok;
    }
    let mut k_begin = 0usize;
    let mut k_end = size(sizes, at::K);
    if comptime!(p.reduce.offsets().is_some()) {
        let offsets = idx.index(comptime!(p.reduce.offsets().unwrap_or(0) as usize));
        k_begin = offsets[g] as usize;
        k_end = offsets[g + 1] as usize;
    }
    // `valid` depends on the cube only: every unit of a cube takes the same branch, so the
    // barriers inside stay legal.
    if valid {
        let n0 = (CUBE_POS_Y * p.shape.tn) as usize;
        let mut acc =
            Array::<f32>::new(comptime!((p.shape.micro_m() * p.shape.micro_n()) as usize));
        let mut sums = Array::<f32>::new(comptime!(p.shape.micro_m() as usize));
        // The tensor-core mainloop's f32 output tile, which the epilogue reads in place of
        // `acc` (a buffer no scalar kernel uses, so none of them declares it).
        let mut sc = SharedMemory::<f32>::new_aligned(
            comptime!((p.shape.tm * p.shape.c_pitch()) as usize),
            32usize,
        );
        if comptime!(p.shape.mma == Mainloop::Half) {
            mainloop_mma::<F, F, F>(
                ins, ins32, idx, sizes, &mut sc, &mut sums, g, r0, r_end, n0, k_begin, k_end, p,
            );
        }
        if comptime!(p.shape.mma == Mainloop::Tf32) {
            mainloop_mma::<F, f32, tf32>(
                ins, ins32, idx, sizes, &mut sc, &mut sums, g, r0, r_end, n0, k_begin, k_end, p,
            );
        }
        if comptime!(p.shape.mma == Mainloop::Scalar) {
            mainloop::<F>(
                ins, ins32, idx, sizes, &mut acc, &mut sums, g, r0, r_end, n0, k_begin, k_end, p,
            );
        }
        epilogue::<F>(
            ins, ins32, idx, outs, outs32, sizes, &acc, &sc, &sums, g, r0, r_end, n0, p,
        );
    }
}

/// The group of the row tile this cube computes (cube x = row-tile slot) and its rows: groups
/// are `offsets[g]..offsets[g + 1]`, each cut into tiles of `tm` rows, tiles numbered group after
/// group. Returns (group, first row, end of the group's rows, whether the slot has a tile: a
/// launch covers the upper bound ⌈rows / tm⌉ + groups).
#[cube]
pub fn group_tile(
    offsets: &Array<u32>,
    #[comptime] groups: u32,
    #[comptime] tm: u32,
) -> (usize, usize, usize, bool) {
    let slot = CUBE_POS_X as usize;
    let tile = tm as usize;
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

/// The reduction of the cube's tile: `acc[i·micro_n + j]` = Σ_k A[row i, k]·B[k, column j]
/// over `k_begin..k_end`, and, when the epilogue asks for row sums, `sums[i]` = Σ_k A[row i, k].
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn mainloop<F: Float>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    sizes: &Sequence<u32>,
    acc: &mut Array<f32>,
    sums: &mut Array<f32>,
    g: usize,
    r0: usize,
    r_end: usize,
    n0: usize,
    k_begin: usize,
    k_end: usize,
    #[comptime] p: TileProgram,
) {
    let s = p.shape;
    #[unroll]
    for i in 0..comptime!(s.micro_m() * s.micro_n()) {
        acc[i as usize] = 0.0f32;
    }
    #[unroll]
    for i in 0..comptime!(s.micro_m()) {
        sums[i as usize] = 0.0f32;
    }
    let slice_a = comptime!((s.tk * (s.tm + 1)) as usize);
    let slice_b = comptime!((s.tk * (s.tn + 1)) as usize);
    let mut sa = SharedMemory::<f32>::new(comptime!(s.stages as usize * slice_a));
    let mut sb = SharedMemory::<f32>::new(comptime!(s.stages as usize * slice_b));
    let frags = Sequence::<cmma::Matrix<f32>>::new();
    pipeline::<F, f32, f32>(
        ins, ins32, idx, sizes, &mut sa, &mut sb, acc, &frags, sums, true, 0, 0, g, r0, r_end, n0,
        k_begin, k_end, p,
    );
}

/// The reduction over `k_begin..k_end` in `tk`-deep slices, for both mainloops: each slice
/// staged into `sa`, `sb` (type `S`: f32, or the storage dtype for 16-bit tensor cores) and
/// consumed ([`consume`]) by the scalar register tiles (`acc`) or the plane's WMMA fragments
/// (`frags`, of operand type `M`); with `stages` = 2, slice i is staged into buffer i % 2 while
/// slice i − 1 is consumed from the other, one barrier per slice.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn pipeline<F: Float, S: Float, M: CubePrimitive>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    sizes: &Sequence<u32>,
    sa: &mut SharedMemory<S>,
    sb: &mut SharedMemory<S>,
    acc: &mut Array<f32>,
    frags: &Sequence<cmma::Matrix<f32>>,
    sums: &mut Array<f32>,
    owner: bool,
    row0: usize,
    col0: usize,
    g: usize,
    r0: usize,
    r_end: usize,
    n0: usize,
    k_begin: usize,
    k_end: usize,
    #[comptime] p: TileProgram,
) {
    let s = p.shape;
    let slice_a = comptime!((s.tk * s.pitch(s.tm)) as usize);
    let slice_b = comptime!((s.tk * s.pitch(s.tn)) as usize);
    let n_end = size(sizes, at::N);
    let tk = s.tk as usize;
    let mut k0 = k_begin;
    if comptime!(s.stages == 2) {
        // Double-buffered: iteration i stages slice i into buffer i % 2 (while slices remain)
        // and multiplies slice i − 1 from the other buffer; one barrier per iteration orders
        // both. The loop holds one staging site and one multiply, so the kernel is no larger
        // than the single-buffered one.
        #[allow(clippy::manual_div_ceil)]
        let steps = (k_end - k_begin + tk - 1) / tk;
        let mut i = 0usize;
        while i <= steps {
            let cur = i % 2;
            if i < steps {
                let k = k_begin + i * tk;
                stage::<F, S>(
                    sa,
                    ins,
                    ins32,
                    idx,
                    sizes,
                    cur * slice_a,
                    r0,
                    r_end,
                    g,
                    k,
                    k_end,
                    p.a,
                    at::A,
                    s.tm,
                    p,
                );
                stage::<F, S>(
                    sb,
                    ins,
                    ins32,
                    idx,
                    sizes,
                    cur * slice_b,
                    n0,
                    n_end,
                    g,
                    k,
                    k_end,
                    p.b,
                    at::B,
                    s.tn,
                    p,
                );
            }
            if i > 0 {
                let prev = 1 - cur;
                consume::<S, M>(
                    sa,
                    sb,
                    prev * slice_a,
                    prev * slice_b,
                    acc,
                    frags,
                    sums,
                    owner,
                    row0,
                    col0,
                    p,
                );
            }
            sync_cube();
            i += 1;
        }
    } else {
        while k0 < k_end {
            stage::<F, S>(
                sa,
                ins,
                ins32,
                idx,
                sizes,
                0,
                r0,
                r_end,
                g,
                k0,
                k_end,
                p.a,
                at::A,
                s.tm,
                p,
            );
            stage::<F, S>(
                sb,
                ins,
                ins32,
                idx,
                sizes,
                0,
                n0,
                n_end,
                g,
                k0,
                k_end,
                p.b,
                at::B,
                s.tn,
                p,
            );
            sync_cube();
            consume::<S, M>(sa, sb, 0, 0, acc, frags, sums, owner, row0, col0, p);
            sync_cube();
            k0 += tk;
        }
    }
}

/// One staged slice into the accumulators: the scalar register tiles, or — on tensor cores —
/// the owning planes' fragments and every unit's row-sum partials.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn consume<S: Float, M: CubePrimitive>(
    sa: &SharedMemory<S>,
    sb: &SharedMemory<S>,
    base_a: usize,
    base_b: usize,
    acc: &mut Array<f32>,
    frags: &Sequence<cmma::Matrix<f32>>,
    sums: &mut Array<f32>,
    owner: bool,
    row0: usize,
    col0: usize,
    #[comptime] p: TileProgram,
) {
    if comptime!(p.shape.tensor()) {
        if owner {
            multiply_mma::<S, M>(sa, sb, base_a, base_b, frags, row0, col0, p);
        }
        add_row_sums::<S>(sa, base_a, sums, p);
    } else {
        multiply::<S>(sa, sb, base_a, base_b, acc, sums, p);
    }
}

/// This unit's part of staging one operand's slice — `tile` output-side indices from `mn0`
/// (below `mn_end`) × `tk` reduction steps from `k0` (below `k_end`) — into `smem` at `base`,
/// as `smem[base + k·pitch + mn]` (pitch: [`super::TileShape::pitch`]), converted to the
/// staging type `S` (f32, or the storage dtype for tensor cores). Elements are walked along the operand's contiguous axis,
/// `vector` consecutive ones per unit; out-of-range ones read as 0.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn stage<F: Float, S: Float>(
    smem: &mut SharedMemory<S>,
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    sizes: &Sequence<u32>,
    base: usize,
    mn0: usize,
    mn_end: usize,
    g: usize,
    k0: usize,
    k_end: usize,
    #[comptime] op: Operand,
    #[comptime] strides: [usize; 3],
    #[comptime] tile: u32,
    #[comptime] p: TileProgram,
) {
    let s_mn = size(sizes, comptime!(strides[0]));
    let s_k = size(sizes, comptime!(strides[1]));
    let s_g = size(sizes, comptime!(strides[2]));
    let unit = (UNIT_POS_Y * UNITS + UNIT_POS_X) as usize;
    let tk = p.shape.tk as usize;
    let t = tile as usize;
    let pitch = comptime!(p.shape.pitch(tile) as usize);
    let vector = p.shape.vector;
    let cube = comptime!(UNITS * UNITS);
    #[unroll]
    for q in 0..comptime!(tile * p.shape.tk / (UNITS * UNITS * p.shape.vector)) {
        #[unroll]
        for e in 0..vector {
            let l = (unit + (q * cube) as usize) * (vector as usize) + e as usize;
            let mut mn = l % t;
            let mut kk = l / t;
            if op.k_fast {
                mn = l / tk;
                kk = l % tk;
            }
            let i = mn0 + mn;
            let kx = k0 + kk;
            let mut v = 0.0f32;
            if i < mn_end && kx < k_end {
                v = read::<F>(ins, ins32, idx, sizes, i, kx, g, s_mn, s_k, s_g, op, p);
            }
            smem[base + kk * pitch + mn] = S::cast_from(v);
        }
    }
}

/// The value of operand `op` at output-side index `i`, reduction step `kx`, batch index `g`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn read<F: Float>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    sizes: &Sequence<u32>,
    i: usize,
    kx: usize,
    g: usize,
    s_mn: usize,
    s_k: usize,
    s_g: usize,
    #[comptime] op: Operand,
    #[comptime] p: TileProgram,
) -> f32 {
    let mut ii = i;
    let mut kk = kx;
    if comptime!(op.gather_mn || op.gather_k) {
        let gather = idx.index(comptime!(p.gather.unwrap_or(0) as usize));
        if op.gather_mn {
            ii = gather[i] as usize;
        }
        if op.gather_k {
            kk = gather[kx] as usize;
        }
    }
    let addr = g * s_g + strided(ii, s_mn, op.s_mn) + strided(kk, s_k, op.s_k);
    let mut v = 0.0f32;
    if comptime!(op.pst().is_some()) {
        let w = comptime!(op.pst().unwrap_or_default());
        v = pst_masked::<F>(ins, ins32, idx, addr, size(sizes, at::PST_N_IN), w);
    } else if comptime!(op.packed().is_some()) {
        let pk = comptime!(op.packed().unwrap_or_default());
        let index = idx.index(comptime!(pk.index as usize));
        let first = (addr / (pk.group as usize)) * (pk.keep as usize);
        #[unroll]
        for r in 0..pk.keep {
            if index[first + r as usize] as usize == addr {
                v = load(ins, ins32, first + r as usize, op.src.f32, op.src.slot);
            }
        }
    } else {
        v = load(ins, ins32, addr, op.src.f32, op.src.slot);
    }
    if comptime!(op.scale_k.is_some()) {
        v *= ins32.index(comptime!(op.scale_k.unwrap_or(0) as usize))[kx];
    }
    v
}

/// Element `at` of input slot `slot` of the f32 list (`f32`) or the storage-typed one, as f32.
#[cube]
#[allow(unused_assignments)]
pub fn load<F: Float>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    at: usize,
    #[comptime] f32: bool,
    #[comptime] slot: u32,
) -> f32 {
    let mut v = 0.0f32;
    if f32 {
        v = ins32.index(comptime!(slot as usize))[at];
    } else {
        v = f32::cast_from(ins.index(comptime!(slot as usize))[at]);
    }
    v
}

/// (W′, S) of PST at flat position `flat` of W [out, in] (see [`PstWeight`]).
#[cube]
pub fn pst_weight_score<F: Float>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    flat: usize,
    n_in: usize,
    #[comptime] w: PstWeight,
) -> (f32, f32) {
    let o = flat / n_in;
    let i = flat % n_in;
    let coef = ins32.index(comptime!(w.coef as usize));
    let wt = ins.index(comptime!(w.first as usize));
    let u = ins.index(comptime!((w.first + 1) as usize));
    let v = ins.index(comptime!((w.first + 2) as usize));
    let ma = ins.index(comptime!((w.first + 3) as usize));
    let mb = ins.index(comptime!((w.first + 4) as usize));
    let mr = ins.index(comptime!((w.first + 5) as usize));
    let mc = ins.index(comptime!((w.first + 6) as usize));
    let mut uv = 0.0f32;
    #[unroll]
    for r in 0..w.rank {
        uv += f32::cast_from(u[o * (w.rank as usize) + r as usize])
            * f32::cast_from(v[(r as usize) * n_in + i]);
    }
    let mut ab = 0.0f32;
    #[unroll]
    for q in 0..w.mrank {
        ab += f32::cast_from(ma[o * (w.mrank as usize) + q as usize])
            * f32::cast_from(mb[(q as usize) * n_in + i]);
    }
    let wp = f32::cast_from(wt[flat]) + coef[2] * uv;
    let s = f32::abs(wp) + coef[0] * ab + coef[1] * (f32::cast_from(mr[o]) + f32::cast_from(mc[i]));
    (wp, s)
}

/// Whether PST's mask zeroes flat position `flat` with score `s`.
#[cube]
pub fn pst_zeroed(
    idx: &Sequence<Array<u32>>,
    s: f32,
    flat: usize,
    #[comptime] w: PstWeight,
) -> bool {
    selected(
        key::<f32>(s, true),
        flat,
        idx.index(comptime!(w.state as usize)),
    )
}

/// M ⊙ W′ at flat position `flat`.
#[cube]
pub fn pst_masked<F: Float>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    flat: usize,
    n_in: usize,
    #[comptime] w: PstWeight,
) -> f32 {
    let (wp, s) = pst_weight_score::<F>(ins, ins32, flat, n_in, w);
    let mut out = wp;
    if pst_zeroed(idx, s, flat, w) {
        out = 0.0f32;
    }
    out
}

/// Accumulates the staged slices at `base_a`, `base_b` into this unit's register tile, and the
/// A values into the row sums when the epilogue asks for them.
#[cube]
pub fn multiply<S: Float>(
    sa: &SharedMemory<S>,
    sb: &SharedMemory<S>,
    base_a: usize,
    base_b: usize,
    acc: &mut Array<f32>,
    sums: &mut Array<f32>,
    #[comptime] p: TileProgram,
) {
    let s = p.shape;
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let pa = comptime!((s.tm + 1) as usize);
    let pb = comptime!((s.tn + 1) as usize);
    let mm = s.micro_m();
    let mn = s.micro_n();
    // Not unrolled here: NVRTC unrolls a constant-trip loop itself, and the printed sources stay
    // readable.
    for kk in 0..s.tk {
        let ra = base_a + (kk as usize) * pa;
        let rb = base_b + (kk as usize) * pb;
        let mut av = Array::<f32>::new(comptime!(mm as usize));
        let mut bv = Array::<f32>::new(comptime!(mn as usize));
        #[unroll]
        for i in 0..mm {
            av[i as usize] = f32::cast_from(sa[ra + ty + (i * UNITS) as usize]);
        }
        #[unroll]
        for j in 0..mn {
            bv[j as usize] = f32::cast_from(sb[rb + tx + (j * UNITS) as usize]);
        }
        #[unroll]
        for i in 0..mm {
            #[unroll]
            for j in 0..mn {
                let at = (i * mn + j) as usize;
                acc[at] += av[i as usize] * bv[j as usize];
            }
        }
        if comptime!(p.epilogue.row_sums.is_some()) {
            #[unroll]
            for i in 0..mm {
                sums[i as usize] += av[i as usize];
            }
        }
    }
}

// Host-side views of the program's enums, for use inside `comptime!` blocks.
impl Rows {
    /// The u32 slot of the group offsets (grouped rows).
    pub fn offsets(&self) -> Option<u32> {
        match self {
            Rows::Plain => None,
            Rows::Grouped { offsets, .. } => Some(*offsets),
        }
    }
    /// Groups (1 for plain rows).
    pub fn groups(&self) -> u32 {
        match self {
            Rows::Plain => 1,
            Rows::Grouped { groups, .. } => *groups,
        }
    }
}

impl Reduce {
    /// The u32 slot of the reduction offsets (grouped reduction).
    pub fn offsets(&self) -> Option<u32> {
        match self {
            Reduce::Full => None,
            Reduce::Grouped { offsets } => Some(*offsets),
        }
    }
}

impl Operand {
    /// PST's weight prologue, if any.
    pub fn pst(&self) -> Option<PstWeight> {
        match self.prologue {
            Prologue::Pst(w) => Some(w),
            _ => None,
        }
    }
    /// The packed-values prologue, if any.
    pub fn packed(&self) -> Option<Packed> {
        match self.prologue {
            Prologue::Packed(pk) => Some(pk),
            _ => None,
        }
    }
}
