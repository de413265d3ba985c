//! GPT-2 style decoder (the model trained from scratch by the `train` step).
//!
//! Pre-LayerNorm blocks, GELU (tanh approximation, GPT-2's `gelu_new`), learned positions, tied
//! input/output embeddings, causal `scaled_dot_product_attention` (flash/memory-efficient
//! kernels where libtorch has them), GPT-2 initialisation: N(0, 0.02) everywhere, residual
//! projections scaled by 1/sqrt(2·n_layer). Parameter names are GPT-2's Hugging Face names
//! (`transformer.h.0.attn.c_attn.weight`); the one unavoidable mapping is that HF stores the
//! Conv1D weights `[in, out]` while we keep `[out, in]` (see [`CONV1D`]). Pretrained HF GPT-2
//! directories load through [`Gpt::from_pretrained_as`] (fp32/fp16/bf16 files, single or
//! sharded, via [`super::hf`]). LoRA adapters ([`crate::lora`]) attach to the four linear
//! layers of each block through [`Gpt::linears_mut`].
//!
//! References: Radford et al. 2019 (GPT-2); karpathy/nanoGPT `model.py`;
//! transformers `modeling_gpt2.py`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::hf;
use super::layers::{embedding, LayerNorm, Linear};
use super::NamedLinear;
use crate::error::{Error, IoContext, Result};

/// HF GPT-2 weights stored as Conv1D `[in, out]`: transposed on export and import.
pub const CONV1D: [&str; 4] = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"];

/// The architecture, as in HF's `GPT2Config`.
#[derive(Debug, Clone, PartialEq)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Size of the learned position table: the longest context (`n_positions`).
    pub n_positions: usize,
    pub dropout: f64,
    pub bias: bool,
    pub layer_norm_eps: f64,
}

