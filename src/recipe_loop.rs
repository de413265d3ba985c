//! The blocks both recipe loops share — pretraining ([`crate::train`]) and fine-tuning
//! ([`crate::finetune`]) each keep their own short `setup → train → export`, and call these
//! for the parts that must behave the same: picking the resume point, warning about recipe
//! changes, joining the job, starting every rank from rank 0's state, preparing the run directory, the
//! per-micro-batch seeds, the coordinator's checkpoint/stop flags and the staged `final/`,
//! and the guards every run shares: the run directory's lock, no silent restart over damaged
//! checkpoints ([`crate::run_dir`]), the tokenizer a checkpoint was trained with, a stop after
//! too many skipped (non-finite) updates, no non-finite weights on disk, and SIGTERM on a run
//! without a launcher.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tch::Tensor;

use crate::checkpoint::{self, TrainState};
use crate::config::Recipe;
use crate::dist::Dist;
use crate::error::{Error, IoContext, Result};
use crate::metrics::MetricsWriter;
use crate::optim::AdamW;
use crate::run_dir::RunLock;
use crate::tokenizer::LoadedTokenizer;

/// How `rankforge train` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--resume DIR`: this checkpoint instead of the run directory's newest.
    pub resume: Option<PathBuf>,
    /// `--start-over`: when the run directory cannot be resumed (every checkpoint damaged, or
    /// a `final/` without checkpoints), move its files aside and train from step 0. Ignored
    /// while a checkpoint verifies, so a launcher's restart still resumes.
    pub start_over: bool,
}

/// What a rank has once it joined its job: its device, whether it computes in bf16, the
/// sha256 of the resolved recipe (checked against every other rank's), and the job itself.
pub struct Joined {
    pub device: tch::Device,
    pub bf16: bool,
    pub hash: String,
    pub dist: Dist,
    /// Rank 0: the run directory's lock, held for the whole run.
    pub lock: Option<RunLock>,
}

/// Sets up the device and joins the job (a world of one without a launcher) first thing: a
/// rank started with a different recipe is refused before anyone loads a model or data. Rank 0
/// then locks the run directory when `lock_run_dir` (a training run: a second run on it is
/// refused, exit 2; the engine takes the lock over, see [`crate::engine::run_joined`]; `bench`
/// writes none). Without a launcher, SIGTERM and SIGUSR1
/// become a stop at the next step boundary after a checkpoint, as under one.
pub fn join(recipe: &Recipe, lock_run_dir: bool) -> Result<Joined> {
    let mut job = join_as(&recipe_hash(recipe), &recipe.train)?;
    if job.dist.is_main() && lock_run_dir {
        job.lock = Some(RunLock::acquire(&recipe.run.dir)?);
    }
    Ok(job)
}

/// Joins the job under `hash` (what every rank must agree on: a recipe's, or a whole sweep's),
/// on the device and precision `train` asks for. Takes no lock.
pub fn join_as(hash: &str, train: &crate::config::TrainConfig) -> Result<Joined> {
    let (device, bf16) = crate::device::setup(train)?;
    let dist = Dist::init(hash, device)?;
    if dist.standalone() {
        stop_on_signals();
    }
    Ok(Joined { device, bf16, hash: hash.to_string(), dist, lock: None })
}

/// sha256 of the resolved recipe: what the ranks of a run agree on and its checkpoints record.
pub fn recipe_hash(recipe: &Recipe) -> String {
    checkpoint::sha256_hex(recipe.to_toml().as_bytes())
}

/// Whether this rank was asked to stop (the coordinator's STOP, or SIGTERM/SIGUSR1 without a
/// launcher), without clearing anything: a sweep checks it between its trials.
pub fn stop_requested(dist: &Dist) -> bool {
    dist.status.stop.load(Ordering::SeqCst) || STOP_SIGNAL.load(Ordering::SeqCst)
}

/// sha256 of the tokenizer file `tok` was loaded from.
pub fn tokenizer_hash(tok: &LoadedTokenizer) -> Result<String> {
    Ok(checkpoint::sha256_hex(&std::fs::read(&tok.path).at(&tok.path)?))
}

