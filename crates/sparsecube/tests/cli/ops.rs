//! `run` on every op of the contract, its errors, `check` and `demo`.

use super::*;

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
        stderr(&o).contains("not a valid safetensors file"),
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
