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

/// One safetensors file of f32 tensors.
fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let le = |d: &[f32]| d.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_as(
        path,
        Dtype::F32,
        tensors.iter().map(|(n, s, d)| (*n, s, le(d))),
    );
}

/// One safetensors file of f64 tensors.
fn write_f64(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f64>)]) {
    let le = |d: &[f64]| d.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_as(
        path,
        Dtype::F64,
        tensors.iter().map(|(n, s, d)| (*n, s, le(d))),
    );
}

/// One safetensors file of `dtype` tensors given as (name, shape, little-endian bytes).
fn write_as<'a>(
    path: &Path,
    dtype: Dtype,
    tensors: impl Iterator<Item = (&'a str, &'a Vec<usize>, Vec<u8>)>,
) {
    let tensors: Vec<_> = tensors.collect();
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| (*n, TensorView::new(dtype, s.to_vec(), b).unwrap()))
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

mod faults;
mod finetune;
mod kernels;
mod ops;
mod parallel;

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
