//! `kernels-ir`: the intermediate representation of sparsecube.
//!
//! What it is: sparsity [patterns](pattern) (the algorithm), [ops](op) with their tensor
//! signatures, [schedules](schedule) (tiling, searched by the autotuner), [kernel specs](spec)
//! tying them together, a [builder](spec::KernelSpecBuilder), a [verifier](verify) that reports
//! every error at once, a [text format](text) (Display prints, FromStr parses) and serde; plus the
//! f64 reference executor (`reference`) that defines the correct answer of every op.
//!
//! The reference executor is behind the default feature `reference` (it brings faer for its
//! SVD). The DSL's proc-macro checks specs at expansion time and needs only the IR, so it builds
//! `kernels-ir` without it: no linear-algebra crate is compiled for the host.
//!
//! What it is not: a code generator. It has no CubeCL dependency; `sparsecube-codegen` lowers
//! specs to launch plans and kernels, and tests compare those kernels against the reference executor.
//!
//! ```
//! use kernels_ir::{KernelSpec, OpKind, Pattern, pattern::Routed};
//! let spec = KernelSpec::builder("ffn", OpKind::RoutedFfn)
//!     .dims([("T", 128), ("d_model", 64), ("d_ff", 256)])
//!     .pattern(Pattern::Routed(Routed { blocks: 4, top: 2, ..Routed::default() }))
//!     .build()
//!     .unwrap();
//! let text = spec.to_string();
//! assert_eq!(text.parse::<KernelSpec>().unwrap(), spec);
//! ```

pub mod args;
pub mod dtype;
pub mod infer;
pub mod op;
pub mod pattern;
#[cfg(feature = "reference")]
pub mod reference;
pub mod schedule;
pub mod spec;
pub mod text;
pub mod verify;

pub use dtype::DType;
pub use op::{Direction, Extent, OpKind, Role, TensorSpec};
pub use pattern::{Pattern, PatternKind};
pub use schedule::{Knob, Mma, Precision, Schedule};
pub use spec::{Cost, KernelSpec, KernelSpecBuilder, Module};
pub use text::ParseError;
pub use verify::{VerifyError, VerifyErrors, verify_module};
