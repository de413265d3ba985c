//! The recipe slices of DPO training: `[task]` ([`DpoTaskConfig`]: β, the loss, the reference
//! model, as TRL's `DPOConfig` spells them) and `[data]` ([`DpoDataConfig`]: where the
//! preference rows are, their field names, `max_length`). The training task embeds them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::classify::config::{one_or_many, opt_one_or_many};

/// The DPO losses, as TRL defines them (`loss_type`): one type, [`crate::dpo::loss::LossType`].
pub use crate::dpo::loss::LossType as DpoLossType;

fn is_default_loss(t: &DpoLossType) -> bool {
    *t == DpoLossType::Sigmoid
}

/// `[task]` of a DPO recipe (`kind = "dpo"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DpoTaskConfig {
    /// β: how far the policy may move from the reference (TRL's default 0.1). Must be > 0.
    #[serde(default = "default_beta", skip_serializing_if = "is_default_beta")]
    pub beta: f64,
    /// `sigmoid` (default), `ipo`, `hinge` or `robust`, as TRL defines them.
    #[serde(default, skip_serializing_if = "is_default_loss")]
    pub loss_type: DpoLossType,
    /// ε of the `robust` loss, in [0, 0.5) (default 0). Only `robust` uses it: setting it with
    /// another loss is an error (older TRL smoothed `sigmoid` with it; current TRL does not).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// A separate reference model directory (an HF causal LM with the policy's vocabulary).
    /// Default: the policy's own base weights (adapters disabled under LoRA, a frozen copy of
    /// the initial weights for full fine-tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_model: Option<PathBuf>,
    /// Compute the reference log-probs of every pair once before training (TRL's
    /// `precompute_ref_log_probs`), then drop the reference model from memory.
    #[serde(default, skip_serializing_if = "is_false")]
    pub precompute_ref: bool,
    /// Turn dropout off in the policy and the reference (TRL's default, true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub disable_dropout: bool,
}

impl Default for DpoTaskConfig {
    fn default() -> Self {
        DpoTaskConfig {
            beta: default_beta(),
            loss_type: DpoLossType::Sigmoid,
            label_smoothing: 0.0,
            ref_model: None,
            precompute_ref: false,
            disable_dropout: true,
        }
    }
}

