//! The routed FFN (SPT's routed FFN, a general MoE) lowered to CubeCL: [`RoutedPlan::from_spec`]
//! derives the comptime [`RoutedConfig`] from a verified `routed-ffn` spec; [`forward`] and
//! [`backward`] launch the kernel chain on any CubeCL runtime.
//!
//! Forward: `routed_gate` (gates, kept blocks) → grouping by block, a deterministic counting sort
//! in four passes (`routed_count` → `routed_scan` → `routed_offsets` → `routed_fill`) →
//! `routed_up` (x·w1ᵀ + b1 and the activation over the kept pairs only) → `routed_down` (·w2ᵀ and
//! the gate's output coefficient, per pair) → `routed_combine` (the weighted un-permute, + b2).
//! The four products over pairs are grouped tiled GEMMs ([`crate::tile`]): one launch each for
//! every block, tiles scheduled across the groups on the device.
//! Backward: `routed_bwd_hidden` → `routed_bwd_router` (router logits) → `routed_bwd_dx` (per
//! pair) → `routed_bwd_dx_combine` (+ the router path), `routed_bwd_w1` and `routed_bwd_w2`
//! (tiled per block), `routed_bwd_db1`, `routed_bwd_db2`, `routed_bwd_router_w` (dwr,
//! dbr). Only kept (token, block) pairs are computed.

pub mod kernels;

use crate::LowerError;
use crate::launch::{arr, grid, grouped_tiles};
use crate::tile;
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{
    RoutedConfig, TOKEN_CHUNK, routed_bwd_db1, routed_bwd_db2, routed_bwd_dx,
    routed_bwd_dx_combine, routed_bwd_hidden, routed_bwd_router, routed_bwd_router_w,
    routed_bwd_w1, routed_bwd_w2, routed_combine, routed_count, routed_down, routed_fill,
    routed_gate, routed_offsets, routed_scan, routed_up,
};
use kernels_ir::pattern::{Activation, GateMode, Pattern, Router};
use kernels_ir::{KernelSpec, OpKind};

/// Problem sizes and the comptime config of one `routed-ffn` spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoutedPlan {
    /// Comptime config of every kernel in the chain.
    pub cfg: RoutedConfig,
    /// Tokens.
    pub t: usize,
    /// Gate multiplier (a runtime scalar: f32 is not a hashable comptime value).
    pub gate_scale: f32,
}

impl RoutedPlan {
    /// Lowers a verified `routed-ffn` spec (forward or backward: both share the config).
    pub fn from_spec(spec: &KernelSpec) -> Result<Self, LowerError> {
        spec.verify()?;
        let Pattern::Routed(r) = spec.pattern else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "a pattern other than routed".into(),
            });
        };
        if spec.op != OpKind::RoutedFfn {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is routed-ffn's)".into(),
            });
        }
        Ok(Self {
            cfg: RoutedConfig {
                dm: spec.dim("d_model") as u32,
                bs: (spec.dim("d_ff") / r.blocks) as u32,
                blocks: r.blocks as u32,
                top: r.top as u32,
                softmax: r.router == Router::Softmax,
                gate: match r.gate {
                    GateMode::Output => 0,
                    GateMode::None => 1,
                    GateMode::SptLora => 2,
                },
                gelu: r.act == Activation::Gelu,
                tk: spec.schedule.tile_k,
            },
            t: spec.dim("T"),
            gate_scale: r.gate_scale as f32,
        })
    }

    /// (T, d_model, blocks, top, block size).
    pub fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        let c = self.cfg;
        (
            self.t,
            c.dm as usize,
            c.blocks as usize,
            c.top as usize,
            c.bs as usize,
        )
    }

    /// Kept (token, block) pairs, `T·top`.
    pub fn pairs(&self) -> usize {
        self.t * self.cfg.top as usize
    }

    /// Token chunks of the grouping passes.
    pub fn chunks(&self) -> usize {
        self.t.div_ceil(TOKEN_CHUNK as usize)
    }

    /// `d_ff`.
    pub fn dff(&self) -> usize {
        (self.cfg.bs * self.cfg.blocks) as usize
    }

    /// Bytes kept between forward and backward besides the inputs and `y`: gates, kept blocks,
    /// the grouping (offsets, token of each pair, pair of each slot), each pair's output
    /// coefficient and the pre-activations and activations of the kept pairs only (2·P·bs f32).
    pub fn saved_bytes(&self) -> usize {
        let (_, _, e, top, bs) = self.sizes();
        4 * (self.t * e + self.t * top + (e + 1) + 3 * self.pairs() + 2 * self.pairs() * bs)
    }

    /// Bytes the launchers allocate and release within a call, at most: forward's chunk counts
    /// and per-pair outputs of the second product (P·d_model f32, summed per token by the
    /// combine), backward's dpre/dco/dci (3·P·bs f32), router logit gradients and per-pair dx
    /// rows (P·d_model f32).
    pub fn scratch_bytes(&self) -> usize {
        let e = self.cfg.blocks as usize;
        let dm = self.cfg.dm as usize;
        let fwd = 4 * (self.chunks() * e + self.pairs() * dm);
        let bwd = 4 * (3 * self.pairs() * self.cfg.bs as usize + self.t * e + self.pairs() * dm);
        fwd.max(bwd)
    }
}

