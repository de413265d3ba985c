//! Model families (one file each), the layers they share, Hugging Face directory I/O, and
//! [`CausalLm`]: the one interface the training and fine-tuning loops use for decoders.
//!
//! - [`gpt`]: GPT-2 (trained from scratch by `train`, or loaded from HF);
//! - [`llama`]: Llama, Mistral, Qwen2;
//! - [`bert`]: BERT and DistilBERT encoders (last hidden states, padding mask, LoRA, save);
//! - [`heads`]: [`heads::SequenceClassifier`], the sequence-classification model of every
//!   family (BERT/DistilBERT `classifier`, decoders' `score`), and transformers' classification loss;
//! - [`mlm`]: [`mlm::MaskedLm`], `BertForMaskedLM` / `DistilBertForMaskedLM` (tied decoders), and
//!   [`mlm::fill`], transformers' fill-mask pipeline;
//! - [`hf`]: `config.json`, (sharded) safetensors, `save_pretrained`;
//! - [`layers`], [`shared`]: Linear, LayerNorm, embeddings; RMSNorm, RoPE, KV cache, masks.

pub mod bert;
pub mod gpt;
pub mod heads;
pub mod hf;
pub mod layers;
pub mod llama;
pub mod mlm;
pub mod shared;

use std::path::Path;

use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::lora::{LoadedAdapter, LoraConfig};
use gpt::Gpt;
use layers::Linear;
use llama::Llama;
pub use shared::KvCache;

/// A linear layer of a model with its full HF module path (`model.layers.0.self_attn.q_proj`,
/// `transformer.h.0.attn.c_attn`, `lm_head`): what LoRA targets and names its adapters after.
pub struct NamedLinear<'a> {
    pub name: String,
    pub linear: &'a mut Linear,
    /// HF stores this layer as a GPT-2 `Conv1D` (weight `[in, out]` in files; PEFT's
    /// `fan_in_fan_out`). In memory every [`Linear`] is `[out, in]`.
    pub fan_in_fan_out: bool,
}

/// The architecture behind a [`CausalLm`].
pub enum CausalArch {
    Gpt2(Gpt),
    Llama(Llama),
}

/// A pretrained causal language model loaded from an HF directory, any supported family.
pub struct CausalLm {
    pub arch: CausalArch,
    /// The `config.json` it was loaded from (written back, updated, by `save_pretrained`).
    config: Value,
}

