//! Bad input to routed ops panics with a message that names the op, the shape and dtype and
//! the reason, before any kernel runs; empty input gets its mathematical result without a
//! launch; and neither leaves the runtime, the fusion stream or the mode switch in a state
//! that changes a later op's bits. The backend op is called directly where Burn's `Tensor`
//! API checks some of this itself, since the backend must not rely on it.

use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensorOps, ModuleOps};
use burn::tensor::{Bool, DType, FloatDType, Tensor, TensorPrimitive};
use burn_batch_invariant::{mode, rms_norm};
use burn_batch_invariant_tests::*;

/// A call that must panic, and what it is, for the message of a test that fails.
type NamedCall<'a> = (&'static str, Box<dyn FnOnce() + 'a>);

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
    // A max over nothing has no winner.
    let t = empty_view::<B, 2>([3, 0], FloatDType::F32, device)
        .into_primitive()
        .tensor();
    let msg = panic_message(move || BatchInvariant::<B>::float_max_dim(t, 1));
    assert!(
        msg.contains("float_max_dim") && msg.contains("length 0") && msg.contains("[3, 0]"),
        "{msg}"
    );
}

type X<B> = BatchInvariant<B>;

/// Attention without scale, softcap or causal mask.
fn plain_attention() -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    }
}