/// The grid of a per-block weight gradient: one cube per tile of each block's [rows, cols] slice.
fn weight_tiles(rows: usize, cols: usize, blocks: usize) -> CubeCount {
    CubeCount::Static(
        tile::column_tiles(rows) as u32,
        tile::column_tiles(cols) as u32,
        blocks as u32,
    )
}

/// Handles written by [`forward`] and read by [`backward`].
#[derive(Clone, Debug)]
pub struct RoutedForward {
    /// `y` [T, d_model] in the storage dtype.
    pub y: Handle,
    /// Kept blocks [T, top], i32, ascending per token.
    pub blocks: Handle,
    /// Gates [T, E], f32.
    pub gates: Handle,
    /// First pair of each block's group [E + 1], u32.
    pub offsets: Handle,
    /// Token of each pair [P], u32.
    pub pair_token: Handle,
    /// Pair of each (token, slot) [T·top], u32.
    pub slot_of: Handle,
    /// Pre-activations [P, bs], f32.
    pub pre: Handle,
    /// Activations [P, bs], f32.
    pub h: Handle,
    /// The gate's output coefficient of each pair [P], f32.
    pub cout: Handle,
}

/// Handles written by [`backward`], in the storage dtype.
#[derive(Clone, Debug)]
pub struct RoutedGrads {
    /// dx [T, d_model].
    pub dx: Handle,
    /// dw1 [d_ff, d_model].
    pub dw1: Handle,
    /// db1 [d_ff].
    pub db1: Handle,
    /// dw2 [d_model, d_ff].
    pub dw2: Handle,
    /// db2 [d_model].
    pub db2: Handle,
    /// dwr [E, d_model].
    pub dwr: Handle,
    /// dbr [E].
    pub dbr: Handle,
}

