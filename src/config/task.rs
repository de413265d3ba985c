//! `[task]`: the training objective. `kind` selects it; each kind's keys are its own struct
//! (`deny_unknown_fields`), so a key of another task is an error naming the task it belongs to.
//! Kinds: `causal_lm`, `classification`, `masked_lm`, `dpo`. Absent, the task is `causal_lm`: pretraining for `model.kind = "gpt"`, supervised
//! fine-tuning for `"hf"`.

use serde::{Deserialize, Serialize};

pub use crate::classify::config::{ClassificationTaskConfig, ProblemTypeName};
pub use crate::dpo::config::{DpoLossType, DpoTaskConfig};
pub use crate::mlm::config::MaskedLmTaskConfig;

/// `[task]`, by `kind`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskConfig {
    /// Next-token prediction: pretraining (`model.kind = "gpt"`) or SFT (`"hf"`).
    #[default]
    CausalLm,
    /// Sequence classification (or regression) with a `*ForSequenceClassification` head.
    Classification(ClassificationTaskConfig),
    /// Masked-language-model fine-tuning of an encoder (`*ForMaskedLM`).
    MaskedLm(MaskedLmTaskConfig),
    /// Direct preference optimisation of a causal LM on chosen/rejected pairs.
    Dpo(DpoTaskConfig),
}

/// The task of a recipe, without its keys.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    CausalLm,
    Classification,
    MaskedLm,
    Dpo,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::CausalLm => "causal_lm",
            TaskKind::Classification => "classification",
            TaskKind::MaskedLm => "masked_lm",
            TaskKind::Dpo => "dpo",
        }
    }

    pub const ALL: [TaskKind; 4] = [TaskKind::CausalLm, TaskKind::Classification, TaskKind::MaskedLm, TaskKind::Dpo];
}

impl TaskConfig {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskConfig::CausalLm => TaskKind::CausalLm,
            TaskConfig::Classification(_) => TaskKind::Classification,
            TaskConfig::MaskedLm(_) => TaskKind::MaskedLm,
            TaskConfig::Dpo(_) => TaskKind::Dpo,
        }
    }

    /// The default task writes no `[task]` section, so pretraining and SFT recipes resolve as
    /// before.
    pub fn is_default(&self) -> bool {
        *self == TaskConfig::CausalLm
    }

    pub fn classification(&self) -> Option<&ClassificationTaskConfig> {
        match self {
            TaskConfig::Classification(c) => Some(c),
            _ => None,
        }
    }

    pub fn masked_lm(&self) -> Option<&MaskedLmTaskConfig> {
        match self {
            TaskConfig::MaskedLm(c) => Some(c),
            _ => None,
        }
    }

    pub fn dpo(&self) -> Option<&DpoTaskConfig> {
        match self {
            TaskConfig::Dpo(c) => Some(c),
            _ => None,
        }
    }
}

/// `[task]` keys of `causal_lm`: none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CausalLmKeys {}

