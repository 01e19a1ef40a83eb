//! The tile program: a comptime description of one tiled product `C = A·B` — how each operand is
//! read, how output rows and the reduction are laid out, the mainloop's tile sizes, and the
//! epilogue — that the one tile kernel ([`super::kernel::tile_gemm`]) interprets at expansion
//! time. Every GEMM-shaped product of sparsecube is a value of [`TileProgram`].
//!
//! Buffers are addressed by slot in the kernel's five lists: storage-typed inputs (`ins`), f32
//! inputs (`ins32`), u32 inputs (`idx`), storage-typed outputs (`outs`), f32 outputs (`outs32`).
//! An element of operand X at output-side index `i` (A's row, B's column), reduction index `k`
//! and batch index `g` (the row group, or cube z) lives at `g·s_g + i'·s_mn + k'·s_k`, where
//! `i'`, `k'` go through the program's gather index when the operand says so.

use cubecl::prelude::*;

/// The mainloop's arithmetic.
#[derive_cube_comptime]
pub enum Mainloop {
    /// Scalar f32 FMA on f32 staging buffers (every device).
    Scalar,
    /// Tensor cores: WMMA 16×16×16 on operands staged in the storage dtype (f16/bf16), f32
    /// accumulators.
    Half,
    /// Tensor cores: WMMA 16×16×8 on TF32 operands staged as f32, f32 accumulators.
    Tf32,
}

/// Tile sizes and pipelining of the mainloop: the schedule's `tile_m`, `tile_n`, `tile_k`,
/// `stages` and `vector`, and the strategy its `mma` resolved to on the target device.
#[derive_cube_comptime]
pub struct TileShape {
    /// Rows of C per cube (32, 64 or 128).
    pub tm: u32,
    /// Columns of C per cube (32, 64 or 128).
    pub tn: u32,
    /// Reduction steps staged per slice (8, 16 or 32).
    pub tk: u32,
    /// Shared-memory buffers of the pipeline: 1 (load, sync, multiply, sync) or 2 (the next
    /// slice is loaded while the current one is multiplied; one sync per slice).
    pub stages: u32,
    /// Consecutive elements each unit stages per load along the operand's contiguous axis
    /// (1, 2 or 4).
    pub vector: u32,
    /// The mainloop's arithmetic.
    pub mma: Mainloop,
}

/// Units per side of a tile cube (16 × 16 units).
pub const UNITS: u32 = 16;

/// Side of a WMMA fragment's output tile (16 × 16).
pub const FRAG: u32 = 16;

/// Planes (warps) of a tile cube: 256 units in planes of 32.
pub const WARPS: u32 = UNITS * UNITS / 32;

impl TileShape {
    /// Rows each unit accumulates.
    pub fn micro_m(&self) -> u32 {
        self.tm / UNITS
    }
    /// Columns each unit accumulates.
    pub fn micro_n(&self) -> u32 {
        self.tn / UNITS
    }
    /// Whether the mainloop runs on tensor cores.
    pub fn tensor(&self) -> bool {
        !matches!(self.mma, Mainloop::Scalar)
    }
    /// The WMMA reduction depth (16 for f16/bf16, 8 for tf32; 1 for the scalar loop).
    pub fn mma_k(&self) -> u32 {
        match self.mma {
            Mainloop::Scalar => 1,
            Mainloop::Half => 16,
            Mainloop::Tf32 => 8,
        }
    }
    /// Bytes per staged element (f32, or the 16-bit storage dtype).
    pub fn stage_elem_bytes(&self) -> u32 {
        match self.mma {
            Mainloop::Half => 2,
            _ => 4,
        }
    }
    /// Padding of a staged slice row, elements: one for the scalar loop (the transposing
    /// stores hit distinct banks); 16 bytes for WMMA, whose row pitch must be a multiple of
    /// 16 bytes (and whose fragments start 32-byte aligned).
    pub fn pad(&self) -> u32 {
        match self.mma {
            Mainloop::Scalar => 1,
            Mainloop::Half => 8,
            Mainloop::Tf32 => 4,
        }
    }
    /// The pitch of a staged slice row of `tile` output-side indices.
    pub fn pitch(&self, tile: u32) -> u32 {
        tile + self.pad()
    }
    /// Planes along the tile's rows and columns in the tensor-core mainloop: at most 4 across
    /// the columns, every plane's tile at least one fragment wide and tall; planes past
    /// `wm·wn` stage operands but own no fragment.
    pub fn warp_grid(&self) -> (u32, u32) {
        let wn = (self.tn / FRAG).min(4);
        let wm = (self.tm / FRAG).min(WARPS / wn);
        (wm, wn)
    }
    /// Fragments of one plane's tile, down and across.
    pub fn warp_frags(&self) -> (u32, u32) {
        let (wm, wn) = self.warp_grid();
        (self.tm / wm / FRAG, self.tn / wn / FRAG)
    }
    /// Pitch of the f32 output tile the tensor-core mainloop hands to the epilogue.
    pub fn c_pitch(&self) -> u32 {
        self.tn + 4
    }
    /// Shared memory of the mainloop, bytes: the staging buffers, and for tensor cores the f32
    /// output tile.
    pub fn shared_bytes(&self) -> usize {
        let staging = self.stages
            * self.tk
            * (self.pitch(self.tm) + self.pitch(self.tn))
            * self.stage_elem_bytes();
        let out = if self.tensor() {
            self.tm * self.c_pitch() * 4
        } else {
            0
        };
        (staging + out) as usize
    }
}

