//! Host tensors of the reference executor: f64 values and i64 indices, row-major.

use super::ReferenceError;

/// A dense f64 tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Axis lengths.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f64>,
}

impl Tensor {
    /// Wraps `data`; fails when its length is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Result<Self, ReferenceError> {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(data.len()) {
            return Err(ReferenceError::BadValue {
                name: "<tensor>".into(),
                message: format!(
                    "shape {shape:?} holds {} values but {} were given",
                    n.map_or("more than usize::MAX".to_string(), |n| n.to_string()),
                    data.len()
                ),
            });
        }
        Ok(Self { shape, data })
    }
    /// All zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }
    /// Values from `f(flat_index)`.
    pub fn from_fn(shape: &[usize], f: impl FnMut(usize) -> f64) -> Self {
        let n: usize = shape.iter().product();
        Self {
            shape: shape.to_vec(),
            data: (0..n).map(f).collect(),
        }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// The values rounded to f32 (how `run` writes results).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
    /// Values widened from f32.
    pub fn from_f32(shape: &[usize], data: &[f32]) -> Result<Self, ReferenceError> {
        Self::new(shape.to_vec(), data.iter().map(|&v| f64::from(v)).collect())
    }
}

/// A dense i64 tensor (selected indices; −1 marks an empty slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexTensor {
    /// Axis lengths.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<i64>,
}

impl IndexTensor {
    /// Wraps `data`; fails when its length is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<i64>) -> Result<Self, ReferenceError> {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(data.len()) {
            return Err(ReferenceError::BadValue {
                name: "<index tensor>".into(),
                message: format!(
                    "shape {shape:?} holds {} values but {} were given",
                    n.map_or("more than usize::MAX".to_string(), |n| n.to_string()),
                    data.len()
                ),
            });
        }
        Ok(Self { shape, data })
    }
}

/// A named value of the `run` interface.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Floating-point tensor.
    F(Tensor),
    /// Index tensor.
    I(IndexTensor),
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::F(t)
    }
}

impl From<IndexTensor> for Value {
    fn from(t: IndexTensor) -> Self {
        Value::I(t)
    }
}

impl Value {
    /// Axis lengths.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::F(t) => &t.shape,
            Value::I(t) => &t.shape,
        }
    }
}

/// Row-major matrix helpers on flat slices. `nt`: C[m,n] = A[m,k]·B[n,k]ᵀ; `nn`: A[m,k]·B[k,n];
/// `tn`: A[k,m]ᵀ·B[k,n].
pub(crate) mod mat {
    pub fn nt(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            let ar = &a[i * k..(i + 1) * k];
            for j in 0..n {
                let br = &b[j * k..(j + 1) * k];
                c[i * n + j] = ar.iter().zip(br).map(|(x, y)| x * y).sum();
            }
        }
        c
    }
    pub fn nn(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for t in 0..k {
                let av = a[i * k + t];
                if av != 0.0 {
                    for j in 0..n {
                        c[i * n + j] += av * b[t * n + j];
                    }
                }
            }
        }
        c
    }
    pub fn tn(a: &[f64], b: &[f64], k: usize, m: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for t in 0..k {
            for i in 0..m {
                let av = a[t * m + i];
                if av != 0.0 {
                    for j in 0..n {
                        c[i * n + j] += av * b[t * n + j];
                    }
                }
            }
        }
        c
    }
    /// Column sums of A[m,n].
    pub fn colsum(a: &[f64], m: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n];
        for i in 0..m {
            for j in 0..n {
                c[j] += a[i * n + j];
            }
        }
        c
    }
}

/// Indices `0..n` ordered by `key` descending, ties → lower index first; the first `k` of them.
pub fn top_k_desc(n: usize, k: usize, key: impl Fn(usize) -> f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| ieee_cmp(key(b), key(a)).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Indices `0..n` ordered by `key` ascending, ties → lower index first; the first `k` of them.
pub(crate) fn bottom_k_asc(n: usize, k: usize, key: impl Fn(usize) -> f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| ieee_cmp(key(a), key(b)).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// IEEE ordering of numbers (−0 equals +0, so it is a tie, broken by index), with every NaN
/// above +∞: a total order, so a sort never panics and is deterministic, and a NaN key is picked
/// first by a top-k and last by a bottom-k. (`run` refuses non-finite inputs; training can still
/// produce NaN keys once it diverges.)
pub(crate) fn ieee_cmp(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a.partial_cmp(&b).unwrap_or(Equal),
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
    }
}
