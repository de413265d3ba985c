//! Masked-LM data: texts → token ids with the tokenizer's special tokens → train/validation
//! examples, as transformers' `run_mlm.py` prepares them.
//!
//! - Sources: `.json`, `.jsonl`, `.ndjson`, `.csv`, `.parquet`, `.arrow` files and
//!   `save_to_disk` directories hold rows ([`crate::sft::read`]), whose `text_field` is the
//!   text (a missing or non-string field is an error naming the file and line, or skipped and
//!   counted with `skip_malformed`). Any other file is plain UTF-8 text, one text per line.
//!   Folders are walked (sorted, recursive, hidden entries skipped) and globs expanded.
//!   Blank texts (empty or only whitespace) are skipped and counted, as `run_mlm.py
//!   --line_by_line` drops them.
//! - Tokens: `tokenizer(text, truncation=True, max_length=N)` ([`TextEncoder`]): BERT's
//!   `[CLS] … [SEP]`, cut texts keeping their `[SEP]`. With `packing`, texts are tokenized
//!   whole (with their special tokens), concatenated in file order and cut into blocks of
//!   `max_length`, the remainder dropped (`run_mlm.py`'s `group_texts`).
//! - Validation: `data.val`, else the `validation` (else `test`) split of a `DatasetDict`
//!   named in `data.train` (unless `val_fraction` is set), else a seeded random
//!   `val_fraction` (default 0.05) of the training texts, held out before packing.
//! - Special ids ([`MlmData::special`]): the tokenizer's named special tokens and its extra
//!   (`additional_special_tokens` / `extra_special_tokens`) ones, as transformers'
//!   `all_special_ids`, which `get_special_tokens_mask` and so the collator use.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use super::config::MaskedLmDataConfig;
use crate::data::split_val;
use crate::classify::encode::TextEncoder;
use crate::error::{Error, IoContext, Result};
use crate::sft::read::{self, req_str, RowError};
use crate::tokenizer::LoadedTokenizer;

/// What happened to the texts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MlmStats {
    /// Texts read (train and validation): rows and lines, blank and malformed ones included.
    pub texts: usize,
    /// Blank texts skipped.
    pub blank: usize,
    /// Malformed rows or lines skipped under `skip_malformed`.
    pub skipped_malformed: usize,
    /// Texts cut to `max_length` (without packing).
    pub truncated: usize,
    /// Tokens in the examples (train and validation).
    pub tokens: usize,
    /// Tokens dropped at the end of a split by packing (fewer than one block).
    pub packing_dropped: usize,
}

/// Masked-LM data ready for masking ([`super::mask`]) and batching.
#[derive(Debug, Clone)]
pub struct MlmData {
    /// Token ids of each training example (a text or a packed block), special tokens included.
    pub train: Vec<Vec<i64>>,
    pub val: Vec<Vec<i64>>,
    /// `special[id]`: whether token `id` is one of the tokenizer's special tokens (padding
    /// included), never chosen for masking. `vocab_size` long.
    pub special: Vec<bool>,
    /// The tokenizer's mask token id.
    pub mask_id: i64,
    /// The padding id: the tokenizer's `pad_token`, else 0 (padding is never a label).
    pub pad_id: i64,
    /// `len(tokenizer)`: the vocabulary with added tokens; random replacements are drawn in it.
    pub vocab_size: usize,
    pub stats: MlmStats,
}

