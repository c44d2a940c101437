//! Where the Llama-style model's weights come from: deterministic random values
//! ([`RandomWeights`], the default everywhere) or a Hugging Face Llama checkpoint
//! ([`Checkpoint`]: `config.json` and `*.safetensors`, read through burn-store).
//!
//! The model merges the query, key and value projections into one `Linear` (`qkv`) and the
//! MLP's gate and up projections into another (`gate_up`); a checkpoint keeps them apart, in
//! torch's `[out, in]` layout. [`Checkpoint`] concatenates and transposes them into Burn's
//! `[in, out]`. Rotary embeddings use the rotate-half layout Hugging Face's Llama
//! checkpoints are converted to, so no weight is permuted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};
use burn_store::{ModuleStore, SafetensorsStore};

use super::LlamaConfig;
use crate::values;

/// One weight of the model, named in the model's own layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `[vocab, d_model]`.
    Embedding,
    /// Layer `l`'s RMSNorm gammas, `[1, d_model]`.
    AttnNorm(usize),
    MlpNorm(usize),
    /// Layer `l`'s linear weights, `[d_in, d_out]`.
    Qkv(usize),
    Out(usize),
    GateUp(usize),
    Down(usize),
    /// The final RMSNorm's gammas, `[1, d_model]`.
    Norm,
    /// The LM head, `[d_model, vocab]`.
    Head,
}

/// A source of the model's weights, asked for each [`Part`] in a fixed order (per layer:
/// attention norm, qkv, out, MLP norm, gate/up, down; then the embedding, the final norm and
/// the head).
pub trait Weights<B: Backend> {
    /// `part` as an f32-or-wider tensor of `shape`, on `device`, cast to `dtype`.
    fn tensor(
        &mut self,
        part: Part,
        shape: [usize; 2],
        dtype: FloatDType,
        device: &B::Device,
    ) -> Tensor<B, 2>;
}

/// Deterministic random weights from a seed: the same values on every backend. Linear
/// weights are scaled by `1 / sqrt(d_in)`, gammas drawn around 1 (`1 +- 0.25`), the
/// embedding in `[-1, 1)`.
pub struct RandomWeights {
    pub seed: u64,
}

impl<B: Backend> Weights<B> for RandomWeights {
    fn tensor(
        &mut self,
        part: Part,
        [rows, cols]: [usize; 2],
        dtype: FloatDType,
        device: &B::Device,
    ) -> Tensor<B, 2> {
        self.seed += 1;
        let raw = values(rows * cols, self.seed).into_iter();
        let data: Vec<f32> = match part {
            Part::AttnNorm(_) | Part::MlpNorm(_) | Part::Norm => {
                raw.map(|v| 1.0 + 0.25 * v).collect()
            }
            Part::Embedding => raw.collect(),
            _ => {
                let scale = 1.0 / (rows as f32).sqrt();
                raw.map(|v| v * scale).collect()
            }
        };
        Tensor::<B, 2>::from_data(TensorData::new(data, [rows, cols]), device).cast(dtype)
    }
}

/// A Hugging Face Llama checkpoint: a directory with `config.json` and one or more
/// `*.safetensors` files.
pub struct Checkpoint {
    stores: Vec<SafetensorsStore>,
    /// Which store holds each tensor name.
    index: BTreeMap<String, usize>,
    tied_head: bool,
}

