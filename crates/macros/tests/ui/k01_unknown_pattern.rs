// An unknown pattern family.
sparsecube_macros::sparse_kernel! {
    pub attention: spt_attention(q, k, v, codebook) -> out {
        pattern = pq_topkk(topk = 8),
        dims = (B, H, L = 128, D = 64),
    }
}

fn main() {}
