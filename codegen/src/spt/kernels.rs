//! `#[cube]` kernels of SPT sparse attention (the selection is in `super::select`). One unit per
//! query row (or key, or head), or — for
//! the kernels that gather whole rows (attend, backward rows and keys) — a group of lanes per
//! row; every shape-independent choice (head dim, PQ layout, top-k, causal, clamp, selector) is a
//! comptime value of [`SptConfig`], so each distinct config compiles to its own specialised kernel.
//!
//! Storage dtype `F` (f32, f16, bf16); every reduction accumulates in f32.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]
// Kernel code is expanded by `#[cube]`, which understands comparisons but not `Range::contains`.
#![allow(clippy::manual_range_contains)]

use cubecl::prelude::*;

/// Comptime configuration of the SPT kernels, derived from a verified `spt-attention` spec by
/// [`super::config`].
#[derive_cube_comptime]
pub struct SptConfig {
    /// Head dimension `D`.
    pub d: u32,
    /// PQ subspaces `S = D / d_c`.
    pub s: u32,
    /// Codewords per subspace `E`.
    pub e: u32,
    /// Sub-vector length `d_c`.
    pub dc: u32,
    /// Slots per query row.
    pub topk: u32,
    /// Only keys `j <= i` are candidates.
    pub causal: bool,
    /// Clamp scaled scores to ±10.
    pub clamp: bool,
    /// Score candidates by asymmetric distance (pq-adc) instead of code matches (pq-match).
    pub adc: bool,
    /// Rows per selected block `G` of the block-granular selection kernels (`topk` then counts
    /// kept blocks); 1 in every other kernel.
    pub block: u32,
}

/// The scaled (and optionally clamped) score q_row · k_krow / √D, and whether the clamp let the
/// gradient through.
#[cube]
pub(crate) fn score<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    row: usize,
    krow: usize,
    #[comptime] cfg: SptConfig,
) -> (f32, bool) {
    let d = cfg.d as usize;
    let mut dot = 0.0f32;
    for t in 0..d {
        dot += f32::cast_from(q[row * d + t]) * f32::cast_from(k[krow * d + t]);
    }
    let raw = dot / f32::sqrt(f32::cast_from(cfg.d));
    let mut out = raw;
    let mut passes = true;
    if cfg.clamp {
        out = f32::clamp(raw, -10.0f32, 10.0f32);
        passes = raw >= -10.0f32 && raw <= 10.0f32;
    }
    (out, passes)
}

/// The row a plane of `lanes` units works on: cubes are `lanes` × rows-per-cube, so each y-row
/// of a cube is one plane (units are numbered x first). Lane = `UNIT_POS_X`.
#[cube]
pub(crate) fn plane_row() -> usize {
    CUBE_POS * (CUBE_DIM_Y as usize) + UNIT_POS_Y as usize
}

/// Σ_t a[t]·b[base + t] over this lane's elements t = c·lanes + lane of a D-vector held in
/// registers (`a`), reduced over the plane: the full dot product, in every lane.
#[cube]
pub(crate) fn plane_dot<F: Float>(
    a: &Array<f32>,
    b: &Array<F>,
    base: usize,
    #[comptime] d: u32,
    #[comptime] lanes: u32,
) -> f32 {
    let lane = UNIT_POS_X as usize;
    let mut partial = 0.0f32;
    #[unroll]
    for c in 0..comptime!(d.div_ceil(lanes)) {
        let t = (c * lanes) as usize + lane;
        if t < d as usize {
            partial += a[c as usize] * f32::cast_from(b[base + t]);
        }
    }
    plane_sum(partial)
}

