//! `ModuleOps::attention` through `BatchInvariant<B>`: one sequence alone vs inside padded
//! batches of 2, 3 and 7 sequences of mixed lengths (causal and bidirectional); a decode
//! step vs the same position of a prefill, across the 512-key chunk boundary and with every
//! option; accuracy against the f64 reference for every option; slabs; poisoned outputs;
//! both ways of staging keys and values (asynchronous copies, plain loads) bitwise;
//! broadcast mask and bias read in place; bad input.

use batch_invariant_kernels::attention::tensor_core::{self, Staging};
use batch_invariant_kernels::attention::{
    cpu_reference, launch_attention, launch_attention_with_scratch, AttentionError,
    AttentionOptions, KEY_SPLIT,
};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Tensor, TensorData};
use burn_batch_invariant_tests::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};

const HEADS: usize = 2;

/// Per-sequence data `[1, HEADS, len, dim]`, the same values whatever `len` is cut at.
fn seq_values(seq: usize, which: u64, len: usize, dim: usize) -> Vec<f32> {
    let full = random_values(HEADS * 64 * dim, 1000 * seq as u64 + which);
    let mut out = Vec::with_capacity(HEADS * len * dim);
    for h in 0..HEADS {
        out.extend_from_slice(&full[h * 64 * dim..][..len * dim]);
    }
    out
}

/// Sequences of `lens` padded on the right to the longest with NaN (which a masked key must
/// never let through), stacked as `[n, HEADS, max_len, dim]`.
fn padded(lens: &[usize], which: u64, dim: usize) -> (Vec<f32>, usize) {
    let max = *lens.iter().max().unwrap();
    let mut out = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        let data = seq_values(s, which, len, dim);
        for h in 0..HEADS {
            out.extend_from_slice(&data[h * len * dim..][..len * dim]);
            out.extend(std::iter::repeat_n(f32::NAN, (max - len) * dim));
        }
    }
    (out, max)
}

fn options(causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    }
}

fn sequences_are_batch_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    type BI<B> = BatchInvariant<B>;
    let lens = [23, 5, 40, 1, 17, 33, 9];
    let (dim, dim_v) = (20, 12);
    for dtype in float_dtypes::<B>(device) {
        for causal in [true, false] {
            let alone: Vec<Vec<u8>> = (0..lens.len())
                .map(|s| {
                    let len = lens[s];
                    let t = |which, d| {
                        tensor::<BI<B>, 4>(
                            seq_values(s, which, len, d),
                            [1, HEADS, len, d],
                            dtype,
                            device,
                        )
                    };
                    bits(attention(
                        t(1, dim),
                        t(2, dim),
                        t(3, dim_v),
                        None,
                        None,
                        options(causal),
                    ))
                })
                .collect();
            for n in [2, 3, 7] {
                let lens = &lens[..n];
                let t = |which, d| {
                    let (data, max) = padded(lens, which, d);
                    tensor::<BI<B>, 4>(data, [n, HEADS, max, d], dtype, device)
                };
                let max = *lens.iter().max().unwrap();
                let mask: Vec<bool> = lens
                    .iter()
                    .flat_map(|&len| (0..max).map(move |j| j >= len))
                    .collect();
                let mask = Tensor::<BI<B>, 4, Bool>::from_data(
                    TensorData::new(mask, [n, 1, 1, max]),
                    device,
                );
                let out = attention(
                    t(1, dim),
                    t(2, dim),
                    t(3, dim_v),
                    Some(mask),
                    None,
                    options(causal),
                );
                for (s, &len) in lens.iter().enumerate() {
                    let row = out.clone().narrow(0, s, 1).narrow(2, 0, len);
                    assert!(
                        bits(row) == alone[s],
                        "{dtype:?} causal={causal}: sequence {s} (length {len}) differs inside a padded batch of {n}"
                    );
                }
            }
        }
    }
}

/// Query `i` of a causal prefill vs the decode step `q[i]` against keys `0..=i`, with and
/// without the options that change the arithmetic.
fn decode_matches_prefill<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    // Head dim 160 walks the prefill's shared memory in two pieces (128 + 32); the decode
    // kernel reads it in one loop: the order over d must still agree. Head dims up to 128
    // run the tensor-core kernel for f16/bf16 on CUDA (72/40: both padded to the
    // instruction's shape), 160 the scalar kernels everywhere.
    for (dim, dim_v) in [(16, 16), (72, 40), (160, 72)] {
        decode_matches_prefill_for::<B>(device, dim, dim_v);
    }
}

