//! `rankforge sweep`: a hyperparameter grid as one command. Every trial is a normal run — the
//! recipe with `--set` and the trial's grid values applied as `train --set` applies them, in
//! `<run.dir>/<name>/` — and all trials run, one after the other, on one job: on one process,
//! or data-parallel on every rank of a `rankforge-launch` job, joined once.
//!
//! - [`plan`] parses the grid ([`grid`]), loads and validates every trial's recipe and renders
//!   its name ([`template`]) before anything runs: bad input is one error line, exit 2.
//! - [`run`] joins the job under the sweep's hash (the base recipe, the grid, `--set`, `--name`
//!   and `--fail-fast`: ranks started with different sweeps are refused), then for each trial
//!   the ranks agree, through the coordinator, whether to stop (SIGTERM / the launcher's STOP),
//!   whether rank 0 found the trial finished (`final/` exists: skipped), and afterwards on its
//!   outcome. A trial that fails with a trial's own error (bad input, divergence) on any rank
//!   is recorded `failed` on every rank and the sweep goes on (`--fail-fast`: stops with its
//!   exit code); a runtime failure (I/O, disk full, libtorch, a lost peer) ends the sweep with
//!   its code, for the launcher to restart. A stop ends it with exit 75 after the trial's
//!   checkpoint; rerunning the same command skips finished trials, resumes the interrupted one
//!   from its checkpoint and retries failed ones.
//! - Rank 0 rewrites the summary ([`summary`]) after every trial and prints its table at the end.

pub mod grid;
pub mod summary;
pub mod template;

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::config::Recipe;
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::recipe_loop::{self, RunOptions};
use crate::run_dir::RunLock;
use grid::GridValue;
use summary::{Mode, Row, Status};
use template::Scope;

/// The command line of `rankforge sweep`.
#[derive(Debug, Clone, Default)]
pub struct SweepArgs {
    pub config: PathBuf,
    /// `--grid KEY=V1,V2,...`, in order.
    pub grid: Vec<String>,
    /// `--set KEY=VALUE`, applied to every trial.
    pub set: Vec<String>,
    /// `--name TEMPLATE` (default: [`template::default_template`]).
    pub name: Option<String>,
    /// `--metric` (default `val_loss`) and `--mode` (`min` or `max`).
    pub metric: String,
    pub mode: String,
    pub fail_fast: bool,
}

/// One point of the grid.
#[derive(Debug, Clone)]
pub struct Trial {
    pub name: String,
    /// The grid values, as written (their type is the one they were written with).
    pub values: Vec<(String, toml::Value)>,
    /// `KEY=TEXT` of each grid value, as `--set` takes them.
    pub overrides: Vec<String>,
    /// The trial's recipe; `run.dir` = `<base run.dir>/<name>`.
    pub recipe: Recipe,
}

/// A validated sweep.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The recipe with `--set` applied (its `run.dir` holds the trials and the summary).
    pub base: Recipe,
    /// The name template in use.
    pub template: String,
    pub trials: Vec<Trial>,
    /// What every rank must agree on.
    pub hash: String,
    pub metric: String,
    pub mode: Mode,
    pub fail_fast: bool,
}

