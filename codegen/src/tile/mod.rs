//! The tile program: every GEMM-shaped product of sparsecube — the routed FFN's six, the dense
//! linear, the block-diagonal map, Monarch's two block-diagonal products, SaRA's and N:M's
//! forward, dx and sampled dv, PST's masked products, the CBM head's concept layer and weight
//! gradients — is one [`TileProgram`] value run by the one kernel [`kernel::tile_gemm`].
//!
//! - [`program`]: the comptime description — operand access (strided, reduction-major, gathered
//!   rows or steps, scaled, or produced by a prologue: PST's M ⊙ W′ from its factors, packed N:M
//!   values), row and reduction layout (plain, grouped by an offsets array, per cube z), tile
//!   sizes from the schedule, and the epilogue;
//! - [`kernel`]: the mainloop (shared-memory staging, pipelined over `stages` buffers, register
//!   tiles);
//! - [`epilogue`]: what happens to each accumulated element on its way to memory.

pub mod epilogue;
pub mod kernel;
pub mod mma;
pub mod program;

pub use program::{
    Act, ActGrad, Dst, Epilogue, Gate, Mainloop, Operand, Packed, Prologue, PstGrad, PstWeight,
    Reduce, Rows, Src, Store, TileProgram, TileShape, UNITS,
};

use crate::LowerError;
use crate::plan::DeviceLimits;
use kernels_ir::{DType, Mma, OpKind, Precision, Schedule};

/// The mainloop shape `s` asks for (`tile_m`, `tile_n`, `tile_k`, `stages`, `vector`) with its
/// `mma` resolved for `op` on `dtype` and `device`: tensor cores where the device runs the
/// operand type (f16/bf16, or f32 with `precision = tf32`) and `tile_k` is a multiple of their
/// depth; for `mma = auto` the scalar loop elsewhere, for `mma = cmma` a
/// [`LowerError::NoTensorCores`] naming what is missing. Ops off the tile program get the scalar
/// shape (they read no tile field).
pub fn shape(
    s: &Schedule,
    op: OpKind,
    dtype: DType,
    device: &DeviceLimits,
) -> Result<TileShape, LowerError> {
    let mut shape = TileShape {
        tm: s.tile_m,
        tn: s.tile_n,
        tk: s.tile_k,
        stages: s.stages,
        vector: s.vector,
        mma: Mainloop::Scalar,
    };
    if !op.tiled() || s.mma == Mma::Scalar {
        return Ok(shape);
    }
    let tf32 = s.precision == Precision::Tf32;
    let tensor = match dtype {
        DType::F16 | DType::BF16 => Mainloop::Half,
        _ => Mainloop::Tf32,
    };
    let depth = TileShape {
        mma: tensor,
        ..shape
    }
    .mma_k();
    let why = if !device.tensor_cores.supports(dtype, tf32) {
        Some(if dtype == DType::F32 && !tf32 {
            "f32 products with precision = ieee have no tensor-core path; set precision = tf32 \
             (about 1e-3 relative) or mma = auto"
                .to_string()
        } else {
            let what = if dtype == DType::F32 {
                "tf32".into()
            } else {
                dtype.to_string()
            };
            format!("this device has no {what} tensor cores (WMMA); use mma = auto or mma = scalar")
        })
    } else if !s.tile_k.is_multiple_of(depth) {
        Some(format!(
            "tile_k = {} is not a multiple of the tensor cores' depth {depth}; use tile_k = 16 \
             or 32",
            s.tile_k
        ))
    } else {
        None
    };
    match why {
        None => shape.mma = tensor,
        Some(why) if s.mma == Mma::Cmma => {
            return Err(LowerError::NoTensorCores {
                op,
                schedule: *s,
                why,
            });
        }
        Some(_) => {}
    }
    Ok(shape)
}

impl Store {
    /// Row-major C with row stride `s_row`.
    pub fn rows(dst: Dst, s_row: u32) -> Self {
        Self {
            dst,
            s_row,
            s_col: 1,
            s_g: 0,
            sampled: None,
        }
    }

    /// C at `g·s_g + row·s_row + column·s_col`.
    pub fn strided(dst: Dst, s_row: u32, s_col: u32, s_g: u32) -> Self {
        Self {
            dst,
            s_row,
            s_col,
            s_g,
            sampled: None,
        }
    }
}

impl TileProgram {
    /// `C[m, n] = A·B` over plain rows and the full reduction, stored by `store`.
    pub fn new(shape: TileShape, n: u32, a: Operand, b: Operand, store: Store) -> Self {
        Self {
            shape,
            n,
            rows: Rows::Plain,
            reduce: Reduce::Full,
            gather: None,
            a,
            b,
            epilogue: Epilogue::store(store),
        }
    }

