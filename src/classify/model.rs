//! A classifier directory for `rankforge evaluate` and `predict`: a full Hugging Face
//! `*ForSequenceClassification` directory (`config.json` + weights), or a PEFT adapter
//! directory (`adapter_config.json`) applied on its `base_model_name_or_path` with its head
//! (`modules_to_save`). An adapter's label names: its directory's `config.json` `id2label`
//! when it has one, else the base's when their number matches the adapter's head, else
//! `LABEL_i`. The tokenizer: the adapter's directory when it has one, else the model's.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::data::{collate, ClsExample};
use crate::error::{Error, IoContext, Result};
use crate::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::models::heads::{ProblemType, SequenceClassifier};
use crate::models::hf;
use crate::tokenizer::LoadedTokenizer;

/// A loaded classifier and its tokenizer.
pub struct Classifier {
    pub model: SequenceClassifier,
    pub tokenizer: LoadedTokenizer,
    /// `max_position_embeddings` (`n_positions`) of the config: the longest input it reads.
    pub max_positions: Option<usize>,
    pub device: Device,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| Error::model(path, format!("invalid JSON: {e}")))
}

fn positions(config: &Value) -> Option<usize> {
    config["max_position_embeddings"].as_u64().or_else(|| config["n_positions"].as_u64()).map(|n| n as usize)
}

/// `id2label` of a config as a list, when it is one (keys "0".."n-1").
fn id2label(config: &Value) -> Option<Vec<String>> {
    let map = config["id2label"].as_object()?;
    (0..map.len()).map(|i| map.get(&i.to_string()).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))).collect()
}

impl Classifier {
    /// Loads `dir` (see the module docs) on `device`, fp32.
    pub fn load(dir: &Path, device: Device) -> Result<Classifier> {
        if dir.join(ADAPTER_CONFIG).is_file() {
            return Self::load_adapter(dir, device);
        }
        if !dir.join("config.json").exists() && dir.join("final").exists() {
            return Err(Error::model(dir, "is a run directory; pass its final/ (or final/merged/ after LoRA)"));
        }
        let (_, config) = hf::read_config(dir)?;
        let model = SequenceClassifier::from_pretrained(dir, device, Kind::Float, None)?;
        let tokenizer = LoadedTokenizer::load(dir)?;
        Ok(Classifier { model, tokenizer, max_positions: positions(&config), device })
    }

    fn load_adapter(dir: &Path, device: Device) -> Result<Classifier> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let adapter = read_json(&cfg_path)?;
        let Some(base_name) = adapter["base_model_name_or_path"].as_str() else {
            return Err(Error::model(&cfg_path, "no base_model_name_or_path: the adapter does not say which model it adapts"));
        };
        let base = [PathBuf::from(base_name), dir.join(base_name)].into_iter().find(|p| p.join("config.json").is_file()).ok_or_else(|| {
            Error::model(&cfg_path, format!("base_model_name_or_path {base_name:?}: no model directory there (rankforge reads local directories, relative to the working directory or the adapter)"))
        })?;
        let (_, base_config) = hf::read_config(&base)?;
        let own_config = dir.join("config.json").is_file().then(|| read_json(&dir.join("config.json"))).transpose()?;
        let rows = head_rows(dir)?;
        let names = own_config.as_ref().and_then(id2label).or_else(|| id2label(&base_config)).filter(|n| rows.is_none_or(|r| n.len() == r));
        let names = names.unwrap_or_else(|| (0..rows.unwrap_or(2)).map(|i| format!("LABEL_{i}")).collect());
        let mut model = SequenceClassifier::from_pretrained(&base, device, Kind::Float, Some(&names))?;
        if let Some(p) = own_config.as_ref().and_then(|c| c["problem_type"].as_str()) {
            model.problem_type = Some(ProblemType::parse(p).ok_or_else(|| Error::model(dir.join("config.json"), format!("problem_type {p:?} is not one of single_label_classification, multi_label_classification, regression")))?);
        }
        let loaded = model.load_adapter(dir)?;
        tracing::info!(adapter = %dir.display(), base = %base.display(), layers = loaded.modules.len(), head = %loaded.modules_to_save.join(", "), "LoRA adapter");
        let tok_dir = if dir.join("tokenizer.json").is_file() { dir } else { base.as_path() };
        let tokenizer = LoadedTokenizer::load(tok_dir)?;
        Ok(Classifier { model, tokenizer, max_positions: positions(&base_config), device })
    }

    /// The padding id: `pad_token`, else `eos_token`, else 0 (masked out either way).
    pub fn pad_id(&self) -> i64 {
        self.tokenizer.pad_or_eos_id().map_or(0, i64::from)
    }

    /// The problem type transformers would use: the config's, else regression for one label.
    pub fn problem_type(&self) -> Option<ProblemType> {
        self.model.problem_type.or((self.model.num_labels() == 1).then_some(ProblemType::Regression))
    }

    /// Logits `(N, num_labels)` of `examples` in order, on the CPU, `batch_size` at a time
    /// (right-padded, masked). Segment ids go to the model only when some are non-zero (as
    /// BERT's default of zeros, and for models without segments).
    pub fn logits(&self, examples: &[&ClsExample], batch_size: usize) -> Result<Tensor> {
        let mut out = Vec::new();
        for chunk in examples.chunks(batch_size.max(1)) {
            let (ids, mask, types, _) = collate(chunk, self.pad_id());
            let segments = types.abs().sum(Kind::Int64).int64_value(&[]) > 0;
            let types = segments.then(|| types.to_device(self.device));
            let logits = tch::no_grad(|| self.model.forward(&ids.to_device(self.device), Some(&mask.to_device(self.device)), types.as_ref(), false));
            out.push(logits?.to_kind(Kind::Float).to_device(Device::Cpu));
        }
        if out.is_empty() {
            return Ok(Tensor::zeros([0, self.model.num_labels() as i64], (Kind::Float, Device::Cpu)));
        }
        Ok(Tensor::cat(&out, 0))
    }
}

/// The number of labels of an adapter's saved head (`classifier` or `score`), if it saves one.
fn head_rows(dir: &Path) -> Result<Option<usize>> {
    let weights = dir.join(ADAPTER_WEIGHTS);
    if !weights.is_file() {
        return Ok(None);
    }
    let shapes = hf::tensor_shapes(std::slice::from_ref(&weights))?;
    let head = ["base_model.model.classifier.weight", "base_model.model.score.weight"];
    Ok(shapes.iter().find(|(n, _)| head.contains(&n.as_str())).and_then(|(_, s)| s.first()).map(|&r| r as usize))
}