/// Reads `[data]`: see the module docs. `seed` picks the held-out texts.
pub fn load(data: &MaskedLmDataConfig, tok: &LoadedTokenizer, seed: u64) -> Result<MlmData> {
    data.validate().map_err(|(key, msg)| Error::Input(format!("{key}: {msg}")))?;
    let mask_id = mask_id(tok)?;
    let vocab_size = tok.vocab_size();
    let special = special_table(tok, vocab_size)?;
    let encoder = TextEncoder::new(tok, if data.packing { None } else { data.max_length }, "data.max_length")?;
    let mut stats = MlmStats::default();
    let train_texts = read_texts(&data.train, "data.train", data, &mut stats)?;
    let val_texts = match (&data.val, data.val_fraction) {
        (Some(paths), _) => Some(read_texts(paths, "data.val", data, &mut stats)?),
        (None, None) => match crate::classify::data::dict_val_splits(&data.train)? {
            Some(paths) => {
                tracing::info!(splits = %paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), "validation: the DatasetDict's split");
                Some(read_texts(&paths, "data.train", data, &mut stats)?)
            }
            None => None,
        },
        (None, Some(_)) => None,
    };
    let mut train = encode(&train_texts, &encoder, &mut stats)?;
    let mut val = match &val_texts {
        Some(texts) => encode(texts, &encoder, &mut stats)?,
        None => Vec::new(),
    };
    if train.is_empty() {
        return Err(Error::data(first(&data.train), format!("data.train: no text to train on ({stats:?})")));
    }
    if let (Some(paths), true) = (&data.val, val.is_empty()) {
        return Err(Error::data(first(paths), format!("data.val: the validation data holds no text ({stats:?})")));
    }
    if val_texts.is_none() {
        (train, val) = split_val(train, data.val_fraction.unwrap_or(0.05), seed);
    }
    if let (true, Some(block)) = (data.packing, data.max_length) {
        let n_train = train.iter().map(Vec::len).sum::<usize>();
        train = pack(train, block, &mut stats);
        val = pack(val, block, &mut stats);
        if train.is_empty() {
            return Err(Error::data(
                first(&data.train),
                format!("data.train: {n_train} tokens, fewer than one packed block of data.max_length = {block}"),
            ));
        }
    }
    stats.tokens = train.iter().chain(&val).map(Vec::len).sum();
    tracing::info!(train = train.len(), val = val.len(), tokens = stats.tokens, truncated = stats.truncated, blank = stats.blank,
        packing = data.packing, "masked-LM data");
    let pad_id = tok.pad_id.map_or(0, i64::from);
    Ok(MlmData { train, val, special, mask_id, pad_id, vocab_size, stats })
}

/// The tokenizer's mask token id; none is an error naming the tokenizer.
pub fn mask_id(tok: &LoadedTokenizer) -> Result<i64> {
    let err = |msg: String| Error::Tokenizer { path: tok.path.clone(), msg };
    let Some(token) = tok.special("mask_token") else {
        return Err(err(
            "has no mask token, which masked-LM training puts in place of the chosen tokens: use the tokenizer of a masked LM \
             (BERT's [MASK], RoBERTa's <mask>) or set \"mask_token\" in tokenizer_config.json to a token of the vocabulary"
                .into(),
        ));
    };
    match tok.tokenizer.token_to_id(token) {
        Some(id) => Ok(i64::from(id)),
        None => Err(err(format!("the mask token {token:?} is not in the vocabulary"))),
    }
}

/// `special[id]` for every id of the vocabulary: transformers' `all_special_ids` (the named
/// special tokens and the extra ones of tokenizer_config.json / special_tokens_map.json).
pub fn special_table(tok: &LoadedTokenizer, vocab_size: usize) -> Result<Vec<bool>> {
    let mut tokens: Vec<String> = tok.specials.iter().map(|(_, t)| t.clone()).collect();
    let dir = tok.path.parent().unwrap_or(Path::new("."));
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Tokenizer { path: path.clone(), msg: format!("not valid JSON: {e}") })?;
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            let items: Vec<&Value> = match &v[key] {
                Value::Array(a) => a.iter().collect(),
                Value::Object(m) => m.values().collect(),
                _ => Vec::new(),
            };
            tokens.extend(items.into_iter().filter_map(|t| t.as_str().or_else(|| t["content"].as_str())).map(String::from));
        }
    }
    let mut table = vec![false; vocab_size];
    for id in tokens.iter().filter_map(|t| tok.tokenizer.token_to_id(t)) {
        if let Some(slot) = table.get_mut(id as usize) {
            *slot = true;
        }
    }
    Ok(table)
}

fn first(paths: &[PathBuf]) -> &Path {
    paths.first().map_or(Path::new("."), PathBuf::as_path)
}

const ROW_EXTENSIONS: [&str; 6] = ["json", "jsonl", "ndjson", "csv", "parquet", "arrow"];

fn is_rows(path: &Path) -> bool {
    path.extension().is_some_and(|e| ROW_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str()))
}

