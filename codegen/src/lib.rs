//! `sparsecube-codegen`: lowering of `kernels-ir` specs to CubeCL kernels.
//!
//! What it is: per op family, a lowering from a verified [`kernels_ir::KernelSpec`] to a comptime
//! config (a hashable description of the work that specialises generic `#[cube]` kernels), the
//! kernels themselves, and launch functions generic over the CubeCL runtime (wgpu, CUDA).
//!
//! What it is not: device management (that is `sparsecube-runtime`) or the definition of correct
//! answers (that is `kernels_ir::reference`, which every kernel is tested against).

pub mod blockdiag;
pub mod cbm;
pub mod cuda_check;
pub mod dense;
pub mod emit;
mod launch;
pub mod monarch;
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
}
