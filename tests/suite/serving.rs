//! What an inference engine relies on, on the Llama-style model of `examples/src/llama/`
//! (tiny configuration, grouped-query attention, a KV cache written in place) under
//! `BatchInvariant`, bit for bit:
//! - a decode step gives the logits of the same position of a one-shot prefill;
//! - a prefill split into chunks against the cache gives the one-shot prefill's logits;
//! - a warm prefix cache (a prefix copied from another sequence) gives the cold logits;
//! - a needle prompt at a random slot among 64-128 others generates its batch-1 tokens;
//! - with seeded sampling at temperature 0.6, every sequence draws the same tokens with the
//!   same log-probabilities alone, in batches of 1-10, 15, 16 and 17, and under continuous
//!   batching where sequences join and leave; Burn's default backend is run on the same
//!   requests and its count of differing sequences printed (the negative control).

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};
use burn_batch_invariant::sampling::{uniform, SamplingParams};
use burn_batch_invariant::ParityOps;
use burn_batch_invariant_examples::llama::{
    generate, prompts, Checkpoint, KvCache, Llama, LlamaConfig, Logits, Output, Part,
    RandomWeights, Request, StepRow, Weights,
};
use burn_batch_invariant_tests::*;

/// f32, and bf16 where the device has it (on CUDA it runs the tensor-core attention).
fn dtypes<B: Backend>(device: &B::Device) -> Vec<FloatDType> {
    float_dtypes::<B>(device)
        .into_iter()
        .filter(|d| *d != FloatDType::F16)
        .collect()
}

fn tiny_llama<B: ParityOps>(dtype: FloatDType, device: &B::Device) -> Llama<B> {
    Llama::new(LlamaConfig::tiny(), 11, dtype, device)
}

fn prompt(len: usize, seed: u64) -> Vec<usize> {
    let vocab = LlamaConfig::tiny().vocab;
    (0..len)
        .map(|i| (uniform(seed, 0, i as u64) * vocab as f64) as usize)
        .collect()
}

fn row(slot: usize, tokens: &[usize]) -> [StepRow<'_>; 1] {
    [StepRow { slot, tokens }]
}

/// Logits of every position of `tokens`, prefilled at once into a fresh cache.
fn one_shot<B: ParityOps>(
    model: &Llama<B>,
    tokens: &[usize],
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut cache = KvCache::new(&model.config(), 1, tokens.len(), dtype, device);
    model.step(&row(0, tokens), &mut cache, Logits::All)
}

fn decode_and_chunks_match_the_prefill<B: KernelHost + ParityOps>(device: &B::Device) {
    let _mode = mode_shared();
    type X<B> = BatchInvariant<B>;
    let len = 21;
    let tokens = prompt(len, 3);
    for dtype in dtypes::<B>(device) {
        let model = tiny_llama::<X<B>>(dtype, device);
        let config = model.config();
        let all = one_shot(&model, &tokens, dtype, device);
        let position = |p: usize, n: usize| bits(all.clone().narrow(1, p, n));
        // Prefill 5, then decode one token at a time.
        let mut cache = KvCache::new(&config, 1, len, dtype, device);
        let first = model.step(&row(0, &tokens[..5]), &mut cache, Logits::Last);
        assert!(
            bits(first) == position(4, 1),
            "{dtype:?}: the 5-token prefill's last logits"
        );
        for p in 5..len {
            let logits = model.step(&row(0, &tokens[p..p + 1]), &mut cache, Logits::Last);
            assert!(
                bits(logits) == position(p, 1),
                "{dtype:?}: the decode step at position {p} differs from the prefill's"
            );
        }
        // The same prompt in chunks of 5, 7, 1 and 8 against the cache.
        let mut cache = KvCache::new(&config, 1, len, dtype, device);
        let mut start = 0;
        for chunk in [5, 7, 1, 8] {
            let logits = model.step(
                &row(0, &tokens[start..start + chunk]),
                &mut cache,
                Logits::All,
            );
            assert!(
                bits(logits) == position(start, chunk),
                "{dtype:?}: the chunk of {chunk} at {start} differs from the one-shot prefill"
            );
            start += chunk;
        }
        // A warm prefix: slot 1 takes 12 positions of slot 0's prompt, then its own 9 tokens
        // (one step, next to a decode token of slot 0); slot 2 prefills the same 21 cold.
        let mut cache = KvCache::new(&config, 3, len + 1, dtype, device);
        let other = prompt(len, 4);
        let mut warm_tokens = other[..12].to_vec();
        warm_tokens.extend_from_slice(&tokens[12..]);
        model.step(&row(0, &other), &mut cache, Logits::Last);
        cache.copy_prefix(0, 1, 12);
        let step = [
            StepRow {
                slot: 0,
                tokens: &tokens[..1],
            },
            StepRow {
                slot: 1,
                tokens: &warm_tokens[12..],
            },
        ];
        let warm = model.step(&step, &mut cache, Logits::Last).narrow(0, 1, 1);
        let cold = model.step(&row(2, &warm_tokens), &mut cache, Logits::Last);
        assert!(
            bits(warm) == bits(cold),
            "{dtype:?}: a warm prefix cache differs from the cold prefill"
        );
    }
}

