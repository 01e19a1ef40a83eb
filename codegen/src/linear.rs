//! The three products of a linear layer y = x·Wᵀ + bias — forward, dx = dy·W and the weight
//! gradient dyᵀ·x with dbias as its row sums — as tile programs, for every way sparsecube holds
//! W: dense (the dense linear, SaRA's W_eff), packed N:M values, or PST's M ⊙ W′ recomputed from
//! its factors; and every way it wants the weight gradient: dense, sampled at a mask (SaRA's and
//! N:M's dv: never an [out, in] gradient), or PST's straight-through dW′ and dS.

use crate::plan::{BufId, Elem, PlanBuilder};
use crate::tile::{
    Dst, Operand, Packed, Prologue, PstGrad, PstWeight, Src, Store, TileProgram, TileShape,
};

/// How the layer's weight W [out, in] is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// A dense buffer (storage dtype).
    Dense(BufId),
    /// `keep` of every `group` consecutive entries of each row, as packed values at ascending
    /// flat positions `index`.
    Packed {
        /// The packed values (storage dtype).
        values: BufId,
        /// Their flat positions (u32).
        index: BufId,
        /// Kept entries per group (n).
        keep: u32,
        /// Entries per group (m).
        group: u32,
    },
    /// PST's M ⊙ W′ from the frozen W and the factors U, V, A, B, R, C (in that order), the f32
    /// coefficients [α1, α2, β] and the selection's pivot state.
    Pst {
        /// W, U, V, A, B, R, C.
        factors: [BufId; 7],
        /// [α1, α2, β].
        coef: BufId,
        /// The pivot state.
        state: BufId,
        /// Rank of U·V.
        rank: u32,
        /// Rank of A·B.
        mrank: u32,
    },
}

/// Which weight gradient the backward writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightGrad {
    /// dW [out, in] (storage dtype).
    Dense(BufId),
    /// dW at the ascending flat positions `index` only, into `dv` [nnz] (storage dtype).
    Sampled {
        /// The positions (u32).
        index: BufId,
        /// The gradient at them.
        dv: BufId,
    },
    /// PST's dW′ and dS [out, in] (f32) from dW_eff (the weight held as [`Weight::Pst`]).
    Pst {
        /// dW′.
        dwp: BufId,
        /// dS.
        ds: BufId,
    },
}

/// A linear layer of `t` rows, `n_in` → `n_out` features, tiled as `shape`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Rows.
    pub t: usize,
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// Mainloop tile shape.
    pub shape: TileShape,
}

/// The weight as operand B of a product whose output-side index walks W's dimension of stride
/// `s_mn` and whose reduction walks the one of stride `s_k`; its buffers are appended to the
/// storage inputs `ins`, f32 inputs `ins32` and u32 inputs `idx`.
fn weight_operand(
    w: &Weight,
    s_mn: u32,
    s_k: u32,
    n_in: u32,
    ins: &mut Vec<BufId>,
    ins32: &mut Vec<BufId>,
    idx: &mut Vec<BufId>,
) -> Operand {
    let slot = ins.len() as u32;
    let mut op = Operand::strided(Src::storage(slot), s_mn, s_k, 0);
    match *w {
        Weight::Dense(b) => ins.push(b),
        Weight::Packed {
            values,
            index,
            keep,
            group,
        } => {
            ins.push(values);
            op.prologue = Prologue::Packed(Packed {
                group,
                keep,
                index: idx.len() as u32,
            });
            idx.push(index);
        }
        Weight::Pst {
            factors,
            coef,
            state,
            rank,
            mrank,
        } => {
            op.prologue = Prologue::Pst(pst_weight(
                n_in,
                rank,
                mrank,
                slot,
                ins32.len() as u32,
                idx.len() as u32,
            ));
            ins.extend(factors);
            ins32.push(coef);
            idx.push(state);
        }
    }
    op
}

fn pst_weight(n_in: u32, rank: u32, mrank: u32, first: u32, coef: u32, state: u32) -> PstWeight {
    PstWeight {
        n_in,
        rank,
        mrank,
        first,
        coef,
        state,
    }
}

impl Linear {
    fn grid(prog: &TileProgram, m: usize) -> (u32, u32, u32) {
        (prog.row_tiles(m), prog.column_tiles(), 1)
    }

