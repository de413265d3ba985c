//! `rankforge predict`: label scores of texts as transformers' `pipeline("text-classification")`
//! gives them. Scores: softmax over the logits (single-label), sigmoid (multi-label, or one
//! label without a problem type), the raw logit (regression). Results are sorted by score
//! (ties keep the label order); by default only the best, `top_k = N` the best N, `All` every
//! label. Unlike the pipeline, which returns a bare dict for a text pair, every input gives a
//! list.

use serde::Serialize;
use tch::Kind;

use super::data::ClsExample;
use super::encode::TextEncoder;
use super::labels::ClsLabel;
use super::model::Classifier;
use crate::error::{Error, Result};
use crate::models::heads::ProblemType;

/// One label and its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub label: String,
    pub score: f64,
}

/// How many results per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopK {
    /// The best N (N ≥ 1; all when there are fewer labels).
    N(usize),
    /// Every label.
    All,
}

impl TopK {
    /// `--top-k`: a positive number or `all`.
    pub fn parse(s: &str) -> std::result::Result<TopK, String> {
        match s {
            "all" => Ok(TopK::All),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!("{n:?}: expected a number of labels (1 or more) or \"all\"")),
                Ok(n) => Ok(TopK::N(n)),
            },
        }
    }
}

/// One input: a text and an optional second text.
#[derive(Debug, Clone)]
pub struct TextInput {
    pub text: String,
    pub text_pair: Option<String>,
}

/// The pipeline's results for each input, in order.
pub fn predict(clf: &Classifier, encoder: &TextEncoder, inputs: &[TextInput], top_k: TopK, batch_size: usize) -> Result<Vec<Vec<Prediction>>> {
    if inputs.iter().any(|i| i.text_pair.is_some()) && !encoder.has_pair_template() {
        return Err(encoder.no_pair_template("--text-pair"));
    }
    let examples = inputs
        .iter()
        .map(|i| {
            let e = encoder.encode(&i.text, i.text_pair.as_deref())?;
            Ok(ClsExample { input_ids: e.input_ids, token_type_ids: e.token_type_ids, label: ClsLabel::Class(0) })
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&ClsExample> = examples.iter().collect();
    let logits = clf.logits(&refs, batch_size)?.to_kind(Kind::Double);
    let scores = match clf.model.problem_type {
        Some(ProblemType::Regression) => logits,
        Some(ProblemType::MultiLabel) => logits.sigmoid(),
        _ if clf.model.num_labels() == 1 => logits.sigmoid(),
        _ => logits.softmax(-1, Kind::Double),
    };
    let n = clf.model.num_labels();
    let flat: Vec<f64> = Vec::try_from(scores.contiguous().view(-1)).map_err(Error::Torch)?;
    Ok(flat
        .chunks(n)
        .map(|row| {
            let mut ranked: Vec<Prediction> = row.iter().zip(&clf.model.id2label).map(|(&score, label)| Prediction { label: label.clone(), score }).collect();
            ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
            if let TopK::N(k) = top_k {
                ranked.truncate(k);
            }
            ranked
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_parses_numbers_and_all() {
        assert_eq!(TopK::parse("3"), Ok(TopK::N(3)));
        assert_eq!(TopK::parse("all"), Ok(TopK::All));
        assert!(TopK::parse("0").unwrap_err().contains("1 or more"));
        assert!(TopK::parse("x").is_err());
    }
}
