//! Classification metrics exactly as scikit-learn computes them (`accuracy_score`,
//! `precision_recall_fscore_support`, `confusion_matrix`, `classification_report`).
//!
//! Per label: precision = tp / predicted, recall = tp / true, F1 = 2·tp / (true + predicted),
//! support = true. Macro = unweighted mean over labels, weighted = mean weighted by support,
//! micro = the same formulas on counts summed over labels (single-label: all equal accuracy).
//! A zero denominator gives 0.0 (scikit-learn's default, which warns); [`ZeroDivision`] lists
//! where that happened so the caller can log the warning. Sums are numpy's pairwise sums, so
//! the numbers are bit-for-bit scikit-learn's, and [`ClassificationReport::report_text`]
//! prints byte-for-byte what `classification_report(..., digits=2, zero_division=0)` prints.
//! (including its quirk of printing supports as `1.0` when no prediction at all is right).
//!
//! Multi-label ([`ClassificationReport::multilabel`], 0/1 indicator rows): accuracy is subset
//! accuracy (every label of a row right), micro is computed on the summed counts and there is
//! a `samples` average, as in scikit-learn; the confusion matrix is one `[[tn, fp], [fn, tp]]`
//! per label (`multilabel_confusion_matrix`).

use crate::error::Error;

/// Precision, recall, F1 and support of one label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// An averaged precision, recall and F1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// The metric whose denominator was zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// A label never predicted.
    Precision,
    /// A label never true.
    Recall,
    /// A label neither true nor predicted.
    F1,
}

/// The labels whose `metric` hit a zero division (and were set to 0.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroDivision {
    pub metric: Metric,
    pub labels: Vec<String>,
}

impl ZeroDivision {
    /// scikit-learn's `UndefinedMetricWarning` text for it.
    pub fn message(&self) -> String {
        let (name, which) = match self.metric {
            Metric::Precision => ("Precision", "no predicted samples"),
            Metric::Recall => ("Recall", "no true samples"),
            Metric::F1 => ("F-score", "no true nor predicted samples"),
        };
        format!("{name} is ill-defined and being set to 0.0 in labels with {which}: {}", self.labels.join(", "))
    }
}

/// The confusion matrix: `labels × labels` counts (rows = true, columns = predicted) for
/// single-label data, one `[[tn, fp], [fn, tp]]` per label for multi-label data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confusion {
    SingleLabel(Vec<Vec<usize>>),
    MultiLabel(Vec<[[usize; 2]; 2]>),
}

/// All metrics of one set of predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationReport {
    pub labels: Vec<String>,
    /// Number of samples (rows).
    pub n: usize,
    /// Fraction of samples predicted right (multi-label: with every label right).
    pub accuracy: f64,
    /// In `labels` order.
    pub per_label: Vec<LabelScores>,
    pub micro: Averages,
    pub macro_avg: Averages,
    pub weighted: Averages,
    /// The `samples` average; multi-label only.
    pub samples: Option<Averages>,
    pub confusion: Confusion,
    /// Empty when no denominator was zero.
    pub zero_division: Vec<ZeroDivision>,
}

/// Per-label counts: true positives, predicted, true.
struct Counts {
    tp: Vec<usize>,
    pred: Vec<usize>,
    truth: Vec<usize>,
}

impl ClassificationReport {
    /// Single-label metrics: `y_true[i]` and `y_pred[i]` are indices into `labels`.
    pub fn new(y_true: &[usize], y_pred: &[usize], labels: &[String]) -> Result<Self, Error> {
        check_shape(y_true.len(), y_pred.len(), labels)?;
        let k = labels.len();
        for (name, ys) in [("y_true", y_true), ("y_pred", y_pred)] {
            if let Some((i, y)) = ys.iter().enumerate().find(|(_, &y)| y >= k) {
                return Err(Error::Input(format!("{name}[{i}] = {y} is not a label index (there are {k} labels)")));
            }
        }
        let mut matrix = vec![vec![0usize; k]; k];
        for (&t, &p) in y_true.iter().zip(y_pred) {
            matrix[t][p] += 1;
        }
        let counts = Counts {
            tp: (0..k).map(|l| matrix[l][l]).collect(),
            pred: (0..k).map(|l| (0..k).map(|t| matrix[t][l]).sum()).collect(),
            truth: matrix.iter().map(|row| row.iter().sum()).collect(),
        };
        let correct = counts.tp.iter().sum::<usize>();
        let accuracy = correct as f64 / y_true.len() as f64;
        Ok(Self::from_counts(labels, y_true.len(), accuracy, counts, None, Confusion::SingleLabel(matrix)))
    }

