//! `rankforge evaluate`: a classifier's metrics on labelled rows, as scikit-learn computes
//! them. Predictions: the argmax of the logits (single-label), every label whose sigmoid is
//! above 0.5 (multi-label). The data's labels must be names (or ids) of the model's
//! `id2label`. Zero divisions give 0 with scikit-learn's warning.

use std::path::PathBuf;

use tch::{Device, Kind};

use super::config::ClassificationDataConfig;
use super::data::{self, ClsExample};
use super::labels::ClsLabel;
use super::model::Classifier;
use crate::error::{Error, Result};
use crate::eval::ClassificationReport;
use crate::models::heads::ProblemType;

/// What `rankforge evaluate` was asked.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// A classifier directory (full or PEFT adapter).
    pub model: PathBuf,
    /// The labelled rows (`--data`; files, folders, globs, `save_to_disk` directories), with
    /// the field names and `max_length` of `[data]`.
    pub data: ClassificationDataConfig,
    /// The split of a `DatasetDict` (default: `validation`, else `test`).
    pub split: Option<String>,
    pub batch_size: usize,
    pub device: Device,
}

/// Reads the model and the data, predicts, and scores the predictions.
pub fn evaluate(opts: &EvaluateOptions) -> Result<ClassificationReport> {
    let clf = Classifier::load(&opts.model, opts.device)?;
    let problem_type = clf.problem_type();
    if problem_type == Some(ProblemType::Regression) {
        return Err(Error::model(&opts.model, "is a regression model (problem_type regression or num_labels = 1): evaluate reports classification metrics"));
    }
    let encoder = input_encoder(&clf, &opts.data, "--max-length")?;
    let splits: Vec<&str> = match &opts.split {
        Some(s) => vec![s.as_str()],
        None => data::VAL_SPLITS.to_vec(),
    };
    let labels = data::FixedLabels { names: &clf.model.id2label, problem_type, source: "the model's id2label" };
    let (examples, space, stats) = data::load_labelled("--data", &splits, &opts.data, labels, &encoder)?;
    if stats.truncated > 0 {
        tracing::warn!(truncated = stats.truncated, max_length = ?effective_max(&clf, &opts.data), "inputs longer than the model reads were truncated");
    }
    let refs: Vec<&ClsExample> = examples.iter().collect();
    let logits = clf.logits(&refs, opts.batch_size)?;
    let report = match space.problem_type {
        ProblemType::MultiLabel => {
            let truth: Vec<Vec<bool>> = examples.iter().map(|e| match &e.label {
                ClsLabel::Multi(h) => h.clone(),
                _ => Vec::new(),
            }).collect();
            let pred = logits.gt(0.0).to_kind(Kind::Int64);
            let n = clf.model.num_labels();
            let pred: Vec<i64> = Vec::try_from(pred.view(-1)).map_err(Error::Torch)?;
            let pred: Vec<Vec<bool>> = pred.chunks(n).map(|r| r.iter().map(|&x| x == 1).collect()).collect();
            ClassificationReport::multilabel(&truth, &pred, &space.names)?
        }
        _ => {
            let truth: Vec<usize> = examples.iter().map(|e| if let ClsLabel::Class(c) = e.label { c } else { 0 }).collect();
            let pred: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).map_err(Error::Torch)?;
            let pred: Vec<usize> = pred.into_iter().map(|p| p as usize).collect();
            ClassificationReport::new(&truth, &pred, &space.names)?
        }
    };
    for z in &report.zero_division {
        tracing::warn!("{}", z.message());
    }
    Ok(report)
}

/// `max_length` in effect: the data's, bounded by the model's positions.
fn effective_max(clf: &Classifier, data: &ClassificationDataConfig) -> Option<usize> {
    match (data.max_length, clf.max_positions) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The encoder for a model's inputs: the data's `max_length` (named `key`) bounded by the
/// model's positions, so a long text is cut rather than read past the position table.
pub fn input_encoder(clf: &Classifier, data: &ClassificationDataConfig, key: &str) -> Result<super::encode::TextEncoder> {
    let mut data = data.clone();
    data.max_length = effective_max(clf, &data);
    data::encoder(&data, &clf.tokenizer, key)
}
