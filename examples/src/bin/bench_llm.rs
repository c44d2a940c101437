//! Benchmark: the Llama-style model of `burn_batch_invariant_examples::llama` end to end,
//! Burn's default kernels against `BatchInvariant` over the same backend and weights.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin bench_llm -- --cuda [--fused] --json llm.json
//!
//! Shapes: Llama-2-7B's (d 4096, 32 heads of 128, ff 11008, vocab 32000) with 4 layers
//! (`--layers N`), random weights. Prefill: 1 x 2048 and 16 x 512 tokens, causal, the logits
//! of each row's last position. Decode: one token per sequence at batch 1, 8, 32 and 64
//! against a KV cache of 1024 and 4096 positions. `--dtype bf16|f32` (default bf16),
//! `--phase prefill|decode`, `--backends both|invariant|default`, `--quick` (a tiny model
//! and shapes, for a CPU smoke run). Each row is printed as soon as it is measured.
//!
//! Milliseconds per forward are wall clock (median of `sync; forward; sync`): what a serving
//! loop waits for, host cost included. `row0_equal` says whether row 0's logits have the same
//! bits as at the phase's first batch size. With `--breakdown`, a decode step is also run
//! with a device sync after each part of every layer, and the time of each part reported
//! (the syncs add idle gaps, so the parts sum to more than the step).
//! Writes JSON (`--json PATH`) and an SVG plot of decode time against batch size beside it.
//!
//! `--phase train` times a training step instead (forward over every position, the mean
//! next-token log-probability as the loss, backward; no optimizer) at 1 x 512 and 4 x 512
//! tokens: `Autodiff<B>` running the model against `Autodiff<BatchInvariant<B>>`, whose
//! forward is the inference kernels' (`burn_batch_invariant::ParityOps`).

use std::collections::BTreeMap;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use burn_batch_invariant::{log_softmax, BatchInvariant, KernelHost, ParityOps};
use burn_batch_invariant_examples::llama::{KvCache, Llama, LlamaConfig, Logits, StepRow};
use burn_batch_invariant_examples::{median_ms, on_backend, progress, svg_plot, Series};
use serde::Serialize;

#[derive(Serialize, Clone)]
struct Row {
    phase: &'static str,
    batch: usize,
    /// Prefill: tokens per sequence. Decode: cached positions.
    tokens: usize,
    dtype: String,
    burn_default_ms: f64,
    batch_invariant_ms: f64,
    /// batch_invariant_ms / burn_default_ms: below 1 means we are faster.
    ratio: f64,
    /// Decode: whether row 0 kept the bits of the phase's first batch size; `None` for
    /// prefill and for a backend left out with `--backends`.
    burn_default_row0_equal: Option<bool>,
    batch_invariant_row0_equal: Option<bool>,
}

struct Case {
    phase: &'static str,
    batch: usize,
    tokens: usize,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).map(|i| {
        args.get(i + 1)
            .cloned()
            .unwrap_or_else(|| panic!("{name} needs a value"))
    })
}

fn cases(quick: bool, phase: Option<&str>) -> Vec<Case> {
    let (prefill, batches, contexts): (&[(usize, usize)], &[usize], &[usize]) = if quick {
        (&[(1, 48), (4, 16)], &[1, 4], &[32])
    } else {
        (&[(1, 2048), (16, 512)], &[1, 8, 32, 64], &[1024, 4096])
    };
    let mut out = Vec::new();
    if phase != Some("decode") {
        out.extend(prefill.iter().map(|&(batch, tokens)| Case {
            phase: "prefill",
            batch,
            tokens,
        }));
    }
    if phase != Some("prefill") {
        for &tokens in contexts {
            out.extend(batches.iter().map(|&batch| Case {
                phase: "decode",
                batch,
                tokens,
            }));
        }
    }
    out
}

/// The tokens of row `r` of a case: deterministic, different per row.
fn row_tokens(case: &Case, r: usize, vocab: usize) -> Vec<usize> {
    let len = if case.phase == "prefill" {
        case.tokens
    } else {
        1
    };
    (0..len)
        .map(|i| (r * 7919 + i * 104_729 + 17) % vocab)
        .collect()
}

