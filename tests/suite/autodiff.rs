//! `Autodiff<BatchInvariant<B>>`: Burn differentiates softmax, log_softmax and layer_norm
//! through their primitives (`max_dim`, `exp`, `sum_dim`/`mean_dim`, ...), so invariance
//! there rests on the routed reductions. One row's forward value and input gradient must
//! not depend on the rest of the batch.

use burn::backend::Autodiff;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::FloatDType;
use burn_batch_invariant_tests::*;

fn composites_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    type Ad<B> = Autodiff<BatchInvariant<B>>;
    let (batch, len) = (64, 1000);
    let data = random_values(batch * len, 31);
    let weights = tensor::<Ad<B>, 2>(random_values(len, 32), [1, len], FloatDType::F32, device);
    // For each composite: forward on rows 0..m, loss = sum(f(x) * w), gradient w.r.t. x.
    let run = |m: usize, which: usize| {
        let x = tensor::<Ad<B>, 2>(data[..m * len].to_vec(), [m, len], FloatDType::F32, device)
            .require_grad();
        let y = match which {
            0 => softmax(x.clone(), 1),
            1 => log_softmax(x.clone(), 1),
            _ => {
                let mean = x.clone().mean_dim(1);
                let centered = x.clone() - mean;
                let var = (centered.clone() * centered.clone()).mean_dim(1);
                centered / (var + 1e-5).sqrt()
            }
        };
        let loss = (y.clone() * weights.clone()).sum();
        let grads = loss.backward();
        let grad = x.grad(&grads).expect("input gradient");
        (bits(y.inner().narrow(0, 0, 1)), bits(grad.narrow(0, 0, 1)))
    };
    for (which, name) in ["softmax", "log_softmax", "layer_norm (from primitives)"]
        .iter()
        .enumerate()
    {
        let alone = run(1, which);
        for m in [2, 3, 7, 64] {
            let inside = run(m, which);
            assert!(
                alone.0 == inside.0,
                "{name}: forward row 0 alone vs in a batch of {m}"
            );
            assert!(
                alone.1 == inside.1,
                "{name}: input gradient of row 0 alone vs in a batch of {m}"
            );
        }
    }
}

#[test]
fn autodiff_composites_are_batch_invariant() {
    on_test_backend!(composites_are_invariant);
}
