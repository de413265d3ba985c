//! BERT and DistilBERT encoders loaded from Hugging Face directories: token ids (+ padding
//! mask, + segment ids for BERT) → last hidden states `(B, T, H)`.
//!
//! Both are post-LayerNorm transformer encoders with learned absolute positions and
//! bidirectional attention: `h = LN(x + Attn(x))`, `y = LN(h + W₂·act(W₁·h))`, exact (erf)
//! GELU by default. BERT adds segment (`token_type`) embeddings and reads its LayerNorm eps from
//! `layer_norm_eps` (1e-12); DistilBERT has 6 layers of the same shape, no segments, and a fixed
//! eps of 1e-12. The two differ in names only, so one [`Encoder`] implements both, with the
//! per-family weight names in one table ([`BERT_NAMES`], [`DISTILBERT_NAMES`]); VarStore names
//! are the HF names (`bert.encoder.layer.0.attention.self.query.weight`,
//! `distilbert.transformer.layer.0.attention.q_lin.weight`).
//!
//! Loading accepts checkpoints of the bare model (`BertModel`: keys without the `bert.`
//! prefix) and of task models (`BertForMaskedLM`, `…ForSequenceClassification`, …), whose
//! heads (`cls.*`, `classifier.*`, `pre_classifier.*`, `vocab_*`, `qa_outputs.*`) are skipped
//! and logged at debug level (the classification heads live in [`super::heads`], the
//! masked-LM heads in [`super::mlm`]). BERT's pooler (`bert.pooler.dense`) is part of the
//! encoder when the checkpoint has one. Old TF-era `LayerNorm.gamma` / `.beta` names are read
//! as `weight` / `bias`. [`Encoder::save_pretrained`] writes what `BertModel` /
//! `DistilBertModel.save_pretrained` writes (keys without prefix).
//!
//! References: Devlin et al. 2019 (BERT), Sanh et al. 2019 (DistilBERT); transformers
//! `modeling_bert.py`, `modeling_distilbert.py`.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use serde_json::{json, Value};

use super::hf::{self, Route};
use super::layers::{embedding, LayerNorm, Linear};
use super::NamedLinear;
use crate::error::{Error, Result};

/// Which encoder family (decides the weight names and the config keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    DistilBert,
}

/// HF names of one family: prefix, embeddings, layer stem, the eight per-layer modules (q, k,
/// v, attention output, its norm, FFN in, FFN out, output norm), and the task-head prefixes
/// that are skipped.
pub struct Names {
    pub prefix: &'static str,
    pub layer_stem: &'static str,
    pub layer: [&'static str; 8],
    pub heads: &'static [&'static str],
}

pub const BERT_NAMES: Names = Names {
    prefix: "bert",
    layer_stem: "encoder.layer",
    layer: [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ],
    heads: &["cls.", "classifier.", "qa_outputs."],
};

pub const DISTILBERT_NAMES: Names = Names {
    prefix: "distilbert",
    layer_stem: "transformer.layer",
    layer: ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm"],
    heads: &["pre_classifier.", "classifier.", "vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "qa_outputs."],
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: tanh approximation.
    GeluTanh,
    Relu,
}

/// The resolved architecture of either family.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    /// Segment vocabulary (BERT; 0 for DistilBERT).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    /// Std of transformers' normal init (`initializer_range`, 0.02): new heads are drawn with it.
    pub initializer_range: f64,
}

#[derive(Deserialize)]
struct BertFile {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: Option<String>,
    max_position_embeddings: usize,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    position_embedding_type: Option<String>,
    hidden_dropout_prob: Option<f64>,
    attention_probs_dropout_prob: Option<f64>,
    initializer_range: Option<f64>,
}

#[derive(Deserialize)]
struct DistilBertFile {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    activation: Option<String>,
    max_position_embeddings: usize,
    dropout: Option<f64>,
    attention_dropout: Option<f64>,
    initializer_range: Option<f64>,
}

