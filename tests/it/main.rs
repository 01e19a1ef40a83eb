//! The workspace's integration tests, one binary: hand-derived cases, identities, finite
//! differences, text-format properties, verifier behaviour and IR snapshots.

mod cuda_offline;
mod dsl;
mod fd;
mod fuzz;
mod hand;
mod identities;
mod ir;
mod kernels_cbm;
mod kernels_monarch;
mod kernels_nm;
mod kernels_pst;
mod kernels_routed;
mod kernels_sara;
mod kernels_spt;
mod model;
mod parallel;
mod plans;
mod prims;
mod sources;
mod tensor_cores;
mod text;
mod train;
mod tune;
