//! Evaluation metrics. [`classification`]: accuracy, precision, recall, F1 and the confusion
//! matrix of a classifier's predictions, computed as scikit-learn computes them. [`text`]:
//! ROUGE, BLEU and exact match of generated text, as rouge_score, sacreBLEU and HF `evaluate`.
//! [`lm`]: `rankforge evaluate` on a causal LM (strided perplexity, completion loss, generation
//! metrics).

pub mod classification;
pub mod lm;
pub mod text;

pub use classification::{Averages, ClassificationReport, Confusion, LabelScores, Metric, ZeroDivision};
