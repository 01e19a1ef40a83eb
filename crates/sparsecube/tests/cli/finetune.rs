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

/// A WordPiece `tokenizer.json` in Hugging Face's format over `words` (BERT's normaliser,
/// pre-tokeniser and `[CLS] … [SEP]` template; ids 0–3 are [PAD] [UNK] [CLS] [SEP]).
fn wordpiece_tokenizer(words: &[&str]) -> String {
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];
    let vocab: Vec<String> = special
        .iter()
        .chain(words)
        .enumerate()
        .map(|(i, w)| format!("\"{w}\": {i}"))
        .collect();
    let added: Vec<String> = special
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "{{\"id\": {i}, \"content\": \"{w}\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}}"
            )
        })
        .collect();
    let cls = "{\"SpecialToken\": {\"id\": \"[CLS]\", \"type_id\": 0}}";
    let sep = "{\"SpecialToken\": {\"id\": \"[SEP]\", \"type_id\": 0}}";
    format!(
        "{{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [{}],
          \"normalizer\": {{\"type\": \"BertNormalizer\", \"clean_text\": true, \"handle_chinese_chars\": true, \"strip_accents\": null, \"lowercase\": true}},
          \"pre_tokenizer\": {{\"type\": \"BertPreTokenizer\"}},
          \"post_processor\": {{\"type\": \"TemplateProcessing\",
            \"single\": [{cls}, {{\"Sequence\": {{\"id\": \"A\", \"type_id\": 0}}}}, {sep}],
            \"pair\": [{cls}, {{\"Sequence\": {{\"id\": \"A\", \"type_id\": 0}}}}, {sep}, {{\"Sequence\": {{\"id\": \"B\", \"type_id\": 1}}}}, {sep}],
            \"special_tokens\": {{\"[CLS]\": {{\"id\": \"[CLS]\", \"ids\": [2], \"tokens\": [\"[CLS]\"]}}, \"[SEP]\": {{\"id\": \"[SEP]\", \"ids\": [3], \"tokens\": [\"[SEP]\"]}}}}}},
          \"decoder\": null,
          \"model\": {{\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", \"continuing_subword_prefix\": \"##\", \"max_input_chars_per_word\": 100, \"vocab\": {{{}}}}}}}",
        added.join(", "),
        vocab.join(", ")
    )
}

/// `finetune --data` on a JSONL corpus with its own tokenizer, from scratch: the texts of two
/// topics are told apart, the table reports macro-F1 and the data; a corpus whose classes
/// cannot be told apart (the same texts under both labels) ends at chance and is flagged.
#[test]
fn finetune_on_a_labelled_text_corpus_and_flag_a_run_at_chance() {
    let dir = tempfile::tempdir().unwrap();
    let cats = ["cat", "purrs", "meows", "naps", "whiskers", "mouse"];
    let dogs = ["dog", "barks", "fetches", "wags", "bone", "leash"];
    let filler = ["the", "a", "and", "then", "quietly", "often"];
    let words: Vec<&str> = cats.iter().chain(&dogs).chain(&filler).copied().collect();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, wordpiece_tokenizer(&words)).unwrap();
    // 60 records per topic: 3–8 words, a topic word among fillers (mixed case and punctuation,
    // which the normaliser and pre-tokeniser handle); every tenth longer than seq_len.
    let mut rng = 7u64;
    let mut next = |n: usize| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as usize % n
    };
    let mut lines = Vec::new();
    let mut same = Vec::new();
    for i in 0..120 {
        let (topic, label) = if i % 2 == 0 {
            (&cats, "cats")
        } else {
            (&dogs, "dogs")
        };
        let n = 3 + next(6) + if i % 10 == 0 { 8 } else { 0 };
        let text: Vec<String> = (0..n)
            .map(|j| {
                let w = if j % 2 == 0 {
                    topic[next(6)]
                } else {
                    filler[next(6)]
                };
                if j == 0 {
                    w.to_uppercase()
                } else {
                    w.to_string()
                }
            })
            .collect();
        lines.push(format!(
            "{{\"text\": \"{}!\", \"label\": \"{label}\"}}",
            text.join(" ")
        ));
        same.push(format!(
            "{{\"text\": \"the a and then\", \"label\": \"{label}\"}}"
        ));
    }
    let corpus = dir.path().join("pets.jsonl");
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let config = dir.path().join("text.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nbatch = 8\nseq_len = 12\nd_model = 32\nheads = 2\nd_ff = 64\nlayers = 1\n\
             vocab = {}\nmethod = \"dense\"\n[train]\nepochs = 6\nlr = 3e-3\n\
             [data]\ntokenizer = \"{}\"\n",
            words.len() + 4,
            tok.display()
        ),
    )
    .unwrap();
    let finetune = |data: &Path, out: &str| {
        run(&[
            "finetune",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--quiet",
            "--out",
            dir.path().join(out).to_str().unwrap(),
        ])
    };
    let o = finetune(&corpus, "pets");
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("macro-F1"), "{stdout}");
    assert!(
        stdout
            .contains("2 classes: cats, dogs; 96 train / 24 held out; 12 of them cut to 12 tokens"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("pets/report.json")).unwrap(),
    )
    .unwrap();
    let last = &report[0]["epochs"][5];
    assert!(last["accuracy"].as_f64().unwrap() > 0.9, "{report}");
    assert!(last["macro_f1"].as_f64().unwrap() > 0.9, "{report}");
    assert!(
        report[0]["warnings"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(report[0]["lr"]["lr"].as_f64(), Some(3e-3));

    let corpus = dir.path().join("same.jsonl");
    std::fs::write(&corpus, same.join("\n")).unwrap();
    let o = finetune(&corpus, "same");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: dense: held-out accuracy 0.500 is at chance"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("dense    !"));
}
