// The same key twice in one annotation.
#![allow(dead_code)]
struct Linear<B>(B);
struct Ffn<B>(B);
struct MultiHeadAttention<B>(B);

#[derive(sparsecube_macros::SparseModel)]
struct Model<B> {
    #[sparse(attention = pq_topk(topk = 8), attention = pq_topk(topk = 4))]
    attn: MultiHeadAttention<B>,
}

fn main() {}
