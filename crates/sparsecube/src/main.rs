//! `sparsecube`: run one sparse op on safetensors files, check IR text files, and the demo that
//! runs every method's reference op on a default problem.

mod bench;
mod demo;
mod finetune;
mod io;
mod selftest;
mod signals;
mod tune;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kernels_ir::infer::spec_for_inputs;
use kernels_ir::reference::{self, TensorMap};
use kernels_ir::{DType, Direction, KernelSpec, Module, OpKind, verify_module};
use sparsecube_codegen::LowerError;
use sparsecube_codegen::cuda_check::{CudaToolchain, WHEELS_ENV};
use sparsecube_codegen::emit::{self, Target};
use sparsecube_runtime::{DeviceKind, RuntimeError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sparsecube",
    version,
    about = "Sparse fine-tuning kernels: run, check and compare sparse ops"
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Problem sizes, pattern arguments and schedule of one spec on the command line; sizes and
/// arguments not given come from the op's example problem (`KernelSpec::example`).
#[derive(clap::Args, Clone, Debug)]
struct SpecArgs {
    /// A problem size, NAME=VALUE (repeatable), e.g. --dim B=16 --dim L=512; defaults: the op's
    /// example problem (spt-attention B=2 H=4 L=256 D=64, routed-ffn T=512 d_model=512
    /// d_ff=2048, linears T=512 in=out=1024, monarch N=512 with 1024 → 1024 in 4 blocks, ...).
    #[arg(long = "dim", visible_alias = "shape", value_name = "NAME=VALUE")]
    dims: Vec<String>,
    /// A pattern parameter, NAME=VALUE (repeatable), e.g. --param topk=64.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Storage dtype of the floating-point tensors.
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// Forward or backward.
    #[arg(long, default_value = "forward")]
    direction: Direction,
    /// Schedule fields, NAME=VALUE[,NAME=VALUE...], e.g. --schedule tile_k=16,
    /// --schedule mma=cmma,precision=tf32 or --schedule fused=false (the fields each op reads:
    /// `sparsecube tune --help`).
    #[arg(long, value_name = "FIELDS")]
    schedule: Option<String>,
}

/// Where an op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    /// The fastest device present: CUDA, else wgpu, else the f64 reference executor.
    Auto,
    /// The f64 reference executor (results written as f32).
    Reference,
    /// Generated kernels on a Vulkan/Metal/DX12 adapter through wgpu.
    Wgpu,
    /// Generated kernels on an NVIDIA GPU through CUDA.
    Cuda,
}

/// Source language of `gen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GenTarget {
    /// CUDA C++, as handed to NVRTC.
    Cuda,
    /// WGSL, as handed to the wgpu driver.
    Wgsl,
}