/// An empty tensor as Burn makes one: its slices to an empty range return a new empty
/// tensor (in the default dtype, so the dtype is set here). Nothing is launched to make it.
fn empty_view<B: KernelHost, const D: usize>(
    shape: [usize; D],
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<X<B>, D> {
    Tensor::empty(shape, (device, DType::from(dtype)))
}

/// A small invariant computation whose bits must not change after any bad or empty call:
/// a matmul, a mean, a softmax and a layer norm, on both halves of the routing.
fn healthy<B: KernelHost>(dtype: FloatDType, device: &B::Device) -> Vec<u8> {
    let x = tensor::<X<B>, 2>(random_values(6 * 40, 21), [6, 40], dtype, device);
    let w = tensor::<X<B>, 2>(random_values(40 * 24, 22), [40, 24], dtype, device);
    let y = burn::tensor::activation::softmax(x.clone().matmul(w), 1);
    let gamma = tensor::<X<B>, 1>(random_values(24, 23), [24], dtype, device);
    let normed = Tensor::<X<B>, 2>::from_primitive(TensorPrimitive::Float(X::<B>::layer_norm(
        y.clone().into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        None,
        1e-5,
    )));
    let mut out = bits(normed);
    out.extend(bits(x.mean_dim(1)));
    out
}

/// Checks that the process is still sound after a call that panicked or returned early:
/// the healthy computation gives its earlier bits and the mode switch is still on.
fn still_healthy<B: KernelHost>(what: &str, dtype: FloatDType, device: &B::Device, want: &[u8]) {
    assert!(mode::is_enabled(), "after {what}: the mode switch changed");
    assert!(
        healthy::<B>(dtype, device) == want,
        "after {what}: a healthy computation gave other bits"
    );
}

/// Every routed op on empty input, in every dtype: empty kept dims give empty outputs, an
/// empty reduction its identity (0, NaN for a mean, 1 for a product), K = 0 zeros (plus the
/// bias), attention over no key zeros; no launch, and a healthy computation keeps its bits
/// after each.
fn empty_inputs<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    for dtype in float_dtypes::<B>(device) {
        let want = healthy::<B>(dtype, device);
        let e = |shape: [usize; 2]| empty_view::<B, 2>(shape, dtype, device);
        let full = |shape: [usize; 2], seed| {
            tensor::<X<B>, 2>(
                random_values(shape[0] * shape[1], seed),
                shape,
                dtype,
                device,
            )
        };
        let check =
            |what: &str| still_healthy::<B>(&format!("{what} ({dtype:?})"), dtype, device, &want);

        // Products: M = 0, N = 0, K = 0, an empty batch, and linear with K = 0 and a bias.
        assert_eq!(e([0, 5]).matmul(full([5, 4], 1)).dims(), [0, 4]);
        check("matmul with M = 0");
        assert_eq!(full([3, 5], 2).matmul(e([5, 0])).dims(), [3, 0]);
        check("matmul with N = 0");
        let out = e([3, 0]).matmul(e([0, 4]));
        assert_eq!((out.dims(), values(out)), ([3, 4], vec![0.0; 12]));
        check("matmul with K = 0");
        let e3 = |shape: [usize; 3]| empty_view::<B, 3>(shape, dtype, device);
        let batched = e3([0, 4, 5]).matmul(e3([0, 5, 6]));
        assert_eq!(batched.dims(), [0, 4, 6]);
        check("batched matmul over no batch");
        let bias = full([1, 4], 3).reshape([4]);
        let out = Tensor::<X<B>, 3>::from_primitive(TensorPrimitive::Float(X::<B>::linear(
            e3([2, 3, 0]).into_primitive().tensor(),
            e([0, 4]).into_primitive().tensor(),
            Some(bias.clone().into_primitive().tensor()),
        )));
        let bias_values = values(bias);
        assert_eq!(out.dims(), [2, 3, 4]);
        assert_eq!(
            values(out),
            bias_values.repeat(6),
            "linear with K = 0 is the bias"
        );
        check("linear with K = 0");

        // Reductions along a dim: empty kept dims, and an empty reduced dim.
        for (name, op) in [("sum_dim", 0), ("mean_dim", 1), ("prod_dim", 2)] {
            let reduce = |t: Tensor<X<B>, 2>, dim| match op {
                0 => t.sum_dim(dim),
                1 => t.mean_dim(dim),
                _ => t.prod_dim(dim),
            };
            assert_eq!(reduce(e([0, 5]), 1).dims(), [0, 1], "{name}");
            let out = reduce(e([3, 0]), 1);
            assert_eq!(out.dims(), [3, 1], "{name}");
            let got = values(out);
            let want_value = [0.0, f64::NAN, 1.0][op];
            assert!(
                got.iter()
                    .all(|v| v.to_bits() == want_value.to_bits()
                        || (v.is_nan() && want_value.is_nan())),
                "{name} over an empty dim ({dtype:?}): {got:?}"
            );
            check(name);
        }
        // Full reductions of an empty tensor: 0, NaN, 1.
        let sum = values(e([0, 5]).sum());
        let mean = values(e([0, 5]).mean());
        let prod = values(e([0, 5]).prod());
        assert!(
            sum == [0.0] && mean.len() == 1 && mean[0].is_nan() && prod == [1.0],
            "full reductions of an empty tensor ({dtype:?}): {sum:?} {mean:?} {prod:?}"
        );
        check("full reductions");

        // Extremum with empty kept dims.
        let (v, i) = e([0, 5]).max_dim_with_indices(1);
        assert_eq!((v.dims(), i.dims()), ([0, 1], [0, 1]));
        assert_eq!(e([0, 5]).argmin(1).dims(), [0, 1]);
        check("max/argmin with empty kept dims");

        // Softmax family and norms keep the empty shape.
        for shape in [[0, 5], [3, 0]] {
            assert_eq!(burn::tensor::activation::softmax(e(shape), 1).dims(), shape);
            assert_eq!(
                burn::tensor::activation::log_softmax(e(shape), 0).dims(),
                shape
            );
        }
        check("softmax of empty tensors");
        let gamma = full([1, 5], 4).reshape([5]);
        let normed = X::<B>::layer_norm(
            e([0, 5]).into_primitive().tensor(),
            gamma.clone().into_primitive().tensor(),
            Some(gamma.clone().into_primitive().tensor()),
            1e-5,
        );
        assert_eq!(
            Tensor::<X<B>, 2>::from_primitive(TensorPrimitive::Float(normed)).dims(),
            [0, 5]
        );
        assert_eq!(rms_norm(e([0, 5]), gamma, 1e-5).dims(), [0, 5]);
        check("norms of empty tensors");

        // Attention: no query, no key, no batch.
        let qkv = |b: usize, s: usize, seed| {
            if b * s == 0 {
                empty_view::<B, 4>([b, 2, s, 8], dtype, device)
            } else {
                full([b * 2 * s, 8], seed).reshape([b, 2, s, 8])
            }
        };
        let opts = plain_attention();
        let out = attention(qkv(1, 0, 5), qkv(1, 3, 6), qkv(1, 3, 7), None, None, opts);
        assert_eq!(out.dims(), [1, 2, 0, 8]);
        let out = attention(qkv(1, 3, 5), qkv(1, 0, 6), qkv(1, 0, 7), None, None, opts);
        assert_eq!(out.dims(), [1, 2, 3, 8]);
        assert_eq!(values(out), vec![0.0; 48], "attention over no key");
        let out = attention(qkv(0, 3, 5), qkv(0, 3, 6), qkv(0, 3, 7), None, None, opts);
        assert_eq!(out.dims(), [0, 2, 3, 8]);
        check("attention with empty extents");
    }
}

