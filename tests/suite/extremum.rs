//! The max/min family along a dim through `BatchInvariant<B>`: bitwise invariance to the
//! batch along every dim, exact agreement with the reference scan (values and indices, ties
//! to the smallest index, NaN first), and the `Tensor` API entry points.

use batch_invariant_kernels::extremum::{cpu_reference, ExtremumOp, CHUNK_LEN};
use batch_invariant_kernels::layout::FULL_CUBES_FROM_ROWS;
use burn::tensor::{FloatDType, Int, Tensor};
use burn_batch_invariant_tests::*;

const OPS: [ExtremumOp; 3] = [ExtremumOp::Max, ExtremumOp::Min, ExtremumOp::MaxAbs];

type Pair<B> = (
    Tensor<BatchInvariant<B>, 2>,
    Tensor<BatchInvariant<B>, 2, Int>,
);

fn apply<B: KernelHost>(x: Tensor<BatchInvariant<B>, 2>, dim: usize, op: ExtremumOp) -> Pair<B> {
    match op {
        ExtremumOp::Max => x.max_dim_with_indices(dim),
        ExtremumOp::Min => x.min_dim_with_indices(dim),
        ExtremumOp::MaxAbs => (x.clone().max_abs_dim(dim), x.abs().argmax(dim)),
    }
}

/// Values drawn from a few levels so that ties are everywhere.
fn tied_values(len: usize, seed: u64) -> Vec<f32> {
    random_values(len, seed)
        .into_iter()
        .map(|v| (v * 4.0).round() / 4.0)
        .collect()
}

fn invariance_and_reference<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let batch = 257;
    for dtype in float_dtypes::<B>(device) {
        // (4096: a whole cube per row, four vector loads in flight per thread.)
        for len in [1usize, 5, 1000, 4096, 4097, 8193] {
            let data = tied_values(batch * len, 300 + len as u64);
            // Last dim: rows of `len`; first dim: the stored-transposed layout.
            let rows = tensor::<BatchInvariant<B>, 2>(data.clone(), [batch, len], dtype, device);
            let cols = tensor::<BatchInvariant<B>, 2>(
                transposed_values(&data, batch, len),
                [len, batch],
                dtype,
                device,
            );
            for (x, dim, what) in [(rows, 1, "last dim"), (cols, 0, "first dim")] {
                let bdim = 1 - dim;
                let exact = values(x.clone());
                let shape = x.dims();
                for op in OPS {
                    let (v, i) = apply::<B>(x.clone(), dim, op);
                    let reference = cpu_reference::extremum_dim(&exact, &shape, dim, op);
                    let (got_v, got_i) = (
                        values(v.clone()),
                        i.clone()
                            .into_data()
                            .convert::<i64>()
                            .to_vec::<i64>()
                            .unwrap(),
                    );
                    for (r, ((gv, gi), (rv, ri))) in
                        got_v.iter().zip(&got_i).zip(&reference).enumerate()
                    {
                        assert!(
                            *gi as usize == *ri && (gv == rv || (gv.is_nan() && rv.is_nan())),
                            "{what} len {len} {dtype:?} {op:?} output {r}: ({gv}, {gi}) vs reference ({rv}, {ri})"
                        );
                    }
                    for m in [1, 2, 3, 7, 64, batch] {
                        let (pv, pi) = apply::<B>(x.clone().narrow(bdim, 0, m), dim, op);
                        assert!(
                            bits(pv) == bits(v.clone().narrow(bdim, 0, m))
                                && bits(pi) == bits(i.clone().narrow(bdim, 0, m)),
                            "{what} len {len} {dtype:?} {op:?}: the first {m} rows differ from inside a batch of {batch}"
                        );
                    }
                }
                let am = x.clone().argmax(dim);
                assert!(
                    bits(am) == bits(apply::<B>(x.clone(), dim, ExtremumOp::Max).1),
                    "argmax vs max_dim_with_indices"
                );
                let an = x.clone().argmin(dim);
                assert!(
                    bits(an) == bits(apply::<B>(x, dim, ExtremumOp::Min).1),
                    "argmin vs min_dim_with_indices"
                );
            }
        }
    }
}