#[derive(Subcommand)]
enum Command {
    /// Run one operation on tensors from a safetensors file and write every named output.
    ///
    /// When the upstream gradient (`dout`, `dy` or `dlogits`) is among the inputs, the gradients
    /// are written too. Shapes and shape-determined params (codebook size, blocks, ranks) are read
    /// from the inputs; other params come from --param.
    Run {
        /// The op: spt-attention, pq-encode, routed-ffn, monarch, monarch-project,
        /// block-diag-linear, sara-linear, pst-linear, cbm-head, dense-linear.
        op: OpKind,
        /// Input tensors (safetensors).
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the outputs (safetensors; replaced atomically).
        #[arg(long)]
        output: PathBuf,
        /// A pattern parameter, NAME=VALUE (repeatable), e.g. topk=16, causal=true, gate=none.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Where to run it.
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
    },
    /// Parse and verify IR text files; print every error found.
    Check {
        /// IR text files (`kernel NAME { ... }` blocks).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the generated CUDA C++ or WGSL of every kernel an op lowers to (no GPU needed).
    ///
    /// The op comes either from the command line (OP with --dim and --param) or from an IR file
    /// (--file), whose every kernel is printed.
    Gen {
        /// The op (e.g. spt-attention); omit it with --file.
        #[arg(required_unless_present = "file")]
        op: Option<OpKind>,
        /// An IR text file instead of OP.
        #[arg(long, conflicts_with_all = ["op", "dims", "params", "schedule"])]
        file: Option<PathBuf>,
        #[command(flatten)]
        spec: SpecArgs,
        /// Source language.
        #[arg(long, value_enum, required_unless_present = "plan")]
        target: Option<GenTarget>,
        /// Instead of the sources, compile each CUDA kernel with NVRTC (compute_90) and ptxas
        /// (sm_90) and print registers, stack, spills, shared memory and barriers. Needs
        /// SPARSECUBE_CUDA_WHEELS (see scripts/fetch-cuda-wheels.sh).
        #[arg(long)]
        resources: bool,
        /// Instead of the sources, print the launch plans the kernels come from — the training
        /// step's forward and backward on an sm_90 GPU: every launch (kernel, comptime config,
        /// cubes, arguments) and the buffer table with bytes, roles and the peak.
        #[arg(long, conflicts_with_all = ["target", "resources"])]
        plan: bool,
    },
    /// List the devices present (CUDA, the wgpu adapter, the reference executor) with their
    /// properties and the tuning cache each uses.
    Devices,
    /// Autotune: time every schedule the IR's space holds for a spec (a training step each:
    /// forward + backward) and keep the fastest in the device's tuning cache.
    ///
    /// The candidates are the spec's own schedule (the fallback, what runs untuned) and the
    /// other values of the schedule fields its op reads, as far as the device runs them: for
    /// every op on the tile program (routed-ffn, dense-linear, sara-linear, pst-linear,
    /// nm-linear, block-diag-linear, monarch, cbm-head) tile_m, tile_n = 64 | 128 | 32,
    /// tile_k = 16 | 32 | 8, vector = 4 | 1 | 2, stages = 2 | 1 and mma = auto | scalar | cmma
    /// (tensor cores: CUDA with f16/bf16, or f32 with precision=tf32, which is never tuned);
    /// fused = true | false and lanes = 8 | 4 | 16 | 32 for spt-attention.
    /// Ops without such fields have one candidate and are recorded without timing. Keys bucket
    /// the sizes to powers of two. The cache is a JSON file per device, driver and version in
    /// $SPARSECUBE_CACHE_DIR, else $XDG_CACHE_HOME/sparsecube, else ~/.cache/sparsecube; a
    /// second run reuses it (the table says "from the cache"). Launches (`run`, `selftest`,
    /// the training runtime) use the cached winner of a default-schedule spec;
    /// SPARSECUBE_AUTOTUNE=off|cached|on (default cached; on also tunes unseen keys).
    Tune {
        /// The op (e.g. routed-ffn); omit it with --file or --model, or omit all three to tune
        /// every op that has schedule fields at its example size.
        op: Option<OpKind>,
        /// An IR text file: every kernel in it is tuned.
        #[arg(long, conflicts_with_all = ["op", "dims", "params", "schedule", "model"])]
        file: Option<PathBuf>,
        /// A model config (TOML, `[model]`: batch, seq_len, d_model, heads, d_ff, dtype, method =
        /// dense | lora | spt | sara | pst | monarch | cbm, blocks, concepts, classes): the kernels
        /// of one layer's training step are tuned.
        #[arg(long, value_name = "CONFIG.toml", conflicts_with_all = ["op", "dims", "params", "schedule"])]
        model: Option<PathBuf>,
        #[command(flatten)]
        spec: SpecArgs,
        /// Where the kernels run (auto: CUDA, else wgpu).
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// Seconds for all sweeps together: each candidate times one step, then as many of
        /// --repeats more as fit its share of what is left; no candidate starts after it (a
        /// started spec's fallback always runs once; specs not started are reported as skipped).
        #[arg(long, value_name = "SECONDS")]
        budget: Option<f64>,
        /// Timed steps per candidate after a first one that measures the cost (their median
        /// counts; the first alone when the budget leaves no room).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Untimed steps per candidate first (compilation, allocator warm-up).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Tune again even when the cache holds the key.
        #[arg(long)]
        force: bool,
        /// The cache directory instead of the user cache directory.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Also write the results as JSON to REPORT (replaced atomically).
        #[arg(long, value_name = "REPORT")]
        json: Option<PathBuf>,
        /// Print the specs (IR text) and each one's candidates; time nothing, open no device.
        #[arg(long)]
        list: bool,
    },
    /// Compare every generated kernel (forward and backward) with the reference executor on
    /// random shapes, on one device; exits non-zero when any case fails.
    Selftest {
        /// Where the kernels run (auto: CUDA, else wgpu).
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// Random cases (each runs forward and backward).
        #[arg(long, default_value_t = 48)]
        cases: usize,
        /// Longest sequence length drawn; from 256 on, fixed cases at L = 512 and 389 (D = 64)
        /// join, in every dtype.
        #[arg(long, default_value_t = 300)]
        max_len: usize,
        /// Seed of the case draw.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Only two small fixed cases per dtype that launch every kernel once (what
        /// compute-sanitizer runs over).
        #[arg(long)]
        quick: bool,
    },
    /// Time our kernels against the dense baseline in the same run on one device: the median of
    /// repeated, device-synchronised training steps (forward + backward) after warm-up, the peak
    /// device memory, and the ratios sparse / dense of both.
    ///
    /// Suites: `all` (one workload per op with kernels and a dense counterpart — spt-attention,
    /// routed-ffn, monarch, block-diag-linear, sara-linear, pst-linear, cbm-head), `paper` (the
    /// published shapes; see benches/torch_baselines.py). Default-schedule specs run their tuned
    /// schedule when the tuning cache has one (`sparsecube tune`; SPARSECUBE_AUTOTUNE=off: never).
    Bench {
        /// Only this op's workloads of the suite (e.g. `sparsecube bench routed-ffn`).
        op: Option<OpKind>,
        /// The suite: `all` or `paper`.
        #[arg(long, default_value = "all")]
        suite: String,
        /// Where the kernels run (auto: CUDA, else wgpu).
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// Problem sizes (auto: full on CUDA, small elsewhere).
        #[arg(long, value_enum, default_value_t = bench::Scale::Auto)]
        scale: bench::Scale,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 20)]
        repeats: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the suite's workloads (JSON) and run nothing; needs no device.
        #[arg(long)]
        list: bool,
        /// Only the workloads whose id contains this text (e.g. `attention/B16`).
        #[arg(long)]
        workload: Option<String>,
    },
    /// Fine-tune a transformer with a sparse method on the built-in classification task: the
    /// main job. Without CONFIG, the embedded default (a MiniLM-shaped encoder scaled down to
    /// 2 layers, d 64) on CUDA if present, else a wgpu GPU, else the CPU.
    ///
    /// Prints per-epoch evaluation, then a table (trainable parameters, peak memory, median
    /// step time, final losses and accuracy); writes the JSON report, an SVG plot of the loss
    /// curves, and a checkpoint per epoch (only what the method trains; written atomically) to
    /// --out. --resume continues from the last checkpoint there.
    Finetune(finetune::Args),
    /// Run every method's reference op (forward + backward) on a built-in problem and print a
    /// table of shapes, FLOPs and kept entries against dense.
    Demo {
        /// Seed of the generated inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn init_logs(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.verbose);
    let result = match cli.command {
        Command::Run {
            op,
            inputs,
            output,
            params,
            device,
        } => run(op, &inputs, &output, &params, device),
        Command::Check { files } => check(&files),
        Command::Gen {
            op,
            file,
            spec,
            target,
            resources,
            plan,
        } => match target {
            Some(target) if !plan => gen_sources(op, file.as_deref(), &spec, target, resources),
            _ => gen_plans(op, file.as_deref(), &spec),
        },
        Command::Devices => devices(),
        Command::Tune {
            op,
            file,
            model,
            spec,
            device,
            budget,
            repeats,
            warmup,
            force,
            cache_dir,
            json,
            list,
        } => tune_cmd(
            op,
            file.as_deref(),
            model.as_deref(),
            &spec,
            device,
            budget,
            (warmup, repeats),
            force,
            cache_dir.as_deref(),
            json.as_deref(),
            list,
        ),
        Command::Selftest {
            device,
            cases,
            max_len,
            seed,
            quick,
        } => open_kernel_device(device).and_then(|dev| {
            selftest::run(
                &dev,
                &selftest::Options {
                    cases,
                    max_len: max_len.max(1),
                    seed,
                    quick,
                },
            )
        }),
        Command::Bench {
            op,
            suite,
            device,
            scale,
            warmup,
            repeats,
            json,
            list,
            workload,
        } => {
            let filter = bench::Filter {
                op,
                workload: workload.as_deref(),
            };
            match bench::Suite::from_name(&suite) {
                Err(e) => Err(e),
                Ok(suite) if list => {
                    bench::run(suite, None, scale, &filter, warmup, repeats, json, true)
                }
                Ok(suite) => open_kernel_device(device).and_then(|dev| {
                    bench::run(
                        suite,
                        Some(&dev),
                        scale,
                        &filter,
                        warmup,
                        repeats,
                        json,
                        false,
                    )
                }),
            }
        }
        Command::Demo { seed } => demo::run(seed),
        // One run in this process: a signal stops it between steps. `--compare` leaves the
        // signals at their defaults: Ctrl-C reaches the child (which stops cleanly) and this
        // process alike, and a SIGTERM to this process ends it.
        Command::Finetune(args) if args.compare.is_none() => {
            signals::install().and_then(|()| finetune::run(args))
        }
        Command::Finetune(args) => finetune::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<sparsecube_train::TrainError>(),
                    Some(sparsecube_train::TrainError::Interrupted { .. })
                )
            });
            if interrupted {
                ExitCode::from(signals::exit_status())
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn parse_params(params: &[String]) -> Result<Vec<(String, String)>> {
    parse_pairs("--param", "topk=16", params)
}

/// `NAME=VALUE` items of option `flag` (`example` shows one in the error).
fn parse_pairs(flag: &str, example: &str, items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|p| match p.split_once('=') {
            Some((n, v)) if !n.trim().is_empty() && !v.trim().is_empty() => {
                Ok((n.trim().to_string(), v.trim().to_string()))
            }
            _ => bail!("{flag} `{p}` is not NAME=VALUE (for example {flag} {example})"),
        })
        .collect()
}

