// d_ff is not divisible by the block count.
sparsecube_macros::sparse_kernel! {
    pub ffn: routed_ffn(x, w1, b1, w2, b2, wr, br) -> y {
        pattern = routed(blocks = 7, top = 2),
        dims = (T, d_model = 512, d_ff = 3000),
    }
}

fn main() {}
