//! Generated sources without a device: the CUDA C++ and WGSL that the kernels of a spec compile
//! to, for snapshots, for `sparsecube gen`, and for compiling CUDA offline.
//!
//! A kernel's source comes from `define()` on its launch struct, which needs a `ComputeClient`.
//! cubecl 0.10's dummy-kernel path does not compile, so [`Offline`] is a runtime with no device:
//! its server holds synthetic properties of an sm_90 GPU (warp 32, the CUDA dialect's supported
//! types) and refuses every I/O call with an error.

use crate::LowerError;
use crate::plan::{
    Arg, DeviceLimits, Float as FloatTy, Kernel, Launch, LowerOptions, Lowering, lower,
};
use cubecl::prelude::*;
use cubecl_common::backtrace::BackTrace;
use cubecl_common::bytes::Bytes;
use cubecl_common::device::{Device, DeviceId, DeviceService, ServerUtilitiesHandle};
use cubecl_common::future::DynFut;
use cubecl_common::profile::{ProfileDuration, TimingMethod};
use cubecl_common::stream_id::StreamId;
use cubecl_ir::{DeviceProperties, HardwareProperties, MemoryDeviceProperties, VectorSize};
use cubecl_runtime::allocator::ContiguousMemoryLayoutPolicy;
use cubecl_runtime::compiler::{CompilationError, Compiler, CubeTask};
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{ManagedMemoryHandle, MemoryAllocationMode, MemoryUsage};
use cubecl_runtime::server::{
    Binding, ComputeServer, CopyDescriptor, KernelArguments, ProfileError, ProfilingToken,
    ServerCommunication, ServerError, ServerUtilities,
};
use cubecl_runtime::storage::{BytesStorage, ComputeStorage, ManagedResource};
use kernels_ir::{DType, Direction, KernelSpec};
use std::sync::Arc;

/// Which source language to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// CUDA C++ as cubecl's CUDA runtime hands it to NVRTC.
    Cuda,
    /// WGSL as cubecl's wgpu runtime hands it to the driver.
    Wgsl,
}

/// One generated kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    /// The name of the plan's launch it was printed for (`spt_select`, `routed_up`, ...).
    pub kernel: String,
    /// The generated source.
    pub source: String,
}

/// The device-less "GPU" every offline source is generated for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OfflineDevice;

impl Device for OfflineDevice {
    fn from_id(_: DeviceId) -> Self {
        OfflineDevice
    }
    fn to_id(&self) -> DeviceId {
        // A type id no real runtime uses, so this server never shares a slot with one.
        DeviceId {
            type_id: 0x5C00,
            index_id: 0,
        }
    }
}

/// A server that only knows its properties.
#[derive(Debug)]
pub struct OfflineServer {
    utilities: Arc<ServerUtilities<Self>>,
}

fn no_device() -> ServerError {
    ServerError::Generic {
        reason: "the offline runtime has no device: it only prints sources".into(),
        backtrace: BackTrace::capture(),
    }
}

fn sm90_properties() -> DeviceProperties {
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 1024,
        max_shared_memory_size: 227 * 1024,
        max_cube_count: (2_147_483_647, 65_535, 65_535),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(132),
        num_tensor_cores: None,
        min_tensor_cores_dim: None,
        num_cpu_cores: None,
        max_vector_size: VectorSize::MAX,
    };
    let memory = MemoryDeviceProperties {
        max_page_size: 1 << 30,
        alignment: 512,
    };
    let mut props =
        DeviceProperties::new(Default::default(), memory, hardware, TimingMethod::System);
    cubecl_cpp::register_supported_types(&mut props);
    // sm_90's WMMA shapes, as cubecl-cuda registers them on a live H100: what the tile
    // program's tensor-core mainloop is printed and compiled for.
    let arch = cubecl_cpp::cuda::arch::CudaArchitecture { version: 90 };
    cubecl_cpp::shared::register_wmma_features(
        <cubecl_cpp::cuda::mma::CudaWmmaCompiler as cubecl_cpp::DialectWmmaCompiler<
            cubecl_cpp::cuda::CudaDialect<cubecl_cpp::cuda::mma::CudaWmmaCompiler>,
        >>::supported_wmma_combinations(&arch),
        &mut props,
    );
    props
}

