//! `rankforge train`: the pretraining recipe. Reads as setup → train → export:
//! parts are built in dependency order (the tokenizer decides the vocabulary, which the model
//! needs; the model's parameters are what the optimizer and a checkpoint hold), then
//! `for step in start..max_steps { step; maybe eval; maybe checkpoint }`, then `final/`.

use std::path::Path;
use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::config::{Recipe, TrainConfig};
use crate::data::{rank_slice, val_batches, Dataset, Sampler};
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::metrics::MetricsWriter;
use crate::recipe_loop::{self, RunOptions};
use crate::models::gpt::{Gpt, GptConfig};
use crate::optim::{clip_grad_norm, lr_at, AdamW};
use crate::progress::Progress;
use crate::tokenizer::LoadedTokenizer;

/// Everything a training run holds.
struct Trainer {
    recipe: Recipe,
    device: Device,
    bf16: bool,
    /// Tokens per training window (`model.block_size`).
    block_size: usize,
    tok: LoadedTokenizer,
    model: Gpt,
    opt: AdamW,
    sampler: Sampler,
    val: Vec<Tensor>,
    state: TrainState,
    /// Rank 0 only: ranks > 0 write nothing to the run directory.
    metrics: Option<MetricsWriter>,
    dist: Dist,
    /// Rank 0: the run directory's lock, released when the run ends.
    _lock: Option<crate::run_dir::RunLock>,
}

/// Runs (or resumes) the recipe; `opts` say where to resume from and whether a run directory
/// that cannot be resumed may be started over.
pub fn run(recipe: Recipe, opts: &RunOptions) -> Result<()> {
    let mut t = Trainer::setup(recipe, opts)?;
    t.train()?;
    if t.dist.is_main() {
        t.export_final()?;
    }
    t.dist.status.set_phase(rankforge_proto::Phase::Done);
    Ok(())
}

/// The model architecture of a recipe, checked against the tokenizer.
pub fn model_config(recipe: &Recipe, tok_vocab: Option<(usize, &Path)>) -> Result<GptConfig> {
    let m = recipe.model.gpt()?;
    let vocab_size = match (m.vocab_size, tok_vocab) {
        (Some(v), Some((tv, path))) if v < tv => {
            return Err(Error::Input(format!(
                "model.vocab_size = {v} is smaller than the tokenizer's vocabulary ({tv} tokens in {})",
                path.display()
            )))
        }
        (Some(v), _) => v,
        (None, Some((tv, _))) => tv.div_ceil(64) * 64,
        (None, None) => return Err(Error::Input("model.vocab_size is not set and there is no tokenizer to take it from".into())),
    };
    Ok(GptConfig {
        vocab_size,
        n_layer: m.n_layer,
        n_head: m.n_head,
        n_embd: m.n_embd,
        n_positions: m.n_positions.unwrap_or(m.block_size),
        dropout: m.dropout,
        bias: m.bias,
        layer_norm_eps: 1e-5,
    })
}

