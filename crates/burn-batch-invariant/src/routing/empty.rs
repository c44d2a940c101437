//! What a routed op returns when there is nothing to compute.
//!
//! No kernel runs and the operands are not touched: a reshape or a copy of an empty view can
//! itself be an invalid launch on CUDA, one that leaves the runtime unusable for every later
//! op of the process. The results follow from the math alone, so they are invariant by
//! construction: an empty output is an empty tensor, and a reduction over nothing is its
//! identity (0 for a sum, so also for a product of matrices with K = 0; 1 for a product of
//! values) or NaN for a mean (0 / 0).

use burn_backend::tensor::{Device, FloatTensor};
use burn_backend::{DType, Scalar, Shape};

use crate::KernelHost;

/// A tensor of `shape` filled with `value`, or an empty one where `shape` has no element
/// (filling an empty buffer is a launch of its own).
pub(crate) fn filled<B: KernelHost>(
    shape: Shape,
    value: f64,
    device: &Device<B>,
    dtype: DType,
) -> FloatTensor<B> {
    if shape.num_elements() == 0 {
        empty::<B>(shape, device, dtype)
    } else {
        B::float_full(shape, Scalar::Float(value), device, dtype.into())
    }
}

/// An empty tensor of `shape` (which has no element).
pub(crate) fn empty<B: KernelHost>(
    shape: Shape,
    device: &Device<B>,
    dtype: DType,
) -> FloatTensor<B> {
    debug_assert_eq!(shape.num_elements(), 0);
    B::float_empty(shape, device, dtype.into())
}