impl DeviceService for OfflineServer {
    fn init(_: DeviceId) -> Self {
        let utilities = ServerUtilities::new(
            sm90_properties(),
            Arc::new(ServerLogger::default()),
            (),
            ContiguousMemoryLayoutPolicy::new(512),
        );
        Self {
            utilities: Arc::new(utilities),
        }
    }
    fn utilities(&self) -> ServerUtilitiesHandle {
        self.utilities.clone()
    }
}

impl ServerCommunication for OfflineServer {
    const SERVER_COMM_ENABLED: bool = false;
}

impl ComputeServer for OfflineServer {
    type Kernel = Box<dyn CubeTask<cubecl::cuda::CudaCompiler>>;
    type Info = ();
    type MemoryLayoutPolicy = ContiguousMemoryLayoutPolicy;
    type Storage = BytesStorage;

    fn initialize_memory(&mut self, _: ManagedMemoryHandle, _: u64, _: StreamId) {}
    fn logger(&self) -> Arc<ServerLogger> {
        self.utilities.logger.clone()
    }
    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }
    fn read(
        &mut self,
        _: Vec<CopyDescriptor>,
        _: StreamId,
    ) -> DynFut<Result<Vec<Bytes>, ServerError>> {
        Box::pin(async { Err(no_device()) })
    }
    fn write(&mut self, _: Vec<(CopyDescriptor, Bytes)>, _: StreamId) {
        // Unreachable from input: the offline runtime only compiles (`gen`, the NVRTC check); no
        // code path hands it data.
        panic!("the offline runtime has no device: nothing can be written to it");
    }
    fn sync(&mut self, _: StreamId) -> DynFut<Result<(), ServerError>> {
        Box::pin(async { Err(no_device()) })
    }
    fn get_resource(
        &mut self,
        _: Binding,
        _: StreamId,
    ) -> Result<ManagedResource<<Self::Storage as ComputeStorage>::Resource>, ServerError> {
        Err(no_device())
    }
    #[allow(unsafe_code)]
    unsafe fn launch(
        &mut self,
        _: Self::Kernel,
        _: CubeCount,
        _: KernelArguments,
        _: ExecutionMode,
        _: StreamId,
    ) {
        panic!(
            "the offline runtime has no device: kernels can be defined and compiled, not launched"
        );
    }
    fn flush(&mut self, _: StreamId) -> Result<(), ServerError> {
        Ok(())
    }
    fn memory_usage(&mut self, _: StreamId) -> Result<MemoryUsage, ServerError> {
        Err(no_device())
    }
    fn memory_cleanup(&mut self, _: StreamId) {}
    fn start_profile(&mut self, _: StreamId) -> Result<ProfilingToken, ServerError> {
        Err(no_device())
    }
    fn end_profile(
        &mut self,
        _: StreamId,
        _: ProfilingToken,
    ) -> Result<ProfileDuration, ProfileError> {
        Err(ProfileError::Unknown {
            reason: "the offline runtime has no device".into(),
            backtrace: BackTrace::capture(),
        })
    }
    fn allocation_mode(&mut self, _: MemoryAllocationMode, _: StreamId) {}
}

/// The device-less runtime (CUDA dialect).
#[derive(Clone, Copy, Debug)]
pub struct Offline;

impl Runtime for Offline {
    type Compiler = cubecl::cuda::CudaCompiler;
    type Server = OfflineServer;
    type Device = OfflineDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }
    fn name(_: &ComputeClient<Self>) -> &'static str {
        "offline"
    }
    fn max_cube_count() -> (u32, u32, u32) {
        (2_147_483_647, 65_535, 65_535)
    }
    fn can_read_tensor(_: &cubecl::zspace::Shape, _: &cubecl::zspace::Strides) -> bool {
        false
    }
    fn target_properties() -> cubecl_ir::TargetProperties {
        <cubecl::cuda::CudaRuntime as Runtime>::target_properties()
    }
    fn enumerate_devices(_: u16, _: &()) -> Vec<DeviceId> {
        vec![OfflineDevice.to_id()]
    }
}

fn compile(def: KernelDefinition, target: Target) -> Result<String, CompilationError> {
    let address = AddressType::U32.unsigned_type();
    Ok(match target {
        Target::Cuda => {
            let options = cubecl_cpp::shared::CompilationOptions {
                warp_size: 32,
                ..Default::default()
            };
            cubecl::cuda::CudaCompiler::default()
                .compile(def, &options, ExecutionMode::Unchecked, address)?
                .to_string()
        }
        Target::Wgsl => cubecl::wgpu::WgslCompiler::default()
            .compile(def, &Default::default(), ExecutionMode::Unchecked, address)?
            .to_string(),
    })
}

