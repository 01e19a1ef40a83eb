// More kept concepts than there are.
sparsecube_macros::sparse_kernel! {
    pub head: cbm_head(x, wc, wh, noise) -> logits {
        pattern = cbm(topk = 64),
        dims = (B, C = 32, K = 10),
    }
}

fn main() {}
