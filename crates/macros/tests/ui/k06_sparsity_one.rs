// A sparsity of 1 masks every weight.
sparsecube_macros::sparse_kernel! {
    pub up: pst_linear(x, w, bias, u, v, ma, mb, mr, mc) -> y {
        pattern = pst(sparsity = 1.0, rank = 8),
        dims = (T, in = 768, out = 3072),
    }
}

fn main() {}
