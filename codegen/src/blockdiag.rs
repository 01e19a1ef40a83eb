//! One block-diagonal linear map (`block-diag-linear`): y [N, out] with
//! `y[:, b·qo + o] = Σ_j w[b, o, j] · x[:, b·pi + j]` for blocks b, w [blocks, qo, pi]. Each
//! block is one batch index (cube z) of a tile program: the block's slice of x, of w and of y are
//! addressed through the batch strides, never copied. Backward: dx (per block dy_b · w_b) and dw
//! (per block dy_bᵀ · x_b, over the rows in order).

use crate::LowerError;
use crate::plan::lower::Ctx;
use crate::plan::{BufId, Elem, Lowering, Pass, PlanBuilder};
use crate::tile::{Dst, Operand, Src, Store, TileProgram, TileShape};

/// One block-diagonal product of `n` rows: `blocks` blocks of `qo` × `pi`, A and C addressed
/// with the given strides (the map itself, or Monarch's factors with their permutations folded
/// into the strides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDiag {
    /// Rows.
    pub n: usize,
    /// Blocks.
    pub blocks: usize,
    /// Input features per block.
    pub pi: usize,
    /// Output features per block.
    pub qo: usize,
    /// Mainloop shape.
    pub shape: TileShape,
}

impl BlockDiag {
    fn grid(&self, prog: &TileProgram, m: usize) -> (u32, u32, u32) {
        (prog.row_tiles(m), prog.column_tiles(), self.blocks as u32)
    }

    /// out[r, block b, o] = Σ_j w[b, o, j]·in[r, block b, j], with `a` the input operand
    /// (strides over (row, j, b)) and `store` the output's addressing; `w` [blocks, qo, pi].
    /// Buffer lists: `ins`/`ins32` hold the input and the weight (slots given by the operands).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        b: &mut PlanBuilder,
        name: &str,
        a: Operand,
        w: Src,
        store: Store,
        lists: [&[BufId]; 5],
    ) {
        let (pi, qo) = (self.pi as u32, self.qo as u32);
        let bop = Operand::strided(w, pi, 1, qo * pi);
        let prog = TileProgram::new(self.shape, qo, a, bop, store);
        let grid = self.grid(&prog, self.n);
        b.tile(name, prog, lists, self.n, self.pi, grid);
    }

    /// din[r, block b, j] = Σ_o dout[r, block b, o]·w[b, o, j].
    pub fn backward_dx(
        &self,
        b: &mut PlanBuilder,
        name: &str,
        dout: Operand,
        w: Src,
        store: Store,
        lists: [&[BufId]; 5],
    ) {
        let (pi, qo) = (self.pi as u32, self.qo as u32);
        let bop = Operand::strided(w, 1, pi, qo * pi);
        let prog = TileProgram::new(self.shape, pi, dout, bop, store);
        let grid = self.grid(&prog, self.n);
        b.tile(name, prog, lists, self.n, self.qo, grid);
    }

    /// dw[b, o, j] = Σ_r dout[r, block b, o]·in[r, block b, j] over the rows in order, with
    /// `dout` read reduction-major (row r is the reduction step) and `input` likewise.
    pub fn backward_dw(
        &self,
        b: &mut PlanBuilder,
        name: &str,
        dout: Operand,
        input: Operand,
        dw: Dst,
        lists: [&[BufId]; 5],
    ) {
        let (pi, qo) = (self.pi as u32, self.qo as u32);
        let store = Store::strided(dw, pi, 1, qo * pi);
        let prog = TileProgram::new(self.shape, pi, dout, input, store);
        let grid = self.grid(&prog, self.qo);
        b.tile(name, prog, lists, self.qo, self.n, grid);
    }
}

/// The plans of a `block-diag-linear` spec.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowering, LowerError> {
    let kernels_ir::pattern::Pattern::BlockDiagonal(p) = ctx.spec.pattern else {
        return Err(LowerError::Unsupported {
            op: ctx.spec.op,
            what: "a pattern other than block-diagonal".into(),
        });
    };
    let (n, n_in, n_out) = (ctx.dim("N"), ctx.dim("in"), ctx.dim("out"));
    let bd = BlockDiag {
        n,
        blocks: p.blocks,
        pi: n_in / p.blocks,
        qo: n_out / p.blocks,
        shape: ctx.shape,
    };
    let (pi, qo) = (bd.pi as u32, bd.qo as u32);
    let (i32n, o32n) = (n_in as u32, n_out as u32);
    let wshape = [p.blocks, bd.qo, bd.pi];
    let mut f = ctx.builder(Pass::Forward);
    let x = f.input("x", Elem::Storage, &[n, n_in]);
    let w = f.input("w", Elem::Storage, &wshape);
    let y = f.output("y", Elem::Storage, &[n, n_out]);
    bd.forward(
        &mut f,
        "block_diag_fwd",
        Operand::strided(Src::storage(0), i32n, 1, pi),
        Src::storage(1),
        Store::strided(Dst::storage(0), o32n, 1, qo),
        [&[x, w], &[], &[], &[y], &[]],
    );
    let backward = ctx.backward.then(|| {
        let mut b = ctx.builder(Pass::Backward);
        let x = b.input("x", Elem::Storage, &[n, n_in]);
        let w = b.input("w", Elem::Storage, &wshape);
        let dy = b.input("dy", Elem::Storage, &[n, n_out]);
        let dx = b.output("dx", Elem::Storage, &[n, n_in]);
        let dw = b.output("dw", Elem::Storage, &wshape);
        bd.backward_dx(
            &mut b,
            "block_diag_bwd_dx",
            Operand::strided(Src::storage(0), o32n, 1, qo),
            Src::storage(1),
            Store::strided(Dst::storage(0), i32n, 1, pi),
            [&[dy, w], &[], &[], &[dx], &[]],
        );
        bd.backward_dw(
            &mut b,
            "block_diag_bwd_dw",
            Operand::strided(Src::storage(0), 1, o32n, qo),
            Operand::strided(Src::storage(1), 1, i32n, pi),
            Dst::storage(0),
            [&[dy, x], &[], &[], &[dw], &[]],
        );
        b.finish()
    });
    Ok(Lowering {
        forward: f.finish(),
        backward,
    })
}
