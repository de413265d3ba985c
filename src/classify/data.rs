//! Classification data: rows ([`crate::sft::read`]: JSON, JSONL, CSV, Parquet, `save_to_disk`
//! directories) → text, optional text pair and label → token ids ([`super::encode`]) and a
//! target ([`super::labels`]) → train/validation examples → padded batches ([`collate`]).
//!
//! Validation comes from `data.val`, else from the `validation` (else `test`) split of a
//! `DatasetDict` named in `data.train` (unless `val_fraction` is set), else a seeded random
//! `val_fraction` (default 0.05) of the training rows. Given validation data that holds no
//! example is an error.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use tch::{Kind, Tensor};

use super::config::{ClassificationDataConfig, ClassificationTaskConfig};
use super::encode::TextEncoder;
use super::labels::{self, ClsLabel, LabelSpace, RawLabel};
use crate::data::split_val;
use crate::error::{Error, IoContext, Result};
use crate::models::heads::ProblemType;
use crate::sft::read::{self, field, req_str, Row, RowError};
use crate::tokenizer::LoadedTokenizer;

/// One example: token ids with the special tokens, BERT segment ids (all 0 for single texts
/// and for tokenizers without segments), and the target.
#[derive(Debug, Clone, PartialEq)]
pub struct ClsExample {
    pub input_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    pub label: ClsLabel,
}

/// What happened to the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClsStats {
    /// Rows read (train and validation), malformed ones included.
    pub rows: usize,
    /// Examples cut to `max_length`.
    pub truncated: usize,
    /// Malformed rows skipped under `skip_malformed`.
    pub skipped_malformed: usize,
}

/// Classification data ready for batching.
#[derive(Debug, Clone)]
pub struct ClsData {
    pub train: Vec<ClsExample>,
    pub val: Vec<ClsExample>,
    /// Label names in id order (the model's `id2label`).
    pub labels: Vec<String>,
    pub problem_type: ProblemType,
    pub stats: ClsStats,
}

/// A row's text, pair and label before tokenizing.
struct Parsed<'a> {
    row: &'a Row,
    text: &'a str,
    pair: Option<&'a str>,
    label: RawLabel,
}

/// The rows of some files, with the `ClassLabel` names of the label column when the files are
/// a saved `datasets` split that has them.
struct Rows {
    rows: Vec<Row>,
    csv: Vec<bool>,
    class_names: Option<Vec<String>>,
}

/// Reads `[data]` with `[task]`'s labels: see the module docs. `seed` picks the held-out rows.
pub fn load(data: &ClassificationDataConfig, task: &ClassificationTaskConfig, tok: &LoadedTokenizer, seed: u64) -> Result<ClsData> {
    let encoder = encoder(data, tok, "data.max_length")?;
    let mut stats = ClsStats::default();
    let label_field = data.label_field();
    let train_rows = read_rows(&data.train, "data.train", TRAIN_SPLIT, label_field, &mut stats)?;
    let val_rows = match (&data.val, data.val_fraction) {
        (Some(paths), _) => Some(read_rows(paths, "data.val", VAL_SPLITS, label_field, &mut stats)?),
        (None, None) => match dict_val_splits(&data.train)? {
            Some(paths) => {
                tracing::info!(splits = %paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), "validation: the DatasetDict's split");
                Some(read_rows(&paths, "data.train", VAL_SPLITS, label_field, &mut stats)?)
            }
            None => None,
        },
        (None, Some(_)) => None,
    };
    let train_parsed = parse_rows(&train_rows, data, &mut stats)?;
    let raw: Vec<&RawLabel> = train_parsed.iter().map(|p| &p.label).collect();
    let space = LabelSpace::resolve(task, &raw, train_rows.class_names.as_deref())?;
    let mut train = examples(&train_parsed, &space, &encoder, &mut stats)?;
    let mut val = match &val_rows {
        Some(rows) => {
            let parsed = parse_rows(rows, data, &mut stats)?;
            examples(&parsed, &space, &encoder, &mut stats)?
        }
        None => Vec::new(),
    };
    if train.is_empty() {
        return Err(Error::data(first(&data.train), format!("data.train: no training example ({stats:?})")));
    }
    match (&data.val, &val_rows) {
        (Some(paths), _) if val.is_empty() => {
            return Err(Error::data(first(paths), format!("data.val: the validation data holds no example ({stats:?})")));
        }
        (_, None) => (train, val) = split_val(train, data.val_fraction.unwrap_or(0.05), seed),
        _ => {}
    }
    tracing::info!(train = train.len(), val = val.len(), labels = space.names.len(), problem_type = space.problem_type.as_str(),
        truncated = stats.truncated, "classification data");
    Ok(ClsData { train, val, labels: space.names, problem_type: space.problem_type, stats })
}

