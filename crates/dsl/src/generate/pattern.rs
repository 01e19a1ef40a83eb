//! Pattern calls → kernels-ir patterns (checked at expansion), and back to code.

use super::kernel::OpSig;
use crate::parse::pattern::{PatternArgs, PatternCall};
use kernels_ir::pattern::{MonarchShape, Pattern, PatternKind};
use proc_macro2::{Span, TokenStream};
use quote::quote;

/// A resolved pattern with the spans errors about it point at.
pub struct Resolved {
    /// The pattern.
    pub pattern: Pattern,
    /// Each argument given, with its value's span.
    pub arg_spans: Vec<(String, Span)>,
    /// The family name's span (or the op's when no pattern was written).
    pub family_span: Span,
}

/// The DSL family of an IR pattern kind.
pub fn family_of(kind: PatternKind) -> &'static str {
    match kind {
        PatternKind::PqTopK => "pq_topk",
        PatternKind::Routed => "routed",
        PatternKind::Monarch => "monarch",
        PatternKind::Sara => "sara",
        PatternKind::Pst => "pst",
        PatternKind::Cbm => "cbm",
        PatternKind::BlockDiagonal => "block_diag",
        PatternKind::Dense => "dense",
        PatternKind::Nm => "nm",
    }
}

/// Builds the IR pattern of `call` (for `kind`), pointing errors at the argument they name.
/// `sizes` gives literal dims (Monarch's `blocks` form reads `in` and `out`).
pub fn to_pattern(
    kind: PatternKind,
    call: &PatternCall,
    sizes: &dyn Fn(&str) -> Option<usize>,
    at: Span,
) -> syn::Result<Resolved> {
    let mut items = call.arg_text()?;
    if let PatternArgs::Monarch(m) = &call.args
        && let Some(blocks) = &m.blocks
    {
        if !items.is_empty() {
            return Err(syn::Error::new(
                blocks.span(),
                "give `blocks` or the six sizes k, q, p, l, s, r, not both",
            ));
        }
        let b = blocks.as_ref().0;
        let (Some(n_in), Some(n_out)) = (sizes("in"), sizes("out")) else {
            return Err(syn::Error::new(
                at,
                "monarch(blocks = ..) needs literal `in` and `out` dims (e.g. dims = (N, in = 1024, out = 1024))",
            ));
        };
        if b == 0 || !n_in.is_multiple_of(b) || !n_out.is_multiple_of(b) {
            return Err(syn::Error::new(
                blocks.span(),
                format!("blocks = {b} must divide in = {n_in} and out = {n_out}"),
            ));
        }
        let inner = n_in.min(n_out);
        let m = MonarchShape {
            k: b,
            q: inner / b,
            p: n_in / b,
            l: b,
            s: n_out / b,
            r: inner / b,
        };
        items = Pattern::Monarch(m)
            .args()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v, blocks.span()))
            .collect();
    }
    let arg_spans: Vec<(String, Span)> = items.iter().map(|(n, _, s)| (n.clone(), *s)).collect();
    let pairs = items
        .iter()
        .map(|(n, v, _)| (n.clone(), v.clone()))
        .collect();
    match Pattern::from_args(kind, pairs) {
        Ok(pattern) => Ok(Resolved {
            pattern,
            arg_spans,
            family_span: call.family.span(),
        }),
        Err(e) => {
            let words: Vec<&str> = e
                .message
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .collect();
            let span = arg_spans
                .iter()
                .find(|(n, _)| words.contains(&n.as_str()))
                .map_or(call.family.span(), |(_, s)| *s);
            Err(syn::Error::new(
                span,
                format!("{}: {}", family_of(kind), e.message),
            ))
        }
    }
}

/// The pattern of a kernel declaration: the op's family (or its defaults when none is written).
pub fn resolve(
    sig: &OpSig,
    call: Option<&(PatternCall, Span)>,
    sizes: &dyn Fn(&str) -> Option<usize>,
    op_span: Span,
) -> syn::Result<Resolved> {
    let kind = sig.op.pattern_kind();
    let want = family_of(kind);
    let Some((call, span)) = call else {
        if kind == PatternKind::Monarch {
            return Err(syn::Error::new(
                op_span,
                "monarch needs `pattern = monarch(blocks = ..)` (or its six sizes)",
            ));
        }
        return Pattern::from_args(kind, Vec::new())
            .map(|pattern| Resolved {
                pattern,
                arg_spans: Vec::new(),
                family_span: op_span,
            })
            .map_err(|e| syn::Error::new(op_span, e.message));
    };
    let got = call.family.to_string();
    if got == "lora" {
        return Err(syn::Error::new(
            call.family.span(),
            "`lora` is a module, not a kernel pattern: annotate a `Linear` field with #[sparse(adapter = lora(..))]",
        ));
    }
    if got != want {
        return Err(syn::Error::new(
            call.family.span(),
            format!(
                "`{}` takes a `{want}(..)` pattern, not `{got}(..)`",
                sig.dsl
            ),
        ));
    }
    to_pattern(kind, call, sizes, *span)
}

/// Code that rebuilds `pattern` at run time (from the canonical arguments kernels-ir accepted
/// when the macro expanded).
pub fn pattern_expr(pattern: &Pattern) -> TokenStream {
    let family = family_of(pattern.kind());
    let args = pattern.args().into_iter().map(|(n, v)| quote!((#n, #v)));
    quote!(::sparsecube_train::dsl::pattern(#family, &[#(#args),*]))
}
