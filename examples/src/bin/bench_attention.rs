//! Benchmark: the invariant attention against Burn's default attention (its autotuned flash
//! kernel on CUDA) on the same tensors, prefill and decode, over batch sizes. Prints a
//! table, writes JSON (`--json PATH`) and, next to it, an SVG plot of throughput against
//! batch size (`PATH` with `.svg`).
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin bench_attention -- --cuda --json attention.json
//!
//! `--quick` runs small shapes (for a CPU/lavapipe smoke run); `--phase prefill`,
//! `--phase decode` or `--phase train` runs one phase. The shapes match
//! `scripts/reference_torch.py`: prefill is 32 heads x 2048 tokens x head dim 128, bf16,
//! causal; decode is one query against 4096 cached keys; train is the prefill shape forward
//! and backward (the gradients of q, k and v from `sum(out * w)`), Burn's `Autodiff<B>`
//! (its composite) against `Autodiff<BatchInvariant<B>>` with `burn_batch_invariant::attention`
//! (the kernel forward, the fixed-order backward), its throughput counted as 3.5 forwards
//! (FlashAttention's convention). Timing as in `bench`
//! (`burn_batch_invariant_examples::bench_ms`): device time per call from a cold L2.

use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use burn_batch_invariant::{BatchInvariant, KernelHost};
use burn_batch_invariant_examples::{
    bench_ms, on_backend, progress, svg_plot, timing_mark, timing_since, values, Series,
};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    phase: &'static str,
    batch: usize,
    heads: usize,
    seq_q: usize,
    seq_k: usize,
    head_dim: usize,
    dtype: String,
    burn_default_ms: f64,
    batch_invariant_ms: f64,
    /// batch_invariant_ms / burn_default_ms: below 1 means we are faster.
    ratio: f64,
    /// Prefill: useful TFLOP/s (causal half counted). Decode: TB/s of K+V read.
    burn_default_throughput: f64,
    batch_invariant_throughput: f64,
    /// "device" or "wall clock" (fused backend, or a measurement whose blocker could not
    /// hide the host: see `device_ms`).
    timing: &'static str,
}

fn operand<X: Backend>(
    shape: [usize; 4],
    seed: u64,
    dtype: FloatDType,
    device: &X::Device,
) -> Tensor<X, 4> {
    let n = shape.iter().product();
    let t = Tensor::<X, 4>::from_data(TensorData::new(values(n, seed), shape), device);
    t.cast(dtype)
}

