//! `float_matmul` (and `Linear`, through `ModuleOps::linear`) through
//! `BatchInvariant<B>`: bitwise invariance to the number of rows, including across the
//! switches between the tensor-core tilings at M = 64 and M = 256 and, in f16 and bf16 on
//! CUDA, between the pipelined kernel of single rows and cubek's routine; batched and broadcast
//! matmul; transposed and sliced views; run-to-run determinism; accuracy against the f64
//! reference; poisoned outputs; empty problems; bad input.

use batch_invariant_kernels::matmul::launch::{
    choose_path, launch_matmul_on, tensor_core_path, MatmulPath,
};
use batch_invariant_kernels::matmul::{
    cpu_reference, launch_matmul, pipelined, tensor_core, tilings_for, F32Precision, Loader,
    MatmulError, TensorCoreTiling, TileKind, PIPELINED_TILINGS, PORTABLE_NARROW, PORTABLE_TILINGS,
};
use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::ops::{FloatTensorOps, ModuleOps};
use burn::tensor::{FloatDType, Shape, Tensor, TensorPrimitive};
use burn_batch_invariant::mode;
use burn_batch_invariant_tests::*;
use burn_cubecl::CubeRuntime;

const ROWS: [usize; 8] = [1, 2, 3, 7, 16, 64, 257, 1024];

/// (K, N) pairs: odd K and N, one of each equal to 1, K past a 4096 boundary, and K and N
/// of a multiple of 8 (what the pipelined kernel reads as stored).
const SHAPES: [(usize, usize); 5] = [(1, 7), (7, 129), (129, 1), (4097, 129), (1032, 136)];

fn rows_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let last = ROWS[ROWS.len() - 1] - 1;
    for dtype in float_dtypes::<B>(device) {
        for (k, n) in SHAPES {
            assert_rows_invariant::<B>(device, dtype, k, n, &ROWS, &[0, 1, 63, 64, 500, last]);
        }
    }
}

/// K and N both odd and past a 4096 boundary: the last K step and the last column tile of
/// every tiling are ragged. Fewer rows than [`ROWS`], as the CPU path multiplies them one
/// multiply-add at a time.
fn odd_wide_rows_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        assert_rows_invariant::<B>(device, dtype, 4099, 3001, &[1, 3, 7, 64], &[0, 5, 63]);
    }
}

/// `x @ w` for a `[max(rows), k]` x and a `[k, n]` w: the first `m` rows alone for every
/// `m` in `rows`, and each row of `alone` by itself, give the bits of the same rows of the
/// full product; and the product run twice gives the same bits.
fn assert_rows_invariant<B: KernelHost>(
    device: &B::Device,
    dtype: FloatDType,
    k: usize,
    n: usize,
    rows: &[usize],
    alone: &[usize],
) {
    let max = *rows.iter().max().unwrap();
    let x = tensor::<BatchInvariant<B>, 2>(
        random_values(max * k, 100 + k as u64),
        [max, k],
        dtype,
        device,
    );
    let w =
        tensor::<BatchInvariant<B>, 2>(random_values(k * n, 200 + n as u64), [k, n], dtype, device);
    let full = x.clone().matmul(w.clone());
    for &m in rows {
        let part = x.clone().narrow(0, 0, m).matmul(w.clone());
        assert!(
            bits(part) == bits(full.clone().narrow(0, 0, m)),
            "{dtype:?} K={k} N={n}: the first {m} rows differ from the same rows of a {max}-row product"
        );
    }
    for &r in alone {
        let one = x.clone().narrow(0, r, 1).matmul(w.clone());
        assert!(
            bits(one) == bits(full.clone().narrow(0, r, 1)),
            "{dtype:?} K={k} N={n}: row {r} alone differs from row {r} of a {max}-row product"
        );
    }
    let again = x.clone().matmul(w.clone());
    assert!(
        bits(again) == bits(full),
        "{dtype:?} K={k} N={n}: the same product twice differs"
    );
}

/// An lhs read down its columns, the transposed view of an `[K, M]` buffer: its K stride is
/// M, so a rule that picked the loader by stride alignment alone would pick it by M, and in
/// f32 the loaders give different bits. Every width must give the rows of the same values
/// stored by rows.
fn transposed_lhs_widths<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (k, n, widths) = (12, 9, [1, 2, 3, 4, 7, 8, 16, 33]);
    let max = *widths.last().unwrap();
    for dtype in float_dtypes::<B>(device) {
        let data = random_values(max * k, 300);
        let w = tensor::<BatchInvariant<B>, 2>(random_values(k * n, 301), [k, n], dtype, device);
        let rows = tensor::<BatchInvariant<B>, 2>(data.clone(), [max, k], dtype, device);
        let full = rows.matmul(w.clone());
        for m in widths {
            // A flat buffer reshaped is unpitched: its K stride is exactly m.
            let columns = transposed_values(&data[..m * k], m, k);
            let lhs = tensor::<BatchInvariant<B>, 1>(columns, [k * m], dtype, device)
                .reshape([k, m])
                .transpose();
            assert!(
                bits(lhs.matmul(w.clone())) == bits(full.clone().narrow(0, 0, m)),
                "{dtype:?}: the rows of a transposed {m}-row lhs differ from the same rows stored by rows"
            );
        }
    }
}

