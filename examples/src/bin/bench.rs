//! Benchmark: BatchInvariant's routed ops against Burn's default kernels on the same
//! tensors. Prints a table and writes JSON (`--json PATH`). With `--fused` both columns use
//! Burn's fused backend: Burn's fused kernels against `BatchInvariant<Fusion<..>>`, whose
//! routed ops run our kernels as custom operations in the fusion stream.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin bench -- --cuda --json bench.json
//!     cargo run --release -p burn-batch-invariant-examples --bin bench -- --cuda --fused
//!     cargo run --release -p burn-batch-invariant-examples --bin bench -- --cuda --only mean_dim:16384
//!
//! Timing (`burn_batch_invariant_examples::bench_ms`): on a plain backend, device time per
//! call from a cold L2, with Burn's host overhead hidden behind a blocker (median of 9
//! samples after warm-up calls that also absorb Burn's autotuning); with `--fused`, wall
//! clock per call including host overhead. Both columns are timed the same way. The
//! bandwidth-bound sum and mean rows are timed once more with a clean L2 between calls
//! (`Flush::Clean`): the dirty flush costs them a write-back that torch's copy (in
//! `scripts/reference_torch.py`) hardly pays.

use burn::nn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_batch_invariant::{BatchInvariant, KernelHost, NormBackend};
use burn_batch_invariant_examples::{
    bench_ms, device_ms, matrix, on_backend, timing_mark, timing_since, use_fused, Flush,
};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    op: String,
    dtype: String,
    m: usize,
    len: usize,
    burn_default_ms: f64,
    batch_invariant_ms: f64,
    /// batch_invariant_ms / burn_default_ms: below 1 means we are faster.
    ratio: f64,
    /// Input bytes read per second by the invariant kernel.
    batch_invariant_read_tb_s: f64,
    /// "device" or "wall clock" (fused backend, or a measurement whose blocker could not
    /// hide the host: see `device_ms`).
    timing: &'static str,
    /// The two times again with a clean L2 between calls (`Flush::Clean`), where measured:
    /// the bandwidth-bound rows, whose dirty-flush time includes writing back the flush.
    clean_l2: Option<CleanL2>,
}

#[derive(Serialize)]
struct CleanL2 {
    burn_default_ms: f64,
    batch_invariant_ms: f64,
    batch_invariant_read_tb_s: f64,
}

/// The normalization layers of one row length, built once per backend and shape.
struct Norms<X: Backend> {
    layer: LayerNorm<X>,
    rms: RmsNorm<X>,
}

impl<X: Backend> Norms<X> {
    fn new(len: usize, device: &X::Device) -> Self {
        Self {
            layer: LayerNormConfig::new(len).init(device),
            rms: RmsNormConfig::new(len).init(device),
        }
    }
}

fn run_op<X: NormBackend>(x: &Tensor<X, 2>, norms: &Norms<X>, op: &str) -> Tensor<X, 2> {
    match op {
        "mean_dim" => x.clone().mean_dim(1),
        "sum_dim" => x.clone().sum_dim(1),
        "prod_dim" => x.clone().prod_dim(1),
        "softmax" => burn::tensor::activation::softmax(x.clone(), 1),
        "log_softmax" => burn::tensor::activation::log_softmax(x.clone(), 1),
        "max_dim" => x.clone().max_dim(1),
        "min_dim" => x.clone().min_dim(1),
        "max_abs_dim" => x.clone().max_abs_dim(1),
        // The index cast to float (M elements) keeps one closure type for every op.
        "argmax" => x.clone().argmax(1).float(),
        "argmin" => x.clone().argmin(1).float(),
        "layer_norm" => norms.layer.forward(x.clone()),
        "rms_norm" => norms.rms.forward(x.clone()),
        // Burn's column: burn-nn's chain (what `rms_norm` is on Burn's backends); ours: one
        // kernel.
        "rms_norm_fn" => {
            burn_batch_invariant::rms_norm(x.clone(), norms.rms.gamma.val(), norms.rms.epsilon)
        }
        other => unreachable!("bench op {other}"),
    }
}

