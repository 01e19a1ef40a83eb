// A PST sparsity above 1.
#![allow(dead_code)]
struct Linear<B>(B);
struct Ffn<B>(B);
struct MultiHeadAttention<B>(B);

#[derive(sparsecube_macros::SparseModel)]
struct Model<B> {
    #[sparse(linear = pst(sparsity = 1.5))]
    up: Linear<B>,
}

fn main() {}
