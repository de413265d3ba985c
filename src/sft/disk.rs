//! Directories written by `datasets`' `save_to_disk`, read as `load_from_disk` reads them: a
//! `Dataset` directory (`state.json` listing its Arrow files in order, `dataset_info.json`) or a
//! `DatasetDict` directory (`dataset_dict.json` naming its splits, one `Dataset` directory per
//! split). The Arrow files are IPC streams; each record becomes a JSON object row, as
//! `Dataset.to_list()` gives it, located by its row number in its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::read::{Loc, Row};
use crate::error::{Error, IoContext, Result};

/// The split a recipe key reads from a `DatasetDict`: `data.train` its `train` split,
/// `data.val` its `validation` split, else `test`.
fn splits_for(key: &str) -> &'static [&'static str] {
    if key.ends_with("val") {
        &["validation", "test"]
    } else {
        &["train"]
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, format!("not valid JSON: {e}")))
}

/// The Arrow files of `dir` when it is a `save_to_disk` directory (None otherwise): a
/// `Dataset`'s `_data_files` in order, or, for a `DatasetDict`, those of the split `key` reads.
pub fn dataset_files(dir: &Path, key: &str) -> Result<Option<Vec<PathBuf>>> {
    let dict = dir.join("dataset_dict.json");
    if dict.is_file() {
        let splits = read_json(&dict)?;
        let names: Vec<&str> = splits["splits"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let Some(split) = splits_for(key).iter().find(|s| names.contains(s)) else {
            return Err(Error::data(
                &dict,
                format!("{key}: the DatasetDict has no {} split (it has: {})", splits_for(key).join(" or "), names.join(", ")),
            ));
        };
        return dataset_files(&dir.join(split), key)?
            .map(Some)
            .ok_or_else(|| Error::data(dir.join(split), format!("{key}: split {split} is not a saved Dataset (no state.json)")));
    }
    let state = dir.join("state.json");
    if !state.is_file() {
        return Ok(None);
    }
    let state_json = read_json(&state)?;
    let files = state_json["_data_files"]
        .as_array()
        .ok_or_else(|| Error::data(&state, format!("{key}: state.json has no _data_files list")))?;
    let mut out = Vec::new();
    for f in files {
        let name = f["filename"].as_str().ok_or_else(|| Error::data(&state, format!("{key}: a _data_files entry has no filename")))?;
        out.push(dir.join(name));
    }
    if out.is_empty() {
        return Err(Error::data(&state, format!("{key}: the saved Dataset lists no Arrow file")));
    }
    Ok(Some(out))
}

/// Every record of the Arrow IPC stream `path` as a row.
pub fn arrow_rows(path: &Arc<PathBuf>) -> Result<Vec<Row>> {
    let bad = |e: &dyn std::fmt::Display| Error::data(path.as_path(), format!("cannot read Arrow: {e}"));
    let file = std::fs::File::open(path.as_path()).at(path.as_path())?;
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None).map_err(|e| bad(&e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let mut writer = arrow_json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow_json::writer::LineDelimited>(Vec::new());
        writer.write(&batch).map_err(|e| bad(&e))?;
        writer.finish().map_err(|e| bad(&e))?;
        for line in writer.into_inner().split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let fields = match serde_json::from_slice::<Value>(line) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(other) => Err(format!("a record is {other}, not an object")),
                Err(e) => Err(e.to_string()),
            };
            rows.push(Row { path: path.clone(), loc: Loc::Row(rows.len() + 1), fields });
        }
    }
    Ok(rows)
}
