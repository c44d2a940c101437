//! Routing of `float_sum_dim`, `float_mean_dim` and `float_prod_dim`, and of the full
//! `float_sum`, `float_mean` and `float_prod`, to `batch_invariant_kernels::reduce`.
//!
//! Burn's own kernels autotune among unit, plane and cube reductions keyed on the number
//! of rows, so one row's sum changes with the batch size; the invariant kernel fixes the
//! order from the reduced length alone. Several-dim means (`Tensor::mean_dims`) arrive here
//! one dim at a time, each reduction again depending only on its own length.

use batch_invariant_kernels::reduce::ReduceOp;
use burn_backend::tensor::FloatTensor;
use burn_backend::{Shape, TensorMetadata};

use super::checks::{check_dim, check_float_dtype};
use super::empty;
use crate::KernelHost;

pub(crate) fn float_sum_dim<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    reduce_dim::<B>("float_sum_dim", tensor, dim, ReduceOp::Sum)
}

pub(crate) fn float_mean_dim<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    reduce_dim::<B>("float_mean_dim", tensor, dim, ReduceOp::Mean)
}

pub(crate) fn float_prod_dim<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    reduce_dim::<B>("float_prod_dim", tensor, dim, ReduceOp::Prod)
}

pub(crate) fn float_prod<B: KernelHost>(tensor: FloatTensor<B>) -> FloatTensor<B> {
    full_reduce::<B>("float_prod", tensor, ReduceOp::Prod)
}

pub(crate) fn float_sum<B: KernelHost>(tensor: FloatTensor<B>) -> FloatTensor<B> {
    full_reduce::<B>("float_sum", tensor, ReduceOp::Sum)
}

pub(crate) fn float_mean<B: KernelHost>(tensor: FloatTensor<B>) -> FloatTensor<B> {
    full_reduce::<B>("float_mean", tensor, ReduceOp::Mean)
}

/// Burn's full sum may combine partial sums with float atomics, so even the same call twice
/// can differ. Here the tensor is flattened and reduced as one row: the order depends on the
/// element count alone. (One row is one cube: slower than a grid-wide reduction on tensors
/// of many millions of elements, the price of a fixed order without a second pass.)
fn full_reduce<B: KernelHost>(op: &str, tensor: FloatTensor<B>, kind: ReduceOp) -> FloatTensor<B> {
    let (shape, dtype) = (tensor.shape(), tensor.dtype());
    check_float_dtype(op, &shape, dtype);
    let count = shape.num_elements();
    if count == 0 {
        let device = B::float_device(&tensor);
        return empty::filled::<B>(Shape::new([1]), of_nothing(kind), &device, dtype);
    }
    let flat = B::float_reshape(tensor, Shape::new([count]));
    B::invariant_reduce_dim(flat, 0, kind)
}

fn reduce_dim<B: KernelHost>(
    op: &str,
    tensor: FloatTensor<B>,
    dim: usize,
    kind: ReduceOp,
) -> FloatTensor<B> {
    let (shape, dtype) = (tensor.shape(), tensor.dtype());
    check_float_dtype(op, &shape, dtype);
    check_dim(op, &shape, dtype, dim);
    if shape.num_elements() == 0 {
        let mut reduced = shape.clone();
        reduced[dim] = 1;
        let device = B::float_device(&tensor);
        return empty::filled::<B>(reduced, of_nothing(kind), &device, dtype);
    }
    B::invariant_reduce_dim(tensor, dim, kind)
}

/// A reduction over no element: the identity of the sum or the product, 0 / 0 for a mean.
fn of_nothing(kind: ReduceOp) -> f64 {
    match kind {
        ReduceOp::Sum => 0.0,
        ReduceOp::Mean => f64::NAN,
        ReduceOp::Prod => 1.0,
    }
}
