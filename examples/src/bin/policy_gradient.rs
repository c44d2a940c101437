//! A few steps of policy-gradient training on the Llama-style model, printing per step how
//! far the training forward's log-probabilities of the sampled tokens are from the ones
//! generation drew them with (`burn_batch_invariant_examples::policy`). Under
//! `Autodiff<BatchInvariant<B>>` the difference is 0 at every step; under Burn's default
//! (`Autodiff<B>`, the control) generation batches and decodes one token at a time while
//! training runs whole sequences, and the log-probabilities move. Exits 1 when a
//! log-probability differs under `BatchInvariant`.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin policy_gradient -- [--cuda] [--fused]
//!
//! `--steps N` (4), `--requests N` (16), `--slots S` (5), `--new T` (most tokens per
//! sequence, 8), `--lr X` (3e-3), `--model tiny|small` (tiny: the CI model; small: d 512,
//! 8 layers, vocab 8192). The reward is the share of generated tokens in the lower half of
//! the vocabulary, so the mean reward climbs as the policy learns.

use burn::backend::Autodiff;
use burn::optim::AdamConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::FloatDType;
use burn_batch_invariant::sampling::SamplingParams;
use burn_batch_invariant::{BatchInvariant, KernelHost, ParityOps};
use burn_batch_invariant_examples::llama::{prompts, Llama, LlamaConfig, Request};
use burn_batch_invariant_examples::policy::train_step;
use burn_batch_invariant_examples::{arg, on_backend};

/// Trains for `--steps` steps and returns the log-probabilities that differed, per step.
fn train<A>(config: LlamaConfig, device: &A::Device, label: &str) -> Vec<usize>
where
    A: AutodiffBackend + ParityOps,
    A::InnerBackend: ParityOps,
{
    let dtype = FloatDType::F32;
    let (steps, n, slots, new) = (
        arg("--steps", 4usize),
        arg("--requests", 16usize),
        arg("--slots", 5usize),
        arg("--new", 8usize),
    );
    let lr: f64 = arg("--lr", 3e-3);
    let vocab = config.vocab;
    let reward = |tokens: &[usize]| {
        let low = tokens.iter().filter(|&&t| t < vocab / 2).count();
        low as f64 / tokens.len().max(1) as f64
    };
    let mut model = Llama::<A>::new(config, 1, dtype, device);
    let mut optimizer = AdamConfig::new().init::<A, Llama<A>>();
    let mut differing = Vec::new();
    for step in 0..steps {
        let requests: Vec<Request> = prompts(n, 24, vocab, 100 + step as u64)
            .into_iter()
            .enumerate()
            .map(|(i, prompt)| Request {
                prompt,
                max_new: 1 + (i * 3) % new,
                params: SamplingParams::with_temperature(1.0, step as u64),
                id: i as u64,
            })
            .collect();
        let (next, report) = train_step(
            model,
            &mut optimizer,
            lr,
            &requests,
            slots,
            reward,
            dtype,
            device,
        );
        model = next;
        println!(
            "{label}: step {step}: mean reward {:.3}, {} sampled tokens, {} training \
             log-probabilities differ from generation's, largest difference {:e}",
            report.reward, report.tokens, report.differing, report.max_diff
        );
        differing.push(report.differing);
    }
    differing
}

fn run<B: KernelHost + ParityOps>(device: &B::Device) {
    let config = match arg("--model", String::from("tiny")).as_str() {
        "tiny" => LlamaConfig::tiny(),
        "small" => LlamaConfig {
            vocab: 8192,
            d_model: 512,
            heads: 8,
            kv_heads: 4,
            layers: 8,
            ffn: 1376,
            max_len: 128,
            ..LlamaConfig::tiny()
        },
        other => panic!("--model {other}: expected tiny or small"),
    };
    println!("device: {}, f32, {config:?}", B::name(device));
    let invariant = train::<Autodiff<BatchInvariant<B>>>(config, device, "BatchInvariant");
    train::<Autodiff<B>>(config, device, "Burn default (control)");
    if invariant.iter().any(|&d| d > 0) {
        eprintln!("FAIL: training log-probabilities differ from generation's under BatchInvariant");
        std::process::exit(1);
    }
}

fn main() {
    on_backend!(run);
}
