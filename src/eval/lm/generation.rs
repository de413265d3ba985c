//! Generated completions judged against references: ROUGE-1/2/L/Lsum (`rouge_score`'s
//! F-measure, 0-1), sacreBLEU's corpus BLEU (0-100) and exact match ([`crate::eval::text`]),
//! for `rankforge evaluate --generate` and `[eval] generate = true` during fine-tuning.
//!
//! A prediction is the text of the generated tokens up to (not including) the token that
//! stopped generation, decoded with special tokens skipped, as
//! `tokenizer.decode(ids, skip_special_tokens=True)` gives it to a Hugging Face user.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::generate::{self, GenOptions, Generated};
use crate::models::CausalLm;
use crate::tokenizer::LoadedTokenizer;

/// The generation metrics of a set of predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenScores {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rouge_l: f64,
    pub rouge_lsum: f64,
    pub bleu: f64,
    pub exact_match: f64,
}

impl GenScores {
    /// The metrics under their JSON names (`rouge1`, `rouge2`, `rougeL`, `rougeLsum`, `bleu`,
    /// `exact_match`), each prefixed by `prefix`.
    pub fn insert_into(&self, row: &mut Map<String, Value>, prefix: &str) {
        for (name, v) in self.named() {
            row.insert(format!("{prefix}{name}"), json!(v));
        }
    }

    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("rouge1", self.rouge1),
            ("rouge2", self.rouge2),
            ("rougeL", self.rouge_l),
            ("rougeLsum", self.rouge_lsum),
            ("bleu", self.bleu),
            ("exact_match", self.exact_match),
        ]
    }
}

/// Scores `predictions` against `references` (same length, in order).
pub fn score(predictions: &[String], references: &[String], stemmer: bool) -> Result<GenScores> {
    if predictions.len() != references.len() {
        return Err(Error::Input(format!("{} predictions for {} references", predictions.len(), references.len())));
    }
    let r = crate::eval::text::rouge(predictions, references, stemmer)?;
    let bleu = crate::eval::text::corpus_bleu(predictions, references)?;
    let exact_match = crate::eval::text::exact_match(predictions, references)?;
    Ok(GenScores { rouge1: r.rouge1, rouge2: r.rouge2, rouge_l: r.rougeL, rouge_lsum: r.rougeLsum, bleu: bleu.score, exact_match })
}

/// The prediction text of a generation (see the module docs).
pub fn prediction_text(tok: &LoadedTokenizer, g: &Generated) -> Result<String> {
    let ids = if g.stop == "eos" { &g.ids[..g.ids.len().saturating_sub(1)] } else { &g.ids[..] };
    decode_plain(tok, ids)
}

/// `ids` decoded with special tokens skipped.
pub fn decode_plain(tok: &LoadedTokenizer, ids: &[u32]) -> Result<String> {
    tok.tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer { path: tok.path.clone(), msg: e.to_string() })
}

/// Greedy options for `max_new_tokens` new tokens (training's evaluation samples).
pub fn greedy(max_new_tokens: usize) -> GenOptions {
    GenOptions { max_new_tokens, temperature: 0.0, top_k: None, top_p: None, repetition_penalty: 1.0, seed: 0 }
}

/// One completion of `prompt_ids` with `opts` and its prediction text.
pub fn complete(model: &CausalLm, tok: &LoadedTokenizer, prompt_ids: Vec<u32>, opts: &GenOptions) -> Result<(Generated, String)> {
    let stop = generate::stop_ids(model, tok);
    let g = generate::generate(model, tok, prompt_ids, opts, &stop, |_| {})?;
    let text = prediction_text(tok, &g)?;
    Ok((g, text))
}
