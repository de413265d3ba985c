//! LoRA adapters (Hu et al. 2021), interoperable with PEFT 0.21: the `[lora]` recipe section,
//! injection into a model's linear layers, merging, enabling/disabling, and (in [`peft`]) the
//! PEFT adapter directory. This is the "model (+LoRA)" step of the data flow: it runs after the
//! base model is loaded and before the optimizer is built over [`adapter_parameters`].
//!
//! ## The math
//! A targeted linear layer `y = x·Wᵀ + b` (`W: [out, in]`, frozen) gains two small matrices,
//! `A: [r, in]` and `B: [out, r]` (fp32, even on a bf16 base, as PEFT keeps them), and computes
//!
//! ```text
//! y = x·Wᵀ + b + (dropout(x)·Aᵀ·Bᵀ) · scaling,   scaling = alpha / r   (alpha / √r with rsLoRA)
//! ```
//!
//! `A` starts kaiming-uniform with `a = √5` (PEFT's `reset_lora_parameters`, the default of
//! `torch.nn.Linear`), i.e. U(−1/√in, 1/√in); `B` starts at zero, so the adapted model equals
//! the base model until the first update. Only `A` and `B` are trainable: `r·(in + out)`
//! parameters per layer instead of `in·out`. Merging folds the adapter into the base:
//! `W += (B·A)·scaling`. PEFT transposes that product for GPT-2's Conv1D layers
//! (`fan_in_fan_out`, weights stored `[in, out]`); rankforge keeps every weight `[out, in]`, so
//! it never transposes and only records `fan_in_fan_out` for the adapter config.
//!
//! ## The PEFT format
//! An adapter directory holds `adapter_config.json` (`peft_type: "LORA"`, `r`, `lora_alpha`,
//! `target_modules`, …) and `adapter_model.safetensors` with F32 tensors
//! `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and `.lora_B.weight` (`[out, r]`),
//! where `<module path>` is the layer's path in the Hugging Face task model
//! (`transformer.h.0.attn.c_attn` for GPT-2, `model.layers.0.self_attn.q_proj` for Llama).
//! PEFT loads a file with a wrong prefix without error and silently runs the base model; we
//! report missing and unexpected adapter keys by name instead.
//!
//! ## Targets
//! `target_modules` follows PEFT's rule: a module is adapted when its full path equals a name
//! or ends with `.name`. `"all-linear"` adapts every linear layer except the output layer
//! `lm_head` and a classification model's top-level head (`classifier`, `score`), as PEFT does
//! for `SEQ_CLS`. [`default_target_modules`] gives PEFT's per-family defaults.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::layers::Linear;
pub use crate::models::NamedLinear;

mod peft;
pub use peft::{load_adapter, save_adapter, save_adapter_with_modules, LoadedAdapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

/// A model's linear layers as `(HF module path, layer, fan_in_fan_out)`; `fan_in_fan_out` is
/// true for layers Hugging Face stores as Conv1D `[in, out]` (GPT-2).
pub type NamedLinears<'a> = Vec<NamedLinear<'a>>;

/// `[lora]`: parameter-efficient fine-tuning. Absent = full fine-tuning (every weight trains).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update `B·A`. Higher ranks can express more of the full fine-tuning update
    /// at the cost of `r·(in + out)` parameters per layer; 8–64 is usual (PEFT's default 8).
    #[serde(default = "default_r")]
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r`, so that changing `r` does not change
    /// the effective learning rate much. Commonly `alpha = r` or `2·r` (PEFT's default 8).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// `lora_dropout`: dropout on the adapter's input during training only (not on the base
    /// path). 0.05–0.1 regularises small data sets; 0 (the default) is fastest.
    #[serde(default)]
    pub dropout: f64,
    /// Which linear layers get adapters: a list of names, each matching a module whose full
    /// path equals it or ends with `.name` (PEFT's rule), e.g. `["c_attn"]` for GPT-2 or
    /// `["q_proj", "v_proj"]` for Llama (PEFT's defaults); or `"all-linear"` = every linear
    /// layer except the output layer `lm_head` (more capacity, as QLoRA recommends). Required:
    /// a name that matches no layer is an error, so a typo never trains nothing.
    pub target_modules: TargetModules,
    /// Rank-stabilised LoRA (Kalajdzievski 2023): scale by `alpha / √r` instead of `alpha / r`,
    /// which keeps higher ranks learning as fast as low ones.
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_r() -> usize {
    8
}

fn default_alpha() -> f64 {
    8.0
}

/// `target_modules`: a list of names or the preset `"all-linear"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    /// Only `"all-linear"` is accepted (PEFT would read another string as a regular
    /// expression; rankforge does not support those).
    Preset(String),
}

