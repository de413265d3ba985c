//! Crash-safe file writing. Everything rankforge writes that a later run reads (checkpoints,
//! token caches, final models, the resolved recipe) goes through here: write a temporary file
//! beside the target, fsync it, rename it over the target, fsync the directory. A crash or a
//! full disk leaves either the old file or the new one, never a torn one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// A temporary name beside `path` (same directory, so the rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, path).at(path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `value` as JSON the way `save_pretrained` does: sorted keys, 2-space indent,
/// trailing newline.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value always serialises");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// fsyncs `path`'s directory so a rename into it is durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces directory `target` by the complete directory `staged` (same parent): the old one is
/// moved aside first and deleted only after the new one is in place.
pub fn replace_dir(staged: &Path, target: &Path) -> Result<()> {
    let old = temp_path(target).with_extension("old");
    let had_old = target.exists();
    if had_old {
        std::fs::rename(target, &old).at(target)?;
    }
    std::fs::rename(staged, target).at(target)?;
    sync_parent(target)?;
    if had_old {
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(())
}