/// One sequence alone vs inside a batch of 5 (3-D, weight broadcast over the batch) and
/// inside a 4-D batch of heads, plus `Linear` on `[batch, seq, d]`.
fn batched_and_linear_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (seq, k, n) = (9, 129, 65);
    for dtype in float_dtypes::<B>(device) {
        let x = tensor::<BatchInvariant<B>, 3>(
            random_values(5 * seq * k, 31),
            [5, seq, k],
            dtype,
            device,
        );
        let w = tensor::<BatchInvariant<B>, 3>(random_values(k * n, 32), [1, k, n], dtype, device);
        let full = x.clone().matmul(w.clone());
        for b in [0, 2, 4] {
            let alone = x.clone().narrow(0, b, 1).matmul(w.clone());
            assert!(
                bits(alone) == bits(full.clone().narrow(0, b, 1)),
                "{dtype:?} 3-D: sequence {b} alone differs from inside a batch of 5"
            );
        }
        for m in [1, 3, 7] {
            let rows = x.clone().narrow(1, 0, m).matmul(w.clone());
            assert!(
                bits(rows) == bits(full.clone().narrow(1, 0, m)),
                "{dtype:?} 3-D: the first {m} positions differ from the full sequence"
            );
        }

        // 4-D: [batch, heads, seq, k] @ [1, heads, k, n].
        let q = tensor::<BatchInvariant<B>, 4>(
            random_values(3 * 2 * seq * k, 33),
            [3, 2, seq, k],
            dtype,
            device,
        );
        let kv = tensor::<BatchInvariant<B>, 4>(
            random_values(2 * k * n, 34),
            [1, 2, k, n],
            dtype,
            device,
        );
        let full = q.clone().matmul(kv.clone());
        for b in 0..3 {
            let alone = q.clone().narrow(0, b, 1).matmul(kv.clone());
            let inside = full.clone().narrow(0, b, 1);
            if bits(alone.clone()) != bits(inside.clone()) {
                let (a, i) = (values(alone), values(inside));
                let differ = a.iter().zip(&i).filter(|(x, y)| x != y).count();
                let worst = a
                    .iter()
                    .zip(&i)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                panic!(
                    "{dtype:?} 4-D: batch entry {b} alone differs from inside a batch of 3 \
                     ({differ} of {} elements, max |diff| {worst})",
                    a.len()
                );
            }
        }

        let mut linear = LinearConfig::new(k, n).init::<BatchInvariant<B>>(device);
        linear.weight = Param::from_tensor(linear.weight.val().cast(dtype));
        linear.bias = linear.bias.map(|b| Param::from_tensor(b.val().cast(dtype)));
        let full = linear.forward(x.clone());
        for b in [0, 3] {
            for batch in [1, 2] {
                let start = b.min(5 - batch);
                let out = linear.forward(x.clone().narrow(0, start, batch));
                assert!(
                    bits(out) == bits(full.clone().narrow(0, start, batch)),
                    "{dtype:?} Linear: sequences {start}..{} differ from inside a batch of 5",
                    start + batch
                );
            }
        }
    }
}

/// Batches stored inside the rows: sequence-major activations `[seq, 5, k]` against a
/// weight per batch stored `[n, 5, k]` and read down its columns. TMA cannot describe the
/// batch of 5, while one batch alone is an ordinary (transposed) matrix; in f32 the loaders
/// give other bits, so both must reach the same one.
fn batch_inside_row_views_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (seq, k4, n) = (9, 128, 65);
    for dtype in float_dtypes::<B>(device) {
        let xs = tensor::<BatchInvariant<B>, 3>(
            random_values(seq * 5 * k4, 35),
            [seq, 5, k4],
            dtype,
            device,
        )
        .swap_dims(0, 1);
        let ws = tensor::<BatchInvariant<B>, 3>(
            random_values(n * 5 * k4, 36),
            [n, 5, k4],
            dtype,
            device,
        )
        .permute([1, 2, 0]);
        entries_alone_match(xs, ws, &format!("{dtype:?} batch-inside-row views"));
    }
}

/// A batched matrix-vector product: one contiguous column per batch, which no allocation
/// pads to an aligned row.
fn batched_matrix_vector_is_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (seq, k) = (9, 129);
    for dtype in float_dtypes::<B>(device) {
        let x = tensor::<BatchInvariant<B>, 3>(
            random_values(5 * seq * k, 31),
            [5, seq, k],
            dtype,
            device,
        );
        let v = tensor::<BatchInvariant<B>, 3>(random_values(5 * k, 37), [5, k, 1], dtype, device);
        entries_alone_match(x, v, &format!("{dtype:?} matrix-vector"));
    }
}

