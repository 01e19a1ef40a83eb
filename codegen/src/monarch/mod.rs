//! Monarch (METHODS.md §3) lowered to CubeCL: [`MonarchPlan::from_spec`] derives the comptime
//! [`MonarchConfig`] from a verified `monarch` spec; [`forward`] launches the one fused forward
//! kernel and [`backward`] the gradient kernels, on any CubeCL runtime.
//!
//! Forward: `monarch_fwd` — both block-diagonal products in one kernel, the permutations folded
//! into the indexing; each cube keeps the slice of the intermediate its output block reads in
//! shared memory. Backward: `monarch_bwd_du` (dy through the second factor) → `monarch_bwd_dx`,
//! `monarch_bwd_dw1`, and `monarch_bwd_dw2` (from dy and the saved intermediate).

pub mod kernels;

use crate::LowerError;
use crate::launch::{arr, grid};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{
    MONARCH_UNITS, MonarchConfig, monarch_bwd_du, monarch_bwd_dw1, monarch_bwd_dw2, monarch_bwd_dx,
    monarch_fwd,
};
use kernels_ir::pattern::Pattern;
use kernels_ir::{KernelSpec, Knob, OpKind};

/// Most loop iterations one unit of the fused forward runs per phase. Past ~65 535 iterations
/// per invocation llvmpipe (lavapipe) silently leaves a loop, so the rows per cube are chosen to
/// stay well below that; GPUs have no such limit.
const MAX_UNIT_ITERATIONS: u32 = 16_384;
/// Shared memory of the fused forward's intermediate slice, at most (bytes).
const MAX_SHARED_BYTES: u32 = 16 * 1024;

/// Problem sizes and the comptime config of one `monarch` spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MonarchPlan {
    /// Comptime config of every kernel.
    pub cfg: MonarchConfig,
    /// Rows of x.
    pub n: usize,
}

/// The rows per cube of the fused forward: the largest power of two up to `tile_m` (the
/// schedule's, at most [`Knob::MONARCH_MAX_ROWS`]) whose per-unit loop lengths and shared slice
/// fit the limits above (at least 1).
fn rows_per_cube(tile_m: u32, p: u32, q: u32, r: u32, s: u32) -> u32 {
    let _ = q;
    let fits = |rows: u32| {
        let phase1 = (rows * r).div_ceil(MONARCH_UNITS) * p;
        let phase2 = (rows * s).div_ceil(MONARCH_UNITS) * r;
        phase1 <= MAX_UNIT_ITERATIONS
            && phase2 <= MAX_UNIT_ITERATIONS
            && rows * r * 4 <= MAX_SHARED_BYTES
    };
    let mut rows = 1;
    while rows * 2 <= tile_m.min(Knob::MONARCH_MAX_ROWS) {
        rows *= 2;
    }
    while rows > 1 && !fits(rows) {
        rows /= 2;
    }
    rows
}

impl MonarchPlan {
    /// Lowers a verified `monarch` spec (forward or backward: both share the config).
    pub fn from_spec(spec: &KernelSpec) -> Result<Self, LowerError> {
        spec.verify()?;
        let Pattern::Monarch(m) = spec.pattern else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "a pattern other than monarch".into(),
            });
        };
        if spec.op != OpKind::Monarch {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is monarch's)".into(),
            });
        }
        let [k, q, p, l, s, r] = [m.k, m.q, m.p, m.l, m.s, m.r].map(|v| v as u32);
        Ok(Self {
            cfg: MonarchConfig {
                k,
                q,
                p,
                l,
                s,
                r,
                rows: rows_per_cube(spec.schedule.tile_m, p, q, r, s),
            },
            n: spec.dim("N"),
        })
    }

    /// (N, n_in, inner = k·q, n_out).
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        let c = self.cfg;
        (
            self.n,
            (c.k * c.p) as usize,
            (c.k * c.q) as usize,
            (c.l * c.s) as usize,
        )
    }

    /// Elements of w1 and w2.
    pub fn factor_sizes(&self) -> (usize, usize) {
        let c = self.cfg;
        ((c.k * c.q * c.p) as usize, (c.l * c.s * c.r) as usize)
    }

    /// Bytes kept between forward and backward besides the inputs and `y`: the intermediate
    /// u [N, k·q] f32.
    pub fn saved_bytes(&self) -> usize {
        let (n, _, inner, _) = self.sizes();
        4 * n * inner
    }

    /// The fused forward's grid: (row tiles, second-factor blocks).
    pub fn forward_grid(&self) -> (CubeCount, CubeDim) {
        let tiles = self.n.div_ceil(self.cfg.rows as usize).max(1);
        (
            CubeCount::Static(tiles as u32, self.cfg.l, 1),
            CubeDim::new_1d(MONARCH_UNITS),
        )
    }
}

