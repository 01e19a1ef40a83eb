//! SaRA (METHODS.md §4) lowered to launch plans: the mask of the smallest weights selected on the
//! device ([`crate::select`]: exact k-th value by radix select for a ratio — nnz known before the
//! plan runs — or a threshold, whose nnz the plan reads back once), the packed values, the
//! forward as the dense tile product over W_eff (a copy of the weight with the packed values
//! scattered into it), and a backward whose weight gradient is the tile product sampled at the
//! mask positions: no [out, in] gradient buffer exists at any point (extra memory O(nnz)).
//! The optimizer plans ([`adamw_plan`], [`remask_plan`]) are O(nnz) too.

pub mod kernels;

use crate::LowerError;
use crate::linear::{Linear, Weight, WeightGrad};
use crate::plan::build::buf;
use crate::plan::lower::Ctx;
use crate::plan::{Arg, BufId, Elem, Float, Kernel, LaunchPlan, Lowering, Pass, PlanBuilder, Role};
use crate::select::{self, Keep};
use kernels_ir::pattern::{Pattern, SaraSelect};
use kernels_ir::{DType, Extent, OpKind};

/// The mask rule of a SaRA pattern as a selection.
pub fn keep(select: SaraSelect, len: usize) -> Keep {
    match select {
        SaraSelect::Threshold(t) => Keep::Below(t),
        SaraSelect::Ratio(r) => Keep::Smallest((r * len as f64).floor() as usize),
    }
}

/// Appends the selection of the mask of `w` (`len` weights) by `rule` and returns the index
/// buffer `name` [nnz] (u32, ascending, with role `role`) and nnz's extent: fixed for a ratio,
/// read back once for a threshold.
pub fn select_mask(
    b: &mut PlanBuilder,
    w: BufId,
    len: usize,
    rule: SaraSelect,
    name: &str,
    role: Role,
) -> (BufId, Extent) {
    let keep = keep(rule, len);
    let (state, counts) = select::pivot(b, w, Float::Storage, len, keep, false, Role::Scratch);
    let nnz = match keep {
        Keep::Smallest(k) => Extent::Fixed(k.min(len)),
        Keep::Below(_) => {
            b.read_nnz(state, 2, len);
            Extent::Nnz
        }
    };
    let index = b.buffer(name, Elem::U32, vec![nnz], role);
    select::fill(b, w, len, state, counts, index);
    (index, nnz)
}

/// The plans of a `sara-linear` spec. With `mask_index` (and `v`) given by the caller — a
/// trained layer's fixed mask — no selection runs and nnz is the given length.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let Pattern::Sara(p) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than sara".into(),
        });
    };
    let (t, n_in, n_out) = (ctx.dim("T"), ctx.dim("in"), ctx.dim("out"));
    let len = n_in * n_out;
    let lin = Linear {
        t,
        n_in,
        n_out,
        shape: ctx.shape,
    };
    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[t, n_in]);
    let w = f.input("w", Elem::Storage, &[n_out, n_in]);
    let bias = f.input("bias", Elem::Storage, &[n_out]);
    let (index, nnz) = if ctx.opts.has("mask_index") {
        let n = ctx.opts.nnz.unwrap_or(0);
        let e = Extent::Fixed(n);
        (f.buffer("mask_index", Elem::U32, vec![e], Role::Input), e)
    } else {
        select_mask(&mut f, w, len, p.select, "mask_index", ctx.output_kept())
    };
    if nnz == Extent::Nnz {
        f.nnz_bound(len);
    }
    let v = if ctx.opts.has("v") {
        f.buffer("v", Elem::Storage, vec![nnz], Role::Input)
    } else {
        let v = f.buffer("v", Elem::Storage, vec![nnz], Role::Output);
        f.units(
            "gather",
            Kernel::Gather(),
            Float::Storage,
            nnz,
            vec![buf(w), buf(index), buf(v)],
        );
        v
    };
    let w_eff = f.declare("w_eff", Elem::Storage, &[n_out, n_in], ctx.kept());
    f.elementwise("copy", Kernel::Copy(), len, vec![buf(w), buf(w_eff)]);
    f.units(
        "scatter",
        Kernel::Scatter(),
        Float::Storage,
        nnz,
        vec![buf(v), buf(index), buf(w_eff)],
    );
    let y = f.output("y", Elem::Storage, &[t, n_out]);
    lin.forward(&mut f, "linear_fwd", x, &Weight::Dense(w_eff), bias, y);

    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[t, n_in]);
        let dy = b.input("dy", Elem::Storage, &[t, n_out]);
        let w_eff = b.saved("w_eff", Elem::Storage, &[n_out, n_in]);
        let role = if ctx.opts.has("mask_index") {
            Role::Input
        } else {
            Role::Saved
        };
        let index = b.buffer("mask_index", Elem::U32, vec![nnz], role);
        if nnz == Extent::Nnz {
            b.nnz_bound(len);
        }
        let dx = b.output("dx", Elem::Storage, &[t, n_in]);
        let dv = b.buffer("dv", Elem::Storage, vec![nnz], Role::Output);
        let dbias = b.output("dbias", Elem::Storage, &[n_out]);
        lin.backward_dx(&mut b, "linear_bwd_dx", dy, &Weight::Dense(w_eff), dx);
        lin.backward_dw(
            &mut b,
            "sara_bwd_dv",
            dy,
            x,
            &WeightGrad::Sampled { index, dv },
            None,
            dbias,
        );
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}