/// The split `data.train` reads from a `DatasetDict`.
pub const TRAIN_SPLIT: &[&str] = &["train"];
/// The splits validation reads from a `DatasetDict`, the first present.
pub const VAL_SPLITS: &[&str] = &["validation", "test"];

/// A label list fixed beforehand (a model's `id2label`).
#[derive(Debug, Clone, Copy)]
pub struct FixedLabels<'a> {
    /// Names in id order.
    pub names: &'a [String],
    /// `None`: multi-label when a row's label is a list, else single-label.
    pub problem_type: Option<ProblemType>,
    /// Where the names come from, for messages ("the model's id2label").
    pub source: &'a str,
}

/// Examples of `data.train` (files, folders, globs, `save_to_disk` directories — a
/// `DatasetDict`'s first split of `splits`; `key` names them in messages) against fixed labels:
/// what `rankforge evaluate` reads. No example at all is an error.
pub fn load_labelled(
    key: &str,
    splits: &[&str],
    data: &ClassificationDataConfig,
    labels: FixedLabels,
    encoder: &TextEncoder,
) -> Result<(Vec<ClsExample>, LabelSpace, ClsStats)> {
    let (paths, mut stats) = (&data.train, ClsStats::default());
    let rows = read_rows(paths, key, splits, data.label_field(), &mut stats)?;
    let parsed = parse_rows(&rows, data, &mut stats)?;
    let problem_type = labels.problem_type.unwrap_or(if parsed.iter().any(|p| matches!(p.label, RawLabel::List(_))) {
        ProblemType::MultiLabel
    } else {
        ProblemType::SingleLabel
    });
    let space = LabelSpace::fixed(labels.names.to_vec(), problem_type, labels.source)?;
    let out = examples(&parsed, &space, encoder, &mut stats)?;
    if out.is_empty() {
        return Err(Error::data(first(paths), format!("{key}: no example to evaluate ({stats:?})")));
    }
    Ok((out, space, stats))
}

/// Texts to classify (`rankforge predict --input`): every row's `text_field`, and its
/// `pair_field` when the row has one. A row without the text is an error at its line; no row
/// at all is one too.
pub fn read_texts(paths: &[PathBuf], key: &str, text_field: &str, pair_field: &str) -> Result<Vec<super::predict::TextInput>> {
    let mut out = Vec::new();
    for file in read::expand(paths, key)? {
        for row in read::read_file(&file)? {
            let input = (|| -> std::result::Result<_, RowError> {
                let map = row.fields.as_ref().map_err(|m| RowError::Malformed(m.clone()))?;
                let text = req_str(map, text_field)?.to_string();
                let text_pair = read::opt_str(map, pair_field)?.map(String::from);
                Ok(super::predict::TextInput { text, text_pair })
            })();
            match input {
                Ok(i) => out.push(i),
                Err(RowError::Malformed(msg)) => return Err(row.error(msg)),
                Err(RowError::Fatal(e)) => return Err(e),
            }
        }
    }
    if out.is_empty() {
        return Err(Error::data(first(paths), format!("{key}: no row to classify")));
    }
    Ok(out)
}

/// The encoder of `data` (its `max_length`, named `key`); a pair field on a tokenizer without a
/// pair template is an error.
pub fn encoder(data: &ClassificationDataConfig, tok: &LoadedTokenizer, key: &str) -> Result<TextEncoder> {
    let encoder = TextEncoder::new(tok, data.max_length, key)?;
    if data.text_pair_field.is_some() && !encoder.has_pair_template() {
        return Err(encoder.no_pair_template("data.text_pair_field"));
    }
    Ok(encoder)
}

