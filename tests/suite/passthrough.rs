//! Ops that `BatchInvariant<B>` does not route must give exactly `B`'s bits.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Distribution, FloatDType, Int, IntDType, Tensor, TensorData};
use burn_batch_invariant_tests::*;

/// Runs a broad sample of non-routed ops on backend `X` and names each result's bytes.
fn sample<X: Backend>(device: &X::Device) -> Vec<(&'static str, Vec<u8>)> {
    let a = Tensor::<X, 2>::from_data(TensorData::new(random_values(6 * 40, 1), [6, 40]), device);
    let b = Tensor::<X, 2>::from_data(TensorData::new(random_values(6 * 40, 2), [6, 40]), device);
    let idx = Tensor::<X, 2, Int>::from_data(
        TensorData::new((0..18i32).map(|i| (i * 7) % 40).collect::<Vec<_>>(), [6, 3]),
        device,
    );
    let ints = Tensor::<X, 1, Int>::from_data(
        TensorData::new(vec![5i32, -3, 8, 0, 2, 9, -7], [7]),
        device,
    );
    let mask = a.clone().greater(b.clone());
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        ("add", bits(a.clone() + b.clone())),
        ("sub_scalar", bits(a.clone() - 0.5)),
        ("mul", bits(a.clone() * b.clone())),
        ("div", bits(a.clone() / (b.clone().abs() + 1.0))),
        ("exp", bits(a.clone().exp())),
        ("log", bits((a.clone().abs() + 0.1).log())),
        ("tanh", bits(a.clone().tanh())),
        ("sqrt", bits(a.clone().abs().sqrt())),
        ("powf_scalar", bits(a.clone().abs().powf_scalar(1.7))),
        ("clamp", bits(a.clone().clamp(-0.3, 0.4))),
        ("transpose", bits(a.clone().transpose())),
        ("reshape", bits(a.clone().reshape([3, 80]))),
        ("slice", bits(a.clone().slice([1..4, 3..30]))),
        ("cat", bits(Tensor::cat(vec![a.clone(), b.clone()], 0))),
        ("gather", bits(a.clone().gather(1, idx.clone()))),
        (
            "scatter_add",
            bits(a.clone().scatter(
                1,
                idx.clone(),
                b.clone().slice([0..6, 0..3]),
                burn::tensor::IndexingUpdateOp::Add,
            )),
        ),
        (
            "select",
            bits(a.clone().select(
                0,
                Tensor::from_data(TensorData::new(vec![4i32, 0, 2], [3]), device),
            )),
        ),
        ("mask_fill", bits(a.clone().mask_fill(mask.clone(), 3.0))),
        (
            "cast_f16_roundtrip",
            bits(a.clone().cast(FloatDType::F16).cast(FloatDType::F32)),
        ),
        ("cumsum", bits(a.clone().cumsum(1))),
        ("sort", bits(a.clone().sort(1))),
        ("gelu", bits(burn::tensor::activation::gelu(a.clone()))),
        (
            "sigmoid",
            bits(burn::tensor::activation::sigmoid(a.clone())),
        ),
        ("greater_equal", bits(a.clone().greater_equal(b.clone()))),
        ("equal_elem", bits(a.clone().equal_elem(0.0))),
        (
            "bool_and_not",
            bits(mask.clone().bool_and(a.clone().lower_elem(0.2)).bool_not()),
        ),
        ("bool_any_dim", bits(mask.clone().any_dim(1))),
        ("int_add_mul", bits(ints.clone() * 3 + ints.clone())),
        ("int_sum_dim", bits(ints.clone().sum_dim(0))),
        ("int_argsort", bits(ints.clone().argsort(0))),
        ("int_to_float", bits(ints.clone().float())),
        ("int_cast_i64", bits(ints.clone().cast(IntDType::I64))),
        ("float_to_int", bits((a.clone() * 10.0).int())),
        ("bool_to_int", bits(mask.clone().int())),
        (
            "bool_from",
            bits(Tensor::<X, 1, Bool>::from_data(
                TensorData::new(vec![true, false, true], [3]),
                device,
            )),
        ),
    ];
    X::seed(device, 42);
    out.push((
        "random_uniform",
        bits(Tensor::<X, 2>::random(
            [16, 16],
            Distribution::Default,
            device,
        )),
    ));
    out.push((
        "random_normal",
        bits(Tensor::<X, 2>::random(
            [16, 16],
            Distribution::Normal(0.0, 1.0),
            device,
        )),
    ));
    out
}

fn passthrough_is_bitwise_identical<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial(); // the random seed is global to the runtime
    let plain = sample::<B>(device);
    let wrapped = sample::<BatchInvariant<B>>(device);
    assert_eq!(plain.len(), wrapped.len());
    for ((name, p), (_, w)) in plain.iter().zip(&wrapped) {
        assert!(
            p == w,
            "pass-through op `{name}` differs between B and BatchInvariant<B>"
        );
    }
}

#[test]
fn passthrough_ops_match_inner_backend_bitwise() {
    on_test_backend!(passthrough_is_bitwise_identical);
}
