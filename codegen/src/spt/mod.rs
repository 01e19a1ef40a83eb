//! SPT sparse attention lowered to launch plans.
//!
//! Forward: `pq_encode`(q), `pq_encode`(k) → `spt_select` → `spt_attend_fwd` (scores, online
//! softmax and output fused; saves only the per-row log-sum-exp), or, with the schedule's
//! `fused = false`, the unfused fallback `spt_sddmm` → `spt_softmax` → `spt_spmm` (which holds
//! B·H·L·topk scores in scratch).
//! Backward: `spt_bwd_rows` (dq, p, ds) → `spt_keys_*` (the key-major view: per head, the kept
//! (query, slot) positions grouped by key in query order, by the counting sort of
//! [`crate::prim::group_rows`] — a query's kept keys are distinct —, or past shared memory the
//! radix sort of [`crate::prim::group`]) →
//! `spt_bwd_keys` (dk, dv). The row kernels run `lanes` lanes per row (the schedule's, capped at
//! the device's plane size).

pub mod block;
pub mod dense;
pub mod kernels;
pub mod select;

use crate::LowerError;
use crate::plan::build::buf;
use crate::plan::lower::Ctx;
use crate::plan::{Arg, BufId, Cubes, Elem, Kernel, Lowering, Pass, PlanBuilder};
use crate::prim;
use crate::select::row::RowShape;
use kernels::SptConfig;
use kernels_ir::pattern::{Pattern, Selector};
use kernels_ir::{Extent, KernelSpec};

/// The comptime config of a verified `spt-attention` or `pq-encode` spec's kernels.
pub fn config(spec: &KernelSpec) -> Result<SptConfig, LowerError> {
    let Pattern::PqTopK(p) = spec.pattern else {
        return Err(LowerError::Unsupported {
            op: spec.op,
            what: "a pattern other than pq-topk".into(),
        });
    };
    let d = spec.dim("D");
    Ok(SptConfig {
        d: d as u32,
        s: (d / p.sub_dim) as u32,
        e: p.codewords as u32,
        dc: p.sub_dim as u32,
        topk: spec.topk() as u32,
        causal: p.causal,
        clamp: p.clamp,
        adc: p.selector == Selector::PqAdc,
        block: 1,
    })
}

/// Lanes per row of the row kernels: the schedule's `lanes`, capped at the device's plane size
/// (lavapipe: 8, NVIDIA: 32); 1 where the plane size is not a power of two.
pub fn row_lanes(ctx: &Ctx<'_>, want: u32) -> u32 {
    let plane = ctx.opts.device.plane_size.clamp(1, 128);
    if plane.is_power_of_two() {
        plane.min(want.max(1))
    } else {
        1
    }
}

/// Cube shape of the plane-per-row kernels for `lanes`: `lanes` × rows-per-cube (128 units per
/// cube, at least one row), and the rows per cube.
pub fn plane_dims(lanes: u32) -> ((u32, u32, u32), u32) {
    let per_cube = (128 / lanes).max(1);
    ((lanes, per_cube, 1), per_cube)
}

/// Appends a plane-per-row launch over `rows` rows.
fn rows_launch(
    b: &mut PlanBuilder,
    name: &str,
    kernel: Kernel,
    rows: usize,
    lanes: u32,
    args: Vec<Arg>,
) {
    let (dim, _) = plane_dims(lanes);
    b.append(
        name,
        kernel,
        Cubes::Units(Extent::Fixed(rows), lanes as usize),
        dim,
        args,
    );
}

