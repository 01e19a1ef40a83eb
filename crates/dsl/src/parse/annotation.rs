//! `#[sparse(...)]` field annotations of `#[derive(SparseModel)]`:
//!
//! ```text
//! #[sparse(attention = pq_topk(topk = 64))]      attn: MultiHeadAttention<B>,
//! #[sparse(ffn = routed(blocks = 4, top = 2))]   ffn: Ffn<B>,
//! #[sparse(linear = monarch(blocks = 4))]        proj: Linear<B>,
//! #[sparse(adapter = sara(ratio = 0.1))]         out: Linear<B>,
//! #[sparse(linear = pst(sparsity = 0.9))]        up: Linear<B>,
//! ```
//!
//! One key per field, parsed by darling (unknown and repeated keys are its errors); the value is
//! a pattern call.

use super::pattern::PatternCall;
use darling::FromMeta;
use darling::util::SpannedValue;
use proc_macro2::Span;
use quote::ToTokens;
use syn::{Attribute, Expr, Field, Ident, Type};

/// The keys of `#[sparse(...)]`.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
struct SparseAttr {
    attention: Option<SpannedValue<Expr>>,
    ffn: Option<SpannedValue<Expr>>,
    linear: Option<SpannedValue<Expr>>,
    adapter: Option<SpannedValue<Expr>>,
}

/// What an annotation converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `attention = ...` on a `MultiHeadAttention` field.
    Attention,
    /// `ffn = ...` on an `Ffn` field.
    Ffn,
    /// `linear = ...` on a `Linear` field.
    Linear,
    /// `adapter = ...` on a `Linear` field.
    Adapter,
}

impl Slot {
    /// The key as written.
    pub fn key(self) -> &'static str {
        match self {
            Slot::Attention => "attention",
            Slot::Ffn => "ffn",
            Slot::Linear => "linear",
            Slot::Adapter => "adapter",
        }
    }
    /// The field type (last path segment) the key goes on.
    pub fn field_type(self) -> &'static str {
        match self {
            Slot::Attention => "MultiHeadAttention",
            Slot::Ffn => "Ffn",
            Slot::Linear | Slot::Adapter => "Linear",
        }
    }
    /// The pattern families it takes.
    pub fn families(self) -> &'static [&'static str] {
        match self {
            Slot::Attention => &["pq_topk"],
            Slot::Ffn => &["routed"],
            Slot::Linear => &["monarch", "pst", "sara", "nm", "lora"],
            Slot::Adapter => &["sara", "lora"],
        }
    }
}

/// One annotated field.
#[derive(Debug)]
pub struct Annotation {
    /// The field.
    pub field: Ident,
    /// Its key.
    pub slot: Slot,
    /// The key's span.
    pub key_span: Span,
    /// The pattern call.
    pub call: PatternCall,
    /// The annotation as written (for the generated table).
    pub text: String,
}

/// The annotation of `field`, if it has one. Errors: a field without a name, an unknown or
/// repeated key, two keys, a key on a field of another kind.
pub fn annotation(field: &Field) -> syn::Result<Option<Annotation>> {
    let attrs: Vec<&Attribute> = field
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("sparse"))
        .collect();
    let Some(attr) = attrs.first() else {
        return Ok(None);
    };
    if let Some(second) = attrs.get(1) {
        return Err(syn::Error::new_spanned(
            second,
            "one #[sparse(...)] per field",
        ));
    }
    let Some(name) = field.ident.clone() else {
        return Err(syn::Error::new_spanned(
            attr,
            "#[sparse(...)] needs a named field",
        ));
    };
    let parsed = SparseAttr::from_meta(&attr.meta).map_err(syn::Error::from)?;
    let given: Vec<(Slot, SpannedValue<Expr>)> = [
        (Slot::Attention, parsed.attention),
        (Slot::Ffn, parsed.ffn),
        (Slot::Linear, parsed.linear),
        (Slot::Adapter, parsed.adapter),
    ]
    .into_iter()
    .filter_map(|(s, v)| v.map(|v| (s, v)))
    .collect();
    let (slot, value) = match given.len() {
        1 => given
            .into_iter()
            .next()
            .ok_or_else(|| syn::Error::new_spanned(attr, "empty"))?,
        0 => {
            return Err(syn::Error::new_spanned(
                attr,
                "#[sparse(...)] needs one of attention, ffn, linear, adapter (e.g. #[sparse(linear = monarch(blocks = 4))])",
            ));
        }
        _ => {
            return Err(syn::Error::new(
                given[1].1.span(),
                "one key per field: attention, ffn, linear or adapter",
            ));
        }
    };
    let ty = type_name(&field.ty);
    if ty.as_deref() != Some(slot.field_type()) {
        return Err(syn::Error::new_spanned(
            &field.ty,
            format!(
                "`{}` annotations go on a `{}<B>` field; `{name}` is a `{}`",
                slot.key(),
                slot.field_type(),
                field.ty.to_token_stream().to_string().replace(' ', "")
            ),
        ));
    }
    let call = PatternCall::parse(value.as_ref().to_token_stream())?;
    let family = call.family.to_string();
    if !slot.families().contains(&family.as_str()) {
        return Err(syn::Error::new(
            call.family.span(),
            format!(
                "`{}` takes {}, not `{family}`",
                slot.key(),
                slot.families()
                    .iter()
                    .map(|f| format!("`{f}(..)`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ));
    }
    let text = format!(
        "{} = {}",
        slot.key(),
        value
            .as_ref()
            .to_token_stream()
            .to_string()
            .replace(" (", "(")
            .replace("( ", "(")
            .replace(" )", ")")
            .replace(" ,", ",")
    );
    Ok(Some(Annotation {
        field: name,
        slot,
        key_span: value.span(),
        call,
        text,
    }))
}

/// The last path segment of a type (`Linear` of `Linear<B>` or `crate::modules::Linear<B>`).
fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}
