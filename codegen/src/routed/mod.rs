//! The routed FFN (SPT's routed FFN, a general MoE) lowered to launch plans.
//!
//! Forward: `routed_router` (the logits x·wrᵀ + br, a tile program) → `routed_gate` (gates,
//! kept blocks) → grouping by block (`routed_group_*`: the
//! counting sort of [`crate::prim::group_rows`] — a token's blocks are distinct —, or past shared
//! memory the radix sort of [`crate::prim::group`]; each group in token order) →
//! `routed_up` (x·w1ᵀ + b1 and the activation over the kept pairs only) → `routed_down` (·w2ᵀ and
//! the gate's output coefficient, per pair) → `routed_combine` (the weighted un-permute, + b2).
//! Backward: `routed_bwd_hidden` → `routed_bwd_gate` (each pair's gate gradient, row sums of
//! dco/dci: [`crate::prim::row_sums`]) → `routed_bwd_router` (router logits) → `routed_bwd_dx` (per
//! pair) → `routed_bwd_dx_combine` (+ the router path), `routed_bwd_w1` (with db1 as its row
//! sums) and `routed_bwd_w2` (tiled per block), `routed_bwd_db2` and `routed_bwd_router_w` (dwr,
//! dbr: [`crate::prim::column_sums`], two-level column reductions). The six products are tile
//! programs with grouped rows (tiles scheduled across the variable-size groups on the device)
//! or a reduction over each block's group; only kept (token, block) pairs are computed.

pub mod kernels;

use crate::LowerError;
use crate::linear::{Linear, Weight};
use crate::plan::build::buf;
use crate::plan::lower::Ctx;
use crate::plan::{Arg, Elem, Kernel, Lowering, Pass};
use crate::prim;
use crate::tile::{Act, ActGrad, Dst, Gate, Operand, Src, Store, TileProgram, TileShape};
use kernels::RoutedConfig;
use kernels_ir::pattern::{Activation, GateMode, Pattern, Router};

/// The comptime config of a verified `routed-ffn` spec's kernels.
pub fn config(ctx: &Ctx<'_>) -> Result<RoutedConfig, LowerError> {
    let Pattern::Routed(r) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than routed".into(),
        });
    };
    Ok(RoutedConfig {
        dm: ctx.dim("d_model") as u32,
        bs: (ctx.dim("d_ff") / r.blocks) as u32,
        blocks: r.blocks as u32,
        top: r.top as u32,
        softmax: r.router == Router::Softmax,
        gate: match r.gate {
            GateMode::Output => 0,
            GateMode::None => 1,
            GateMode::SptLora => 2,
        },
        gelu: r.act == Activation::Gelu,
    })
}

/// The router product's tile: 32 × 32 (E columns pad to 32 rather than the schedule's tile_n,
/// and T/32 cubes fill the device from T ≈ 4k), the schedule's depth and mainloop, and the
/// widest load its 32-row slice allows.
fn router_shape(shape: TileShape) -> TileShape {
    let vector = (shape.tk * 32 / 256).clamp(1, shape.vector);
    TileShape {
        tm: 32,
        tn: 32,
        vector,
        ..shape
    }
}

