//! The one executor: runs any [`LaunchPlan`] on a device. It checks the caller's bindings
//! against the plan's buffer table, allocates outputs and scratch at their first use (constants
//! and initialised state uploaded), releases scratch after its last use, reads back the plan's
//! count where it has one, and launches every kernel — unchecked by default (the plan derived
//! every binding length, and the bindings were checked against it), or checked (every access
//! clamped by CubeCL) with `SPARSECUBE_CHECKED=1`. This file holds the only kernel launch calls
//! of sparsecube: one dispatch, expanded from the codegen kernel table.

use crate::RuntimeError;
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels_ir::{DType, Extent};
use sparsecube_codegen::plan::{
    Arg, BufId, ConstData, Cubes, DeviceLimits, Elem, Float as FloatTy, Kernel, LaunchPlan, Step,
    TensorCores, input_names, shape_text,
};
use std::collections::BTreeMap;

/// Checked or unchecked launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CubeCL's unchecked launches: no bounds clamping beyond the kernels' own guards.
    Unchecked,
    /// CubeCL's checked launches: every global access clamped.
    Checked,
}

impl Mode {
    /// `Checked` when `SPARSECUBE_CHECKED=1`, else `Unchecked`.
    pub fn from_env() -> Self {
        match std::env::var("SPARSECUBE_CHECKED").as_deref() {
            Ok("1") | Ok("true") => Mode::Checked,
            _ => Mode::Unchecked,
        }
    }
}

/// What the device tells the lowering: cube counts, plane size, shared memory, buffer and
/// memory sizes.
pub fn limits<R: Runtime>(client: &ComputeClient<R>) -> DeviceLimits {
    let p = client.properties();
    let hw = &p.hardware;
    let page = p.memory.max_page_size;
    let (max_buffer_bytes, memory_bytes) = if R::name(client).contains("cuda") {
        // cubecl's CUDA pages are a quarter of the device's memory, and its largest memory
        // pool takes one page at most: a larger buffer fails inside cubecl (`BufferTooBig`).
        (page, page.saturating_mul(4))
    } else {
        // wgpu reports its largest binding, not the device's memory: the host's memory bounds
        // it (exact for a CPU adapter such as lavapipe).
        (page, host_memory().max(page))
    };
    DeviceLimits {
        max_cube_count: hw.max_cube_count,
        plane_size: hw.plane_size_max,
        max_shared_bytes: hw.max_shared_memory_size,
        max_buffer_bytes,
        memory_bytes,
        tensor_cores: tensor_cores(client),
    }
}

/// The WMMA shapes the tile program's tensor-core mainloop needs, as the device reports them
/// (none on wgpu: WGSL has no cooperative matrices in CubeCL 0.10).
pub fn tensor_cores<R: Runtime>(client: &ComputeClient<R>) -> TensorCores {
    use cubecl::ir::features::MmaConfig;
    use cubecl::ir::{ElemType, FloatKind};
    let cmma = &client.properties().features.matmul.cmma;
    let has = |kind: FloatKind, k: u32| {
        cmma.contains(&MmaConfig {
            a_type: ElemType::Float(kind).into(),
            b_type: ElemType::Float(kind).into(),
            cd_type: ElemType::Float(FloatKind::F32).into(),
            m: 16,
            n: 16,
            k,
        })
    };
    TensorCores {
        f16: has(FloatKind::F16, 16),
        bf16: has(FloatKind::BF16, 16),
        tf32: has(FloatKind::TF32, 8),
    }
}

/// The host's memory, bytes (`MemTotal` of /proc/meminfo; 16 GiB where it cannot be read).
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(16 << 30)
}

/// A buffer returned by [`execute`]: its handle, element type and resolved shape.
#[derive(Clone, Debug)]
pub struct Returned {
    /// The device buffer.
    pub handle: Handle,
    /// Element type.
    pub elem: Elem,
    /// Shape, with the plan's count resolved.
    pub shape: Vec<usize>,
}

