//! `[hub]`: where rank 0 uploads the run's model on the Hugging Face Hub (`src/hub`), and when.

use serde::{Deserialize, Serialize};

/// When rank 0 uploads.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PushWhen {
    /// `final/` once, after the run has written it (its model card included).
    #[default]
    End,
    /// Each checkpoint as well, as it is written, into `checkpoint_folder` of the same repo
    /// and revision (as the Trainer's `hub_strategy = "all_checkpoints"`), then `final/` at the
    /// repo's root.
    Checkpoints,
}

/// `[hub]`: push the model to the Hub (token from `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN` or
/// `$HF_HOME/token`; endpoint from `HF_ENDPOINT`). Rank 0 checks the token before training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// The repo id, `namespace/name`; a template: `{name}` is the run directory's name (a
    /// sweep's trial name), any recipe key (`{train.lr}`, `{lr}`) and the aliases `{bs}`,
    /// `{epoch}` render as Python's `str()` does: `"user/dpo_model_lr{lr}_bs{bs}_epoch{epoch}"`.
    pub repo: String,
    /// Create the repo private (an existing repo keeps its visibility).
    #[serde(default)]
    pub private: bool,
    /// The branch to commit to; created from `main` when it does not exist.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// `"end"` (default) or `"checkpoints"`.
    #[serde(default)]
    pub push: PushWhen,
    /// With `push = "checkpoints"`: the folder of each checkpoint in the repo; `{step}` is its
    /// step.
    #[serde(default = "default_checkpoint_folder")]
    pub checkpoint_folder: String,
    /// The commit message of the final upload (default "rankforge: <task> model, step N").
    #[serde(default)]
    pub commit_message: Option<String>,
}

fn default_revision() -> String {
    "main".into()
}

fn default_checkpoint_folder() -> String {
    "checkpoint-{step}".into()
}

impl HubConfig {
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.revision.is_empty() {
            return Err(("hub.revision", "must not be empty".into()));
        }
        if self.push == PushWhen::Checkpoints && !self.checkpoint_folder.contains("{step}") {
            return Err(("hub.checkpoint_folder", format!("{:?} must contain {{step}} (one folder per checkpoint)", self.checkpoint_folder)));
        }
        Ok(())
    }
}