impl EncoderConfig {
    /// Resolves a BERT or DistilBERT `config.json` (`path` names it in errors).
    pub fn from_hf_json(path: &Path, value: &serde_json::Value) -> Result<EncoderConfig> {
        let act = |name: Option<&str>| -> Result<Activation> {
            Ok(match name.unwrap_or("gelu") {
                "gelu" => Activation::Gelu,
                "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
                "relu" => Activation::Relu,
                other => return Err(Error::model(path, format!("activation {other:?} is not supported (gelu, gelu_new, relu)"))),
            })
        };
        let cfg = match hf::model_type(path, value)? {
            "bert" => {
                let f: BertFile = hf::parse_config(path, value)?;
                if let Some(p) = f.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
                    return Err(Error::model(path, format!("position_embedding_type {p:?} is not supported (absolute)")));
                }
                EncoderConfig {
                    family: Family::Bert,
                    vocab_size: f.vocab_size,
                    hidden_size: f.hidden_size,
                    num_layers: f.num_hidden_layers,
                    num_heads: f.num_attention_heads,
                    intermediate_size: f.intermediate_size,
                    activation: act(f.hidden_act.as_deref())?,
                    max_position_embeddings: f.max_position_embeddings,
                    type_vocab_size: f.type_vocab_size.unwrap_or(2),
                    layer_norm_eps: f.layer_norm_eps.unwrap_or(1e-12),
                    hidden_dropout: f.hidden_dropout_prob.unwrap_or(0.1),
                    attention_dropout: f.attention_probs_dropout_prob.unwrap_or(0.1),
                    initializer_range: f.initializer_range.unwrap_or(0.02),
                }
            }
            "distilbert" => {
                let f: DistilBertFile = hf::parse_config(path, value)?;
                EncoderConfig {
                    family: Family::DistilBert,
                    vocab_size: f.vocab_size,
                    hidden_size: f.dim,
                    num_layers: f.n_layers,
                    num_heads: f.n_heads,
                    intermediate_size: f.hidden_dim,
                    activation: act(f.activation.as_deref())?,
                    max_position_embeddings: f.max_position_embeddings,
                    type_vocab_size: 0,
                    layer_norm_eps: 1e-12, // hard-coded in modeling_distilbert.py
                    hidden_dropout: f.dropout.unwrap_or(0.1),
                    attention_dropout: f.attention_dropout.unwrap_or(0.1),
                    initializer_range: f.initializer_range.unwrap_or(0.02),
                }
            }
            other => return Err(Error::model(path, format!("model_type {other:?} is not an encoder we support (bert, distilbert)"))),
        };
        // Keys as the family's config.json spells them, for the messages.
        let keys = match cfg.family {
            Family::Bert => ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings"],
            Family::DistilBert => ["vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_position_embeddings"],
        };
        let values = [cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.max_position_embeddings];
        let sizes: Vec<(&str, usize)> = keys.into_iter().zip(values).collect();
        hf::check_positive(path, &sizes)?;
        if cfg.hidden_size % cfg.num_heads != 0 {
            return Err(Error::model(path, format!("{}: {} is not a multiple of {} = {}", keys[1], cfg.hidden_size, keys[3], cfg.num_heads)));
        }
        if !(cfg.layer_norm_eps > 0.0 && cfg.layer_norm_eps.is_finite()) {
            return Err(Error::model(path, format!("layer_norm_eps: {} is not a positive number", cfg.layer_norm_eps)));
        }
        Ok(cfg)
    }

    /// Parameters of the encoder: what memory checks size.
    pub fn num_params(&self) -> u128 {
        let (v, h, i, l) = (self.vocab_size as u128, self.hidden_size as u128, self.intermediate_size as u128, self.num_layers as u128);
        let (p, t) = (self.max_position_embeddings as u128, self.type_vocab_size as u128);
        // Per layer: q, k, v, out (with biases), the FFN, two LayerNorms.
        (v + p + t + 2) * h + l * (4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h)
    }

    /// A `config.json` describing this architecture (for encoders built with [`Encoder::new`]).
    pub fn to_hf_json(&self) -> Value {
        let act = match self.activation {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
        };
        match self.family {
            Family::Bert => json!({
                "model_type": "bert", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
                "intermediate_size": self.intermediate_size, "hidden_act": act,
                "max_position_embeddings": self.max_position_embeddings, "type_vocab_size": self.type_vocab_size,
                "layer_norm_eps": self.layer_norm_eps, "hidden_dropout_prob": self.hidden_dropout,
                "attention_probs_dropout_prob": self.attention_dropout, "initializer_range": self.initializer_range,
            }),
            Family::DistilBert => json!({
                "model_type": "distilbert", "vocab_size": self.vocab_size, "dim": self.hidden_size,
                "n_layers": self.num_layers, "n_heads": self.num_heads, "hidden_dim": self.intermediate_size,
                "activation": act, "max_position_embeddings": self.max_position_embeddings,
                "dropout": self.hidden_dropout, "attention_dropout": self.attention_dropout,
                "initializer_range": self.initializer_range,
            }),
        }
    }

    pub fn names(&self) -> &'static Names {
        match self.family {
            Family::Bert => &BERT_NAMES,
            Family::DistilBert => &DISTILBERT_NAMES,
        }
    }
}

