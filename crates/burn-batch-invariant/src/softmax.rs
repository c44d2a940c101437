//! Softmax and log-softmax whose training forward is the inference kernel.
//!
//! `Autodiff` in Burn 0.21 never calls its inner backend's `softmax` or `log_softmax`: it
//! records their composites (`max_dim`, `exp`, `sum_dim`, ...), so a policy trained under
//! `Autodiff<BatchInvariant<B>>` computes its log-probabilities with other operations than
//! the inference engine on `BatchInvariant<B>`, and the two can differ in the last bit.
//! [`softmax`] and [`log_softmax`] go through [`SoftmaxBackend`] instead: on `Autodiff<B>`
//! the forward is `B`'s own one-op softmax (the invariant kernel when `B` is
//! `BatchInvariant`), and the backward is the analytic one recorded as a single step, so the
//! training forward has the inference forward's bits by construction, with no parity mode.
//!
//! The backward passes use the inner backend's elementwise ops and one `sum_dim` along the
//! softmax dim, which `BatchInvariant` routes to its fixed-order reduction: a row's gradient
//! depends on that row only, in the same order whatever the batch.
//!
//! - softmax: `y = softmax(x)`, `dx = y * g - y * sum(y * g)`;
//! - log-softmax: `y = log_softmax(x)`, `dx = g - exp(y) * sum(g)`.
//!
//! ```ignore
//! // In a model generic over `B: SoftmaxBackend`, instead of `activation::log_softmax(x, 2)`:
//! let logprobs = burn_batch_invariant::log_softmax(x, 2);
//! ```

use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops};
use burn_autodiff::Autodiff;
use burn_backend::tensor::FloatTensor;
use burn_backend::Backend;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_tensor::{Tensor, TensorPrimitive};

use crate::record::record;
use crate::{BatchInvariant, KernelHost};

/// A backend whose softmax and log-softmax are one op each, in training too.
///
/// The defaults are the backend's own `ActivationOps` (on `BatchInvariant<B>` the invariant
/// kernels, on Burn's backends their own); `Autodiff<B>` overrides both to run `B`'s op
/// forward and record the analytic backward (module docs).
pub trait SoftmaxBackend: Backend {
    /// Softmax of `tensor` along `dim`.
    fn softmax_op(tensor: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        Self::softmax(tensor, dim)
    }

    /// Log-softmax of `tensor` along `dim`.
    fn log_softmax_op(tensor: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        Self::log_softmax(tensor, dim)
    }
}

/// `softmax(x)` along `dim` through [`SoftmaxBackend::softmax_op`]: under `Autodiff`, the
/// inner backend's kernel forward and an analytic backward.
///
/// # Panics
///
/// If `dim` is not a dim of `x`; on `BatchInvariant<B>`, as its routed `softmax` does.
pub fn softmax<B: SoftmaxBackend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    check_dim("softmax", dim, &x);
    let primitive = x.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::softmax_op(primitive, dim)))
}

/// `log_softmax(x)` along `dim` through [`SoftmaxBackend::log_softmax_op`]: under `Autodiff`,
/// the inner backend's kernel forward and an analytic backward.
///
/// # Panics
///
/// If `dim` is not a dim of `x`; on `BatchInvariant<B>`, as its routed `log_softmax` does.
pub fn log_softmax<B: SoftmaxBackend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    check_dim("log_softmax", dim, &x);
    let primitive = x.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::log_softmax_op(primitive, dim)))
}

fn check_dim<B: Backend, const D: usize>(op: &str, dim: usize, x: &Tensor<B, D>) {
    if dim >= D {
        panic!(
            "burn_batch_invariant::{op}: dim {dim} is out of range for a tensor of shape {:?} \
             ({:?})",
            x.dims(),
            x.dtype()
        );
    }
}

impl<B: KernelHost> SoftmaxBackend for BatchInvariant<B> {}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> SoftmaxBackend
    for CubeBackend<R, F, I, BT>
{
}

/// Burn's fused backend (`burn::backend::Cuda` with its default features): its own ops.
#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> SoftmaxBackend for burn_fusion::Fusion<B> {}

/// Training: `B`'s softmax forward (its output kept for the backward), one backward step.
impl<B: Backend, C: CheckpointStrategy> SoftmaxBackend for Autodiff<B, C> {
    fn softmax_op(tensor: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        let forward = || B::softmax(tensor.primitive.clone(), dim);
        record::<B, C, _, _>(SoftmaxBackward, [&tensor], forward, |y| (y.clone(), dim))
    }

    fn log_softmax_op(tensor: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        let forward = || B::log_softmax(tensor.primitive.clone(), dim);
        record::<B, C, _, _>(LogSoftmaxBackward, [&tensor], forward, |y| (y.clone(), dim))
    }
}

/// `dx = y * g - y * sum(y * g)`, from the forward's output `y`.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: Backend> Backward<B, 1> for SoftmaxBackward {
    type State = (FloatTensor<B>, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (output, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let weighted = B::float_mul(grad, output.clone());
            let total = B::float_sum_dim(weighted.clone(), dim);
            B::float_sub(weighted, B::float_mul(output, total))
        });
    }
}

/// `dx = g - exp(y) * sum(g)`, from the forward's output `y`.
#[derive(Debug)]
struct LogSoftmaxBackward;

impl<B: Backend> Backward<B, 1> for LogSoftmaxBackward {
    type State = (FloatTensor<B>, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (output, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let total = B::float_sum_dim(grad.clone(), dim);
            B::float_sub(grad, B::float_mul(B::float_exp(output), total))
        });
    }
}
