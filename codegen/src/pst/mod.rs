//! PST (METHODS.md §5) lowered to CubeCL: the score from the frozen weight and the low-rank
//! factors, the exact k-th value selection of the ⌊n·sparsity⌋ lowest scores on the device
//! ([`crate::select`], signed order, ties → lower flat index), the masked GEMM that applies
//! M ⊙ W' while staging its weight tile (no masked copy), and the straight-through backward.

pub mod kernels;

use crate::LowerError;
use crate::dense::{self, LinearPlan};
use crate::launch::{arr, grid};
use crate::select::{self, Keep};
use crate::tile::{column_tiles, cube_dim};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{
    PstConfig, pst_bwd_cols, pst_bwd_dx, pst_bwd_rows, pst_bwd_w, pst_fwd, pst_mask, pst_score,
};
use kernels_ir::pattern::Pattern;
use kernels_ir::{KernelSpec, OpKind};

/// Sizes and coefficients of one `pst-linear` spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PstPlan {
    /// Comptime sizes.
    pub cfg: PstConfig,
    /// Rows.
    pub t: usize,
    /// Fraction of weights masked out.
    pub sparsity: f64,
    /// [α1, α2, β].
    pub coef: [f32; 3],
}

impl PstPlan {
    /// Lowers a verified `pst-linear` spec.
    pub fn from_spec(spec: &KernelSpec) -> Result<Self, LowerError> {
        spec.verify()?;
        let (Pattern::Pst(p), OpKind::PstLinear) = (spec.pattern, spec.op) else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is pst-linear's)".into(),
            });
        };
        Ok(Self {
            cfg: PstConfig {
                n_in: spec.dim("in") as u32,
                n_out: spec.dim("out") as u32,
                rank: p.rank as u32,
                mrank: p.mask_rank as u32,
                tk: spec.schedule.tile_k,
            },
            t: spec.dim("T"),
            sparsity: p.sparsity,
            coef: [p.alpha1 as f32, p.alpha2 as f32, p.beta as f32],
        })
    }

    /// (T, in, out, rank, mask rank).
    pub fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        let c = self.cfg;
        (
            self.t,
            c.n_in as usize,
            c.n_out as usize,
            c.rank as usize,
            c.mrank as usize,
        )
    }

    /// Weights masked out: ⌊out·in·sparsity⌋.
    pub fn zeros(&self) -> usize {
        let (_, i, o, _, _) = self.sizes();
        ((i * o) as f64 * self.sparsity).floor() as usize
    }
}

/// The frozen weight and the trainable factors of one layer on the device (dtype `F`):
/// w [out, in], u [out, r], v [r, in], ma [out, rm], mb [rm, in], mr [out], mc [in].
#[derive(Clone, Debug)]
pub struct PstFactors {
    /// Frozen weight [out, in].
    pub w: Handle,
    /// U [out, r].
    pub u: Handle,
    /// V [r, in].
    pub v: Handle,
    /// A [out, r_m].
    pub ma: Handle,
    /// B [r_m, in].
    pub mb: Handle,
    /// R [out].
    pub mr: Handle,
    /// C [in].
    pub mc: Handle,
}

/// The mask of one step: the selection's pivot state and the score it was taken over.
#[derive(Clone, Debug)]
pub struct PstMask {
    /// The pivot state ([`select::pivot`]).
    pub state: Handle,
    /// The score S [out, in] f32.
    pub score: Handle,
    /// The coefficients [α1, α2, β] f32.
    pub coef: Handle,
}

macro_rules! factor_args {
    ($f:expr, $plan:expr) => {{
        let (_, i, o, r, rm) = $plan.sizes();
        (
            arr(&$f.w, o * i),
            arr(&$f.u, o * r),
            arr(&$f.v, r * i),
            arr(&$f.ma, o * rm),
            arr(&$f.mb, rm * i),
            arr(&$f.mr, o),
            arr(&$f.mc, i),
        )
    }};
}

/// Scores every weight and selects the ⌊n·sparsity⌋ lowest on the device (no read-back).
pub fn select_mask<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &PstPlan,
    f: &PstFactors,
) -> PstMask {
    let (_, i, o, _, _) = plan.sizes();
    let coef = client.create_from_slice(f32::as_bytes(&plan.coef));
    let score = client.empty(o * i * 4);
    let (count, dim) = grid(client, o * i);
    let (w, u, v, ma, mb, mr, mc) = factor_args!(f, plan);
    pst_score::launch::<F, R>(
        client,
        count,
        dim,
        w,
        u,
        v,
        ma,
        mb,
        mr,
        mc,
        arr(&coef, 3),
        arr(&score, o * i),
        plan.cfg,
    );
    let (state, _counts) =
        select::pivot::<R, f32>(client, &score, o * i, Keep::Smallest(plan.zeros()), true);
    PstMask { state, score, coef }
}

