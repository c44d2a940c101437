//! Policy-gradient training of the Llama-style model whose training forward gives the
//! sampled tokens the log-probabilities generation gave them, bit for bit.
//!
//! Reinforcement learning from sampled sequences weighs each token by the policy's
//! log-probability of it. The sequences come from an inference engine (KV cache, continuous
//! batching, decode steps of one token); the gradient comes from a training forward over the
//! whole sequences at once. When the two forwards differ, the policy is trained on
//! log-probabilities that did not produce the samples (an off-policy error that grows with
//! training). Under `Autodiff<BatchInvariant<B>>` the training forward runs the kernels
//! generation ran ([`burn_batch_invariant::ParityOps`]), and a decode step is the same
//! position of a prefill, so the two agree exactly.

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use burn_batch_invariant::{log_softmax, ParityOps};

use crate::llama::{generate, KvCache, Llama, Logits, Output, Request, StepRow};

/// The training forward's log-probability of every generated token: one step over every
/// sequence (its prompt and its generated tokens but the last) on a fresh cache, then each
/// token's entry of the `log_softmax` at the position that drew it. `[tokens]`, sequence by
/// sequence, in the order of `outputs`.
pub fn sequence_logprobs<B: ParityOps>(
    model: &Llama<B>,
    requests: &[Request],
    outputs: &[Output],
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<B, 1> {
    let inputs: Vec<(usize, Vec<usize>)> = requests
        .iter()
        .zip(outputs)
        .filter(|(_, out)| !out.tokens.is_empty())
        .map(|(request, out)| {
            let mut tokens = request.prompt.clone();
            tokens.extend(&out.tokens[..out.tokens.len() - 1]);
            (request.prompt.len(), tokens)
        })
        .collect();
    let longest = inputs.iter().map(|(_, t)| t.len()).max().unwrap_or(1);
    let mut cache = KvCache::<B>::new(&model.config(), inputs.len(), longest, dtype, device);
    let rows: Vec<StepRow> = inputs
        .iter()
        .enumerate()
        .map(|(slot, (_, tokens))| StepRow { slot, tokens })
        .collect();
    let logits = model.step(&rows, &mut cache, Logits::All);
    let [n, seq, vocab] = logits.dims();
    let logprobs = log_softmax(logits.cast(FloatDType::F32), 2).reshape([n * seq, vocab]);
    // Row `r`'s token `k` was drawn from position `prompt - 1 + k`.
    let (mut at, mut drawn) = (Vec::new(), Vec::new());
    let sampled = outputs.iter().filter(|out| !out.tokens.is_empty());
    for (r, ((prompt, _), out)) in inputs.iter().zip(sampled).enumerate() {
        for (k, &token) in out.tokens.iter().enumerate() {
            at.push((r * seq + prompt - 1 + k) as i64);
            drawn.push(token as i64);
        }
    }
    let total = at.len();
    let at = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [total]), device);
    let drawn = Tensor::<B, 2, Int>::from_data(TensorData::new(drawn, [total, 1]), device);
    logprobs.select(0, at).gather(1, drawn).reshape([total])
}

/// What one step of [`train_step`] saw.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Mean reward of the sampled sequences.
    pub reward: f64,
    /// Tokens sampled.
    pub tokens: usize,
    /// Tokens whose training log-probability has other bits than generation's.
    pub differing: usize,
    /// The largest `|training - generation|` log-probability difference.
    pub max_diff: f64,
}

/// One policy-gradient step (REINFORCE with the batch's mean reward as baseline): generate
/// `requests` with the inference model (`slots` at a time, continuous batching), score each
/// sequence with `reward`, recompute the sampled tokens' log-probabilities with the training
/// forward, compare them with generation's, and take an optimizer step on
/// `-sum(advantage * logprob) / tokens`.
#[allow(clippy::too_many_arguments)]
pub fn train_step<A, O>(
    model: Llama<A>,
    optimizer: &mut O,
    learning_rate: f64,
    requests: &[Request],
    slots: usize,
    reward: impl Fn(&[usize]) -> f64,
    dtype: FloatDType,
    device: &A::Device,
) -> (Llama<A>, StepReport)
where
    A: AutodiffBackend + ParityOps,
    A::InnerBackend: ParityOps,
    O: Optimizer<Llama<A>, A>,
{
    let policy = model.valid();
    let outputs = generate(&policy, requests, slots, dtype, device, |_, _| ());
    drop(policy);
    let logprobs = sequence_logprobs(&model, requests, &outputs, dtype, device);
    let trained: Vec<f32> = logprobs
        .clone()
        .inner()
        .into_data()
        .to_vec()
        .expect("f32 log-probabilities");
    let generated: Vec<f32> = outputs
        .iter()
        .flat_map(|out| out.logprobs.iter().map(|&b| f32::from_bits(b)))
        .collect();
    let differing = trained
        .iter()
        .zip(&generated)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let max_diff = trained
        .iter()
        .zip(&generated)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);

    let rewards: Vec<f64> = outputs.iter().map(|out| reward(&out.tokens)).collect();
    let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    let advantages: Vec<f32> = outputs
        .iter()
        .zip(&rewards)
        .flat_map(|(out, r)| std::iter::repeat_n((r - mean) as f32, out.tokens.len()))
        .collect();
    let tokens = advantages.len();
    let advantages = Tensor::<A, 1>::from_data(TensorData::new(advantages, [tokens]), device);
    let loss = -(logprobs * advantages).sum() / tokens.max(1) as f64;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optimizer.step(learning_rate, model, grads);
    let report = StepReport {
        reward: mean,
        tokens,
        differing,
        max_diff,
    };
    (model, report)
}
