//! N:M semi-structured sparsity (`nm-linear`, METHODS.md §8) lowered through the compiler's
//! building blocks alone: the mask is the per-row top-k primitive over |W| in groups of m
//! (`select::row_topk`, flat indices), the packed values a gather, and the three products tile programs
//! whose weight operand is the packed values at their flat positions (the `Packed` prologue:
//! W_eff is never formed) and whose weight gradient is sampled at the mask — never an [out, in]
//! gradient. No kernel of its own.

use crate::LowerError;
use crate::linear::{Linear, Weight, WeightGrad};
use crate::plan::build::buf;
use crate::plan::lower::Ctx;
use crate::plan::{Elem, Float, Kernel, Lowering, Pass, Role};
use crate::select::{self, kernels::TopkConfig};
use kernels_ir::Extent;
use kernels_ir::pattern::Pattern;

/// The plans of an `nm-linear` spec. With `mask_index` given by the caller (a trained layer's
/// fixed mask) no selection runs and `w` is not read.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let Pattern::Nm(nm) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than nm".into(),
        });
    };
    let (t, n_in, n_out) = (ctx.dim("T"), ctx.dim("in"), ctx.dim("out"));
    let groups = n_out * n_in / nm.m;
    let kept = groups * nm.n;
    let lin = Linear {
        t,
        n_in,
        n_out,
        shape: ctx.shape,
    };
    let given_mask = ctx.opts.has("mask_index");
    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[t, n_in]);
    let bias = f.input("bias", Elem::Storage, &[n_out]);
    let index = if given_mask {
        f.input("mask_index", Elem::U32, &[kept])
    } else {
        let w = f.input("w", Elem::Storage, &[n_out, n_in]);
        let none = f.zeros("no_base", Elem::F32, &[1]);
        let index = f.declare("mask_index", Elem::U32, &[kept], ctx.output_kept());
        select::row_topk(
            &mut f,
            "nm_select",
            TopkConfig {
                c: nm.m as u32,
                topk: nm.n as u32,
                base: false,
                term: true,
                abs: true,
                flat: true,
            },
            groups,
            vec![buf(none), buf(w), buf(index)],
        );
        if !ctx.opts.has("v") {
            let v = f.output("v", Elem::Storage, &[kept]);
            f.units(
                "gather",
                Kernel::Gather(),
                Float::Storage,
                Extent::Fixed(kept),
                vec![buf(w), buf(index), buf(v)],
            );
        }
        index
    };
    let v = match f.find("v") {
        Some(v) => v,
        None => f.input("v", Elem::Storage, &[kept]),
    };
    let packed = |values, index| Weight::Packed {
        values,
        index,
        keep: nm.n as u32,
        group: nm.m as u32,
    };
    let y = f.output("y", Elem::Storage, &[t, n_out]);
    lin.forward(&mut f, "nm_fwd", x, &packed(v, index), bias, y);

    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[t, n_in]);
        let dy = b.input("dy", Elem::Storage, &[t, n_out]);
        let role = if given_mask || ctx.opts.has("v") {
            Role::Input
        } else {
            Role::Saved
        };
        // The forward's packed values: given by the caller, or its output `v`.
        let v = b.declare("v", Elem::Storage, &[kept], role);
        let index_role = if given_mask { Role::Input } else { Role::Saved };
        let index = b.declare("mask_index", Elem::U32, &[kept], index_role);
        let dx = b.output("dx", Elem::Storage, &[t, n_in]);
        let dv = b.output("dv", Elem::Storage, &[kept]);
        let dbias = b.output("dbias", Elem::Storage, &[n_out]);
        lin.backward_dx(&mut b, "nm_bwd_dx", dy, &packed(v, index), dx);
        lin.backward_dw(
            &mut b,
            "nm_bwd_dv",
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
