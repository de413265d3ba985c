//! Text-generation metrics that equal the Python packages people cite: ROUGE-1/2/L/Lsum as
//! `rouge_score` 0.1.2 computes them ([`rouge`]; 0–1, the mean of per-pair F-measures), BLEU
//! as sacreBLEU 2.6's defaults compute it ([`corpus_bleu`], [`sentence_bleu`]; 0–100) and
//! exact match as Hugging Face `evaluate`'s `exact_match` with its default arguments
//! ([`exact_match`]). `rankforge evaluate --generate` scores generated completions with them.
//! Each takes predictions and references of equal length (else [`Error::LengthMismatch`]) and
//! at least one pair.

pub mod bleu;
pub mod porter;
pub mod rouge;

pub use bleu::{corpus_bleu, sentence_bleu, Bleu};
pub use rouge::{rouge, RougeScores};

use crate::error::{Error, Result};

/// The fraction (0–1) of predictions identical to their reference: `evaluate.load("exact_match")
/// .compute(predictions=..., references=...)` with no options, which compares numpy string
/// arrays (and numpy drops trailing NUL characters from its strings).
pub fn exact_match(predictions: &[String], references: &[String]) -> Result<f64> {
    let n = check_lengths(predictions.len(), references.len())?;
    let strip = |s: &String| s.trim_end_matches('\0').to_string();
    let same = predictions.iter().zip(references).filter(|(p, r)| strip(p) == strip(r)).count();
    Ok(same as f64 / n as f64)
}

/// One reference per prediction, and something to score.
fn check_lengths(predictions: usize, references: usize) -> Result<usize> {
    if predictions != references {
        return Err(Error::LengthMismatch { predictions, references });
    }
    if predictions == 0 {
        return Err(Error::Input("text metrics: no prediction/reference pairs to score".into()));
    }
    Ok(predictions)
}
