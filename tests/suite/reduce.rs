//! The reductions: `float_sum_dim`, `float_mean_dim` and `float_prod_dim` through
//! `BatchInvariant<B>` (bitwise invariance to the batch along the last, first and a middle
//! dim, accuracy against the f64 reference, agreement of the two thread mappings, the full
//! reductions), and `batch_invariant_kernels::reduce` called directly (outputs poisoned with
//! NaN must come back fully written; bad arguments are refused).

use batch_invariant_kernels::layout::FULL_CUBES_FROM_ROWS;
use batch_invariant_kernels::reduce::{cpu_reference, launch_reduce_dim, ReduceDimError, ReduceOp};
use burn::tensor::{FloatDType, Tensor, TensorPrimitive};
use burn_batch_invariant::BatchInvariant;
use burn_batch_invariant_tests::*;
use burn_cubecl::CubeRuntime;

const LENGTHS: [usize; 5] = [1, 5, 1000, 4096, 4097];
const MAX_BATCH: usize = 1024;

fn apply<B: burn::tensor::backend::Backend, const D: usize>(
    x: Tensor<B, D>,
    dim: usize,
    op: ReduceOp,
) -> Tensor<B, D> {
    match op {
        ReduceOp::Sum => x.sum_dim(dim),
        ReduceOp::Prod => x.prod_dim(dim),
        ReduceOp::Mean => x.mean_dim(dim),
    }
}

/// [`check_batches`] for the sum and the mean of `x` along `reduce`, batches cut along
/// `batch`.
fn check_reductions<B: burn::tensor::backend::Backend, const D: usize>(
    x: Tensor<B, D>,
    reduce: usize,
    batch: usize,
    what: &str,
) {
    for op in [ReduceOp::Mean, ReduceOp::Sum] {
        check_batches(x.clone(), batch, &format!("{what} {op:?}"), |t| {
            apply(t, reduce, op)
        });
    }
}

fn last_dim_invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        for len in LENGTHS {
            let x = tensor::<BatchInvariant<B>, 2>(
                random_values(MAX_BATCH * len, len as u64),
                [MAX_BATCH, len],
                dtype,
                device,
            );
            check_reductions(x, 1, 0, &format!("last dim, len {len}, {dtype:?}"));
        }
    }
}

/// More rows than `FULL_CUBES_FROM_ROWS`, where the launch packs several rows into a cube,
/// against prefixes and single rows, which get one row per cube: the packing must not show.
fn packed_rows_invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let rows = FULL_CUBES_FROM_ROWS + 9;
    // 5: one thread per row; 100 and 1028: vector loads (`reduce_vector_kernel`, eight rows
    // per cube here, one per cube for the batches below), 1028 through a partial group of
    // vectors and a tail loop.
    for (len, dtypes) in [
        (5usize, vec![FloatDType::F32]),
        (100, vec![FloatDType::F32]),
        (1028, float_dtypes::<B>(device)),
    ] {
        for dtype in dtypes {
            let x = tensor::<BatchInvariant<B>, 2>(
                random_values(rows * len, 40 + len as u64),
                [rows, len],
                dtype,
                device,
            );
            check_reductions(x, 1, 0, &format!("{rows} packed rows of {len}, {dtype:?}"));
        }
    }
}

/// Rows at and beyond the switch to 256 partials (`LONG_ROW_MIN_LEN`), up to a vocabulary.
fn long_row_invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        for len in [8191, 8192, 128256] {
            let batch = 64;
            let x = tensor::<BatchInvariant<B>, 2>(
                random_values(batch * len, 7000 + len as u64),
                [batch, len],
                dtype,
                device,
            );
            check_reductions(x, 1, 0, &format!("long rows, len {len}, {dtype:?}"));
        }
    }
}

fn first_dim_invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        for len in LENGTHS {
            let batch = 257;
            let x = tensor::<BatchInvariant<B>, 2>(
                random_values(batch * len, 1000 + len as u64),
                [len, batch],
                dtype,
                device,
            );
            check_reductions(x, 0, 1, &format!("first dim, len {len}, {dtype:?}"));
        }
    }
}