/// The plans of an `spt-attention` spec.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let cfg = config(ctx.spec)?;
    let (bn, h, l) = (ctx.dim("B"), ctx.dim("H"), ctx.dim("L"));
    let rows = bn * h * l;
    let (d, s) = (cfg.d as usize, cfg.s as usize);
    let qkv = [bn, h, l, d];
    let cb = [s, cfg.e as usize, cfg.dc as usize];
    let lanes = row_lanes(ctx, ctx.spec.schedule.lanes);
    let seq = Arg::U32(l as u32);
    let blocks = Blocks::of(ctx, &cfg);
    // The row kernels attend over `topk` slots per query row: the kept keys, or with blocks the
    // kb·G keys of the row's query block's kept blocks.
    let cfg = blocks.map_or(cfg, |bl| SptConfig {
        topk: bl.width as u32,
        ..cfg
    });
    let topk = cfg.topk as usize;
    let index_shape = ctx.spec.spt_index_shape();

    let mut f = ctx.builder(Pass::Forward);
    let q = f.input("q", Elem::Storage, &qkv);
    let k = f.input("k", Elem::Storage, &qkv);
    let v = f.input("v", Elem::Storage, &qkv);
    let codebook = f.input("codebook", Elem::Storage, &cb);
    let indices = f.declare("indices", Elem::I32, &index_shape, ctx.output_kept());
    let out = f.output("out", Elem::Storage, &qkv);
    let lse = f.declare("lse", Elem::F32, &[rows], ctx.kept());
    let sel = [q, k, codebook, indices];
    let keys = match blocks {
        None => {
            select_rows(ctx, &mut f, &cfg, sel, rows)?;
            indices
        }
        Some(bl) => {
            bl.select(ctx, &mut f, sel)?;
            bl.expand(&mut f, indices, rows)
        }
    };
    if ctx.spec.schedule.fused {
        rows_launch(
            &mut f,
            "spt_attend_fwd",
            Kernel::SptAttendFwd(cfg, lanes),
            rows,
            lanes,
            vec![
                buf(q),
                buf(k),
                buf(v),
                buf(keys),
                buf(out),
                buf(lse),
                seq.clone(),
            ],
        );
    } else {
        let scores = f.scratch("scores", Elem::F32, &[rows, topk]);
        f.elementwise(
            "spt_sddmm",
            Kernel::SptSddmm(cfg),
            rows,
            vec![buf(q), buf(k), buf(keys), buf(scores), seq.clone()],
        );
        f.elementwise(
            "spt_softmax",
            Kernel::SptSoftmax(cfg.topk),
            rows,
            vec![buf(scores), buf(keys), buf(lse)],
        );
        f.elementwise(
            "spt_spmm",
            Kernel::SptSpmm(cfg),
            rows,
            vec![buf(scores), buf(keys), buf(v), buf(out), seq.clone()],
        );
    }

    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let q = b.input("q", Elem::Storage, &qkv);
        let k = b.input("k", Elem::Storage, &qkv);
        let v = b.input("v", Elem::Storage, &qkv);
        let dout = b.input("dout", Elem::Storage, &qkv);
        let indices = b.saved("indices", Elem::I32, &index_shape);
        let keys = blocks.map_or(indices, |bl| bl.expand(&mut b, indices, rows));
        let lse = b.saved("lse", Elem::F32, &[rows]);
        let heads = bn * h;
        let probs = b.scratch("probs", Elem::F32, &[rows, topk]);
        let dscores = b.scratch("dscores", Elem::F32, &[rows, topk]);
        let offsets = b.scratch("key_offsets", Elem::U32, &[heads, l + 1]);
        let entries = b.scratch("key_entries", Elem::U32, &[rows, topk]);
        let dq = b.output("dq", Elem::Storage, &qkv);
        let dk = b.output("dk", Elem::Storage, &qkv);
        let dv = b.output("dv", Elem::Storage, &qkv);
        rows_launch(
            &mut b,
            "spt_bwd_rows",
            Kernel::SptBwdRows(cfg, lanes),
            rows,
            lanes,
            vec![
                buf(q),
                buf(k),
                buf(v),
                buf(keys),
                buf(lse),
                buf(dout),
                buf(dq),
                buf(probs),
                buf(dscores),
                seq.clone(),
            ],
        );
        let shared = prim::rows_fit(l + 1, &ctx.opts.device);
        key_index(&mut b, keys, [offsets, entries], heads, l, cfg.topk, shared);
        rows_launch(
            &mut b,
            "spt_bwd_keys",
            Kernel::SptBwdKeys(cfg, lanes),
            rows,
            lanes,
            vec![
                buf(q),
                buf(dout),
                buf(probs),
                buf(dscores),
                buf(offsets),
                buf(entries),
                buf(dk),
                buf(dv),
                seq,
            ],
        );
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}

/// Row-exact selection: each query row's codes and its `topk` best keys into `indices`.
fn select_rows(
    ctx: &Ctx<'_>,
    f: &mut PlanBuilder,
    cfg: &SptConfig,
    [q, k, codebook, indices]: [BufId; 4],
    rows: usize,
) -> Result<(), LowerError> {
    let (l, s) = (ctx.dim("L"), cfg.s as usize);
    let codes_q = f.scratch("codes_q", Elem::U32, &[rows, s]);
    let codes_k = f.scratch("codes_k", Elem::U32, &[rows, s]);
    for (x, codes) in [(q, codes_q), (k, codes_k)] {
        f.elementwise(
            "pq_encode",
            Kernel::PqEncode(*cfg),
            rows * s,
            vec![buf(x), buf(codebook), buf(codes)],
        );
    }
    let shape = RowShape::for_rows(l, select::key_bits(cfg));
    check_table(ctx, cfg, shape)?;
    f.append(
        "spt_select",
        Kernel::SptSelect(*cfg, shape),
        Cubes::Units(Extent::Fixed(rows * shape.units as usize), 1),
        shape.dim(),
        vec![
            buf(q),
            buf(codebook),
            buf(codes_q),
            buf(codes_k),
            buf(indices),
            Arg::U32(l as u32),
        ],
    );
    Ok(())
}

