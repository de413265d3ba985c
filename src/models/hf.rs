//! Hugging Face model directories (`save_pretrained` layout), shared by every family.
//!
//! Reading: `config.json` (its `model_type` picks the family; `dtype`/`torch_dtype` and both
//! RoPE spellings are accepted, see [`rope_config`]), weights from `model.safetensors` or from
//! the shards listed in `model.safetensors.index.json` (`weight_map`). Tensors are converted to
//! the dtype of the model they are copied into, so fp32, fp16 and bf16 files all load into any
//! model. [`load_weights`] copies name for name into a VarStore and reports every missing,
//! unexpected and wrongly shaped tensor by name in one [`Error::Model`].
//!
//! Writing: [`save_pretrained`] writes `config.json` (sorted keys, 2-space indent, trailing
//! newline), `model.safetensors` with `__metadata__ {"format": "pt"}` ([`crate::st`]) and,
//! for generative models, `generation_config.json`.
//!
//! Reference: transformers `modeling_utils.py` (`save_pretrained`, `from_pretrained`),
//! `modeling_rope_utils.py` (`standardize_rope_params`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tch::{Kind, Tensor};

use super::shared::RopeScaling;
use crate::error::{Error, IoContext, Result};

/// Single-file weights.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of sharded weights.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// `config.json` of `dir`: its path and its JSON.
pub fn read_config(dir: &Path) -> Result<(PathBuf, Value)> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Err(Error::model(&path, "not found: not a Hugging Face model directory"));
    }
    let text = std::fs::read_to_string(&path).at(&path)?;
    let value = serde_json::from_str(&text).map_err(|e| Error::model(&path, format!("invalid JSON: {e}")))?;
    Ok((path, value))
}

/// Deserialises a config struct from `value`, naming the key of an error.
pub fn parse_config<T: DeserializeOwned>(path: &Path, value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        Error::model(path, format!("{key}: {}", e.into_inner()))
    })
}

/// Sizes of a config that must be at least 1: `config.json: key: must be at least 1 (is 0)`.
pub fn check_positive(path: &Path, sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((key, v)) => Err(Error::model(path, format!("{key}: must be at least 1 (is {v})"))),
        None => Ok(()),
    }
}

/// Refuses to build a model of `params` parameters that `device` cannot hold (it is built in
/// fp32, 4 bytes each, before the weights are copied in): the error names `path` and its
/// `vocab_size` and `hidden` keys, the usual culprits.
pub fn check_model_fits(path: &Path, device: tch::Device, params: u128, vocab: usize, hidden: (&str, usize)) -> Result<()> {
    crate::device::check_fits(device, params * 4).map_err(|msg| {
        Error::model(path, format!("vocab_size: {vocab} (× {} = {}): the model ({params} parameters in fp32) {msg}", hidden.0, hidden.1))
    })
}

/// The `model_type` of a config.
pub fn model_type<'a>(path: &Path, config: &'a Value) -> Result<&'a str> {
    config["model_type"].as_str().ok_or_else(|| Error::model(path, "no \"model_type\": cannot tell the model family"))
}

/// The dtype a config declares (`dtype`, v5; `torch_dtype`, v4), if it names one we know.
pub fn config_kind(config: &Value) -> Option<Kind> {
    let name = config["dtype"].as_str().or_else(|| config["torch_dtype"].as_str())?;
    Some(match name {
        "float32" => Kind::Float,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        _ => return None,
    })
}

/// The name of `kind` in `config.json`.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

