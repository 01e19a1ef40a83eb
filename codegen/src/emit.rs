//! Generated sources without a device: the CUDA C++ and WGSL that the kernels of a spec compile
//! to, for snapshots, for `sparsecube gen`, and for compiling CUDA offline.
//!
//! A kernel's source comes from `define()` on its launch struct, which needs a `ComputeClient`.
//! cubecl 0.10's dummy-kernel path does not compile, so [`Offline`] is a runtime with no device:
//! its server holds synthetic properties of an sm_90 GPU (warp 32, the CUDA dialect's supported
//! types) and refuses every I/O call with an error.

use crate::LowerError;
use crate::blockdiag::BlockDiagPlan;
use crate::blockdiag::kernels::{block_diag_bwd_dw, block_diag_bwd_dx, block_diag_fwd};
use crate::cbm::CbmPlan;
use crate::cbm::kernels::{
    cbm_bwd_dwc, cbm_bwd_dwh, cbm_bwd_dx, cbm_bwd_dz, cbm_concepts, cbm_logits, cbm_select,
};
use crate::dense::LinearPlan;
use crate::dense::kernels::{linear_bwd_dbias, linear_bwd_dw, linear_bwd_dx, linear_fwd};
use crate::monarch::MonarchPlan;
use crate::monarch::kernels::{
    MONARCH_UNITS, monarch_bwd_du, monarch_bwd_dw1, monarch_bwd_dw2, monarch_bwd_dx, monarch_fwd,
};
use crate::pst::PstPlan;
use crate::pst::kernels::{
    pst_bwd_cols, pst_bwd_dx, pst_bwd_rows, pst_bwd_w, pst_fwd, pst_mask, pst_score,
};
use crate::routed::RoutedPlan;
use crate::routed::kernels::{
    routed_bwd_db1, routed_bwd_db2, routed_bwd_dx, routed_bwd_dx_combine, routed_bwd_hidden,
    routed_bwd_router, routed_bwd_router_w, routed_bwd_w1, routed_bwd_w2, routed_combine,
    routed_count, routed_down, routed_fill, routed_gate, routed_offsets, routed_scan, routed_up,
};
use crate::sara::SaraPlan;
use crate::sara::kernels::{sara_adamw, sara_carry, sara_dv, sara_gather, sara_scatter};
use crate::select::kernels::{
    select_bins, select_count, select_cutoff, select_fill, select_hist, select_pick, select_scan,
};
use crate::spt::kernels::{
    pq_encode, spt_attend_fwd, spt_bwd_keys, spt_bwd_rows, spt_key_count, spt_key_fill,
    spt_key_offsets, spt_key_scan, spt_sddmm, spt_select, spt_softmax, spt_spmm,
};
use crate::spt::{EncodePlan, SptPlan};
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
use kernels_ir::{DType, KernelSpec, OpKind};
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
    /// The kernel's name in our pipeline (`spt_select`, ...).
    pub kernel: &'static str,
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
                .compile(def, &options, ExecutionMode::Checked, address)?
                .to_string()
        }
        Target::Wgsl => cubecl::wgpu::WgslCompiler::default()
            .compile(def, &Default::default(), ExecutionMode::Checked, address)?
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
/// after the other (16-byte aligned). cubecl-opt 0.10 picks both their order and their offsets in
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
            offset += bytes.div_ceil(16) * 16;
        }
    }
    out
}

fn settings() -> KernelSettings {
    KernelSettings::default()
        .cube_dim(CubeDim::new_1d(64))
        .address_type(AddressType::U32)
}

/// The cube of the tiled products ([`crate::tile`]).
fn tile_settings() -> KernelSettings {
    KernelSettings::default()
        .cube_dim(crate::tile::cube_dim())
        .address_type(AddressType::U32)
}

/// Lanes per row that the printed row kernels are specialised for: what the runtime picks on
/// NVIDIA GPUs (`spt::row_lanes`: 8 lanes per row, four rows per warp).
const PRINTED_LANES: u32 = crate::spt::ROW_LANES;

fn plane_settings() -> KernelSettings {
    let (dim, _) = crate::spt::plane_dims(PRINTED_LANES);
    KernelSettings::default()
        .cube_dim(dim)
        .address_type(AddressType::U32)
}