/// What [`execute`] returns: every output and saved buffer by name, and the count.
#[derive(Clone, Debug, Default)]
pub struct Executed {
    /// Returned buffers by name.
    pub buffers: BTreeMap<String, Returned>,
    /// The plan's count (nnz), where it has one.
    pub nnz: usize,
}

impl Executed {
    /// The handle of returned buffer `name`.
    pub fn handle(&self, name: &str) -> Option<&Handle> {
        self.buffers.get(name).map(|r| &r.handle)
    }
}

/// One argument ready for a launch.
enum Bound<R: Runtime> {
    Array(ArrayArg<R>),
    Seq(Vec<ArrayArg<R>>),
    U32(u32),
    F32(f32),
    Scalars(Vec<u32>),
}

impl<R: Runtime> Bound<R> {
    // The kinds were checked against the kernel's parameters before any launch, so a mismatch
    // here is a broken invariant of this file.
    fn array(self) -> ArrayArg<R> {
        match self {
            Bound::Array(a) => a,
            _ => unreachable!("argument kinds are checked before launching"),
        }
    }
    fn seq<X: CubePrimitive>(self) -> SequenceArg<R, Array<X>> {
        match self {
            Bound::Seq(v) => v.into_iter().collect(),
            _ => unreachable!("argument kinds are checked before launching"),
        }
    }
    fn scalars(self) -> SequenceArg<R, u32> {
        match self {
            Bound::Scalars(v) => v.into_iter().collect(),
            _ => unreachable!("argument kinds are checked before launching"),
        }
    }
    fn u32(self) -> u32 {
        match self {
            Bound::U32(v) => v,
            _ => unreachable!("argument kinds are checked before launching"),
        }
    }
    fn f32(self) -> f32 {
        match self {
            Bound::F32(v) => v,
            _ => unreachable!("argument kinds are checked before launching"),
        }
    }
}

macro_rules! launch_fn {
    (generic, $($path:tt)*) => { $($path)*::<F, R> };
    (plain, $($path:tt)*) => { $($path)*::<R> };
}

macro_rules! bound {
    (a, $args:ident) => {
        $args
            .next()
            .map(Bound::array)
            .unwrap_or_else(|| unreachable!())
    };
    (q, $args:ident) => {
        $args
            .next()
            .map(Bound::seq)
            .unwrap_or_else(|| unreachable!())
    };
    (u, $args:ident) => {
        $args
            .next()
            .map(Bound::u32)
            .unwrap_or_else(|| unreachable!())
    };
    (s, $args:ident) => {
        $args
            .next()
            .map(Bound::scalars)
            .unwrap_or_else(|| unreachable!())
    };
    (f, $args:ident) => {
        $args
            .next()
            .map(Bound::f32)
            .unwrap_or_else(|| unreachable!())
    };
}

