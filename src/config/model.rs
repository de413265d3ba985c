//! `[model]`: the architecture of a model pretrained from scratch (`kind = "gpt"`) or the
//! pretrained Hugging Face model a fine-tuning run starts from (`kind = "hf"`). One section for
//! both, keys checked against the kind, so pretraining recipes stay as they were.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The model family of `[model]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A GPT-2 style model trained from scratch (pretraining): the architecture is in the
    /// recipe (`n_layer`, `n_head`, `n_embd`, `block_size`, …).
    Gpt,
    /// A pretrained Hugging Face causal LM from a local directory (fine-tuning): the
    /// architecture comes from its `config.json` (`path`, `dtype`).
    Hf,
}

/// Storage dtype of a pretrained model's weights (`[model] dtype`, kind = "hf").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelDtype {
    /// bf16 weights on CUDA under LoRA (the frozen base only needs to be read, and bf16 halves
    /// its memory); fp32 otherwise (full fine-tuning keeps fp32 master weights for AdamW, and
    /// CPUs compute fp32 fastest).
    Auto,
    Fp32,
    Bf16,
}

/// `[model]`: the architecture (kind = "gpt") or the pretrained model to start from
/// (kind = "hf"). Keys of the other kind are errors. After loading, a "gpt" section has
/// `dropout` and `bias` filled in (so the resolved recipe reads as before).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model family: "gpt" (pretrain a GPT-2 style model from scratch) or "hf" (fine-tune a
    /// pretrained Hugging Face model).
    pub kind: ModelKind,
    /// kind = "hf": a local Hugging Face model directory (`config.json` + `model.safetensors`
    /// or shards; GPT-2, Llama, Mistral, Qwen2). Nothing is downloaded: fetch Hub models first
    /// (`huggingface-cli download ORG/NAME --local-dir DIR`). Its tokenizer files are used
    /// unless `data.tokenizer` names another. Every rank reads it, so on several hosts it must
    /// be on each (or on a shared disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// kind = "hf": dtype of the loaded weights: "auto" (default: bf16 on CUDA under LoRA, fp32
    /// otherwise), "fp32" or "bf16". LoRA adapters and optimizer moments are fp32 regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<ModelDtype>,
    /// kind = "gpt": number of transformer blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layer: Option<usize>,
    /// kind = "gpt": attention heads; must divide `n_embd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_head: Option<usize>,
    /// kind = "gpt": width of the residual stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_embd: Option<usize>,
    /// kind = "gpt": tokens per training sequence (the context the model is trained on).
    /// Fine-tuning sequences are the examples themselves, cut at `data.max_length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// kind = "gpt": size of the learned position table, GPT-2's `n_positions` (default:
    /// block_size). Larger leaves room to continue training or generating with a longer context
    /// later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_positions: Option<usize>,
    /// kind = "gpt": dropout on embeddings, attention and residual branches (default 0). 0 for
    /// pretraining small models on plenty of data; 0.1-0.2 helps when the corpus is small and
    /// repeated. A pretrained model's dropout is its config.json's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// kind = "gpt": biases in linear layers and LayerNorms (default true: GPT-2 has them).
    /// Without, the HF export writes zero biases, which is the same function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
    /// kind = "gpt": embedding rows. Default: the tokenizer's vocabulary rounded up to a
    /// multiple of 64, because matmuls with such a dimension run faster. Must be >= the
    /// tokenizer's vocabulary. (A pretrained model is resized to its tokenizer's vocabulary
    /// only when they differ.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
}

/// The architecture of a `kind = "gpt"` recipe, every value present.
#[derive(Debug, Clone, PartialEq)]
pub struct GptSpec {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub n_positions: Option<usize>,
    pub dropout: f64,
    pub bias: bool,
    pub vocab_size: Option<usize>,
}

/// The `[model]` keys that only a `kind = "gpt"` recipe may set.
const GPT_KEYS: [&str; 8] =
    ["model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.n_positions", "model.dropout", "model.bias", "model.vocab_size"];

