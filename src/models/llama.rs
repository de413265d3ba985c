//! The Llama family of decoders: Llama (1, 2, 3.x), Mistral and Qwen2, loaded from Hugging
//! Face directories.
//!
//! Pre-RMSNorm blocks, grouped-query attention (`num_key_value_heads` ≤ `num_attention_heads`,
//! an explicit `head_dim` where the config has one), rotary position embeddings in the
//! rotate-half layout (`rope_theta`; `rope_scaling` `linear` and `llama3`), SiLU-gated MLP
//! (`down(silu(gate(x)) · up(x))`), tied or untied output embeddings (`tie_word_embeddings`).
//! The variants differ only in biases and attention windows:
//! - Llama: `attention_bias` (q, k, v, o) and `mlp_bias` (gate, up, down), both usually false;
//! - Qwen2: q, k, v always have biases, o does not; a sliding window only with
//!   `use_sliding_window` (on the layers `layer_types` marks, else from `max_window_layers` on);
//! - Mistral: `sliding_window` on every layer: a query sees the `sliding_window` most recent
//!   positions including itself. Shorter sequences never notice it; longer ones (and the KV
//!   cache beyond it) get an explicit mask, so the window is implemented, not ignored.
//!
//! Field and VarStore names are the HF weight names (`model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.q_proj.weight`, …, `lm_head.weight`), so loading is name for
//! name. Attention is libtorch's `scaled_dot_product_attention` with `enable_gqa`.
//!
//! References: Touvron et al. 2023 (Llama, Llama 2), Meta 2024 (Llama 3), Jiang et al. 2023
//! (Mistral 7B), Qwen2 technical report 2024; transformers `modeling_llama.py`,
//! `modeling_mistral.py`, `modeling_qwen2.py`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::hf::{self, Route};
use super::layers::{embedding, Linear};
use super::shared::{attention_mask, cache_append, padded_attention_mask, KvCache, RmsNorm, Rope, RopeScaling};
use super::NamedLinear;
use crate::error::{Error, Result};

/// The `model_type`s this file implements.
pub const MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// `config.json` as written by transformers (v4 and v5); unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct ConfigFile {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    attention_dropout: Option<f64>,
    initializer_range: Option<f64>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

/// The resolved architecture: every default filled in, per-family rules applied.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); equal to `num_attention_heads` for multi-head attention.
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o (Llama's `attention_bias` only).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub attention_dropout: f64,
    pub initializer_range: f64,
    /// The attention window of each layer (`None`: full causal attention).
    pub layer_windows: Vec<Option<usize>>,
}

impl LlamaConfig {
    /// Resolves a `config.json` (`path` names it in errors).
    pub fn from_hf_json(path: &Path, value: &Value) -> Result<LlamaConfig> {
        let f: ConfigFile = hf::parse_config(path, value)?;
        let bad = |msg: String| Error::model(path, msg);
        if !MODEL_TYPES.contains(&f.model_type.as_str()) {
            return Err(bad(format!("model_type {:?} is not one of {MODEL_TYPES:?}", f.model_type)));
        }
        if let Some(act) = f.hidden_act.as_deref().filter(|a| !matches!(*a, "silu" | "swish")) {
            return Err(bad(format!("hidden_act {act:?} is not supported (silu)")));
        }
        let heads = f.num_attention_heads;
        let kv_heads = f.num_key_value_heads.unwrap_or(heads);
        let sizes = [
            ("vocab_size", f.vocab_size),
            ("hidden_size", f.hidden_size),
            ("intermediate_size", f.intermediate_size),
            ("num_hidden_layers", f.num_hidden_layers),
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
        ];
        hf::check_positive(path, &sizes)?;
        if heads % kv_heads != 0 {
            return Err(bad(format!("num_attention_heads: {heads} is not a multiple of num_key_value_heads = {kv_heads}")));
        }
        if f.head_dim.is_none() && f.hidden_size % heads != 0 {
            return Err(bad(format!("hidden_size: {} is not divisible by num_attention_heads = {heads} (and there is no head_dim)", f.hidden_size)));
        }
        let head_dim = f.head_dim.unwrap_or(f.hidden_size / heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!("head_dim: {head_dim} must be even and at least 2 for RoPE")));
        }
        if let Some(eps) = f.rms_norm_eps.filter(|e| !(*e > 0.0 && e.is_finite())) {
            return Err(bad(format!("rms_norm_eps: {eps} is not a positive number")));
        }
        if f.sliding_window == Some(0) && f.model_type != "qwen2" {
            return Err(bad("sliding_window: must be at least 1 (or null for full attention)".into()));
        }
        let (rope_theta, rope_scaling) = hf::rope_config(path, value, 10_000.0)?;
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            return Err(bad(format!("rope_theta: {rope_theta} is not a positive number")));
        }
        let qwen2 = f.model_type == "qwen2";
        let attention_bias = f.model_type == "llama" && f.attention_bias.unwrap_or(false);
        Ok(LlamaConfig {
            layer_windows: layer_windows(&f),
            model_type: f.model_type,
            vocab_size: f.vocab_size,
            hidden_size: f.hidden_size,
            intermediate_size: f.intermediate_size,
            num_hidden_layers: f.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: f.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: f.tie_word_embeddings.unwrap_or(false),
            qkv_bias: qwen2 || attention_bias,
            o_bias: attention_bias,
            mlp_bias: f.mlp_bias.unwrap_or(false),
            rope_theta,
            rope_scaling,
            attention_dropout: f.attention_dropout.unwrap_or(0.0),
            initializer_range: f.initializer_range.unwrap_or(0.02),
        })
    }
}

