//! `sparsecube-train`: the training runtime on Burn 0.21.
//!
//! What it is: a Burn backend extension ([`SparseBackend`]) with one entry point per sparse op
//! family, implemented for Burn's CubeCL backends (wgpu, CUDA) by launching the kernels of
//! `sparsecube-codegen` on the tensors' own buffers, and for every other backend (ndarray) by a
//! composition of tensor ops that follows METHODS.md; an autodiff implementation whose backward
//! launches our backward kernels; the sparse modules built on it; a BERT-layout encoder whose
//! attention, FFN and linears are switched per method; and the fine-tuning loop behind
//! `sparsecube finetune`.
//!
//! What it is not: the definition of the ops (that is `kernels_ir::reference`, which the
//! compositions follow and the tests compare against) or device discovery for single-op runs (that
//! is `sparsecube-runtime`).

pub mod backend;
pub mod bert;
pub mod checkpoint;
mod compose;
pub mod config;
mod cube;
pub mod data;
pub mod dsl;
#[doc = include_str!("../../../docs/dsl.md")]
pub mod dsl_guide {}
pub mod finetune;
mod guard;
pub mod model;
pub mod modules;
pub mod parallel;
pub mod params;
pub mod report;
pub mod text;

// The DSL's generated code names `::sparsecube_train::...`, in this crate too.
extern crate self as sparsecube_train;

pub use backend::{SparseBackend, SparseOp};
pub use compose::gelu_exact;
pub use sparsecube_macros::{SparseModel, sparse_kernel};

/// The CPU backend: ndarray, f32. The ops run as compositions of tensor ops.
pub type Cpu = burn::backend::NdArray<f32>;
/// The wgpu backend (Vulkan, Metal, DX12; lavapipe on a CPU): the ops run our kernels.
pub type Wgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
/// The CUDA backend: the ops run our kernels, compiled by NVRTC.
pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// Why a training-runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A module was built with sizes or arguments the op does not accept.
    #[error("{module}: {problem}; {fix}")]
    Config {
        /// The module.
        module: &'static str,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// The IR rejected a spec the module derived.
    #[error(transparent)]
    Spec(#[from] kernels_ir::VerifyErrors),
    /// The reference (projection, SVD) failed.
    #[error(transparent)]
    Reference(#[from] kernels_ir::reference::ReferenceError),
    /// A file could not be read or written.
    #[error("cannot {what} `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What was attempted.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint is unreadable or does not fit the model.
    #[error("checkpoint `{}`: {problem}; {fix}", path.display())]
    Checkpoint {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// A training step produced a non-finite loss or gradient: the run stopped before the
    /// optimizer applied it, so the last checkpoint is the last good state.
    #[error(
        "{method}: the {what} of step {step} (epoch {epoch}) is {value}; the run stopped before applying it. {next}"
    )]
    NonFinite {
        /// The method.
        method: String,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The global step (from 0).
        step: usize,
        /// The epoch (from 1).
        epoch: usize,
        /// The value seen.
        value: f32,
        /// Where the last good checkpoint is and what to change.
        next: String,
    },
    /// The backend failed mid-run (a device error: out of memory, a refused launch).
    #[error("{method}: the device failed: {problem}; {next}")]
    Device {
        /// The method.
        method: String,
        /// The backend's message.
        problem: String,
        /// Where the last checkpoint is and what to do.
        next: String,
    },
    /// The run was asked to stop (SIGINT, SIGTERM) and stopped between two steps.
    #[error("{method}: interrupted before step {step} (epoch {epoch}). {next}")]
    Interrupted {
        /// The method.
        method: String,
        /// The step that did not run.
        step: usize,
        /// Its epoch (from 1).
        epoch: usize,
        /// Where the last checkpoint is and how to continue.
        next: String,
    },
    /// A data-parallel run lost a peer or its replicas disagreed.
    #[error("data-parallel run: {problem}; {fix}")]
    Collective {
        /// What happened, naming the replica or node.
        problem: String,
        /// What to do.
        fix: &'static str,
    },
}

/// Bytes of device memory in use on a wgpu device (CubeCL's allocator).
pub fn wgpu_memory_in_use(device: &cubecl::wgpu::WgpuDevice) -> Option<u64> {
    use cubecl::prelude::Runtime;
    let client = cubecl::wgpu::WgpuRuntime::client(device);
    client.memory_usage().ok().map(|m| m.bytes_in_use)
}

/// Waits until each wgpu device has finished the work queued on it (errors ignored): what a
/// failed run does before the process exits, since exiting while lavapipe still runs or compiles
/// queued work can crash it in its exit handlers.
pub fn wgpu_settle(devices: &[cubecl::wgpu::WgpuDevice]) {
    use cubecl::prelude::Runtime;
    for device in devices {
        let client = cubecl::wgpu::WgpuRuntime::client(device);
        let _ = cubecl::future::block_on(client.sync());
    }
}

/// Bytes of device memory in use on CUDA device 0 (CubeCL's allocator).
pub fn cuda_memory_in_use() -> Option<u64> {
    use cubecl::prelude::Runtime;
    let client = cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice::new(0));
    client.memory_usage().ok().map(|m| m.bytes_in_use)
}