    /// Multi-label metrics on 0/1 indicator rows (`y_true[i][l]`: sample i has label l).
    pub fn multilabel(y_true: &[Vec<bool>], y_pred: &[Vec<bool>], labels: &[String]) -> Result<Self, Error> {
        check_shape(y_true.len(), y_pred.len(), labels)?;
        let k = labels.len();
        for (name, ys) in [("y_true", y_true), ("y_pred", y_pred)] {
            if let Some((i, row)) = ys.iter().enumerate().find(|(_, row)| row.len() != k) {
                return Err(Error::Input(format!("{name}[{i}] has {} indicators, expected one per label ({k})", row.len())));
            }
        }
        let mut counts = Counts { tp: vec![0; k], pred: vec![0; k], truth: vec![0; k] };
        let mut per_sample = Vec::with_capacity(y_true.len());
        let mut exact = 0usize;
        for (t, p) in y_true.iter().zip(y_pred) {
            let (mut tp, mut pred, mut truth) = (0usize, 0usize, 0usize);
            for l in 0..k {
                let (t, p) = (t[l], p[l]);
                tp += (t && p) as usize;
                pred += p as usize;
                truth += t as usize;
                counts.tp[l] += (t && p) as usize;
                counts.pred[l] += p as usize;
                counts.truth[l] += t as usize;
            }
            exact += (t == p) as usize;
            per_sample.push(scores(tp, pred, truth));
        }
        let n = y_true.len();
        let mean = |f: fn(&(f64, f64, f64)) -> f64| np_sum(&per_sample.iter().map(f).collect::<Vec<_>>()) / n as f64;
        let samples = Averages { precision: mean(|s| s.0), recall: mean(|s| s.1), f1: mean(|s| s.2) };
        let confusion = Confusion::MultiLabel(
            (0..k)
                .map(|l| {
                    let (tp, fp, fn_) = (counts.tp[l], counts.pred[l] - counts.tp[l], counts.truth[l] - counts.tp[l]);
                    [[n - tp - fp - fn_, fp], [fn_, tp]]
                })
                .collect(),
        );
        Ok(Self::from_counts(labels, n, exact as f64 / n as f64, counts, Some(samples), confusion))
    }

    fn from_counts(labels: &[String], n: usize, accuracy: f64, c: Counts, samples: Option<Averages>, confusion: Confusion) -> Self {
        let k = labels.len();
        let per_label: Vec<LabelScores> = (0..k)
            .map(|l| {
                let (precision, recall, f1) = scores(c.tp[l], c.pred[l], c.truth[l]);
                LabelScores { precision, recall, f1, support: c.truth[l] }
            })
            .collect();
        let (p, r, f) = scores(c.tp.iter().sum(), c.pred.iter().sum(), c.truth.iter().sum());
        let micro = Averages { precision: p, recall: r, f1: f };
        let column = |g: fn(&LabelScores) -> f64| per_label.iter().map(g).collect::<Vec<f64>>();
        let (ps, rs, fs) = (column(|s| s.precision), column(|s| s.recall), column(|s| s.f1));
        let macro_avg = Averages { precision: np_sum(&ps) / k as f64, recall: np_sum(&rs) / k as f64, f1: np_sum(&fs) / k as f64 };
        let weights: Vec<f64> = c.truth.iter().map(|&t| t as f64).collect();
        let weighted = Averages { precision: weighted_mean(&ps, &weights), recall: weighted_mean(&rs, &weights), f1: weighted_mean(&fs, &weights) };
        let mut zeros = Vec::new();
        for metric in [Metric::Precision, Metric::Recall, Metric::F1] {
            let hit = |l: usize| match metric {
                Metric::Precision => c.pred[l] == 0,
                Metric::Recall => c.truth[l] == 0,
                Metric::F1 => c.truth[l] + c.pred[l] == 0,
            };
            let names: Vec<String> = (0..k).filter(|&l| hit(l)).map(|l| labels[l].clone()).collect();
            if !names.is_empty() {
                zeros.push(ZeroDivision { metric, labels: names });
            }
        }
        Self { labels: labels.to_vec(), n, accuracy, per_label, micro, macro_avg, weighted, samples, confusion, zero_division: zeros }
    }