fn requests(n: usize, params: SamplingParams, seed: u64) -> Vec<Request> {
    prompts(n, 13, LlamaConfig::tiny().vocab, seed)
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| Request {
            prompt,
            max_new: 2 + (i * 5 + seed as usize) % 2,
            params,
            id: i as u64,
        })
        .collect()
}

/// Each request generated alone.
fn alone<B: ParityOps>(
    model: &Llama<B>,
    requests: &[Request],
    dtype: FloatDType,
    device: &B::Device,
) -> Vec<Output> {
    requests
        .iter()
        .flat_map(|r| generate(model, std::slice::from_ref(r), 1, dtype, device, |_, _| ()))
        .collect()
}

/// Sequences whose tokens or log-probabilities differ from `reference`.
fn differing(reference: &[Output], got: &[Output]) -> Vec<usize> {
    (0..got.len())
        .filter(|&i| {
            reference[i].tokens != got[i].tokens || reference[i].logprobs != got[i].logprobs
        })
        .collect()
}

const BATCHES: [usize; 13] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16, 17];

fn sampling_is_batch_invariant<B: KernelHost + ParityOps>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let dtype = FloatDType::F32;
    let params = SamplingParams::with_temperature(0.6, 42);
    let requests = requests(17, params, 5);
    let model = tiny_llama::<BatchInvariant<B>>(dtype, device);
    let reference = alone(&model, &requests, dtype, device);
    for n in BATCHES {
        let got = generate(&model, &requests[..n], n, dtype, device, |_, _| ());
        let moved = differing(&reference, &got);
        assert!(
            moved.is_empty() && got.iter().zip(&reference).all(|(a, b)| a.logits == b.logits),
            "{dtype:?}: sequences {moved:?} drew other tokens or log-probabilities in a batch of {n} \
             than alone"
        );
    }
    // Continuous batching: 4 slots, sequences join as others finish.
    let mut rows_seen = Vec::new();
    let got = generate(&model, &requests, 4, dtype, device, |rows, _| {
        rows_seen.push(rows)
    });
    assert!(
        rows_seen.windows(2).any(|w| w[0] != w[1]) || rows_seen.len() < 2,
        "the continuous schedule never changed its batch"
    );
    assert!(
        got == reference,
        "{dtype:?}: sequences {:?} differ under continuous batching",
        differing(&reference, &got)
    );
    // The same seed under two sequence ids: two streams.
    let twins: Vec<Request> = (0..2)
        .map(|id| Request {
            max_new: 8,
            id,
            ..requests[0].clone()
        })
        .collect();
    let twins = generate(&model, &twins, 2, dtype, device, |_, _| ());
    assert!(
        twins[0].tokens != twins[1].tokens,
        "two sequence ids with the same seed and prompt drew the same 8 tokens"
    );

    // Negative control: Burn's default kernels on the same requests (printed, not asserted:
    // whether they move depends on the runtime and the shapes).
    let default = tiny_llama::<B>(dtype, device);
    let control = &requests[..8];
    let reference = alone(&default, control, dtype, device);
    let got = generate(&default, control, 8, dtype, device, |_, _| ());
    eprintln!(
        "negative control, Burn default {dtype:?}: {} of 8 sequences differ in a batch of 8 \
         from alone{}",
        differing(&reference, &got).len(),
        if differing(&reference, &got).is_empty() {
            " (the problem did not appear on this runtime)"
        } else {
            ""
        }
    );
}

