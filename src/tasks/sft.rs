//! Supervised fine-tuning (`task.kind = "causal_lm"`, `model.kind = "hf"`) of a pretrained
//! Hugging Face causal LM (GPT-2, Llama, Mistral, Qwen2) on SFT data ([`crate::sft`]), every
//! weight (full fine-tuning) or LoRA adapters only (the recipe has `[lora]`), on the engine
//! ([`crate::engine`]):
//!
//! - setup, in dependency order: the tokenizer (the model directory's unless `data.tokenizer`
//!   names another) tokenizes the data and may need more embedding rows than the model has
//!   (then the model is resized, new rows = the mean row); the model loads in the dtype
//!   `model.dtype` resolves to; LoRA wraps its linear layers and freezes the base; AdamW gets
//!   the trainable tensors only; a checkpoint restores them; rank 0's state reaches every rank.
//! - a step: the global batch of `train.global_batch_size` examples is a pure function of
//!   (seed, epoch, global index) ([`ExampleOrder`]); rank r takes its slice
//!   ([`crate::data::rank_slice`]) in micro-batches of `micro_batch_size` (right-padded by
//!   [`crate::sft::collate`]). The loss is the sum of the token cross-entropies over label
//!   tokens divided by the number of label tokens in the *whole* global batch (each rank counts
//!   it from the data), so the summed gradients are the global batch's mean however it is split:
//!   1 and N ranks train the same up to reduction order. Only trainable tensors are
//!   all-reduced, clipped and optimised.
//! - evaluation (rank 0): held-out loss and perplexity over label tokens, plus greedy
//!   completions of a few held-out prompts, into metrics.jsonl.
//! - checkpoints: LoRA → the PEFT adapter, optimizer moments, train_state.json (+ manifest);
//!   full → the HF model directory as pretraining writes it. Exact resume, on any number of
//!   ranks (the data cursor is the global sample count).
//! - export ([`export`]): `final/` = PEFT adapter directory + `final/merged/` (LoRA), or an HF
//!   model directory (full), staged and renamed into place.

pub mod export;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::TrainState;
use crate::config::{ModelDtype, Recipe, SftDataConfig};
use crate::data::ExampleOrder;
use crate::engine::{Objective, SetupCtx, StepBatch, Task};
use crate::error::{Error, Result};
use crate::eval::lm::generation::{self, GenScores};
use crate::generate;
use crate::models::CausalLm;
use crate::recipe_loop;
use crate::sft::{self, Example, IGNORE};
use crate::tokenizer::LoadedTokenizer;

/// A fine-tuning run's task state.
pub struct Sft {
    recipe: Recipe,
    device: Device,
    bf16: bool,
    /// `model.path`, absolute: the base model (`base_model_name_or_path` of the adapter).
    base: PathBuf,
    tok: LoadedTokenizer,
    model: CausalLm,
    train: Vec<Example>,
    /// Trained label tokens (after the shift) of each training example.
    label_counts: Vec<u64>,
    val: Vec<Example>,
    order: ExampleOrder,
    pad_id: i64,
    stats: sft::SftStats,
}

/// The dtype of the model's weights: `model.dtype`, `auto` = bf16 on CUDA under LoRA (the
/// frozen base is only read), fp32 otherwise.
pub fn weight_kind(dtype: Option<ModelDtype>, device: Device, lora: bool) -> Kind {
    match dtype.unwrap_or(ModelDtype::Auto) {
        ModelDtype::Fp32 => Kind::Float,
        ModelDtype::Bf16 => Kind::BFloat16,
        ModelDtype::Auto if device.is_cuda() && lora => Kind::BFloat16,
        ModelDtype::Auto => Kind::Float,
    }
}

/// Trained tokens of an example: labels other than -100 after the first position (position 0
/// is never a target).
fn label_count(e: &Example) -> u64 {
    e.labels.iter().skip(1).filter(|&&l| l != IGNORE).count() as u64
}