/// The plans of a `routed-ffn` spec.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let Pattern::Routed(r) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than routed".into(),
        });
    };
    let cfg = config(ctx)?;
    let t = ctx.dim("T");
    let (dm, dff) = (ctx.dim("d_model"), ctx.dim("d_ff"));
    let (e_n, top, bs) = (r.blocks, r.top, dff / r.blocks);
    let pairs = t * top;
    let (dm32, bs32, dff32, e32) = (dm as u32, bs as u32, dff as u32, e_n as u32);
    let gate = Gate {
        gates: 0,
        scale: 1,
        blocks: e32,
        mode: cfg.gate,
    };
    let act = if cfg.gelu { Act::Gelu } else { Act::Relu };
    let shape = ctx.shape;

    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[t, dm]);
    let w1 = f.input("w1", Elem::Storage, &[dff, dm]);
    let b1 = f.input("b1", Elem::Storage, &[dff]);
    let w2 = f.input("w2", Elem::Storage, &[dm, dff]);
    let b2 = f.input("b2", Elem::Storage, &[dm]);
    let wr = f.input("wr", Elem::Storage, &[e_n, dm]);
    let br = f.input("br", Elem::Storage, &[e_n]);
    let scale = f.const_f32("gate_scale", vec![r.gate_scale as f32]);
    let kept = ctx.kept();
    let gates = f.declare("gates", Elem::F32, &[t, e_n], kept.clone());
    let blocks = f.declare("blocks", Elem::I32, &[t, top], ctx.output_kept());
    let offsets = f.declare("offsets", Elem::U32, &[e_n + 1], kept.clone());
    let pair_token = f.declare("pair_token", Elem::U32, &[pairs], kept.clone());
    let slot_of = f.declare("slot_of", Elem::U32, &[pairs], kept.clone());
    let pre = f.declare("pre", Elem::F32, &[pairs, bs], kept.clone());
    let h = f.declare("h", Elem::F32, &[pairs, bs], kept.clone());
    let cout = f.declare("cout", Elem::F32, &[pairs], kept);
    let zp = f.scratch("zp", Elem::F32, &[pairs, dm]);
    let y = f.output("y", Elem::Storage, &[t, dm]);
    // The router logits x·wrᵀ + br [T, E] as a tiled product (coalesced reads, cubes over T),
    // then the gates and the kept blocks per token.
    let router = Linear {
        t,
        n_in: dm,
        n_out: e_n,
        shape: router_shape(shape),
    };
    router.forward(&mut f, "routed_router", x, &Weight::Dense(wr), br, gates);
    f.elementwise(
        "routed_gate",
        Kernel::RoutedGate(cfg),
        t,
        vec![buf(gates), buf(blocks)],
    );
    // Group the kept pairs by block, each group in token order: a stable counting sort (a
    // token's kept blocks are distinct).
    let grouped = prim::Grouped {
        values: pair_token,
        offsets,
        rank_of: Some(slot_of),
        modulus: pairs.max(1),
        divisor: top,
    };
    if prim::rows_fit(e_n + 1, &ctx.opts.device) {
        prim::group_rows(&mut f, "routed_group", blocks, 1, t, top, e_n + 1, grouped);
    } else {
        prim::group(&mut f, "routed_group", blocks, 1, pairs, e_n + 1, grouped);
    }
    // pre = x_t·w1[e·bs + j] + b1; h = act(c_in·pre); cout = c_out, per pair.
    let mut a = Operand::strided(Src::storage(0), dm32, 1, 0);
    a.gather_mn = true;
    let up = TileProgram::new(
        shape,
        bs32,
        a,
        Operand::strided(Src::storage(1), dm32, 1, bs32 * dm32),
        Store::rows(Dst::f32(1), bs32),
    )
    .grouped_rows(e32, 1)
    .gather(0)
    .epilogue(|e| {
        e.gate = Some(gate);
        e.bias = Some((2, bs32));
        e.pre = Some(0);
        e.act = act;
        e.cout = Some(2);
    });
    let slots = up.group_slots(pairs, e_n);
    let up_cols = up.column_tiles();
    f.tile(
        "routed_up",
        up,
        [
            &[x, w1, b1],
            &[gates, scale],
            &[pair_token, offsets],
            &[],
            &[pre, h, cout],
        ],
        pairs,
        dm,
        (slots, up_cols, 1),
    );
    // zp[p, o] = c_out · Σ_j h[p, j]·w2[o, e·bs + j]
    let down = TileProgram::new(
        shape,
        dm32,
        Operand::strided(Src::f32(2), bs32, 1, 0),
        Operand::strided(Src::storage(0), dff32, 1, bs32),
        Store::rows(Dst::f32(0), dm32),
    )
    .grouped_rows(e32, 1)
    .gather(0)
    .epilogue(|e| {
        e.gate = Some(gate);
        e.scale_out = true;
    });
    let down_cols = down.column_tiles();
    f.tile(
        "routed_down",
        down,
        [
            &[w2],
            &[gates, scale, h],
            &[pair_token, offsets],
            &[],
            &[zp],
        ],
        pairs,
        bs,
        (slots, down_cols, 1),
    );
    f.elementwise(
        "routed_combine",
        Kernel::RoutedCombine(cfg),
        t * dm,
        vec![buf(zp), buf(b2), buf(slot_of), buf(y)],
    );

    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[t, dm]);
        let w1 = b.input("w1", Elem::Storage, &[dff, dm]);
        let w2 = b.input("w2", Elem::Storage, &[dm, dff]);
        let wr = b.input("wr", Elem::Storage, &[e_n, dm]);
        let dy = b.input("dy", Elem::Storage, &[t, dm]);
        let scale = b.const_f32("gate_scale", vec![r.gate_scale as f32]);
        let gates = b.saved("gates", Elem::F32, &[t, e_n]);
        let blocks = b.saved("blocks", Elem::I32, &[t, top]);
        let offsets = b.saved("offsets", Elem::U32, &[e_n + 1]);
        let pair_token = b.saved("pair_token", Elem::U32, &[pairs]);
        let slot_of = b.saved("slot_of", Elem::U32, &[pairs]);
        let pre = b.saved("pre", Elem::F32, &[pairs, bs]);
        let h = b.saved("h", Elem::F32, &[pairs, bs]);
        let cout = b.saved("cout", Elem::F32, &[pairs]);
        let dpre = b.scratch("dpre", Elem::F32, &[pairs, bs]);
        let dco = b.scratch("dco", Elem::F32, &[pairs, bs]);
        let dci = b.scratch("dci", Elem::F32, &[pairs, bs]);
        let dlogit = b.scratch("dlogit", Elem::F32, &[t, e_n]);
        let dgate = b.scratch("dgate", Elem::F32, &[pairs]);
        let zdx = b.scratch("zdx", Elem::F32, &[pairs, dm]);
        let dx = b.output("dx", Elem::Storage, &[t, dm]);
        let dw1 = b.output("dw1", Elem::Storage, &[dff, dm]);
        let db1 = b.output("db1", Elem::Storage, &[dff]);
        let dw2 = b.output("dw2", Elem::Storage, &[dm, dff]);
        let db2 = b.output("db2", Elem::Storage, &[dm]);
        let dwr = b.output("dwr", Elem::Storage, &[e_n, dm]);
        let dbr = b.output("dbr", Elem::Storage, &[e_n]);
        // w2dy = Σ_o dy[t, o]·w2[o, e·bs + j]; dpre, dco, dci through the activation's backward.
        let mut a = Operand::strided(Src::storage(0), dm32, 1, 0);
        a.gather_mn = true;
        let hidden = TileProgram::new(
            shape,
            bs32,
            a,
            Operand::strided(Src::storage(1), 1, dff32, bs32),
            Store::rows(Dst::f32(0), bs32),
        )
        .grouped_rows(e32, 1)
        .gather(0)
        .epilogue(|e| {
            e.gate = Some(gate);
            e.act_grad = Some(ActGrad {
                pre: 2,
                h: 3,
                dco: 1,
                dci: 2,
                gelu: cfg.gelu,
            });
        });
        let slots = hidden.group_slots(pairs, e_n);
        let cols = hidden.column_tiles();
        b.tile(
            "routed_bwd_hidden",
            hidden,
            [
                &[dy, w2],
                &[gates, scale, pre, h],
                &[pair_token, offsets],
                &[],
                &[dpre, dco, dci],
            ],
            pairs,
            dm,
            (slots, cols, 1),
        );
        // Each kept pair's gate gradient before the gate scale: the row sums of dco (+ dci).
        if cfg.gate != 1 {
            let dci = (cfg.gate == 2).then_some(dci);
            prim::row_sums(&mut b, "routed_bwd_gate", dco, dci, pairs, bs, dgate);
        }
        b.elementwise(
            "routed_bwd_router",
            Kernel::RoutedBwdRouter(cfg),
            t,
            vec![
                buf(gates),
                buf(blocks),
                buf(slot_of),
                buf(dgate),
                buf(dlogit),
                Arg::F32(r.gate_scale as f32),
            ],
        );
        // zdx[p, i] = Σ_j dpre[p, j]·w1[e·bs + j, i]
        let dxp = TileProgram::new(
            shape,
            dm32,
            Operand::strided(Src::f32(0), bs32, 1, 0),
            Operand::strided(Src::storage(0), 1, dm32, bs32 * dm32),
            Store::rows(Dst::f32(0), dm32),
        )
        .grouped_rows(e32, 0);
        let cols = dxp.column_tiles();
        b.tile(
            "routed_bwd_dx",
            dxp,
            [&[w1], &[dpre], &[offsets], &[], &[zdx]],
            pairs,
            bs,
            (slots, cols, 1),
        );
        b.elementwise(
            "routed_bwd_dx_combine",
            Kernel::RoutedBwdDxCombine(cfg),
            t * dm,
            vec![buf(zdx), buf(wr), buf(slot_of), buf(dlogit), buf(dx)],
        );
        // dw1[e·bs + j, i] = Σ_{p in e} dpre[p, j]·x[t_p, i]; db1 = its row sums.
        let mut bx = Operand::strided(Src::storage(0), 1, dm32, 0);
        bx.gather_k = true;
        let w1p = TileProgram::new(
            shape,
            dm32,
            Operand::strided(Src::f32(0), 1, bs32, 0),
            bx,
            Store::strided(Dst::storage(0), dm32, 1, bs32 * dm32),
        )
        .grouped_reduce(1)
        .gather(0)
        .epilogue(|e| e.row_sums = Some((Dst::storage(1), bs32)));
        let grid = (w1p.row_tiles(bs), w1p.column_tiles(), e32);
        b.tile(
            "routed_bwd_w1",
            w1p,
            [&[x], &[dpre], &[pair_token, offsets], &[dw1, db1], &[]],
            bs,
            0,
            grid,
        );
        // dw2[o, e·bs + j] = Σ_{p in e} dy[t_p, o]·c_out(p)·h[p, j]
        let mut ady = Operand::strided(Src::storage(0), 1, dm32, 0);
        ady.gather_k = true;
        let mut bh = Operand::strided(Src::f32(0), 1, bs32, 0);
        bh.scale_k = Some(1);
        let w2p = TileProgram::new(
            shape,
            bs32,
            ady,
            bh,
            Store::strided(Dst::storage(0), dff32, 1, bs32),
        )
        .grouped_reduce(1)
        .gather(0);
        let grid = (w2p.row_tiles(dm), w2p.column_tiles(), e32);
        b.tile(
            "routed_bwd_w2",
            w2p,
            [&[dy], &[h, cout], &[pair_token, offsets], &[dw2], &[]],
            dm,
            0,
            grid,
        );
        prim::column_sums(&mut b, "routed_bwd_db2", dy, None, t, dm, db2, None);
        prim::column_sums(
            &mut b,
            "routed_bwd_router_w",
            x,
            Some((dlogit, e_n)),
            t,
            dm,
            dwr,
            Some(dbr),
        );
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}
