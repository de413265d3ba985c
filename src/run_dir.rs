//! What keeps a run directory safe from a second run and from a resume that would throw work
//! away: rank 0 holds `<run.dir>/rankforge.lock` for the run's lifetime, and a run directory
//! whose checkpoints all fail their manifests, or that holds a finished model but no
//! checkpoint, is never silently trained again from step 0.
//!
//! The lock is an advisory `flock` on `<run.dir>/rankforge.lock`: the kernel releases it when
//! the process ends in any way (exit, crash, `kill -9`), so a leftover file is never a stale
//! lock. The file exists while a run holds it and is removed when the run ends; a second run
//! names the holder's pid, read from `/proc/locks`.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
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
        // Removed while still held: a run waiting on this file sees it gone and retries.
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created {
            let _ = std::fs::remove_dir(dir); // only succeeds when nothing was written
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
        loop {
            let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).at(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let inode = file.metadata().at(&path)?.ino();
                    let who = holder_pid(inode).map_or("another process".to_string(), |pid| format!("pid {pid}"));
                    return Err(Error::Input(format!(
                        "run.dir = {}: in use by another rankforge run ({who}, holding {}); wait for it to finish, stop it, or choose another run.dir",
                        run_dir.display(),
                        path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // The file may have been removed by a run that ended between our open and lock:
            // then the lock is on a dead inode, and we try again on the new file.
            let same = std::fs::metadata(&path).is_ok_and(|m| m.ino() == file.metadata().map_or(0, |f| f.ino()));
            if same {
                return Ok(RunLock { _file: file, path, created });
            }
        }
    }
}

/// The pid holding a `flock` on the file with inode `inode`, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF`).
fn holder_pid(inode: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ino = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (f.get(1) == Some(&"FLOCK") && ino == inode).then(|| f.get(4)?.parse().ok()).flatten()
    })
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

/// Moves the previous run's outputs (checkpoints, final/, metrics.jsonl, recipe.toml, the
/// TensorBoard files, the training curve) into a new
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
    for name in ["checkpoints", "final", "metrics.jsonl", "recipe.toml", "tb", crate::card::CURVES] {
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
        assert!(run.join("recipe.toml").exists(), "a used run directory stays");
        assert!(!run.join(LOCK_FILE).exists(), "the lock file goes with the run");
        // A leftover file (a run killed with -9) is no lock.
        std::fs::write(run.join(LOCK_FILE), b"").unwrap();
        drop(RunLock::acquire(&run).unwrap());
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
