//! A Llama-style decoder served the way an inference engine serves it: a KV cache written in
//! place, steps that mix prefill chunks and decode tokens of different sequences, and
//! generation with continuous batching and batch-invariant sampling.
//!
//! The model is a burn `Module` built from burn-nn modules (embedding, RMSNorm, linear
//! layers) and this crate's one-op `rms_norm`, `attention` and `log_softmax`
//! ([`ParityOps`]): rotary position embeddings, grouped-query attention, a SwiGLU MLP. With
//! them the same model trains under `Autodiff<BatchInvariant<B>>` with the bits it serves
//! with (`examples/src/bin/policy_gradient.rs`). Weights are random from a fixed seed, the
//! same values on every backend.
//!
//! What makes a row's result independent of the rest of its step, on top of the routed ops:
//! every row reads its own cache slot; keys past a row's length are masked (padding on the
//! right, which the invariant attention ignores bit for bit); a row's queries are rotated at
//! their absolute positions; and the LM head runs on each row's last position only. The
//! serving tests (`tests/suite/serving.rs`) check the consequences: a decode step equals the
//! same position of a prefill, a chunked prefill equals the one-shot one, a warm prefix
//! cache equals a cold one, and a sequence generates the same tokens and log-probabilities
//! alone or among others.
//!
//! Sharded over a tensor-parallel group ([`Llama::new_sharded`]), each rank holds a share of
//! the attention heads and of the MLP's columns (Megatron's layout), and the two row-parallel
//! projections of a layer are summed across ranks by
//! [`burn_batch_invariant::collective::row_parallel_linear`], in rank order: a sequence's logits have
//! the same bits alone and in any batch, on every rank (`tests/suite/collective.rs`).

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::activation::silu;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, Bool, FloatDType, Int, Tensor, TensorData};
use burn_batch_invariant::collective::{row_parallel_linear, Rank};
use burn_batch_invariant::sampling::{sample_row, SamplingParams};
use burn_batch_invariant::{attention, log_softmax, rms_norm, ParityOps};

mod weights;
pub use weights::{Checkpoint, Part, RandomWeights, Weights};

use crate::values;