/// pq-adc keeps each query's score table q_s · codebook[s, w] in shared memory, beside the
/// selection's bins and scans: a typed error where the device's shared memory cannot hold it.
fn check_table(ctx: &Ctx<'_>, cfg: &SptConfig, shape: RowShape) -> Result<(), LowerError> {
    let (s, e) = (cfg.s as usize, cfg.e as usize);
    let table = if cfg.adc { s * e } else { 0 };
    let shared = 4 * (table + 256 + 2 * shape.units as usize + 2);
    if shared > ctx.opts.device.max_shared_bytes {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: format!(
                "pq-adc with {s} subspaces × {e} codewords on this device: the selection's \
                 per-row score table and bins take {shared} B of shared memory, the device has \
                 {} B per cube (use fewer codewords or a larger sub_dim)",
                ctx.opts.device.max_shared_bytes
            ),
        });
    }
    Ok(())
}

/// Block-granular selection (METHODS.md §7): G rows per block, ⌈L/G⌉ blocks per head, kb kept
/// key blocks per query block; the row kernels attend over `width` = kb·G slots per row.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    /// The selection kernels' config: `block` G, `topk` kb.
    cfg: SptConfig,
    /// Query (and key) blocks of all heads, heads·⌈L/G⌉.
    rows: usize,
    /// Key slots per query row, kb·G.
    width: usize,
    /// Sequence length L.
    l: usize,
}

impl Blocks {
    /// The blocks of a spec with `block` > 1; `None` for row-exact selection.
    fn of(ctx: &Ctx<'_>, cfg: &SptConfig) -> Option<Blocks> {
        let Pattern::PqTopK(p) = ctx.spec.pattern else {
            return None;
        };
        if p.block <= 1 {
            return None;
        }
        let l = ctx.dim("L");
        let kb = p.kept_blocks(cfg.topk as usize);
        Some(Blocks {
            cfg: SptConfig {
                topk: kb as u32,
                block: p.block as u32,
                ..*cfg
            },
            rows: ctx.dim("B") * ctx.dim("H") * p.blocks_of(l),
            width: kb * p.block,
            l,
        })
    }

    /// The block means and codes of q and k, then each query block's kept key blocks into
    /// `indices` [heads·⌈L/G⌉, kb].
    fn select(
        &self,
        ctx: &Ctx<'_>,
        f: &mut PlanBuilder,
        [q, k, codebook, indices]: [BufId; 4],
    ) -> Result<(), LowerError> {
        let (d, s) = (self.cfg.d as usize, self.cfg.s as usize);
        let seq = Arg::U32(self.l as u32);
        let means_q = f.scratch("block_means_q", Elem::F32, &[self.rows, d]);
        let means_k = f.scratch("block_means_k", Elem::F32, &[self.rows, d]);
        let codes_q = f.scratch("block_codes_q", Elem::U32, &[self.rows, s]);
        let codes_k = f.scratch("block_codes_k", Elem::U32, &[self.rows, s]);
        for (x, means, codes) in [(q, means_q, codes_q), (k, means_k, codes_k)] {
            f.elementwise(
                "spt_block_codes",
                Kernel::SptBlockCodes(self.cfg),
                self.rows * s,
                vec![buf(x), buf(codebook), buf(means), buf(codes), seq.clone()],
            );
        }
        let nb = self.l.div_ceil(self.cfg.block as usize);
        let shape = RowShape::for_rows(nb, select::key_bits(&self.cfg));
        check_table(ctx, &self.cfg, shape)?;
        f.append(
            "spt_block_select",
            Kernel::SptBlockSelect(self.cfg, shape),
            Cubes::Units(Extent::Fixed(self.rows * shape.units as usize), 1),
            shape.dim(),
            vec![
                buf(means_q),
                buf(codebook),
                buf(codes_q),
                buf(codes_k),
                buf(indices),
                seq,
            ],
        );
        Ok(())
    }

    /// Each query row's key list [rows, kb·G] from the kept blocks (a scratch buffer: the
    /// backward rebuilds it from the saved blocks rather than keeping it).
    fn expand(&self, b: &mut PlanBuilder, indices: BufId, rows: usize) -> BufId {
        let keys = b.scratch("block_keys", Elem::I32, &[rows, self.width]);
        b.elementwise(
            "spt_block_expand",
            Kernel::SptBlockExpand(self.cfg),
            rows * self.width,
            vec![buf(indices), buf(keys), Arg::U32(self.l as u32)],
        );
        keys
    }
}