fn arg() -> ArrayCompilationArg {
    ArrayCompilationArg { inplace: None }
}

/// Compiles a family's kernel definitions to `target` source, canonicalised, in list order.
fn compile_all(
    defs: Vec<(&'static str, KernelDefinition)>,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    defs.into_iter()
        .map(|(kernel, def)| {
            Ok(KernelSource {
                kernel,
                source: canonicalize(&compile(def, target)?),
            })
        })
        .collect()
}

/// `(name, Kernel::<..>::new(settings, client.clone(), args...).define())`: one entry of a
/// family's list of kernel definitions.
macro_rules! kernel_def {
    ($client:expr, $name:expr, $kernel:ty, $settings:expr; $($arg:expr),* $(,)?) => {
        ($name, <$kernel>::new($settings, $client.clone(), $($arg),*).define())
    };
}

fn spt<F: Float + CubeElement>(
    plan: &SptPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let c = plan.cfg;
    let mut defs: Vec<(&'static str, KernelDefinition)> = vec![
        kernel_def!(client, "pq_encode", pq_encode::PqEncode<F, Offline>, settings(); arg(), arg(), arg(), c),
        kernel_def!(client, "spt_select", spt_select::SptSelect<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg(), (), c),
    ];
    if plan.fused {
        defs.push(kernel_def!(client, "spt_attend_fwd", spt_attend_fwd::SptAttendFwd<F, Offline>, plane_settings(); arg(), arg(), arg(), arg(), arg(), arg(), (), c, PRINTED_LANES));
    } else {
        defs.push(kernel_def!(client, "spt_sddmm", spt_sddmm::SptSddmm<F, Offline>, settings(); arg(), arg(), arg(), arg(), (), c));
        defs.push(kernel_def!(client, "spt_softmax", spt_softmax::SptSoftmax<Offline>, settings(); arg(), arg(), arg(), c.topk));
        defs.push(kernel_def!(client, "spt_spmm", spt_spmm::SptSpmm<F, Offline>, settings(); arg(), arg(), arg(), arg(), (), c));
    }
    defs.extend([
        kernel_def!(client, "spt_bwd_rows", spt_bwd_rows::SptBwdRows<F, Offline>, plane_settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), (), c, PRINTED_LANES),
        kernel_def!(client, "spt_key_count", spt_key_count::SptKeyCount<Offline>, settings(); arg(), arg(), (), c.topk),
        kernel_def!(client, "spt_key_scan", spt_key_scan::SptKeyScan<Offline>, settings(); arg(), arg(), ()),
        kernel_def!(client, "spt_key_offsets", spt_key_offsets::SptKeyOffsets<Offline>, settings(); arg(), ()),
        kernel_def!(client, "spt_key_fill", spt_key_fill::SptKeyFill<Offline>, settings(); arg(), arg(), arg(), arg(), (), c.topk),
        kernel_def!(client, "spt_bwd_keys", spt_bwd_keys::SptBwdKeys<F, Offline>, plane_settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), (), c, PRINTED_LANES),
    ]);
    compile_all(defs, target)
}

fn routed<F: Float + CubeElement>(
    plan: &RoutedPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let c = plan.cfg;
    let defs: Vec<(&'static str, KernelDefinition)> = vec![
        kernel_def!(client, "routed_gate", routed_gate::RoutedGate<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "routed_count", routed_count::RoutedCount<Offline>, settings(); arg(), arg(), (), c),
        kernel_def!(client, "routed_scan", routed_scan::RoutedScan<Offline>, settings(); arg(), arg(), c),
        kernel_def!(client, "routed_offsets", routed_offsets::RoutedOffsets<Offline>, settings(); arg(), c),
        kernel_def!(client, "routed_fill", routed_fill::RoutedFill<Offline>, settings(); arg(), arg(), arg(), arg(), arg(), (), c),
        kernel_def!(client, "routed_up", routed_up::RoutedUp<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), (), c),
        kernel_def!(client, "routed_down", routed_down::RoutedDown<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), (), c),
        kernel_def!(client, "routed_combine", routed_combine::RoutedCombine<F, Offline>, settings(); arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "routed_bwd_hidden", routed_bwd_hidden::RoutedBwdHidden<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), (), c),
        kernel_def!(client, "routed_bwd_router", routed_bwd_router::RoutedBwdRouter<Offline>, settings(); arg(), arg(), arg(), arg(), arg(), arg(), (), c),
        kernel_def!(client, "routed_bwd_dx", routed_bwd_dx::RoutedBwdDx<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "routed_bwd_dx_combine", routed_bwd_dx_combine::RoutedBwdDxCombine<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "routed_bwd_w1", routed_bwd_w1::RoutedBwdW1<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "routed_bwd_db1", routed_bwd_db1::RoutedBwdDb1<F, Offline>, settings(); arg(), arg(), arg(), c),
        kernel_def!(client, "routed_bwd_w2", routed_bwd_w2::RoutedBwdW2<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "routed_bwd_router_w", routed_bwd_router_w::RoutedBwdRouterW<F, Offline>, settings(); arg(), arg(), arg(), arg(), (), c),
        kernel_def!(client, "routed_bwd_db2", routed_bwd_db2::RoutedBwdDb2<F, Offline>, settings(); arg(), arg(), ()),
    ];
    compile_all(defs, target)
}

