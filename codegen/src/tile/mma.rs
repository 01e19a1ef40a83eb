//! The tensor-core side of the tile kernel: the mainloop whose planes multiply staged slices
//! with WMMA fragments, and the row sums the epilogue may ask for, added up from the staged A
//! slices (the scalar loop keeps them in its registers).

// `#[cube]` generates undocumented expansion items next to each function.
#![allow(missing_docs)]

use super::kernel::pipeline;
use super::program::{FRAG, TileProgram, UNITS, WARPS};
use cubecl::prelude::*;

/// The tensor-core mainloop: operands staged in shared memory as `S` (the 16-bit storage dtype,
/// or f32 for TF32), pipelined over `stages` buffers as in [`super::kernel::mainloop`]; each plane (warp) of the
/// [`super::TileShape::warp_grid`] multiplies its part of the tile with WMMA fragments of type
/// `M` into f32 accumulator fragments. After the reduction the fragments are stored to the
/// shared f32 tile `sc` (row pitch [`super::TileShape::c_pitch`]), which the epilogue reads
/// where the scalar loop's units read their registers: the epilogue is the same code for both
/// mainloops. Row sums, when asked for, are added up from the staged A slices.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn mainloop_mma<F: Float, S: Float, M: CubePrimitive>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    sizes: &Sequence<u32>,
    sc: &mut SharedMemory<f32>,
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
    for i in 0..comptime!(s.micro_m()) {
        sums[i as usize] = 0.0f32;
    }
    let slice_a = comptime!((s.tk * s.pitch(s.tm)) as usize);
    let slice_b = comptime!((s.tk * s.pitch(s.tn)) as usize);
    // 32-byte aligned: WMMA fragments start on 256-bit boundaries.
    let mut sa = SharedMemory::<S>::new_aligned(comptime!(s.stages as usize * slice_a), 32usize);
    let mut sb = SharedMemory::<S>::new_aligned(comptime!(s.stages as usize * slice_b), 32usize);
    let wn = comptime!(s.warp_grid().1);
    let warps = comptime!(s.warp_grid().0 * s.warp_grid().1);
    let fm = comptime!(s.warp_frags().0);
    let fnn = comptime!(s.warp_frags().1);
    let kd = comptime!(s.mma_k() as usize);
    let warp = UNIT_POS / 32;
    // Planes past the grid stage operands but own no fragment; the test is plane-uniform.
    let mut owner = true;
    if comptime!(warps < WARPS) {
        owner = warp < warps;
    }
    let row0 = ((warp / wn) * fm * FRAG) as usize;
    let col0 = ((warp % wn) * fnn * FRAG) as usize;
    let mut frags = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..comptime!(fm * fnn) {
        frags.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            kd,
            cmma::MatrixLayout::Undefined,
            0.0f32,
        ));
    }
    let mut acc = Array::<f32>::new(1usize);
    pipeline::<F, S, M>(
        ins, ins32, idx, sizes, &mut sa, &mut sb, &mut acc, &frags, sums, owner, row0, col0, g, r0,
        r_end, n0, k_begin, k_end, p,
    );
    finish_row_sums(sums, p);
    // The fragments' layout is opaque: they go to the shared f32 tile the epilogue reads.
    let pc = comptime!(s.c_pitch() as usize);
    if owner {
        #[unroll]
        for i in 0..fm {
            #[unroll]
            for j in 0..fnn {
                let start = (row0 + (i * FRAG) as usize) * pc + col0 + (j * FRAG) as usize;
                let mut out = sc.slice_mut(start, start + comptime!((FRAG as usize - 1) * pc + 16));
                cmma::store(
                    &mut out,
                    frags.index(comptime!((i * fnn + j) as usize)),
                    comptime!(pc as u32),
                    cmma::MatrixLayout::RowMajor,
                );
            }
        }
    }
    sync_cube();
}