impl Checkpoint {
    /// Opens `dir` and reads its `config.json` into a [`LlamaConfig`] covering `max_len`
    /// positions.
    ///
    /// # Errors
    ///
    /// When `config.json` is missing or lacks a field, when no `*.safetensors` file is there,
    /// or when a file cannot be read.
    pub fn open(dir: &Path, max_len: usize) -> Result<(Self, LlamaConfig), String> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let field = |name: &str| {
            json.get(name)
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("{}: no integer `{name}`", config_path.display()))
        };
        let heads = field("num_attention_heads")?;
        let config = LlamaConfig {
            vocab: field("vocab_size")?,
            d_model: field("hidden_size")?,
            heads,
            kv_heads: field("num_key_value_heads").unwrap_or(heads),
            layers: field("num_hidden_layers")?,
            ffn: field("intermediate_size")?,
            max_len,
            rope_theta: json["rope_theta"].as_f64().unwrap_or(10_000.0),
            norm_eps: json["rms_norm_eps"].as_f64().unwrap_or(1e-5),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{}: no *.safetensors file", dir.display()));
        }
        let mut stores = Vec::new();
        let mut index = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            let mut store = SafetensorsStore::from_file(file);
            let names = store
                .get_all_snapshots()
                .map_err(|e| format!("{}: {e}", file.display()))?;
            index.extend(names.keys().map(|name| (name.clone(), i)));
            stores.push(store);
        }
        let tied_head = !index.contains_key("lm_head.weight");
        Ok((
            Self {
                stores,
                index,
                tied_head,
            },
            config,
        ))
    }

    /// Tensor `name` as `[rows, cols]` f32 values, in the checkpoint's layout.
    fn read(&mut self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let store = *self
            .index
            .get(name)
            .unwrap_or_else(|| panic!("checkpoint: no tensor `{name}`"));
        let snapshot = self.stores[store]
            .get_snapshot(name)
            .unwrap_or_else(|e| panic!("checkpoint: reading `{name}`: {e}"))
            .unwrap_or_else(|| panic!("checkpoint: no tensor `{name}`"));
        let data = snapshot
            .to_data()
            .unwrap_or_else(|e| panic!("checkpoint: reading `{name}`: {e:?}"));
        let shape = data.shape.to_vec();
        let values = data
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_else(|e| panic!("checkpoint: `{name}` as f32: {e:?}"));
        (values, shape)
    }

    /// The row-concatenation of torch `[out, in]` weights, transposed to Burn's `[in, out]`.
    fn linear(&mut self, names: &[String], [d_in, d_out]: [usize; 2]) -> Vec<f32> {
        let mut out = vec![0.0f32; d_in * d_out];
        let mut col = 0;
        for name in names {
            let (values, shape) = self.read(name);
            let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
            assert!(
                cols == d_in && col + rows <= d_out,
                "checkpoint: `{name}` has shape {shape:?}, expected [_, {d_in}] within {d_out} \
                 output columns"
            );
            for r in 0..rows {
                for c in 0..cols {
                    out[c * d_out + col + r] = values[r * cols + c];
                }
            }
            col += rows;
        }
        assert_eq!(
            col, d_out,
            "checkpoint: {names:?} give {col} of {d_out} output columns"
        );
        out
    }
}

impl<B: Backend> Weights<B> for Checkpoint {
    fn tensor(
        &mut self,
        part: Part,
        shape: [usize; 2],
        dtype: FloatDType,
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let layer = |l: usize, rest: &str| format!("model.layers.{l}.{rest}");
        let data = match part {
            Part::Embedding => self.read("model.embed_tokens.weight").0,
            Part::AttnNorm(l) => self.read(&layer(l, "input_layernorm.weight")).0,
            Part::MlpNorm(l) => self.read(&layer(l, "post_attention_layernorm.weight")).0,
            Part::Norm => self.read("model.norm.weight").0,
            Part::Qkv(l) => {
                let names = ["q_proj", "k_proj", "v_proj"]
                    .map(|p| layer(l, &format!("self_attn.{p}.weight")));
                self.linear(&names, shape)
            }
            Part::Out(l) => self.linear(&[layer(l, "self_attn.o_proj.weight")], shape),
            Part::GateUp(l) => {
                let names = ["gate_proj", "up_proj"].map(|p| layer(l, &format!("mlp.{p}.weight")));
                self.linear(&names, shape)
            }
            Part::Down(l) => self.linear(&[layer(l, "mlp.down_proj.weight")], shape),
            Part::Head if self.tied_head => {
                self.linear(&["model.embed_tokens.weight".to_string()], shape)
            }
            Part::Head => self.linear(&["lm_head.weight".to_string()], shape),
        };
        assert_eq!(
            data.len(),
            shape[0] * shape[1],
            "checkpoint: {part:?} has {} values, the model expects {shape:?}",
            data.len()
        );
        Tensor::<B, 2>::from_data(TensorData::new(data, shape), device).cast(dtype)
    }
}
