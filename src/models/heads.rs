//! Sequence-classification heads on the encoders of [`super::bert`], as transformers builds them
//! (`modeling_bert.py`, `modeling_distilbert.py`), with their HF weight names:
//!
//! - `BertForSequenceClassification`: `tanh(bert.pooler.dense(h[:, 0]))` → dropout
//!   (`classifier_dropout`, else `hidden_dropout_prob`) → `classifier`;
//! - `DistilBertForSequenceClassification`: `h[:, 0]` → `pre_classifier` → ReLU → dropout
//!   (`seq_classif_dropout`) → `classifier`.
//!
//! A directory that has the head loads with it; one without (a bare or masked-LM checkpoint)
//! gets a new head drawn as transformers' `_init_weights` draws it (weights N(0,
//! `initializer_range`), biases 0), logged. [`classification_loss`] is transformers' loss for
//! each `problem_type`, with its inference rule when the type is unset.

use std::path::Path;

use serde_json::{json, Value};
use tch::{Device, Kind, Reduction, Tensor};

use super::bert::{self, Encoder, EncoderConfig, Family};
use super::hf::{self, Route};
use super::layers::Linear;
use super::NamedLinear;
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

/// A BERT or DistilBERT encoder with its sequence-classification head; one VarStore
/// (`encoder.vs`) holds every parameter under its HF name.
pub struct SequenceClassifier {
    pub encoder: Encoder,
    /// DistilBERT's `pre_classifier` (`H → H`).
    pub pre_classifier: Option<Linear>,
    /// `classifier` (`H → num_labels`).
    pub classifier: Linear,
    /// Label names by id (`id2label`; `LABEL_i` by default).
    pub id2label: Vec<String>,
    /// `config.problem_type`, when set.
    pub problem_type: Option<ProblemType>,
    /// Dropout before `classifier`.
    pub dropout: f64,
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

impl SequenceClassifier {
    /// Loads an HF BERT / DistilBERT directory as a classifier. `labels`: the label names the
    /// task wants (their number fixes `num_labels`); `None` keeps the config's `id2label`. The
    /// head (and BERT's pooler) come from the files when present — an existing head whose size
    /// differs from `labels` is an error — else they are new, drawn as transformers does, and
    /// logged.
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind, labels: Option<&[String]>) -> Result<SequenceClassifier> {
        let (path, config) = hf::read_config(dir)?;
        let cfg = EncoderConfig::from_hf_json(&path, &config)?;
        hf::check_model_fits(&path, device, cfg.num_params(), cfg.vocab_size, ("hidden_size", cfg.hidden_size))?;
        let (weights_path, files) = hf::weight_files(dir)?;
        let shapes = hf::tensor_shapes(&files)?;
        let has = |key: &str| shapes.iter().any(|(n, _)| n == key);
        let has_head = has("classifier.weight");
        let has_pooler = cfg.family == Family::Bert && shapes.iter().any(|(n, _)| bert::is_pooler(n));
        let has_pre = cfg.family == Family::DistilBert && has("pre_classifier.weight");
        let id2label = match labels {
            Some(l) => l.to_vec(),
            None => config_labels(&path, &config)?,
        };
        if id2label.is_empty() {
            return Err(Error::Input(format!("{}: a classifier needs at least one label", dir.display())));
        }
        let problem_type = match config["problem_type"].as_str() {
            None => None,
            Some(s) => Some(ProblemType::parse(s).ok_or_else(|| Error::model(&path, format!("problem_type {s:?} is not one of single_label_classification, multi_label_classification, regression")))?),
        };
        let mut model = SequenceClassifier::build(&cfg, config.clone(), id2label, problem_type, device);
        model.encoder.vs.set_kind(kind);
        // New parameters keep their fresh draw: they are not asked of the files.
        let fresh: Vec<&str> = [
            (!has_head).then_some("classifier."),
            (cfg.family == Family::Bert && !has_pooler).then_some("bert.pooler."),
            (cfg.family == Family::DistilBert && !has_pre).then_some("pre_classifier."),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !fresh.is_empty() {
            tracing::info!(path = %dir.display(), new = %fresh.iter().map(|f| f.trim_end_matches('.')).collect::<Vec<_>>().join(", "),
                num_labels = model.num_labels(), "new classification head, initialised N(0, initializer_range), biases 0: train it before use");
        }
        let mut vars = model.encoder.vs.variables();
        vars.retain(|n, _| !fresh.iter().any(|f| n.starts_with(f)));
        if let Some((_, shape)) = shapes.iter().find(|(n, _)| n == "classifier.weight") {
            let rows = shape.first().copied().unwrap_or(0);
            if rows != model.num_labels() as i64 {
                return Err(Error::model(&weights_path, format!("classifier.weight has {rows} labels, the task has num_labels = {}", model.num_labels())));
            }
        }
        let enc_names = cfg.names();
        hf::load_weights(dir, vars, |name| match name {
            n if n.starts_with("classifier.") || n.starts_with("pre_classifier.") => Route::Param(n.to_string()),
            n => bert::route(enc_names, n, has_pooler),
        })?;
        Ok(model)
    }

    /// A classifier with fresh weights (N(0, `initializer_range`), biases 0).
    pub fn build(cfg: &EncoderConfig, config: Value, id2label: Vec<String>, problem_type: Option<ProblemType>, device: Device) -> SequenceClassifier {
        let dropout = match cfg.family {
            Family::Bert => config["classifier_dropout"].as_f64().unwrap_or(cfg.hidden_dropout),
            Family::DistilBert => config["seq_classif_dropout"].as_f64().unwrap_or(0.2),
        };
        let encoder = Encoder::build(cfg, config, true, device);
        let (h, n, std) = (cfg.hidden_size, id2label.len(), cfg.initializer_range);
        let root = encoder.vs.root();
        let pre_classifier = (cfg.family == Family::DistilBert).then(|| Linear::new(&root / "pre_classifier", h, h, true, std));
        let classifier = Linear::new(&root / "classifier", h, n, true, std);
        SequenceClassifier { encoder, pre_classifier, classifier, id2label, problem_type, dropout }
    }

    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Logits `(B, num_labels)` for ids `(B, T)` (+ padding mask, + BERT segment ids), pooled
    /// at the first token (`[CLS]`).
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, train: bool) -> Tensor {
        let h = self.encoder.forward(ids, attention_mask, token_type_ids, train); // (B, T, H)
        let pooled = match (&self.pre_classifier, self.encoder.pool(&h, train)) {
            (Some(pre), _) => pre.forward_t(&h.select(1, 0), train).relu(),
            (None, Some(p)) => p,
            (None, None) => h.select(1, 0),
        };
        self.classifier.forward_t(&pooled.dropout(self.dropout, train), train)
    }