/// Model size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Key/value heads; `heads` must be a multiple (grouped-query attention).
    pub kv_heads: usize,
    pub layers: usize,
    pub ffn: usize,
    /// Positions the rotary tables cover: the longest sequence the model serves.
    pub max_len: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl LlamaConfig {
    /// What CI runs on the CPU path.
    pub fn tiny() -> Self {
        Self {
            vocab: 97,
            d_model: 64,
            heads: 4,
            kv_heads: 2,
            layers: 2,
            ffn: 160,
            max_len: 128,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
        }
    }

    /// Llama-2-7B's shapes with `layers` layers (7B has 32).
    pub fn llama2_7b(layers: usize, max_len: usize) -> Self {
        Self {
            vocab: 32_000,
            d_model: 4096,
            heads: 32,
            kv_heads: 32,
            layers,
            ffn: 11_008,
            max_len,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }
}

/// One decoder layer. The query, key and value projections are one `Linear` (`qkv`), and so
/// are the MLP's gate and up projections (`gate_up`), as inference engines merge them: one
/// launch instead of three or two, and the same bits per output column.
#[derive(Module, Debug)]
struct Layer<B: Backend> {
    attn_norm: RmsNorm<B>,
    qkv: Linear<B>,
    out: Linear<B>,
    mlp_norm: RmsNorm<B>,
    gate_up: Linear<B>,
    down: Linear<B>,
}

/// The model: token embedding, pre-norm layers, a final RMSNorm and the LM head.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    #[module(skip)]
    config: LlamaConfig,
    /// What this rank holds of a tensor-parallel group; the whole model when unsharded.
    #[module(skip)]
    shard: Shard,
    embedding: Embedding<B>,
    layers: Vec<Layer<B>>,
    norm: RmsNorm<B>,
    head: Linear<B>,
    /// `cos` and `sin` per position, `[max_len, head_dim]`, in the rotate-half layout: the
    /// first half of `sin` negated, so that `rope(x) = x cos + swap_halves(x) sin`.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

/// The share of the model one rank of a tensor-parallel group holds: query heads
/// `rank * heads / ranks ..` with their key/value heads (a group of queries never straddles
/// two ranks), the same share of the MLP's hidden columns, and all of the embedding, the
/// norms and the LM head. The attention output and the MLP's down projection are
/// row-parallel: each rank multiplies its share, and the partial products are summed in rank
/// order on every rank.
#[derive(Clone, Copy, Debug)]
struct Shard {
    /// `None` for the whole model (one rank, no collective).
    rank: Option<Rank>,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
}

impl Shard {
    fn new(config: &LlamaConfig, rank: Option<Rank>) -> Self {
        let ranks = rank.map_or(1, |r| r.ranks());
        assert!(
            config.kv_heads.is_multiple_of(ranks) && config.ffn.is_multiple_of(ranks),
            "Llama: {ranks} tensor-parallel ranks must split the {} key/value heads and the {} \
             hidden columns of the MLP",
            config.kv_heads,
            config.ffn
        );
        Self {
            rank,
            heads: config.heads / ranks,
            kv_heads: config.kv_heads / ranks,
            ffn: config.ffn / ranks,
        }
    }

    /// This rank's columns of a weight whose columns are the `blocks` `(start, width)` laid
    /// side by side (`qkv`: queries, keys, values; `gate_up`: gate, up): its share of each.
    fn columns<B: Backend>(&self, weight: Tensor<B, 2>, blocks: &[(usize, usize)]) -> Tensor<B, 2> {
        let Some(rank) = self.rank else {
            return weight;
        };
        let parts = blocks
            .iter()
            .map(|&(start, width)| {
                let share = width / rank.ranks();
                weight.clone().narrow(1, start + rank.rank() * share, share)
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// This rank's share of a row-parallel weight's rows.
    fn rows<B: Backend>(&self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        let Some(rank) = self.rank else {
            return weight;
        };
        let share = weight.dims()[0] / rank.ranks();
        weight.narrow(0, rank.rank() * share, share)
    }

    /// A row-parallel projection: this rank's rows of `linear` applied to its share of the
    /// features, the partial products summed over the group in rank order and the bias added
    /// once ([`row_parallel_linear`]: the same bits on every rank, whatever the batch).
    fn project<B: Backend>(&self, linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let Some(rank) = &self.rank else {
            return linear.forward(x);
        };
        let bias = linear.bias.as_ref().map(|b| b.val());
        row_parallel_linear(rank, x, linear.weight.val(), bias).unwrap_or_else(|err| {
            panic!(
                "Llama: the tensor-parallel all-reduce of rank {} failed: {err:?}",
                rank.rank()
            )
        })
    }
}

/// The keys and values of every layer for `slots` sequences of up to `capacity` positions,
/// `[slots, kv_heads, capacity, head_dim]` per layer, and each slot's length. A step writes
/// its new keys and values in place.
pub struct KvCache<B: Backend> {
    keys: Vec<Tensor<B, 4>>,
    values: Vec<Tensor<B, 4>>,
    lens: Vec<usize>,
    dtype: FloatDType,
}

impl<B: Backend> KvCache<B> {
    /// The cache of the whole model (a tensor-parallel rank takes [`Llama::kv_cache`]).
    pub fn new(
        config: &LlamaConfig,
        slots: usize,
        capacity: usize,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Self {
        Self::with_heads(config, config.kv_heads, slots, capacity, dtype, device)
    }

    /// A cache of `kv_heads` key/value heads per layer (a tensor-parallel rank's share).
    fn with_heads(
        config: &LlamaConfig,
        kv_heads: usize,
        slots: usize,
        capacity: usize,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Self {
        let shape = [slots, kv_heads, capacity, config.head_dim()];
        let zeros = || {
            (0..config.layers)
                .map(|_| Tensor::<B, 4>::zeros(shape, device).cast(dtype))
                .collect::<Vec<_>>()
        };
        Self {
            keys: zeros(),
            values: zeros(),
            lens: vec![0; slots],
            dtype,
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn capacity(&self) -> usize {
        self.keys.first().map_or(0, |k| k.dims()[2])
    }

    /// The number of positions slot `slot` holds.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// Forgets slot `slot`'s sequence (its entries are overwritten by the next one).
    pub fn clear(&mut self, slot: usize) {
        self.lens[slot] = 0;
    }

    /// Forgets slot `slot`'s positions from `len` on (a rejected draft, a rewind).
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.lens[slot] = self.lens[slot].min(len);
    }

    /// Fills the first `len` positions of every slot with the same deterministic keys and
    /// values (a function of layer, head, position and dim) and marks them written: a
    /// benchmark times decode against a long context without prefilling it, and row 0 sees
    /// the same cache in every batch.
    pub fn fill_pattern(&mut self, len: usize) {
        let dtype = self.dtype;
        for (l, cache) in self
            .keys
            .iter_mut()
            .chain(self.values.iter_mut())
            .enumerate()
        {
            let [slots, heads, capacity, dim] = cache.dims();
            assert!(
                len <= capacity,
                "fill_pattern: {len} positions exceed the cache ({capacity})"
            );
            let device = cache.device();
            let n = (heads * len * dim) as i64;
            let pattern = Tensor::<B, 1, Int>::arange(0..n, &device)
                .float()
                .mul_scalar(0.618_034 + l as f64)
                .sin()
                .cast(dtype)
                .reshape([1, heads, len, dim])
                .repeat_dim(0, slots);
            cache.inplace(|c| c.slice_assign([0..slots, 0..heads, 0..len, 0..dim], pattern));
        }
        self.lens.iter_mut().for_each(|l| *l = len);
    }

    /// Makes slot `to` hold the first `len` positions of slot `from`: a prefix cache hit.
    pub fn copy_prefix(&mut self, from: usize, to: usize, len: usize) {
        assert!(
            len <= self.lens[from],
            "copy_prefix: slot {from} holds {} positions, not {len}",
            self.lens[from]
        );
        for cache in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let [_, heads, _, dim] = cache.dims();
            let prefix = cache
                .clone()
                .slice([from..from + 1, 0..heads, 0..len, 0..dim]);
            cache.inplace(|c| c.slice_assign([to..to + 1, 0..heads, 0..len, 0..dim], prefix));
        }
        self.lens[to] = len;
    }
}

/// One row of a step: `tokens` appended to the sequence held in cache slot `slot`.
#[derive(Clone, Copy, Debug)]
pub struct StepRow<'a> {
    pub slot: usize,
    pub tokens: &'a [usize],
}

impl<'a> StepRow<'a> {
    /// One row per slot: slot `i` appends `tokens[i]`.
    pub fn one_per_slot(tokens: &'a [Vec<usize>]) -> Vec<Self> {
        tokens
            .iter()
            .enumerate()
            .map(|(slot, tokens)| StepRow { slot, tokens })
            .collect()
    }
}

/// Which positions a step returns logits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Each row's last new position: `[rows, 1, vocab]` (what generation needs).
    Last,
    /// Every new position, right-padded: `[rows, longest, vocab]`.
    All,
}

impl<B: ParityOps> Llama<B> {
    /// The model with deterministic random weights from `seed` ([`RandomWeights`]).
    pub fn new(config: LlamaConfig, seed: u64, dtype: FloatDType, device: &B::Device) -> Self {
        Self::from_weights(config, &mut RandomWeights { seed }, dtype, device)
    }

    /// The model with the weights `weights` gives ([`RandomWeights`], or a Hugging Face
    /// checkpoint through [`Checkpoint`]), in `dtype`.
    pub fn from_weights(
        config: LlamaConfig,
        weights: &mut impl Weights<B>,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Self {
        Self::build(config, weights, dtype, device, None)
    }

    /// Rank `rank`'s share of the model [`Llama::new`] gives, in a tensor-parallel group of
    /// `rank.ranks()` (see [`Shard`]). Every rank of the group must build its share and run
    /// the same steps with the same rows: each layer runs two collectives.
    pub fn new_sharded(
        config: LlamaConfig,
        seed: u64,
        dtype: FloatDType,
        device: &B::Device,
        rank: Rank,
    ) -> Self {
        Self::from_weights_sharded(config, &mut RandomWeights { seed }, dtype, device, rank)
    }

    /// Rank `rank`'s share of the model [`Llama::from_weights`] gives.
    pub fn from_weights_sharded(
        config: LlamaConfig,
        weights: &mut impl Weights<B>,
        dtype: FloatDType,
        device: &B::Device,
        rank: Rank,
    ) -> Self {
        Self::build(config, weights, dtype, device, Some(rank))
    }

    fn build(
        config: LlamaConfig,
        weights: &mut impl Weights<B>,
        dtype: FloatDType,
        device: &B::Device,
        rank: Option<Rank>,
    ) -> Self {
        assert!(
            config.heads.is_multiple_of(config.kv_heads)
                && config.d_model.is_multiple_of(config.heads),
            "Llama: {} heads must split d_model {} and be a multiple of {} kv heads",
            config.heads,
            config.d_model,
            config.kv_heads
        );
        let (d, kv, ffn) = (
            config.d_model,
            config.kv_heads * config.head_dim(),
            config.ffn,
        );
        let shard = Shard::new(&config, rank);
        let mut part = |part: Part, shape: [usize; 2]| weights.tensor(part, shape, dtype, device);
        let linear = |weight: Tensor<B, 2>| Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        };
        let norm = |gamma: Tensor<B, 2>| RmsNorm {
            gamma: Param::from_tensor(gamma.reshape([d])),
            epsilon: config.norm_eps,
        };
        let layers = (0..config.layers)
            .map(|l| Layer {
                attn_norm: norm(part(Part::AttnNorm(l), [1, d])),
                qkv: linear(shard.columns(
                    part(Part::Qkv(l), [d, d + 2 * kv]),
                    &[(0, d), (d, kv), (d + kv, kv)],
                )),
                out: linear(shard.rows(part(Part::Out(l), [d, d]))),
                mlp_norm: norm(part(Part::MlpNorm(l), [1, d])),
                gate_up: linear(
                    shard.columns(part(Part::GateUp(l), [d, 2 * ffn]), &[(0, ffn), (ffn, ffn)]),
                ),
                down: linear(shard.rows(part(Part::Down(l), [ffn, d]))),
            })
            .collect();
        let embedding = Embedding {
            weight: Param::from_tensor(part(Part::Embedding, [config.vocab, d])),
        };
        let (cos, sin) = rope_tables::<B>(&config, dtype, device);
        Self {
            config,
            shard,
            embedding,
            layers,
            norm: norm(part(Part::Norm, [1, d])),
            head: linear(part(Part::Head, [d, config.vocab])),
            cos,
            sin,
        }
    }

    pub fn config(&self) -> LlamaConfig {
        self.config
    }

    /// An empty cache for this model's key/value heads (a tensor-parallel rank's share).
    pub fn kv_cache(
        &self,
        slots: usize,
        capacity: usize,
        dtype: FloatDType,
        device: &B::Device,
    ) -> KvCache<B> {
        KvCache::with_heads(
            &self.config,
            self.shard.kv_heads,
            slots,
            capacity,
            dtype,
            device,
        )
    }

    /// The LM head's weight, `[d_model, vocab]`.
    pub fn head_weight(&self) -> Tensor<B, 2> {
        self.head.weight.val()
    }

    /// One forward pass: every row appends its tokens to its slot's sequence (a prefill, a
    /// prefill chunk or a decode token), its keys and values are written into the cache, and
    /// the logits of `which` positions come back. Rows must name distinct slots.
    pub fn step(&self, rows: &[StepRow], cache: &mut KvCache<B>, which: Logits) -> Tensor<B, 3> {
        self.step_traced(rows, cache, which, &mut |_| ())
    }

    /// [`Llama::step`], calling `trace` with the name of each part once its work is queued
    /// (embedding, per layer `qkv`, `kv cache`, `attention`, `out`, `mlp`, then `head`):
    /// a benchmark syncs there to see where a step's time goes.
    pub fn step_traced(
        &self,
        rows: &[StepRow],
        cache: &mut KvCache<B>,
        which: Logits,
        trace: &mut dyn FnMut(&'static str),
    ) -> Tensor<B, 3> {
        let plan = StepPlan::new(rows, cache, self.config.max_len);
        assert!(
            cache
                .keys
                .iter()
                .all(|k| k.dims()[1] == self.shard.kv_heads),
            "Llama::step: the cache holds other than this model's {} key/value heads (take it \
             from Llama::kv_cache)",
            self.shard.kv_heads
        );
        let device = self.cos.device();
        let (b, seq) = (rows.len(), plan.seq);
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|row| (0..seq).map(move |i| row.tokens.get(i).map_or(0, |&t| t as i64)))
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, seq]), &device);
        // Padded queries take their row's last position: any valid position would do, as
        // nobody reads them.
        let positions: Vec<i64> = (0..b)
            .flat_map(|r| {
                let (start, len) = (plan.starts[r], rows[r].tokens.len());
                (0..seq).map(move |i| (start + i.min(len - 1)) as i64)
            })
            .collect();
        let positions =
            Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [b * seq]), &device);
        let hd = self.config.head_dim();
        let rotation = |table: &Tensor<B, 2>| {
            table
                .clone()
                .select(0, positions.clone())
                .reshape([b, seq, 1, hd])
        };
        let inputs = StepInputs {
            cos: rotation(&self.cos),
            sin: rotation(&self.sin),
            mask: plan.mask::<B>(&device),
        };

        let mut x = self.embedding.forward(ids);
        trace("embedding");
        for (l, layer) in self.layers.iter().enumerate() {
            let context = self.attention(l, x.clone(), &plan, &inputs, cache, trace);
            x = x + context;
            trace("out");
            let ffn = self.shard.ffn;
            let gate_up = layer.gate_up.forward(norm(&layer.mlp_norm, x.clone()));
            let hidden = silu(gate_up.clone().narrow(2, 0, ffn)) * gate_up.narrow(2, ffn, ffn);
            x = x + self.shard.project(&layer.down, hidden);
            trace("mlp");
        }
        for (row, &end) in rows.iter().zip(&plan.ends) {
            cache.lens[row.slot] = end;
        }
        let logits = match which {
            Logits::All => self.head.forward(norm(&self.norm, x)),
            Logits::Last => {
                let last: Vec<i64> = rows
                    .iter()
                    .enumerate()
                    .map(|(r, row)| (r * seq + row.tokens.len() - 1) as i64)
                    .collect();
                let last = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [b]), &device);
                let x = x.reshape([b * seq, self.config.d_model]).select(0, last);
                self.head
                    .forward(norm(&self.norm, x))
                    .reshape([b, 1, self.config.vocab])
            }
        };
        trace("head");
        logits
    }

    /// Layer `l`'s attention block (norm, projections, rotation, cache, attention, output
    /// projection), without the residual.
    fn attention(
        &self,
        l: usize,
        x: Tensor<B, 3>,
        plan: &StepPlan,
        inputs: &StepInputs<B>,
        cache: &mut KvCache<B>,
        trace: &mut dyn FnMut(&'static str),
    ) -> Tensor<B, 3> {
        let layer = &self.layers[l];
        let (heads, kv_heads) = (self.shard.heads, self.shard.kv_heads);
        let StepInputs { cos, sin, mask } = inputs;
        let (b, seq, hd) = (plan.starts.len(), plan.seq, self.config.head_dim());
        let h = norm(&layer.attn_norm, x);
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, seq, n, hd]);
        let rope = |t: Tensor<B, 4>| {
            let swapped = Tensor::cat(
                vec![
                    t.clone().narrow(3, hd / 2, hd / 2),
                    t.clone().narrow(3, 0, hd / 2),
                ],
                3,
            );
            t * cos.clone() + swapped * sin.clone()
        };
        let (width, kv) = (heads * hd, kv_heads * hd);
        let qkv = layer.qkv.forward(h);
        let q = rope(split(qkv.clone().narrow(2, 0, width), heads)).swap_dims(1, 2);
        let k = rope(split(qkv.clone().narrow(2, width, kv), kv_heads)).swap_dims(1, 2);
        let v = split(qkv.narrow(2, width + kv, kv), kv_heads).swap_dims(1, 2);
        trace("qkv");
        let keys = plan.write_and_read(&mut cache.keys[l], k);
        let values = plan.write_and_read(&mut cache.values[l], v);
        let group = heads / kv_heads;
        let expand = |t: Tensor<B, 4>| {
            if group == 1 {
                return t;
            }
            let [_, kv, len, _] = t.dims();
            t.unsqueeze_dim::<5>(2)
                .expand([b, kv, group, len, hd])
                .reshape([b, heads, len, hd])
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: plan.causal,
        };
        let (keys, values) = (expand(keys), expand(values));
        trace("kv cache");
        let context = attention(q, keys, values, mask.clone(), None, options);
        trace("attention");
        let context = context.swap_dims(1, 2).reshape([b, seq, width]);
        self.shard.project(&layer.out, context)
    }
}