fn decode_matches_prefill_for<B: KernelHost>(device: &B::Device, dim: usize, dim_v: usize) {
    type BI<B> = BatchInvariant<B>;
    let len = KEY_SPLIT + 90;
    let positions = [
        0,
        1,
        15,
        16,
        100,
        KEY_SPLIT - 1,
        KEY_SPLIT,
        KEY_SPLIT + 1,
        len - 1,
    ];
    for dtype in float_dtypes::<B>(device) {
        let t = |seed, n, dim| {
            tensor::<BI<B>, 4>(
                random_values(HEADS * n * dim, seed),
                [1, HEADS, n, dim],
                dtype,
                device,
            )
        };
        let (q, k, v) = (t(11, len, dim), t(12, len, dim), t(13, len, dim_v));
        let bias = tensor::<BI<B>, 4>(
            random_values(HEADS * len * len, 14),
            [1, HEADS, len, len],
            dtype,
            device,
        );
        let variants = [
            ("plain", options(true), false),
            (
                "scale+softcap+bias",
                AttentionModuleOptions {
                    scale: Some(0.3),
                    softcap: Some(2.5),
                    is_causal: true,
                },
                true,
            ),
        ];
        for (name, opts, with_bias) in variants {
            let prefill = attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                with_bias.then(|| bias.clone()),
                opts,
            );
            for i in positions {
                let step_opts = AttentionModuleOptions {
                    is_causal: false,
                    ..opts
                };
                let step = attention(
                    q.clone().narrow(2, i, 1),
                    k.clone().narrow(2, 0, i + 1),
                    v.clone().narrow(2, 0, i + 1),
                    None,
                    with_bias.then(|| bias.clone().narrow(2, i, 1).narrow(3, 0, i + 1)),
                    step_opts,
                );
                assert!(
                    bits(step) == bits(prefill.clone().narrow(2, i, 1)),
                    "{dtype:?} {name} d {dim}/{dim_v}: the decode step at position {i} differs from the prefill"
                );
            }
        }
    }
}

struct Case {
    name: &'static str,
    shape: [usize; 6],
    options: AttentionModuleOptions,
    mask: bool,
    bias: bool,
}

