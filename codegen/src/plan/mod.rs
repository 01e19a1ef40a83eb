//! Launch plans: the lowering of a verified spec as data.
//!
//! A [`LaunchPlan`] is what one pass of an op (forward or backward) does on a device: a buffer
//! table (name, element type, shape, role) with every length derived from the spec in one place,
//! and the ordered steps — kernel launches (which kernel with which comptime config, cube count,
//! cube dimension, arguments) and, where a size is only known from the data (SaRA's threshold
//! mask), one read-back of that count. [`lower`] produces the plans of a spec; one executor in
//! `sparsecube-runtime` runs any plan; `gen`, the offline CUDA/WGSL emission and the NVRTC check
//! compile exactly the kernels a plan launches ([`LaunchPlan::kernels`]); the bench, the tuner,
//! selftest and the training backend all execute plans and read their byte counts off them.

pub mod build;
pub mod kernel;
pub mod lower;
mod print;

pub use build::PlanBuilder;
pub use kernel::Kernel;
pub use lower::{LowerOptions, Lowering, lower};

use kernels_ir::{DType, Extent, OpKind};
use std::collections::BTreeMap;

/// A buffer's index in its plan's table.
pub type BufId = usize;

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// The spec's storage dtype (f32, f16 or bf16).
    Storage,
    /// f32 (accumulators and saved intermediates).
    F32,
    /// u32 (indices, offsets, counts, selection state).
    U32,
    /// i32 (indices that may be −1).
    I32,
}

impl Elem {
    /// Bytes per element for storage dtype `dtype`.
    pub fn size(self, dtype: DType) -> usize {
        match self {
            Elem::Storage => dtype.size_bytes(),
            Elem::F32 | Elem::U32 | Elem::I32 => 4,
        }
    }

    /// Short name for printing (`F` is the storage dtype).
    pub fn name(self, dtype: DType) -> String {
        match self {
            Elem::Storage => dtype.to_string(),
            Elem::F32 => "f32".into(),
            Elem::U32 => "u32".into(),
            Elem::I32 => "i32".into(),
        }
    }
}

/// The float type a kernel's `F` generic is instantiated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Float {
    /// The spec's storage dtype.
    Storage,
    /// f32 (PST's selection over its f32 score).
    F32,
}

/// Host data a plan uploads itself (small: selection state, coefficients, hyper-parameters).
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    /// u32 words.
    U32(Vec<u32>),
    /// f32 values.
    F32(Vec<f32>),
    /// Zeros of the buffer's element type (an absent optional input).
    Zeros,
}

/// What a buffer is to its plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// Bound by the caller: an input of the op (or, in a backward plan, an upstream gradient).
    Input,
    /// Allocated by the executor and returned: an output of the op.
    Output,
    /// Kept between the passes: written (and returned) by the forward plan, bound by the caller
    /// in the backward plan.
    Saved,
    /// Allocated at its first use and released after its last, within the plan.
    Scratch,
    /// Uploaded by the executor from the plan's own data ([`Buffer::init`]), released with the
    /// plan.
    Const,
}

impl Role {
    /// The role's name in the printed plan.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Output => "output",
            Role::Saved => "saved",
            Role::Scratch => "scratch",
            Role::Const => "const",
        }
    }
}

/// One buffer of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// Name: the `run` contract's tensor name for inputs and outputs, else what it holds.
    pub name: String,
    /// Element type.
    pub elem: Elem,
    /// Logical shape (row-major); an [`Extent::Nnz`] axis is the count read back by the plan.
    pub shape: Vec<Extent>,
    /// Role.
    pub role: Role,
    /// Contents the executor uploads instead of allocating it empty (constants, and state a
    /// kernel starts from).
    pub init: Option<ConstData>,
}

impl Buffer {
    /// Elements, with `nnz` standing for an [`Extent::Nnz`] axis.
    pub fn elements(&self, nnz: usize) -> usize {
        self.shape
            .iter()
            .map(|e| match e {
                Extent::Fixed(n) => *n,
                Extent::Nnz => nnz,
            })
            .product()
    }

    /// Whether the length is known before the plan runs (no [`Extent::Nnz`] axis).
    pub fn is_fixed(&self) -> bool {
        self.shape.iter().all(|e| matches!(e, Extent::Fixed(_)))
    }