/// The module's RMS normalization as one op: the invariant kernel on `BatchInvariant`, in
/// training too, burn-nn's chain on Burn's backends.
fn norm<B: ParityOps, const D: usize>(norm: &RmsNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    rms_norm(x, norm.gamma.val(), norm.epsilon)
}

/// `cos` and `sin` of `position * theta^(-2i / head_dim)`, computed in f64 on the host.
fn rope_tables<B: Backend>(
    config: &LlamaConfig,
    dtype: FloatDType,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (hd, half) = (config.head_dim(), config.head_dim() / 2);
    let mut cos = Vec::with_capacity(config.max_len * hd);
    let mut sin = Vec::with_capacity(config.max_len * hd);
    for p in 0..config.max_len {
        for j in 0..hd {
            let i = j % half;
            let angle = p as f64 * config.rope_theta.powf(-2.0 * i as f64 / hd as f64);
            let sign = if j < half { -1.0 } else { 1.0 };
            cos.push(angle.cos() as f32);
            sin.push((sign * angle.sin()) as f32);
        }
    }
    let table = |v: Vec<f32>| {
        Tensor::<B, 2>::from_data(TensorData::new(v, [config.max_len, hd]), device).cast(dtype)
    };
    (table(cos), table(sin))
}

/// What every layer of a step shares: the rotation of each query's position,
/// `[rows, seq, 1, head_dim]`, and the attention mask.
struct StepInputs<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
}

