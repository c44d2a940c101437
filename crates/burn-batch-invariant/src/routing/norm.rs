//! Routing of `ModuleOps::layer_norm` and [`crate::NormBackend::rms_norm_op`] to
//! `batch_invariant_kernels::norm`.
//!
//! Burn's `layer_norm` default body is seven kernels over the tensor (two routed means, then
//! elementwise ops); it is invariant through our `float_mean_dim` but reads 16384 rows of
//! 4096 at a quarter of the copy bandwidth. burn-nn's RMS norm is the same kind of chain.
//! One kernel with a fixed order replaces each. With parity on, the op runs the composite
//! `Autodiff` runs, so inference and training forwards agree bitwise (see
//! `crate::mode::parity`).

use batch_invariant_kernels::norm::NormKind;
use burn_backend::tensor::FloatTensor;
use burn_backend::TensorMetadata;

use super::checks::{check_devices, check_float_dtype};
use super::empty;
use super::parity;
use crate::norm::burn_nn_rms_norm;
use crate::{mode, KernelHost};

pub(crate) fn layer_norm<B: KernelHost>(
    tensor: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: Option<FloatTensor<B>>,
    epsilon: f64,
) -> FloatTensor<B> {
    if mode::parity::is_enabled() {
        return parity::layer_norm::<B>(tensor, gamma, beta, epsilon);
    }
    check_norm::<B>("layer_norm", &tensor, &gamma, beta.as_ref(), epsilon);
    if let Some(out) = nothing_to_normalize::<B>(&tensor) {
        return out;
    }
    B::invariant_norm(tensor, gamma, beta, epsilon, NormKind::Layer)
}

pub(crate) fn rms_norm<B: KernelHost>(
    tensor: FloatTensor<B>,
    gamma: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    if !mode::is_enabled() {
        return burn_nn_rms_norm::<B>(tensor, gamma, epsilon);
    }
    if mode::parity::is_enabled() {
        return parity::rms_norm::<B>(tensor, gamma, epsilon);
    }
    check_norm::<B>("rms_norm", &tensor, &gamma, None, epsilon);
    if let Some(out) = nothing_to_normalize::<B>(&tensor) {
        return out;
    }
    B::invariant_norm(tensor, gamma, None, epsilon, NormKind::Rms)
}

/// An empty input has nothing to normalise: its (empty) output, without a launch.
fn nothing_to_normalize<B: KernelHost>(tensor: &FloatTensor<B>) -> Option<FloatTensor<B>> {
    let shape = tensor.shape();
    (shape.num_elements() == 0)
        .then(|| empty::empty::<B>(shape, &B::float_device(tensor), tensor.dtype()))
}

/// The checks both norms make, with Burn-style messages naming `op`: a float dtype, `gamma`
/// and `beta` of shape `[last dim]` in the input's dtype, on the input's device, a finite
/// non-negative epsilon.
fn check_norm<B: KernelHost>(
    op: &str,
    tensor: &FloatTensor<B>,
    gamma: &FloatTensor<B>,
    beta: Option<&FloatTensor<B>>,
    epsilon: f64,
) {
    let (shape, dtype) = (tensor.shape(), tensor.dtype());
    check_float_dtype(op, &shape, dtype);
    if shape.num_dims() == 0 {
        panic!("BatchInvariant::{op}: the input has rank 0; there is no last dim to normalize");
    }
    let len = shape[shape.num_dims() - 1];
    for (name, parameter) in [("gamma", Some(gamma)), ("beta", beta)] {
        let Some(parameter) = parameter else { continue };
        let (p_shape, p_dtype) = (parameter.shape(), parameter.dtype());
        if p_shape.num_dims() != 1 || p_shape[0] != len {
            panic!(
                "BatchInvariant::{op}: {name} must have shape [{len}] (the last dim of the \
                 input {shape:?}), got {p_shape:?}"
            );
        }
        if p_dtype != dtype {
            panic!(
                "BatchInvariant::{op}: {name} has dtype {p_dtype:?} but the input {shape:?} \
                 has {dtype:?}; cast them to one dtype"
            );
        }
    }
    let mut devices = vec![
        ("input", B::float_device(tensor)),
        ("gamma", B::float_device(gamma)),
    ];
    devices.extend(beta.map(|beta| ("beta", B::float_device(beta))));
    check_devices(op, &devices);
    if !epsilon.is_finite() || epsilon < 0.0 {
        panic!("BatchInvariant::{op}: epsilon must be finite and non-negative, got {epsilon}");
    }
}
