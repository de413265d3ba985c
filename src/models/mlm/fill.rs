//! `rankforge fill-mask`: the likeliest tokens at each mask of a text, exactly as transformers
//! 5's `pipeline("fill-mask")` (`pipelines/fill_mask.py`) builds them:
//!
//! - the text is tokenized as `tokenizer(text)` (special tokens added, no truncation) and run
//!   alone (no padding); the mask token is the tokenizer's `mask_token` (`[MASK]`, `<mask>`);
//! - at each mask position: softmax over the vocabulary, the `top_k` best (torch's `topk`);
//! - each candidate is `{"score", "token", "token_str", "sequence"}`: `token_str` is
//!   `decode([token])`, `sequence` the ids with that mask (only that one) replaced and padding
//!   ids dropped, decoded with `skip_special_tokens` when the text has one mask only (with
//!   several, the other masks — and `[CLS]`/`[SEP]` — stay in the sequence, as in the
//!   pipeline); decoding applies `clean_up_tokenization_spaces` when `tokenizer_config.json`
//!   sets it (never for BPE models, as transformers 5);
//! - one mask gives a flat list, several a list per mask ([`FillResult`]).
//!
//! Unlike the pipeline, a `top_k` above the vocabulary gives the whole vocabulary (torch would
//! raise), and a text longer than the position table, or a token id beyond the model's
//! vocabulary (a tokenizer of another model), is an error naming both numbers.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::MaskedLm;
use crate::error::{Error, Result};
use crate::lora::ADAPTER_CONFIG;
use crate::tokenizer::LoadedTokenizer;

/// One proposal for a mask, with the pipeline's keys in its order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub score: f64,
    pub token: i64,
    pub token_str: String,
    pub sequence: String,
}

/// The pipeline's result for one text: a flat list for one mask, a list per mask for several.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FillResult {
    One(Vec<Candidate>),
    Each(Vec<Vec<Candidate>>),
}

impl FillResult {
    /// The candidates of each mask, in text order.
    pub fn per_mask(&self) -> Vec<&[Candidate]> {
        match self {
            FillResult::One(c) => vec![c.as_slice()],
            FillResult::Each(rows) => rows.iter().map(Vec::as_slice).collect(),
        }
    }
}

/// A masked LM with its tokenizer, ready to fill masks.
pub struct FillMask {
    pub model: MaskedLm,
    pub tokenizer: LoadedTokenizer,
    pub mask_token: String,
    mask_id: u32,
    clean_up: bool,
    device: Device,
}