fn run(
    op: OpKind,
    inputs: &std::path::Path,
    output: &std::path::Path,
    params: &[String],
    device: Device,
) -> Result<()> {
    let requested = match device {
        Device::Auto => None,
        Device::Reference => Some(DeviceKind::Reference),
        Device::Wgpu => Some(DeviceKind::Wgpu),
        Device::Cuda => Some(DeviceKind::Cuda),
    };
    let params = parse_params(params)?;
    let tensors = io::read(inputs)?;
    let shapes = tensors
        .iter()
        .map(|(n, v)| (n.clone(), v.shape().to_vec()))
        .collect();
    let upstream = op.upstream_grad().filter(|g| tensors.contains_key(*g));

    let fwd = spec_for_inputs(op, Direction::Forward, &params, &shapes)
        .with_context(|| format!("cannot run {op} on `{}`", inputs.display()))?;
    let dev = sparsecube_runtime::open(requested)?;
    // `auto` runs ops that have no generated kernel yet on the reference executor.
    let exec = |spec: &KernelSpec, ins: &TensorMap| -> Result<TensorMap> {
        match sparsecube_runtime::run(&dev, spec, ins) {
            Err(RuntimeError::Lower(LowerError::Unsupported { .. })) if requested.is_none() => {
                Ok(reference::run(spec, ins)?)
            }
            other => Ok(other?),
        }
    };
    let fwd_inputs: TensorMap = tensors
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != upstream)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut outputs = exec(&fwd, &fwd_inputs).with_context(|| format!("{op} forward"))?;
    if upstream.is_some() {
        let bwd = spec_for_inputs(op, Direction::Backward, &params, &shapes)
            .with_context(|| format!("cannot run the backward of {op}"))?;
        outputs.extend(exec(&bwd, &tensors).with_context(|| format!("{op} backward"))?);
    }
    io::write_atomic(output, &io::to_bytes(&outputs)?)?;
    for (name, v) in &outputs {
        eprintln!("wrote {name} {:?}", v.shape());
    }
    Ok(())
}

