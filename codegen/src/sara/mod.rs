//! SaRA (METHODS.md §4) lowered to CubeCL: the mask of the smallest weights selected on the device
//! ([`crate::select`]: exact k-th value by radix select for a ratio, or a threshold), the packed
//! values, the forward as the dense tile GEMM over the weight with the packed values scattered
//! into it in place, and a backward whose weight gradient is the sampled product at the mask
//! positions only: no [out, in] gradient buffer exists at any point (extra memory O(nnz)).

pub mod kernels;

use crate::LowerError;
use crate::dense::{self, LinearPlan};
use crate::launch::{arr, grid};
use crate::select::{self, Keep};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{sara_adamw, sara_carry, sara_copy, sara_dv, sara_gather, sara_scatter};
use kernels_ir::pattern::{Pattern, SaraSelect};
use kernels_ir::{KernelSpec, OpKind};

/// Sizes and the mask rule of one `sara-linear` spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SaraPlan {
    /// Rows.
    pub t: usize,
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// Mask rule.
    pub select: SaraSelect,
    /// The schedule's `tile_k` (the dense products' slice depth).
    pub tile_k: u32,
}

impl SaraPlan {
    /// Lowers a verified `sara-linear` spec.
    pub fn from_spec(spec: &KernelSpec) -> Result<Self, LowerError> {
        spec.verify()?;
        let (Pattern::Sara(s), OpKind::SaraLinear) = (spec.pattern, spec.op) else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is sara-linear's)".into(),
            });
        };
        Ok(Self {
            t: spec.dim("T"),
            n_in: spec.dim("in"),
            n_out: spec.dim("out"),
            select: s.select,
            tile_k: spec.schedule.tile_k,
        })
    }

    /// The dense linear the forward and dx run on.
    pub fn linear(&self) -> LinearPlan {
        LinearPlan::new(self.t, self.n_in, self.n_out, self.tile_k)
    }

    /// Weights of the layer, `out·in`.
    pub fn weights(&self) -> usize {
        self.n_in * self.n_out
    }
}

/// The mask of `w` [out, in] (dtype `F`) on the device: flat indices [nnz] (u32, ascending) and
/// nnz. Reads one count back (it sizes the packed buffers).
pub fn mask<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &SaraPlan,
    w: &Handle,
) -> Result<(Handle, usize), String> {
    let len = plan.weights();
    let keep = match plan.select {
        SaraSelect::Threshold(t) => Keep::Below(t),
        SaraSelect::Ratio(r) => Keep::Smallest((r * len as f64).floor() as usize),
    };
    select::select::<R, F>(client, w, len, keep)
}

/// The packed values v [nnz] = w[index] (dtype `F`).
pub fn gather<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    w: &Handle,
    index: &Handle,
    nnz: usize,
    len: usize,
) -> Handle {
    let v = client.empty(nnz.max(1) * size_of::<F>());
    if nnz == 0 {
        return v;
    }
    let (count, dim) = grid(client, nnz);
    sara_gather::launch::<F, R>(
        client,
        count,
        dim,
        arr(w, len),
        arr(index, nnz),
        arr(&v, nnz),
    );
    v
}

/// Copies `len` elements of `src` into `dst` (a fresh W_eff for [`scatter`] when the frozen
/// weight must stay as it is, as in the training runtime).
pub fn copy<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    src: &Handle,
    dst: &Handle,
    len: usize,
) {
    let (count, dim) = grid(client, len);
    sara_copy::launch::<F, R>(client, count, dim, arr(src, len), arr(dst, len));
}

/// Writes `v` into `w` at the mask positions, in place: `w` becomes W_eff.
pub fn scatter<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    w: &Handle,
    index: &Handle,
    v: &Handle,
    nnz: usize,
    len: usize,
) {
    if nnz == 0 {
        return;
    }
    let (count, dim) = grid(client, nnz);
    sara_scatter::launch::<F, R>(
        client,
        count,
        dim,
        arr(v, nnz),
        arr(index, nnz),
        arr(w, len),
    );
}

