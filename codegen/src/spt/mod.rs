//! SPT sparse attention lowered to CubeCL: [`SptPlan::from_spec`] derives the comptime
//! [`SptConfig`] from a verified `spt-attention` spec; [`forward`] and [`backward`] launch the
//! kernel chain on any CubeCL runtime.
//!
//! Forward: `pq_encode`(q), `pq_encode`(k) → `spt_select` → `spt_attend_fwd` (scores, online
//! softmax and output fused; saves only the per-row log-sum-exp), or, with the schedule's
//! `fused = false`, the unfused fallback `spt_sddmm` → `spt_softmax` → `spt_spmm` (which holds
//! B·H·L·topk scores in scratch).
//! Backward: `spt_bwd_rows` (dq, p, ds) → `spt_key_count` → `spt_key_scan` → `spt_key_offsets` → `spt_key_fill`
//! (key-major view, deterministic, chunks of query rows in parallel) → `spt_bwd_keys` (dk, dv).

pub mod dense;
pub mod kernels;

use crate::LowerError;
use crate::launch::{arr, grid};
use cubecl::prelude::*;
use cubecl::server::Handle;
use dense::{dense_attend_fwd, dense_bwd_keys, dense_bwd_rows};
use kernels::{
    KEY_CHUNK, SptConfig, pq_encode, spt_attend_fwd, spt_bwd_keys, spt_bwd_rows, spt_key_count,
    spt_key_fill, spt_key_offsets, spt_key_scan, spt_sddmm, spt_select, spt_softmax, spt_spmm,
};
use kernels_ir::pattern::{Pattern, Selector};
use kernels_ir::{KernelSpec, OpKind};

/// Problem sizes and the comptime config of one `spt-attention` spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SptPlan {
    /// Comptime config of every kernel in the chain.
    pub cfg: SptConfig,
    /// Batch.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Sequence length.
    pub l: usize,
    /// The fused forward kernel (true) or the unfused SDDMM → softmax → SpMM chain.
    pub fused: bool,
}

impl SptPlan {
    /// Lowers a verified `spt-attention` spec (forward or backward: both share the config).
    pub fn from_spec(spec: &KernelSpec) -> Result<Self, LowerError> {
        spec.verify()?;
        let Pattern::PqTopK(p) = spec.pattern else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "a pattern other than pq-topk".into(),
            });
        };
        if spec.op != OpKind::SptAttention {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is spt-attention's)".into(),
            });
        }
        let d = spec.dim("D");
        let s = d / p.sub_dim;
        let adc = p.selector == Selector::PqAdc;
        Ok(Self {
            cfg: SptConfig {
                d: d as u32,
                s: s as u32,
                e: p.codewords as u32,
                dc: p.sub_dim as u32,
                topk: spec.topk() as u32,
                causal: p.causal,
                clamp: p.clamp,
                adc,
            },
            b: spec.dim("B"),
            h: spec.dim("H"),
            l: spec.dim("L"),
            fused: spec.schedule.fused,
        })
    }

    /// Query (and key) rows, `B·H·L`.
    pub fn rows(&self) -> usize {
        self.b * self.h * self.l
    }

    /// Bytes kept between forward and backward besides q, k, v and the output: the indices
    /// (i32) and the per-row log-sum-exp (f32). Dense attention keeps `B·H·L·L` probabilities.
    pub fn saved_bytes(&self) -> usize {
        self.rows() * (self.cfg.topk as usize * 4 + 4)
    }
}

impl SptPlan {
    /// Bytes the launchers allocate and release within one call, at most (the larger of the two
    /// calls): forward's PQ codes of q and k (and the unfused chain's scores), backward's
    /// probabilities, score gradients and per-head key index. With the inputs, the saved tensors
    /// and the gradients this is the peak a training step holds on the device.
    pub fn scratch_bytes(&self) -> usize {
        let rows = self.rows();
        let kept = rows * self.cfg.topk as usize;
        let heads = self.b * self.h;
        let fwd = rows * self.cfg.s as usize * 4 * 2 + if self.fused { 0 } else { kept * 4 };
        let bwd = kept * 4 * 3 + heads * (self.l + 1 + self.key_chunks() * self.l) * 4;
        fwd.max(bwd)
    }

    /// Chunks of [`KEY_CHUNK`] query rows per head in the key-major index.
    pub fn key_chunks(&self) -> usize {
        self.l.div_ceil(KEY_CHUNK as usize)
    }