fn bench<B: KernelHost>(device: &B::Device) {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("device: {}", B::name(device));
    let dtype = if B::supports_dtype(device, DType::BF16) {
        FloatDType::BF16
    } else {
        FloatDType::F32
    };
    let (heads, prefill_len, cache_len, dim) = if quick {
        (4, 128, 256, 64)
    } else {
        (32, 2048, 4096, 128)
    };
    let prefill_batches: &[usize] = if quick { &[1, 2] } else { &[1, 2, 4, 8] };
    let decode_batches: &[usize] = if quick { &[1, 4] } else { &[1, 8, 32, 64] };
    let mut cases = Vec::new();
    for &b in prefill_batches {
        cases.push(("prefill", b, prefill_len, prefill_len, true));
    }
    for &b in decode_batches {
        cases.push(("decode", b, 1, cache_len, false));
    }
    cases.push(("train", 1, prefill_len, prefill_len, true));
    // `--phase prefill|decode` keeps one phase (e.g. under a profiler).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        let phase = args.get(i + 1).expect("--phase needs prefill or decode");
        cases.retain(|case| case.0 == phase.as_str());
    }
    let mut rows = Vec::new();
    let total = cases.len();
    for (i, (phase, batch, seq_q, seq_k, causal)) in cases.into_iter().enumerate() {
        progress(i + 1, total, &format!("{phase} batch {batch}"));
        let opts = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        let q = operand::<B>([batch, heads, seq_q, dim], 1, dtype, device);
        let k = operand::<B>([batch, heads, seq_k, dim], 2, dtype, device);
        let v = operand::<B>([batch, heads, seq_k, dim], 3, dtype, device);
        let inv = |t: &Tensor<B, 4>| {
            Tensor::<BatchInvariant<B>, 4>::from_data(t.to_data(), device).cast(dtype)
        };
        let (qi, ki, vi) = (inv(&q), inv(&k), inv(&v));
        let mark = timing_mark();
        let (burn_default_ms, batch_invariant_ms) = if phase == "train" {
            let w = operand::<B>([batch, heads, seq_q, dim], 4, dtype, device);
            (
                train_ms::<Autodiff<B>>([&q, &k, &v, &w], device, |q, k, v| {
                    attention(q, k, v, None, None, opts)
                }),
                train_ms::<Autodiff<BatchInvariant<B>>>(
                    [&inv(&q), &inv(&k), &inv(&v), &inv(&w)],
                    device,
                    |q, k, v| burn_batch_invariant::attention(q, k, v, None, None, opts),
                ),
            )
        } else {
            (
                bench_ms::<B, _>(device, || {
                    attention(q.clone(), k.clone(), v.clone(), None, None, opts)
                }),
                bench_ms::<BatchInvariant<B>, _>(device, || {
                    attention(qi.clone(), ki.clone(), vi.clone(), None, None, opts)
                }),
            )
        };
        let elem = if dtype == FloatDType::F32 { 4.0 } else { 2.0 };
        let throughput = |ms: f64| {
            // QK^T and PV, 2 flops per multiply-add, half the pairs under the causal mask.
            let pairs = (batch * heads * seq_q * seq_k) as f64 / if causal { 2.0 } else { 1.0 };
            if phase == "prefill" {
                4.0 * pairs * dim as f64 / (ms * 1e-3) / 1e12
            } else if phase == "train" {
                3.5 * 4.0 * pairs * dim as f64 / (ms * 1e-3) / 1e12
            } else {
                2.0 * (batch * heads * seq_k * dim) as f64 * elem / (ms * 1e-3) / 1e12
            }
        };
        rows.push(Row {
            phase,
            batch,
            heads,
            seq_q,
            seq_k,
            head_dim: dim,
            dtype: format!("{dtype:?}"),
            burn_default_ms,
            batch_invariant_ms,
            ratio: batch_invariant_ms / burn_default_ms,
            burn_default_throughput: throughput(burn_default_ms),
            batch_invariant_throughput: throughput(batch_invariant_ms),
            timing: timing_since(mark),
        });
    }
    println!(
        "{:<8} {:>5} {:>6} {:>6} {:>12} {:>13} {:>7} {:>12} {:>12}",
        "phase",
        "batch",
        "seq_q",
        "seq_k",
        "burn ms",
        "invariant ms",
        "ratio",
        "burn thr",
        "inv thr"
    );
    for r in &rows {
        let unit = if r.phase == "decode" { "TB/s" } else { "TF/s" };
        println!(
            "{:<8} {:>5} {:>6} {:>6} {:>12.4} {:>13.4} {:>7.2} {:>7.3} {unit} {:>7.3} {unit}",
            r.phase,
            r.batch,
            r.seq_q,
            r.seq_k,
            r.burn_default_ms,
            r.batch_invariant_ms,
            r.ratio,
            r.burn_default_throughput,
            r.batch_invariant_throughput
        );
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--json") {
        let path = args.get(i + 1).expect("--json needs a path");
        let json = serde_json::json!({ "device": B::name(device), "rows": rows });
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
        let mut series = Vec::new();
        for (phase, unit) in [
            ("prefill", "TFLOP/s"),
            ("decode", "TB/s K+V"),
            ("train", "TFLOP/s"),
        ] {
            for (who, pick) in [
                (
                    "Burn default",
                    (|r: &Row| r.burn_default_throughput) as fn(&Row) -> f64,
                ),
                ("BatchInvariant", |r: &Row| r.batch_invariant_throughput),
            ] {
                series.push(Series {
                    name: format!("{phase} {who} ({unit})"),
                    points: rows
                        .iter()
                        .filter(|r| r.phase == phase)
                        .map(|r| (r.batch as f64, pick(r)))
                        .collect(),
                });
            }
        }
        let svg_path = std::path::Path::new(path).with_extension("svg");
        let title = format!(
            "attention throughput vs batch size, {dtype:?}, {}",
            B::name(device)
        );
        std::fs::write(
            &svg_path,
            svg_plot(&title, "batch size", "throughput", &series),
        )
        .expect("write svg");
        println!("wrote {path} and {}", svg_path.display());
    }
}

/// Milliseconds per forward and backward of `attend` on `X` (an `Autodiff` backend): `q`,
/// `k` and `v` require gradients, the loss is `sum(out * w)`, and the three gradients are
/// taken from the backward pass.
fn train_ms<X: AutodiffBackend>(
    [q, k, v, w]: [&Tensor<X::InnerBackend, 4>; 4],
    device: &X::Device,
    attend: impl Fn(Tensor<X, 4>, Tensor<X, 4>, Tensor<X, 4>) -> Tensor<X, 4>,
) -> f64 {
    let leaf = |t: &Tensor<X::InnerBackend, 4>| Tensor::<X, 4>::from_inner(t.clone());
    let w = leaf(w);
    bench_ms::<X, _>(device, || {
        let [q, k, v] = [q, k, v].map(|t| leaf(t).require_grad());
        let grads = (attend(q.clone(), k.clone(), v.clone()) * w.clone())
            .sum()
            .backward();
        [q, k, v].map(|t| t.grad(&grads).expect("gradient"))
    })
}

fn main() {
    on_backend!(bench);
}
