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
use crate::engine::run_joined;
use crate::recipe_loop::{Joined, RunOptions};

/// `rankforge train`: joins the job, then runs (or resumes) `recipe` with its task.
pub fn run(recipe: Recipe, opts: &RunOptions) -> Result<()> {
    let mut job = crate::recipe_loop::join(&recipe, true)?;
    run_in(recipe, opts, &mut job)?;
    job.dist.status.set_phase(rankforge_proto::Phase::Done);
    Ok(())
}

/// Runs (or resumes) `recipe` with its task on a job joined before (each trial of
/// `rankforge sweep`); see [`crate::engine::run_joined`].
pub fn run_in(recipe: Recipe, opts: &RunOptions, job: &mut Joined) -> Result<()> {
    match (&recipe.task, recipe.model.kind()) {
        (TaskConfig::CausalLm, ModelKind::Gpt) => run_joined::<pretrain::Pretrain>(recipe, opts, job),
        (TaskConfig::CausalLm, ModelKind::Hf) => run_joined::<sft::Sft>(recipe, opts, job),
        (TaskConfig::Classification(_), _) => run_joined::<classification::Classification>(recipe, opts, job),
        (TaskConfig::MaskedLm(_), _) => run_joined::<masked_lm::MaskedLmTask>(recipe, opts, job),
        (TaskConfig::Dpo(_), _) => run_joined::<dpo::Dpo>(recipe, opts, job),
    }
}
