//! `#[derive(SparseModel)]`: `from_dense` (each annotated field converted by its method, with the
//! pattern checked by kernels-ir when the macro expanded) and `merge` (dense again where the
//! method allows).

use super::pattern::{pattern_expr, to_pattern};
use crate::parse::annotation::{Annotation, Slot, annotation};
use crate::parse::pattern::PatternArgs;
use kernels_ir::pattern::{Pattern, PatternKind};
use kernels_ir::{KernelSpec, OpKind};
use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields};

/// The problem sizes an annotation's pattern is verified at (the model's own sizes are known
/// only at run time, where `from_dense` checks them again).
fn probe(kind: PatternKind, pattern: &Pattern) -> Option<(OpKind, Vec<(&'static str, usize)>)> {
    Some(match (kind, pattern) {
        (PatternKind::PqTopK, Pattern::PqTopK(p)) => {
            let l = match p.topk {
                kernels_ir::pattern::TopK::Fixed(k) => k.max(1).saturating_mul(8),
                kernels_ir::pattern::TopK::SeqFraction(_) => 64,
            };
            (
                OpKind::SptAttention,
                vec![
                    ("B", 1),
                    ("H", 1),
                    ("L", l),
                    ("D", p.sub_dim.max(1).saturating_mul(8)),
                ],
            )
        }
        (PatternKind::Routed, Pattern::Routed(r)) => (
            OpKind::RoutedFfn,
            vec![
                ("T", 1),
                ("d_model", 64),
                ("d_ff", r.blocks.max(1).saturating_mul(64)),
            ],
        ),
        (PatternKind::Sara, _) => (OpKind::SaraLinear, vec![("T", 1), ("in", 64), ("out", 64)]),
        (PatternKind::Pst, _) => (OpKind::PstLinear, vec![("T", 1), ("in", 64), ("out", 64)]),
        (PatternKind::Nm, Pattern::Nm(nm)) => (
            OpKind::NmLinear,
            vec![
                ("T", 1),
                ("in", nm.m.max(1).saturating_mul(16)),
                ("out", 64),
            ],
        ),
        _ => return None,
    })
}

/// The conversion of one annotated field.
fn conversion(a: &Annotation) -> syn::Result<TokenStream> {
    let dsl = quote!(::sparsecube_train::dsl);
    let field = &a.field;
    let family = a.call.family.to_string();
    let method = match (&a.call.args, family.as_str()) {
        (PatternArgs::Lora(l), _) => {
            let rank = l.rank.as_ref().map_or(8, |r| r.as_ref().0);
            let alpha = l.alpha.as_ref().map_or(16.0, |v| v.as_ref().0);
            if rank == 0 {
                let span = l.rank.as_ref().map_or(a.call.family.span(), |r| r.span());
                return Err(syn::Error::new(
                    span,
                    "lora: rank = 0; use a rank of at least 1 (e.g. 8)",
                ));
            }
            if !alpha.is_finite() {
                let span = l.alpha.as_ref().map_or(a.call.family.span(), |v| v.span());
                return Err(syn::Error::new(
                    span,
                    format!("lora: alpha = {alpha}; use a finite scale (e.g. 16.0)"),
                ));
            }
            quote!(#dsl::LinearMethod::Lora { rank: #rank, alpha: #alpha })
        }
        (PatternArgs::Monarch(m), _) => {
            let Some(blocks) = &m.blocks else {
                return Err(syn::Error::new(
                    a.call.family.span(),
                    "in an annotation give monarch(blocks = ..): the layer's sizes decide the factors",
                ));
            };
            if m.k.is_some()
                || m.q.is_some()
                || m.p.is_some()
                || m.l.is_some()
                || m.s.is_some()
                || m.r.is_some()
            {
                return Err(syn::Error::new(
                    blocks.span(),
                    "in an annotation give only monarch(blocks = ..)",
                ));
            }
            let b = blocks.as_ref().0;
            if b == 0 {
                return Err(syn::Error::new(
                    blocks.span(),
                    "monarch: blocks = 0; use at least 1 (e.g. 4)",
                ));
            }
            quote!(#dsl::LinearMethod::Monarch { blocks: #b })
        }
        _ => {
            let kind = match family.as_str() {
                "pq_topk" => PatternKind::PqTopK,
                "routed" => PatternKind::Routed,
                "sara" => PatternKind::Sara,
                "nm" => PatternKind::Nm,
                _ => PatternKind::Pst,
            };
            let resolved = to_pattern(kind, &a.call, &|_| None, a.key_span)?;
            if let Some((op, dims)) = probe(kind, &resolved.pattern) {
                let spec = KernelSpec::builder(a.field.to_string(), op)
                    .pattern(resolved.pattern)
                    .dims(dims)
                    .build();
                if let Err(found) = spec {
                    let mut all: Option<syn::Error> = None;
                    for e in found.0 {
                        let words: Vec<&str> = e
                            .message
                            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .collect();
                        let span = resolved
                            .arg_spans
                            .iter()
                            .find(|(n, _)| words.contains(&n.as_str()))
                            .map_or(resolved.family_span, |(_, s)| *s);
                        let err = syn::Error::new(span, format!("{family}: {}", e.message));
                        match &mut all {
                            Some(x) => x.combine(err),
                            None => all = Some(err),
                        }
                    }
                    if let Some(e) = all {
                        return Err(e);
                    }
                }
            }
            let pattern = pattern_expr(&resolved.pattern);
            match a.slot {
                Slot::Attention => {
                    return Ok(
                        quote!(model.#field = #dsl::attention(model.#field, #pattern, &mut rng)?;),
                    );
                }
                Slot::Ffn => {
                    return Ok(
                        quote!(model.#field = #dsl::ffn(model.#field, #pattern, &mut rng)?;),
                    );
                }
                Slot::Linear | Slot::Adapter => quote!(#dsl::LinearMethod::Pattern(#pattern)),
            }
        }
    };
    Ok(quote!(model.#field = #dsl::linear(model.#field, #method, &mut rng)?;))
}

/// The derive's output for `input`.
pub fn model(input: &DeriveInput) -> syn::Result<TokenStream> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "SparseModel derives on a struct with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "SparseModel derives on a struct with named fields",
        ));
    };
    let mut errors: Option<syn::Error> = None;
    let mut annotations = Vec::new();
    for f in &fields.named {
        match annotation(f) {
            Ok(Some(a)) => annotations.push(a),
            Ok(None) => {}
            Err(e) => match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            },
        }
    }
    let mut conversions = Vec::new();
    for a in &annotations {
        match conversion(a) {
            Ok(c) => conversions.push(c),
            Err(e) => match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            },
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    let dsl = quote!(::sparsecube_train::dsl);
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let table = annotations.iter().map(|a| {
        let f = a.field.to_string();
        let t = &a.text;
        quote!((#f, #t))
    });
    let merges = annotations.iter().map(|a| {
        let field = &a.field;
        match a.slot {
            Slot::Attention => quote!(model.#field = #dsl::merge_attention(model.#field);),
            Slot::Ffn => quote!(model.#field = #dsl::merge_ffn(model.#field);),
            Slot::Linear | Slot::Adapter => {
                quote!(model.#field = #dsl::merge_linear(model.#field);)
            }
        }
    });
    let doc_from = format!(
        "The sparse counterpart of a dense `{name}`: every `#[sparse(...)]` field converted by its method (Monarch projection, SaRA mask selection, PST and LoRA factors, SPT codebook and router); random choices from seed 0."
    );
    Ok(quote! {
        impl #impl_generics #name #ty_generics #where_clause {
            /// The annotated fields and their annotations, as written.
            pub const SPARSE_FIELDS: &'static [(&'static str, &'static str)] = &[#(#table),*];

            #[doc = #doc_from]
            pub fn from_dense(dense: &Self) -> ::core::result::Result<Self, ::sparsecube_train::TrainError> {
                Self::from_dense_seeded(dense, 0)
            }

            /// [`Self::from_dense`] with the random choices drawn from `seed`.
            pub fn from_dense_seeded(dense: &Self, seed: u64) -> ::core::result::Result<Self, ::sparsecube_train::TrainError> {
                let mut rng = #dsl::SplitMix64::new(seed);
                let mut model = ::core::clone::Clone::clone(dense);
                #(#conversions)*
                let _ = &mut rng;
                ::core::result::Result::Ok(model)
            }

            /// Every annotated field dense again: LoRA and SaRA merged, PST's mask baked in,
            /// Monarch multiplied out, SPT's attention dense, the routed FFN dense over the same
            /// weights (its routing dropped).
            pub fn merge(&self) -> Self {
                let mut model = ::core::clone::Clone::clone(self);
                #(#merges)*
                model
            }
        }
    })
}
