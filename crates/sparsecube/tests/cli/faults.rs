//! Faults injected into whole processes (docs/reliability.md): a step that goes non-finite, a
//! checkpoint write that fails (file-size limit: the same `EFBIG` path as a full disk, and it
//! works as root), SIGINT and SIGTERM mid-run, `kill -9` at random moments, two `tune`
//! processes writing one cache.

use super::{bin, run, stderr, write_f64};
use kernels_ir::reference::rng::SplitMix64;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tiny config: 6 steps an epoch, tens of milliseconds an epoch on the CPU.
fn tiny(dir: &Path, lr: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            "[model]\nbatch = 16\nseq_len = 16\nd_model = 32\nheads = 2\nd_ff = 64\nlayers = 2\n\
             vocab = 24\nclasses = 3\nconcepts = 8\nmethod = \"sara\"\n\
             [train]\nepochs = 1\ntrain_samples = 96\neval_samples = 32\nlr = {lr}\n"
        ),
    )
    .unwrap();
    path
}

fn finetune(config: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("finetune")
        .arg(config)
        .args(["--device", "cpu", "--quiet", "--out"])
        .arg(out)
        .args(extra);
    c
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` at most `limit` (then kills it and fails).
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the process ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn checkpoint(out: &Path) -> PathBuf {
    out.join("checkpoint-sara.safetensors")
}

/// The epoch a checkpoint holds (from 0), after checking that it is a whole safetensors file
/// with finite values; None when there is none.
fn checkpoint_epoch(out: &Path) -> Option<usize> {
    let bytes = std::fs::read(checkpoint(out)).ok()?;
    let st = SafeTensors::deserialize(&bytes).expect("a checkpoint is a whole safetensors file");
    for (name, view) in st.tensors() {
        if view.dtype() == safetensors::Dtype::F32 {
            assert!(
                view.data()
                    .chunks_exact(4)
                    .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
                "checkpoint tensor {name} holds a non-finite value"
            );
        }
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let epoch = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("epoch").cloned());
    Some(
        epoch
            .expect("a checkpoint records its epoch")
            .parse()
            .unwrap(),
    )
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

fn report(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[0].clone()
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

/// Waits until the run has written a checkpoint after at least `epoch`.
fn wait_for_checkpoint(child: &mut Child, out: &Path, epoch: usize) {
    let start = Instant::now();
    while checkpoint_epoch(out).is_none_or(|e| e < epoch) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its checkpoint"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_its_checkpoint_stays_finite() {
    // lr = 1000 overflows within a few epochs (where exactly depends on the machine's float
    // kernels; tests/it/model.rs injects a NaN at a known step).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = tiny(dir.path(), "1e3");
    let o = finetune(&config, &out, &["--epochs", "40"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // Either a step's loss or gradient norm is caught, or (an update that overflowed the
    // parameters) the epoch's checkpoint is refused; both keep the checkpoint on disk whole
    // and finite, and name it.
    let stopped = err.contains("sara: the ") && err.contains("run stopped before applying it");
    let refused = err.contains("holds a non-finite value; the previous checkpoint is kept");
    assert!(stopped || refused, "{err}");
    assert!(err.contains("--max-grad-norm"), "{err}");
    let saved = checkpoint_epoch(&out);
    if stopped {
        match saved {
            Some(e) => assert!(
                err.contains(&format!("holds the model after epoch {}", e + 1)),
                "{err}"
            ),
            None => assert!(err.contains("No checkpoint was written yet"), "{err}"),
        }
    }
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
}

#[test]
fn max_grad_norm_is_checked_and_a_clipped_run_trains() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = tiny(dir.path(), "3e-3");
    for bad in ["0", "-1", "nan", "inf"] {
        let flag = format!("--max-grad-norm={bad}");
        let o = finetune(&config, &out, &[&flag]).output().unwrap();
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("train.max_grad_norm = ") && stderr(&o).contains("above 0"),
            "{bad}: {}",
            stderr(&o)
        );
    }
    let o = finetune(&config, &out, &["--max-grad-norm", "0.05", "--epochs", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&out);
    let losses = r["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 12);
    assert!(losses.iter().all(|l| l.as_f64().unwrap().is_finite()));
    // A run resumes with another bound: it is not part of the config a checkpoint must match.
    let o = finetune(
        &config,
        &out,
        &["--max-grad-norm", "1", "--epochs", "3", "--resume"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(&out)["resumed_after"], 1);
}

#[test]
fn sigint_and_sigterm_stop_between_steps_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = tiny(dir.path(), "3e-3");
    for (name, code) in [("INT", 130), ("TERM", 143)] {
        let mut child = spawn(finetune(&config, &out, &["--epochs", "100000", "--resume"]));
        let before = checkpoint_epoch(&out).map_or(0, |e| e + 1);
        wait_for_checkpoint(&mut child, &out, before);
        signal(&child, name);
        let o = wait_bounded(child, Duration::from_secs(60));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "SIG{name}: {err}");
        assert!(err.contains("sara: interrupted before step"), "{err}");
        assert!(err.contains("run again with --resume"), "{err}");
        assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    }
    let saved = checkpoint_epoch(&out).expect("a checkpoint");
    let epochs = (saved + 2).to_string();
    let o = finetune(&config, &out, &["--epochs", &epochs, "--resume"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&out);
    assert_eq!(r["resumed_after"], saved, "{r}");
    assert_eq!(r["epochs"].as_array().unwrap().len(), 1, "{r}");
}

#[test]
fn kill_9_at_random_moments_always_leaves_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = tiny(dir.path(), "3e-3");
    let mut rng = SplitMix64::new(9);
    let mut last = None;
    for round in 0..20 {
        let mut child = spawn(finetune(&config, &out, &["--epochs", "100000", "--resume"]));
        if round == 0 {
            // One checkpoint for certain, whatever the machine's load.
            wait_for_checkpoint(&mut child, &out, 0);
        }
        std::thread::sleep(Duration::from_millis(rng.below(800) as u64));
        child.kill().unwrap();
        let _ = child.wait();
        // Whole (or absent), never behind the one before, at most the killed write's
        // temporary beside it (the next --resume removes it).
        let now = checkpoint_epoch(&out);
        assert!(now >= last, "round {round}: epoch {now:?} after {last:?}");
        last = now;
        assert!(
            temporaries(&out).len() <= 1,
            "round {round}: {:?}",
            temporaries(&out)
        );
    }
    let saved = last.expect("twenty runs wrote at least one checkpoint");
    let epochs = (saved + 2).to_string();
    let o = finetune(&config, &out, &["--epochs", &epochs, "--resume"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(&out)["resumed_after"], saved);
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
}

#[test]
fn a_failed_checkpoint_write_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = tiny(dir.path(), "3e-3");
    let o = finetune(&config, &out, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(checkpoint(&out)).unwrap();
    assert!(
        before.len() > 16 << 10,
        "the checkpoint must exceed the limit below"
    );
    // Files of at most 16 KiB, SIGXFSZ ignored: the write fails with EFBIG, as on a full disk.
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg("ulimit -f 16; trap '' XFSZ; exec \"$@\"")
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_sparsecube"))
        .arg("finetune")
        .arg(&config)
        .args(["--device", "cpu", "--quiet", "--resume", "--epochs", "2"])
        .arg("--out")
        .arg(&out)
        .env("SPARSECUBE_AUTOTUNE", "off");
    let o = c.output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write") && err.contains("checkpoint-sara.safetensors"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(checkpoint(&out)).unwrap(),
        before,
        "the previous checkpoint changed"
    );
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));

    // An --out that cannot be a directory.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = finetune(&config, &file.join("out"), &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot create the directory of"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn two_tunes_at_once_keep_both_keys() {
    if !super::kernels::wgpu_present("two_tunes_at_once_keep_both_keys") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let tune = |dims: [&str; 3]| {
        let mut c = bin();
        c.args(["tune", "dense-linear", "--device", "wgpu", "--cache-dir"])
            .arg(&cache)
            .args(["--budget", "3", "--repeats", "1", "--warmup", "0"]);
        for d in dims {
            c.args(["--dim", d]);
        }
        spawn(c)
    };
    let a = tune(["T=64", "in=96", "out=80"]);
    let b = tune(["T=32", "in=48", "out=40"]);
    for (name, child) in [("first", a), ("second", b)] {
        let o = wait_bounded(child, Duration::from_secs(300));
        assert!(o.status.success(), "{name}: {}", stderr(&o));
    }
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "one cache file, no temporary: {files:?}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let keys: Vec<&String> = json["entries"].as_object().unwrap().keys().collect();
    // Each process's forward and backward keys.
    assert_eq!(keys.len(), 4, "both processes' keys: {keys:?}");
    // And the commands that read it accept it.
    let o = run(&[
        "tune",
        "dense-linear",
        "--device",
        "wgpu",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--dim",
        "T=64",
        "--dim",
        "in=96",
        "--dim",
        "out=80",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("from the cache"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn oversized_and_overflowing_problems_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fails_with = |args: &[&str], needles: &[&str]| {
        let o = run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: no `{n}` in {err}");
        }
    };
    // Dims whose products overflow 64 bits: refused by the verifier, before any arithmetic.
    let gen_args = |l: &str| {
        vec![
            "gen".to_string(),
            "spt-attention".into(),
            "--target".into(),
            "wgsl".into(),
            "--dim".into(),
            format!("L={l}"),
        ]
    };
    let args = gen_args("18446744073709551615");
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["more than 2^63 elements"],
    );
    // Past the device: refused by the lowering from the op's own tensors, naming the largest.
    let args = gen_args("1048576");
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            "buffer `indices` [2, 4, 1048576, 131072]",
            "the device's largest buffer is",
        ],
    );
    // The same in an IR file.
    let ir = dir.path().join("huge.ir");
    std::fs::write(
        &ir,
        "kernel huge { op = spt-attention dims = (B = 1, H = 1, L = 18446744073709551615, D = 64) }",
    )
    .unwrap();
    fails_with(
        &["check", ir.to_str().unwrap()],
        &["more than 2^63 elements"],
    );
    // A reference run whose outputs exceed the host's memory: 12 MB of inputs ask for 10⁶ × 1.25·10⁵
    // selected keys (931 GiB of indices).
    let l = 1_000_000;
    let inputs = dir.path().join("long.safetensors");
    let seq: Vec<f32> = (0..l).map(|i| (i % 7) as f32).collect();
    super::write(
        &inputs,
        &[
            ("q", vec![1, 1, l, 1], seq.clone()),
            ("k", vec![1, 1, l, 1], seq.clone()),
            ("v", vec![1, 1, l, 1], seq),
            (
                "codebook",
                vec![1, 16, 1],
                (0..16).map(|i| i as f32).collect(),
            ),
        ],
    );
    let out = dir.path().join("out.safetensors");
    fails_with(
        &[
            "run",
            "spt-attention",
            "--device",
            "reference",
            "--inputs",
            inputs.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &["of host memory", "are available"],
    );
    assert!(!out.exists());
}

#[test]
fn non_finite_and_out_of_range_inputs_are_refused_by_every_executor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    // A selection (routed FFN: the gate's top-k) and a plain product (dense linear), on the
    // reference and on the device.
    let devices: &[&str] = if super::kernels::wgpu_present("non_finite_inputs_on_wgpu") {
        &["reference", "wgpu"]
    } else {
        &["reference"]
    };
    let ones = |n: usize| vec![0.25; n];
    for (bad, needle) in [
        (f64::NAN, "element 5 is NaN; inputs must be finite"),
        (f64::INFINITY, "element 5 is inf; inputs must be finite"),
        (1e39, "element 5 is 1e39, beyond f32's range"),
    ] {
        let mut x = ones(4 * 8);
        x[5] = bad;
        let inputs = dir.path().join("in.safetensors");
        write_f64(
            &inputs,
            &[
                ("x", vec![4, 8], x),
                ("w", vec![6, 8], ones(48)),
                ("bias", vec![6], ones(6)),
            ],
        );
        for device in devices {
            let o = run(&[
                "run",
                "dense-linear",
                "--device",
                device,
                "--inputs",
                inputs.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{device} {bad}: {err}");
            assert!(
                err.contains("tensor `x`") && err.contains(needle),
                "{device}: {err}"
            );
            assert!(!out.exists());
        }
    }
}

#[test]
fn a_device_failure_mid_run_is_a_typed_error() {
    if !super::kernels::wgpu_present("a_device_failure_mid_run_is_a_typed_error") {
        return;
    }
    // SPT's selected keys at L = 4096 (8 × 4 × 4096 × 512 indices: 256 MiB) do not fit
    // lavapipe's largest buffer (128 MiB); the attention op fails inside Burn's forward, which
    // cannot return an error.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("long.toml");
    std::fs::write(
        &config,
        "[model]\nbatch = 8\nseq_len = 4096\nd_model = 32\nheads = 4\nd_ff = 64\nlayers = 1\n\
         vocab = 24\nclasses = 3\nmethod = \"spt\"\n\
         [train]\nepochs = 1\ntrain_samples = 8\neval_samples = 8\n",
    )
    .unwrap();
    let mut c = bin();
    c.arg("finetune")
        .arg(&config)
        .args(["--device", "wgpu", "--quiet", "--out"])
        .arg(dir.path().join("out"))
        .env("RUST_BACKTRACE", "0");
    let o = wait_bounded(spawn(c), Duration::from_secs(300));
    let err = stderr(&o);
    // A typed error naming the method and the device's limit, exit 1 (not a panic's 101).
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: spt: the device failed:")
            && err.contains("the device's largest buffer is")
            && err.contains("free device memory or lower model.batch"),
        "{err}"
    );
}
