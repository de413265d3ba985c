//! The training engine: one setup → train → export loop for every objective. A [`Task`]
//! (pretraining, SFT, classification, … in [`crate::tasks`]) supplies its data, model and loss;
//! the engine owns everything that must behave the same for all of them:
//!
//! - setup: joining the job ([`recipe_loop::join`]; [`run_joined`] runs on a job joined
//!   before, as `rankforge sweep` does for each trial), the run directory's lock, AdamW over the
//!   task's trainable tensors, the resume point and its restore (state, tokenizer check,
//!   weights, optimizer moments), rank 0's state on every rank, the run directory;
//! - the run length: `train.max_steps`, or `train.epochs` over the task's epoch length;
//! - each step: the global batch's sample range (`state.samples`, a pure function of the step),
//!   this rank's slice of it ([`crate::data::rank_slice`]), the micro-batches' seeds, the step
//!   itself ([`step::step`]), the skip/diverge check, the progress counters;
//! - metrics rows, evaluation, checkpoint and stop cadence, the coordinator's flags;
//! - checkpoints (the task's weights + optimizer moments + train_state.json) and `final/`;
//! - with `[hub]`, rank 0's token check before training and its uploads ([`Publisher`]).

pub mod step;

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Map, Value};
use tch::{Device, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::config::Recipe;
use crate::data::rank_slice;
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::hub::publish::Publisher;
use crate::metrics::MetricsWriter;
use crate::optim::{lr_at, AdamW};
use crate::progress::Progress;
use crate::recipe_loop::{self, Joined, RunOptions};
use crate::tokenizer::LoadedTokenizer;
pub use step::{Objective, StepOutcome};

/// What a task gets to build itself: the recipe, the device, and the job (for barriers).
pub struct SetupCtx<'a> {
    pub recipe: &'a Recipe,
    pub device: Device,
    pub bf16: bool,
    pub dist: &'a mut Dist,
}

/// This rank's share of one step's global batch.
pub struct StepBatch<M> {
    /// This rank's micro-batches, each with the seed of its randomness.
    pub micro: Vec<(M, i64)>,
    /// Tokens of the whole global batch (metrics and `state.tokens`).
    pub tokens: u64,
    /// Further metrics of the step (e.g. `label_tokens`), added to its metrics row.
    pub extra: Map<String, Value>,
}