/// Runs the forward chain. Weights as in the `run` contract: x [T, d_model], w1 [d_ff, d_model],
/// b1 [d_ff], w2 [d_model, d_ff], b2 [d_model], wr [E, d_model], br [E], all in dtype `F`.
#[allow(clippy::too_many_arguments)]
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &RoutedPlan,
    x: &Handle,
    w1: &Handle,
    b1: &Handle,
    w2: &Handle,
    b2: &Handle,
    wr: &Handle,
    br: &Handle,
) -> RoutedForward {
    let cfg = plan.cfg;
    let (t, dm, e_n, top, bs) = plan.sizes();
    let dff = plan.dff();
    let pairs = plan.pairs();
    let chunks = plan.chunks();
    let gates = client.empty(t * e_n * 4);
    let blocks = client.empty(t * top * 4);
    let (count, dim) = grid(client, t);
    routed_gate::launch::<F, R>(
        client,
        count,
        dim,
        arr(x, t * dm),
        arr(wr, e_n * dm),
        arr(br, e_n),
        arr(&gates, t * e_n),
        arr(&blocks, t * top),
        cfg,
    );
    let counts = client.empty(chunks * e_n * 4);
    let offsets = client.empty((e_n + 1) * 4);
    let (count, dim) = grid(client, chunks);
    routed_count::launch::<R>(
        client,
        count.clone(),
        dim,
        arr(&blocks, t * top),
        arr(&counts, chunks * e_n),
        t as u32,
        cfg,
    );
    let (ecount, edim) = grid(client, e_n);
    routed_scan::launch::<R>(
        client,
        ecount,
        edim,
        arr(&counts, chunks * e_n),
        arr(&offsets, e_n + 1),
        cfg,
    );
    let (ocount, odim) = grid(client, 1);
    routed_offsets::launch::<R>(client, ocount, odim, arr(&offsets, e_n + 1), cfg);
    let pair_token = client.empty(pairs * 4);
    let slot_of = client.empty(pairs * 4);
    routed_fill::launch::<R>(
        client,
        count,
        dim,
        arr(&blocks, t * top),
        arr(&counts, chunks * e_n),
        arr(&offsets, e_n + 1),
        arr(&pair_token, pairs),
        arr(&slot_of, pairs),
        t as u32,
        cfg,
    );
    let pre = client.empty(pairs * bs * 4);
    let h = client.empty(pairs * bs * 4);
    let cout = client.empty(pairs * 4);
    let (count, dim) = grouped_tiles(pairs, e_n, bs);
    routed_up::launch::<F, R>(
        client,
        count,
        dim,
        arr(x, t * dm),
        arr(w1, dff * dm),
        arr(b1, dff),
        arr(&gates, t * e_n),
        arr(&pair_token, pairs),
        arr(&offsets, e_n + 1),
        arr(&pre, pairs * bs),
        arr(&h, pairs * bs),
        arr(&cout, pairs),
        plan.gate_scale,
        cfg,
    );
    let zp = client.empty(pairs * dm * 4);
    let (count, dim) = grouped_tiles(pairs, e_n, dm);
    routed_down::launch::<F, R>(
        client,
        count,
        dim,
        arr(&h, pairs * bs),
        arr(w2, dm * dff),
        arr(&gates, t * e_n),
        arr(&pair_token, pairs),
        arr(&offsets, e_n + 1),
        arr(&zp, pairs * dm),
        plan.gate_scale,
        cfg,
    );
    let y = client.empty(t * dm * size_of::<F>());
    let (count, dim) = grid(client, t * dm);
    routed_combine::launch::<F, R>(
        client,
        count,
        dim,
        arr(&zp, pairs * dm),
        arr(b2, dm),
        arr(&slot_of, pairs),
        arr(&y, t * dm),
        cfg,
    );
    RoutedForward {
        y,
        blocks,
        gates,
        offsets,
        pair_token,
        slot_of,
        pre,
        h,
        cout,
    }
}

