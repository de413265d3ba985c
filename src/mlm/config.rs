//! The recipe slices of masked-language-model training: `[data]` ([`MaskedLmDataConfig`]: where
//! the text is, which field holds it, how long a sequence is, whether texts are packed) and
//! `[task]` ([`MaskedLmTaskConfig`]: the masking rates, as transformers'
//! `DataCollatorForLanguageModeling` spells them). The training task embeds them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::classify::config::{one_or_many, opt_one_or_many};

/// `[data]` of a masked-LM recipe: plain text files (one example per non-blank line) or rows of
/// JSON, JSONL, CSV, Parquet files and `datasets`' `save_to_disk` directories (their
/// `text_field`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskedLmDataConfig {
    /// Training text: a file, a folder (every file in it, recursively, in sorted order; hidden
    /// ones skipped), a glob (`data/*.txt`), a `save_to_disk` directory (a `DatasetDict`'s
    /// `train` split), or a list of them. `.json`, `.jsonl`, `.ndjson`, `.csv`, `.parquet` and
    /// `.arrow` files hold rows; any other file is plain UTF-8 text, one example per line.
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Validation text, same forms as `train` (a `DatasetDict`'s `validation` split, else its
    /// `test` split). When absent: a `DatasetDict` in `train` lends its `validation` (else
    /// `test`) split; otherwise `val_fraction` of the training texts is held out.
    #[serde(default, deserialize_with = "opt_one_or_many", skip_serializing_if = "Option::is_none")]
    pub val: Option<Vec<PathBuf>>,
    /// Fraction of the training texts (lines or rows, before packing) held out for validation,
    /// a seeded random choice, when there is no validation data (default 0.05; 0 disables
    /// evaluation). Setting it also declines a `DatasetDict`'s validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// A tokenizer directory or tokenizer.json; default: the model directory's tokenizer. It
    /// must have a mask token (`mask_token` in tokenizer_config.json or special_tokens_map.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// The field of a row holding the text (default "text"); plain text files have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// Tokens per sequence, special tokens included. Without packing: each text is cut to it as
    /// transformers' `tokenizer(text, truncation=True, max_length=N)` (the `[SEP]` is kept),
    /// and cut texts are counted; default no limit (the model's positions still bound what it
    /// can read). With packing: the block length (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Concatenate the tokenized texts (each with its own `[CLS] … [SEP]`, in file order) and
    /// cut the stream into blocks of exactly `max_length` tokens, dropping the remainder, as
    /// transformers' `run_mlm.py` `group_texts` does (there within each `map` batch of 1000
    /// rows; here over the whole split, so only the last block's remainder is dropped).
    #[serde(default, skip_serializing_if = "is_false")]
    pub packing: bool,
    /// Skip and count malformed rows and lines (bad JSON, a missing or non-string text field,
    /// non-UTF-8 text) instead of stopping at the first with an error naming its file and line.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_malformed: bool,
}

impl MaskedLmDataConfig {
    /// A data slice reading `paths` with the defaults.
    pub fn for_files(paths: Vec<PathBuf>) -> Self {
        MaskedLmDataConfig {
            train: paths,
            val: None,
            val_fraction: None,
            tokenizer: None,
            text_field: None,
            max_length: None,
            packing: false,
            skip_malformed: false,
        }
    }

    /// `text_field` in effect.
    pub fn text_field(&self) -> &str {
        self.text_field.as_deref().unwrap_or("text")
    }

    /// The reader's own checks (`(key, message)`): packing needs a block length, and a length
    /// is at least 1. The shared keys (`val_fraction`, `train`) are checked with every reader's.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.max_length == Some(0) {
            return Err(("data.max_length", "must be at least 1".into()));
        }
        if self.packing && self.max_length.is_none() {
            return Err(("data.packing", "packing needs data.max_length, the length of the packed blocks".into()));
        }
        Ok(())
    }
}

/// `[task]` of a masked-LM recipe (`kind = "masked_lm"`, which the lead's task enum reads): how
/// tokens are chosen and replaced ([`super::mask`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskedLmTaskConfig {
    /// Probability that a token (never a special token or padding) is chosen for prediction.
    #[serde(default = "default_mlm_probability", skip_serializing_if = "is_default_mlm_probability")]
    pub mlm_probability: f64,
    /// Of the chosen tokens, the fraction replaced by the mask token.
    #[serde(default = "default_mask_replace_prob", skip_serializing_if = "is_default_mask_replace_prob")]
    pub mask_replace_prob: f64,
    /// Of the chosen tokens, the fraction replaced by a random token (uniform over the whole
    /// vocabulary, added tokens included, as transformers draws it); the rest are left as they
    /// are.
    #[serde(default = "default_random_replace_prob", skip_serializing_if = "is_default_random_replace_prob")]
    pub random_replace_prob: f64,
}