fn cbm<F: Float + CubeElement>(
    plan: &CbmPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let c = plan.cfg;
    let defs: Vec<(&'static str, KernelDefinition)> = vec![
        kernel_def!(client, "cbm_concepts", cbm_concepts::CbmConcepts<F, Offline>, settings(); arg(), arg(), arg(), c),
        kernel_def!(client, "cbm_select", cbm_select::CbmSelect<F, Offline>, settings(); arg(), arg(), arg(), c),
        kernel_def!(client, "cbm_logits", cbm_logits::CbmLogits<F, Offline>, settings(); arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "cbm_bwd_dz", cbm_bwd_dz::CbmBwdDz<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "cbm_bwd_dwh", cbm_bwd_dwh::CbmBwdDwh<F, Offline>, settings(); arg(), arg(), arg(), (), c),
        kernel_def!(client, "cbm_bwd_dwc", cbm_bwd_dwc::CbmBwdDwc<F, Offline>, settings(); arg(), arg(), arg(), (), c),
        kernel_def!(client, "cbm_bwd_dx", cbm_bwd_dx::CbmBwdDx<F, Offline>, settings(); arg(), arg(), arg(), arg(), c),
    ];
    compile_all(defs, target)
}

fn monarch<F: Float + CubeElement>(
    plan: &MonarchPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let c = plan.cfg;
    let fused = KernelSettings::default()
        .cube_dim(CubeDim::new_1d(MONARCH_UNITS))
        .address_type(AddressType::U32);
    let defs: Vec<(&'static str, KernelDefinition)> = vec![
        kernel_def!(client, "monarch_fwd", monarch_fwd::MonarchFwd<F, Offline>, fused; arg(), arg(), arg(), arg(), arg(), c, true),
        kernel_def!(client, "monarch_bwd_du", monarch_bwd_du::MonarchBwdDu<F, Offline>, settings(); arg(), arg(), arg(), c),
        kernel_def!(client, "monarch_bwd_dx", monarch_bwd_dx::MonarchBwdDx<F, Offline>, settings(); arg(), arg(), arg(), c),
        kernel_def!(client, "monarch_bwd_dw1", monarch_bwd_dw1::MonarchBwdDw1<F, Offline>, settings(); arg(), arg(), arg(), c),
        kernel_def!(client, "monarch_bwd_dw2", monarch_bwd_dw2::MonarchBwdDw2<F, Offline>, settings(); arg(), arg(), arg(), c),
    ];
    compile_all(defs, target)
}

fn dense_linear<F: Float + CubeElement>(
    plan: &LinearPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let c = plan.cfg;
    let defs: Vec<(&'static str, KernelDefinition)> = vec![
        kernel_def!(client, "linear_fwd", linear_fwd::LinearFwd<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "linear_bwd_dx", linear_bwd_dx::LinearBwdDx<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "linear_bwd_dw", linear_bwd_dw::LinearBwdDw<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "linear_bwd_dbias", linear_bwd_dbias::LinearBwdDbias<F, Offline>, settings(); arg(), arg(), c),
    ];
    compile_all(defs, target)
}