/// The variable number of an uninitialised local declaration (`float l_mut_7;`,
/// `float l_arr_9[64];`, `var l_mut_7: f32;`), or `None` for any other line.
fn declared_local(line: &str) -> Option<u64> {
    let t = line.trim();
    if !t.ends_with(';') || t.contains('=') {
        return None;
    }
    let at = t
        .find("l_mut_")
        .map(|i| i + 6)
        .or_else(|| t.find("l_arr_").map(|i| i + 6))?;
    let digits: String = t[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Sorts every run of consecutive uninitialised local declarations by variable number.
/// cubecl-opt 0.10 emits them in `HashMap` order, which changes from one call to the next; their
/// order within the block has no meaning, so sorting makes the source stable without changing it.
/// CUDA shared-memory buffers are laid out canonically too (see `canonical_shared`).
pub fn canonicalize(source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut out: Vec<&str> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        while i < lines.len() && declared_local(lines[i]).is_some() {
            i += 1;
        }
        if i > start {
            let mut run = lines[start..i].to_vec();
            run.sort_by_key(|l| declared_local(l));
            out.extend(run);
        } else {
            out.push(lines[i]);
            i += 1;
        }
    }
    let out = canonical_shared(&out);
    let mut text = out.join("\n");
    if source.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// A CUDA shared-memory declaration pair (`// Shared array size: N, B bytes` then
/// `T *shared_memory_K = reinterpret_cast<T*>(&dynamic_shared_mem[OFF]);`): (K, B, the text
/// before the offset, the text after it).
fn shared_decl<'a>(comment: &str, decl: &'a str) -> Option<(u64, usize, &'a str, &'a str)> {
    let bytes = comment
        .trim()
        .strip_prefix("// Shared array size:")?
        .split(',')
        .nth(1)?
        .trim()
        .strip_suffix("bytes")?
        .trim()
        .parse()
        .ok()?;
    let at = decl.find("shared_memory_")? + "shared_memory_".len();
    let id = decl[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()?;
    let open = decl.find("&dynamic_shared_mem[")? + "&dynamic_shared_mem[".len();
    let close = open + decl[open..].find(']')?;
    Some((id, bytes, &decl[..open], &decl[close..]))
}

/// Rewrites every run of CUDA shared-memory declarations in buffer-number order, laid out one
/// after the other (32-byte aligned). cubecl-opt 0.10 picks both their order and their offsets in
/// `HashMap` order (a kernel with two buffers prints four variants); any non-overlapping layout
/// is a valid one, so the canonical source is as correct as the one the runtime compiles.
fn canonical_shared(lines: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let mut run = Vec::new();
        while i + 1 < lines.len() {
            match shared_decl(lines[i], lines[i + 1]) {
                Some(d) => {
                    run.push((d, lines[i]));
                    i += 2;
                }
                None => break,
            }
        }
        if run.is_empty() {
            out.push(lines[i].to_string());
            i += 1;
            continue;
        }
        run.sort_by_key(|((id, ..), _)| *id);
        let mut offset = 0usize;
        for ((_, bytes, head, tail), comment) in run {
            out.push(comment.to_string());
            out.push(format!("{head}{offset}{tail}"));
            // 32 bytes: WMMA fragments start on 256-bit boundaries.
            offset += bytes.div_ceil(32) * 32;
        }
    }
    out
}

macro_rules! kernel_type {
    (generic, $($path:tt)*) => { $($path)*<F, Offline> };
    (plain, $($path:tt)*) => { $($path)*<Offline> };
}

macro_rules! compile_arg {
    (a, $args:ident) => {{
        $args.next();
        ArrayCompilationArg { inplace: None }
    }};
    (q, $args:ident) => {{
        match $args.next() {
            Some(Arg::Bufs(list)) => SequenceCompilationArg {
                values: list
                    .iter()
                    .map(|_| ArrayCompilationArg { inplace: None })
                    .collect(),
            },
            // Unreachable from input: the kernel table and the plans are built together in codegen;
            // a mismatch is caught by the emit tests of every op.
            other => panic!("a sequence parameter takes a buffer list, the plan gives {other:?}"),
        }
    }};
    (s, $args:ident) => {{
        match $args.next() {
            Some(Arg::Scalars(list)) => SequenceCompilationArg::<u32> {
                values: list.iter().map(|_| ()).collect(),
            },
            other => panic!("a scalar-list parameter takes a list, the plan gives {other:?}"),
        }
    }};
    (u, $args:ident) => {{
        $args.next();
    }};
    (f, $args:ident) => {{
        $args.next();
    }};
}

macro_rules! define_table {
    ($k:tt; $( $(#[$doc:meta])* $v:ident ( $($f:ident : $t:ty),* ) = $($seg:ident)::+ , $s:ident , $gen:ident , ( $($p:ident)* ) ; )* ) => {
        /// The definition of `launch`'s kernel (for its cube dimension and buffer counts) with
        /// float type `F`, on the offline runtime.
        #[allow(clippy::unit_arg)]
        fn define<F: Float + CubeElement>(launch: &Launch, client: &ComputeClient<Offline>) -> KernelDefinition {
            let settings = KernelSettings::default()
                .cube_dim(CubeDim::new_3d(launch.dim.0, launch.dim.1, launch.dim.2))
                .address_type(AddressType::U32);
            let mut args = launch.args.iter();
            match &launch.kernel {
                $( Kernel::$v($($f),*) => {
                    <kernel_type!($gen, $k::$($seg)::+::$s)>::new(
                        settings,
                        client.clone(),
                        $( compile_arg!($p, args), )*
                        $( $f.clone(), )*
                    )
                    .define()
                } )*
            }
        }
    };
}

crate::kernel_table!(define_table);

/// The sources of every distinct kernel the plans of `lowering` launch (each under the name of
/// its first launch), for storage dtype `F`.
fn compile_plans<F: Float + CubeElement>(
    lowering: &Lowering,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    lowering
        .kernels()
        .into_iter()
        .map(|l| {
            let def = match l.float {
                FloatTy::Storage => define::<F>(l, &client),
                FloatTy::F32 => define::<f32>(l, &client),
            };
            Ok(KernelSource {
                kernel: l.name.clone(),
                source: canonicalize(&compile(def, target)?),
            })
        })
        .collect()
}

/// The source of every kernel the plans of `lowering` launch (storage dtype `dtype`), as
/// `target` source: exactly the set a device runs for them.
pub fn plan_sources(
    lowering: &Lowering,
    dtype: DType,
    target: Target,
) -> Result<Vec<KernelSource>, LowerError> {
    let op = lowering.forward.op;
    let fail = |e: CompilationError| LowerError::Unsupported {
        op,
        what: format!("source generation ({e:?})"),
    };
    match (dtype, target) {
        (DType::BF16, Target::Wgsl) => Err(LowerError::Unsupported {
            op,
            what: "bf16 storage in WGSL (WGSL has no bf16)".into(),
        }),
        (DType::F32, _) => compile_plans::<f32>(lowering, target).map_err(fail),
        (DType::F16, _) => compile_plans::<half::f16>(lowering, target).map_err(fail),
        (DType::BF16, _) => compile_plans::<half::bf16>(lowering, target).map_err(fail),
        (DType::I64, _) => Err(LowerError::Unsupported {
            op,
            what: "i64 storage".into(),
        }),
    }
}

/// The plans `gen` prints and compiles for `spec`: the training step (forward and backward,
/// for ops with a backward) on an sm_90 GPU, with every optional input present (the kernels
/// read them then).
pub fn printed_lowering(spec: &KernelSpec) -> Result<Lowering, LowerError> {
    lowering_for(spec, Target::Cuda)
}

/// [`printed_lowering`] for `target`: WGSL has no tensor cores (CubeCL 0.10's WGSL compiler
/// has no cooperative matrices), so its plans take the scalar mainloop — and a schedule that
/// insists on tensor cores (`mma = cmma`) is refused for it.
pub fn lowering_for(spec: &KernelSpec, target: Target) -> Result<Lowering, LowerError> {
    let mut spec = spec.clone();
    if spec.op.has_backward() {
        spec.direction = Direction::Backward;
    }
    let device = match target {
        Target::Cuda => DeviceLimits::sm90(),
        Target::Wgsl => DeviceLimits {
            tensor_cores: Default::default(),
            ..DeviceLimits::sm90()
        },
    };
    lower(&spec, &LowerOptions::new(device).given(["noise"]))
}

/// Every kernel a spec lowers to (forward and backward), as `target` source. `monarch-project`
/// has none: it is a one-time host conversion (a truncated SVD per sub-block, f64).
pub fn sources(spec: &KernelSpec, target: Target) -> Result<Vec<KernelSource>, LowerError> {
    plan_sources(&lowering_for(spec, target)?, spec.dtype, target)
}