/// The key-major view of the kept set: per head, the within-head positions i·topk + slot of
/// the kept entries grouped by key j, each group in query order, into `entries` [heads,
/// L·topk]; `offsets` [heads, L + 1] where each key's group starts, `offsets[head, L]` the
/// head's kept count. A query row's kept keys are distinct, so the grouping counts and fills in
/// shared memory row by row ([`prim::group_rows`]); where L + 1 counters do not fit shared
/// memory (`shared` false), by the radix sort of [`prim::group`] (dropped slots, j < 0, in the
/// head's last bin).
fn key_index(
    b: &mut PlanBuilder,
    indices: BufId,
    [offsets, entries]: [BufId; 2],
    heads: usize,
    l: usize,
    topk: u32,
    shared: bool,
) {
    let per_head = l * topk as usize;
    let out = prim::Grouped {
        values: entries,
        offsets,
        rank_of: None,
        modulus: per_head.max(1),
        divisor: 1,
    };
    if shared {
        prim::group_rows(b, "spt_keys", indices, heads, l, topk as usize, l + 1, out);
    } else {
        prim::group(b, "spt_keys", indices, heads, per_head, l + 1, out);
    }
}

/// The plan of a `pq-encode` spec: the codes [N, S] of the rows of x [N, D].
pub fn lower_encode(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let mut cfg = config(ctx.spec)?;
    cfg.topk = 0;
    let (n, s) = (ctx.dim("N"), cfg.s as usize);
    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[n, cfg.d as usize]);
    let codebook = f.input(
        "codebook",
        Elem::Storage,
        &[s, cfg.e as usize, cfg.dc as usize],
    );
    let codes = f.output("codes", Elem::U32, &[n, s]);
    f.elementwise(
        "pq_encode",
        Kernel::PqEncode(cfg),
        n * s,
        vec![buf(x), buf(codebook), buf(codes)],
    );
    Ok(Lowering {
        forward: f.finish(),
        backward: None,
    })
}

/// Dense attention on the device (every key kept), forward and backward, in the kernel style of
/// the sparse row kernels: the same-device baseline of the attention bench. The forward keeps
/// the per-row log-sum-exp; the backward computes `rowsum(dout ⊙ out)` first.
pub fn lower_dense(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let cfg = config(ctx.spec)?;
    let (bn, h, l) = (ctx.dim("B"), ctx.dim("H"), ctx.dim("L"));
    let rows = bn * h * l;
    let qkv = [bn, h, l, cfg.d as usize];
    let lanes = ctx.opts.device.plane_size.clamp(1, 128);
    let seq = Arg::U32(l as u32);
    let mut f = ctx.builder(Pass::Forward);
    let q = f.input("q", Elem::Storage, &qkv);
    let k = f.input("k", Elem::Storage, &qkv);
    let v = f.input("v", Elem::Storage, &qkv);
    let out = f.output("out", Elem::Storage, &qkv);
    let lse = f.declare("lse", Elem::F32, &[rows], ctx.kept());
    rows_launch(
        &mut f,
        "dense_attend_fwd",
        Kernel::DenseAttendFwd(cfg, lanes),
        rows,
        lanes,
        vec![buf(q), buf(k), buf(v), buf(out), buf(lse), seq.clone()],
    );
    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let q = b.input("q", Elem::Storage, &qkv);
        let k = b.input("k", Elem::Storage, &qkv);
        let v = b.input("v", Elem::Storage, &qkv);
        let dout = b.input("dout", Elem::Storage, &qkv);
        // The forward's output, read back by the backward (rowsum(dout ⊙ out)).
        let out = b.saved("out", Elem::Storage, &qkv);
        let lse = b.saved("lse", Elem::F32, &[rows]);
        let delta = b.scratch("delta", Elem::F32, &[rows]);
        let dq = b.output("dq", Elem::Storage, &qkv);
        let dk = b.output("dk", Elem::Storage, &qkv);
        let dv = b.output("dv", Elem::Storage, &qkv);
        rows_launch(
            &mut b,
            "dense_bwd_rows",
            Kernel::DenseBwdRows(cfg, lanes),
            rows,
            lanes,
            vec![
                buf(q),
                buf(k),
                buf(out),
                buf(lse),
                buf(v),
                buf(dout),
                buf(dq),
                buf(delta),
                seq.clone(),
            ],
        );
        rows_launch(
            &mut b,
            "dense_bwd_keys",
            Kernel::DenseBwdKeys(cfg, lanes),
            rows,
            lanes,
            vec![
                buf(q),
                buf(k),
                buf(v),
                buf(lse),
                buf(delta),
                buf(dout),
                buf(dk),
                buf(dv),
                seq,
            ],
        );
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}
