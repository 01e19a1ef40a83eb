//! sparsecube's proc-macros (a shim over `sparsecube-dsl`, where parsing and generation live):
//!
//! - `sparse_kernel! { ... }` declares kernels: pattern, dims (symbolic or literal), dtype; each
//!   expands to a module with the verified spec's constructor and a typed launch;
//! - `#[derive(SparseModel)]` with `#[sparse(...)]` field annotations generates `from_dense`
//!   and `merge` for a model built of the training runtime's modules.
//!
//! Use them through `sparsecube_train` (which re-exports both and the paths they expand to).
//! The grammar: docs/dsl.md.

use proc_macro::TokenStream;

/// Declares sparse kernels; see docs/dsl.md.
#[proc_macro]
pub fn sparse_kernel(input: TokenStream) -> TokenStream {
    sparsecube_dsl::kernels(input.into()).into()
}

/// Generates `from_dense`, `merge` and `SPARSE_FIELDS` from `#[sparse(...)]` field annotations;
/// see docs/dsl.md.
#[proc_macro_derive(SparseModel, attributes(sparse))]
pub fn sparse_model(input: TokenStream) -> TokenStream {
    sparsecube_dsl::sparse_model(input.into()).into()
}
