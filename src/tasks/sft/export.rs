//! What a causal-LM fine-tuning run (SFT, DPO) writes (the export step): the trainable weights
//! of a checkpoint and `<run.dir>/final/`.
//!
//! - LoRA: `final/` is a PEFT adapter directory (`adapter_config.json` with
//!   `base_model_name_or_path` = the absolute `model.path` and `task_type` `CAUSAL_LM`,
//!   `adapter_model.safetensors`), the tokenizer files and a model card (`library_name: peft`);
//!   `final/merged/` is the base model with the adapters folded in: a plain HF model directory
//!   with its own card (`library_name: transformers`).
//! - Full fine-tuning: `final/` is a plain HF model directory (config.json, model.safetensors,
//!   generation_config.json, tokenizer files, model card).
//! - Either way the card's training curve, `curves.svg`, lies beside each card ([`crate::card`]).
//!
//! Both are staged beside `final/` and renamed into place ([`recipe_loop::write_staged_dir`]).

use std::path::Path;

use crate::checkpoint::TrainState;
use crate::config::Recipe;
use crate::error::Result;
use crate::models::CausalLm;
use crate::recipe_loop;
use crate::tokenizer::LoadedTokenizer;

/// What a causal-LM fine-tuning run exports: its recipe, base model directory, tokenizer and
/// the model being trained; `bf16` whether it computed in bf16 (for the model card).
pub struct Exported<'a> {
    pub recipe: &'a Recipe,
    pub base: &'a Path,
    pub tok: &'a LoadedTokenizer,
    pub model: &'a mut CausalLm,
    pub bf16: bool,
}

/// The trainable weights into `dir`: the PEFT adapter under LoRA, else the HF model files;
/// never non-finite ones.
pub fn write_weights(t: &mut Exported<'_>, dir: &Path, step: u64) -> Result<()> {
    let trained = super::trainable(t.model, t.recipe.lora.is_some());
    recipe_loop::ensure_finite(trained.iter().map(|(n, w)| (n.as_str(), w)), "the model", step)?;
    match &t.recipe.lora {
        Some(lora) => {
            let base = t.base.display().to_string();
            crate::lora::save_adapter(dir, &t.model.linears_mut(), lora, Some(&base), "CAUSAL_LM")
        }
        None => t.model.save_pretrained(dir),
    }
}

impl Exported<'_> {
    /// A checkpoint's weights ([`write_weights`]) and the tokenizer, into `dir`.
    pub fn write_checkpoint(&mut self, dir: &Path, step: u64) -> Result<()> {
        write_weights(self, dir, step)?;
        self.tok.save_pretrained(dir, self.model.max_positions())
    }

    /// Loads the trained weights of checkpoint `dir`: the adapter under LoRA, else the model.
    pub fn restore(&mut self, dir: &Path) -> Result<()> {
        if self.recipe.lora.is_some() {
            let path = dir.join(crate::lora::ADAPTER_WEIGHTS);
            super::copy_named(&self.model.lora_parameters(), crate::st::load(&path)?, &path)
        } else {
            self.model.load_weights(dir)
        }
    }
}

/// Writes `<run.dir>/final/` (and, under LoRA, `final/merged/`). Merging folds the adapters
/// into the model held in memory: call it last.
pub fn export_final(t: &mut Exported<'_>, state: &TrainState) -> Result<()> {
    let run_dir = t.recipe.run.dir.clone();
    let lora = t.recipe.lora.is_some();
    let max_len = t.model.max_positions();
    let target = recipe_loop::write_staged_dir(&run_dir, "final", |staged| {
        write_weights(t, staged, state.step)?;
        t.tok.save_pretrained(staged, max_len)?;
        let info = card_info(t);
        if lora {
            let merged = staged.join("merged");
            let n = t.model.merge_lora()?.len();
            t.model.save_pretrained(&merged)?;
            t.tok.save_pretrained(&merged, max_len)?;
            tracing::debug!(layers = n, "adapters merged into final/merged");
        }
        crate::card::write_final(staged, t.recipe, state, &info)
    })?;
    if lora {
        tracing::info!(
            path = %target.display(),
            "final adapter written (peft: PeftModel.from_pretrained(base, \"{0}\")); merged model in {0}/merged",
            target.display()
        );
    } else {
        tracing::info!(path = %target.display(), "final model written (transformers: AutoModelForCausalLM.from_pretrained)");
    }
    Ok(())
}

/// What the model card says about the model ([`crate::card`]); read before merging.
fn card_info(t: &Exported<'_>) -> crate::card::CardInfo {
    let model_type = t.model.model_type().to_string();
    let architecture = match model_type.as_str() {
        "gpt2" => "GPT2LMHeadModel".to_string(),
        "llama" => "LlamaForCausalLM".to_string(),
        "mistral" => "MistralForCausalLM".to_string(),
        "qwen2" => "Qwen2ForCausalLM".to_string(),
        other => format!("AutoModelForCausalLM ({other})"),
    };
    crate::card::CardInfo {
        model_type,
        architecture,
        params: Some(t.model.num_params()),
        base: Some(t.base.to_path_buf()),
        bf16: t.bf16,
        ..Default::default()
    }
}
