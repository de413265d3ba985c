//! The result of `rankforge evaluate` on a causal LM, as one JSON object (`--json`) or a
//! readable report.
//!
//! JSON keys: `loss`, `perplexity`, `n` (the rows evaluated: documents for text, examples for
//! completions), `tokens` (the tokens the loss is a mean over: the guide's `n_tokens` for text,
//! completion tokens otherwise), `max_length` and `stride` (text), and with `--generate`
//! `rouge1`, `rouge2`, `rougeL`, `rougeLsum` (0-1), `bleu` (0-100) and `exact_match` (0-1).
//! Keys of what was not computed are absent.

use serde_json::{json, Map, Value};

use super::generation::GenScores;
use super::perplexity::Loss;
use crate::config::SftFormat;

/// How the loss was computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Strided perplexity of the joined documents.
    Text { max_length: usize, stride: usize },
    /// Completion-only loss of fine-tuning rows.
    Completions { format: SftFormat },
}

/// The generation metrics and how they were computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub scores: GenScores,
    pub stemmer: bool,
}

/// What `evaluate` reports on a causal LM.
#[derive(Debug, Clone, PartialEq)]
pub struct LmReport {
    pub mode: Mode,
    pub loss: Loss,
    /// Rows evaluated.
    pub n: usize,
    pub generation: Option<Scored>,
}

impl LmReport {
    pub fn perplexity(&self) -> f64 {
        self.loss.loss.exp()
    }

    /// The `--json` object (see the module docs).
    pub fn to_json(&self) -> Value {
        let mut row = Map::new();
        row.insert("loss".into(), json!(self.loss.loss));
        row.insert("perplexity".into(), json!(self.perplexity()));
        if let Some(g) = &self.generation {
            g.scores.insert_into(&mut row, "");
        }
        row.insert("n".into(), json!(self.n));
        row.insert("tokens".into(), json!(self.loss.tokens));
        if let Mode::Text { max_length, stride } = self.mode {
            row.insert("max_length".into(), json!(max_length));
            row.insert("stride".into(), json!(stride));
        }
        Value::Object(row)
    }

    /// The readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match self.mode {
            Mode::Text { max_length, stride } => out.push_str(&format!(
                "strided perplexity of {} document(s): {} tokens scored, windows of {max_length} every {stride} tokens\n",
                self.n, self.loss.tokens
            )),
            Mode::Completions { format } => out.push_str(&format!(
                "completion loss of {} {} row(s): {} completion tokens\n",
                self.n,
                format_name(format),
                self.loss.tokens
            )),
        }
        out.push_str(&format!("{:<12}{:.4}\n{:<12}{:.4}\n", "loss", self.loss.loss, "perplexity", self.perplexity()));
        if let Some(g) = &self.generation {
            let stem = if g.stemmer { " (stemmed)" } else { "" };
            out.push_str(&format!("generated completions of {} rows{stem}:\n", self.n));
            for (name, v) in g.scores.named() {
                out.push_str(&format!("{name:<12}{v:.4}\n"));
            }
        }
        out
    }
}

fn format_name(f: SftFormat) -> &'static str {
    match f {
        SftFormat::PromptCompletion => "prompt/completion",
        SftFormat::Messages => "messages",
        SftFormat::Alpaca => "alpaca",
        SftFormat::Dolly => "dolly",
        SftFormat::Text | SftFormat::Auto => "text",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_are_present_only_when_computed() {
        let text = LmReport { mode: Mode::Text { max_length: 64, stride: 32 }, loss: Loss { loss: 2.0, tokens: 90 }, n: 1, generation: None };
        let j = text.to_json();
        assert_eq!(j["perplexity"].as_f64().unwrap(), 2f64.exp());
        assert_eq!((j["tokens"].as_u64(), j["stride"].as_u64()), (Some(90), Some(32)));
        assert!(j.get("rouge1").is_none() && j.get("bleu").is_none());
        let scores = GenScores { rouge1: 0.5, rouge2: 0.25, rouge_l: 0.4, rouge_lsum: 0.45, bleu: 12.5, exact_match: 0.0 };
        let gen = LmReport {
            mode: Mode::Completions { format: SftFormat::PromptCompletion },
            loss: Loss { loss: 1.0, tokens: 10 },
            n: 4,
            generation: Some(Scored { scores, stemmer: false }),
        };
        let j = gen.to_json();
        assert_eq!((j["rougeL"].as_f64(), j["rougeLsum"].as_f64(), j["bleu"].as_f64()), (Some(0.4), Some(0.45), Some(12.5)));
        assert!(j.get("stride").is_none());
        assert!(gen.to_text().contains("rougeLsum   0.4500"), "{}", gen.to_text());
    }
}