/// A panicking routed call (every kind of refusal) leaves nothing behind: after each, the
/// healthy computation keeps its bits and the mode switch its state.
fn refusals_leave_the_runtime_sound<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let dtype = FloatDType::F32;
    let want = healthy::<B>(dtype, device);
    let t = |shape: [usize; 2], seed| {
        tensor::<X<B>, 2>(
            random_values(shape[0] * shape[1], seed),
            shape,
            dtype,
            device,
        )
    };
    let refusals: Vec<NamedCall> = vec![
        (
            "matmul of mismatched shapes",
            Box::new(|| {
                let _ = X::<B>::float_matmul(
                    t([3, 5], 1).into_primitive().tensor(),
                    t([4, 2], 2).into_primitive().tensor(),
                );
            }),
        ),
        (
            "linear with a bias of the wrong length",
            Box::new(|| {
                let _ = X::<B>::linear(
                    t([3, 5], 1).into_primitive().tensor(),
                    t([5, 4], 2).into_primitive().tensor(),
                    Some(t([1, 3], 3).reshape([3]).into_primitive().tensor()),
                );
            }),
        ),
        (
            "mean_dim of a dim out of range",
            Box::new(|| {
                let _ = X::<B>::float_mean_dim(t([3, 5], 1).into_primitive().tensor(), 4);
            }),
        ),
        (
            "argmax over an empty dim",
            Box::new(|| {
                let _ = empty_view::<B, 2>([3, 0], dtype, device).argmax(1);
            }),
        ),
        (
            "layer_norm with gamma of the wrong length",
            Box::new(|| {
                let _ = X::<B>::layer_norm(
                    t([3, 5], 1).into_primitive().tensor(),
                    t([1, 4], 2).reshape([4]).into_primitive().tensor(),
                    None,
                    1e-5,
                );
            }),
        ),
        (
            "rms_norm with a negative epsilon",
            Box::new(|| {
                let _ = rms_norm(t([3, 5], 1), t([1, 5], 2).reshape([5]), -1.0);
            }),
        ),
        (
            "attention with a head dim past the kernel's",
            Box::new(|| {
                let q = t([1, 2048], 1).reshape([1, 1, 1, 2048]);
                let _ = attention(q.clone(), q.clone(), q, None, None, plain_attention());
            }),
        ),
    ];
    for (what, call) in refusals {
        let msg = panic_message(call);
        assert!(msg.starts_with("BatchInvariant::"), "{what}: {msg}");
        still_healthy::<B>(what, dtype, device, &want);
    }
}

