//! `sparsecube-runtime`: the devices sparsecube runs on and the clients that reach them.
//!
//! What it is: discovery (CUDA when a driver and a device are present, else a Vulkan/Metal/DX12
//! adapter through wgpu — lavapipe on CI —, else the reference executor), a [`Device`] handle,
//! and [`run`], which executes a verified spec on named host tensors on that device.
//!
//! What it is not: the kernels (`sparsecube-codegen`) or the meaning of an op
//! (`kernels_ir::reference`, which every device path is tested against).

pub mod bench;
pub mod exec;
mod execute;
pub mod io;
pub mod optim;
pub mod selftest;
pub mod tune;

use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

pub use execute::{dense_attention, run, run_with};

/// Where an op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// An NVIDIA GPU through CUDA (NVRTC compiles the generated CUDA C++ at run time).
    Cuda,
    /// A Vulkan/Metal/DX12 adapter through wgpu (on CI: Mesa's lavapipe, on the CPU).
    Wgpu,
    /// The f64 reference executor on the host.
    Reference,
}

impl DeviceKind {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Reference => "reference",
        }
    }
}

/// A device that was found and opened.
#[derive(Clone)]
pub enum Device {
    /// CUDA device 0.
    Cuda(ComputeClient<CudaRuntime>),
    /// The default wgpu adapter.
    Wgpu(ComputeClient<WgpuRuntime>),
    /// The host reference executor.
    Reference,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().name())
    }
}

impl Device {
    /// Which kind it is.
    pub fn kind(&self) -> DeviceKind {
        match self {
            Device::Cuda(_) => DeviceKind::Cuda,
            Device::Wgpu(_) => DeviceKind::Wgpu,
            Device::Reference => DeviceKind::Reference,
        }
    }

    /// The limits plans are checked against on this device (`None` for the host reference).
    pub fn limits(&self) -> Option<sparsecube_codegen::plan::DeviceLimits> {
        match self {
            Device::Cuda(c) => Some(exec::limits(c)),
            Device::Wgpu(c) => Some(exec::limits(c)),
            Device::Reference => None,
        }
    }

    /// The points of `spec`'s schedule space ([`kernels_ir::Schedule::space`]) this device can
    /// run: those whose mainloop it has (no `mma = cmma` without tensor cores for the dtype)
    /// and whose tiles fit its shared memory, each distinct mainloop once (`mma = auto` and
    /// the strategy it resolves to here are one point). The spec's own schedule comes first,
    /// as in the IR's space. What the autotuner sweeps.
    pub fn schedule_space(&self, spec: &kernels_ir::KernelSpec) -> Vec<kernels_ir::Schedule> {
        self.fits(spec.schedule.space(spec.op), spec)
    }

    /// [`Device::schedule_space`] restricted to the spec's schedule and each single-knob change
    /// of it ([`kernels_ir::Schedule::axes`]).
    pub fn schedule_axes(&self, spec: &kernels_ir::KernelSpec) -> Vec<kernels_ir::Schedule> {
        self.fits(spec.schedule.axes(spec.op), spec)
    }

    fn fits(
        &self,
        points: Vec<kernels_ir::Schedule>,
        spec: &kernels_ir::KernelSpec,
    ) -> Vec<kernels_ir::Schedule> {
        let Some(limits) = self.limits() else {
            return points;
        };
        if !spec.op.tiled() {
            return points;
        }
        let mut seen = std::collections::HashSet::new();
        let first = spec.schedule;
        points
            .into_iter()
            .filter(|s| {
                // The spec's own schedule stays first even where it cannot lower (`mma = cmma`
                // without tensor cores): running it reports the typed error.
                let Ok(shape) = sparsecube_codegen::tile::shape(s, spec.op, spec.dtype, &limits)
                else {
                    return *s == first;
                };
                (*s == first || shape.shared_bytes() <= limits.max_shared_bytes)
                    && seen.insert(shape)
            })
            .collect()
    }
}

