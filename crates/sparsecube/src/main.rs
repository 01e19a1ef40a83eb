//! `sparsecube`: run one sparse op on safetensors files, check IR text files, and the demo that
//! runs every method's reference op on a default problem.

mod bench;
mod demo;
mod io;
mod selftest;

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
    #[command(subcommand)]
    command: Command,
}

/// Where an op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    /// The fastest device present: CUDA, else wgpu, else the reference executor (which also runs
    /// the ops that have no generated kernel yet).
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
        #[arg(long, conflicts_with_all = ["op", "dims", "params"])]
        file: Option<PathBuf>,
        /// A problem size, NAME=VALUE (repeatable), e.g. --dim B=16 --dim L=512.
        #[arg(long = "dim", value_name = "NAME=VALUE")]
        dims: Vec<String>,
        /// A pattern parameter, NAME=VALUE (repeatable), e.g. --param topk=64.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Storage dtype of the floating-point tensors.
        #[arg(long, default_value = "f32")]
        dtype: DType,
        /// Forward or backward (the same kernels serve both for spt-attention).
        #[arg(long, default_value = "forward")]
        direction: Direction,
        /// Source language.
        #[arg(long, value_enum)]
        target: GenTarget,
        /// Instead of the sources, compile each CUDA kernel with NVRTC (compute_90) and ptxas
        /// (sm_90) and print registers, stack, spills, shared memory and barriers. Needs
        /// SPARSECUBE_CUDA_WHEELS (see scripts/fetch-cuda-wheels.sh).
        #[arg(long)]
        resources: bool,
    },
    /// List the devices present: CUDA, wgpu adapters, the reference executor.
    Devices,
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
    /// Time the kernels of a benchmark suite on one device (median of repeated forward + backward
    /// steps, peak device memory), as a table or JSON.
    Bench {
        /// The suite: `paper` (the published shapes; see benches/torch_baselines.py).
        #[arg(long, default_value = "paper")]
        suite: String,
        /// Where the kernels run (auto: CUDA, else wgpu).
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// Problem sizes.
        #[arg(long, value_enum, default_value_t = bench::Scale::Full)]
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
    /// Run every method's reference op (forward + backward) on a built-in problem and print a
    /// table of shapes, FLOPs and kept entries against dense.
    Demo {
        /// Seed of the generated inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            dims,
            params,
            dtype,
            direction,
            target,
            resources,
        } => gen_sources(
            op,
            file.as_deref(),
            &dims,
            &params,
            dtype,
            direction,
            target,
            resources,
        ),
        Command::Devices => devices(),
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
            suite,
            device,
            scale,
            warmup,
            repeats,
            json,
            list,
            workload,
        } => {
            if suite != "paper" {
                Err(anyhow::anyhow!(
                    "unknown suite `{suite}`: the suites are `paper`"
                ))
            } else if list {
                bench::run(
                    None,
                    scale,
                    workload.as_deref(),
                    warmup,
                    repeats,
                    json,
                    true,
                )
            } else {
                open_kernel_device(device).and_then(|dev| {
                    bench::run(
                        Some(&dev),
                        scale,
                        workload.as_deref(),
                        warmup,
                        repeats,
                        json,
                        false,
                    )
                })
            }
        }
        Command::Demo { seed } => demo::run(seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_params(params: &[String]) -> Result<Vec<(String, String)>> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((n, v)) if !n.trim().is_empty() && !v.trim().is_empty() => {
                Ok((n.trim().to_string(), v.trim().to_string()))
            }
            _ => bail!("--param `{p}` is not NAME=VALUE (for example --param topk=16)"),
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

fn gen_sources(
    op: Option<OpKind>,
    file: Option<&std::path::Path>,
    dims: &[String],
    params: &[String],
    dtype: DType,
    direction: Direction,
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
    let specs = match (op, file) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            let module: Module = text
                .parse()
                .with_context(|| format!("`{}`", path.display()))?;
            verify_module(&module).with_context(|| format!("`{}`", path.display()))?;
            module.kernels
        }
        (Some(op), None) => {
            let dims = parse_params(dims)?
                .into_iter()
                .map(|(n, v)| {
                    let v: usize = v.parse().map_err(|_| {
                        anyhow::anyhow!("--dim {n}={v}: `{v}` is not a non-negative integer")
                    })?;
                    Ok((n, v))
                })
                .collect::<Result<Vec<_>>>()?;
            let pattern = kernels_ir::Pattern::from_args(op.pattern_kind(), parse_params(params)?)?;
            let mut b = KernelSpec::builder(op.name().replace('-', "_"), op)
                .pattern(pattern)
                .dtype(dtype)
                .direction(direction);
            for (n, v) in &dims {
                b = b.dim(n, *v);
            }
            vec![b.build()?]
        }
        (None, None) => bail!("give an OP or --file"),
    };
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
                    for r in cuda.check(k.kernel, &k.source)? {
                        println!("{} / {}: {r}", spec.name, k.kernel);
                    }
                }
                None => println!("// ===== {} / {} =====\n{}", spec.name, k.kernel, k.source),
            }
        }
    }
    Ok(())
}

/// The device generated kernels run on: `auto` is CUDA, else wgpu (never the reference).
fn open_kernel_device(device: Device) -> Result<sparsecube_runtime::Device> {
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
    for kind in [DeviceKind::Cuda, DeviceKind::Wgpu, DeviceKind::Reference] {
        match sparsecube_runtime::describe(kind) {
            Ok(text) => println!("{:<10} present: {text}", kind.name()),
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
