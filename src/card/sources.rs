//! Where a run's model and data came from, as the card names them: a Hub id when one is known
//! (the Hub cache's `models--ORG--NAME` / `datasets--ORG--NAME` folders, a config's
//! `_name_or_path`, a `save_to_disk` directory's `hf://datasets/ID@...` download records),
//! else the local files (named in the card's body only, never as a Hub id).

use std::path::{Path, PathBuf};

use crate::config::Recipe;

/// Whether `id` is a repo id the Hub accepts ([`crate::hub::validate_repo_id`]).
pub fn is_repo_id(id: &str) -> bool {
    crate::hub::validate_repo_id(id).is_ok()
}

/// The repo id of a Hub-cache folder `<prefix>--ORG--NAME` among `path`'s components
/// (`~/.cache/huggingface/hub/models--ORG--NAME/snapshots/SHA/...`).
fn cache_id(path: &Path, prefix: &str) -> Option<String> {
    path.components().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        let rest = s.strip_prefix(prefix)?.strip_prefix("--")?;
        let id = rest.replacen("--", "/", 1);
        is_repo_id(&id).then_some(id)
    })
}

/// The Hub id of base model directory `dir`: from the Hub cache's folder name
/// (`huggingface-cli download ORG/NAME`), else its config.json's `_name_or_path` when that is a
/// repo id and not a local path. `None` for a local model: the Hub refuses a `base_model` that
/// is not a model on the Hub, so the card names the directory in its body instead.
pub fn base_model_id(dir: &Path) -> Option<String> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if let Some(id) = cache_id(dir, "models").or_else(|| cache_id(&real, "models")) {
        return Some(id);
    }
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let name = config.get("_name_or_path")?.as_str()?;
    (is_repo_id(name) && !name.starts_with('~') && !Path::new(name).exists()).then(|| name.to_string())
}

/// The Hub id of the dataset a data path came from: the Hub cache's `datasets--ORG--NAME`
/// folder, or, for a `save_to_disk` directory (`Dataset` or `DatasetDict`), the
/// `hf://datasets/ID@REVISION/...` files its `dataset_info.json` records as downloaded.
pub fn hub_dataset_id(path: &Path) -> Option<String> {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(id) = cache_id(path, "datasets").or_else(|| cache_id(&abs, "datasets")) {
        return Some(id);
    }
    if !abs.is_dir() {
        return None;
    }
    let mut infos = vec![abs.join("dataset_info.json")];
    if let Ok(entries) = std::fs::read_dir(&abs) {
        let mut splits: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path().join("dataset_info.json"))).collect();
        splits.sort();
        infos.extend(splits);
    }
    infos.iter().find_map(|p| downloaded_from(p))
}

/// The dataset id in a `dataset_info.json`'s `download_checksums` keys (`hf://datasets/ID@...`).
fn downloaded_from(info: &Path) -> Option<String> {
    let text = std::fs::read_to_string(info).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("download_checksums")?.as_object()?.keys().find_map(|url| {
        let rest = url.strip_prefix("hf://datasets/")?;
        let end = rest.find(['@', ':']).unwrap_or(rest.len());
        let id = rest[..end].trim_end_matches('/');
        let id = id.split('/').take(2).collect::<Vec<_>>().join("/");
        is_repo_id(&id).then_some(id)
    })
}

/// The evaluation data as model-index names it: `name` (the Hub id, or the file names) and
/// `kind` (the Hub id, or the `datasets` builder that reads such files: json, csv, parquet,
/// text, arrow).
pub struct EvalData {
    pub name: String,
    pub kind: String,
}

fn file_names(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())).collect::<Vec<_>>().join(", ")
}

/// The `datasets` builder that reads `path` (`json` for .json/.jsonl, ...; `arrow` for a
/// `save_to_disk` directory, `text` for anything else).
pub fn builder(path: &Path) -> &'static str {
    if path.is_dir() && (path.join("dataset_info.json").exists() || path.join("dataset_dict.json").exists()) {
        return "arrow";
    }
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("json" | "jsonl") => "json",
        Some("csv") => "csv",
        Some("parquet") => "parquet",
        _ => "text",
    }
}

/// What the run evaluated on: `data.val`, else the held-out part of `data.train`.
pub fn eval_data(recipe: &Recipe) -> EvalData {
    let s = recipe.data.sources();
    let (paths, held_out) = match s.val {
        Some(v) => (v, None),
        None => (s.train, Some(s.effective_val_fraction())),
    };
    if let Some(id) = paths.iter().find_map(|p| hub_dataset_id(p)) {
        return EvalData { name: id.clone(), kind: id };
    }
    let kind = paths.first().map_or("text", |p| builder(p)).to_string();
    let name = match held_out {
        Some(f) => format!("{} (held-out {}%)", file_names(paths), f * 100.0),
        None => file_names(paths),
    };
    EvalData { name, kind }
}