/// RoPE base and scaling from either spelling: `rope_parameters {rope_theta, rope_type, ...}`
/// (transformers v5) or top-level `rope_theta` + `rope_scaling {type | rope_type, ...}` (v4 and
/// most Hub checkpoints). `rope_theta` defaults to `default_theta`; unsupported types (dynamic,
/// yarn, longrope, ...) are errors.
pub fn rope_config(path: &Path, config: &Value, default_theta: f64) -> Result<(f64, RopeScaling)> {
    let params = match (&config["rope_parameters"], &config["rope_scaling"]) {
        (p @ Value::Object(_), _) => p,
        (_, s @ Value::Object(_)) => s,
        _ => &Value::Null,
    };
    let theta = params["rope_theta"].as_f64().or_else(|| config["rope_theta"].as_f64()).unwrap_or(default_theta);
    let kind = params["rope_type"].as_str().or_else(|| params["type"].as_str()).unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        params[key].as_f64().ok_or_else(|| Error::model(path, format!("rope type {kind:?} needs a number {key}")))
    };
    if params["partial_rotary_factor"].as_f64().is_some_and(|f| f != 1.0) {
        return Err(Error::model(path, "partial_rotary_factor other than 1 is not supported"));
    }
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: params["original_max_position_embeddings"]
                .as_f64()
                .or_else(|| config["max_position_embeddings"].as_f64())
                .ok_or_else(|| Error::model(path, "rope type \"llama3\" needs original_max_position_embeddings"))?,
        },
        other => {
            return Err(Error::model(path, format!("rope type {other:?} is not supported (default, linear, llama3)")));
        }
    };
    Ok((theta, scaling))
}

/// The weight files of `dir` and the path errors should name: `model.safetensors`, else the
/// shards listed in `model.safetensors.index.json` (sorted, each once).
pub fn weight_files(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let single = dir.join(WEIGHTS);
    if single.exists() {
        return Ok((single.clone(), vec![single]));
    }
    let index = dir.join(WEIGHTS_INDEX);
    if !index.exists() {
        let msg = if dir.join("pytorch_model.bin").exists() {
            "not found; pytorch_model.bin (a pickle) is not supported: convert it to safetensors"
        } else {
            "not found (nor model.safetensors.index.json)"
        };
        return Err(Error::model(&single, msg));
    }
    let text = std::fs::read_to_string(&index).at(&index)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::model(&index, format!("invalid JSON: {e}")))?;
    let map = value["weight_map"].as_object().ok_or_else(|| Error::model(&index, "no \"weight_map\" object"))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| Error::model(&index, format!("weight_map.{name}: not a file name")))?;
        if file.contains('/') || file.contains("..") {
            return Err(Error::model(&index, format!("weight_map.{name}: {file:?} is not a file in the directory")));
        }
        files.insert(file.to_string());
    }
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(gone) = files.iter().find(|f| !f.exists()) {
        return Err(Error::model(&index, format!("lists {} which does not exist", gone.display())));
    }
    Ok((index, files))
}

/// The tensor names and shapes of safetensors `files`, read from their headers only.
pub fn tensor_shapes(files: &[PathBuf]) -> Result<Vec<(String, Vec<i64>)>> {
    use std::io::Read;
    let mut names = Vec::new();
    for file in files {
        let mut f = std::fs::File::open(file).at(file)?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).at(file)?;
        let mut header = vec![0u8; u64::from_le_bytes(len).min(100 << 20) as usize];
        f.read_exact(&mut header).at(file)?;
        let value: Value = serde_json::from_slice(&header).map_err(|e| Error::model(file, format!("invalid safetensors header: {e}")))?;
        for (k, v) in value.as_object().into_iter().flatten().filter(|(k, _)| *k != "__metadata__") {
            let shape = v["shape"].as_array().into_iter().flatten().filter_map(|d| d.as_i64()).collect();
            names.push((k.clone(), shape));
        }
    }
    Ok(names)
}

/// Where a tensor of the file goes.
pub enum Route {
    /// Into the VarStore variable of this name.
    Param(String),
    /// Into this variable, transposed (GPT-2 Conv1D `[in, out]` → `[out, in]`).
    Transposed(String),
    /// Not part of this model (a task head, a mask buffer): skipped, logged at debug level.
    Ignore,
}

