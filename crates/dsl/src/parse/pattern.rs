//! Pattern calls: `family(name = value, flag, ...)`, e.g. `pq_topk(topk = L / 8, selector =
//! pq_match, causal)`, `routed(blocks = 4, top = 2, gate = output)`, `monarch(blocks = 4)`,
//! `sara(threshold = 2e-3)`, `pst(sparsity = 0.9, rank = 8)`, `cbm(topk = 32)`, `nm(n = 2, m = 4)`,
//! `lora(rank = 8)`.
//! Each family's arguments are a darling struct: unknown and duplicated names, and values of the
//! wrong type, are reported by darling at the offending token. The values are then handed to
//! kernels-ir as `name = value` text (`Pattern::from_args`), which checks what it can alone.

use darling::FromMeta;
use darling::ast::NestedMeta;
use darling::util::SpannedValue;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Expr, Ident};

/// The families a pattern call may name.
pub const FAMILIES: &[&str] = &[
    "pq_topk", "routed", "monarch", "sara", "pst", "cbm", "nm", "lora",
];

type Sv<T> = Option<SpannedValue<T>>;

/// A non-negative integer argument (`blocks = 4`); anything else is an error with an example.
#[derive(Clone, Copy, Debug)]
pub struct Count(pub usize);

impl FromMeta for Count {
    fn from_value(value: &syn::Lit) -> darling::Result<Self> {
        match value {
            syn::Lit::Int(i) => i
                .base10_parse()
                .map(Count)
                .map_err(|e| darling::Error::custom(e).with_span(value)),
            _ => Err(
                darling::Error::custom("expected an integer, e.g. `blocks = 4`").with_span(value),
            ),
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A number argument (`sparsity = 0.9`, `threshold = 2e-3`); anything else is an error with an
/// example.
#[derive(Clone, Copy, Debug)]
pub struct Real(pub f64);

impl FromMeta for Real {
    fn from_value(value: &syn::Lit) -> darling::Result<Self> {
        let parsed = match value {
            syn::Lit::Float(f) => f.base10_parse(),
            syn::Lit::Int(i) => i.base10_parse(),
            _ => {
                return Err(
                    darling::Error::custom("expected a number, e.g. `sparsity = 0.9`")
                        .with_span(value),
                );
            }
        };
        parsed
            .map(Real)
            .map_err(|e| darling::Error::custom(e).with_span(value))
    }
}

impl std::fmt::Display for Real {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `pq_topk(...)`: SPT's PQ top-k attention.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct PqTopkArgs {
    /// Kept keys: an integer or `L / n`.
    pub topk: Sv<Expr>,
    /// `pq_match` or `pq_adc`.
    pub selector: Sv<Expr>,
    /// Keys j ≤ i only.
    pub causal: Sv<bool>,
    /// Scores clamped to ±10.
    pub clamp: Sv<bool>,
    /// PQ sub-vector length.
    pub sub_dim: Sv<Count>,
    /// Codewords per subspace.
    pub codewords: Sv<Count>,
    /// Rows per selected block (1: keys per row; a power of two ≥ 16: key blocks).
    pub block: Sv<Count>,
}

/// `routed(...)`: SPT's routed FFN.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct RoutedArgs {
    /// Blocks of the hidden dimension.
    pub blocks: Sv<Count>,
    /// Blocks kept per token.
    pub top: Sv<Count>,
    /// `sigmoid` or `softmax`.
    pub router: Sv<Expr>,
    /// `output`, `none` or `spt_lora`.
    pub gate: Sv<Expr>,
    /// Gate multiplier.
    pub gate_scale: Sv<Real>,
    /// `relu` or `gelu`.
    pub act: Sv<Expr>,
}

/// `monarch(...)`: `blocks` (with the feature sizes from the dims), or the six factor sizes.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct MonarchArgs {
    /// Blocks per factor.
    pub blocks: Sv<Count>,
    /// First-factor blocks.
    pub k: Sv<Count>,
    /// First-factor output rows per block.
    pub q: Sv<Count>,
    /// First-factor input columns per block.
    pub p: Sv<Count>,
    /// Second-factor blocks.
    pub l: Sv<Count>,
    /// Second-factor output rows per block.
    pub s: Sv<Count>,
    /// Second-factor input columns per block.
    pub r: Sv<Count>,
}

/// `sara(...)`: the retrained weights, by threshold or ratio.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct SaraArgs {
    /// |w| below it.
    pub threshold: Sv<Real>,
    /// The smallest fraction of |w|.
    pub ratio: Sv<Real>,
}

