//! Train/inference parity ([`crate::mode::parity`]): `softmax`, `log_softmax`,
//! `layer_norm`, `rms_norm` and `attention` computed by `Autodiff<BatchInvariant<B>>`
//! itself, on untracked tensors.
//!
//! Burn 0.21's `Autodiff` never calls its inner backend's `softmax`, `log_softmax`,
//! `layer_norm` or `attention` (nor does our `rms_norm` under it): it runs composites of
//! primitives (`max_dim`, `exp`, `sum_dim`, `matmul`, ...), which reach our routed
//! primitives. Running the inference op through the very same
//! `Autodiff` method, rather than a copy of its composite, keeps the two forwards equal by
//! construction, whatever Burn's composites are. The inputs are marked as requiring
//! gradients, as a training forward's are: `Autodiff` runs some ops differently when it
//! tracks them (a tracked `max_dim` asks the inner backend for `max_dim_with_indices`), and
//! parity is with the tracked forward. The graph this records is dropped with the result's
//! autodiff wrapper; no backward ever runs on it.

use burn_autodiff::Autodiff;
use burn_backend::ops::{ActivationOps, AttentionModuleOptions, FloatTensorOps, ModuleOps};
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::AutodiffBackend;
use burn_tensor::Tensor;

use crate::{BatchInvariant, KernelHost, RmsNormBackend};

type Ad<B> = Autodiff<BatchInvariant<B>>;

/// `tensor` as a leaf of `Ad<B>` that requires gradients.
fn tracked<B: KernelHost>(tensor: FloatTensor<B>) -> FloatTensor<Ad<B>> {
    Ad::<B>::float_set_require_grad(Ad::<B>::from_inner(tensor), true)
}

pub(crate) fn softmax<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    Ad::<B>::inner(<Ad<B> as ActivationOps<Ad<B>>>::softmax(
        tracked::<B>(tensor),
        dim,
    ))
}

pub(crate) fn log_softmax<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    Ad::<B>::inner(<Ad<B> as ActivationOps<Ad<B>>>::log_softmax(
        tracked::<B>(tensor),
        dim,
    ))
}

pub(crate) fn layer_norm<B: KernelHost>(
    tensor: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: Option<FloatTensor<B>>,
    epsilon: f64,
) -> FloatTensor<B> {
    Ad::<B>::inner(<Ad<B> as ModuleOps<Ad<B>>>::layer_norm(
        tracked::<B>(tensor),
        tracked::<B>(gamma),
        beta.map(tracked::<B>),
        epsilon,
    ))
}

pub(crate) fn rms_norm<B: KernelHost, const D: usize>(
    x: Tensor<BatchInvariant<B>, D>,
    gamma: Tensor<BatchInvariant<B>, 1>,
    epsilon: f64,
) -> Tensor<BatchInvariant<B>, D> {
    let x = Tensor::<Ad<B>, D>::from_inner(x).require_grad();
    let gamma = Tensor::<Ad<B>, 1>::from_inner(gamma).require_grad();
    <Ad<B> as RmsNormBackend>::rms_norm(x, gamma, epsilon).inner()
}

pub(crate) fn attention<B: KernelHost>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    attn_bias: Option<FloatTensor<B>>,
    options: AttentionModuleOptions,
) -> FloatTensor<B> {
    let [query, key, value] = [query, key, value].map(tracked::<B>);
    let mask = mask.map(Ad::<B>::bool_from_inner);
    let attn_bias = attn_bias.map(tracked::<B>);
    Ad::<B>::inner(<Ad<B> as ModuleOps<Ad<B>>>::attention(
        query, key, value, mask, attn_bias, options,
    ))
}