/// A buffer of one of the tile kernel's input lists.
#[derive_cube_comptime]
pub struct Src {
    /// The f32 list (`ins32`), else the storage-typed one (`ins`).
    pub f32: bool,
    /// The slot in that list.
    pub slot: u32,
}

impl Src {
    /// Slot `slot` of the storage-typed inputs.
    pub fn storage(slot: u32) -> Self {
        Self { f32: false, slot }
    }
    /// Slot `slot` of the f32 inputs.
    pub fn f32(slot: u32) -> Self {
        Self { f32: true, slot }
    }
}

/// A buffer of one of the tile kernel's output lists.
#[derive_cube_comptime]
#[derive(Default)]
pub struct Dst {
    /// The f32 list (`outs32`), else the storage-typed one (`outs`).
    pub f32: bool,
    /// The slot in that list.
    pub slot: u32,
}

impl Dst {
    /// Slot `slot` of the storage-typed outputs.
    pub fn storage(slot: u32) -> Self {
        Self { f32: false, slot }
    }
    /// Slot `slot` of the f32 outputs.
    pub fn f32(slot: u32) -> Self {
        Self { f32: true, slot }
    }
}

/// PST's masked weight M ⊙ W′, recomputed from the frozen weight and the factors wherever it
/// is staged (no masked copy exists): the operand's address is the flat index into W [out, in].
#[derive_cube_comptime]
#[derive(Default)]
pub struct PstWeight {
    /// Input features (W's row length).
    pub n_in: u32,
    /// Rank of U·V.
    pub rank: u32,
    /// Rank of A·B.
    pub mrank: u32,
    /// Storage-typed input slot of W; U, V, A, B, R, C follow in the next six slots.
    pub first: u32,
    /// f32 input slot of the coefficients [α1, α2, β].
    pub coef: u32,
    /// u32 input slot of the selection's pivot state.
    pub state: u32,
}

/// A weight held as packed values at sorted flat positions, `keep` of every `group`
/// consecutive entries (N:M semi-structured sparsity): the operand's address is the flat index
/// into the dense weight; its value is the packed value stored for that position, or 0.
#[derive_cube_comptime]
#[derive(Default)]
pub struct Packed {
    /// Entries per group (m).
    pub group: u32,
    /// Kept entries per group (n).
    pub keep: u32,
    /// u32 input slot of the kept flat indices (ascending, `keep` per group).
    pub index: u32,
}

/// How an operand's staged value is produced.
#[derive_cube_comptime]
pub enum Prologue {
    /// Read as addressed.
    Load,
    /// PST's masked weight.
    Pst(PstWeight),
    /// Packed semi-structured values.
    Packed(Packed),
}

