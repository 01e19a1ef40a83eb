//! Data parallelism in one process (burn-collective's local all-reduce, one thread per replica on
//! ndarray): two replicas on halves of every global batch train what one replica trains on the
//! whole batch, step for step.

use sparsecube_train::Cpu;
use sparsecube_train::config::{ConfigFile, Method};
use sparsecube_train::finetune::{Event, RunOptions, RunReport};
use sparsecube_train::parallel::{Topology, finetune_parallel};

fn config(method: &str) -> ConfigFile {
    config_for(method, 1)
}

fn config_for(method: &str, epochs: usize) -> ConfigFile {
    ConfigFile::parse(
        &format!(
            "[model]\nbatch = 16\nseq_len = 16\nd_model = 32\nheads = 2\nd_ff = 64\nlayers = 2\n\
             vocab = 24\nclasses = 3\nconcepts = 8\nmethod = \"{method}\"\n\
             [train]\nepochs = {epochs}\ntrain_samples = 96\neval_samples = 32\nlr = 3e-3\n\
             [train.methods]\nrefit_every = 3\n"
        ),
        "the test config",
    )
    .unwrap()
}

fn run(cfg: &ConfigFile, replicas: usize) -> Result<RunReport, sparsecube_train::TrainError> {
    run_on::<burn::backend::Autodiff<Cpu>>(cfg, &vec![Default::default(); replicas])
}

/// One quiet run with a replica on each of `devices`.
fn run_on<B>(
    cfg: &ConfigFile,
    devices: &[B::Device],
) -> Result<RunReport, sparsecube_train::TrainError>
where
    B: burn::tensor::backend::AutodiffBackend + sparsecube_train::SparseBackend,
    B::InnerBackend: sparsecube_train::SparseBackend,
{
    run_in::<B>(cfg, devices, None, false)
}

/// [`run_on`], checkpointing to `out` and resuming from it when asked.
fn run_in<B>(
    cfg: &ConfigFile,
    devices: &[B::Device],
    out: Option<&std::path::Path>,
    resume: bool,
) -> Result<RunReport, sparsecube_train::TrainError>
where
    B: burn::tensor::backend::AutodiffBackend + sparsecube_train::SparseBackend,
    B::InnerBackend: sparsecube_train::SparseBackend,
{
    let none = || None;
    let mut progress = |_: Event| {};
    let topology = Topology {
        replicas: devices.len(),
        ..Topology::default()
    };
    finetune_parallel::<B>(
        cfg,
        devices,
        &topology,
        RunOptions {
            method: cfg.model.method,
            device_name: "test".into(),
            out_dir: out.map(std::path::Path::to_path_buf),
            resume,
            progress: &mut progress,
            memory_in_use: &none,
            stop: None,
        },
    )
}

/// Every step's loss and the final held-out loss within `tol` relative.
fn assert_same_losses(what: &str, one: &RunReport, two: &RunReport, tol: f32) {
    assert!(!one.losses.is_empty(), "{what}");
    assert_eq!(two.losses.len(), one.losses.len(), "{what}");
    for (step, (a, b)) in one.losses.iter().zip(&two.losses).enumerate() {
        let rel = (a - b).abs() / a.abs().max(1e-6);
        assert!(rel <= tol, "{what} step {step}: {a} vs {b} ({rel:e})");
    }
    let (e1, e2) = (one.last().unwrap(), two.last().unwrap());
    assert!(
        (e1.eval_loss - e2.eval_loss).abs() <= f64::from(tol) * e1.eval_loss,
        "{what}: {e1:?} vs {e2:?}"
    );
}

#[test]
fn two_replicas_reproduce_one_replicas_losses() {
    for method in ["sara", "lora", "spt"] {
        let cfg = config(method);
        let one = run(&cfg, 1).unwrap();
        let two = run(&cfg, 2).unwrap();
        assert_eq!(one.losses.len(), 6, "{method}");
        assert_same_losses(method, &one, &two, 1e-5);
        assert_eq!((two.replicas, two.nodes), (2, 1));
        assert_eq!(two.replica_step_ms.len(), 2);
        // Only the trained tensors travel, with the loss and one flag per trained tensor.
        let floor = 4 * (two.trainable_params as u64 + 1);
        assert!(
            (floor..floor + 4 * 200).contains(&two.reduced_bytes_per_step),
            "{method}: {} bytes",
            two.reduced_bytes_per_step
        );
        assert_eq!(one.reduced_bytes_per_step, 0);
        let m: Method = method.parse().unwrap();
        assert_eq!(two.method, m);
    }
}