/// The sum of `v` over this row's group of `lanes` lanes (aligned groups of consecutive units of
/// a plane; `lanes` is a power of two dividing the plane size), in every lane of the group: an
/// xor butterfly of log2(lanes) shuffles. Every unit of the plane must reach it (the shuffles are
/// plane-wide), so callers keep it out of row-dependent branches.
#[cube]
pub(crate) fn group_sum(v: f32, #[comptime] lanes: u32) -> f32 {
    let mut acc = v;
    #[unroll]
    for step in 0..comptime!(lanes.trailing_zeros()) {
        acc += plane_shuffle_xor(acc, lanes >> (step + 1));
    }
    acc
}

/// [`plane_dot`] reduced over the row's group of `lanes` lanes instead of the whole plane.
#[cube]
pub(crate) fn group_dot<F: Float>(
    a: &Array<f32>,
    b: &Array<F>,
    base: usize,
    #[comptime] d: u32,
    #[comptime] lanes: u32,
) -> f32 {
    let lane = UNIT_POS_X as usize;
    let mut partial = 0.0f32;
    #[unroll]
    for c in 0..comptime!(d.div_ceil(lanes)) {
        let t = (c * lanes) as usize + lane;
        if t < d as usize {
            partial += a[c as usize] * f32::cast_from(b[base + t]);
        }
    }
    group_sum(partial, lanes)
}

/// The dot product of row `abase` of `a` and row `bbase` of `b`, both read from memory,
/// reduced over the row's group of `lanes` lanes.
#[cube]
pub(crate) fn group_dot_rows<F: Float>(
    a: &Array<F>,
    abase: usize,
    b: &Array<F>,
    bbase: usize,
    #[comptime] d: u32,
    #[comptime] lanes: u32,
) -> f32 {
    let lane = UNIT_POS_X as usize;
    let mut partial = 0.0f32;
    #[unroll]
    for c in 0..comptime!(d.div_ceil(lanes)) {
        let t = (c * lanes) as usize + lane;
        if t < d as usize {
            partial += f32::cast_from(a[abase + t]) * f32::cast_from(b[bbase + t]);
        }
    }
    group_sum(partial, lanes)
}

/// This lane's elements t = c·lanes + lane of row `base` of `x`, into registers (0 past D).
#[cube]
pub(crate) fn load_lane<F: Float>(
    x: &Array<F>,
    base: usize,
    #[comptime] d: u32,
    #[comptime] lanes: u32,
) -> Array<f32> {
    let lane = UNIT_POS_X as usize;
    let mut regs = Array::<f32>::new(comptime!(d.div_ceil(lanes) as usize));
    #[unroll]
    for c in 0..comptime!(d.div_ceil(lanes)) {
        let t = (c * lanes) as usize + lane;
        let mut value = 0.0f32;
        if t < d as usize {
            value = f32::cast_from(x[base + t]);
        }
        regs[c as usize] = value;
    }
    regs
}

/// Writes this lane's elements of `regs` to row `base` of `x`.
#[cube]
pub(crate) fn store_lane<F: Float>(
    x: &mut Array<F>,
    regs: &Array<f32>,
    base: usize,
    #[comptime] d: u32,
    #[comptime] lanes: u32,
) {
    let lane = UNIT_POS_X as usize;
    #[unroll]
    for c in 0..comptime!(d.div_ceil(lanes)) {
        let t = (c * lanes) as usize + lane;
        if t < d as usize {
            x[base + t] = F::cast_from(regs[c as usize]);
        }
    }
}

/// The scaled score from a raw dot product, clamped when configured, and whether the clamp let
/// the gradient through (the same arithmetic as [`score`]).
#[cube]
pub(crate) fn scaled(dot: f32, #[comptime] cfg: SptConfig) -> (f32, bool) {
    let raw = dot / f32::sqrt(f32::cast_from(cfg.d));
    let mut out = raw;
    let mut passes = true;
    if cfg.clamp {
        out = f32::clamp(raw, -10.0f32, 10.0f32);
        passes = raw >= -10.0f32 && raw <= 10.0f32;
    }
    (out, passes)
}

