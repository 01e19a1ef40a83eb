//! A checked kernel declaration → a module with the verified spec's constructor and a typed
//! launch on any `SparseBackend` tensor.

use super::pattern::{Resolved, pattern_expr, resolve};
use crate::parse::kernel::{DimDecl, KernelDecl};
use kernels_ir::{DType, KernelSpec, OpKind};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::Ident;

/// What the DSL knows of an op with a typed launch: its tensors (name, rank) in launch order,
/// its integer tensors, its output, and which tensor axis gives each dim.
pub struct OpSig {
    /// The op's name in the DSL.
    pub dsl: &'static str,
    /// The op.
    pub op: OpKind,
    /// Float inputs (name, rank), in the launch's order.
    pub inputs: &'static [(&'static str, usize)],
    /// Integer inputs (name, rank).
    pub ints: &'static [(&'static str, usize)],
    /// Output (name, rank).
    pub output: (&'static str, usize),
    /// Each dim of the op: (name, tensor, axis) it is read from.
    pub sources: &'static [(&'static str, &'static str, usize)],
}

/// The ops with a typed launch.
pub const OPS: &[OpSig] = &[
    OpSig {
        dsl: "spt_attention",
        op: OpKind::SptAttention,
        inputs: &[("q", 4), ("k", 4), ("v", 4), ("codebook", 3)],
        ints: &[],
        output: ("out", 4),
        sources: &[("B", "q", 0), ("H", "q", 1), ("L", "q", 2), ("D", "q", 3)],
    },
    OpSig {
        dsl: "routed_ffn",
        op: OpKind::RoutedFfn,
        inputs: &[
            ("x", 2),
            ("w1", 2),
            ("b1", 1),
            ("w2", 2),
            ("b2", 1),
            ("wr", 2),
            ("br", 1),
        ],
        ints: &[],
        output: ("y", 2),
        sources: &[("T", "x", 0), ("d_model", "x", 1), ("d_ff", "w1", 0)],
    },
    OpSig {
        dsl: "monarch",
        op: OpKind::Monarch,
        inputs: &[("x", 2), ("w1", 3), ("w2", 3)],
        ints: &[],
        output: ("y", 2),
        sources: &[("N", "x", 0)],
    },
    OpSig {
        dsl: "sara_linear",
        op: OpKind::SaraLinear,
        inputs: &[("x", 2), ("w", 2), ("v", 1), ("bias", 1)],
        ints: &[("index", 1)],
        output: ("y", 2),
        sources: &[("T", "x", 0), ("in", "x", 1), ("out", "w", 0)],
    },
    OpSig {
        dsl: "pst_linear",
        op: OpKind::PstLinear,
        inputs: &[
            ("x", 2),
            ("w", 2),
            ("bias", 1),
            ("u", 2),
            ("v", 2),
            ("ma", 2),
            ("mb", 2),
            ("mr", 1),
            ("mc", 1),
        ],
        ints: &[],
        output: ("y", 2),
        sources: &[("T", "x", 0), ("in", "x", 1), ("out", "w", 0)],
    },
    OpSig {
        dsl: "nm_linear",
        op: OpKind::NmLinear,
        inputs: &[("x", 2), ("v", 1), ("bias", 1)],
        ints: &[("mask_index", 1)],
        output: ("y", 2),
        sources: &[("T", "x", 0), ("in", "x", 1), ("out", "bias", 0)],
    },
    OpSig {
        dsl: "cbm_head",
        op: OpKind::CbmHead,
        inputs: &[("x", 2), ("wc", 2), ("wh", 2), ("noise", 2)],
        ints: &[],
        output: ("logits", 2),
        sources: &[("B", "x", 0), ("C", "x", 1), ("K", "wh", 0)],
    },
];

/// The value symbolic dims take while the macro verifies a spec; errors that name a symbolic
/// dim are left to the generated constructor, which verifies again at run time.
const PLACEHOLDER: usize = 64;

