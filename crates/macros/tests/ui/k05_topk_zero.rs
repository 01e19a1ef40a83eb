// topk = 0 keeps no key.
sparsecube_macros::sparse_kernel! {
    pub attention: spt_attention(q, k, v, codebook) -> out {
        pattern = pq_topk(topk = 0, selector = pq_match),
        dims = (B, H, L = 128, D = 64),
    }
}

fn main() {}
