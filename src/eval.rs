//! Evaluation metrics. [`classification`]: accuracy, precision, recall, F1 and the confusion
//! matrix of a classifier's predictions, computed as scikit-learn computes them. [`lm`]:
//! `rankforge evaluate` on a causal LM (strided perplexity, completion loss, generation
//! metrics).

pub mod classification;
pub mod lm;
pub mod text;

pub use classification::{Averages, ClassificationReport, Confusion, LabelScores, Metric, ZeroDivision};
