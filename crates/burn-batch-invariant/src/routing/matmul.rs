//! Routing of `float_matmul` to `batch_invariant_kernels::matmul`.
//!
//! Burn's matmul autotunes among cubek's tensor-core, unit and gemv kernels per (M, N, K)
//! bucket, so one row of `x @ W` changes with the number of rows beside it. The invariant
//! kernel fixes the instruction and the K walk. `ModuleOps::linear` and its backward
//! helpers reach this through their default bodies (see `ops/module.rs`).

use batch_invariant_kernels::matmul::launch::matmul_output_shape;
use burn_backend::tensor::FloatTensor;
use burn_backend::TensorMetadata;

use super::checks::check_float_dtype;
use crate::{mode, KernelHost};

pub(crate) fn float_matmul<B: KernelHost>(
    lhs: FloatTensor<B>,
    rhs: FloatTensor<B>,
) -> FloatTensor<B> {
    if !mode::is_enabled() {
        return B::float_matmul(lhs, rhs);
    }
    let op = "float_matmul";
    let (lhs_shape, rhs_shape) = (lhs.shape(), rhs.shape());
    let (lhs_dtype, rhs_dtype) = (lhs.dtype(), rhs.dtype());
    check_float_dtype(op, &lhs_shape, lhs_dtype);
    check_float_dtype(op, &rhs_shape, rhs_dtype);
    if lhs_dtype != rhs_dtype {
        panic!(
            "BatchInvariant::{op}: operands have different dtypes, lhs {lhs_dtype:?} \
             (shape {lhs_shape:?}) and rhs {rhs_dtype:?} (shape {rhs_shape:?}); cast one first"
        );
    }
    if let Err(reason) = matmul_output_shape(lhs_shape.as_slice(), rhs_shape.as_slice()) {
        panic!("BatchInvariant::{op}: {reason} (dtype {lhs_dtype:?})");
    }
    B::invariant_matmul(lhs, rhs)
}
