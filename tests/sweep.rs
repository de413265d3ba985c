//! `rankforge sweep`: a 2 × 2 grid (train.lr × train.global_batch_size) of the tiny GPT on one
//! process and on two launched ranks, each trial equal to a plain `train --set`; a stop
//! mid-trial and a rerun that skips, resumes and ends as an uninterrupted sweep; a failing
//! trial; bad input; names formatted as Python's `str()`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const GRID: [&str; 4] = ["--grid", "train.lr=3e-3,1e-3", "--grid", "train.global_batch_size=8,4"];
const SET: [&str; 4] = ["--set", "train.max_steps=24", "--set", "checkpoint.every_steps=4"];
/// The default names of the grid's trials, in order (the last axis varies fastest).
const NAMES: [&str; 4] = ["lr0.003_bs8", "lr0.003_bs4", "lr0.001_bs8", "lr0.001_bs4"];
/// `--set` of each trial, for a plain `train`.
const VALUES: [(&str, &str); 4] = [("3e-3", "8"), ("3e-3", "4"), ("1e-3", "8"), ("1e-3", "4")];

/// The tiny recipe for sweep (or run) directory `run`.
fn recipe(dir: &Path, run: &Path) -> PathBuf {
    let f = fixture();
    tiny_recipe(dir, &f.corpus, &f.tokenizer, run)
}

fn sweep_args<'a>(recipe: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["sweep", "--config", recipe.to_str().unwrap()];
    a.extend(GRID);
    a.extend(SET);
    a.extend(extra);
    a
}

fn sweep(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).env("RANKFORGE_LOG", "info");
    c
}

pub(crate) fn check(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({:?}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// The rows of `<dir>/sweep.jsonl`.
pub(crate) fn rows(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("sweep.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A row without what differs between two equal sweeps (timing, location).
pub(crate) fn figures(row: &Value) -> Value {
    let mut r = row.clone();
    let o = r.as_object_mut().unwrap();
    o.remove("wall_s");
    o.remove("run_dir");
    r
}

/// The `val_loss` of each evaluation row of a run.
fn val_losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()?["val_loss"].as_f64()).collect()
}

struct Reference {
    dir: PathBuf,
    recipe: PathBuf,
    stdout: String,
}

/// One uninterrupted single-process sweep of the grid, shared by the tests.
fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("sweep-reference");
        let base = dir.join("sweep");
        let recipe = recipe(&dir, &base);
        let out = sweep(&sweep_args(&recipe, &[])).output().unwrap();
        check(&out, "the reference sweep");
        Reference { dir: base, recipe, stdout: String::from_utf8(out.stdout).unwrap() }
    })
}

