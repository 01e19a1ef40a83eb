//! Generated kernels from the command line: attention on wgpu, `gen`, `selftest`, `bench`, `tune`.

use super::*;

#[test]
fn spt_attention_on_wgpu_agrees_with_the_reference() {
    let devices = String::from_utf8_lossy(&run(&["devices"]).stdout).into_owned();
    if !devices
        .lines()
        .any(|l| l.starts_with("wgpu") && l.contains("present"))
    {
        assert!(
            std::env::var_os("SPARSECUBE_REQUIRE_WGPU").is_none(),
            "SPARSECUBE_REQUIRE_WGPU is set but:\n{devices}"
        );
        eprintln!(
            "SKIPPED spt_attention_on_wgpu_agrees_with_the_reference: no wgpu adapter\n{devices}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.safetensors");
    let qkv = vec![1, 2, 19, 32];
    write(
        &inp,
        &inputs(
            11,
            &[
                ("q", qkv.clone()),
                ("k", qkv.clone()),
                ("v", qkv.clone()),
                ("codebook", vec![4, 16, 8]),
                ("dout", qkv),
            ],
        ),
    );
    let mut outs = Vec::new();
    for device in ["reference", "wgpu"] {
        let out = dir.path().join(format!("{device}.safetensors"));
        let o = run(&[
            "run",
            "spt-attention",
            "--inputs",
            inp.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--param",
            "topk=5",
            "--param",
            "causal=true",
            "--device",
            device,
        ]);
        assert!(o.status.success(), "{device}: {}", stderr(&o));
        outs.push(read(&out));
    }
    assert_eq!(
        outs[0].keys().collect::<Vec<_>>(),
        outs[1].keys().collect::<Vec<_>>()
    );
    for (name, (_, _, want)) in &outs[0] {
        let got = &outs[1][name].2;
        let err: f64 = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
            / want.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        assert!(
            err <= 1e-5,
            "{name}: wgpu vs reference relative error {err:.3e}"
        );
    }
}

#[test]
fn gen_prints_cuda_and_wgsl_without_a_gpu() {
    let args = [
        "gen",
        "spt-attention",
        "--dim",
        "B=1",
        "--dim",
        "H=2",
        "--dim",
        "L=64",
        "--dim",
        "D=32",
        "--param",
        "topk=12",
        "--param",
        "causal=true",
    ];
    let cuda = run(&[&args[..], &["--target", "cuda"]].concat());
    assert!(cuda.status.success(), "{}", stderr(&cuda));
    let text = String::from_utf8_lossy(&cuda.stdout);
    for k in [
        "pq_encode_f_f32",
        "spt_select_f_f32",
        "spt_attend_fwd_f_f32",
        "spt_bwd_rows_f_f32",
        "rows_count",
        "scan_apply",
        "rows_fill",
        "rows_offsets",
        "spt_bwd_keys_f_f32",
    ] {
        assert!(
            // 64 units per cube for one-unit-per-row kernels, 32 lanes × 4 rows for the
            // plane-per-row ones, 256 for the tiled primitives, a row's slots (at least a
            // warp) for the grouping of rows.
            ["32", "64", "128", "256"]
                .iter()
                .any(|units| text
                    .contains(&format!("__global__ void __launch_bounds__({units}){k} ("))),
            "missing {k}"
        );
    }
    let wgsl = run(&[&args[..], &["--target", "wgsl", "--dtype", "f16"]].concat());
    assert!(wgsl.status.success(), "{}", stderr(&wgsl));
    assert_eq!(
        String::from_utf8_lossy(&wgsl.stdout)
            .matches("@compute")
            .count(),
        9
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.sc");
    std::fs::write(
        &file,
        "kernel a { op = spt-attention dims = (B = 1, H = 1, L = 16, D = 16) }\n",
    )
    .unwrap();
    let o = run(&["gen", "--file", file.to_str().unwrap(), "--target", "cuda"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("// ===== a / spt_select ====="));

    // Sizes not given come from the op's example problem; given ones are still verified.
    let o = run(&["gen", "spt-attention", "--dim", "D=30", "--target", "cuda"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("pq-topk: D = 30 is not divisible by sub_dim = 8"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "gen",
        "dense-linear",
        "--schedule",
        "tile_k=64",
        "--target",
        "cuda",
    ]);
    assert!(
        stderr(&o).contains("tile_k = 64 is not a slice depth of dense-linear's tile program"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "gen",
        "dense-linear",
        "--schedule",
        "tile_k",
        "--target",
        "cuda",
    ]);
    assert!(
        stderr(&o)
            .contains("--schedule `tile_k` is not NAME=VALUE (for example --schedule tile_k=16)"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "gen",
        "spt-attention",
        "--dim",
        "B=1",
        "--dim",
        "H=1",
        "--dim",
        "L=8",
        "--dim",
        "D=16",
        "--dtype",
        "bf16",
        "--target",
        "wgsl",
    ]);
    assert!(
        stderr(&o).contains("bf16 storage in WGSL (WGSL has no bf16)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn gen_resources_reports_ptxas_numbers_or_says_what_is_missing() {
    let args = [
        "gen",
        "spt-attention",
        "--dim",
        "B=1",
        "--dim",
        "H=1",
        "--dim",
        "L=32",
        "--dim",
        "D=16",
        "--target",
        "cuda",
        "--resources",
    ];
    let o = run(&args);
    if std::env::var_os("SPARSECUBE_CUDA_WHEELS").is_some() {
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        // pq_encode, spt_select, spt_attend_fwd, spt_bwd_rows, the key index's grouping (count,
        // scan, fill, offsets), spt_bwd_keys; after a header naming the NVRTC and ptxas
        // versions.
        assert_eq!(
            text.lines()
                .filter(|l| l.contains(" registers, ") && l.contains("spill stores/loads"))
                .count(),
            9,
            "{text}"
        );
        assert!(
            text.lines().next().is_some_and(|l| l.contains("NVRTC 13.")),
            "{text}"
        );
    } else {
        assert!(!o.status.success());
        assert!(
            stderr(&o)
                .contains("--resources needs NVRTC and ptxas: run scripts/fetch-cuda-wheels.sh"),
            "{}",
            stderr(&o)
        );
    }
    let o = run(&[
        "gen",
        "spt-attention",
        "--dim",
        "B=1",
        "--target",
        "wgsl",
        "--resources",
    ]);
    assert!(
        stderr(&o).contains("use it with --target cuda"),
        "{}",
        stderr(&o)
    );
}

/// Whether the wgpu adapter is present; fails when SPARSECUBE_REQUIRE_WGPU is set and it is not.
pub(crate) fn wgpu_present(test: &str) -> bool {
    let devices = String::from_utf8_lossy(&run(&["devices"]).stdout).into_owned();
    let present = devices
        .lines()
        .any(|l| l.starts_with("wgpu") && l.contains("present"));
    if !present {
        assert!(
            std::env::var_os("SPARSECUBE_REQUIRE_WGPU").is_none(),
            "SPARSECUBE_REQUIRE_WGPU is set but:\n{devices}"
        );
        eprintln!("SKIPPED {test}: no wgpu adapter\n{devices}");
    }
    present
}

#[test]
fn selftest_compares_every_case_on_wgpu_and_refuses_the_reference() {
    let o = run(&["selftest", "--device", "reference"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("give --device cuda, wgpu or auto"),
        "{}",
        stderr(&o)
    );
    if !wgpu_present("selftest_on_wgpu") {
        return;
    }
    let o = run(&[
        "selftest",
        "--device",
        "wgpu",
        "--cases",
        "3",
        "--max-len",
        "70",
        "--seed",
        "5",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    // 3 random sparse cases + 2 block-granular ones (cases / 2, rounded up) + 4 dense-baseline
    // cases + 1 routed FFN, 1 CBM head, 1 Monarch, 1 dense linear, 1 SaRA, 1 PST, 1 N:M,
    // 1 block-diagonal and 1 PQ-encode case (cases / 2 each), each a line with its errors.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok   [")).count(),
        18,
        "{out}"
    );
    assert!(out.contains("selftest passed: 18 case(s)"), "{out}");
    assert_eq!(out.matches(" block=").count(), 2, "{out}");
    assert!(out.contains("ok   [block-diag-linear N="), "{out}");
    assert!(out.contains("ok   [pq-encode N="), "{out}");
    assert!(out.contains("ok   [pst-linear T="), "{out}");
    assert!(out.contains("ok   [sara-linear T="), "{out}");
    assert!(out.contains("ok   [routed T="), "{out}");
    assert!(out.contains("ok   [cbm-head B="), "{out}");
    assert!(out.contains("ok   [monarch N="), "{out}");
    assert!(out.contains("ok   [dense-linear T="), "{out}");
    let o = run(&["selftest", "--device", "wgpu", "--quick"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    // Three fixed SPT cases per dtype (f32, f16, bf16; one block-granular), one dense baseline,
    // and one routed FFN, CBM head, Monarch, dense linear, SaRA, PST, N:M, block-diagonal and
    // PQ-encode case per dtype.
    assert!(out.contains("selftest passed: 37 case(s)"), "{out}");
}

#[test]
fn bench_lists_the_paper_suite_and_times_the_attention_kernels() {
    let o = run(&["bench", "--suite", "nope", "--list"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown suite `nope`: the suites are `all` and `paper`"),
        "{}",
        stderr(&o)
    );
    let o = run(&["bench", "--suite", "paper", "--list", "--scale", "tiny"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = list["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids are join keys: {ids:?}");
    assert!(
        ids.contains(&"attention/B1-H2-L64-D32-topk8/f32"),
        "{ids:?}"
    );
    let o = run(&["bench", "--suite", "paper", "--list"]);
    let full: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layer = full["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "spt-layer")
        .unwrap();
    // The SPT paper's layer.
    for (k, v) in [
        ("B", 16),
        ("L", 512),
        ("d_model", 2048),
        ("H", 32),
        ("d_ff", 8192),
    ] {
        assert_eq!(layer["dims"][k], v, "{layer}");
    }

    if !wgpu_present("bench_on_wgpu") {
        return;
    }
    let o = run(&[
        "bench",
        "--suite",
        "paper",
        "--device",
        "wgpu",
        "--scale",
        "tiny",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = doc["results"].as_array().unwrap();
    let find = |w: &str, i: &str| {
        results
            .iter()
            .find(|r| r["workload"] == w && r["impl"] == i)
            .unwrap_or_else(|| panic!("no {w} / {i} in {doc}"))
    };
    let (b, h, l, d, topk) = (1u64, 2, 64, 32, 8);
    let sparse = find("attention/B1-H2-L64-D32-topk8/f32", "sparsecube-spt-sparse");
    assert_eq!(sparse["status"], "ok", "{sparse}");
    assert!(sparse["median_ms"].as_f64().unwrap() > 0.0, "{sparse}");
    // Kept for backward: i32 indices and an f32 log-sum-exp per row.
    assert_eq!(
        sparse["saved_bytes"],
        b * h * l * (topk * 4 + 4),
        "{sparse}"
    );
    // At least q, k, v, dout, out, dq, dk, dv are alive at the peak.
    let tensor = b * h * l * d * 4;
    assert!(
        sparse["peak_bytes"].as_u64().unwrap() >= 8 * tensor,
        "{sparse}"
    );
    let dense = find("attention/B1-H2-L64-D32-topk8/f32", "sparsecube-dense");
    assert_eq!(dense["status"], "ok", "{dense}");
    assert_eq!(dense["saved_bytes"], b * h * l * 4, "{dense}");
    // WGSL has no bf16: the row says so instead of a number.
    let bf16 = find(
        "attention/B1-H2-L64-D32-topk8/bf16",
        "sparsecube-spt-sparse",
    );
    assert!(
        bf16["status"]
            .as_str()
            .unwrap()
            .contains("cannot store bf16"),
        "{bf16}"
    );
    // Monarch (4 blocks, square) and the dense linear it replaces, at both batch sizes; Monarch
    // keeps its f32 intermediate u [N, n] for backward.
    for (t, n) in [(4u64, 32u64), (64, 32), (4, 128), (64, 128)] {
        let id = format!("monarch/T{t}-n{n}-blocks4/f32");
        for which in ["sparsecube-monarch", "sparsecube-dense-linear"] {
            let row = find(&id, which);
            assert_eq!(row["status"], "ok", "{row}");
            assert!(row["median_ms"].as_f64().unwrap() > 0.0, "{row}");
        }
        assert_eq!(find(&id, "sparsecube-monarch")["saved_bytes"], 4 * t * n);
    }
    // cubek-matmul's strategies next to our GEMM: the scalar ones run (each checked against the
    // host on its first step), the tensor-core ones say the adapter has none.
    let id = "gemm/T128-in128-out128/f32";
    for which in ["sparsecube-gemm-scalar", "cubek-auto", "cubek-simple-unit"] {
        let row = find(id, which);
        assert_eq!(row["status"], "ok", "{row}");
        assert!(row["median_ms"].as_f64().unwrap() > 0.0, "{row}");
        // x, W, dy and the three products, f32.
        assert!(
            row["peak_bytes"].as_u64().unwrap() >= 6 * 128 * 128 * 4,
            "{row}"
        );
    }
    for which in ["cubek-double-cyclic-cmma", "cubek-specialized-tma-cmma"] {
        let row = find(id, which);
        assert!(
            row["status"]
                .as_str()
                .unwrap()
                .contains("no WMMA tensor cores"),
            "{row}"
        );
    }
    // PST's step (score, selection, masked GEMM, backward) and the dense linear.
    let id = "pst-linear/T64-in32-out32-rank8/f32";
    for which in ["sparsecube-pst", "sparsecube-dense-linear"] {
        let row = find(id, which);
        assert_eq!(row["status"], "ok", "{row}");
    }
    // SaRA's step (threshold 2e-3) and the dense-gradient step.
    let id = "sara-linear/T64-in32-out32/f32";
    let sparse = find(id, "sparsecube-sara");
    let dense_grad = find(id, "sparsecube-sara-dense-grad");
    assert_eq!(sparse["status"], "ok", "{sparse}");
    assert_eq!(dense_grad["status"], "ok", "{dense_grad}");
    // The routed FFN (2 of 4 blocks) and the same kernels with one block of all d_ff (the dense
    // FFN).
    for which in ["sparsecube-routed-ffn", "sparsecube-dense-ffn"] {
        let row = find("ffn/T64-d_model32-d_ff128-blocks4-r2/f32", which);
        assert_eq!(row["status"], "ok", "{row}");
        assert!(row["median_ms"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Saved for backward by the routed FFN: gates, blocks, grouping, pre-activations and
    // activations of the 64·2 kept pairs (block size 32).
    let routed = find(
        "ffn/T64-d_model32-d_ff128-blocks4-r2/f32",
        "sparsecube-routed-ffn",
    );
    let (t, e, top, bs) = (64u64, 4, 2, 32);
    let pairs = t * top;
    assert_eq!(
        routed["saved_bytes"],
        4 * (t * e + t * top + (e + 1) + 3 * pairs + 2 * pairs * bs),
        "{routed}"
    );
    let layer = find(
        "spt-layer/B1-L64-d_model64-H2-d_ff256-topk8-blocks4-r2/bf16",
        "sparsecube-spt-layer",
    );
    assert_eq!(layer["status"], "not implemented yet (issues 4 and 7)");
}

#[test]
fn bench_all_reports_every_ops_ratio_to_its_dense_baseline() {
    let o = run(&["bench", "--list", "--scale", "tiny"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["bench", "pq-encode", "--list"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no workload of the all suite matches op pq-encode"),
        "{}",
        stderr(&o)
    );
    if !wgpu_present("bench_all_on_wgpu") {
        return;
    }
    let o = run(&[
        "bench",
        "--suite",
        "all",
        "--device",
        "wgpu",
        "--scale",
        "tiny",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ratios = doc["ratios"].as_array().unwrap();
    let ops: Vec<&str> = ratios.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "spt-attention",
            "routed-ffn",
            "monarch",
            "block-diag-linear",
            "sara-linear",
            "pst-linear",
            "cbm-head"
        ]
    );
    for r in ratios {
        for k in ["time_ratio", "peak_ratio"] {
            let v = r[k].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{k} of {r}");
        }
        // The ratio is the two rows' quotient, both measured in this run.
        let row = |i: &str| {
            doc["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["workload"] == r["workload"] && x["impl"] == i)
                .unwrap()
                .clone()
        };
        let (ours, dense) = (
            row(r["ours"].as_str().unwrap()),
            row(r["baseline"].as_str().unwrap()),
        );
        let q = ours["median_ms"].as_f64().unwrap() / dense["median_ms"].as_f64().unwrap();
        assert!(
            (q - r["time_ratio"].as_f64().unwrap()).abs() <= 1e-12 * q,
            "{r}"
        );
    }
    // The CBM head keeps 8 of 64 concepts: its saved state is smaller than the dense head's.
    let o = run(&[
        "bench",
        "cbm-head",
        "--device",
        "wgpu",
        "--scale",
        "tiny",
        "--warmup",
        "1",
        "--repeats",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("| workload | ours / dense time | ours / dense peak memory |")
            && out.contains("| cbm-head/B16-C64-K4-topk8/f32 |"),
        "{out}"
    );
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn tune_persists_its_choice_and_a_second_run_reuses_it() {
    if !wgpu_present("tune_on_wgpu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let json = dir.path().join("report.json");
    let tune_within = |op: &str, dims: &[&str], budget: &str| {
        let mut args = vec![
            "tune",
            op,
            "--device",
            "wgpu",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--budget",
            budget,
            "--repeats",
            "1",
        ];
        for d in dims {
            args.extend(["--dim", d]);
        }
        run(&args)
    };
    // The tile program's space is large: a budget times its first candidates (the spec's own
    // schedule, then the single-knob changes), the rest is reported as not reached.
    let tune = |op: &str, dims: &[&str]| tune_within(op, dims, "8");
    let small_linear = ["T=64", "in=96", "out=80"];
    let o = tune_within("dense-linear", &small_linear, "20");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("| tile_m=64,tile_n=64,tile_k=16,vector=4,stages=2,mma=auto |")
            && out.contains("| tile_m=128,tile_n=64,tile_k=16,vector=4,stages=2,mma=auto |"),
        "{out}"
    );
    assert!(out.contains("fallback"), "{out}");
    let first = report(&json);
    assert_eq!(first["results"][0]["status"], "tuned", "{first}");
    let times: Vec<_> = first["results"][0]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["median_ms"].is_number())
        .cloned()
        .collect();
    assert!(times.len() >= 2, "{first}");
    assert!(
        times.iter().all(|c| c["median_ms"].as_f64().unwrap() > 0.0),
        "{first}"
    );
    assert_eq!(times[0]["speedup_vs_fallback"], 1.0, "{first}");
    let winner = first["results"][0]["winner"].clone();
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file, no temporary left");

    // A second process reuses the cache: nothing is timed, same winner.
    let o = tune("dense-linear", &small_linear);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("from the cache (nothing timed"), "{out}");
    assert!(out.contains("1 key(s): 1 from the cache, 0 tuned"), "{out}");
    let second = report(&json);
    assert_eq!(second["results"][0]["status"], "cached", "{second}");
    assert_eq!(second["results"][0]["winner"], winner, "{second}");
    // The same bucket (T 64 → 50 stays in 64) is the same key.
    let o = tune("dense-linear", &["T=50", "in=96", "out=80"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("from the cache"));

    // Every op with a schedule space tunes within the budget at a small size; ops without one
    // (pq-encode, the last) are recorded with their single candidate.
    for (op, dims) in [
        ("spt-attention", &["B=1", "H=2", "L=64", "D=32"][..]),
        ("routed-ffn", &["T=64", "d_model=64", "d_ff=256"][..]),
        ("monarch", &["N=32"][..]),
        ("block-diag-linear", &["N=64", "in=96", "out=64"][..]),
        ("sara-linear", &small_linear[..]),
        ("pst-linear", &small_linear[..]),
        ("cbm-head", &["B=16", "C=64", "K=4"][..]),
        ("nm-linear", &small_linear[..]),
        ("pq-encode", &["N=64", "D=32"][..]),
    ] {
        let o = tune(op, dims);
        assert!(o.status.success(), "{op}: {}", stderr(&o));
        let r = report(&json);
        assert_eq!(r["results"][0]["status"], "tuned", "{op}: {r}");
        // The budget stops the sweep (a candidate's first run compiles its kernels, seconds on
        // lavapipe, so wall time is not asserted): the tile program's spaces are not finished.
        let candidates = r["results"][0]["candidates"].as_array().unwrap();
        if candidates.len() > 40 {
            assert!(
                candidates.iter().any(|c| c["median_ms"].is_null()),
                "{op}: the budget did not stop the sweep: {r}"
            );
        }
    }
    let r = report(&json);
    assert_eq!(
        r["results"][0]["candidates"][0]["candidate"], "default",
        "{r}"
    );

    // A corrupt cache is reported, ignored and rebuilt.
    let file = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&file, "{ not json").unwrap();
    let o = tune("dense-linear", &small_linear);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a sparsecube tuning cache")
            && stderr(&o).contains("rebuilding it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(report(&json)["results"][0]["status"], "tuned");
    let o = tune("dense-linear", &small_linear);
    assert!(String::from_utf8_lossy(&o.stdout).contains("from the cache"));

    // Bad budgets are errors.
    let o = run(&["tune", "dense-linear", "--budget=0"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--budget 0: give a positive number of seconds"),
        "{}",
        stderr(&o)
    );
    // A problem no device holds (x alone is 6 TiB) is refused from its plan's sizes before
    // anything is allocated: exit 1 and one line, never an abort.
    let o = run(&[
        "tune",
        "routed-ffn",
        "--device",
        "wgpu",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--dim",
        "T=400000000",
        "--dim",
        "d_model=4096",
        "--dim",
        "d_ff=16384",
        "--budget",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("buffer `x` [400000000, 4096] needs 6.0 TiB")
            && err.contains("use smaller dims"),
        "{err}"
    );
}

#[test]
fn gen_prints_cuda_for_every_op_without_a_gpu() {
    for op in OpKind::ALL {
        let o = run(&["gen", op.name(), "--target", "cuda"]);
        let out = String::from_utf8_lossy(&o.stdout);
        if *op == OpKind::MonarchProject {
            assert!(!o.status.success());
            assert!(
                stderr(&o).contains("monarch-project has no generated kernels: the projection is a one-time conversion"),
                "{}",
                stderr(&o)
            );
            continue;
        }
        assert!(o.status.success(), "{op}: {}", stderr(&o));
        let kernels = out.matches("extern \"C\" __global__ void").count();
        assert!(kernels >= 1, "{op}: no kernel in\n{out}");
        assert_eq!(kernels, out.matches("// ===== ").count(), "{op}");
    }
    // The schedule reaches the source: the tile program's slice depth is a comptime constant.
    let src = |tk: &str| {
        let o = run(&["gen", "dense-linear", "--schedule", tk, "--target", "cuda"]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_ne!(src("tile_k=16"), src("tile_k=32"));
    // bf16 products run on tensor cores on sm_90; WGSL has none, and insisting is an error.
    let o = run(&["gen", "dense-linear", "--dtype", "bf16", "--target", "cuda"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("wmma::mma_sync"));
    let o = run(&[
        "gen",
        "dense-linear",
        "--dtype",
        "f16",
        "--target",
        "wgsl",
        "--schedule",
        "mma=cmma",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("no f16 tensor cores"), "{err}");
}
