//! The tile program's epilogue: what happens to each accumulated element between the mainloop
//! and memory — the routed gate's coefficients, bias, activation (and its backward), PST's
//! straight-through gradient, a plain or strided store or a write sampled at mask positions —
//! and per row, the gate's output coefficient and the row sums that bias gradients are.
//! Each stage is a comptime option of [`super::program::Epilogue`]: a program without it
//! compiles to nothing for it.

// `#[cube]` generates undocumented expansion items next to each function.
#![allow(missing_docs)]

use super::kernel::{pst_weight_score, pst_zeroed, size, strided};
use super::program::{Act, Dst, TileProgram, UNITS, at};
use cubecl::prelude::*;

/// ReLU or exact-erf GELU of `z`.
#[cube]
pub fn act(z: f32, #[comptime] gelu: bool) -> f32 {
    let mut a = f32::max(z, 0.0f32);
    if gelu {
        a = 0.5f32 * z * (1.0f32 + Erf::erf(z * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
    }
    a
}

/// The activation's derivative at `z`.
#[cube]
pub fn act_grad(z: f32, #[comptime] gelu: bool) -> f32 {
    let mut g = 0.0f32;
    if z > 0.0f32 {
        g = 1.0f32;
    }
    if gelu {
        let cdf = 0.5f32 * (1.0f32 + Erf::erf(z * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
        let pdf = f32::exp(f32::new(-0.5) * z * z) * f32::new(0.398_942_3);
        g = cdf + z * pdf;
    }
    g
}

/// The gate coefficients (on the pre-activation, on the output) of gate value `c` =
/// gate_scale·g in gate mode `mode` (0 output, 1 none, 2 spt-lora).
#[cube]
pub fn coefs(c: f32, #[comptime] mode: u32) -> (f32, f32) {
    let mut c_in = 1.0f32;
    let mut c_out = c;
    if mode == 1 {
        c_out = 1.0f32;
    }
    if mode == 2 {
        c_in = c;
    }
    (c_in, c_out)
}

/// Writes `v` to element `at` of output `dst`.
#[cube]
pub fn write<F: Float>(
    outs: &mut Sequence<Array<F>>,
    outs32: &mut Sequence<Array<f32>>,
    at: usize,
    v: f32,
    #[comptime] dst: Dst,
) {
    if dst.f32 {
        let o = outs32.index_mut(comptime!(dst.slot as usize));
        o[at] = v;
    } else {
        let o = outs.index_mut(comptime!(dst.slot as usize));
        o[at] = F::cast_from(v);
    }
}

/// The position of `flat` in the ascending list `list`, or its length when absent.
#[cube]
pub fn find_sorted(list: &Array<u32>, flat: usize) -> usize {
    let n = list.len();
    let mut lo = 0usize;
    let mut hi = n;
    while lo < hi {
        let mid = (lo + hi) / 2;
        if (list[mid] as usize) < flat {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut at = n;
    // Nested, not `&&`: the second test reads list[lo] only when lo is in range.
    #[allow(clippy::collapsible_if)]
    if lo < n {
        if list[lo] as usize == flat {
            at = lo;
        }
    }
    at
}

/// Applies program `p`'s epilogue to this unit's accumulators (see the module docs): its
/// registers `acc` after the scalar mainloop, its elements of the shared f32 tile `sc` after
/// the tensor-core one.
#[cube]
#[allow(clippy::too_many_arguments)]
// A comptime test around a runtime one: joined with `&&` the pair would be one runtime branch.
#[allow(clippy::collapsible_if, unused_assignments)]
pub fn epilogue<F: Float>(
    ins: &Sequence<Array<F>>,
    ins32: &Sequence<Array<f32>>,
    idx: &Sequence<Array<u32>>,
    outs: &mut Sequence<Array<F>>,
    outs32: &mut Sequence<Array<f32>>,
    sizes: &Sequence<u32>,
    acc: &Array<f32>,
    sc: &SharedMemory<f32>,
    sums: &Array<f32>,
    g: usize,
    r0: usize,
    r_end: usize,
    n0: usize,
    #[comptime] p: TileProgram,
) {
    let e = p.epilogue;
    let st = e.store;
    let mm = p.shape.micro_m();
    let mn = p.shape.micro_n();
    let first_column = CUBE_POS_Y == 0 && UNIT_POS_X == 0;
    let n = size(sizes, at::N);
    let s_row = size(sizes, comptime!(at::C[0]));
    let s_col = size(sizes, comptime!(at::C[1]));
    let s_gc = size(sizes, comptime!(at::C[2]));
    #[unroll]
    for i in 0..mm {
        let r = r0 + (UNIT_POS_Y + i * UNITS) as usize;
        if r < r_end {
            let mut c_in = 1.0f32;
            let mut c_out = 1.0f32;
            if comptime!(e.gate.is_some()) {
                let gate = comptime!(e.gate.unwrap_or_default());
                let t = idx.index(comptime!(p.gather.unwrap_or(0) as usize))[r] as usize;
                let c = ins32.index(comptime!(gate.scale as usize))[0]
                    * ins32.index(comptime!(gate.gates as usize))[t * (gate.blocks as usize) + g];
                let (ci, co) = coefs(c, gate.mode);
                c_in = ci;
                c_out = co;
            }
            if comptime!(e.cout.is_some()) {
                if first_column {
                    let o = outs32.index_mut(comptime!(e.cout.unwrap_or(0) as usize));
                    o[r] = c_out;
                }
            }
            if comptime!(e.row_sums.is_some()) {
                if first_column {
                    let dst = comptime!(e.row_sums.unwrap_or_default().0);
                    let s_g = size(sizes, at::SUMS_G);
                    write::<F>(outs, outs32, g * s_g + r, sums[i as usize], dst);
                }
            }
            #[unroll]
            for j in 0..mn {
                let c = n0 + (UNIT_POS_X + j * UNITS) as usize;
                if c < n {
                    let addr = g * s_gc + strided(r, s_row, st.s_row) + strided(c, s_col, st.s_col);
                    let mut v = 0.0f32;
                    if comptime!(p.shape.tensor()) {
                        let pc = comptime!(p.shape.c_pitch() as usize);
                        v = sc[(UNIT_POS_Y + i * UNITS) as usize * pc
                            + (UNIT_POS_X + j * UNITS) as usize];
                    } else {
                        v = acc[(i * mn + j) as usize];
                    }
                    if e.scale_out {
                        v *= c_out;
                    }
                    if comptime!(e.bias.is_some()) {
                        let slot = comptime!(e.bias.unwrap_or_default().0 as usize);
                        let s_g = size(sizes, at::BIAS_G);
                        v += f32::cast_from(ins.index(slot)[g * s_g + c]);
                    }
                    if comptime!(e.pre.is_some()) {
                        let o = outs32.index_mut(comptime!(e.pre.unwrap_or(0) as usize));
                        o[addr] = v;
                    }
                    if comptime!(!matches!(e.act, Act::None)) {
                        v = act(c_in * v, comptime!(matches!(e.act, Act::Gelu)));
                    }
                    if comptime!(e.act_grad.is_some()) {
                        let ag = comptime!(e.act_grad.unwrap_or_default());
                        let z = ins32.index(comptime!(ag.pre as usize))[addr];
                        let h = ins32.index(comptime!(ag.h as usize))[addr];
                        let dz = c_out * v * act_grad(c_in * z, ag.gelu);
                        let dco = outs32.index_mut(comptime!(ag.dco as usize));
                        dco[addr] = h * v;
                        let dci = outs32.index_mut(comptime!(ag.dci as usize));
                        dci[addr] = dz * z;
                        v = c_in * dz;
                    }
                    if comptime!(e.pst_grad.is_some()) {
                        let pg = comptime!(e.pst_grad.unwrap_or_default());
                        let (wp, s) = pst_weight_score::<F>(
                            ins,
                            ins32,
                            addr,
                            size(sizes, at::PST_N_IN),
                            pg.weight,
                        );
                        let mut keep = 1.0f32;
                        if pst_zeroed(idx, s, addr, pg.weight) {
                            keep = 0.0f32;
                        }
                        let mut sign = 0.0f32;
                        if wp > 0.0f32 {
                            sign = 1.0f32;
                        }
                        if wp < 0.0f32 {
                            sign = f32::new(-1.0);
                        }
                        let ds = v * wp;
                        let o = outs32.index_mut(comptime!(pg.ds as usize));
                        o[addr] = ds;
                        v = v * keep + sign * ds;
                    }
                    if comptime!(st.sampled.is_some()) {
                        let list = idx.index(comptime!(st.sampled.unwrap_or(0) as usize));
                        let pos = find_sorted(list, addr);
                        if pos < list.len() {
                            write::<F>(outs, outs32, pos, v, st.dst);
                        }
                    } else {
                        write::<F>(outs, outs32, addr, v, st.dst);
                    }
                }
            }
        }
    }
}