#[test]
fn a_two_by_two_grid_trains_four_runs_each_equal_to_a_plain_train() {
    let r = reference();
    for name in NAMES {
        assert!(r.dir.join(name).join("final/model.safetensors").exists(), "{name}/final");
    }
    // Each trial is `train --set` of its values, bit for bit.
    let dir = scratch("sweep-plain");
    for (name, (lr, bs)) in NAMES.iter().zip(VALUES) {
        let plain = dir.join(name);
        let (lr, bs, run) = (format!("train.lr={lr}"), format!("train.global_batch_size={bs}"), format!("run.dir={}", plain.display()));
        let recipe = r.recipe.to_str().unwrap();
        ok(&["train", "--config", recipe, SET[0], SET[1], SET[2], SET[3], "--set", &lr, "--set", &bs, "--set", &run]);
        assert_eq!(losses(&r.dir.join(name)), losses(&plain), "{name}: train losses");
        assert_eq!(val_losses(&r.dir.join(name)), val_losses(&plain), "{name}: eval losses");
        assert_eq!(losses(&plain).len(), 24);
    }
    // The summary: one row per trial, in grid order, with its figures; the lowest val_loss best.
    let rows = rows(&r.dir);
    assert_eq!(rows.len(), 4);
    for (row, (name, (lr, bs))) in rows.iter().zip(NAMES.iter().zip(VALUES)) {
        let trial = r.dir.join(name);
        assert_eq!(row["name"], *name);
        assert_eq!(row["status"], "ok");
        assert_eq!(row["values"]["train.lr"].as_f64().unwrap(), lr.parse::<f64>().unwrap());
        assert_eq!(row["values"]["train.global_batch_size"], bs.parse::<i64>().unwrap());
        assert_eq!(row["steps"], 24);
        assert_eq!(row["loss"].as_f64().unwrap(), *losses(&trial).last().unwrap());
        assert_eq!(row["metrics"]["val_loss"].as_f64().unwrap(), *val_losses(&trial).last().unwrap());
        assert!(row["metrics"]["val_ppl"].as_f64().unwrap() > 1.0);
        assert!(row["wall_s"].as_f64().unwrap() > 0.0);
        assert_eq!(row["run_dir"], trial.display().to_string());
        assert_eq!(row["error"], Value::Null);
    }
    let vals: Vec<f64> = rows.iter().map(|r| r["metrics"]["val_loss"].as_f64().unwrap()).collect();
    let best = (0..4).min_by(|&a, &b| vals[a].total_cmp(&vals[b])).unwrap();
    let marked: Vec<usize> = (0..4).filter(|&i| rows[i]["best"] == true).collect();
    assert_eq!(marked, [best], "exactly the lowest val_loss is best: {vals:?}");
    // The same in the CSV and the markdown table, which is also printed at the end.
    let mut csv = csv::Reader::from_path(r.dir.join("sweep.csv")).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(&header[..7], ["name", "train.lr", "train.global_batch_size", "status", "steps", "wall_s", "loss"]);
    let recs: Vec<csv::StringRecord> = csv.records().map(|r| r.unwrap()).collect();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let names: Vec<&str> = recs.iter().map(|r| &r[0]).collect();
    assert_eq!(names, NAMES);
    assert_eq!((&recs[0][1], &recs[0][2]), ("0.003", "8"), "values as Python prints them");
    let csv_best: Vec<usize> = (0..4).filter(|&i| &recs[i][col("best")] == "true").collect();
    assert_eq!(csv_best, [best]);
    assert_eq!(recs[best][col("val_loss")].parse::<f64>().unwrap(), vals[best]);
    let md = std::fs::read_to_string(r.dir.join("sweep.md")).unwrap();
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(table.len(), 5, "header + 4 trials:\n{md}");
    assert!(table[best + 1].starts_with(&format!("| * | {} |", NAMES[best])), "{md}");
    assert!(md.contains(&format!("best (lowest val_loss, marked *): {}", NAMES[best])), "{md}");
    assert!(r.stdout.contains(&md), "the table is printed:\n{}", r.stdout);
    assert!(!r.dir.join("rankforge.lock").exists(), "the sweep's lock is gone");
}

#[test]
fn a_sweep_under_the_launcher_on_two_ranks_equals_the_one_rank_sweep() {
    let r = reference();
    let dir = scratch("sweep-launch");
    let base = dir.join("sweep");
    let recipe = recipe(&dir, &base);
    let launcher = bin().with_file_name("rankforge-launch");
    let logs = dir.join("logs");
    let mut args = vec!["--nproc-per-node", "2", "--log-dir", logs.to_str().unwrap(), "--"];
    args.extend(sweep_args(&recipe, &[]));
    let out = Command::new(&launcher).args(&args).env("RANKFORGE_LOG", "warn").env_remove("RANKFORGE_JOB_TOKEN").output().unwrap();
    check(&out, "the 2-rank sweep");
    for name in NAMES {
        let (one, two) = (losses(&r.dir.join(name)), losses(&base.join(name)));
        assert_eq!(one.len(), two.len(), "{name}");
        let rel = one.iter().zip(&two).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
        assert!(rel <= 1e-5, "{name}: 1 vs 2 ranks, loss rel diff {rel:e}");
        assert!(base.join(name).join("final/model.safetensors").exists(), "{name}/final");
        let state = std::fs::read_to_string(base.join(name).join("checkpoints/step_00000024/train_state.json")).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&state).unwrap()["world_size"], 2, "{name} trained on both ranks");
    }
    let rows = rows(&base);
    assert_eq!(rows.iter().map(|r| r["status"].as_str().unwrap()).collect::<Vec<_>>(), ["ok"; 4]);
    assert_eq!(rows.iter().filter(|r| r["best"] == true).count(), 1);
    assert!(logs.join("rank1.log").exists(), "rank 1 ran");
}