/// AdamW hyper-parameters of [`adamw_plan`] (f64, as the reference's; rounded once for the
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

/// One AdamW step (`step` counts from 1) over the packed values `v` [nnz] (storage dtype) with
/// gradient `dv` and f32 moments `m`, `s`, all updated in place (bound by the caller).
pub fn adamw_plan(dtype: DType, nnz: usize, step: u32, h: &AdamW) -> LaunchPlan {
    let mut b = PlanBuilder::named(OpKind::SaraLinear, "sara adamw step", Pass::Backward, dtype);
    let v = b.input("v", Elem::Storage, &[nnz]);
    let dv = b.input("dv", Elem::Storage, &[nnz]);
    let m = b.input("m", Elem::F32, &[nnz]);
    let s = b.input("s", Elem::F32, &[nnz]);
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
    let hyper = b.const_f32("hyper", hyper.to_vec());
    b.elementwise(
        "sara_adamw",
        Kernel::SaraAdamw(),
        nnz,
        vec![buf(v), buf(dv), buf(m), buf(s), buf(hyper)],
    );
    b.finish()
}

/// Progressive re-masking of an [out, in] = `shape` effective weight `w_eff` (storage dtype):
/// the new mask `mask_index` [nnz] by `rule`, the packed values `v` read from W_eff, and the
/// f32 moments `m`, `s` carried over from the old mask `old_index` [old_nnz] (with moments
/// `old_m`, `old_s`) where a position survives, zero where it is new.
pub fn remask_plan(
    dtype: DType,
    shape: [usize; 2],
    rule: SaraSelect,
    old_nnz: usize,
) -> LaunchPlan {
    let len = shape[0] * shape[1];
    let mut b = PlanBuilder::named(OpKind::SaraLinear, "sara re-mask", Pass::Forward, dtype);
    let w = b.input("w_eff", Elem::Storage, &shape);
    let old_index = b.input("old_index", Elem::U32, &[old_nnz]);
    let old_m = b.input("old_m", Elem::F32, &[old_nnz]);
    let old_s = b.input("old_s", Elem::F32, &[old_nnz]);
    let (index, nnz) = select_mask(&mut b, w, len, rule, "mask_index", Role::Output);
    let v = b.buffer("v", Elem::Storage, vec![nnz], Role::Output);
    let m = b.buffer("m", Elem::F32, vec![nnz], Role::Output);
    let s = b.buffer("s", Elem::F32, vec![nnz], Role::Output);
    b.units(
        "gather",
        Kernel::Gather(),
        Float::Storage,
        nnz,
        vec![buf(w), buf(index), buf(v)],
    );
    b.units(
        "sara_carry",
        Kernel::SaraCarry(),
        Float::Storage,
        nnz,
        vec![
            buf(index),
            buf(old_index),
            buf(old_m),
            buf(old_s),
            buf(m),
            buf(s),
            Arg::U32(old_nnz as u32),
        ],
    );
    if nnz == Extent::Nnz {
        b.nnz_bound(len);
    }
    b.finish()
}
