//! Monarch (METHODS.md §3) lowered to two block-diagonal products per pass on the tile program:
//! y = P₂·B₂·P₁·B₁·x with factors `w1` [k, q, p] and `w2` [l, s, r]. The "(k q) → (r l)"
//! permutation and the "(s l)"-interleaved output are folded into the operands' strides (the
//! intermediate u [N, k·q], f32, is read with column stride l; y is written with column stride
//! l): nothing is transposed in memory. u is scratch in a forward-only pass and kept for the
//! backward otherwise. Backward: du (dy through the second factor) → dx, dw1, and dw2 (from dy
//! and u); every product a tile program, every sum in a fixed order.

use crate::LowerError;
use crate::blockdiag::BlockDiag;
use crate::plan::lower::Ctx;
use crate::plan::{Elem, Lowering, Pass};
use crate::tile::{Dst, Operand, Src, Store};
use kernels_ir::pattern::Pattern;

/// The plans of a `monarch` spec.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let Pattern::Monarch(m) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than monarch".into(),
        });
    };
    let n = ctx.dim("N");
    let (n_in, inner, n_out) = (m.n_in(), m.inner(), m.n_out());
    let first = BlockDiag {
        n,
        blocks: m.k,
        pi: m.p,
        qo: m.q,
        shape: ctx.shape,
    };
    let second = BlockDiag {
        n,
        blocks: m.l,
        pi: m.r,
        qo: m.s,
        shape: ctx.shape,
    };
    let (p, q, l) = (m.p as u32, m.q as u32, m.l as u32);
    let (n_in32, inner32, n_out32) = (n_in as u32, inner as u32, n_out as u32);
    let (w1_shape, w2_shape) = ([m.k, m.q, m.p], [m.l, m.s, m.r]);

    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[n, n_in]);
    let w1 = f.input("w1", Elem::Storage, &w1_shape);
    let w2 = f.input("w2", Elem::Storage, &w2_shape);
    let u = f.declare("u", Elem::F32, &[n, inner], ctx.kept());
    let y = f.output("y", Elem::Storage, &[n, n_out]);
    // u[b, ki·q + qi] = Σ_pi w1[ki, qi, pi]·x[b, ki·p + pi]
    first.forward(
        &mut f,
        "monarch_fwd_first",
        Operand::strided(Src::storage(0), n_in32, 1, p),
        Src::storage(1),
        Store::strided(Dst::f32(0), inner32, 1, q),
        [&[x, w1], &[], &[], &[], &[u]],
    );
    // y[b, si·l + li] = Σ_ri w2[li, si, ri]·u[b, ri·l + li]
    second.forward(
        &mut f,
        "monarch_fwd_second",
        Operand::strided(Src::f32(0), inner32, l, 1),
        Src::storage(0),
        Store::strided(Dst::storage(0), n_out32, l, 1),
        [&[w2], &[u], &[], &[y], &[]],
    );
    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[n, n_in]);
        let w1 = b.input("w1", Elem::Storage, &w1_shape);
        let w2 = b.input("w2", Elem::Storage, &w2_shape);
        let u = b.saved("u", Elem::F32, &[n, inner]);
        let dy = b.input("dy", Elem::Storage, &[n, n_out]);
        let du = b.scratch("du", Elem::F32, &[n, inner]);
        let dx = b.output("dx", Elem::Storage, &[n, n_in]);
        let dw1 = b.output("dw1", Elem::Storage, &w1_shape);
        let dw2 = b.output("dw2", Elem::Storage, &w2_shape);
        // du[b, ri·l + li] = Σ_si dy[b, si·l + li]·w2[li, si, ri]
        second.backward_dx(
            &mut b,
            "monarch_bwd_du",
            Operand::strided(Src::storage(0), n_out32, l, 1),
            Src::storage(1),
            Store::strided(Dst::f32(0), inner32, l, 1),
            [&[dy, w2], &[], &[], &[], &[du]],
        );
        // dx[b, ki·p + pi] = Σ_qi du[b, ki·q + qi]·w1[ki, qi, pi]
        first.backward_dx(
            &mut b,
            "monarch_bwd_dx",
            Operand::strided(Src::f32(0), inner32, 1, q),
            Src::storage(0),
            Store::strided(Dst::storage(0), n_in32, 1, p),
            [&[w1], &[du], &[], &[dx], &[]],
        );
        // dw1[ki, qi, pi] = Σ_b du[b, ki·q + qi]·x[b, ki·p + pi]
        first.backward_dw(
            &mut b,
            "monarch_bwd_dw1",
            Operand::strided(Src::f32(0), 1, inner32, q),
            Operand::strided(Src::storage(0), 1, n_in32, p),
            Dst::storage(0),
            [&[x], &[du], &[], &[dw1], &[]],
        );
        // dw2[li, si, ri] = Σ_b dy[b, si·l + li]·u[b, ri·l + li]
        second.backward_dw(
            &mut b,
            "monarch_bwd_dw2",
            Operand::strided(Src::storage(0), l, n_out32, 1),
            Operand::strided(Src::f32(0), l, inner32, 1),
            Dst::storage(0),
            [&[dy], &[u], &[], &[dw2], &[]],
        );
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}