    /// Bytes [`dense_forward_backward`] allocates and releases within the call: the per-row
    /// log-sum-exp and the per-row `rowsum(dout ⊙ out)`.
    pub fn dense_scratch_bytes(&self) -> usize {
        self.rows() * 4 * 2
    }
}

/// One `pq-encode` spec: the codes of N rows of width D against a codebook [S, E, d_c] (the
/// encoding kernel of the attention chain, on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodePlan {
    /// Comptime config (`d`, `s`, `e`, `dc` are read; the attention fields are unused).
    pub cfg: SptConfig,
    /// Rows.
    pub n: usize,
}

impl EncodePlan {
    /// Lowers a verified `pq-encode` spec.
    pub fn from_spec(spec: &KernelSpec) -> Result<Self, LowerError> {
        spec.verify()?;
        let (Pattern::PqTopK(p), OpKind::PqEncode) = (spec.pattern, spec.op) else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is pq-encode's)".into(),
            });
        };
        let d = spec.dim("D");
        Ok(Self {
            cfg: SptConfig {
                d: d as u32,
                s: (d / p.sub_dim) as u32,
                e: p.codewords as u32,
                dc: p.sub_dim as u32,
                topk: 0,
                causal: false,
                clamp: false,
                adc: false,
            },
            n: spec.dim("N"),
        })
    }
}

/// Codes [N, S] (u32) of the rows of `x` [N, D].
pub fn encode<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &EncodePlan,
    x: &Handle,
    codebook: &Handle,
) -> Handle {
    let c = plan.cfg;
    let (s, cb_len) = (c.s as usize, (c.s * c.e * c.dc) as usize);
    let codes = client.empty(plan.n * s * 4);
    let (count, dim) = grid(client, plan.n * s);
    pq_encode::launch::<F, R>(
        client,
        count,
        dim,
        arr(x, plan.n * c.d as usize),
        arr(codebook, cb_len),
        arr(&codes, plan.n * s),
        c,
    );
    codes
}

/// Handles written by [`forward`].
#[derive(Clone, Debug)]
pub struct SptForward {
    /// `out` [B, H, L, D] in the storage dtype.
    pub out: Handle,
    /// Kept keys [B, H, L, topk] as i32, −1 = empty slot.
    pub indices: Handle,
    /// Per-row log-sum-exp [B, H, L], f32.
    pub lse: Handle,
}

/// Handles written by [`backward`], in the storage dtype.
#[derive(Clone, Debug)]
pub struct SptGrads {
    /// dq [B, H, L, D].
    pub dq: Handle,
    /// dk [B, H, L, D].
    pub dk: Handle,
    /// dv [B, H, L, D].
    pub dv: Handle,
}

/// Lanes per row of the plane-per-row kernels (`spt_attend_fwd`, `spt_bwd_rows`,
/// `spt_bwd_keys`): the device's plane (warp, subgroup) size — 32 on NVIDIA, 8 on lavapipe.
pub fn lanes<R: Runtime>(client: &ComputeClient<R>) -> u32 {
    client.properties().hardware.plane_size_max.clamp(1, 128)
}