impl Trainer {
    fn setup(recipe: Recipe, opts: &RunOptions) -> Result<Trainer> {
        // Join the job first: a rank with a different recipe is refused before anyone
        // tokenizes data, and a second run on the same run directory before it touches it.
        let recipe_loop::Joined { device, bf16, hash, mut dist, lock } = recipe_loop::join(&recipe, true)?;
        let run_dir = recipe.run.dir.clone();
        let main = dist.is_main();
        // Tokenizer first: it fixes the vocabulary the model and the token cache depend on.
        let tok = LoadedTokenizer::load(recipe.data.pretraining_tokenizer()?)?;
        let tok_hash = recipe_loop::tokenizer_hash(&tok)?;
        let cfg = model_config(&recipe, Some((tok.vocab_size(), &tok.path)))?;
        let block_size = recipe.model.gpt()?.block_size;
        // Rank 0 fills the token cache; the others then find it there (on a shared disk).
        let prepare = || Dataset::prepare(&recipe.data, recipe.val_fraction(), &tok, block_size);
        let data = if main { Some(prepare()?) } else { None };
        dist.gather_small("token-cache", Vec::new())?;
        let data = match data {
            Some(d) => d,
            None => prepare()?,
        };
        let sampler = Sampler::new(data.train.clone(), block_size, recipe.train.seed);
        let val = match (&data.val, main) {
            (Some(v), true) => val_batches(v, block_size, recipe.train.micro_batch_size, recipe.eval.max_batches),
            _ => Vec::new(),
        };
        tch::manual_seed(recipe.train.seed as i64);
        let mut model = Gpt::new(&cfg, device);
        let mut opt = AdamW::new(model.named_parameters(), &recipe.train);
        // Rank 0 picks the resume point and restores it; the others receive its state below.
        let resume = recipe_loop::resume_point(opts, main, &run_dir)?;
        let fresh = recipe_loop::fresh_state(&recipe, &hash, dist.world(), &tok_hash);
        let state = match &resume {
            // Checkpoints written from now on come from the current recipe, world and tokenizer.
            Some(dir) => TrainState {
                recipe_hash: hash.clone(),
                world_size: dist.world(),
                tokenizer_sha256: Some(tok_hash.clone()),
                ..Self::restore(dir, &mut model, &mut opt, &recipe, &tok, &tok_hash)?
            },
            None => fresh,
        };
        let params = model.named_parameters().into_iter().map(|(_, t)| t).collect();
        let state = recipe_loop::sync_start(&mut dist, state, params, &mut opt)?;
        // Inputs are valid: only now touch the run directory.
        let metrics = if main { Some(recipe_loop::open_run_dir(&recipe, state.step)?) } else { None };
        tracing::info!(
            params = model.num_params(),
            vocab = cfg.vocab_size,
            train_tokens = data.train.len,
            device = ?device,
            bf16,
            ranks = dist.world(),
            "model ready; {}",
            if state.step > 0 { format!("resuming at step {}", state.step) } else { "starting at step 0".into() }
        );
        Ok(Trainer { recipe, device, bf16, block_size, tok, model, opt, sampler, val, state, metrics, dist, _lock: lock })
    }

    /// Loads a checkpoint into `model` and `opt` (refused if it was trained with another
    /// tokenizer); warns about recipe values that changed.
    fn restore(dir: &Path, model: &mut Gpt, opt: &mut AdamW, recipe: &Recipe, tok: &LoadedTokenizer, tok_hash: &str) -> Result<TrainState> {
        let state = checkpoint::read_state(dir)?;
        recipe_loop::check_tokenizer(&state, tok, tok_hash, dir)?;
        let weights = dir.join("model.safetensors");
        model.load_hf_state_dict(crate::st::load(&weights)?, &weights)?;
        let opt_path = dir.join("optimizer.safetensors");
        opt.load_state(crate::st::load(&opt_path)?, state.optimizer_steps, &opt_path)?;
        recipe_loop::warn_recipe_changes(recipe, &recipe.run.dir);
        tracing::info!(checkpoint = %dir.display(), step = state.step, "resuming");
        Ok(state)
    }

    fn train(&mut self) -> Result<()> {
        let cfg = self.recipe.train.clone();
        let (max_steps, start) = (cfg.max_steps, self.state.step);
        if start >= max_steps {
            tracing::info!("run is already at step {start} of train.max_steps = {max_steps}; nothing to train");
            return Ok(());
        }
        let main = self.dist.is_main();
        let mut progress = main.then(|| Progress::new(start, max_steps, cfg.log_every));
        let run_started = Instant::now();
        let elapsed_before = self.state.elapsed_s;
        for step in start..max_steps {
            let t0 = Instant::now();
            self.dist.status.step.store(step, std::sync::atomic::Ordering::Relaxed);
            self.dist.status.set_phase(rankforge_proto::Phase::Compute);
            let (loss, grad_norm, lr, n_tokens, requested, stop) = self.train_step(step)?;
            let dt = t0.elapsed().as_secs_f64();
            self.state.elapsed_s = elapsed_before + run_started.elapsed().as_secs_f64();
            let stopped = || Error::Stopped(format!("stopped on request at step {} after checkpointing; rerun to resume", step + 1));
            let (Some(metrics), Some(progress)) = (self.metrics.as_mut(), progress.as_mut()) else {
                if stop {
                    return Err(stopped()); // ranks > 0: rank 0 writes the checkpoint
                }
                continue; // ranks > 0: compute and all-reduce only
            };
            let row = json!({
                "step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "tokens": self.state.tokens, "tokens_per_s": n_tokens as f64 / dt,
                "elapsed_s": self.state.elapsed_s, "epoch": self.state.epoch,
            });
            metrics.write(&row)?;
            progress.step(step + 1, loss, lr, n_tokens as f64 / dt);
            let done = step + 1 == max_steps;
            let every = |n: u64| n > 0 && (step + 1) % n == 0;
            if !self.val.is_empty() && (done || every(self.recipe.eval.every_steps)) {
                let val_loss = self.evaluate();
                let row = json!({"step": step + 1, "val_loss": val_loss, "val_ppl": val_loss.exp()});
                self.metrics.as_mut().expect("rank 0").write(&row)?;
                progress.eval(step + 1, val_loss);
            }
            if requested {
                tracing::info!(step = step + 1, "checkpoint requested through the coordinator");
            }
            if done || requested || stop || every(self.recipe.checkpoint.every_steps) {
                progress.suspend(|| self.save_checkpoint())?;
            }
            if stop && !done {
                progress.finish();
                return Err(stopped());
            }
        }
        if let Some(mut p) = progress {
            p.finish();
        }
        Ok(())
    }