/// Fused forward over the kept set: scores (SDDMM), online softmax and the output (SpMM) in one
/// pass per query row. Writes `out` [rows, D] and the row's log-sum-exp `lse` [rows] — all that
/// backward needs besides the indices.
///
/// A group of `lanes` units per query row (8 on NVIDIA: four rows per warp): lane l holds
/// elements l, l + lanes, … of q and of the output accumulator, so a gathered k/v row is read by
/// coalesced group-wide accesses and each score is a group reduction ([`group_sum`]). The
/// reductions are plane-wide shuffles, so every unit runs every slot: a unit past the last row
/// works on the last row and stores nothing; an empty slot reduces a valid dummy row and is
/// skipped afterwards.
#[cube(launch, launch_unchecked)]
pub fn spt_attend_fwd<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    indices: &Array<i32>,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] lanes: u32,
) {
    let rows = lse.len();
    let mut row = plane_row();
    let real = row < rows;
    if !real {
        row = rows - 1;
    }
    let d = cfg.d as usize;
    let topk = cfg.topk as usize;
    let l = seq_len as usize;
    let head = row / l;
    let lane = UNIT_POS_X as usize;
    let q_regs = load_lane::<F>(q, row * d, cfg.d, lanes);
    let mut acc = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
    #[unroll]
    for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
        acc[c as usize] = 0.0f32;
    }
    // −f32::MAX, not −∞: WGSL has no infinity literal; exp(−MAX − s) is still exactly 0.
    let mut m = f32::new(-f32::MAX);
    let mut z = 0.0f32;
    for slot in 0..topk {
        let j = indices[row * topk + slot];
        let mut jj = 0usize;
        if j >= 0 {
            jj = j as usize;
        }
        let krow = head * l + jj;
        let (s, _passes) = scaled(group_dot::<F>(&q_regs, k, krow * d, cfg.d, lanes), cfg);
        if j >= 0 {
            let m_new = f32::max(m, s);
            let rescale = f32::exp(m - m_new);
            let p = f32::exp(s - m_new);
            z = z * rescale + p;
            #[unroll]
            for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
                let t = (c * lanes) as usize + lane;
                let mut vt = 0.0f32;
                if t < d {
                    vt = f32::cast_from(v[krow * d + t]);
                }
                acc[c as usize] = acc[c as usize] * rescale + p * vt;
            }
            m = m_new;
        }
    }
    if real {
        #[unroll]
        for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
            acc[c as usize] = acc[c as usize] / z;
        }
        store_lane::<F>(out, &acc, row * d, cfg.d, lanes);
        if lane == 0 {
            lse[row] = m + f32::ln(z);
        }
    }
}

/// Unfused forward, step 1 (SDDMM): the scaled (clamped) score of every kept slot,
/// `scores` [rows, topk]; empty slots get −f32::MAX (exp of it relative to any score is 0).
#[cube(launch, launch_unchecked)]
pub fn spt_sddmm<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    indices: &Array<i32>,
    scores: &mut Array<f32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
) {
    let row = ABSOLUTE_POS;
    let topk = cfg.topk as usize;
    if row < scores.len() / topk {
        let head = row / (seq_len as usize);
        for slot in 0..topk {
            let j = indices[row * topk + slot];
            let mut s = f32::new(-f32::MAX);
            if j >= 0 {
                let (v, _passes) =
                    score::<F>(q, k, row, head * (seq_len as usize) + j as usize, cfg);
                s = v;
            }
            scores[row * topk + slot] = s;
        }
    }
}