/// Parses and validates everything before anything runs: the grid, every trial's recipe (as
/// `train --set` would load it), its memory check and its name; duplicate names are refused.
pub fn plan(args: &SweepArgs) -> Result<Plan> {
    let mode = Mode::parse(&args.mode)?;
    let axes = grid::parse_axes(&args.grid, &args.set)?;
    let base = Recipe::load(&args.config, &args.set)?;
    let keys: Vec<String> = axes.iter().map(|a| a.key.clone()).collect();
    let mut template = args.name.clone();
    let mut trials = Vec::new();
    for combo in grid::product(&axes) {
        let chosen: Vec<(&str, &GridValue)> = axes.iter().zip(&combo).map(|(a, &i)| (a.key.as_str(), &a.values[i])).collect();
        let overrides: Vec<String> = chosen.iter().map(|(k, v)| format!("{k}={}", v.text)).collect();
        let all: Vec<String> = args.set.iter().chain(&overrides).cloned().collect();
        let mut recipe = Recipe::load(&args.config, &all).map_err(|e| from_grid(e, &chosen))?;
        let values: Vec<(String, toml::Value)> = chosen.iter().map(|(k, v)| (k.to_string(), v.value.clone())).collect();
        let scope = Scope::new(&recipe, &values);
        let template = template.get_or_insert_with(|| template::default_template(&keys, &scope));
        let name = template::render(template, &scope).map_err(|e| Error::Input(format!("--name {template}: {e}")))?;
        check_name(&name, template)?;
        recipe.run.dir = base.run.dir.join(&name);
        if let Some(cfg) = recipe.hub.as_mut() {
            // The trial's repo, rendered with the grid's values as typed (as its name is).
            cfg.repo = crate::hub::publish::render_repo(cfg, &scope.clone().with_name(&name))?.to_string();
        }
        crate::device::check_training_memory(&recipe, &args.config)?;
        trials.push(Trial { name, values, overrides, recipe });
    }
    let template = template.expect("a grid has at least one trial");
    if let Some((j, i)) = first_repeat(&trials, |t| Some(t.name.clone())) {
        let (a, b) = (&trials[j], &trials[i]);
        return Err(Error::Input(format!(
            "--name {template}: trials {} ({}) and {} ({}) are both named {:?}; put the keys that tell them apart into --name",
            j + 1,
            a.overrides.join(", "),
            i + 1,
            b.overrides.join(", "),
            b.name
        )));
    }
    if let Some((j, i)) = first_repeat(&trials, |t| t.recipe.hub.as_ref().map(|h| h.repo.clone())) {
        let repo = trials[i].recipe.hub.as_ref().map_or("", |h| h.repo.as_str());
        return Err(Error::Input(format!(
            "hub.repo: trials {:?} and {:?} would both push to {repo}; put {{name}} (or the keys that tell them apart) into hub.repo",
            trials[j].name, trials[i].name
        )));
    }
    let mut what = format!("rankforge sweep\n{}", base.to_toml());
    for (flag, items) in [("--grid", &args.grid), ("--set", &args.set)] {
        what.extend(items.iter().map(|i| format!("{flag} {i}\n")));
    }
    what.push_str(&format!("--name {template}\n--fail-fast {}\n", args.fail_fast));
    let hash = crate::checkpoint::sha256_hex(what.as_bytes());
    Ok(Plan { base, template, trials, hash, metric: args.metric.clone(), mode, fail_fast: args.fail_fast })
}

/// The first pair of trials (earlier, later) with the same `key` (`None` keys never repeat).
fn first_repeat<K: PartialEq>(trials: &[Trial], key: impl Fn(&Trial) -> Option<K>) -> Option<(usize, usize)> {
    let keys: Vec<Option<K>> = trials.iter().map(key).collect();
    keys.iter().enumerate().find_map(|(i, k)| {
        let k = k.as_ref()?;
        keys[..i].iter().position(|o| o.as_ref() == Some(k)).map(|j| (j, i))
    })
}

/// A recipe error caused by a grid value, said so: `--grid KEY=VALUE` instead of `--set`.
fn from_grid(e: Error, chosen: &[(&str, &GridValue)]) -> Error {
    let Error::Config { file, key, msg } = e else { return e };
    for (k, v) in chosen {
        let item = format!("{k}={}", v.text);
        if key == format!("--set {item}") {
            return Error::Config { file, key: format!("--grid {item}"), msg };
        }
        if key == *k || k.starts_with(&format!("{key}.")) {
            let msg = msg.strip_suffix(" (set with --set)").unwrap_or(&msg);
            return Error::Config { file, key, msg: format!("{msg} (--grid {item})") };
        }
    }
    Error::Config { file, key, msg }
}

/// A trial's name is one directory under run.dir.
fn check_name(name: &str, template: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(Error::Input(format!(
            "--name {template}: gives the trial name {name:?}, which is not a directory name under run.dir (it must be non-empty, hold no '/', and not start with '.')"
        )));
    }
    Ok(())
}