/// Refuses to resume checkpoint `dir` (its `state`) with a tokenizer other than the one it was
/// trained with: the same ids would mean other tokens.
pub fn check_tokenizer(state: &TrainState, tok: &LoadedTokenizer, now: &str, dir: &Path) -> Result<()> {
    match &state.tokenizer_sha256 {
        Some(then) if then != now => Err(Error::Input(format!(
            "the tokenizer changed since checkpoint {}: {} has sha256 {now}, the checkpoint was trained with sha256 {then}; \
             restore that tokenizer, or train a new run.dir",
            dir.display(),
            tok.path.display()
        ))),
        _ => Ok(()),
    }
}

/// The progress record of a run that starts at step 0.
pub fn fresh_state(recipe: &Recipe, hash: &str, world: usize, tokenizer_sha256: &str) -> TrainState {
    TrainState {
        step: 0,
        samples: 0,
        tokens: 0,
        epoch: 0.0,
        optimizer_steps: 0,
        elapsed_s: 0.0,
        world_size: world,
        recipe_hash: hash.to_string(),
        seed: recipe.train.seed,
        rankforge_version: env!("CARGO_PKG_VERSION").to_string(),
        tokenizer_sha256: Some(tokenizer_sha256.to_string()),
        skipped_in_a_row: 0,
    }
}

/// The checkpoint rank 0 resumes from: `--resume` (verified) when given, else the run
/// directory's newest valid one. With none, starting at step 0 must not overwrite a run that
/// cannot be resumed ([`crate::run_dir::check_fresh_start`]). Ranks > 0 get `None`: they
/// receive rank 0's state through [`sync_start`].
pub fn resume_point(opts: &RunOptions, main: bool, run_dir: &Path) -> Result<Option<PathBuf>> {
    match (&opts.resume, main) {
        (_, false) => Ok(None),
        (Some(p), true) => {
            checkpoint::verify(p)?;
            Ok(Some(p.clone()))
        }
        (None, true) => match checkpoint::latest_valid(run_dir)? {
            Some(p) => Ok(Some(p)),
            None => {
                crate::run_dir::check_fresh_start(run_dir, opts.start_over)?;
                Ok(None)
            }
        },
    }
}

/// After each step: counts consecutive skipped updates (non-finite loss or gradient, every
/// rank decides alike) and stops the run, exit 1, when `train.max_skipped_steps` (> 0) of them
/// come in a row. Nothing further is written, so no `final/` comes of it.
pub fn check_update(state: &mut TrainState, cfg: &crate::config::TrainConfig, step: u64, loss: f64, grad_norm: f64, main: bool) -> Result<()> {
    if loss.is_finite() && grad_norm.is_finite() {
        state.skipped_in_a_row = 0;
        return Ok(());
    }
    state.skipped_in_a_row += 1;
    if main {
        tracing::warn!(step = step + 1, loss, grad_norm, in_a_row = state.skipped_in_a_row, "non-finite loss or gradient: update skipped");
    }
    let limit = cfg.max_skipped_steps;
    if limit > 0 && state.skipped_in_a_row >= limit {
        return Err(Error::Diverged(format!(
            "training diverged: the update was skipped at {limit} steps in a row (non-finite loss or gradient, last at step {}: loss = {loss}, grad_norm = {grad_norm}); \
             no final model was written; lower train.lr, check the data, or raise train.max_skipped_steps",
            step + 1
        )));
    }
    Ok(())
}

/// Refuses to write `what` when a tensor of `tensors` holds NaN or infinity: a checkpoint or
/// `final/` is never non-finite.
pub fn ensure_finite<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>, what: &str, step: u64) -> Result<()> {
    for (name, t) in tensors {
        let bad = tch::no_grad(|| t.isfinite().logical_not().any().int64_value(&[]));
        if bad != 0 {
            return Err(Error::Diverged(format!(
                "not writing {what} at step {step}: weight {name} is not finite (NaN or infinity); lower train.lr or check train.eps"
            )));
        }
    }
    Ok(())
}

/// Set by SIGTERM or SIGUSR1 on a run without a launcher (see [`stop_on_signals`]).
static STOP_SIGNAL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNAL.store(true, Ordering::SeqCst);
}