/// The specs of `OP` (with its command-line sizes, arguments and schedule over its example
/// problem) or of every kernel in `--file`.
fn specs_from_cli(
    op: Option<OpKind>,
    file: Option<&std::path::Path>,
    args: &SpecArgs,
) -> Result<Vec<KernelSpec>> {
    match (op, file) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            let module: Module = text
                .parse()
                .with_context(|| format!("`{}`", path.display()))?;
            verify_module(&module).with_context(|| format!("`{}`", path.display()))?;
            Ok(module.kernels)
        }
        (Some(op), None) => Ok(vec![spec_from_cli(op, args)?]),
        (None, None) => bail!("give an OP or --file"),
    }
}

/// One spec of `op`: the example problem, overridden by the command line.
fn spec_from_cli(op: OpKind, args: &SpecArgs) -> Result<KernelSpec> {
    let example = KernelSpec::example(op);
    let given = parse_params(&args.params)?;
    let mut pattern_args: Vec<(String, String)> = example
        .pattern
        .args()
        .into_iter()
        .filter(|(n, _)| !given.iter().any(|(g, _)| g == n))
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    pattern_args.extend(given);
    let pattern = kernels_ir::Pattern::from_args(op.pattern_kind(), pattern_args)?;
    let mut dims = example.dims.clone();
    for (n, v) in parse_pairs("--dim", "T=512", &args.dims)? {
        let v: usize = v
            .parse()
            .map_err(|_| anyhow::anyhow!("--dim {n}={v}: `{v}` is not a non-negative integer"))?;
        dims.insert(n, v);
    }
    let schedule = match &args.schedule {
        None => kernels_ir::Schedule::default(),
        Some(text) => {
            let items: Vec<String> = text.split(',').map(|s| s.trim().to_string()).collect();
            kernels_ir::Schedule::from_args(parse_pairs("--schedule", "tile_k=16", &items)?)
                .with_context(|| format!("--schedule `{text}`"))?
        }
    };
    let mut b = KernelSpec::builder(op.name().replace('-', "_"), op)
        .pattern(pattern)
        .dtype(args.dtype)
        .direction(args.direction)
        .schedule(schedule);
    for (n, v) in &dims {
        b = b.dim(n, *v);
    }
    Ok(b.build()?)
}