/// Runs the backward chain for upstream gradient `dy` [T, d_model].
#[allow(clippy::too_many_arguments)]
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &RoutedPlan,
    x: &Handle,
    w1: &Handle,
    w2: &Handle,
    wr: &Handle,
    saved: &RoutedForward,
    dy: &Handle,
) -> RoutedGrads {
    let cfg = plan.cfg;
    let (t, dm, e_n, top, bs) = plan.sizes();
    let dff = plan.dff();
    let pairs = plan.pairs();
    let hidden = pairs * bs;
    let dpre = client.empty(hidden * 4);
    let dco = client.empty(hidden * 4);
    let dci = client.empty(hidden * 4);
    let (count, dim) = grouped_tiles(pairs, e_n, bs);
    routed_bwd_hidden::launch::<F, R>(
        client,
        count,
        dim,
        arr(dy, t * dm),
        arr(w2, dm * dff),
        arr(&saved.gates, t * e_n),
        arr(&saved.pair_token, pairs),
        arr(&saved.offsets, e_n + 1),
        arr(&saved.pre, hidden),
        arr(&saved.h, hidden),
        arr(&dpre, hidden),
        arr(&dco, hidden),
        arr(&dci, hidden),
        plan.gate_scale,
        cfg,
    );
    let dlogit = client.empty(t * e_n * 4);
    let (count, dim) = grid(client, t);
    routed_bwd_router::launch::<R>(
        client,
        count,
        dim,
        arr(&saved.gates, t * e_n),
        arr(&saved.blocks, t * top),
        arr(&saved.slot_of, pairs),
        arr(&dco, hidden),
        arr(&dci, hidden),
        arr(&dlogit, t * e_n),
        plan.gate_scale,
        cfg,
    );
    let zdx = client.empty(pairs * dm * 4);
    let (count, dim) = grouped_tiles(pairs, e_n, dm);
    routed_bwd_dx::launch::<F, R>(
        client,
        count,
        dim,
        arr(&dpre, hidden),
        arr(w1, dff * dm),
        arr(&saved.pair_token, pairs),
        arr(&saved.offsets, e_n + 1),
        arr(&zdx, pairs * dm),
        cfg,
    );
    let dx = client.empty(t * dm * size_of::<F>());
    let (count, dim) = grid(client, t * dm);
    routed_bwd_dx_combine::launch::<F, R>(
        client,
        count,
        dim,
        arr(&zdx, pairs * dm),
        arr(wr, e_n * dm),
        arr(&saved.slot_of, pairs),
        arr(&dlogit, t * e_n),
        arr(&dx, t * dm),
        cfg,
    );
    let dw1 = client.empty(dff * dm * size_of::<F>());
    routed_bwd_w1::launch::<F, R>(
        client,
        weight_tiles(bs, dm, e_n),
        tile::cube_dim(),
        arr(x, t * dm),
        arr(&saved.pair_token, pairs),
        arr(&saved.offsets, e_n + 1),
        arr(&dpre, hidden),
        arr(&dw1, dff * dm),
        cfg,
    );
    let db1 = client.empty(dff * size_of::<F>());
    let (count, dim) = grid(client, dff);
    routed_bwd_db1::launch::<F, R>(
        client,
        count,
        dim,
        arr(&saved.offsets, e_n + 1),
        arr(&dpre, hidden),
        arr(&db1, dff),
        cfg,
    );
    let dw2 = client.empty(dm * dff * size_of::<F>());
    routed_bwd_w2::launch::<F, R>(
        client,
        weight_tiles(dm, bs, e_n),
        tile::cube_dim(),
        arr(dy, t * dm),
        arr(&saved.pair_token, pairs),
        arr(&saved.offsets, e_n + 1),
        arr(&saved.h, hidden),
        arr(&saved.cout, pairs),
        arr(&dw2, dm * dff),
        cfg,
    );
    let db2 = client.empty(dm * size_of::<F>());
    let (count, dim) = grid(client, dm);
    routed_bwd_db2::launch::<F, R>(client, count, dim, arr(dy, t * dm), arr(&db2, dm), t as u32);
    let dwr = client.empty(e_n * dm * size_of::<F>());
    let dbr = client.empty(e_n * size_of::<F>());
    let (count, dim) = grid(client, e_n * (dm + 1));
    routed_bwd_router_w::launch::<F, R>(
        client,
        count,
        dim,
        arr(x, t * dm),
        arr(&dlogit, t * e_n),
        arr(&dwr, e_n * dm),
        arr(&dbr, e_n),
        t as u32,
        cfg,
    );
    RoutedGrads {
        dx,
        dw1,
        db1,
        dw2,
        db2,
        dwr,
        dbr,
    }
}
