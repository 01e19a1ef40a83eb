//! `#[cube]` kernels of the Monarch map (METHODS.md §3): y = P₂·B₂·P₁·B₁·x with block-diagonal
//! factors `w1` [k, q, p] and `w2` [l, s, r], the "(k q) → (r l)" permutation and the
//! "(s l)"-interleaved output folded into the indexing (nothing is transposed in memory).
//!
//! Storage dtype `F` for x, the factors and the outputs; the intermediate `u` and every
//! accumulation are f32. Every sum has a fixed order (no atomics): results are deterministic.

// `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Units per cube of the fused forward.
pub const MONARCH_UNITS: u32 = 256;

/// Comptime configuration of the Monarch kernels, derived from a verified `monarch` spec.
#[derive_cube_comptime]
pub struct MonarchConfig {
    /// Blocks of the first factor.
    pub k: u32,
    /// Output rows per first-factor block.
    pub q: u32,
    /// Input columns per first-factor block.
    pub p: u32,
    /// Blocks of the second factor.
    pub l: u32,
    /// Output rows per second-factor block.
    pub s: u32,
    /// Input columns per second-factor block.
    pub r: u32,
    /// Rows of x per cube of the fused forward.
    pub rows: u32,
}

/// The fused forward, one cube per (tile of `rows` rows, second-factor block li = cube y).
/// Phase 1 computes the slice of the intermediate that block li reads,
/// u[b, ri·l + li] = Σ_pi w1[ki, qi, pi]·x[b, ki·p + pi] with ki·q + qi = ri·l + li, into shared
/// memory (and into `u` [N, k·q] f32 for backward when `save_u`); phase 2 writes
/// y[b, si·l + li] = Σ_ri w2[li, si, ri]·u[b, ri·l + li]. Each element of u belongs to exactly
/// one li, so fusing costs no recomputation.
#[cube(launch)]
pub fn monarch_fwd<F: Float>(
    x: &Array<F>,
    w1: &Array<F>,
    w2: &Array<F>,
    u: &mut Array<f32>,
    y: &mut Array<F>,
    #[comptime] cfg: MonarchConfig,
    #[comptime] save_u: bool,
) {
    let (k, q, p) = (cfg.k as usize, cfg.q as usize, cfg.p as usize);
    let (l, s, r) = (cfg.l as usize, cfg.s as usize, cfg.r as usize);
    let n_in = k * p;
    let n_out = l * s;
    let inner = k * q;
    let n = y.len() / n_out;
    let li = CUBE_POS_Y as usize;
    let b0 = (CUBE_POS_X as usize) * (cfg.rows as usize);
    let unit = UNIT_POS as usize;
    let mut su = SharedMemory::<f32>::new(comptime!((cfg.rows * cfg.r) as usize));
    for it in 0..comptime!((cfg.rows * cfg.r).div_ceil(MONARCH_UNITS)) {
        let e = unit + (it * MONARCH_UNITS) as usize;
        if e < comptime!((cfg.rows * cfg.r) as usize) {
            let bb = e / r;
            let ri = e % r;
            let b = b0 + bb;
            let mut acc = 0.0f32;
            if b < n {
                let j = ri * l + li;
                let ki = j / q;
                let xbase = b * n_in + ki * p;
                let wbase = j * p;
                for pi in 0..p {
                    acc += f32::cast_from(x[xbase + pi]) * f32::cast_from(w1[wbase + pi]);
                }
                if save_u {
                    u[b * inner + j] = acc;
                }
            }
            su[e] = acc;
        }
    }
    sync_cube();
    for it in 0..comptime!((cfg.rows * cfg.s).div_ceil(MONARCH_UNITS)) {
        let e = unit + (it * MONARCH_UNITS) as usize;
        if e < comptime!((cfg.rows * cfg.s) as usize) {
            let bb = e / s;
            let si = e % s;
            let b = b0 + bb;
            if b < n {
                let wbase = (li * s + si) * r;
                let mut acc = 0.0f32;
                for ri in 0..r {
                    acc += su[bb * r + ri] * f32::cast_from(w2[wbase + ri]);
                }
                y[b * n_out + si * l + li] = F::cast_from(acc);
            }
        }
    }
}

