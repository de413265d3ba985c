//! The blocks both recipe loops share — pretraining ([`crate::train`]) and fine-tuning
//! ([`crate::finetune`]) each keep their own short `setup → train → export`, and call these
//! for the parts that must behave the same: picking the resume point, warning about recipe
//! changes, joining the job, starting every rank from rank 0's state, preparing the run directory, the
//! per-micro-batch seeds, the coordinator's checkpoint/stop flags and the staged `final/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tch::Tensor;

use crate::checkpoint::{self, TrainState};
use crate::config::Recipe;
use crate::dist::Dist;
use crate::error::{Error, IoContext, Result};
use crate::metrics::MetricsWriter;
use crate::optim::AdamW;

/// What a rank has once it joined its job: its device, whether it computes in bf16, the
/// sha256 of the resolved recipe (checked against every other rank's), and the job itself.
pub struct Joined {
    pub device: tch::Device,
    pub bf16: bool,
    pub hash: String,
    pub dist: Dist,
}

/// Sets up the device and joins the job (a world of one without a launcher) first thing: a
/// rank started with a different recipe is refused before anyone loads a model or data.
pub fn join(recipe: &Recipe) -> Result<Joined> {
    let (device, bf16) = crate::device::setup(&recipe.train)?;
    let hash = checkpoint::sha256_hex(recipe.to_toml().as_bytes());
    let dist = Dist::init(&hash, device)?;
    Ok(Joined { device, bf16, hash, dist })
}

/// The progress record of a run that starts at step 0.
pub fn fresh_state(recipe: &Recipe, hash: &str, world: usize) -> TrainState {
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
    }
}

/// The checkpoint rank 0 resumes from: `resume` (verified) when given, else the run
/// directory's newest valid one. Ranks > 0 get `None`: they receive rank 0's state through
/// [`sync_start`].
pub fn resume_point(resume: Option<PathBuf>, main: bool, run_dir: &Path) -> Result<Option<PathBuf>> {
    match (resume, main) {
        (_, false) => Ok(None),
        (Some(p), true) => {
            checkpoint::verify(&p)?;
            Ok(Some(p))
        }
        (None, true) => checkpoint::latest_valid(run_dir),
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
/// no copy of the checkpoint.
pub fn sync_start(dist: &mut Dist, state: TrainState, params: Vec<Tensor>, opt: &mut AdamW) -> Result<TrainState> {
    if dist.world() == 1 {
        return Ok(state);
    }
    let payload = serde_json::to_vec(&state).expect("TrainState serialises");
    let all = dist.gather_small("start-state", payload)?;
    let state: TrainState = serde_json::from_slice(&all[0]).map_err(|e| Error::Dist(format!("rank 0 sent an unreadable start state: {e}")))?;
    let mut tensors = params;
    tensors.extend(opt.state_tensors().into_iter().map(|(_, t)| t));
    dist.broadcast_tensors(&tensors, 0)?;
    opt.steps = state.optimizer_steps;
    Ok(state)
}

/// Rank 0, once the inputs are known to be valid: creates the run directory, removes
/// leftovers of interrupted saves, writes the resolved recipe and opens metrics.jsonl (rows
/// past `step` dropped).
pub fn open_run_dir(recipe: &Recipe, step: u64) -> Result<MetricsWriter> {
    let run_dir = &recipe.run.dir;
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    checkpoint::remove_stale_temps(run_dir)?;
    crate::fsutil::write_atomic(&run_dir.join("recipe.toml"), recipe.to_toml().as_bytes())?;
    MetricsWriter::open(run_dir, step)
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
    let flag = |f: &std::sync::atomic::AtomicBool| if f.load(Ordering::SeqCst) { 1.0 } else { 0.0 };
    let flags = [flag(&dist.status.checkpoint), flag(&dist.status.stop)];
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
