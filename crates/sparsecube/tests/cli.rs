//! The `sparsecube` binary end to end: every op of the `run` contract on safetensors files,
//! compared with the reference executor run in-process; and every error path (exit code, message
//! naming the tensor, no output file left behind).

use kernels_ir::infer::spec_for_inputs;
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{self, IndexTensor, Tensor, TensorMap, Value};
use kernels_ir::{Direction, OpKind};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparsecube"));
    // Launches run the schedules they are given, whatever the machine's tuning cache holds
    // (`tune` is tested with its own --cache-dir).
    c.env("SPARSECUBE_AUTOTUNE", "off");
    c
}

fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.to_string(),
                s.clone(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn read(path: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = match v.dtype() {
                Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
                Dtype::I64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("unexpected dtype {other:?}"),
            };
            (n, (v.dtype(), v.shape().to_vec(), data))
        })
        .collect()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Random f32 inputs for `op` with the given shapes.
fn inputs(
    seed: u64,
    shapes: &[(&'static str, Vec<usize>)],
) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let mut rng = SplitMix64::new(seed);
    shapes
        .iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            (
                *n,
                s.clone(),
                (0..len).map(|_| rng.normal() as f32).collect(),
            )
        })
        .collect()
}

/// Runs `op` through the binary and through the reference in-process on the same (f32) inputs;
/// every output must match (indices exactly, values to f32 rounding).
fn round_trip(
    op: OpKind,
    params: &[&str],
    shapes: &[(&'static str, Vec<usize>)],
    expected_outputs: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    let tensors = inputs(op as u64 + 7, shapes);
    write(&inp, &tensors);
    let mut args = vec![
        "run",
        op.name(),
        "--inputs",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "reference",
    ];
    for p in params {
        args.extend(["--param", p]);
    }
    let o = run(&args);
    assert!(o.status.success(), "{op} failed: {}", stderr(&o));
    let got = read(&out);
    let names: Vec<&str> = got.keys().map(|s| s.as_str()).collect();
    let mut want: Vec<&str> = expected_outputs.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "{op}: output names");

    // In-process reference on the same f32-rounded inputs.
    let map: TensorMap = tensors
        .iter()
        .map(|(n, s, d)| (n.to_string(), Value::F(Tensor::from_f32(s, d).unwrap())))
        .collect();
    let shapes: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(n, s, _)| (n.to_string(), s.clone()))
        .collect();
    let params: Vec<(String, String)> = params
        .iter()
        .map(|p| {
            let (a, b) = p.split_once('=').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let upstream = op.upstream_grad().filter(|g| map.contains_key(*g));
    let fwd = spec_for_inputs(op, Direction::Forward, &params, &shapes).unwrap();
    let fwd_in: TensorMap = map
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != upstream)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut expected = reference::run(&fwd, &fwd_in).unwrap();
    if upstream.is_some() {
        let bwd = spec_for_inputs(op, Direction::Backward, &params, &shapes).unwrap();
        expected.extend(reference::run(&bwd, &map).unwrap());
    }
    for (name, value) in expected {
        let (dtype, shape, data) = &got[&name];
        match value {
            Value::F(t) => {
                assert_eq!((*dtype, shape), (Dtype::F32, &t.shape), "{op}: {name}");
                for (i, (a, b)) in data.iter().zip(&t.data).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                        "{op}: {name}[{i}] = {a}, reference {b}"
                    );
                }
            }
            Value::I(IndexTensor { shape: s, data: d }) => {
                assert_eq!((*dtype, shape), (Dtype::I64, &s), "{op}: {name}");
                assert_eq!(
                    data,
                    &d.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                    "{op}: {name}"
                );
            }
        }
    }
}