/// y = x·W_effᵀ + bias, with `w_eff` from [`scatter`].
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &SaraPlan,
    x: &Handle,
    w_eff: &Handle,
    bias: &Handle,
) -> Handle {
    dense::forward::<R, F>(client, &plan.linear(), x, w_eff, bias)
}

/// Gradients written by [`backward`], in the storage dtype.
#[derive(Clone, Debug)]
pub struct SaraGrads {
    /// dx [T, in] = dy·W_eff.
    pub dx: Handle,
    /// dv [nnz]: the weight gradient at the mask positions only.
    pub dv: Handle,
    /// dbias [out].
    pub dbias: Handle,
}

/// The backward for upstream gradient `dy` [T, out]: dx through W_eff, dv as the sampled product
/// at the mask positions, dbias. Allocates dx, dv, dbias and nothing else of size out·in.
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &SaraPlan,
    x: &Handle,
    w_eff: &Handle,
    index: &Handle,
    nnz: usize,
    dy: &Handle,
) -> SaraGrads {
    let lin = plan.linear();
    let dx = dense::backward_dx::<R, F>(client, &lin, w_eff, dy);
    let dbias = dense::backward_dbias::<R, F>(client, &lin, dy);
    let dv = client.empty(nnz.max(1) * size_of::<F>());
    if nnz > 0 {
        let (count, dim) = grid(client, nnz);
        sara_dv::launch::<F, R>(
            client,
            count,
            dim,
            arr(dy, plan.t * plan.n_out),
            arr(x, plan.t * plan.n_in),
            arr(index, nnz),
            arr(&dv, nnz),
            plan.n_in as u32,
            plan.n_out as u32,
        );
    }
    SaraGrads { dx, dv, dbias }
}

/// AdamW hyper-parameters of [`adamw_step`] (f64, as the reference's; rounded once for the
/// device).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// One AdamW step (`step` counts from 1) over the packed values `v` with f32 moments `m`, `s`
/// (each nnz long), in place.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    v: &Handle,
    dv: &Handle,
    m: &Handle,
    s: &Handle,
    nnz: usize,
    step: u32,
    h: &AdamW,
) {
    if nnz == 0 {
        return;
    }
    let hyper = [
        h.lr,
        h.beta1,
        1.0 - h.beta1,
        h.beta2,
        1.0 - h.beta2,
        h.eps,
        h.weight_decay,
        1.0 - h.beta1.powi(step as i32),
        1.0 - h.beta2.powi(step as i32),
    ]
    .map(|x| x as f32);
    let hyper = client.create_from_slice(f32::as_bytes(&hyper));
    let (count, dim) = grid(client, nnz);
    sara_adamw::launch::<F, R>(
        client,
        count,
        dim,
        arr(v, nnz),
        arr(dv, nnz),
        arr(m, nnz),
        arr(s, nnz),
        arr(&hyper, 9),
    );
}

/// The optimizer state after progressive re-masking: for the new mask `new_index` [new_nnz]
/// (selected on the current W_eff, whose retrained positions hold the trained values, so
/// [`gather`] gives the new packed values), the f32 moments (m, s) carried over from the old
/// mask `old_index` [old_nnz] where a position survives, and zero where it is new.
#[allow(clippy::too_many_arguments)]
pub fn carry_state<R: Runtime>(
    client: &ComputeClient<R>,
    new_index: &Handle,
    new_nnz: usize,
    old_index: &Handle,
    old_nnz: usize,
    old_m: &Handle,
    old_s: &Handle,
) -> (Handle, Handle) {
    let new_m = client.empty(new_nnz.max(1) * 4);
    let new_s = client.empty(new_nnz.max(1) * 4);
    if new_nnz > 0 {
        let (count, dim) = grid(client, new_nnz);
        sara_carry::launch::<R>(
            client,
            count,
            dim,
            arr(new_index, new_nnz),
            arr(old_index, old_nnz.max(1)),
            arr(old_m, old_nnz.max(1)),
            arr(old_s, old_nnz.max(1)),
            arr(&new_m, new_nnz),
            arr(&new_s, new_nnz),
            old_nnz as u32,
        );
    }
    (new_m, new_s)
}
