//! What keeps a run directory safe from a second run and from a resume that would throw work
//! away: rank 0 holds `<run.dir>/rankforge.lock` for the run's lifetime, and a run directory
//! whose checkpoints all fail their manifests, or that holds a finished model but no
//! checkpoint, is never silently trained again from step 0.
//!
//! The lock is an advisory `flock` on an open file: the kernel releases it when the process
//! ends in any way (exit, crash, `kill -9`), so there is never a stale lock to clean up. The
//! file's content is the holder's pid, for the message a second run prints.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::{Error, IoContext, Result};

/// The lock file's name inside the run directory.
pub const LOCK_FILE: &str = "rankforge.lock";

/// Where `--start-over` moves the files of a run that cannot be resumed.
pub const ABANDONED_DIR: &str = "abandoned";

/// The run directory's lock, held until this value (or the process) goes away.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
    /// The run directory did not exist before: if the run ends before writing anything into
    /// it (bad input found during setup), it is removed again, so rejected input leaves nothing.
    created: Option<PathBuf>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let Some(dir) = &self.created else { return };
        let only_lock = std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).all(|e| e.file_name() == LOCK_FILE)).unwrap_or(false);
        if only_lock {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl RunLock {
    /// Creates the run directory if needed and takes its lock, or fails with exit code 2 naming
    /// the pid of the run that holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        if run_dir.exists() && !run_dir.is_dir() {
            return Err(Error::Input(format!("run.dir = {}: is a file, not a directory", run_dir.display())));
        }
        let created = (!run_dir.exists()).then(|| run_dir.to_path_buf());
        std::fs::create_dir_all(run_dir).at(run_dir)?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_string() } else { format!("pid {holder}") };
                return Err(Error::Input(format!(
                    "run.dir = {}: in use by another rankforge run ({who}, holding {}); wait for it to finish, stop it, or choose another run.dir",
                    run_dir.display(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        writeln!(file, "{}", std::process::id()).at(&path)?;
        file.flush().at(&path)?;
        Ok(RunLock { _file: file, path, created })
    }
}

/// Rank 0, when no checkpoint of `run_dir` verifies: decides whether starting at step 0 is
/// safe. It is when the directory holds no run yet (or only a run that never reached its first
/// checkpoint: its metrics rows are rewritten the same way). It is not when checkpoints exist
/// but all are damaged, or a `final/` model exists: then the run is refused (exit 2, naming each
/// damaged checkpoint) unless `start_over`, which moves those files into
/// `<run.dir>/abandoned/<time>/` (nothing is deleted) before training starts again.
pub fn check_fresh_start(run_dir: &Path, start_over: bool) -> Result<()> {
    let damaged: Vec<PathBuf> = checkpoint::list(run_dir)?.into_iter().map(|(_, p)| p).collect();
    let final_dir = run_dir.join("final");
    if damaged.is_empty() && !final_dir.exists() {
        return Ok(());
    }
    if !start_over {
        let what = if damaged.is_empty() {
            format!("it holds a trained model ({}) but no checkpoint to resume from", final_dir.display())
        } else {
            let reasons: Vec<String> = damaged
                .iter()
                .map(|d| match checkpoint::verify(d) {
                    Err(e) => e.to_string(),
                    Ok(()) => format!("{}: verifies now (retry)", d.display()),
                })
                .collect();
            format!("every checkpoint is damaged: {}", reasons.join("; "))
        };
        return Err(Error::Input(format!(
            "run.dir = {}: cannot resume: {what}. Nothing was changed. Restore a checkpoint, pass --resume DIR, \
             or pass --start-over to move the old run into {}/{ABANDONED_DIR}/ and train from step 0",
            run_dir.display(),
            run_dir.display()
        )));
    }
    let aside = abandon(run_dir)?;
    tracing::warn!("--start-over: the previous run's files were moved into {}; training from step 0", aside.display());
    Ok(())
}

/// Moves the previous run's outputs (checkpoints, final/, metrics.jsonl, recipe.toml) into a new
/// `<run.dir>/abandoned/<UTC time>/` and returns it.
fn abandon(run_dir: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let base = run_dir.join(ABANDONED_DIR);
    let mut aside = base.join(format!("run-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = base.join(format!("run-{secs}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&aside).at(&aside)?;
    for name in ["checkpoints", "final", "metrics.jsonl", "recipe.toml"] {
        let from = run_dir.join(name);
        if from.exists() {
            let to = aside.join(name);
            std::fs::rename(&from, &to).at(&from)?;
        }
    }
    crate::fsutil::sync_dir(run_dir)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_run_dir_is_refused_with_the_holders_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let held = RunLock::acquire(&run).unwrap();
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("in use by another rankforge run"), "{err}");
        drop(held);
        assert!(!run.exists(), "a run directory the lock created and nothing used is removed again");
        let again = RunLock::acquire(&run).unwrap();
        std::fs::write(run.join("recipe.toml"), b"").unwrap();
        drop(again);
        assert!(run.join("recipe.toml").exists() && run.join(LOCK_FILE).exists(), "a used run directory stays");
    }

    #[test]
    fn a_run_dir_that_is_a_file_is_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = RunLock::acquire(&file).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_BAD_INPUT, "{err}");
        assert!(err.to_string().contains("is a file"), "{err}");
    }

    #[test]
    fn damaged_checkpoints_are_refused_then_moved_aside_on_start_over() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        assert!(check_fresh_start(run, false).is_ok(), "an empty run directory starts fresh");
        let ck = checkpoint::save(run, 10, |d| crate::fsutil::write_atomic(&d.join("model.safetensors"), b"w")).unwrap();
        std::fs::write(ck.join("model.safetensors"), b"X").unwrap();
        std::fs::create_dir_all(run.join("final")).unwrap();
        std::fs::write(run.join("metrics.jsonl"), b"{\"step\":1}\n").unwrap();
        let err = check_fresh_start(run, false).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_BAD_INPUT);
        let msg = err.to_string();
        assert!(msg.contains("step_00000010") && msg.contains("checksum"), "{msg}");
        assert!(ck.exists() && run.join("final").exists(), "a refusal changes nothing");
        check_fresh_start(run, true).unwrap();
        assert!(!run.join("checkpoints").exists() && !run.join("final").exists() && !run.join("metrics.jsonl").exists());
        let aside: Vec<PathBuf> = std::fs::read_dir(run.join(ABANDONED_DIR)).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(aside[0].join("metrics.jsonl")).unwrap(), b"{\"step\":1}\n");
        assert!(aside[0].join("checkpoints/step_00000010/model.safetensors").exists());
    }

    #[test]
    fn a_final_model_without_checkpoints_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("final")).unwrap();
        let msg = check_fresh_start(tmp.path(), false).unwrap_err().to_string();
        assert!(msg.contains("holds a trained model"), "{msg}");
    }
}
