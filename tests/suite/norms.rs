//! burn-nn's normalization modules reach the routed `float_mean_dim`: `LayerNorm` through
//! the `layer_norm` default body we keep, `RmsNorm` through `square().mean_dim()`.

use burn::nn::{LayerNormConfig, RmsNormConfig};
use burn::tensor::FloatDType;
use burn_batch_invariant_tests::*;

fn norms_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let d = 1000;
    let batch = 257;
    let x = tensor::<BatchInvariant<B>, 2>(
        random_values(batch * d, 99),
        [batch, d],
        FloatDType::F32,
        device,
    );
    let layer_norm = LayerNormConfig::new(d).init::<BatchInvariant<B>>(device);
    let rms_norm = RmsNormConfig::new(d).init::<BatchInvariant<B>>(device);
    let ln_full = layer_norm.forward(x.clone());
    let rms_full = rms_norm.forward(x.clone());
    for m in [1, 2, 3, 7, 64, batch] {
        let ln = layer_norm.forward(x.clone().narrow(0, 0, m));
        assert!(
            bits(ln) == bits(ln_full.clone().narrow(0, 0, m)),
            "LayerNorm, batch {m}"
        );
        let rms = rms_norm.forward(x.clone().narrow(0, 0, m));
        assert!(
            bits(rms) == bits(rms_full.clone().narrow(0, 0, m)),
            "RmsNorm, batch {m}"
        );
    }
    for r in [1, 100, batch - 1] {
        let ln = layer_norm.forward(x.clone().narrow(0, r, 1));
        assert!(
            bits(ln) == bits(ln_full.clone().narrow(0, r, 1)),
            "LayerNorm, row {r} alone"
        );
    }
    // Accuracy of LayerNorm against an f64 computation (gamma 1, beta 0 at init).
    let input = values(x);
    let got = values(ln_full);
    for r in [0, 128, batch - 1] {
        let row = &input[r * d..(r + 1) * d];
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        for c in [0, 1, d / 2, d - 1] {
            let want = (row[c] - mean) / (var + 1e-5).sqrt();
            let g = got[r * d + c];
            assert!(
                (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "LayerNorm[{r},{c}]: {g} vs {want}"
            );
        }
    }
}

#[test]
fn norms_layer_norm_and_rms_norm_are_batch_invariant() {
    on_test_backend!(norms_are_invariant);
}