/// Operands on two devices are refused before anything runs, naming the op and both
/// devices. `other` is a second device of the runtime under test.
fn devices_must_agree<B: KernelHost>(device: &B::Device, other: &B::Device) {
    let _mode = mode_shared();
    let dtype = FloatDType::F32;
    let want = healthy::<B>(dtype, device);
    let on = |d: &B::Device, shape: [usize; 2], seed| {
        tensor::<X<B>, 2>(random_values(shape[0] * shape[1], seed), shape, dtype, d)
    };
    let (here, there) = (format!("{device:?}"), format!("{other:?}"));
    let calls: Vec<NamedCall> = vec![
        (
            "float_matmul",
            Box::new(|| {
                let _ = X::<B>::float_matmul(
                    on(device, [3, 5], 1).into_primitive().tensor(),
                    on(other, [5, 4], 2).into_primitive().tensor(),
                );
            }),
        ),
        (
            "linear",
            Box::new(|| {
                let _ = X::<B>::linear(
                    on(device, [3, 5], 1).into_primitive().tensor(),
                    on(device, [5, 4], 2).into_primitive().tensor(),
                    Some(on(other, [1, 4], 3).reshape([4]).into_primitive().tensor()),
                );
            }),
        ),
        (
            "layer_norm",
            Box::new(|| {
                let _ = X::<B>::layer_norm(
                    on(device, [3, 5], 1).into_primitive().tensor(),
                    on(other, [1, 5], 2).reshape([5]).into_primitive().tensor(),
                    None,
                    1e-5,
                );
            }),
        ),
        (
            "rms_norm",
            Box::new(|| {
                let _ = rms_norm(
                    on(device, [3, 5], 1),
                    on(other, [1, 5], 2).reshape([5]),
                    1e-5,
                );
            }),
        ),
        (
            "attention",
            Box::new(|| {
                let q = on(device, [4, 8], 1).reshape([1, 1, 4, 8]);
                let k = on(device, [4, 8], 2).reshape([1, 1, 4, 8]);
                let v = on(other, [4, 8], 3).reshape([1, 1, 4, 8]);
                let _ = attention(q, k, v, None, None, plain_attention());
            }),
        ),
        (
            "attention",
            Box::new(|| {
                let q = on(device, [4, 8], 1).reshape([1, 1, 4, 8]);
                let mask = Tensor::<X<B>, 4, Bool>::from_data(
                    burn::tensor::TensorData::new(vec![false; 16], [1, 1, 4, 4]),
                    other,
                );
                let _ = attention(q.clone(), q.clone(), q, Some(mask), None, plain_attention());
            }),
        ),
    ];
    for (op, call) in calls {
        let msg = panic_message(call);
        assert!(
            msg.contains(&format!("BatchInvariant::{op}"))
                && msg.contains(&here)
                && msg.contains(&there),
            "{op} on two devices: {msg}"
        );
        still_healthy::<B>(op, dtype, device, &want);
    }
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
fn bad_input_empty_inputs_need_no_launch() {
    on_test_backend!(empty_inputs);
}

#[test]
fn bad_input_refusals_leave_the_runtime_sound() {
    on_test_backend!(refusals_leave_the_runtime_sound);
}

/// Needs two devices of the runtime under test: on wgpu the default adapter and the CPU
/// adapter (lavapipe is both where it is the only driver, but Burn gives each its own
/// device and client); on CUDA a second GPU.
#[test]
fn bad_input_operands_on_two_devices_are_refused() {
    fn case<B: KernelHost>(device: &B::Device, other: &B::Device) {
        devices_must_agree::<B>(device, other);
    }
    let (plain, fused) = backend_forms();
    match runtime() {
        TestRuntime::Wgpu => {
            use burn::backend::wgpu::WgpuDevice;
            let (a, b) = (WgpuDevice::DefaultDevice, WgpuDevice::Cpu);
            if plain {
                case::<burn_batch_invariant::WgpuBase>(&a, &b);
            }
            if fused {
                case::<burn_batch_invariant::WgpuFused>(&a, &b);
            }
        }
        TestRuntime::Cuda => {
            use burn::backend::cuda::CudaDevice;
            use burn::tensor::backend::{Backend, DeviceOps};
            let type_id = CudaDevice::new(0).id().type_id;
            let count = <burn_batch_invariant::CudaBase as Backend>::device_count(type_id);
            if count < 2 {
                println!("one CUDA device: the two-device refusal is covered on wgpu");
                return;
            }
            let (a, b) = (CudaDevice::new(0), CudaDevice::new(1));
            if plain {
                case::<burn_batch_invariant::CudaBase>(&a, &b);
            }
            if fused {
                case::<burn_batch_invariant::CudaFused>(&a, &b);
            }
        }
    }
}

#[test]
fn bad_input_unsupported_dtype_names_the_op() {
    on_test_backend!(unsupported_dtype);
}