impl FillMask {
    /// Loads `model_dir` (a BERT / DistilBERT directory; fp32 on `device`), applies the PEFT
    /// adapter `adapter` when given, and the tokenizer of the adapter directory when it has
    /// one, else the model's. A tokenizer without a mask token is an [`Error::Tokenizer`].
    pub fn load(model_dir: &Path, adapter: Option<&Path>, device: Device) -> Result<FillMask> {
        if !model_dir.join("config.json").exists() && model_dir.join(ADAPTER_CONFIG).is_file() {
            return Err(Error::model(model_dir, "is a PEFT adapter: pass its base model as --model and this directory as --adapter"));
        }
        if !model_dir.join("config.json").exists() && model_dir.join("final").exists() {
            return Err(Error::model(model_dir, "is a run directory; pass its final/ (or final/merged/ after LoRA)"));
        }
        let mut model = MaskedLm::from_pretrained(model_dir, device, Kind::Float)?;
        let mut tok_dir = model_dir;
        if let Some(a) = adapter {
            let loaded = model.load_adapter(a)?;
            tracing::info!(adapter = %a.display(), layers = loaded.modules.len(), "LoRA adapter");
            if a.join("tokenizer.json").is_file() {
                tok_dir = a;
            }
        }
        let tokenizer = LoadedTokenizer::load(tok_dir)?;
        let config_path = tok_dir.join("tokenizer_config.json");
        let no_mask = || Error::Tokenizer {
            path: config_path.clone(),
            msg: "the tokenizer has no mask_token: fill-mask needs one ([MASK], <mask>) in tokenizer_config.json".into(),
        };
        let mask_token = tokenizer.special("mask_token").ok_or_else(no_mask)?.to_string();
        let mask_id = tokenizer.tokenizer.token_to_id(&mask_token).ok_or_else(no_mask)?;
        let config: Value = std::fs::read_to_string(&config_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let bpe = matches!(tokenizer.tokenizer.get_model(), tokenizers::ModelWrapper::BPE(_));
        let clean_up = config["clean_up_tokenization_spaces"].as_bool().unwrap_or(false) && !bpe;
        Ok(FillMask { model, tokenizer, mask_token, mask_id, clean_up, device })
    }

    /// The pipeline's result for `text` (see the module docs); `top_k` ≥ 1. A text without
    /// the mask token is an [`Error::Input`] naming `what` (`--text`, `FILE: row N`) and the
    /// token to write.
    pub fn fill(&self, text: &str, top_k: usize, what: &str) -> Result<FillResult> {
        let ids = self.tokenizer.encode_with_special(text)?;
        let masks: Vec<usize> = ids.iter().enumerate().filter(|(_, &id)| id == self.mask_id).map(|(i, _)| i).collect();
        if masks.is_empty() {
            return Err(Error::Input(format!("{what}: no mask token in the text: write {} where a token is to be predicted", self.mask_token)));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.model.vocab_size()) {
            return Err(Error::Input(format!(
                "{what}: token id {id} is beyond the model's vocab_size {}: the tokenizer in {} does not belong to this model",
                self.model.vocab_size(),
                self.tokenizer.path.display()
            )));
        }
        if ids.len() > self.model.max_positions() {
            return Err(Error::Input(format!("{what}: the text has {} tokens, the model reads at most {} (max_position_embeddings)", ids.len(), self.model.max_positions())));
        }
        let input = Tensor::from_slice(&ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()).unsqueeze(0).to_device(self.device);
        let logits = tch::no_grad(|| self.model.forward(&input, None, None, false)).to_kind(Kind::Float).to_device(Device::Cpu); // (1, T, V)
        let at = Tensor::from_slice(&masks.iter().map(|&m| m as i64).collect::<Vec<_>>());
        let probs = logits.get(0).index_select(0, &at).softmax(-1, Kind::Float); // (M, V)
        let k = top_k.min(self.model.vocab_size()) as i64;
        let (values, tokens) = probs.topk(k, -1, true, true);
        let values: Vec<f32> = Vec::try_from(values.contiguous().view(-1)).map_err(Error::Torch)?;
        let tokens: Vec<i64> = Vec::try_from(tokens.contiguous().view(-1)).map_err(Error::Torch)?;
        let single = masks.len() == 1;
        let mut rows = Vec::with_capacity(masks.len());
        for (m, &pos) in masks.iter().enumerate() {
            let mut row = Vec::with_capacity(k as usize);
            for j in 0..k as usize {
                let (score, token) = (values[m * k as usize + j], tokens[m * k as usize + j]);
                let mut filled = ids.clone();
                filled[pos] = token as u32;
                filled.retain(|&id| Some(id) != self.tokenizer.pad_id);
                let sequence = self.decode(&filled, single)?;
                let token_str = self.decode(&[token as u32], false)?;
                row.push(Candidate { score: f64::from(score), token, token_str, sequence });
            }
            rows.push(row);
        }
        Ok(if single { FillResult::One(rows.remove(0)) } else { FillResult::Each(rows) })
    }

    /// `tokenizer.decode(ids, skip_special_tokens=skip)` as transformers 5 decodes.
    fn decode(&self, ids: &[u32], skip: bool) -> Result<String> {
        let text = self.tokenizer.tokenizer.decode(ids, skip).map_err(|e| Error::Tokenizer { path: self.tokenizer.path.clone(), msg: e.to_string() })?;
        Ok(if self.clean_up { clean_up_tokenization(&text) } else { text })
    }
}

/// transformers' `clean_up_tokenization`: no space before `.`, `?`, `!`, `,` and English
/// contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    let pairs = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")];
    pairs.iter().fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// The texts of a `--input` file, each with where it came from (`FILE: line N` / `row N`):
/// the lines of a text file (`.txt` or no known extension; blank lines skipped), else the
/// `text_field` of each JSON/JSONL/CSV/Parquet row.
pub fn read_inputs(path: &Path, text_field: &str) -> Result<Vec<(String, String)>> {
    let structured = matches!(path.extension().and_then(|e| e.to_str()), Some("json" | "jsonl" | "ndjson" | "csv" | "parquet" | "arrow"));
    let out: Vec<(String, String)> = if structured {
        let rows = crate::classify::data::read_texts(&[path.to_path_buf()], "--input", text_field, "text_pair")?;
        rows.into_iter().enumerate().map(|(i, r)| (format!("{}: row {}", path.display(), i + 1), r.text)).collect()
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| Error::data(path, format!("--input: {e}")))?;
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (format!("{}: line {}", path.display(), i + 1), l.to_string())).collect()
    };
    if out.is_empty() {
        return Err(Error::data(path, "--input: no text to fill"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_follows_transformers() {
        assert_eq!(clean_up_tokenization("it is n't a film , is it ? yes ."), "it isn't a film, is it? yes.");
    }
}
