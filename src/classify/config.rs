//! The recipe slices of sequence classification: `[data]` ([`ClassificationDataConfig`]: where
//! the rows are, which fields hold the text and the label, how long a sequence may be) and
//! `[task]` ([`ClassificationTaskConfig`]: the label list and the problem type). The training
//! task embeds them; `rankforge evaluate` and `predict` build a data slice from their flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::models::heads::ProblemType;

/// `[data]` of a classification recipe: rows with a text (and optionally a second text) and a
/// label, from JSON, JSONL, CSV, Parquet files or `datasets`' `save_to_disk` directories.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassificationDataConfig {
    /// Training rows: a file, a folder (every data file in it, recursively, in sorted order), a
    /// glob (`data/*.jsonl`), a `save_to_disk` directory (a `DatasetDict`'s `train` split), or
    /// a list of them.
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Validation rows, same forms as `train` (a `DatasetDict`'s `validation` split, else its
    /// `test` split). When absent: a `DatasetDict` in `train` lends its `validation` (else
    /// `test`) split, as a transformers user evaluates on it; otherwise `val_fraction` of the
    /// training rows is held out.
    #[serde(default, deserialize_with = "opt_one_or_many", skip_serializing_if = "Option::is_none")]
    pub val: Option<Vec<PathBuf>>,
    /// Fraction of the training rows held out for validation (a seeded random choice) when
    /// there is no validation data (default 0.05, as fine-tuning; 0 disables evaluation).
    /// Setting it also declines a `DatasetDict`'s validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// A tokenizer directory or tokenizer.json; default: the model directory's tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// The field holding the text (default "text").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// The field holding the second text of a pair (sentence pairs, e.g. NLI premise and
    /// hypothesis), encoded as transformers' `tokenizer(text, text_pair)` does (`[CLS] a [SEP] b
    /// [SEP]`, segment ids 0 then 1 for BERT). Absent: single texts. The tokenizer must have a
    /// pair template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair_field: Option<String>,
    /// The field holding the label (default "label"): a name or an integer (single-label), a
    /// list of them (multi-label), or a number (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_field: Option<String>,
    /// Tokens per sequence, special tokens included; longer ones are truncated as transformers'
    /// `truncation=True` (`longest_first`: a pair loses tokens from its longer text first) and
    /// counted. Default: no limit (the model's positions still bound what it can read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Skip and count malformed rows (bad JSON, a missing text or label field, a wrong type)
    /// instead of stopping at the first with an error naming its file and line. A label outside
    /// the label list is always an error.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_malformed: bool,
}

impl ClassificationDataConfig {
    /// A data slice reading `paths` with the default field names (evaluation, prediction).
    pub fn for_files(paths: Vec<PathBuf>) -> Self {
        ClassificationDataConfig {
            train: paths,
            val: None,
            val_fraction: None,
            tokenizer: None,
            text_field: None,
            text_pair_field: None,
            label_field: None,
            max_length: None,
            skip_malformed: false,
        }
    }

    /// `text_field` in effect.
    pub fn text_field(&self) -> &str {
        self.text_field.as_deref().unwrap_or("text")
    }

    /// `label_field` in effect.
    pub fn label_field(&self) -> &str {
        self.label_field.as_deref().unwrap_or("label")
    }
}

/// `[task]` of a classification recipe (`kind = "classification"`, which the lead's task enum
/// reads): the labels and the loss.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassificationTaskConfig {
    /// The label names, in id order (`id2label`). Default: the distinct labels of the training
    /// data, sorted (names as strings; integer labels map to themselves, `0..=max`, named "0",
    /// "1", ...; a `save_to_disk` `ClassLabel` column gives its own names). A label of the data
    /// that is not listed is an error naming its file and line. Regression: one name (default
    /// "LABEL_0").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// transformers' `problem_type`. Default: inferred as transformers infers it — one label
    /// (or numbers with a fraction) → regression (MSE), lists of labels → multi-label (BCE),
    /// otherwise single-label (cross-entropy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemTypeName>,
}

/// The recipe spelling of [`ProblemType`] (transformers' `config.problem_type` strings).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProblemTypeName {
    /// Cross-entropy over one label per row.
    SingleLabelClassification,
    /// BCE-with-logits over any number of labels per row (a list).
    MultiLabelClassification,
    /// Mean squared error on a number.
    Regression,
}

impl From<ProblemTypeName> for ProblemType {
    fn from(p: ProblemTypeName) -> ProblemType {
        match p {
            ProblemTypeName::SingleLabelClassification => ProblemType::SingleLabel,
            ProblemTypeName::MultiLabelClassification => ProblemType::MultiLabel,
            ProblemTypeName::Regression => ProblemType::Regression,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

pub(crate) fn opt_one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<PathBuf>>, D::Error> {
    one_or_many(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_sections_parse_and_refuse_unknown_keys() {
        let d: ClassificationDataConfig = toml::from_str("train = \"a.jsonl\"\ntext_pair_field = \"hypothesis\"").unwrap();
        assert_eq!(d.train, vec![PathBuf::from("a.jsonl")]);
        assert_eq!((d.text_field(), d.label_field()), ("text", "label"));
        assert_eq!(d.text_pair_field.as_deref(), Some("hypothesis"));
        let many: ClassificationDataConfig = toml::from_str("train = [\"a\", \"b\"]\nval = \"c\"").unwrap();
        assert_eq!((many.train.len(), many.val.as_ref().map(Vec::len)), (2, Some(1)));
        let e = toml::from_str::<ClassificationDataConfig>("train = \"a\"\nprompt_field = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown field `prompt_field`"), "{e}");
        let t: ClassificationTaskConfig = toml::from_str("labels = [\"neg\", \"pos\"]\nproblem_type = \"multi_label_classification\"").unwrap();
        assert_eq!(t.problem_type.map(ProblemType::from), Some(ProblemType::MultiLabel));
        let e = toml::from_str::<ClassificationTaskConfig>("problem_type = \"multi\"").unwrap_err().to_string();
        assert!(e.contains("single_label_classification"), "{e}");
        // Defaults are not written back into a resolved recipe.
        assert_eq!(toml::to_string(&ClassificationDataConfig::for_files(vec!["x".into()])).unwrap().trim(), "train = [\"x\"]");
    }
}
