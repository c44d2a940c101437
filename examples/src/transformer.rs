//! A small decoder-only language model built from burn-nn modules (embedding, RMSNorm,
//! linear layers) and `burn::tensor::module::attention`, with random weights from a fixed
//! seed, plus greedy generation under several batch compositions. `ab_generate` and the
//! test suite use it to check batch invariance where users feel it: in generated tokens.

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, Bool, FloatDType, Int, Tensor, TensorData};

use crate::{values, Init};

/// Model size. [`LmConfig::tiny`] is what CI runs on the CPU path; [`LmConfig::full`] is
/// the GPU configuration.
#[derive(Clone, Copy, Debug)]
pub struct LmConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    pub ffn: usize,
    pub max_len: usize,
}

impl LmConfig {
    pub fn tiny() -> Self {
        Self {
            vocab: 97,
            d_model: 64,
            heads: 4,
            layers: 2,
            ffn: 128,
            max_len: 64,
        }
    }

    pub fn full() -> Self {
        Self {
            vocab: 8192,
            d_model: 512,
            heads: 8,
            layers: 4,
            ffn: 2048,
            max_len: 256,
        }
    }
}

struct Block<B: Backend> {
    norm_attn: RmsNorm<B>,
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    out: Linear<B>,
    norm_mlp: RmsNorm<B>,
    up: Linear<B>,
    down: Linear<B>,
}

/// The model: token and position embeddings, pre-norm blocks (causal attention, GELU MLP),
/// a final RMSNorm and the LM head.
pub struct TinyLm<B: Backend> {
    config: LmConfig,
    tokens: Embedding<B>,
    positions: Embedding<B>,
    blocks: Vec<Block<B>>,
    norm: RmsNorm<B>,
    head: Linear<B>,
}

impl<B: Backend> Init<'_, B> {
    fn embedding(&mut self, n: usize, d: usize) -> Embedding<B> {
        let mut embedding = EmbeddingConfig::new(n, d).init(self.device);
        embedding.weight = self.matrix(n, d, 1.0);
        embedding
    }

    fn norm(&mut self, d: usize) -> RmsNorm<B> {
        let mut norm = RmsNormConfig::new(d).init(self.device);
        norm.gamma = Param::from_tensor(Tensor::<B, 1>::ones([d], self.device).cast(self.dtype));
        norm
    }
}

impl<B: Backend> TinyLm<B> {
    pub fn new(config: LmConfig, seed: u64, dtype: FloatDType, device: &B::Device) -> Self {
        let mut init = Init::<B> {
            seed,
            dtype,
            device,
        };
        let d = config.d_model;
        let blocks = (0..config.layers)
            .map(|_| Block {
                norm_attn: init.norm(d),
                query: init.linear(d, d),
                key: init.linear(d, d),
                value: init.linear(d, d),
                out: init.linear(d, d),
                norm_mlp: init.norm(d),
                up: init.linear(d, config.ffn),
                down: init.linear(config.ffn, d),
            })
            .collect();
        Self {
            config,
            tokens: init.embedding(config.vocab, d),
            positions: init.embedding(config.max_len, d),
            blocks,
            norm: init.norm(d),
            head: init.linear(d, config.vocab),
        }
    }

    /// Logits `[batch, seq, vocab]` for right-padded token rows of lengths `lens`. Padded
    /// keys are masked; padded queries give logits nobody reads.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, lens: &[usize]) -> Tensor<B, 3> {
        self.forward_embedded(self.embed(tokens), lens)
    }

    /// Token plus position embeddings `[batch, seq, d_model]`: the model's input as floats,
    /// where training takes input gradients.
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let device = tokens.device();
        let [batch, seq] = tokens.dims();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .unsqueeze::<2>()
            .expand([batch, seq]);
        self.tokens.forward(tokens) + self.positions.forward(positions)
    }

    /// Logits for embedded inputs (see [`TinyLm::embed`]).
    pub fn forward_embedded(&self, mut x: Tensor<B, 3>, lens: &[usize]) -> Tensor<B, 3> {
        let device = x.device();
        let [batch, seq, _] = x.dims();
        let (heads, d) = (self.config.heads, self.config.d_model);
        let padding: Vec<bool> = lens
            .iter()
            .flat_map(|&len| (0..seq).map(move |j| j >= len))
            .collect();
        let mask =
            Tensor::<B, 4, Bool>::from_data(TensorData::new(padding, [batch, 1, 1, seq]), &device);
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, d / heads]).swap_dims(1, 2);
        for block in &self.blocks {
            let h = block.norm_attn.forward(x.clone());
            let context = attention(
                split(block.query.forward(h.clone())),
                split(block.key.forward(h.clone())),
                split(block.value.forward(h)),
                Some(mask.clone()),
                None,
                options,
            );
            let context = context.swap_dims(1, 2).reshape([batch, seq, d]);
            x = x + block.out.forward(context);
            let h = block.norm_mlp.forward(x.clone());
            x = x + block.down.forward(gelu(block.up.forward(h)));
        }
        self.head.forward(self.norm.forward(x))
    }

    pub fn config(&self) -> LmConfig {
        self.config
    }

    /// Every weight matrix (embeddings, projections, LM head), for reading gradients.
    pub fn weights(&self) -> Vec<Tensor<B, 2>> {
        let mut weights = vec![self.tokens.weight.val(), self.positions.weight.val()];
        for block in &self.blocks {
            for linear in [
                &block.query,
                &block.key,
                &block.value,
                &block.out,
                &block.up,
                &block.down,
            ] {
                weights.push(linear.weight.val());
            }
        }
        weights.push(self.head.weight.val());
        weights
    }
}

