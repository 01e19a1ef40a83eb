//! Parsing (syn, darling): kernel declarations, pattern calls, field annotations.

pub mod annotation;
pub mod kernel;
pub mod pattern;
