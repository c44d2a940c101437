//! Routing of `float_matmul` to `batch_invariant_kernels::matmul`.
//!
//! Burn's matmul autotunes among cubek's tensor-core, unit and gemv kernels per (M, N, K)
//! bucket, so one row of `x @ W` changes with the number of rows beside it. The invariant
//! kernel fixes the instruction and the K walk. `ModuleOps::linear` is the same kernel with
//! the bias in its epilogue, and the shape checks Burn's composite lacks ([`linear`]); its
//! backward helpers reach the matmul through their default bodies (see `ops/module.rs`).

use batch_invariant_kernels::matmul::launch::matmul_output_shape;
use burn_backend::tensor::FloatTensor;
use burn_backend::{Shape, TensorMetadata};

use super::checks::check_float_dtype;
use crate::KernelHost;

pub(crate) fn float_matmul<B: KernelHost>(
    lhs: FloatTensor<B>,
    rhs: FloatTensor<B>,
) -> FloatTensor<B> {
    check_product::<B>("float_matmul", &lhs, &rhs);
    B::invariant_matmul(lhs, rhs, None)
}

/// What every routed product checks before it reaches the kernel: float operands of one
/// dtype whose shapes multiply.
fn check_product<B: KernelHost>(op: &str, lhs: &FloatTensor<B>, rhs: &FloatTensor<B>) {
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
}

/// `ModuleOps::linear`: `x @ weight + bias` in one invariant matmul, the bias added to the
/// f32 accumulator and the sum rounded once (as vLLM's batch-invariant `addmm`). Burn's
/// composite, a matmul and then an add, rounds twice in f16 and bf16; in f32 the two agree
/// bit for bit. The composite also checks nothing, and its `float_add` broadcasts a bias of
/// length 1 over any output width: a silent wrong answer this refuses, like any other bias
/// or weight shape that does not fit.
pub(crate) fn linear<B: KernelHost>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let op = "linear";
    let (x_shape, w_shape) = (x.shape(), weight.shape());
    let dtype = x.dtype();
    check_float_dtype(op, &x_shape, dtype);
    let w = w_shape.as_slice();
    if w.len() != 2 {
        panic!(
            "BatchInvariant::{op}: weight must be [d_input, d_output], got shape {w_shape:?} \
             (x shape {x_shape:?}, dtype {dtype:?})"
        );
    }
    if x_shape.as_slice().last() != Some(&w[0]) {
        panic!(
            "BatchInvariant::{op}: the last dim of x {x_shape:?} must be d_input = {} of \
             weight {w_shape:?} (dtype {dtype:?})",
            w[0]
        );
    }
    let rank = x_shape.num_dims();
    if let Some(bias) = &bias {
        let b_shape = bias.shape();
        if b_shape.as_slice() != [w[1]] {
            panic!(
                "BatchInvariant::{op}: bias must be [d_output] = [{}] for weight {w_shape:?}, \
                 got shape {b_shape:?} (x shape {x_shape:?}, dtype {dtype:?})",
                w[1]
            );
        }
        if bias.dtype() != dtype {
            panic!(
                "BatchInvariant::{op}: bias dtype {:?} differs from x dtype {dtype:?} \
                 (x shape {x_shape:?}, bias shape {b_shape:?})",
                bias.dtype()
            );
        }
    }
    let weight = B::float_reshape(weight, leading_ones(w, rank.max(2)));
    check_product::<B>(op, &x, &weight);
    B::invariant_matmul(x, weight, bias)
}

/// `dims` with leading 1s up to `rank` dims, the broadcast view Burn's composite builds.
fn leading_ones(dims: &[usize], rank: usize) -> Shape {
    let mut out = vec![1; rank.saturating_sub(dims.len())];
    out.extend_from_slice(dims);
    Shape::from(out)
}
