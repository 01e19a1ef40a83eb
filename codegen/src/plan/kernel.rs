//! Every `#[cube]` kernel a plan can launch, listed once: [`kernel_table!`](crate::kernel_table)
//! holds, per kernel, its [`Kernel`] variant (the comptime values that specialise it), the path
//! of its `#[cube]` function, its kernel struct, whether it is generic over the float type, and
//! its runtime parameters (`a` an array, `q` a sequence of arrays, `u` a u32 scalar, `f` an f32
//! scalar, `s` a sequence of u32 scalars). The table is expanded three times from this one list: into the [`Kernel`] enum (here),
//! into the definitions `gen` prints and NVRTC compiles (`crate::emit`), and into the one launch
//! dispatch of the executor (`sparsecube-runtime`).

use crate::cbm::kernels::CbmConfig;
use crate::prim::kernels::{ColumnConfig, RowsConfig, ScanConfig};
use crate::pst::kernels::PstConfig;
use crate::routed::kernels::RoutedConfig;
use crate::select::kernels::TopkConfig;
use crate::select::row::RowShape;
use crate::spt::kernels::SptConfig;
use crate::tile::TileProgram;

/// Calls `$cb!` with the kernel table: `$crate;` then one line per kernel,
/// `Variant(comptime: Type, ...) = module::path::function, KernelStruct, generic|plain, (params);`.
#[macro_export]
#[doc(hidden)]
macro_rules! kernel_table {
    ($cb:ident) => {
        $cb! { $crate;
            /// PQ codes of the rows of x.
            PqEncode(cfg: SptConfig) = spt::select::pq_encode, PqEncode, generic, (a a a);
            /// SPT's per-row top-k selection.
            SptSelect(cfg: SptConfig, shape: RowShape) = spt::select::spt_select, SptSelect, generic, (a a a a a u);
            /// SPT's block representatives: means and codes.
            SptBlockCodes(cfg: SptConfig) = spt::block::spt_block_codes, SptBlockCodes, generic, (a a a a u);
            /// SPT's per-query-block top-k of key blocks.
            SptBlockSelect(cfg: SptConfig, shape: RowShape) = spt::block::spt_block_select, SptBlockSelect, generic, (a a a a a u);
            /// SPT's kept blocks expanded to each row's keys.
            SptBlockExpand(cfg: SptConfig) = spt::block::spt_block_expand, SptBlockExpand, plain, (a a u);
            /// SPT's fused sparse attention forward.
            SptAttendFwd(cfg: SptConfig, lanes: u32) = spt::kernels::spt_attend_fwd, SptAttendFwd, generic, (a a a a a a u);
            /// SPT's unfused chain: scores on the kept set.
            SptSddmm(cfg: SptConfig) = spt::kernels::spt_sddmm, SptSddmm, generic, (a a a a u);
            /// SPT's unfused chain: softmax over the kept scores.
            SptSoftmax(topk: u32) = spt::kernels::spt_softmax, SptSoftmax, plain, (a a a);
            /// SPT's unfused chain: the weighted sum of kept values.
            SptSpmm(cfg: SptConfig) = spt::kernels::spt_spmm, SptSpmm, generic, (a a a a u);
            /// SPT backward over query rows: dq, p and ds.
            SptBwdRows(cfg: SptConfig, lanes: u32) = spt::kernels::spt_bwd_rows, SptBwdRows, generic, (a a a a a a a a a u);
            /// SPT backward over key rows: dk and dv.
            SptBwdKeys(cfg: SptConfig, lanes: u32) = spt::kernels::spt_bwd_keys, SptBwdKeys, generic, (a a a a a a a a u);
            /// Dense attention forward (the baseline).
            DenseAttendFwd(cfg: SptConfig, lanes: u32) = spt::dense::dense_attend_fwd, DenseAttendFwd, generic, (a a a a a u);
            /// Dense attention backward over query rows.
            DenseBwdRows(cfg: SptConfig, lanes: u32) = spt::dense::dense_bwd_rows, DenseBwdRows, generic, (a a a a a a a a u);
            /// Dense attention backward over key rows.
            DenseBwdKeys(cfg: SptConfig, lanes: u32) = spt::dense::dense_bwd_keys, DenseBwdKeys, generic, (a a a a a a a a u);
            /// The routed FFN's router, after its logits product: gates and kept blocks.
            RoutedGate(cfg: RoutedConfig) = routed::kernels::routed_gate, RoutedGate, plain, (a a);
            /// The weighted un-permute of the per-pair outputs.
            RoutedCombine(cfg: RoutedConfig) = routed::kernels::routed_combine, RoutedCombine, generic, (a a a a);
            /// Router backward to the logits.
            RoutedBwdRouter(cfg: RoutedConfig) = routed::kernels::routed_bwd_router, RoutedBwdRouter, plain, (a a a a a f);
            /// dx: the per-pair rows summed per token, plus the router path.
            RoutedBwdDxCombine(cfg: RoutedConfig) = routed::kernels::routed_bwd_dx_combine, RoutedBwdDxCombine, generic, (a a a a a);
            /// Per-row top-k of a score, a cube per row (CBM's concepts).
            RowTopk(cfg: TopkConfig, shape: RowShape) = select::kernels::row_topk, RowTopk, generic, (a a a);
            /// Per-row top-k of a score, a unit per short row (N:M's groups).
            GroupTopk(cfg: TopkConfig) = select::kernels::group_topk, GroupTopk, generic, (a a a);
            /// The CBM head's logits over the kept concepts.
            CbmLogits(cfg: CbmConfig) = cbm::kernels::cbm_logits, CbmLogits, generic, (a a a a);
            /// CBM backward to the kept concepts.
            CbmBwdDz(cfg: CbmConfig) = cbm::kernels::cbm_bwd_dz, CbmBwdDz, generic, (a a a a a a);
            /// CBM backward to x over the kept concepts.
            CbmBwdDx(cfg: CbmConfig) = cbm::kernels::cbm_bwd_dx, CbmBwdDx, generic, (a a a a);
            /// Radix select, step 1: digit histograms per chunk.
            SelectHist(pass: u32, signed: bool) = select::kernels::select_hist, SelectHist, generic, (a a a);
            /// Radix select, step 3: the bucket of the wanted rank.
            SelectPick() = select::kernels::select_pick, SelectPick, plain, (a a);
            /// Compaction, step 1: counts per tile.
            SelectCount(signed: bool) = select::kernels::select_count, SelectCount, generic, (a a a);
            /// Compaction, step 2: the total selected.
            SelectTotal() = select::kernels::select_total, SelectTotal, plain, (a a a);
            /// The flat index of the last tie taken.
            SelectCutoff(signed: bool) = select::kernels::select_cutoff, SelectCutoff, generic, (a a a a);
            /// Compaction, step 3: the selected flat indices.
            SelectFill(signed: bool) = select::kernels::select_fill, SelectFill, generic, (a a a a);
            /// out[j] = src[index[j]].
            Gather() = elementwise::gather, Gather, generic, (a a a);
            /// dst[index[j]] = values[j].
            Scatter() = elementwise::scatter, Scatter, generic, (a a a);
            /// dst = src.
            Copy() = elementwise::copy, Copy, generic, (a a);
            /// AdamW over packed values.
            SaraAdamw() = sara::kernels::sara_adamw, SaraAdamw, generic, (a a a a a);
            /// The moments carried over a re-mask.
            SaraCarry() = sara::kernels::sara_carry, SaraCarry, plain, (a a a a a a u);
            /// PST's score.
            PstScore(cfg: PstConfig) = pst::kernels::pst_score, PstScore, generic, (a a a a a a a a a);
            /// PST's 0/1 mask.
            PstMask() = pst::kernels::pst_mask, PstMask, generic, (a a a);
            /// PST's low-rank gradients, level 1: partial sums per (line, chunk).
            PstGradPartial(cfg: PstConfig, rows: bool) = pst::kernels::pst_grad_partial, PstGradPartial, generic, (a a a a a u);
            /// PST's low-rank gradients, level 2: the chunks in order, scaled.
            PstGradFinish(cfg: PstConfig, rows: bool) = pst::kernels::pst_grad_finish, PstGradFinish, generic, (a a a a a u);
            /// Scan, level 1: tile totals.
            ScanReduce() = prim::kernels::scan_reduce, ScanReduce, plain, (a a u u);
            /// Scan, level 2: tile prefixes plus carries.
            ScanApply(cfg: ScanConfig) = prim::kernels::scan_apply, ScanApply, plain, (a a a u u u);
            /// Radix sort: digit histograms per tile.
            SortHist() = prim::kernels::sort_hist, SortHist, plain, (a a u u);
            /// Radix sort: the stable scatter of one digit.
            SortScatter(first_pass: bool) = prim::kernels::sort_scatter, SortScatter, plain, (a a a a a u u);
            /// Grouping: composite sort keys.
            GroupKeys() = prim::kernels::group_keys, GroupKeys, plain, (a a u u);
            /// Grouping: the values (and ranks) of the sorted entries.
            GroupValues(rank: bool) = prim::kernels::group_values, GroupValues, plain, (a a a u u);
            /// Grouping: each bin's offset in its segment.
            GroupOffsets() = prim::kernels::group_offsets, GroupOffsets, plain, (a a u u);
            /// Grouping of rows of distinct bins: counts per chunk in shared memory.
            RowsCount(cfg: RowsConfig) = prim::kernels::rows_count, RowsCount, plain, (a a u u);
            /// Grouping of rows of distinct bins: the ordered fill.
            RowsFill(cfg: RowsConfig, rank: bool) = prim::kernels::rows_fill, RowsFill, plain, (a a a a u u u u);
            /// Grouping of rows of distinct bins: each bin's offset.
            RowsOffsets() = prim::kernels::rows_offsets, RowsOffsets, plain, (a a u);
            /// Column reduction, level 1: partial sums per row chunk.
            ColumnPartial(cfg: ColumnConfig) = prim::kernels::column_partial, ColumnPartial, generic, (a a a u u u);
            /// Column reduction, level 2: the chunks in order.
            ColumnFinish(cfg: ColumnConfig, columns: u32) = prim::kernels::column_finish, ColumnFinish, generic, (a a a u u);
            /// f32 row sums, a cube per row.
            RowSums(two: bool) = prim::kernels::row_sums, RowSums, plain, (a a a u);
            /// One tiled product (the tile program).
            Tile(prog: TileProgram) = tile::kernel::tile_gemm, TileGemm, generic, (q q q q q s);
        }
    };
}