fn middle_dim_invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    for dtype in float_dtypes::<B>(device) {
        for len in [5, 1000, 4097] {
            let batch = 64;
            let x = tensor::<BatchInvariant<B>, 3>(
                random_values(3 * len * batch, 2000 + len as u64),
                [3, len, batch],
                dtype,
                device,
            );
            check_reductions(x, 1, 2, &format!("middle dim, len {len}, {dtype:?}"));
        }
    }
}

/// A row stored contiguously, the same row stored with a stride, and the same row one
/// element into a wider buffer go through different thread mappings (vector loads where
/// the length is a multiple of 4, one thread per row, the lanes kernel for the unaligned
/// view); the order, hence the bits, must be the same, and for f32 sums the bits of
/// `cpu_reference::reduce_in_order`.
fn mappings_agree<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    for dtype in float_dtypes::<B>(device) {
        for len in [1, 31, 32, 33, 1000, 2180, 4096, 4097, 8191, 8192, 10000] {
            let rows = 7;
            let data = random_values(rows * len, 3000 + len as u64);
            let transposed = transposed_values(&data, rows, len);
            let padded: Vec<f32> = data
                .chunks(len)
                .flat_map(|row| std::iter::once(f32::NAN).chain(row.iter().copied()))
                .collect();
            let contiguous =
                tensor::<BatchInvariant<B>, 2>(data.clone(), [rows, len], dtype, device);
            let strided =
                tensor::<BatchInvariant<B>, 2>(transposed, [len, rows], dtype, device).transpose();
            let shifted = tensor::<BatchInvariant<B>, 2>(padded, [rows, len + 1], dtype, device)
                .narrow(1, 1, len);
            if dtype == FloatDType::F32 {
                // The documented order itself, spelled out on the CPU in f32.
                let got = values(apply(contiguous.clone(), 1, ReduceOp::Sum));
                for (r, row) in data.chunks(len).enumerate() {
                    let want = cpu_reference::reduce_in_order(row, ReduceOp::Sum);
                    assert!(
                        got[r].to_bits() == (want as f64).to_bits(),
                        "len {len} row {r}: the kernel's sum {} is not the documented order's {want}",
                        got[r]
                    );
                }
            }
            for op in [ReduceOp::Mean, ReduceOp::Sum] {
                let a = bits(apply(contiguous.clone(), 1, op));
                assert!(
                    a == bits(apply(strided.clone(), 1, op)),
                    "len {len} {dtype:?} {op:?}: contiguous and strided rows reduce differently"
                );
                assert!(
                    a == bits(apply(shifted.clone(), 1, op)),
                    "len {len} {dtype:?} {op:?}: aligned and shifted rows reduce differently"
                );
            }
        }
    }
}

fn accuracy<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    for dtype in float_dtypes::<B>(device) {
        for (shape, dim) in [
            ([64usize, 4097usize], 1usize),
            ([4097, 3], 0),
            ([16, 1000], 1),
            ([5, 1], 1),
            ([4, 128256], 1),
            ([10000, 3], 0),
            ([3, 5], 0),
        ] {
            let x = tensor::<BatchInvariant<B>, 2>(
                random_values(shape[0] * shape[1], 4000 + shape[dim] as u64),
                shape,
                dtype,
                device,
            );
            let input = values(x.clone());
            let abs = cpu_reference::abs_sum_dim(&input, &shape, dim);
            for op in [ReduceOp::Mean, ReduceOp::Sum] {
                let got = values(apply(x.clone(), dim, op));
                let want = cpu_reference::reduce_dim(&input, &shape, dim, op);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    if w.abs() > max_finite(dtype) {
                        // A sum past the output dtype's range (f16 over 65504) is +-inf.
                        assert!(
                            g.is_infinite() && g.signum() == w.signum(),
                            "{op:?} overflow [{i}]: {g}"
                        );
                        continue;
                    }
                    let tol =
                        cpu_reference::tolerance(shape[dim], abs[i], *w, op, mantissa_bits(dtype));
                    assert!(
                        (g - w).abs() <= tol,
                        "{op:?} {shape:?} dim {dim} {dtype:?} element {i}: got {g}, f64 reference {w}, bound {tol}"
                    );
                }
            }
        }
    }
}

