//! Dense softmax attention in the same style as the SPT kernels (one plane per row, f32
//! accumulation, online softmax, log-sum-exp saved, the same score arithmetic): the same-device
//! baseline that benches compare sparse attention with. It is what SPT attention computes with
//! every candidate kept.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]

use super::kernels::{SptConfig, load_lane, plane_dot, plane_row, scaled, store_lane};
use cubecl::prelude::*;

/// Forward over every candidate key (all, or `j <= i` when causal); writes `out` and `lse`.
#[cube(launch, launch_unchecked)]
pub fn dense_attend_fwd<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] lanes: u32,
) {
    let row = plane_row();
    if row < lse.len() {
        let d = cfg.d as usize;
        let l = seq_len as usize;
        let head = row / l;
        let i = row % l;
        let n = if cfg.causal { i + 1 } else { l };
        let lane = UNIT_POS_X as usize;
        let q_regs = load_lane::<F>(q, row * d, cfg.d, lanes);
        let mut acc = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
        #[unroll]
        for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
            acc[c as usize] = 0.0f32;
        }
        let mut m = f32::new(-f32::MAX);
        let mut z = 0.0f32;
        for j in 0..n {
            let krow = head * l + j;
            let (s, _passes) = scaled(plane_dot::<F>(&q_regs, k, krow * d, cfg.d, lanes), cfg);
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

/// Backward, query-major: dq, and `delta` = Σ_j p·dp = dout·out per row for the key pass.
#[cube(launch, launch_unchecked)]
pub fn dense_bwd_rows<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    out: &Array<F>,
    lse: &Array<f32>,
    v: &Array<F>,
    dout: &Array<F>,
    dq: &mut Array<F>,
    delta: &mut Array<f32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] lanes: u32,
) {
    let row = plane_row();
    if row < lse.len() {
        let d = cfg.d as usize;
        let l = seq_len as usize;
        let head = row / l;
        let i = row % l;
        let n = if cfg.causal { i + 1 } else { l };
        let lane = UNIT_POS_X as usize;
        let q_regs = load_lane::<F>(q, row * d, cfg.d, lanes);
        let do_regs = load_lane::<F>(dout, row * d, cfg.d, lanes);
        let dl = plane_dot::<F>(&do_regs, out, row * d, cfg.d, lanes);
        let lse_row = lse[row];
        let scale = 1.0f32 / f32::sqrt(f32::cast_from(cfg.d));
        let mut acc = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
        #[unroll]
        for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
            acc[c as usize] = 0.0f32;
        }
        for j in 0..n {
            let krow = head * l + j;
            let (s, passes) = scaled(plane_dot::<F>(&q_regs, k, krow * d, cfg.d, lanes), cfg);
            let p = f32::exp(s - lse_row);
            let dp = plane_dot::<F>(&do_regs, v, krow * d, cfg.d, lanes);
            let mut ds = 0.0f32;
            if passes {
                ds = p * (dp - dl);
            }
            #[unroll]
            for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
                let t = (c * lanes) as usize + lane;
                if t < d {
                    acc[c as usize] += scale * ds * f32::cast_from(k[krow * d + t]);
                }
            }
        }
        store_lane::<F>(dq, &acc, row * d, cfg.d, lanes);
        if lane == 0 {
            delta[row] = dl;
        }
    }
}

/// Backward, key-major: dk and dv over every query that sees key j (all, or `i >= j`).
#[cube(launch, launch_unchecked)]
pub fn dense_bwd_keys<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dout: &Array<F>,
    dk: &mut Array<F>,
    dv: &mut Array<F>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
    #[comptime] lanes: u32,
) {
    let krow = plane_row();
    let d = cfg.d as usize;
    if krow < lse.len() {
        let l = seq_len as usize;
        let head = krow / l;
        let j = krow % l;
        let mut first = 0usize;
        if cfg.causal {
            first = j;
        }
        let lane = UNIT_POS_X as usize;
        let k_regs = load_lane::<F>(k, krow * d, cfg.d, lanes);
        let v_regs = load_lane::<F>(v, krow * d, cfg.d, lanes);
        let scale = 1.0f32 / f32::sqrt(f32::cast_from(cfg.d));
        let mut acc_k = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
        let mut acc_v = Array::<f32>::new(comptime!(cfg.d.div_ceil(lanes) as usize));
        #[unroll]
        for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
            acc_k[c as usize] = 0.0f32;
            acc_v[c as usize] = 0.0f32;
        }
        for i in first..l {
            let row = head * l + i;
            let (s, passes) = scaled(plane_dot::<F>(&k_regs, q, row * d, cfg.d, lanes), cfg);
            let p = f32::exp(s - lse[row]);
            let dp = plane_dot::<F>(&v_regs, dout, row * d, cfg.d, lanes);
            let mut ds = 0.0f32;
            if passes {
                ds = p * (dp - delta[row]);
            }
            #[unroll]
            for c in 0..comptime!(cfg.d.div_ceil(lanes)) {
                let t = (c * lanes) as usize + lane;
                if t < d {
                    acc_v[c as usize] += p * f32::cast_from(dout[row * d + t]);
                    acc_k[c as usize] += scale * ds * f32::cast_from(q[row * d + t]);
                }
            }
        }
        store_lane::<F>(dk, &acc_k, krow * d, cfg.d, lanes);
        store_lane::<F>(dv, &acc_v, krow * d, cfg.d, lanes);
    }
}