/// One encoder layer, fields in the order of [`Names::layer`].
#[derive(Debug)]
struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    out_norm: LayerNorm,
}

/// A BERT or DistilBERT encoder. Its VarStore holds the parameters under their HF names.
pub struct Encoder {
    pub vs: VarStore,
    pub cfg: EncoderConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Option<Tensor>,
    /// `embeddings.LayerNorm`.
    emb_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    /// BERT's `pooler.dense` (tanh of it on the first token), when the checkpoint has one.
    pub pooler: Option<Linear>,
    /// The `config.json` it was loaded from (or [`EncoderConfig::to_hf_json`]).
    pub config: Value,
}

/// `p / "a" / "b"` for the dotted name `"a.b"` (VarStore path segments cannot contain dots).
pub(crate) fn sub<'a>(p: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let first = parts.next().expect("split yields at least one segment");
    parts.fold(p / first, |p, s| p / s)
}

impl Encoder {
    /// A freshly initialised fp32 encoder (N(0, 0.02), norms 1, biases 0), without pooler.
    pub fn new(cfg: &EncoderConfig, device: Device) -> Encoder {
        Encoder::build(cfg, cfg.to_hf_json(), false, device)
    }

    /// [`Encoder::new`] with a given `config.json` and, for BERT, a pooler when `pooler`.
    pub(crate) fn build(cfg: &EncoderConfig, config: Value, pooler: bool, device: Device) -> Encoder {
        let vs = VarStore::new(device);
        let names = cfg.names();
        let root = vs.root() / names.prefix;
        let (h, eps, std) = (cfg.hidden_size, cfg.layer_norm_eps, 0.02);
        let e = &root / "embeddings";
        let word_embeddings = embedding(&e / "word_embeddings", cfg.vocab_size, h, std);
        let position_embeddings = embedding(&e / "position_embeddings", cfg.max_position_embeddings, h, std);
        let token_type_embeddings = (cfg.type_vocab_size > 0).then(|| embedding(&e / "token_type_embeddings", cfg.type_vocab_size, h, std));
        let emb_norm = LayerNorm::new(&e / "LayerNorm", h, true, eps);
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = sub(&root, names.layer_stem) / i;
                let n = &names.layer;
                EncoderLayer {
                    query: Linear::new(sub(&p, n[0]), h, h, true, std),
                    key: Linear::new(sub(&p, n[1]), h, h, true, std),
                    value: Linear::new(sub(&p, n[2]), h, h, true, std),
                    attn_out: Linear::new(sub(&p, n[3]), h, h, true, std),
                    attn_norm: LayerNorm::new(sub(&p, n[4]), h, true, eps),
                    ffn_in: Linear::new(sub(&p, n[5]), h, cfg.intermediate_size, true, std),
                    ffn_out: Linear::new(sub(&p, n[6]), cfg.intermediate_size, h, true, std),
                    out_norm: LayerNorm::new(sub(&p, n[7]), h, true, eps),
                }
            })
            .collect();
        let pooler = (pooler && cfg.family == Family::Bert).then(|| Linear::new(&root / "pooler" / "dense", h, h, true, cfg.initializer_range));
        Encoder { vs, cfg: cfg.clone(), word_embeddings, position_embeddings, token_type_embeddings, emb_norm, layers, pooler, config }
    }

    /// Loads a BERT or DistilBERT directory (bare or task model) into an encoder of dtype `kind`.
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind) -> Result<Encoder> {
        let (path, value) = hf::read_config(dir)?;
        let cfg = EncoderConfig::from_hf_json(&path, &value)?;
        hf::check_model_fits(&path, device, cfg.num_params(), cfg.vocab_size, ("hidden_size", cfg.hidden_size))?;
        let (_, files) = hf::weight_files(dir)?;
        let pooler = cfg.family == Family::Bert && hf::tensor_shapes(&files)?.iter().any(|(n, _)| is_pooler(n));
        let mut model = Encoder::build(&cfg, value, pooler, device);
        model.vs.set_kind(kind);
        let names = cfg.names();
        hf::load_weights(dir, model.vs.variables(), |name| route(names, name, pooler))?;
        Ok(model)
    }

    /// Every linear layer under its module path in the task model (`bert.encoder.layer.0.
    /// attention.self.query`, `distilbert.transformer.layer.0.attention.q_lin`, `bert.pooler.
    /// dense`): what LoRA targets and names adapters after.
    pub fn linears_mut(&mut self) -> Vec<NamedLinear<'_>> {
        let names = self.cfg.names();
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let stem = format!("{}.{}.{i}", names.prefix, names.layer_stem);
            let n = &names.layer;
            let layers = [(n[0], &mut l.query), (n[1], &mut l.key), (n[2], &mut l.value), (n[3], &mut l.attn_out), (n[5], &mut l.ffn_in), (n[6], &mut l.ffn_out)];
            for (name, linear) in layers {
                out.push(NamedLinear { name: format!("{stem}.{name}"), linear, fan_in_fan_out: false });
            }
        }
        if let Some(p) = &mut self.pooler {
            out.push(NamedLinear { name: format!("{}.pooler.dense", names.prefix), linear: p, fan_in_fan_out: false });
        }
        out
    }

    /// The dtype of the parameters.
    pub fn kind(&self) -> Kind {
        self.word_embeddings.kind()
    }

    /// `embeddings.word_embeddings.weight` `[vocab, H]`: the masked-LM decoders are tied to it.
    pub fn word_embeddings(&self) -> &Tensor {
        &self.word_embeddings
    }

    /// `config.json` as it describes the model now: `architectures` = the bare model, dtype.
    pub fn config_json(&self) -> Value {
        let mut c = hf::with_dtype(&self.config, self.kind());
        let arch = match self.cfg.family {
            Family::Bert => "BertModel",
            Family::DistilBert => "DistilBertModel",
        };
        c["architectures"] = json!([arch]);
        c
    }

    /// The parameters as the bare model's files hold them: HF names without the family prefix
    /// when `!prefixed` (as `BertModel.save_pretrained` writes them), detached, sorted.
    pub fn hf_state_dict(&self, prefixed: bool) -> Vec<(String, Tensor)> {
        let prefix = format!("{}.", self.cfg.names().prefix);
        self.named_parameters()
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(n, t)| (if prefixed { n } else { n[prefix.len()..].to_string() }, t.detach()))
            .collect()
    }

    /// Writes `config.json` and `model.safetensors` into `dir`: a directory transformers'
    /// `AutoModel.from_pretrained` loads as `BertModel` / `DistilBertModel`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        hf::save_pretrained(dir, &self.config_json(), &self.hf_state_dict(false), None)
    }

    /// BERT's pooled output `tanh(pooler.dense(h[:, 0]))` of last hidden states `(B, T, H)`;
    /// `None` without a pooler.
    pub fn pool(&self, hidden: &Tensor, train: bool) -> Option<Tensor> {
        self.pooler.as_ref().map(|p| p.forward_t(&hidden.select(1, 0), train).tanh())
    }

    /// Parameters under their HF names, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    /// Last hidden states `(B, T, H)` for ids `(B, T)`. `attention_mask` `(B, T)`: nonzero for
    /// real tokens, 0 for padding (padded keys are never attended to; padded positions still
    /// get outputs, as in transformers; a mask without padding is dropped, as transformers 5
    /// drops it). `token_type_ids` `(B, T)` default to 0 (BERT only).
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, train: bool) -> Tensor {
        let (_b, t) = ids.size2().expect("token ids are (B, T)");
        let pos = Tensor::arange(t, (Kind::Int64, ids.device()));
        let mut x = Tensor::embedding(&self.word_embeddings, ids, -1, false, false)
            + Tensor::embedding(&self.position_embeddings, &pos, -1, false, false); // (B, T, H)
        if let Some(table) = &self.token_type_embeddings {
            x = match token_type_ids {
                Some(tt) => x + Tensor::embedding(table, tt, -1, false, false),
                None => x + table.get(0), // segment 0 everywhere
            };
        }
        let mut x = self.emb_norm.forward(&x).dropout(self.cfg.hidden_dropout, train);
        // A mask without padding masks nothing: dropped, as transformers 5 drops it for SDPA
        // (`create_bidirectional_mask`), so SDPA adds no mask and may take its unmasked kernels.
        let mask = attention_mask.map(|m| m.ne(0)).filter(|m| m.all().int64_value(&[]) == 0);
        let mask = mask.map(|m| m.unsqueeze(1).unsqueeze(1)); // (B, 1, 1, T) bool
        for layer in &self.layers {
            let a = self.attn(layer, &x, mask.as_ref(), train).dropout(self.cfg.hidden_dropout, train);
            let h = layer.attn_norm.forward(&(&x + a));
            let f = self.act(&layer.ffn_in.forward_t(&h, train));
            let f = layer.ffn_out.forward_t(&f, train).dropout(self.cfg.hidden_dropout, train);
            x = layer.out_norm.forward(&(&h + f));
        }
        x
    }

    fn attn(&self, layer: &EncoderLayer, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, t, c) = x.size3().expect("activations are (B, T, H)");
        let nh = self.cfg.num_heads as i64;
        let heads = |y: Tensor| y.view([b, t, nh, c / nh]).transpose(1, 2); // (B, nh, T, hd)
        let (q, k, v) = (heads(layer.query.forward_t(x, train)), heads(layer.key.forward_t(x, train)), heads(layer.value.forward_t(x, train)));
        let p = if train { self.cfg.attention_dropout } else { 0.0 };
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, false, None, false); // (B, nh, T, hd)
        layer.attn_out.forward_t(&y.transpose(1, 2).contiguous().view([b, t, c]), train)
    }

    /// The feed-forward activation of the config (`hidden_act` / `activation`), which the
    /// masked-LM heads apply too.
    pub fn act(&self, x: &Tensor) -> Tensor {
        match self.cfg.activation {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}

/// Whether a checkpoint tensor is BERT's pooler (`pooler.dense.*`, `bert.pooler.dense.*`).
pub(crate) fn is_pooler(name: &str) -> bool {
    name.strip_prefix("bert.").unwrap_or(name).starts_with("pooler.")
}

/// Where a checkpoint tensor goes: the family prefix added when missing (bare-model
/// checkpoints), `gamma`/`beta` read as `weight`/`bias`, task heads and position-id buffers
/// skipped; the pooler is loaded when the encoder has one (`pooler`), else skipped.
pub(crate) fn route(names: &Names, name: &str, pooler: bool) -> Route {
    let prefix = format!("{}.", names.prefix);
    let rest = name.strip_prefix(&prefix).unwrap_or(name);
    let skip_pooler = !pooler && names.prefix == "bert" && rest.starts_with("pooler.");
    if skip_pooler || rest.ends_with("position_ids") || rest.ends_with("token_type_ids") || names.heads.iter().any(|h| rest.starts_with(h)) {
        return Route::Ignore;
    }
    let rest = match (rest.strip_suffix(".gamma"), rest.strip_suffix(".beta")) {
        (Some(stem), _) => format!("{stem}.weight"),
        (_, Some(stem)) => format!("{stem}.bias"),
        _ => rest.to_string(),
    };
    Route::Param(format!("{prefix}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(names: &Names, name: &str) -> Option<String> {
        match route(names, name, false) {
            Route::Param(n) | Route::Transposed(n) => Some(n),
            Route::Ignore => None,
        }
    }

    #[test]
    fn routes_prefixes_heads_and_old_names() {
        let b = &BERT_NAMES;
        assert_eq!(target(b, "embeddings.word_embeddings.weight").unwrap(), "bert.embeddings.word_embeddings.weight");
        assert_eq!(target(b, "bert.embeddings.LayerNorm.gamma").unwrap(), "bert.embeddings.LayerNorm.weight");
        assert_eq!(target(b, "bert.encoder.layer.1.output.LayerNorm.beta").unwrap(), "bert.encoder.layer.1.output.LayerNorm.bias");
        for head in ["cls.predictions.bias", "bert.pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "bert.embeddings.position_ids"] {
            assert!(target(b, head).is_none(), "{head}");
        }
        let d = &DISTILBERT_NAMES;
        for head in ["pre_classifier.weight", "vocab_projector.bias", "vocab_layer_norm.weight"] {
            assert!(target(d, head).is_none(), "{head}");
        }
        assert_eq!(target(d, "transformer.layer.0.ffn.lin1.weight").unwrap(), "distilbert.transformer.layer.0.ffn.lin1.weight");
    }
}
