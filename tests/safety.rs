//! Data safety of `rankforge train` without a launcher: a busy run directory, damaged
//! checkpoints, a tokenizer changed under a run, non-finite training, SIGTERM. Each case checks
//! what is on disk afterwards: nothing already written is lost or replaced.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::*;

/// Starts `rankforge train` on `recipe` in the background (a long run unless `extra` says).
fn spawn_train(recipe: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .args(["train", "--config", recipe.to_str().unwrap()])
        .args(extra)
        .env("RANKFORGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `rankforge train` on `recipe` with `extra` arguments and returns (exit code, stderr).
fn train(recipe: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["train", "--config", recipe.to_str().unwrap()];
    args.extend(extra);
    let out = rankforge(&args);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn no_panic(err: &str) {
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
}

const LONG: [&str; 4] = ["--set", "train.max_steps=100000", "--set", "checkpoint.every_steps=5"];

#[test]
fn a_second_run_on_a_busy_run_dir_is_refused_and_kill_9_leaves_no_stale_lock() {
    let f = fixture();
    let dir = scratch("busy");
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let mut first = spawn_train(&recipe, &LONG);
    wait_for_rows(&run, 6);
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let (code, err) = train(&recipe, &["--set", "train.max_steps=3"]);
    assert_eq!(code, Some(2), "{err}");
    no_panic(&err);
    assert!(err.contains("in use by another rankforge run") && err.contains(&format!("pid {}", first.id())), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    // The first run is untouched and still training: its rows only grow.
    wait_for_rows(&run, before.lines().count() + 2);
    let after = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(after.starts_with(&before), "the refused run rewrote metrics.jsonl");
    assert!(first.try_wait().unwrap().is_none(), "the first run is still running");
    // kill -9: the kernel drops the lock; the next run resumes from the newest checkpoint.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(run.join("rankforge.lock").exists(), "kill -9 leaves the file, but no lock");
    let newest = rankforge::checkpoint::latest_valid(&run).unwrap().expect("a checkpoint every 5 steps");
    let (code, err) = train(&recipe, &["--set", "train.max_steps=1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(newest.exists() && run.join("final").exists(), "resumed at the checkpoint, nothing to train, final/ written");
}

/// Flips one byte of `file`.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

/// A copy of the fixture's finished 40-step run (checkpoints 20 and 40, final/, metrics), and
/// a recipe pointing at it.
fn copy_of_fixture_run(name: &str) -> (PathBuf, PathBuf) {
    let f = fixture();
    let dir = scratch(name);
    let run = dir.join("run");
    let status = Command::new("cp").args(["-a", f.run.to_str().unwrap(), run.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    (tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run), run)
}

#[test]
fn when_every_checkpoint_is_damaged_the_run_is_refused_and_start_over_moves_it_aside() {
    let (recipe, run) = copy_of_fixture_run("damaged");
    for step in ["step_00000020", "step_00000040"] {
        damage(&run.join("checkpoints").join(step).join("model.safetensors"));
    }
    let before = snapshot(&run);
    let (code, err) = train(&recipe, &[]);
    assert_eq!(code, Some(2), "{err}");
    no_panic(&err);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains("every checkpoint is damaged") && line.contains("step_00000020") && line.contains("step_00000040"), "{line}");
    assert!(line.contains("--start-over"), "{line}");
    assert_eq!(snapshot(&run), before, "a refused run changes nothing");
    // --start-over: the old run is moved aside whole, then a new one trains from step 0.
    let (code, err) = train(&recipe, &["--start-over", "--set", "train.max_steps=5"]);
    assert_eq!(code, Some(0), "{err}");
    let aside: Vec<PathBuf> = std::fs::read_dir(run.join("abandoned")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let old_final = before.iter().find(|(p, _)| p.ends_with("final/model.safetensors")).unwrap();
    assert_eq!(std::fs::read(aside[0].join("final/model.safetensors")).unwrap(), old_final.1, "the old final/ is kept intact");
    assert_eq!(std::fs::read_to_string(aside[0].join("metrics.jsonl")).unwrap().lines().filter(|l| l.contains("\"loss\"")).count(), 40);
    assert_eq!(losses(&run).len(), 5, "the new run starts at step 0");
    assert_eq!(std::fs::read_dir(aside[0].join("tb")).unwrap().count(), 1, "the old TensorBoard file is moved aside too");
    assert_eq!(std::fs::read_dir(run.join("tb")).unwrap().count(), 1, "the new run starts a new one");
}

#[test]
fn a_tokenizer_retrained_in_place_is_refused_on_resume_with_both_hashes() {
    let f = fixture();
    let dir = scratch("tok-changed");
    let tok = dir.join("tok");
    let status = Command::new("cp").args(["-a", f.tokenizer.to_str().unwrap(), tok.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &tok, &run);
    ok(&["train", "--config", recipe.to_str().unwrap(), "--set", "train.max_steps=4", "--set", "train.lr_decay_steps=8"]);
    let old_hash = rankforge::checkpoint::sha256_hex(&std::fs::read(tok.join("tokenizer.json")).unwrap());
    // Same path, same size, other ids: trained on another part of the text.
    let text = std::fs::read_to_string(&f.corpus).unwrap();
    let other = dir.join("other.txt");
    std::fs::write(&other, &text[text.len() / 2..]).unwrap();
    std::fs::remove_dir_all(&tok).unwrap();
    ok(&["tokenizer", "train", "--input", other.to_str().unwrap(), "--vocab-size", "1000", "--kind", "bpe", "--output", tok.to_str().unwrap()]);
    let new_hash = rankforge::checkpoint::sha256_hex(&std::fs::read(tok.join("tokenizer.json")).unwrap());
    assert_ne!(old_hash, new_hash);
    let before = snapshot(&run.join("checkpoints"));
    let (code, err) = train(&recipe, &["--set", "train.max_steps=8", "--set", "train.lr_decay_steps=8"]);
    assert_eq!(code, Some(2), "{err}");
    no_panic(&err);
    assert!(err.contains("the tokenizer changed since checkpoint") && err.contains(&old_hash) && err.contains(&new_hash), "{err}");
    assert_eq!(snapshot(&run.join("checkpoints")), before, "the checkpoints are untouched");
    assert_eq!(losses(&run).len(), 4, "metrics.jsonl untouched");
}

#[test]
fn non_finite_training_stops_with_exit_1_and_writes_no_final() {
    let f = fixture();
    let dir = scratch("diverge");
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    // Refused up front: values that can only produce non-finite updates.
    for set in ["train.lr=inf", "train.eps=0"] {
        let (code, err) = train(&recipe, &["--set", set]);
        assert_eq!(code, Some(2), "{set}: {err}");
        no_panic(&err);
    }
    // A finite but absurd learning rate: the first update overflows the weights, every later
    // loss is NaN, and after train.max_skipped_steps = 3 skipped updates in a row the run stops.
    let (code, err) = train(&recipe, &["--set", "train.lr=1e30", "--set", "train.min_lr=0", "--set", "train.warmup_steps=0", "--set", "checkpoint.every_steps=0"]);
    assert_eq!(code, Some(1), "{err}");
    no_panic(&err);
    assert!(err.contains("training diverged: the update was skipped at 3 steps in a row"), "{err}");
    assert!(!run.join("final").exists(), "no final/ from a diverged run");
    assert!(rankforge::checkpoint::list(&run).unwrap().is_empty(), "no checkpoint of non-finite weights");
    // Step 1 updates; steps 2 and 3 are skipped and logged (a NaN loss is written as null);
    // step 4 is the third skip and stops the run.
    let rows = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<&str> = rows.lines().filter(|l| l.contains("\"loss\"")).collect();
    assert!(rows.len() <= 3 && rows.iter().skip(1).all(|r| r.contains("\"loss\":null")), "{rows:?}");
}

#[test]
fn a_model_with_nan_weights_is_refused_by_generate_without_a_panic() {
    let f = fixture();
    let dir = scratch("nan-final");
    let model = dir.join("final");
    let status = Command::new("cp").args(["-a", f.run.join("final").to_str().unwrap(), model.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    let py = "import sys, torch\nfrom safetensors.torch import load_file, save_file\np = sys.argv[1]\nw = load_file(p)\n\
              for k in w:\n    w[k] = torch.full_like(w[k], float('nan'))\nsave_file(w, p, metadata={'format': 'pt'})\n";
    let out = Command::new(python()).args(["-c", py, model.join("model.safetensors").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rankforge(&["generate", "--model", model.to_str().unwrap(), "--prompt", "And", "--max-new-tokens", "4", "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    no_panic(&err);
    assert!(err.contains("logits are not finite"), "{err}");
}

#[test]
fn sigterm_to_a_bare_run_checkpoints_at_the_next_step_and_exits_75() {
    let f = fixture();
    let dir = scratch("bare-sigterm");
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let child = spawn_train(&recipe, &["--set", "train.max_steps=100000", "--set", "checkpoint.every_steps=0"]);
    wait_for_rows(&run, 3);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(rankforge_proto::EXIT_STOPPED), "{err}");
    let last = losses(&run).len() as u64;
    let (step, ckpt) = rankforge::checkpoint::list(&run).unwrap().pop().expect("a checkpoint at the stop");
    assert_eq!(step, last, "the checkpoint is the last step trained");
    rankforge::checkpoint::verify(&ckpt).unwrap();
    assert_eq!(rankforge::checkpoint::read_state(&ckpt).unwrap().step, last);
    assert!(!run.join("final").exists(), "stopped, not finished");
}