macro_rules! define_kernel_enum {
    ($k:tt; $( $(#[$doc:meta])* $v:ident ( $($f:ident : $t:ty),* ) = $($seg:ident)::+ , $s:ident , $gen:ident , ( $($p:ident)* ) ; )* ) => {
        /// A kernel and the comptime values that specialise it: one entry of a plan's launch.
        // The tile program's description is the large variant; a plan holds tens of steps,
        // built once per lowering, so boxing it would buy nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $( $(#[$doc])* $v($($t),*), )*
        }

        impl Kernel {
            /// The `#[cube]` function's name (its entry point in the generated source).
            pub fn function(&self) -> &'static str {
                match self {
                    $( Kernel::$v(..) => {
                        let path = stringify!($($seg)::+);
                        path.rsplit("::").next().unwrap_or(path).trim()
                    } )*
                }
            }

            /// Whether the kernel is generic over the float type.
            pub fn is_generic(&self) -> bool {
                match self {
                    $( Kernel::$v(..) => stringify!($gen) == "generic", )*
                }
            }

            /// The kernel's runtime parameter kinds (`a`, `q`, `u`, `f`), in order.
            pub fn params(&self) -> &'static [char] {
                match self {
                    $( Kernel::$v(..) => &[$( kind_char!($p) ),*], )*
                }
            }
        }
    };
}

macro_rules! kind_char {
    (a) => {
        'a'
    };
    (q) => {
        'q'
    };
    (u) => {
        'u'
    };
    (f) => {
        'f'
    };
    (s) => {
        's'
    };
}

crate::kernel_table!(define_kernel_enum);

impl Kernel {
    /// The comptime config as text (the printed plan's kernel column).
    pub fn config_text(&self) -> String {
        match self {
            Kernel::Tile(p) => crate::tile::describe(p, &[]),
            other => {
                let text = format!("{other:?}");
                match text.find('(') {
                    Some(at) if text.ends_with(')') && at + 1 < text.len() - 1 => {
                        text[at + 1..text.len() - 1].to_string()
                    }
                    _ => String::new(),
                }
            }
        }
    }
}