/// Errors gathered over one declaration (reported together).
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let e = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Checks one declaration against kernels-ir and generates its module.
pub fn kernel(decl: &KernelDecl) -> syn::Result<TokenStream> {
    let op_name = decl.op.to_string();
    let Some(sig) = OPS.iter().find(|s| s.dsl == op_name) else {
        let names: Vec<&str> = OPS.iter().map(|s| s.dsl).collect();
        let hint = crate::closest(&op_name, &names)
            .map(|c| format!("; did you mean `{c}`?"))
            .unwrap_or_default();
        return Err(syn::Error::new(
            decl.op.span(),
            format!("unknown op `{op_name}`{hint} (ops: {})", names.join(", ")),
        ));
    };
    let mut errors = Errors::default();

    // The tensors, by the op's names, in its order.
    let expected: Vec<&str> = sig.inputs.iter().chain(sig.ints).map(|(n, _)| *n).collect();
    let signature = format!("{}({}) -> {}", sig.dsl, expected.join(", "), sig.output.0);
    for (i, name) in decl.inputs.iter().enumerate() {
        match expected.get(i) {
            Some(e) if name == e => {}
            Some(e) => errors.push(
                name.span(),
                format!("expected `{e}` here: the op is `{signature}`"),
            ),
            None => errors.push(
                name.span(),
                format!("`{name}` is one tensor too many: the op is `{signature}`"),
            ),
        }
    }
    if decl.inputs.len() < expected.len() {
        let missing = expected[decl.inputs.len()..].join(", ");
        errors.push(
            decl.op.span(),
            format!("missing tensors {missing}: the op is `{signature}`"),
        );
    }
    if decl.output != sig.output.0 {
        errors.push(
            decl.output.span(),
            format!("expected `{}` here: the op is `{signature}`", sig.output.0),
        );
    }

    // dtype.
    let dtype = match &decl.dtype {
        None => DType::F32,
        Some(d) => match d.to_string().parse::<DType>() {
            Ok(t) => t,
            Err(_) => {
                errors.push(
                    d.span(),
                    format!("unknown dtype `{d}`; use f32, f16 or bf16"),
                );
                DType::F32
            }
        },
    };

    // dims: the op's names, each once.
    let own = sig.op.dim_names();
    let extra: &[&str] = if sig.op == OpKind::Monarch {
        &["in", "out"]
    } else {
        &[]
    };
    let (dims, dims_span): (&[DimDecl], Span) = match &decl.dims {
        Some((d, s)) => (d, *s),
        None => (&[], decl.name.span()),
    };
    let mut seen: Vec<String> = Vec::new();
    for d in dims {
        let n = d.name.to_string();
        if !own.contains(&n.as_str()) && !extra.contains(&n.as_str()) {
            let all: Vec<&str> = own.iter().chain(extra).copied().collect();
            errors.push(
                d.name.span(),
                format!(
                    "`{}` has no dim `{n}` (its dims: {})",
                    sig.dsl,
                    all.join(", ")
                ),
            );
        } else if seen.contains(&n) {
            errors.push(d.name.span(), format!("dim `{n}` is given twice; keep one"));
        }
        if let Some(v) = &d.value {
            match v.base10_parse::<usize>() {
                Ok(0) => errors.push(
                    v.span(),
                    format!("dim `{n}` = 0: every size must be at least 1"),
                ),
                Ok(_) => {}
                Err(e) => errors.push(v.span(), e),
            }
        }
        seen.push(n);
    }
    let missing: Vec<&str> = own
        .iter()
        .copied()
        .filter(|n| !seen.iter().any(|s| s == n))
        .collect();
    if !missing.is_empty() {
        errors.push(
            dims_span,
            format!(
                "dims {} of `{}` are missing: write each as a name (given at the call) or `name = size`",
                missing.join(", "),
                sig.dsl
            ),
        );
    }
    let literal = |name: &str| -> Option<usize> {
        dims.iter()
            .find(|d| d.name == name)
            .and_then(|d| d.value.as_ref())
            .and_then(|v| v.base10_parse().ok())
    };
    let symbolic: Vec<&Ident> = dims
        .iter()
        .filter(|d| d.value.is_none() && own.contains(&d.name.to_string().as_str()))
        .map(|d| &d.name)
        .collect();
    errors.finish()?;

    // The pattern, checked by kernels-ir alone, then in a spec with the dims.
    let Resolved {
        pattern,
        arg_spans,
        family_span,
    } = resolve(sig, decl.pattern.as_ref(), &literal, decl.op.span())?;
    let mut b = KernelSpec::builder(decl.name.to_string(), sig.op)
        .pattern(pattern)
        .dtype(dtype);
    for n in own {
        b = b.dim(n, literal(n).unwrap_or(PLACEHOLDER));
    }
    if let Err(found) = b.build() {
        let mut errors = Errors::default();
        let symbolic_names: Vec<String> = symbolic.iter().map(|s| s.to_string()).collect();
        for e in found.0 {
            let words: Vec<&str> = e
                .message
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .collect();
            if symbolic_names.iter().any(|s| words.contains(&s.as_str())) {
                continue; // depends on a size given at the call: checked then
            }
            // Point at the dim or the argument the message names, else at the pattern.
            // Point at the first argument or literal dim the message names, else the pattern.
            let span = words
                .iter()
                .find_map(|w| {
                    arg_spans
                        .iter()
                        .find(|(n, _)| n == w)
                        .map(|(_, s)| *s)
                        .or_else(|| {
                            dims.iter()
                                .find(|d| d.value.is_some() && d.name == w)
                                .map(|d| d.name.span())
                        })
                })
                .unwrap_or(family_span);
            errors.push(span, format!("{}: {}", e.field, e.message));
        }
        errors.finish()?;
    }

    Ok(generate(
        decl,
        sig,
        dtype,
        &symbolic,
        &literal,
        &pattern_expr(&pattern),
    ))
}

