//! ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum as the `rouge_score` package (0.1.2) computes
//! them: `RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=...)
//! .score(reference, prediction)[k].fmeasure` for each pair, averaged over the pairs.
//!
//! The tokenizer is `rouge_score.tokenize.tokenize`: lowercase, every character outside
//! `[a-z0-9]` becomes a space, split; with the stemmer, tokens longer than three letters go
//! through NLTK's Porter stemmer ([`super::porter`]). ROUGE-N is the clipped n-gram overlap,
//! ROUGE-L the longest common subsequence of the whole texts, ROUGE-Lsum the summary-level LCS
//! (the union LCS of each reference line against every prediction line, lines split on `\n`).
//! An empty prediction or reference (no tokens) scores 0, as in `rouge_score`.

use std::collections::HashMap;

use super::{check_lengths, porter};
use crate::error::Result;

/// Mean per-pair F-measures, on `rouge_score`'s 0–1 scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[allow(non_snake_case)]
pub struct RougeScores {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rougeL: f64,
    pub rougeLsum: f64,
}

/// ROUGE of each prediction against its reference, averaged (a plain mean over the pairs).
pub fn rouge(predictions: &[String], references: &[String], stemmer: bool) -> Result<RougeScores> {
    let n = check_lengths(predictions.len(), references.len())?;
    let mut sum = RougeScores { rouge1: 0.0, rouge2: 0.0, rougeL: 0.0, rougeLsum: 0.0 };
    for (p, r) in predictions.iter().zip(references) {
        let s = score(r, p, stemmer);
        sum.rouge1 += s.rouge1;
        sum.rouge2 += s.rouge2;
        sum.rougeL += s.rougeL;
        sum.rougeLsum += s.rougeLsum;
    }
    let n = n as f64;
    Ok(RougeScores { rouge1: sum.rouge1 / n, rouge2: sum.rouge2 / n, rougeL: sum.rougeL / n, rougeLsum: sum.rougeLsum / n })
}

/// The F-measures of one pair: `RougeScorer.score(target, prediction)` (reference first).
pub fn score(target: &str, prediction: &str, stemmer: bool) -> RougeScores {
    let t = tokenize(target, stemmer);
    let p = tokenize(prediction, stemmer);
    RougeScores {
        rouge1: score_ngrams(&t, &p, 1),
        rouge2: score_ngrams(&t, &p, 2),
        rougeL: score_lcs(&t, &p),
        rougeLsum: summary_level_lcs(&sentences(target, stemmer), &sentences(prediction, stemmer)),
    }
}

/// `rouge_score.tokenize.tokenize(text, stemmer)`.
pub fn tokenize(text: &str, stemmer: bool) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| if stemmer && t.len() > 3 { porter::stem(t) } else { t.to_string() })
        // rouge_score's last check (`^[a-z0-9]+$`), after stemming
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .collect()
}

/// ROUGE-Lsum's sentences: the non-empty lines, each tokenized.
fn sentences(text: &str, stemmer: bool) -> Vec<Vec<String>> {
    text.split('\n').filter(|s| !s.is_empty()).map(|s| tokenize(s, stemmer)).collect()
}

/// `scoring.fmeasure`.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// `_score_ngrams`: clipped overlap over the n-gram counts (a denominator of at least 1).
fn score_ngrams(target: &[String], prediction: &[String], n: usize) -> f64 {
    let (t, p) = (ngrams(target, n), ngrams(prediction, n));
    let overlap: usize = t.iter().map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0))).sum();
    let t_count: usize = t.values().sum();
    let p_count: usize = p.values().sum();
    let precision = overlap as f64 / p_count.max(1) as f64;
    let recall = overlap as f64 / t_count.max(1) as f64;
    fmeasure(precision, recall)
}

/// `_lcs_table`: `table[i][j]` = LCS length of `a[..i]` and `b[..j]`.
fn lcs_table(a: &[String], b: &[String]) -> Vec<Vec<usize>> {
    let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i][j] = if a[i - 1] == b[j - 1] { t[i - 1][j - 1] + 1 } else { t[i - 1][j].max(t[i][j - 1]) };
        }
    }
    t
}

/// `_score_lcs`.
fn score_lcs(target: &[String], prediction: &[String]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let lcs = lcs_table(target, prediction)[target.len()][prediction.len()];
    fmeasure(lcs as f64 / prediction.len() as f64, lcs as f64 / target.len() as f64)
}

/// `lcs_ind`: the indices into `r` of one LCS, read back as `_backtrack_norec` does (its tie
/// rule decides which LCS, which matters for the union below).
fn lcs_indices(r: &[String], c: &[String]) -> Vec<usize> {
    let t = lcs_table(r, c);
    let (mut i, mut j) = (r.len(), c.len());
    let mut lcs = Vec::new();
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            lcs.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i][j - 1] > t[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    lcs.reverse();
    lcs
}

/// `_summary_level_lcs`: union-LCS hits of each reference sentence, each token counted at
/// most as often as it occurs in both summaries.
fn summary_level_lcs(refs: &[Vec<String>], cands: &[Vec<String>]) -> f64 {
    if refs.is_empty() || cands.is_empty() {
        return 0.0;
    }
    let m: usize = refs.iter().map(Vec::len).sum();
    let n: usize = cands.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return 0.0;
    }
    let mut counts_r: HashMap<&str, usize> = HashMap::new();
    let mut counts_c: HashMap<&str, usize> = HashMap::new();
    for t in refs.iter().flatten() {
        *counts_r.entry(t).or_insert(0) += 1;
    }
    for t in cands.iter().flatten() {
        *counts_c.entry(t).or_insert(0) += 1;
    }
    let mut hits = 0usize;
    for r in refs {
        // `_find_union`: the sorted set of indices over every candidate's LCS
        let mut union: Vec<usize> = cands.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for i in union {
            let t = r[i].as_str();
            let (cr, cc) = (counts_r.get(t).copied().unwrap_or(0), counts_c.get(t).copied().unwrap_or(0));
            if cc > 0 && cr > 0 {
                hits += 1;
                counts_c.insert(t, cc - 1);
                counts_r.insert(t, cr - 1);
            }
        }
    }
    fmeasure(hits as f64 / n as f64, hits as f64 / m as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_lowercases_and_splits_on_non_alphanumerics() {
        assert_eq!(tokenize("The Cat's 2nd-hat, É!", false), ["the", "cat", "s", "2nd", "hat"]);
        assert_eq!(tokenize("running ponies ran", true), ["run", "poni", "ran"]);
    }

    /// rouge_score's README example:
    /// `RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"]).score("The quick brown fox
    /// jumps over the lazy dog", "The quick brown dog jumps on the log.")` gives the F-measures
    /// 0.7058823529411765, 0.26666666666666666, 0.5882352941176471, 0.5882352941176471.
    #[test]
    fn readme_example() {
        let s = score("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log.", false);
        let want = [0.7058823529411765, 0.26666666666666666, 0.5882352941176471, 0.5882352941176471];
        assert_eq!([s.rouge1, s.rouge2, s.rougeL, s.rougeLsum], want, "{s:?}");
    }
}