    /// [`classification_loss`] of this model's logits, with its `problem_type`.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        classification_loss(logits, labels, self.problem_type)
    }

    /// Parameters under their HF names, sorted.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.encoder.named_parameters()
    }

    /// `config.json` for `AutoModelForSequenceClassification`: `architectures`, `num_labels`,
    /// `id2label` (string keys), `label2id`, `problem_type` when set, the dtype.
    pub fn config_json(&self) -> Value {
        let mut c = hf::with_dtype(&self.encoder.config, self.encoder.kind());
        let arch = match self.encoder.cfg.family {
            Family::Bert => "BertForSequenceClassification",
            Family::DistilBert => "DistilBertForSequenceClassification",
        };
        let id2label: serde_json::Map<String, Value> = self.id2label.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
        let label2id: serde_json::Map<String, Value> = self.id2label.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
        c["architectures"] = json!([arch]);
        c["num_labels"] = json!(self.num_labels());
        c["id2label"] = Value::Object(id2label);
        c["label2id"] = Value::Object(label2id);
        if let Some(p) = self.problem_type {
            c["problem_type"] = json!(p.as_str());
        }
        c
    }

    /// Writes `config.json` and `model.safetensors` (HF names, the model's dtype) into `dir`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect();
        hf::save_pretrained(dir, &self.config_json(), &tensors, None)
    }

    /// Every linear layer under its module path in the HF task model: the encoder's, then
    /// `pre_classifier` and `classifier` (which `"all-linear"` leaves out, as PEFT does for
    /// `SEQ_CLS`).
    pub fn linears_mut(&mut self) -> Vec<NamedLinear<'_>> {
        let mut out = self.encoder.linears_mut();
        if let Some(p) = &mut self.pre_classifier {
            out.push(NamedLinear { name: "pre_classifier".into(), linear: p, fan_in_fan_out: false });
        }
        out.push(NamedLinear { name: "classifier".into(), linear: &mut self.classifier, fan_in_fan_out: false });
        out
    }

    /// Attaches fresh LoRA adapters and freezes every base parameter; returns the adapted paths.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<String>> {
        let device = self.encoder.vs.device();
        let adapted = crate::lora::inject(self.linears_mut(), cfg, device, seed)?;
        self.encoder.vs.freeze();
        Ok(adapted)
    }

    /// Loads a PEFT adapter directory onto this model and freezes every base parameter.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoadedAdapter> {
        let device = self.encoder.vs.device();
        let loaded = crate::lora::load_adapter(self.linears_mut(), dir, device)?;
        self.encoder.vs.freeze();
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
