//! Which model `rankforge evaluate --model DIR` was given, and loading a causal LM for it.
//!
//! A directory is a **causal LM** when its `config.json` `architectures` name one
//! (`*ForCausalLM`, `*LMHeadModel`), or, without `architectures`, its `model_type` is a causal
//! family rankforge reads (gpt2, llama, mistral, qwen2); a PEFT adapter directory is one when
//! its `task_type` is `CAUSAL_LM`, or, without one, when its base is. Everything else goes to
//! the classifier report, which keeps its own messages for what it cannot read.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind};

use crate::error::{Error, IoContext, Result};
use crate::lora::ADAPTER_CONFIG;
use crate::models::{hf, CausalLm};
use crate::tokenizer::LoadedTokenizer;

const CAUSAL_TYPES: [&str; 4] = ["gpt2", "llama", "mistral", "qwen2"];

/// What a model directory holds, for `evaluate`'s dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelKind {
    /// A causal LM (or an adapter of one).
    CausalLm,
    /// Anything else: a sequence classifier, or what the classifier path reports on. The
    /// architecture names it, when config.json gives one.
    Other(Option<String>),
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| Error::model(path, format!("invalid JSON: {e}")))
}

/// The kind of a `config.json`: by `architectures`, else by `model_type`.
fn config_kind(config: &Value) -> ModelKind {
    let archs: Vec<&str> = config["architectures"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if archs.iter().any(|a| a.ends_with("ForCausalLM") || a.ends_with("LMHeadModel")) {
        return ModelKind::CausalLm;
    }
    if archs.is_empty() && config["model_type"].as_str().is_some_and(|t| CAUSAL_TYPES.contains(&t)) {
        return ModelKind::CausalLm;
    }
    ModelKind::Other(archs.first().map(|a| a.to_string()))
}

/// The base model directory of an adapter: `base_model_name_or_path` as given (relative to the
/// working directory) or relative to the adapter.
pub fn adapter_base(adapter: &Path) -> Result<PathBuf> {
    let cfg_path = adapter.join(ADAPTER_CONFIG);
    let cfg = read_json(&cfg_path)?;
    let Some(name) = cfg["base_model_name_or_path"].as_str() else {
        return Err(Error::model(&cfg_path, "no base_model_name_or_path: the adapter does not say which model it adapts"));
    };
    [PathBuf::from(name), adapter.join(name)].into_iter().find(|p| p.join("config.json").is_file()).ok_or_else(|| {
        Error::model(&cfg_path, format!("base_model_name_or_path {name:?}: no model directory there (rankforge reads local directories, relative to the working directory or the adapter)"))
    })
}

/// The kind of `dir` (see the module docs); unreadable files give [`ModelKind::Other`], so
/// the classifier path reports them as it always has.
pub fn detect(dir: &Path) -> ModelKind {
    if dir.join(ADAPTER_CONFIG).is_file() {
        let Ok(cfg) = read_json(&dir.join(ADAPTER_CONFIG)) else { return ModelKind::Other(None) };
        return match cfg["task_type"].as_str() {
            Some("CAUSAL_LM") => ModelKind::CausalLm,
            Some(_) => ModelKind::Other(None),
            None => adapter_base(dir).ok().and_then(|b| hf::read_config(&b).ok()).map_or(ModelKind::Other(None), |(_, c)| config_kind(&c)),
        };
    }
    match hf::read_config(dir) {
        Ok((_, config)) => config_kind(&config),
        Err(_) => ModelKind::Other(None),
    }
}

/// A causal LM ready to score: the model (with its adapter), its tokenizer.
pub struct LoadedLm {
    pub model: CausalLm,
    pub tok: LoadedTokenizer,
}

/// The dtype to evaluate in: fp32 on the CPU; on a GPU the model's own dtype (fp32 when
/// config.json names none), as `generate`.
fn eval_kind(dir: &Path, device: Device) -> Kind {
    let declared = || hf::read_config(dir).ok().and_then(|(_, c)| hf::config_kind(&c));
    if device.is_cuda() { declared().unwrap_or(Kind::Float) } else { Kind::Float }
}

/// Loads `model` (an HF causal LM directory, or a PEFT adapter of one, applied on its base)
/// with `adapter` on top, as `generate` does. The tokenizer: the adapter's when it carries one,
/// else the model's.
pub fn load(model: &Path, adapter: Option<&Path>, device: Device) -> Result<LoadedLm> {
    let (base, adapter) = if model.join(ADAPTER_CONFIG).is_file() && !model.join("config.json").is_file() {
        if adapter.is_some() {
            return Err(Error::Input(format!("--adapter: --model {} is already a LoRA adapter; give one of them", model.display())));
        }
        (adapter_base(model)?, Some(model))
    } else {
        (model.to_path_buf(), adapter)
    };
    let mut lm = CausalLm::from_pretrained(&base, device, eval_kind(&base, device))?;
    if let Some(dir) = adapter {
        let loaded = lm.load_adapter(dir)?;
        tracing::info!("LoRA adapter {} on {} layers", dir.display(), loaded.modules.len());
    }
    let tok_dir = adapter.filter(|a| a.join("tokenizer.json").exists()).unwrap_or(&base);
    let tok = LoadedTokenizer::load(tok_dir)?;
    Ok(LoadedLm { model: lm, tok })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_architectures_then_model_type() {
        let k = |v: Value| config_kind(&v);
        assert_eq!(k(serde_json::json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})), ModelKind::CausalLm);
        assert_eq!(k(serde_json::json!({"architectures": ["LlamaForCausalLM"]})), ModelKind::CausalLm);
        assert_eq!(k(serde_json::json!({"model_type": "qwen2"})), ModelKind::CausalLm);
        let cls = k(serde_json::json!({"architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2"}));
        assert_eq!(cls, ModelKind::Other(Some("GPT2ForSequenceClassification".into())));
        assert_eq!(k(serde_json::json!({"model_type": "bert"})), ModelKind::Other(None));
    }
}