impl Default for MaskedLmTaskConfig {
    fn default() -> Self {
        MaskedLmTaskConfig {
            mlm_probability: default_mlm_probability(),
            mask_replace_prob: default_mask_replace_prob(),
            random_replace_prob: default_random_replace_prob(),
        }
    }
}

impl MaskedLmTaskConfig {
    /// `mlm_probability` in (0, 1), the two replacement fractions in [0, 1] and their sum at
    /// most 1; an error is `(key, message)`.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let p = self.mlm_probability;
        if !(p > 0.0 && p < 1.0) {
            return Err(("task.mlm_probability", format!("{p} is not in (0, 1): the probability that a token is chosen for prediction")));
        }
        for (key, v) in [("task.mask_replace_prob", self.mask_replace_prob), ("task.random_replace_prob", self.random_replace_prob)] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key, format!("{v} is not in [0, 1]")));
            }
        }
        let sum = self.mask_replace_prob + self.random_replace_prob;
        if sum > 1.0 + 1e-12 {
            return Err((
                "task.random_replace_prob",
                format!("task.mask_replace_prob + task.random_replace_prob = {sum} exceeds 1 (both are fractions of the chosen tokens)"),
            ));
        }
        Ok(())
    }
}

fn default_mlm_probability() -> f64 {
    0.15
}
fn default_mask_replace_prob() -> f64 {
    0.8
}
fn default_random_replace_prob() -> f64 {
    0.1
}
fn is_default_mlm_probability(v: &f64) -> bool {
    *v == default_mlm_probability()
}
fn is_default_mask_replace_prob(v: &f64) -> bool {
    *v == default_mask_replace_prob()
}
fn is_default_random_replace_prob(v: &f64) -> bool {
    *v == default_random_replace_prob()
}
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_sections_parse_validate_and_refuse_unknown_keys() {
        let d: MaskedLmDataConfig = toml::from_str("train = \"a.txt\"\npacking = true\nmax_length = 128").unwrap();
        assert_eq!((d.train.clone(), d.text_field(), d.packing, d.max_length), (vec![PathBuf::from("a.txt")], "text", true, Some(128)));
        assert_eq!(d.validate(), Ok(()));
        let many: MaskedLmDataConfig = toml::from_str("train = [\"a\", \"b\"]\nval = \"c\"\ntext_field = \"review\"").unwrap();
        assert_eq!((many.train.len(), many.val.as_ref().map(Vec::len), many.text_field()), (2, Some(1), "review"));
        let e = toml::from_str::<MaskedLmDataConfig>("train = \"a\"\nlabel_field = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown field `label_field`"), "{e}");
        let no_len: MaskedLmDataConfig = toml::from_str("train = \"a\"\npacking = true").unwrap();
        assert_eq!(no_len.validate().unwrap_err().0, "data.packing");
        // Defaults are not written back into a resolved recipe.
        assert_eq!(toml::to_string(&MaskedLmDataConfig::for_files(vec!["x".into()])).unwrap().trim(), "train = [\"x\"]");

        let t: MaskedLmTaskConfig = toml::from_str("").unwrap();
        assert_eq!(t, MaskedLmTaskConfig { mlm_probability: 0.15, mask_replace_prob: 0.8, random_replace_prob: 0.1 });
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(toml::to_string(&t).unwrap().trim(), "");
        let e = toml::from_str::<MaskedLmTaskConfig>("mask_prob = 0.2").unwrap_err().to_string();
        assert!(e.contains("unknown field `mask_prob`"), "{e}");
    }

    #[test]
    fn masking_rates_out_of_range_name_their_key() {
        let with = |p: f64, m: f64, r: f64| MaskedLmTaskConfig { mlm_probability: p, mask_replace_prob: m, random_replace_prob: r }.validate();
        for p in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            let (key, msg) = with(p, 0.8, 0.1).unwrap_err();
            assert_eq!(key, "task.mlm_probability", "{p}");
            assert!(msg.contains("not in (0, 1)"), "{msg}");
        }
        assert_eq!(with(0.15, 1.2, 0.0).unwrap_err().0, "task.mask_replace_prob");
        assert_eq!(with(0.15, 0.5, -0.1).unwrap_err().0, "task.random_replace_prob");
        let (key, msg) = with(0.15, 0.8, 0.3).unwrap_err();
        assert_eq!(key, "task.random_replace_prob");
        assert!(msg.contains("exceeds 1"), "{msg}");
        assert_eq!(with(0.5, 1.0, 0.0), Ok(()));
        assert_eq!(with(0.15, 0.0, 1.0), Ok(()));
        assert_eq!(with(0.15, 0.7, 0.3), Ok(()));
    }
}
