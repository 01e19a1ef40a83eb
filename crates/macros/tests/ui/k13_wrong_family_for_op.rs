// A pattern of another op's family.
sparsecube_macros::sparse_kernel! {
    pub ffn: routed_ffn(x, w1, b1, w2, b2, wr, br) -> y {
        pattern = pq_topk(topk = 8),
        dims = (T, d_model = 512, d_ff = 2048),
    }
}

fn main() {}