/// How one operand is read. Its strides are sizes: they travel to the kernel as runtime values
/// (see [`TileProgram::runtime_sizes`]), so one compiled kernel serves every problem size of a
/// program's structure. The structure keeps what does not vary with the sizes: `k_fast`
/// (whether the reduction axis is the contiguous one, which decides the loaders' walk) and
/// which strides are 1 (kept as 1, every other stride as 0: a unit stride is a constant in the
/// kernel, so the shader compiler sees contiguous addresses — on lavapipe, LLVM vectorises them).
#[derive_cube_comptime]
pub struct Operand {
    /// Where its values live (for [`Prologue::Packed`]: the packed values).
    pub src: Src,
    /// Stride of the output-side index (A's row, B's column).
    pub s_mn: u32,
    /// Stride of the reduction index.
    pub s_k: u32,
    /// Stride of the batch index.
    pub s_g: u32,
    /// The output-side index goes through the program's gather index.
    pub gather_mn: bool,
    /// The reduction index goes through the program's gather index.
    pub gather_k: bool,
    /// f32 input slot of a per-reduction-step scale (`value · scale[k]`).
    pub scale_k: Option<u32>,
    /// How the value is produced.
    pub prologue: Prologue,
    /// The reduction axis is the contiguous one: the loaders walk it fastest (set by
    /// [`TileProgram::structure`] from the strides).
    pub k_fast: bool,
}

impl Operand {
    fn prologue_weight_mut(&mut self) -> Option<&mut PstWeight> {
        match &mut self.prologue {
            Prologue::Pst(w) => Some(w),
            _ => None,
        }
    }

    /// A plain strided operand.
    pub fn strided(src: Src, s_mn: u32, s_k: u32, s_g: u32) -> Self {
        Self {
            src,
            s_mn,
            s_k,
            s_g,
            gather_mn: false,
            gather_k: false,
            scale_k: None,
            prologue: Prologue::Load,
            k_fast: false,
        }
    }

    /// Whether the reduction axis is the contiguous one (the loaders walk it fastest).
    pub fn k_fastest(&self) -> bool {
        self.s_k == 1 && !self.gather_k
    }

    fn structure(mut self) -> Self {
        self.k_fast = self.k_fastest();
        self.s_mn = unit(self.s_mn);
        self.s_k = unit(self.s_k);
        self.s_g = 0;
        self
    }
}

/// How the rows of C map to cubes.
#[derive_cube_comptime]
pub enum Rows {
    /// Rows `0..m` (the launch's runtime `m`), cube x = row tile; batch index = cube z.
    Plain,
    /// Rows in `groups` variable-size groups (`idx[offsets]` holds the group boundaries):
    /// cube x = row-tile slot over all groups, batch index = the group.
    Grouped {
        /// Groups.
        groups: u32,
        /// u32 input slot of the group offsets [groups + 1].
        offsets: u32,
    },
}

/// The reduction range.
#[derive_cube_comptime]
pub enum Reduce {
    /// Steps `0..k` (the launch's runtime `k`).
    Full,
    /// Steps `idx[offsets][z]..idx[offsets][z + 1]` of batch index z (a per-block weight
    /// gradient reducing over the block's group).
    Grouped {
        /// u32 input slot of the offsets.
        offsets: u32,
    },
}

/// The activation of the epilogue.
#[derive_cube_comptime]
pub enum Act {
    /// None.
    None,
    /// ReLU.
    Relu,
    /// Exact-erf GELU.
    Gelu,
}

/// A routed FFN's gate coefficients of each output row (a pair p of token t = gather[p] and
/// block g = the batch index): c = gate_scale · gates[t, g]; mode 0 (`output`): c_in = 1,
/// c_out = c; 1 (`none`): both 1; 2 (`spt-lora`): both c.
#[derive_cube_comptime]
#[derive(Default)]
pub struct Gate {
    /// f32 input slot of the gates [T, blocks].
    pub gates: u32,
    /// f32 input slot of [gate_scale].
    pub scale: u32,
    /// Blocks.
    pub blocks: u32,
    /// Gate mode.
    pub mode: u32,
}

