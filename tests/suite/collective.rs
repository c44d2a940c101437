//! Fixed-order collectives (`burn_batch_invariant::collective`) on 2, 3 and 4 peers, one
//! thread each, registered with burn-collective on the test device (logical devices: every
//! peer shares it, which is where burn-collective's own strategies take peers in hash-map
//! order). Each test checks:
//!
//! - every rank holds the same bits;
//! - the all-reduce is `((t_0 + t_1) + t_2) + ...` in rank order, bit for bit, computed here
//!   on one thread;
//! - row 0 reduced alone has the bits of row 0 inside a batch of 7 (the message size changes,
//!   the order does not);
//! - tensor-parallel linears: a row's output alone and in a batch, on every rank, the same
//!   bits, close to the unsharded layer, and column-parallel with a gather bitwise the
//!   unsharded matmul;
//! - the Llama-style model of `examples/src/llama/` sharded over 2 and 4 ranks (attention
//!   heads and MLP columns): row 0's logits after a prefill and a decode step, alone and in
//!   batches of 3 and 7, the same bits on every rank, close to the unsharded model;
//! - a data-parallel step: the all-reduced gradients are the rank-order mean of each rank's
//!   gradients, bitwise, and two runs agree;
//! - the negative control: burn-collective's own ring all-reduce gives row 0 other bits
//!   alone than in a batch.

use std::sync::Arc;

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};
use burn_batch_invariant::collective::{
    all_reduce, all_reduce_gradients, column_parallel_linear, row_parallel_linear, Rank,
};
use burn_batch_invariant::ParityOps;
use burn_batch_invariant_examples::llama::{prompts, Llama, LlamaConfig, Logits, StepRow};
use burn_batch_invariant_tests::*;
use burn_collective::{
    finish_collective, register, reset_collective, AllReduceStrategy, CollectiveConfig, PeerId,
    ReduceOperation,
};

type Ad<B> = burn::backend::Autodiff<BatchInvariant<B>>;

/// `body(rank)` on `ranks` peers, one thread each, registered on `device`; the results in
/// rank order.
fn on_peers<X: Backend, T: Send + 'static>(
    ranks: usize,
    device: &X::Device,
    body: impl Fn(Rank) -> T + Send + Sync + 'static,
) -> Vec<T> {
    on_peers_with::<X, T>(ranks, device, AllReduceStrategy::Tree(2), body)
}