impl DpoTaskConfig {
    /// `beta` finite and > 0, `label_smoothing` in [0, 0.5) and only with `robust`; an error is
    /// `(key, message)`.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let b = self.beta;
        if !(b > 0.0 && b.is_finite()) {
            return Err(("task.beta", format!("must be a finite number > 0, got {b}")));
        }
        let e = self.label_smoothing;
        if !(0.0..0.5).contains(&e) {
            return Err(("task.label_smoothing", format!("{e} is not in [0, 0.5)")));
        }
        if e != 0.0 && self.loss_type != DpoLossType::Robust {
            return Err((
                "task.label_smoothing",
                format!(
                    "only the robust loss uses it (task.loss_type = \"robust\"); this recipe has loss_type = \"{}\" \
                     (current TRL's sigmoid loss has no label smoothing)",
                    self.loss_type.as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// `[data]` of a DPO recipe: preference rows from JSON, JSONL, CSV, Parquet files and
/// `save_to_disk` directories, each with a chosen and a rejected completion and (unless the
/// prompt is implicit) a prompt; strings, or lists of `{role, content}` messages rendered with
/// the chat template. See [`super::data`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DpoDataConfig {
    /// Training rows: a file, a folder (every data file in it, recursively, in sorted order), a
    /// glob, a `save_to_disk` directory (a `DatasetDict`'s `train` split), or a list of them.
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Validation rows, same forms as `train` (a `DatasetDict`'s `validation`, else `test`,
    /// split). When absent: a `DatasetDict` in `train` lends its `validation` (else `test`)
    /// split; otherwise `val_fraction` of the training pairs is held out.
    #[serde(default, deserialize_with = "opt_one_or_many", skip_serializing_if = "Option::is_none")]
    pub val: Option<Vec<PathBuf>>,
    /// Fraction of the training pairs held out for validation, a seeded random choice, when
    /// there is no validation data (default 0.05; 0 disables evaluation). Setting it also
    /// declines a `DatasetDict`'s validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// A tokenizer directory or tokenizer.json; default: the model directory's (its chat
    /// template renders conversational rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// The field holding the prompt (default "prompt"). When the first row has no such field,
    /// the prompt is implicit: the shared start of chosen and rejected (TRL's `extract_prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_field: Option<String>,
    /// The field holding the preferred completion (default "chosen").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_field: Option<String>,
    /// The field holding the dispreferred completion (default "rejected").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_field: Option<String>,
    /// Tokens of prompt + completion per sequence (TRL's default 1024): longer sequences keep
    /// their start when batched, and pairs whose prompt alone has `max_length` tokens or more
    /// are dropped and counted (nothing of their completions would be left).
    #[serde(default = "default_max_length", skip_serializing_if = "is_default_max_length")]
    pub max_length: usize,
    /// Skip and count malformed rows (bad JSON, a missing field, a wrong type) instead of
    /// stopping at the first with an error naming its file and line.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_malformed: bool,
}

impl DpoDataConfig {
    /// A data slice reading `paths` with the defaults.
    pub fn for_files(paths: Vec<PathBuf>) -> Self {
        DpoDataConfig {
            train: paths,
            val: None,
            val_fraction: None,
            tokenizer: None,
            prompt_field: None,
            chosen_field: None,
            rejected_field: None,
            max_length: default_max_length(),
            skip_malformed: false,
        }
    }

    /// `prompt_field` in effect.
    pub fn prompt_field(&self) -> &str {
        self.prompt_field.as_deref().unwrap_or("prompt")
    }

    /// `chosen_field` in effect.
    pub fn chosen_field(&self) -> &str {
        self.chosen_field.as_deref().unwrap_or("chosen")
    }

    /// `rejected_field` in effect.
    pub fn rejected_field(&self) -> &str {
        self.rejected_field.as_deref().unwrap_or("rejected")
    }

    /// The reader's own checks (`(key, message)`): a length of at least 1 and three distinct
    /// field names. The shared keys (`val_fraction`, `train`) are checked with every reader's.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.max_length == 0 {
            return Err(("data.max_length", "must be at least 1".into()));
        }
        let (p, c, r) = (self.prompt_field(), self.chosen_field(), self.rejected_field());
        if c == r {
            return Err(("data.rejected_field", format!("\"{r}\" is also data.chosen_field")));
        }
        if p == c || p == r {
            return Err(("data.prompt_field", format!("\"{p}\" is also the chosen or rejected field")));
        }
        Ok(())
    }
}

fn default_beta() -> f64 {
    0.1
}
fn is_default_beta(v: &f64) -> bool {
    *v == default_beta()
}
fn default_max_length() -> usize {
    1024
}
fn is_default_max_length(v: &usize) -> bool {
    *v == default_max_length()
}
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpo_sections_parse_with_trl_defaults_and_refuse_unknown_keys() {
        let t: DpoTaskConfig = toml::from_str("").unwrap();
        assert_eq!(t, DpoTaskConfig::default());
        assert_eq!((t.beta, t.loss_type, t.label_smoothing, t.disable_dropout, t.precompute_ref), (0.1, DpoLossType::Sigmoid, 0.0, true, false));
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(toml::to_string(&t).unwrap().trim(), "", "defaults are not written back");
        let t: DpoTaskConfig = toml::from_str("beta = 0.5\nloss_type = \"robust\"\nlabel_smoothing = 0.1\nref_model = \"ref\"\nprecompute_ref = true\ndisable_dropout = false").unwrap();
        assert_eq!((t.beta, t.loss_type, t.label_smoothing), (0.5, DpoLossType::Robust, 0.1));
        assert_eq!((t.ref_model.as_deref(), t.precompute_ref, t.disable_dropout), (Some(std::path::Path::new("ref")), true, false));
        assert_eq!(toml::from_str::<DpoTaskConfig>(&toml::to_string(&t).unwrap()).unwrap(), t, "round-trips");
        for (name, want) in [("sigmoid", DpoLossType::Sigmoid), ("ipo", DpoLossType::Ipo), ("hinge", DpoLossType::Hinge), ("robust", DpoLossType::Robust)] {
            let t: DpoTaskConfig = toml::from_str(&format!("loss_type = \"{name}\"")).unwrap();
            assert_eq!((t.loss_type, t.loss_type.as_str()), (want, name));
        }
        let e = toml::from_str::<DpoTaskConfig>("loss_type = \"kto\"").unwrap_err().to_string();
        assert!(e.contains("unknown variant `kto`, expected one of `sigmoid`, `ipo`, `hinge`, `robust`"), "{e}");
        let e = toml::from_str::<DpoTaskConfig>("betta = 0.1").unwrap_err().to_string();
        assert!(e.contains("unknown field `betta`"), "{e}");

        let d: DpoDataConfig = toml::from_str("train = \"p.jsonl\"").unwrap();
        assert_eq!(d, DpoDataConfig::for_files(vec!["p.jsonl".into()]));
        assert_eq!((d.prompt_field(), d.chosen_field(), d.rejected_field(), d.max_length), ("prompt", "chosen", "rejected", 1024));
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(toml::to_string(&d).unwrap().trim(), "train = [\"p.jsonl\"]");
        let d: DpoDataConfig = toml::from_str("train = [\"a\", \"b\"]\nval = \"c\"\nchosen_field = \"good\"\nrejected_field = \"bad\"\nmax_length = 64").unwrap();
        assert_eq!((d.train.len(), d.chosen_field(), d.rejected_field(), d.max_length), (2, "good", "bad", 64));
        let e = toml::from_str::<DpoDataConfig>("train = \"a\"\ntext_field = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown field `text_field`"), "{e}");
    }

    #[test]
    fn beta_label_smoothing_and_fields_out_of_range_name_their_key() {
        let with = |beta: f64, loss_type: DpoLossType, label_smoothing: f64| {
            DpoTaskConfig { beta, loss_type, label_smoothing, ..DpoTaskConfig::default() }.validate()
        };
        for b in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let (key, msg) = with(b, DpoLossType::Sigmoid, 0.0).unwrap_err();
            assert_eq!(key, "task.beta", "{b}");
            assert!(msg.contains("must be a finite number > 0"), "{msg}");
        }
        for e in [-0.1, 0.5, 0.7, f64::NAN] {
            let (key, msg) = with(0.1, DpoLossType::Robust, e).unwrap_err();
            assert_eq!(key, "task.label_smoothing", "{e}");
            assert!(msg.contains("is not in [0, 0.5)"), "{msg}");
        }
        assert_eq!(with(0.1, DpoLossType::Robust, 0.49), Ok(()));
        assert_eq!(with(1e-3, DpoLossType::Ipo, 0.0), Ok(()));
        let (key, msg) = with(0.1, DpoLossType::Sigmoid, 0.1).unwrap_err();
        assert_eq!(key, "task.label_smoothing");
        assert!(msg.contains("only the robust loss uses it") && msg.contains("loss_type = \"sigmoid\""), "{msg}");
        assert_eq!(with(0.1, DpoLossType::Hinge, 0.2).unwrap_err().0, "task.label_smoothing");

        let mut d = DpoDataConfig::for_files(vec!["a".into()]);
        d.max_length = 0;
        assert_eq!(d.validate().unwrap_err().0, "data.max_length");
        d.max_length = 8;
        d.rejected_field = Some("chosen".into());
        assert_eq!(d.validate().unwrap_err().0, "data.rejected_field");
        d.rejected_field = None;
        d.prompt_field = Some("rejected".into());
        assert_eq!(d.validate().unwrap_err().0, "data.prompt_field");
    }
}
