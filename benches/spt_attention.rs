//! SPT sparse attention vs dense attention on the same device, forward + backward, for
//! L ∈ {512, 2048} (override with SPARSECUBE_BENCH_L) and topk = L/8: time and bytes kept for
//! backward, as ratios. Both sides are this repository's kernels in the same style (a group of
//! lanes per row, f32 accumulation); PyTorch baselines on a GPU come from scripts/device-check.sh.
//!
//! `cargo bench -p sparsecube-benches --bench spt_attention` (B, H, D, repeats: SPARSECUBE_BENCH_B,
//! _H, _D, _REPEATS).

use cubecl::prelude::*;
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{KernelSpec, OpKind};
use sparsecube_benches::{env_or, median_ms};
use sparsecube_codegen::spt::{self, SptPlan};
use sparsecube_runtime::Device;

fn upload<R: Runtime>(
    client: &ComputeClient<R>,
    rng: &mut SplitMix64,
    n: usize,
) -> cubecl::server::Handle {
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    client.create_from_slice(f32::as_bytes(&v))
}

fn bench<R: Runtime>(client: &ComputeClient<R>, device: &str) {
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
        let plan = SptPlan::from_spec(&spec).expect("lowering");
        let mut rng = SplitMix64::new(l as u64);
        let n = plan.rows() * d;
        let [q, k, v, dout] = [(); 4].map(|_| upload(client, &mut rng, n));
        let codebook = upload(client, &mut rng, (d / 8) * 16 * 8);
        let sync = || cubecl::future::block_on(client.sync()).expect("device work failed");
        let sparse = median_ms(1, repeats, || {
            let saved = spt::forward::<R, f32>(client, &plan, &q, &k, &v, &codebook);
            let _ = spt::backward::<R, f32>(client, &plan, &q, &k, &v, &saved, &dout);
            sync();
        });
        let dense = median_ms(1, repeats, || {
            let _ = spt::dense_forward_backward::<R, f32>(client, &plan, &q, &k, &v, &dout);
            sync();
        });
        // Kept for backward: sparse keeps indices + log-sum-exp; eager dense attention keeps the
        // B·H·L·L probabilities (what PyTorch's eager attention saves).
        let kept_sparse = plan.saved_bytes();
        let kept_dense = plan.rows() * l * 4;
        println!(
            "| {device} | {} | {l} | {} | {sparse:.1} | {dense:.1} | {:.2} | {kept_sparse} | {kept_dense} | {:.4} |",
            b * h,
            plan.cfg.topk,
            dense / sparse,
            kept_sparse as f64 / kept_dense as f64
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    match sparsecube_runtime::open(None) {
        Ok(Device::Cuda(c)) => bench(&c, "cuda"),
        Ok(Device::Wgpu(c)) => bench(&c, "wgpu"),
        Ok(Device::Reference) | Err(_) => {
            eprintln!("spt_attention bench: no CUDA device and no wgpu adapter; nothing to time");
            std::process::exit(1);
        }
    }
}
