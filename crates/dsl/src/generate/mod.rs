//! Code generation (quote): kernel modules and the model derive.

pub mod kernel;
pub mod model;
pub mod pattern;
