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

/// Every operand of a routed op must live on one device. Burn checks this for its own matmul
/// only; elsewhere a kernel would read another device's buffer as if it were its own
/// (wrong values, and a runtime thread that panics later). `operands` pairs each operand's
/// name with its device; the first is the reference.
pub(crate) fn check_devices<D: PartialEq + core::fmt::Debug>(op: &str, operands: &[(&str, D)]) {
    let Some(((first, device), rest)) = operands.split_first() else {
        return;
    };
    for (name, other) in rest {
        if other != device {
            panic!(
                "BatchInvariant::{op}: {first} is on device {device:?} but {name} is on \
                 device {other:?}; move them to one device first"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("expected a panic");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn refused_dtypes_name_op_shape_and_dtype() {
        for dtype in [DType::F64, DType::Flex32, DType::I32] {
            let msg = message(|| check_float_dtype("float_mean_dim", &Shape::new([2, 3]), dtype));
            assert!(msg.contains("BatchInvariant::float_mean_dim"), "{msg}");
            assert!(
                msg.contains(&format!("{dtype:?}")) && msg.contains("[2, 3]"),
                "{msg}"
            );
        }
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            check_float_dtype("float_mean_dim", &Shape::new([2, 3]), dtype);
        }
    }

    #[test]
    fn device_checks_name_op_and_both_devices() {
        check_devices("linear", &[("x", 0), ("weight", 0), ("bias", 0)]);
        let msg = message(|| check_devices("linear", &[("x", 0), ("weight", 0), ("bias", 1)]));
        assert!(
            msg.contains("BatchInvariant::linear")
                && msg.contains("x is on device 0")
                && msg.contains("bias is on device 1"),
            "{msg}"
        );
    }

    #[test]
    fn dim_checks_name_op_and_reason() {
        let shape = Shape::new([4, 0]);
        let msg = message(|| check_dim("float_sum_dim", &shape, DType::F32, 2));
        assert!(
            msg.contains("float_sum_dim") && msg.contains("dim 2") && msg.contains("rank 2"),
            "{msg}"
        );
        let msg = message(|| check_non_empty_dim("float_sum_dim", &shape, DType::F32, 1));
        assert!(msg.contains("length 0") && msg.contains("[4, 0]"), "{msg}");
        check_dim("float_sum_dim", &shape, DType::F32, 1);
        check_non_empty_dim("float_sum_dim", &shape, DType::F32, 0);
    }
}
