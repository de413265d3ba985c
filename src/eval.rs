//! Evaluation metrics. [`classification`]: accuracy, precision, recall, F1 and the confusion
//! matrix of a classifier's predictions, computed as scikit-learn computes them.

pub mod classification;

pub use classification::{Averages, ClassificationReport, Confusion, LabelScores, Metric, ZeroDivision};