/// The tiny model (`--quick`) or Llama-2-7B's shapes with `layers` layers, covering
/// `longest` positions.
fn model_config(quick: bool, layers: usize, longest: usize) -> LlamaConfig {
    if quick {
        LlamaConfig {
            max_len: longest,
            ..LlamaConfig::tiny()
        }
    } else {
        LlamaConfig::llama2_7b(layers, longest)
    }
}

/// Milliseconds per forward of `case` on `model`, and the bytes of row 0's logits.
fn time_case<X: ParityOps>(
    model: &Llama<X>,
    case: &Case,
    dtype: FloatDType,
    device: &X::Device,
) -> (f64, Vec<u8>) {
    let config = model.config();
    let capacity = case.tokens + 1;
    let mut cache = KvCache::<X>::new(&config, case.batch, capacity, dtype, device);
    let tokens: Vec<Vec<usize>> = (0..case.batch)
        .map(|r| row_tokens(case, r, config.vocab))
        .collect();
    let rows = StepRow::one_per_slot(&tokens);
    let context = if case.phase == "decode" {
        case.tokens
    } else {
        0
    };
    let forward = |cache: &mut KvCache<X>| {
        // Back to the context (or to empty): every timed call writes the same positions.
        (0..case.batch).for_each(|s| cache.truncate(s, context));
        model.step(&rows, cache, Logits::Last)
    };
    if context > 0 {
        cache.fill_pattern(context);
    }
    let row0 = forward(&mut cache)
        .narrow(0, 0, 1)
        .into_data()
        .as_bytes()
        .to_vec();
    let first = median_ms::<X, _>(device, 1, 2, || forward(&mut cache));
    let samples = if first > 200.0 { 3 } else { 9 };
    let ms = median_ms::<X, _>(device, 1, samples, || forward(&mut cache));
    (ms, row0)
}

/// Where one decode step's time goes: milliseconds per part, summed over layers.
fn breakdown<X: ParityOps>(
    model: &Llama<X>,
    batch: usize,
    context: usize,
    dtype: FloatDType,
    device: &X::Device,
) -> BTreeMap<&'static str, f64> {
    let config = model.config();
    let mut cache = KvCache::<X>::new(&config, batch, context + 1, dtype, device);
    let case = Case {
        phase: "decode",
        batch,
        tokens: context,
    };
    let tokens: Vec<Vec<usize>> = (0..batch)
        .map(|r| row_tokens(&case, r, config.vocab))
        .collect();
    let rows = StepRow::one_per_slot(&tokens);
    let mut total: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    cache.fill_pattern(context);
    for _ in 0..5 {
        (0..batch).for_each(|s| cache.truncate(s, context));
        X::sync(device).unwrap();
        let mut last = Instant::now();
        let mut parts: BTreeMap<&'static str, f64> = BTreeMap::new();
        let logits = model.step_traced(&rows, &mut cache, Logits::Last, &mut |part| {
            X::sync(device).unwrap();
            *parts.entry(part).or_default() += last.elapsed().as_secs_f64() * 1e3;
            last = Instant::now();
        });
        drop(logits);
        for (part, ms) in parts {
            total.entry(part).or_default().push(ms);
        }
    }
    total
        .into_iter()
        .map(|(part, mut ms)| {
            ms.sort_by(f64::total_cmp);
            (part, ms[ms.len() / 2])
        })
        .collect()
}