/// The preset that adapts every linear layer but the output layer.
pub const ALL_LINEAR: &str = "all-linear";

impl TargetModules {
    /// Whether the module at `path` is targeted (PEFT's `check_target_module_exists`).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            TargetModules::Names(names) => names.iter().any(|n| name_matches(n, path)),
            TargetModules::Preset(_) => leaf(path) != "lm_head" && !SEQ_CLS_HEAD_NAMES.contains(&path),
        }
    }
}

/// Top-level classification heads that `"all-linear"` leaves out (PEFT's `SEQ_CLS_HEAD_NAMES`).
pub const SEQ_CLS_HEAD_NAMES: [&str; 2] = ["score", "classifier"];

/// PEFT's default LoRA targets of a `model_type`
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`), for the families rankforge has.
pub fn default_target_modules(model_type: &str) -> Option<TargetModules> {
    let names: &[&str] = match model_type {
        "bert" => &["query", "value"],
        "distilbert" => &["q_lin", "v_lin"],
        "gpt2" => &["c_attn"],
        "llama" | "mistral" | "qwen2" => &["q_proj", "v_proj"],
        _ => return None,
    };
    Some(TargetModules::Names(names.iter().map(|n| n.to_string()).collect()))
}

fn name_matches(name: &str, path: &str) -> bool {
    path == name || path.strip_suffix(name).is_some_and(|head| head.ends_with('.'))
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

impl LoraConfig {
    /// The factor applied to `B·A`: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks the values; the error names the `lora.*` key.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.r == 0 {
            return Err(("lora.r", "must be at least 1".into()));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(("lora.alpha", format!("{} is not a positive number", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("lora.dropout", format!("{} is not in [0, 1)", self.dropout)));
        }
        match &self.target_modules {
            TargetModules::Names(names) if names.is_empty() || names.iter().any(|n| n.is_empty()) => {
                Err(("lora.target_modules", "needs at least one non-empty module name (or \"all-linear\")".into()))
            }
            TargetModules::Preset(s) if s != ALL_LINEAR => Err((
                "lora.target_modules",
                format!("{s:?} is not \"all-linear\"; give a list of module names (regular expressions are not supported)"),
            )),
            _ => Ok(()),
        }
    }
}

/// The adapter of one linear layer. Its tensors live outside the model's VarStore, so the base
/// model's save/load code never sees them.
#[derive(Debug)]
pub struct LoraLayer {
    /// `lora_A.weight`, `[r, in]`, fp32, trainable.
    pub lora_a: Tensor,
    /// `lora_B.weight`, `[out, r]`, fp32, trainable.
    pub lora_b: Tensor,
    /// `alpha / r` (or `alpha / √r`).
    pub scaling: f64,
    /// Dropout probability on the adapter's input in training.
    pub dropout: f64,
    /// When false the layer computes the base function only (DPO's reference model).
    pub enabled: bool,
}

impl LoraLayer {
    /// Rank of the adapter.
    pub fn r(&self) -> i64 {
        self.lora_a.size()[0]
    }

    /// `y + B(A(dropout(x)))·scaling`, computed in the adapter's dtype (fp32) and returned in
    /// `y`'s, as PEFT does.
    pub(crate) fn add_to(&self, y: Tensor, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.to_kind(self.lora_a.kind());
        if train && self.dropout > 0.0 {
            h = h.dropout(self.dropout, true);
        }
        let delta = h.linear::<Tensor>(&self.lora_a, None).linear::<Tensor>(&self.lora_b, None) * self.scaling;
        let kind = y.kind();
        (y + delta).to_kind(kind)
    }
}

/// Turns off gradients of a base layer's weight and bias.
pub(crate) fn freeze(linear: &Linear) {
    let _ = linear.weight.set_requires_grad(false);
    if let Some(b) = &linear.bias {
        let _ = b.set_requires_grad(false);
    }
}

/// Attaches fresh adapters to the layers `cfg.target_modules` selects and freezes the weights
/// of every layer given (the caller freezes the model's other parameters: embeddings, norms).
/// `A` is drawn from U(−1/√in, 1/√in) by a ChaCha generator seeded with `seed` (the same seed
/// gives the same adapters on every device), `B` is zero. Returns the adapted module paths.
/// Errors, before anything is changed: a target name that matches no layer (naming it and the
/// model's layer names), a layer that already has an adapter.
pub fn inject(linears: NamedLinears<'_>, cfg: &LoraConfig, device: Device, seed: u64) -> Result<Vec<String>> {
    cfg.validate().map_err(|(key, msg)| Error::Input(format!("{key}: {msg}")))?;
    check_targets(&linears, &cfg.target_modules)?;
    if let Some(NamedLinear { name: path, .. }) = linears.iter().find(|n| cfg.target_modules.matches(&n.name) && n.linear.lora.is_some()) {
        return Err(Error::Input(format!("{path} already has a LoRA adapter: merge or remove it first")));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut adapted = Vec::new();
    for NamedLinear { name: path, linear, .. } in linears {
        freeze(linear);
        if !cfg.target_modules.matches(&path) {
            continue;
        }
        let [d_out, d_in] = weight_dims(linear);
        let bound = 1.0 / (d_in as f64).sqrt(); // kaiming_uniform_(a=√5) on [r, in]
        let n = cfg.r * d_in as usize;
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let lora_a = Tensor::from_slice(&values).view([cfg.r as i64, d_in]).to_device(device);
        let lora_b = Tensor::zeros([d_out, cfg.r as i64], (Kind::Float, device));
        linear.lora = Some(LoraLayer {
            lora_a: lora_a.set_requires_grad(true),
            lora_b: lora_b.set_requires_grad(true),
            scaling: cfg.scaling(),
            dropout: cfg.dropout,
            enabled: true,
        });
        adapted.push(path);
    }
    Ok(adapted)
}

/// `[out, in]` of a linear layer's weight.
pub(crate) fn weight_dims(linear: &Linear) -> [i64; 2] {
    let s = linear.weight.size();
    [s[0], s[1]]
}

/// Every name of a target list must match some layer; "all-linear" must match at least one.
fn check_targets(linears: &NamedLinears<'_>, targets: &TargetModules) -> Result<()> {
    let paths: Vec<&str> = linears.iter().map(|n| n.name.as_str()).collect();
    let unmatched: Vec<&str> = match targets {
        TargetModules::Names(names) => {
            names.iter().map(String::as_str).filter(|n| !paths.iter().any(|p| name_matches(n, p))).collect()
        }
        TargetModules::Preset(p) if !paths.iter().any(|path| targets.matches(path)) => vec![p.as_str()],
        TargetModules::Preset(_) => Vec::new(),
    };
    if unmatched.is_empty() {
        return Ok(());
    }
    let leaves: BTreeSet<&str> = paths.iter().map(|p| leaf(p)).collect();
    let example = paths.first().copied().unwrap_or("(none)");
    Err(Error::Input(format!(
        "lora.target_modules: {unmatched:?} matches no linear layer of the model; its linear layers are named {} (full paths like {example})",
        leaves.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

/// The trainable adapter tensors under PEFT's names
/// (`base_model.model.<path>.lora_A.weight` / `.lora_B.weight`), sorted by name: what the
/// optimizer updates and what [`save_adapter`] writes.
pub fn adapter_parameters(linears: &[NamedLinear<'_>]) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for NamedLinear { name: path, linear, .. } in linears {
        if let Some(l) = &linear.lora {
            out.push((peft_key(path, "lora_A"), l.lora_a.shallow_clone()));
            out.push((peft_key(path, "lora_B"), l.lora_b.shallow_clone()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// PEFT's key of an adapter tensor: `base_model.model.<path>.<which>.weight`.
pub fn peft_key(path: &str, which: &str) -> String {
    format!("base_model.model.{path}.{which}.weight")
}

/// Enables or disables every attached adapter (disabled = the base model's function, e.g. the
/// reference model of DPO). Returns how many adapters there are.
pub fn set_enabled(linears: NamedLinears<'_>, enabled: bool) -> usize {
    let mut n = 0;
    for NamedLinear { linear, .. } in linears {
        if let Some(l) = &mut linear.lora {
            l.enabled = enabled;
            n += 1;
        }
    }
    n
}

/// Folds every adapter into its base weight, `W += (B·A)·scaling` (computed in fp32, added in
/// the weight's dtype; no transpose: rankforge keeps Conv1D weights `[out, in]`), and removes
/// the adapters. The weights stay frozen. Returns the merged module paths. A disabled adapter
/// is an error (merging it would change what the model computes): enable it first.
pub fn merge(linears: NamedLinears<'_>) -> Result<Vec<String>> {
    if let Some(NamedLinear { name: path, .. }) = linears.iter().find(|n| n.linear.lora.as_ref().is_some_and(|a| !a.enabled)) {
        return Err(Error::Input(format!("the adapter of {path} is disabled: enable adapters before merging")));
    }
    let mut merged = Vec::new();
    for NamedLinear { name: path, linear, .. } in linears {
        let Some(lora) = linear.lora.take() else { continue };
        tch::no_grad(|| {
            let delta = lora.lora_b.matmul(&lora.lora_a) * lora.scaling; // [out, in]
            let mut w = linear.weight.shallow_clone();
            let _ = w.g_add_(&delta.to_kind(w.kind()).to_device(w.device()));
        });
        merged.push(path);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;

    fn cfg(targets: TargetModules) -> LoraConfig {
        LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, target_modules: targets, use_rslora: false }
    }

    fn names(v: &[&str]) -> TargetModules {
        TargetModules::Names(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn peft_matching_rule() {
        let t = names(&["c_attn", "mlp.c_proj"]);
        assert!(t.matches("transformer.h.0.attn.c_attn"));
        assert!(t.matches("c_attn"));
        assert!(t.matches("transformer.h.1.mlp.c_proj"));
        assert!(!t.matches("transformer.h.1.attn.c_proj"));
        assert!(!t.matches("transformer.h.0.attn.xc_attn"), "a suffix must start at a dot");
        let all = TargetModules::Preset(ALL_LINEAR.into());
        assert!(all.matches("model.layers.0.mlp.down_proj"));
        assert!(!all.matches("lm_head"));
        assert!(!all.matches("classifier") && !all.matches("score"));
        assert!(all.matches("pre_classifier") && all.matches("bert.pooler.dense"));
        assert_eq!(default_target_modules("distilbert"), Some(names(&["q_lin", "v_lin"])));
        assert_eq!(default_target_modules("bert"), Some(names(&["query", "value"])));
        assert!(default_target_modules("t5").is_none());
    }

    fn nl<'a>(name: &str, linear: &'a mut Linear, fan_in_fan_out: bool) -> NamedLinear<'a> {
        NamedLinear { name: name.into(), linear, fan_in_fan_out }
    }

    #[test]
    fn inject_forward_merge_and_errors() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let mut a = Linear::new(&vs.root() / "a", 6, 5, true, 0.5);
        let mut b = Linear::new(&vs.root() / "b", 5, 3, false, 0.5);
        let x = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
        let base = a.forward_t(&x, false);
        let e = inject(vec![nl("x.a", &mut a, false), nl("x.b", &mut b, true)], &cfg(names(&["a", "q"])), Device::Cpu, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[\"q\"] matches no linear layer") && e.contains("named a, b"), "{e}");
        assert!(a.lora.is_none() && b.lora.is_none(), "nothing changes on error");
        let done = inject(vec![nl("x.a", &mut a, false), nl("x.b", &mut b, true)], &cfg(names(&["a"])), Device::Cpu, 1).unwrap();
        assert_eq!(done, ["x.a"]);
        assert!(!a.weight.requires_grad() && !b.weight.requires_grad());
        let l = a.lora.as_ref().unwrap();
        assert_eq!((l.lora_a.size(), l.lora_b.size()), (vec![2, 6], vec![5, 2]));
        assert!(l.lora_a.abs().max().double_value(&[]) <= 1.0 / 6f64.sqrt());
        assert!(l.lora_a.requires_grad());
        assert_eq!((a.forward_t(&x, false) - &base).abs().max().double_value(&[]), 0.0, "B = 0: the base function");
        let _ = tch::no_grad(|| a.lora.as_mut().unwrap().lora_b.normal_(0.0, 1.0));
        let adapted = a.forward_t(&x, false);
        assert!((&adapted - &base).abs().max().double_value(&[]) > 1e-2);
        set_enabled(vec![nl("x.a", &mut a, false)], false);
        assert_eq!((a.forward_t(&x, false) - &base).abs().max().double_value(&[]), 0.0);
        assert!(merge(vec![nl("x.a", &mut a, false)]).is_err(), "disabled adapters do not merge");
        set_enabled(vec![nl("x.a", &mut a, false)], true);
        assert_eq!(merge(vec![nl("x.a", &mut a, false)]).unwrap(), ["x.a"]);
        assert!(a.lora.is_none());
        assert!((a.forward_t(&x, false) - &adapted).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn adapters_stay_fp32_on_a_bf16_base() {
        tch::manual_seed(0);
        let mut vs = VarStore::new(Device::Cpu);
        let mut a = Linear::new(&vs.root() / "a", 8, 4, true, 0.5);
        vs.bfloat16();
        inject(vec![nl("a", &mut a, false)], &cfg(names(&["a"])), Device::Cpu, 3).unwrap();
        let l = a.lora.as_mut().unwrap();
        assert_eq!((l.lora_a.kind(), l.lora_b.kind()), (Kind::Float, Kind::Float));
        let _ = tch::no_grad(|| l.lora_b.fill_(0.1));
        let x = Tensor::randn([3, 8], (Kind::BFloat16, Device::Cpu));
        let y = a.forward_t(&x, false);
        assert_eq!(y.kind(), Kind::BFloat16, "the output keeps the base dtype");
        let want = a.weight.to_kind(Kind::Float);
        merge(vec![nl("a", &mut a, false)]).unwrap();
        assert_eq!(a.weight.kind(), Kind::BFloat16);
        assert!((a.weight.to_kind(Kind::Float) - want).abs().max().double_value(&[]) > 1e-3, "merged in place");
    }

    #[test]
    fn config_validation_and_scaling() {
        let mut c = cfg(TargetModules::Preset("q_.*".into()));
        assert!(c.validate().unwrap_err().1.contains("regular expressions are not supported"));
        c.target_modules = TargetModules::Preset(ALL_LINEAR.into());
        c.validate().unwrap();
        assert_eq!(c.scaling(), 2.0);
        c.use_rslora = true;
        assert!((c.scaling() - 4.0 / 2f64.sqrt()).abs() < 1e-12);
        c.r = 0;
        assert_eq!(c.validate().unwrap_err().0, "lora.r");
    }
}