/// Runs the sweep (see the module's documentation). Exit 0 when every trial ran, whatever
/// their outcome (the summary says which failed).
pub fn run(plan: Plan) -> Result<()> {
    let n = plan.trials.len();
    let mut job = recipe_loop::join_as(&plan.hash, &plan.base.train)?;
    let main = job.dist.is_main();
    if main {
        tracing::info!(trials = n, ranks = job.dist.world(), "sweep: names from {}, in {}", plan.template, plan.base.run.dir.display());
    }
    let _lock = if main { Some(RunLock::acquire(&plan.base.run.dir)?) } else { None };
    check_hub(&mut job.dist, &plan)?;
    let mut rows: Vec<Row> = plan.trials.iter().map(|t| Row::read(&t.name, &t.values, &t.recipe.run.dir, Status::Pending, None)).collect();
    let threads = tch::get_num_threads();
    for (i, trial) in plan.trials.iter().enumerate() {
        let label = format!("trial {}/{n} {}", i + 1, trial.name);
        let dir = &trial.recipe.run.dir;
        // Rank 0 alone sees the run directories: it says whether the trial is finished, and
        // takes its lock before anyone starts (a busy directory fails the trial on all ranks).
        let finished = main && dir.join("final").is_dir();
        let lock = (main && !finished).then(|| RunLock::acquire(dir));
        let lock_error = lock.as_ref().and_then(|l| l.as_ref().err()).map(|e| e.to_string());
        let stop = recipe_loop::stop_requested(&job.dist);
        let before = agree(&mut job.dist, "sweep-trial", json!({"stop": stop, "finished": finished, "error": lock_error}))?;
        if before.iter().any(|v| v["stop"] == true) {
            write_summary(main, &plan, &rows)?;
            return Err(Error::Stopped(format!("stopped on request before {label}; rerun the same command to go on")));
        }
        if before[0]["finished"] == true {
            if main {
                tracing::info!("{label}: finished before (its final/ exists), skipped");
                recipe_loop::warn_recipe_changes(&trial.recipe, dir);
                let pushed = push_finished(&trial.recipe).err().map(|e| format!("its push failed: {e}"));
                let status = if pushed.is_some() { Status::Failed } else { Status::Ok };
                rows[i] = Row::read(&trial.name, &trial.values, dir, status, pushed);
            }
            write_summary(main, &plan, &rows)?;
            continue;
        }
        if main {
            tracing::info!("{label}: {}", trial.overrides.join(" "));
        }
        let result = match (before[0]["error"].as_str(), lock) {
            (Some(_), Some(Err(e))) => Err(e),
            (Some(msg), _) => Err(Error::Input(format!("rank 0: {msg}"))),
            (None, lock) => {
                job.lock = lock.transpose()?;
                tch::set_num_threads(trial.recipe.train.threads.map_or(threads, |t| t as i32));
                let r = crate::tasks::run_in(trial.recipe.clone(), &RunOptions::default(), &mut job);
                job.lock = None;
                r
            }
        };
        if let Err(e @ Error::Stopped(_)) = result {
            // Every rank stops at the same step (the flag rides with the gradients).
            if main {
                rows[i] = Row::read(&trial.name, &trial.values, dir, Status::Stopped, None);
            }
            write_summary(main, &plan, &rows)?;
            return Err(e);
        }
        let mine = match &result {
            Ok(()) => json!({}),
            // A trial's own failure (bad input, divergence, a Hub upload that failed after its
            // retries: rerunning pushes it) lets the sweep go on; a runtime failure does not.
            Err(e) => json!({"error": e.to_string(), "code": e.exit_code(), "trial": matches!(e, Error::Diverged(_) | Error::Hub { .. }) || e.exit_code() == crate::error::EXIT_BAD_INPUT}),
        };
        let after = agree(&mut job.dist, "sweep-outcome", mine)?;
        let Some((rank, failure)) = after.iter().enumerate().find(|(_, v)| v.get("error").is_some()) else {
            if main {
                rows[i] = Row::read(&trial.name, &trial.values, dir, Status::Ok, None);
            }
            write_summary(main, &plan, &rows)?;
            continue;
        };
        let msg = failure["error"].as_str().unwrap_or("").to_string();
        let shown = if rank == 0 { msg.clone() } else { format!("rank {rank}: {msg}") };
        if main {
            rows[i] = Row::read(&trial.name, &trial.values, dir, Status::Failed, Some(shown.clone()));
        }
        write_summary(main, &plan, &rows)?;
        let runtime = after.iter().any(|v| v.get("error").is_some() && v["trial"] != true);
        if plan.fail_fast || runtime {
            let code = failure["code"].as_i64().unwrap_or(1) as i32;
            return Err(result.err().unwrap_or_else(|| recipe_loop::error_with_code(code, shown)));
        }
        if main {
            tracing::warn!("{label} failed: {shown}; going on with the next trial");
        }
    }
    job.dist.status.set_phase(rankforge_proto::Phase::Done);
    if main {
        finish(&plan, &rows)?;
    }
    Ok(())
}