/// What one prompt produced: its generated tokens and the raw bytes of the logits each
/// token was chosen from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<usize>,
    pub logits: Vec<Vec<u8>>,
}

/// One greedy step for every sequence of `batch` (right-padded into one forward pass):
/// appends the argmax token (ties to the smallest id, on the host) and records the logits.
fn step<B: Backend>(
    model: &TinyLm<B>,
    batch: &mut [(&[usize], &mut Generation)],
    device: &B::Device,
) {
    let lens: Vec<usize> = batch
        .iter()
        .map(|(prompt, g)| prompt.len() + g.tokens.len())
        .collect();
    let seq = *lens.iter().max().expect("a non-empty batch");
    let mut ids = Vec::with_capacity(batch.len() * seq);
    for (prompt, g) in batch.iter() {
        let row: Vec<i64> = prompt.iter().chain(&g.tokens).map(|&t| t as i64).collect();
        ids.extend(row.iter().copied());
        ids.extend(std::iter::repeat_n(0, seq - row.len()));
    }
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch.len(), seq]), device);
    let logits = model.forward(tokens, &lens);
    for (b, (_, g)) in batch.iter_mut().enumerate() {
        let last = logits
            .clone()
            .narrow(0, b, 1)
            .narrow(1, lens[b] - 1, 1)
            .reshape([model.config.vocab]);
        let data = last.into_data();
        let vals = data
            .clone()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("logits");
        let best = vals
            .iter()
            .enumerate()
            .fold(0, |best, (i, v)| if *v > vals[best] { i } else { best });
        g.tokens.push(best);
        g.logits.push(data.as_bytes().to_vec());
    }
}

/// How the prompts share forward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Composition {
    /// Every prompt alone: the reference.
    Alone,
    /// Consecutive groups of `n` prompts (mixed lengths), generated together.
    Batches(usize),
    /// All prompts in one batch, in reverse order (every row moves).
    Reversed,
    /// Continuous batching: at most `n` sequences at a time; a finished one leaves and the
    /// next prompt joins mid-flight, so the batch changes at almost every step.
    Continuous(usize),
}

impl Composition {
    pub fn label(&self) -> String {
        match self {
            Self::Alone => "alone".into(),
            Self::Batches(n) => format!("batches of {n}"),
            Self::Reversed => "one batch, reversed".into(),
            Self::Continuous(n) => format!("continuous, {n} slots"),
        }
    }
}

/// Greedy generation of `steps[i]` tokens for prompt `i` under `composition`.
pub fn generate<B: Backend>(
    model: &TinyLm<B>,
    prompts: &[Vec<usize>],
    steps: &[usize],
    composition: Composition,
    device: &B::Device,
) -> Vec<Generation> {
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logits: Vec::new(),
        })
        .collect();
    let groups: Vec<Vec<usize>> = match composition {
        Composition::Alone => (0..prompts.len()).map(|i| vec![i]).collect(),
        Composition::Batches(n) => (0..prompts.len())
            .collect::<Vec<_>>()
            .chunks(n)
            .map(|c| c.to_vec())
            .collect(),
        Composition::Reversed => vec![(0..prompts.len()).rev().collect()],
        Composition::Continuous(slots) => {
            let mut active: Vec<usize> = Vec::new();
            let mut next = 0;
            loop {
                active.retain(|&i| out[i].tokens.len() < steps[i]);
                while active.len() < slots && next < prompts.len() {
                    active.push(next);
                    next += 1;
                }
                if active.is_empty() {
                    return out;
                }
                run_group(model, prompts, &active, &mut out, device);
            }
        }
    };
    for group in groups {
        loop {
            let live: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| out[i].tokens.len() < steps[i])
                .collect();
            if live.is_empty() {
                break;
            }
            run_group(model, prompts, &live, &mut out, device);
        }
    }
    out
}

fn run_group<B: Backend>(
    model: &TinyLm<B>,
    prompts: &[Vec<usize>],
    members: &[usize],
    out: &mut [Generation],
    device: &B::Device,
) {
    let mut taken: Vec<(usize, Generation)> = members
        .iter()
        .map(|&i| (i, std::mem::replace(&mut out[i], empty())))
        .collect();
    {
        let mut batch: Vec<(&[usize], &mut Generation)> = taken
            .iter_mut()
            .map(|(i, g)| (prompts[*i].as_slice(), g))
            .collect();
        step(model, &mut batch, device);
    }
    for (i, g) in taken {
        out[i] = g;
    }
}

fn empty() -> Generation {
    Generation {
        tokens: Vec::new(),
        logits: Vec::new(),
    }
}

/// The prompts: `n` token rows of mixed lengths (1 to `max_len`), deterministic.
pub fn prompts(n: usize, max_len: usize, vocab: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7 + 3) % max_len;
            values(len, 500 + i as u64)
                .into_iter()
                .map(|v| ((v + 1.0) * 0.5 * vocab as f32) as usize % vocab)
                .collect()
        })
        .collect()
}

/// Prompts whose tokens, or whose logits, differ bitwise from the `reference` run.
pub fn count_differences(reference: &[Generation], other: &[Generation]) -> (usize, usize) {
    let tokens = reference
        .iter()
        .zip(other)
        .filter(|(a, b)| a.tokens != b.tokens)
        .count();
    let logits = reference
        .iter()
        .zip(other)
        .filter(|(a, b)| a.logits != b.logits)
        .count();
    (tokens, logits)
}
