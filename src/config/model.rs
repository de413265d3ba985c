//! `[model]`: the architecture of a model pretrained from scratch (`kind = "gpt"`, [`GptSpec`])
//! or the pretrained Hugging Face model a fine-tuning run starts from (`kind = "hf"`,
//! [`HfModelConfig`]). `kind` selects the variant; each variant is its own struct, so a key of
//! the other kind is an error naming it (see [`super::sections`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[model]`, by `kind`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    /// A GPT-2 style model trained from scratch: the architecture is in the recipe.
    Gpt(GptSpec),
    /// A pretrained Hugging Face model from a local directory: the architecture comes from its
    /// `config.json`.
    Hf(HfModelConfig),
}

/// The model family of `[model]` (its `kind`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Gpt,
    Hf,
}

impl ModelConfig {
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelConfig::Gpt(_) => ModelKind::Gpt,
            ModelConfig::Hf(_) => ModelKind::Hf,
        }
    }

    /// The architecture of a pretraining recipe.
    pub fn gpt(&self) -> Option<&GptSpec> {
        match self {
            ModelConfig::Gpt(g) => Some(g),
            ModelConfig::Hf(_) => None,
        }
    }

    /// The pretrained model of a fine-tuning recipe.
    pub fn hf(&self) -> Option<&HfModelConfig> {
        match self {
            ModelConfig::Hf(h) => Some(h),
            ModelConfig::Gpt(_) => None,
        }
    }
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

/// `[model] kind = "gpt"`: the architecture of a GPT-2 style model pretrained from scratch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GptSpec {
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads; must divide `n_embd`.
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Tokens per training sequence (the context the model is trained on).
    pub block_size: usize,
    /// Size of the learned position table, GPT-2's `n_positions` (default: block_size). Larger
    /// leaves room to continue training or generating with a longer context later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_positions: Option<usize>,
    /// Dropout on embeddings, attention and residual branches (default 0). 0 for pretraining
    /// small models on plenty of data; 0.1-0.2 helps when the corpus is small and repeated.
    #[serde(default)]
    pub dropout: f64,
    /// Biases in linear layers and LayerNorms (default true: GPT-2 has them). Without, the HF
    /// export writes zero biases, which is the same function.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Embedding rows. Default: the tokenizer's vocabulary rounded up to a multiple of 64,
    /// because matmuls with such a dimension run faster. Must be >= the tokenizer's vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
}

fn yes() -> bool {
    true
}

/// `[model] kind = "hf"`: a pretrained Hugging Face model to fine-tune.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HfModelConfig {
    /// A local Hugging Face model directory (`config.json` + `model.safetensors` or shards;
    /// GPT-2, Llama, Mistral, Qwen2, and for classification BERT and DistilBERT). Nothing is
    /// downloaded: fetch Hub models first (`huggingface-cli download ORG/NAME --local-dir DIR`).
    /// Its tokenizer files are used unless `data.tokenizer` names another. Every rank reads it,
    /// so on several hosts it must be on each (or on a shared disk).
    pub path: PathBuf,
    /// Dtype of the loaded weights: "auto" (default: bf16 on CUDA under LoRA, fp32 otherwise),
    /// "fp32" or "bf16". LoRA adapters and optimizer moments are fp32 regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<ModelDtype>,
    /// Build the model from `path`'s `config.json` with transformers' initialisation instead
    /// of loading weights (transformers' `AutoModelForMaskedLM.from_config`, run_mlm.py's
    /// `--config_name` without `--model_name_or_path`): masked-LM pretraining from scratch.
    /// Only for `task.kind = "masked_lm"`; the tokenizer comes from `data.tokenizer` (or
    /// `path`) and must fit the config's `vocab_size`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_scratch: bool,
}

impl GptSpec {
    pub(super) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let positive = [("model.n_layer", self.n_layer), ("model.n_head", self.n_head), ("model.n_embd", self.n_embd), ("model.block_size", self.block_size)];
        for (key, v) in positive {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return Err(("model.n_embd", format!("{} is not divisible by model.n_head = {}", self.n_embd, self.n_head)));
        }
        if let Some(np) = self.n_positions {
            if self.block_size > np {
                return Err(("model.block_size", format!("{} exceeds the position table, model.n_positions = {np}", self.block_size)));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("model.dropout", format!("{} is not in [0, 1)", self.dropout)));
        }
        Ok(())
    }
}