/// The selection's kernels (`crate::select`): the radix passes, the compaction's count, scan and
/// tie cutoff, and with `fill` the index list.
fn select_defs<F: Float + CubeElement>(
    client: &ComputeClient<Offline>,
    signed: bool,
    fill: bool,
) -> Vec<(&'static str, KernelDefinition)> {
    let mut defs: Vec<(&'static str, KernelDefinition)> = Vec::new();
    for (pass, name) in [
        "select_hist_pass0",
        "select_hist_pass1",
        "select_hist_pass2",
        "select_hist_pass3",
    ]
    .into_iter()
    .enumerate()
    {
        defs.push(kernel_def!(client, name, select_hist::SelectHist<F, Offline>, settings(); arg(), arg(), arg(), pass as u32, signed));
    }
    defs.extend([
        kernel_def!(client, "select_bins", select_bins::SelectBins<Offline>, settings(); arg(), arg()),
        kernel_def!(client, "select_pick", select_pick::SelectPick<Offline>, settings(); arg(), arg()),
        kernel_def!(client, "select_count", select_count::SelectCount<F, Offline>, settings(); arg(), arg(), arg(), signed),
        kernel_def!(client, "select_scan", select_scan::SelectScan<Offline>, settings(); arg(), arg()),
    ]);
    defs.push(kernel_def!(client, "select_cutoff", select_cutoff::SelectCutoff<F, Offline>, settings(); arg(), arg(), arg(), signed));
    if fill {
        defs.push(kernel_def!(client, "select_fill", select_fill::SelectFill<F, Offline>, settings(); arg(), arg(), arg(), arg(), signed));
    }
    defs
}

fn pst<F: Float + CubeElement>(
    plan: &PstPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let c = plan.cfg;
    let mut defs: Vec<(&'static str, KernelDefinition)> = vec![
        kernel_def!(client, "pst_score", pst_score::PstScore<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), c),
    ];
    // The selection runs over the f32 score, in signed order, to a pivot state.
    defs.extend(select_defs::<f32>(&client, true, false));
    defs.extend([
        kernel_def!(client, "pst_mask", pst_mask::PstMask<F, Offline>, settings(); arg(), arg(), arg()),
        kernel_def!(client, "pst_fwd", pst_fwd::PstFwd<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "pst_bwd_dx", pst_bwd_dx::PstBwdDx<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "pst_bwd_w", pst_bwd_w::PstBwdW<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "pst_bwd_rows", pst_bwd_rows::PstBwdRows<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "pst_bwd_cols", pst_bwd_cols::PstBwdCols<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg(), arg(), arg(), arg(), c),
    ]);
    let mut out: Vec<KernelSource> = defs
        .into_iter()
        .map(|(kernel, def)| {
            Ok(KernelSource {
                kernel,
                source: canonicalize(&compile(def, target)?),
            })
        })
        .collect::<Result<_, CompilationError>>()?;
    out.extend(
        dense_linear::<F>(
            &LinearPlan::new(plan.t, c.n_in as usize, c.n_out as usize, c.tk),
            target,
        )?
        .into_iter()
        .filter(|k| k.kernel == "linear_bwd_dbias"),
    );
    Ok(out)
}

fn sara<F: Float + CubeElement>(
    plan: &SaraPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let mut defs = select_defs::<F>(&client, false, true);
    defs.extend([
        kernel_def!(client, "sara_gather", sara_gather::SaraGather<F, Offline>, settings(); arg(), arg(), arg()),
        kernel_def!(client, "sara_scatter", sara_scatter::SaraScatter<F, Offline>, settings(); arg(), arg(), arg()),
        kernel_def!(client, "sara_dv", sara_dv::SaraDv<F, Offline>, settings(); arg(), arg(), arg(), arg(), plan.n_in as u32, plan.n_out as u32),
        kernel_def!(client, "sara_adamw", sara_adamw::SaraAdamw<F, Offline>, settings(); arg(), arg(), arg(), arg(), arg()),
        kernel_def!(client, "sara_carry", sara_carry::SaraCarry<Offline>, settings(); arg(), arg(), arg(), arg(), arg(), arg(), ()),
    ]);
    let mut out: Vec<KernelSource> = defs
        .into_iter()
        .map(|(kernel, def)| {
            Ok(KernelSource {
                kernel,
                source: canonicalize(&compile(def, target)?),
            })
        })
        .collect::<Result<_, CompilationError>>()?;
    // The forward GEMM and dx run on the dense linear's kernels (dw is never formed).
    out.extend(
        dense_linear::<F>(&plan.linear(), target)?
            .into_iter()
            .filter(|k| k.kernel != "linear_bwd_dw"),
    );
    Ok(out)
}

