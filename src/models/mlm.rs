//! Masked language models as transformers 5 builds them, on the [`Encoder`] of [`super::bert`]
//! (one forward path for both families), with their HF weight names:
//!
//! - `BertForMaskedLM`: `cls.predictions.transform.dense` → activation (`hidden_act`) →
//!   `cls.predictions.transform.LayerNorm` (`layer_norm_eps`) → decoder tied to
//!   `bert.embeddings.word_embeddings.weight`, + `cls.predictions.bias`;
//! - `DistilBertForMaskedLM`: `vocab_transform` → activation (`activation`) →
//!   `vocab_layer_norm` (eps 1e-12) → `vocab_projector`, its weight tied to
//!   `distilbert.embeddings.word_embeddings.weight`, + `vocab_projector.bias`.
//!
//! Neither has dropout in the head, and `BertForMaskedLM` has no pooler: a checkpoint's
//! `bert.pooler.*` (a `BertModel`, `BertForPreTraining`) is ignored and logged, as are other
//! task heads (`cls.seq_relationship`, `classifier`, …). Tying: transformers 5 writes neither
//! the tied decoder weight (`cls.predictions.decoder.weight`, `vocab_projector.weight`) nor
//! BERT's `cls.predictions.decoder.bias` (tied to `cls.predictions.bias`); older checkpoints
//! (`bert-base-uncased`) have them, and they are read as the tie says: the decoder weight is
//! skipped, `decoder.bias` fills `cls.predictions.bias` when that is absent. With
//! `tie_word_embeddings = false` the decoder has its own weight (loaded, saved), and BERT's
//! decoder its own `cls.predictions.decoder.bias`, which the logits then use (transformers
//! keeps the untied `cls.predictions.bias` as an unused parameter; so do we).
//!
//! A checkpoint without the head (a bare `BertModel`, a classifier) gets a new one drawn as
//! transformers' `_init_weights` draws it: dense N(0, `initializer_range`) with zero bias,
//! LayerNorm 1 / 0, the vocabulary bias 0, the decoder the (loaded) word embeddings; logged.
//!
//! LoRA: the adapter is a PEFT LoRA adapter with `task_type: null`: PEFT has no masked-LM
//! task type, and a plain `PeftModel` (what `null` loads as) passes `labels` through to
//! `*ForMaskedLM`, where `FEATURE_EXTRACTION` would drop them. Nothing is saved whole
//! (`modules_to_save` null): the head's transform trains only if targeted; `"all-linear"`
//! adapts it (the tied decoder is the output layer, which PEFT leaves out).
//!
//! Reference: transformers `models/bert/modeling_bert.py` (`BertLMPredictionHead`,
//! `BertForMaskedLM`), `models/distilbert/modeling_distilbert.py` (`DistilBertForMaskedLM`).

pub mod fill;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Reduction, Tensor};

use super::bert::{self, sub, Encoder, EncoderConfig, Family};
use super::hf::{self, Route};
use super::layers::{LayerNorm, Linear};
use super::NamedLinear;
use crate::error::{Error, IoContext, Result};
use crate::lora::{LoadedAdapter, LoraConfig};

/// HF names of a family's masked-LM head.
struct HeadNames {
    transform: &'static str,
    norm: &'static str,
    /// The vocabulary bias.
    bias: &'static str,
    /// The decoder weight (only in files when untied, or in old checkpoints).
    decoder: &'static str,
    /// BERT's `cls.predictions.decoder.bias`, tied to [`HeadNames::bias`].
    decoder_bias: Option<&'static str>,
    architecture: &'static str,
}

const BERT_HEAD: HeadNames = HeadNames {
    transform: "cls.predictions.transform.dense",
    norm: "cls.predictions.transform.LayerNorm",
    bias: "cls.predictions.bias",
    decoder: "cls.predictions.decoder.weight",
    decoder_bias: Some("cls.predictions.decoder.bias"),
    architecture: "BertForMaskedLM",
};

const DISTILBERT_HEAD: HeadNames = HeadNames {
    transform: "vocab_transform",
    norm: "vocab_layer_norm",
    bias: "vocab_projector.bias",
    decoder: "vocab_projector.weight",
    decoder_bias: None,
    architecture: "DistilBertForMaskedLM",
};

fn head_names(family: Family) -> &'static HeadNames {
    match family {
        Family::Bert => &BERT_HEAD,
        Family::DistilBert => &DISTILBERT_HEAD,
    }
}

/// Task heads of other models that a masked LM does not use (logged when a checkpoint has them).
const UNUSED: [&str; 6] = ["bert.pooler.", "pooler.", "cls.seq_relationship.", "classifier.", "pre_classifier.", "qa_outputs."];

