//! The dense linear layer `dense-linear` (y = x·Wᵀ + bias and its backward): the baseline the
//! structured and sparse linears are benchmarked against on the same device, lowered to the
//! same tile programs as they are ([`crate::linear`]).

use crate::LowerError;
use crate::linear::{Linear, Weight, WeightGrad};
use crate::plan::lower::Ctx;
use crate::plan::{Elem, Lowering, Pass};

/// The plans of a `dense-linear` spec.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let (t, n_in, n_out) = (ctx.dim("T"), ctx.dim("in"), ctx.dim("out"));
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
    let y = f.output("y", Elem::Storage, &[t, n_out]);
    lin.forward(&mut f, "linear_fwd", x, &Weight::Dense(w), bias, y);
    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[t, n_in]);
        let w = b.input("w", Elem::Storage, &[n_out, n_in]);
        let dy = b.input("dy", Elem::Storage, &[t, n_out]);
        let dx = b.output("dx", Elem::Storage, &[t, n_in]);
        let dw = b.output("dw", Elem::Storage, &[n_out, n_in]);
        let dbias = b.output("dbias", Elem::Storage, &[n_out]);
        lin.backward_dx(&mut b, "linear_bwd_dx", dy, &Weight::Dense(w), dx);
        lin.backward_dw(
            &mut b,
            "linear_bwd_dw",
            dy,
            x,
            &WeightGrad::Dense(dw),
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