/// Why a device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The requested device is not present.
    #[error("device `{kind}` is not available: {reason}")]
    Unavailable {
        /// The device.
        kind: &'static str,
        /// What was missing.
        reason: String,
    },
    /// The spec cannot run on generated kernels yet, or is invalid.
    #[error(transparent)]
    Lower(#[from] sparsecube_codegen::LowerError),
    /// The spec does not verify.
    #[error(transparent)]
    Spec(#[from] kernels_ir::VerifyErrors),
    /// The inputs do not fit the spec.
    #[error(transparent)]
    Reference(#[from] kernels_ir::reference::ReferenceError),
    /// The caller's bindings do not fit a plan, or the problem does not fit the device.
    #[error(transparent)]
    Plan(#[from] sparsecube_codegen::plan::PlanError),
    /// The device failed while running.
    #[error("{kind} device failed: {message}")]
    Device {
        /// The device.
        kind: &'static str,
        /// The device's message.
        message: String,
    },
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic (cubecl's way to report a missing driver or adapter) into a message,
/// without printing the panic to stderr.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f)).map_err(panic_message);
    std::panic::set_hook(hook);
    result
}

/// Whether the CUDA driver library can be loaded (what cudarc itself checks before any call).
#[allow(unsafe_code)]
fn cuda_driver_present() -> bool {
    // SAFETY: loading libcuda runs its initialisers, as any CUDA program does; the library is
    // dropped at once and no symbol is called.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

/// Opens CUDA device 0: the driver must load and report at least one device.
pub fn cuda() -> Result<Device, RuntimeError> {
    static CLIENT: OnceLock<Result<ComputeClient<CudaRuntime>, String>> = OnceLock::new();
    let result = CLIENT.get_or_init(|| {
        if !cuda_driver_present() {
            return Err("no CUDA driver (libcuda.so.1 cannot be loaded)".into());
        }
        let count = quietly(|| CudaRuntime::enumerate_all_devices(&()).len())?;
        if count == 0 {
            return Err("the CUDA driver reports no device".into());
        }
        quietly(|| CudaRuntime::client(&CudaDevice::new(0)))
    });
    match result {
        Ok(c) => Ok(Device::Cuda(c.clone())),
        Err(reason) => Err(RuntimeError::Unavailable {
            kind: "cuda",
            reason: reason.clone(),
        }),
    }
}

/// CUDA devices the driver reports (0 without a driver).
pub fn cuda_device_count() -> usize {
    if !cuda_driver_present() {
        return 0;
    }
    quietly(|| CudaRuntime::enumerate_all_devices(&()).len()).unwrap_or(0)
}

/// The wgpu adapter's (name, driver and driver info, backend) once it is opened.
static WGPU_ADAPTER: OnceLock<(String, String)> = OnceLock::new();
/// Whether the opened wgpu adapter is a software rasteriser on the CPU (lavapipe, SwiftShader).
static WGPU_ON_CPU: OnceLock<bool> = OnceLock::new();

/// Whether the wgpu adapter (opened by [`wgpu`]) runs on the CPU; false before it is opened.
pub fn wgpu_on_cpu() -> bool {
    WGPU_ON_CPU.get().copied().unwrap_or(false)
}

/// The default adapter's setup (instance, adapter, device), once [`wgpu`] opened it.
static WGPU_SETUP: OnceLock<cubecl::wgpu::WgpuSetup> = OnceLock::new();

/// Opens the default wgpu adapter (a discrete or integrated GPU, else a software one).
pub fn wgpu() -> Result<Device, RuntimeError> {
    static CLIENT: OnceLock<Result<ComputeClient<WgpuRuntime>, String>> = OnceLock::new();
    let result = CLIENT.get_or_init(|| {
        quietly(|| {
            // The same setup `WgpuRuntime::client` makes on first use, done here to keep the
            // adapter's name and driver (the tuning cache's key).
            let setup = cubecl::wgpu::init_setup::<cubecl::wgpu::AutoGraphicsApi>(
                &WgpuDevice::DefaultDevice,
                cubecl::wgpu::RuntimeOptions::default(),
            );
            let info = setup.adapter.get_info();
            let _ = WGPU_ON_CPU.set(info.device_type == wgpu::DeviceType::Cpu);
            let _ = WGPU_SETUP.set(setup);
            let _ = WGPU_ADAPTER.set((
                info.name.clone(),
                format!("{} {} ({:?})", info.driver, info.driver_info, info.backend),
            ));
            let client = WgpuRuntime::client(&WgpuDevice::DefaultDevice);
            let _ = client.properties();
            client
        })
        .map_err(|m| format!("no Vulkan/Metal/DX12 adapter ({m}); on Linux install mesa-vulkan-drivers for lavapipe"))
    });
    match result {
        Ok(c) => Ok(Device::Wgpu(c.clone())),
        Err(reason) => Err(RuntimeError::Unavailable {
            kind: "wgpu",
            reason: reason.clone(),
        }),
    }
}

/// The wgpu devices of `n` data-parallel replicas in this process, one per replica.
///
/// - One replica: the default adapter ([`wgpu`]'s).
/// - Several, the default adapter a GPU: one adapter each, of the default's type
///   (`DiscreteGpu(0)`, `DiscreteGpu(1)`, … in wgpu's enumeration order), and a typed error
///   naming the adapters present when there are fewer than `n`.
/// - Several, the default adapter a software one on the CPU (lavapipe, SwiftShader): a logical
///   device each on that adapter, with its own queue and memory; the replicas share the host's
///   cores, as ndarray's replicas do. These devices live as long as the process and are reused by
///   later runs.
pub fn wgpu_replicas(n: usize) -> Result<Vec<WgpuDevice>, RuntimeError> {
    let unavailable = |reason: String| RuntimeError::Unavailable {
        kind: "wgpu",
        reason,
    };
    wgpu()?;
    if n <= 1 {
        return Ok(vec![WgpuDevice::DefaultDevice]);
    }
    let setup = WGPU_SETUP
        .get()
        .ok_or_else(|| unavailable("the default adapter's setup was not kept".into()))?;
    let kind = setup.adapter.get_info().device_type;
    if kind == wgpu::DeviceType::Cpu {
        return wgpu_logical_devices(setup, n).map_err(unavailable);
    }
    let adapters =
        cubecl::future::block_on(setup.instance.enumerate_adapters(setup.backend.into()));
    let same: Vec<String> = adapters
        .iter()
        .map(|a| a.get_info())
        .filter(|i| i.device_type == kind)
        .map(|i| i.name)
        .collect();
    if same.len() < n {
        return Err(unavailable(format!(
            "--replicas {n} needs {n} adapters of the default's type ({kind:?}); this machine has {}{}",
            same.len(),
            if same.is_empty() {
                String::new()
            } else {
                format!(" ({})", same.join(", "))
            }
        )));
    }
    Ok((0..n)
        .map(|i| match kind {
            wgpu::DeviceType::IntegratedGpu => WgpuDevice::IntegratedGpu(i),
            wgpu::DeviceType::VirtualGpu => WgpuDevice::VirtualGpu(i),
            _ => WgpuDevice::DiscreteGpu(i),
        })
        .collect())
}

/// `n` logical devices on the default adapter (kept for the process's later runs: a device
/// registered with cubecl is never dropped).
fn wgpu_logical_devices(
    setup: &cubecl::wgpu::WgpuSetup,
    n: usize,
) -> Result<Vec<WgpuDevice>, String> {
    static MADE: std::sync::Mutex<Vec<WgpuDevice>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    while made.len() < n {
        let (device, queue) = cubecl::future::block_on(
            setup
                .adapter
                .request_device(&device_descriptor(&setup.adapter)),
        )
        .map_err(|e| {
            format!(
                "cannot open logical device {} on {} for a replica: {e}",
                made.len(),
                setup.adapter.get_info().name
            )
        })?;
        let one = cubecl::wgpu::WgpuSetup {
            instance: setup.instance.clone(),
            adapter: setup.adapter.clone(),
            device,
            queue,
            backend: setup.backend,
        };
        let id = quietly(|| {
            let id = cubecl::wgpu::init_device(one, cubecl::wgpu::RuntimeOptions::default());
            let _ = WgpuRuntime::client(&id).properties();
            id
        })?;
        made.push(id);
    }
    Ok(made[..n].to_vec())
}

/// What cubecl's WGSL runtime asks of an adapter (cubecl-wgpu 0.10 `backend::wgsl::request_device`,
/// which is private): every feature but mappable primary buffers, the adapter's own limits.
#[allow(unsafe_code)]
fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("sparsecube replica"),
        required_features: adapter
            .features()
            .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        trace: wgpu::Trace::Off,
        // SAFETY: the same experimental features cubecl enables on the devices it opens itself
        // (shader passthrough); this device runs the same compiled kernels.
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
    }
}

/// The device for `kind`; `None` picks the fastest present: CUDA, else wgpu, else the reference.
pub fn open(kind: Option<DeviceKind>) -> Result<Device, RuntimeError> {
    match kind {
        Some(DeviceKind::Cuda) => cuda(),
        Some(DeviceKind::Wgpu) => wgpu(),
        Some(DeviceKind::Reference) => Ok(Device::Reference),
        None => Ok(cuda().or_else(|_| wgpu()).unwrap_or(Device::Reference)),
    }
}

/// CUDA device 0's name and the driver's version, through the driver API (libcuda is loaded and
/// initialised by then: only called on an opened CUDA device).
#[allow(unsafe_code)]
fn cuda_name_and_driver() -> Option<(String, String)> {
    type GetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    type GetVersion = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: the signatures are the CUDA driver API's `cuDeviceGetName(char*, int, CUdevice)`
    // and `cuDriverGetVersion(int*)`; the buffer outlives the call and its length is passed;
    // both return CUDA_SUCCESS (0) or an error code, checked before the outputs are read.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").ok()?;
        let get_name: libloading::Symbol<GetName> = lib.get(b"cuDeviceGetName\0").ok()?;
        let get_version: libloading::Symbol<GetVersion> = lib.get(b"cuDriverGetVersion\0").ok()?;
        let mut buf = [0 as std::ffi::c_char; 256];
        if get_name(buf.as_mut_ptr(), buf.len() as i32, 0) != 0 {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        let mut version = 0i32;
        if get_version(&mut version) != 0 {
            return None;
        }
        Some((
            name,
            format!("CUDA driver {}.{}", version / 1000, (version % 1000) / 10),
        ))
    }
}

/// The name and driver of an opened device (what the tuning cache is keyed by).
pub fn device_name_and_driver(device: &Device) -> (String, String) {
    match device {
        Device::Cuda(_) => cuda_name_and_driver().unwrap_or_else(|| {
            (
                "CUDA device 0".into(),
                "CUDA driver (version unknown)".into(),
            )
        }),
        Device::Wgpu(_) => WGPU_ADAPTER
            .get()
            .cloned()
            .unwrap_or_else(|| ("wgpu default adapter".into(), "unknown driver".into())),
        Device::Reference => ("reference".into(), "host".into()),
    }
}

/// What each device kind reports on this machine, for `sparsecube devices` and test skips.
pub fn describe(kind: DeviceKind) -> Result<String, RuntimeError> {
    match open(Some(kind))? {
        Device::Cuda(c) => Ok(format!("CUDA device 0, {:?}", c.properties().hardware)),
        Device::Wgpu(c) => Ok(format!(
            "wgpu default adapter, {:?}",
            c.properties().hardware
        )),
        Device::Reference => Ok("f64 reference executor on the host".into()),
    }
}