/// du [N, k·q] f32, one unit per element (b, j = ri·l + li):
/// Σ_si dy[b, si·l + li]·w2[li, si, ri].
#[cube(launch)]
pub fn monarch_bwd_du<F: Float>(
    dy: &Array<F>,
    w2: &Array<F>,
    du: &mut Array<f32>,
    #[comptime] cfg: MonarchConfig,
) {
    let pos = ABSOLUTE_POS;
    let (l, s, r) = (cfg.l as usize, cfg.s as usize, cfg.r as usize);
    let inner = (cfg.k * cfg.q) as usize;
    let n_out = l * s;
    if pos < du.len() {
        let b = pos / inner;
        let j = pos % inner;
        let ri = j / l;
        let li = j % l;
        let mut acc = 0.0f32;
        for si in 0..s {
            acc += f32::cast_from(dy[b * n_out + si * l + li])
                * f32::cast_from(w2[(li * s + si) * r + ri]);
        }
        du[pos] = acc;
    }
}

/// dx [N, k·p], one unit per element (b, ki·p + pi): Σ_qi du[b, ki·q + qi]·w1[ki, qi, pi].
#[cube(launch)]
pub fn monarch_bwd_dx<F: Float>(
    du: &Array<f32>,
    w1: &Array<F>,
    dx: &mut Array<F>,
    #[comptime] cfg: MonarchConfig,
) {
    let pos = ABSOLUTE_POS;
    let (k, q, p) = (cfg.k as usize, cfg.q as usize, cfg.p as usize);
    let n_in = k * p;
    let inner = k * q;
    if pos < dx.len() {
        let b = pos / n_in;
        let c = pos % n_in;
        let ki = c / p;
        let pi = c % p;
        let mut acc = 0.0f32;
        for qi in 0..q {
            acc += du[b * inner + ki * q + qi] * f32::cast_from(w1[(ki * q + qi) * p + pi]);
        }
        dx[pos] = F::cast_from(acc);
    }
}

/// dw1 [k, q, p], one unit per element: Σ_b du[b, ki·q + qi]·x[b, ki·p + pi], over the rows in
/// order.
#[cube(launch)]
pub fn monarch_bwd_dw1<F: Float>(
    du: &Array<f32>,
    x: &Array<F>,
    dw1: &mut Array<F>,
    #[comptime] cfg: MonarchConfig,
) {
    let pos = ABSOLUTE_POS;
    let (k, q, p) = (cfg.k as usize, cfg.q as usize, cfg.p as usize);
    let n_in = k * p;
    let inner = k * q;
    if pos < dw1.len() {
        let j = pos / p;
        let pi = pos % p;
        let ki = j / q;
        let n = x.len() / n_in;
        let mut acc = 0.0f32;
        for b in 0..n {
            acc += du[b * inner + j] * f32::cast_from(x[b * n_in + ki * p + pi]);
        }
        dw1[pos] = F::cast_from(acc);
    }
}

/// dw2 [l, s, r], one unit per element: Σ_b dy[b, si·l + li]·u[b, ri·l + li], over the rows in
/// order.
#[cube(launch)]
pub fn monarch_bwd_dw2<F: Float>(
    dy: &Array<F>,
    u: &Array<f32>,
    dw2: &mut Array<F>,
    #[comptime] cfg: MonarchConfig,
) {
    let pos = ABSOLUTE_POS;
    let (l, s, r) = (cfg.l as usize, cfg.s as usize, cfg.r as usize);
    let inner = (cfg.k * cfg.q) as usize;
    let n_out = l * s;
    if pos < dw2.len() {
        let li = pos / (s * r);
        let si = (pos / r) % s;
        let ri = pos % r;
        let n = dy.len() / n_out;
        let mut acc = 0.0f32;
        for b in 0..n {
            acc += f32::cast_from(dy[b * n_out + si * l + li]) * u[b * inner + ri * l + li];
        }
        dw2[pos] = F::cast_from(acc);
    }
}