/// `pst(...)`.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct PstArgs {
    /// Final sparsity.
    pub sparsity: Sv<Real>,
    /// Rank of U·V.
    pub rank: Sv<Count>,
    /// Rank of A·B.
    pub mask_rank: Sv<Count>,
    /// Weight of A·B.
    pub alpha1: Sv<Real>,
    /// Weight of R·1ᵀ + 1·Cᵀ.
    pub alpha2: Sv<Real>,
    /// Weight of U·V.
    pub beta: Sv<Real>,
}

/// `cbm(...)`.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct CbmArgs {
    /// Concepts kept per sample (0: dense head).
    pub topk: Sv<Count>,
}

/// `nm(...)`: N:M semi-structured sparsity.
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct NmArgs {
    /// Entries kept per group.
    pub n: Sv<Count>,
    /// Entries per group.
    pub m: Sv<Count>,
}

/// `lora(...)` (annotations only: LoRA is a module, not a kernel pattern).
#[derive(Debug, Default, FromMeta)]
#[darling(default)]
pub struct LoraArgs {
    /// Rank.
    pub rank: Sv<Count>,
    /// α (scale α / rank).
    pub alpha: Sv<Real>,
}

/// A parsed pattern call.
#[derive(Debug)]
pub enum PatternArgs {
    /// `pq_topk(...)`.
    PqTopk(PqTopkArgs),
    /// `routed(...)`.
    Routed(RoutedArgs),
    /// `monarch(...)`.
    Monarch(MonarchArgs),
    /// `sara(...)`.
    Sara(SaraArgs),
    /// `pst(...)`.
    Pst(PstArgs),
    /// `cbm(...)`.
    Cbm(CbmArgs),
    /// `nm(...)`.
    Nm(NmArgs),
    /// `lora(...)`.
    Lora(LoraArgs),
}

/// A pattern call: the family's name (with its span) and its arguments.
#[derive(Debug)]
pub struct PatternCall {
    /// The family as written.
    pub family: Ident,
    /// The arguments.
    pub args: PatternArgs,
}

/// One argument as kernels-ir's text takes it: `(name, value text, span of the value)`.
pub type ArgText = (String, String, Span);

