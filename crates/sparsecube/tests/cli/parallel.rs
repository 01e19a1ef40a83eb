//! `finetune --nodes`: two (and three) processes over 127.0.0.1 train what one process trains,
//! and a node killed mid-run stops the other with an error naming it.

use super::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `finetune` of the embedded default as node `rank` of two, into `out`.
fn node(rank: usize, port: u16, out: &Path, extra: &[&str]) -> Child {
    node_of(2, rank, port, out, extra)
}

/// `finetune` as node `rank` of `nodes`, into `out` (a config file, if any, first in `extra`).
fn node_of(nodes: usize, rank: usize, port: u16, out: &Path, extra: &[&str]) -> Child {
    let mut c = bin();
    // A config file, when given, comes first.
    let (config, extra) = match extra.first() {
        Some(f) if f.ends_with(".toml") => (Some(*f), &extra[1..]),
        _ => (None, extra),
    };
    c.arg("finetune");
    c.args(config);
    c.args(["--device", "cpu", "--quiet", "--nodes", &nodes.to_string()])
        .args(["--node-rank", &rank.to_string()])
        .args(["--coordinator", &format!("127.0.0.1:{port}")])
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Waits for `child` at most `limit`, killing it past that; its exit status and output.
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A small LoRA config (batch 12: it splits over three nodes) with `train_samples` samples, in
/// `dir`.
fn small_config(dir: &Path, train_samples: usize) -> std::path::PathBuf {
    let path = dir.join("small.toml");
    std::fs::write(
        &path,
        format!(
            "[model]\nbatch = 12\nseq_len = 16\nd_model = 32\nheads = 2\nd_ff = 64\nlayers = 2\n\
             vocab = 24\nclasses = 3\nconcepts = 8\nmethod = \"lora\"\n\
             [train]\nepochs = 1\ntrain_samples = {train_samples}\neval_samples = 24\nlr = 3e-3\n"
        ),
    )
    .unwrap();
    path
}

fn losses(report: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(report).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[0]["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn two_processes_train_the_embedded_default_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let o = run(&[
        "finetune",
        "--device",
        "cpu",
        "--quiet",
        "--epochs",
        "1",
        "--out",
        one.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let port = free_port();
    let (out0, out1) = (dir.path().join("n0"), dir.path().join("n1"));
    let n1 = node(1, port, &out1, &["--epochs", "1"]);
    let n0 = node(0, port, &out0, &["--epochs", "1"]);
    let (o0, o1) = (
        wait_bounded(n0, Duration::from_secs(600)),
        wait_bounded(n1, Duration::from_secs(60)),
    );
    assert!(o0.status.success(), "node 0: {}", stderr(&o0));
    assert!(o1.status.success(), "node 1: {}", stderr(&o1));
    assert!(
        String::from_utf8_lossy(&o1.stdout).contains("node 0 writes the report"),
        "{}",
        String::from_utf8_lossy(&o1.stdout)
    );
    // Node 0 alone writes the report and the checkpoint.
    assert!(!out1.join("report.json").exists());
    assert!(!out1.join("checkpoint-sara.safetensors").exists());
    assert!(out0.join("checkpoint-sara.safetensors").exists());

    let (a, b) = (
        losses(&one.join("report.json")),
        losses(&out0.join("report.json")),
    );
    assert_eq!(a.len(), 64);
    assert_eq!(a.len(), b.len());
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {step}: one process {x}, two nodes {y}"
        );
    }
    let text = std::fs::read_to_string(out0.join("report.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (r[0]["replicas"].as_u64(), r[0]["nodes"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(r[0]["samples_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        String::from_utf8_lossy(&o0.stdout).contains("2 replicas on 2 node(s)"),
        "{}",
        String::from_utf8_lossy(&o0.stdout)
    );
}

/// Three nodes: the ring all-reduce over chunks of unequal length (the vector's length is not a
/// multiple of 3) sums what one process computes on the whole batch.
#[test]
fn three_nodes_in_a_ring_train_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path(), 96);
    let config = config.to_str().unwrap();
    let one = dir.path().join("one");
    let o = run(&[
        "finetune",
        config,
        "--device",
        "cpu",
        "--quiet",
        "--out",
        one.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let port = free_port();
    let outs: Vec<_> = (0..3).map(|r| dir.path().join(format!("n{r}"))).collect();
    let children: Vec<_> = (0..3)
        .rev()
        .map(|r| node_of(3, r, port, &outs[r], &[config]))
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let o = wait_bounded(child, Duration::from_secs(300));
        assert!(o.status.success(), "node {}: {}", 2 - i, stderr(&o));
    }
    let (a, b) = (
        losses(&one.join("report.json")),
        losses(&outs[0].join("report.json")),
    );
    assert_eq!(a.len(), 8);
    assert_eq!(a.len(), b.len());
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {step}: one process {x}, three nodes {y}"
        );
    }
    let text = std::fs::read_to_string(outs[0].join("report.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (r[0]["replicas"].as_u64(), r[0]["nodes"].as_u64()),
        (Some(3), Some(3))
    );
}

