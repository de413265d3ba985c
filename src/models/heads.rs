//! Sequence-classification models as transformers builds them, one type for every family,
//! with their HF weight names:
//!
//! - `BertForSequenceClassification`: `tanh(bert.pooler.dense(h[:, 0]))` → dropout
//!   (`classifier_dropout`, else `hidden_dropout_prob`) → `classifier`;
//! - `DistilBertForSequenceClassification`: `h[:, 0]` → `pre_classifier` → ReLU → dropout
//!   (`seq_classif_dropout`) → `classifier`;
//! - `GPT2ForSequenceClassification`, `{Llama,Mistral,Qwen2}ForSequenceClassification`
//!   (`heads/decoder.rs`): the backbone's last hidden states (no `lm_head`) → `score` (no bias), read
//!   at the last token that is not `pad_token_id`.
//!
//! [`SequenceClassifier::from_pretrained`] picks the family by `config.json`'s `model_type`. A
//! directory that has the head loads with it; one without (a bare, masked-LM or causal-LM
//! checkpoint, such as rankforge's own pretraining `final/`) gets a new head drawn as
//! transformers' `_init_weights` draws it (weights N(0, `initializer_range`), biases 0),
//! logged; a causal LM's `lm_head` is dropped. [`classification_loss`] is transformers' loss
//! for each `problem_type`, with its inference rule when the type is unset.
//!
//! Under LoRA, the head is what PEFT's `SEQ_CLS` task saves whole (`modules_to_save`
//! `["classifier", "score"]`, matched as PEFT matches them, so DistilBERT's `pre_classifier`
//! too; BERT's pooler is not among them and stays frozen, as in PEFT):
//! [`SequenceClassifier::head_parameter_names`] names its tensors so that a trainer can keep
//! them trainable, and [`SequenceClassifier::save_adapter`] writes the adapter with them.

mod decoder;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use super::bert::{self, Encoder, EncoderConfig, Family};
use super::hf::{self, Route};
use super::layers::Linear;
use super::{llama, CausalArch, NamedLinear};
use crate::error::{Error, Result};
use crate::lora::{LoadedAdapter, LoraConfig};

/// transformers' `config.problem_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// `single_label_classification`: cross-entropy over integer labels.
    SingleLabel,
    /// `multi_label_classification`: BCE-with-logits over multi-hot float labels.
    MultiLabel,
    /// `regression`: mean squared error (`num_labels = 1` for one target).
    Regression,
}

impl ProblemType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemType::SingleLabel => "single_label_classification",
            ProblemType::MultiLabel => "multi_label_classification",
            ProblemType::Regression => "regression",
        }
    }

    pub fn parse(s: &str) -> Option<ProblemType> {
        [ProblemType::SingleLabel, ProblemType::MultiLabel, ProblemType::Regression].into_iter().find(|p| p.as_str() == s)
    }

    /// transformers' rule when `problem_type` is unset: one label → regression; integer labels
    /// → single-label; otherwise multi-label.
    pub fn infer(num_labels: i64, labels: Kind) -> ProblemType {
        let integer = matches!(labels, Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8);
        if num_labels == 1 {
            ProblemType::Regression
        } else if integer {
            ProblemType::SingleLabel
        } else {
            ProblemType::MultiLabel
        }
    }
}

