//! N:M semi-structured sparse fine-tuning (METHODS.md §8): the kept entries of the dense weight —
//! the `n` of largest |w| in every group of `m` consecutive columns of each row, chosen once at
//! conversion — are trained as packed values; the pruned entries are zero. The `nm-linear`
//! kernels never form the [out, in] weight or its gradient.

use super::linear::DenseLinear;
use super::param;
use crate::TrainError;
use crate::backend::{SparseOp, float, sparse};
use crate::compose::host;
use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kernels_ir::pattern::Nm;
use kernels_ir::reference::nm as ref_nm;

/// An N:M sparse linear: packed values at fixed positions, and a bias.
#[derive(Module, Debug)]
pub struct NmLinear<B: Backend> {
    /// The kept values [out·in·n/m], in row-major order of the mask.
    pub values: Param<Tensor<B, 1>>,
    /// Their flat positions in the [out, in] weight, ascending (`n` per group of `m`).
    pub index: Param<Tensor<B, 1, Int>>,
    /// b [out].
    pub bias: Param<Tensor<B, 1>>,
    /// Entries kept per group.
    pub n: usize,
    /// Entries per group.
    pub m: usize,
    /// Input features.
    pub n_in: usize,
}

impl<B: Backend> NmLinear<B> {
    /// Prunes `dense` to `n` of every `m` consecutive weights of each row (largest |w| kept,
    /// ties → lower column); `in` must be a multiple of `m`.
    pub fn from_dense(dense: DenseLinear<B>, nm: Nm) -> Result<Self, TrainError> {
        let (n_in, _) = dense.sizes();
        if nm.m == 0 || nm.n == 0 || nm.n > nm.m || !n_in.is_multiple_of(nm.m) {
            return Err(TrainError::Config {
                module: "NmLinear",
                problem: format!(
                    "nm(n = {}, m = {}) on a linear with {n_in} inputs: n must be in 1..=m and m \
                     must divide the inputs",
                    nm.n, nm.m
                ),
                fix: "use nm(n = 2, m = 4) on layers whose input width is a multiple of 4",
            });
        }
        let w = host(&dense.weight.val());
        let mask = ref_nm::mask(&w, nm.n, nm.m);
        let device = dense.weight.device();
        let kept = mask.len();
        let index: Vec<i64> = mask.iter().map(|&i| i as i64).collect();
        let v: Vec<f32> = mask.iter().map(|&i| w.data[i] as f32).collect();
        Ok(Self {
            values: param(Tensor::from_data(TensorData::new(v, [kept]), &device)),
            index: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(index, [kept]), &device),
            ),
            bias: dense.bias,
            n: nm.n,
            m: nm.m,
            n_in,
        })
    }

    /// y = x·W_effᵀ + b, W_eff the kept values at their positions and zero elsewhere.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2>
    where
        B: crate::SparseBackend,
    {
        let inputs = vec![float(x), float(self.values.val()), float(self.bias.val())];
        let op = SparseOp::Nm(Nm {
            n: self.n,
            m: self.m,
        });
        sparse(&op, inputs, vec![self.index.val()])
    }

    /// The pruned weight as a dense linear (zeros at the pruned positions).
    pub fn to_dense(&self) -> DenseLinear<B> {
        let [n_out] = self.bias.dims();
        let index: Vec<usize> = self
            .index
            .val()
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let v = host(&self.values.val()).data;
        let w = ref_nm::effective_weight(&[n_out, self.n_in], &index, &v);
        DenseLinear::new(
            super::linear::to_device(&w, &self.values.device()),
            self.bias.val(),
        )
    }
}
