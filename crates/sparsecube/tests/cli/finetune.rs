//! `tune --model` and `finetune`.

use super::*;

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
    let methods = [
        "dense",
        "lora",
        "spt",
        "spt-block",
        "sara",
        "pst",
        "monarch",
        "cbm",
        "nm",
    ];
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| methods.iter().any(|m| l.starts_with(m)))
        .collect();
    assert_eq!(rows.len(), 9, "{stdout}");
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
    assert!(count(&all[6], "total_params") < count(dense, "total_params"));
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
