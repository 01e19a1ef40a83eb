//! Named tensors in safetensors files, written atomically: the bytes go to a temporary file in
//! the target's directory, are flushed to disk, and the file is renamed over the target. A crash
//! (even `kill -9`) at any point leaves the previous file whole. Training checkpoints hold what
//! the method trains (and integer index tensors: SaRA's mask), plus metadata (step, epoch,
//! method, config) in the safetensors header.

use crate::TrainError;
use crate::params::Values;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The names of [`write_atomic`]'s temporary files: `.sparsecube-NAME-XXXXXX.tmp`.
const TEMP_PREFIX: &str = ".sparsecube-";
const TEMP_SUFFIX: &str = ".tmp";

/// Named tensors: shape and values.
pub type Tensors = BTreeMap<String, (Vec<usize>, Values)>;

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source: std::io::Error| TrainError::Io { path, what, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io("create the directory of"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&dir)
        .map_err(io("create a temporary file beside"))?;
    tmp.write_all(bytes).map_err(io("write"))?;
    // The file gets the target's permissions when it replaces one, else rw-r--r-- (temporary
    // files are created private).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode());
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("set the permissions of"))?;
    }
    tmp.as_file().sync_all().map_err(io("flush"))?;
    tmp.persist(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        what: "rename the finished file onto",
        source: e.error,
    })?;
    Ok(())
}

/// The start of the names of [`write_atomic`]'s temporary files for `path`:
/// `.sparsecube-NAME-`, so that a cleanup for one target never touches another's.
fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    format!("{TEMP_PREFIX}{}-", name.unwrap_or_default())
}

/// Removes the temporary files [`write_atomic`] left beside `path` when its process was killed
/// mid-write (`.sparsecube-NAME-XXXXXX.tmp`); called when a run resumes, since the process that
/// wrote them is gone. Failures are ignored: a leftover is litter, never state.
pub fn remove_stale_temporaries(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Serialises `tensors` with header `metadata` and writes them to `path` atomically.
pub fn save(
    path: &Path,
    tensors: &Tensors,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let bytes: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let (bytes, dtype) = match values {
                Values::F32(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::F32),
                Values::I64(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::I64),
            };
            (name.clone(), bytes, dtype, shape.clone())
        })
        .collect();
    let bad = |e: safetensors::SafeTensorError| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: e.to_string(),
        fix: "report this: the tensors did not serialise",
    };
    let views = bytes
        .iter()
        .map(|(name, data, dtype, shape)| {
            TensorView::new(*dtype, shape.clone(), data).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let data = safetensors::serialize(views, Some(metadata)).map_err(bad)?;
    write_atomic(path, &data)
}

/// Reads every tensor of `path` (f32, f16, bf16 as f32; integers as i64) and the header's
/// metadata.
pub fn load(path: &Path) -> Result<(Tensors, HashMap<String, String>), TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        what: "read",
        source,
    })?;
    from_bytes(&bytes, path)
}

/// [`load`] of a file's bytes (`path` names it in errors). The header (dtypes, shapes, offsets)
/// is checked against the bytes there are before any tensor is read.
pub fn from_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<(Tensors, HashMap<String, String>), TrainError> {
    let bad = |problem: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem,
        fix: "the file is not a whole safetensors file; write it again (or resume from another)",
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut out = Tensors::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values = match view.dtype() {
            Dtype::F32 => Values::F32(
                d.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::F16 => Values::F32(
                d.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            Dtype::BF16 => Values::F32(
                d.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            Dtype::I64 => Values::I64(
                d.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            Dtype::I32 => Values::I64(
                d.chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            ),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {other:?}; expected F32, F16, BF16, I64 or I32"
                )));
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok((out, metadata))
}