/// Unfused forward, step 2: row softmax over the kept slots, in place (`scores` becomes `p`),
/// and the row's log-sum-exp.
#[cube(launch, launch_unchecked)]
pub fn spt_softmax(
    scores: &mut Array<f32>,
    indices: &Array<i32>,
    lse: &mut Array<f32>,
    #[comptime] topk: u32,
) {
    let row = ABSOLUTE_POS;
    let t = topk as usize;
    if row < lse.len() {
        let mut m = f32::new(-f32::MAX);
        for slot in 0..t {
            m = f32::max(m, scores[row * t + slot]);
        }
        let mut z = 0.0f32;
        for slot in 0..t {
            if indices[row * t + slot] >= 0 {
                z += f32::exp(scores[row * t + slot] - m);
            }
        }
        for slot in 0..t {
            let mut p = 0.0f32;
            if indices[row * t + slot] >= 0 {
                p = f32::exp(scores[row * t + slot] - m) / z;
            }
            scores[row * t + slot] = p;
        }
        lse[row] = m + f32::ln(z);
    }
}

/// Unfused forward, step 3 (SpMM): `out` [rows, D] = Σ_slot p · v_j.
#[cube(launch, launch_unchecked)]
pub fn spt_spmm<F: Float>(
    probs: &Array<f32>,
    indices: &Array<i32>,
    v: &Array<F>,
    out: &mut Array<F>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
) {
    let row = ABSOLUTE_POS;
    let d = cfg.d as usize;
    let topk = cfg.topk as usize;
    if row < out.len() / d {
        let head = row / (seq_len as usize);
        let mut acc = Array::<f32>::new(comptime!(cfg.d as usize));
        for t in 0..d {
            acc[t] = 0.0f32;
        }
        for slot in 0..topk {
            let j = indices[row * topk + slot];
            if j >= 0 {
                let krow = head * (seq_len as usize) + j as usize;
                let p = probs[row * topk + slot];
                for t in 0..d {
                    acc[t] += p * f32::cast_from(v[krow * d + t]);
                }
            }
        }
        for t in 0..d {
            out[row * d + t] = F::cast_from(acc[t]);
        }
    }
}

/// Backward, query-major: recomputes p = exp(s − lse) per kept slot, dp = dout·v_j, and
/// ds = p·(dp − Σ p·dp); writes dq [rows, D] and keeps p and ds [rows, topk] for the key pass.
///
/// `dp − Σ p·dp` is computed around a pivot, the slot with the largest p:
/// `(dp − dp_piv) − Σ p'·(dp' − dp_piv)`. In a saturated row (one p ≈ 1) the plain form subtracts
/// two nearly equal numbers and loses most f32 digits; around the pivot the pivot's own term is
/// exactly 0 and the others carry small weights.
///
/// A group of `lanes` units per query row, as in [`spt_attend_fwd`] (every unit runs every slot;
/// units past the last row store nothing). The lanes of a row compute the same per-slot scalars
/// and store the same value to `probs`/`dscores`; the later passes read those back.
#[cube(launch, launch_unchecked)]
pub fn spt_bwd_rows<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    indices: &Array<i32>,
    lse: &Array<f32>,
    dout: &Array<F>,
    dq: &mut Array<F>,
    probs: &mut Array<f32>,
    dscores: &mut Array<f32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] lanes: u32,
) {
    let rows = lse.len();
    let mut row = plane_row();
    let real = row < rows;
    if !real {
        row = rows - 1;
    }
    let d = cfg.d as usize;
    let topk = cfg.topk as usize;
    let l = seq_len as usize;
    let head = row / l;
    let lane = UNIT_POS_X as usize;
    let q_regs = load_lane::<F>(q, row * d, cfg.d, lanes);
    let lse_row = lse[row];
    let mut p_piv = f32::new(-1.0);
    let mut dp_piv = 0.0f32;
    for slot in 0..topk {
        let j = indices[row * topk + slot];
        let mut jj = 0usize;
        if j >= 0 {
            jj = j as usize;
        }
        let krow = head * l + jj;
        let (s, passes) = scaled(group_dot::<F>(&q_regs, k, krow * d, cfg.d, lanes), cfg);
        // dout's row is re-read per slot (from L1) rather than held: fewer live registers.
        let dp_all = group_dot_rows::<F>(dout, row * d, v, krow * d, cfg.d, lanes);
        let mut stored = 0.0f32;
        let mut dp = 0.0f32;
        if j >= 0 {
            let p = f32::exp(s - lse_row);
            // A clamp-blocked slot is marked by a negated p (read back in the last pass).
            stored = p;
            if !passes {
                stored = -p;
            }
            dp = dp_all;
            if p > p_piv {
                p_piv = p;
                dp_piv = dp;
            }
        }
        if real {
            probs[row * topk + slot] = stored;
            dscores[row * topk + slot] = dp;
        }
    }
    let mut delta = 0.0f32;
    for slot in 0..topk {
        delta += f32::abs(probs[row * topk + slot]) * (dscores[row * topk + slot] - dp_piv);
    }
    let mut acc = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
    #[unroll]
    for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
        acc[c as usize] = 0.0f32;
    }
    let scale = 1.0f32 / f32::sqrt(f32::cast_from(cfg.d));
    for slot in 0..topk {
        let j = indices[row * topk + slot];
        let stored = probs[row * topk + slot];
        let p = f32::abs(stored);
        let mut ds = 0.0f32;
        if j >= 0 {
            let krow = head * l + j as usize;
            if stored >= 0.0f32 {
                ds = p * ((dscores[row * topk + slot] - dp_piv) - delta);
            }
            #[unroll]
            for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
                let t = (c * lanes) as usize + lane;
                if t < d {
                    acc[c as usize] += scale * ds * f32::cast_from(k[krow * d + t]);
                }
            }
        }
        if real {
            dscores[row * topk + slot] = ds;
            probs[row * topk + slot] = p;
        }
    }
    if real {
        store_lane::<F>(dq, &acc, row * d, cfg.d, lanes);
    }
}