/// A training objective on the engine.
pub trait Task: Objective + Sized {
    /// Loads the tokenizer, data and model; the model's randomness is seeded from the recipe.
    fn setup(ctx: &mut SetupCtx<'_>) -> Result<Self>;

    /// The tokenizer checkpoints record (a resumed run must use the same one).
    fn tokenizer(&self) -> &LoadedTokenizer;

    /// The tensors that train, under their checkpoint names (what AdamW holds and the ranks
    /// all-reduce).
    fn trainable(&mut self) -> Vec<(String, Tensor)>;

    /// Examples in one pass over the training data (for `train.epochs`).
    fn epoch_len(&self) -> u64;

    /// The epoch (fractional) after `samples` global samples.
    fn epoch_of(&self, samples: u64) -> f64;

    /// This rank's micro-batches of step `step`, whose global batch is the global samples
    /// `global`; this rank takes `mine` of them. Seeds come from
    /// [`recipe_loop::micro_seed`]`(seed, step, first sample of the micro-batch)`.
    fn batch(&mut self, step: u64, global: Range<u64>, mine: Range<u64>) -> Result<StepBatch<Self::Micro>>;

    /// Whether rank 0 evaluates (there is validation data).
    fn has_eval(&self) -> bool;

    /// Rank 0: one evaluation after step `step`, as a metrics row with at least `val_loss`.
    fn evaluate(&mut self, step: u64) -> Result<Value>;

    /// The trained weights (and whatever a checkpoint needs to load them: config, tokenizer)
    /// into checkpoint directory `dir`; never non-finite weights.
    fn write_weights(&mut self, dir: &Path, step: u64) -> Result<()>;

    /// Loads the trained weights of checkpoint `dir`.
    fn restore_weights(&mut self, dir: &Path) -> Result<()>;

    /// Rank 0, at the end: `<run.dir>/final/`.
    fn export_final(&mut self, state: &TrainState) -> Result<()>;

    /// Fields for the "ready" log line (model, sizes).
    fn describe(&mut self) -> Vec<(&'static str, String)>;

    /// Metrics of a step from its global sums ([`StepOutcome::sums`]), added to its row.
    /// Default: none.
    fn step_metrics(&self, _sums: &[f64]) -> Map<String, Value> {
        Map::new()
    }
}

/// Runs (or resumes) `recipe` with task `T`; `opts` say where to resume from and whether a run
/// directory that cannot be resumed may be started over. Joins the job first (a rank started
/// with a different recipe is refused before anyone loads data), then [`run_joined`].
pub fn run<T: Task>(recipe: Recipe, opts: &RunOptions) -> Result<()> {
    let mut job = recipe_loop::join(&recipe, true)?;
    run_joined::<T>(recipe, opts, &mut job)?;
    job.dist.status.set_phase(rankforge_proto::Phase::Done);
    Ok(())
}

/// Runs (or resumes) `recipe` with task `T` on a job joined before (`rankforge sweep` joins
/// once and runs every trial here, on the same ranks): rank 0 holds the run directory's lock
/// until the run ends (`job.lock`, taken by the caller, else taken here), then setup → train →
/// `final/`. The job's device and precision
/// are the run's; the checkpoints record `recipe`'s own hash. Leaves the job's phase as it is:
/// the caller marks it done after its last run.
pub fn run_joined<T: Task>(recipe: Recipe, opts: &RunOptions, job: &mut Joined) -> Result<()> {
    let mut e = Engine::<T>::setup(recipe, opts, job)?;
    e.train()?;
    if e.dist.is_main() {
        e.task.export_final(&e.state)?;
    }
    if let Some(p) = &e.publisher {
        // The other ranks may wait for the upload: it is rank 0's writing phase.
        e.dist.status.set_phase(rankforge_proto::Phase::Checkpoint);
        p.finish(&e.recipe.run.dir, e.state.step, e.recipe.task.kind().as_str())?;
    }
    Ok(())
}

/// The steps of a run: `train.max_steps` (default 1000), or ceil(`train.epochs` × epoch
/// length / global batch).
pub fn total_steps(recipe: &Recipe, epoch_len: u64) -> Result<u64> {
    let t = &recipe.train;
    match t.epochs {
        None => Ok(t.max_steps.unwrap_or(1000)),
        Some(epochs) => {
            let steps = (epochs * epoch_len as f64 / t.global_batch_size as f64).ceil() as u64;
            if steps == 0 {
                return Err(Error::Input(format!("train.epochs = {epochs} over {epoch_len} training examples is no step")));
            }
            Ok(steps)
        }
    }
}

/// Everything a run holds; the job (`dist`) is borrowed: it outlives the run.
struct Engine<'j, T: Task> {
    recipe: Recipe,
    device: Device,
    bf16: bool,
    task: T,
    opt: AdamW,
    /// Steps of the whole run.
    max_steps: u64,
    state: TrainState,
    /// Rank 0 only: ranks > 0 write nothing to the run directory.
    metrics: Option<MetricsWriter>,
    dist: &'j mut Dist,
    /// Rank 0 with `[hub]`: where it pushes checkpoints and `final/`.
    publisher: Option<Publisher>,
    /// Rank 0: the run directory's lock, released when the run ends.
    _lock: Option<crate::run_dir::RunLock>,
}

impl<'j, T: Task> Engine<'j, T> {
    fn setup(recipe: Recipe, opts: &RunOptions, job: &'j mut Joined) -> Result<Self> {
        // The job is joined (a rank with a different recipe was refused before anyone loaded
        // data); a second run on the same run directory is refused before it touches it.
        let (device, bf16, dist) = (job.device, job.bf16, &mut job.dist);
        dist.status.set_phase(rankforge_proto::Phase::Setup);
        let main = dist.is_main();
        // Rank 0's lock on the run directory: the one the caller took (`train` when joining,
        // a sweep before each trial), else taken now.
        let lock = match job.lock.take() {
            Some(lock) => Some(lock),
            None if main => Some(crate::run_dir::RunLock::acquire(&recipe.run.dir)?),
            None => None,
        };
        let hash = recipe_loop::recipe_hash(&recipe);
        let mut task = T::setup(&mut SetupCtx { recipe: &recipe, device, bf16, dist: &mut *dist })?;
        let tok_hash = recipe_loop::tokenizer_hash(task.tokenizer())?;
        let mut opt = AdamW::new(task.trainable(), &recipe.train);
        tracing::debug!(implementation = ?opt.implementation(), "AdamW");
        // Rank 0 picks the resume point and restores it; the others receive its state (or its
        // error: they fail alike instead of waiting for it) below.
        // Rank 0 checks `[hub]`'s repo and token before any training (an error fails every
        // rank alike below).
        let publisher = if main { Publisher::prepare(&recipe) } else { Ok(None) };
        let (publisher, hub_error) = match publisher {
            Ok(p) => (p, None),
            Err(e) => (None, Some(e)),
        };
        let resume = match hub_error {
            Some(e) => Err(e),
            None => recipe_loop::resume_point(opts, main, &recipe.run.dir),
        };
        let state = resume.and_then(|resume| match &resume {
            // Checkpoints written from now on come from the current recipe, world and tokenizer.
            Some(dir) => Ok(TrainState {
                recipe_hash: hash.clone(),
                world_size: dist.world(),
                tokenizer_sha256: Some(tok_hash.clone()),
                ..restore(dir, &mut task, &mut opt, &recipe, &tok_hash)?
            }),
            None => Ok(recipe_loop::fresh_state(&recipe, &hash, dist.world(), &tok_hash)),
        });
        let params = task.trainable().into_iter().map(|(_, t)| t).collect();
        let state = recipe_loop::sync_start(dist, state, params, &mut opt)?;
        let max_steps = total_steps(&recipe, task.epoch_len())?;
        if recipe.train.epochs.is_some() && main {
            tracing::info!(epochs = recipe.train.epochs, examples = task.epoch_len(), global_batch = recipe.train.global_batch_size, "train.epochs: {max_steps} steps");
        }
        // Inputs are valid: only now touch the run directory.
        let metrics = if main { Some(recipe_loop::open_run_dir(&recipe, state.step)?) } else { None };
        let n_trainable: i64 = task.trainable().iter().map(|(_, t)| t.numel() as i64).sum();
        let fields = task.describe().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        tracing::info!(
            trainable = n_trainable,
            device = ?device,
            bf16,
            ranks = dist.world(),
            "{fields}; ready, {}",
            if state.step > 0 { format!("resuming at step {}", state.step) } else { "starting at step 0".into() }
        );
        Ok(Engine { recipe, device, bf16, task, opt, max_steps, state, metrics, dist, publisher, _lock: lock })
    }

