//! RMS normalization as one op, for models that call it directly.
//!
//! burn-nn's `RmsNorm` has no backend method: its forward is a chain of primitives
//! (`square`, `mean_dim`, `sqrt`, ...), invariant through our routed mean but six kernels
//! over the tensor. [`rms_norm`] gives a model one call that a backend may fuse:
//! `BatchInvariant<B>` runs one invariant kernel (`batch_invariant_kernels::norm`, order in
//! `docs/contract.md`); every other backend here runs burn-nn's own chain, so code written
//! against [`RmsNormBackend`] runs on Burn's backends unchanged and gives the module's bits
//! there.
//!
//! ```ignore
//! // In a model generic over `B: RmsNormBackend`, instead of `self.norm.forward(x)`:
//! let y = burn_batch_invariant::rms_norm(x, self.norm.gamma.val(), self.norm.epsilon);
//! ```

use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::Autodiff;
use burn_backend::Backend;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_tensor::{DType, Tensor};

use crate::{routing, BatchInvariant, KernelHost};

/// A backend with an RMS normalization op: `x / sqrt(mean(x^2) + epsilon) * gamma` over the
/// last dim.
pub trait RmsNormBackend: Backend {
    /// RMS normalization of `x` over its last dim, scaled by `gamma` (shape `[last dim]`).
    /// The default is burn-nn 0.21's `RmsNorm::forward`, op for op: the module's bits, and
    /// under `Autodiff` its gradients. `BatchInvariant` overrides it with one kernel.
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        gamma: Tensor<Self, 1>,
        epsilon: f64,
    ) -> Tensor<Self, D> {
        burn_nn_rms_norm(x, gamma, epsilon)
    }
}

/// `x / sqrt(mean(x^2) + epsilon) * gamma` over the last dim of `x`, through the backend's
/// [`RmsNormBackend::rms_norm`]: one invariant kernel on `BatchInvariant<B>` with the mode
/// on, burn-nn's chain of primitives elsewhere.
///
/// # Panics
///
/// On `BatchInvariant<B>` with the mode on: if `gamma` is not `[last dim]` of `x`'s dtype,
/// if `epsilon` is negative or not finite, or if the dtype is not f32, f16 or bf16.
pub fn rms_norm<B: RmsNormBackend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    B::rms_norm(x, gamma, epsilon)
}

/// burn-nn 0.21's `RmsNorm::forward`, op for op, so that a backend without a fused kernel
/// gives the module's bits (and `Autodiff` its gradients).
pub(crate) fn burn_nn_rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(D - 1) + epsilon).sqrt();
    (x / rms.cast(dtype)) * gamma.unsqueeze()
}

impl<B: KernelHost> RmsNormBackend for BatchInvariant<B> {
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        gamma: Tensor<Self, 1>,
        epsilon: f64,
    ) -> Tensor<Self, D> {
        routing::norm::rms_norm::<B, D>(x, gamma, epsilon)
    }
}

/// Training: burn-nn's chain, recorded op by op (its primitives reach the inner backend's
/// routed ones), as `Autodiff` does for `layer_norm`.
impl<B: Backend, C: CheckpointStrategy> RmsNormBackend for Autodiff<B, C> {}

/// Burn's plain CubeCL backend: burn-nn's chain, for A/B runs of the same model code.
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> RmsNormBackend
    for CubeBackend<R, F, I, BT>
{
}

/// Burn's fused backend (`burn::backend::Cuda` with its default features): burn-nn's chain.
#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> RmsNormBackend for burn_fusion::Fusion<B> {}
