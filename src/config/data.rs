//! `[data]`: what to train on. Its keys depend on the task (see [`super::TaskConfig`]), so it
//! is one struct per reader, chosen by the task and the model kind ([`DataConfig`]), each with
//! `deny_unknown_fields`: pretraining reads plain text ([`TextDataConfig`]), causal-LM
//! fine-tuning reads SFT rows ([`SftDataConfig`]), classification reads text + label rows
//! ([`ClassificationDataConfig`]), masked LM reads texts ([`MaskedLmDataConfig`]), DPO reads
//! preference rows ([`DpoDataConfig`]). A key of another reader is an error that names the task it
//! belongs to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::classify::config::ClassificationDataConfig;
pub use crate::dpo::config::DpoDataConfig;
pub use crate::mlm::config::MaskedLmDataConfig;
use crate::error::{Error, Result};

/// `[data]`, by task. Serialised as the section it came from (no tag).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum DataConfig {
    /// Pretraining (`task.kind = "causal_lm"`, `model.kind = "gpt"`).
    Text(TextDataConfig),
    /// Fine-tuning a causal LM (`task.kind = "causal_lm"`, `model.kind = "hf"`).
    Sft(SftDataConfig),
    /// `task.kind = "classification"`.
    Classification(ClassificationDataConfig),
    /// `task.kind = "masked_lm"`.
    MaskedLm(MaskedLmDataConfig),
    /// `task.kind = "dpo"`.
    Dpo(DpoDataConfig),
}

/// The keys every reader has: where the data is and how validation is split off.
pub struct Sources<'a> {
    pub train: &'a [PathBuf],
    pub val: Option<&'a [PathBuf]>,
    pub val_fraction: Option<f64>,
    pub tokenizer: Option<&'a Path>,
}

impl Sources<'_> {
    /// Validation fraction in effect: 0 with `val` files, else `val_fraction` (default 0.05).
    pub fn effective_val_fraction(&self) -> f64 {
        match (self.val, self.val_fraction) {
            (Some(_), _) => 0.0,
            (None, Some(f)) => f,
            (None, None) => 0.05,
        }
    }
}

impl DataConfig {
    pub fn sources(&self) -> Sources<'_> {
        let (train, val, val_fraction, tokenizer) = match self {
            DataConfig::Text(d) => (&d.train, &d.val, d.val_fraction, &d.tokenizer),
            DataConfig::Sft(d) => (&d.train, &d.val, d.val_fraction, &d.tokenizer),
            DataConfig::Classification(d) => (&d.train, &d.val, d.val_fraction, &d.tokenizer),
            DataConfig::MaskedLm(d) => (&d.train, &d.val, d.val_fraction, &d.tokenizer),
            DataConfig::Dpo(d) => (&d.train, &d.val, d.val_fraction, &d.tokenizer),
        };
        Sources { train, val: val.as_deref(), val_fraction, tokenizer: tokenizer.as_deref() }
    }

    /// Tokens per example (`max_length`), for the readers that have it.
    pub fn max_length(&self) -> Option<usize> {
        match self {
            DataConfig::Text(_) => None,
            DataConfig::Sft(d) => d.max_length,
            DataConfig::Classification(d) => d.max_length,
            DataConfig::MaskedLm(d) => d.max_length,
            DataConfig::Dpo(d) => Some(d.max_length),
        }
    }

    pub fn text(&self) -> Option<&TextDataConfig> {
        match self {
            DataConfig::Text(d) => Some(d),
            _ => None,
        }
    }

    pub fn sft(&self) -> Option<&SftDataConfig> {
        match self {
            DataConfig::Sft(d) => Some(d),
            _ => None,
        }
    }

    pub fn masked_lm(&self) -> Option<&MaskedLmDataConfig> {
        match self {
            DataConfig::MaskedLm(d) => Some(d),
            _ => None,
        }
    }

    pub fn dpo(&self) -> Option<&DpoDataConfig> {
        match self {
            DataConfig::Dpo(d) => Some(d),
            _ => None,
        }
    }

    pub fn classification(&self) -> Option<&ClassificationDataConfig> {
        match self {
            DataConfig::Classification(d) => Some(d),
            _ => None,
        }
    }

    pub(super) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let s = self.sources();
        if let Some(f) = s.val_fraction {
            if !(0.0..0.5).contains(&f) {
                return Err(("data.val_fraction", format!("{f} is not in [0, 0.5)")));
            }
            if s.val.is_some() && f > 0.0 {
                return Err(("data.val_fraction", "give either data.val or data.val_fraction".into()));
            }
        }
        if s.train.is_empty() {
            return Err(("data.train", "names no file".into()));
        }
        if self.max_length() == Some(0) {
            return Err(("data.max_length", "must be at least 1".into()));
        }
        if let DataConfig::Sft(d) = self {
            if d.packing && d.max_length.is_none() {
                return Err(("data.packing", "packing needs data.max_length, the length of the packed sequences".into()));
            }
        }
        if let DataConfig::MaskedLm(d) = self {
            d.validate()?;
        }
        if let DataConfig::Dpo(d) = self {
            d.validate()?;
        }
        Ok(())
    }
}

