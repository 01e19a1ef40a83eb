//! safetensors in and out. Inputs may be f32, f64, f16 or bf16 (widened to f64 for the
//! reference executor) or i64; outputs are written as f32 and i64, to a temporary file in the
//! destination folder that is renamed into place only once complete.

use anyhow::{Context, Result, bail};
use kernels_ir::reference::{IndexTensor, Tensor, TensorMap, Value};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::io::Write;
use std::path::Path;

fn floats<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<TensorMap> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read inputs `{}`", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("`{}` is not a valid safetensors file", path.display()))?;
    let mut map = TensorMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let value = match view.dtype() {
            Dtype::F32 => Value::F(Tensor::new(
                shape,
                floats(data, |b| f64::from(f32::from_le_bytes(b))),
            )?),
            Dtype::F64 => Value::F(Tensor::new(shape, floats(data, f64::from_le_bytes))?),
            Dtype::F16 => Value::F(Tensor::new(
                shape,
                floats(data, |b| half::f16::from_le_bytes(b).to_f64()),
            )?),
            Dtype::BF16 => Value::F(Tensor::new(
                shape,
                floats(data, |b| half::bf16::from_le_bytes(b).to_f64()),
            )?),
            Dtype::I64 => Value::I(IndexTensor::new(
                shape,
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )?),
            other => bail!(
                "tensor `{name}` in `{}` has dtype {other:?}; run reads F32, F64, F16, BF16 or I64",
                path.display()
            ),
        };
        map.insert(name, value);
    }
    Ok(map)
}

/// Serialises `map` (floats as f32, indices as i64).
pub fn to_bytes(map: &TensorMap) -> Result<Vec<u8>> {
    let buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = map
        .iter()
        .map(|(name, v)| match v {
            Value::F(t) => (
                name.clone(),
                Dtype::F32,
                t.shape.clone(),
                t.to_f32().iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Value::I(t) => (
                name.clone(),
                Dtype::I64,
                t.shape.clone(),
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(n, d, s, b)| Ok((n.as_str(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, None)?)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".sparsecube-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in `{}`", dir.display()))?;
    tmp.write_all(bytes).context("cannot write the output")?;
    tmp.as_file()
        .sync_all()
        .context("cannot flush the output")?;
    tmp.persist(path)
        .with_context(|| format!("cannot move the output into `{}`", path.display()))?;
    Ok(())
}