/// Without a launcher (one GPU, a Slurm job step), SIGTERM and SIGUSR1 ask for what the
/// launcher's STOP does: checkpoint at the next step boundary, then exit 75. A second signal
/// acts as usual (the handler resets itself), so a stuck run can still be ended.
fn stop_on_signals() {
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); `sa` is zeroed and
        // then filled in before use.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Warns about every recipe value that changed since the run directory's `recipe.toml`.
pub fn warn_recipe_changes(recipe: &Recipe, run_dir: &Path) {
    let old = run_dir.join("recipe.toml");
    let Ok(text) = std::fs::read_to_string(&old) else { return };
    let Ok(old) = text.parse::<toml::Table>() else { return };
    let new: toml::Table = recipe.to_toml().parse().expect("our own TOML parses");
    for (key, before, now) in diff_tables("", &old, &new) {
        tracing::warn!("recipe changed since the checkpoint: {key} = {before} before, {now} now; the new value wins");
    }
}

/// Makes every rank start from rank 0's state: the progress counters through the
/// coordinator, the trainable tensors (`params`) and the optimizer moments by broadcast.
/// Identical starting weights do not rely on identical seeding, and ranks on other hosts need
/// no copy of the checkpoint. When rank 0 could not resume (a damaged checkpoint, a changed
/// tokenizer: things only it sees), every rank fails with its error, with its exit code,
/// instead of waiting for it.
pub fn sync_start(dist: &mut Dist, state: Result<TrainState>, params: Vec<Tensor>, opt: &mut AdamW) -> Result<TrainState> {
    if dist.world() == 1 {
        return state;
    }
    let payload = match &state {
        Ok(s) => serde_json::json!({"state": s}),
        Err(e) => serde_json::json!({"error": e.to_string(), "code": e.exit_code()}),
    };
    let all = dist.gather_small("start-state", payload.to_string().into_bytes())?;
    let unreadable = |e: String| Error::Dist(format!("rank 0 sent an unreadable start state: {e}"));
    let sent: serde_json::Value = serde_json::from_slice(&all[0]).map_err(|e| unreadable(e.to_string()))?;
    if let Some(msg) = sent["error"].as_str() {
        return Err(match state {
            Err(e) if dist.is_main() => e,
            _ => error_with_code(sent["code"].as_i64().unwrap_or(1) as i32, format!("rank 0: {msg}")),
        });
    }
    let state: TrainState = serde_json::from_value(sent["state"].clone()).map_err(|e| unreadable(e.to_string()))?;
    let mut tensors = params;
    tensors.extend(opt.state_tensors().into_iter().map(|(_, t)| t));
    dist.broadcast_tensors(&tensors, 0)?;
    opt.steps = state.optimizer_steps;
    Ok(state)
}

/// An error another rank reported (its message and exit code), as this rank's own: it exits
/// with the same code (2 bad input, 74 disk full, 75 stopped, else 1).
pub fn error_with_code(code: i32, msg: String) -> Error {
    match code {
        crate::error::EXIT_BAD_INPUT => Error::Input(msg),
        crate::error::EXIT_NO_SPACE => Error::io(msg, std::io::Error::from_raw_os_error(libc::ENOSPC)),
        c if c == rankforge_proto::EXIT_STOPPED => Error::Stopped(msg),
        c if c == rankforge_proto::EXIT_HUB_UNAVAILABLE => Error::Hub { what: "rank 0".into(), url: "see rank 0's log".into(), status: None, msg, transient: true },
        _ => Error::Dist(msg),
    }
}

/// Rank 0, once the inputs are known to be valid: creates the run directory, removes
/// leftovers of interrupted saves, writes the resolved recipe and opens metrics.jsonl and the
/// TensorBoard event files (rows past `step` dropped).
pub fn open_run_dir(recipe: &Recipe, step: u64) -> Result<MetricsWriter> {
    let run_dir = &recipe.run.dir;
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    checkpoint::remove_stale_temps(run_dir)?;
    crate::fsutil::write_atomic(&run_dir.join("recipe.toml"), recipe.to_toml().as_bytes())?;
    MetricsWriter::open(run_dir, step, recipe.log.tensorboard)
}