/// `Tensor::mean_dims` (several dims at once) reaches the routed op one dim at a time.
fn several_dims<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let shape = [4, 33, 70];
    let x = tensor::<BatchInvariant<B>, 3>(
        random_values(4 * 33 * 70, 5000),
        shape,
        FloatDType::F32,
        device,
    );
    let both = x.clone().mean_dims(&[1, 2]);
    let alone = x.clone().narrow(0, 2, 1).mean_dims(&[1, 2]);
    assert!(
        bits(alone) == bits(both.clone().narrow(0, 2, 1)),
        "mean_dims row alone vs in batch"
    );
    let input = values(x);
    let got = values(both);
    for (b, g) in got.iter().enumerate() {
        let slice = &input[b * 33 * 70..(b + 1) * 33 * 70];
        let want = slice.iter().sum::<f64>() / slice.len() as f64;
        let bound = 1e-5 * slice.iter().map(|v| v.abs()).sum::<f64>() / slice.len() as f64;
        assert!(
            (g - want).abs() <= bound,
            "mean_dims batch {b}: {g} vs {want}"
        );
    }
}

#[test]
fn reduce_last_dim_is_batch_invariant() {
    on_test_backend!(last_dim_invariance);
}

#[test]
fn reduce_packed_rows_are_batch_invariant() {
    on_test_backend!(packed_rows_invariance);
}

#[test]
fn reduce_long_rows_are_batch_invariant() {
    on_test_backend!(long_row_invariance);
}

#[test]
fn reduce_first_dim_is_batch_invariant() {
    on_test_backend!(first_dim_invariance);
}

#[test]
fn reduce_middle_dim_is_batch_invariant() {
    on_test_backend!(middle_dim_invariance);
}

#[test]
fn reduce_thread_mappings_agree_bitwise() {
    on_test_backend!(mappings_agree);
}

#[test]
fn reduce_matches_f64_reference() {
    on_test_backend!(accuracy);
}

#[test]
fn reduce_several_dims() {
    on_test_backend!(several_dims);
}

/// `float_sum` / `float_mean` over the whole tensor: the same call twice gives the same bits
/// (Burn's may not: it can combine with float atomics), a strided view gives the bits of the
/// same values stored contiguously, and the value is within the reduce bound of f64.
fn full_reductions_are_deterministic<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    for dtype in float_dtypes::<B>(device) {
        for (rows, cols) in [(1usize, 1usize), (3, 1000), (257, 4099)] {
            let data = random_values(rows * cols, 900 + cols as u64);
            let x = tensor::<BatchInvariant<B>, 2>(data.clone(), [rows, cols], dtype, device);
            let xt = tensor::<BatchInvariant<B>, 2>(
                transposed_values(&data, rows, cols),
                [cols, rows],
                dtype,
                device,
            )
            .transpose();
            let len = rows * cols;
            let exact = values(x.clone());
            for op in [ReduceOp::Sum, ReduceOp::Mean] {
                let f = |t: Tensor<BatchInvariant<B>, 2>| match op {
                    ReduceOp::Sum => t.sum(),
                    ReduceOp::Prod => t.prod(),
                    ReduceOp::Mean => t.mean(),
                };
                let first = f(x.clone());
                assert!(
                    bits(first.clone()) == bits(f(x.clone())),
                    "{dtype:?} {rows}x{cols} {op:?}: two calls differ"
                );
                assert!(
                    bits(first.clone()) == bits(f(xt.clone())),
                    "{dtype:?} {rows}x{cols} {op:?}: a transposed view differs"
                );
                let reference = cpu_reference::reduce_dim(&exact, &[len], 0, op)[0];
                let abs_sum = cpu_reference::abs_sum_dim(&exact, &[len], 0)[0];
                let got = values(first)[0];
                if reference.abs() > max_finite(dtype) {
                    // The f32 total is rounded to a dtype it does not fit (f16 sums of 10^6
                    // entries): IEEE gives the infinity of the reference's sign.
                    assert!(
                        got.is_infinite() && got.signum() == reference.signum(),
                        "{dtype:?} {rows}x{cols} {op:?}: {got}, reference {reference} overflows"
                    );
                    continue;
                }
                let tol =
                    cpu_reference::tolerance(len, abs_sum, reference, op, mantissa_bits(dtype));
                assert!(
                    (got - reference).abs() <= tol,
                    "{dtype:?} {rows}x{cols} {op:?}: {got} vs reference {reference} (bound {tol})"
                );
            }
        }
    }
}