    /// One optimizer step of the run: this rank's slice of the global batch, then
    /// [`step_on_batch`], then the progress counters. Returns (loss, grad norm, lr, tokens, whether
    /// a checkpoint was requested).
    fn train_step(&mut self, step: u64) -> Result<(f64, f64, f64, u64, bool, bool)> {
        let cfg = &self.recipe.train;
        let lr = lr_at(step, cfg);
        let range = rank_slice(self.state.samples, cfg.global_batch_size, self.dist.rank(), self.dist.world());
        let batch = Batch {
            windows: crate::device::to_device(&self.sampler.batch(range.clone()), self.device), // (B_rank, T+1)
            first_sample: range.start,
            global_batch: cfg.global_batch_size,
            step,
        };
        let StepOutcome { loss, grad_norm, checkpoint_requested, stop_requested } =
            step_on_batch(&self.model, &mut self.opt, &batch, cfg, lr, self.bf16, &mut self.dist)?;
        recipe_loop::check_update(&mut self.state, cfg, step, loss, grad_norm, self.dist.is_main())?;
        let n_tokens = (cfg.global_batch_size * self.block_size) as u64;
        self.state.step = step + 1;
        self.state.samples += cfg.global_batch_size as u64;
        self.state.tokens += n_tokens;
        self.state.epoch = self.sampler.epoch_of(self.state.samples);
        self.state.optimizer_steps = self.opt.steps;
        Ok((loss, grad_norm, lr, n_tokens, checkpoint_requested, stop_requested))
    }

    /// Mean validation loss over the fixed validation batches.
    fn evaluate(&self) -> f64 {
        self.dist.status.set_phase(rankforge_proto::Phase::Eval);
        let _guard = tch::no_grad_guard();
        let (mut sum, mut count) = (0.0, 0i64);
        for b in &self.val {
            let b = b.to_device(self.device);
            let n = b.size()[0];
            let loss = crate::device::autocast(self.device, self.bf16, || self.model.loss(&b, false));
            sum += loss.double_value(&[]) * n as f64;
            count += n;
        }
        sum / count as f64
    }

    /// Writes a loadable model directory (weights, config, tokenizer) into `dir`; never
    /// non-finite weights.
    fn write_model_dir(&self, dir: &Path) -> Result<()> {
        let params = self.model.named_parameters();
        recipe_loop::ensure_finite(params.iter().map(|(n, t)| (n.as_str(), t)), "the model", self.state.step)?;
        self.model.save_pretrained(dir, self.tok.eos_id)?;
        self.tok.save_pretrained(dir, Some(self.model.cfg.n_positions))
    }

    fn save_checkpoint(&self) -> Result<()> {
        self.dist.status.set_phase(rankforge_proto::Phase::Checkpoint);
        let run_dir = &self.recipe.run.dir;
        let dir = checkpoint::save(run_dir, self.state.step, |tmp| {
            self.write_model_dir(tmp)?;
            crate::st::save(&tmp.join("optimizer.safetensors"), &self.opt.state_tensors())?;
            let state = serde_json::to_value(&self.state).expect("TrainState serialises");
            crate::fsutil::write_json_atomic(&tmp.join("train_state.json"), &state)
        })?;
        checkpoint::prune(run_dir, self.recipe.checkpoint.keep_last)?;
        tracing::info!(step = self.state.step, path = %dir.display(), "checkpoint saved");
        Ok(())
    }

