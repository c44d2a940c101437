//! Layer and RMS normalization as one op each, in inference and in training.
//!
//! burn-nn's `RmsNorm` has no backend method: its forward is a chain of primitives
//! (`square`, `mean_dim`, `sqrt`, ...), invariant through our routed mean but six kernels
//! over the tensor. `Autodiff` in Burn 0.21 differentiates `layer_norm` through its default
//! composite too, so neither norm trains through the kernel it infers with. [`rms_norm`] and
//! [`layer_norm`] go through [`NormBackend`] instead:
//!
//! - on `BatchInvariant<B>`, one invariant kernel (`batch_invariant_kernels::norm`, order in
//!   `docs/contract.md`);
//! - on `Autodiff<B>` over the kernel, the kernel forward and the analytic backward recorded
//!   as one step: the training forward has the inference bits by construction, without
//!   parity mode;
//! - on Burn's backends, burn-nn's chain (RMS) and Burn's `layer_norm`, so model code written
//!   against [`NormBackend`] runs there unchanged and gives the modules' bits; `Autodiff`
//!   over them (or over `BatchInvariant` with the mode off) differentiates that composite op
//!   by op, as the modules train.
//!
//! The backward passes recompute the row statistics in f32 from the saved input (one
//! rounding of the result to the input's dtype) with the inner backend's ops: per row a
//! routed, fixed-order `mean_dim`, so a row's input gradient depends on that row only. The
//! gamma and beta gradients are sums over every row, one routed `sum_dim` along the rows:
//! their order depends on the number of rows alone, as a sum over the batch must.
//!
//! With `x̂ = (x - mean) * r` (RMS: `x̂ = x * r`), `r = 1 / sqrt(var + eps)` and `ĝ = g * gamma`:
//! `dx = r * (ĝ - mean(ĝ) - x̂ * mean(ĝ * x̂))` (RMS without `mean(ĝ)`),
//! `dgamma = sum_rows(g * x̂)`, `dbeta = sum_rows(g)`.
//!
//! ```ignore
//! // In a model generic over `B: NormBackend`, instead of `self.norm.forward(x)`:
//! let y = burn_batch_invariant::rms_norm(x, self.norm.gamma.val(), self.norm.epsilon);
//! ```

use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_autodiff::Autodiff;
use burn_backend::ops::ModuleOps;
use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, Shape, TensorMetadata};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_tensor::{DType, FloatDType, Tensor, TensorPrimitive};

use crate::record::record;
use crate::{routing, BatchInvariant, KernelHost};

/// A backend with one-op layer and RMS normalization over the last dim.
pub trait NormBackend: Backend {
    /// RMS normalization of `x` (any rank from 1) over its last dim, scaled by `gamma`
    /// (shape `[last dim]`).
    /// The default is burn-nn 0.21's `RmsNorm::forward`, op for op: the module's bits.
    /// `BatchInvariant` overrides it with one kernel, `Autodiff` with its inner backend's
    /// kernel and an analytic backward (see [`NormBackend::norm_is_one_op`]).
    fn rms_norm_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        burn_nn_rms_norm::<Self>(x, gamma, epsilon)
    }

    /// Layer normalization of `x` (any rank from 1) over its last dim. The default is the
    /// backend's own `ModuleOps::layer_norm` (the kernel on `BatchInvariant`); `Autodiff`
    /// overrides it with its inner backend's kernel and an analytic backward (see
    /// [`NormBackend::norm_is_one_op`]).
    fn layer_norm_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, beta, epsilon)
    }

    /// Whether the two ops above are one-op norms on this backend now: the kernel on
    /// `BatchInvariant<B>` with the mode on, never on Burn's backends (the default).
    /// `Autodiff` records its one backward step only over a one-op norm. Over a composite it
    /// differentiates the composite itself, op by op, as burn-nn's modules do: the same
    /// kernels with the same tensors alive, so that a fused backend plans (and autotunes) the
    /// same fused kernels and the training forward keeps the modules' bits.
    fn norm_is_one_op() -> bool {
        false
    }
}