/// Where each row of a step starts and ends in its slot, and how its keys are masked.
struct StepPlan {
    slots: Vec<usize>,
    starts: Vec<usize>,
    ends: Vec<usize>,
    /// The longest row's new tokens.
    seq: usize,
    /// Keys every row's attention reads: the longest row's end.
    keys: usize,
    /// Every row starts at the same position with more than one token: the causal cut
    /// aligned to the bottom right is each row's own, and only padding needs a mask.
    causal: bool,
}

impl StepPlan {
    fn new<B: Backend>(rows: &[StepRow], cache: &KvCache<B>, max_len: usize) -> Self {
        assert!(!rows.is_empty(), "Llama::step: no row");
        let slots: Vec<usize> = rows.iter().map(|r| r.slot).collect();
        for (i, row) in rows.iter().enumerate() {
            assert!(
                row.slot < cache.slots() && !slots[..i].contains(&row.slot),
                "Llama::step: slot {} is out of range ({} slots) or taken twice",
                row.slot,
                cache.slots()
            );
            assert!(
                !row.tokens.is_empty(),
                "Llama::step: slot {} has no token",
                row.slot
            );
        }
        let starts: Vec<usize> = slots.iter().map(|&s| cache.len(s)).collect();
        let ends: Vec<usize> = rows
            .iter()
            .zip(&starts)
            .map(|(r, s)| s + r.tokens.len())
            .collect();
        let keys = *ends.iter().max().expect("a row");
        assert!(
            keys <= cache.capacity() && keys <= max_len,
            "Llama::step: {keys} positions exceed the cache ({}) or the rotary tables ({max_len})",
            cache.capacity()
        );
        let seq = rows.iter().map(|r| r.tokens.len()).max().expect("a row");
        let causal = seq > 1 && starts.iter().all(|&s| s == starts[0]);
        Self {
            slots,
            starts,
            ends,
            seq,
            keys,
            causal,
        }
    }

