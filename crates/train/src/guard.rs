//! A training step's numerical guard: the global L2 norm of the trained tensors' gradients
//! (what `--max-grad-norm` clips, as PyTorch's `clip_grad_norm_`), whose finiteness and the
//! loss's decide whether the optimizer may apply the step at all.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// The squared L2 norm of every trained tensor's gradient in `grads`, on the device: a
/// one-element tensor (zero when no tensor has a gradient), so that the caller reads it with
/// the loss in one transfer.
pub(crate) fn grad_sq_norm<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &GradientsParams,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let mut sum = SquaredSums::<B> {
        grads,
        parts: Vec::new(),
    };
    model.visit(&mut sum);
    let parts = sum.parts;
    if parts.is_empty() {
        return Tensor::zeros([1], device);
    }
    Tensor::cat(parts, 0).sum()
}

/// Multiplies every trained tensor's gradient in `grads` by `factor`.
pub(crate) fn scale_grads<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &mut GradientsParams,
    factor: f32,
) {
    model.visit(&mut Scale::<B> {
        grads,
        factor,
        _b: std::marker::PhantomData,
    });
}

/// The factor `clip_grad_norm_` scales by: `max / (norm + 1e-6)` when the norm exceeds `max`.
pub(crate) fn clip_factor(norm: f32, max: f64) -> Option<f32> {
    (f64::from(norm) > max).then(|| (max / (f64::from(norm) + 1e-6)) as f32)
}

struct SquaredSums<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredSums<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.parts.push(g.clone().mul(g).sum());
        }
    }
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f32,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::clip_factor;

    #[test]
    fn clipping_scales_only_norms_above_the_bound() {
        assert_eq!(clip_factor(0.5, 1.0), None);
        assert_eq!(clip_factor(1.0, 1.0), None);
        let f = clip_factor(4.0, 1.0).unwrap_or(0.0);
        assert!((f - 0.25).abs() < 1e-6, "{f}");
    }
}