/// A file tensor name with TF-era `gamma` / `beta` read as `weight` / `bias`.
fn modern(name: &str) -> String {
    match (name.strip_suffix(".gamma"), name.strip_suffix(".beta")) {
        (Some(stem), _) => format!("{stem}.weight"),
        (_, Some(stem)) => format!("{stem}.bias"),
        _ => name.to_string(),
    }
}

/// transformers' masked-LM loss: the mean cross-entropy of `logits` `(B, T, V)` over the
/// labels `(B, T)` that are not -100 (NaN when there are none, as in transformers), fp32.
pub fn mlm_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let v = *logits.size().last().expect("logits are (B, T, V)");
    logits.to_kind(Kind::Float).reshape([-1, v]).cross_entropy_loss::<Tensor>(&labels.reshape([-1]).to_kind(Kind::Int64), None, Reduction::Mean, -100, 0.0)
}

/// A BERT or DistilBERT encoder with its masked-LM head; one VarStore (the encoder's) holds
/// every parameter under its HF name.
pub struct MaskedLm {
    pub encoder: Encoder,
    /// `cls.predictions.transform.dense` / `vocab_transform` (`H → H`).
    pub transform: Linear,
    /// `cls.predictions.transform.LayerNorm` / `vocab_layer_norm`.
    pub norm: LayerNorm,
    /// The decoder's own weight `[V, H]` when `tie_word_embeddings = false`; `None` = tied to
    /// the word embeddings.
    decoder: Option<Tensor>,
    /// `cls.predictions.bias` / `vocab_projector.bias` `[V]`.
    bias: Tensor,
    /// BERT untied: `cls.predictions.decoder.bias`, its own parameter then, and the one the
    /// logits use (`cls.predictions.bias` is kept, loaded and saved, but unused, as in
    /// transformers).
    decoder_bias: Option<Tensor>,
    config: Value,
}

/// `dir`'s config.json, checked to be a masked LM's (BERT, DistilBERT) that fits `device`:
/// its path, JSON and encoder config.
fn read_config(dir: &Path, device: Device) -> Result<(std::path::PathBuf, Value, EncoderConfig)> {
    let (path, config) = hf::read_config(dir)?;
    let model_type = hf::model_type(&path, &config)?;
    if !matches!(model_type, "bert" | "distilbert") {
        return Err(Error::model(&path, format!("model_type {model_type:?} is not a masked language model (bert, distilbert)")));
    }
    let cfg = EncoderConfig::from_hf_json(&path, &config)?;
    hf::check_model_fits(&path, device, cfg.num_params(), cfg.vocab_size, ("hidden_size", cfg.hidden_size))?;
    Ok((path, config, cfg))
}