    fn train(&mut self) -> Result<()> {
        let (max_steps, start, log_every) = (self.max_steps, self.state.step, self.recipe.train.log_every);
        if start >= max_steps {
            tracing::info!("run is already at step {start} of {max_steps}; nothing to train");
            return Ok(());
        }
        let mut progress = self.dist.is_main().then(|| Progress::new(start, max_steps, log_every));
        let (run_started, elapsed_before) = (Instant::now(), self.state.elapsed_s);
        for step in start..max_steps {
            let t0 = Instant::now();
            self.dist.status.step.store(step, std::sync::atomic::Ordering::Relaxed);
            self.dist.status.set_phase(rankforge_proto::Phase::Compute);
            let (out, lr, tokens, extra) = self.train_step(step)?;
            let tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64();
            self.state.elapsed_s = elapsed_before + run_started.elapsed().as_secs_f64();
            let stopped = || Error::Stopped(format!("stopped on request at step {} after checkpointing; rerun to resume", step + 1));
            let (Some(metrics), Some(progress)) = (self.metrics.as_mut(), progress.as_mut()) else {
                if out.stop_requested {
                    return Err(stopped()); // ranks > 0: rank 0 writes the checkpoint
                }
                continue; // ranks > 0: compute and all-reduce only
            };
            let mut row = json!({
                "step": step + 1, "loss": out.loss, "lr": lr, "grad_norm": out.grad_norm,
                "tokens": self.state.tokens, "tokens_per_s": tokens_per_s,
                "elapsed_s": self.state.elapsed_s, "epoch": self.state.epoch,
            });
            row.as_object_mut().expect("a JSON object").extend(extra);
            row.as_object_mut().expect("a JSON object").extend(self.task.step_metrics(&out.sums));
            metrics.write(&row)?;
            progress.step(step + 1, out.loss, lr, tokens_per_s);
            let done = step + 1 == max_steps;
            let every = |n: u64| n > 0 && (step + 1) % n == 0;
            if self.task.has_eval() && (done || every(self.recipe.eval.every_steps)) {
                self.dist.status.set_phase(rankforge_proto::Phase::Eval);
                let row = tch::no_grad(|| self.task.evaluate(step + 1))?;
                progress.eval(step + 1, &row);
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

    /// One optimizer step of the run: the global batch's sample range, this rank's slice of
    /// it, the step, then the progress counters. Returns the outcome, the lr, the global
    /// batch's tokens and the task's extra metrics.
    fn train_step(&mut self, step: u64) -> Result<(StepOutcome, f64, u64, Map<String, Value>)> {
        let cfg = &self.recipe.train;
        let (b, lr) = (cfg.global_batch_size, lr_at(step, cfg, self.max_steps));
        let first = self.state.samples;
        let mine = rank_slice(first, b, self.dist.rank(), self.dist.world());
        let StepBatch { micro, tokens, extra } = self.task.batch(step, first..first + b as u64, mine)?;
        let out = step::step(&self.task, &mut self.opt, micro, self.device, cfg, lr, self.bf16, self.dist)?;
        recipe_loop::check_update(&mut self.state, cfg, step, out.loss, out.grad_norm, self.dist.is_main())?;
        self.state.step = step + 1;
        self.state.samples += b as u64;
        self.state.tokens += tokens;
        self.state.epoch = self.task.epoch_of(self.state.samples);
        self.state.optimizer_steps = self.opt.steps;
        Ok((out, lr, tokens, extra))
    }

    /// Writes checkpoint `state.step`: the task's weights, the optimizer moments and
    /// train_state.json.
    fn save_checkpoint(&mut self) -> Result<()> {
        self.dist.status.set_phase(rankforge_proto::Phase::Checkpoint);
        let run_dir = self.recipe.run.dir.clone();
        let (task, opt, state) = (&mut self.task, &self.opt, &self.state);
        let dir = checkpoint::save(&run_dir, state.step, |tmp| {
            task.write_weights(tmp, state.step)?;
            crate::st::save(&tmp.join("optimizer.safetensors"), &opt.state_tensors())?;
            let state = serde_json::to_value(state).expect("TrainState serialises");
            crate::fsutil::write_json_atomic(&tmp.join("train_state.json"), &state)
        })?;
        checkpoint::prune(&run_dir, self.recipe.checkpoint.keep_last)?;
        tracing::info!(step = self.state.step, path = %dir.display(), "checkpoint saved");
        if let Some(p) = &self.publisher {
            p.checkpoint(&dir, self.state.step);
        }
        Ok(())
    }
}

/// Loads checkpoint `dir` into `task` and `opt` (refused if it was trained with another
/// tokenizer); warns about recipe values that changed.
fn restore<T: Task>(dir: &Path, task: &mut T, opt: &mut AdamW, recipe: &Recipe, tok_hash: &str) -> Result<TrainState> {
    let state = checkpoint::read_state(dir)?;
    recipe_loop::check_tokenizer(&state, task.tokenizer(), tok_hash, dir)?;
    task.restore_weights(dir)?;
    let opt_path = dir.join("optimizer.safetensors");
    opt.load_state(crate::st::load(&opt_path)?, state.optimizer_steps, &opt_path)?;
    recipe_loop::warn_recipe_changes(recipe, &recipe.run.dir);
    tracing::info!(checkpoint = %dir.display(), step = state.step, "resuming");
    Ok(state)
}
