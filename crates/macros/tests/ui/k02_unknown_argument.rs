// An argument the pattern does not have (with a did-you-mean).
sparsecube_macros::sparse_kernel! {
    pub ffn: routed_ffn(x, w1, b1, w2, b2, wr, br) -> y {
        pattern = routed(blocks = 4, topp = 2),
        dims = (T, d_model = 512, d_ff = 2048),
    }
}

fn main() {}
