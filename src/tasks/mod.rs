//! The training objectives on the engine ([`crate::engine`]): each is one file plus its data
//! reader. [`run`] picks the task of a recipe: `task.kind = "causal_lm"` is pretraining
//! ([`pretrain`], `model.kind = "gpt"`) or supervised fine-tuning ([`sft`], `"hf"`);
//! `"classification"` is [`classification`], `"masked_lm"` [`masked_lm`], `"dpo"` [`dpo`].

pub mod classification;
pub mod dpo;
pub mod masked_lm;
pub mod pretrain;
pub mod sft;

use crate::config::{ModelKind, Recipe, TaskConfig};
use crate::error::Result;
use crate::recipe_loop::RunOptions;

/// `rankforge train`: runs (or resumes) `recipe` with its task.
pub fn run(recipe: Recipe, opts: &RunOptions) -> Result<()> {
    match (&recipe.task, recipe.model.kind()) {
        (TaskConfig::CausalLm, ModelKind::Gpt) => crate::engine::run::<pretrain::Pretrain>(recipe, opts),
        (TaskConfig::CausalLm, ModelKind::Hf) => crate::engine::run::<sft::Sft>(recipe, opts),
        (TaskConfig::Classification(_), _) => crate::engine::run::<classification::Classification>(recipe, opts),
        (TaskConfig::MaskedLm(_), _) => crate::engine::run::<masked_lm::MaskedLmTask>(recipe, opts),
        (TaskConfig::Dpo(_), _) => crate::engine::run::<dpo::Dpo>(recipe, opts),
    }
}
