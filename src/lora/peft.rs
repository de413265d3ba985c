//! The PEFT adapter directory: `adapter_config.json` + `adapter_model.safetensors`, written so
//! that `PeftModel.from_pretrained(base, dir)` (peft 0.21) loads it with no missing or
//! unexpected keys, and read whether PEFT or rankforge wrote it. Unlike PEFT, a key that does
//! not belong to the model (a wrong prefix, an untargeted module) or a targeted module without
//! its keys is an error naming the keys, never an adapter that silently does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::{adapter_parameters, freeze, peft_key, weight_dims, LoraConfig, LoraLayer, NamedLinears, TargetModules, ALL_LINEAR};
use crate::error::{Error, IoContext, Result};
use crate::models::NamedLinear;

/// File name of the adapter's configuration.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File name of the adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// What [`load_adapter`] found.
#[derive(Debug, Clone)]
pub struct LoadedAdapter {
    /// The adapter's recipe, fit to save it again with [`save_adapter`]. Targets PEFT would
    /// read as a regular expression become the list of adapted module paths.
    pub config: LoraConfig,
    /// The adapted module paths, sorted.
    pub modules: Vec<String>,
    /// `base_model_name_or_path` of the config, if any.
    pub base_model_name_or_path: Option<String>,
    /// `task_type` of the config (`CAUSAL_LM`, …), if any.
    pub task_type: Option<String>,
    /// PEFT's `modules_to_save` (e.g. a classifier head): the matching linear layers were
    /// loaded whole from the adapter file (they stay frozen like the rest of the base).
    pub modules_to_save: Vec<String>,
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (F32, PEFT's key
/// names) for the adapters attached to `linears`. `cfg` must be the recipe they were made
/// with (their rank and scaling are checked against it); `task_type` is PEFT's (`CAUSAL_LM`).
pub fn save_adapter(
    dir: &Path,
    linears: &[NamedLinear<'_>],
    cfg: &LoraConfig,
    base_model_name_or_path: Option<&str>,
    task_type: &str,
) -> Result<()> {
    save_adapter_with_modules(dir, linears, cfg, base_model_name_or_path, task_type, &[])
}

/// Whether PEFT saves the module at `path` whole for `modules_to_save` (PEFT's rule: the path
/// ends with a name — plainly, so `"classifier"` also selects DistilBERT's `pre_classifier`).
fn saved_whole(modules_to_save: &[String], path: &str) -> bool {
    modules_to_save.iter().any(|m| path.ends_with(m.as_str()))
}

/// [`save_adapter`] plus PEFT's `modules_to_save` (e.g. `["classifier"]` for a `SEQ_CLS`
/// adapter): the selected linear layers are written whole, `base_model.model.<path>.weight`
/// / `.bias`, as PEFT writes them.
pub fn save_adapter_with_modules(
    dir: &Path,
    linears: &[NamedLinear<'_>],
    cfg: &LoraConfig,
    base_model_name_or_path: Option<&str>,
    task_type: &str,
    modules_to_save: &[&str],
) -> Result<()> {
    let modules_to_save: Vec<String> = modules_to_save.iter().map(|m| m.to_string()).collect();
    let adapted: Vec<(&str, &LoraLayer, bool)> =
        linears.iter().filter_map(|n| n.linear.lora.as_ref().map(|a| (n.name.as_str(), a, n.fan_in_fan_out))).collect();
    if adapted.is_empty() {
        return Err(Error::Input(format!("{}: the model has no LoRA adapter to save", dir.display())));
    }
    for (path, a, _) in &adapted {
        if a.r() != cfg.r as i64 || (a.scaling - cfg.scaling()).abs() > 1e-12 * cfg.scaling() {
            return Err(Error::Input(format!(
                "{path}: adapter rank {} / scaling {} differ from the config's r = {} / scaling {}",
                a.r(),
                a.scaling,
                cfg.r,
                cfg.scaling()
            )));
        }
    }
    let targets: Vec<String> = match &cfg.target_modules {
        TargetModules::Names(names) => names.clone(),
        // PEFT itself writes the expanded names of an "all-linear" adapter.
        TargetModules::Preset(_) => {
            let leaves: BTreeSet<&str> = adapted.iter().map(|(p, ..)| super::leaf(p)).collect();
            leaves.into_iter().map(String::from).collect()
        }
    };
    let alpha = if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 { json!(cfg.alpha as i64) } else { json!(cfg.alpha) };
    let config = json!({
        "peft_type": "LORA",
        "r": cfg.r,
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "fan_in_fan_out": adapted.iter().any(|(_, _, f)| *f),
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "modules_to_save": if modules_to_save.is_empty() { Value::Null } else { json!(modules_to_save) },
        "inference_mode": true,
        "init_lora_weights": true,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tensors: Vec<(String, Tensor)> =
        adapter_parameters(linears).into_iter().map(|(n, t)| (n, t.detach().to_kind(Kind::Float))).collect();
    for NamedLinear { name: path, linear, .. } in linears.iter().filter(|n| saved_whole(&modules_to_save, &n.name)) {
        tensors.push((format!("base_model.model.{path}.weight"), linear.weight.detach()));
        if let Some(b) = &linear.bias {
            tensors.push((format!("base_model.model.{path}.bias"), b.detach()));
        }
    }
    crate::st::save(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
    crate::fsutil::write_json_atomic(&dir.join(ADAPTER_CONFIG), &config)
}

/// The fields of `adapter_config.json` rankforge reads; the others (PEFT has dozens) are
/// ignored unless they change the math, in which case [`check_supported`] refuses them.
#[derive(Deserialize)]
struct PeftConfigFile {
    peft_type: Option<String>,
    #[serde(default = "super::default_r")]
    r: usize,
    #[serde(default = "super::default_alpha")]
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    target_modules: Value,
    #[serde(default)]
    exclude_modules: Value,
    #[serde(default)]
    layers_to_transform: Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, Value>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, Value>,
    #[serde(default)]
    target_parameters: Value,
    #[serde(default)]
    trainable_token_indices: Value,
}

fn check_supported(c: &PeftConfigFile, path: &Path) -> Result<()> {
    let bad = |msg: String| Err(Error::model(path, msg));
    if c.peft_type.as_deref() != Some("LORA") {
        return bad(format!("peft_type {:?} is not \"LORA\"; only LoRA adapters are supported", c.peft_type));
    }
    if c.use_dora {
        return bad("use_dora = true (DoRA) is not supported".into());
    }
    if c.lora_bias || c.bias.as_deref().is_some_and(|b| b != "none") {
        return bad(format!("bias {:?} / lora_bias {}: only bias = \"none\" is supported", c.bias, c.lora_bias));
    }
    if !c.rank_pattern.is_empty() || !c.alpha_pattern.is_empty() {
        return bad("rank_pattern / alpha_pattern (per-module ranks) are not supported".into());
    }
    if !c.target_parameters.is_null() || !c.trainable_token_indices.is_null() {
        return bad("target_parameters / trainable_token_indices are not supported".into());
    }
    if c.r == 0 || !(c.lora_alpha > 0.0) || !(0.0..1.0).contains(&c.lora_dropout) {
        return bad(format!("r = {}, lora_alpha = {}, lora_dropout = {}: need r >= 1, alpha > 0, dropout in [0, 1)", c.r, c.lora_alpha, c.lora_dropout));
    }
    Ok(())
}

/// The module paths the config targets, when rankforge can evaluate its rule exactly (a list
/// of names or "all-linear", an optional list of exclusions, no layer filter); `None` when
/// PEFT would use a regular expression or a layer filter, in which case the file's keys decide.
fn expected_modules(c: &PeftConfigFile, paths: &[&str]) -> Option<BTreeSet<String>> {
    let targets = match &c.target_modules {
        Value::String(s) if s == ALL_LINEAR => TargetModules::Preset(s.clone()),
        Value::Array(items) => TargetModules::Names(items.iter().map(|v| v.as_str().map(String::from)).collect::<Option<_>>()?),
        _ => return None,
    };
    let excluded: Vec<String> = match &c.exclude_modules {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().map(|v| v.as_str().map(String::from)).collect::<Option<_>>()?,
        _ => return None,
    };
    if !c.layers_to_transform.is_null() {
        return None;
    }
    let excluded = TargetModules::Names(excluded);
    let set = paths.iter().filter(|p| targets.matches(p) && !excluded.matches(p)).map(|p| p.to_string()).collect();
    Some(set)
}

/// Splits `base_model.model.<path>.lora_{A,B}.weight` into `(path, is_a)`.
fn parse_key(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix("base_model.model.")?;
    if let Some(path) = rest.strip_suffix(".lora_A.weight") {
        return Some((path, true));
    }
    rest.strip_suffix(".lora_B.weight").map(|path| (path, false))
}

/// Loads a PEFT LoRA adapter directory (PEFT's or ours) onto `linears` and freezes their base
/// weights (the caller freezes the model's other parameters). Adapter tensors become fp32 on
/// `device`, trainable. Errors name the file and the offending keys: missing and unexpected
/// adapter keys, shapes that do not fit the layer, unsupported PEFT options.
pub fn load_adapter(linears: NamedLinears<'_>, dir: &Path, device: Device) -> Result<LoadedAdapter> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    if !cfg_path.exists() {
        return Err(Error::model(dir, format!("no {ADAPTER_CONFIG}: not a PEFT adapter directory")));
    }
    let text = std::fs::read_to_string(&cfg_path).at(&cfg_path)?;
    let c: PeftConfigFile = serde_json::from_str(&text).map_err(|e| Error::model(&cfg_path, format!("invalid adapter config: {e}")))?;
    check_supported(&c, &cfg_path)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    if !weights_path.exists() {
        let hint = if dir.join("adapter_model.bin").exists() { " (adapter_model.bin is a pickle: re-save it with safe_serialization=True)" } else { "" };
        return Err(Error::model(&weights_path, format!("not found{hint}")));
    }
    let tensors = crate::st::load(&weights_path)?;
    let paths: Vec<&str> = linears.iter().map(|n| n.name.as_str()).collect();
    let expected = expected_modules(&c, &paths);
    let mut found: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    let whole_names = c.modules_to_save.clone().unwrap_or_default();
    let mut whole: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> =
        paths.iter().filter(|p| saved_whole(&whole_names, p)).map(|p| (p.to_string(), (None, None))).collect();
    let mut unexpected = Vec::new();
    for (key, t) in tensors {
        let rest = key.strip_prefix("base_model.model.").unwrap_or("");
        let weight = rest.strip_suffix(".weight").filter(|p| whole.contains_key(*p));
        let bias = rest.strip_suffix(".bias").filter(|p| whole.contains_key(*p));
        if let Some(slot) = weight.or(bias).and_then(|p| whole.get_mut(p)) {
            if weight.is_some() { slot.0 = Some(t) } else { slot.1 = Some(t) }
            continue;
        }
        match parse_key(&key) {
            Some((path, is_a)) if paths.contains(&path) && expected.as_ref().is_none_or(|e| e.contains(path)) => {
                let slot = found.entry(path.to_string()).or_default();
                if is_a { slot.0 = Some(t) } else { slot.1 = Some(t) }
            }
            _ => unexpected.push(key),
        }
    }
    let modules: BTreeSet<String> = expected.unwrap_or_else(|| found.keys().cloned().collect());
    let mut missing = Vec::new();
    for m in &modules {
        let slot = found.get(m);
        if slot.is_none_or(|s| s.0.is_none()) {
            missing.push(peft_key(m, "lora_A"));
        }
        if slot.is_none_or(|s| s.1.is_none()) {
            missing.push(peft_key(m, "lora_B"));
        }
    }
    for NamedLinear { name: path, linear, .. } in &linears {
        let Some(slot) = whole.get(path) else { continue };
        if slot.0.is_none() {
            missing.push(format!("base_model.model.{path}.weight"));
        }
        if slot.1.is_none() && linear.bias.is_some() {
            missing.push(format!("base_model.model.{path}.bias"));
        }
    }
    if !missing.is_empty() || !unexpected.is_empty() {
        let example = paths.first().map_or(String::new(), |p| format!("; this model's keys look like {}", peft_key(p, "lora_A")));
        return Err(Error::model(&weights_path, format!(
            "adapter keys do not match the model (target_modules {}): missing keys [{}], unexpected keys [{}]{example}",
            c.target_modules, missing.join(", "), unexpected.join(", ")
        )));
    }
    let config = LoraConfig {
        r: c.r,
        alpha: c.lora_alpha,
        dropout: c.lora_dropout,
        target_modules: match &c.target_modules {
            Value::String(s) if s == ALL_LINEAR => TargetModules::Preset(s.clone()),
            Value::Array(_) if c.exclude_modules.is_null() && c.layers_to_transform.is_null() => {
                TargetModules::Names(c.target_modules.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect())
            }
            _ => TargetModules::Names(modules.iter().cloned().collect()),
        },
        use_rslora: c.use_rslora,
    };
    attach(linears, found, whole, &config, device, &weights_path)?;
    Ok(LoadedAdapter {
        config,
        modules: modules.into_iter().collect(),
        base_model_name_or_path: c.base_model_name_or_path,
        task_type: c.task_type,
        modules_to_save: whole_names,
    })
}

/// Checks every shape against its layer, then attaches the adapters and freezes the bases.
fn attach(
    linears: NamedLinears<'_>,
    mut found: BTreeMap<String, (Option<Tensor>, Option<Tensor>)>,
    whole: BTreeMap<String, (Option<Tensor>, Option<Tensor>)>,
    cfg: &LoraConfig,
    device: Device,
    file: &Path,
) -> Result<()> {
    let r = cfg.r as i64;
    for NamedLinear { name: path, linear, .. } in &linears {
        if let Some((w, b)) = whole.get(path) {
            let pairs = [(w, Some(&linear.weight), "weight"), (b, linear.bias.as_ref(), "bias")];
            for (t, var, what) in pairs {
                if let (Some(t), Some(var)) = (t, var) {
                    if t.size() != var.size() {
                        return Err(Error::model(file, format!("tensor base_model.model.{path}.{what}: shape {:?}, the model needs {:?}", t.size(), var.size())));
                    }
                }
            }
        }
        let Some((Some(a), Some(b))) = found.get(path) else { continue };
        let [d_out, d_in] = weight_dims(linear);
        for (key, t, want) in [(peft_key(path, "lora_A"), a, [r, d_in]), (peft_key(path, "lora_B"), b, [d_out, r])] {
            if t.size() != want {
                return Err(Error::model(file, format!("tensor {key}: shape {:?}, the model and r = {r} need {want:?}", t.size())));
            }
        }
        if linear.lora.is_some() {
            return Err(Error::Input(format!("{path} already has a LoRA adapter: merge or remove it first")));
        }
    }
    for NamedLinear { name: path, linear, .. } in linears {
        freeze(linear);
        if let Some((w, b)) = whole.get(&path) {
            tch::no_grad(|| {
                let pairs = [(w, Some(&mut linear.weight)), (b, linear.bias.as_mut())];
                for (t, var) in pairs {
                    if let (Some(t), Some(var)) = (t, var) {
                        var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
                    }
                }
            });
        }
        let Some((Some(a), Some(b))) = found.remove(&path) else { continue };
        let param = |t: Tensor| t.to_kind(Kind::Float).to_device(device).set_requires_grad(true);
        linear.lora = Some(LoraLayer { lora_a: param(a), lora_b: param(b), scaling: cfg.scaling(), dropout: cfg.dropout, enabled: true });
    }
    Ok(())
}
