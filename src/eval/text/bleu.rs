//! BLEU as sacreBLEU 2.6 computes it with `BLEU()`'s defaults: the `13a` tokenizer (mteval-v13a,
//! WMT's), exponential smoothing (NIST's, mteval's `smooth_method="exp"`), case-sensitive, one
//! reference per hypothesis, n-grams up to 4. [`corpus_bleu`] is `BLEU().corpus_score(hyps,
//! [refs])`: the n-gram statistics are summed over the corpus before the geometric mean.
//! [`sentence_bleu`] is `sacrebleu.sentence_bleu(hyp, [ref])` (`effective_order=True`: orders
//! with no n-gram at all are left out of the mean). Scores and precisions are 0–100.

use std::collections::HashMap;

use super::check_lengths;
use crate::error::Result;

const MAX_ORDER: usize = 4;

/// A BLEU score with its sufficient statistics (sacreBLEU's `BLEUScore`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bleu {
    /// 0–100.
    pub score: f64,
    /// n-gram precisions for n = 1..4, 0–100 (smoothed where no n-gram matched).
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis tokens.
    pub sys_len: usize,
    /// Reference tokens.
    pub ref_len: usize,
    /// Matching n-grams (clipped by the reference's counts) per order.
    pub counts: [usize; MAX_ORDER],
    /// Hypothesis n-grams per order.
    pub totals: [usize; MAX_ORDER],
}

/// sacreBLEU's segment statistics: `[hyp_len, ref_len] + correct + total`.
#[derive(Default)]
struct Stats {
    sys_len: usize,
    ref_len: usize,
    correct: [usize; MAX_ORDER],
    total: [usize; MAX_ORDER],
}

/// `BLEU().corpus_score(hypotheses, [references])`. An empty corpus is an error (sacreBLEU
/// fails on it too).
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> Result<Bleu> {
    check_lengths(hyps.len(), refs.len())?;
    let mut sum = Stats::default();
    for (h, r) in hyps.iter().zip(refs) {
        let s = segment(h, r);
        sum.sys_len += s.sys_len;
        sum.ref_len += s.ref_len;
        for n in 0..MAX_ORDER {
            sum.correct[n] += s.correct[n];
            sum.total[n] += s.total[n];
        }
    }
    Ok(compute(&sum, false))
}

/// `sacrebleu.sentence_bleu(hypothesis, [reference])`.
pub fn sentence_bleu(hyp: &str, reference: &str) -> Bleu {
    compute(&segment(hyp, reference), true)
}

/// `_compute_segment_statistics` of one tokenized hypothesis against one reference.
fn segment(hyp: &str, reference: &str) -> Stats {
    let h = tokenize_13a(hyp);
    let r = tokenize_13a(reference);
    let mut s = Stats { sys_len: h.len(), ref_len: r.len(), ..Stats::default() };
    for n in 1..=MAX_ORDER {
        let (hc, rc) = (ngrams(&h, n), ngrams(&r, n));
        for (g, &c) in &hc {
            s.total[n - 1] += c;
            if let Some(&rcount) = rc.get(g) {
                s.correct[n - 1] += c.min(rcount);
            }
        }
    }
    s
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

/// `BLEU.compute_bleu` with `smooth_method="exp"`.
fn compute(s: &Stats, effective_order: bool) -> Bleu {
    let mut bp = 1.0;
    if s.sys_len < s.ref_len {
        bp = if s.sys_len > 0 { (1.0 - s.ref_len as f64 / s.sys_len as f64).exp() } else { 0.0 };
    }
    let mut precisions = [0.0; MAX_ORDER];
    let mut out = Bleu { score: 0.0, precisions, bp, sys_len: s.sys_len, ref_len: s.ref_len, counts: s.correct, totals: s.total };
    if s.correct.iter().all(|&c| c == 0) {
        return out;
    }
    let mut smooth_mteval = 1.0;
    let mut eff_order = MAX_ORDER;
    for n in 1..=MAX_ORDER {
        if s.total[n - 1] == 0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if s.correct[n - 1] == 0 {
            smooth_mteval *= 2.0;
            precisions[n - 1] = 100.0 / (smooth_mteval * s.total[n - 1] as f64);
        } else {
            precisions[n - 1] = 100.0 * s.correct[n - 1] as f64 / s.total[n - 1] as f64;
        }
    }
    // `my_log`: log(0) floored to -9999999999, summed left to right as Python's `sum` does
    let log_sum = precisions[..eff_order].iter().fold(0.0, |acc, &p| acc + if p == 0.0 { -9999999999.0 } else { p.ln() });
    out.score = bp * (log_sum / eff_order as f64).exp();
    out.precisions = precisions;
    out
}

/// Python's `str.isspace` (what `str.split()` and `str.rstrip()` strip): Unicode White_Space
/// plus the information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// sacreBLEU's `Tokenizer13a` on `sent.rstrip()`, split into tokens.
pub fn tokenize_13a(sent: &str) -> Vec<String> {
    let mut line = sent.trim_end_matches(is_py_space).replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let chars: Vec<char> = format!(" {line} ").chars().collect();
    // TokenizerRegexp's four substitutions, in order
    let mut spaced = Vec::with_capacity(chars.len() * 2);
    for c in chars {
        if is_13a_symbol(c) {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    let not_digit = |c: char| !c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> "\1 \2 "
    let s = sub_pairs(&spaced, not_digit, period_comma, |a, b| vec![a, ' ', b, ' ']);
    // ([\.,])([^0-9]) -> " \1 \2"
    let s = sub_pairs(&s, period_comma, not_digit, |a, b| vec![' ', a, ' ', b]);
    // ([0-9])(-) -> "\1 \2 "
    let s = sub_pairs(&s, |c| c.is_ascii_digit(), |c| c == '-', |a, b| vec![a, ' ', b, ' ']);
    let s: String = s.into_iter().collect();
    s.split(is_py_space).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`: ASCII punctuation (and space) but `'`, `,`, `-` and `.`.
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// `re.sub` of a two-character pattern `(A)(B)`: the leftmost matches, not overlapping, each
/// replaced by `repl(a, b)`, the scan going on after the match.
fn sub_pairs(s: &[char], a: impl Fn(char) -> bool, b: impl Fn(char) -> bool, repl: impl Fn(char, char) -> Vec<char>) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() * 2);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && a(s[i]) && b(s[i + 1]) {
            out.extend(repl(s[i], s[i + 1]));
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokenize_13a("Hello, world! It's 3.14-ish &quot;ok&quot;."), ["Hello", ",", "world", "!", "It's", "3.14", "-", "ish", "\"", "ok", "\"", "."]);
    }

    #[test]
    fn identical_sentence_scores_100() {
        let b = sentence_bleu("the cat sat on the mat", "the cat sat on the mat");
        assert!((b.score - 100.0).abs() < 1e-12, "{b:?}");
        assert_eq!((b.sys_len, b.ref_len, b.counts, b.totals), (6, 6, [6, 5, 4, 3], [6, 5, 4, 3]));
    }
}
