//! Routing of the max/min family along a dim to `batch_invariant_kernels::extremum`.
//!
//! The values of a max are exact whatever the order, but which index wins a tie, and which
//! sign a `-0.0`/`+0.0` tie keeps, depend on how Burn's autotuned reduction splits the row.
//! The invariant kernel fixes both by a total order (ties go to the smallest index; NaN
//! propagates), see the kernel module.

use batch_invariant_kernels::extremum::ExtremumOp;
use burn_backend::tensor::{FloatTensor, IntTensor};
use burn_backend::{IntDType, TensorMetadata};

use super::checks::{check_dim, check_float_dtype, check_non_empty_dim};
use super::empty;
use crate::KernelHost;

/// The index type of the indices nobody asked for (`max_dim` computes them anyway).
const UNUSED_INDEX: IntDType = IntDType::I32;

pub(crate) fn float_max_dim<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    run::<B>("float_max_dim", tensor, dim, ExtremumOp::Max, UNUSED_INDEX).0
}

pub(crate) fn float_min_dim<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    run::<B>("float_min_dim", tensor, dim, ExtremumOp::Min, UNUSED_INDEX).0
}

pub(crate) fn float_max_abs_dim<B: KernelHost>(
    tensor: FloatTensor<B>,
    dim: usize,
) -> FloatTensor<B> {
    run::<B>(
        "float_max_abs_dim",
        tensor,
        dim,
        ExtremumOp::MaxAbs,
        UNUSED_INDEX,
    )
    .0
}

pub(crate) fn float_max_dim_with_indices<B: KernelHost>(
    tensor: FloatTensor<B>,
    dim: usize,
    indices_dtype: IntDType,
) -> (FloatTensor<B>, IntTensor<B>) {
    let op = "float_max_dim_with_indices";
    run::<B>(op, tensor, dim, ExtremumOp::Max, indices_dtype)
}

pub(crate) fn float_min_dim_with_indices<B: KernelHost>(
    tensor: FloatTensor<B>,
    dim: usize,
    indices_dtype: IntDType,
) -> (FloatTensor<B>, IntTensor<B>) {
    let op = "float_min_dim_with_indices";
    run::<B>(op, tensor, dim, ExtremumOp::Min, indices_dtype)
}

pub(crate) fn float_argmax<B: KernelHost>(
    tensor: FloatTensor<B>,
    dim: usize,
    out_dtype: IntDType,
) -> IntTensor<B> {
    run::<B>("float_argmax", tensor, dim, ExtremumOp::Max, out_dtype).1
}

pub(crate) fn float_argmin<B: KernelHost>(
    tensor: FloatTensor<B>,
    dim: usize,
    out_dtype: IntDType,
) -> IntTensor<B> {
    run::<B>("float_argmin", tensor, dim, ExtremumOp::Min, out_dtype).1
}

fn run<B: KernelHost>(
    op: &str,
    tensor: FloatTensor<B>,
    dim: usize,
    kind: ExtremumOp,
    index_dtype: IntDType,
) -> (FloatTensor<B>, IntTensor<B>) {
    let (shape, dtype) = (tensor.shape(), tensor.dtype());
    check_float_dtype(op, &shape, dtype);
    check_dim(op, &shape, dtype, dim);
    check_non_empty_dim(op, &shape, dtype, dim);
    if shape.num_elements() == 0 {
        // Empty kept dims: no winner to find, nothing to launch.
        let mut reduced = shape.clone();
        reduced[dim] = 1;
        let device = B::float_device(&tensor);
        let indices = B::int_empty(reduced.clone(), &device, index_dtype);
        return (empty::empty::<B>(reduced, &device, dtype), indices);
    }
    B::invariant_extremum(tensor, dim, kind, index_dtype)
}
