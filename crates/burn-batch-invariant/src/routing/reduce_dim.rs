//! Routing of `float_sum_dim` and `float_mean_dim` to `batch_invariant_kernels::reduce`.
//!
//! Burn's own kernels autotune among unit, plane and cube reductions keyed on the number
//! of rows, so one row's sum changes with the batch size; the invariant kernel fixes the
//! order from the reduced length alone. Several-dim means (`Tensor::mean_dims`) arrive here
//! one dim at a time, each reduction again depending only on its own length.

use batch_invariant_kernels::reduce::ReduceOp;
use burn_backend::tensor::FloatTensor;
use burn_backend::TensorMetadata;

use super::checks::{check_dim, check_float_dtype, check_non_empty_dim};
use crate::{mode, KernelHost};

pub(crate) fn float_sum_dim<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    if !mode::is_enabled() {
        return B::float_sum_dim(tensor, dim);
    }
    reduce_dim::<B>("float_sum_dim", tensor, dim, ReduceOp::Sum)
}

pub(crate) fn float_mean_dim<B: KernelHost>(tensor: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    if !mode::is_enabled() {
        return B::float_mean_dim(tensor, dim);
    }
    reduce_dim::<B>("float_mean_dim", tensor, dim, ReduceOp::Mean)
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
    check_non_empty_dim(op, &shape, dtype, dim);
    B::invariant_reduce_dim(tensor, dim, kind)
}
