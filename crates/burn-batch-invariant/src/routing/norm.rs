//! Routing of `ModuleOps::layer_norm` to `batch_invariant_kernels::norm`.
//!
//! Burn's default body is seven kernels over the tensor (two routed means, then
//! elementwise ops); it was invariant through our `float_mean_dim` but read 16384 rows of
//! 4096 at a quarter of the copy bandwidth. One kernel with a fixed order replaces it.
//! With parity on, the op runs the composite `Autodiff` runs, so inference and training
//! forwards agree bitwise (see `crate::mode::parity`).

use burn_backend::tensor::FloatTensor;
use burn_backend::TensorMetadata;

use super::checks::check_float_dtype;
use super::parity;
use crate::{mode, KernelHost};

pub(crate) fn layer_norm<B: KernelHost>(
    tensor: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: Option<FloatTensor<B>>,
    epsilon: f64,
) -> FloatTensor<B> {
    if !mode::is_enabled() {
        return B::layer_norm(tensor, gamma, beta, epsilon);
    }
    if mode::parity::is_enabled() {
        return parity::layer_norm::<B>(tensor, gamma, beta, epsilon);
    }
    const OP: &str = "layer_norm";
    let (shape, dtype) = (tensor.shape(), tensor.dtype());
    check_float_dtype(OP, &shape, dtype);
    let len = shape[shape.num_dims() - 1];
    let parameters = [("gamma", Some(&gamma)), ("beta", beta.as_ref())];
    for (name, parameter) in parameters {
        let Some(parameter) = parameter else { continue };
        let (p_shape, p_dtype) = (parameter.shape(), parameter.dtype());
        if p_shape.num_dims() != 1 || p_shape[0] != len {
            panic!(
                "BatchInvariant::{OP}: {name} must have shape [{len}] (the last dim of the \
                 input {shape:?}), got {p_shape:?}"
            );
        }
        if p_dtype != dtype {
            panic!(
                "BatchInvariant::{OP}: {name} has dtype {p_dtype:?} but the input {shape:?} \
                 has {dtype:?}; cast them to one dtype"
            );
        }
    }
    if !epsilon.is_finite() || epsilon < 0.0 {
        panic!("BatchInvariant::{OP}: epsilon must be finite and non-negative, got {epsilon}");
    }
    // An empty input has nothing to normalise: the kernel launches nothing.
    B::invariant_layer_norm(tensor, gamma, beta, epsilon)
}