/// More rows than `FULL_CUBES_FROM_ROWS` (several rows per cube) against prefixes and single
/// rows (one row per cube): values and indices must not show the packing.
fn packed_rows<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (rows, len) = (FULL_CUBES_FROM_ROWS + 9, 37);
    let x = tensor::<BatchInvariant<B>, 2>(
        tied_values(rows * len, 77),
        [rows, len],
        FloatDType::F32,
        device,
    );
    for op in OPS {
        let (v, i) = apply::<B>(x.clone(), 1, op);
        for (start, m) in [(0, 1), (0, 7), (0, 1024), (rows / 2, 1), (rows - 1, 1)] {
            let (pv, pi) = apply::<B>(x.clone().narrow(0, start, m), 1, op);
            assert!(
                bits(pv) == bits(v.clone().narrow(0, start, m))
                    && bits(pi) == bits(i.clone().narrow(0, start, m)),
                "{op:?}: rows {start}..{} alone differ from the same rows among {rows}",
                start + m
            );
        }
    }
}

fn special_values<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let nan = f32::NAN;
    // Rows: ties, a NaN in the middle, signed zeros, all equal. Rows of 5 are read one
    // element per load, rows of 8 as two vectors of 4 (ties and NaNs across the boundary).
    let short = vec![
        1.0, 3.0, 3.0, -5.0, 3.0, //
        2.0, nan, 9.0, nan, -9.0, //
        -0.0, 0.0, -0.0, 0.0, -0.0, //
        7.0, 7.0, 7.0, 7.0, 7.0,
    ];
    let vectors = vec![
        1.0, 0.0, -5.0, 2.0, 3.0, 3.0, -5.0, 3.0, //
        2.0, 1.0, -9.0, 0.0, 9.0, nan, 9.0, nan, //
        -0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, //
        7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0,
    ];
    for (data, len) in [(short, 5usize), (vectors, 8)] {
        let x = tensor::<BatchInvariant<B>, 2>(data.clone(), [4, len], FloatDType::F32, device);
        let exact: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
        for op in OPS {
            let (v, i) = apply::<B>(x.clone(), 1, op);
            let reference = cpu_reference::extremum_dim(&exact, &[4, len], 1, op);
            let got_i = i.into_data().convert::<i64>().to_vec::<i64>().unwrap();
            let got_v = v.into_data().to_vec::<f32>().unwrap();
            assert_winners(&got_v, &got_i, &reference, &format!("{op:?} rows of {len}"));
        }
    }
}

/// Each row's winner against the reference scan: the same index, and the same value (a NaN
/// for a NaN, and a zero's sign).
fn assert_winners(got_v: &[f32], got_i: &[i64], reference: &[(f64, usize)], what: &str) {
    assert_eq!(got_v.len(), reference.len(), "{what}: rows");
    for (r, &(rv, ri)) in reference.iter().enumerate() {
        assert_eq!(got_i[r] as usize, ri, "{what}, row {r}: index");
        assert!(
            (rv.is_nan() && got_v[r].is_nan())
                || (f64::from(got_v[r]) == rv
                    && got_v[r].is_sign_negative() == rv.is_sign_negative()),
            "{what}, row {r}: {} vs {rv}",
            got_v[r]
        );
    }
}