#[allow(clippy::too_many_arguments)]
fn tune_cmd(
    op: Option<OpKind>,
    file: Option<&std::path::Path>,
    model: Option<&std::path::Path>,
    args: &SpecArgs,
    device: Device,
    budget: Option<f64>,
    (warmup, repeats): (usize, usize),
    force: bool,
    cache_dir: Option<&std::path::Path>,
    json: Option<&std::path::Path>,
    list: bool,
) -> Result<()> {
    let budget = match budget {
        Some(b) if !(b.is_finite() && b > 0.0) => {
            bail!("--budget {b}: give a positive number of seconds")
        }
        b => b.map(std::time::Duration::from_secs_f64),
    };
    let specs = if let Some(path) = model {
        sparsecube_train::config::ConfigFile::read(path)?
            .model
            .specs()
            .with_context(|| format!("`{}`", path.display()))?
    } else if op.is_none() && file.is_none() {
        OpKind::ALL
            .iter()
            .filter(|op| !kernels_ir::Knob::of(**op).is_empty())
            .map(|op| spec_from_cli(*op, args))
            .collect::<Result<Vec<_>>>()?
    } else {
        specs_from_cli(op, file, args)?
    };
    if list {
        for spec in &specs {
            let labels: Vec<String> = spec
                .schedule
                .space(spec.op)
                .iter()
                .map(|s| s.label(spec.op))
                .collect();
            println!("# candidates: {}\n{spec}\n", labels.join(" | "));
        }
        return Ok(());
    }
    let dev = open_kernel_device(device)?;
    tune::run(
        &dev,
        &tune::Request {
            specs,
            budget,
            repeats,
            warmup,
            force,
            cache_dir,
            json,
        },
    )
}

