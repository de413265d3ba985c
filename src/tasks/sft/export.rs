//! What a causal-LM fine-tuning run (SFT, DPO) writes (the export step): the trainable weights
//! of a checkpoint and `<run.dir>/final/`.
//!
//! - LoRA: `final/` is a PEFT adapter directory (`adapter_config.json` with
//!   `base_model_name_or_path` = the absolute `model.path` and `task_type` `CAUSAL_LM`,
//!   `adapter_model.safetensors`), the tokenizer files and a model card (`library_name: peft`);
//!   `final/merged/` is the base model with the adapters folded in: a plain HF model directory.
//! - Full fine-tuning: `final/` is a plain HF model directory (config.json, model.safetensors,
//!   generation_config.json, tokenizer files, model card).
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
/// the model being trained; `method` names the training in the model card ("sft", "dpo").
pub struct Exported<'a> {
    pub recipe: &'a Recipe,
    pub base: &'a Path,
    pub tok: &'a LoadedTokenizer,
    pub model: &'a mut CausalLm,
    pub method: &'static str,
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
        crate::fsutil::write_atomic(&staged.join("README.md"), model_card(t, state).as_bytes())?;
        if lora {
            let merged = staged.join("merged");
            let n = t.model.merge_lora()?.len();
            t.model.save_pretrained(&merged)?;
            t.tok.save_pretrained(&merged, max_len)?;
            tracing::debug!(layers = n, "adapters merged into final/merged");
        }
        Ok(())
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

fn targets(t: &crate::lora::TargetModules) -> String {
    match t {
        crate::lora::TargetModules::Names(names) => names.join(", "),
        crate::lora::TargetModules::Preset(p) => p.clone(),
    }
}

/// `README.md`: YAML front matter as the Hub reads it, what was trained, how to load it.
fn model_card(t: &Exported<'_>, state: &TrainState) -> String {
    let base = t.base.display().to_string();
    let (library, method, load) = match &t.recipe.lora {
        Some(l) => (
            "peft",
            format!("LoRA (r = {}, alpha = {}, target_modules {}) on the frozen base model", l.r, l.alpha, targets(&l.target_modules)),
            format!(
                "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\
                 base = AutoModelForCausalLM.from_pretrained(\"{base}\")\n\
                 model = PeftModel.from_pretrained(base, \"path/to/final\")\n\
                 tok = AutoTokenizer.from_pretrained(\"path/to/final\")\n\
                 # or the merged model: AutoModelForCausalLM.from_pretrained(\"path/to/final/merged\")"
            ),
        ),
        None => (
            "transformers",
            "full fine-tuning (every weight)".to_string(),
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\
             model = AutoModelForCausalLM.from_pretrained(\"path/to/final\")\n\
             tok = AutoTokenizer.from_pretrained(\"path/to/final\")"
                .to_string(),
        ),
    };
    let lora_tag = if t.recipe.lora.is_some() { "- lora\n" } else { "" };
    let (tag, what) = match t.method {
        "dpo" => ("dpo", "Direct preference optimisation (DPO)"),
        _ => ("sft", "Supervised fine-tuning"),
    };
    format!(
        "---\nlibrary_name: {library}\nbase_model: {base:?}\npipeline_tag: text-generation\ntags:\n- rankforge\n- {tag}\n{lora_tag}- text-generation\n---\n\n\
         # {} fine-tuned with rankforge\n\n\
         {what} of `{base}` ({}), {method}, for {} steps on {} tokens.\n\n\
         ```python\n{load}\n```\n\n## Recipe\n\n```toml\n{}```\n",
        t.model.model_type(),
        t.model.model_type(),
        state.step,
        state.tokens,
        t.recipe.to_toml()
    )
}
