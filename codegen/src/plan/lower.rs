//! [`lower`]: a verified spec (with its direction, the target device's limits and which
//! optional inputs the caller binds) to its launch plans, checked against the device before
//! anything is allocated.

use super::{DeviceLimits, LaunchPlan, Pass, PlanBuilder, Role, SizeError, Step, bytes_text};
use crate::LowerError;
use crate::tile::TileShape;
use kernels_ir::{Direction, Extent, KernelSpec, OpKind};

/// What a lowering needs besides the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct LowerOptions {
    /// The device the plans will run on.
    pub device: DeviceLimits,
    /// Optional inputs the caller binds: `v` (SaRA, N:M: given packed values), `mask_index`
    /// (SaRA, N:M: a mask the caller chose; no selection runs), `noise` (Sparse-CBM).
    pub given: Vec<String>,
    /// The length of the given packed tensors (`v`, `mask_index`), when given.
    pub nnz: Option<usize>,
}

impl LowerOptions {
    /// No optional input, for `device`.
    pub fn new(device: DeviceLimits) -> Self {
        Self {
            device,
            given: Vec::new(),
            nnz: None,
        }
    }

    /// With optional inputs `names` bound by the caller.
    pub fn given<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.given.extend(names.into_iter().map(String::from));
        self
    }

    /// With the length of the given packed tensors.
    pub fn nnz(mut self, nnz: usize) -> Self {
        self.nnz = Some(nnz);
        self
    }

    /// Whether the caller binds optional input `name`.
    pub fn has(&self, name: &str) -> bool {
        self.given.iter().any(|g| g == name)
    }
}

/// The plans of one spec: the forward, and for a backward spec the backward (which binds the
/// forward's saved buffers by name).
#[derive(Clone, Debug, PartialEq)]
pub struct Lowering {
    /// The forward pass.
    pub forward: LaunchPlan,
    /// The backward pass (backward specs).
    pub backward: Option<LaunchPlan>,
}

/// What every family's lowering reads: the spec, the options, the tile shape its schedule asks
/// for, and whether a backward follows (then the forward keeps what it reads as saved buffers).
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// The verified spec.
    pub spec: &'a KernelSpec,
    /// The options.
    pub opts: &'a LowerOptions,
    /// The tile programs' shape (the schedule's).
    pub shape: TileShape,
    /// A backward pass follows the forward.
    pub backward: bool,
}

impl Ctx<'_> {
    /// A builder of this spec's `pass`.
    pub fn builder(&self, pass: Pass) -> PlanBuilder {
        PlanBuilder::new(self.spec.op, pass, self.spec.dtype)
    }

    /// The role of what the forward computes for the backward: saved when one follows, else
    /// scratch.
    pub fn kept(&self) -> Role {
        if self.backward {
            Role::Saved
        } else {
            Role::Scratch
        }
    }

    /// The role of an op output the backward also reads: saved (returned either way) when one
    /// follows, else an output.
    pub fn output_kept(&self) -> Role {
        if self.backward {
            Role::Saved
        } else {
            Role::Output
        }
    }

    /// A dim of the spec.
    pub fn dim(&self, name: &str) -> usize {
        self.spec.dim(name)
    }
}

/// The product of a spec's dims must stay below this: every length a lowering computes is a
/// product of some of them (with L twice, plus one, for the attention ops' score and selection
/// tables), so none of those products can overflow `usize`.
const MAX_ELEMENTS: u128 = 1 << 63;

/// Refuses a spec whose dims multiply past [`MAX_ELEMENTS`] (the overflow guard; buffers past
/// the device's sizes are refused by [`LaunchPlan::check_fits`] once the plan exists).
fn check_dims(spec: &KernelSpec) -> Result<(), SizeError> {
    let product = spec
        .dims
        .values()
        .fold(1u128, |acc, &d| acc.saturating_mul(d.max(1) as u128))
        .saturating_mul(spec.dims.get("L").map_or(1, |&l| l as u128 + 1));
    if product > MAX_ELEMENTS {
        let dims: Vec<String> = spec
            .dims_in_order()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        return Err(SizeError {
            what: format!("{} ({})", spec.op, dims.join(", ")),
            need: format!("{product} elements in the product of its dims"),
            limit: format!("at most {MAX_ELEMENTS} are supported"),
            fix: "use smaller dims".into(),
        });
    }
    Ok(())
}