/// Handles written by [`forward`].
#[derive(Clone, Debug)]
pub struct MonarchForward {
    /// `y` [N, n_out] in the storage dtype.
    pub y: Handle,
    /// The intermediate u [N, k·q] f32 (written only when saved for backward).
    pub u: Handle,
}

/// Handles written by [`backward`], in the storage dtype.
#[derive(Clone, Debug)]
pub struct MonarchGrads {
    /// dx [N, n_in].
    pub dx: Handle,
    /// dw1 [k, q, p].
    pub dw1: Handle,
    /// dw2 [l, s, r].
    pub dw2: Handle,
}

/// Runs the fused forward on x [N, n_in], w1 [k, q, p], w2 [l, s, r] (dtype `F`); with
/// `save_u` the intermediate is kept for [`backward`] (else `u` is a 4-byte placeholder).
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &MonarchPlan,
    x: &Handle,
    w1: &Handle,
    w2: &Handle,
    save_u: bool,
) -> MonarchForward {
    let (n, n_in, inner, n_out) = plan.sizes();
    let (s1, s2) = plan.factor_sizes();
    let u_len = if save_u { n * inner } else { 1 };
    let u = client.empty(u_len * 4);
    let y = client.empty(n * n_out * size_of::<F>());
    let (count, dim) = plan.forward_grid();
    monarch_fwd::launch::<F, R>(
        client,
        count,
        dim,
        arr(x, n * n_in),
        arr(w1, s1),
        arr(w2, s2),
        arr(&u, u_len),
        arr(&y, n * n_out),
        plan.cfg,
        save_u,
    );
    MonarchForward { y, u }
}

/// Runs the backward for upstream gradient `dy` [N, n_out], with the intermediate `u` saved by
/// [`forward`] (`save_u` = true).
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &MonarchPlan,
    x: &Handle,
    w1: &Handle,
    w2: &Handle,
    u: &Handle,
    dy: &Handle,
) -> MonarchGrads {
    let cfg = plan.cfg;
    let (n, n_in, inner, n_out) = plan.sizes();
    let (s1, s2) = plan.factor_sizes();
    let du = client.empty(n * inner * 4);
    let (count, dim) = grid(client, n * inner);
    monarch_bwd_du::launch::<F, R>(
        client,
        count,
        dim,
        arr(dy, n * n_out),
        arr(w2, s2),
        arr(&du, n * inner),
        cfg,
    );
    let dx = client.empty(n * n_in * size_of::<F>());
    let (count, dim) = grid(client, n * n_in);
    monarch_bwd_dx::launch::<F, R>(
        client,
        count,
        dim,
        arr(&du, n * inner),
        arr(w1, s1),
        arr(&dx, n * n_in),
        cfg,
    );
    let dw1 = client.empty(s1 * size_of::<F>());
    let (count, dim) = grid(client, s1);
    monarch_bwd_dw1::launch::<F, R>(
        client,
        count,
        dim,
        arr(&du, n * inner),
        arr(x, n * n_in),
        arr(&dw1, s1),
        cfg,
    );
    let dw2 = client.empty(s2 * size_of::<F>());
    let (count, dim) = grid(client, s2);
    monarch_bwd_dw2::launch::<F, R>(
        client,
        count,
        dim,
        arr(dy, n * n_out),
        arr(u, n * inner),
        arr(&dw2, s2),
        cfg,
    );
    MonarchGrads { dx, dw1, dw2 }
}