impl GptConfig {
    /// HF `config.json` for `GPT2LMHeadModel`.
    pub fn to_hf_json(&self, eos_id: Option<u32>) -> serde_json::Value {
        json!({
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": self.dropout,
            "bos_token_id": eos_id,
            "embd_pdrop": self.dropout,
            "eos_token_id": eos_id,
            "initializer_range": 0.02,
            "layer_norm_epsilon": self.layer_norm_eps,
            "model_type": "gpt2",
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_inner": null,
            "n_layer": self.n_layer,
            "n_positions": self.n_positions,
            "resid_pdrop": self.dropout,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "scale_attn_weights": true,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }

    /// Reads a GPT-2 `config.json` (old and new spellings).
    pub fn from_hf_json(path: &Path) -> Result<GptConfig> {
        let text = std::fs::read_to_string(path).at(path)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::model(path, format!("invalid JSON: {e}")))?;
        let bad = |msg: String| Error::model(path, msg);
        if v["model_type"] != "gpt2" {
            return Err(bad(format!("model_type {} is not \"gpt2\"", v["model_type"])));
        }
        // The first of `keys` present; it must be a positive integer (a size of the model).
        let int = |keys: &[&str]| -> Result<usize> {
            let (key, value) = keys
                .iter()
                .find_map(|k| Some((*k, v.get(*k).filter(|x| !x.is_null())?)))
                .ok_or_else(|| bad(format!("missing integer key {}", keys.join(" or "))))?;
            match value.as_u64() {
                Some(n) if n > 0 && n <= usize::MAX as u64 => Ok(n as usize),
                _ => Err(bad(format!("{key}: {value} is not a positive integer"))),
            }
        };
        let act = v["activation_function"].as_str().unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
            return Err(bad(format!("activation_function {act:?} is not supported (gelu_new)")));
        }
        if v["tie_word_embeddings"] == false {
            return Err(bad("tie_word_embeddings = false is not supported for gpt2".into()));
        }
        let n_inner = v["n_inner"].as_u64();
        let n_embd = int(&["n_embd", "hidden_size"])?;
        if n_inner.is_some_and(|n| n as usize != 4 * n_embd) {
            return Err(bad("n_inner other than 4·n_embd is not supported".into()));
        }
        let n_head = int(&["n_head", "num_attention_heads"])?;
        if n_embd % n_head != 0 {
            return Err(bad(format!("n_embd: {n_embd} is not divisible by n_head = {n_head}")));
        }
        let dropout = v["resid_pdrop"].as_f64().unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            return Err(bad(format!("resid_pdrop: {dropout} is not in [0, 1)")));
        }
        let layer_norm_eps = v["layer_norm_epsilon"].as_f64().unwrap_or(1e-5);
        if !(layer_norm_eps > 0.0 && layer_norm_eps.is_finite()) {
            return Err(bad(format!("layer_norm_epsilon: {layer_norm_eps} is not a positive number")));
        }
        Ok(GptConfig {
            vocab_size: int(&["vocab_size"])?,
            n_layer: int(&["n_layer", "num_hidden_layers"])?,
            n_head,
            n_embd,
            n_positions: int(&["n_positions", "n_ctx", "max_position_embeddings"])?,
            dropout,
            bias: true,
            layer_norm_eps,
        })
    }

    /// Parameters of the model (tied embeddings counted once): what memory checks size.
    pub fn num_params(&self) -> u128 {
        let (v, p, c, l) = (self.vocab_size as u128, self.n_positions as u128, self.n_embd as u128, self.n_layer as u128);
        // Per block: c_attn 3c² + 3c, attn c_proj c² + c, c_fc 4c² + 4c, mlp c_proj 4c² + c,
        // two LayerNorms 4c.
        (v + p) * c + l * (12 * c * c + 13 * c) + 2 * c
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

/// Keys and values of past positions (shared with the other decoders).
pub use super::shared::KvCache;

/// The model. Its VarStore holds the parameters under their HF names.
pub struct Gpt {
    pub vs: VarStore,
    pub cfg: GptConfig,
    wte: Tensor,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
    /// A freshly initialised model on `device` (seed tch's RNG first for reproducibility).
    pub fn new(cfg: &GptConfig, device: Device) -> Gpt {
        let vs = VarStore::new(device);
        let t = vs.root() / "transformer";
        let (c, bias, eps) = (cfg.n_embd, cfg.bias, cfg.layer_norm_eps);
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        let wte = embedding(&t / "wte", cfg.vocab_size, c, 0.02);
        let wpe = embedding(&t / "wpe", cfg.n_positions, c, 0.02);
        let h = (0..cfg.n_layer)
            .map(|i| {
                let p = &t / "h" / i;
                Block {
                    ln_1: LayerNorm::new(&p / "ln_1", c, bias, eps),
                    c_attn: Linear::new(&p / "attn" / "c_attn", c, 3 * c, bias, 0.02),
                    attn_proj: Linear::new(&p / "attn" / "c_proj", c, c, bias, proj_std),
                    ln_2: LayerNorm::new(&p / "ln_2", c, bias, eps),
                    c_fc: Linear::new(&p / "mlp" / "c_fc", c, 4 * c, bias, 0.02),
                    mlp_proj: Linear::new(&p / "mlp" / "c_proj", 4 * c, c, bias, proj_std),
                }
            })
            .collect();
        let ln_f = LayerNorm::new(&t / "ln_f", c, bias, eps);
        Gpt { vs, cfg: cfg.clone(), wte, wpe, h, ln_f }
    }

    /// Parameters under their HF names, sorted by name (the optimizer's and checkpoints' order).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    /// Zeroes the gradient of every attention key bias (`c_attn.bias[C..2C]`). Its true
    /// gradient is exactly zero: the key bias adds the same `q·b_k` to every score of a query's
    /// row, and softmax ignores a shift of its row. What backward computes is rounding noise,
    /// which AdamW (update ≈ lr·g/(√v + eps)) would turn into moves of up to ~1e-2·lr per step:
    /// harmless to the model's function, but different for every split of the batch, so runs on
    /// different numbers of ranks would drift apart in those weights. Call after backward.
    pub fn zero_null_grads(&self) {
        if !self.cfg.bias {
            return;
        }
        let c = self.cfg.n_embd as i64;
        tch::no_grad(|| {
            for (name, p) in self.vs.variables() {
                if name.ends_with(".attn.c_attn.bias") {
                    let g = p.grad();
                    if g.defined() {
                        let _ = g.narrow(0, c, c).zero_();
                    }
                }
            }
        });
    }

    /// Number of parameters (the tied embedding counted once).
    pub fn num_params(&self) -> i64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    /// The token embeddings `wte` `[V, C]`, also the tied LM head.
    pub fn wte(&self) -> &Tensor {
        &self.wte
    }

    /// Logits `(B, T, V)` for token ids `(B, T)`; with a cache, `T` new positions after the
    /// cached ones (prefill when the cache is empty, else one token at a time).
    pub fn forward(&self, idx: &Tensor, train: bool, cache: Option<&mut KvCache>) -> Tensor {
        let x = self.forward_hidden(idx, None, None, train, cache);
        x.linear::<Tensor>(&self.wte, None) // tied lm_head: (B, T, V)
    }

    /// The final normed hidden states `(B, T, C)` (`GPT2Model`'s `last_hidden_state`).
    /// `token_type_ids` `(B, T)`, when given, add their rows of `wte`, as GPT-2 does.
    /// `padding` `(B, P+T)` (transformers' `attention_mask`, nonzero = real token) masks
    /// padding keys ([`super::shared::padded_attention_mask`]); `None` = plain causal attention,
    /// which right padding does not need. Positions are `0..T` whatever the padding, as in
    /// transformers.
    pub fn forward_hidden(&self, idx: &Tensor, token_type_ids: Option<&Tensor>, padding: Option<&Tensor>, train: bool, mut cache: Option<&mut KvCache>) -> Tensor {
        let (_b, t) = idx.size2().expect("token ids are (B, T)");
        let past = cache.as_ref().map_or(0, |c| c.len);
        let pos = Tensor::arange_start(past as i64, past as i64 + t, (Kind::Int64, idx.device()));
        let mut x = Tensor::embedding(&self.wte, idx, -1, false, false) + Tensor::embedding(&self.wpe, &pos, -1, false, false);
        if let Some(tt) = token_type_ids {
            x = x + Tensor::embedding(&self.wte, tt, -1, false, false);
        }
        let mut x = x.dropout(self.cfg.dropout, train); // (B, T, C)
        let mask = padding.map(|m| super::shared::padded_attention_mask(m, t, past as i64, None));
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.h.len(), || None);
        }
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = &x + self.attn(block, &block.ln_1.forward(&x), mask.as_ref(), train, layer_cache);
            x = &x + self.mlp(block, &block.ln_2.forward(&x), train);
        }
        if let Some(c) = cache {
            c.len += t as usize;
        }
        self.ln_f.forward(&x)
    }

    fn attn(&self, blk: &Block, x: &Tensor, mask: Option<&Tensor>, train: bool, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Tensor {
        let (b, t, c) = x.size3().expect("activations are (B, T, C)");
        let (nh, hs) = (self.cfg.n_head as i64, (self.cfg.n_embd / self.cfg.n_head) as i64);
        let qkv = blk.c_attn.forward_t(x, train).split(c, 2); // 3 × (B, T, C)
        let heads = |t_: &Tensor| t_.view([b, t, nh, hs]).transpose(1, 2); // (B, nh, T, hs)
        let (q, mut k, mut v) = (heads(&qkv[0]), heads(&qkv[1]), heads(&qkv[2]));
        let mut causal = mask.is_none();
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                assert!(t == 1 || mask.is_some(), "cached attention takes one new token at a time");
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
                causal = false; // the single query may see every cached position
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let p = if train { self.cfg.dropout } else { 0.0 };
        let y = Tensor::scaled_dot_product_attention::<&Tensor>(&q, &k, &v, mask, p, causal, None, false);
        let y = y.transpose(1, 2).contiguous().view([b, t, c]); // (B, T, C)
        blk.attn_proj.forward_t(&y, train).dropout(self.cfg.dropout, train)
    }

    fn mlp(&self, blk: &Block, x: &Tensor, train: bool) -> Tensor {
        let h = blk.c_fc.forward_t(x, train).gelu("tanh"); // (B, T, 4C)
        blk.mlp_proj.forward_t(&h, train).dropout(self.cfg.dropout, train)
    }

    /// Attaches fresh LoRA adapters (see [`crate::lora::inject`]) and freezes every base
    /// parameter, so only the adapters train. Returns the adapted module paths.
    pub fn add_lora(&mut self, cfg: &crate::lora::LoraConfig, seed: u64) -> Result<Vec<String>> {
        let device = self.vs.device();
        let adapted = crate::lora::inject(self.linears_mut(), cfg, device, seed)?;
        self.vs.freeze();
        Ok(adapted)
    }

    /// Loads a PEFT adapter directory onto this model and freezes every base parameter.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<crate::lora::LoadedAdapter> {
        let device = self.vs.device();
        let loaded = crate::lora::load_adapter(self.linears_mut(), dir, device)?;
        self.vs.freeze();
        Ok(loaded)
    }

    /// Folds the adapters into the base weights and removes them (see [`crate::lora::merge`]).
    pub fn merge_lora(&mut self) -> Result<Vec<String>> {
        crate::lora::merge(self.linears_mut())
    }

    /// Switches the adapters on or off (off = the base model); returns how many there are.
    pub fn set_lora_enabled(&mut self, enabled: bool) -> usize {
        crate::lora::set_enabled(self.linears_mut(), enabled)
    }

    /// The adapter tensors under PEFT's names, sorted (what the optimizer trains).
    pub fn lora_parameters(&mut self) -> Vec<(String, Tensor)> {
        crate::lora::adapter_parameters(&self.linears_mut())
    }

    /// Every tensor that requires a gradient, base parameters (HF names) and adapters (PEFT
    /// names), sorted by name: after [`Gpt::add_lora`] only the adapters.
    pub fn trainable_parameters(&mut self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.named_parameters().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        out.extend(self.lora_parameters().into_iter().filter(|(_, t)| t.requires_grad()));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether any linear layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.h.iter().any(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj].iter().any(|l| l.lora.is_some()))
    }

    /// Mean next-token cross-entropy of windows `(B, T+1)`: inputs `[.., :T]`, targets
    /// `[.., 1:]`.
    pub fn loss(&self, windows: &Tensor, train: bool) -> Tensor {
        let t = windows.size()[1] - 1;
        let x = windows.narrow(1, 0, t);
        let y = windows.narrow(1, 1, t);
        let logits = self.forward(&x, train, None);
        let v = logits.size()[2];
        logits
            .view([-1, v])
            .cross_entropy_loss::<Tensor>(&y.reshape([-1]), None, tch::Reduction::Mean, -100, 0.0)
    }

    /// Parameters under their HF names, in HF layout (Conv1D transposed), sorted by name.
    /// A model without biases gets zero biases: GPT-2 always has them.
    pub fn hf_state_dict(&self) -> Vec<(String, Tensor)> {
        let vars = self.vs.variables();
        let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, t) in &vars {
            let t = t.detach().to_kind(Kind::Float);
            let t = if CONV1D.iter().any(|s| name.ends_with(s)) { t.tr().contiguous() } else { t };
            out.insert(name.clone(), t);
        }
        if !self.cfg.bias {
            for (name, t) in &vars {
                if let Some(stem) = name.strip_suffix(".weight") {
                    let n = t.size()[0]; // [out, in] linear or [dim] norm: the bias has `out`/`dim`
                    if !stem.ends_with("wte") && !stem.ends_with("wpe") {
                        out.insert(format!("{stem}.bias"), Tensor::zeros([n], (Kind::Float, Device::Cpu)));
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// Loads HF GPT-2 weights (with or without the `transformer.` prefix; the `attn.bias` /
    /// `attn.masked_bias` mask buffers and a tied `lm_head.weight` are ignored). Missing and
    /// unexpected keys are reported by name.
    pub fn load_hf_state_dict(&mut self, tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
        let mut vars = self.vs.variables();
        let mut unexpected = Vec::new();
        for (name, t) in tensors {
            let full = if name.starts_with("transformer.") || name == "lm_head.weight" { name.clone() } else { format!("transformer.{name}") };
            if full.ends_with(".attn.bias") || full.ends_with(".attn.masked_bias") || full == "lm_head.weight" {
                continue;
            }
            let Some(var) = vars.remove(&full) else {
                // A bias-free model reads its own export, whose biases are zero.
                if !self.cfg.bias && full.ends_with(".bias") && t.abs().max().double_value(&[]) == 0.0 {
                    continue;
                }
                unexpected.push(name);
                continue;
            };
            let t = if CONV1D.iter().any(|s| full.ends_with(s)) { t.tr() } else { t };
            if t.size() != var.size() {
                return Err(Error::model(path, format!("tensor {name}: shape {:?}, the config needs {:?}", t.size(), var.size())));
            }
            let mut var = var;
            tch::no_grad(|| var.copy_(&t.to_kind(var.kind())));
        }
        let mut missing: Vec<String> = vars.into_keys().collect();
        missing.sort();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(Error::model(path, format!("weights do not match the config: missing keys [{}], unexpected keys [{}]", missing.join(", "), unexpected.join(", "))));
        }
        Ok(())
    }

    /// Loads `config.json` + weights from an HF GPT-2 directory (also a rankforge checkpoint
    /// or `final/`) as fp32.
    pub fn from_pretrained(dir: &Path, device: Device) -> Result<Gpt> {
        Gpt::from_pretrained_as(dir, device, Kind::Float)
    }

    /// Loads an HF GPT-2 directory into a model of dtype `kind`: `model.safetensors` or
    /// sharded files (`model.safetensors.index.json`), fp32, fp16 or bf16 tensors.
    pub fn from_pretrained_as(dir: &Path, device: Device, kind: Kind) -> Result<Gpt> {
        let path = dir.join("config.json");
        let cfg = GptConfig::from_hf_json(&path)?;
        hf::check_model_fits(&path, device, cfg.num_params(), cfg.vocab_size, ("n_embd", cfg.n_embd))?;
        let mut model = Gpt::new(&cfg, device);
        model.vs.set_kind(kind);
        let (path, files) = hf::weight_files(dir)?;
        let mut tensors = Vec::new();
        for file in &files {
            tensors.extend(crate::st::load(file)?);
        }
        model.load_hf_state_dict(tensors, &path)?;
        Ok(model)
    }

    /// The linear layers under their HF module paths (`transformer.h.0.attn.c_attn`, …), all
    /// Conv1D in HF (`fan_in_fan_out` = true): what [`crate::lora::inject`] adapts. The tied
    /// `lm_head` is the `wte` embedding, not a linear layer, so "all-linear" never touches it.
    pub fn linears_mut(&mut self) -> Vec<NamedLinear<'_>> {
        let mut out = Vec::with_capacity(4 * self.h.len());
        for (i, b) in self.h.iter_mut().enumerate() {
            let Block { c_attn, attn_proj, c_fc, mlp_proj, .. } = b;
            for (name, linear) in [("attn.c_attn", c_attn), ("attn.c_proj", attn_proj), ("mlp.c_fc", c_fc), ("mlp.c_proj", mlp_proj)] {
                out.push(NamedLinear { name: format!("transformer.h.{i}.{name}"), linear, fan_in_fan_out: true });
            }
        }
        out
    }

    /// A model like this one with `vocab` rows in the (tied) token embedding (see
    /// [`super::resize_rows`]); all other weights copied. Same device and dtype.
    pub fn resized(&self, vocab: usize) -> Result<Gpt> {
        let cfg = GptConfig { vocab_size: vocab, ..self.cfg.clone() };
        let mut fresh = Gpt::new(&cfg, self.vs.device());
        fresh.vs.set_kind(self.wte.kind());
        let mut vars = fresh.vs.variables();
        for (name, t) in self.named_parameters() {
            let mut var = vars.remove(&name).ok_or_else(|| Error::Input(format!("resize: no parameter {name}")))?;
            let t = if name == "transformer.wte.weight" { super::resize_rows(&t, vocab) } else { t };
            tch::no_grad(|| var.copy_(&t));
        }
        Ok(fresh)
    }

    /// Writes `config.json`, `generation_config.json` and `model.safetensors` into `dir`: the
    /// base weights only. Attached LoRA adapters are not included: merge them first
    /// ([`crate::lora::merge`]) or save them as a PEFT adapter ([`crate::lora::save_adapter`]).
    pub fn save_pretrained(&self, dir: &Path, eos_id: Option<u32>) -> Result<()> {
        if self.has_lora() {
            tracing::warn!("{}: saving the base weights without the attached LoRA adapters (merge them to include them)", dir.display());
        }
        crate::fsutil::write_json_atomic(&dir.join("config.json"), &self.cfg.to_hf_json(eos_id))?;
        let gen = json!({"bos_token_id": eos_id, "eos_token_id": eos_id, "_from_model_config": true});
        crate::fsutil::write_json_atomic(&dir.join("generation_config.json"), &gen)?;
        crate::st::save(&dir.join("model.safetensors"), &self.hf_state_dict())
    }
}