/// One staged slice into this plane's accumulator fragments: for each WMMA step of the slice,
/// the plane's B fragments, then each A fragment against all of them.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn multiply_mma<S: Float, M: CubePrimitive>(
    sa: &SharedMemory<S>,
    sb: &SharedMemory<S>,
    base_a: usize,
    base_b: usize,
    frags: &Sequence<cmma::Matrix<f32>>,
    row0: usize,
    col0: usize,
    #[comptime] p: TileProgram,
) {
    let s = p.shape;
    let pa = comptime!(s.pitch(s.tm) as usize);
    let pb = comptime!(s.pitch(s.tn) as usize);
    let kd = comptime!(s.mma_k() as usize);
    let fm = comptime!(s.warp_frags().0);
    let fnn = comptime!(s.warp_frags().1);
    #[unroll]
    for step in 0..comptime!(s.tk / s.mma_k()) {
        let ka = base_a + (step as usize) * kd * pa;
        let kb = base_b + (step as usize) * kd * pb;
        let mut bs = Sequence::<cmma::Matrix<M>>::new();
        #[unroll]
        for j in 0..fnn {
            bs.push(fragment::<S, M>(
                sb,
                kb + col0 + (j * FRAG) as usize,
                cmma::MatrixIdent::B,
                p,
            ));
        }
        #[unroll]
        for i in 0..fm {
            let a = fragment::<S, M>(sa, ka + row0 + (i * FRAG) as usize, cmma::MatrixIdent::A, p);
            #[unroll]
            for j in 0..fnn {
                let c = frags.index(comptime!((i * fnn + j) as usize));
                cmma::execute::<M, M, f32, f32>(&a, bs.index(comptime!(j as usize)), c, c);
            }
        }
    }
}

/// The WMMA operand fragment `ident` (A or B) of a staged slice at `start`. Both operands are
/// staged k-major: A [m, k] reads as column-major, B [k, n] as row-major, with the slice's
/// pitch as the leading dimension.
// SAFETY of `uninitialized`: the fragment is loaded (`cmma::load`) before it is returned.
// (A TF32 fragment is loaded from f32 staging, which `Matrix::from_slice` cannot express.)
#[cube]
#[allow(unsafe_code)]
pub fn fragment<S: Float, M: CubePrimitive>(
    smem: &SharedMemory<S>,
    start: usize,
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] p: TileProgram,
) -> cmma::Matrix<M> {
    let s = p.shape;
    let a = comptime!(ident == cmma::MatrixIdent::A);
    let pitch = comptime!((if a { s.pitch(s.tm) } else { s.pitch(s.tn) }) as usize);
    let kd = comptime!(s.mma_k() as usize);
    let layout = if a {
        cmma::MatrixLayout::ColMajor
    } else {
        cmma::MatrixLayout::RowMajor
    };
    let m = unsafe { cmma::Matrix::<M>::uninitialized(ident, 16usize, 16usize, kd, layout) };
    // It spans kd rows of the pitch: it ends (kd − 1)·pitch + 16 past its start.
    cmma::load(
        &m,
        &smem.slice(start, start + comptime!((kd - 1) * pitch + 16)),
        comptime!(pitch as u32),
    );
    m
}

/// Adds this unit's share of a staged slice's A values to its partial row sums (rows
/// `y + 16·i`; unit x takes reduction steps x, x + 16, …), when the epilogue asks for them:
/// a sixteenth of the loads the scalar loop spends, so the tensor-core kernels keep their
/// registers. [`finish_row_sums`] adds the partials up.
#[cube]
pub fn add_row_sums<S: Float>(
    sa: &SharedMemory<S>,
    base_a: usize,
    sums: &mut Array<f32>,
    #[comptime] p: TileProgram,
) {
    if comptime!(p.epilogue.row_sums.is_some()) {
        let s = p.shape;
        let pa = comptime!(s.pitch(s.tm) as usize);
        let tx = UNIT_POS_X as usize;
        let ty = UNIT_POS_Y as usize;
        #[unroll]
        for q in 0..comptime!(s.tk.div_ceil(UNITS)) {
            let kk = tx + (q * UNITS) as usize;
            // Only an 8-deep slice leaves units without a step.
            let mut take = true;
            if comptime!(!s.tk.is_multiple_of(UNITS)) {
                take = kk < (s.tk as usize);
            }
            if take {
                let row = base_a + kk * pa + ty;
                #[unroll]
                for i in 0..comptime!(s.micro_m()) {
                    sums[i as usize] += f32::cast_from(sa[row + (i * UNITS) as usize]);
                }
            }
        }
    }
}

/// The row sums from [`add_row_sums`]' partials: the 16 units of a row (16 consecutive lanes
/// of a plane) add theirs in a fixed butterfly order, so every one holds the total.
#[cube]
pub fn finish_row_sums(sums: &mut Array<f32>, #[comptime] p: TileProgram) {
    if comptime!(p.epilogue.row_sums.is_some()) {
        #[unroll]
        for i in 0..comptime!(p.shape.micro_m()) {
            let mut v = sums[i as usize];
            #[unroll]
            for m in 0..4u32 {
                v += plane_shuffle_xor(v, comptime!(8u32 >> m));
            }
            sums[i as usize] = v;
        }
    }
}