/// Backward, key-major: dk_j = scale·Σ ds_ij q_i and dv_j = Σ p_ij dout_i over the queries that
/// kept key j, in ascending query order (no atomics, deterministic). A group of `lanes` units per
/// key row; lane l accumulates elements l, l + lanes, … so every gathered q/dout row is read by
/// coalesced group-wide accesses (no reductions, so no shuffles).
#[cube(launch, launch_unchecked)]
pub fn spt_bwd_keys<F: Float>(
    q: &Array<F>,
    dout: &Array<F>,
    probs: &Array<f32>,
    dscores: &Array<f32>,
    offsets: &Array<u32>,
    entries: &Array<u32>,
    dk: &mut Array<F>,
    dv: &mut Array<F>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] lanes: u32,
) {
    let krow = plane_row();
    let d = cfg.d as usize;
    if krow < dk.len() / d {
        let l = seq_len as usize;
        let topk = cfg.topk as usize;
        let head = krow / l;
        let j = krow % l;
        let per_head = l * topk;
        let lane = UNIT_POS_X as usize;
        let scale = 1.0f32 / f32::sqrt(f32::cast_from(cfg.d));
        let mut acc_k = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
        let mut acc_v = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
        #[unroll]
        for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
            acc_k[c as usize] = 0.0f32;
            acc_v[c as usize] = 0.0f32;
        }
        let start = offsets[head * (l + 1) + j] as usize;
        let end = offsets[head * (l + 1) + j + 1] as usize;
        for e in start..end {
            let pos = entries[head * per_head + e] as usize;
            let qrow = head * l + pos / topk;
            let p = probs[head * per_head + pos];
            let ds = dscores[head * per_head + pos];
            #[unroll]
            for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
                let t = (c * lanes) as usize + lane;
                if t < d {
                    acc_v[c as usize] += p * f32::cast_from(dout[qrow * d + t]);
                    acc_k[c as usize] += scale * ds * f32::cast_from(q[qrow * d + t]);
                }
            }
        }
        store_lane::<F>(dk, &acc_k, krow * d, cfg.d, lanes);
        store_lane::<F>(dv, &acc_v, krow * d, cfg.d, lanes);
    }
}