/// The mean loss of `logits` `(B, num_labels)` against `labels` as transformers'
/// `*ForSequenceClassification` computes it: cross-entropy over `(B)` integer labels (-100
/// ignored), BCE-with-logits over `(B, num_labels)` floats, or MSE (`(B)` targets when
/// `num_labels = 1`). `problem_type` `None` is inferred by [`ProblemType::infer`]. fp32.
pub fn classification_loss(logits: &Tensor, labels: &Tensor, problem_type: Option<ProblemType>) -> Tensor {
    let num_labels = *logits.size().last().expect("logits are (B, num_labels)");
    let logits = logits.to_kind(Kind::Float);
    match problem_type.unwrap_or_else(|| ProblemType::infer(num_labels, labels.kind())) {
        ProblemType::Regression if num_labels == 1 => logits.squeeze().mse_loss(&labels.to_kind(Kind::Float).squeeze(), Reduction::Mean),
        ProblemType::Regression => logits.mse_loss(&labels.to_kind(Kind::Float), Reduction::Mean),
        ProblemType::SingleLabel => {
            logits.view([-1, num_labels]).cross_entropy_loss::<Tensor>(&labels.view([-1]).to_kind(Kind::Int64), None, Reduction::Mean, -100, 0.0)
        }
        ProblemType::MultiLabel => {
            logits.binary_cross_entropy_with_logits::<Tensor>(&labels.to_kind(Kind::Float), None, None, Reduction::Mean)
        }
    }
}

/// PEFT's `modules_to_save` for `SEQ_CLS`: the head modules a LoRA adapter stores whole.
pub const MODULES_TO_SAVE: [&str; 2] = ["classifier", "score"];

/// What carries the head: an encoder (first-token pooling) or a decoder (last-token pooling).
pub enum Backbone {
    /// BERT or DistilBERT.
    Encoder(Encoder),
    /// GPT-2, Llama, Mistral or Qwen2, without its `lm_head`.
    Decoder(CausalArch),
}

/// A backbone with its sequence-classification head; one VarStore (the backbone's) holds every
/// parameter under its HF name.
pub struct SequenceClassifier {
    pub backbone: Backbone,
    /// DistilBERT's `pre_classifier` (`H → H`).
    pub pre_classifier: Option<Linear>,
    /// The head, `H → num_labels`: `classifier` (encoders, with bias) or `score` (decoders,
    /// without).
    pub classifier: Linear,
    /// Label names by id (`id2label`; `LABEL_i` by default).
    pub id2label: Vec<String>,
    /// `config.problem_type`, when set.
    pub problem_type: Option<ProblemType>,
    /// Dropout before the head (decoders have none: 0).
    pub dropout: f64,
    /// The `config.json` it was loaded from (written back, updated, by `save_pretrained`).
    config: Value,
    /// The directory it was loaded from (named by input errors).
    source: PathBuf,
}

/// `id2label` of a config as a list (keys "0".."n-1"), else `LABEL_i` for `num_labels` (2 by
/// default, as `PretrainedConfig`).
fn config_labels(path: &Path, config: &Value) -> Result<Vec<String>> {
    if let Some(map) = config["id2label"].as_object() {
        let mut labels = vec![None; map.len()];
        for (k, v) in map {
            let i: usize = k.parse().ok().filter(|i| *i < map.len()).ok_or_else(|| Error::model(path, format!("id2label: key {k:?} is not an id in 0..{}", map.len())))?;
            labels[i] = Some(v.as_str().map_or_else(|| v.to_string(), String::from));
        }
        return Ok(labels.into_iter().map(|l| l.unwrap_or_default()).collect());
    }
    let n = config["num_labels"].as_u64().unwrap_or(2) as usize;
    Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
}

/// The labels (the task's, else the config's) and `problem_type` of a classifier config.
fn labels_and_problem(dir: &Path, path: &Path, config: &Value, labels: Option<&[String]>) -> Result<(Vec<String>, Option<ProblemType>)> {
    let id2label = match labels {
        Some(l) => l.to_vec(),
        None => config_labels(path, config)?,
    };
    if id2label.is_empty() {
        return Err(Error::Input(format!("{}: a classifier needs at least one label", dir.display())));
    }
    let problem_type = match config["problem_type"].as_str() {
        None => None,
        Some(s) => Some(ProblemType::parse(s).ok_or_else(|| Error::model(path, format!("problem_type {s:?} is not one of single_label_classification, multi_label_classification, regression")))?),
    };
    Ok((id2label, problem_type))
}