impl ModelConfig {
    /// The architecture of a pretraining recipe; an error for `kind = "hf"`.
    pub fn gpt(&self) -> Result<GptSpec> {
        let need = |v: Option<usize>, key: &str| {
            v.ok_or_else(|| Error::Input(format!("{key} is required for model.kind = \"gpt\"")))
        };
        if self.kind != ModelKind::Gpt {
            return Err(Error::Input("model.kind = \"hf\" is a fine-tuning recipe, not a GPT pretraining one".into()));
        }
        Ok(GptSpec {
            n_layer: need(self.n_layer, "model.n_layer")?,
            n_head: need(self.n_head, "model.n_head")?,
            n_embd: need(self.n_embd, "model.n_embd")?,
            block_size: need(self.block_size, "model.block_size")?,
            n_positions: self.n_positions,
            dropout: self.dropout.unwrap_or(0.0),
            bias: self.bias.unwrap_or(true),
            vocab_size: self.vocab_size,
        })
    }

    /// Fills in the defaults of the recipe's kind (GPT's `dropout` and `bias`).
    pub(super) fn resolve_defaults(&mut self) {
        if self.kind == ModelKind::Gpt {
            self.dropout.get_or_insert(0.0);
            self.bias.get_or_insert(true);
        }
    }

    /// The values set for GPT-only keys, as (key, is set).
    fn gpt_keys_set(&self) -> [(&'static str, bool); 8] {
        let set = [
            self.n_layer.is_some(),
            self.n_head.is_some(),
            self.n_embd.is_some(),
            self.block_size.is_some(),
            self.n_positions.is_some(),
            self.dropout.is_some(),
            self.bias.is_some(),
            self.vocab_size.is_some(),
        ];
        std::array::from_fn(|i| (GPT_KEYS[i], set[i]))
    }

    pub(super) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        match self.kind {
            ModelKind::Hf => {
                if let Some((key, _)) = self.gpt_keys_set().into_iter().find(|(_, set)| *set) {
                    return Err((key, "only for model.kind = \"gpt\": a pretrained model's architecture comes from its config.json".into()));
                }
                if self.path.is_none() {
                    return Err(("model.path", "model.kind = \"hf\" needs path, a local Hugging Face model directory".into()));
                }
                Ok(())
            }
            ModelKind::Gpt => {
                if self.path.is_some() || self.dtype.is_some() {
                    let key = if self.path.is_some() { "model.path" } else { "model.dtype" };
                    return Err((key, "only for model.kind = \"hf\" (a pretrained model to fine-tune)".into()));
                }
                let required = [("model.n_layer", self.n_layer), ("model.n_head", self.n_head), ("model.n_embd", self.n_embd), ("model.block_size", self.block_size)];
                if let Some((key, _)) = required.iter().find(|(_, v)| v.is_none()) {
                    return Err((key, "missing: required for model.kind = \"gpt\"".into()));
                }
                let g = self.gpt().map_err(|e| ("model.kind", e.to_string()))?;
                validate_gpt(&g)
            }
        }
    }
}

fn validate_gpt(m: &GptSpec) -> std::result::Result<(), (&'static str, String)> {
    let positive = [("model.n_layer", m.n_layer), ("model.n_head", m.n_head), ("model.n_embd", m.n_embd), ("model.block_size", m.block_size)];
    for (key, v) in positive {
        if v == 0 {
            return Err((key, "must be at least 1".into()));
        }
    }
    if m.n_embd % m.n_head != 0 {
        return Err(("model.n_embd", format!("{} is not divisible by model.n_head = {}", m.n_embd, m.n_head)));
    }
    if let Some(np) = m.n_positions {
        if m.block_size > np {
            return Err(("model.block_size", format!("{} exceeds the position table, model.n_positions = {np}", m.block_size)));
        }
    }
    if !(0.0..1.0).contains(&m.dropout) {
        return Err(("model.dropout", format!("{} is not in [0, 1)", m.dropout)));
    }
    Ok(())
}
