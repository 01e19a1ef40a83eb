//! The inputs of one op run, from safetensors bytes: f32, f64, f16 and bf16 tensors (widened to
//! f64, the reference executor's type) and i64 tensors. The header (dtypes, shapes, offsets) is
//! checked by `safetensors` before anything is read: a claimed shape larger than the bytes there
//! are is an error, never an allocation.

use kernels_ir::reference::{IndexTensor, ReferenceError, Tensor, TensorMap, Value};
use safetensors::{Dtype, SafeTensors};

/// Why a file's bytes are not a run's inputs.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Not a whole safetensors file (header, offsets, lengths).
    #[error("not a valid safetensors file: {0}")]
    Format(#[from] safetensors::SafeTensorError),
    /// A tensor of a dtype the executors do not read.
    #[error("tensor `{name}` has dtype {dtype}; run reads F32, F64, F16, BF16 or I64")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor the executors cannot hold.
    #[error("tensor `{name}`: {source}")]
    Tensor {
        /// The tensor.
        name: String,
        /// Why.
        source: ReferenceError,
    },
}

fn floats<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect()
}

/// Every tensor of a safetensors file's bytes.
pub fn read_tensors(bytes: &[u8]) -> Result<TensorMap, InputError> {
    let st = SafeTensors::deserialize(bytes)?;
    let mut map = TensorMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let bad = |source| InputError::Tensor {
            name: name.clone(),
            source,
        };
        let value = match view.dtype() {
            Dtype::F32 => {
                Tensor::new(shape, floats(data, |b| f64::from(f32::from_le_bytes(b)))).map(Value::F)
            }
            Dtype::F64 => Tensor::new(shape, floats(data, f64::from_le_bytes)).map(Value::F),
            Dtype::F16 => Tensor::new(
                shape,
                floats(data, |b| half::f16::from_le_bytes(b).to_f64()),
            )
            .map(Value::F),
            Dtype::BF16 => Tensor::new(
                shape,
                floats(data, |b| half::bf16::from_le_bytes(b).to_f64()),
            )
            .map(Value::F),
            Dtype::I64 => IndexTensor::new(
                shape,
                data.chunks_exact(8)
                    .map(|c| {
                        let mut b = [0; 8];
                        b.copy_from_slice(c);
                        i64::from_le_bytes(b)
                    })
                    .collect(),
            )
            .map(Value::I),
            other => {
                return Err(InputError::Dtype {
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        }
        .map_err(bad)?;
        map.insert(name, value);
    }
    Ok(map)
}