impl LlamaConfig {
    /// Parameters of the model (tied embeddings counted once): what memory checks size.
    pub fn num_params(&self) -> u128 {
        let (v, h, i, l) = (self.vocab_size as u128, self.hidden_size as u128, self.intermediate_size as u128, self.num_hidden_layers as u128);
        let (q, kv) = ((self.num_attention_heads * self.head_dim) as u128, (self.num_key_value_heads * self.head_dim) as u128);
        let embeddings = if self.tie_word_embeddings { v * h } else { 2 * v * h };
        // Per layer: q, k, v, o projections, the gated MLP, two RMSNorms (biases ignored).
        embeddings + l * (2 * h * q + 2 * h * kv + 3 * h * i + 2 * h) + h
    }
}

/// Per-layer attention windows, as transformers decides them for each family.
fn layer_windows(f: &ConfigFile) -> Vec<Option<usize>> {
    let n = f.num_hidden_layers;
    match f.model_type.as_str() {
        "mistral" => vec![f.sliding_window; n],
        "qwen2" if f.use_sliding_window == Some(true) && f.sliding_window.is_some() => (0..n)
            .map(|i| {
                let sliding = match &f.layer_types {
                    Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
                    None => i >= f.max_window_layers.unwrap_or(28),
                };
                sliding.then_some(f.sliding_window).flatten()
            })
            .collect(),
        _ => vec![None; n],
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    /// Sliding attention window of this layer.
    window: Option<usize>,
}

/// The causal LM (`LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM`). Its
/// VarStore holds the parameters under their HF names.
pub struct Llama {
    pub vs: VarStore,
    pub cfg: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when tied to `embed_tokens`, or in a backbone ([`Llama::backbone_as`]).
    lm_head: Option<Linear>,
    rope: Rope,
}

impl Llama {
    /// A freshly initialised fp32 model (N(0, initializer_range), norms 1, biases 0).
    pub fn new(cfg: &LlamaConfig, device: Device) -> Llama {
        Llama::new_as(cfg, device, Kind::Float)
    }

    /// [`Llama::new`] with every weight allocated in `kind` from the start: a bf16 model of
    /// 8 B parameters takes 16 GB on the device, never 32 GB of fp32 first.
    pub fn new_as(cfg: &LlamaConfig, device: Device, kind: Kind) -> Llama {
        Llama::build(cfg, device, kind, !cfg.tie_word_embeddings)
    }

    /// The model without its output layer (`LlamaModel`, the backbone of
    /// `*ForSequenceClassification`): only [`Llama::forward_hidden`] is meaningful, and an
    /// untied checkpoint's `lm_head` (vocabulary × hidden) is never allocated.
    pub fn backbone_as(cfg: &LlamaConfig, device: Device, kind: Kind) -> Llama {
        Llama::build(cfg, device, kind, false)
    }

    fn build(cfg: &LlamaConfig, device: Device, kind: Kind, lm_head: bool) -> Llama {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let m = vs.root() / "model";
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let (q_out, kv_out) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let embed_tokens = embedding(&m / "embed_tokens", cfg.vocab_size, h, std);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = &m / "layers" / i;
                let (a, f) = (&p / "self_attn", &p / "mlp");
                DecoderLayer {
                    input_layernorm: RmsNorm::new(&p / "input_layernorm", h, cfg.rms_norm_eps),
                    self_attn: Attention {
                        q_proj: Linear::new(&a / "q_proj", h, q_out, cfg.qkv_bias, std),
                        k_proj: Linear::new(&a / "k_proj", h, kv_out, cfg.qkv_bias, std),
                        v_proj: Linear::new(&a / "v_proj", h, kv_out, cfg.qkv_bias, std),
                        o_proj: Linear::new(&a / "o_proj", q_out, h, cfg.o_bias, std),
                    },
                    post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", h, cfg.rms_norm_eps),
                    mlp: Mlp {
                        gate_proj: Linear::new(&f / "gate_proj", h, cfg.intermediate_size, cfg.mlp_bias, std),
                        up_proj: Linear::new(&f / "up_proj", h, cfg.intermediate_size, cfg.mlp_bias, std),
                        down_proj: Linear::new(&f / "down_proj", cfg.intermediate_size, h, cfg.mlp_bias, std),
                    },
                    window: cfg.layer_windows.get(i).copied().flatten(),
                }
            })
            .collect();
        let norm = RmsNorm::new(&m / "norm", h, cfg.rms_norm_eps);
        let lm_head = lm_head.then(|| Linear::new(vs.root() / "lm_head", h, cfg.vocab_size, false, std));
        let rope = Rope::new(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling, device);
        Llama { vs, cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, rope }
    }

    /// Loads `config.json` and the weights of an HF directory into a model of dtype `kind`
    /// (the file's tensors are converted). A tied checkpoint that still carries
    /// `lm_head.weight` and old `rotary_emb.inv_freq` buffers are accepted and ignored.
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind) -> Result<Llama> {
        let (path, value) = hf::read_config(dir)?;
        let cfg = LlamaConfig::from_hf_json(&path, &value)?;
        hf::check_model_fits(&path, device, cfg.num_params(), cfg.vocab_size, ("hidden_size", cfg.hidden_size))?;
        let model = Llama::new_as(&cfg, device, kind);
        model.load_weights(dir)?;
        Ok(model)
    }

    /// Copies the weights of `dir` into this model (names checked, dtypes converted).
    pub fn load_weights(&self, dir: &Path) -> Result<()> {
        let tied = self.cfg.tie_word_embeddings;
        hf::load_weights(dir, self.vs.variables(), |name| {
            if (tied && name == "lm_head.weight") || name.ends_with(".rotary_emb.inv_freq") {
                Route::Ignore
            } else {
                Route::Param(name.to_string())
            }
        })
    }

    /// Parameters under their HF names, sorted by name (also the file layout: no transposes).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    /// Logits `(B, T, V)` for token ids `(B, T)`. With a cache, the `T` ids follow the cached
    /// positions (prefill when it is empty, then any number of tokens per call). No padding
    /// mask: pad on the right (its positions never influence earlier ones under the causal
    /// mask) and give pad labels -100.
    pub fn forward(&self, ids: &Tensor, train: bool, mut cache: Option<&mut KvCache>) -> Tensor {
        let x = self.forward_hidden(ids, None, train, cache.as_deref_mut());
        self.lm_head(&x, train)
    }

    /// Logits `(…, V)` of hidden states `(…, H)`: `lm_head`, or the tied token embeddings.
    pub fn lm_head(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward_t(x, train),
            None => x.linear::<Tensor>(&self.embed_tokens, None), // tied
        }
    }

    /// The final normed hidden states `(B, T, hidden_size)` (`LlamaModel`'s
    /// `last_hidden_state`). `padding` `(B, P+T)` (transformers' `attention_mask`, nonzero =
    /// real token) masks padding keys, window included ([`padded_attention_mask`]); `None` =
    /// causal attention only, which right padding does not need. Positions are `0..T` whatever
    /// the padding, as in transformers.
    pub fn forward_hidden(&self, ids: &Tensor, padding: Option<&Tensor>, train: bool, mut cache: Option<&mut KvCache>) -> Tensor {
        let (_b, t) = ids.size2().expect("token ids are (B, T)");
        let past = cache.as_ref().map_or(0, |c| c.len) as i64;
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false); // (B, T, C)
        let (cos, sin) = self.rope.cos_sin(past, t, x.kind()); // (T, hd)
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.layers.len(), || None);
        }
        // One mask per distinct attention window.
        let mut masks: Vec<(Option<usize>, (Option<Tensor>, bool))> = Vec::new();
        for layer in &self.layers {
            if !masks.iter().any(|(w, _)| *w == layer.window) {
                let mask = match padding {
                    Some(m) => (Some(padded_attention_mask(m, t, past, layer.window)), false),
                    None => attention_mask(t, past, layer.window, x.device()),
                };
                masks.push((layer.window, mask));
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let (_, (mask, causal)) = masks.iter().find(|(w, _)| *w == layer.window).expect("a mask per window");
            let h = layer.input_layernorm.forward(&x);
            x = &x + self.attn(layer, &h, (&cos, &sin), (mask.as_ref(), *causal), train, slot);
            let h = layer.post_attention_layernorm.forward(&x);
            x = &x + Self::mlp(&layer.mlp, &h, train);
        }
        if let Some(c) = cache {
            c.len += t as usize;
        }
        self.norm.forward(&x)
    }

    fn attn(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        (mask, causal): (Option<&Tensor>, bool),
        train: bool,
        slot: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (b, t, _c) = x.size3().expect("activations are (B, T, C)");
        let a = &layer.self_attn;
        let (nh, nkv, hd) = (self.cfg.num_attention_heads as i64, self.cfg.num_key_value_heads as i64, self.cfg.head_dim as i64);
        let heads = |y: Tensor, n: i64| y.view([b, t, n, hd]).transpose(1, 2); // (B, n, T, hd)
        let q = Rope::apply(&heads(a.q_proj.forward_t(x, train), nh), cos, sin);
        let k = Rope::apply(&heads(a.k_proj.forward_t(x, train), nkv), cos, sin);
        let v = heads(a.v_proj.forward_t(x, train), nkv);
        let (k, v) = match slot {
            Some(slot) => cache_append(slot, k, v), // (B, nkv, P+T, hd)
            None => (k, v),
        };
        let p = if train { self.cfg.attention_dropout } else { 0.0 };
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, causal, None, nkv != nh); // (B, nh, T, hd)
        a.o_proj.forward_t(&y.transpose(1, 2).contiguous().view([b, t, nh * hd]), train)
    }

    /// `down(silu(gate(x)) · up(x))`; `train` switches the LoRA adapters' dropout on.
    fn mlp(mlp: &Mlp, x: &Tensor, train: bool) -> Tensor {
        let gated = mlp.gate_proj.forward_t(x, train).silu() * mlp.up_proj.forward_t(x, train);
        mlp.down_proj.forward_t(&gated, train)
    }

    /// Every linear layer with its HF module path (none is a Conv1D).
    pub fn linears_mut(&mut self) -> Vec<NamedLinear<'_>> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let Attention { q_proj, k_proj, v_proj, o_proj } = &mut layer.self_attn;
            let Mlp { gate_proj, up_proj, down_proj } = &mut layer.mlp;
            let p = format!("model.layers.{i}");
            for (name, linear) in [("self_attn.q_proj", q_proj), ("self_attn.k_proj", k_proj), ("self_attn.v_proj", v_proj), ("self_attn.o_proj", o_proj)] {
                out.push(NamedLinear { name: format!("{p}.{name}"), linear, fan_in_fan_out: false });
            }
            for (name, linear) in [("mlp.gate_proj", gate_proj), ("mlp.up_proj", up_proj), ("mlp.down_proj", down_proj)] {
                out.push(NamedLinear { name: format!("{p}.{name}"), linear, fan_in_fan_out: false });
            }
        }
        if let Some(linear) = self.lm_head.as_mut() {
            out.push(NamedLinear { name: "lm_head".into(), linear, fan_in_fan_out: false });
        }
        out
    }

    /// A model like this one with `vocab` token rows (see [`super::resize_rows`]); all other
    /// weights copied. Same device and dtype; every parameter trainable.
    pub fn resized(&self, vocab: usize) -> Result<Llama> {
        let mut cfg = self.cfg.clone();
        cfg.vocab_size = vocab;
        let mut fresh = Llama::new(&cfg, self.vs.device());
        fresh.vs.set_kind(self.embed_tokens.kind());
        let mut vars: HashMap<String, Tensor> = fresh.vs.variables();
        for (name, t) in self.named_parameters() {
            let mut var = vars.remove(&name).ok_or_else(|| Error::Input(format!("resize: no parameter {name}")))?;
            let t = if name == "model.embed_tokens.weight" || name == "lm_head.weight" { super::resize_rows(&t, vocab) } else { t };
            tch::no_grad(|| var.copy_(&t));
        }
        Ok(fresh)
    }
}
