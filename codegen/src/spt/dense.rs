//! Dense softmax attention in the same style as the SPT kernels (one unit per row, f32
//! accumulation, online softmax, log-sum-exp saved, the same `score`): the same-device baseline that benches
//! compare sparse attention with. It is what SPT attention computes with every candidate kept.

// `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
#![allow(missing_docs)]

use super::kernels::{SptConfig, score};
use cubecl::prelude::*;

/// Forward over every candidate key (all, or `j <= i` when causal); writes `out` and `lse`.
#[cube(launch)]
pub fn dense_attend_fwd<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    seq_len: u32,
    #[comptime] cfg: SptConfig,
) {
    let row = ABSOLUTE_POS;
    if row < lse.len() {
        let d = cfg.d as usize;
        let l = seq_len as usize;
        let head = row / l;
        let i = row % l;
        let n = if cfg.causal { i + 1 } else { l };
        let mut acc = Array::<f32>::new(comptime!(cfg.d as usize));
        for t in 0..d {
            acc[t] = 0.0f32;
        }
        let mut m = f32::new(-f32::MAX);
        let mut z = 0.0f32;
        for j in 0..n {
            let krow = head * l + j;
            let (s, _passes) = score::<F>(q, k, row, krow, cfg);
            let m_new = f32::max(m, s);
            let rescale = f32::exp(m - m_new);
            let p = f32::exp(s - m_new);
            z = z * rescale + p;
            for t in 0..d {
                acc[t] = acc[t] * rescale + p * f32::cast_from(v[krow * d + t]);
            }
            m = m_new;
        }
        for t in 0..d {
            out[row * d + t] = F::cast_from(acc[t] / z);
        }
        lse[row] = m + f32::ln(z);
    }
}

/// Backward, query-major: dq, and `delta` = Σ_j p·dp = dout·out per row for the key pass.
#[cube(launch)]
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
) {
    let row = ABSOLUTE_POS;
    if row < lse.len() {
        let d = cfg.d as usize;
        let l = seq_len as usize;
        let head = row / l;
        let i = row % l;
        let n = if cfg.causal { i + 1 } else { l };
        let mut dl = 0.0f32;
        for t in 0..d {
            dl += f32::cast_from(dout[row * d + t]) * f32::cast_from(out[row * d + t]);
        }
        let scale = 1.0f32 / f32::sqrt(f32::cast_from(cfg.d));
        let mut acc = Array::<f32>::new(comptime!(cfg.d as usize));
        for t in 0..d {
            acc[t] = 0.0f32;
        }
        for j in 0..n {
            let krow = head * l + j;
            let (s, passes) = score::<F>(q, k, row, krow, cfg);
            let p = f32::exp(s - lse[row]);
            let mut dp = 0.0f32;
            for t in 0..d {
                dp += f32::cast_from(dout[row * d + t]) * f32::cast_from(v[krow * d + t]);
            }
            let mut ds = 0.0f32;
            if passes {
                ds = p * (dp - dl);
            }
            for t in 0..d {
                acc[t] += scale * ds * f32::cast_from(k[krow * d + t]);
            }
        }
        for t in 0..d {
            dq[row * d + t] = F::cast_from(acc[t]);
        }
        delta[row] = dl;
    }
}

/// Backward, key-major: dk and dv over every query that sees key j (all, or `i >= j`).
#[cube(launch)]
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
) {
    let krow = ABSOLUTE_POS;
    let d = cfg.d as usize;
    if krow < lse.len() {
        let l = seq_len as usize;
        let head = krow / l;
        let j = krow % l;
        let mut first = 0usize;
        if cfg.causal {
            first = j;
        }
        let scale = 1.0f32 / f32::sqrt(f32::cast_from(cfg.d));
        let mut acc_k = Array::<f32>::new(comptime!(cfg.d as usize));
        let mut acc_v = Array::<f32>::new(comptime!(cfg.d as usize));
        for t in 0..d {
            acc_k[t] = 0.0f32;
            acc_v[t] = 0.0f32;
        }
        for i in first..l {
            let row = head * l + i;
            let (s, passes) = score::<F>(q, k, row, krow, cfg);
            let p = f32::exp(s - lse[row]);
            let mut dp = 0.0f32;
            for t in 0..d {
                dp += f32::cast_from(dout[row * d + t]) * f32::cast_from(v[krow * d + t]);
            }
            let mut ds = 0.0f32;
            if passes {
                ds = p * (dp - delta[row]);
            }
            for t in 0..d {
                acc_v[t] += p * f32::cast_from(dout[row * d + t]);
                acc_k[t] += scale * ds * f32::cast_from(q[row * d + t]);
            }
        }
        for t in 0..d {
            dk[krow * d + t] = F::cast_from(acc_k[t]);
            dv[krow * d + t] = F::cast_from(acc_v[t]);
        }
    }
}