    /// The attention mask, `None` when no key is masked. With `causal`, keys past a row's
    /// end (`[rows, 1, 1, keys]`); otherwise each query's own cut as well
    /// (`[rows, 1, seq, keys]`): query `i` of a row starting at `s` sees keys `0..=s + i`.
    fn mask<B: Backend>(&self, device: &B::Device) -> Option<Tensor<B, 4, Bool>> {
        let rows = self.starts.len();
        let queries = if self.causal { 1 } else { self.seq };
        let mut any = false;
        let mut masked = Vec::with_capacity(rows * queries * self.keys);
        for (&start, &end) in self.starts.iter().zip(&self.ends) {
            for i in 0..queries {
                let last = if self.causal {
                    end
                } else {
                    (start + i + 1).min(end)
                };
                for j in 0..self.keys {
                    any |= j >= last;
                    masked.push(j >= last);
                }
            }
        }
        any.then(|| {
            Tensor::from_data(
                TensorData::new(masked, [rows, 1, queries, self.keys]),
                device,
            )
        })
    }

    /// Writes the step's keys or values (`[rows, kv_heads, seq, head_dim]`) into each row's
    /// slot, then returns the rows' first `keys` positions, `[rows, kv_heads, keys, hd]`.
    fn write_and_read<B: Backend>(
        &self,
        cache: &mut Tensor<B, 4>,
        new: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [_, heads, _, hd] = new.dims();
        let rows = self.slots.len();
        let first = self.slots[0];
        let contiguous = self.slots.iter().enumerate().all(|(i, &s)| s == first + i);
        let uniform = self
            .starts
            .iter()
            .zip(&self.ends)
            .all(|(&s, &e)| s == self.starts[0] && e - s == self.seq);
        if contiguous && uniform {
            let (start, end) = (self.starts[0], self.ends[0]);
            cache.inplace(|c| {
                c.slice_assign([first..first + rows, 0..heads, start..end, 0..hd], new)
            });
        } else {
            for (r, (&slot, (&start, &end))) in self
                .slots
                .iter()
                .zip(self.starts.iter().zip(&self.ends))
                .enumerate()
            {
                let part = new.clone().narrow(0, r, 1).narrow(2, 0, end - start);
                cache.inplace(|c| {
                    c.slice_assign([slot..slot + 1, 0..heads, start..end, 0..hd], part)
                });
            }
        }
        if contiguous {
            cache
                .clone()
                .slice([first..first + rows, 0..heads, 0..self.keys, 0..hd])
        } else {
            let device = cache.device();
            let slots: Vec<i64> = self.slots.iter().map(|&s| s as i64).collect();
            let slots = Tensor::<B, 1, Int>::from_data(TensorData::new(slots, [rows]), &device);
            cache.clone().select(0, slots).narrow(2, 0, self.keys)
        }
    }
}

