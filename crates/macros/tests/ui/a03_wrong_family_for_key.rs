// A pattern the key does not take.
#![allow(dead_code)]
struct Linear<B>(B);
struct Ffn<B>(B);
struct MultiHeadAttention<B>(B);

#[derive(sparsecube_macros::SparseModel)]
struct Model<B> {
    #[sparse(adapter = monarch(blocks = 4))]
    out: Linear<B>,
}

fn main() {}
