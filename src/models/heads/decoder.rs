//! The `score` heads of the decoders, as transformers 5 builds them
//! (`GPT2ForSequenceClassification` in `modeling_gpt2.py`; `GenericForSequenceClassification`
//! in `modeling_layers.py` for Llama, Mistral and Qwen2): the backbone's last hidden states →
//! `score` (`Linear(hidden, num_labels, bias=False)`), read at the last token of each row that
//! is not `pad_token_id`: `(arange(T) · (ids != pad)).argmax(-1)`, which handles left and right
//! padding alike (and gives 0 for a row of padding only). Without `pad_token_id` a batch of one
//! reads its last token and a larger batch is an error, as in transformers.
//!
//! Weight names: GPT-2 `transformer.*` + `score.weight`, the Llama family `model.*` +
//! `score.weight`. Checkpoints of the causal LM (`lm_head.weight` ignored, never allocated) or
//! of the bare model (keys without the prefix) load with a new `score` drawn N(0,
//! `initializer_range`).

use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::super::gpt::{Gpt, GptConfig, CONV1D};
use super::super::hf::{self, Route};
use super::super::layers::Linear;
use super::super::llama::{Llama, LlamaConfig};
use super::super::shared::pads_before_tokens;
use super::{has_head, labels_and_problem, log_new_head, Backbone, SequenceClassifier};
use crate::error::{Error, Result};
use crate::models::CausalArch;

/// The HF name of the decoders' head weight.
const SCORE: &str = "score.weight";

/// Loads a GPT-2 / Llama / Mistral / Qwen2 directory as a classifier (see
/// [`SequenceClassifier::from_pretrained`]).
pub(super) fn from_pretrained(dir: &Path, path: &Path, config: Value, device: Device, kind: Kind, labels: Option<&[String]>) -> Result<SequenceClassifier> {
    let (weights_path, files) = hf::weight_files(dir)?;
    let shapes = hf::tensor_shapes(&files)?;
    let (id2label, problem_type) = labels_and_problem(dir, path, &config, labels)?;
    let n = id2label.len();
    let loaded = has_head(&weights_path, &shapes, SCORE, n)?;
    let (arch, classifier) = if config["model_type"] == "gpt2" {
        let cfg = GptConfig::from_hf_json(path)?;
        hf::check_model_fits(path, device, cfg.num_params(), cfg.vocab_size, ("n_embd", cfg.n_embd))?;
        let mut m = Gpt::new(&cfg, device);
        let std = config["initializer_range"].as_f64().unwrap_or(0.02);
        let score = Linear::new(m.vs.root() / "score", cfg.n_embd, n, false, std);
        m.vs.set_kind(kind);
        (CausalArch::Gpt2(m), score)
    } else {
        let cfg = LlamaConfig::from_hf_json(path, &config)?;
        hf::check_model_fits(path, device, cfg.num_params(), cfg.vocab_size, ("hidden_size", cfg.hidden_size))?;
        let m = Llama::backbone_as(&cfg, device, kind);
        let score = Linear::new(m.vs.root() / "score", cfg.hidden_size, n, false, cfg.initializer_range);
        (CausalArch::Llama(m), score)
    };
    let gpt2 = matches!(arch, CausalArch::Gpt2(_));
    let model = SequenceClassifier {
        backbone: Backbone::Decoder(arch),
        pre_classifier: None,
        classifier,
        id2label,
        problem_type,
        dropout: 0.0,
        config,
        source: dir.to_path_buf(),
    };
    if !loaded {
        log_new_head(dir, &["score"], n);
    }
    let mut vars = model.vs().variables();
    vars.retain(|name, _| loaded || name != SCORE);
    hf::load_weights(dir, vars, |name| if gpt2 { gpt2_route(name) } else { llama_route(name) })?;
    Ok(model)
}

/// Where a tensor of a GPT-2 file goes: `transformer.*` (added to a bare `GPT2Model`'s keys),
/// Conv1D weights transposed; the mask buffers and a causal LM's `lm_head` are skipped.
fn gpt2_route(name: &str) -> Route {
    if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name == "lm_head.weight" {
        return Route::Ignore;
    }
    if name == SCORE {
        return Route::Param(name.to_string());
    }
    let full = if name.starts_with("transformer.") { name.to_string() } else { format!("transformer.{name}") };
    if CONV1D.iter().any(|s| full.ends_with(s)) {
        Route::Transposed(full)
    } else {
        Route::Param(full)
    }
}

/// Where a tensor of a Llama-family file goes: `model.*` (added to a bare model's keys); a causal
/// LM's `lm_head` and old `rotary_emb.inv_freq` buffers are skipped.
fn llama_route(name: &str) -> Route {
    if name == "lm_head.weight" || name.ends_with(".rotary_emb.inv_freq") {
        Route::Ignore
    } else if name == SCORE || name.starts_with("model.") {
        Route::Param(name.to_string())
    } else {
        Route::Param(format!("model.{name}"))
    }
}

/// The index `(B)` of the token each row is classified by: the last one that is not
/// `pad_token_id`, or the last position without one (batches of one only).
fn last_tokens(ids: &Tensor, pad_token_id: Option<i64>, source: &Path) -> Result<Tensor> {
    let (b, t) = ids.size2().map_err(|_| Error::Input(format!("{}: token ids must be (batch, length), got shape {:?}", source.display(), ids.size())))?;
    match pad_token_id {
        Some(pad) => {
            let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
            Ok((positions * ids.ne(pad).to_kind(Kind::Int64)).argmax(-1, false))
        }
        None if b == 1 => Ok(Tensor::full([1], t - 1, (Kind::Int64, ids.device()))),
        None => Err(Error::Input(format!(
            "{}: config.json has no pad_token_id, so the last token of each of the {b} sequences of a batch cannot be found \
             (transformers: \"Cannot handle batch sizes > 1 if no padding token is defined.\"); set pad_token_id \
             (e.g. to the tokenizer's padding or end-of-text token) or classify one sequence at a time",
            source.display()
        ))),
    }
}

/// The backbone's last hidden state `(B, H)` at the token each row is classified by. Attention
/// is masked only when the mask has padding before a real token (left padding): under the
/// causal mask a real token never sees the padding after it.
pub(super) fn pooled_hidden(
    arch: &CausalArch,
    ids: &Tensor,
    attention_mask: Option<&Tensor>,
    token_type_ids: Option<&Tensor>,
    pad_token_id: Option<i64>,
    source: &Path,
    train: bool,
) -> Result<Tensor> {
    let last = last_tokens(ids, pad_token_id, source)?; // (B)
    let padding = attention_mask.filter(|m| pads_before_tokens(m));
    let h = match arch {
        CausalArch::Gpt2(m) => m.forward_hidden(ids, token_type_ids, padding, train, None),
        CausalArch::Llama(m) => m.forward_hidden(ids, padding, train, None),
    }; // (B, T, H)
    let (b, hidden) = (h.size()[0], h.size()[2]);
    let index = last.view([b, 1, 1]).expand([b, 1, hidden], false);
    Ok(h.gather(1, &index, false).squeeze_dim(1))
}
