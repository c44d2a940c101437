//! Generation with the Llama-style model (`burn_batch_invariant_examples::llama`): a KV
//! cache, continuous batching (sequences join as others finish) and seeded sampling, under
//! `BatchInvariant`, with a tokens-per-second line per step; then the A/B report: the same
//! requests generated one at a time, and the count of sequences whose tokens or logits
//! differ. Burn's default kernels run the same report as the control. Exits 1 when a
//! sequence moves under `BatchInvariant`.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin llama_generate -- [--cuda] [--fused]
//!
//! `--model tiny|7b` (default: tiny on the CPU path, Llama-2-7B shapes with 4 layers on
//! CUDA; random weights), `--checkpoint DIR` (a Hugging Face Llama checkpoint instead:
//! `config.json` and `*.safetensors`; prompts stay random token ids, as no tokenizer is
//! loaded), `--requests N` (24), `--slots S` (8), `--new T` (tokens per
//! sequence, 16), `--temperature X` (0.6), `--seed S` (42), `--dtype bf16|f32`.

use std::time::Instant;

use burn::tensor::{DType, FloatDType};
use burn_batch_invariant::sampling::SamplingParams;
use burn_batch_invariant::{BatchInvariant, KernelHost, ParityOps};
use burn_batch_invariant_examples::llama::{
    generate, prompts, Checkpoint, Llama, LlamaConfig, Output, Request,
};
use burn_batch_invariant_examples::{arg, on_backend, use_cuda};

/// Generates `requests` with continuous batching over `slots` slots, printing progress
/// (the first steps include compiling each new kernel configuration).
fn serve<X: ParityOps>(
    model: &Llama<X>,
    requests: &[Request],
    slots: usize,
    dtype: FloatDType,
    device: &X::Device,
    label: &str,
) -> Vec<Output> {
    let start = Instant::now();
    let (mut steps, mut tokens) = (0usize, 0usize);
    let out = generate(model, requests, slots, dtype, device, |rows, new| {
        // Called before each step: the rate covers the steps already done.
        if steps % 8 == 0 && steps > 0 {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{label}: step {steps:4}, next {rows:3} sequences with {new:5} input tokens, \
                 {:8.1} generated tokens/s so far",
                tokens as f64 / secs.max(1e-9)
            );
        }
        steps += 1;
        tokens += rows;
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label}: {tokens} tokens in {steps} steps, {secs:.2} s, {:.1} tokens/s",
        tokens as f64 / secs
    );
    out
}

/// (sequences whose tokens differ, sequences whose logits differ) between continuous
/// batching and each request alone.
fn ab<X: ParityOps>(
    model: &Llama<X>,
    requests: &[Request],
    slots: usize,
    dtype: FloatDType,
    device: &X::Device,
    label: &str,
) -> (usize, usize) {
    let batched = serve(
        model,
        requests,
        slots,
        dtype,
        device,
        &format!("{label}, {slots} slots"),
    );
    let alone: Vec<Output> = requests
        .iter()
        .flat_map(|r| generate(model, std::slice::from_ref(r), 1, dtype, device, |_, _| ()))
        .collect();
    let tokens = alone
        .iter()
        .zip(&batched)
        .filter(|(a, b)| a.tokens != b.tokens)
        .count();
    let logits = alone
        .iter()
        .zip(&batched)
        .filter(|(a, b)| a.logits != b.logits)
        .count();
    println!(
        "{label}: of {} sequences, {tokens} generated other tokens and {logits} saw other logits \
         in the batch than alone",
        requests.len()
    );
    (tokens, logits)
}

/// The model from the checkpoint when one was given, random weights otherwise.
fn load<X: ParityOps>(
    config: LlamaConfig,
    weights: &mut Option<Checkpoint>,
    dtype: FloatDType,
    device: &X::Device,
) -> Llama<X> {
    match weights {
        Some(checkpoint) => Llama::from_weights(config, checkpoint, dtype, device),
        None => Llama::new(config, 1, dtype, device),
    }
}

fn run<B: KernelHost + ParityOps>(device: &B::Device) {
    let big = match std::env::args().position(|a| a == "--model") {
        Some(i) => std::env::args().nth(i + 1).as_deref() == Some("7b"),
        None => use_cuda(),
    };
    let dtype = match arg("--dtype", String::from(if big { "bf16" } else { "f32" })).as_str() {
        "bf16" if B::supports_dtype(device, DType::BF16) => FloatDType::BF16,
        "bf16" | "f32" => FloatDType::F32,
        other => panic!("--dtype {other}: expected bf16 or f32"),
    };
    let n: usize = arg("--requests", 24);
    let slots: usize = arg("--slots", 8);
    let new: usize = arg("--new", 16);
    let params = SamplingParams::with_temperature(arg("--temperature", 0.6), arg("--seed", 42));
    let max_prompt = if big { 512 } else { 40 };
    let checkpoint = arg("--checkpoint", String::new());
    let (config, mut weights) = if checkpoint.is_empty() {
        let config = if big {
            LlamaConfig::llama2_7b(4, max_prompt + new)
        } else {
            LlamaConfig {
                max_len: max_prompt + new,
                ..LlamaConfig::tiny()
            }
        };
        (config, None)
    } else {
        let (weights, config) =
            Checkpoint::open(std::path::Path::new(&checkpoint), max_prompt + new)
                .unwrap_or_else(|e| panic!("--checkpoint {checkpoint}: {e}"));
        (config, Some(weights))
    };
    println!("device: {}, {dtype:?}, {config:?}", B::name(device));
    let requests: Vec<Request> = prompts(n, max_prompt, config.vocab, 3)
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| Request {
            prompt,
            // Different lengths, so that sequences leave and others join mid-flight.
            max_new: 1 + (i * 5) % new,
            params,
            id: i as u64,
        })
        .collect();

    let model = load::<BatchInvariant<B>>(config, &mut weights, dtype, device);
    let (tokens, logits) = ab(&model, &requests, slots, dtype, device, "BatchInvariant");
    drop(model);
    let model = load::<B>(config, &mut weights, dtype, device);
    ab(
        &model,
        &requests,
        slots,
        dtype,
        device,
        "Burn default (control)",
    );
    if tokens + logits > 0 {
        eprintln!("FAIL: sequences moved with their batch under BatchInvariant");
        std::process::exit(1);
    }
}

fn main() {
    on_backend!(run);
}
