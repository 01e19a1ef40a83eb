//! `sparsecube finetune`: the main job. One method in this process, or `--compare`: every
//! method in a child process of its own (so each one's peak memory is its own), then the table,
//! the loss plot and the JSON report.

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use sparsecube_train::config::{ConfigFile, DEFAULT_CONFIG, Method};
use sparsecube_train::finetune::{Event, RunOptions, RunReport};
use sparsecube_train::parallel::{self, Topology};
use sparsecube_train::{Cpu, Cuda, Wgpu, report};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where training runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TrainDevice {
    /// CUDA when present, else a wgpu GPU adapter, else the CPU (ndarray).
    Auto,
    /// The CPU: Burn's ndarray backend, the ops as tensor-op compositions.
    Cpu,
    /// wgpu (any adapter, lavapipe included): our kernels.
    Wgpu,
    /// CUDA: our kernels.
    Cuda,
}

/// The command's arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A config (TOML: `[model]` and `[train]`, see docs/training.md); default: the embedded one.
    pub config: Option<PathBuf>,
    /// The method (overrides the config's model.method).
    #[arg(long)]
    pub method: Option<sparsecube_train::config::Method>,
    /// Run several methods (comma-separated; none listed: all seven) on the same data, each
    /// in its own process, and report them side by side.
    #[arg(long, num_args = 0..=1, value_delimiter = ',', require_equals = false, default_missing_value = "")]
    pub compare: Option<Vec<String>>,
    /// Where training runs.
    #[arg(long, value_enum, default_value_t = TrainDevice::Auto)]
    pub device: TrainDevice,
    /// Passes over the training set (overrides train.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// A Hugging Face BERT checkpoint (model.safetensors) to start from; its tensors decide
    /// the encoder's sizes.
    #[arg(long, value_name = "SAFETENSORS")]
    pub checkpoint: Option<PathBuf>,
    /// A labelled text corpus to fine-tune on (overrides data.source): a directory with one
    /// text file per class, or a .jsonl / .csv file with `text` and `label`; its tokenizer is
    /// the checkpoint's tokenizer.json unless data.tokenizer says otherwise.
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Directory of checkpoints, report and plot.
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
    /// Continue from the method's last checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Clip the global L2 norm of the gradients to this before each step (overrides
    /// train.max_grad_norm; a run may resume with a different bound).
    #[arg(long, value_name = "NORM")]
    pub max_grad_norm: Option<f64>,
    /// The JSON report (default: OUT/report.json).
    #[arg(long, value_name = "REPORT")]
    pub json: Option<PathBuf>,
    /// The loss plot, SVG (default: OUT/loss.svg).
    #[arg(long, value_name = "SVG")]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Data-parallel replicas in this process, one per device (cpu: threads; cuda: devices
    /// 0..N; wgpu: N adapters of the default's type, or N logical devices on a CPU adapter such
    /// as lavapipe), each on its slice of every global batch, gradients averaged before each
    /// step.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub replicas: usize,
    /// Processes (nodes, on this machine or others) in the run; start each with the same
    /// arguments and its own --node-rank.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nodes: usize,
    /// This process's rank among the nodes (0 is the coordinator and writes the report and
    /// checkpoints).
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub node_rank: usize,
    /// Node 0's address, the same for every node: node 0 listens on its port, the others
    /// connect to it.
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// How long a collective call may wait for the other replicas before the run stops.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub collective_timeout: u64,
    /// Replicas compare their trained tensors after every N-th step and the last (0: every step
    /// while the method trains at most 2^20 values, else every 50); the same on every node
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub param_check_every: usize,
}

/// The config: the file's, else the embedded default; then the command line's overrides.
fn config(args: &Args) -> Result<ConfigFile> {
    let mut cfg = match &args.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::parse(DEFAULT_CONFIG, "the embedded default config")?,
    };
    if let Some(m) = args.method {
        cfg.model.method = m;
    }
    if let Some(e) = args.epochs {
        cfg.train.epochs = e;
    }
    if let Some(c) = &args.checkpoint {
        cfg.model.checkpoint = Some(c.clone());
    }
    if let Some(n) = args.max_grad_norm {
        cfg.train.max_grad_norm = Some(n);
        cfg.train.check()?;
    }
    if let Some(d) = &args.data {
        cfg.data.source = Some(d.clone());
    }
    if let Some(path) = cfg.model.checkpoint.clone() {
        // The checkpoint decides the encoder's sizes; the config keeps the rest.
        cfg.model = sparsecube_train::bert::config_of(&path, &cfg.model)?;
    }
    Ok(cfg)
}