#[test]
fn every_op_of_the_contract_runs_with_gradients() {
    let qkv = vec![2, 2, 11, 16];
    round_trip(
        OpKind::SptAttention,
        &["topk=3", "causal=true", "selector=pq-adc", "clamp=true"],
        &[
            ("q", qkv.clone()),
            ("k", qkv.clone()),
            ("v", qkv.clone()),
            ("codebook", vec![2, 16, 8]),
            ("dout", qkv),
        ],
        &["out", "indices", "dq", "dk", "dv"],
    );
    round_trip(
        OpKind::PqEncode,
        &[],
        &[("x", vec![5, 16]), ("codebook", vec![2, 16, 8])],
        &["codes"],
    );
    round_trip(
        OpKind::RoutedFfn,
        &["top=2", "gate=spt-lora", "act=gelu", "gate_scale=1.5"],
        &[
            ("x", vec![7, 6]),
            ("w1", vec![12, 6]),
            ("b1", vec![12]),
            ("w2", vec![6, 12]),
            ("b2", vec![6]),
            ("wr", vec![4, 6]),
            ("br", vec![4]),
            ("dy", vec![7, 6]),
        ],
        &[
            "y", "blocks", "dx", "dw1", "db1", "dw2", "db2", "dwr", "dbr",
        ],
    );
    round_trip(
        OpKind::Monarch,
        &[],
        &[
            ("x", vec![3, 6]),
            ("w1", vec![2, 3, 3]),
            ("w2", vec![3, 4, 2]),
            ("dy", vec![3, 12]),
        ],
        &["y", "dx", "dw1", "dw2"],
    );
    round_trip(
        OpKind::MonarchProject,
        &["k=2", "q=3", "p=3", "l=3", "s=4", "r=2"],
        &[("w", vec![12, 6])],
        &["w1", "w2"],
    );
    round_trip(
        OpKind::SaraLinear,
        &["ratio=0.25"],
        &[
            ("x", vec![5, 8]),
            ("w", vec![4, 8]),
            ("bias", vec![4]),
            ("dy", vec![5, 4]),
        ],
        &["y", "mask_index", "v", "dx", "dv", "dbias"],
    );
    round_trip(
        OpKind::SaraLinear,
        &["ratio=0.25"],
        &[
            ("x", vec![5, 8]),
            ("w", vec![4, 8]),
            ("bias", vec![4]),
            ("v", vec![8]),
        ],
        &["y", "mask_index", "v"],
    );
    round_trip(
        OpKind::PstLinear,
        &["sparsity=0.5", "alpha2=0.5"],
        &[
            ("x", vec![5, 8]),
            ("w", vec![4, 8]),
            ("bias", vec![4]),
            ("u", vec![4, 2]),
            ("v", vec![2, 8]),
            ("ma", vec![4, 3]),
            ("mb", vec![3, 8]),
            ("mr", vec![4]),
            ("mc", vec![8]),
            ("dy", vec![5, 4]),
        ],
        &[
            "y", "mask", "dx", "dbias", "du", "dv", "dma", "dmb", "dmr", "dmc",
        ],
    );
    round_trip(
        OpKind::CbmHead,
        &["topk=2"],
        &[
            ("x", vec![3, 5]),
            ("wc", vec![5, 5]),
            ("wh", vec![4, 5]),
            ("noise", vec![3, 5]),
            ("dlogits", vec![3, 4]),
        ],
        &["z", "logits", "dx", "dwc", "dwh"],
    );
}