fn bench<B: KernelHost + ParityOps>(device: &B::Device) {
    let quick = std::env::args().any(|a| a == "--quick");
    let phase = arg("--phase");
    let dtype = match arg("--dtype").as_deref() {
        None | Some("bf16") if B::supports_dtype(device, DType::BF16) => FloatDType::BF16,
        None | Some("bf16") => FloatDType::F32,
        Some("f32") => FloatDType::F32,
        Some(other) => panic!("--dtype {other}: expected bf16 or f32"),
    };
    let layers = arg("--layers").map_or(4, |l| l.parse().expect("--layers N"));
    if phase.as_deref() == Some("train") {
        return train::<B>(quick, layers, dtype, device);
    }
    let cases = cases(quick, phase.as_deref());
    let longest = cases.iter().map(|c| c.tokens + 1).max().unwrap_or(1);
    let config = model_config(quick, layers, longest);
    println!("device: {}, {dtype:?}, {config:?}", B::name(device));

    // Both models stay resident; each case runs on BatchInvariant first, then on Burn's
    // default, and its row is printed at once (Burn's default autotunes every new shape,
    // which can take minutes on a cold cache).
    let which = arg("--backends").unwrap_or_else(|| "both".into());
    let (run_default, run_invariant) = match which.as_str() {
        "both" => (true, true),
        "default" => (true, false),
        "invariant" => (false, true),
        other => panic!("--backends {other}: expected both, default or invariant"),
    };
    let invariant =
        run_invariant.then(|| Llama::<BatchInvariant<B>>::new(config, 1, dtype, device));
    let default = run_default.then(|| Llama::<B>::new(config, 1, dtype, device));
    println!(
        "| phase | batch | tokens | Burn default ms | BatchInvariant ms | ratio | row 0 equal (default / BI) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rows: Vec<Row> = Vec::new();
    // Row 0's logits at the first batch size of each (phase, tokens): (default, invariant).
    type Row0 = (Vec<u8>, Vec<u8>);
    let mut first_row0: BTreeMap<(&'static str, usize), Row0> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        progress(
            i + 1,
            cases.len(),
            &format!("{} b={} n={}", case.phase, case.batch, case.tokens),
        );
        let (bi_ms, bi_row0) = invariant.as_ref().map_or((f64::NAN, Vec::new()), |m| {
            time_case(m, case, dtype, device)
        });
        let (default_ms, default_row0) = default.as_ref().map_or((f64::NAN, Vec::new()), |m| {
            time_case(m, case, dtype, device)
        });
        let first = first_row0
            .entry((case.phase, case.tokens))
            .or_insert_with(|| (default_row0.clone(), bi_row0.clone()));
        let decode = case.phase == "decode";
        let row = Row {
            phase: case.phase,
            batch: case.batch,
            tokens: case.tokens,
            dtype: format!("{dtype:?}"),
            burn_default_ms: default_ms,
            batch_invariant_ms: bi_ms,
            ratio: bi_ms / default_ms,
            burn_default_row0_equal: (decode && run_default).then(|| default_row0 == first.0),
            batch_invariant_row0_equal: (decode && run_invariant).then(|| bi_row0 == first.1),
        };
        let shown = |equal: Option<bool>| equal.map_or("-".to_string(), |e| e.to_string());
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} / {} |",
            row.phase,
            row.batch,
            row.tokens,
            row.burn_default_ms,
            row.batch_invariant_ms,
            row.ratio,
            shown(row.burn_default_row0_equal),
            shown(row.batch_invariant_row0_equal)
        );
        rows.push(row);
    }
    let mut parts = Vec::new();
    if std::env::args().any(|a| a == "--breakdown") {
        let (b, c) = if quick { (4, 32) } else { (64, 1024) };
        if let Some(model) = &invariant {
            parts.push((
                "BatchInvariant",
                b,
                c,
                breakdown(model, b, c, dtype, device),
            ));
        }
        if let Some(model) = &default {
            parts.push(("Burn default", b, c, breakdown(model, b, c, dtype, device)));
        }
    }
    for (who, b, c, parts) in &parts {
        println!(
            "\ndecode step breakdown, {who}, batch {b}, context {c} (ms, synced after each part):"
        );
        for (part, ms) in parts {
            println!("  {part:<10} {ms:8.3}");
        }
    }
    if let Some(path) = arg("--json") {
        let breakdown: Vec<_> = parts
            .iter()
            .map(|(who, b, c, p)| serde_json::json!({ "backend": who, "batch": b, "context": c, "ms": p }))
            .collect();
        let json = serde_json::json!({
            "device": B::name(device),
            "config": format!("{config:?}"),
            "rows": rows,
            "decode_breakdown": breakdown,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
        let mut series = Vec::new();
        for context in rows
            .iter()
            .filter(|r| r.phase == "decode")
            .map(|r| r.tokens)
            .collect::<std::collections::BTreeSet<_>>()
        {
            for (who, pick) in [
                (
                    "Burn default",
                    (|r: &Row| r.burn_default_ms) as fn(&Row) -> f64,
                ),
                ("BatchInvariant", |r: &Row| r.batch_invariant_ms),
            ] {
                // A backend left out with `--backends` has no points to draw.
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.phase == "decode" && r.tokens == context)
                    .map(|r| (r.batch as f64, pick(r)))
                    .filter(|(_, ms)| ms.is_finite())
                    .collect();
                if !points.is_empty() {
                    series.push(Series {
                        name: format!("{who}, context {context}"),
                        points,
                    });
                }
            }
        }
        let svg_path = std::path::Path::new(&path).with_extension("svg");
        let title = format!("Llama-style decode step, {dtype:?}, {}", B::name(device));
        std::fs::write(
            &svg_path,
            svg_plot(&title, "batch size", "ms per step", &series),
        )
        .expect("write svg");
        println!("wrote {path} and {}", svg_path.display());
    }
}