/// The backward of the routed activation, from the accumulated w2·dy of a pair:
/// dz = c_out·acc·act′(c_in·pre); the stored value is c_in·dz, and `dco` = h·acc, `dci` = dz·pre.
#[derive_cube_comptime]
#[derive(Default)]
pub struct ActGrad {
    /// f32 input slot of the saved pre-activations (C's layout).
    pub pre: u32,
    /// f32 input slot of the saved activations (C's layout).
    pub h: u32,
    /// f32 output slot of dco.
    pub dco: u32,
    /// f32 output slot of dci.
    pub dci: u32,
    /// GELU (else ReLU).
    pub gelu: bool,
}

/// PST's straight-through gradients from the accumulated dW_eff at (o, i) = (row, column):
/// dS = dW_eff ⊙ W′ into f32 output `ds`, and the stored value dW′ = dW_eff ⊙ M + sign(W′) ⊙ dS.
#[derive_cube_comptime]
#[derive(Default)]
pub struct PstGrad {
    /// The weight and factors, as PST's operand reads them.
    pub weight: PstWeight,
    /// f32 output slot of dS.
    pub ds: u32,
}

/// Where the epilogue's result goes.
#[derive_cube_comptime]
pub struct Store {
    /// The output buffer.
    pub dst: Dst,
    /// Stride of C's row.
    pub s_row: u32,
    /// Stride of C's column.
    pub s_col: u32,
    /// Stride of the batch index.
    pub s_g: u32,
    /// u32 input slot of a sorted list of flat positions: only elements whose address is in
    /// the list are written, to the list's position (a product sampled at a mask).
    pub sampled: Option<u32>,
}

/// The epilogue, applied to each accumulated element in this order: the product by c_out
/// (`scale_out`), the bias, the store of the pre-activation (`pre`), the activation of
/// c_in·value, the activation's backward (`act_grad`), PST's gradient (`pst_grad`), then the
/// store; per row, the gate's c_out (`cout`) and the row sums of A over the reduction
/// (`row_sums`: bias gradients).
#[derive_cube_comptime]
pub struct Epilogue {
    /// The routed gate coefficients (needs the program's gather index).
    pub gate: Option<Gate>,
    /// Multiply by c_out.
    pub scale_out: bool,
    /// Storage-typed input slot of a bias and its batch stride (bias[g·s_g + column]).
    pub bias: Option<(u32, u32)>,
    /// f32 output slot of the pre-activation (C's layout).
    pub pre: Option<u32>,
    /// The activation (of c_in·value).
    pub act: Act,
    /// f32 output slot of each row's c_out.
    pub cout: Option<u32>,
    /// The routed activation's backward.
    pub act_grad: Option<ActGrad>,
    /// PST's straight-through gradient.
    pub pst_grad: Option<PstGrad>,
    /// The result's destination.
    pub store: Store,
    /// Σ_k A[row, k] into an output (slot, batch stride): bias gradients.
    pub row_sums: Option<(Dst, u32)>,
}

impl Epilogue {
    /// Only a store.
    pub fn store(store: Store) -> Self {
        Self {
            gate: None,
            scale_out: false,
            bias: None,
            pre: None,
            act: Act::None,
            cout: None,
            act_grad: None,
            pst_grad: None,
            store,
            row_sums: None,
        }
    }
}

/// One tiled product.
#[derive_cube_comptime]
pub struct TileProgram {
    /// Mainloop tile sizes.
    pub shape: TileShape,
    /// Columns of C.
    pub n: u32,
    /// Row layout.
    pub rows: Rows,
    /// Reduction range.
    pub reduce: Reduce,
    /// u32 input slot of the gather index the operands and the gate use.
    pub gather: Option<u32>,
    /// Operand A [rows, reduction].
    pub a: Operand,
    /// Operand B [reduction, columns].
    pub b: Operand,
    /// The epilogue.
    pub epilogue: Epilogue,
}

/// A stride as the comptime structure keeps it: 1 where it is 1, else 0 (a runtime value).
fn unit(stride: u32) -> u32 {
    u32::from(stride == 1)
}