#[test]
fn a_killed_node_stops_the_other_within_seconds_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (out0, out1) = (dir.path().join("n0"), dir.path().join("n1"));
    let mut n1 = node(1, port, &out1, &[]);
    let n0 = node(0, port, &out0, &[]);
    // Node 1 says when every node is connected; it is killed (SIGKILL) a second into training.
    let mut lines = BufReader::new(n1.stderr.take().unwrap()).lines();
    let joined = lines.any(|l| l.is_ok_and(|l| l.contains("every node is connected")));
    assert!(joined, "node 1 never joined");
    std::thread::sleep(Duration::from_secs(1));
    n1.kill().unwrap();
    n1.wait().unwrap();
    let killed = Instant::now();
    let o0 = wait_bounded(n0, Duration::from_secs(30));
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
    assert!(!o0.status.success());
    let e = stderr(&o0);
    assert!(e.contains("node 1 went away"), "{e}");
    // No checkpoint half-written: none at all this early, or a whole one.
    for entry in std::fs::read_dir(&out0).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "{name} left behind");
    }
}

/// In a ring of three, killing node 1 stops node 0 (its ring successor's and the star's
/// centre) and node 2 (whose ring predecessor it was), each naming node 1.
#[test]
fn a_node_killed_in_a_ring_of_three_stops_both_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path(), 12000);
    let config = config.to_str().unwrap();
    let port = free_port();
    let out: Vec<_> = (0..3).map(|r| dir.path().join(format!("n{r}"))).collect();
    let n2 = node_of(3, 2, port, &out[2], &[config]);
    let mut n1 = node_of(3, 1, port, &out[1], &[config]);
    let n0 = node_of(3, 0, port, &out[0], &[config]);
    let mut lines = BufReader::new(n1.stderr.take().unwrap()).lines();
    let joined = lines.any(|l| l.is_ok_and(|l| l.contains("every node is connected")));
    assert!(joined, "node 1 never joined");
    std::thread::sleep(Duration::from_secs(1));
    n1.kill().unwrap();
    n1.wait().unwrap();
    let killed = Instant::now();
    for (rank, child) in [(0, n0), (2, n2)] {
        let o = wait_bounded(child, Duration::from_secs(30));
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "{:?}",
            killed.elapsed()
        );
        assert!(!o.status.success(), "node {rank} finished");
        let e = stderr(&o);
        assert!(e.contains("node 1 went away"), "node {rank}: {e}");
    }
}

#[test]
fn parallel_flags_are_checked() {
    for (args, needle) in [
        (&["--nodes", "2"][..], "--nodes 2 without --coordinator"),
        (&["--replicas", "0"][..], "both must be at least 1"),
        (
            &["--replicas", "3"][..],
            "does not split evenly over 3 replicas",
        ),
        (
            &[
                "--nodes",
                "2",
                "--node-rank",
                "2",
                "--coordinator",
                "127.0.0.1:1",
            ][..],
            "--node-rank 2 with --nodes 2",
        ),
        (
            &["--nodes", "2", "--coordinator", "localhost"][..],
            "is not HOST:PORT",
        ),
    ] {
        let mut a = vec![
            "finetune",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            "/nonexistent/x",
        ];
        a.extend(args);
        let o = run(&a);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn nodes_that_start_from_different_parameters_are_stopped_before_training() {
    // Node 0 resumes from a checkpoint, node 1 finds none in its own --out: the parameter check
    // before the first step fails on both, with the advice.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(
        &config,
        "[model]\nbatch = 16\nseq_len = 16\nd_model = 32\nheads = 2\nd_ff = 64\nlayers = 1\n\
         vocab = 24\nclasses = 3\nconcepts = 8\nmethod = \"lora\"\n\
         [train]\nepochs = 1\ntrain_samples = 32\neval_samples = 16\n",
    )
    .unwrap();
    let (out0, out1) = (dir.path().join("n0"), dir.path().join("n1"));
    let cfg = config.to_str().unwrap();
    let o = run(&[
        "finetune",
        cfg,
        "--device",
        "cpu",
        "--quiet",
        "--out",
        out0.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let port = free_port();
    let more = ["--epochs", "2", "--resume"];
    let n1 = node(1, port, &out1, &[&[cfg][..], &more].concat());
    let n0 = node(0, port, &out0, &[&[cfg][..], &more].concat());
    let o0 = wait_bounded(n0, Duration::from_secs(120));
    let o1 = wait_bounded(n1, Duration::from_secs(60));
    for (o, rank) in [(&o0, 0), (&o1, 1)] {
        assert!(!o.status.success(), "node {rank}");
        let e = stderr(o);
        assert!(
            e.contains("differ from the other replicas' before the first step")
                && e.contains("every node needs rank 0's checkpoint"),
            "node {rank}: {e}"
        );
    }
}