fn accuracy_and_options<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    type BI<B> = BatchInvariant<B>;
    let opts = |scale, softcap, is_causal| AttentionModuleOptions {
        scale,
        softcap,
        is_causal,
    };
    let cases = [
        Case {
            name: "plain",
            shape: [2, 3, 7, 37, 24, 24],
            options: opts(None, None, false),
            mask: false,
            bias: false,
        },
        Case {
            name: "causal",
            shape: [1, 2, 33, 33, 16, 8],
            options: opts(None, None, true),
            mask: false,
            bias: false,
        },
        Case {
            name: "causal seq_q<seq_k",
            shape: [1, 2, 5, 530, 16, 16],
            options: opts(None, None, true),
            mask: false,
            bias: false,
        },
        Case {
            name: "causal seq_q>seq_k",
            shape: [1, 1, 9, 4, 8, 8],
            options: opts(None, None, true),
            mask: false,
            bias: false,
        },
        Case {
            name: "mask",
            shape: [2, 2, 6, 45, 12, 20],
            options: opts(None, None, false),
            mask: true,
            bias: false,
        },
        Case {
            name: "bias",
            shape: [1, 2, 6, 19, 12, 12],
            options: opts(None, None, false),
            mask: false,
            bias: true,
        },
        Case {
            name: "scale+softcap",
            shape: [1, 2, 6, 19, 12, 12],
            options: opts(Some(0.9), Some(3.0), false),
            mask: false,
            bias: false,
        },
        Case {
            name: "everything",
            shape: [2, 1, 17, 40, 24, 40],
            options: opts(Some(0.2), Some(5.0), true),
            mask: true,
            bias: true,
        },
        Case {
            name: "head dim 256",
            shape: [1, 1, 3, 20, 256, 256],
            options: opts(None, None, false),
            mask: false,
            bias: false,
        },
    ];
    for dtype in float_dtypes::<B>(device) {
        for case in &cases {
            let [b, h, sq, sk, d, dv] = case.shape;
            let q = tensor::<BI<B>, 4>(
                random_values(b * h * sq * d, 21),
                [b, h, sq, d],
                dtype,
                device,
            );
            let k = tensor::<BI<B>, 4>(
                random_values(b * h * sk * d, 22),
                [b, h, sk, d],
                dtype,
                device,
            );
            let v = tensor::<BI<B>, 4>(
                random_values(b * h * sk * dv, 23),
                [b, h, sk, dv],
                dtype,
                device,
            );
            // Every third score masked, and the whole of query row 1 (its output must be 0).
            let mask_values: Vec<bool> = (0..b * h * sq * sk)
                .map(|i| i % 3 == 0 || (i / sk) % sq == 1)
                .collect();
            let mask = case.mask.then(|| {
                Tensor::<BI<B>, 4, Bool>::from_data(
                    TensorData::new(mask_values.clone(), [b, h, sq, sk]),
                    device,
                )
            });
            let bias = case.bias.then(|| {
                tensor::<BI<B>, 4>(
                    random_values(b * h * sq * sk, 24),
                    [b, h, sq, sk],
                    dtype,
                    device,
                )
            });
            let got = values(attention(
                q.clone(),
                k.clone(),
                v.clone(),
                mask,
                bias.clone(),
                case.options,
            ));
            let (qv, kv, vv) = (values(q), values(k), values(v));
            let bv = bias.map(values);
            let scale = case.options.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
            let reference = cpu_reference::attention(
                &qv,
                &kv,
                &vv,
                case.mask.then_some(mask_values.as_slice()),
                bv.as_deref(),
                case.shape,
                AttentionOptions {
                    scale,
                    softcap: case.options.softcap.map(|c| c as f32),
                    causal: case.options.is_causal,
                },
            );
            let max_abs = |x: &[f64]| x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let max_score = f64::from(scale) * d as f64 * max_abs(&qv) * max_abs(&kv)
                + bv.as_deref().map_or(0.0, max_abs);
            let unit = 2f64.powi(-(mantissa_bits(dtype) as i32 + 1));
            // The tensor-core kernel (f16/bf16 on CUDA) rounds the weights to the input
            // dtype; the bound allows it on every path.
            let tol = cpu_reference::tolerance(unit, unit, d, sk, max_score, max_abs(&vv));
            assert_eq!(got.len(), reference.len());
            for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                assert!(
                    (g - r).abs() <= tol,
                    "{dtype:?} {}: element {i} is {g}, reference {r}, bound {tol}",
                    case.name
                );
            }
            if case.mask {
                // Query row 1 of the first (batch, head).
                let mut row = (0..dv).map(|c| got[dv + c]);
                assert!(
                    row.all(|x| x == 0.0),
                    "{}: a fully masked row must be 0",
                    case.name
                );
            }
        }
    }
}

/// The kernel takes plain row-major operands; Burn may pitch the rows of a new tensor.
fn contiguous<R: CubeRuntime>(t: Tensor<Plain<R>, 4>) -> CubeTensor<R> {
    into_contiguous(primitive(t))
}

/// A contiguous f32 operand of `shape` with deterministic values, for direct launches.
fn random_primitive<R: CubeRuntime>(
    seed: u64,
    shape: [usize; 4],
    device: &R::Device,
) -> CubeTensor<R> {
    let n = shape.iter().product();
    contiguous(tensor::<Plain<R>, 4>(
        random_values(n, seed),
        shape,
        FloatDType::F32,
        device,
    ))
}

/// Direct launches into NaN-poisoned outputs, with the default scratch and with a scratch
/// so small that every query block is its own slab: every element written, same bits. For
/// a prefill and for a decode step (one query: the decode kernel).
fn poisoned_outputs_and_slabs<R: CubeRuntime>(device: &R::Device) {
    for sq in [37, 1] {
        poisoned_outputs_and_slabs_for::<R>(device, sq);
    }
}