fn bench<B: KernelHost + NormBackend>(device: &B::Device) {
    println!("device: {}", B::name(device));
    // `--only OP` or `--only OP:M` keeps one op, or one shape of it (for a profiler run).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).expect("--only needs OP or OP:M").clone());
    let wanted = |op: &str, m: usize| match &only {
        None => true,
        Some(filter) => filter == op || *filter == format!("{op}:{m}"),
    };
    let mut rows = Vec::new();
    for (op, len, ms) in [
        ("mean_dim", 4096usize, &[64usize, 1024, 16384][..]),
        ("sum_dim", 4096, &[64, 1024, 16384][..]),
        ("mean_dim", 128256, &[1, 32, 256][..]),
        ("log_softmax", 128256, &[1, 32, 256, 2048][..]),
        ("softmax", 128256, &[1, 32, 256, 2048][..]),
        ("max_dim", 4096, &[64, 1024, 16384][..]),
        ("min_dim", 4096, &[16384][..]),
        ("max_abs_dim", 4096, &[16384][..]),
        ("prod_dim", 4096, &[16384][..]),
        ("argmax", 128256, &[1, 32, 256][..]),
        ("argmin", 128256, &[256][..]),
        ("layer_norm", 4096, &[64, 1024, 16384][..]),
        ("rms_norm", 4096, &[64, 1024, 16384][..]),
        ("rms_norm_fn", 4096, &[64, 1024, 16384][..]),
    ] {
        for &m in ms.iter().filter(|&&m| wanted(op, m)) {
            eprintln!("{op} M={m} len={len}");
            let x = matrix::<B>(m, len, 3, device);
            // Both columns read the same device buffer, so that where a copy lands in memory
            // cannot separate them.
            let xi: Tensor<BatchInvariant<B>, 2> = match x.clone().into_primitive() {
                TensorPrimitive::Float(t) => Tensor::from_primitive(TensorPrimitive::Float(t)),
                TensorPrimitive::QFloat(_) => unreachable!("bench inputs are float"),
            };
            let (norms, norms_i) = (Norms::new(len, device), Norms::new(len, device));
            let mark = timing_mark();
            let burn_default_ms = bench_ms::<B, _>(device, || run_op(&x, &norms, op));
            let batch_invariant_ms =
                bench_ms::<BatchInvariant<B>, _>(device, || run_op(&xi, &norms_i, op));
            // Input bytes read once (softmax also writes as many, not counted here).
            let bytes = (m * len * 4) as f64;
            let clean_l2 = (matches!(op, "mean_dim" | "sum_dim")
                && m * len >= 1 << 26
                && !use_fused())
            .then(|| {
                let burn = device_ms::<B, _>(device, burn_default_ms, Flush::Clean, || {
                    run_op(&x, &norms, op)
                });
                let ours = device_ms::<BatchInvariant<B>, _>(
                    device,
                    batch_invariant_ms,
                    Flush::Clean,
                    || run_op(&xi, &norms_i, op),
                );
                CleanL2 {
                    burn_default_ms: burn,
                    batch_invariant_ms: ours,
                    batch_invariant_read_tb_s: bytes / (ours * 1e-3) / 1e12,
                }
            });
            rows.push(Row {
                op: format!("{op} (last dim)"),
                dtype: "f32".into(),
                m,
                len,
                burn_default_ms,
                batch_invariant_ms,
                ratio: batch_invariant_ms / burn_default_ms,
                batch_invariant_read_tb_s: bytes / (batch_invariant_ms * 1e-3) / 1e12,
                timing: timing_since(mark),
                clean_l2,
            });
        }
    }
    println!(
        "{:<22} {:>6} {:>7} {:>13} {:>13} {:>7} {:>9}",
        "op", "M", "len", "burn ms", "invariant ms", "ratio", "TB/s"
    );
    for r in &rows {
        println!(
            "{:<22} {:>6} {:>7} {:>13.4} {:>13.4} {:>7.2} {:>9.3}",
            r.op,
            r.m,
            r.len,
            r.burn_default_ms,
            r.batch_invariant_ms,
            r.ratio,
            r.batch_invariant_read_tb_s
        );
    }
    for r in &rows {
        if let Some(c) = &r.clean_l2 {
            println!(
                "{:<22} {:>6} {:>7} {:>13.4} {:>13.4} {:>7.2} {:>9.3}   (clean L2 between calls)",
                r.op,
                r.m,
                r.len,
                c.burn_default_ms,
                c.batch_invariant_ms,
                c.batch_invariant_ms / c.burn_default_ms,
                c.batch_invariant_read_tb_s
            );
        }
    }
    if let Some(i) = args.iter().position(|a| a == "--json") {
        let path = args.get(i + 1).expect("--json needs a path");
        let json = serde_json::json!({
            "device": B::name(device),
            "fused": burn_batch_invariant_examples::use_fused(),
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
        println!("wrote {path}");
    }
}

fn main() {
    on_backend!(bench);
}