/// The first and last entries of a batched `lhs @ rhs`, each computed alone (both operands
/// narrowed to it), give the bits of the same entries of the whole product.
fn entries_alone_match<B: KernelHost>(
    lhs: Tensor<BatchInvariant<B>, 3>,
    rhs: Tensor<BatchInvariant<B>, 3>,
    what: &str,
) {
    let batch = lhs.dims()[0];
    let full = lhs.clone().matmul(rhs.clone());
    for b in [0, batch - 1] {
        let alone = lhs
            .clone()
            .narrow(0, b, 1)
            .matmul(rhs.clone().narrow(0, b, 1));
        assert!(
            bits(alone) == bits(full.clone().narrow(0, b, 1)),
            "{what}: batch entry {b} alone differs from inside a batch of {batch}"
        );
    }
}

fn check_accuracy<B: KernelHost, const D: usize>(
    got: Tensor<BatchInvariant<B>, D>,
    lhs: Tensor<BatchInvariant<B>, D>,
    rhs: Tensor<BatchInvariant<B>, D>,
    dtype: FloatDType,
    what: &str,
) {
    let (lhs_shape, rhs_shape) = (lhs.dims().to_vec(), rhs.dims().to_vec());
    let k = lhs_shape[D - 1];
    let (reference, scale) =
        cpu_reference::matmul(&values(lhs), &lhs_shape, &values(rhs), &rhs_shape);
    let got = values(got);
    assert_eq!(got.len(), reference.len(), "{what}: output size");
    for (i, ((g, r), s)) in got.iter().zip(&reference).zip(&scale).enumerate() {
        let tol = cpu_reference::tolerance(k, *s, *r, product_bits(dtype), mantissa_bits(dtype));
        assert!(
            (g - r).abs() <= tol,
            "{what} {dtype:?}: element {i} is {g}, reference {r}, bound {tol}"
        );
    }
}

/// Accuracy, and views: a transposed lhs, a transposed rhs and a sliced (row-pitched) lhs
/// must give the bits of the same values stored contiguously.
fn accuracy_and_views<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        for (m, k, n) in [(1, 1, 1), (13, 7, 131), (70, 4097, 33), (257, 64, 64)] {
            let a = random_values(m * k, 40 + k as u64);
            let b = random_values(k * n, 41 + n as u64);
            let lhs = tensor::<BatchInvariant<B>, 2>(a.clone(), [m, k], dtype, device);
            let rhs = tensor::<BatchInvariant<B>, 2>(b.clone(), [k, n], dtype, device);
            let out = lhs.clone().matmul(rhs.clone());
            check_accuracy(
                out.clone(),
                lhs.clone(),
                rhs.clone(),
                dtype,
                &format!("{m}x{k}x{n}"),
            );

            let lhs_t =
                tensor::<BatchInvariant<B>, 2>(transposed_values(&a, m, k), [k, m], dtype, device)
                    .transpose();
            let rhs_t =
                tensor::<BatchInvariant<B>, 2>(transposed_values(&b, k, n), [n, k], dtype, device)
                    .transpose();
            assert!(
                bits(lhs_t.matmul(rhs.clone())) == bits(out.clone()),
                "{dtype:?} {m}x{k}x{n}: transposed lhs changes the bits"
            );
            assert!(
                bits(lhs.clone().matmul(rhs_t)) == bits(out.clone()),
                "{dtype:?} {m}x{k}x{n}: transposed rhs changes the bits"
            );
            let wide = tensor::<BatchInvariant<B>, 2>(
                random_values(m * (k + 3), 42),
                [m, k + 3],
                dtype,
                device,
            )
            .slice_assign([0..m, 1..k + 1], lhs.clone());
            let sliced = wide.slice([0..m, 1..k + 1]);
            assert!(
                bits(sliced.matmul(rhs.clone())) == bits(out),
                "{dtype:?} {m}x{k}x{n}: a sliced lhs changes the bits"
            );
        }
        // Broadcast batch dims on both sides: [2, 1, 5, 33] @ [1, 3, 33, 17].
        let lhs = tensor::<BatchInvariant<B>, 4>(
            random_values(2 * 5 * 33, 43),
            [2, 1, 5, 33],
            dtype,
            device,
        );
        let rhs = tensor::<BatchInvariant<B>, 4>(
            random_values(3 * 33 * 17, 44),
            [1, 3, 33, 17],
            dtype,
            device,
        );
        let out = lhs.clone().matmul(rhs.clone());
        assert_eq!(out.dims(), [2, 3, 5, 17]);
        check_accuracy(out, lhs, rhs, dtype, "broadcast [2,1,5,33]@[1,3,33,17]");
    }
}