/// Positions of the runtime sizes in the tile kernel's `sizes` argument.
pub mod at {
    /// Rows of C (plain rows).
    pub const M: usize = 0;
    /// Reduction length (full reduction).
    pub const K: usize = 1;
    /// Columns of C.
    pub const N: usize = 2;
    /// A's strides: output-side index, reduction, batch.
    pub const A: [usize; 3] = [3, 4, 5];
    /// B's strides: output-side index, reduction, batch.
    pub const B: [usize; 3] = [6, 7, 8];
    /// C's strides: row, column, batch.
    pub const C: [usize; 3] = [9, 10, 11];
    /// The bias's batch stride.
    pub const BIAS_G: usize = 12;
    /// The row sums' batch stride.
    pub const SUMS_G: usize = 13;
    /// PST's input features.
    pub const PST_N_IN: usize = 14;
    /// Entries.
    pub const LEN: usize = 15;
}

impl TileProgram {
    /// The program's comptime structure: every size (columns, strides, PST's input features)
    /// zeroed — they travel as runtime values ([`Self::runtime_sizes`]) — and the loaders' walk
    /// order fixed from the strides. What a launch compiles: one kernel per structure, whatever
    /// the problem's sizes.
    pub fn structure(&self) -> Self {
        let mut p = *self;
        p.n = 0;
        p.a = p.a.structure();
        p.b = p.b.structure();
        p.epilogue.store.s_row = unit(p.epilogue.store.s_row);
        p.epilogue.store.s_col = unit(p.epilogue.store.s_col);
        p.epilogue.store.s_g = 0;
        if let Some((slot, _)) = p.epilogue.bias {
            p.epilogue.bias = Some((slot, 0));
        }
        if let Some((dst, _)) = p.epilogue.row_sums {
            p.epilogue.row_sums = Some((dst, 0));
        }
        for w in [p.a.prologue_weight_mut(), p.b.prologue_weight_mut()]
            .into_iter()
            .flatten()
        {
            w.n_in = 0;
        }
        if let Some(g) = &mut p.epilogue.pst_grad {
            g.weight.n_in = 0;
        }
        p
    }

    /// The sizes the kernel reads at run time (positions in [`at`]) for `m` rows and a reduction
    /// of `k` steps.
    pub fn runtime_sizes(&self, m: usize, k: usize) -> Vec<u32> {
        let mut v = vec![0u32; at::LEN];
        v[at::M] = m as u32;
        v[at::K] = k as u32;
        v[at::N] = self.n;
        for (slots, o) in [(at::A, &self.a), (at::B, &self.b)] {
            v[slots[0]] = o.s_mn;
            v[slots[1]] = o.s_k;
            v[slots[2]] = o.s_g;
        }
        let st = &self.epilogue.store;
        v[at::C[0]] = st.s_row;
        v[at::C[1]] = st.s_col;
        v[at::C[2]] = st.s_g;
        v[at::BIAS_G] = self.epilogue.bias.map_or(0, |b| b.1);
        v[at::SUMS_G] = self.epilogue.row_sums.map_or(0, |r| r.1);
        let pst = [self.a.prologue, self.b.prologue]
            .into_iter()
            .find_map(|p| match p {
                Prologue::Pst(w) => Some(w.n_in),
                _ => None,
            })
            .or(self.epilogue.pst_grad.map(|g| g.weight.n_in));
        v[at::PST_N_IN] = pst.unwrap_or(0);
        v
    }

    /// The cube dimension of every tile launch.
    pub fn cube_dim() -> (u32, u32, u32) {
        (UNITS, UNITS, 1)
    }

    /// Column tiles of C.
    pub fn column_tiles(&self) -> u32 {
        self.n.div_ceil(self.shape.tn).max(1)
    }

    /// Row tiles of `m` rows.
    pub fn row_tiles(&self, m: usize) -> u32 {
        m.div_ceil(self.shape.tm as usize).max(1) as u32
    }

    /// Row-tile slots covering `rows` rows in `groups` groups of any sizes (the upper bound of
    /// Σ⌈n_g / tm⌉).
    pub fn group_slots(&self, rows: usize, groups: usize) -> u32 {
        (rows.div_ceil(self.shape.tm as usize) + groups).max(1) as u32
    }
}