/// A trial whose damage only rank 0 sees (every checkpoint of its run directory fails its
/// manifest: it cannot resume) fails on both ranks alike instead of leaving rank 1 waiting for
/// rank 0's start state, and the sweep goes on with the next trial.
#[test]
fn a_trial_broken_where_only_rank_0_looks_fails_on_every_rank_and_the_sweep_goes_on() {
    let dir = scratch("sweep-launch-damaged");
    let base = dir.join("sweep");
    let recipe = recipe(&dir, &base);
    std::fs::create_dir_all(base.join("lr0.003/checkpoints/step_00000004")).unwrap();
    let logs = dir.join("logs");
    let mut child = Command::new(bin().with_file_name("rankforge-launch"))
        .args(["--nproc-per-node", "2", "--log-dir", logs.to_str().unwrap(), "--", "sweep", "--config", recipe.to_str().unwrap()])
        .args(["--grid", "train.lr=3e-3,1e-3", "--set", "train.max_steps=4"])
        .env("RANKFORGE_LOG", "warn")
        .env_remove("RANKFORGE_JOB_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the sweep hangs: {}", String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    check(&out, "a 2-rank sweep with a damaged trial");
    let rows = rows(&base);
    assert_eq!((rows[0]["name"].as_str().unwrap(), rows[0]["status"].as_str().unwrap()), ("lr0.003", "failed"));
    assert!(rows[0]["error"].as_str().unwrap().contains("cannot resume: every checkpoint is damaged"), "{}", rows[0]);
    assert_eq!((rows[1]["status"].as_str().unwrap(), rows[1]["steps"].as_u64()), ("ok", Some(4)));
    assert!(base.join("lr0.001/final/model.safetensors").exists());
    let rank1 = std::fs::read_to_string(logs.join("rank1.log")).unwrap();
    assert!(!rank1.contains("error:"), "rank 1 went on too: {rank1}");
}

/// Waits (up to 120 s) for `f`.
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_stopped_sweep_reruns_skipping_finished_trials_and_resuming_the_interrupted_one() {
    let r = reference();
    let dir = scratch("sweep-stop");
    let base = dir.join("sweep");
    let recipe = recipe(&dir, &base);
    let args = sweep_args(&recipe, &[]);
    let child = sweep(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Stop it once the first trial is finished and the second has a checkpoint.
    let second = base.join(NAMES[1]);
    wait_until("trial 1's final/ and a checkpoint of trial 2", || {
        base.join(NAMES[0]).join("final").exists() && rankforge::checkpoint::list(&second).is_ok_and(|l| !l.is_empty())
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(rankforge_proto::EXIT_STOPPED), "{err}");
    let stopped_at = losses(&second).len() as u64;
    assert!(stopped_at < 24 && !second.join("final").exists(), "stopped inside trial 2, at step {stopped_at}");
    assert_eq!(rankforge::checkpoint::list(&second).unwrap().pop().unwrap().0, stopped_at, "a checkpoint at the stop");
    assert!(!base.join(NAMES[2]).exists(), "trial 3 never started");
    let statuses = |rows: &[Value]| rows.iter().map(|r| r["status"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(statuses(&rows(&base)), ["ok", "stopped", "pending", "pending"]);

    // The same command again: trial 1 skipped, trial 2 resumed from its checkpoint, 3 and 4 run.
    let out = sweep(&args).output().unwrap();
    check(&out, "the rerun");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("trial 1/4 {}: finished before (its final/ exists), skipped", NAMES[0])), "{err}");
    let trial2 = err.split("trial 2/4").nth(1).expect("trial 2 ran");
    assert!(trial2.contains(&format!("resuming at step {stopped_at}")), "{err}");
    assert_eq!(err.matches("resuming at step").count(), 1, "only trial 2 resumes: {err}");
    // Identical to the uninterrupted sweep.
    for name in NAMES {
        assert_eq!(losses(&base.join(name)), losses(&r.dir.join(name)), "{name}: train losses");
        assert_eq!(val_losses(&base.join(name)), val_losses(&r.dir.join(name)), "{name}: eval losses");
    }
    let (now, then) = (rows(&base), rows(&r.dir));
    assert_eq!(now.iter().map(figures).collect::<Vec<_>>(), then.iter().map(figures).collect::<Vec<_>>());
}

#[test]
fn a_failing_trial_is_recorded_and_the_sweep_goes_on_and_fail_fast_stops_with_its_code() {
    let dir = scratch("sweep-fail");
    // lr = 1e30 overflows the weights in the first update: every later loss is NaN, and the
    // run stops after train.max_skipped_steps = 3 skipped updates (exit 1, no final/).
    let grid = ["--grid", "train.lr=1e30,3e-3"];
    let set = ["--set", "train.max_steps=6", "--set", "train.warmup_steps=0", "--set", "checkpoint.every_steps=0"];
    let run = |name: &str, extra: &[&str]| {
        let base = dir.join(name);
        let recipe = recipe(&dir, &base);
        let mut args = vec!["sweep", "--config", recipe.to_str().unwrap()];
        args.extend(grid.iter().chain(&set).chain(extra));
        let out = rankforge(&args);
        (base, out)
    };
    let (base, out) = run("goes-on", &[]);
    check(&out, "a sweep with a failing trial");
    let err = String::from_utf8_lossy(&out.stderr);
    let rows = rows(&base);
    assert_eq!((rows[0]["name"].as_str().unwrap(), rows[0]["status"].as_str().unwrap()), ("lr1e+30", "failed"));
    assert!(rows[0]["error"].as_str().unwrap().contains("training diverged: the update was skipped at 3 steps in a row"), "{}", rows[0]);
    assert_eq!(rows[0]["best"], false);
    assert!(!base.join("lr1e+30/final").exists());
    assert_eq!((rows[1]["name"].as_str().unwrap(), rows[1]["status"].as_str().unwrap(), rows[1]["steps"].as_u64()), ("lr0.003", "ok", Some(6)));
    assert_eq!(rows[1]["best"], true);
    assert!(base.join("lr0.003/final/model.safetensors").exists());
    assert!(err.contains("1 of 2 trials failed"), "{err}");
    let md = std::fs::read_to_string(base.join("sweep.md")).unwrap();
    assert!(md.contains("| lr1e+30 | 1e+30 | failed |") && md.contains("training diverged"), "{md}");

    let (base, out) = run("fail-fast", &["--fail-fast"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the failed trial's exit code: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("training diverged"), "{err}");
    assert!(!base.join("lr0.003").exists(), "the second trial never ran");
    let rows = self::rows(&base);
    assert_eq!(rows.iter().map(|r| r["status"].as_str().unwrap()).collect::<Vec<_>>(), ["failed", "pending"]);
}

#[test]
fn bad_sweep_input_is_one_error_line_and_exit_2_before_anything_runs() {
    let dir = scratch("sweep-bad");
    let base = dir.join("sweep");
    let recipe = recipe(&dir, &base);
    let r = recipe.to_str().unwrap();
    for (args, want) in [
        (vec!["--grid", "train.lrr=1e-3,2e-3"], "train.lrr: unknown field `lrr`, expected one of `max_steps`"),
        (vec!["--grid", "trian.lr=1e-3"], "unknown field `trian`, expected one of `run`, `train`"),
        (vec!["--grid", "train.lr="], "--grid train.lr=: no values for train.lr"),
        (vec!["--grid", "train.lr=1e-3,,2e-3"], "--grid train.lr=1e-3,,2e-3: value 2 of 3 is empty"),
        (vec!["--grid", "train.lr"], "--grid train.lr: expected KEY=V1,V2,..."),
        (vec!["--grid", "train.lr=1e-3,2e-3", "--name", "lr{lrr}"], "--name lr{lrr}: {lrr} is not a recipe key"),
        (vec!["--grid", "train.lr=1e-3,2e-3", "--name", "lr{lr"], "--name lr{lr: the '{' at position 2 is never closed"),
        (vec!["--grid", "train.lr=0.1,0.10"], "trials 1 (train.lr=0.1) and 2 (train.lr=0.10) are both named \"lr0.1\""),
        (vec!["--grid", "train.lr=1e-3,2e-3", "--name", "same"], "are both named \"same\""),
        (vec!["--grid", "train.lr=1e-3,2e-3", "--mode", "avg"], "--mode avg: expected min or max"),
        (vec!["--grid", "train.lr=1e-3,-1"], "train.lr: must be a finite number > 0, got -1 (--grid train.lr=-1)"),
        (vec!["--grid", "train.lr=1e-3", "--grid", "train.lr=2e-3"], "the key is given twice"),
        (vec!["--grid", "run.dir=a,b"], "run.dir cannot vary in a sweep"),
    ] {
        let mut a = vec!["sweep", "--config", r];
        a.extend(&args);
        let line = fails(&a);
        assert!(line.contains(want), "{args:?}: {line}");
        assert!(!base.exists(), "{args:?}: nothing was written");
    }
}

/// Names are the ones Python builds: `str(x)` of many floats equals the template's.
#[test]
fn floats_in_names_print_as_pythons_str() {
    let mut xs: Vec<f64> = vec![5e-5, 1e-4, 0.0001, 3e-4, 2e-5, 1e16, 1e15, 9.999e15, 1e-5, 0.1 + 0.2, 1.0, 100.0, 5e-324, f64::MAX, f64::MIN_POSITIVE, -0.0, -1.5e-7];
    for e in -30..=30 {
        for k in 1..=9 {
            xs.push(format!("{k}e{e}").parse().unwrap());
            xs.push(format!("{k}.5e{e}").parse().unwrap());
        }
    }
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20000 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        xs.push(f64::from_bits(s));
    }
    let input: String = xs.iter().map(|x| format!("{}\n", x.to_bits())).collect();
    let py = "import struct, sys\nfor l in sys.stdin:\n    print(str(struct.unpack('<d', struct.pack('<Q', int(l)))[0]))\n";
    let mut child = Command::new(python()).args(["-c", py]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    let want: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(want.len(), xs.len());
    for (x, w) in xs.iter().zip(&want) {
        assert_eq!(&rankforge::sweep::template::python_float(*x), w, "bits {:#x}", x.to_bits());
    }
}