fn empty_problems<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    // Empty operands are zero-width views of real tensors: filling an empty tensor is
    // itself an invalid launch on CUDA, and views are what a model hands over anyway.
    let ones =
        |rows: usize, cols: usize| Tensor::<BatchInvariant<B>, 2>::ones([rows, cols], device);
    let x = ones(1, 5).slice([0..0, 0..5]);
    assert_eq!(x.matmul(ones(5, 4)).dims(), [0, 4]);
    // K = 0: the empty sum is 0 for every element.
    let x = ones(3, 1).slice([0..3, 0..0]);
    let w = ones(1, 4).slice([0..0, 0..4]);
    let out = x.matmul(w);
    assert_eq!(out.dims(), [3, 4]);
    assert_eq!(values(out), vec![0.0; 12]);
}

/// Which paths a poisoned-output run compares with the routed one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compared {
    /// cubek's tilings, loaders and instruction forms, and both portable tilings.
    CubekAndPortable,
    /// Every tiling of the pipelined kernel, and cubek's path, on the shapes the pipelined
    /// kernel reads as stored. Kept apart so that a GPU run can check it alone: its kernels
    /// compile once per tiling, dtype and bias, where cubek's compile per shape (one each
    /// here).
    Pipelined,
}

fn poisoned_cubek_and_portable<R: CubeRuntime>(device: &R::Device) {
    poisoned_outputs_and_paths::<R>(device, Compared::CubekAndPortable);
}

fn poisoned_pipelined<R: CubeRuntime>(device: &R::Device) {
    poisoned_outputs_and_paths::<R>(device, Compared::Pipelined);
}