fn first(paths: &[PathBuf]) -> &Path {
    paths.first().map_or(Path::new("."), PathBuf::as_path)
}

fn read_rows(paths: &[PathBuf], key: &str, splits: &[&str], label_field: &str, stats: &mut ClsStats) -> Result<Rows> {
    let mut out = Rows { rows: Vec::new(), csv: Vec::new(), class_names: None };
    for path in paths {
        // A DatasetDict is read through its split, a saved Dataset directory.
        let path = match dict_split(path, splits)? {
            None => path.clone(),
            Some(Ok(split)) => split,
            Some(Err(have)) => {
                return Err(Error::data(path, format!("{key}: the DatasetDict has no {} split (it has: {})", splits.join(" or "), have.join(", "))));
            }
        };
        for file in read::expand(std::slice::from_ref(&path), key)? {
            let rows = read::read_file(&file)?;
            let csv = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            out.csv.extend(std::iter::repeat_n(csv, rows.len()));
            out.rows.extend(rows);
            if out.class_names.is_none() {
                out.class_names = class_label_names(&file, label_field)?;
            }
        }
    }
    stats.rows += out.rows.len();
    Ok(out)
}

/// `None` when `dir` is no `DatasetDict` directory; else its first split of `prefer`, or the
/// names of the splits it has.
fn dict_split(dir: &Path, prefer: &[&str]) -> Result<Option<std::result::Result<PathBuf, Vec<String>>>> {
    let dict = dir.join("dataset_dict.json");
    if !dict.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&dict).at(&dict)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::data(&dict, format!("not valid JSON: {e}")))?;
    let names: Vec<String> = v["splits"].as_array().map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect()).unwrap_or_default();
    Ok(Some(match prefer.iter().find(|s| names.iter().any(|n| n == *s)) {
        Some(split) => Ok(dir.join(split)),
        None => Err(names),
    }))
}

/// The validation splits of `data.train` when every path is a `DatasetDict` with one.
pub(crate) fn dict_val_splits(train: &[PathBuf]) -> Result<Option<Vec<PathBuf>>> {
    let mut out = Vec::new();
    for dir in train {
        match dict_split(dir, VAL_SPLITS)? {
            Some(Ok(split)) => out.push(split),
            _ => return Ok(None),
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// The `ClassLabel` names of `field` in the `dataset_info.json` beside a saved Arrow file (a
/// `Sequence`/`List` of `ClassLabel` for multi-label columns).
fn class_label_names(file: &Path, field: &str) -> Result<Option<Vec<String>>> {
    let info = match file.parent() {
        Some(dir) if file.extension().is_some_and(|e| e == "arrow") => dir.join("dataset_info.json"),
        _ => return Ok(None),
    };
    if !info.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&info).at(&info)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::data(&info, format!("not valid JSON: {e}")))?;
    let feature = &v["features"][field];
    let class = if feature["_type"] == "ClassLabel" { feature } else { &feature["feature"] };
    if class["_type"] != "ClassLabel" {
        return Ok(None);
    }
    Ok(class["names"].as_array().map(|a| a.iter().map(|n| n.as_str().map_or_else(|| n.to_string(), String::from)).collect()))
}

/// Text, pair and label of every row; malformed rows are an error at their line, or skipped
/// and counted with `skip_malformed`.
fn parse_rows<'a>(rows: &'a Rows, data: &ClassificationDataConfig, stats: &mut ClsStats) -> Result<Vec<Parsed<'a>>> {
    let (text_field, label_field) = (data.text_field(), data.label_field());
    let mut out = Vec::with_capacity(rows.rows.len());
    let skipped_before = stats.skipped_malformed;
    for (row, &csv) in rows.rows.iter().zip(&rows.csv) {
        let parsed = (|| -> std::result::Result<Parsed<'a>, RowError> {
            let map = row.fields.as_ref().map_err(|m| RowError::Malformed(m.clone()))?;
            let text = req_str(map, text_field)?;
            let pair = match &data.text_pair_field {
                Some(f) => Some(req_str(map, f)?),
                None => None,
            };
            let label = labels::parse(field(map, label_field)?, csv, rows.class_names.as_deref())
                .map_err(|m| RowError::Malformed(format!("field \"{label_field}\": {m}")))?;
            Ok(Parsed { row, text, pair, label })
        })();
        match parsed {
            Ok(p) => out.push(p),
            Err(RowError::Malformed(msg)) if data.skip_malformed => {
                tracing::debug!("{}", row.error(&msg));
                stats.skipped_malformed += 1;
            }
            Err(RowError::Malformed(msg)) => return Err(row.error(msg)),
            Err(RowError::Fatal(e)) => return Err(e),
        }
    }
    if stats.skipped_malformed > skipped_before {
        tracing::warn!(skipped = stats.skipped_malformed - skipped_before, "skipped malformed rows (data.skip_malformed)");
    }
    Ok(out)
}