    /// The shape with `nnz` for an [`Extent::Nnz`] axis.
    pub fn dims(&self, nnz: usize) -> Vec<usize> {
        self.shape
            .iter()
            .map(|e| match e {
                Extent::Fixed(n) => *n,
                Extent::Nnz => nnz,
            })
            .collect()
    }
}

/// How many cubes a launch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cubes {
    /// Exactly (x, y, z).
    Fixed(u32, u32, u32),
    /// Enough cubes of the launch's cube dimension for `units` units, one unit each (spread
    /// over x and y where x runs out; the kernels index with `ABSOLUTE_POS`). Zero units: the
    /// launch is skipped.
    Units(Extent, usize),
}

impl Cubes {
    /// `units` (×`scale`) units, one per element.
    pub fn units(units: usize) -> Self {
        Cubes::Units(Extent::Fixed(units), 1)
    }
}

/// One argument of a launch, in the kernel's parameter order (comptime values live in the
/// [`Kernel`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A buffer, bound as an array of its element count.
    Buf(BufId),
    /// A sequence of buffers (the tile program's buffer lists).
    Bufs(Vec<BufId>),
    /// A runtime u32 scalar.
    U32(u32),
    /// A runtime f32 scalar.
    F32(f32),
    /// A sequence of runtime u32 scalars (the tile program's sizes).
    Scalars(Vec<u32>),
    /// The plan's count (nnz) once read back, as a u32 scalar.
    Nnz,
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// What this launch does, e.g. `routed_up` (the name `gen` prints its source under).
    pub name: String,
    /// The kernel and its comptime config.
    pub kernel: Kernel,
    /// The type the kernel's float generic takes (kernels without one ignore it).
    pub float: Float,
    /// Cube count.
    pub cubes: Cubes,
    /// Cube dimension (x, y, z).
    pub dim: (u32, u32, u32),
    /// Arguments.
    pub args: Vec<Arg>,
}

impl Launch {
    /// The comptime config as text, with a tile program's runtime sizes filled in (the printed
    /// plan's config line).
    pub fn config_text(&self) -> String {
        match (&self.kernel, self.args.last()) {
            (Kernel::Tile(p), Some(Arg::Scalars(sizes))) => crate::tile::describe(p, sizes),
            _ => self.kernel.config_text(),
        }
    }

    /// Units per cube.
    pub fn units_per_cube(&self) -> u32 {
        self.dim.0 * self.dim.1 * self.dim.2
    }

    /// Whether `other` runs the same compiled kernel (kernel, comptime config, float type,
    /// cube dimension and buffer-list lengths).
    pub fn same_kernel(&self, other: &Launch) -> bool {
        let lists = |l: &Launch| -> Vec<usize> {
            l.args
                .iter()
                .filter_map(|a| match a {
                    Arg::Bufs(b) => Some(b.len()),
                    _ => None,
                })
                .collect()
        };
        self.kernel == other.kernel
            && (self.float == other.float || !self.kernel.is_generic())
            && self.dim == other.dim
            && lists(self) == lists(other)
    }

    /// The buffers this launch binds.
    pub fn buffers(&self) -> Vec<BufId> {
        let mut out = Vec::new();
        for a in &self.args {
            match a {
                Arg::Buf(b) => out.push(*b),
                Arg::Bufs(bs) => out.extend(bs.iter().copied()),
                _ => {}
            }
        }
        out
    }
}

/// One step of a plan.
// Launches are the large, common variant (see `Kernel`).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Launch a kernel.
    Launch(Launch),
    /// Wait for the device and read word `word` of u32 buffer `buf`: the plan's nnz, which sizes
    /// every later [`Extent::Nnz`] buffer.
    ReadNnz {
        /// The buffer.
        buf: BufId,
        /// The word.
        word: usize,
    },
}

/// Forward or backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// The forward pass (its saved buffers are returned for the backward).
    Forward,
    /// The backward pass.
    Backward,
}

impl Pass {
    /// `forward` / `backward`.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        }
    }
}

/// The device facts a lowering depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Largest cube count per axis.
    pub max_cube_count: (u32, u32, u32),
    /// Plane (warp, subgroup) size.
    pub plane_size: u32,
    /// Shared memory per cube, bytes.
    pub max_shared_bytes: usize,
    /// Largest single buffer, bytes.
    pub max_buffer_bytes: u64,
    /// Device memory, bytes (what the plan's peak is checked against).
    pub memory_bytes: u64,
    /// The tensor-core (WMMA) shapes the device runs, by operand type.
    pub tensor_cores: TensorCores,
}

