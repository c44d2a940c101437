//! The main example: a small transformer language model greedily generates for a set of
//! prompts, one prompt at a time and under batch compositions a server would produce
//! (fixed batches of mixed lengths, one reordered batch, continuous batching where
//! sequences join and leave mid-flight). For Burn's default backend and for
//! `BatchInvariant`, it prints how many prompts got tokens, or logits, that differ bitwise
//! from their single-prompt run.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin ab_generate            # lavapipe/Vulkan, tiny model, f32
//!     cargo run --release -p burn-batch-invariant-examples --bin ab_generate -- --cuda  # full model
//!
//! Flags: `--tiny`/`--full` (model size; default tiny on wgpu, full on CUDA), `--dtype
//! f32|f16|bf16` (default f32: on an H100, Burn's default changed 6 to 11 of 12 prompts'
//! logits in f32 and none in one bf16 run; its kernel choices differ per dtype). With
//! `BURN_BATCH_INVARIANT=0` the BatchInvariant rows run Burn's kernels (the A/B switch). Exit status 1 when BatchInvariant (mode on) lets any prompt change.

use burn::tensor::{backend::Backend, DType, FloatDType};
use burn_batch_invariant::{mode, BatchInvariant, KernelHost};
use burn_batch_invariant_examples::transformer::{
    count_differences, generate, prompts, Composition, LmConfig, TinyLm,
};
use burn_batch_invariant_examples::{on_backend, progress, use_cuda};

const COMPOSITIONS: [Composition; 5] = [
    Composition::Batches(2),
    Composition::Batches(3),
    Composition::Batches(7),
    Composition::Reversed,
    Composition::Continuous(3),
];

struct Setup {
    config: LmConfig,
    dtype: FloatDType,
    prompts: Vec<Vec<usize>>,
    steps: Vec<usize>,
}

/// Runs every composition on backend `X`; returns (composition, tokens differing, logits
/// differing) against the single-prompt run on the same backend.
fn run_backend<X: Backend>(
    name: &str,
    setup: &Setup,
    device: &X::Device,
    step: &mut usize,
    total: usize,
) -> Vec<(String, usize, usize)> {
    let model = TinyLm::<X>::new(setup.config, 7, setup.dtype, device);
    *step += 1;
    progress(*step, total, &format!("{name}: every prompt alone"));
    let alone = generate(
        &model,
        &setup.prompts,
        &setup.steps,
        Composition::Alone,
        device,
    );
    COMPOSITIONS
        .iter()
        .map(|&composition| {
            *step += 1;
            progress(*step, total, &format!("{name}: {}", composition.label()));
            let got = generate(&model, &setup.prompts, &setup.steps, composition, device);
            let (tokens, logits) = count_differences(&alone, &got);
            (composition.label(), tokens, logits)
        })
        .collect()
}

fn run<B: KernelHost>(device: &B::Device) {
    let args: Vec<String> = std::env::args().collect();
    let full =
        args.iter().any(|a| a == "--full") || (use_cuda() && !args.iter().any(|a| a == "--tiny"));
    let config = if full {
        LmConfig::full()
    } else {
        LmConfig::tiny()
    };
    let dtype = match args
        .iter()
        .position(|a| a == "--dtype")
        .map(|i| args[i + 1].as_str())
    {
        Some("f32") => FloatDType::F32,
        Some("f16") => FloatDType::F16,
        Some("bf16") => FloatDType::BF16,
        Some(other) => panic!("--dtype {other}: expected f32, f16 or bf16"),
        None => FloatDType::F32,
    };
    assert!(
        B::supports_dtype(device, DType::from(dtype)),
        "{dtype:?} is not supported on {}",
        B::name(device)
    );
    let (n, max_prompt, base_steps) = if full { (12, 48, 16) } else { (7, 12, 5) };
    let prompts = prompts(n, max_prompt, config.vocab);
    let steps: Vec<usize> = (0..n).map(|i| base_steps - i % 3).collect();
    let setup = Setup {
        config,
        dtype,
        prompts,
        steps,
    };
    println!(
        "device: {}; model: {} layers, d_model {}, {} heads, vocab {}, {dtype:?}; {n} prompts of 1-{max_prompt} tokens, {}-{base_steps} greedy steps",
        B::name(device),
        config.layers,
        config.d_model,
        config.heads,
        config.vocab,
        base_steps - 2,
    );
    println!(
        "BatchInvariant mode: {} (BURN_BATCH_INVARIANT={})",
        if mode::is_enabled() { "on" } else { "off" },
        std::env::var("BURN_BATCH_INVARIANT").unwrap_or_else(|_| "unset".into())
    );
    let total = 2 * (1 + COMPOSITIONS.len());
    let mut step = 0;
    let default = run_backend::<B>("Burn default", &setup, device, &mut step, total);
    let invariant =
        run_backend::<BatchInvariant<B>>("BatchInvariant", &setup, device, &mut step, total);
    println!();
    println!("prompts (of {n}) whose output differs bitwise from the same prompt generated alone");
    println!(
        "{:<16} {:<22} {:>15} {:>15}",
        "backend", "composition", "tokens differ", "logits differ"
    );
    for (name, rows) in [("Burn default", &default), ("BatchInvariant", &invariant)] {
        for (label, tokens, logits) in rows.iter() {
            println!("{name:<16} {label:<22} {tokens:>15} {logits:>15}");
        }
    }
    let broken = invariant.iter().any(|(_, t, l)| *t > 0 || *l > 0);
    if broken && mode::is_enabled() {
        eprintln!("BatchInvariant let a prompt's output change with its batch");
        std::process::exit(1);
    }
}

fn main() {
    on_backend!(run);
}