fn needle_among_many_prompts<B: KernelHost + ParityOps>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let seed = 0x5EED_u64;
    let others = 64 + (uniform(seed, 1, 0) * 65.0) as usize;
    let slot = (uniform(seed, 2, 0) * (others + 1) as f64) as usize;
    for dtype in dtypes::<B>(device) {
        let model = tiny_llama::<BatchInvariant<B>>(dtype, device);
        let mut requests = requests(others, SamplingParams::greedy(), 9);
        let needle = Request {
            prompt: prompt(17, 77),
            max_new: 4,
            params: SamplingParams::with_temperature(0.6, 1),
            id: 1_000,
        };
        requests.insert(slot, needle.clone());
        let alone = generate(&model, &[needle], 1, dtype, device, |_, _| ());
        let all = generate(&model, &requests, requests.len(), dtype, device, |_, _| ());
        assert!(
            all[slot] == alone[0],
            "{dtype:?}: the needle at slot {slot} among {others} prompts generated other tokens \
             or logits than alone ({:?} vs {:?})",
            all[slot].tokens,
            alone[0].tokens
        );
    }
}

#[test]
fn serving_decode_and_chunked_prefill_match_the_one_shot_prefill() {
    on_test_backend!(decode_and_chunks_match_the_prefill);
}

#[test]
fn serving_seeded_sampling_is_batch_invariant() {
    on_test_backend!(sampling_is_batch_invariant);
}

#[test]
fn serving_needle_among_many_prompts() {
    on_test_backend!(needle_among_many_prompts);
}

/// A checkpoint tensor: its name, f32 values and shape.
type Named = (String, (Vec<f32>, Vec<usize>));

