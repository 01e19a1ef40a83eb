//! `sparse_kernel!` declarations:
//!
//! ```text
//! /// docs
//! pub attention: spt_attention(q, k, v, codebook) -> out {
//!     pattern = pq_topk(topk = L / 8, selector = pq_match, causal),
//!     dims = (B, H, L = 128, D = 64),
//!     dtype = f32,
//! }
//! ```
//!
//! A name, the op, its tensors by name (the op's contract order), then `key = value` items:
//! `pattern` (a pattern call), `dims` (each a symbolic name or `name = literal`), `dtype`.

use super::pattern::PatternCall;
use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitInt, Token, Visibility, braced, parenthesized};

/// One dim: `L` (symbolic: a parameter of the generated constructor) or `L = 128`.
#[derive(Debug)]
pub struct DimDecl {
    /// Its name.
    pub name: Ident,
    /// Its value when literal.
    pub value: Option<LitInt>,
}

impl Parse for DimDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `in` is a keyword, and a dim of the linears.
        let name = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(Self { name, value })
    }
}

/// One declared kernel.
#[derive(Debug)]
pub struct KernelDecl {
    /// Doc comments and other attributes of the generated module.
    pub attrs: Vec<Attribute>,
    /// Visibility of the generated module.
    pub vis: Visibility,
    /// The kernel's name (the generated module's).
    pub name: Ident,
    /// The op (`spt_attention`, `routed_ffn`, ...).
    pub op: Ident,
    /// The input tensors, by name.
    pub inputs: Vec<Ident>,
    /// The output tensor's name.
    pub output: Ident,
    /// `pattern = ...`, with the span of the whole value.
    pub pattern: Option<(PatternCall, Span)>,
    /// `dims = (...)`, with the span of the list.
    pub dims: Option<(Vec<DimDecl>, Span)>,
    /// `dtype = ...`.
    pub dtype: Option<Ident>,
}

impl Parse for KernelDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let name: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let op: Ident = input.parse()?;
        let args;
        parenthesized!(args in input);
        let inputs: Punctuated<Ident, Token![,]> =
            args.parse_terminated(Ident::parse, Token![,])?;
        input.parse::<Token![->]>()?;
        let output: Ident = input.parse()?;
        let body;
        braced!(body in input);
        let mut decl = KernelDecl {
            attrs,
            vis,
            name,
            op,
            inputs: inputs.into_iter().collect(),
            output,
            pattern: None,
            dims: None,
            dtype: None,
        };
        while !body.is_empty() {
            let key: Ident = body.parse()?;
            body.parse::<Token![=]>()?;
            let duplicate = |what: &str| {
                syn::Error::new(key.span(), format!("`{what}` is given twice; keep one"))
            };
            match key.to_string().as_str() {
                "pattern" => {
                    let value: syn::Expr = body.parse()?;
                    let span = value.span();
                    let call = PatternCall::parse(quote::ToTokens::to_token_stream(&value))?;
                    if decl.pattern.replace((call, span)).is_some() {
                        return Err(duplicate("pattern"));
                    }
                }
                "dims" => {
                    let list;
                    let paren = parenthesized!(list in body);
                    let dims: Punctuated<DimDecl, Token![,]> =
                        list.parse_terminated(DimDecl::parse, Token![,])?;
                    if decl
                        .dims
                        .replace((dims.into_iter().collect(), paren.span.join()))
                        .is_some()
                    {
                        return Err(duplicate("dims"));
                    }
                }
                "dtype" => {
                    if decl.dtype.replace(body.parse()?).is_some() {
                        return Err(duplicate("dtype"));
                    }
                }
                other => {
                    let keys = ["pattern", "dims", "dtype"];
                    let hint = crate::closest(other, &keys)
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown item `{other}`{hint} (a kernel has pattern, dims and dtype)"
                        ),
                    ));
                }
            }
            if !body.is_empty() {
                body.parse::<Token![,]>()?;
            }
        }
        Ok(decl)
    }
}

/// Every kernel of one `sparse_kernel!` invocation.
pub struct KernelDecls(pub Vec<KernelDecl>);

impl Parse for KernelDecls {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut out = Vec::new();
        while !input.is_empty() {
            out.push(input.parse()?);
        }
        Ok(Self(out))
    }
}
