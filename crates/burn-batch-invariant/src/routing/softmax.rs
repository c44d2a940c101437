//! Routing of `softmax` and `log_softmax` to `batch_invariant_kernels::softmax` (`softmin`,
//! `softmax(-x)`, reaches `softmax` through its default body).
//!
//! Burn's default bodies compose `max_dim`, `sub`, `exp`, `sum_dim` (and `log`/`div`); on
//! Burn's fused CUDA backend they take 0.3-0.7 s a call, and their `sum_dim` is autotuned per
//! row count. One kernel with a fixed order replaces the whole composite.

use batch_invariant_kernels::softmax::SoftmaxKind;
use burn_backend::tensor::FloatTensor;
use burn_backend::TensorMetadata;

use super::checks::{check_dim, check_float_dtype};
use super::empty;
use super::parity;
use crate::{mode, KernelHost};

pub(crate) fn softmax<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    if mode::parity::is_enabled() {
        return parity::softmax::<B>(tensor, dim);
    }
    run::<B>("softmax", tensor, dim, SoftmaxKind::Softmax)
}

pub(crate) fn log_softmax<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    if mode::parity::is_enabled() {
        return parity::log_softmax::<B>(tensor, dim);
    }
    run::<B>("log_softmax", tensor, dim, SoftmaxKind::LogSoftmax)
}

fn run<B: KernelHost>(
    op: &str,
    tensor: FloatTensor<B>,
    dim: usize,
    kind: SoftmaxKind,
) -> FloatTensor<B> {
    let (shape, dtype) = (tensor.shape(), tensor.dtype());
    check_float_dtype(op, &shape, dtype);
    check_dim(op, &shape, dtype, dim);
    if shape.num_elements() == 0 {
        // An empty dim (or any empty tensor) has nothing to normalise.
        return empty::empty::<B>(shape, &B::float_device(&tensor), dtype);
    }
    B::invariant_softmax(tensor, dim, kind)
}
