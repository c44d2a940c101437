//! Input validation shared by the routed ops. Every failure is a panic that names the op,
//! the shape and dtype it got and what is wrong, before any kernel is launched.

use burn_backend::{DType, Shape};

/// The float dtypes the invariant kernels accept. f64 is refused rather than silently
/// computed in f32; quantized tensors never reach the float ops.
pub(crate) fn check_float_dtype(op: &str, shape: &Shape, dtype: DType) {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {}
        other => panic!(
            "BatchInvariant::{op}: dtype {other:?} is not supported (shape {shape:?}); \
             the batch-invariant kernels take F32, F16 or BF16"
        ),
    }
}

/// `dim` must index the shape.
pub(crate) fn check_dim(op: &str, shape: &Shape, dtype: DType, dim: usize) {
    let rank = shape.num_dims();
    if dim >= rank {
        panic!(
            "BatchInvariant::{op}: dim {dim} is out of range for a tensor of rank {rank} \
             (shape {shape:?}, dtype {dtype:?})"
        );
    }
}

/// Reducing over an empty dim has no value (a mean would be 0/0).
pub(crate) fn check_non_empty_dim(op: &str, shape: &Shape, dtype: DType, dim: usize) {
    if shape[dim] == 0 {
        panic!(
            "BatchInvariant::{op}: cannot reduce over dim {dim} of length 0 \
             (shape {shape:?}, dtype {dtype:?})"
        );
    }
}