/// The seed of the randomness (dropout) of the micro-batch that starts at global sample
/// `sample` in step `step`: a resumed run draws what the uninterrupted one would have, and a
/// micro-batch draws the same masks on whichever rank it lands (when micro-batch boundaries
/// coincide, e.g. 1 and 2 ranks with an even split).
pub fn micro_seed(seed: u64, step: u64, sample: u64) -> i64 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ sample.wrapping_mul(0x94D0_49BB_1331_11EB))
        as i64
        & i64::MAX
}

/// This rank's coordinator flags `[checkpoint requested, stop requested]` as 0/1, to be summed
/// over ranks with the gradients (every rank learns them in the same step). Clears the
/// checkpoint request.
pub fn take_flags(dist: &Dist) -> [f64; 2] {
    let flag = |f: &AtomicBool| -> f64 { if f.load(Ordering::SeqCst) { 1.0 } else { 0.0 } };
    let stop = flag(&dist.status.stop).max(flag(&STOP_SIGNAL));
    let flags = [flag(&dist.status.checkpoint), stop];
    dist.status.checkpoint.store(false, Ordering::SeqCst);
    flags
}

/// Writes `<run.dir>/<name>/` atomically: `fill` writes into a staging directory beside it,
/// which then replaces the old one in one rename. Returns the final path.
pub fn write_staged_dir(run_dir: &Path, name: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let staged = run_dir.join(format!(".tmp-{name}-{}", std::process::id()));
    if staged.exists() {
        std::fs::remove_dir_all(&staged).at(&staged)?;
    }
    std::fs::create_dir_all(&staged).at(&staged)?;
    if let Err(e) = fill(&staged) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    let target = run_dir.join(name);
    crate::fsutil::replace_dir(&staged, &target)?;
    Ok(target)
}

/// `(dotted key, old, new)` for every value that differs between two TOML tables.
fn diff_tables(prefix: &str, old: &toml::Table, new: &toml::Table) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match (old.get(k), new.get(k)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => out.extend(diff_tables(&key, a, b)),
            (a, b) if a != b => {
                let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
                out.push((key, show(a), show(b)));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_updates_stop_the_run_only_when_they_come_in_a_row() {
        let mut cfg = crate::config::TrainConfig::default();
        cfg.max_skipped_steps = 3;
        let mut state = TrainState {
            step: 0, samples: 0, tokens: 0, epoch: 0.0, optimizer_steps: 0, elapsed_s: 0.0, world_size: 1,
            recipe_hash: String::new(), seed: 0, rankforge_version: String::new(), tokenizer_sha256: None, skipped_in_a_row: 0,
        };
        for step in 0..2 {
            check_update(&mut state, &cfg, step, f64::NAN, 1.0, false).unwrap();
        }
        check_update(&mut state, &cfg, 2, 1.0, 1.0, false).unwrap();
        assert_eq!(state.skipped_in_a_row, 0, "a good step resets the count");
        check_update(&mut state, &cfg, 3, 1.0, f64::INFINITY, false).unwrap();
        check_update(&mut state, &cfg, 4, f64::NAN, f64::NAN, false).unwrap();
        let err = check_update(&mut state, &cfg, 5, f64::NAN, 1.0, false).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_RUNTIME);
        assert!(err.to_string().contains("skipped at 3 steps in a row") && err.to_string().contains("step 6"), "{err}");
        cfg.max_skipped_steps = 0;
        for step in 0..10 {
            check_update(&mut state, &cfg, step, f64::NAN, 1.0, false).unwrap();
        }
    }

    #[test]
    fn non_finite_weights_are_never_written() {
        let good = Tensor::from_slice(&[1.0f32, 2.0]);
        ensure_finite([("a", &good)], "the model", 7).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::from_slice(&[1.0f32, bad]);
            let err = ensure_finite([("a", &good), ("h.0.attn.c_attn.weight", &t)], "checkpoint", 7).unwrap_err().to_string();
            assert!(err.contains("not writing checkpoint at step 7: weight h.0.attn.c_attn.weight is not finite"), "{err}");
        }
        let bf16 = Tensor::from_slice(&[f32::NAN]).to_kind(tch::Kind::BFloat16);
        assert!(ensure_finite([("b", &bf16)], "x", 1).is_err(), "any dtype");
    }
}