impl CausalLm {
    /// Loads an HF model directory, choosing the family by `config.json`'s `model_type`
    /// (`gpt2`, `llama`, `mistral`, `qwen2`). Weights are converted to `kind`.
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind) -> Result<CausalLm> {
        let (path, config) = hf::read_config(dir)?;
        let arch = match hf::model_type(&path, &config)? {
            "gpt2" => CausalArch::Gpt2(Gpt::from_pretrained_as(dir, device, kind)?),
            t if llama::MODEL_TYPES.contains(&t) => CausalArch::Llama(Llama::from_pretrained(dir, device, kind)?),
            other => {
                let known = ["gpt2", "llama", "mistral", "qwen2"];
                return Err(Error::model(&path, format!("model_type {other:?} is not a supported causal LM ({})", known.join(", "))));
            }
        };
        Ok(CausalLm { arch, config })
    }

    /// Logits `(B, T, V)` for ids `(B, T)`; with a cache, the ids follow the cached positions.
    pub fn forward(&self, ids: &Tensor, train: bool, cache: Option<&mut KvCache>) -> Tensor {
        match &self.arch {
            CausalArch::Gpt2(m) => m.forward(ids, train, cache),
            CausalArch::Llama(m) => m.forward(ids, train, cache),
        }
    }

    /// The final normed hidden states `(B, T, H)` (no padding mask: pad on the right); with
    /// [`CausalLm::lm_head`], [`CausalLm::forward`] without a cache.
    pub fn hidden(&self, ids: &Tensor, train: bool) -> Tensor {
        match &self.arch {
            CausalArch::Gpt2(m) => m.forward_hidden(ids, None, None, train, None),
            CausalArch::Llama(m) => m.forward_hidden(ids, None, train, None),
        }
    }

    /// The LM head on hidden states `(…, H)` → logits `(…, V)`: tied to the token embeddings,
    /// or Llama's own `lm_head` (with its adapter when LoRA targets it).
    pub fn lm_head(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.arch {
            CausalArch::Gpt2(m) => x.linear::<Tensor>(m.wte(), None),
            CausalArch::Llama(m) => m.lm_head(x, train),
        }
    }

    /// The parameters (trainable handles) under their HF names, sorted by name. GPT-2's
    /// Conv1D weights are `[out, in]` here; only files hold them transposed.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        match &self.arch {
            CausalArch::Gpt2(m) => m.named_parameters(),
            CausalArch::Llama(m) => m.named_parameters(),
        }
    }

    pub fn vs(&self) -> &VarStore {
        match &self.arch {
            CausalArch::Gpt2(m) => &m.vs,
            CausalArch::Llama(m) => &m.vs,
        }
    }

    pub fn vs_mut(&mut self) -> &mut VarStore {
        match &mut self.arch {
            CausalArch::Gpt2(m) => &mut m.vs,
            CausalArch::Llama(m) => &mut m.vs,
        }
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(&self) -> &str {
        self.config["model_type"].as_str().unwrap_or("")
    }

    pub fn vocab_size(&self) -> usize {
        match &self.arch {
            CausalArch::Gpt2(m) => m.cfg.vocab_size,
            CausalArch::Llama(m) => m.cfg.vocab_size,
        }
    }

    /// The longest context: GPT-2's position table; for RoPE models `max_position_embeddings`
    /// (a trained length, not a hard limit).
    pub fn max_positions(&self) -> Option<usize> {
        match &self.arch {
            CausalArch::Gpt2(m) => Some(m.cfg.n_positions),
            CausalArch::Llama(_) => self.config["max_position_embeddings"].as_u64().map(|n| n as usize),
        }
    }

    /// The context the model cannot go beyond: GPT-2's learned position table. RoPE models
    /// (Llama family) have none (`max_position_embeddings` is what they were trained on, not a
    /// limit of the computation).
    pub fn hard_context(&self) -> Option<usize> {
        match &self.arch {
            CausalArch::Gpt2(m) => Some(m.cfg.n_positions),
            CausalArch::Llama(_) => None,
        }
    }

    /// The dtype of the parameters.
    pub fn kind(&self) -> Kind {
        self.vs().variables().values().next().map_or(Kind::Float, |t| t.kind())
    }

    /// The `config.json` that describes the model as it is now (vocabulary size and dtype
    /// updated; everything else as loaded).
    pub fn config_json(&self) -> Value {
        let mut c = hf::with_dtype(&self.config, self.kind());
        c["vocab_size"] = self.vocab_size().into();
        c
    }

    /// The parameters as HF files hold them (GPT-2 Conv1D transposed), in the model's dtype,
    /// sorted by name; tied models have no `lm_head.weight`.
    pub fn hf_state_dict(&self) -> Vec<(String, Tensor)> {
        let kind = self.kind();
        match &self.arch {
            CausalArch::Gpt2(m) => m.hf_state_dict().into_iter().map(|(n, t)| (n, t.to_kind(kind))).collect(),
            CausalArch::Llama(m) => m.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect(),
        }
    }

    /// Writes `config.json`, `generation_config.json` and `model.safetensors` into `dir`
    /// (created if needed): a directory transformers' `AutoModelForCausalLM` loads.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let config = self.config_json();
        hf::save_pretrained(dir, &config, &self.hf_state_dict(), Some(&hf::generation_config(&config)))
    }

    /// Every linear layer with its HF module path and whether HF stores it as a Conv1D.
    pub fn linears_mut(&mut self) -> Vec<NamedLinear<'_>> {
        match &mut self.arch {
            CausalArch::Gpt2(m) => m.linears_mut(),
            CausalArch::Llama(m) => m.linears_mut(),
        }
    }

    /// Gives the model `new_vocab` token rows (e.g. after adding special tokens): the input
    /// embedding and, when untied, the output layer. Existing rows are kept; new rows are the
    /// mean of the existing rows (transformers' `mean_resizing` draws them around that mean
    /// with a tiny covariance; we take the mean itself, deterministic); shrinking drops the
    /// last rows. The model is rebuilt (new VarStore, every parameter trainable), so call
    /// this before freezing parameters or wrapping linears with LoRA.
    pub fn resize_token_embeddings(&mut self, new_vocab: usize) -> Result<()> {
        if new_vocab == 0 {
            return Err(Error::Input("resize_token_embeddings: the vocabulary cannot be empty".into()));
        }
        self.arch = match &self.arch {
            CausalArch::Gpt2(m) => CausalArch::Gpt2(m.resized(new_vocab)?),
            CausalArch::Llama(m) => CausalArch::Llama(m.resized(new_vocab)?),
        };
        Ok(())
    }
}