/// Whether a GPU could be behind a wgpu adapter. On Linux a Vulkan GPU needs a DRM render
/// node; without one the probe would only find the CPU rasteriser (and Mesa would complain).
fn may_have_gpu_adapter() -> bool {
    if cfg!(target_os = "linux") {
        std::fs::read_dir("/dev/dri").is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        })
    } else {
        true
    }
}

fn resolve(device: TrainDevice) -> TrainDevice {
    match device {
        TrainDevice::Auto if sparsecube_runtime::cuda().is_ok() => TrainDevice::Cuda,
        TrainDevice::Auto
            if may_have_gpu_adapter()
                && sparsecube_runtime::wgpu().is_ok()
                && !sparsecube_runtime::wgpu_on_cpu() =>
        {
            TrainDevice::Wgpu
        }
        TrainDevice::Auto => TrainDevice::Cpu,
        d => d,
    }
}

pub fn run(args: Args) -> Result<()> {
    // One replica trains on this thread. Made worker 0 of rayon's global pool, it starts each
    // of burn-ndarray's parallel ops itself instead of handing it to a pool thread and sleeping
    // until that one is done: a wake-up per op, which the hundreds of small ops of a step add up
    // to (embedded default on 2 cores: 39 -> 29 ms per step; MiniLM LoRA: 1016 -> 931 ms).
    // Not with several replicas: this thread (replica 0) then also blocks outside rayon in the
    // collective calls while the other replicas' threads queue rayon work, which would cost the
    // pool a worker (and with RAYON_NUM_THREADS=1 leave it none). (Fails harmlessly if the pool
    // already exists.)
    if args.replicas <= 1 {
        let _ = rayon::ThreadPoolBuilder::new()
            .use_current_thread()
            .build_global();
    }
    let cfg = config(&args)?;
    let methods: Option<Vec<Method>> = args
        .compare
        .as_ref()
        .map(|list| {
            list.iter()
                .filter(|m| !m.is_empty())
                .map(|m| m.parse().map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| args.out.join("report.json"));
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| args.out.join("loss.svg"));
    if methods.is_some() && args.nodes > 1 {
        bail!(
            "--compare runs the methods one after the other in child processes of this one and cannot span --nodes; run each method with --method on every node instead"
        );
    }
    let reports = match &methods {
        Some(methods) => {
            let methods = if methods.is_empty() {
                Method::ALL.to_vec()
            } else {
                methods.clone()
            };
            compare(&args, &methods)?
        }
        None => vec![one(&cfg, cfg.model.method, &args)?],
    };
    if args.node_rank > 0 {
        // Node 0 evaluates and writes the report and checkpoints.
        if let Some(r) = reports.first() {
            println!(
                "node {}: {} steps, last loss {:.4}, median step {:.1} ms; node 0 writes the report",
                args.node_rank,
                r.losses.len(),
                r.losses.last().copied().unwrap_or(f32::NAN),
                r.step_ms
            );
        }
        return Ok(());
    }
    print!("{}", report::table(&reports));
    report::json(&reports, &json)?;
    report::plot(&reports, &plot)?;
    println!("report: {}\nplot:   {}", json.display(), plot.display());
    Ok(())
}

/// One method in this process.
fn one(cfg: &ConfigFile, method: Method, args: &Args) -> Result<RunReport> {
    let device = resolve(args.device);
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  loss {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = |e: Event| match e {
        Event::EpochStart { epoch, steps } => {
            bar.reset();
            bar.set_length(steps as u64);
            bar.set_prefix(format!("{method} epoch {}/{}", epoch + 1, cfg.train.epochs));
        }
        Event::Step { loss } => {
            bar.inc(1);
            bar.set_message(format!("{loss:.4}"));
        }
        Event::EpochEnd(e) => bar.println(format!(
            "{method} epoch {}: train loss {:.4}, eval loss {:.4}, accuracy {:.3}, macro-F1 {:.3}",
            e.epoch + 1,
            e.train_loss,
            e.eval_loss,
            e.accuracy,
            e.macro_f1
        )),
        Event::Checkpoint(path) => tracing::info!("checkpoint {}", path.display()),
        Event::Joined { node_rank, nodes } => {
            eprintln!("node {node_rank} of {nodes}: every node is connected, training starts")
        }
    };
    let topology = Topology {
        replicas: args.replicas,
        nodes: args.nodes,
        node_rank: args.node_rank,
        coordinator: args.coordinator.clone(),
        timeout: Duration::from_secs(args.collective_timeout.max(1)),
        check_every: args.param_check_every,
    };
    let report = match device {
        TrainDevice::Cuda => {
            let name = adapter("cuda", sparsecube_runtime::cuda()?);
            let count = sparsecube_runtime::cuda_device_count();
            if args.replicas > count {
                bail!(
                    "--replicas {} on cuda needs {} devices; this machine has {count}",
                    args.replicas,
                    args.replicas
                );
            }
            let devs: Vec<_> = (0..args.replicas)
                .map(burn::backend::cuda::CudaDevice::new)
                .collect();
            parallel::finetune_parallel::<Autodiff<Cuda>>(
                cfg,
                &devs,
                &topology,
                options(
                    method,
                    args,
                    name,
                    &sparsecube_train::cuda_memory_in_use,
                    &mut progress,
                ),
            )?
        }
        TrainDevice::Wgpu => {
            let name = adapter("wgpu", sparsecube_runtime::wgpu()?);
            // Checked before a logical device per replica is opened.
            topology.check(cfg.model.batch)?;
            let devs = sparsecube_runtime::wgpu_replicas(args.replicas)?;
            let first = devs[0].clone();
            let memory = move || sparsecube_train::wgpu_memory_in_use(&first);
            parallel::finetune_parallel::<Autodiff<Wgpu>>(
                cfg,
                &devs,
                &topology,
                options(method, args, name, &memory, &mut progress),
            )
            .inspect_err(|_| sparsecube_train::wgpu_settle(&devs))?
        }
        TrainDevice::Cpu | TrainDevice::Auto => {
            let devs = vec![Default::default(); args.replicas];
            parallel::finetune_parallel::<Autodiff<Cpu>>(
                cfg,
                &devs,
                &topology,
                options(
                    method,
                    args,
                    "cpu (ndarray)".into(),
                    &no_memory,
                    &mut progress,
                ),
            )?
        }
    };
    bar.finish_and_clear();
    for w in &report.warnings {
        eprintln!("warning: {method}: {w}");
    }
    Ok(report)
}

/// "kind (adapter name)" of an opened device.
fn adapter(kind: &str, dev: sparsecube_runtime::Device) -> String {
    let (name, _) = sparsecube_runtime::device_name_and_driver(&dev);
    format!("{kind} ({name})")
}

fn options<'a>(
    method: Method,
    args: &Args,
    device_name: String,
    memory_in_use: &'a dyn Fn() -> Option<u64>,
    progress: &'a mut dyn FnMut(Event),
) -> RunOptions<'a> {
    RunOptions {
        method,
        device_name,
        out_dir: Some(args.out.clone()),
        resume: args.resume,
        progress,
        memory_in_use,
        stop: Some(&crate::signals::STOP),
    }
}