/// A sequence to generate.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<usize>,
    /// Tokens to generate.
    pub max_new: usize,
    pub params: SamplingParams,
    /// The sequence id of the sampler's stream.
    pub id: u64,
}

/// What a sequence produced: its tokens, the log-probability of each (f32 bits, from the
/// invariant `log_softmax`), and the bytes of the logits each was drawn from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub tokens: Vec<usize>,
    pub logprobs: Vec<u32>,
    pub logits: Vec<Vec<u8>>,
}

/// Continuous batching over `slots` cache slots: at every step, waiting requests take the
/// free slots (their whole prompt is prefilled in that step, next to the others' decode
/// tokens), every active sequence draws one token, and finished sequences leave. One slot
/// runs every request alone. `on_step` sees the number of rows and new tokens of each step.
pub fn generate<B: ParityOps>(
    model: &Llama<B>,
    requests: &[Request],
    slots: usize,
    dtype: FloatDType,
    device: &B::Device,
    mut on_step: impl FnMut(usize, usize),
) -> Vec<Output> {
    let capacity = requests
        .iter()
        .map(|r| r.prompt.len() + r.max_new)
        .max()
        .unwrap_or(1);
    let mut cache = model.kv_cache(slots, capacity, dtype, device);
    let mut out: Vec<Output> = requests
        .iter()
        .map(|_| Output {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            logits: Vec::new(),
        })
        .collect();
    // (request, slot) of every active sequence, in the order they joined.
    let mut active: Vec<(usize, usize)> = Vec::new();
    let mut next = 0;
    loop {
        active.retain(|&(i, slot)| {
            let done = out[i].tokens.len() >= requests[i].max_new;
            if done {
                cache.clear(slot);
            }
            !done
        });
        while active.len() < slots && next < requests.len() {
            let free = (0..slots)
                .find(|s| active.iter().all(|&(_, taken)| taken != *s))
                .expect("a free slot");
            if requests[next].max_new > 0 {
                active.push((next, free));
            }
            next += 1;
        }
        if active.is_empty() {
            return out;
        }
        let inputs: Vec<Vec<usize>> = active
            .iter()
            .map(|&(i, _)| match out[i].tokens.last() {
                Some(&t) => vec![t],
                None => requests[i].prompt.clone(),
            })
            .collect();
        let rows: Vec<StepRow> = active
            .iter()
            .zip(&inputs)
            .map(|(&(_, slot), tokens)| StepRow { slot, tokens })
            .collect();
        on_step(rows.len(), inputs.iter().map(Vec::len).sum());
        let vocab = model.config().vocab;
        let logits = model
            .step(&rows, &mut cache, Logits::Last)
            .reshape([rows.len(), vocab]);
        let logprobs = log_softmax(logits.clone().cast(FloatDType::F32), 1)
            .into_data()
            .to_vec::<f32>()
            .expect("f32 log-probabilities");
        // The logits are read once: their bytes are recorded, their f32 values drawn from.
        let logits = logits.into_data();
        let values = logits
            .clone()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 logits");
        let tokens: Vec<usize> = active
            .iter()
            .zip(values.chunks(vocab))
            .map(|(&(i, _), row)| {
                let position = (requests[i].prompt.len() + out[i].tokens.len()) as u64;
                sample_row(row, &requests[i].params, requests[i].id, position)
            })
            .collect();
        let row_bytes = logits.as_bytes().len() / rows.len();
        let rows_bytes = logits.as_bytes().chunks(row_bytes);
        for (r, ((&(i, _), &token), bytes)) in
            active.iter().zip(&tokens).zip(rows_bytes).enumerate()
        {
            out[i].tokens.push(token);
            out[i].logprobs.push(logprobs[r * vocab + token].to_bits());
            out[i].logits.push(bytes.to_vec());
        }
    }
}

/// `n` prompts of lengths 1 to `max_len`, deterministic, from `seed`.
pub fn prompts(n: usize, max_len: usize, vocab: usize, seed: u64) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7 + 3 + seed as usize) % max_len;
            values(len, seed.wrapping_mul(1_000_003) + i as u64)
                .into_iter()
                .map(|v| ((v + 1.0) * 0.5 * vocab as f32) as usize % vocab)
                .collect()
        })
        .collect()
}