/// A checkpoint written by one replica resumes on two (the global batch and the data order do
/// not depend on the world size): both continue alike, step for step.
#[test]
fn a_run_resumes_with_another_number_of_replicas() {
    type B = burn::backend::Autodiff<Cpu>;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cpu = |n: usize| vec![Default::default(); n];
    run_in::<B>(&config_for("sara", 1), &cpu(1), Some(a.path()), false).unwrap();
    let name = "checkpoint-sara.safetensors";
    std::fs::copy(a.path().join(name), b.path().join(name)).unwrap();
    let longer = config_for("sara", 2);
    let one = run_in::<B>(&longer, &cpu(1), Some(a.path()), true).unwrap();
    let two = run_in::<B>(&longer, &cpu(2), Some(b.path()), true).unwrap();
    assert_eq!(one.resumed_after, Some(0));
    assert_eq!(two.resumed_after, Some(0));
    assert_same_losses("sara resumed on 2 replicas", &one, &two, 1e-5);
    assert_eq!(two.replicas, 2);
}

#[test]
fn a_batch_that_does_not_split_over_the_replicas_is_refused() {
    let cfg = config("lora");
    let e = run(&cfg, 3).unwrap_err().to_string();
    assert!(
        e.contains("does not split evenly over 3 replicas") && e.contains("multiple of"),
        "{e}"
    );
}

/// Two replicas on wgpu (our kernels; on CI two logical devices on lavapipe, each with its own
/// queue and memory) train what one replica trains on the whole batch; the gradients travel
/// between the devices through the host (burn-cubecl cannot move wgpu tensors between devices).
#[test]
fn two_wgpu_replicas_reproduce_one_replicas_losses() {
    if sparsecube_tests::wgpu_or_skip("two wgpu replicas").is_none() {
        return;
    }
    type Gpu = burn::backend::Autodiff<sparsecube_train::Wgpu>;
    let cfg = config("sara");
    let devices = match sparsecube_runtime::wgpu_replicas(2) {
        Ok(d) => d,
        // A GPU adapter takes one replica: a machine with one GPU cannot run this.
        Err(e) if !sparsecube_runtime::wgpu_on_cpu() => {
            eprintln!("SKIPPED two wgpu replicas: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(devices.len(), 2);
    assert_ne!(devices[0], devices[1]);
    let one = run_on::<Gpu>(&cfg, &devices[..1]).unwrap();
    let two = run_on::<Gpu>(&cfg, &devices).unwrap();
    assert_eq!(one.losses.len(), 6);
    assert_same_losses("sara on wgpu", &one, &two, 1e-5);
    assert_eq!((two.replicas, two.nodes), (2, 1));
    assert_eq!(two.replica_step_ms.len(), 2);
}

/// The parameter check's cadence: every step for a small trained set, every 50th (and the last)
/// for a large one, or every N-th as asked; the same answer on every replica.
#[test]
fn the_parameter_check_runs_every_step_only_for_small_trained_sets() {
    use sparsecube_train::parallel::Session;
    let replica = |check_every: usize| {
        let topology = Topology {
            check_every,
            ..Topology::default()
        };
        Session::open(&topology)
            .unwrap()
            .register::<Cpu>(0, &Default::default())
            .unwrap()
    };
    let auto = replica(0);
    assert!((0..10).all(|s| auto.checks_after(s, 10, 1000)));
    let large = 4 << 20;
    let checked: Vec<usize> = (0..120)
        .filter(|&s| auto.checks_after(s, 120, large))
        .collect();
    assert_eq!(checked, [49, 99, 119]);
    let every3 = replica(3);
    let checked: Vec<usize> = (0..8)
        .filter(|&s| every3.checks_after(s, 8, large))
        .collect();
    assert_eq!(checked, [2, 5, 7]);
}
