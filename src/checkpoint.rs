//! Checkpoints: `<run.dir>/checkpoints/step_<NNNNNNNN>/`, written by rank 0 only.
//!
//! A checkpoint is a loadable HF model directory (config.json, model.safetensors, tokenizer
//! files) plus `optimizer.safetensors`, `train_state.json` and `manifest.json` (size and sha256
//! of every file). It is assembled in a temporary directory, every file fsynced, the manifest
//! written last, and only then renamed to its final name: a crash or a full disk mid-save
//! leaves at most a `.tmp-*` directory, which is never a resume point and is removed by the
//! next run. Resume takes the newest directory whose manifest verifies; older ones are pruned
//! only after a newer one is complete.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// Progress that is not in tensors. Enough to continue exactly where the run stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Global training samples (sequences) consumed: the data cursor.
    pub samples: u64,
    /// Training tokens consumed, all ranks together.
    pub tokens: u64,
    /// Epochs completed (fractional).
    pub epoch: f64,
    /// AdamW updates applied (steps with a non-finite gradient are skipped).
    pub optimizer_steps: u64,
    /// Seconds spent training before this checkpoint, over all resumed runs.
    pub elapsed_s: f64,
    /// Ranks of the run that wrote it.
    pub world_size: usize,
    /// sha256 of the resolved recipe.
    pub recipe_hash: String,
    pub seed: u64,
    pub rankforge_version: String,
    /// sha256 of the tokenizer file the run trains with (`tokenizer.json`): a resume with a
    /// different tokenizer (other token ids) is refused. Absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    /// Consecutive steps, up to this one, whose update was skipped for a non-finite loss or
    /// gradient (see `train.max_skipped_steps`).
    #[serde(default)]
    pub skipped_in_a_row: u64,
}

const MANIFEST: &str = "manifest.json";

fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Complete-looking checkpoint directories `(step, path)`, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .at(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step_")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Checks every file of checkpoint `dir` against its manifest.
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::model(&path, format!("unreadable manifest: {e}")))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::model(&path, format!("corrupt manifest: {e}")))?;
    let files = manifest["files"].as_object().ok_or_else(|| Error::model(&path, "manifest has no files"))?;
    for (name, entry) in files {
        let file = dir.join(name);
        let bytes = std::fs::read(&file).map_err(|e| Error::model(&file, format!("listed in the manifest but unreadable: {e}")))?;
        if Some(bytes.len() as u64) != entry["bytes"].as_u64() {
            return Err(Error::model(&file, format!("{} bytes, the manifest says {}", bytes.len(), entry["bytes"])));
        }
        if entry["sha256"].as_str() != Some(sha256_hex(&bytes).as_str()) {
            return Err(Error::model(&file, "checksum does not match the manifest"));
        }
    }
    Ok(())
}

/// The newest checkpoint that verifies, warning about (and skipping) newer ones that do not.
pub fn latest_valid(run_dir: &Path) -> Result<Option<PathBuf>> {
    for (_, dir) in list(run_dir)?.into_iter().rev() {
        match verify(&dir) {
            Ok(()) => return Ok(Some(dir)),
            Err(e) => tracing::warn!("skipping damaged checkpoint {}: {e}", dir.display()),
        }
    }
    Ok(None)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes checkpoint `step`: `fill` writes the files into a temporary directory, then the
/// manifest is added and the directory renamed into place. Returns the final path.
pub fn save(run_dir: &Path, step: u64, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let name = format!("step_{step:08}");
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir(&tmp).at(&tmp)?;
    let result: Result<PathBuf> = (|| {
        fill(&tmp)?;
        let mut files = serde_json::Map::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&tmp).at(&tmp)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for path in names {
            let bytes = std::fs::read(&path).at(&path)?;
            let file_name = path.file_name().expect("read_dir entries have names").to_string_lossy().into_owned();
            files.insert(file_name, serde_json::json!({"bytes": bytes.len(), "sha256": sha256_hex(&bytes)}));
        }
        let manifest = serde_json::json!({"step": step, "files": files});
        crate::fsutil::write_json_atomic(&tmp.join(MANIFEST), &manifest)?;
        crate::fsutil::sync_dir(&tmp)?;
        let target = dir.join(&name);
        crate::fsutil::replace_dir(&tmp, &target)?;
        Ok(target)
    })();
    if let Err(e) = &result {
        let _ = std::fs::remove_dir_all(&tmp);
        if e.is_no_space() {
            let previous = latest_valid(run_dir).ok().flatten();
            tracing::error!(
                "disk full while writing checkpoint {name}: the partial copy was removed; {}",
                match previous {
                    Some(p) => format!("the newest complete checkpoint, {}, is intact", p.display()),
                    None => "there is no earlier checkpoint".into(),
                }
            );
        }
    }
    result
}

/// Deletes all but the newest `keep_last` checkpoints that verify (damaged ones beyond those
/// go too); never deletes the newest valid one. Also removes stale `.tmp-*` directories.
pub fn prune(run_dir: &Path, keep_last: usize) -> Result<()> {
    let all = list(run_dir)?;
    let mut kept = 0;
    for (_, dir) in all.iter().rev() {
        if kept < keep_last && dir.join(MANIFEST).exists() {
            kept += 1;
            continue;
        }
        if kept == 0 {
            continue; // nothing valid kept yet: do not delete anything older
        }
        std::fs::remove_dir_all(dir).at(dir)?;
    }
    remove_stale_temps(run_dir)
}

/// Removes `.tmp-*` leftovers of interrupted saves.
pub fn remove_stale_temps(run_dir: &Path) -> Result<()> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(&dir).at(&dir)?.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("train_state.json");
    let text = std::fs::read_to_string(&path).at(&path)?;
    serde_json::from_str(&text).map_err(|e| Error::model(&path, format!("invalid train state: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(run: &Path, step: u64) -> PathBuf {
        save(run, step, |d| crate::fsutil::write_atomic(&d.join("model.safetensors"), format!("w{step}").as_bytes())).unwrap()
    }

    #[test]
    fn save_verify_prune_and_fall_back() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        for s in [10, 20, 30, 40] {
            fake(run, s);
        }
        // A crashed save leaves a temp dir, which is not a checkpoint.
        std::fs::create_dir_all(run.join("checkpoints/.tmp-step_00000050-1")).unwrap();
        assert_eq!(list(run).unwrap().len(), 4);
        prune(run, 2).unwrap();
        let steps: Vec<u64> = list(run).unwrap().into_iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![30, 40]);
        assert!(!run.join("checkpoints/.tmp-step_00000050-1").exists());
        // Corrupt the newest: resume falls back to the previous one.
        std::fs::write(run.join("checkpoints/step_00000040/model.safetensors"), b"w4X").unwrap();
        assert!(verify(&run.join("checkpoints/step_00000040")).is_err());
        assert_eq!(latest_valid(run).unwrap().unwrap(), run.join("checkpoints/step_00000030"));
    }

    #[test]
    fn failed_save_leaves_previous_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        fake(run, 1);
        let err = save(run, 2, |_| Err(Error::Input("disk full".into())));
        assert!(err.is_err());
        assert_eq!(latest_valid(run).unwrap().unwrap(), run.join("checkpoints/step_00000001"));
        assert_eq!(std::fs::read_dir(run.join("checkpoints")).unwrap().count(), 1);
    }
}
