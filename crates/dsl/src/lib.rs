//! `sparsecube-dsl`: the front end of sparsecube's proc-macros, on `proc_macro2` token streams so
//! that it can be tested (expansion snapshots) outside a macro. [`parse`] reads declarations and
//! annotations (syn; pattern arguments with darling), [`generate`] checks them against kernels-ir
//! — the same verifier the IR text and the runtime use — and writes the code (quote). Errors
//! become `compile_error!`s spanned at the offending token, with a fix hint.
//!
//! The grammar, every pattern's arguments and defaults: docs/dsl.md.

pub mod generate;
pub mod parse;

use proc_macro2::TokenStream;

/// Expands `sparse_kernel! { ... }`: one module per declared kernel, or the errors.
pub fn kernels(input: TokenStream) -> TokenStream {
    let decls = match syn::parse2::<parse::kernel::KernelDecls>(input) {
        Ok(d) => d,
        Err(e) => return e.to_compile_error(),
    };
    let mut out = TokenStream::new();
    for decl in &decls.0 {
        match generate::kernel::kernel(decl) {
            Ok(tokens) => out.extend(tokens),
            Err(e) => out.extend(e.to_compile_error()),
        }
    }
    out
}

/// Expands `#[derive(SparseModel)]` on `input`: the impl, or the errors (the struct itself is
/// untouched by a derive, so IDEs keep seeing it).
pub fn sparse_model(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<syn::DeriveInput>(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    generate::model::model(&input).unwrap_or_else(|e| e.to_compile_error())
}

/// The closest of `options` to `name` (edit distance ≤ 2), for "did you mean" hints.
pub fn closest<'a>(name: &str, options: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    options
        .iter()
        .map(|o| (distance(name, o), *o))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, o)| o)
}