impl PatternCall {
    /// Parses `family(args)` or a bare `family`.
    pub fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let expr: Expr = syn::parse2(tokens)?;
        let (family, inner) = match &expr {
            Expr::Call(call) => {
                let Expr::Path(p) = &*call.func else {
                    return Err(syn::Error::new(
                        call.func.span(),
                        "expected a pattern name such as `routed`",
                    ));
                };
                (path_ident(&p.path)?, call.args.to_token_stream())
            }
            Expr::Path(p) => (path_ident(&p.path)?, TokenStream::new()),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "expected a pattern such as `routed(blocks = 4, top = 2)`",
                ));
            }
        };
        let items = NestedMeta::parse_meta_list(inner)?;
        let d = |e: darling::Error| syn::Error::from(e);
        let args = match family.to_string().as_str() {
            "pq_topk" => PatternArgs::PqTopk(PqTopkArgs::from_list(&items).map_err(d)?),
            "routed" => PatternArgs::Routed(RoutedArgs::from_list(&items).map_err(d)?),
            "monarch" => PatternArgs::Monarch(MonarchArgs::from_list(&items).map_err(d)?),
            "sara" => PatternArgs::Sara(SaraArgs::from_list(&items).map_err(d)?),
            "pst" => PatternArgs::Pst(PstArgs::from_list(&items).map_err(d)?),
            "cbm" => PatternArgs::Cbm(CbmArgs::from_list(&items).map_err(d)?),
            "nm" => PatternArgs::Nm(NmArgs::from_list(&items).map_err(d)?),
            "lora" => PatternArgs::Lora(LoraArgs::from_list(&items).map_err(d)?),
            other => {
                let hint = crate::closest(other, FAMILIES)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                return Err(syn::Error::new(
                    family.span(),
                    format!(
                        "unknown pattern `{other}`{hint} (patterns: {})",
                        FAMILIES.join(", ")
                    ),
                ));
            }
        };
        Ok(Self { family, args })
    }

    /// The arguments given, as kernels-ir's `name = value` text (identifiers with `_` spelled
    /// with `-`: `pq_match` → `pq-match`), each with its value's span.
    pub fn arg_text(&self) -> syn::Result<Vec<ArgText>> {
        let mut out = Vec::new();
        fn push<T: ToString>(out: &mut Vec<ArgText>, name: &str, v: &Sv<T>) {
            if let Some(v) = v {
                out.push((name.to_string(), v.as_ref().to_string(), v.span()));
            }
        }
        fn push_expr(out: &mut Vec<ArgText>, name: &str, v: &Sv<Expr>) -> syn::Result<()> {
            if let Some(v) = v {
                out.push((name.to_string(), expr_text(v.as_ref())?, v.span()));
            }
            Ok(())
        }
        match &self.args {
            PatternArgs::PqTopk(a) => {
                push_expr(&mut out, "topk", &a.topk)?;
                push_expr(&mut out, "selector", &a.selector)?;
                push(&mut out, "causal", &a.causal);
                push(&mut out, "clamp", &a.clamp);
                push(&mut out, "sub_dim", &a.sub_dim);
                push(&mut out, "codewords", &a.codewords);
                push(&mut out, "block", &a.block);
            }
            PatternArgs::Routed(a) => {
                push(&mut out, "blocks", &a.blocks);
                push(&mut out, "top", &a.top);
                push_expr(&mut out, "router", &a.router)?;
                push_expr(&mut out, "gate", &a.gate)?;
                push(&mut out, "gate_scale", &a.gate_scale);
                push_expr(&mut out, "act", &a.act)?;
            }
            PatternArgs::Monarch(a) => {
                for (n, v) in [
                    ("k", &a.k),
                    ("q", &a.q),
                    ("p", &a.p),
                    ("l", &a.l),
                    ("s", &a.s),
                    ("r", &a.r),
                ] {
                    push(&mut out, n, v);
                }
            }
            PatternArgs::Sara(a) => {
                push(&mut out, "threshold", &a.threshold);
                push(&mut out, "ratio", &a.ratio);
            }
            PatternArgs::Pst(a) => {
                push(&mut out, "sparsity", &a.sparsity);
                push(&mut out, "rank", &a.rank);
                push(&mut out, "mask_rank", &a.mask_rank);
                push(&mut out, "alpha1", &a.alpha1);
                push(&mut out, "alpha2", &a.alpha2);
                push(&mut out, "beta", &a.beta);
            }
            PatternArgs::Cbm(a) => push(&mut out, "topk", &a.topk),
            PatternArgs::Nm(a) => {
                push(&mut out, "n", &a.n);
                push(&mut out, "m", &a.m);
            }
            PatternArgs::Lora(a) => {
                push(&mut out, "rank", &a.rank);
                push(&mut out, "alpha", &a.alpha);
            }
        }
        Ok(out)
    }
}

fn path_ident(path: &syn::Path) -> syn::Result<Ident> {
    path.get_ident()
        .cloned()
        .ok_or_else(|| syn::Error::new(path.span(), "expected a pattern name such as `routed`"))
}

/// An argument expression as kernels-ir's text: literals as written, `pq_match` → `pq-match`,
/// `L / 8` → `L/8`.
fn expr_text(e: &Expr) -> syn::Result<String> {
    match e {
        Expr::Lit(l) => Ok(l.lit.to_token_stream().to_string()),
        Expr::Path(p) => Ok(path_ident(&p.path)?.to_string().replace('_', "-")),
        Expr::Binary(b) if matches!(b.op, syn::BinOp::Div(_)) => {
            Ok(format!("{}/{}", expr_text(&b.left)?, expr_text(&b.right)?))
        }
        Expr::Paren(p) => expr_text(&p.expr),
        other => Err(syn::Error::new(
            other.span(),
            "expected a literal, a name such as `pq_match`, or `L / n`",
        )),
    }
}