/// A dim's name as a Rust identifier (`in` is a keyword: `r#in`), spanned at `at`.
fn dim_ident(n: &str, at: Span) -> Ident {
    if n == "in" {
        Ident::new_raw(n, at)
    } else {
        Ident::new(n, at)
    }
}

fn generate(
    decl: &KernelDecl,
    sig: &OpSig,
    dtype: DType,
    symbolic: &[&Ident],
    literal: &dyn Fn(&str) -> Option<usize>,
    pattern: &TokenStream,
) -> TokenStream {
    let KernelDecl {
        attrs, vis, name, ..
    } = decl;
    let dsl = quote!(::sparsecube_train::dsl);
    let lit = proc_macro2::Literal::usize_unsuffixed;
    let op = format_ident!("{}", format!("{:?}", sig.op));
    let dtype = format_ident!("{}", format!("{dtype:?}"));
    let kernel_name = name.to_string();
    let own = sig.op.dim_names();
    let dim_calls = own.iter().map(|n| match literal(n) {
        Some(v) => {
            let v = lit(v);
            quote!(.dim(#n, #v))
        }
        None => {
            let id = dim_ident(n, Span::call_site());
            quote!(.dim(#n, #id))
        }
    });
    let symbolic: Vec<Ident> = symbolic
        .iter()
        .map(|s| dim_ident(&s.to_string(), s.span()))
        .collect();
    let params = symbolic.iter().map(|s| quote!(#s: usize));
    let args_doc = if symbolic.is_empty() {
        "Every size is fixed by the declaration.".to_string()
    } else {
        let list: Vec<String> = symbolic.iter().map(|s| format!("`{s}`")).collect();
        format!(
            "Sizes given here: {}; the others are fixed by the declaration.",
            list.join(", ")
        )
    };
    let tensor_params = sig.inputs.iter().map(|(n, r)| {
        let id = format_ident!("{}", n);
        let r = lit(*r);
        quote!(#id: #dsl::Tensor<Bk, #r>)
    });
    let int_params = sig.ints.iter().map(|(n, r)| {
        let id = format_ident!("{}", n);
        let r = lit(*r);
        quote!(#id: #dsl::Tensor<Bk, #r, #dsl::Int>)
    });
    let out_rank = lit(sig.output.1);
    let source_lets = symbolic.iter().map(|s| {
        let (_, tensor, axis) = sig
            .sources
            .iter()
            .find(|(n, _, _)| s.to_string().trim_start_matches("r#") == *n)
            .copied()
            .unwrap_or(("", "", 0));
        let t = format_ident!("{}", tensor);
        let axis = lit(axis);
        quote!(let #s = #t.dims()[#axis];)
    });
    let shape_items = sig.inputs.iter().chain(sig.ints).map(|(n, _)| {
        let id = format_ident!("{}", n);
        quote!((#n, #id.dims().to_vec()))
    });
    let floats = sig.inputs.iter().map(|(n, _)| {
        let id = format_ident!("{}", n);
        quote!(#dsl::float(#id))
    });
    let ints = sig.ints.iter().map(|(n, _)| format_ident!("{}", n));
    let symbolic_args = symbolic.iter();
    let launch_doc = format!(
        "Runs the kernel on `{}` tensors (sparsecube's kernels on wgpu/CUDA, the reference composition on ndarray; differentiable under `Autodiff`). Shapes are checked against the spec first.",
        sig.dsl
    );
    quote! {
        #(#attrs)*
        #[allow(non_snake_case)]
        #vis mod #name {
            /// The op.
            pub const OP: #dsl::kernels_ir::OpKind = #dsl::kernels_ir::OpKind::#op;

            /// The pattern, as declared (checked by kernels-ir when the macro expanded).
            pub fn pattern() -> #dsl::kernels_ir::Pattern {
                #pattern
            }

            /// The verified spec.
            #[doc = #args_doc]
            pub fn spec(#(#params),*) -> ::core::result::Result<#dsl::kernels_ir::KernelSpec, #dsl::kernels_ir::VerifyErrors> {
                #dsl::kernels_ir::KernelSpec::builder(#kernel_name, OP)
                    .pattern(pattern())
                    .dtype(#dsl::kernels_ir::DType::#dtype)
                    #(#dim_calls)*
                    .build()
            }

            #[doc = #launch_doc]
            pub fn forward<Bk: #dsl::SparseBackend>(
                #(#tensor_params,)*
                #(#int_params,)*
            ) -> ::core::result::Result<#dsl::Tensor<Bk, #out_rank>, #dsl::LaunchError> {
                #(#source_lets)*
                let spec = spec(#(#symbolic_args),*)?;
                #dsl::check_shapes(&spec, &[#(#shape_items),*])?;
                ::core::result::Result::Ok(#dsl::run(&spec, ::std::vec![#(#floats),*], ::std::vec![#(#ints),*]))
            }
        }
    }
}