/// Whether the files have the head tensor `key`; its rows must be `num_labels`.
fn has_head(weights_path: &Path, shapes: &[(String, Vec<i64>)], key: &str, num_labels: usize) -> Result<bool> {
    let Some((_, shape)) = shapes.iter().find(|(n, _)| n == key) else { return Ok(false) };
    let rows = shape.first().copied().unwrap_or(0);
    if rows != num_labels as i64 {
        return Err(Error::model(weights_path, format!("{key} has {rows} labels, the task has num_labels = {num_labels}")));
    }
    Ok(true)
}

fn log_new_head(dir: &Path, new: &[&str], num_labels: usize) {
    if !new.is_empty() {
        tracing::info!(path = %dir.display(), new = %new.iter().map(|f| f.trim_end_matches('.')).collect::<Vec<_>>().join(", "),
            num_labels, "new classification head, initialised N(0, initializer_range), biases 0: train it before use");
    }
}

impl SequenceClassifier {
    /// Loads an HF directory as a classifier, the family chosen by `config.json`'s
    /// `model_type` (`bert`, `distilbert`, `gpt2`, `llama`, `mistral`, `qwen2`). `labels`: the
    /// label names the task wants (their number fixes `num_labels`); `None` keeps the config's
    /// `id2label`. The head (and BERT's pooler) come from the files when present — an existing
    /// head whose size differs from `labels` is an error naming the file and both numbers —
    /// else they are new, drawn as transformers does, and logged.
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind, labels: Option<&[String]>) -> Result<SequenceClassifier> {
        let (path, config) = hf::read_config(dir)?;
        match hf::model_type(&path, &config)? {
            "bert" | "distilbert" => SequenceClassifier::encoder_from_pretrained(dir, &path, config, device, kind, labels),
            t if t == "gpt2" || llama::MODEL_TYPES.contains(&t) => decoder::from_pretrained(dir, &path, config, device, kind, labels),
            other => Err(Error::model(&path, format!("model_type {other:?} has no sequence-classification head here (bert, distilbert, gpt2, llama, mistral, qwen2)"))),
        }
    }

    fn encoder_from_pretrained(dir: &Path, path: &Path, config: Value, device: Device, kind: Kind, labels: Option<&[String]>) -> Result<SequenceClassifier> {
        let cfg = EncoderConfig::from_hf_json(path, &config)?;
        hf::check_model_fits(path, device, cfg.num_params(), cfg.vocab_size, ("hidden_size", cfg.hidden_size))?;
        let (weights_path, files) = hf::weight_files(dir)?;
        let shapes = hf::tensor_shapes(&files)?;
        let (id2label, problem_type) = labels_and_problem(dir, path, &config, labels)?;
        let has_classifier = has_head(&weights_path, &shapes, "classifier.weight", id2label.len())?;
        let has_pooler = cfg.family == Family::Bert && shapes.iter().any(|(n, _)| bert::is_pooler(n));
        let has_pre = cfg.family == Family::DistilBert && shapes.iter().any(|(n, _)| n == "pre_classifier.weight");
        let mut model = SequenceClassifier::build(&cfg, config, id2label, problem_type, device);
        model.source = dir.to_path_buf();
        if let Backbone::Encoder(e) = &mut model.backbone {
            e.vs.set_kind(kind);
        }
        // New parameters keep their fresh draw: they are not asked of the files.
        let fresh: Vec<&str> = [
            (!has_classifier).then_some("classifier."),
            (cfg.family == Family::Bert && !has_pooler).then_some("bert.pooler."),
            (cfg.family == Family::DistilBert && !has_pre).then_some("pre_classifier."),
        ]
        .into_iter()
        .flatten()
        .collect();
        log_new_head(dir, &fresh, model.num_labels());
        let mut vars = model.vs().variables();
        vars.retain(|n, _| !fresh.iter().any(|f| n.starts_with(f)));
        let enc_names = cfg.names();
        hf::load_weights(dir, vars, |name| match name {
            n if n.starts_with("classifier.") || n.starts_with("pre_classifier.") => Route::Param(n.to_string()),
            n => bert::route(enc_names, n, has_pooler),
        })?;
        Ok(model)
    }

    /// An encoder classifier with fresh weights (N(0, `initializer_range`), biases 0).
    pub fn build(cfg: &EncoderConfig, config: Value, id2label: Vec<String>, problem_type: Option<ProblemType>, device: Device) -> SequenceClassifier {
        let dropout = match cfg.family {
            Family::Bert => config["classifier_dropout"].as_f64().unwrap_or(cfg.hidden_dropout),
            Family::DistilBert => config["seq_classif_dropout"].as_f64().unwrap_or(0.2),
        };
        let encoder = Encoder::build(cfg, config.clone(), true, device);
        let (h, n, std) = (cfg.hidden_size, id2label.len(), cfg.initializer_range);
        let root = encoder.vs.root();
        let pre_classifier = (cfg.family == Family::DistilBert).then(|| Linear::new(&root / "pre_classifier", h, h, true, std));
        let classifier = Linear::new(&root / "classifier", h, n, true, std);
        let backbone = Backbone::Encoder(encoder);
        SequenceClassifier { backbone, pre_classifier, classifier, id2label, problem_type, dropout, config, source: PathBuf::new() }
    }

    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Whether the backbone is an encoder (BERT, DistilBERT: the head reads the first token)
    /// rather than a decoder (the head reads the last token that is not padding).
    pub fn is_encoder(&self) -> bool {
        matches!(self.backbone, Backbone::Encoder(_))
    }

    /// The encoder, for BERT and DistilBERT.
    pub fn encoder(&self) -> Option<&Encoder> {
        match &self.backbone {
            Backbone::Encoder(e) => Some(e),
            Backbone::Decoder(_) => None,
        }
    }

    pub fn encoder_mut(&mut self) -> Option<&mut Encoder> {
        match &mut self.backbone {
            Backbone::Encoder(e) => Some(e),
            Backbone::Decoder(_) => None,
        }
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(&self) -> &str {
        self.config["model_type"].as_str().unwrap_or("")
    }

    /// `config.json`'s `pad_token_id`: decoders pool at the last token that is not it.
    pub fn pad_token_id(&self) -> Option<i64> {
        self.config["pad_token_id"].as_i64()
    }

    /// Sets `pad_token_id` (e.g. the tokenizer's pad or end-of-text token, as transformers users
    /// set `model.config.pad_token_id`); `save_pretrained` writes it.
    pub fn set_pad_token_id(&mut self, id: Option<i64>) {
        self.config["pad_token_id"] = json!(id);
    }

    /// The longest input: the learned position table (BERT, DistilBERT, GPT-2); for RoPE models
    /// `max_position_embeddings` (a trained length, not a hard limit).
    pub fn max_positions(&self) -> Option<usize> {
        match &self.backbone {
            Backbone::Encoder(e) => Some(e.cfg.max_position_embeddings),
            Backbone::Decoder(CausalArch::Gpt2(m)) => Some(m.cfg.n_positions),
            Backbone::Decoder(CausalArch::Llama(_)) => self.config["max_position_embeddings"].as_u64().map(|n| n as usize),
        }
    }

    pub fn vs(&self) -> &VarStore {
        match &self.backbone {
            Backbone::Encoder(e) => &e.vs,
            Backbone::Decoder(CausalArch::Gpt2(m)) => &m.vs,
            Backbone::Decoder(CausalArch::Llama(m)) => &m.vs,
        }
    }

    pub fn vs_mut(&mut self) -> &mut VarStore {
        match &mut self.backbone {
            Backbone::Encoder(e) => &mut e.vs,
            Backbone::Decoder(CausalArch::Gpt2(m)) => &mut m.vs,
            Backbone::Decoder(CausalArch::Llama(m)) => &mut m.vs,
        }
    }

    /// The dtype of the parameters.
    pub fn kind(&self) -> Kind {
        self.classifier.weight.kind()
    }

    /// Logits `(B, num_labels)` for ids `(B, T)` (+ padding mask, + segment ids where the
    /// family has them: BERT, and GPT-2, which adds their `wte` rows as transformers does;
    /// Llama-family models take none and ignore them). Encoders pool at the first token
    /// (`[CLS]`), decoders at the last token that is not `pad_token_id` (transformers' rule,
    /// for left and right padding); a decoder without `pad_token_id` takes batches of one only
    /// (its last token), and a larger batch is an [`Error::Input`], as in transformers.
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let pooled = match &self.backbone {
            Backbone::Encoder(encoder) => {
                let h = encoder.forward(ids, attention_mask, token_type_ids, train); // (B, T, H)
                match (&self.pre_classifier, encoder.pool(&h, train)) {
                    (Some(pre), _) => pre.forward_t(&h.select(1, 0), train).relu(),
                    (None, Some(p)) => p,
                    (None, None) => h.select(1, 0),
                }
            }
            Backbone::Decoder(arch) => decoder::pooled_hidden(arch, ids, attention_mask, token_type_ids, self.pad_token_id(), &self.source, train)?,
        };
        Ok(self.classifier.forward_t(&pooled.dropout(self.dropout, train), train))
    }

    /// [`classification_loss`] of this model's logits, with its `problem_type`.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        classification_loss(logits, labels, self.problem_type)
    }

    /// Parameters under their HF names, sorted (GPT-2's Conv1D weights `[out, in]` here; only
    /// files hold them transposed).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params: Vec<(String, Tensor)> = self.vs().variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    /// The names of the head's tensors: the modules PEFT's `SEQ_CLS` keeps trainable and saves
    /// whole under LoRA ([`MODULES_TO_SAVE`], a module matching when its path ends with one):
    /// `classifier.*` (+ DistilBERT's `pre_classifier.*`) or `score.weight`. Sorted.
    pub fn head_parameter_names(&self) -> Vec<String> {
        let module = |n: &str| n.rsplit_once('.').map_or(n, |(m, _)| m).to_string();
        self.named_parameters().into_iter().map(|(n, _)| n).filter(|n| MODULES_TO_SAVE.iter().any(|m| module(n).ends_with(m))).collect()
    }

    /// The `*ForSequenceClassification` class transformers builds for this model.
    pub fn architecture(&self) -> &'static str {
        match (&self.backbone, self.model_type()) {
            (Backbone::Encoder(e), _) if e.cfg.family == Family::Bert => "BertForSequenceClassification",
            (Backbone::Encoder(_), _) => "DistilBertForSequenceClassification",
            (_, "gpt2") => "GPT2ForSequenceClassification",
            (_, "mistral") => "MistralForSequenceClassification",
            (_, "qwen2") => "Qwen2ForSequenceClassification",
            _ => "LlamaForSequenceClassification",
        }
    }

    /// `config.json` for `AutoModelForSequenceClassification`: `architectures`, `num_labels`,
    /// `id2label` (string keys), `label2id`, `problem_type` when set, `pad_token_id` (decoders;
    /// null when unset), the dtype.
    pub fn config_json(&self) -> Value {
        let mut c = hf::with_dtype(&self.config, self.kind());
        let id2label: serde_json::Map<String, Value> = self.id2label.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
        let label2id: serde_json::Map<String, Value> = self.id2label.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
        c["architectures"] = json!([self.architecture()]);
        c["num_labels"] = json!(self.num_labels());
        c["id2label"] = Value::Object(id2label);
        c["label2id"] = Value::Object(label2id);
        if let Some(p) = self.problem_type {
            c["problem_type"] = json!(p.as_str());
        }
        if !self.is_encoder() {
            c["pad_token_id"] = json!(self.pad_token_id());
        }
        c
    }

    /// Writes `config.json` and `model.safetensors` (HF names and layout, the model's dtype)
    /// into `dir`: what `AutoModelForSequenceClassification.from_pretrained` loads. Attached
    /// LoRA adapters are not included: merge them first or use [`Self::save_adapter`].
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = match &self.backbone {
            Backbone::Decoder(CausalArch::Gpt2(m)) => m.hf_state_dict().into_iter().map(|(n, t)| (n, t.to_kind(self.kind()))).collect(),
            _ => self.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect(),
        };
        hf::save_pretrained(dir, &self.config_json(), &tensors, None)
    }

    /// Every linear layer under its module path in the HF task model: the backbone's, then
    /// `pre_classifier` and `classifier` / `score` (which `"all-linear"` leaves out, as PEFT
    /// does for `SEQ_CLS`). Decoders have no `lm_head`.
    pub fn linears_mut(&mut self) -> Vec<NamedLinear<'_>> {
        let name = if self.is_encoder() { "classifier" } else { "score" };
        let mut out = match &mut self.backbone {
            Backbone::Encoder(e) => e.linears_mut(),
            Backbone::Decoder(CausalArch::Gpt2(m)) => m.linears_mut(),
            Backbone::Decoder(CausalArch::Llama(m)) => m.linears_mut(),
        };
        if let Some(p) = &mut self.pre_classifier {
            out.push(NamedLinear { name: "pre_classifier".into(), linear: p, fan_in_fan_out: false });
        }
        out.push(NamedLinear { name: name.into(), linear: &mut self.classifier, fan_in_fan_out: false });
        out
    }

    /// Attaches fresh LoRA adapters and freezes every base parameter (the head too: make
    /// [`Self::head_parameter_names`] trainable to train it as PEFT does); returns the adapted
    /// paths.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<String>> {
        let device = self.vs().device();
        let adapted = crate::lora::inject(self.linears_mut(), cfg, device, seed)?;
        self.vs_mut().freeze();
        Ok(adapted)
    }

    /// Loads a PEFT adapter directory (with its `modules_to_save` head) onto this model and
    /// freezes every base parameter.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoadedAdapter> {
        let device = self.vs().device();
        let loaded = crate::lora::load_adapter(self.linears_mut(), dir, device)?;
        self.vs_mut().freeze();
        Ok(loaded)
    }

    /// Writes the attached adapters as a PEFT `SEQ_CLS` adapter with the head as
    /// `modules_to_save` ([`MODULES_TO_SAVE`]): what `PeftModel.from_pretrained(
    /// AutoModelForSequenceClassification.from_pretrained(base, num_labels=...), dir)` loads.
    pub fn save_adapter(&mut self, dir: &Path, cfg: &LoraConfig, base_model_name_or_path: Option<&str>) -> Result<()> {
        crate::lora::save_adapter_with_modules(dir, &self.linears_mut(), cfg, base_model_name_or_path, "SEQ_CLS", &MODULES_TO_SAVE)
    }

    /// The adapter tensors under PEFT's names, sorted.
    pub fn lora_parameters(&mut self) -> Vec<(String, Tensor)> {
        crate::lora::adapter_parameters(&self.linears_mut())
    }

    /// Folds the adapters into the base weights and removes them.
    pub fn merge_lora(&mut self) -> Result<Vec<String>> {
        crate::lora::merge(self.linears_mut())
    }

    /// Zeroes GPT-2's attention key bias gradients (see [`super::gpt::Gpt::zero_null_grads`]);
    /// nothing for other families. Call after backward.
    pub fn zero_null_grads(&self) {
        if let Backbone::Decoder(CausalArch::Gpt2(m)) = &self.backbone {
            m.zero_null_grads();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_type_inference_follows_transformers() {
        assert_eq!(ProblemType::infer(1, Kind::Float), ProblemType::Regression);
        assert_eq!(ProblemType::infer(1, Kind::Int64), ProblemType::Regression);
        assert_eq!(ProblemType::infer(3, Kind::Int64), ProblemType::SingleLabel);
        assert_eq!(ProblemType::infer(3, Kind::Float), ProblemType::MultiLabel);
        for p in [ProblemType::SingleLabel, ProblemType::MultiLabel, ProblemType::Regression] {
            assert_eq!(ProblemType::parse(p.as_str()), Some(p));
        }
    }
}
