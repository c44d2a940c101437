//! The problem this library fixes, shown on the runtime under test: Burn's own backend
//! gives row 0 a different result depending on the batch size, the decorator's routed ops
//! never do. The Burn half is the negative control: it proves the comparison used all over
//! this suite can see a difference. Which of Burn's ops vary changes from run to run with
//! its autotuner (on the H100 the reductions and even the matmul have come out invariant in
//! some runs), so the control also compares the attention decode step with the prefill.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Tensor};
use burn_batch_invariant::mode;
use burn_batch_invariant_tests::*;

const BATCHES: [usize; 8] = [1, 2, 3, 7, 16, 64, 257, 1024];

/// For each op, the batch sizes at which row 0 differs from row 0 computed alone.
fn variant_batches<X: Backend>(device: &X::Device) -> Vec<(String, Vec<usize>)> {
    let mut found = Vec::new();
    for len in [64usize, 1000, 4096] {
        let x = tensor::<X, 2>(
            random_values(1024 * len, 11 + len as u64),
            [1024, len],
            FloatDType::F32,
            device,
        );
        for (name, op) in [("mean_dim", 0), ("sum_dim", 1)] {
            let f = |t: Tensor<X, 2>| if op == 0 { t.mean_dim(1) } else { t.sum_dim(1) };
            let alone = bits(f(x.clone().narrow(0, 0, 1)));
            let diff: Vec<usize> = BATCHES
                .iter()
                .copied()
                .filter(|&m| bits(f(x.clone().narrow(0, 0, m)).narrow(0, 0, 1)) != alone)
                .collect();
            found.push((format!("{name} len {len}"), diff));
        }
    }
    // Burn's matmul variance shows up on every runtime we have measured, lavapipe included,
    // which makes it the negative control that never depends on the autotuner's mood.
    let w = tensor::<X, 2>(
        random_values(256 * 256, 5),
        [256, 256],
        FloatDType::F32,
        device,
    );
    let x = tensor::<X, 2>(
        random_values(1024 * 256, 6),
        [1024, 256],
        FloatDType::F32,
        device,
    );
    let alone = bits(x.clone().narrow(0, 0, 1).matmul(w.clone()));
    let diff = BATCHES
        .iter()
        .copied()
        .filter(|&m| bits(x.clone().narrow(0, 0, m).matmul(w.clone()).narrow(0, 0, 1)) != alone)
        .collect();
    found.push(("matmul 256x256".to_string(), diff));

    // Attention: the decode step of query n - 1 against n keys vs the same query inside a
    // causal prefill (Burn's kernels change with the key length; ours do not).
    let t = |seed| {
        tensor::<X, 4>(
            random_values(2 * 600 * 16, seed),
            [1, 2, 600, 16],
            FloatDType::F32,
            device,
        )
    };
    let (q, k, v) = (t(21), t(22), t(23));
    let opts = |is_causal| AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    };
    let prefill = attention(q.clone(), k.clone(), v.clone(), None, None, opts(true));
    let diff = [1, 17, 100, 513, 600]
        .into_iter()
        .filter(|&n| {
            let step = attention(
                q.clone().narrow(2, n - 1, 1),
                k.clone().narrow(2, 0, n),
                v.clone().narrow(2, 0, n),
                None,
                None,
                opts(false),
            );
            bits(step) != bits(prefill.clone().narrow(2, n - 1, 1))
        })
        .collect();
    found.push(("attention decode vs prefill (n keys)".to_string(), diff));
    found
}

fn burn_default_varies_decorator_does_not<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    assert!(mode::is_enabled());
    let burn = variant_batches::<B>(device);
    let ours = variant_batches::<BatchInvariant<B>>(device);
    println!(
        "row 0 differs from row 0 alone at these batch sizes ({}):",
        B::name(device)
    );
    for ((name, b), (_, o)) in burn.iter().zip(&ours) {
        println!("  {name:<36} Burn default: {b:?}   BatchInvariant: {o:?}");
    }
    assert!(
        burn.iter().any(|(_, b)| !b.is_empty()),
        "negative control: Burn's default backend showed no batch variance on this runtime"
    );
    for (name, o) in &ours {
        assert!(
            o.is_empty(),
            "BatchInvariant {name}: row 0 varies at batch sizes {o:?}"
        );
    }
    let burn_reductions_vary = burn
        .iter()
        .any(|(n, b)| !n.starts_with("matmul") && !b.is_empty());
    println!(
        "Burn's own sum/mean_dim {} batch variance on this runtime",
        if burn_reductions_vary {
            "showed"
        } else {
            "did not show"
        }
    );
}

#[test]
fn problem_burn_default_is_batch_variant_routed_ops_are_not() {
    on_test_backend!(burn_default_varies_decorator_does_not);
}