    /// `<run.dir>/final/`: an HF GPT-2 directory with tokenizer files and a model card.
    fn export_final(&self) -> Result<()> {
        let target = recipe_loop::write_staged_dir(&self.recipe.run.dir, "final", |staged| {
            self.write_model_dir(staged)?;
            crate::fsutil::write_atomic(&staged.join("README.md"), self.model_card().as_bytes())
        })?;
        tracing::info!(path = %target.display(), "final model written (transformers: GPT2LMHeadModel.from_pretrained)");
        Ok(())
    }

    fn model_card(&self) -> String {
        let c = &self.model.cfg;
        format!(
            "---\nlibrary_name: transformers\nlicense: other\npipeline_tag: text-generation\ntags:\n- rankforge\n- gpt2\n- text-generation\n---\n\n\
             # GPT-2 style model trained with rankforge\n\n\
             {} layers, {} heads, {} dims, context {}, vocabulary {} ({} parameters).\n\
             Trained from scratch for {} steps on {} tokens.\n\n\
             ```python\nfrom transformers import AutoTokenizer, GPT2LMHeadModel\n\
             tok = AutoTokenizer.from_pretrained(\"path/to/final\")\n\
             model = GPT2LMHeadModel.from_pretrained(\"path/to/final\")\n```\n\n\
             ## Recipe\n\n```toml\n{}```\n",
            c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size, self.model.num_params(),
            self.state.step, self.state.tokens, self.recipe.to_toml()
        )
    }
}

/// What one optimizer step returns.
pub struct StepOutcome {
    /// The global batch's mean loss (all ranks).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Some rank was asked (by the coordinator's CHECKPOINT command) to checkpoint: every rank
    /// learns it in the same step, through the gradient all-reduce.
    pub checkpoint_requested: bool,
    /// Some rank was asked to stop (STOP: preemption): checkpoint here, then exit.
    pub stop_requested: bool,
}

/// One rank's share of a global batch.
pub struct Batch {
    /// `(B_rank, T+1)` token windows.
    pub windows: Tensor,
    /// Global index of the first window (seeds each micro-batch's dropout).
    pub first_sample: u64,
    /// Windows in the global batch, all ranks together.
    pub global_batch: usize,
    pub step: u64,
}

/// micro-batches → loss → backward → all-reduce → clip → finite check → AdamW.
/// Each micro-batch's loss is weighted by its share of the *global* batch and the ranks' sums
/// are added, so the gradient is the global batch mean however the batch is split across
/// ranks and micro-batches. Every rank gets the same reduced gradient, hence the same norm, the
/// same finite-or-skip decision and the same update.
pub fn step_on_batch(model: &Gpt, opt: &mut AdamW, batch: &Batch, cfg: &TrainConfig, lr: f64, bf16: bool, dist: &mut Dist) -> Result<StepOutcome> {
    opt.zero_grad();
    let mut total = Tensor::zeros([], (Kind::Float, batch.windows.device()));
    let mut first = batch.first_sample;
    for chunk in batch.windows.split(cfg.micro_batch_size as i64, 0) {
        let n = chunk.size()[0];
        tch::manual_seed(recipe_loop::micro_seed(cfg.seed, batch.step, first));
        let weight = n as f64 / batch.global_batch as f64;
        let loss = crate::device::autocast(chunk.device(), bf16, || model.loss(&chunk, true)) * weight;
        loss.backward();
        total += loss.detach().to_kind(Kind::Float);
        first += n as u64;
    }
    model.zero_null_grads();
    let [checkpoint, stop] = recipe_loop::take_flags(dist);
    let mut sums = [total.double_value(&[]), checkpoint, stop];
    dist.status.set_phase(rankforge_proto::Phase::Collective);
    dist.reduce_grads(opt.params(), &mut sums)?;
    dist.status.set_phase(rankforge_proto::Phase::Compute);
    let loss = sums[0];
    let grad_norm = clip_grad_norm(opt.params(), cfg.grad_clip);
    if loss.is_finite() && grad_norm.is_finite() {
        opt.step(lr);
    }
    Ok(StepOutcome { loss, grad_norm, checkpoint_requested: sums[1] > 0.0, stop_requested: sums[2] > 0.0 })
}