#[test]
fn reduce_full_sum_and_mean_are_deterministic() {
    on_test_backend!(full_reductions_are_deterministic);
}

/// `float_prod_dim` and `float_prod`: the sum's order with `*` for `+`. Values near 1 keep
/// products of 4097 entries in range, so the bits carry information.
fn products_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let batch = 257;
    for dtype in float_dtypes::<B>(device) {
        for len in [1usize, 5, 1000, 4097] {
            let data: Vec<f32> = random_values(batch * len, 500 + len as u64)
                .into_iter()
                .map(|v| 1.0 + v / 64.0)
                .collect();
            let x = tensor::<BatchInvariant<B>, 2>(data, [batch, len], dtype, device);
            let exact = values(x.clone());
            for (dim, bdim) in [(1usize, 0usize), (0, 1)] {
                let full = x.clone().prod_dim(dim);
                let shape = x.dims();
                let reference = cpu_reference::reduce_dim(&exact, &shape, dim, ReduceOp::Prod);
                let got = values(full.clone());
                for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                    if r.abs() > max_finite(dtype) {
                        assert!(
                            g.is_infinite(),
                            "prod {dtype:?} output {i}: {g}, reference {r} overflows"
                        );
                        continue;
                    }
                    let tol = cpu_reference::tolerance(
                        shape[dim],
                        r.abs(),
                        *r,
                        ReduceOp::Prod,
                        mantissa_bits(dtype),
                    );
                    assert!(
                        (g - r).abs() <= tol,
                        "prod dim {dim} len {len} {dtype:?} output {i}: {g} vs {r} (bound {tol})"
                    );
                }
                let max = shape[bdim];
                for m in [1, 2, 3, 7, 64, 257].into_iter().filter(|&m| m <= max) {
                    let part = x.clone().narrow(bdim, 0, m).prod_dim(dim);
                    assert!(
                        bits(part) == bits(full.clone().narrow(bdim, 0, m)),
                        "prod dim {dim} len {len} {dtype:?}: the first {m} rows differ"
                    );
                }
            }
            let whole = x.clone().prod();
            assert!(
                bits(whole.clone()) == bits(x.clone().prod()),
                "prod twice differs"
            );
        }
    }
}

#[test]
fn reduce_prod_dim_is_batch_invariant() {
    on_test_backend!(products_are_invariant);
}