/// The loss share of one micro-batch, ids and unshifted labels `(B, T)` on the model's device:
/// its summed token loss over the label tokens of the whole global batch (also what
/// `rankforge bench` times).
pub fn micro_loss(model: &CausalLm, ids: &Tensor, labels: &Tensor, label_tokens: u64, bf16: bool, train: bool) -> Tensor {
    let denom = label_tokens.max(1) as f64;
    crate::device::autocast(ids.device(), bf16, || model.loss_sum(ids, labels, train)) / denom
}

/// `[data]` of a fine-tuning recipe.
fn sft_data(recipe: &Recipe) -> Result<&SftDataConfig> {
    recipe.data.sft().ok_or_else(|| Error::Input("[data] is not a fine-tuning section".into()))
}

/// `model.path`, checked to exist, made absolute.
pub(crate) fn model_dir(recipe: &Recipe) -> Result<PathBuf> {
    let path = recipe.model.hf().map(|h| h.path.as_path()).ok_or_else(|| Error::Input("model.path is not set".into()))?;
    if !path.is_dir() {
        return Err(Error::model(path, "model.path: no such directory (a local Hugging Face model directory is needed; nothing is downloaded)"));
    }
    Ok(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Loads the base model, grows its vocabulary to the tokenizer's when needed, attaches LoRA.
pub(crate) fn load_model(recipe: &Recipe, base: &Path, tok: &LoadedTokenizer, device: Device) -> Result<CausalLm> {
    let kind = weight_kind(recipe.model.hf().and_then(|h| h.dtype), device, recipe.lora.is_some());
    let mut model = CausalLm::from_pretrained(base, device, kind)?;
    let (tv, mv) = (tok.vocab_size(), model.vocab_size());
    if tv > mv {
        tracing::info!("the tokenizer has {tv} tokens, the model {mv} embedding rows: resizing to {tv} (new rows = the mean row)");
        model.resize_token_embeddings(tv)?;
    } else if tv < mv {
        tracing::debug!("the tokenizer has {tv} tokens, the model {mv} embedding rows (padded): kept");
    }
    if let Some(lora) = &recipe.lora {
        let adapted = model.add_lora(lora, recipe.train.seed)?;
        tracing::info!(layers = adapted.len(), r = lora.r, alpha = lora.alpha, "LoRA adapters attached; the base model is frozen");
    }
    Ok(model)
}

/// The tensors that train, under their names: the adapters (PEFT names) under LoRA, else every
/// parameter (HF names).
pub(crate) fn trainable(model: &mut CausalLm, lora: bool) -> Vec<(String, Tensor)> {
    if lora {
        model.lora_parameters()
    } else {
        model.named_parameters()
    }
}

/// Checks the data against the run: a training set, a global batch that every rank gets a share
/// of, GPT-2's hard context limit.
fn check_data(data: &sft::SftData, recipe: &Recipe, model: &CausalLm, world: usize) -> Result<()> {
    if data.train.is_empty() {
        return Err(Error::data(&recipe.data.sources().train[0], "data.train: no training example with a trained token"));
    }
    if recipe.train.global_batch_size < world {
        return Err(Error::Input(format!(
            "train.global_batch_size = {} is smaller than the {world} ranks: every rank needs at least one example per step",
            recipe.train.global_batch_size
        )));
    }
    let longest = data.train.iter().chain(&data.val).map(|e| e.input_ids.len()).max().unwrap_or(0);
    if let Some(n) = model.hard_context() {
        if longest > n {
            return Err(Error::Input(format!(
                "the longest example has {longest} tokens, more than the model's {n} positions (config.json n_positions): set data.max_length <= {n}"
            )));
        }
    }
    Ok(())
}

/// Copies `src` (name, tensor) into the same-named tensors of `dst`; every tensor of `dst`
/// must be there with its shape.
pub(crate) fn copy_named(dst: &[(String, Tensor)], src: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
    let mut src: std::collections::HashMap<String, Tensor> = src.into_iter().collect();
    for (name, t) in dst {
        let s = src.remove(name).ok_or_else(|| Error::model(path, format!("tensor {name} is missing (was the checkpoint written with another [lora] section?)")))?;
        if s.size() != t.size() {
            return Err(Error::model(path, format!("tensor {name}: shape {:?}, the run needs {:?}", s.size(), t.size())));
        }
        tch::no_grad(|| t.shallow_clone().copy_(&s.to_kind(t.kind())));
    }
    if let Some(extra) = src.keys().next() {
        return Err(Error::model(path, format!("tensor {extra} belongs to no trainable tensor of this run")));
    }
    Ok(())
}

impl Objective for Sft {
    /// The examples of one micro-batch (indices into the training set) and the global batch's
    /// label tokens, the loss denominator.
    type Micro = (Vec<usize>, u64);

    /// Collated here (right-padded), so only one micro-batch's tensors are alive at a time.
    fn micro_loss(&self, (idx, label_tokens): &Self::Micro, bf16: bool, train: bool) -> Result<Tensor> {
        let examples: Vec<&Example> = idx.iter().map(|&i| &self.train[i]).collect();
        let (ids, labels, _mask) = sft::collate(&examples, self.pad_id); // (B, T) each
        let (ids, labels) = (crate::device::to_device(&ids, self.device), crate::device::to_device(&labels, self.device));
        Ok(micro_loss(&self.model, &ids, &labels, *label_tokens, bf16, train))
    }

    fn zero_null_grads(&self) {
        self.model.zero_null_grads();
    }
}

impl Task for Sft {
    fn setup(ctx: &mut SetupCtx<'_>) -> Result<Self> {
        let recipe = ctx.recipe;
        let data_cfg = sft_data(recipe)?;
        let base = model_dir(recipe)?;
        // The tokenizer tokenizes the data and decides the vocabulary the model needs.
        let tok = LoadedTokenizer::load(data_cfg.tokenizer.as_deref().unwrap_or(&base))?;
        let data = sft::load(data_cfg, &tok, recipe.train.seed)?;
        let model = load_model(recipe, &base, &tok, ctx.device)?;
        check_data(&data, recipe, &model, ctx.dist.world())?;
        let label_counts = data.train.iter().map(label_count).collect();
        let order = ExampleOrder::new(data.train.len(), recipe.train.seed);
        let pad_id = tok.pad_or_eos_id().unwrap_or(0) as i64;
        let sft::SftData { train, val, stats } = data;
        Ok(Sft { recipe: recipe.clone(), device: ctx.device, bf16: ctx.bf16, base, tok, model, train, label_counts, val, order, pad_id, stats })
    }

    fn tokenizer(&self) -> &LoadedTokenizer {
        &self.tok
    }

    fn trainable(&mut self) -> Vec<(String, Tensor)> {
        trainable(&mut self.model, self.recipe.lora.is_some())
    }

    fn epoch_len(&self) -> u64 {
        self.train.len() as u64
    }

    fn epoch_of(&self, samples: u64) -> f64 {
        self.order.epoch_of(samples)
    }

    /// The global batch's examples ([`ExampleOrder`]); this rank's slice in micro-batches.
    /// The denominator is the label tokens of the whole global batch (every rank counts them
    /// from the data).
    fn batch(&mut self, step: u64, global: Range<u64>, mine: Range<u64>) -> Result<StepBatch<Self::Micro>> {
        let (seed, mb) = (self.recipe.train.seed, self.recipe.train.micro_batch_size);
        let first = global.start;
        let examples: Vec<usize> = global.map(|g| self.order.index(g)).collect();
        let label_tokens: u64 = examples.iter().map(|&i| self.label_counts[i]).sum();
        let tokens: u64 = examples.iter().map(|&i| self.train[i].input_ids.len() as u64).sum();
        let own = &examples[(mine.start - first) as usize..(mine.end - first) as usize];
        let micro = own
            .chunks(mb)
            .enumerate()
            .map(|(k, chunk)| ((chunk.to_vec(), label_tokens), recipe_loop::micro_seed(seed, step, mine.start + (k * mb) as u64)))
            .collect();
        let mut extra = Map::new();
        extra.insert("label_tokens".into(), json!(label_tokens));
        Ok(StepBatch { micro, tokens, extra })
    }

    fn has_eval(&self) -> bool {
        !self.val.is_empty()
    }

    /// Held-out loss and perplexity over label tokens (the same first `eval.max_batches`
    /// micro-batches each time) and greedy completions of the first held-out prompts.
    fn evaluate(&mut self, step: u64) -> Result<Value> {
        let (mut sum, mut count) = (0.0, 0u64);
        for chunk in self.val.chunks(self.recipe.train.micro_batch_size).take(self.recipe.eval.max_batches) {
            let examples: Vec<&Example> = chunk.iter().collect();
            let (ids, labels, _mask) = sft::collate(&examples, self.pad_id);
            let (ids, labels) = (ids.to_device(self.device), labels.to_device(self.device));
            sum += crate::device::autocast(self.device, self.bf16, || self.model.loss_sum(&ids, &labels, false)).double_value(&[]);
            count += chunk.iter().map(label_count).sum::<u64>();
        }
        let val_loss = sum / count.max(1) as f64;
        let (samples, scores) = self.samples()?;
        let mut row = json!({"step": step, "val_loss": val_loss, "val_ppl": val_loss.exp(), "samples": samples});
        if let (Some(scores), Some(map)) = (scores, row.as_object_mut()) {
            scores.insert_into(map, "val_");
        }
        Ok(row)
    }

    /// The trainable weights (a PEFT adapter, or the whole HF model) and the tokenizer.
    fn write_weights(&mut self, dir: &Path, step: u64) -> Result<()> {
        self.exported().write_checkpoint(dir, step)
    }

    fn restore_weights(&mut self, dir: &Path) -> Result<()> {
        self.exported().restore(dir)
    }

    fn export_final(&mut self, state: &TrainState) -> Result<()> {
        export::export_final(&mut self.exported(), state)
    }

    fn describe(&mut self) -> Vec<(&'static str, String)> {
        vec![
            ("task", "fine-tuning".into()),
            ("model", self.base.display().to_string()),
            ("params", self.model.num_params().to_string()),
            ("train_examples", self.train.len().to_string()),
            ("val_examples", self.val.len().to_string()),
            ("truncated", self.stats.truncated.to_string()),
            ("dropped", self.stats.dropped_no_labels.to_string()),
            ("dtype", format!("{:?}", self.model.kind())),
        ]
    }
}

impl Sft {
    fn exported(&mut self) -> export::Exported<'_> {
        export::Exported { recipe: &self.recipe, base: &self.base, tok: &self.tok, model: &mut self.model, bf16: self.bf16 }
    }

    /// `{prompt, completion}` for the first `eval.samples` held-out examples with a prompt:
    /// the tokens before the first label, continued greedily. With `eval.generate`, also the
    /// generation metrics of those completions against the references: the first run of label
    /// tokens (the completion; a conversation's first assistant turn), special tokens skipped.
    fn samples(&self) -> Result<(Vec<serde_json::Value>, Option<GenScores>)> {
        let opts = generation::greedy(self.recipe.eval.sample_tokens);
        let stop = generate::stop_ids(&self.model, &self.tok);
        let (mut out, mut predictions, mut references) = (Vec::new(), Vec::new(), Vec::new());
        for e in &self.val {
            if out.len() >= self.recipe.eval.samples {
                break;
            }
            let Some(start) = e.labels.iter().skip(1).position(|&l| l != IGNORE).map(|p| p + 1) else { continue };
            let prompt = e.input_ids[..start].to_vec();
            if self.model.hard_context().is_some_and(|n| prompt.len() >= n) {
                continue; // no room left to generate
            }
            let g = generate::generate(&self.model, &self.tok, prompt.clone(), &opts, &stop, |_| {})?;
            if self.recipe.eval.generate {
                predictions.push(generation::prediction_text(&self.tok, &g)?);
                let reference: Vec<u32> = e.labels[start..].iter().take_while(|&&l| l != IGNORE).map(|&l| l as u32).collect();
                references.push(generation::decode_plain(&self.tok, &reference)?);
            }
            out.push(json!({"prompt": self.tok.decode(&prompt)?, "completion": g.text}));
        }
        // No held-out example with a prompt (text data): nothing to score.
        let scores = (self.recipe.eval.generate && !predictions.is_empty()).then(|| generation::score(&predictions, &references, false)).transpose()?;
        Ok((out, scores))
    }
}
