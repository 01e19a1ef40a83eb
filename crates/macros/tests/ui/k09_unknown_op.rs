// An op the DSL does not have (with a did-you-mean).
sparsecube_macros::sparse_kernel! {
    pub attention: spt_atention(q, k, v, codebook) -> out {
        pattern = pq_topk(topk = 8),
        dims = (B, H, L = 128, D = 64),
    }
}

fn main() {}