/// Fine-tuning: LoRA, the label-masked loss, weights from a checkpoint.
impl CausalLm {
    /// The model's weights only (no adapters), i.e. HF's `num_parameters()`; tied embeddings
    /// counted once.
    pub fn num_params(&self) -> i64 {
        self.vs().variables().values().map(|t| t.numel() as i64).sum()
    }

    /// Attaches fresh LoRA adapters ([`crate::lora::inject`]) and freezes every base parameter,
    /// so only the adapters train. Returns the adapted module paths.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<String>> {
        let device = self.vs().device();
        let adapted = crate::lora::inject(self.linears_mut(), cfg, device, seed)?;
        self.vs_mut().freeze();
        Ok(adapted)
    }

    /// Loads a PEFT adapter directory onto this model and freezes every base parameter.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoadedAdapter> {
        let device = self.vs().device();
        let loaded = crate::lora::load_adapter(self.linears_mut(), dir, device)?;
        self.vs_mut().freeze();
        Ok(loaded)
    }

    /// Folds the adapters into the base weights and removes them ([`crate::lora::merge`]).
    pub fn merge_lora(&mut self) -> Result<Vec<String>> {
        crate::lora::merge(self.linears_mut())
    }

    /// The adapter tensors under PEFT's names, sorted (what LoRA fine-tuning optimises).
    pub fn lora_parameters(&mut self) -> Vec<(String, Tensor)> {
        crate::lora::adapter_parameters(&self.linears_mut())
    }

    /// Copies the weights of an HF directory (e.g. a full fine-tuning checkpoint) into this
    /// model; names and shapes must match.
    pub fn load_weights(&mut self, dir: &Path) -> Result<()> {
        match &mut self.arch {
            CausalArch::Llama(m) => m.load_weights(dir),
            CausalArch::Gpt2(m) => {
                let (path, files) = hf::weight_files(dir)?;
                let mut tensors = Vec::new();
                for file in &files {
                    tensors.extend(crate::st::load(file)?);
                }
                m.load_hf_state_dict(tensors, &path)
            }
        }
    }

    /// Sum of the next-token cross-entropies over the label tokens: `labels` `(B, T)` are
    /// unshifted (`labels[t]` is the target of position `t - 1`, -100 = not trained), as
    /// transformers' `ForCausalLMLoss` takes them. Computed in fp32. Divide by the number of
    /// label tokens of the whole global batch to get its mean.
    pub fn loss_sum(&self, ids: &Tensor, labels: &Tensor, train: bool) -> Tensor {
        let t = ids.size()[1];
        let logits = self.forward(ids, train, None); // (B, T, V)
        let v = logits.size()[2];
        let logits = logits.narrow(1, 0, t - 1).to_kind(Kind::Float).reshape([-1, v]); // (B·(T-1), V)
        let targets = labels.narrow(1, 1, t - 1).reshape([-1]); // (B·(T-1))
        logits.cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Sum, -100, 0.0)
    }

    /// Zeroes gradients whose true value is exactly zero (GPT-2's attention key bias, see
    /// [`Gpt::zero_null_grads`]), so that runs on different numbers of ranks stay identical.
    pub fn zero_null_grads(&self) {
        if let CausalArch::Gpt2(m) = &self.arch {
            m.zero_null_grads();
        }
    }

    /// Token ids that end generation: `eos_token_id` of `config.json` (a number or a list, as
    /// Llama 3 has), empty when it has none.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.config["eos_token_id"] {
            Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Value::Array(list) => list.iter().filter_map(|v| v.as_u64().map(|n| n as u32)).collect(),
            _ => Vec::new(),
        }
    }
}

/// `t` `[rows, dim]` with `n` rows: the first `n` when shrinking, else extended by copies of
/// the mean row (computed in fp32).
pub fn resize_rows(t: &Tensor, n: usize) -> Tensor {
    let (rows, n) = (t.size()[0], n as i64);
    if n <= rows {
        return t.narrow(0, 0, n).detach();
    }
    let mean = t.to_kind(Kind::Float).mean_dim(0, true, Kind::Float).to_kind(t.kind()); // (1, dim)
    Tensor::cat(&[&t.detach(), &mean.expand([n - rows, -1], false)], 0)
}