/// Which WMMA operand types a device runs with f32 accumulation: 16×16×16 for f16 and bf16,
/// 16×16×8 for tf32 (what the tile program's tensor-core mainloop uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TensorCores {
    /// f16 × f16 → f32, 16×16×16.
    pub f16: bool,
    /// bf16 × bf16 → f32, 16×16×16.
    pub bf16: bool,
    /// tf32 × tf32 → f32, 16×16×8.
    pub tf32: bool,
}

impl TensorCores {
    /// Those of an sm_90 GPU (all three).
    pub fn sm90() -> Self {
        Self {
            f16: true,
            bf16: true,
            tf32: true,
        }
    }

    /// Whether operands of `dtype` (with `tf32`: f32 operands read as TF32) run on them.
    pub fn supports(&self, dtype: DType, tf32: bool) -> bool {
        match dtype {
            DType::F16 => self.f16,
            DType::BF16 => self.bf16,
            DType::F32 => tf32 && self.tf32,
            DType::I64 => false,
        }
    }
}

impl DeviceLimits {
    /// An H100-class sm_90 GPU (what offline sources and printed plans are generated for).
    pub fn sm90() -> Self {
        Self {
            max_cube_count: (2_147_483_647, 65_535, 65_535),
            plane_size: 32,
            max_shared_bytes: 227 * 1024,
            max_buffer_bytes: 80 << 30,
            memory_bytes: 80 << 30,
            tensor_cores: TensorCores::sm90(),
        }
    }
}

/// One pass of an op as data: buffers and steps.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchPlan {
    /// What the plan does, e.g. `routed-ffn forward` or `sara adamw step`.
    pub label: String,
    /// The op.
    pub op: OpKind,
    /// Which pass.
    pub pass: Pass,
    /// Storage dtype.
    pub dtype: DType,
    /// The buffer table.
    pub buffers: Vec<Buffer>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The largest value the read-back count may take (for plans with a [`Step::ReadNnz`]).
    pub nnz_bound: usize,
}

/// Why a plan cannot run with some bindings, or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// An input the plan reads was not bound.
    #[error("{op} {pass}: input `{name}` is not bound")]
    Unbound {
        /// The op.
        op: OpKind,
        /// The pass.
        pass: &'static str,
        /// The buffer.
        name: String,
    },
    /// A bound buffer is smaller than the plan's table says.
    #[error("{op} {pass}: `{name}` holds {actual} bytes, its shape {shape} needs {expected}")]
    TooSmall {
        /// The op.
        op: OpKind,
        /// The pass.
        pass: &'static str,
        /// The buffer.
        name: String,
        /// Bytes the plan needs.
        expected: u64,
        /// Bytes bound.
        actual: u64,
        /// The buffer's shape, as text.
        shape: String,
    },
    /// A name that is not an input of the plan was bound.
    #[error("{op} {pass}: `{name}` is not an input of this plan (inputs: {inputs})")]
    UnknownInput {
        /// The op.
        op: OpKind,
        /// The pass.
        pass: &'static str,
        /// The name.
        name: String,
        /// The plan's inputs.
        inputs: String,
    },
    /// The plan does not fit the device.
    #[error("{0}")]
    TooLarge(#[from] SizeError),
}

/// A problem whose buffers or grid do not fit the device, found before anything is allocated.
#[derive(Debug, thiserror::Error)]
#[error("{what} needs {need}, {limit}; {fix}")]
pub struct SizeError {
    /// The spec or buffer.
    pub what: String,
    /// What it needs, in words.
    pub need: String,
    /// The limit, in words.
    pub limit: String,
    /// What to do about it.
    pub fix: String,
}

