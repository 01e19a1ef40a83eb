//! `sparsecube-codegen`: lowering of `kernels-ir` specs to launch plans over CubeCL kernels.
//!
//! What it is: the lowering of a verified [`kernels_ir::KernelSpec`] to [`plan::LaunchPlan`]s —
//! data: a buffer table and the ordered launches of `#[cube]` kernels specialised by comptime
//! configs ([`plan::lower`]) —, the one tile program every GEMM-shaped product runs on
//! ([`tile`]), the remaining kernels per op family, and the emitters that print a plan's kernels
//! as CUDA C++ or WGSL without a device ([`emit`], [`cuda_check`]).
//!
//! What it is not: device management or launching (that is `sparsecube-runtime`, whose executor
//! runs any plan) or the definition of correct answers (that is `kernels_ir::reference`, which
//! every kernel is tested against).

pub mod blockdiag;
pub mod cbm;
pub mod cuda_check;
pub mod dense;
pub mod elementwise;
pub mod emit;
pub mod linear;
pub mod monarch;
pub mod nm;
pub mod plan;
pub mod prim;
pub mod pst;
pub mod routed;
pub mod sara;
pub mod select;
pub mod spt;
pub mod tile;

use kernels_ir::{OpKind, VerifyErrors};

/// Why a spec cannot be lowered.
#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] VerifyErrors),
    /// No kernel exists for this op or variant yet.
    #[error("{op}: no generated kernel for {what} yet; run it with --device reference")]
    Unsupported {
        /// The op.
        op: OpKind,
        /// What is missing.
        what: String,
    },
    /// The op is a host computation by design: it has no kernels to print.
    #[error("{op} has no generated kernels: {why}")]
    HostOnly {
        /// The op.
        op: OpKind,
        /// What it is and how to run it.
        why: &'static str,
    },
    /// The problem does not fit the device (found before anything is allocated).
    #[error(transparent)]
    TooLarge(#[from] plan::SizeError),
    /// The schedule asks for tensor cores (`mma = cmma`) the device or the tile cannot use.
    #[error("{op} with schedule {schedule}: {why}")]
    NoTensorCores {
        /// The op.
        op: OpKind,
        /// The schedule as written.
        schedule: kernels_ir::Schedule,
        /// What is missing, and the fix.
        why: String,
    },
}
