//! Routing of `float_matmul` to `batch_invariant_kernels::matmul`.
//!
//! Burn's matmul autotunes among cubek's tensor-core, unit and gemv kernels per (M, N, K)
//! bucket, so one row of `x @ W` changes with the number of rows beside it. The invariant
//! kernel fixes the instruction and the K walk. `ModuleOps::linear` is the same kernel with
//! the bias in its epilogue, and the shape checks Burn's composite lacks ([`linear`]); its
//! backward helpers reach the matmul through their default bodies (see `ops/module.rs`).

use batch_invariant_kernels::matmul::launch::matmul_output_shape;
use batch_invariant_kernels::matmul::F32Precision;
use burn_backend::tensor::FloatTensor;
use burn_backend::{Shape, TensorMetadata};

use super::checks::{check_devices, check_float_dtype};
use super::empty;
use crate::{mode, KernelHost};

pub(crate) fn float_matmul<B: KernelHost>(
    lhs: FloatTensor<B>,
    rhs: FloatTensor<B>,
) -> FloatTensor<B> {
    let out_shape = check_product::<B>("float_matmul", &lhs, &rhs);
    let k = lhs.shape()[out_shape.num_dims() - 1];
    if let Some(out) = without_kernel::<B>(out_shape, k, None, &lhs) {
        return out;
    }
    B::invariant_matmul(lhs, rhs, None, f32_precision())
}

/// The f32 precision the mode switch asks for now ([`mode::ieee_f32`]).
fn f32_precision() -> F32Precision {
    if mode::ieee_f32::is_enabled() {
        F32Precision::Ieee
    } else {
        F32Precision::Tf32
    }
}

/// The product where no kernel is needed: an empty output, or K = 0, where every element is
/// the empty sum, 0 (plus the bias, added once). Neither operand is touched (module docs of
/// `routing::empty`).
fn without_kernel<B: KernelHost>(
    out_shape: Shape,
    k: usize,
    bias: Option<&FloatTensor<B>>,
    like: &FloatTensor<B>,
) -> Option<FloatTensor<B>> {
    if out_shape.num_elements() != 0 && k != 0 {
        return None;
    }
    let (device, dtype) = (B::float_device(like), like.dtype());
    let rank = out_shape.num_dims();
    let zeros = empty::filled::<B>(out_shape.clone(), 0.0, &device, dtype);
    Some(match bias {
        Some(bias) if out_shape.num_elements() != 0 => {
            let row = leading_ones(&[out_shape[rank - 1]], rank);
            B::float_add(zeros, B::float_reshape(bias.clone(), row))
        }
        _ => zeros,
    })
}

/// What every routed product checks before it reaches the kernel: float operands of one
/// dtype, on one device, whose shapes multiply. Returns the output shape.
fn check_product<B: KernelHost>(op: &str, lhs: &FloatTensor<B>, rhs: &FloatTensor<B>) -> Shape {
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
    let out_shape = matmul_output_shape(lhs_shape.as_slice(), rhs_shape.as_slice())
        .unwrap_or_else(|reason| panic!("BatchInvariant::{op}: {reason} (dtype {lhs_dtype:?})"));
    check_devices(
        op,
        &[("lhs", B::float_device(lhs)), ("rhs", B::float_device(rhs))],
    );
    Shape::from(out_shape)
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
    let mut devices = vec![
        ("x", B::float_device(&x)),
        ("weight", B::float_device(&weight)),
    ];
    devices.extend(bias.as_ref().map(|bias| ("bias", B::float_device(bias))));
    check_devices(op, &devices);
    let mut out_shape = x_shape.clone();
    out_shape[rank - 1] = w[1];
    if let Some(out) = without_kernel::<B>(out_shape, w[0], bias.as_ref(), &x) {
        return out;
    }
    let weight = B::float_reshape(weight, leading_ones(w, rank.max(2)));
    check_product::<B>(op, &x, &weight);
    B::invariant_matmul(x, weight, bias, f32_precision())
}

/// `dims` with leading 1s up to `rank` dims, the broadcast view Burn's composite builds.
fn leading_ones(dims: &[usize], rank: usize) -> Shape {
    let mut out = vec![1; rank.saturating_sub(dims.len())];
    out.extend_from_slice(dims);
    Shape::from(out)
}