    /// With the epilogue changed by `f`.
    pub fn epilogue(mut self, f: impl FnOnce(&mut Epilogue)) -> Self {
        f(&mut self.epilogue);
        self
    }

    /// Rows in `groups` groups bounded by u32 input `offsets`.
    pub fn grouped_rows(mut self, groups: u32, offsets: u32) -> Self {
        self.rows = Rows::Grouped { groups, offsets };
        self
    }

    /// The reduction of batch index z over `offsets[z]..offsets[z + 1]`.
    pub fn grouped_reduce(mut self, offsets: u32) -> Self {
        self.reduce = Reduce::Grouped { offsets };
        self
    }

    /// Gathers through u32 input `slot`.
    pub fn gather(mut self, slot: u32) -> Self {
        self.gather = Some(slot);
        self
    }
}

fn src_text(s: &Src) -> String {
    format!("{}{}", if s.f32 { "in32." } else { "in." }, s.slot)
}

fn dst_text(d: &Dst) -> String {
    format!("{}{}", if d.f32 { "out32." } else { "out." }, d.slot)
}

fn operand_text(name: &str, o: &Operand, [s_mn, s_k, s_g]: [u32; 3]) -> String {
    let mn = if o.gather_mn { "idx(i)" } else { "i" };
    let k = if o.gather_k { "idx(k)" } else { "k" };
    let mut t = format!(
        "{name}={}[{}{mn}·{s_mn} + {k}·{s_k}]",
        src_text(&o.src),
        if s_g > 0 {
            format!("g·{s_g} + ")
        } else {
            String::new()
        },
    );
    match o.prologue {
        Prologue::Load => {}
        Prologue::Pst(_) => t.push_str(" as PST M⊙W′"),
        Prologue::Packed(p) => t.push_str(&format!(" packed {}:{}", p.keep, p.group)),
    }
    if let Some(s) = o.scale_k {
        t.push_str(&format!("·in32.{s}[k]"));
    }
    t
}

/// One line describing a program with its runtime `sizes` (positions in [`program::at`]; empty:
/// the structure alone): the printed plan's config line.
pub fn describe(p: &TileProgram, sizes: &[u32]) -> String {
    use program::at;
    let z = |i: usize| sizes.get(i).copied().unwrap_or(0);
    let trio = |s: [usize; 3]| [z(s[0]), z(s[1]), z(s[2])];
    let s = p.shape;
    let mainloop = match s.mma {
        Mainloop::Scalar => "scalar fma".to_string(),
        Mainloop::Half => "wmma 16x16x16".to_string(),
        Mainloop::Tf32 => "wmma tf32 16x16x8".to_string(),
    };
    let mut parts = vec![format!(
        "{}x{}x{} stages {} vector {} {mainloop}, n = {}",
        s.tm,
        s.tn,
        s.tk,
        s.stages,
        s.vector,
        z(at::N)
    )];
    match p.rows {
        Rows::Plain => {}
        Rows::Grouped { groups, offsets } => {
            parts.push(format!("rows in {groups} groups (idx.{offsets})"))
        }
    }
    if let Reduce::Grouped { offsets } = p.reduce {
        parts.push(format!("k over group z (idx.{offsets})"));
    }
    parts.push(operand_text("A", &p.a, trio(at::A)));
    parts.push(operand_text("B", &p.b, trio(at::B)));
    let e = &p.epilogue;
    let mut epi = Vec::new();
    if e.gate.is_some() {
        epi.push("gate".to_string());
    }
    if e.scale_out {
        epi.push("×c_out".into());
    }
    if let Some((b, _)) = e.bias {
        epi.push(format!("+bias in.{b}"));
    }
    if e.pre.is_some() {
        epi.push("save pre".into());
    }
    match e.act {
        Act::None => {}
        Act::Relu => epi.push("relu".into()),
        Act::Gelu => epi.push("gelu".into()),
    }
    if e.act_grad.is_some() {
        epi.push("act′".into());
    }
    if e.pst_grad.is_some() {
        epi.push("PST ste".into());
    }
    let st = &e.store;
    let [s_row, s_col, s_g] = trio(at::C);
    let target = match st.sampled {
        Some(list) => format!("{} sampled at idx.{list}", dst_text(&st.dst)),
        None => format!(
            "{}[{}r·{s_row} + c·{s_col}]",
            dst_text(&st.dst),
            if s_g > 0 {
                format!("g·{s_g} + ")
            } else {
                String::new()
            },
        ),
    };
    epi.push(format!("→ {target}"));
    if let Some((d, _)) = e.row_sums {
        epi.push(format!("row sums → {}", dst_text(&d)));
    }
    parts.push(epi.join(" "));
    parts.join(" | ")
}
