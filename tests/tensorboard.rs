//! TensorBoard event files (`<run.dir>/tb/`), read back with the tensorboard package's own
//! `EventAccumulator` (tests/py/tensorboard_scalars.py): the HF Trainer's tags, every scalar
//! equal to metrics.jsonl row for row, each step once after a resume over rows written past
//! the checkpoint, and `[log] tensorboard = false`.

use std::path::{Path, PathBuf};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use prost::Message;
use rankforge::tensorboard::{record, Event, Summary, SummaryValue, What};
use serde_json::{json, Value};

use crate::common::*;

/// metrics.jsonl keys of a pretraining run and the tags the HF Trainer would give them.
const TRAIN: [(&str, &str); 7] = [
    ("loss", "train/loss"),
    ("lr", "train/learning_rate"),
    ("grad_norm", "train/grad_norm"),
    ("epoch", "train/epoch"),
    ("tokens", "train/tokens"),
    ("tokens_per_s", "train/tokens_per_s"),
    ("elapsed_s", "train/elapsed_s"),
];
const EVAL: [(&str, &str); 2] = [("val_loss", "eval/loss"), ("val_ppl", "eval/ppl")];

fn rows(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// What EventAccumulator reads from `logdir`: `{"purge": ..., "raw": ...}` (with and without
/// purge_orphaned_data), each `{"tags", "scalars": {tag: [[wall_time, step, value]]}}`.
fn read_tb(logdir: &Path) -> Value {
    let out = Command::new(python()).arg(root().join("tests/py/tensorboard_scalars.py")).arg(logdir).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn event_files(run: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// Every tag holds exactly the (step, value) pairs of metrics.jsonl's rows with its key, in
/// order, each step once; returns the events as (tag, wall_time, step).
fn assert_equals_metrics(tb: &Value, rows: &[Value]) -> Vec<(String, f64, u64)> {
    let mut want_tags: Vec<&str> = TRAIN.iter().chain(&EVAL).map(|(_, t)| *t).collect();
    want_tags.sort();
    assert_eq!(tb["tags"], json!(want_tags), "scalar tags");
    assert_eq!(tb["file_version"], json!(2.0));
    let mut events = Vec::new();
    for (key, tag) in TRAIN.iter().chain(&EVAL) {
        let want: Vec<(u64, f64)> = rows.iter().filter_map(|r| Some((r["step"].as_u64()?, r.get(*key)?.as_f64()?))).collect();
        let got: Vec<(f64, u64, f64)> = serde_json::from_value(tb["scalars"][tag].clone()).unwrap();
        assert!(!want.is_empty());
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>(), "{tag}: steps");
        for ((_, step, v), (_, w)) in got.iter().zip(&want) {
            assert!((v - w).abs() <= 1e-6 * w.abs(), "{tag} at step {step}: {v} in TensorBoard, {w} in metrics.jsonl");
        }
        events.extend(got.iter().map(|(t, s, _)| (tag.to_string(), *t, *s)));
    }
    events
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn tensorboard_reads_every_metrics_row_under_the_hf_trainers_tags() {
    let f = fixture();
    let files = event_files(&f.run);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let parts: Vec<&str> = name.strip_prefix("events.out.tfevents.").unwrap().split('.').collect();
    let secs: f64 = parts[0].parse().unwrap();
    assert_eq!((parts[0].len(), parts.last().copied()), (10, Some("0")), "TensorBoard's file name: {name}");
    let tb = read_tb(&f.run.join("tb"));
    let rows = rows(&f.run);
    assert_eq!(rows.iter().filter(|r| r.get("val_loss").is_some()).count(), 2, "the fixture evaluates twice");
    let events = assert_equals_metrics(&tb["purge"], &rows);
    assert_eq!(events.len(), 40 * TRAIN.len() + 2 * EVAL.len());
    for (tag, t, step) in &events {
        assert!(*t >= secs && *t <= now(), "{tag} at step {step}: wall time {t}, file started at {secs}");
    }
    let loss_times: Vec<f64> = events.iter().filter(|e| e.0 == "train/loss").map(|e| e.1).collect();
    assert!(loss_times.windows(2).all(|w| w[0] <= w[1]), "wall times follow the steps");
}

/// A fake step row past the checkpoint written before a "crash" (in both logs), a torn last
/// record, then a resume from step 20 of the fixture's 40: TensorBoard shows each step once,
/// equal to metrics.jsonl; the kept steps keep their old wall times; a reader that was open
/// during the resume purges the superseded steps.
#[test]
fn a_resume_supersedes_the_steps_after_the_checkpoint_in_tensorboard() {
    let f = fixture();
    let dir = scratch("tb-resume");
    let run = dir.join("run");
    assert!(Command::new("cp").arg("-a").arg(&f.run).arg(&run).status().unwrap().success());
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let old = event_files(&run).pop().unwrap();
    let fake = json!({"step": 99, "loss": 123.0, "lr": 0.1, "grad_norm": 1.0, "epoch": 9.0, "tokens": 1, "tokens_per_s": 1.0, "elapsed_s": 1.0});
    let mut metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics.push_str(&format!("{fake}\n"));
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    let summary = Summary { value: vec![SummaryValue { tag: "train/loss".into(), simple_value: Some(123.0) }] };
    let event = Event { wall_time: now(), step: 99, what: Some(What::Summary(summary)), source_metadata: None };
    let mut bytes = std::fs::read(&old).unwrap();
    bytes.extend(record(&event.encode_to_vec()));
    let torn = record(&event.encode_to_vec());
    bytes.extend(&torn[..torn.len() / 2]);
    std::fs::write(&old, bytes).unwrap();
    // A TensorBoard that is already showing the run (its reader stays open across the resume).
    let mut live = Command::new(python())
        .arg(root().join("tests/py/tensorboard_scalars.py"))
        .arg(run.join("tb"))
        .arg("--live")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut live_out = BufReader::new(live.stdout.take().unwrap());
    let mut line = String::new();
    live_out.read_line(&mut line).unwrap();
    let before: Value = serde_json::from_str(&line).unwrap();
    let steps = |tb: &Value| tb["scalars"]["train/loss"].as_array().unwrap().iter().map(|e| e[1].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(steps(&before["raw"]).last(), Some(&99), "the fake row is in the file before the resume");

    let t0 = now();
    let ck20 = run.join("checkpoints/step_00000020");
    ok(&["train", "--config", recipe.to_str().unwrap(), "--resume", ck20.to_str().unwrap()]);
    let rows = rows(&run);
    assert_eq!(losses(&run).len(), 40);
    assert!(rows.iter().all(|r| r["step"].as_u64().unwrap() <= 40), "metrics.jsonl dropped the fake row");
    let files = event_files(&run);
    assert_eq!(files.len(), 2, "the resume writes a second file: {files:?}");
    assert_eq!(files[0], old, "the old file sorts first");
    let tb = read_tb(&run.join("tb"));
    // Each step once whether or not the reader purges: the old file holds steps <= 20 only.
    for mode in ["purge", "raw"] {
        assert_eq!(steps(&tb[mode]), (1..=40).collect::<Vec<u64>>(), "{mode}");
        for (tag, t, step) in assert_equals_metrics(&tb[mode], &rows) {
            let old_step = step <= 20;
            assert_eq!(t < t0, old_step, "{mode}: {tag} at step {step}: wall time {t}, resumed at {t0}");
        }
    }
    // The live reader purges steps 21.. (and 99) at the new file's SessionLog(START, step 21).
    writeln!(live.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    live_out.read_line(&mut line).unwrap();
    assert!(live.wait().unwrap().success());
    let reloaded: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(steps(&reloaded["purge"]), (1..=40).collect::<Vec<u64>>(), "a running TensorBoard after the resume");
    assert_equals_metrics(&reloaded["purge"], &rows);
    assert!(steps(&reloaded["raw"]).len() > 41, "without purging, the live reader keeps the superseded steps");
}

#[test]
fn log_tensorboard_false_writes_no_tb_and_log_keys_are_checked() {
    let f = fixture();
    assert!(!std::fs::read_to_string(f.run.join("recipe.toml")).unwrap().contains("[log]"), "the default writes no [log] section");
    let dir = scratch("tb-off");
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let r = recipe.to_str().unwrap();
    ok(&["train", "--config", r, "--set", "train.max_steps=2", "--set", "log.tensorboard=false"]);
    assert_eq!(losses(&run).len(), 2);
    assert!(!run.join("tb").exists(), "tensorboard = false writes no tb/");
    assert!(std::fs::read_to_string(run.join("recipe.toml")).unwrap().contains("[log]\ntensorboard = false"));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("{}\n[log]\ntensorbord = false\n", std::fs::read_to_string(&recipe).unwrap())).unwrap();
    let e = fails(&["train", "--config", bad.to_str().unwrap()]);
    assert!(e.contains("log") && e.contains("unknown field `tensorbord`") && e.contains("bad.toml"), "{e}");
    let e = fails(&["train", "--config", r, "--set", "log.tensorboard=yes"]);
    assert!(e.contains("log.tensorboard") && e.contains("expected a boolean"), "{e}");
}
