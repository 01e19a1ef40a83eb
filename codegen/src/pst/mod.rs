//! PST (METHODS.md §5) lowered to launch plans: the score from the frozen weight and the
//! low-rank factors, the exact k-th value selection of the ⌊n·sparsity⌋ lowest scores on the
//! device ([`crate::select`], signed order over the f32 score, ties → lower flat index) to a
//! pivot state, the masked product whose tile program stages M ⊙ W′ from the factors (no masked
//! copy), and the straight-through backward: dx through the same prologue, dW′ and dS from the
//! weight-gradient product's PST epilogue (dbias as its row sums), then the low-rank gradients.

pub mod kernels;

use crate::LowerError;
use crate::linear::{Linear, Weight, WeightGrad};
use crate::plan::build::buf;
use crate::plan::lower::Ctx;
use crate::plan::{Arg, Cubes, Elem, Float, Kernel, Lowering, Pass, Role};
use crate::prim;
use crate::select::{self, Keep};
use kernels::PstConfig;
use kernels_ir::pattern::Pattern;

/// The plans of a `pst-linear` spec.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let Pattern::Pst(p) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than pst".into(),
        });
    };
    let (t, i, o) = (ctx.dim("T"), ctx.dim("in"), ctx.dim("out"));
    let (r, rm) = (p.rank, p.mask_rank);
    let cfg = PstConfig {
        n_in: i as u32,
        n_out: o as u32,
        rank: r as u32,
        mrank: rm as u32,
    };
    let lin = Linear {
        t,
        n_in: i,
        n_out: o,
        shape: ctx.shape,
    };
    let zeros = ((i * o) as f64 * p.sparsity).floor() as usize;
    let coef_values = vec![p.alpha1 as f32, p.alpha2 as f32, p.beta as f32];
    let factor_shapes: [(&str, Vec<usize>); 7] = [
        ("w", vec![o, i]),
        ("u", vec![o, r]),
        ("v", vec![r, i]),
        ("ma", vec![o, rm]),
        ("mb", vec![rm, i]),
        ("mr", vec![o]),
        ("mc", vec![i]),
    ];

    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[t, i]);
    let bias = f.input("bias", Elem::Storage, &[o]);
    let factors = factor_shapes
        .clone()
        .map(|(n, s)| f.input(n, Elem::Storage, &s));
    let coef = f.const_f32("coef", coef_values.clone());
    let score = f.scratch("score", Elem::F32, &[o, i]);
    let mut args: Vec<_> = factors.iter().map(|&b| buf(b)).collect();
    args.extend([buf(coef), buf(score)]);
    f.elementwise("pst_score", Kernel::PstScore(cfg), o * i, args);
    let (state, _) = select::pivot(
        &mut f,
        score,
        Float::F32,
        o * i,
        Keep::Smallest(zeros),
        true,
        ctx.kept(),
    );
    let weight = Weight::Pst {
        factors,
        coef,
        state,
        rank: r as u32,
        mrank: rm as u32,
    };
    let y = f.output("y", Elem::Storage, &[t, o]);
    lin.forward(&mut f, "pst_fwd", x, &weight, bias, y);
    if !ctx.backward {
        let mask = f.output("mask", Elem::Storage, &[o, i]);
        f.elementwise(
            "pst_mask",
            Kernel::PstMask(),
            o * i,
            vec![buf(score), buf(state), buf(mask)],
        );
    }

    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[t, i]);
        let factors = factor_shapes.map(|(n, s)| b.input(n, Elem::Storage, &s));
        let dy = b.input("dy", Elem::Storage, &[t, o]);
        let coef = b.const_f32("coef", coef_values);
        let state = b.declare("select_state", Elem::U32, &[4], Role::Saved);
        let weight = Weight::Pst {
            factors,
            coef,
            state,
            rank: r as u32,
            mrank: rm as u32,
        };
        let dx = b.output("dx", Elem::Storage, &[t, i]);
        let dbias = b.output("dbias", Elem::Storage, &[o]);
        let dwp = b.scratch("dwp", Elem::F32, &[o, i]);
        let ds = b.scratch("ds", Elem::F32, &[o, i]);
        let grads = [
            ("du", vec![o, r]),
            ("dv", vec![r, i]),
            ("dma", vec![o, rm]),
            ("dmb", vec![rm, i]),
            ("dmr", vec![o]),
            ("dmc", vec![i]),
        ]
        .map(|(n, s)| b.output(n, Elem::Storage, &s));
        let [du, dvv, dma, dmb, dmr, dmc] = grads;
        lin.backward_dx(&mut b, "pst_bwd_dx", dy, &weight, dx);
        lin.backward_dw(
            &mut b,
            "pst_bwd_w",
            dy,
            x,
            &WeightGrad::Pst { dwp, ds },
            Some(&weight),
            dbias,
        );
        let [_, u, v, ma, mb, _, _] = factors;
        // The low-rank gradients: per output row (over the inputs) and per input column (over
        // the outputs), each a two-level reduction in a fixed order.
        for (rows, name, lines, along, fu, fa, outs) in [
            (true, "pst_bwd_rows", o, i, v, mb, [du, dma, dmr]),
            (false, "pst_bwd_cols", i, o, u, ma, [dvv, dmb, dmc]),
        ] {
            let chunk = prim::chunk_rows(along, lines * (r + rm + 1));
            let chunks = along.div_ceil(chunk).max(1);
            let partial = b.scratch(
                &format!("{name}_partial"),
                Elem::F32,
                &[chunks, lines, r + rm + 1],
            );
            b.append(
                &format!("{name}_partial"),
                Kernel::PstGradPartial(cfg, rows),
                Cubes::Fixed(lines.div_ceil(64) as u32, chunks as u32, 1),
                (64, 1, 1),
                vec![
                    buf(dwp),
                    buf(ds),
                    buf(fu),
                    buf(fa),
                    buf(partial),
                    Arg::U32(chunk as u32),
                ],
            );
            let [g1, g2, g3] = outs;
            b.elementwise(
                &format!("{name}_finish"),
                Kernel::PstGradFinish(cfg, rows),
                lines * (r + rm + 1),
                vec![
                    buf(partial),
                    buf(coef),
                    buf(g1),
                    buf(g2),
                    buf(g3),
                    Arg::U32(chunks as u32),
                ],
            );
        }
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}