fn failing(op: &str, params: &[&str], shapes: &[(&'static str, Vec<usize>)]) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    write(&inp, &inputs(1, shapes));
    let mut args = vec![
        "run",
        op,
        "--inputs",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    for p in params {
        args.extend(["--param", p]);
    }
    let o = run(&args);
    assert!(!o.status.success(), "expected failure, got success");
    assert!(!stderr(&o).contains("panicked"), "panic: {}", stderr(&o));
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    (stderr(&o), out.exists() || leftovers != 1)
}

#[test]
fn bad_inputs_are_errors_naming_the_tensor_and_leave_no_output() {
    let linear = |w: Vec<usize>| {
        vec![
            ("x", vec![4, 8]),
            ("w", w),
            ("bias", vec![3]),
            ("dy", vec![4, 3]),
        ]
    };
    let (msg, wrote) = failing("sara-linear", &[], &linear(vec![3, 7]));
    assert!(
        msg.contains("tensor `w` has shape [3, 7], expected [3, 8]"),
        "{msg}"
    );
    assert!(!wrote, "an output or temporary file was left behind");

    let (msg, _) = failing(
        "monarch",
        &[],
        &[
            ("x", vec![2, 6]),
            ("w1", vec![2, 3, 3]),
            ("w2", vec![3, 4, 2]),
            ("dy", vec![2, 11]),
        ],
    );
    assert!(
        msg.contains("tensor `dy` has shape [2, 11], expected [2, 12]"),
        "{msg}"
    );

    let (msg, _) = failing(
        "dense-linear",
        &[],
        &[
            ("x", vec![4, 8]),
            ("w", vec![3, 8]),
            ("bias", vec![3]),
            ("extra", vec![1]),
        ],
    );
    assert!(
        msg.contains("unknown tensor `extra` for dense-linear: it reads `x`, `w`, `bias`"),
        "{msg}"
    );

    let (msg, _) = failing("routed-ffn", &[], &[("x", vec![4, 8])]);
    assert!(
        msg.contains("missing tensor `w1` for routed-ffn: expected shape [d_ff, d_model]"),
        "{msg}"
    );

    let (msg, _) = failing(
        "pst-linear",
        &[],
        &[
            ("x", vec![4, 8]),
            ("w", vec![3, 8]),
            ("bias", vec![3]),
            ("u", vec![3, 2]),
        ],
    );
    assert!(msg.contains("missing tensor `ma` for pst-linear"), "{msg}");

    let (msg, _) = failing(
        "spt-attention",
        &["topk=99"],
        &[
            ("q", vec![1, 1, 8, 16]),
            ("k", vec![1, 1, 8, 16]),
            ("v", vec![1, 1, 8, 16]),
            ("codebook", vec![2, 16, 8]),
        ],
    );
    assert!(
        msg.contains("topk = 99 resolves to 99, more than L = 8"),
        "{msg}"
    );

    let (msg, _) = failing(
        "routed-ffn",
        &["blocks=3"],
        &[("x", vec![4, 8]), ("w1", vec![12, 8]), ("wr", vec![4, 8])],
    );
    assert!(
        msg.contains("param `blocks` of routed-ffn is read from the shape of `wr`"),
        "{msg}"
    );

    let (msg, _) = failing(
        "cbm-head",
        &["topk=two"],
        &[("x", vec![2, 3]), ("wc", vec![3, 3]), ("wh", vec![2, 3])],
    );
    assert!(
        msg.contains("cbm: `topk` = `two` is not a non-negative integer"),
        "{msg}"
    );

    let (msg, _) = failing(
        "sara-linear",
        &["ratio=0.5", "threshold=0.1"],
        &linear(vec![3, 8]),
    );
    assert!(
        msg.contains("give `threshold` or `ratio`, not both"),
        "{msg}"
    );

    let (msg, _) = failing(
        "sara-linear",
        &["ratio=0.5"],
        &[
            ("x", vec![4, 8]),
            ("w", vec![3, 8]),
            ("bias", vec![3]),
            ("v", vec![5]),
        ],
    );
    assert!(
        msg.contains("tensor `v` has shape [5], expected [12] (nnz of the mask)"),
        "{msg}"
    );

    let (msg, _) = failing(
        "pq-encode",
        &[],
        &[
            ("x", vec![2, 16]),
            ("codebook", vec![2, 16, 8]),
            ("dy", vec![2, 2]),
        ],
    );
    assert!(msg.contains("unknown tensor `dy` for pq-encode"), "{msg}");
}

#[test]
fn a_failed_run_keeps_the_previous_output_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    std::fs::write(&out, b"previous").unwrap();
    write(
        &inp,
        &inputs(
            2,
            &[("x", vec![4, 8]), ("w", vec![3, 9]), ("bias", vec![3])],
        ),
    );
    let o = run(&[
        "run",
        "dense-linear",
        "--inputs",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
}

fn good_inputs(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("good.safetensors");
    write(
        &p,
        &inputs(
            3,
            &[
                ("x", vec![2, 6]),
                ("w1", vec![2, 3, 3]),
                ("w2", vec![3, 4, 2]),
            ],
        ),
    );
    p
}

#[test]
fn unreadable_inputs_and_unavailable_devices_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let out = dir.path().join("o.safetensors");
    let o = run(&[
        "run",
        "monarch",
        "--inputs",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not a valid safetensors file"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "run",
        "monarch",
        "--inputs",
        "/nonexistent/in.safetensors",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("cannot read inputs `/nonexistent/in.safetensors`"),
        "{}",
        stderr(&o)
    );
    // Without a CUDA driver the device is absent; the message says why.
    if !Path::new("/dev/nvidiactl").exists() {
        let good = good_inputs(dir.path());
        let o = run(&[
            "run",
            "monarch",
            "--inputs",
            good.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--device",
            "cuda",
        ]);
        assert!(
            stderr(&o).contains("device `cuda` is not available: no CUDA driver"),
            "{}",
            stderr(&o)
        );
    }
    let o = run(&[
        "run",
        "conv2d",
        "--inputs",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown op `conv2d`"), "{}", stderr(&o));
    let o = run(&[
        "run",
        "monarch",
        "--inputs",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--param",
        "k",
    ]);
    assert!(
        stderr(&o).contains("--param `k` is not NAME=VALUE"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn check_verifies_files_and_lists_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sc");
    std::fs::write(&good, "kernel a { op = spt-attention dims = (B = 1, H = 2, L = 64, D = 64) }\nkernel b { op = dense-linear dims = (T = 2, in = 3, out = 4) }\n").unwrap();
    let o = run(&["check", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 kernel(s) verified"));

    let bad = dir.path().join("bad.sc");
    std::fs::write(&bad, "kernel r { op = routed-ffn pattern = routed(blocks = 7) dims = (T = 4, d_model = 8, d_ff = 3000) schedule = (vector = 3) }\n").unwrap();
    let o = run(&["check", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.sc: kernel `r`: routed: d_ff = 3000 is not divisible by blocks = 7"),
        "{err}"
    );
    assert!(
        err.contains("bad.sc: kernel `r`: schedule: vector = 3 must be 1, 2, 4 or 8"),
        "{err}"
    );
    assert!(err.contains("1 of 2 file(s) failed to check"), "{err}");

    let syntax = dir.path().join("syntax.sc");
    std::fs::write(
        &syntax,
        "kernel s {\n  op = monarch\n  pattern = monarch(k = 2\n",
    )
    .unwrap();
    let o = run(&["check", syntax.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("syntax.sc: line 4, column 1: expected `,` or `)` after `k = 2` in monarch, found end of input"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn demo_runs_every_method() {
    let o = run(&["demo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for op in [
        "spt-attention",
        "routed-ffn",
        "monarch",
        "monarch-project",
        "sara-linear",
        "pst-linear",
        "cbm-head",
        "dense-linear",
    ] {
        assert!(
            out.lines().any(|l| l.split_whitespace().any(|w| w == op)),
            "demo table lacks {op}:\n{out}"
        );
    }
    // SPT keeps L/8 of the attention scores; routed keeps top/blocks = 1/2 of the FFN weights.
    let row = |op: &str| {
        out.lines()
            .find(|l| l.split_whitespace().any(|w| w == op))
            .map(str::to_string)
    };
    assert!(row("spt-attention").unwrap().contains("0.125"), "{out}");
    assert!(row("routed-ffn").unwrap().contains("0.500"), "{out}");
}

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
        "spt_key_count",
        "spt_key_scan",
        "spt_key_offsets",
        "spt_key_fill",
        "spt_bwd_keys_f_f32",
    ] {
        assert!(
            // 64 units per cube for one-unit-per-row kernels, 32 lanes × 4 rows for the
            // plane-per-row ones.
            ["64", "128"]
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
        stderr(&o).contains("tile_k = 64 is not a slice depth of dense-linear's tile mainloop"),
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
        // pq_encode, spt_select, spt_attend_fwd, spt_bwd_rows, four key-index passes,
        // spt_bwd_keys; after a header naming the NVRTC and ptxas versions.
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
fn wgpu_present(test: &str) -> bool {
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
    // 3 random sparse cases + 4 dense-baseline cases + 1 routed FFN, 1 CBM head, 1 Monarch,
    // 1 dense linear, 1 SaRA, 1 PST, 1 block-diagonal and 1 PQ-encode case (cases / 2 each),
    // each a line with its errors.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok   [")).count(),
        15,
        "{out}"
    );
    assert!(out.contains("selftest passed: 15 case(s)"), "{out}");
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
    // Two fixed SPT cases per dtype (f32, f16, bf16), one dense baseline, and one routed FFN,
    // CBM head, Monarch, dense linear, SaRA, PST, block-diagonal and PQ-encode case per dtype.
    assert!(out.contains("selftest passed: 31 case(s)"), "{out}");
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
    let tune = |op: &str, dims: &[&str]| {
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
            "120",
            "--repeats",
            "1",
        ];
        for d in dims {
            args.extend(["--dim", d]);
        }
        run(&args)
    };
    let small_linear = ["T=64", "in=96", "out=80"];
    let o = tune("dense-linear", &small_linear);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("| tile_k=32 |") && out.contains("| tile_k=16 |"),
        "{out}"
    );
    assert!(out.contains("fallback"), "{out}");
    let first = report(&json);
    assert_eq!(first["results"][0]["status"], "tuned", "{first}");
    let times = first["results"][0]["candidates"].as_array().unwrap();
    assert_eq!(times.len(), 2, "{first}");
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
    // are recorded with their single candidate.
    for (op, dims) in [
        ("spt-attention", &["B=1", "H=2", "L=64", "D=32"][..]),
        ("routed-ffn", &["T=64", "d_model=64", "d_ff=256"][..]),
        ("monarch", &["N=32"][..]),
        ("block-diag-linear", &["N=64", "in=96", "out=64"][..]),
        ("sara-linear", &small_linear[..]),
        ("pst-linear", &small_linear[..]),
        ("cbm-head", &["B=16", "C=64", "K=4"][..]),
    ] {
        let o = tune(op, dims);
        assert!(o.status.success(), "{op}: {}", stderr(&o));
        let r = report(&json);
        assert_eq!(r["results"][0]["status"], "tuned", "{op}: {r}");
        assert!(r["elapsed_s"].as_f64().unwrap() < 120.0, "{op}: {r}");
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
}

#[test]
fn help_of_every_subcommand() {
    for sub in [
        "", "run", "check", "gen", "devices", "tune", "selftest", "bench", "demo", "finetune",
    ] {
        let mut args: Vec<&str> = sub.split_whitespace().collect();
        args.push("--help");
        let o = run(&args);
        assert!(o.status.success(), "{sub}: {}", stderr(&o));
        let name = if sub.is_empty() {
            "help".to_string()
        } else {
            format!("help_{sub}")
        };
        insta::assert_snapshot!(name, String::from_utf8_lossy(&o.stdout));
    }
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
    // The schedule reaches the source: the tile mainloop's slice depth is a comptime constant.
    let src = |tk: &str| {
        let o = run(&["gen", "dense-linear", "--schedule", tk, "--target", "cuda"]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_ne!(src("tile_k=16"), src("tile_k=32"));
}

#[test]
fn tune_model_lists_the_kernels_of_each_methods_training_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("model.toml");
    let write_model = |method: &str, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[model]\nbatch = 2\nseq_len = 64\nd_model = 64\nheads = 2\nd_ff = 256\nmethod = \"{method}\"\n{extra}"
            ),
        )
        .unwrap();
    };
    for (method, ops) in [
        ("dense", &["dense-linear"; 4][..]),
        ("lora", &["dense-linear"; 4][..]),
        ("spt", &["spt-attention", "routed-ffn"][..]),
        ("sara", &["sara-linear"; 3][..]),
        ("pst", &["pst-linear"; 3][..]),
        ("monarch", &["monarch", "block-diag-linear"][..]),
        ("cbm", &["dense-linear", "cbm-head"][..]),
    ] {
        write_model(method, "");
        let o = run(&["tune", "--model", config.to_str().unwrap(), "--list"]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        // The listing is IR text: it parses and verifies, one kernel per spec of the step.
        let module: kernels_ir::Module = out
            .parse()
            .unwrap_or_else(|e| panic!("{method}: {e}\n{out}"));
        kernels_ir::verify_module(&module).unwrap();
        let listed: Vec<&str> = module.kernels.iter().map(|k| k.op.name()).collect();
        assert_eq!(listed, ops, "{method}");
        assert_eq!(out.matches("# candidates: ").count(), ops.len(), "{method}");
    }
    write_model("spt", "");
    let spt = String::from_utf8_lossy(
        &run(&["tune", "--model", config.to_str().unwrap(), "--list"]).stdout,
    )
    .into_owned();
    assert!(
        spt.contains("dims = (B = 2, H = 2, L = 64, D = 32)"),
        "{spt}"
    );
    assert!(
        spt.contains("dims = (T = 128, d_model = 64, d_ff = 256)"),
        "{spt}"
    );

    for (method, extra, error) in [
        ("spt", "heads2 = 1\n", "unknown field `heads2`"),
        ("sparse", "", "unknown variant `sparse`"),
        (
            "monarch",
            "blocks = 3\n",
            "model.blocks = 3 must divide d_model = 64",
        ),
        ("dense", "dtype = \"f8\"\n", "model.dtype"),
    ] {
        write_model(method, extra);
        let o = run(&["tune", "--model", config.to_str().unwrap(), "--list"]);
        assert!(!o.status.success(), "{method} {extra}");
        assert!(
            stderr(&o).contains(error),
            "{method} {extra}: {}",
            stderr(&o)
        );
    }
    let o = run(&["tune", "--model", "/nonexistent/model.toml", "--list"]);
    assert!(
        stderr(&o).contains("cannot read the model config `/nonexistent/model.toml`"),
        "{}",
        stderr(&o)
    );
}

/// A small config of the built-in task: seconds per method on the CPU.
fn small_finetune_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("small.toml");
    std::fs::write(
        &path,
        "[model]\nbatch = 16\nseq_len = 16\nd_model = 32\nheads = 2\nd_ff = 64\nlayers = 1\n\
         vocab = 24\nclasses = 3\nconcepts = 8\nmethod = \"dense\"\n\
         [train]\nepochs = 3\ntrain_samples = 512\neval_samples = 128\nlr = 3e-3\n",
    )
    .unwrap();
    path
}

/// `finetune` on the small config on the CPU with `extra` arguments, into `dir/out`; its output
/// directory and stdout (the run must succeed).
fn finetune_small(dir: &Path, extra: &[&str]) -> (std::path::PathBuf, String) {
    let config = small_finetune_config(dir);
    let out = dir.join("out");
    let mut args = vec![
        "finetune",
        config.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ];
    args.extend(extra);
    args.extend(["--out", out.to_str().unwrap()]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    (out, String::from_utf8_lossy(&o.stdout).into_owned())
}

fn reports(path: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Well-formed SVG: one root `<svg>` element, every tag closed in order.
fn assert_valid_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "{}",
        &text[..80.min(text.len())]
    );
    let mut open: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find('<') {
        let end = rest[at..].find('>').expect("an unclosed tag") + at;
        let tag = &rest[at + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            open.push(tag.split_whitespace().next().unwrap_or("").to_string());
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
}

#[test]
fn finetune_trains_beats_chance_and_writes_report_plot_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stdout) = finetune_small(dir.path(), &["--method", "sara"]);
    assert!(
        stdout.contains("sara") && stdout.contains("chance accuracy 0.333"),
        "{stdout}"
    );
    let r = &reports(&out.join("report.json"))[0];
    assert_eq!(r["method"], "sara");
    let losses: Vec<f64> = r["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[losses.len() - 8..]));
    assert!(
        last < first - 0.2,
        "the loss did not decrease: {first:.3} → {last:.3}"
    );
    let acc = r["epochs"].as_array().unwrap().last().unwrap()["accuracy"]
        .as_f64()
        .unwrap();
    assert!(acc > 0.6, "accuracy {acc} (chance 0.333)");
    assert!(r["trainable_params"].as_u64().unwrap() < r["total_params"].as_u64().unwrap() / 4);
    assert_valid_svg(&out.join("loss.svg"));
    assert!(out.join("checkpoint-sara.safetensors").exists());
    // The checkpoint holds what SaRA trains: packed values, their positions, the head.
    for name in read(&out.join("checkpoint-sara.safetensors")).keys() {
        assert!(
            name.ends_with("values") || name.ends_with("index") || name.starts_with("head."),
            "{name}"
        );
    }
}

#[test]
fn finetune_compare_shows_every_method_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stdout) = finetune_small(dir.path(), &["--compare", "--epochs", "1"]);
    let methods = ["dense", "lora", "spt", "sara", "pst", "monarch", "cbm"];
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| methods.iter().any(|m| l.starts_with(m)))
        .collect();
    assert_eq!(rows.len(), 7, "{stdout}");
    let all = reports(&out.join("report.json"));
    assert_eq!(
        all.iter()
            .map(|r| r["method"].as_str().unwrap())
            .collect::<Vec<_>>(),
        methods
    );
    let count = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap();
    let dense = &all[0];
    for r in &all {
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["step_ms"].as_f64().unwrap() > 0.0);
        let loss = r["epochs"][0]["eval_loss"].as_f64().unwrap();
        assert!(loss.is_finite(), "{}: eval loss {loss}", r["method"]);
        // The parameter-efficient methods train less than full fine-tuning (PST's rank-8
        // factors are large next to d 32: only "less").
        let share = match r["method"].as_str().unwrap() {
            "lora" | "sara" | "cbm" => 2,
            "pst" => 1,
            _ => continue,
        };
        assert!(
            count(r, "trainable_params") * share < count(dense, "trainable_params"),
            "{}",
            r["method"]
        );
    }
    // Monarch with 4 blocks holds fewer weights than the dense model.
    assert!(count(&all[5], "total_params") < count(dense, "total_params"));
    assert_valid_svg(&out.join("loss.svg"));
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    for m in methods {
        assert!(
            svg.contains(&format!(">\n{m}\n<")) || svg.contains(&format!(">{m}<")),
            "no legend entry {m}"
        );
    }
}

#[test]
fn finetune_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["finetune", "--method", "sparse"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown method `sparse`")
            || stderr(&o).contains("invalid value 'sparse'"),
        "{}",
        stderr(&o)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[model]\nbatch = 2\nseq_len = 4\nd_model = 8\nheads = 2\nd_ff = 8\nmethod = \"dense\"\n",
    )
    .unwrap();
    let o = run(&[
        "finetune",
        bad.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("seq_len ≥ 8"), "{}", stderr(&o));
    let o = run(&[
        "finetune",
        "--checkpoint",
        "/nonexistent/model.safetensors",
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/model.safetensors"),
        "{}",
        stderr(&o)
    );
}