/// `x / sqrt(mean(x^2) + epsilon) * gamma` over the last dim of `x`, through
/// [`NormBackend::rms_norm_op`]: one invariant kernel on `BatchInvariant<B>` with the mode
/// on, the same kernel forward under `Autodiff`, burn-nn's chain on Burn's backends.
///
/// # Panics
///
/// On `BatchInvariant<B>` with the mode on: if `gamma` is not `[last dim]` of `x`'s dtype,
/// if `epsilon` is negative or not finite, or if the dtype is not f32, f16 or bf16.
pub fn rms_norm<B: NormBackend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    check_rank::<D>("rms_norm");
    let x = x.into_primitive().tensor();
    let out = B::rms_norm_op(x, gamma.into_primitive().tensor(), epsilon);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the last dim of `x` (biased
/// variance), through [`NormBackend::layer_norm_op`]: one invariant kernel on
/// `BatchInvariant<B>`, the same kernel forward under `Autodiff`, Burn's `layer_norm`
/// elsewhere. burn-nn's `LayerNorm` module calls the same `ModuleOps::layer_norm`.
///
/// # Panics
///
/// On `BatchInvariant<B>` with the mode on, as its routed `layer_norm` does: a `gamma` or
/// `beta` that is not `[last dim]` of `x`'s dtype, a negative or non-finite `epsilon`, a
/// dtype other than f32, f16 or bf16.
pub fn layer_norm<B: NormBackend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    check_rank::<D>("layer_norm");
    let beta = beta.map(|beta| beta.into_primitive().tensor());
    let x = x.into_primitive().tensor();
    let out = B::layer_norm_op(x, gamma.into_primitive().tensor(), beta, epsilon);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn check_rank<const D: usize>(op: &str) {
    if D == 0 {
        panic!("burn_batch_invariant::{op}: the input has rank 0; there is no last dim");
    }
}

/// `x` as `[rows, last dim]`: the defaults and the backward pass work on rows.
fn as_rows<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let (len, rows) = match shape.as_slice().split_last() {
        Some((&len, rows)) => (len, rows.iter().product::<usize>()),
        None => (1, 1),
    };
    B::float_reshape(x, Shape::new([rows, len]))
}

/// burn-nn 0.21's `RmsNorm::forward`, op for op, so that a backend without a fused kernel
/// gives the module's bits (and `Autodiff` its gradients). The module is generic over the
/// rank and reduces along the last dim in place; so does this, for ranks 1 to 8, because a
/// reshape to rows would be one more op in a fused backend's plan. Higher ranks go through
/// rows: the same ops on each row.
pub(crate) fn burn_nn_rms_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    let gamma = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(gamma));
    macro_rules! at_rank {
        ($($rank:literal)*) => {
            match x.shape().num_dims() {
                $($rank => {
                    let x = Tensor::<B, $rank>::from_primitive(TensorPrimitive::Float(x));
                    return module_rms_norm(x, gamma, epsilon).into_primitive().tensor();
                })*
                _ => {}
            }
        };
    }
    at_rank!(1 2 3 4 5 6 7 8);
    let shape = x.shape();
    let rows = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(as_rows::<B>(x)));
    let out = module_rms_norm(rows, gamma, epsilon);
    B::float_reshape(out.into_primitive().tensor(), shape)
}

/// The body of burn-nn 0.21's `RmsNorm::forward`.
fn module_rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(D - 1) + epsilon).sqrt();
    (x / rms.cast(dtype)) * gamma.unsqueeze()
}

impl<B: KernelHost> NormBackend for BatchInvariant<B> {
    fn rms_norm_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        routing::norm::rms_norm::<B>(x, gamma, epsilon)
    }

    fn norm_is_one_op() -> bool {
        crate::mode::is_enabled()
    }
}

/// Burn's plain CubeCL backend: burn-nn's chain and Burn's `layer_norm`, for A/B runs of
/// the same model code.
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> NormBackend
    for CubeBackend<R, F, I, BT>
{
}

/// Burn's fused backend (`burn::backend::Cuda` with its default features).
#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> NormBackend for burn_fusion::Fusion<B> {}