/// With `[hub]`: rank 0 checks the token (and the first trial's repo) before any trial
/// trains; a refusal ends the sweep on every rank with rank 0's error.
fn check_hub(dist: &mut Dist, plan: &Plan) -> Result<()> {
    let Some(first) = plan.trials.first().filter(|t| t.recipe.hub.is_some()) else { return Ok(()) };
    let mine = match dist.is_main() {
        true => match crate::hub::publish::Publisher::prepare(&first.recipe) {
            Ok(_) => json!({}),
            Err(e) => json!({"error": e.to_string(), "code": e.exit_code()}),
        },
        false => json!({}),
    };
    let all = agree(dist, "sweep-hub", mine)?;
    match all[0]["error"].as_str() {
        Some(msg) => Err(recipe_loop::error_with_code(all[0]["code"].as_i64().unwrap_or(2) as i32, msg.to_string())),
        None => Ok(()),
    }
}

/// Rank 0, for a trial finished before: pushes its `final/` when `[hub]` is set and its
/// `hub.json` does not record this repo and revision (an earlier upload failed).
fn push_finished(recipe: &Recipe) -> Result<()> {
    let Some(cfg) = &recipe.hub else { return Ok(()) };
    if crate::hub::publish::pushed(&recipe.run.dir, &cfg.repo, &cfg.revision) {
        return Ok(());
    }
    let Some(publisher) = crate::hub::publish::Publisher::prepare(recipe)? else { return Ok(()) };
    let newest = crate::checkpoint::latest_valid(&recipe.run.dir).ok().flatten();
    let step = newest.and_then(|d| crate::checkpoint::read_state(&d).ok()).map_or(0, |s| s.step);
    publisher.finish(&recipe.run.dir, step, recipe.task.kind().as_str()).map(|_| ())
}

/// Every rank's `mine`, by rank, through the coordinator (a world of one: its own). Waiting
/// here counts as a collective for the launcher's stall detection: a rank that failed alone
/// while the others wait inside a collective is found by `--stall-timeout`.
fn agree(dist: &mut Dist, name: &str, mine: Value) -> Result<Vec<Value>> {
    let phase = dist.status.phase();
    dist.status.set_phase(rankforge_proto::Phase::Collective);
    let all = dist.gather_small(name, mine.to_string().into_bytes());
    dist.status.set_phase(phase);
    all?.iter().map(|b| serde_json::from_slice(b).map_err(|e| Error::Dist(format!("a rank sent an unreadable {name} message: {e}")))).collect()
}

fn write_summary(main: bool, plan: &Plan, rows: &[Row]) -> Result<()> {
    if main {
        summary::write(&plan.base.run.dir, rows, &plan.metric, plan.mode)?;
    }
    Ok(())
}

/// Rank 0, at the end: the summary's table on stdout, and what to look at.
fn finish(plan: &Plan, rows: &[Row]) -> Result<()> {
    let md = summary::write(&plan.base.run.dir, rows, &plan.metric, plan.mode)?;
    println!("{md}");
    let ok = rows.iter().filter(|r| r.status == Status::Ok).count();
    if ok > 0 && summary::best(rows, &plan.metric, plan.mode).is_none() {
        let have: std::collections::BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
        let have: Vec<&str> = std::iter::once("loss").chain(have.iter().map(|s| s.as_str())).collect();
        tracing::warn!("--metric {}: no finished trial has it, so none is marked best (they have: {})", plan.metric, have.join(", "));
    }
    let failed = rows.iter().filter(|r| r.status == Status::Failed).count();
    if failed > 0 {
        tracing::warn!("{failed} of {} trials failed (see {}); rerunning the sweep retries them", rows.len(), plan.base.run.dir.join("sweep.md").display());
    }
    Ok(())
}
