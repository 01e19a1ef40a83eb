// An ffn annotation on a Linear field.
#![allow(dead_code)]
struct Linear<B>(B);
struct Ffn<B>(B);
struct MultiHeadAttention<B>(B);

#[derive(sparsecube_macros::SparseModel)]
struct Model<B> {
    #[sparse(ffn = routed(blocks = 4, top = 2))]
    proj: Linear<B>,
}

fn main() {}
