//! Pretty-printed expansions (prettyplease) of one kernel per method and an annotated model.

use quote::quote;

fn pretty(tokens: proc_macro2::TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens.clone())
        .unwrap_or_else(|e| panic!("the expansion does not parse as Rust: {e}\n{tokens}"));
    prettyplease::unparse(&file)
}

fn kernel(input: proc_macro2::TokenStream) -> String {
    let out = sparsecube_dsl::kernels(input);
    assert!(!out.to_string().contains("compile_error"), "{out}");
    pretty(out)
}

#[test]
fn spt_attention_kernel() {
    insta::assert_snapshot!(kernel(quote! {
        /// Sparse attention over 128-token sequences, key blocks of 16 rows.
        pub attention: spt_attention(q, k, v, codebook) -> out {
            pattern = pq_topk(topk = L / 8, selector = pq_match, causal, block = 16),
            dims = (B, H, L = 128, D = 64),
            dtype = f32,
        }
    }));
}

#[test]
fn routed_ffn_kernel() {
    insta::assert_snapshot!(kernel(quote! {
        pub ffn: routed_ffn(x, w1, b1, w2, b2, wr, br) -> y {
            pattern = routed(blocks = 4, top = 2, gate = output, act = gelu),
            dims = (T, d_model = 512, d_ff = 2048),
        }
    }));
}

#[test]
fn monarch_kernel() {
    insta::assert_snapshot!(kernel(quote! {
        pub proj: monarch(x, w1, w2) -> y {
            pattern = monarch(blocks = 4),
            dims = (N, in = 1024, out = 1024),
        }
    }));
}

#[test]
fn sara_kernel() {
    insta::assert_snapshot!(kernel(quote! {
        pub adapted: sara_linear(x, w, v, bias, index) -> y {
            pattern = sara(threshold = 2e-3),
            dims = (T, in, out),
        }
    }));
}

#[test]
fn nm_kernel() {
    insta::assert_snapshot!(kernel(quote! {
        pub pruned: nm_linear(x, v, bias, mask_index) -> y {
            pattern = nm(n = 2, m = 4),
            dims = (T, in = 1024, out),
        }
    }));
}

#[test]
fn pst_kernel() {
    insta::assert_snapshot!(kernel(quote! {
        pub masked: pst_linear(x, w, bias, u, v, ma, mb, mr, mc) -> y {
            pattern = pst(sparsity = 0.9, rank = 8),
            dims = (T, in = 768, out = 3072),
            dtype = bf16,
        }
    }));
}

#[test]
fn cbm_kernel() {
    insta::assert_snapshot!(kernel(quote! {
        pub head: cbm_head(x, wc, wh, noise) -> logits {
            pattern = cbm(topk = 32),
            dims = (B, C = 512, K = 10),
        }
    }));
}

#[test]
fn annotated_model() {
    let out = sparsecube_dsl::sparse_model(quote! {
        struct Block<B: Backend> {
            #[sparse(attention = pq_topk(topk = 64))]
            attn: MultiHeadAttention<B>,
            #[sparse(ffn = routed(blocks = 4, top = 2))]
            ffn: Ffn<B>,
            #[sparse(linear = monarch(blocks = 4))]
            proj: Linear<B>,
            #[sparse(adapter = sara(ratio = 0.1))]
            out: Linear<B>,
            #[sparse(linear = pst(sparsity = 0.9))]
            up: Linear<B>,
            #[sparse(adapter = lora(rank = 8, alpha = 16.0))]
            down: Linear<B>,
            head: DenseLinear<B>,
        }
    });
    assert!(!out.to_string().contains("compile_error"), "{out}");
    insta::assert_snapshot!(pretty(out));
}
