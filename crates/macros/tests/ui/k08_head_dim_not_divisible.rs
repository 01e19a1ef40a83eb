// The head dimension is not divisible by the PQ sub-vector length.
sparsecube_macros::sparse_kernel! {
    pub attention: spt_attention(q, k, v, codebook) -> out {
        pattern = pq_topk(topk = L / 8, sub_dim = 8),
        dims = (B, H, L = 128, D = 60),
    }
}

fn main() {}