/// The 0/1 mask [out, in] in dtype `F`.
pub fn mask_values<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &PstPlan,
    m: &PstMask,
) -> Handle {
    let (_, i, o, _, _) = plan.sizes();
    let out = client.empty(o * i * size_of::<F>());
    let (count, dim) = grid(client, o * i);
    pst_mask::launch::<F, R>(
        client,
        count,
        dim,
        arr(&m.score, o * i),
        arr(&m.state, 4),
        arr(&out, o * i),
    );
    out
}

/// y = x·(M ⊙ W')ᵀ + bias.
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &PstPlan,
    x: &Handle,
    f: &PstFactors,
    m: &PstMask,
    bias: &Handle,
) -> Handle {
    let (t, i, o, _, _) = plan.sizes();
    let y = client.empty(t * o * size_of::<F>());
    let (w, u, v, ma, mb, mr, mc) = factor_args!(f, plan);
    pst_fwd::launch::<F, R>(
        client,
        CubeCount::Static(column_tiles(t) as u32, column_tiles(o) as u32, 1),
        cube_dim(),
        arr(x, t * i),
        w,
        u,
        v,
        ma,
        mb,
        mr,
        mc,
        arr(&m.coef, 3),
        arr(&m.state, 4),
        arr(bias, o),
        arr(&y, t * o),
        plan.cfg,
    );
    y
}

/// Gradients of a PST layer, in the storage dtype.
#[derive(Clone, Debug)]
pub struct PstGrads {
    /// dx [T, in].
    pub dx: Handle,
    /// dbias [out].
    pub dbias: Handle,
    /// dU [out, r].
    pub du: Handle,
    /// dV [r, in].
    pub dv: Handle,
    /// dA [out, r_m].
    pub dma: Handle,
    /// dB [r_m, in].
    pub dmb: Handle,
    /// dR [out].
    pub dmr: Handle,
    /// dC [in].
    pub dmc: Handle,
}

/// The straight-through backward for upstream gradient `dy` [T, out], with the mask `m` of the
/// forward. Scratch: dW' and dS [out, in] f32 (released within the call).
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &PstPlan,
    x: &Handle,
    f: &PstFactors,
    m: &PstMask,
    dy: &Handle,
) -> PstGrads {
    let (t, i, o, r, rm) = plan.sizes();
    let size = size_of::<F>();
    let dx = client.empty(t * i * size);
    let (w, u, v, ma, mb, mr, mc) = factor_args!(f, plan);
    pst_bwd_dx::launch::<F, R>(
        client,
        CubeCount::Static(column_tiles(t) as u32, column_tiles(i) as u32, 1),
        cube_dim(),
        arr(dy, t * o),
        w,
        u,
        v,
        ma,
        mb,
        mr,
        mc,
        arr(&m.coef, 3),
        arr(&m.state, 4),
        arr(&dx, t * i),
        plan.cfg,
    );
    let dwp = client.empty(o * i * 4);
    let ds = client.empty(o * i * 4);
    let (w, u, v, ma, mb, mr, mc) = factor_args!(f, plan);
    pst_bwd_w::launch::<F, R>(
        client,
        CubeCount::Static(column_tiles(o) as u32, column_tiles(i) as u32, 1),
        cube_dim(),
        arr(dy, t * o),
        arr(x, t * i),
        w,
        u,
        v,
        ma,
        mb,
        mr,
        mc,
        arr(&m.coef, 3),
        arr(&m.state, 4),
        arr(&dwp, o * i),
        arr(&ds, o * i),
        plan.cfg,
    );
    let (du, dma, dmr) = (
        client.empty(o * r * size),
        client.empty(o * rm * size),
        client.empty(o * size),
    );
    let (count, dim) = grid(client, o);
    pst_bwd_rows::launch::<F, R>(
        client,
        count,
        dim,
        arr(&dwp, o * i),
        arr(&ds, o * i),
        arr(&f.v, r * i),
        arr(&f.mb, rm * i),
        arr(&m.coef, 3),
        arr(&du, o * r),
        arr(&dma, o * rm),
        arr(&dmr, o),
        plan.cfg,
    );
    let (dv, dmb, dmc) = (
        client.empty(r * i * size),
        client.empty(rm * i * size),
        client.empty(i * size),
    );
    let (count, dim) = grid(client, i);
    pst_bwd_cols::launch::<F, R>(
        client,
        count,
        dim,
        arr(&dwp, o * i),
        arr(&ds, o * i),
        arr(&f.u, o * r),
        arr(&f.ma, o * rm),
        arr(&m.coef, 3),
        arr(&dv, r * i),
        arr(&dmb, rm * i),
        arr(&dmc, i),
        plan.cfg,
    );
    let dbias = dense::backward_dbias::<R, F>(client, &LinearPlan::new(t, i, o, plan.cfg.tk), dy);
    PstGrads {
        dx,
        dbias,
        du,
        dv,
        dma,
        dmb,
        dmr,
        dmc,
    }
}