/// Lanes per row of the sparse row kernels (`spt_attend_fwd`, `spt_bwd_rows`, `spt_bwd_keys`):
/// [`ROW_LANES`], or the plane size when smaller (lavapipe: 8), so several rows share a plane and
/// each lane holds D / lanes elements; 1 where the plane size is not a power of two.
///
/// `SPARSECUBE_ROW_LANES=<power of two>` overrides [`ROW_LANES`] (capped at the plane size): on
/// lavapipe, whose plane is 8, values below 8 exercise several rows per plane.
pub fn row_lanes<R: Runtime>(client: &ComputeClient<R>) -> u32 {
    let plane = lanes(client);
    let want = std::env::var("SPARSECUBE_ROW_LANES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| v.is_power_of_two())
        .unwrap_or(ROW_LANES);
    if plane.is_power_of_two() {
        plane.min(want)
    } else {
        1
    }
}

/// Lanes per row of the sparse row kernels where the plane allows: a gathered row of D = 64 f32
/// is then 8 elements per lane, 32 bytes per group access, four rows per 32-wide warp.
pub const ROW_LANES: u32 = 8;

/// Cube shape of the plane-per-row kernels for `lanes`: `lanes` × rows-per-cube (128 units per
/// cube, at least one row), and the rows per cube.
pub fn plane_dims(lanes: u32) -> (CubeDim, u32) {
    let per_cube = (128 / lanes).max(1);
    (CubeDim::new_2d(lanes, per_cube), per_cube)
}

fn plane_rows_count<R: Runtime>(
    client: &ComputeClient<R>,
    rows: usize,
    lanes: u32,
) -> (CubeCount, CubeDim) {
    let (dim, per_cube) = plane_dims(lanes);
    // One cube per `per_cube` rows (the helper only counts units per cube).
    (
        cubecl::calculate_cube_count_elemwise(client, rows.max(1), CubeDim::new_1d(per_cube)),
        dim,
    )
}

/// Runs the forward chain; `q`, `k`, `v` [B, H, L, D] and `codebook` [S, E, d_c] in dtype `F`.
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &SptPlan,
    q: &Handle,
    k: &Handle,
    v: &Handle,
    codebook: &Handle,
) -> SptForward {
    let cfg = plan.cfg;
    let rows = plan.rows();
    let (d, s, topk) = (cfg.d as usize, cfg.s as usize, cfg.topk as usize);
    let elems = rows * d;
    let cb_len = s * cfg.e as usize * cfg.dc as usize;
    let codes_q = client.empty(rows * s * 4);
    let codes_k = client.empty(rows * s * 4);
    let (count, dim) = grid(client, rows * s);
    for (x, codes) in [(q, &codes_q), (k, &codes_k)] {
        pq_encode::launch::<F, R>(
            client,
            count.clone(),
            dim,
            arr(x, elems),
            arr(codebook, cb_len),
            arr(codes, rows * s),
            cfg,
        );
    }
    let indices = client.empty(rows * topk * 4);
    let (count, dim) = grid(client, rows);
    spt_select::launch::<F, R>(
        client,
        count.clone(),
        dim,
        arr(q, elems),
        arr(codebook, cb_len),
        arr(&codes_q, rows * s),
        arr(&codes_k, rows * s),
        arr(&indices, rows * topk),
        plan.l as u32,
        cfg,
    );
    let out = client.empty(elems * size_of::<F>());
    let lse = client.empty(rows * 4);
    if plan.fused {
        let lanes = row_lanes(client);
        let (pcount, pdim) = plane_rows_count(client, rows, lanes);
        spt_attend_fwd::launch::<F, R>(
            client,
            pcount,
            pdim,
            arr(q, elems),
            arr(k, elems),
            arr(v, elems),
            arr(&indices, rows * topk),
            arr(&out, elems),
            arr(&lse, rows),
            plan.l as u32,
            cfg,
            lanes,
        );
    } else {
        let scores = client.empty(rows * topk * 4);
        spt_sddmm::launch::<F, R>(
            client,
            count.clone(),
            dim,
            arr(q, elems),
            arr(k, elems),
            arr(&indices, rows * topk),
            arr(&scores, rows * topk),
            plan.l as u32,
            cfg,
        );
        spt_softmax::launch::<R>(
            client,
            count.clone(),
            dim,
            arr(&scores, rows * topk),
            arr(&indices, rows * topk),
            arr(&lse, rows),
            cfg.topk,
        );
        spt_spmm::launch::<F, R>(
            client,
            count,
            dim,
            arr(&scores, rows * topk),
            arr(&indices, rows * topk),
            arr(v, elems),
            arr(&out, elems),
            plan.l as u32,
            cfg,
        );
    }
    SptForward { out, indices, lse }
}