/// Rows long enough to be split into chunks (`extremum::CHUNK_LEN`): ties and NaNs in
/// different chunks must resolve as in one pass (first NaN, then smallest index), and the
/// rows must not change with the batch.
fn long_row_special_values<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let len = 3 * CHUNK_LEN + 5;
    let mut data = vec![0.0f32; 3 * len];
    for at in [CHUNK_LEN + 4, 2 * CHUNK_LEN + 3, 3 * CHUNK_LEN + 1] {
        data[at] = 7.0; // row 0: tied maxima in chunks 1, 2 and 3
    }
    data[len + 100] = 7.0; // row 1: NaNs in chunks 2 and 3 beat a larger value in chunk 0
    data[len + 2 * CHUNK_LEN + 9] = f32::NAN;
    data[len + 3 * CHUNK_LEN + 2] = f32::NAN;
    for (j, v) in data[2 * len..].iter_mut().enumerate() {
        *v = if j % 2 == 0 { -0.0 } else { 0.0 }; // row 2: signed zeros everywhere
    }
    data[2 * len + 3 * CHUNK_LEN] = -3.0;
    let x = tensor::<BatchInvariant<B>, 2>(data.clone(), [3, len], FloatDType::F32, device);
    let exact: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
    for op in OPS {
        let (v, i) = apply::<B>(x.clone(), 1, op);
        let reference = cpu_reference::extremum_dim(&exact, &[3, len], 1, op);
        let got_i = i
            .clone()
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        let got_v = v.clone().into_data().to_vec::<f32>().unwrap();
        assert_winners(&got_v, &got_i, &reference, &format!("{op:?} long rows"));
        for r in 0..3 {
            let (av, ai) = apply::<B>(x.clone().narrow(0, r, 1), 1, op);
            assert!(
                bits(av) == bits(v.clone().narrow(0, r, 1))
                    && bits(ai) == bits(i.clone().narrow(0, r, 1)),
                "{op:?} long row {r} alone differs from the same row in a batch of 3"
            );
        }
    }
}

fn bad_input<B: KernelHost>(device: &B::Device) {
    use burn::tensor::ops::FloatTensorOps;
    let _mode = mode_shared();
    let t = Tensor::<BatchInvariant<B>, 2>::zeros([3, 4], device)
        .slice([0..3, 0..0])
        .into_primitive()
        .tensor();
    let msg =
        panic_message(move || BatchInvariant::<B>::float_argmax(t, 1, burn::tensor::IntDType::I32));
    assert!(
        msg.contains("float_argmax") && msg.contains("length 0") && msg.contains("[3, 0]"),
        "{msg}"
    );
    let t = Tensor::<BatchInvariant<B>, 2>::zeros([3, 4], device)
        .into_primitive()
        .tensor();
    let msg = panic_message(move || BatchInvariant::<B>::float_max_dim(t, 2));
    assert!(
        msg.contains("float_max_dim") && msg.contains("dim 2"),
        "{msg}"
    );
}

#[test]
fn extremum_is_batch_invariant_and_matches_reference() {
    on_test_backend!(invariance_and_reference);
}

#[test]
fn extremum_packed_rows_are_batch_invariant() {
    on_test_backend!(packed_rows);
}

#[test]
fn extremum_special_values_ties_and_nan() {
    on_test_backend!(special_values);
}

#[test]
fn extremum_long_rows_split_into_chunks() {
    on_test_backend!(long_row_special_values);
}

#[test]
fn extremum_bad_input_names_the_op() {
    on_test_backend!(bad_input);
}

/// `quiet_softmax` is a `Tensor`-level composite of `max_dim` and `sum_dim`, both routed,
/// and elementwise ops: invariant without a kernel of its own.
fn quiet_softmax_invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let (batch, len) = (257, 1000);
    let x = tensor::<BatchInvariant<B>, 2>(
        random_values(batch * len, 77),
        [batch, len],
        FloatDType::F32,
        device,
    );
    let full = burn::tensor::activation::quiet_softmax(x.clone(), 1);
    for m in [1, 2, 3, 7, 64] {
        let part = burn::tensor::activation::quiet_softmax(x.clone().narrow(0, 0, m), 1);
        assert!(
            bits(part) == bits(full.clone().narrow(0, 0, m)),
            "quiet_softmax: the first {m} rows differ from inside a batch of {batch}"
        );
    }
}

#[test]
fn extremum_makes_quiet_softmax_invariant() {
    on_test_backend!(quiet_softmax_invariance);
}
