//! SPT sparse attention vs dense attention on the same device, forward + backward, for
//! L ∈ {512, 2048} (override with SPARSECUBE_BENCH_L) and topk = L/8: time and bytes kept for
//! backward, as ratios. Both sides are this repository's plans in the same style (a group of
//! lanes per row, f32 accumulation), timed by the runtime's bench (the same step `sparsecube
//! bench` and the tuner time); PyTorch baselines on a GPU come from scripts/device-check.sh.
//!
//! `cargo bench -p sparsecube-benches --bench spt_attention` (B, H, D, repeats: SPARSECUBE_BENCH_B,
//! _H, _D, _REPEATS).

use kernels_ir::pattern::{Pattern, PqTopK};
use kernels_ir::{KernelSpec, OpKind};
use sparsecube_benches::env_or;
use sparsecube_runtime::bench::{Attention, attention};

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let device = match sparsecube_runtime::open(None) {
        Ok(d) if d.kind() != sparsecube_runtime::DeviceKind::Reference => d,
        _ => {
            eprintln!("spt_attention bench: no CUDA device and no wgpu adapter; nothing to time");
            std::process::exit(1);
        }
    };
    let (b, h, d) = (
        env_or("SPARSECUBE_BENCH_B", 1),
        env_or("SPARSECUBE_BENCH_H", 4),
        env_or("SPARSECUBE_BENCH_D", 64),
    );
    let repeats = env_or("SPARSECUBE_BENCH_REPEATS", 5);
    let lengths: Vec<usize> = match std::env::var("SPARSECUBE_BENCH_L") {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![512, 2048],
    };
    println!(
        "| device | B·H | L | topk | sparse ms | dense ms | dense/sparse | kept sparse | kept dense (eager) | kept ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for l in lengths {
        let spec = KernelSpec::builder("bench", OpKind::SptAttention)
            .dims([("B", b), ("H", h), ("L", l), ("D", d)])
            .build()
            .expect("bench spec");
        let topk = match &spec.pattern {
            Pattern::PqTopK(PqTopK { topk, .. }) => topk.resolve(l),
            _ => unreachable!("an spt-attention spec has a pq-topk pattern"),
        };
        let time = |which| {
            attention(&device, &spec, which, 1, repeats, l as u64)
                .unwrap_or_else(|e| panic!("L = {l}: {e}"))
        };
        let (sparse, dense) = (time(Attention::Sparse), time(Attention::Dense));
        // Kept for backward: sparse keeps indices + log-sum-exp (read off the plan); eager dense
        // attention keeps the B·H·L·L probabilities (what PyTorch's eager attention saves).
        let kept_sparse = sparse.saved_bytes;
        let kept_dense = (b * h * l * l * 4) as u64;
        println!(
            "| {} | {} | {l} | {topk} | {:.1} | {:.1} | {:.2} | {kept_sparse} | {kept_dense} | {:.4} |",
            device.kind().name(),
            b * h,
            sparse.median_ms,
            dense.median_ms,
            dense.median_ms / sparse.median_ms,
            kept_sparse as f64 / kept_dense as f64
        );
    }
}