/// Refuses a spec one of whose own tensors is larger than the device's largest buffer or has
/// more elements than the kernels address (2³² − 1), as [`LaunchPlan::check_fits`] does for
/// every buffer of the plan: here before the lowering computes its 32-bit strides from them.
fn check_tensors(spec: &KernelSpec, device: &DeviceLimits) -> Result<(), SizeError> {
    let label = spec_label(spec);
    for t in spec.tensors().unwrap_or_default() {
        let elements = t
            .shape
            .iter()
            .map(|e| match e {
                Extent::Fixed(n) => *n as u128,
                Extent::Nnz => 1,
            })
            .fold(1u128, u128::saturating_mul);
        // Index tensors (i64 in the IR) are 32-bit buffers on the device, as `check_fits` counts.
        let width = match t.dtype {
            kernels_ir::DType::I64 => 4,
            d => d.size_bytes(),
        };
        let bytes = elements.saturating_mul(width as u128);
        let what = format!(
            "{label}: buffer `{}` {}",
            t.name,
            super::shape_text(&t.shape)
        );
        if bytes > device.max_buffer_bytes as u128 {
            return Err(SizeError {
                what,
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
                what,
                need: format!("{elements} elements ({})", bytes_text(bytes)),
                limit: "the kernels address at most 2³² − 1 elements per buffer".into(),
                fix: "use smaller dims (or split the batch)".into(),
            });
        }
    }
    Ok(())
}

/// Refuses a plan whose tile programs need more shared memory per cube than the device has.
fn check_shared(
    spec: &KernelSpec,
    plan: &LaunchPlan,
    device: &DeviceLimits,
) -> Result<(), SizeError> {
    for step in &plan.steps {
        if let Step::Launch(l) = step
            && let super::Kernel::Tile(p) = &l.kernel
        {
            let need = p.shape.shared_bytes();
            if need > device.max_shared_bytes {
                return Err(SizeError {
                    what: format!("{} `{}` with schedule {}", spec.op, l.name, spec.schedule),
                    need: format!("{} of shared memory per cube", bytes_text(need as u128)),
                    limit: format!(
                        "the device has {}",
                        bytes_text(device.max_shared_bytes as u128)
                    ),
                    fix: "use a smaller tile_m, tile_n or tile_k, or stages = 1 (or mma = \
                          scalar: the tensor-core mainloop also stages its f32 output tile)"
                        .into(),
                });
            }
        }
    }
    Ok(())
}

/// The launch plans of `spec` on the device of `opts`: the forward, and for a backward spec the
/// backward. Every buffer's length, every grid and every tile's shared memory is checked against
/// the device first: a problem too large for it is a [`LowerError::TooLarge`] naming the spec,
/// the bytes and the limit, before anything is allocated.
pub fn lower(spec: &KernelSpec, opts: &LowerOptions) -> Result<Lowering, LowerError> {
    spec.verify()?;
    check_dims(spec)?;
    check_tensors(spec, &opts.device)?;
    let ctx = Ctx {
        spec,
        opts,
        shape: crate::tile::shape(&spec.schedule, spec.op, spec.dtype, &opts.device)?,
        backward: spec.direction == Direction::Backward,
    };
    let lowering = match spec.op {
        OpKind::SptAttention => crate::spt::lower(&ctx)?,
        OpKind::PqEncode => crate::spt::lower_encode(&ctx)?,
        OpKind::RoutedFfn => crate::routed::lower(&ctx)?,
        OpKind::CbmHead => crate::cbm::lower(&ctx)?,
        OpKind::DenseLinear => crate::dense::lower(&ctx)?,
        OpKind::SaraLinear => crate::sara::lower(&ctx)?,
        OpKind::PstLinear => crate::pst::lower(&ctx)?,
        OpKind::Monarch => crate::monarch::lower(&ctx)?,
        OpKind::BlockDiagLinear => crate::blockdiag::lower(&ctx)?,
        OpKind::NmLinear => crate::nm::lower(&ctx)?,
        OpKind::MonarchProject => {
            return Err(LowerError::HostOnly {
                op: spec.op,
                why: "the projection is a one-time conversion, a truncated SVD per sub-block in \
                      f64 on the host (`sparsecube run monarch-project` runs it on any device)",
            });
        }
    };
    let label = spec_label(spec);
    for plan in lowering.plans() {
        check_shared(spec, plan, &opts.device)?;
        plan.check_fits(&label, &opts.device)?;
    }
    Ok(lowering)
}

/// `op (dim=value, ...)`: how errors name a spec.
pub fn spec_label(spec: &KernelSpec) -> String {
    let dims: Vec<String> = spec
        .dims_in_order()
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    format!("{} ({})", spec.op, dims.join(", "))
}