/// Targets (the first label outside the list, in file order, is the error) and token ids
/// (tokenized in parallel).
fn examples(parsed: &[Parsed], space: &LabelSpace, encoder: &TextEncoder, stats: &mut ClsStats) -> Result<Vec<ClsExample>> {
    let targets = parsed.iter().map(|p| space.label(&p.label).map_err(|m| p.row.error(m))).collect::<Result<Vec<_>>>()?;
    let encoded = parsed.par_iter().map(|p| encoder.encode(p.text, p.pair)).collect::<Result<Vec<_>>>()?;
    Ok(encoded
        .into_iter()
        .zip(targets)
        .map(|(e, label)| {
            stats.truncated += e.truncated as usize;
            ClsExample { input_ids: e.input_ids, token_type_ids: e.token_type_ids, label }
        })
        .collect())
}

/// Right-pads to the longest example: `input_ids` (B, T) Int64 (`pad_id` on padding),
/// `attention_mask` (B, T) Int64 1/0, `token_type_ids` (B, T) Int64 (0 on padding), and the
/// labels: (B) Int64 class ids, (B, L) Float multi-hot rows, or (B) Float values — the dtypes
/// transformers' losses take (so [`crate::models::heads::ProblemType::infer`] agrees). All
/// examples of one [`ClsData`] share a label kind; the first example's decides.
pub fn collate(examples: &[&ClsExample], pad_id: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let b = examples.len();
    let t = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    let (mut ids, mut mask, mut types) = (vec![pad_id; b * t], vec![0i64; b * t], vec![0i64; b * t]);
    for (row, e) in examples.iter().enumerate() {
        let base = row * t;
        for (j, (&id, &tt)) in e.input_ids.iter().zip(&e.token_type_ids).enumerate() {
            ids[base + j] = id;
            types[base + j] = tt;
            mask[base + j] = 1;
        }
    }
    let shape = [b as i64, t as i64];
    let labels = match examples.first().map(|e| &e.label) {
        Some(ClsLabel::Multi(first)) => {
            let l = first.len();
            let hot: Vec<f32> = examples.iter().flat_map(|e| match &e.label {
                ClsLabel::Multi(h) => h.iter().map(|&x| x as u8 as f32).collect::<Vec<_>>(),
                _ => vec![f32::NAN; l],
            }).collect();
            Tensor::from_slice(&hot).view([b as i64, l as i64])
        }
        Some(ClsLabel::Value(_)) => {
            let v: Vec<f32> = examples.iter().map(|e| if let ClsLabel::Value(v) = e.label { v as f32 } else { f32::NAN }).collect();
            Tensor::from_slice(&v)
        }
        _ => {
            let c: Vec<i64> = examples.iter().map(|e| if let ClsLabel::Class(c) = e.label { c as i64 } else { -100 }).collect();
            Tensor::from_slice(&c).to_kind(Kind::Int64)
        }
    };
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape), Tensor::from_slice(&types).view(shape), labels)
}

#[cfg(test)]
mod tests;