/// Bytes as text (`12.5 MiB`).
pub fn bytes_text(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl LaunchPlan {
    /// The buffer named `name`.
    pub fn buffer(&self, name: &str) -> Option<BufId> {
        self.buffers.iter().position(|b| b.name == name)
    }

    /// The launches, in order.
    pub fn launches(&self) -> impl Iterator<Item = &Launch> {
        self.steps.iter().filter_map(|s| match s {
            Step::Launch(l) => Some(l),
            Step::ReadNnz { .. } => None,
        })
    }

    /// Whether the plan reads a count back (its later sizes depend on the data).
    pub fn reads_nnz(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::ReadNnz { .. }))
    }

    /// The first launch of each distinct kernel (kernel, comptime config, float type and cube
    /// dimension) this plan runs, in launch order: exactly what `gen` prints and the NVRTC check
    /// compiles for it, each under the name of that launch.
    pub fn kernels(&self) -> Vec<&Launch> {
        let mut out: Vec<&Launch> = Vec::new();
        for l in self.launches() {
            if !out.iter().any(|k| k.same_kernel(l)) {
                out.push(l);
            }
        }
        out
    }

    /// Bytes of buffer `b` with `nnz` for a data-dependent axis (at least one element: an
    /// empty buffer is bound as one).
    pub fn bytes_of(&self, b: BufId, nnz: usize) -> u64 {
        let buf = &self.buffers[b];
        (buf.elements(nnz).max(1) * buf.elem.size(self.dtype)) as u64
    }

    /// Bytes of every buffer with role `pred`, the count at its bound.
    pub fn role_bytes(&self, pred: impl Fn(&Role) -> bool) -> u64 {
        (0..self.buffers.len())
            .filter(|&b| pred(&self.buffers[b].role))
            .map(|b| self.bytes_of(b, self.nnz_bound))
            .sum()
    }

    /// Bytes kept between the passes (the forward plan's saved buffers).
    pub fn saved_bytes(&self) -> u64 {
        self.role_bytes(|r| matches!(r, Role::Saved))
    }

    /// The largest number of bytes of this plan's own scratch alive at once (allocated at first
    /// use, released after last use, as the executor does), the count at its bound.
    pub fn scratch_peak(&self) -> u64 {
        let (first, last) = self.lifetimes();
        let mut peak = 0;
        for s in 0..self.steps.len() {
            let live: u64 = (0..self.buffers.len())
                .filter(|&b| matches!(self.buffers[b].role, Role::Scratch))
                .filter(|&b| first[b].is_some_and(|f| f <= s) && last[b].is_some_and(|l| l >= s))
                .map(|b| self.bytes_of(b, self.nnz_bound))
                .sum();
            peak = peak.max(live);
        }
        peak
    }

    /// Bytes alive at this plan's peak: every input, output, saved and constant buffer, plus
    /// the scratch peak.
    pub fn peak_bytes(&self) -> u64 {
        self.role_bytes(|r| !matches!(r, Role::Scratch)) + self.scratch_peak()
    }

    /// Steps of each buffer's first and last use.
    pub fn lifetimes(&self) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
        let mut first = vec![None; self.buffers.len()];
        let mut last = vec![None; self.buffers.len()];
        for (s, step) in self.steps.iter().enumerate() {
            let used = match step {
                Step::Launch(l) => l.buffers(),
                Step::ReadNnz { buf, .. } => vec![*buf],
            };
            for b in used {
                first[b].get_or_insert(s);
                last[b] = Some(s);
            }
        }
        (first, last)
    }

    /// Names and shapes of the inputs the caller binds.
    pub fn inputs(&self) -> Vec<&Buffer> {
        self.buffers
            .iter()
            .filter(|b| match b.role {
                Role::Input => true,
                Role::Saved => self.pass == Pass::Backward,
                _ => false,
            })
            .collect()
    }

    /// Whether buffer `b` is bound by the caller.
    pub fn is_bound(&self, b: BufId) -> bool {
        match self.buffers[b].role {
            Role::Input => true,
            Role::Saved => self.pass == Pass::Backward,
            _ => false,
        }
    }

    /// Whether buffer `b` is returned to the caller.
    pub fn is_returned(&self, b: BufId) -> bool {
        match self.buffers[b].role {
            Role::Output => true,
            Role::Saved => self.pass == Pass::Forward,
            _ => false,
        }
    }

    /// Checks every length and cube count against the device before anything is allocated:
    /// overflow of a dims product, one buffer past the device's largest allocation, the peak
    /// past its memory, a grid past its largest cube count.
    pub fn check_fits(&self, spec: &str, device: &DeviceLimits) -> Result<(), SizeError> {
        let mut total: u128 = 0;
        for buf in &self.buffers {
            let elements = buf
                .shape
                .iter()
                .map(|e| match e {
                    Extent::Fixed(n) => *n as u128,
                    Extent::Nnz => self.nnz_bound as u128,
                })
                .product::<u128>()
                .max(1);
            let bytes = elements * buf.elem.size(self.dtype) as u128;
            if bytes > device.max_buffer_bytes as u128 {
                return Err(SizeError {
                    what: format!("{spec}: buffer `{}` {}", buf.name, shape_text(&buf.shape)),
                    need: bytes_text(bytes),
                    limit: format!(
                        "the device's largest buffer is {}",
                        bytes_text(device.max_buffer_bytes as u128)
                    ),
                    fix: "use smaller dims (or split the batch)".into(),
                });
            }
            if elements > u32::MAX as u128 {
                return Err(SizeError {
                    what: format!("{spec}: buffer `{}` {}", buf.name, shape_text(&buf.shape)),
                    need: format!("{elements} elements ({})", bytes_text(bytes)),
                    limit: "the kernels address at most 2³² − 1 elements per buffer".into(),
                    fix: "use smaller dims (or split the batch)".into(),
                });
            }
            total += bytes;
        }
        if total > device.memory_bytes as u128 {
            return Err(SizeError {
                what: format!("{spec} ({})", self.pass.name()),
                need: bytes_text(total),
                limit: format!("the device has {}", bytes_text(device.memory_bytes as u128)),
                fix: "use smaller dims (or split the batch)".into(),
            });
        }
        for l in self.launches() {
            if let Cubes::Fixed(x, y, z) = l.cubes {
                let (mx, my, mz) = device.max_cube_count;
                if x > mx || y > my || z > mz {
                    return Err(SizeError {
                        what: format!("{spec}: launch `{}`", l.name),
                        need: format!("{x}×{y}×{z} cubes"),
                        limit: format!("the device runs at most {mx}×{my}×{mz}"),
                        fix: "use smaller dims (or split the batch)".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A shape as text, e.g. `[512, nnz]`.
pub fn shape_text(shape: &[Extent]) -> String {
    let parts: Vec<String> = shape.iter().map(|e| e.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Names of the buffers of `plan` that a caller binds, joined for messages.
pub fn input_names(plan: &LaunchPlan) -> String {
    plan.inputs()
        .iter()
        .map(|b| b.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plans of a training step: the forward, then (for backward specs) the backward.
impl Lowering {
    /// Both plans in execution order.
    pub fn plans(&self) -> Vec<&LaunchPlan> {
        let mut v = vec![&self.forward];
        if let Some(b) = &self.backward {
            v.push(b);
        }
        v
    }

    /// Bytes alive at the step's peak: the forward's peak, or, during the backward, the
    /// forward's inputs, outputs and saved buffers plus the backward's own outputs, constants
    /// and scratch peak (its bound inputs are the forward's buffers, counted once).
    pub fn peak_bytes(&self) -> u64 {
        let f = &self.forward;
        let fwd = f.peak_bytes();
        match &self.backward {
            None => fwd,
            Some(b) => {
                let kept = f.role_bytes(|r| !matches!(r, Role::Scratch | Role::Const));
                let fresh: u64 = (0..b.buffers.len())
                    .filter(|&i| match &b.buffers[i].role {
                        Role::Output | Role::Const => true,
                        // An upstream gradient the forward does not hold.
                        Role::Input => f.buffer(&b.buffers[i].name).is_none(),
                        _ => false,
                    })
                    .map(|i| b.bytes_of(i, b.nnz_bound))
                    .sum();
                fwd.max(kept + fresh + b.scratch_peak())
            }
        }
    }

    /// The first launch of each distinct kernel of both plans, in launch order.
    pub fn kernels(&self) -> Vec<&Launch> {
        let mut out: Vec<&Launch> = Vec::new();
        for p in self.plans() {
            for l in p.kernels() {
                if !out.iter().any(|k| k.same_kernel(l)) {
                    out.push(l);
                }
            }
        }
        out
    }

    /// Names of every buffer each plan returns, by plan.
    pub fn returned(&self) -> BTreeMap<&'static str, Vec<&str>> {
        let mut m = BTreeMap::new();
        for p in self.plans() {
            m.insert(
                p.pass.name(),
                (0..p.buffers.len())
                    .filter(|&b| p.is_returned(b))
                    .map(|b| p.buffers[b].name.as_str())
                    .collect(),
            );
        }
        m
    }
}