    /// The metrics as one JSON object: `accuracy`, `precision_macro`, `recall_macro`,
    /// `f1_macro`, `f1_micro`, `f1_weighted`, `per_label` (label → `{precision, recall, f1,
    /// support}`), `confusion_matrix`, `labels` (the order of the matrix) and `n`.
    pub fn to_json(&self) -> serde_json::Value {
        let per_label: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .zip(&self.per_label)
            .map(|(name, s)| {
                let scores = serde_json::json!({"precision": s.precision, "recall": s.recall, "f1": s.f1, "support": s.support});
                (name.clone(), scores)
            })
            .collect();
        let confusion_matrix = match &self.confusion {
            Confusion::SingleLabel(m) => serde_json::json!(m),
            Confusion::MultiLabel(m) => serde_json::json!(m),
        };
        serde_json::json!({
            "accuracy": self.accuracy,
            "precision_macro": self.macro_avg.precision,
            "recall_macro": self.macro_avg.recall,
            "f1_macro": self.macro_avg.f1,
            "f1_micro": self.micro.f1,
            "f1_weighted": self.weighted.f1,
            "per_label": per_label,
            "confusion_matrix": confusion_matrix,
            "labels": self.labels,
            "n": self.n,
        })
    }

    /// Byte-for-byte `sklearn.metrics.classification_report(y_true, y_pred,
    /// labels=range(len(labels)), target_names=labels, digits=2, zero_division=0)`.
    pub fn report_text(&self) -> String {
        const DIGITS: usize = 2;
        let width = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max("weighted avg".len()).max(DIGITS);
        // scikit-learn's quirk: single-label data with no true positive at all counts
        // support in floats (`_multilabel_confusion_matrix`'s "pathological case"), printed
        // as `1.0`.
        let float_support = matches!(self.confusion, Confusion::SingleLabel(_)) && self.micro.precision == 0.0;
        let support = |s: usize| if float_support { format!("{s}.0") } else { s.to_string() };
        let row = |name: &str, p: f64, r: f64, f: f64, s: usize| format!("{name:>width$}  {p:>9.DIGITS$} {r:>9.DIGITS$} {f:>9.DIGITS$} {:>9}\n", support(s));
        let mut out = format!("{:>width$}  {:>9} {:>9} {:>9} {:>9}\n\n", "", "precision", "recall", "f1-score", "support");
        for (name, s) in self.labels.iter().zip(&self.per_label) {
            out += &row(name, s.precision, s.recall, s.f1, s.support);
        }
        out += "\n";
        let total: usize = self.per_label.iter().map(|s| s.support).sum();
        let avg = |out: &mut String, name: &str, a: &Averages| *out += &row(name, a.precision, a.recall, a.f1, total);
        match &self.samples {
            None => out += &format!("{:>width$}  {:>9} {:>9} {:>9.DIGITS$} {:>9}\n", "accuracy", "", "", self.micro.f1, support(total)),
            Some(_) => avg(&mut out, "micro avg", &self.micro),
        }
        avg(&mut out, "macro avg", &self.macro_avg);
        avg(&mut out, "weighted avg", &self.weighted);
        if let Some(samples) = &self.samples {
            avg(&mut out, "samples avg", samples);
        }
        out
    }

