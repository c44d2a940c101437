//! `batch_invariant_kernels::reduce` called directly: outputs poisoned with NaN before the
//! launch must come back fully written, for both thread mappings and ragged grids, and the
//! launch refuses arguments it cannot serve.

use batch_invariant_kernels::reduce::{launch_reduce_dim, ReduceDimError, ReduceOp};
use burn::tensor::{FloatDType, Tensor, TensorPrimitive};
use burn_batch_invariant::BatchInvariant;
use burn_batch_invariant_tests::*;
use burn_cubecl::{tensor::CubeTensor, CubeBackend, CubeRuntime};

type Plain<R> = CubeBackend<R, f32, i32, u32>;

fn primitive<R: CubeRuntime, const D: usize>(t: Tensor<Plain<R>, D>) -> CubeTensor<R> {
    t.into_primitive().tensor()
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