/// Milliseconds per training step (forward, loss, backward) of `model` on `batch` rows of
/// `tokens` tokens.
fn train_step_ms<A: AutodiffBackend + ParityOps>(
    model: &Llama<A>,
    batch: usize,
    tokens: usize,
    dtype: FloatDType,
    device: &A::Device,
) -> f64 {
    let config = model.config();
    let case = Case {
        phase: "prefill",
        batch,
        tokens,
    };
    let inputs: Vec<Vec<usize>> = (0..batch)
        .map(|r| row_tokens(&case, r, config.vocab))
        .collect();
    // Each position's target is the next input token (the last one's is the first).
    let targets: Vec<i64> = inputs
        .iter()
        .flat_map(|row| (0..tokens).map(move |i| row[(i + 1) % tokens] as i64))
        .collect();
    let targets =
        Tensor::<A, 3, Int>::from_data(TensorData::new(targets, [batch, tokens, 1]), device);
    let rows = StepRow::one_per_slot(&inputs);
    let step = || {
        let mut cache = KvCache::<A>::new(&config, batch, tokens, dtype, device);
        let logits = model.step(&rows, &mut cache, Logits::All);
        let logprobs = log_softmax(logits.cast(FloatDType::F32), 2).gather(2, targets.clone());
        let grads = (-logprobs.mean()).backward();
        drop(grads);
    };
    let first = median_ms::<A, _>(device, 1, 2, step);
    let samples = if first > 200.0 { 3 } else { 7 };
    median_ms::<A, _>(device, 1, samples, step)
}

/// `--phase train`: training steps under `Autodiff<BatchInvariant<B>>` and `Autodiff<B>`.
fn train<B: KernelHost + ParityOps>(
    quick: bool,
    layers: usize,
    dtype: FloatDType,
    device: &B::Device,
) {
    let shapes: &[(usize, usize)] = if quick {
        &[(1, 16), (4, 16)]
    } else {
        &[(1, 512), (4, 512)]
    };
    let longest = shapes.iter().map(|s| s.1).max().unwrap_or(1);
    let config = model_config(quick, layers, longest);
    println!("device: {}, {dtype:?}, {config:?}", B::name(device));
    let invariant = Llama::<Autodiff<BatchInvariant<B>>>::new(config, 1, dtype, device);
    let default = Llama::<Autodiff<B>>::new(config, 1, dtype, device);
    println!("| training step | Burn default ms | BatchInvariant ms | ratio |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for &(batch, tokens) in shapes {
        let bi = train_step_ms(&invariant, batch, tokens, dtype, device);
        let burn = train_step_ms(&default, batch, tokens, dtype, device);
        println!(
            "| {batch} x {tokens} | {burn:.2} | {bi:.2} | {:.2} |",
            bi / burn
        );
        rows.push(serde_json::json!({
            "batch": batch, "tokens": tokens, "dtype": format!("{dtype:?}"),
            "burn_default_ms": burn, "batch_invariant_ms": bi, "ratio": bi / burn,
        }));
    }
    if let Some(path) = arg("--json") {
        let json = serde_json::json!({
            "device": B::name(device),
            "config": format!("{config:?}"),
            "train_rows": rows,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
    }
}

fn main() {
    on_backend!(bench);
}