macro_rules! launch_table {
    ($k:tt; $( $(#[$doc:meta])* $v:ident ( $($f:ident : $t:ty),* ) = $($seg:ident)::+ , $s:ident , $gen:ident , ( $($p:ident)* ) ; )* ) => {
        /// Launches `kernel` with float type `F` on `count` cubes of `dim` units.
        #[allow(unsafe_code, clippy::unit_arg)]
        fn dispatch<R: Runtime, F: Float + CubeElement>(
            client: &ComputeClient<R>,
            kernel: &Kernel,
            count: CubeCount,
            dim: CubeDim,
            args: Vec<Bound<R>>,
            mode: Mode,
        ) {
            let mut args = args.into_iter();
            match kernel {
                $( Kernel::$v($($f),*) => {
                    if mode == Mode::Checked {
                        launch_fn!($gen, $k::$($seg)::+::launch)(
                            client,
                            count,
                            dim,
                            $( bound!($p, args), )*
                            $( $f.clone(), )*
                        );
                    } else {
                        // SAFETY: every array argument was bound with the element count of its
                        // buffer in the plan's table, every bound buffer was checked to hold at
                        // least that many bytes, and the kernels guard each access against the
                        // sizes the plan derived them from.
                        unsafe {
                            launch_fn!($gen, $k::$($seg)::+::launch_unchecked)(
                                client,
                                count,
                                dim,
                                $( bound!($p, args), )*
                                $( $f.clone(), )*
                            );
                        }
                    }
                } )*
            }
        }
    };
}

sparsecube_codegen::kernel_table!(launch_table);

/// The error for a plan that does not fit the kernels it names (a bug in a lowering).
fn malformed(plan: &LaunchPlan, what: String) -> RuntimeError {
    RuntimeError::Device {
        kind: "plan",
        message: format!("{}: malformed plan: {what}", plan.label),
    }
}

/// Checks every launch's arguments against its kernel's parameters and every buffer id.
fn check_plan(plan: &LaunchPlan) -> Result<(), RuntimeError> {
    for l in plan.launches() {
        let params = l.kernel.params();
        if params.len() != l.args.len() {
            return Err(malformed(
                plan,
                format!(
                    "launch `{}` passes {} arguments to {}, which takes {}",
                    l.name,
                    l.args.len(),
                    l.kernel.function(),
                    params.len()
                ),
            ));
        }
        for (i, (p, a)) in params.iter().zip(&l.args).enumerate() {
            let ok = matches!(
                (p, a),
                ('a', Arg::Buf(_))
                    | ('q', Arg::Bufs(_))
                    | ('u', Arg::U32(_) | Arg::Nnz)
                    | ('f', Arg::F32(_))
                    | ('s', Arg::Scalars(_))
            );
            if !ok {
                return Err(malformed(
                    plan,
                    format!(
                        "launch `{}`: argument {i} is {a:?}, the kernel takes `{p}`",
                        l.name
                    ),
                ));
            }
        }
        if let Some(b) = l.buffers().into_iter().find(|&b| b >= plan.buffers.len()) {
            return Err(malformed(
                plan,
                format!("launch `{}` names buffer {b}", l.name),
            ));
        }
    }
    Ok(())
}

/// The elements of a buffer whose one `nnz` axis is unknown, from the bytes bound to it.
fn infer_nnz(plan: &LaunchPlan, b: BufId, bytes: u64) -> Option<usize> {
    let buf = &plan.buffers[b];
    if buf.is_fixed() {
        return None;
    }
    let per = buf.elements(1).max(1) * buf.elem.size(plan.dtype);
    Some((bytes as usize) / per)
}

fn upload<R: Runtime>(client: &ComputeClient<R>, data: &ConstData, bytes: usize) -> Handle {
    match data {
        ConstData::U32(v) => client.create_from_slice(u32::as_bytes(v)),
        ConstData::F32(v) => client.create_from_slice(f32::as_bytes(v)),
        ConstData::Zeros => client.create_from_slice(&vec![0u8; bytes.max(4)]),
    }
}

/// Runs `plan` on `client` (`kind` names the device in errors) with the caller's `bound` inputs
/// by name, and returns every output and saved buffer.
pub fn execute<R: Runtime>(
    client: &ComputeClient<R>,
    kind: &'static str,
    plan: &LaunchPlan,
    bound: &BTreeMap<String, Handle>,
    mode: Mode,
) -> Result<Executed, RuntimeError> {
    match plan.dtype {
        DType::F32 => execute_as::<R, f32>(client, kind, plan, bound, mode),
        DType::F16 => execute_as::<R, half::f16>(client, kind, plan, bound, mode),
        DType::BF16 => execute_as::<R, half::bf16>(client, kind, plan, bound, mode),
        DType::I64 => Err(sparsecube_codegen::LowerError::Unsupported {
            op: plan.op,
            what: "i64 storage".into(),
        }
        .into()),
    }
}

fn execute_as<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    kind: &'static str,
    plan: &LaunchPlan,
    bound: &BTreeMap<String, Handle>,
    mode: Mode,
) -> Result<Executed, RuntimeError> {
    check_plan(plan)?;
    let pass = plan.pass.name();
    for name in bound.keys() {
        if !plan.buffer(name).is_some_and(|b| plan.is_bound(b)) {
            return Err(sparsecube_codegen::plan::PlanError::UnknownInput {
                op: plan.op,
                pass,
                name: name.clone(),
                inputs: input_names(plan),
            }
            .into());
        }
    }
    let mut handles: Vec<Option<Handle>> = vec![None; plan.buffers.len()];
    let mut nnz: Option<usize> = None;
    for b in (0..plan.buffers.len()).filter(|&b| plan.is_bound(b)) {
        let buf = &plan.buffers[b];
        let Some(h) = bound.get(&buf.name) else {
            return Err(sparsecube_codegen::plan::PlanError::Unbound {
                op: plan.op,
                pass,
                name: buf.name.clone(),
            }
            .into());
        };
        if !plan.reads_nnz()
            && nnz.is_none()
            && let Some(n) = infer_nnz(plan, b, h.size_in_used())
        {
            nnz = Some(n);
        }
        handles[b] = Some(h.clone());
    }
    let check_size = |b: BufId, h: &Handle, nnz: usize| -> Result<(), RuntimeError> {
        let need = plan.bytes_of(b, nnz);
        if h.size_in_used() < need {
            let buf = &plan.buffers[b];
            return Err(sparsecube_codegen::plan::PlanError::TooSmall {
                op: plan.op,
                pass,
                name: buf.name.clone(),
                expected: need,
                actual: h.size_in_used(),
                shape: shape_text(&buf.shape),
            }
            .into());
        }
        Ok(())
    };
    for (b, h) in handles.iter().enumerate() {
        if let Some(h) = h
            && (plan.buffers[b].is_fixed() || nnz.is_some())
        {
            check_size(b, h, nnz.unwrap_or(0))?;
        }
    }
    let (_, last) = plan.lifetimes();
    let device = |e: String| RuntimeError::Device { kind, message: e };
    for (s, step) in plan.steps.iter().enumerate() {
        match step {
            Step::ReadNnz { buf, word } => {
                let h = handles[*buf].clone().ok_or_else(|| {
                    malformed(plan, format!("nnz read from unwritten buffer {buf}"))
                })?;
                let bytes = client.read_one(h).map_err(|e| device(format!("{e:?}")))?;
                let words = u32::from_bytes(&bytes);
                let n = words.get(*word).copied().unwrap_or(0) as usize;
                if n > plan.nnz_bound {
                    return Err(device(format!(
                        "{}: the device counted nnz = {n}, more than its bound {}",
                        plan.label, plan.nnz_bound
                    )));
                }
                nnz = Some(n);
                // Bound inputs whose size depends on the count are checked now.
                for (b, h) in handles.iter().enumerate() {
                    if let Some(h) = h
                        && plan.is_bound(b)
                        && !plan.buffers[b].is_fixed()
                    {
                        check_size(b, h, n)?;
                    }
                }
            }
            Step::Launch(l) => {
                let count = match l.cubes {
                    Cubes::Fixed(x, y, z) => CubeCount::Static(x, y, z),
                    Cubes::Units(extent, scale) => {
                        let units = match extent {
                            Extent::Fixed(n) => n,
                            Extent::Nnz => nnz.unwrap_or(0),
                        } * scale;
                        if units == 0 {
                            continue;
                        }
                        cubecl::calculate_cube_count_elemwise(
                            client,
                            units,
                            CubeDim::new_1d(l.units_per_cube()),
                        )
                    }
                };
                let n = nnz.unwrap_or(plan.nnz_bound);
                let mut arg = |b: BufId| -> ArrayArg<R> {
                    let buf = &plan.buffers[b];
                    let bytes = plan.bytes_of(b, n) as usize;
                    let h = handles[b].get_or_insert_with(|| match &buf.init {
                        Some(data) => upload(client, data, bytes),
                        None => client.empty(bytes),
                    });
                    let len = buf.elements(n).max(1);
                    // SAFETY: the handle holds at least `len` elements of the buffer's element
                    // type (allocated here from the plan, or bound and checked above).
                    #[allow(unsafe_code)]
                    unsafe {
                        ArrayArg::from_raw_parts(h.clone(), len)
                    }
                };
                let args: Vec<Bound<R>> = l
                    .args
                    .iter()
                    .map(|a| match a {
                        Arg::Buf(b) => Bound::Array(arg(*b)),
                        Arg::Bufs(bs) => Bound::Seq(bs.iter().map(|b| arg(*b)).collect()),
                        Arg::U32(v) => Bound::U32(*v),
                        Arg::F32(v) => Bound::F32(*v),
                        Arg::Scalars(v) => Bound::Scalars(v.clone()),
                        Arg::Nnz => Bound::U32(n as u32),
                    })
                    .collect();
                let dim = CubeDim::new_3d(l.dim.0, l.dim.1, l.dim.2);
                match l.float {
                    FloatTy::Storage => dispatch::<R, F>(client, &l.kernel, count, dim, args, mode),
                    FloatTy::F32 => dispatch::<R, f32>(client, &l.kernel, count, dim, args, mode),
                }
            }
        }
        // Scratch is released after its last use: the allocator reuses it for later buffers.
        for b in 0..plan.buffers.len() {
            if last[b] == Some(s) && !plan.is_bound(b) && !plan.is_returned(b) {
                handles[b] = None;
            }
        }
    }
    let n = nnz.unwrap_or(0);
    let mut out = Executed {
        buffers: BTreeMap::new(),
        nnz: n,
    };
    for b in (0..plan.buffers.len()).filter(|&b| plan.is_returned(b)) {
        let buf = &plan.buffers[b];
        let handle = match handles[b].take() {
            Some(h) => h,
            // Returned but never written (an empty count): a placeholder of one element.
            None => client.empty(plan.bytes_of(b, n) as usize),
        };
        out.buffers.insert(
            buf.name.clone(),
            Returned {
                handle,
                elem: buf.elem,
                shape: buf.dims(n),
            },
        );
    }
    Ok(out)
}

/// Waits for queued work and turns a failed launch (compilation, validation) into an error.
pub fn sync<R: Runtime>(client: &ComputeClient<R>, kind: &'static str) -> Result<(), RuntimeError> {
    cubecl::future::block_on(client.sync()).map_err(|e| RuntimeError::Device {
        kind,
        message: format!("{e:?}"),
    })
}

/// Runs `plan` on `device` with 32-bit host words bound by name (u32, i32 and f32 buffers as
/// their bit patterns; the plan's storage dtype must be 32-bit too), and reads every returned
/// buffer back as words: how the primitives' tests drive a plan without an op around it.
pub fn run_words(
    device: &crate::Device,
    plan: &LaunchPlan,
    inputs: &BTreeMap<String, Vec<u32>>,
) -> Result<BTreeMap<String, Vec<u32>>, RuntimeError> {
    fn on<R: Runtime>(
        client: &ComputeClient<R>,
        kind: &'static str,
        plan: &LaunchPlan,
        inputs: &BTreeMap<String, Vec<u32>>,
    ) -> Result<BTreeMap<String, Vec<u32>>, RuntimeError> {
        let bound: BTreeMap<String, Handle> = inputs
            .iter()
            .map(|(name, words)| {
                let data: &[u32] = if words.is_empty() { &[0] } else { words };
                (name.clone(), client.create_from_slice(u32::as_bytes(data)))
            })
            .collect();
        let out = execute(client, kind, plan, &bound, Mode::from_env())?;
        let mut words = BTreeMap::new();
        for (name, r) in out.buffers {
            let n: usize = r.shape.iter().product();
            let v = if n == 0 {
                Vec::new()
            } else {
                let bytes = client
                    .read_one(r.handle)
                    .map_err(|e| RuntimeError::Device {
                        kind,
                        message: format!("{e:?}"),
                    })?;
                u32::from_bytes(&bytes)[..n].to_vec()
            };
            words.insert(name, v);
        }
        Ok(words)
    }
    if plan.dtype.size_bytes() != 4 {
        return Err(malformed(
            plan,
            "run_words needs a 32-bit storage dtype".into(),
        ));
    }
    match device {
        crate::Device::Wgpu(c) => on(c, "wgpu", plan, inputs),
        crate::Device::Cuda(c) => on(c, "cuda", plan, inputs),
        crate::Device::Reference => Err(malformed(
            plan,
            "the host reference does not run launch plans".into(),
        )),
    }
}
