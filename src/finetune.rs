//! `rankforge train` on a `[model] kind = "hf"` recipe: supervised fine-tuning of a pretrained
//! Hugging Face causal LM (GPT-2, Llama, Mistral, Qwen2) on SFT data ([`crate::sft`]), every
//! weight (full fine-tuning) or LoRA adapters only (the recipe has `[lora]`). Reads as
//! setup → train → export, like pretraining ([`crate::train`]), whose blocks it shares
//! through [`crate::recipe_loop`]:
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

mod export;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::config::{ModelDtype, Recipe, TrainConfig};
use crate::data::{rank_slice, ExampleOrder};
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::generate::{self, GenOptions};
use crate::metrics::MetricsWriter;
use crate::models::CausalLm;
use crate::optim::{clip_grad_norm, lr_at, AdamW};
use crate::progress::Progress;
use crate::recipe_loop::{self, RunOptions};
use crate::sft::{self, Example, IGNORE};
use crate::tokenizer::LoadedTokenizer;

/// Everything a fine-tuning run holds.
struct FineTuner {
    recipe: Recipe,
    device: Device,
    bf16: bool,
    /// `model.path`, absolute: the base model (`base_model_name_or_path` of the adapter).
    base: PathBuf,
    tok: LoadedTokenizer,
    model: CausalLm,
    opt: AdamW,
    train: Vec<Example>,
    /// Trained label tokens (after the shift) of each training example.
    label_counts: Vec<u64>,
    val: Vec<Example>,
    order: ExampleOrder,
    pad_id: i64,
    state: TrainState,
    /// Rank 0 only.
    metrics: Option<MetricsWriter>,
    dist: Dist,
    /// Rank 0: the run directory's lock, released when the run ends.
    _lock: Option<crate::run_dir::RunLock>,
}

/// What one optimizer step returns.
struct StepOut {
    loss: f64,
    grad_norm: f64,
    lr: f64,
    /// Tokens (without padding) and label tokens of the global batch.
    tokens: u64,
    label_tokens: u64,
    checkpoint_requested: bool,
    stop_requested: bool,
}

