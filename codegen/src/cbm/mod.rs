//! The Sparse-CBM head lowered to launch plans. Forward: the concept layer z = x·wcᵀ (a tile
//! program, f32) → the per-row top-k selection (`row_topk` on z + noise) → `cbm_logits` reading
//! only the kept concepts. Backward: `cbm_bwd_dz` → dwh = dlogitsᵀ·(keep ⊙ z) and
//! dwc = dzᵀ·x (tile programs) → `cbm_bwd_dx` over the kept concepts. The selection is not
//! differentiated.

pub mod kernels;

use crate::LowerError;
use crate::plan::build::buf;
use crate::plan::lower::Ctx;
use crate::plan::{Elem, Kernel, Lowering, Pass};
use crate::select::{self, kernels::TopkConfig};
use crate::tile::{Dst, Operand, Src, Store, TileProgram};
use kernels::CbmConfig;
use kernels_ir::pattern::Pattern;

/// The plans of a `cbm-head` spec; `noise` is read when the caller binds it.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let Pattern::Cbm(p) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than cbm".into(),
        });
    };
    let (b_n, c, k) = (ctx.dim("B"), ctx.dim("C"), ctx.dim("K"));
    let topk = if p.topk == 0 { c } else { p.topk.min(c) };
    let cfg = CbmConfig {
        c: c as u32,
        k: k as u32,
        topk: topk as u32,
    };
    let (c32, k32) = (c as u32, k as u32);
    let noise_given = ctx.opts.has("noise");
    let shape = ctx.shape;

    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[b_n, c]);
    let wc = f.input("wc", Elem::Storage, &[c, c]);
    let wh = f.input("wh", Elem::Storage, &[k, c]);
    let noise = if noise_given {
        f.input("noise", Elem::Storage, &[b_n, c])
    } else {
        f.zeros("noise", Elem::Storage, &[1])
    };
    let z = f.declare("z", Elem::F32, &[b_n, c], ctx.output_kept());
    let kept = f.declare("kept", Elem::U32, &[b_n, topk], ctx.kept());
    let logits = f.output("logits", Elem::Storage, &[b_n, k]);
    // z[b, j] = Σ_i x[b, i]·wc[j, i]
    let concepts = TileProgram::new(
        shape,
        c32,
        Operand::strided(Src::storage(0), c32, 1, 0),
        Operand::strided(Src::storage(1), c32, 1, 0),
        Store::rows(Dst::f32(0), c32),
    );
    let grid = (concepts.row_tiles(b_n), concepts.column_tiles(), 1);
    f.tile(
        "cbm_concepts",
        concepts,
        [&[x, wc], &[], &[], &[], &[z]],
        b_n,
        c,
        grid,
    );
    select::row_topk(
        &mut f,
        "cbm_select",
        TopkConfig {
            c: c32,
            topk: topk as u32,
            base: true,
            term: noise_given,
            abs: false,
            flat: false,
        },
        b_n,
        vec![buf(z), buf(noise), buf(kept)],
    );
    f.elementwise(
        "cbm_logits",
        Kernel::CbmLogits(cfg),
        b_n * k,
        vec![buf(z), buf(wh), buf(kept), buf(logits)],
    );

    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[b_n, c]);
        let wc = b.input("wc", Elem::Storage, &[c, c]);
        let wh = b.input("wh", Elem::Storage, &[k, c]);
        let dlogits = b.input("dlogits", Elem::Storage, &[b_n, k]);
        let z = b.saved("z", Elem::F32, &[b_n, c]);
        let kept = b.saved("kept", Elem::U32, &[b_n, topk]);
        let dz = b.scratch("dz", Elem::F32, &[b_n, c]);
        let zs = b.scratch("zs", Elem::F32, &[b_n, c]);
        let dx = b.output("dx", Elem::Storage, &[b_n, c]);
        let dwc = b.output("dwc", Elem::Storage, &[c, c]);
        let dwh = b.output("dwh", Elem::Storage, &[k, c]);
        b.elementwise(
            "cbm_bwd_dz",
            Kernel::CbmBwdDz(cfg),
            b_n * c,
            vec![buf(z), buf(wh), buf(kept), buf(dlogits), buf(dz), buf(zs)],
        );
        // dwh[k, j] = Σ_b dlogits[b, k]·zs[b, j]
        let dwh_p = TileProgram::new(
            shape,
            c32,
            Operand::strided(Src::storage(0), 1, k32, 0),
            Operand::strided(Src::f32(0), 1, c32, 0),
            Store::rows(Dst::storage(0), c32),
        );
        let grid = (dwh_p.row_tiles(k), dwh_p.column_tiles(), 1);
        b.tile(
            "cbm_bwd_dwh",
            dwh_p,
            [&[dlogits], &[zs], &[], &[dwh], &[]],
            k,
            b_n,
            grid,
        );
        // dwc[j, i] = Σ_b dz[b, j]·x[b, i]
        let dwc_p = TileProgram::new(
            shape,
            c32,
            Operand::strided(Src::f32(0), 1, c32, 0),
            Operand::strided(Src::storage(0), 1, c32, 0),
            Store::rows(Dst::storage(0), c32),
        );
        let grid = (dwc_p.row_tiles(c), dwc_p.column_tiles(), 1);
        b.tile(
            "cbm_bwd_dwc",
            dwc_p,
            [&[x], &[dz], &[], &[dwc], &[]],
            c,
            b_n,
            grid,
        );
        b.elementwise(
            "cbm_bwd_dx",
            Kernel::CbmBwdDx(cfg),
            b_n * c,
            vec![buf(wc), buf(kept), buf(dz), buf(dx)],
        );
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}