    /// [`Self::report_text`] followed by the confusion matrix (rows = true labels, columns =
    /// predicted, in `labels` order; multi-label: `[[tn, fp], [fn, tp]]` per label).
    pub fn to_text(&self) -> String {
        let mut out = self.report_text();
        let name_width = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        match &self.confusion {
            Confusion::SingleLabel(m) => {
                out += "\nconfusion matrix (rows: true label, columns: predicted label)\n\n";
                let cell = m.iter().flatten().map(|c| c.to_string().len()).max().unwrap_or(1);
                let widths: Vec<usize> = self.labels.iter().map(|l| l.chars().count().max(cell)).collect();
                out += &format!("{:>name_width$}", "");
                for (l, w) in self.labels.iter().zip(&widths) {
                    out += &format!("  {l:>w$}");
                }
                out += "\n";
                for (l, counts) in self.labels.iter().zip(m) {
                    out += &format!("{l:>name_width$}");
                    for (c, w) in counts.iter().zip(&widths) {
                        out += &format!("  {c:>w$}");
                    }
                    out += "\n";
                }
            }
            Confusion::MultiLabel(m) => {
                out += "\nconfusion matrix per label ([[tn, fp], [fn, tp]])\n\n";
                for (l, [[tn, fp], [fn_, tp]]) in self.labels.iter().zip(m) {
                    out += &format!("{l:>name_width$}  [[{tn}, {fp}], [{fn_}, {tp}]]\n");
                }
            }
        }
        out
    }
}

fn check_shape(n_true: usize, n_pred: usize, labels: &[String]) -> Result<(), Error> {
    if n_true != n_pred {
        return Err(Error::Input(format!("{n_true} true labels but {n_pred} predictions")));
    }
    if n_true == 0 {
        return Err(Error::Input("no samples to evaluate".into()));
    }
    if labels.is_empty() {
        return Err(Error::Input("no labels".into()));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(i, l)| labels[..*i].contains(l)) {
        return Err(Error::Input(format!("label {l:?} is listed twice (at {} and {i})", labels.iter().position(|x| x == l).unwrap_or(0))));
    }
    Ok(())
}

/// (precision, recall, F1) from counts, 0.0 on a zero denominator (scikit-learn's
/// `_prf_divide` with `zero_division=0`; F1 as `2·tp / (true + predicted)`).
fn scores(tp: usize, pred: usize, truth: usize) -> (f64, f64, f64) {
    let div = |num: f64, den: usize| if den == 0 { 0.0 } else { num / den as f64 };
    (div(tp as f64, pred), div(tp as f64, truth), div(2.0 * tp as f64, truth + pred))
}

/// numpy's `np.average(a, weights=w)`: `sum(a * w) / sum(w)`; all-zero weights fall back to
/// the plain mean (scikit-learn's `_nanaverage`).
fn weighted_mean(a: &[f64], w: &[f64]) -> f64 {
    let scale = np_sum(w);
    if scale == 0.0 {
        return np_sum(a) / a.len() as f64;
    }
    np_sum(&a.iter().zip(w).map(|(a, w)| a * w).collect::<Vec<_>>()) / scale
}

/// numpy's float64 `sum` of a contiguous array: pairwise summation, 8 accumulators in
/// blocks of up to 128 (`pairwise_sum_DOUBLE`), so averages round as scikit-learn's do.
fn np_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(0.0, |acc, x| acc + x);
    }
    if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (acc, x) in r.iter_mut().zip(&a[i..i + 8]) {
                *acc += x;
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &a[i..] {
            res += x;
        }
        return res;
    }
    let half = n / 2 - (n / 2) % 8;
    np_sum(&a[..half]) + np_sum(&a[half..])
}

#[cfg(test)]
mod tests;
