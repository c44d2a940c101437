//! `softmax`, `log_softmax` (routed) and `softmin` (default body over our softmax) through
//! `BatchInvariant<B>`: bitwise invariance along every dim, accuracy against the f64
//! reference, special values, poisoned outputs and bad input.

use batch_invariant_kernels::softmax::{cpu_reference, launch_softmax_dim, SoftmaxKind};
use burn::tensor::activation::{log_softmax, softmax, softmin};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ActivationOps;
use burn::tensor::{FloatDType, Tensor, TensorData, TensorPrimitive};
use burn_batch_invariant_tests::*;
use burn_cubecl::CubeRuntime;

fn apply<X: Backend, const D: usize>(
    x: Tensor<X, D>,
    dim: usize,
    kind: SoftmaxKind,
) -> Tensor<X, D> {
    match kind {
        SoftmaxKind::Softmax => softmax(x, dim),
        SoftmaxKind::LogSoftmax => log_softmax(x, dim),
    }
}

/// [`check_batches`] for softmax and log-softmax of `x` along `dim`, batches cut along
/// `batch`.
fn check_softmaxes<X: Backend, const D: usize>(
    x: Tensor<X, D>,
    dim: usize,
    batch: usize,
    what: &str,
) {
    for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
        check_batches(x.clone(), batch, &format!("{what} {kind:?}"), |t| {
            apply(t, dim, kind)
        });
    }
}

fn invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        for (len, batch) in [
            (1, 1024),
            (5, 1024),
            (1000, 1024),
            (4097, 257),
            (8192, 64),
            (8193, 64),
            (50257, 16),
            (128256, 7),
        ] {
            let x = tensor::<BatchInvariant<B>, 2>(
                random_values(batch * len, len as u64),
                [batch, len],
                dtype,
                device,
            );
            check_softmaxes(x.clone(), 1, 0, &format!("last dim, len {len}, {dtype:?}"));
            if len <= 4097 {
                // the same data with the softmax dim first, and in the middle
                let t = x.clone().transpose();
                check_softmaxes(t, 0, 1, &format!("first dim, len {len}, {dtype:?}"));
                let mid = x.reshape([batch, len, 1]).swap_dims(0, 2); // [1, len, batch]
                check_softmaxes(mid, 1, 2, &format!("middle dim, len {len}, {dtype:?}"));
            }
        }
    }
}

fn accuracy<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    for dtype in float_dtypes::<B>(device) {
        for (shape, dim) in [
            ([16usize, 1000usize], 1usize),
            ([2, 50257], 1),
            ([300, 7], 0),
            ([3, 1], 1),
        ] {
            let n = shape[0] * shape[1];
            let x = tensor::<BatchInvariant<B>, 2>(
                random_values(n, 8000 + n as u64),
                shape,
                dtype,
                device,
            ) * 4.0;
            let input = values(x.clone());
            for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
                let got = values(apply(x.clone(), dim, kind));
                let want = cpu_reference::softmax_dim(&input, &shape, dim, kind);
                let logs = cpu_reference::softmax_dim(&input, &shape, dim, SoftmaxKind::LogSoftmax);
                // x - m = log_softmax + ln(s) with 0 <= ln(s) <= ln(L): bounds for the
                // magnitudes the tolerance scales with.
                let ln_len = (shape[dim] as f64).ln();
                for i in 0..n {
                    let tol = cpu_reference::tolerance(
                        shape[dim],
                        logs[i].abs() + ln_len,
                        ln_len,
                        want[i],
                        kind,
                        mantissa_bits(dtype),
                    );
                    assert!(
                        (got[i] - want[i]).abs() <= tol,
                        "{kind:?} {shape:?} dim {dim} {dtype:?} [{i}]: got {}, f64 reference {}, bound {tol}",
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }
}

fn special_values<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let inf = f32::INFINITY;
    let rows: [[f32; 4]; 5] = [
        [1.0, f32::NAN, 0.5, 2.0],
        [inf, 1.0, 0.0, -1.0],
        [-inf, -inf, -inf, -inf],
        [-inf, 0.0, 1.0, -inf],
        [3.0, 3.0, 3.0, 3.0],
    ];
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let x =
        Tensor::<BatchInvariant<B>, 2>::from_data(TensorData::new(data.clone(), [5, 4]), device);
    let input: Vec<f64> = data.iter().map(|v| f64::from(*v)).collect();
    for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
        let got = values(apply(x.clone(), 1, kind));
        let want = cpu_reference::softmax_dim(&input, &[5, 4], 1, kind);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let same =
                (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-6 * w.abs().max(1.0);
            assert!(
                same,
                "{kind:?} special values [{i}]: got {g}, reference {w}"
            );
        }
    }
}