/// [`on_peers`] with burn-collective's own all-reduce configured to `strategy`.
fn on_peers_with<X: Backend, T: Send + 'static>(
    ranks: usize,
    device: &X::Device,
    strategy: AllReduceStrategy,
    body: impl Fn(Rank) -> T + Send + Sync + 'static,
) -> Vec<T> {
    reset_collective::<X>();
    let peers: Vec<PeerId> = (0..ranks as u32).map(PeerId::from).collect();
    let body = Arc::new(body);
    let threads: Vec<_> = peers
        .iter()
        .map(|&id| {
            let (peers, device, body) = (peers.clone(), device.clone(), body.clone());
            std::thread::spawn(move || {
                let config = CollectiveConfig::default()
                    .with_num_devices(peers.len())
                    .with_local_all_reduce_strategy(strategy);
                register::<X>(id, device, config).expect("register the peer");
                let out = body(Rank::new(&peers, id));
                finish_collective::<X>(id).expect("finish the collective");
                out
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("a peer thread panicked"))
        .collect()
}

/// Rank `r`'s `[rows, cols]` input.
fn rank_values(r: usize, rows: usize, cols: usize) -> Vec<f32> {
    random_values(rows * cols, 900 + r as u64)
}

fn all_reduce_is_rank_ordered<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (rows, cols) = (7, 33);
    for dtype in float_dtypes::<B>(device) {
        for ranks in [2, 3, 4] {
            let what = format!("{ranks} ranks, {dtype:?}");
            let dev = device.clone();
            let out = on_peers::<BatchInvariant<B>, _>(ranks, device, move |rank| {
                let x = tensor::<BatchInvariant<B>, 2>(
                    rank_values(rank.rank(), rows, cols),
                    [rows, cols],
                    dtype,
                    &dev,
                );
                let sum = all_reduce(&rank, x.clone(), ReduceOperation::Sum).expect("sum");
                let alone = all_reduce(&rank, x.clone().narrow(0, 0, 1), ReduceOperation::Sum)
                    .expect("sum of row 0");
                let mean = all_reduce(&rank, x, ReduceOperation::Mean).expect("mean");
                (
                    bits(sum.clone()),
                    bits(sum.narrow(0, 0, 1)),
                    bits(alone),
                    bits(mean),
                )
            });
            for (r, o) in out.iter().enumerate() {
                assert!(
                    o.0 == out[0].0,
                    "{what}: rank {r}'s sum differs from rank 0's"
                );
                assert!(
                    o.3 == out[0].3,
                    "{what}: rank {r}'s mean differs from rank 0's"
                );
                assert!(
                    o.2 == o.1,
                    "{what}: rank {r}: row 0 alone differs from row 0 of 7"
                );
            }
            let parts: Vec<_> = (0..ranks)
                .map(|r| {
                    let values = rank_values(r, rows, cols);
                    tensor::<BatchInvariant<B>, 2>(values, [rows, cols], dtype, device)
                })
                .collect();
            let mut want = parts[0].clone();
            for part in &parts[1..] {
                want = want + part.clone();
            }
            assert!(
                out[0].0 == bits(want.clone()),
                "{what}: the sum is not ((t_0 + t_1) + ...) in rank order"
            );
            assert!(
                out[0].3 == bits(want / ranks as f64),
                "{what}: the mean is not the rank-order sum / ranks"
            );
        }
    }
}

/// The negative control: burn-collective's ring all-reduce slices the message along its
/// largest dim, so when the batch makes the rows outnumber the columns, row 0 is summed in
/// another order than alone (`[40, 33]`: one slice of rows per rank; `[1, 33]`: of columns,
/// so two thirds of row 0 change order).
fn ring_all_reduce_moves_with_the_batch<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (rows, cols, ranks) = (40, 33, 3);
    let dev = device.clone();
    let out = on_peers_with::<BatchInvariant<B>, _>(ranks, device, AllReduceStrategy::Ring, {
        move |rank| {
            let x = tensor::<BatchInvariant<B>, 2>(
                rank_values(rank.rank(), rows, cols),
                [rows, cols],
                FloatDType::F32,
                &dev,
            );
            let ring = |t: Tensor<BatchInvariant<B>, 2>| {
                let reduced = burn_collective::all_reduce::<BatchInvariant<B>>(
                    rank.peer(),
                    t.into_primitive().tensor(),
                    ReduceOperation::Sum,
                )
                .expect("burn-collective all-reduce");
                Tensor::<BatchInvariant<B>, 2>::from_primitive(
                    burn::tensor::TensorPrimitive::Float(reduced),
                )
            };
            let batch = ring(x.clone());
            B::sync(&dev).expect("sync");
            let alone = ring(x.narrow(0, 0, 1));
            (bits(batch.narrow(0, 0, 1)), bits(alone))
        }
    });
    assert!(
        out.iter().any(|(batch, alone)| batch != alone),
        "burn-collective's ring all-reduce gave row 0 the same bits alone and in a batch of \
         {rows}: the negative control no longer shows the problem"
    );
}

#[test]
fn collective_burn_ring_all_reduce_moves_with_the_batch() {
    on_test_backend!(ring_all_reduce_moves_with_the_batch);
}

#[test]
fn collective_all_reduce_is_rank_ordered() {
    on_test_backend!(all_reduce_is_rank_ordered);
}

fn tensor_parallel_linears_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let (rows, d_in, d_hidden, d_out) = (7, 48, 60, 40);
    for dtype in float_dtypes::<B>(device) {
        for ranks in [2, 3] {
            let what = format!("tensor parallel over {ranks} ranks, {dtype:?}");
            let dev = device.clone();
            let w1 = random_values(d_in * d_hidden, 31);
            let w2 = random_values(d_hidden * d_out, 32);
            let (b1, b2) = (random_values(d_hidden, 33), random_values(d_out, 34));
            let x = random_values(rows * d_in, 35);
            let (w1c, w2c, b1c, b2c, xc) =
                (w1.clone(), w2.clone(), b1.clone(), b2.clone(), x.clone());
            let out = on_peers::<BatchInvariant<B>, _>(ranks, device, move |rank| {
                let t2 = |v: &[f32], shape: [usize; 2]| {
                    tensor::<BatchInvariant<B>, 2>(v.to_vec(), shape, dtype, &dev)
                };
                let t1 =
                    |v: &[f32]| tensor::<BatchInvariant<B>, 1>(v.to_vec(), [v.len()], dtype, &dev);
                let shard = d_hidden / rank.ranks();
                let cols = rank.rank() * shard..(rank.rank() + 1) * shard;
                let w1_shard = t2(&w1c, [d_in, d_hidden]).slice([0..d_in, cols.clone()]);
                let b1_shard = t1(&b1c).slice([cols.clone()]);
                let w2_shard = t2(&w2c, [d_hidden, d_out]).slice([cols, 0..d_out]);
                let mlp = |x: Tensor<BatchInvariant<B>, 2>| {
                    let h = column_parallel_linear(
                        &rank,
                        x,
                        w1_shard.clone(),
                        Some(b1_shard.clone()),
                        false,
                    )
                    .expect("column-parallel");
                    let h = burn::tensor::activation::gelu(h);
                    row_parallel_linear(&rank, h, w2_shard.clone(), Some(t1(&b2c)))
                        .expect("row-parallel")
                };
                let x = t2(&xc, [rows, d_in]);
                let y = mlp(x.clone());
                let alone = mlp(x.clone().narrow(0, 0, 1));
                let gathered = column_parallel_linear(
                    &rank,
                    x,
                    w1_shard.clone(),
                    Some(b1_shard.clone()),
                    true,
                )
                .expect("column-parallel with gather");
                (
                    bits(y.clone()),
                    bits(y.clone().narrow(0, 0, 1)),
                    bits(alone),
                    bits(gathered),
                    values(y),
                )
            });
            let t2 = |v: &[f32], shape: [usize; 2]| {
                tensor::<BatchInvariant<B>, 2>(v.to_vec(), shape, dtype, device)
            };
            let t1 =
                |v: &[f32]| tensor::<BatchInvariant<B>, 1>(v.to_vec(), [v.len()], dtype, device);
            let x = t2(&x, [rows, d_in]);
            let h = x.clone().matmul(t2(&w1, [d_in, d_hidden])) + t1(&b1).unsqueeze();
            let whole = burn::tensor::activation::gelu(h.clone())
                .matmul(t2(&w2, [d_hidden, d_out]))
                + t1(&b2).unsqueeze();
            let whole = values(whole);
            let scale = whole.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let u = (2.0f64).powi(-(mantissa_bits(dtype).min(product_bits(dtype)) as i32) - 1);
            for (r, o) in out.iter().enumerate() {
                assert!(
                    o.0 == out[0].0,
                    "{what}: rank {r}'s output differs from rank 0's"
                );
                assert!(
                    o.2 == o.1,
                    "{what}: rank {r}: row 0 alone differs from row 0 of 7"
                );
                assert!(
                    o.3 == bits(h.clone()),
                    "{what}: rank {r}: the gathered column-parallel output is not the unsharded matmul"
                );
                for (i, (got, want)) in o.4.iter().zip(&whole).enumerate() {
                    assert!(
                        (got - want).abs() <= 64.0 * u * scale,
                        "{what}: rank {r}: [{i}] = {got}, unsharded {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn collective_tensor_parallel_linears_are_invariant() {
    on_test_backend!(tensor_parallel_linears_are_invariant);
}

/// Rank `r`'s gradients of a small linear layer (f32) on its own shard of data: weight, bias.
fn local_gradients<B: KernelHost>(
    model: &Linear<Ad<B>>,
    r: usize,
    device: &B::Device,
) -> GradientsParams {
    let x = tensor::<Ad<B>, 2>(rank_values(r, 5, 12), [5, 12], FloatDType::F32, device);
    let loss = model.forward(x).powf_scalar(2.0).mean();
    GradientsParams::from_grads(loss.backward(), model)
}

fn data_parallel_gradients_are_fixed_order<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    // Explicit weights: a lazily initialised parameter would draw new ones in every clone.
    let weight = tensor::<Ad<B>, 2>(random_values(12 * 6, 41), [12, 6], FloatDType::F32, device);
    let bias = tensor::<Ad<B>, 1>(random_values(6, 42), [6], FloatDType::F32, device);
    let model = Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    };
    for ranks in [2, 3] {
        let what = format!("data parallel over {ranks} ranks");
        let run = || {
            let (model, dev) = (model.clone(), device.clone());
            on_peers::<BatchInvariant<B>, _>(ranks, device, move |rank| {
                let grads = local_gradients::<B>(&model, rank.rank(), &dev);
                let grads = all_reduce_gradients(&rank, &model, grads, ReduceOperation::Mean)
                    .expect("gradient all-reduce");
                let weight = grads
                    .get::<BatchInvariant<B>, 2>(model.weight.id)
                    .expect("weight gradient");
                let bias = model.bias.as_ref().expect("bias");
                let bias = grads
                    .get::<BatchInvariant<B>, 1>(bias.id)
                    .expect("bias gradient");
                (bits(weight), bits(bias))
            })
        };
        let first = run();
        for (r, o) in first.iter().enumerate() {
            assert!(
                *o == first[0],
                "{what}: rank {r}'s gradients differ from rank 0's"
            );
        }
        assert!(run() == first, "{what}: two runs differ");
        // The rank-order mean of each rank's gradients, computed on this thread.
        let mut weight: Option<Tensor<BatchInvariant<B>, 2>> = None;
        let mut bias: Option<Tensor<BatchInvariant<B>, 1>> = None;
        for r in 0..ranks {
            let grads = local_gradients::<B>(&model, r, device);
            let w = grads
                .get::<BatchInvariant<B>, 2>(model.weight.id)
                .expect("weight");
            let b = grads
                .get::<BatchInvariant<B>, 1>(model.bias.as_ref().expect("bias").id)
                .expect("bias");
            weight = Some(weight.map_or(w.clone(), |acc| acc + w));
            bias = Some(bias.map_or(b.clone(), |acc| acc + b));
        }
        let want = (
            bits(weight.expect("ranks") / ranks as f64),
            bits(bias.expect("ranks") / ranks as f64),
        );
        assert!(
            first[0] == want,
            "{what}: not the rank-order mean of the ranks' gradients"
        );
    }
}

#[test]
fn collective_data_parallel_gradients_are_fixed_order() {
    on_test_backend!(data_parallel_gradients_are_fixed_order);
}

/// Row 0's logits after a prefill of the first `n` prompts (one per slot) and one decode
/// step: the prefill's bits, the decode step's bits and its values.
fn row_0_logits<X: ParityOps>(
    model: &Llama<X>,
    prompts: &[Vec<usize>],
    n: usize,
    dtype: FloatDType,
    device: &X::Device,
) -> (Vec<u8>, Vec<u8>, Vec<f64>) {
    let vocab = model.config().vocab;
    let capacity = prompts.iter().map(Vec::len).max().unwrap_or(0) + 1;
    let mut cache = model.kv_cache(n, capacity, dtype, device);
    let prefill = model.step(
        &StepRow::one_per_slot(&prompts[..n]),
        &mut cache,
        Logits::Last,
    );
    let next: Vec<Vec<usize>> = (0..n).map(|i| vec![(5 * i + 1) % vocab]).collect();
    let decode = model
        .step(&StepRow::one_per_slot(&next), &mut cache, Logits::Last)
        .narrow(0, 0, 1);
    (
        bits(prefill.narrow(0, 0, 1)),
        bits(decode.clone()),
        values(decode),
    )
}

/// How many elements of two byte images of `dtype` values differ, and by how much at most.
fn describe_difference(got: &[u8], want: &[u8], dtype: FloatDType) -> String {
    let decode = |b: &[u8]| -> f64 {
        match dtype {
            FloatDType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
            FloatDType::F32 | FloatDType::Flex32 => {
                f32::from_le_bytes(b.try_into().unwrap()) as f64
            }
            FloatDType::F16 => burn::tensor::f16::from_le_bytes(b.try_into().unwrap()).to_f64(),
            FloatDType::BF16 => burn::tensor::bf16::from_le_bytes(b.try_into().unwrap()).to_f64(),
        }
    };
    let size = DType::from(dtype).size();
    let (mut count, mut first, mut largest) = (0, None, 0.0f64);
    for (i, (g, w)) in got.chunks(size).zip(want.chunks(size)).enumerate() {
        if g != w {
            count += 1;
            first.get_or_insert(i);
            largest = largest.max((decode(g) - decode(w)).abs());
        }
    }
    format!(
        "{count} of {} elements differ, the first at {first:?}, by at most {largest:e}",
        got.len() / size
    )
}

fn tensor_parallel_llama_is_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    type X<B> = BatchInvariant<B>;
    let tiny = LlamaConfig::tiny();
    // Over 2 ranks each keeps a grouped-query pair (2 query heads per key/value head); 4
    // ranks need 4 key/value heads.
    let cases = [
        (2, tiny),
        (
            4,
            LlamaConfig {
                kv_heads: 4,
                ..tiny
            },
        ),
    ];
    let batches = [1, 3, 7];
    let seed = 17;
    for dtype in float_dtypes::<B>(device) {
        if dtype == FloatDType::F16 {
            continue;
        }
        for (ranks, config) in cases {
            let what = format!("Llama over {ranks} tensor-parallel ranks, {dtype:?}");
            let prompts = prompts(7, 9, config.vocab, 3);
            let dev = device.clone();
            let shared = prompts.clone();
            let out = on_peers::<X<B>, _>(ranks, device, move |rank| {
                let model = Llama::<X<B>>::new_sharded(config, seed, dtype, &dev, rank);
                batches
                    .iter()
                    .map(|&n| row_0_logits(&model, &shared, n, dtype, &dev))
                    .collect::<Vec<_>>()
            });
            for (r, runs) in out.iter().enumerate() {
                for (run, &n) in runs.iter().zip(&batches) {
                    for (step, got, want) in [
                        ("prefill", &run.0, &out[0][0].0),
                        ("decode", &run.1, &out[0][0].1),
                    ] {
                        assert!(
                            got == want,
                            "{what} ({}): row 0's {step} logits in a batch of {n} on rank {r} \
                             differ from rank 0's alone: {}",
                            X::<B>::name(device),
                            describe_difference(got, want, dtype)
                        );
                    }
                }
            }
            let whole = Llama::<X<B>>::new(config, seed, dtype, device);
            let want = row_0_logits(&whole, &prompts, 1, dtype, device).2;
            let got = &out[0][0].2;
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            // Sharding cuts the K walks of two projections per layer in `ranks` pieces: a
            // difference of a few roundings, where a wrong shard is off by the logits' size.
            let u = (2.0f64).powi(-(mantissa_bits(dtype).min(product_bits(dtype)) as i32) - 1);
            let bound = (32.0 * u).max(2f64.powi(-16)) * scale;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= bound,
                    "{what}: logit {i} = {g}, unsharded {w} (bound {bound:e})"
                );
            }
        }
    }
}

#[test]
fn collective_tensor_parallel_llama_is_invariant() {
    on_test_backend!(tensor_parallel_llama_is_invariant);
}