fn poisoned_outputs_and_slabs_for<R: CubeRuntime>(device: &R::Device, sq: usize) {
    let (b, h, sk, d, dv) = (2, 3, KEY_SPLIT + 30, 16, 24);
    let t = |seed, shape| random_primitive::<R>(seed, shape, device);
    let (q, k, v) = (
        t(31, [b, h, sq, d]),
        t(32, [b, h, sk, d]),
        t(33, [b, h, sk, dv]),
    );
    let client = q.client.clone();
    let options = AttentionOptions {
        scale: 0.25,
        softcap: None,
        causal: true,
    };
    let mut results = Vec::new();
    for scratch in [usize::MAX / 2, 1] {
        let out = nan_poison(&client, device, vec![b, h, sq, dv], q.dtype);
        launch_attention_with_scratch(
            &client,
            [
                q.clone().binding(),
                k.clone().binding(),
                v.clone().binding(),
            ],
            [None, None],
            out.clone().binding(),
            options,
            q.dtype.into(),
            scratch,
        )
        .expect("launch");
        let data: Vec<f32> =
            Tensor::<Plain<R>, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(out))
                .into_data()
                .to_vec()
                .unwrap();
        assert!(
            data.iter().all(|x| !x.is_nan()),
            "{sq} queries, scratch {scratch}: an output element was left unwritten"
        );
        results.push(data);
    }
    assert!(
        results[0]
            .iter()
            .map(|x| x.to_bits())
            .eq(results[1].iter().map(|x| x.to_bits())),
        "{sq} queries: slabs change the bits"
    );
}

/// The tensor-core kernel stages keys and values with asynchronous 16-byte copies when
/// their rows are 16-byte aligned, and with plain loads otherwise. Operands that start two
/// bytes into their buffer take the plain path; they must give the bits of aligned copies
/// of the same values, into poisoned outputs, for a prefill and a decode step, head dims
/// whose value tiles come in pairs and one left over. Only where that kernel runs (CUDA).
fn staging_paths_agree<R: CubeRuntime>(device: &R::Device) {
    let (b, h, sk) = (2, 3, KEY_SPLIT + 30);
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        for (sq, d, dv) in [(37, 64, 64), (1, 72, 40), (21, 72, 40)] {
            // `[b, h, n, w]` of deterministic values, contiguous, either at the start of its
            // buffer or two bytes into it (a buffer with one spare element in front).
            let operand = |seed, n, w, shifted: bool| -> CubeTensor<R> {
                let t = tensor::<Plain<R>, 4>(
                    random_values(b * h * n * w, seed),
                    [b, h, n, w],
                    dtype,
                    device,
                );
                let t = into_contiguous(t.into_primitive().tensor());
                if !shifted {
                    return t;
                }
                let data = Tensor::<Plain<R>, 4>::from_primitive(
                    burn::tensor::TensorPrimitive::Float(t.clone()),
                )
                .into_data();
                let mut bytes = vec![0u8; 2];
                bytes.extend_from_slice(data.as_bytes());
                let handle = t.client.create_from_slice(&bytes).offset_start(2);
                CubeTensor::new_contiguous(
                    t.client.clone(),
                    device.clone(),
                    [b, h, n, w].into(),
                    handle,
                    t.dtype,
                )
            };
            {
                let probe = operand(50, 1, d, false);
                let storage = probe.dtype.into();
                if !tensor_core::is_supported(&probe.client, storage, d, dv) {
                    // No tensor-core kernel here, so no staging to compare (and wgpu cannot
                    // bind a buffer two bytes in).
                    eprintln!("{dtype:?} {d}/{dv}: no tensor-core attention on this runtime");
                    continue;
                }
            }
            let run = |shifted: bool| {
                let q = operand(51, sq, d, false);
                let (k, v) = (operand(52, sk, d, shifted), operand(53, sk, dv, shifted));
                let client = q.client.clone();
                let offsets = [&k, &v].map(|t| t.handle.offset_start.unwrap_or(0));
                let warps = tensor_core::warps_for(sq);
                let staging = tensor_core::staging_for(&client, d, dv, offsets, warps);
                let out = nan_poison(&client, device, vec![b, h, sq, dv], q.dtype);
                launch_attention_with_scratch(
                    &client,
                    [q.clone().binding(), k.binding(), v.binding()],
                    [None, None],
                    out.clone().binding(),
                    AttentionOptions {
                        scale: 0.125,
                        softcap: None,
                        causal: true,
                    },
                    q.dtype.into(),
                    usize::MAX / 2,
                )
                .expect("launch");
                let out = Tensor::<Plain<R>, 4>::from_primitive(
                    burn::tensor::TensorPrimitive::Float(out),
                );
                (
                    staging,
                    bits(out.clone()),
                    out.cast(FloatDType::F32).into_data(),
                )
            };
            let (aligned_staging, aligned, values) = run(false);
            let (shifted_staging, shifted, _) = run(true);
            let what = format!("{dtype:?} {sq} queries, head dims {d}/{dv}");
            assert_eq!(
                shifted_staging,
                Staging::Plain,
                "{what}: the shifted view is aligned"
            );
            assert!(
                values.iter::<f32>().all(|x| !x.is_nan()),
                "{what} ({aligned_staging:?}): an output element was left unwritten"
            );
            assert!(
                aligned == shifted,
                "{what}: {aligned_staging:?} and {shifted_staging:?} staging give different bits"
            );
        }
    }
}