impl MaskedLm {
    /// Loads a BERT or DistilBERT directory as a masked LM (dtype `kind`): with its head when
    /// the files have it, else with a new one (logged); see the module docs. Any other
    /// `model_type` is an [`Error::Model`] naming `config.json` and the type.
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind) -> Result<MaskedLm> {
        let (_path, config, cfg) = read_config(dir, device)?;
        let (_, files) = hf::weight_files(dir)?;
        let in_file: BTreeSet<String> = hf::tensor_shapes(&files)?.into_iter().map(|(n, _)| modern(&n)).collect();
        let mut model = MaskedLm::build(&cfg, config, device);
        model.encoder.vs.set_kind(kind);
        let names = head_names(cfg.family);
        let tied = model.decoder.is_none();
        let has_bias = in_file.contains(names.bias);
        // Tied, BERT's decoder.bias is cls.predictions.bias (old checkpoints may have only it).
        let bias_from_decoder = tied && !has_bias && names.decoder_bias.is_some_and(|b| in_file.contains(b));
        // Head tensors the files lack keep their fresh draw.
        let mut fresh: Vec<String> = Vec::new();
        let mut vars = model.vs().variables();
        vars.retain(|n, _| {
            let head = n.starts_with(&format!("{}.", names.transform))
                || n.starts_with(&format!("{}.", names.norm))
                || n == names.bias
                || n == names.decoder
                || Some(n.as_str()) == names.decoder_bias;
            let from_file = in_file.contains(n) || (n == names.bias && bias_from_decoder);
            if head && !from_file {
                fresh.push(n.clone());
            }
            !head || from_file
        });
        fresh.sort();
        if !fresh.is_empty() {
            tracing::info!(path = %dir.display(), new = %fresh.join(", "),
                "new masked-LM head (dense N(0, initializer_range), LayerNorm 1/0, bias 0; decoder tied to the word embeddings): train it before use");
        }
        let unused: Vec<&str> = UNUSED.iter().copied().filter(|p| in_file.iter().any(|n| n.starts_with(p))).collect();
        if !unused.is_empty() {
            tracing::info!(path = %dir.display(), ignored = %unused.iter().map(|p| p.trim_end_matches('.')).collect::<Vec<_>>().join(", "),
                "weights {} does not use (a pooler or other task heads): ignored", names.architecture);
        }
        let enc_names = cfg.names();
        hf::load_weights(dir, vars, |file_name| {
            let n = modern(file_name);
            let is = |module: &str| n.starts_with(&format!("{module}."));
            if n == names.bias || is(names.transform) || is(names.norm) {
                Route::Param(n)
            } else if Some(n.as_str()) == names.decoder_bias {
                match (tied, bias_from_decoder) {
                    (false, _) => Route::Param(n),
                    (true, true) => Route::Param(names.bias.to_string()),
                    (true, false) => Route::Ignore,
                }
            } else if n == names.decoder {
                if tied { Route::Ignore } else { Route::Param(n) }
            } else if n.starts_with("cls.") {
                Route::Ignore
            } else {
                bert::route(enc_names, file_name, false)
            }
        })?;
        Ok(model)
    }

    /// A masked LM built from `dir`'s `config.json` alone, as transformers'
    /// `AutoModelForMaskedLM.from_config` initialises it (linear and embedding weights
    /// N(0, `initializer_range`), biases 0, norms 1/0, the `pad_token_id` row of the word
    /// embeddings 0), in dtype `kind`: masked-LM pretraining from scratch. Weights in `dir`
    /// are not read.
    pub fn from_config(dir: &Path, device: Device, kind: Kind) -> Result<MaskedLm> {
        let (path, config, cfg) = read_config(dir, device)?;
        let pad = config["pad_token_id"].as_i64().filter(|&p| p >= 0 && (p as usize) < cfg.vocab_size);
        let mut model = MaskedLm::build(&cfg, config, device);
        if let Some(p) = pad {
            tch::no_grad(|| {
                let _ = model.encoder.word_embeddings().get(p).zero_();
            });
        }
        model.encoder.vs.set_kind(kind);
        tracing::info!(path = %path.display(), params = model.num_params(), "model built from config.json (model.from_scratch): fresh weights");
        Ok(model)
    }

    /// A masked LM with fresh weights: the encoder as [`Encoder::new`], the head as
    /// transformers initialises it. `config` is written back by [`Self::save_pretrained`].
    pub fn build(cfg: &EncoderConfig, config: Value, device: Device) -> MaskedLm {
        let encoder = Encoder::build(cfg, config.clone(), false, device);
        let names = head_names(cfg.family);
        let (h, v, std) = (cfg.hidden_size, cfg.vocab_size as i64, cfg.initializer_range);
        let root = encoder.vs.root();
        let transform = Linear::new(sub(&root, names.transform), h, h, true, std);
        let norm = LayerNorm::new(sub(&root, names.norm), h, true, cfg.layer_norm_eps);
        let (bias_module, bias_leaf) = names.bias.rsplit_once('.').expect("head names are dotted");
        let bias = sub(&root, bias_module).var(bias_leaf, &[v], Init::Const(0.0));
        let tied = config["tie_word_embeddings"].as_bool().unwrap_or(true);
        let decoder = (!tied).then(|| {
            let (module, leaf) = names.decoder.rsplit_once('.').expect("head names are dotted");
            sub(&root, module).var(leaf, &[v, h as i64], Init::Randn { mean: 0.0, stdev: std })
        });
        let decoder_bias = names.decoder_bias.filter(|_| !tied).map(|name| {
            let (module, leaf) = name.rsplit_once('.').expect("head names are dotted");
            sub(&root, module).var(leaf, &[v], Init::Const(0.0))
        });
        MaskedLm { encoder, transform, norm, decoder, bias, decoder_bias, config }
    }

    /// Logits `(B, T, vocab)` for ids `(B, T)` (+ padding mask, nonzero = token; + segment ids,
    /// BERT only: DistilBERT ignores them).
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, train: bool) -> Tensor {
        let h = self.encoder.forward(ids, attention_mask, token_type_ids, train); // (B, T, H)
        let x = self.norm.forward(&self.encoder.act(&self.transform.forward_t(&h, train)));
        x.linear(self.decoder_weight(), Some(self.decoder_bias.as_ref().unwrap_or(&self.bias)))
    }

    /// The decoder weight `[V, H]`: the word embeddings unless untied.
    fn decoder_weight(&self) -> &Tensor {
        self.decoder.as_ref().unwrap_or_else(|| self.encoder.word_embeddings())
    }

    /// The summed cross-entropy of `logits` `(B, T, V)` over the labels `(B, T)` that are not
    /// -100, fp32: divide by the number of label tokens of the global batch for the mean.
    pub fn loss_sum(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        let v = *logits.size().last().expect("logits are (B, T, V)");
        logits.to_kind(Kind::Float).reshape([-1, v]).cross_entropy_loss::<Tensor>(&labels.reshape([-1]).to_kind(Kind::Int64), None, Reduction::Sum, -100, 0.0)
    }

    /// Parameters under their HF names, sorted (the tied decoder is the word embeddings).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.encoder.named_parameters()
    }

    pub fn vs(&self) -> &VarStore {
        &self.encoder.vs
    }

    pub fn vs_mut(&mut self) -> &mut VarStore {
        &mut self.encoder.vs
    }

    /// The model's weights (HF's `num_parameters()`; the tied decoder counted once).
    pub fn num_params(&self) -> i64 {
        self.vs().variables().values().map(|t| t.numel() as i64).sum()
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder.cfg.vocab_size
    }

    /// The longest input: the learned position table.
    pub fn max_positions(&self) -> usize {
        self.encoder.cfg.max_position_embeddings
    }

    /// `config.json`'s `model_type` (`bert`, `distilbert`).
    pub fn model_type(&self) -> &str {
        self.config["model_type"].as_str().unwrap_or("")
    }

    /// The dtype of the parameters.
    pub fn kind(&self) -> Kind {
        self.encoder.kind()
    }

    /// The `*ForMaskedLM` class transformers builds for this model.
    pub fn architecture(&self) -> &'static str {
        head_names(self.encoder.cfg.family).architecture
    }

    /// `config.json` for `AutoModelForMaskedLM`: `architectures`, the dtype; the rest as loaded.
    pub fn config_json(&self) -> Value {
        let mut c = hf::with_dtype(&self.config, self.kind());
        c["architectures"] = json!([self.architecture()]);
        c
    }

    /// Writes `config.json` and `model.safetensors` as transformers 5 writes a `*ForMaskedLM`
    /// (no tied decoder weight): what `AutoModelForMaskedLM.from_pretrained` loads with no
    /// missing or unexpected keys. Attached LoRA adapters are not included: merge them first
    /// or use [`Self::save_adapter`].
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect();
        hf::save_pretrained(dir, &self.config_json(), &tensors, None)
    }

    /// Every linear layer under its module path in the HF model: the encoder's and the head's
    /// transform (`cls.predictions.transform.dense`, `vocab_transform`). The tied decoder is
    /// the output layer and not among them, as PEFT leaves it out of `"all-linear"`.
    pub fn linears_mut(&mut self) -> Vec<NamedLinear<'_>> {
        let name = head_names(self.encoder.cfg.family).transform;
        let mut out = self.encoder.linears_mut();
        out.push(NamedLinear { name: name.into(), linear: &mut self.transform, fan_in_fan_out: false });
        out
    }

    /// Attaches fresh LoRA adapters and freezes every base parameter; returns the adapted paths.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<String>> {
        let device = self.vs().device();
        let adapted = crate::lora::inject(self.linears_mut(), cfg, device, seed)?;
        self.vs_mut().freeze();
        Ok(adapted)
    }

    /// Loads a PEFT LoRA adapter directory onto this model and freezes every base parameter.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoadedAdapter> {
        let device = self.vs().device();
        let loaded = crate::lora::load_adapter(self.linears_mut(), dir, device)?;
        self.vs_mut().freeze();
        Ok(loaded)
    }

    /// The adapter tensors under PEFT's names, sorted.
    pub fn lora_parameters(&mut self) -> Vec<(String, Tensor)> {
        crate::lora::adapter_parameters(&self.linears_mut())
    }

    /// Folds the adapters into the base weights and removes them.
    pub fn merge_lora(&mut self) -> Result<Vec<String>> {
        crate::lora::merge(self.linears_mut())
    }

    /// Writes the attached adapters as a PEFT LoRA adapter with `task_type: null` (see the
    /// module docs): what `PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base),
    /// dir)` loads with no missing or unexpected keys.
    pub fn save_adapter(&mut self, dir: &Path, cfg: &LoraConfig, base_model_name_or_path: Option<&str>) -> Result<()> {
        crate::lora::save_adapter(dir, &self.linears_mut(), cfg, base_model_name_or_path, "")?;
        let path = dir.join(crate::lora::ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).at(&path)?;
        let mut config: Value = serde_json::from_str(&text).map_err(|e| Error::model(&path, format!("invalid JSON: {e}")))?;
        config["task_type"] = Value::Null;
        crate::fsutil::write_json_atomic(&path, &config)
    }

    /// Nothing to zero for encoders (kept for the engine, which calls it on every model after
    /// backward).
    pub fn zero_null_grads(&self) {}
}