/// Direct launches into NaN-poisoned outputs, on the routed path and the `compared` ones,
/// without and with a bias: every result is held to the f64 reference, and the other paths
/// are compared with the routed one bitwise, whatever M the router would give them. Every
/// failure is collected before the test fails, so that one GPU run shows the whole picture.
fn poisoned_outputs_and_paths<R: CubeRuntime>(device: &R::Device, compared: Compared) {
    let _mode = mode_shared();
    let _serial = serial();
    let mut failures = Vec::new();
    for dtype in float_dtypes::<Plain<R>>(device) {
        // (257 x 130: whole and partial tiles of the wide portable tiling. K and N of a
        // multiple of 8, the pipelined kernel's: partial cubes in M and N, a last stage
        // with one 8-wide chunk of K, K shorter than one stage. An rhs batch of 1 is one
        // matrix for every lhs batch, which the TMA tilings read: a single row, rows
        // across batches, N narrower than a cube.)
        for (batch, rhs_batch, m, k, n) in [
            (1, 1, 13, 7, 131),
            (3, 3, 70, 33, 17),
            (2, 2, 1, 4097, 65),
            (1, 1, 257, 19, 130),
            (2, 2, 33, 1032, 72),
            (1, 1, 257, 136, 264),
            (3, 3, 5, 8, 40),
            (1, 1, 1, 1032, 200),
            (3, 1, 33, 264, 40),
        ] {
            let lhs = tensor::<Plain<R>, 3>(
                random_values(batch * m * k, 50),
                [batch, m, k],
                dtype,
                device,
            );
            let rhs = tensor::<Plain<R>, 3>(
                random_values(rhs_batch * k * n, 51),
                [rhs_batch, k, n],
                dtype,
                device,
            );
            let bias = tensor::<Plain<R>, 1>(random_values(n, 52), [n], dtype, device);
            let (reference, scale) = cpu_reference::matmul(
                &values(lhs.clone()),
                &[batch, m, k],
                &values(rhs.clone()),
                &[rhs_batch, k, n],
            );
            let bias_values = values(bias.clone());
            let (lhs, rhs, bias) = (primitive(lhs), primitive(rhs), primitive(bias));
            let client = lhs.client.clone();
            let storage = lhs.dtype.into();
            let case = format!("{dtype:?} {batch}x{m}x{k}x{n} (rhs batch {rhs_batch})");
            // One launch into a poisoned output: its bits, or what was wrong with it.
            let run = |path: MatmulPath, with_bias: bool| -> Result<Vec<u8>, String> {
                let out = nan_poison(&client, device, vec![batch, m, n], lhs.dtype);
                let launch = launch_matmul_on(
                    &client,
                    lhs.clone().binding(),
                    rhs.clone().binding(),
                    with_bias.then(|| bias.clone().binding()),
                    out.clone().binding(),
                    storage,
                    path,
                )
                .expect("valid launch");
                assert_eq!(
                    launch.flops,
                    2 * (batch * m * n * k) as u64,
                    "launch metadata"
                );
                let got = Tensor::<Plain<R>, 3>::from_primitive(TensorPrimitive::Float(out));
                let label = format!("{case} (bias: {with_bias}) on {}", launch.path.label());
                let v = values(got.clone());
                let unwritten = v.iter().filter(|x| !x.is_finite()).count();
                if unwritten > 0 {
                    return Err(format!("{label}: {unwritten} unwritten (NaN) outputs"));
                }
                // Within the matmul's bound of the exact sum (plus the bias: one rounding).
                let mut wrong = (0, 0.0f64, 0);
                for (i, ((g, r), s)) in v.iter().zip(&reference).zip(&scale).enumerate() {
                    let b = if with_bias { bias_values[i % n] } else { 0.0 };
                    let want = r + b;
                    let tol = cpu_reference::tolerance(
                        k,
                        s + b.abs(),
                        want,
                        product_bits(dtype),
                        mantissa_bits(dtype),
                    );
                    if (g - want).abs() > tol {
                        if wrong.0 == 0 {
                            wrong.2 = i;
                        }
                        wrong.0 += 1;
                        wrong.1 = wrong.1.max((g - want).abs() / tol);
                    }
                }
                if wrong.0 > 0 {
                    return Err(format!(
                        "{label}: {} outputs outside the bound (first {}, worst {:.1}x the bound)",
                        wrong.0, wrong.2, wrong.1
                    ));
                }
                Ok(bits(got))
            };
            let path_for = |precision| {
                choose_path(
                    &client,
                    &lhs.clone().binding(),
                    &rhs.clone().binding(),
                    storage,
                    precision,
                )
            };
            let routed_path = path_for(F32Precision::Tf32);
            let ieee_path = path_for(F32Precision::Ieee);
            if dtype == FloatDType::F32 {
                assert!(
                    matches!(ieee_path, MatmulPath::Portable { .. }),
                    "{case}: IEEE f32 must take the portable kernel, took {}",
                    ieee_path.label()
                );
            } else {
                assert_eq!(
                    ieee_path, routed_path,
                    "{case}: the f32 switch moved {dtype:?}"
                );
            }
            // The paths to compare with the routed one bitwise. cubek's: on tensor cores its
            // tilings in both instruction forms (where the runtime has them) with the loader
            // it would take, and the other loaders on the tiling it would take; TF32 keeps
            // one form (the two do not agree there). On shapes the pipelined kernel reads,
            // only that tiling (each cubek kernel is compiled per shape). The pipelined
            // kernel's: in f16 and bf16, every tiling, on the shapes it reads as stored, and
            // cubek's path beside them.
            let pipelined_reads = pipelined::reads_as_stored(&lhs.clone().binding())
                && pipelined::reads_as_stored(&rhs.clone().binding());
            if compared == Compared::Pipelined && !pipelined_reads {
                continue;
            }
            // cubek's path for this problem: the routed one, or the one the router would take
            // if it did not take the pipelined kernel.
            let cubek_path = tensor_core_path(
                &client,
                &lhs.clone().binding(),
                &rhs.clone().binding(),
                storage,
            )
            .filter(|_| !matches!(routed_path, MatmulPath::Portable { .. }));
            let mut others = Vec::new();
            if let (
                Compared::CubekAndPortable,
                Some(MatmulPath::TensorCore {
                    tiling: cubek_tiling,
                    loader,
                }),
            ) = (compared, cubek_path)
            {
                let kinds: &[TileKind] = if tensor_core::forms_agree(storage) {
                    &[TileKind::Wmma, TileKind::MmaSync]
                } else {
                    std::slice::from_ref(&cubek_tiling.kind)
                };
                let tilings = if pipelined_reads {
                    std::slice::from_ref(&cubek_tiling)
                } else {
                    tilings_for(storage)
                };
                for &tiling in tilings {
                    for &kind in kinds {
                        others.push((TensorCoreTiling { kind, ..tiling }, loader));
                    }
                }
                // Plain loads only where they give the TMA loads' bits (not f32, where the
                // router keeps M out of the choice: see `transposed_lhs_widths`).
                let loaders: &[Loader] = match (tensor_core::loaders_agree(storage), loader) {
                    (true, _) => &[Loader::SpecializedTma, Loader::Tma, Loader::Cyclic],
                    (false, Loader::Cyclic) => &[],
                    (false, _) => &[Loader::SpecializedTma, Loader::Tma],
                };
                for &other in loaders.iter().filter(|&&other| other != loader) {
                    others.push((cubek_tiling, other));
                }
                others
                    .retain(|(tiling, _)| tensor_core::is_supported(&client, storage, tiling.kind));
            }
            let mut others: Vec<MatmulPath> = others
                .into_iter()
                .map(|(tiling, loader)| MatmulPath::TensorCore { tiling, loader })
                .collect();
            if compared == Compared::Pipelined {
                others.extend(cubek_path);
                others.extend(
                    PIPELINED_TILINGS
                        .into_iter()
                        .filter(|&tiling| pipelined::is_supported(&client, storage, tiling))
                        .filter(|&tiling| {
                            pipelined::reads_operands(tiling, &[batch, m, k], &[rhs_batch, k, n])
                        })
                        .map(|tiling| MatmulPath::Pipelined { tiling }),
                );
            }
            others.retain(|&path| path != routed_path);
            for with_bias in [false, true] {
                let routed_bits = match run(routed_path, with_bias) {
                    Ok(bits) => bits,
                    Err(failure) => {
                        failures.push(failure);
                        continue;
                    }
                };
                // Every portable tiling gives one set of bits: the routed path's where it is
                // portable (and IEEE f32's on every runtime).
                if compared == Compared::CubekAndPortable {
                    let portable = PORTABLE_TILINGS.map(|tiling| {
                        let path = MatmulPath::Portable { tiling };
                        (path, run(path, with_bias))
                    });
                    let reference_bits = match routed_path {
                        MatmulPath::Portable { .. } => Some(routed_bits.clone()),
                        _ => portable[0].1.clone().ok(),
                    };
                    for (path, result) in portable {
                        match result {
                            Err(failure) => failures.push(failure),
                            Ok(bits) if Some(&bits) != reference_bits.as_ref() => {
                                failures.push(format!(
                                    "{case} (bias: {with_bias}): {} differs from the portable bits",
                                    path.label()
                                ))
                            }
                            Ok(_) => {}
                        }
                    }
                }
                for &path in &others {
                    match run(path, with_bias) {
                        Err(failure) => failures.push(failure),
                        Ok(other_bits) if other_bits != routed_bits => {
                            let differ = other_bits
                                .chunks(storage.size())
                                .zip(routed_bits.chunks(storage.size()))
                                .filter(|(a, b)| a != b)
                                .count();
                            failures.push(format!(
                                "{case} (bias: {with_bias}): {} and {} differ in {differ} outputs",
                                path.label(),
                                routed_path.label()
                            ));
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The IEEE f32 switch (`mode::ieee_f32`): f32 products with exact products and f32 sums
/// (the bound with no operand rounding), invariant to the rows beside them, the precision
/// fixed when the op is called (the fused form runs it later), and f16/bf16 untouched.
fn ieee_f32_switch<B: KernelHost>(device: &B::Device) {
    let _mode = mode_exclusive();
    let _serial = serial();
    type X<B> = BatchInvariant<B>;
    let (rows, k, n) = (257, 300, 131);
    for dtype in float_dtypes::<X<B>>(device) {
        let x = tensor::<X<B>, 2>(random_values(rows * k, 61), [rows, k], dtype, device);
        let w = tensor::<X<B>, 2>(random_values(k * n, 62), [k, n], dtype, device);
        let plain = bits(x.clone().matmul(w.clone()));
        let guard = mode::ieee_f32::scoped(true);
        let ieee = x.clone().matmul(w.clone());
        let ieee_bits = bits(ieee.clone());
        if dtype != FloatDType::F32 {
            assert!(
                ieee_bits == plain,
                "{dtype:?}: the f32 switch changed the product"
            );
            drop(guard);
            continue;
        }
        check_batches(x.clone(), 0, "IEEE f32 matmul", |t| t.matmul(w.clone()));
        let linear = LinearConfig::new(k, n).init::<X<B>>(device);
        check_batches(x.clone(), 0, "IEEE f32 linear", |t| linear.forward(t));
        let (reference, scale) =
            cpu_reference::matmul(&values(x.clone()), &[rows, k], &values(w.clone()), &[k, n]);
        for (i, got) in values(ieee).iter().enumerate() {
            let bound = cpu_reference::tolerance(k, scale[i], reference[i], 23, 23);
            assert!(
                (got - reference[i]).abs() <= bound,
                "IEEE f32 [{}, {}]: got {got}, f64 reference {}, bound {bound}",
                i / n,
                i % n,
                reference[i]
            );
        }
        // Called with the switch on, read after it is off: still IEEE.
        let lazy = x.clone().matmul(w.clone());
        drop(guard);
        assert!(
            bits(lazy) == ieee_bits,
            "IEEE f32: a product called under the switch changed once it was off"
        );
        assert!(
            bits(x.clone().matmul(w.clone())) == plain,
            "IEEE f32: the switch did not restore TF32"
        );
    }
}

fn launch_refuses_bad_arguments<R: CubeRuntime>(device: &R::Device) {
    let lhs = primitive(tensor::<Plain<R>, 2>(
        random_values(12, 1),
        [3, 4],
        FloatDType::F32,
        device,
    ));
    let rhs = primitive(tensor::<Plain<R>, 2>(
        random_values(10, 2),
        [5, 2],
        FloatDType::F32,
        device,
    ));
    let out = primitive(Tensor::<Plain<R>, 2>::zeros([3, 2], device));
    let client = lhs.client.clone();
    let storage = lhs.dtype.into();
    let err = launch_matmul(
        &client,
        lhs.clone().binding(),
        rhs.binding(),
        out.clone().binding(),
        storage,
        F32Precision::Tf32,
    );
    assert!(matches!(err, Err(MatmulError::InnerDims { .. })), "{err:?}");
    let rhs = primitive(tensor::<Plain<R>, 2>(
        random_values(8, 2),
        [4, 2],
        FloatDType::F32,
        device,
    ));
    let bad_out = primitive(Tensor::<Plain<R>, 2>::zeros([2, 3], device));
    let err = launch_matmul(
        &client,
        lhs.clone().binding(),
        rhs.clone().binding(),
        bad_out.binding(),
        storage,
        F32Precision::Tf32,
    );
    assert!(matches!(err, Err(MatmulError::BadOutput { .. })), "{err:?}");
    // A bias must be a contiguous [N]: the epilogue indexes it by output column.
    let out = nan_poison(&client, device, vec![3, 2], lhs.dtype);
    for (bias_shape, why) in [(vec![3], "wrong length"), (vec![1, 2], "not 1-D")] {
        let bias = primitive(tensor::<Plain<R>, 1>(
            random_values(bias_shape.iter().product(), 3),
            [bias_shape.iter().product()],
            FloatDType::F32,
            device,
        ));
        let bias = Plain::<R>::float_reshape(bias, Shape::from(bias_shape.clone()));
        let err = launch_matmul_on(
            &client,
            lhs.clone().binding(),
            rhs.clone().binding(),
            Some(bias.binding()),
            out.clone().binding(),
            storage,
            MatmulPath::Portable {
                tiling: PORTABLE_NARROW,
            },
        );
        assert!(
            matches!(&err, Err(MatmulError::BadBias { n: 2, shape, .. }) if *shape == bias_shape),
            "{why}: {err:?}"
        );
    }
}

/// `linear` rounds once: the bias meets the f32 accumulator, as vLLM's batch-invariant `addmm` does.
/// With `W` all ones and a bias of 1, `x = [h, h^2]` (h half an ulp of 1 in the dtype)
/// sums to `h + h^2` exactly in f32, just above half an ulp: `1 + sum` rounds up to the next
/// value after 1. A matmul rounded to the dtype first gives `h` (`h + h^2` is a tie there,
/// rounded to even), and `1 + h` is a tie again: 1. In f32 both forms agree; `x = [2^24, -2^24]` then shows the bias
/// is added after the K walk (added first, it would be lost in `2^24 + 1`).
fn linear_rounds_once<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        let (x, want): ([f32; 2], f64) = match dtype {
            FloatDType::F32 => ([16_777_216.0, -16_777_216.0], 1.0),
            FloatDType::BF16 => ([2f32.powi(-8), 2f32.powi(-16)], 1.0 + 2f64.powi(-7)),
            FloatDType::F16 => ([2f32.powi(-11), 2f32.powi(-22)], 1.0 + 2f64.powi(-10)),
            other => panic!("no case for {other:?}"),
        };
        for rows in [1, 3, 7] {
            let x = tensor::<BatchInvariant<B>, 2>(x.repeat(rows), [rows, 2], dtype, device);
            let w = tensor::<BatchInvariant<B>, 2>(vec![1.0; 2 * 3], [2, 3], dtype, device);
            let b = tensor::<BatchInvariant<B>, 1>(vec![1.0; 3], [3], dtype, device);
            let got = Tensor::<BatchInvariant<B>, 2>::from_primitive(TensorPrimitive::Float(
                BatchInvariant::<B>::linear(
                    x.into_primitive().tensor(),
                    w.into_primitive().tensor(),
                    Some(b.into_primitive().tensor()),
                ),
            ));
            assert_eq!(
                values(got),
                vec![want; rows * 3],
                "{dtype:?} linear over {rows} rows: the bias must join the f32 sum after the K walk"
            );
        }
    }
}

/// The backend op is called directly: Burn's `Tensor` API checks some of this itself.
fn bad_input_names_the_op<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let prim = |shape: Vec<usize>, dtype: FloatDType| {
        let n = shape.iter().product();
        let t = Tensor::<BatchInvariant<B>, 1>::from_floats(random_values(n, 7).as_slice(), device);
        let t = if dtype == FloatDType::F32 {
            t
        } else {
            t.cast(dtype)
        };
        BatchInvariant::<B>::float_reshape(t.into_primitive().tensor(), Shape::from(shape))
    };
    let cases: Vec<(Vec<usize>, Vec<usize>, FloatDType, &str)> = vec![
        (vec![3, 4], vec![5, 2], FloatDType::F32, "inner dims"),
        (vec![2, 3, 4], vec![3, 4, 2], FloatDType::F32, "batch dims"),
        (vec![3, 4], vec![1, 4, 2], FloatDType::F32, "same rank"),
    ];
    for (l, r, dtype, reason) in cases {
        let (lp, rp) = (prim(l.clone(), dtype), prim(r.clone(), dtype));
        let msg = panic_message(move || BatchInvariant::<B>::float_matmul(lp, rp));
        assert!(
            msg.contains("BatchInvariant::float_matmul")
                && msg.contains(reason)
                && msg.contains(&format!("{l:?}"))
                && msg.contains(&format!("{r:?}")),
            "{msg}"
        );
    }
    // `linear`: a bias of length 1 would broadcast over the outputs without complaint in
    // Burn's composite; every shape that does not fit is refused with the op and the shapes.
    // (x shape, weight shape, bias shape, what the message must say)
    type LinearCase = (Vec<usize>, Vec<usize>, Option<Vec<usize>>, &'static str);
    let linear_cases: Vec<LinearCase> = vec![
        (
            vec![2, 3, 4],
            vec![4, 5],
            Some(vec![1]),
            "bias must be [d_output] = [5]",
        ),
        (
            vec![2, 3, 4],
            vec![4, 5],
            Some(vec![6]),
            "bias must be [d_output] = [5]",
        ),
        (
            vec![2, 3, 4],
            vec![4, 5],
            Some(vec![1, 5]),
            "bias must be [d_output] = [5]",
        ),
        (vec![3, 4], vec![5, 2], None, "must be d_input = 5"),
        (
            vec![3, 4],
            vec![1, 4, 2],
            None,
            "weight must be [d_input, d_output]",
        ),
    ];
    for (x, w, b, reason) in linear_cases {
        let (xp, wp) = (
            prim(x.clone(), FloatDType::F32),
            prim(w.clone(), FloatDType::F32),
        );
        let bp = b.clone().map(|b| prim(b, FloatDType::F32));
        let msg = panic_message(move || BatchInvariant::<B>::linear(xp, wp, bp));
        assert!(
            msg.contains("BatchInvariant::linear")
                && msg.contains(reason)
                && msg.contains(&format!("{x:?}"))
                && msg.contains(&format!("{w:?}"))
                && b.is_none_or(|b| msg.contains(&format!("{b:?}"))),
            "{msg}"
        );
    }
    // A fitting bias in f32 gives Burn's composite bit for bit (one rounding either way);
    // `linear_rounds_once` shows where f16 and bf16 differ.
    let (xp, wp, bp) = (
        prim(vec![2, 3, 4], FloatDType::F32),
        prim(vec![4, 5], FloatDType::F32),
        prim(vec![5], FloatDType::F32),
    );
    let got = BatchInvariant::<B>::linear(xp.clone(), wp.clone(), Some(bp.clone()));
    let want = BatchInvariant::<B>::float_add(
        BatchInvariant::<B>::float_matmul(
            xp,
            BatchInvariant::<B>::float_reshape(wp, Shape::from(vec![1, 4, 5])),
        ),
        BatchInvariant::<B>::float_reshape(bp, Shape::from(vec![1, 1, 5])),
    );
    let as_tensor = |t| Tensor::<BatchInvariant<B>, 3>::from_primitive(TensorPrimitive::Float(t));
    assert!(
        bits(as_tensor(got)) == bits(as_tensor(want)),
        "linear differs from its composite"
    );

    let dtypes = float_dtypes::<B>(device);
    if let Some(&other) = dtypes.iter().find(|d| **d != FloatDType::F32) {
        let (lp, rp) = (prim(vec![3, 4], FloatDType::F32), prim(vec![4, 2], other));
        let msg = panic_message(move || BatchInvariant::<B>::float_matmul(lp, rp));
        assert!(
            msg.contains("float_matmul")
                && msg.contains("different dtypes")
                && msg.contains("[3, 4]"),
            "{msg}"
        );
    }
}

#[test]
fn matmul_transposed_lhs_of_every_width() {
    on_test_backend!(transposed_lhs_widths);
}

#[test]
fn matmul_linear_rounds_once() {
    on_test_backend!(linear_rounds_once);
}

#[test]
fn matmul_rows_are_batch_invariant() {
    on_test_backend!(rows_are_invariant);
}

#[test]
fn matmul_odd_wide_rows_are_batch_invariant() {
    on_test_backend!(odd_wide_rows_are_invariant);
}

#[test]
fn matmul_batched_broadcast_and_linear_are_invariant() {
    on_test_backend!(batched_and_linear_are_invariant);
}

#[test]
fn matmul_batch_inside_row_views_are_invariant() {
    on_test_backend!(batch_inside_row_views_are_invariant);
}

#[test]
fn matmul_batched_matrix_vector_is_invariant() {
    on_test_backend!(batched_matrix_vector_is_invariant);
}

#[test]
fn matmul_accuracy_and_views() {
    on_test_backend!(accuracy_and_views);
}

#[test]
fn matmul_ieee_f32_switch() {
    on_test_backend!(ieee_f32_switch);
}

#[test]
fn matmul_empty_problems() {
    on_test_backend!(empty_problems);
}

#[test]
fn kernel_matmul_writes_every_output_on_every_path() {
    on_test_runtime!(poisoned_cubek_and_portable);
}

#[test]
fn kernel_matmul_pipelined_writes_every_output_in_the_routed_bits() {
    on_test_runtime!(poisoned_pipelined);
}

#[test]
fn kernel_matmul_refuses_bad_arguments() {
    on_test_runtime!(launch_refuses_bad_arguments);
}

#[test]
fn bad_input_matmul_names_the_op() {
    on_test_backend!(bad_input_names_the_op);
}