/// A padding mask `[b, 1, 1, k]` and a bias `[1, h, 1, k]` expanded to the scores' shape
/// are stride-0 views; the kernel reads them in place and must give the bits of their
/// materialised copies.
fn broadcast_views_match_copies<R: CubeRuntime>(device: &R::Device) {
    use burn::tensor::ops::FloatTensorOps;
    let (b, h, sq, sk, d) = (3, 2, 19, 40, 8);
    let t = |seed, shape| random_primitive::<R>(seed, shape, device);
    let (q, k, v) = (
        t(41, [b, h, sq, d]),
        t(42, [b, h, sk, d]),
        t(43, [b, h, sk, d]),
    );
    let padding: Vec<f32> = (0..b * sk)
        .map(|i| {
            if i % sk >= sk - 7 * (i / sk) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mask = contiguous(Tensor::<Plain<R>, 4>::from_data(
        TensorData::new(padding, [b, 1, 1, sk]),
        device,
    ));
    let bias = t(44, [1, h, 1, sk]);
    let scores: burn::tensor::Shape = [b, h, sq, sk].into();
    let mask_view = Plain::<R>::float_expand(mask, scores.clone());
    let bias_view = Plain::<R>::float_expand(bias, scores);
    assert!(
        mask_view.meta.strides().contains(&0) && bias_view.meta.strides().contains(&0),
        "expand should give stride-0 views"
    );
    let client = q.client.clone();
    let options = AttentionOptions {
        scale: 0.3,
        softcap: None,
        causal: true,
    };
    let run = |mask: CubeTensor<R>, bias: CubeTensor<R>| {
        let out = nan_poison(&client, device, vec![b, h, sq, d], q.dtype);
        launch_attention(
            &client,
            q.clone().binding(),
            k.clone().binding(),
            v.clone().binding(),
            Some(mask.binding()),
            Some(bias.binding()),
            out.clone().binding(),
            options,
            q.dtype.into(),
        )
        .expect("launch");
        bits(Tensor::<Plain<R>, 4>::from_primitive(
            burn::tensor::TensorPrimitive::Float(out),
        ))
    };
    let views = run(mask_view.clone(), bias_view.clone());
    let copies = run(into_contiguous(mask_view), into_contiguous(bias_view));
    assert!(
        views == copies,
        "broadcast views and their copies give different bits"
    );
}

fn launch_refuses_bad_arguments<R: CubeRuntime>(device: &R::Device) {
    let t = |shape: [usize; 4]| contiguous(Tensor::<Plain<R>, 4>::zeros(shape, device));
    let (q, k, v) = (t([1, 2, 3, 8]), t([1, 2, 5, 8]), t([1, 2, 5, 8]));
    let client = q.client.clone();
    let options = AttentionOptions {
        scale: 1.0,
        softcap: None,
        causal: false,
    };
    let dtype = q.dtype.into();
    let run = |q: &CubeTensor<R>, k: &CubeTensor<R>, out: &CubeTensor<R>, options| {
        launch_attention(
            &client,
            q.clone().binding(),
            k.clone().binding(),
            v.clone().binding(),
            None,
            None,
            out.clone().binding(),
            options,
            dtype,
        )
    };
    let err = run(&q, &t([1, 2, 5, 7]), &t([1, 2, 3, 8]), options);
    assert!(
        matches!(err, Err(AttentionError::BadOperand { name: "key", .. })),
        "{err:?}"
    );
    let err = run(&q, &k, &t([1, 2, 3, 7]), options);
    assert!(
        matches!(err, Err(AttentionError::BadOperand { name: "output", .. })),
        "{err:?}"
    );
    // A transposed mask is neither contiguous nor a broadcast view.
    let transposed = {
        use burn::tensor::ops::FloatTensorOps;
        Plain::<R>::float_swap_dims(t([1, 2, 5, 3]), 2, 3)
    };
    let err = launch_attention(
        &client,
        q.clone().binding(),
        k.clone().binding(),
        v.clone().binding(),
        Some(transposed.binding()),
        None,
        t([1, 2, 3, 8]).binding(),
        options,
        dtype,
    );
    assert!(
        matches!(err, Err(AttentionError::BadOperand { name: "mask", .. })),
        "{err:?}"
    );
    let softcap = AttentionOptions {
        softcap: Some(-1.0),
        ..options
    };
    let err = run(&q, &k, &t([1, 2, 3, 8]), softcap);
    assert!(matches!(err, Err(AttentionError::Softcap(_))), "{err:?}");
}

/// The backend op is called through `module::attention`, which checks nothing itself.
fn bad_input_names_the_op<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    type BI<B> = BatchInvariant<B>;
    let t = |shape: [usize; 4]| Tensor::<BI<B>, 4>::zeros(shape, device);
    let call = |q: [usize; 4], k: [usize; 4], v: [usize; 4], opts: AttentionModuleOptions| {
        let (q, k, v) = (t(q), t(k), t(v));
        panic_message(move || attention(q, k, v, None, None, opts))
    };
    let cases = [
        (
            [1, 2, 3, 8],
            [1, 2, 5, 4],
            [1, 2, 5, 8],
            options(false),
            "key must be",
        ),
        (
            [1, 2, 3, 8],
            [1, 2, 5, 8],
            [1, 2, 6, 8],
            options(false),
            "value must be",
        ),
        (
            [1, 1, 3, 300],
            [1, 1, 5, 300],
            [1, 1, 5, 8],
            options(false),
            "head dims",
        ),
        (
            [1, 1, 3, 8],
            [1, 1, 5, 8],
            [1, 1, 5, 8],
            AttentionModuleOptions {
                scale: None,
                softcap: Some(0.0),
                is_causal: false,
            },
            "softcap",
        ),
    ];
    for (q, k, v, opts, reason) in cases {
        let msg = call(q, k, v, opts);
        assert!(
            msg.contains("BatchInvariant::attention")
                && msg.contains(reason)
                && msg.contains(&format!("{q:?}")),
            "{msg}"
        );
    }
    let (q, k, v) = (t([1, 2, 3, 8]), t([1, 2, 5, 8]), t([1, 2, 5, 8]));
    let mask = Tensor::<BI<B>, 4, Bool>::empty([1, 2, 4, 5], device);
    let msg = panic_message(move || attention(q, k, v, Some(mask), None, options(false)));
    assert!(
        msg.contains("mask") && msg.contains("does not broadcast"),
        "{msg}"
    );
}

#[test]
fn attention_sequences_are_batch_invariant() {
    on_test_backend!(sequences_are_batch_invariant);
}

#[test]
fn attention_decode_matches_prefill() {
    on_test_backend!(decode_matches_prefill);
}

#[test]
fn attention_accuracy_and_options() {
    on_test_backend!(accuracy_and_options);
}

#[test]
fn kernel_attention_writes_every_output_in_any_slab() {
    on_test_runtime!(poisoned_outputs_and_slabs);
}

#[test]
fn kernel_attention_staging_paths_agree() {
    on_test_runtime!(staging_paths_agree);
}

#[test]
fn kernel_attention_reads_broadcast_mask_and_bias_in_place() {
    on_test_runtime!(broadcast_views_match_copies);
}

#[test]
fn kernel_attention_refuses_bad_arguments() {
    on_test_runtime!(launch_refuses_bad_arguments);
}

#[test]
fn bad_input_attention_names_the_op() {
    on_test_backend!(bad_input_names_the_op);
}