/// `[data]` of pretraining: plain text files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextDataConfig {
    /// Training text: a file, a folder (every file in it, recursively, in sorted order) or a
    /// list of them. Relative paths are relative to the working directory.
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Validation text, same forms as `train`. When absent, the last `val_fraction` of the
    /// training tokens is held out instead.
    #[serde(default, deserialize_with = "opt_one_or_many")]
    pub val: Option<Vec<PathBuf>>,
    /// Fraction held out for validation when `val` is absent (default 0.05). 0 disables
    /// evaluation.
    #[serde(default)]
    pub val_fraction: Option<f64>,
    /// A tokenizer directory (with tokenizer.json) or a tokenizer.json file, e.g. made by
    /// `rankforge tokenizer train`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Where tokenized data is cached (memory-mapped token files keyed by tokenizer and source
    /// content). Default: $RANKFORGE_CACHE, else $XDG_CACHE_HOME/rankforge, else
    /// ~/.cache/rankforge; the files go in its `tokens/` folder.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl TextDataConfig {
    /// `tokenizer`, which pretraining needs.
    pub fn pretraining_tokenizer(&self) -> Result<&Path> {
        self.tokenizer.as_deref().ok_or_else(|| {
            Error::Input(
                "data.tokenizer is not set: pretraining needs a tokenizer directory or tokenizer.json \
                 (make one with `rankforge tokenizer train`)"
                    .into(),
            )
        })
    }
}

/// `[data]` of causal-LM fine-tuning: JSON, JSONL, CSV or Parquet rows (or `save_to_disk`
/// directories) in one of the [`SftFormat`] layouts (see the README's "Fine-tuning data").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SftDataConfig {
    /// Training data: a file, a folder (every data file in it, recursively, in sorted order; a
    /// `save_to_disk` folder as `load_from_disk` reads it), a glob (`data/*.jsonl`) or a list
    /// of them.
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Validation data, same forms as `train`. When absent, a seeded random `val_fraction` of
    /// the training examples is held out instead.
    #[serde(default, deserialize_with = "opt_one_or_many")]
    pub val: Option<Vec<PathBuf>>,
    /// Fraction of the training examples held out when `val` is absent (default 0.05). 0
    /// disables evaluation.
    #[serde(default)]
    pub val_fraction: Option<f64>,
    /// A tokenizer directory or tokenizer.json; default: the model directory's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// The layout of each row. `auto` (default) decides from the first row's fields: messages,
    /// prompt + completion, instruction + output (alpaca), instruction + response (dolly),
    /// text; the field names below apply to the detection too.
    #[serde(default, skip_serializing_if = "SftFormat::is_auto")]
    pub format: SftFormat,
    /// `text` format: the field holding the text (default "text").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// `prompt_completion` format: the prompt field (default "prompt").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_field: Option<String>,
    /// `prompt_completion` format: the completion field (default "completion").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_field: Option<String>,
    /// `messages` format: the list of `{role, content}` turns (default "messages").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_field: Option<String>,
    /// `alpaca` and `dolly`: the instruction field (default "instruction").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_field: Option<String>,
    /// `alpaca`: the optional input field (default "input").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_field: Option<String>,
    /// `alpaca`: the answer field (default "output").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_field: Option<String>,
    /// `dolly`: the optional context field (default "context").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_field: Option<String>,
    /// `dolly`: the answer field (default "response").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_field: Option<String>,
    /// Tokens per example. Longer examples keep their start and are counted as truncated; one
    /// left without any trained token is dropped. With `packing`, the length of the packed
    /// sequences. Default: no limit (and no packing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Concatenate examples (inputs and labels alike) and cut the stream into sequences of
    /// `max_length` tokens, so no compute is spent on padding. Examples are not truncated then;
    /// they continue in the next sequence.
    #[serde(default, skip_serializing_if = "is_false")]
    pub packing: bool,
    /// Skip and count malformed rows (bad JSON, a missing field, a wrong type) instead of
    /// stopping at the first with an error naming its file and line.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_malformed: bool,
}

impl SftDataConfig {
    /// Validation fraction in effect: 0 with `val` files, else `val_fraction` (default 0.05).
    pub fn effective_val_fraction(&self) -> f64 {
        Sources { train: &self.train, val: self.val.as_deref(), val_fraction: self.val_fraction, tokenizer: None }.effective_val_fraction()
    }
}

/// Layouts of fine-tuning rows (TRL's dataset formats, plus Alpaca and Dolly).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SftFormat {
    /// Decide from the first row's fields.
    #[default]
    Auto,
    /// `{"text"}`: trained on every token.
    Text,
    /// `{"prompt", "completion"}`: trained on the completion (and EOS) only.
    PromptCompletion,
    /// `{"messages": [{role, content}, ...]}` through the chat template: trained on assistant
    /// turns only.
    Messages,
    /// `{"instruction", "input", "output"}` in the Alpaca prompt: trained on the output.
    Alpaca,
    /// `{"instruction", "context", "response", "category"}` in the Alpaca prompt (context as
    /// the input): trained on the response.
    Dolly,
}

impl SftFormat {
    pub fn is_auto(&self) -> bool {
        *self == SftFormat::Auto
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

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<PathBuf>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

fn opt_one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<PathBuf>>, D::Error> {
    one_or_many(d).map(Some)
}
