//! `[task]`: the training objective. `kind` selects it; each kind's keys are its own struct
//! (`deny_unknown_fields`), so a key of another task is an error naming the task it belongs to.
//! Absent, the task is `causal_lm`: pretraining for `model.kind = "gpt"`, supervised
//! fine-tuning for `"hf"`.

use serde::{Deserialize, Serialize};

/// `[task]`, by `kind`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskConfig {
    /// Next-token prediction: pretraining (`model.kind = "gpt"`) or SFT (`"hf"`).
    #[default]
    CausalLm,
    /// Sequence classification (or regression) with a `*ForSequenceClassification` head.
    Classification(ClassificationTaskConfig),
}

/// The task of a recipe, without its keys.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    CausalLm,
    Classification,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::CausalLm => "causal_lm",
            TaskKind::Classification => "classification",
        }
    }

    pub const ALL: [TaskKind; 2] = [TaskKind::CausalLm, TaskKind::Classification];
}

impl TaskConfig {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskConfig::CausalLm => TaskKind::CausalLm,
            TaskConfig::Classification(_) => TaskKind::Classification,
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
            TaskConfig::CausalLm => None,
        }
    }
}

/// `[task]` keys of `causal_lm`: none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CausalLmKeys {}

/// transformers' `problem_type`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProblemTypeChoice {
    /// One label per example: cross-entropy.
    SingleLabelClassification,
    /// A list of labels per example: binary cross-entropy per label.
    MultiLabelClassification,
    /// A number per example: mean squared error (`num_labels = 1`).
    Regression,
}

/// `[task] kind = "classification"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassificationTaskConfig {
    /// The label names in id order (`id2label`). Default: the sorted distinct labels of the
    /// training data; integer labels map to themselves (0..=max). A row whose label is not in
    /// the list is an error naming its file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// `single_label_classification`, `multi_label_classification` or `regression`. Default:
    /// as transformers infers it — a list label is multi-label, a float label with no
    /// `labels` regression, otherwise single-label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemTypeChoice>,
}