    /// y [t, out] = x·Wᵀ + bias (y in the storage dtype or f32).
    pub fn forward(
        &self,
        b: &mut PlanBuilder,
        name: &str,
        x: BufId,
        w: &Weight,
        bias: BufId,
        y: BufId,
    ) {
        let (n_in, n_out) = (self.n_in as u32, self.n_out as u32);
        let (mut ins, mut ins32, mut idx) = (vec![x], Vec::new(), Vec::new());
        let a = Operand::strided(Src::storage(0), n_in, 1, 0);
        let bop = weight_operand(w, n_in, 1, n_in, &mut ins, &mut ins32, &mut idx);
        let bias_slot = ins.len() as u32;
        ins.push(bias);
        // y in the storage dtype, or f32 (the routed FFN's router logits).
        let f32_out = b.elem(y) == Elem::F32;
        let dst = if f32_out {
            Dst::f32(0)
        } else {
            Dst::storage(0)
        };
        let prog = TileProgram::new(self.shape, n_out, a, bop, Store::rows(dst, n_out))
            .epilogue(|e| e.bias = Some((bias_slot, 0)));
        let grid = Self::grid(&prog, self.t);
        let (outs, outs32): (&[BufId], &[BufId]) = if f32_out { (&[], &[y]) } else { (&[y], &[]) };
        b.tile(
            name,
            prog,
            [&ins, &ins32, &idx, outs, outs32],
            self.t,
            self.n_in,
            grid,
        );
    }

    /// dx [t, in] = dy·W.
    pub fn backward_dx(&self, b: &mut PlanBuilder, name: &str, dy: BufId, w: &Weight, dx: BufId) {
        let (n_in, n_out) = (self.n_in as u32, self.n_out as u32);
        let (mut ins, mut ins32, mut idx) = (vec![dy], Vec::new(), Vec::new());
        let a = Operand::strided(Src::storage(0), n_out, 1, 0);
        let bop = weight_operand(w, 1, n_in, n_in, &mut ins, &mut ins32, &mut idx);
        let prog = TileProgram::new(self.shape, n_in, a, bop, Store::rows(Dst::storage(0), n_in));
        let grid = Self::grid(&prog, self.t);
        b.tile(
            name,
            prog,
            [&ins, &ins32, &idx, &[dx], &[]],
            self.t,
            self.n_out,
            grid,
        );
    }

    /// The weight gradient dyᵀ·x (reduced over the rows in order) as `grad` asks, and dbias
    /// (storage dtype) as the row sums of dyᵀ. `pst` is the weight when `grad` is PST's.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_dw(
        &self,
        b: &mut PlanBuilder,
        name: &str,
        dy: BufId,
        x: BufId,
        grad: &WeightGrad,
        pst: Option<&Weight>,
        dbias: BufId,
    ) {
        let (n_in, n_out) = (self.n_in as u32, self.n_out as u32);
        let (mut ins, mut ins32, mut idx) = (vec![dy, x], Vec::new(), Vec::new());
        let a = Operand::strided(Src::storage(0), 1, n_out, 0);
        let bop = Operand::strided(Src::storage(1), 1, n_in, 0);
        let mut prog =
            TileProgram::new(self.shape, n_in, a, bop, Store::rows(Dst::storage(0), n_in));
        let (outs, outs32): (Vec<BufId>, Vec<BufId>) = match *grad {
            WeightGrad::Dense(dw) => {
                prog.epilogue.row_sums = Some((Dst::storage(1), 0));
                (vec![dw, dbias], Vec::new())
            }
            WeightGrad::Sampled { index, dv } => {
                prog.epilogue.store.sampled = Some(idx.len() as u32);
                idx.push(index);
                prog.epilogue.row_sums = Some((Dst::storage(1), 0));
                (vec![dv, dbias], Vec::new())
            }
            WeightGrad::Pst { dwp, ds } => {
                let Some(Weight::Pst {
                    factors,
                    coef,
                    state,
                    rank,
                    mrank,
                }) = pst
                else {
                    // Unreachable from input: only PST's lowering asks for this gradient, always with its
                    // weight.
                    panic!("PST's weight gradient needs PST's weight");
                };
                let weight = pst_weight(
                    n_in,
                    *rank,
                    *mrank,
                    ins.len() as u32,
                    ins32.len() as u32,
                    idx.len() as u32,
                );
                ins.extend(factors);
                ins32.push(*coef);
                idx.push(*state);
                prog.epilogue.pst_grad = Some(PstGrad { weight, ds: 1 });
                prog.epilogue.store.dst = Dst::f32(0);
                prog.epilogue.row_sums = Some((Dst::storage(0), 0));
                (vec![dbias], vec![dwp, ds])
            }
        };
        let grid = Self::grid(&prog, self.n_out);
        b.tile(
            name,
            prog,
            [&ins, &ins32, &idx, &outs, &outs32],
            self.n_out,
            self.t,
            grid,
        );
    }
}