/// The same special values inside rows long enough to be split into chunks.
fn special_values_chunked<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let len = 20000; // three chunks of at most 8192
    let inf = f32::INFINITY;
    let mut rows = vec![random_values(len, 5); 5];
    rows[0][15000] = f32::NAN;
    rows[1][100] = inf;
    rows[2] = vec![-inf; len];
    for v in rows[3][..9000].iter_mut() {
        *v = -inf; // the whole first chunk and part of the second
    }
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let x =
        Tensor::<BatchInvariant<B>, 2>::from_data(TensorData::new(data.clone(), [5, len]), device);
    let input: Vec<f64> = data.iter().map(|v| f64::from(*v)).collect();
    for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
        let got = values(apply(x.clone(), 1, kind));
        let want = cpu_reference::softmax_dim(&input, &[5, len], 1, kind);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let tol = if w.is_finite() {
                cpu_reference::tolerance(len, w.abs() + 10.0, 10.0, *w, kind, 23)
            } else {
                0.0
            };
            let same = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol;
            assert!(
                same,
                "{kind:?} chunked special values [{}, {}]: got {g}, reference {w}",
                i / len,
                i % len
            );
        }
    }
}

fn softmin_is_softmax_of_negation<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let x = tensor::<BatchInvariant<B>, 2>(
        random_values(64 * 300, 4),
        [64, 300],
        FloatDType::F32,
        device,
    );
    let a = softmin(x.clone(), 1);
    let b = softmax(x.clone().neg(), 1);
    assert!(
        bits(a.clone()) == bits(b),
        "softmin must run our softmax on -x"
    );
    assert!(
        bits(softmin(x.narrow(0, 9, 1), 1)) == bits(a.narrow(0, 9, 1)),
        "softmin row alone"
    );
}

fn bad_input<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let t = tensor::<BatchInvariant<B>, 2>(random_values(12, 1), [3, 4], FloatDType::F32, device)
        .into_primitive()
        .tensor();
    let msg = panic_message(move || BatchInvariant::<B>::log_softmax(t, 2));
    assert!(
        msg.contains("log_softmax") && msg.contains("dim 2") && msg.contains("[3, 4]"),
        "{msg}"
    );
    // An empty softmax dim has nothing to normalise: an empty result, no launch.
    let empty = Tensor::<BatchInvariant<B>, 2>::zeros([3, 0], device);
    assert_eq!(softmax(empty, 1).dims(), [3, 0]);
}

fn poisoned<R: CubeRuntime>(device: &R::Device) {
    let _mode = mode_shared();
    for (rows, len, strided) in [
        (13usize, 1000usize, false),
        (7, 9000, false),
        (131, 33, true),
    ] {
        let data = random_values(rows * len, 77 + len as u64);
        let x: Tensor<Plain<R>, 2> = if strided {
            let t = transposed_values(&data, rows, len);
            Tensor::from_data(TensorData::new(t, [len, rows]), device).transpose()
        } else {
            Tensor::from_data(TensorData::new(data, [rows, len]), device)
        };
        for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
            let input = x.clone().into_primitive().tensor();
            let client = input.client.clone();
            let out = nan_poison(&client, device, vec![rows, len], input.dtype);
            let storage = input.dtype.into();
            launch_softmax_dim(
                &client,
                input.binding(),
                out.clone().binding(),
                1,
                kind,
                storage,
            )
            .expect("valid launch");
            let got = Tensor::<Plain<R>, 2>::from_primitive(TensorPrimitive::Float(out));
            let v = values(got.clone());
            assert!(
                v.iter().all(|v| v.is_finite()),
                "{rows}x{len} strided={strided} {kind:?}: unwritten outputs"
            );
            let routed = apply(
                to_backend::<Plain<R>, BatchInvariant<Plain<R>>, 2>(x.clone()),
                1,
                kind,
            );
            assert!(
                bits(got) == bits(routed),
                "direct launch and decorator differ"
            );
        }
    }
}

#[test]
fn softmax_family_is_batch_invariant_along_every_dim() {
    on_test_backend!(invariance);
}

#[test]
fn softmax_family_matches_f64_reference() {
    on_test_backend!(accuracy);
}

#[test]
fn softmax_family_special_values() {
    on_test_backend!(special_values);
}

#[test]
fn softmax_family_special_values_in_chunked_rows() {
    on_test_backend!(special_values_chunked);
}

#[test]
fn softmax_softmin_goes_through_routed_softmax() {
    on_test_backend!(softmin_is_softmax_of_negation);
}

#[test]
fn softmax_bad_input_names_the_op() {
    on_test_backend!(bad_input);
}

#[test]
fn kernel_softmax_writes_every_output() {
    on_test_runtime!(poisoned);
}
