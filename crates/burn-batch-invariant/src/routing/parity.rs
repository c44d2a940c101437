//! Train/inference parity ([`crate::mode::parity`]): `softmax`, `log_softmax`,
//! `layer_norm`, `rms_norm` and `attention` computed by `Autodiff<BatchInvariant<B>>`
//! itself, on untracked tensors.
//!
//! Burn 0.21's `Autodiff` never calls its inner backend's `softmax`, `log_softmax`,
//! `layer_norm` or `attention`, and burn-nn's `RmsNorm` has no op at all: a model written
//! with Burn's own functions and modules trains through composites of primitives
//! (`max_dim`, `exp`, `sum_dim`, `matmul`, ...), which reach our routed primitives. Running
//! the inference op through the very same `Autodiff` method, rather than a copy of its
//! composite, keeps the two forwards equal by construction, whatever Burn's composites are.
//! The inputs are marked as requiring gradients, as a training forward's are: `Autodiff`
//! runs some ops differently when it tracks them (a tracked `max_dim` asks the inner backend
//! for `max_dim_with_indices`), and parity is with the tracked forward. The graph this
//! records is dropped with the result's autodiff wrapper; no backward ever runs on it.
//!
//! A model written with this crate's functions ([`crate::ParityOps`]) needs none of this:
//! under `Autodiff` they run the inner backend's op, the kernel itself.

use burn_autodiff::Autodiff;
use burn_backend::ops::{ActivationOps, AttentionModuleOptions, FloatTensorOps, ModuleOps};
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::AutodiffBackend;

use crate::norm::burn_nn_rms_norm;
use crate::{BatchInvariant, KernelHost};

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

pub(crate) fn rms_norm<B: KernelHost>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    let [x, gamma] = [x, gamma].map(tracked::<B>);
    Ad::<B>::inner(burn_nn_rms_norm::<Ad<B>>(x, gamma, epsilon))
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