fn poisoned_outputs<R: CubeRuntime>(device: &R::Device) {
    let _mode = mode_shared();
    // (rows, len, reduce the stored-transposed layout?): covers the lanes mapping with a
    // ragged last cube (13 rows), the unit mapping with a ragged last cube (131 rows) and
    // short rows, which take the unit mapping even when contiguous; then long rows (256
    // partials) in both mappings.
    let cases = [
        (13usize, 4097usize, false),
        (131, 1000, true),
        (300, 5, false),
        (1, 1, false),
    ];
    for dtype in float_dtypes::<Plain<R>>(device) {
        for (rows, len, strided) in cases {
            let data = random_values(rows * len, 6000 + len as u64);
            let x: Tensor<Plain<R>, 2> = if strided {
                let t = transposed_values(&data, rows, len);
                tensor::<Plain<R>, 2>(t, [len, rows], dtype, device).transpose()
            } else {
                tensor::<Plain<R>, 2>(data, [rows, len], dtype, device)
            };
            for op in [ReduceOp::Mean, ReduceOp::Sum, ReduceOp::Prod] {
                let input = primitive(x.clone());
                let out = nan_poison(&input.client, device, vec![rows, 1], input.dtype);
                let client = input.client.clone();
                let storage = input.dtype.into();
                launch_reduce_dim(
                    &client,
                    input.binding(),
                    out.clone().binding(),
                    1,
                    op,
                    storage,
                )
                .expect("valid launch");
                let got = Tensor::<Plain<R>, 2>::from_primitive(TensorPrimitive::Float(out));
                let got_values = values(got.clone());
                assert!(
                    got_values.iter().all(|v| v.is_finite()),
                    "{rows}x{len} strided={strided} {dtype:?} {op:?}: unwritten (NaN) outputs: {:?}",
                    got_values.iter().enumerate().filter(|(_, v)| !v.is_finite()).map(|(i, _)| i).collect::<Vec<_>>()
                );
                // The launch through the decorator must give the same bits.
                // `from_data` stores in the backend's default float type; cast back (exact).
                let through_burn = to_backend::<Plain<R>, BatchInvariant<Plain<R>>, 2>(x.clone());
                let through_burn = if dtype == FloatDType::F32 {
                    through_burn
                } else {
                    through_burn.cast(dtype)
                };
                let through_burn = match op {
                    ReduceOp::Mean => through_burn.mean_dim(1),
                    ReduceOp::Sum => through_burn.sum_dim(1),
                    ReduceOp::Prod => through_burn.prod_dim(1),
                };
                let (direct, routed) = (values(got.clone()), values(through_burn.clone()));
                assert!(
                    bits(got) == bits(through_burn),
                    "{rows}x{len} strided={strided} {dtype:?} {op:?}: direct launch and decorator differ: {:?} vs {:?}",
                    &direct[..direct.len().min(4)],
                    &routed[..routed.len().min(4)]
                );
            }
        }
    }
}

fn launch_refuses_bad_arguments<R: CubeRuntime>(device: &R::Device) {
    let x = primitive(tensor::<Plain<R>, 2>(
        random_values(12, 1),
        [3, 4],
        FloatDType::F32,
        device,
    ));
    let client = x.client.clone();
    let storage = x.dtype.into();
    let out_ok = primitive(Tensor::<Plain<R>, 2>::zeros([3, 1], device));
    let err = launch_reduce_dim(
        &client,
        x.clone().binding(),
        out_ok.clone().binding(),
        2,
        ReduceOp::Sum,
        storage,
    );
    assert_eq!(err, Err(ReduceDimError::DimOutOfRange { dim: 2, rank: 2 }));
    let out_wrong = primitive(Tensor::<Plain<R>, 2>::zeros([4, 1], device));
    let err = launch_reduce_dim(
        &client,
        x.clone().binding(),
        out_wrong.binding(),
        1,
        ReduceOp::Sum,
        storage,
    );
    assert!(
        matches!(err, Err(ReduceDimError::BadOutput { .. })),
        "{err:?}"
    );
    let empty = primitive(Tensor::<Plain<R>, 2>::zeros([3, 0], device));
    let err = launch_reduce_dim(
        &client,
        empty.binding(),
        out_ok.binding(),
        1,
        ReduceOp::Mean,
        storage,
    );
    assert_eq!(err, Err(ReduceDimError::EmptyReduction { dim: 1 }));
}

#[test]
fn kernel_reduce_writes_every_output() {
    on_test_runtime!(poisoned_outputs);
}

#[test]
fn kernel_reduce_refuses_bad_arguments() {
    on_test_runtime!(launch_refuses_bad_arguments);
}
