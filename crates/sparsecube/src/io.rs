//! safetensors in and out. Inputs may be f32, f64, f16 or bf16 (widened to f64 for the
//! reference executor) or i64; outputs are written as f32 and i64, to a temporary file in the
//! destination folder that is renamed into place only once complete.

use anyhow::{Context, Result};
use kernels_ir::reference::{TensorMap, Value};
use safetensors::{Dtype, tensor::TensorView};
use std::path::Path;

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<TensorMap> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read inputs `{}`", path.display()))?;
    sparsecube_runtime::io::read_tensors(&bytes)
        .with_context(|| format!("inputs `{}`", path.display()))
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

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed (the
/// training runtime's helper: the file keeps the permissions of the one it replaces).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(sparsecube_train::checkpoint::write_atomic(path, bytes)?)
}