/// Runs the backward chain from the forward's saved `indices` and `lse` and the upstream `dout`.
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &SptPlan,
    q: &Handle,
    k: &Handle,
    v: &Handle,
    saved: &SptForward,
    dout: &Handle,
) -> SptGrads {
    let cfg = plan.cfg;
    let rows = plan.rows();
    let heads = plan.b * plan.h;
    let (d, topk, l) = (cfg.d as usize, cfg.topk as usize, plan.l);
    let elems = rows * d;
    let kept = rows * topk;
    let dq = client.empty(elems * size_of::<F>());
    let probs = client.empty(kept * 4);
    let dscores = client.empty(kept * 4);
    let lanes = row_lanes(client);
    let (count, dim) = plane_rows_count(client, rows, lanes);
    spt_bwd_rows::launch::<F, R>(
        client,
        count.clone(),
        dim,
        arr(q, elems),
        arr(k, elems),
        arr(v, elems),
        arr(&saved.indices, kept),
        arr(&saved.lse, rows),
        arr(dout, elems),
        arr(&dq, elems),
        arr(&probs, kept),
        arr(&dscores, kept),
        l as u32,
        cfg,
        lanes,
    );
    // Key-major view of the kept set in four passes (see `spt_key_count`): chunk counts, per-key
    // scan over chunks, per-head scan over keys, ordered fill.
    let chunks = plan.key_chunks();
    let offsets = client.empty(heads * (l + 1) * 4);
    let counts = client.empty(heads * chunks * l * 4);
    let entries = client.empty(kept * 4);
    let (ccount, cdim) = grid(client, heads * chunks);
    spt_key_count::launch::<R>(
        client,
        ccount.clone(),
        cdim,
        arr(&saved.indices, kept),
        arr(&counts, heads * chunks * l),
        l as u32,
        cfg.topk,
    );
    let (kcount, kdim) = grid(client, heads * l);
    spt_key_scan::launch::<R>(
        client,
        kcount,
        kdim,
        arr(&counts, heads * chunks * l),
        arr(&offsets, heads * (l + 1)),
        l as u32,
    );
    let (hcount, hdim) = grid(client, heads);
    spt_key_offsets::launch::<R>(
        client,
        hcount,
        hdim,
        arr(&offsets, heads * (l + 1)),
        l as u32,
    );
    spt_key_fill::launch::<R>(
        client,
        ccount,
        cdim,
        arr(&saved.indices, kept),
        arr(&counts, heads * chunks * l),
        arr(&offsets, heads * (l + 1)),
        arr(&entries, kept),
        l as u32,
        cfg.topk,
    );
    let dk = client.empty(elems * size_of::<F>());
    let dv = client.empty(elems * size_of::<F>());
    spt_bwd_keys::launch::<F, R>(
        client,
        count,
        dim,
        arr(q, elems),
        arr(dout, elems),
        arr(&probs, kept),
        arr(&dscores, kept),
        arr(&offsets, heads * (l + 1)),
        arr(&entries, kept),
        arr(&dk, elems),
        arr(&dv, elems),
        l as u32,
        cfg,
        lanes,
    );
    SptGrads { dq, dk, dv }
}

/// Dense attention on the device, forward then backward: the same-device baseline of the bench.
/// Returns `(out, dq, dk, dv)`; keeps only the per-row log-sum-exp between the passes.
pub fn dense_forward_backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &SptPlan,
    q: &Handle,
    k: &Handle,
    v: &Handle,
    dout: &Handle,
) -> (Handle, SptGrads) {
    let cfg = plan.cfg;
    let rows = plan.rows();
    let elems = rows * cfg.d as usize;
    let lanes = lanes(client);
    let (count, dim) = plane_rows_count(client, rows, lanes);
    let out = client.empty(elems * size_of::<F>());
    let lse = client.empty(rows * 4);
    dense_attend_fwd::launch::<F, R>(
        client,
        count.clone(),
        dim,
        arr(q, elems),
        arr(k, elems),
        arr(v, elems),
        arr(&out, elems),
        arr(&lse, rows),
        plan.l as u32,
        cfg,
        lanes,
    );
    let dq = client.empty(elems * size_of::<F>());
    let delta = client.empty(rows * 4);
    dense_bwd_rows::launch::<F, R>(
        client,
        count.clone(),
        dim,
        arr(q, elems),
        arr(k, elems),
        arr(&out, elems),
        arr(&lse, rows),
        arr(v, elems),
        arr(dout, elems),
        arr(&dq, elems),
        arr(&delta, rows),
        plan.l as u32,
        cfg,
        lanes,
    );
    let dk = client.empty(elems * size_of::<F>());
    let dv = client.empty(elems * size_of::<F>());
    dense_bwd_keys::launch::<F, R>(
        client,
        count,
        dim,
        arr(q, elems),
        arr(k, elems),
        arr(v, elems),
        arr(&lse, rows),
        arr(&delta, rows),
        arr(dout, elems),
        arr(&dk, elems),
        arr(&dv, elems),
        plan.l as u32,
        cfg,
        lanes,
    );
    (out, SptGrads { dq, dk, dv })
}
