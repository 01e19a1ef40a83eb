// A tensor named other than in the op's contract.
sparsecube_macros::sparse_kernel! {
    pub attention: spt_attention(x, k, v, codebook) -> out {
        pattern = pq_topk(topk = 8),
        dims = (B, H, L = 128, D = 64),
    }
}

fn main() {}