fn gen_sources(
    op: Option<OpKind>,
    file: Option<&std::path::Path>,
    args: &SpecArgs,
    target: GenTarget,
    resources: bool,
) -> Result<()> {
    let toolchain = if resources {
        if target != GenTarget::Cuda {
            bail!("--resources reports ptxas resources: use it with --target cuda");
        }
        Some(CudaToolchain::from_env()?.ok_or_else(|| {
            anyhow::anyhow!("--resources needs NVRTC and ptxas: run scripts/fetch-cuda-wheels.sh and export {WHEELS_ENV}=<the folder it prints>")
        })?)
    } else {
        None
    };
    let specs = specs_from_cli(op, file, args)?;
    if let Some(cuda) = &toolchain {
        let (major, minor) = cuda.nvrtc_version()?;
        println!(
            "# {cuda:?}: NVRTC {major}.{minor}, ptxas {}",
            cuda.ptxas_version()?
        );
    }
    let target = match target {
        GenTarget::Cuda => Target::Cuda,
        GenTarget::Wgsl => Target::Wgsl,
    };
    for spec in &specs {
        for k in emit::sources(spec, target)? {
            match &toolchain {
                Some(cuda) => {
                    for r in cuda.check(&k.kernel, &k.source)? {
                        println!("{} / {}: {r}", spec.name, k.kernel);
                    }
                }
                None => println!("// ===== {} / {} =====\n{}", spec.name, k.kernel, k.source),
            }
        }
    }
    Ok(())
}

/// Prints the launch plans of each spec (`gen --plan`).
fn gen_plans(op: Option<OpKind>, file: Option<&std::path::Path>, args: &SpecArgs) -> Result<()> {
    for (i, spec) in specs_from_cli(op, file, args)?.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("# {}: {}", spec.name, spec.op);
        print!("{}", emit::printed_lowering(spec)?);
    }
    Ok(())
}

/// The device generated kernels run on: `auto` is CUDA, else wgpu (never the reference).
fn open_kernel_device(device: Device) -> Result<sparsecube_runtime::Device> {
    let dev = open_kernel_device_quietly(device)?;
    let (name, driver) = sparsecube_runtime::device_name_and_driver(&dev);
    tracing::info!("device: {} ({name}, {driver})", dev.kind().name());
    Ok(dev)
}

fn open_kernel_device_quietly(device: Device) -> Result<sparsecube_runtime::Device> {
    Ok(match device {
        Device::Auto => sparsecube_runtime::cuda().or_else(|_| sparsecube_runtime::wgpu())?,
        Device::Cuda => sparsecube_runtime::cuda()?,
        Device::Wgpu => sparsecube_runtime::wgpu()?,
        Device::Reference => bail!(
            "the reference executor runs no generated kernels: give --device cuda, wgpu or auto"
        ),
    })
}

fn devices() -> Result<()> {
    use sparsecube_runtime::tune::{DeviceIdentity, TuneCache, cache_dir};
    for kind in [DeviceKind::Cuda, DeviceKind::Wgpu, DeviceKind::Reference] {
        match sparsecube_runtime::describe(kind) {
            Ok(text) => {
                println!("{:<10} present: {text}", kind.name());
                if kind == DeviceKind::Reference {
                    continue;
                }
                let dev = sparsecube_runtime::open(Some(kind))?;
                let identity = DeviceIdentity::of(&dev);
                println!("{:<10}   device: {}", "", identity.device);
                println!("{:<10}   driver: {}", "", identity.driver);
                let cache = TuneCache::open(&cache_dir(), identity);
                let state = match &cache.discarded {
                    Some(why) => format!("unusable ({why}), rebuilt by the next `tune`"),
                    None if cache.path().exists() => format!("{} tuned key(s)", cache.len()),
                    None => "none yet (`sparsecube tune` writes it)".into(),
                };
                println!(
                    "{:<10}   tuning cache: {} — {state}",
                    "",
                    cache.path().display()
                );
            }
            Err(e) => println!("{:<10} absent: {e}", kind.name()),
        }
    }
    Ok(())
}

fn check(files: &[PathBuf]) -> Result<()> {
    let mut failed = 0;
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read `{}`", file.display()))?;
        match text.parse::<Module>() {
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                failed += 1;
            }
            Ok(module) => match verify_module(&module) {
                Ok(()) => println!(
                    "{}: {} kernel(s) verified",
                    file.display(),
                    module.kernels.len()
                ),
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{}: {e}", file.display());
                    }
                    failed += 1;
                }
            },
        }
    }
    if failed > 0 {
        bail!("{failed} of {} file(s) failed to check", files.len());
    }
    Ok(())
}