/// Training: `B`'s one-op norm forward and the analytic backward as one step; over a
/// composite (Burn's backends, the mode off), the composite differentiated op by op.
impl<B: NormBackend, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn rms_norm_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        if !B::norm_is_one_op() {
            return burn_nn_rms_norm::<Self>(x, gamma, epsilon);
        }
        let forward = || B::rms_norm_op(x.primitive.clone(), gamma.primitive.clone(), epsilon);
        let state = |_: &_| NormState::new(&x, &gamma, epsilon, false);
        record::<B, C, _, _>(NormBackward, [&x, &gamma], forward, state)
    }

    fn layer_norm_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        if !B::norm_is_one_op() {
            return Self::layer_norm(x, gamma, beta, epsilon);
        }
        let forward = || {
            let beta = beta.as_ref().map(|beta| beta.primitive.clone());
            B::layer_norm_op(x.primitive.clone(), gamma.primitive.clone(), beta, epsilon)
        };
        let state = |_: &_| NormState::new(&x, &gamma, epsilon, true);
        match &beta {
            Some(beta) => record::<B, C, _, _>(NormBackward, [&x, &gamma, beta], forward, state),
            None => record::<B, C, _, _>(NormBackward, [&x, &gamma], forward, state),
        }
    }

    fn norm_is_one_op() -> bool {
        B::norm_is_one_op()
    }
}

/// What a norm's backward step needs: the input and gamma (the statistics are
/// recomputed), epsilon, and whether the mean is subtracted (layer) or not (RMS).
#[derive(Debug, Clone)]
struct NormState<B: Backend> {
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    epsilon: f64,
    centered: bool,
}

impl<B: Backend> NormState<B> {
    /// `x` and `gamma` are the tracked tensors; their inner primitives are kept.
    fn new(
        x: &FloatTensor<Autodiff<B>>,
        gamma: &FloatTensor<Autodiff<B>>,
        epsilon: f64,
        centered: bool,
    ) -> Self {
        Self {
            x: x.primitive.clone(),
            gamma: gamma.primitive.clone(),
            epsilon,
            centered,
        }
    }
}

/// The backward step of both norms; parents `[x, gamma]` or `[x, gamma, beta]`.
#[derive(Debug)]
struct NormBackward;

impl<B: Backend, const N: usize> Backward<B, N> for NormBackward {
    type State = NormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let NormState {
            x,
            gamma,
            epsilon,
            centered,
        } = ops.state;
        let float = |t: FloatTensor<B>| {
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(as_rows::<B>(t)))
        };
        let (shape, dtype) = (x.shape(), x.dtype());
        let f32 = FloatDType::F32;
        let x = float(x).cast(f32);
        let g = float(grad).cast(f32);
        let gamma = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(gamma))
            .cast(f32)
            .unsqueeze::<2>();
        let x = if centered {
            x.clone() - x.mean_dim(1)
        } else {
            x
        };
        let r = (x.clone().square().mean_dim(1) + epsilon).sqrt().recip();
        let x_hat = x * r.clone();
        let back = |t: Tensor<B, 2>| t.cast(dtype).into_primitive().tensor();
        let mut parents = ops.parents.into_iter();
        if let Some(node) = parents.next().flatten() {
            let g_hat = g.clone() * gamma;
            let projection = (g_hat.clone() * x_hat.clone()).mean_dim(1);
            let mut inner = g_hat.clone() - x_hat.clone() * projection;
            if centered {
                inner = inner - g_hat.mean_dim(1);
            }
            grads.register::<B>(node.id, B::float_reshape(back(inner * r), shape));
        }
        // Summed over the rows, as gamma's and beta's `[len]`.
        let over_rows = |t: Tensor<B, 2>| {
            let len = t.dims()[1];
            let sum: Tensor<B, 1> = t.sum_dim(0).reshape([len]);
            sum.cast(dtype).into_primitive().tensor()
        };
        if let Some(node) = parents.next().flatten() {
            grads.register::<B>(node.id, over_rows(g.clone() * x_hat));
        }
        if let Some(node) = parents.next().flatten() {
            grads.register::<B>(node.id, over_rows(g));
        }
    }
}
