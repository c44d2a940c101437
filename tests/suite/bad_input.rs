//! Bad input to routed ops panics with a message that names the op, the shape and dtype and
//! the reason, before any kernel runs. The backend op is called directly, since Burn's
//! `Tensor` API checks some of this itself and the backend must not rely on it.

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, Tensor};
use burn_batch_invariant_tests::*;

fn primitive<B: KernelHost>(
    shape: [usize; 2],
    device: &B::Device,
) -> <BatchInvariant<B> as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive {
    let n = shape[0] * shape[1];
    tensor::<BatchInvariant<B>, 2>(random_values(n, 9), shape, FloatDType::F32, device)
        .into_primitive()
        .tensor()
}

fn invalid_dim<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let t = primitive::<B>([3, 4], device);
    let msg = panic_message(move || BatchInvariant::<B>::float_mean_dim(t, 2));
    assert!(
        msg.contains("float_mean_dim") && msg.contains("dim 2") && msg.contains("[3, 4]"),
        "{msg}"
    );
    let t = primitive::<B>([3, 4], device);
    let msg = panic_message(move || BatchInvariant::<B>::float_sum_dim(t, 7));
    assert!(
        msg.contains("float_sum_dim") && msg.contains("dim 7") && msg.contains("rank 2"),
        "{msg}"
    );
}

fn empty_dim<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let t = Tensor::<BatchInvariant<B>, 2>::zeros([3, 0], device)
        .into_primitive()
        .tensor();
    let msg = panic_message(move || BatchInvariant::<B>::float_mean_dim(t, 1));
    assert!(
        msg.contains("float_mean_dim") && msg.contains("length 0") && msg.contains("[3, 0]"),
        "{msg}"
    );
    // An empty *kept* dim is fine: there is simply nothing to compute.
    let t = Tensor::<BatchInvariant<B>, 2>::zeros([0, 5], device);
    assert_eq!(t.mean_dim(1).dims(), [0, 1]);
}

fn unsupported_dtype<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    // f64 is a float dtype Burn can create on lavapipe that the kernels refuse (rather than
    // silently reducing it in f32). Burn's CUDA backend cannot create it at all, so there no
    // float tensor the kernels refuse can reach them through Burn; the message itself is
    // covered by the unit tests of `routing::checks` on every runtime.
    if !B::supports_dtype(device, DType::F64) {
        println!(
            "{}: cannot create f64 tensors; dtype refusal covered by unit tests",
            B::name(device)
        );
        return;
    }
    {
        let dtype = FloatDType::F64;
        let t = tensor::<BatchInvariant<B>, 2>(random_values(8, 3), [2, 4], dtype, device)
            .into_primitive()
            .tensor();
        let msg = panic_message(move || BatchInvariant::<B>::float_mean_dim(t, 1));
        assert!(
            msg.contains("float_mean_dim")
                && msg.contains(&format!("{:?}", DType::from(dtype)))
                && msg.contains("[2, 4]"),
            "{msg}"
        );
    }
}

#[test]
fn bad_input_invalid_dim_names_the_op() {
    on_test_backend!(invalid_dim);
}

#[test]
fn bad_input_empty_dim_names_the_op() {
    on_test_backend!(empty_dim);
}

#[test]
fn bad_input_unsupported_dtype_names_the_op() {
    on_test_backend!(unsupported_dtype);
}