/// Copies the weights of `dir` into `vars` (a VarStore's variables), converting each tensor to
/// its variable's dtype. `route` maps a file name to a variable. Every variable must be filled
/// exactly by a tensor of its shape; otherwise one error lists all missing keys, unexpected keys
/// and shape mismatches by name. Shards are read one at a time.
pub fn load_weights(dir: &Path, vars: HashMap<String, Tensor>, route: impl Fn(&str) -> Route) -> Result<()> {
    let (err_path, files) = weight_files(dir)?;
    let mut vars = vars;
    let (mut unexpected, mut shapes, mut ignored) = (Vec::new(), Vec::new(), Vec::new());
    for file in &files {
        // One tensor at a time from the memory-mapped shard into its variable.
        crate::st::visit(file, |name, t| {
            let (target, transpose) = match route(&name) {
                Route::Param(n) => (n, false),
                Route::Transposed(n) => (n, true),
                Route::Ignore => {
                    ignored.push(name);
                    return Ok(());
                }
            };
            let Some(mut var) = vars.remove(&target) else {
                unexpected.push(name);
                return Ok(());
            };
            let t = if transpose && t.dim() == 2 { t.tr() } else { t };
            if t.size() != var.size() {
                shapes.push(format!("{name} has shape {:?}, the config needs {:?}", t.size(), var.size()));
                return Ok(());
            }
            tch::no_grad(|| var.copy_(&t.to_kind(var.kind())));
            Ok(())
        })?;
    }
    if !ignored.is_empty() {
        tracing::debug!(path = %err_path.display(), ignored = %ignored.join(", "), "weights not used by this model (task heads, buffers)");
    }
    let mut missing: Vec<String> = vars.into_keys().collect();
    missing.sort();
    unexpected.sort();
    if missing.is_empty() && unexpected.is_empty() && shapes.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing keys [{}]", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected keys [{}]", unexpected.join(", ")));
    }
    if !shapes.is_empty() {
        parts.push(format!("wrong shapes [{}]", shapes.join("; ")));
    }
    Err(Error::model(&err_path, format!("weights do not match config.json: {}", parts.join(", "))))
}

/// Writes a `save_pretrained` directory: `config.json`, `model.safetensors` (`tensors` as
/// given: names, layout and dtype are the caller's) and `generation_config.json` when given.
/// A stale shard index from an earlier save is removed so that readers see the new weights.
pub fn save_pretrained(dir: &Path, config: &Value, tensors: &[(String, Tensor)], generation: Option<&Value>) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    crate::fsutil::write_json_atomic(&dir.join("config.json"), config)?;
    if let Some(g) = generation {
        crate::fsutil::write_json_atomic(&dir.join("generation_config.json"), g)?;
    }
    crate::st::save(&dir.join(WEIGHTS), tensors)?;
    let index = dir.join(WEIGHTS_INDEX);
    if index.exists() {
        std::fs::remove_file(&index).at(&index)?;
    }
    Ok(())
}

/// `generation_config.json` derived from a model config (the keys transformers copies).
pub fn generation_config(config: &Value) -> Value {
    let mut g = BTreeMap::new();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if !config[key].is_null() {
            g.insert(key.to_string(), config[key].clone());
        }
    }
    g.insert("_from_model_config".to_string(), Value::Bool(true));
    serde_json::to_value(g).expect("a map of JSON values serialises")
}

/// `config` with `dtype` set to `kind` (and `torch_dtype` too where the file had that key).
pub fn with_dtype(config: &Value, kind: Kind) -> Value {
    let mut c = config.clone();
    if let Some(obj) = c.as_object_mut() {
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), kind_name(kind).into());
        }
        obj.insert("dtype".into(), kind_name(kind).into());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rope_spellings() {
        let p = Path::new("config.json");
        let v5 = json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let v4 = json!({"rope_theta": 5e5, "rope_scaling": {"type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        assert_eq!(rope_config(p, &v5, 1e4).unwrap(), rope_config(p, &v4, 1e4).unwrap());
        let plain = json!({"rope_scaling": null});
        assert_eq!(rope_config(p, &plain, 1e4).unwrap(), (1e4, RopeScaling::None));
        let yarn = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        assert!(rope_config(p, &yarn, 1e4).unwrap_err().to_string().contains("yarn"));
    }

    #[test]
    fn dtype_spellings() {
        assert_eq!(config_kind(&json!({"torch_dtype": "bfloat16"})), Some(Kind::BFloat16));
        assert_eq!(config_kind(&json!({"dtype": "float16"})), Some(Kind::Half));
        let c = with_dtype(&json!({"torch_dtype": "bfloat16"}), Kind::Float);
        assert_eq!(c, json!({"torch_dtype": "float32", "dtype": "float32"}));
    }
}