/// The sources of `$gen::<F>(&$plan, target)` for the spec's storage dtype `F` (f32, f16, bf16;
/// WGSL has no bf16, and no op stores i64 floats).
macro_rules! per_dtype {
    ($spec:expr, $target:expr, $gen:ident, $plan:expr) => {{
        let fail = |e: CompilationError| LowerError::Unsupported {
            op: $spec.op,
            what: format!("source generation ({e:?})"),
        };
        match ($spec.dtype, $target) {
            (DType::BF16, Target::Wgsl) => Err(LowerError::Unsupported {
                op: $spec.op,
                what: "bf16 storage in WGSL (WGSL has no bf16)".into(),
            }),
            (DType::F32, _) => $gen::<f32>(&$plan, $target).map_err(fail),
            (DType::F16, _) => $gen::<half::f16>(&$plan, $target).map_err(fail),
            (DType::BF16, _) => $gen::<half::bf16>(&$plan, $target).map_err(fail),
            (DType::I64, _) => Err(LowerError::Unsupported {
                op: $spec.op,
                what: "i64 storage".into(),
            }),
        }
    }};
}

/// Every kernel a spec lowers to, as `target` source. `monarch-project` has none: it is a
/// one-time host conversion (a truncated SVD per sub-block, f64).
pub fn sources(spec: &KernelSpec, target: Target) -> Result<Vec<KernelSource>, LowerError> {
    match spec.op {
        OpKind::SptAttention => per_dtype!(spec, target, spt, SptPlan::from_spec(spec)?),
        OpKind::PqEncode => per_dtype!(spec, target, pq_encode_only, EncodePlan::from_spec(spec)?),
        OpKind::RoutedFfn => per_dtype!(spec, target, routed, RoutedPlan::from_spec(spec)?),
        // Printed with the optional noise input present (the kernels read it then).
        OpKind::CbmHead => per_dtype!(spec, target, cbm, CbmPlan::from_spec(spec, true)?),
        OpKind::DenseLinear => {
            spec.verify()?;
            per_dtype!(spec, target, dense_linear, LinearPlan::from_spec(spec))
        }
        OpKind::PstLinear => per_dtype!(spec, target, pst, PstPlan::from_spec(spec)?),
        OpKind::SaraLinear => per_dtype!(spec, target, sara, SaraPlan::from_spec(spec)?),
        OpKind::Monarch => per_dtype!(spec, target, monarch, MonarchPlan::from_spec(spec)?),
        OpKind::BlockDiagLinear => {
            per_dtype!(spec, target, block_diag, BlockDiagPlan::from_spec(spec)?)
        }
        OpKind::MonarchProject => Err(LowerError::HostOnly {
            op: spec.op,
            why: "the projection is a one-time conversion, a truncated SVD per sub-block in f64 \
                  on the host (`sparsecube run monarch-project` runs it on any device)",
        }),
    }
}

/// `pq-encode` alone: the attention chain's encoding kernel.
fn pq_encode_only<F: Float + CubeElement>(
    plan: &EncodePlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let defs = vec![
        kernel_def!(client, "pq_encode", pq_encode::PqEncode<F, Offline>, settings(); arg(), arg(), arg(), plan.cfg),
    ];
    compile_all(defs, target)
}

/// The block-diagonal map's forward, dx and dw.
fn block_diag<F: Float + CubeElement>(
    plan: &BlockDiagPlan,
    target: Target,
) -> Result<Vec<KernelSource>, CompilationError> {
    let client = Offline::client(&OfflineDevice);
    let c = plan.cfg;
    let defs: Vec<(&'static str, KernelDefinition)> = vec![
        kernel_def!(client, "block_diag_fwd", block_diag_fwd::BlockDiagFwd<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "block_diag_bwd_dx", block_diag_bwd_dx::BlockDiagBwdDx<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), c),
        kernel_def!(client, "block_diag_bwd_dw", block_diag_bwd_dw::BlockDiagBwdDw<F, Offline>, tile_settings(); arg(), arg(), arg(), arg(), arg(), c),
    ];
    compile_all(defs, target)
}