fn no_memory() -> Option<u64> {
    None
}

/// Every method in a child process of this binary, one after the other, on the same data.
fn compare(args: &Args, methods: &[Method]) -> Result<Vec<RunReport>> {
    let exe = std::env::current_exe().context("cannot find this program to run the methods")?;
    let mut reports = Vec::new();
    for (i, method) in methods.iter().enumerate() {
        eprintln!("== {method} ({}/{}) ==", i + 1, methods.len());
        let child_json = args.out.join(format!("report-{method}.json"));
        let child_plot = args.out.join(format!("loss-{method}.svg"));
        let mut cmd = Command::new(&exe);
        cmd.arg("finetune");
        if let Some(c) = &args.config {
            cmd.arg(c);
        }
        cmd.args(["--method", method.name()])
            .args(["--device", device_name(args.device)])
            .arg("--out")
            .arg(&args.out)
            .arg("--json")
            .arg(&child_json)
            .arg("--plot")
            .arg(&child_plot);
        if let Some(e) = args.epochs {
            cmd.args(["--epochs", &e.to_string()]);
        }
        if let Some(c) = &args.checkpoint {
            cmd.arg("--checkpoint").arg(c);
        }
        if let Some(n) = args.max_grad_norm {
            cmd.args(["--max-grad-norm", &n.to_string()]);
        }
        if let Some(d) = &args.data {
            cmd.arg("--data").arg(d);
        }
        if args.resume {
            cmd.arg("--resume");
        }
        if args.quiet {
            cmd.arg("--quiet");
        }
        if args.replicas > 1 {
            cmd.args(["--replicas", &args.replicas.to_string()]);
        }
        let status = cmd
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("cannot start the {method} run"))?;
        if !status.success() {
            bail!("the {method} run failed ({status}); its error is above");
        }
        reports.extend(read_reports(&child_json)?);
    }
    Ok(reports)
}

fn device_name(d: TrainDevice) -> &'static str {
    match d {
        TrainDevice::Auto => "auto",
        TrainDevice::Cpu => "cpu",
        TrainDevice::Wgpu => "wgpu",
        TrainDevice::Cuda => "cuda",
    }
}

fn read_reports(path: &Path) -> Result<Vec<RunReport>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the run report `{}`", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("the run report `{}`", path.display()))
}