/// Runs (or resumes) a fine-tuning recipe; `opts` say where to resume from and whether a run
/// directory that cannot be resumed may be started over.
pub fn run(recipe: Recipe, opts: &RunOptions) -> Result<()> {
    let mut t = FineTuner::setup(recipe, opts)?;
    t.train()?;
    if t.dist.is_main() {
        export::export_final(&mut t)?;
    }
    t.dist.status.set_phase(rankforge_proto::Phase::Done);
    Ok(())
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

/// `model.path`, checked to exist, made absolute.
pub(crate) fn model_dir(recipe: &Recipe) -> Result<PathBuf> {
    let path = recipe.model.path.as_deref().ok_or_else(|| Error::Input("model.path is not set".into()))?;
    if !path.is_dir() {
        return Err(Error::model(path, "model.path: no such directory (a local Hugging Face model directory is needed; nothing is downloaded)"));
    }
    Ok(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Loads the base model, grows its vocabulary to the tokenizer's when needed, attaches LoRA.
fn load_model(recipe: &Recipe, base: &Path, tok: &LoadedTokenizer, device: Device) -> Result<CausalLm> {
    let kind = weight_kind(recipe.model.dtype, device, recipe.lora.is_some());
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
fn trainable(model: &mut CausalLm, lora: bool) -> Vec<(String, Tensor)> {
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
        return Err(Error::data(&recipe.data.train[0], "data.train: no training example with a trained token"));
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
fn copy_named(dst: &[(String, Tensor)], src: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
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

impl FineTuner {
    fn setup(recipe: Recipe, opts: &RunOptions) -> Result<FineTuner> {
        // Join the job first: a rank with a different recipe is refused before any work, and a
        // second run on the same run directory before it touches it.
        let recipe_loop::Joined { device, bf16, hash, mut dist, lock } = recipe_loop::join(&recipe, true)?;
        let run_dir = recipe.run.dir.clone();
        let main = dist.is_main();
        let base = model_dir(&recipe)?;
        // The tokenizer tokenizes the data and decides the vocabulary the model needs.
        let tok = LoadedTokenizer::load(recipe.data.tokenizer.as_deref().unwrap_or(&base))?;
        let tok_hash = recipe_loop::tokenizer_hash(&tok)?;
        let data = sft::load(&recipe.data, &tok, recipe.train.seed)?;
        let mut model = load_model(&recipe, &base, &tok, device)?;
        check_data(&data, &recipe, &model, dist.world())?;
        let lora = recipe.lora.is_some();
        let mut opt = AdamW::new(trainable(&mut model, lora), &recipe.train);
        // Rank 0 picks the resume point and restores it; the others receive its state below.
        let resume = recipe_loop::resume_point(opts, main, &run_dir)?;
        let state = match &resume {
            // Checkpoints written from now on come from the current recipe, world and tokenizer.
            Some(dir) => TrainState {
                recipe_hash: hash.clone(),
                world_size: dist.world(),
                tokenizer_sha256: Some(tok_hash.clone()),
                ..Self::restore(dir, &mut model, &mut opt, &recipe, &tok, &tok_hash)?
            },
            None => recipe_loop::fresh_state(&recipe, &hash, dist.world(), &tok_hash),
        };
        let params = trainable(&mut model, lora).into_iter().map(|(_, t)| t).collect();
        let state = recipe_loop::sync_start(&mut dist, state, params, &mut opt)?;
        // Inputs are valid: only now touch the run directory.
        let metrics = if main { Some(recipe_loop::open_run_dir(&recipe, state.step)?) } else { None };
        let n_trainable: i64 = trainable(&mut model, lora).iter().map(|(_, t)| t.numel() as i64).sum();
        tracing::info!(
            model = %base.display(),
            params = model.num_params(),
            trainable = n_trainable,
            train_examples = data.train.len(),
            val_examples = data.val.len(),
            truncated = data.stats.truncated,
            dropped = data.stats.dropped_no_labels,
            device = ?device,
            dtype = ?model.kind(),
            bf16,
            ranks = dist.world(),
            "fine-tuning ready; {}",
            if state.step > 0 { format!("resuming at step {}", state.step) } else { "starting at step 0".into() }
        );
        let label_counts = data.train.iter().map(label_count).collect();
        let order = ExampleOrder::new(data.train.len(), recipe.train.seed);
        let pad_id = tok.pad_or_eos_id().unwrap_or(0) as i64;
        let (train, val) = (data.train, data.val);
        Ok(FineTuner { recipe, device, bf16, base, tok, model, opt, train, label_counts, val, order, pad_id, state, metrics, dist, _lock: lock })
    }

    /// Loads a checkpoint's trainable tensors and optimizer moments (refused if it was trained
    /// with another tokenizer); warns about recipe values that changed.
    fn restore(dir: &Path, model: &mut CausalLm, opt: &mut AdamW, recipe: &Recipe, tok: &LoadedTokenizer, tok_hash: &str) -> Result<TrainState> {
        let state = checkpoint::read_state(dir)?;
        recipe_loop::check_tokenizer(&state, tok, tok_hash, dir)?;
        if recipe.lora.is_some() {
            let path = dir.join(crate::lora::ADAPTER_WEIGHTS);
            copy_named(&model.lora_parameters(), crate::st::load(&path)?, &path)?;
        } else {
            model.load_weights(dir)?;
        }
        let opt_path = dir.join("optimizer.safetensors");
        opt.load_state(crate::st::load(&opt_path)?, state.optimizer_steps, &opt_path)?;
        recipe_loop::warn_recipe_changes(recipe, &recipe.run.dir);
        tracing::info!(checkpoint = %dir.display(), step = state.step, "resuming");
        Ok(state)
    }

    fn train(&mut self) -> Result<()> {
        let (max_steps, start, log_every) = (self.recipe.train.max_steps, self.state.step, self.recipe.train.log_every);
        if start >= max_steps {
            tracing::info!("run is already at step {start} of train.max_steps = {max_steps}; nothing to train");
            return Ok(());
        }
        let mut progress = self.dist.is_main().then(|| Progress::new(start, max_steps, log_every));
        let (run_started, elapsed_before) = (Instant::now(), self.state.elapsed_s);
        for step in start..max_steps {
            let t0 = Instant::now();
            self.dist.status.step.store(step, std::sync::atomic::Ordering::Relaxed);
            self.dist.status.set_phase(rankforge_proto::Phase::Compute);
            let out = self.train_step(step)?;
            let tokens_per_s = out.tokens as f64 / t0.elapsed().as_secs_f64();
            self.state.elapsed_s = elapsed_before + run_started.elapsed().as_secs_f64();
            let stopped = || Error::Stopped(format!("stopped on request at step {} after checkpointing; rerun to resume", step + 1));
            let (Some(metrics), Some(progress)) = (self.metrics.as_mut(), progress.as_mut()) else {
                if out.stop_requested {
                    return Err(stopped()); // ranks > 0: rank 0 writes the checkpoint
                }
                continue; // ranks > 0: compute and all-reduce only
            };
            metrics.write(&json!({
                "step": step + 1, "loss": out.loss, "lr": out.lr, "grad_norm": out.grad_norm,
                "tokens": self.state.tokens, "label_tokens": out.label_tokens, "tokens_per_s": tokens_per_s,
                "elapsed_s": self.state.elapsed_s, "epoch": self.state.epoch,
            }))?;
            progress.step(step + 1, out.loss, out.lr, tokens_per_s);
            let done = step + 1 == max_steps;
            let every = |n: u64| n > 0 && (step + 1) % n == 0;
            if !self.val.is_empty() && (done || every(self.recipe.eval.every_steps)) {
                let row = self.evaluate(step + 1)?;
                progress.eval(step + 1, row["val_loss"].as_f64().unwrap_or(f64::NAN));
                self.metrics.as_mut().expect("rank 0 has metrics").write(&row)?;
            }
            if out.checkpoint_requested {
                tracing::info!(step = step + 1, "checkpoint requested through the coordinator");
            }
            if done || out.checkpoint_requested || out.stop_requested || every(self.recipe.checkpoint.every_steps) {
                progress.suspend(|| self.save_checkpoint())?;
            }
            if out.stop_requested && !done {
                progress.finish();
                return Err(stopped());
            }
        }
        if let Some(mut p) = progress {
            p.finish();
        }
        Ok(())
    }

    /// One optimizer step: the global batch's examples, this rank's slice of them, then
    /// [`FineTuner::step_on_examples`], then the progress counters.
    fn train_step(&mut self, step: u64) -> Result<StepOut> {
        let (b, lr) = (self.recipe.train.global_batch_size, lr_at(step, &self.recipe.train));
        let first = self.state.samples;
        let global: Vec<usize> = (first..first + b as u64).map(|g| self.order.index(g)).collect();
        let label_tokens: u64 = global.iter().map(|&i| self.label_counts[i]).sum();
        let tokens: u64 = global.iter().map(|&i| self.train[i].input_ids.len() as u64).sum();
        let range = rank_slice(first, b, self.dist.rank(), self.dist.world());
        let mine = global[(range.start - first) as usize..(range.end - first) as usize].to_vec();
        let (loss, grad_norm, [checkpoint_requested, stop_requested]) = self.step_on_examples(&mine, range.start, label_tokens, step, lr)?;
        recipe_loop::check_update(&mut self.state, &self.recipe.train, step, loss, grad_norm, self.dist.is_main())?;
        self.state.step = step + 1;
        self.state.samples += b as u64;
        self.state.tokens += tokens;
        self.state.epoch = self.order.epoch_of(self.state.samples);
        self.state.optimizer_steps = self.opt.steps;
        Ok(StepOut { loss, grad_norm, lr, tokens, label_tokens, checkpoint_requested, stop_requested })
    }

    /// One optimizer step over this rank's examples `mine` (the first is global sample
    /// `first`): collated micro-batch by micro-batch (right-padded, only one alive at a time)
    /// and given to [`step_on_batch`]. Returns (loss, grad norm, [checkpoint, stop] flags).
    fn step_on_examples(&mut self, mine: &[usize], first: u64, label_tokens: u64, step: u64, lr: f64) -> Result<(f64, f64, [bool; 2])> {
        let cfg = &self.recipe.train;
        let (train, pad_id, device, mb) = (&self.train, self.pad_id, self.device, cfg.micro_batch_size);
        let micro_batches = mine.chunks(mb).enumerate().map(|(k, chunk)| {
            let examples: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
            let (ids, labels, _mask) = sft::collate(&examples, pad_id); // (B, T) each
            let seed = recipe_loop::micro_seed(cfg.seed, step, first + (k * mb) as u64);
            MicroBatch { ids: crate::device::to_device(&ids, device), labels: crate::device::to_device(&labels, device), seed }
        });
        step_on_batch(&self.model, &mut self.opt, micro_batches, label_tokens, cfg, lr, self.bf16, &mut self.dist)
    }

    /// Held-out loss and perplexity over label tokens (the same first `eval.max_batches`
    /// micro-batches each time) and greedy completions of the first held-out prompts.
    fn evaluate(&self, step: u64) -> Result<serde_json::Value> {
        self.dist.status.set_phase(rankforge_proto::Phase::Eval);
        let _guard = tch::no_grad_guard();
        let (mut sum, mut count) = (0.0, 0u64);
        for chunk in self.val.chunks(self.recipe.train.micro_batch_size).take(self.recipe.eval.max_batches) {
            let examples: Vec<&Example> = chunk.iter().collect();
            let (ids, labels, _mask) = sft::collate(&examples, self.pad_id);
            let (ids, labels) = (ids.to_device(self.device), labels.to_device(self.device));
            sum += crate::device::autocast(self.device, self.bf16, || self.model.loss_sum(&ids, &labels, false)).double_value(&[]);
            count += chunk.iter().map(label_count).sum::<u64>();
        }
        let val_loss = sum / count.max(1) as f64;
        Ok(json!({"step": step, "val_loss": val_loss, "val_ppl": val_loss.exp(), "samples": self.samples()?}))
    }

    /// `{prompt, completion}` for the first `eval.samples` held-out examples with a prompt:
    /// the tokens before the first label, continued greedily.
    fn samples(&self) -> Result<Vec<serde_json::Value>> {
        let opts = GenOptions {
            max_new_tokens: self.recipe.eval.sample_tokens,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        };
        let stop = generate::stop_ids(&self.model, &self.tok);
        let mut out = Vec::new();
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
            out.push(json!({"prompt": self.tok.decode(&prompt)?, "completion": g.text}));
        }
        Ok(out)
    }

    /// Writes checkpoint `state.step`: the trainable weights (a PEFT adapter, or the whole HF
    /// model), the tokenizer, the optimizer moments and train_state.json.
    fn save_checkpoint(&mut self) -> Result<()> {
        self.dist.status.set_phase(rankforge_proto::Phase::Checkpoint);
        let run_dir = self.recipe.run.dir.clone();
        let dir = checkpoint::save(&run_dir, self.state.step, |tmp| {
            export::write_weights(self, tmp)?;
            self.tok.save_pretrained(tmp, self.model.max_positions())?;
            crate::st::save(&tmp.join("optimizer.safetensors"), &self.opt.state_tensors())?;
            let state = serde_json::to_value(&self.state).expect("TrainState serialises");
            crate::fsutil::write_json_atomic(&tmp.join("train_state.json"), &state)
        })?;
        checkpoint::prune(&run_dir, self.recipe.checkpoint.keep_last)?;
        tracing::info!(step = self.state.step, path = %dir.display(), "checkpoint saved");
        Ok(())
    }
}

/// One micro-batch of a fine-tuning step, on the model's device.
pub struct MicroBatch {
    /// `(B, T)` token ids.
    pub ids: Tensor,
    /// `(B, T)` unshifted labels, -100 where no token is trained (see [`CausalLm::loss_sum`]).
    pub labels: Tensor,
    /// Seeds the micro-batch's randomness (dropout): [`recipe_loop::micro_seed`].
    pub seed: i64,
}

/// The fine-tuning step, shared by `rankforge train` and `rankforge bench` (which feeds it
/// random tokens): micro-batches → loss → backward → all-reduce → clip → finite check →
/// AdamW over the trainable tensors `opt` holds. Each micro-batch's summed token loss is
/// divided by `label_tokens`, the label tokens of the *whole* global batch, so the ranks'
/// summed gradients are the global mean. Returns (loss, grad norm, [checkpoint, stop] flags).
#[allow(clippy::too_many_arguments)]
pub fn step_on_batch(
    model: &CausalLm,
    opt: &mut AdamW,
    micro_batches: impl Iterator<Item = MicroBatch>,
    label_tokens: u64,
    cfg: &TrainConfig,
    lr: f64,
    bf16: bool,
    dist: &mut Dist,
) -> Result<(f64, f64, [bool; 2])> {
    opt.zero_grad();
    let denom = label_tokens.max(1) as f64;
    let mut total = Tensor::zeros([], (Kind::Float, model.vs().device()));
    for MicroBatch { ids, labels, seed } in micro_batches {
        tch::manual_seed(seed);
        let loss = crate::device::autocast(ids.device(), bf16, || model.loss_sum(&ids, &labels, true)) / denom;
        loss.backward();
        total += loss.detach();
    }
    model.zero_null_grads();
    let [checkpoint, stop] = recipe_loop::take_flags(dist);
    let mut sums = [total.double_value(&[]), checkpoint, stop];
    dist.status.set_phase(rankforge_proto::Phase::Collective);
    dist.reduce_grads(opt.params(), &mut sums)?;
    dist.status.set_phase(rankforge_proto::Phase::Compute);
    let grad_norm = clip_grad_norm(opt.params(), cfg.grad_clip);
    if sums[0].is_finite() && grad_norm.is_finite() {
        opt.step(lr);
    }
    Ok((sums[0], grad_norm, [sums[1] > 0.0, sums[2] > 0.0]))
}
