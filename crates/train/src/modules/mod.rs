//! The sparse modules: linears per method ([`linear`], N:M in [`nm`]), SPT attention ([`attention`]), the routed
//! FFN ([`ffn`]) and the concept bottleneck ([`cbm`]). Every module keeps weights in PyTorch's
//! layout (a linear's weight is [out, in]), so checkpoints and the kernels' `run` contract agree.

pub mod attention;
pub mod cbm;
pub mod ffn;
pub mod linear;
pub mod nm;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kernels_ir::reference::rng::SplitMix64;

pub use attention::{MultiHeadAttention, SptAttention};
pub use cbm::ConceptBottleneck;
pub use ffn::{Ffn, RoutedFfn};
pub use linear::{DenseLinear, Linear, LoraLinear, MonarchLinear, PstLinear, SaraLinear};
pub use nm::NmLinear;

/// N(0, std²) values from `rng` as a tensor of `shape` (host-drawn: the same seed gives the same
/// weights on every backend).
pub fn normal<B: Backend, const D: usize>(
    rng: &mut SplitMix64,
    shape: [usize; D],
    std: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// A tensor's values on the host, f32.
pub fn values<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// A trainable parameter holding `t`'s values (a new leaf: `t` may come out of a computation,
/// e.g. a merged or exported weight).
pub(crate) fn param<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t.detach())
}

/// A parameter the method keeps frozen (loaded, moved, never given a gradient).
pub(crate) fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t.detach()).set_require_grad(false)
}