/// The files of `paths` (`key` names them in messages): files as given, globs expanded
/// (sorted), `save_to_disk` directories through their Arrow files, other folders walked.
fn expand(paths: &[PathBuf], key: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let text = path.to_string_lossy();
        let is_glob = !path.exists() && text.contains(['*', '?', '[']);
        if is_glob || (path.is_dir() && crate::sft::disk::dataset_files(path, key)?.is_some()) {
            files.extend(read::expand(std::slice::from_ref(path), key)?);
        } else if path.is_dir() {
            let before = files.len();
            crate::data::walk_files(path, &mut files, &|_| true)?;
            if files.len() == before {
                return Err(Error::data(path, format!("{key}: folder contains no files")));
            }
        } else {
            std::fs::metadata(path).map_err(|e| Error::data(path, format!("{key}: cannot read: {e}")))?;
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// The non-blank texts of `paths`, in order.
fn read_texts(paths: &[PathBuf], key: &str, data: &MaskedLmDataConfig, stats: &mut MlmStats) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let skipped_before = stats.skipped_malformed;
    for file in expand(paths, key)? {
        if is_rows(&file) {
            row_texts(&file, data, &mut out, stats)?;
        } else {
            line_texts(&file, data.skip_malformed, &mut out, stats)?;
        }
    }
    if stats.skipped_malformed > skipped_before {
        tracing::warn!(skipped = stats.skipped_malformed - skipped_before, "skipped malformed rows (data.skip_malformed)");
    }
    Ok(out)
}

fn keep(text: &str, out: &mut Vec<String>, stats: &mut MlmStats) {
    stats.texts += 1;
    if text.trim().is_empty() {
        stats.blank += 1;
    } else {
        out.push(text.to_string());
    }
}

fn row_texts(file: &Path, data: &MaskedLmDataConfig, out: &mut Vec<String>, stats: &mut MlmStats) -> Result<()> {
    let field = data.text_field();
    for row in read::read_file(file)? {
        let text = row.fields.as_ref().map_err(|m| RowError::Malformed(m.clone())).and_then(|map| req_str(map, field));
        match text {
            Ok(t) => keep(t, out, stats),
            Err(RowError::Malformed(msg)) if data.skip_malformed => {
                tracing::debug!("{}", row.error(&msg));
                stats.texts += 1;
                stats.skipped_malformed += 1;
            }
            Err(RowError::Malformed(msg)) => return Err(row.error(msg)),
            Err(RowError::Fatal(e)) => return Err(e),
        }
    }
    Ok(())
}

/// One text per line (`\n` or `\r\n`); a line that is not UTF-8 is an error at its line.
fn line_texts(file: &Path, skip_malformed: bool, out: &mut Vec<String>, stats: &mut MlmStats) -> Result<()> {
    let bytes = std::fs::read(file).at(file)?;
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for (i, line) in lines.into_iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(text) => keep(text, out, stats),
            Err(e) => {
                let at = e.valid_up_to();
                let msg = format!("line {}: not UTF-8 text (invalid byte {:#04x} at column {}); plain text files must be UTF-8", i + 1, line[at], at + 1);
                if !skip_malformed {
                    return Err(Error::data(file, msg));
                }
                tracing::debug!("{}: {msg}", file.display());
                stats.texts += 1;
                stats.skipped_malformed += 1;
            }
        }
    }
    Ok(())
}

/// Token ids of every text (in parallel, in order), counting cut ones.
fn encode(texts: &[String], encoder: &TextEncoder, stats: &mut MlmStats) -> Result<Vec<Vec<i64>>> {
    let encoded = texts.par_iter().map(|t| encoder.encode(t, None)).collect::<Result<Vec<_>>>()?;
    stats.truncated += encoded.iter().filter(|e| e.truncated).count();
    Ok(encoded.into_iter().map(|e| e.input_ids).collect())
}

/// `run_mlm.py`'s `group_texts`: the examples concatenated and cut into blocks of `block`
/// tokens, the remainder dropped.
fn pack(examples: Vec<Vec<i64>>, block: usize, stats: &mut MlmStats) -> Vec<Vec<i64>> {
    let stream: Vec<i64> = examples.into_iter().flatten().collect();
    let blocks = stream.chunks_exact(block);
    stats.packing_dropped += blocks.remainder().len();
    blocks.map(<[i64]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_cuts_blocks_and_drops_the_remainder() {
        let mut stats = MlmStats::default();
        let packed = pack(vec![vec![2, 5, 6, 3], vec![2, 7, 3], vec![2, 8, 9, 10, 3]], 4, &mut stats);
        assert_eq!(packed, vec![vec![2, 5, 6, 3], vec![2, 7, 3, 2], vec![8, 9, 10, 3]]);
        assert_eq!(stats.packing_dropped, 0);
        let packed = pack(vec![vec![2, 5, 6, 3], vec![2, 7, 3]], 3, &mut stats);
        assert_eq!(packed, vec![vec![2, 5, 6], vec![3, 2, 7]]);
        assert_eq!(stats.packing_dropped, 1);
    }

    #[test]
    fn the_split_is_seeded_and_keeps_file_order() {
        let all: Vec<Vec<i64>> = (0..40).map(|i| vec![i]).collect();
        let (t, v) = split_val(all.clone(), 0.1, 3);
        assert_eq!((t.len(), v.len()), (36, 4));
        assert_eq!(split_val(all.clone(), 0.1, 3), (t.clone(), v.clone()));
        assert_ne!(split_val(all.clone(), 0.1, 4).1, v);
        assert!(t.windows(2).all(|w| w[0] < w[1]) && v.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(split_val(all.clone(), 0.0, 3), (all, Vec::new()));
    }
}
