// A dtype kernels-ir does not have.
sparsecube_macros::sparse_kernel! {
    pub ffn: routed_ffn(x, w1, b1, w2, b2, wr, br) -> y {
        pattern = routed(blocks = 4),
        dims = (T, d_model = 512, d_ff = 2048),
        dtype = f8,
    }
}

fn main() {}