/// Writes the tiny model's random weights as a Hugging Face Llama checkpoint (`config.json`,
/// separate q/k/v and gate/up projections in torch's `[out, in]` layout, over two
/// `.safetensors` files), loads it with `Checkpoint`, and compares the logits with the
/// original model's bit for bit. A checkpoint without `lm_head.weight` ties the head to the
/// embedding.
fn checkpoint_loads_the_same_model<B: KernelHost + ParityOps>(device: &B::Device) {
    let _mode = mode_shared();
    type X<B> = BatchInvariant<B>;
    let config = LlamaConfig::tiny();
    let f32 = FloatDType::F32;
    let (d, kv, ffn) = (
        config.d_model,
        config.kv_heads * config.head_dim(),
        config.ffn,
    );
    let dir = std::env::temp_dir().join(format!("bi-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Every part as the model holds it (`[in, out]` for linears), from the same seed.
    let mut random = RandomWeights { seed: 11 };
    let mut part = |p: Part, shape: [usize; 2]| {
        values(Weights::<X<B>>::tensor(&mut random, p, shape, f32, device))
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<f32>>()
    };
    // `[rows, cols]` model layout to torch's `[cols, rows]`, columns `from..from + n`.
    let torch = |w: &[f32], [rows, cols]: [usize; 2], from: usize, n: usize| {
        let mut out = Vec::with_capacity(rows * n);
        for c in from..from + n {
            out.extend((0..rows).map(|r| w[r * cols + c]));
        }
        (out, vec![n, rows])
    };
    let mut files: [Vec<Named>; 2] = [Vec::new(), Vec::new()];
    for l in 0..config.layers {
        let name = |rest: &str| format!("model.layers.{l}.{rest}");
        let file = &mut files[l % 2];
        file.push((
            name("input_layernorm.weight"),
            (part(Part::AttnNorm(l), [1, d]), vec![d]),
        ));
        let qkv = part(Part::Qkv(l), [d, d + 2 * kv]);
        let shape = [d, d + 2 * kv];
        file.push((name("self_attn.q_proj.weight"), torch(&qkv, shape, 0, d)));
        file.push((name("self_attn.k_proj.weight"), torch(&qkv, shape, d, kv)));
        file.push((
            name("self_attn.v_proj.weight"),
            torch(&qkv, shape, d + kv, kv),
        ));
        let out = part(Part::Out(l), [d, d]);
        file.push((name("self_attn.o_proj.weight"), torch(&out, [d, d], 0, d)));
        file.push((
            name("post_attention_layernorm.weight"),
            (part(Part::MlpNorm(l), [1, d]), vec![d]),
        ));
        let gate_up = part(Part::GateUp(l), [d, 2 * ffn]);
        file.push((
            name("mlp.gate_proj.weight"),
            torch(&gate_up, [d, 2 * ffn], 0, ffn),
        ));
        file.push((
            name("mlp.up_proj.weight"),
            torch(&gate_up, [d, 2 * ffn], ffn, ffn),
        ));
        let down = part(Part::Down(l), [ffn, d]);
        file.push((name("mlp.down_proj.weight"), torch(&down, [ffn, d], 0, d)));
    }
    let embedding = part(Part::Embedding, [config.vocab, d]);
    files[0].push((
        "model.embed_tokens.weight".into(),
        (embedding.clone(), vec![config.vocab, d]),
    ));
    files[1].push((
        "model.norm.weight".into(),
        (part(Part::Norm, [1, d]), vec![d]),
    ));
    let head = part(Part::Head, [d, config.vocab]);
    files[1].push((
        "lm_head.weight".into(),
        torch(&head, [d, config.vocab], 0, config.vocab),
    ));
    let write = |files: &[Vec<Named>; 2]| {
        for (i, file) in files.iter().enumerate() {
            let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = file
                .iter()
                .map(|(name, (v, shape))| {
                    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    (name.clone(), raw, shape.clone())
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
                .iter()
                .map(|(name, raw, shape)| {
                    let view = safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        shape.clone(),
                        raw,
                    )
                    .expect("tensor view");
                    (name.clone(), view)
                })
                .collect();
            let path = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
            safetensors::serialize_to_file(views, None, &path).expect("write safetensors");
        }
    };
    write(&files);
    let json = serde_json::json!({
        "vocab_size": config.vocab, "hidden_size": d, "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads, "num_hidden_layers": config.layers,
        "intermediate_size": ffn, "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
    });
    std::fs::write(dir.join("config.json"), json.to_string()).expect("write config.json");

    let tokens = prompt(13, 5);
    let logits = |model: &Llama<X<B>>| bits(one_shot(model, &tokens, f32, device));
    let original = Llama::<X<B>>::new(config, 11, f32, device);
    let (mut checkpoint, read) = Checkpoint::open(&dir, config.max_len).expect("open checkpoint");
    assert_eq!(read, config, "config.json read back");
    let loaded = Llama::<X<B>>::from_weights(read, &mut checkpoint, f32, device);
    assert!(
        logits(&loaded) == logits(&original),
        "the model loaded from the checkpoint gives other logits than the original"
    );

    // Tied: the head is the embedding's transpose.
    files[1].retain(|(name, _)| name != "lm_head.weight");
    std::fs::remove_dir_all(&dir).expect("clear temp dir");
    std::fs::create_dir_all(&dir).expect("temp dir");
    write(&files);
    std::fs::write(dir.join("config.json"), json.to_string()).expect("write config.json");
    let (mut checkpoint, read) = Checkpoint::open(&dir, config.max_len).expect("open checkpoint");
    let tied = Llama::<X<B>>::from_weights(read, &mut checkpoint, f32, device);
    let got = values(tied.head_weight());
    let want: Vec<f64> = (0..d)
        .flat_map(|i| (0..config.vocab).map(move |v| (v, i)))
        .map(|(v, i)| f64::from(embedding[v * d + i]))
        .collect();
    assert!(got == want, "a tied head is not the embedding's transpose");
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

#[test]
fn serving_checkpoint_loads_the_same_model() {
    on_test_backend!(checkpoint_loads_the_same_model);
}
