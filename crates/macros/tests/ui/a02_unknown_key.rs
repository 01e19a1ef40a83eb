// A key annotations do not have.
#![allow(dead_code)]
struct Linear<B>(B);
struct Ffn<B>(B);
struct MultiHeadAttention<B>(B);

#[derive(sparsecube_macros::SparseModel)]
struct Model<B> {
    #[sparse(mlp = routed(blocks = 4))]
    ffn: Ffn<B>,
}

fn main() {}
