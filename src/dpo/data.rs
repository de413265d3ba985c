//! DPO preference data: rows → the `prompt_ids` / `chosen_ids` / `rejected_ids` of TRL's
//! `DPOTrainer._prepare_dataset`, so that the same rows train on the same tokens:
//!
//! - Rows ([`crate::sft::read`]: JSON, JSONL, CSV, Parquet, `save_to_disk`) hold `chosen` and
//!   `rejected` and, unless the prompt is implicit, `prompt` (the `data.*_field` names). All
//!   three are strings (standard) or all lists of `{role, content}` messages (conversational).
//! - Implicit prompt: when the first row of a split has no prompt field, every row's prompt is
//!   the shared start of chosen and rejected (TRL's `extract_prompt`: characters of strings, or
//!   whole messages; a space just before the first difference goes to the completions; when one
//!   is a prefix of the other, the prompt stops one character/message short of the shorter).
//! - Standard rows: EOS (the eos_token's text) is appended to chosen and rejected unless they
//!   end with it; `tok(prompt)`, `tok(prompt + chosen)` and `tok(prompt + rejected)` are
//!   tokenized with the tokenizer's special tokens (Llama's BOS).
//! - Conversational rows: the prompt is rendered with the generation prompt opened, prompt +
//!   chosen and prompt + rejected whole (the template closes the turn: no EOS added), and
//!   tokenized without added special tokens (the template writes them).
//! - The completion starts where the prompt's tokens and both full sequences stop agreeing
//!   (TRL's `common_prefix_length`, the minimum over chosen and rejected): a token merged across
//!   the boundary belongs to the completions, and the prompt is cut to the common part.
//! - Pairs whose prompt alone has `max_length` tokens or more are dropped and counted (TRL's
//!   filter under `keep_start`); the others are cut to `max_length` when batched
//!   ([`super::collate`]), and counted as truncated here.
//! - A pair whose chosen and rejected tokens are the same is kept (as TRL keeps it), counted
//!   and warned about: it carries no preference (its gradient is zero) but counts in the mean.
//! - Validation: `data.val`, else the `validation` (else `test`) split of a `DatasetDict` named
//!   in `data.train` (unless `val_fraction` is set), else a seeded random `val_fraction`
//!   (default 0.05) of the training pairs.

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Map, Value};

use super::config::DpoDataConfig;
use crate::data::split_val;
use crate::error::{Error, Result};
use crate::sft::read::{self, field, kind, messages_slice, Row, RowError};
use crate::tokenizer::LoadedTokenizer;

/// One preference pair, as TRL's prepared dataset holds it: the prompt's tokens and each
/// completion's (EOS included for standard rows), untruncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub prompt: Vec<i64>,
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
}

/// What happened to the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpoStats {
    /// Rows read (train and validation), malformed ones included.
    pub rows: usize,
    /// Pairs kept (train + validation).
    pub pairs: usize,
    /// Pairs whose prompt was the shared start of chosen and rejected.
    pub implicit_prompt: usize,
    /// Pairs dropped because their prompt alone fills `max_length`.
    pub dropped: usize,
    /// Kept pairs whose chosen and rejected tokens are identical.
    pub identical: usize,
    /// Kept pairs with a sequence (prompt + chosen or prompt + rejected) longer than
    /// `max_length`, cut when batched.
    pub truncated: usize,
    /// Malformed rows skipped under `skip_malformed`.
    pub skipped_malformed: usize,
}

impl fmt::Display for DpoStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows, {} pairs ({} with an implicit prompt), {} dropped (prompt fills data.max_length), {} identical, \
             {} truncated, {} malformed skipped",
            self.rows, self.pairs, self.implicit_prompt, self.dropped, self.identical, self.truncated, self.skipped_malformed
        )
    }
}

/// Preference data ready for batching ([`super::collate::collate`]).
#[derive(Debug, Clone)]
pub struct DpoData {
    pub train: Vec<Pair>,
    pub val: Vec<Pair>,
    /// The padding id: the tokenizer's `pad_token`, else its `eos_token` (TRL's choice).
    pub pad_id: i64,
    pub stats: DpoStats,
}

/// Reads `[data]`: see the module docs. `seed` picks the held-out pairs.
pub fn load(data: &DpoDataConfig, tok: &LoadedTokenizer, seed: u64) -> Result<DpoData> {
    data.validate().map_err(|(key, msg)| Error::Input(format!("{key}: {msg}")))?;
    let pad_id = pad_id(tok)?;
    let mut stats = DpoStats::default();
    let train_rows = read_rows(&data.train, "data.train", &mut stats)?;
    let val_rows = match (&data.val, data.val_fraction) {
        (Some(paths), _) => Some(read_rows(paths, "data.val", &mut stats)?),
        (None, None) => match crate::classify::data::dict_val_splits(&data.train)? {
            Some(paths) => {
                tracing::info!(splits = %paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), "validation: the DatasetDict's split");
                Some(read_rows(&paths, "data.train", &mut stats)?)
            }
            None => None,
        },
        (None, Some(_)) => None,
    };
    let b = Builder { data, tok };
    let mut train = b.pairs(&train_rows, &mut stats)?;
    let mut val = match &val_rows {
        Some(rows) => b.pairs(rows, &mut stats)?,
        None => Vec::new(),
    };
    if train.is_empty() {
        return Err(Error::data(first(&data.train), format!("data.train: no preference pair left ({stats})")));
    }
    if let (Some(paths), true) = (&data.val, val.is_empty()) {
        return Err(Error::data(first(paths), format!("data.val: the validation data holds no preference pair ({stats})")));
    }
    if val_rows.is_none() {
        (train, val) = split_val(train, data.val_fraction.unwrap_or(0.05), seed);
    }
    stats.pairs = train.len() + val.len();
    Ok(DpoData { train, val, pad_id, stats })
}

/// The padding id: `pad_token`, else `eos_token`; neither is an error naming the tokenizer.
pub fn pad_id(tok: &LoadedTokenizer) -> Result<i64> {
    tok.pad_or_eos_id().map(i64::from).ok_or_else(|| Error::Tokenizer {
        path: tok.path.clone(),
        msg: "has no pad_token and no eos_token: DPO pads its batches with one (TRL pads with pad_token, else eos_token); \
              set pad_token in tokenizer_config.json"
            .into(),
    })
}

fn first(paths: &[PathBuf]) -> &Path {
    paths.first().map_or(Path::new("data.train"), PathBuf::as_path)
}

fn read_rows(paths: &[PathBuf], key: &str, stats: &mut DpoStats) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for file in read::expand(paths, key)? {
        rows.extend(read::read_file(&file)?);
    }
    stats.rows += rows.len();
    Ok(rows)
}

/// A prompt or completion as the row gives it.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Messages(Vec<Value>),
}

impl Part {
    fn of(row: &Map<String, Value>, name: &str) -> std::result::Result<Part, RowError> {
        match field(row, name)? {
            Value::String(s) => Ok(Part::Text(s.clone())),
            Value::Array(items) => Ok(Part::Messages(messages_slice(items, name)?)),
            other => Err(RowError::Malformed(format!("field \"{name}\": expected a string or a list of messages, found {}", kind(other)))),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Part::Text(_) => "a string",
            Part::Messages(_) => "a list of messages",
        }
    }
}

/// Turns the rows of one split into pairs.
struct Builder<'a> {
    data: &'a DpoDataConfig,
    tok: &'a LoadedTokenizer,
}

impl Builder<'_> {
    /// The pairs of `rows` in order (tokenized in parallel). As TRL decides per dataset, the
    /// prompt is implicit when the split's first readable row has no prompt field. The first
    /// bad row in file order is the error, or with `skip_malformed` every bad row is skipped.
    fn pairs(&self, rows: &[Row], stats: &mut DpoStats) -> Result<Vec<Pair>> {
        let prompt_field = self.data.prompt_field();
        let implicit = rows.iter().find_map(|r| r.fields.as_ref().ok()).is_some_and(|m| !m.contains_key(prompt_field));
        if implicit {
            tracing::info!("no \"{prompt_field}\" field: the prompt is the shared start of chosen and rejected (TRL's extract_prompt)");
        }
        let results: Vec<std::result::Result<Pair, RowError>> = rows
            .par_iter()
            .map(|row| match &row.fields {
                Ok(map) => self.pair(map, implicit),
                Err(msg) => Err(RowError::Malformed(msg.clone())),
            })
            .collect();
        let max = self.data.max_length;
        let mut out = Vec::with_capacity(rows.len());
        let (mut first_dropped, mut first_identical) = (None, None);
        let skipped_before = stats.skipped_malformed;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(pair) if pair.prompt.len() >= max => {
                    stats.dropped += 1;
                    first_dropped.get_or_insert(row);
                }
                Ok(pair) => {
                    if pair.chosen == pair.rejected {
                        stats.identical += 1;
                        first_identical.get_or_insert(row);
                    }
                    if pair.prompt.len() + pair.chosen.len().max(pair.rejected.len()) > max {
                        stats.truncated += 1;
                    }
                    stats.implicit_prompt += usize::from(implicit);
                    out.push(pair);
                }
                Err(RowError::Malformed(msg)) if self.data.skip_malformed => {
                    tracing::debug!("{}", row.error(&msg));
                    stats.skipped_malformed += 1;
                }
                Err(RowError::Malformed(msg)) => return Err(row.error(msg)),
                Err(RowError::Fatal(e)) => return Err(e),
            }
        }
        if let Some(row) = first_dropped {
            tracing::warn!("{}: dropped {} pairs whose prompt alone has data.max_length = {max} tokens or more (the first: {})", row.path.display(), stats.dropped, row.loc);
        }
        if let Some(row) = first_identical {
            tracing::warn!(
                "{}: {} pairs have identical chosen and rejected tokens (the first: {}); kept, as TRL keeps them, but they carry no preference",
                row.path.display(),
                stats.identical,
                row.loc
            );
        }
        if stats.skipped_malformed > skipped_before {
            tracing::warn!(skipped = stats.skipped_malformed - skipped_before, "skipped malformed rows (data.skip_malformed)");
        }
        Ok(out)
    }

    fn pair(&self, row: &Map<String, Value>, implicit: bool) -> std::result::Result<Pair, RowError> {
        let d = self.data;
        let (c, r) = (d.chosen_field(), d.rejected_field());
        let (chosen, rejected) = (Part::of(row, c)?, Part::of(row, r)?);
        if std::mem::discriminant(&chosen) != std::mem::discriminant(&rejected) {
            return Err(RowError::Malformed(format!(
                "field \"{c}\" is {} but \"{r}\" is {}: give both as strings or both as lists of messages",
                chosen.what(),
                rejected.what()
            )));
        }
        let (prompt, chosen, rejected) = if implicit {
            extract_prompt(chosen, rejected)
        } else {
            let p = d.prompt_field();
            let prompt = Part::of(row, p)?;
            if std::mem::discriminant(&prompt) != std::mem::discriminant(&chosen) {
                return Err(RowError::Malformed(format!(
                    "field \"{p}\" is {} but \"{c}\" and \"{r}\" are {}: give all three as strings or all as lists of messages",
                    prompt.what(),
                    chosen.what()
                )));
            }
            (prompt, chosen, rejected)
        };
        match (prompt, chosen, rejected) {
            (Part::Text(p), Part::Text(c), Part::Text(r)) => self.standard(&p, &c, &r),
            (Part::Messages(p), Part::Messages(c), Part::Messages(r)) => self.conversational(&p, &c, &r),
            _ => unreachable!("the three parts were checked to be of one kind"),
        }
    }

    fn eos(&self) -> Result<&str> {
        self.tok.special("eos_token").ok_or_else(|| Error::Tokenizer {
            path: self.tok.path.clone(),
            msg: "has no eos_token: DPO appends it to standard (string) chosen and rejected completions, as TRL does \
                  (set eos_token in tokenizer_config.json)"
                .into(),
        })
    }

    /// TRL's `add_eos` and `tokenize_fn` on a standard row.
    fn standard(&self, prompt: &str, chosen: &str, rejected: &str) -> std::result::Result<Pair, RowError> {
        let eos = self.eos()?;
        let tok = self.tok;
        let prompt_ids = tok.encode_with_special(prompt)?;
        let chosen_ids = tok.encode_with_special(&format!("{prompt}{}", with_eos(chosen, eos)))?;
        let rejected_ids = tok.encode_with_special(&format!("{prompt}{}", with_eos(rejected, eos)))?;
        Ok(split(&prompt_ids, &chosen_ids, &rejected_ids))
    }

    /// TRL's `tokenize_fn` on a conversational row: the chat template, then the tokens.
    fn conversational(&self, prompt: &[Value], chosen: &[Value], rejected: &[Value]) -> std::result::Result<Pair, RowError> {
        let tok = self.tok;
        if tok.chat_template.is_none() {
            return Err(RowError::Fatal(Error::Tokenizer {
                path: tok.path.clone(),
                msg: "has no chat template (chat_template.jinja or tokenizer_config.json's chat_template): \
                      conversational preference rows need one"
                    .into(),
            }));
        }
        let render = |tail: &[Value], add_generation_prompt: bool| -> std::result::Result<Vec<u32>, RowError> {
            let msgs: Vec<Value> = prompt.iter().chain(tail).cloned().collect();
            let text = tok.render_chat(&msgs, add_generation_prompt).map_err(|m| RowError::Malformed(format!("chat template: {m}")))?;
            Ok(tok.encode(&text)?)
        };
        Ok(split(&render(&[], true)?, &render(chosen, false)?, &render(rejected, false)?))
    }
}

fn with_eos(text: &str, eos: &str) -> String {
    if text.ends_with(eos) {
        text.to_string()
    } else {
        format!("{text}{eos}")
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The pair of tokenized `prompt`, `prompt + chosen` and `prompt + rejected`: the completions
/// start where the prompt stops agreeing with either.
fn split(prompt: &[u32], prompt_chosen: &[u32], prompt_rejected: &[u32]) -> Pair {
    let n = common_prefix(prompt, prompt_chosen).min(common_prefix(prompt, prompt_rejected));
    let ids = |s: &[u32]| s.iter().map(|&i| i64::from(i)).collect();
    Pair { prompt: ids(&prompt[..n]), chosen: ids(&prompt_chosen[n..]), rejected: ids(&prompt_rejected[n..]) }
}

/// TRL's `extract_prompt`: the index of the first difference of the two sequences, one back
/// when a space precedes it; when neither differs before the shorter ends, Python's loop leaves
/// the index at the shorter's last element. (When the very first element differs TRL looks at
/// `chosen[-1]`, the last character; here the prompt is simply empty.)
fn shared_start<T: PartialEq>(chosen: &[T], rejected: &[T], is_space: impl Fn(&T) -> bool) -> usize {
    let n = chosen.len().min(rejected.len());
    match (0..n).find(|&i| chosen[i] != rejected[i]) {
        Some(i) if i > 0 && is_space(&chosen[i - 1]) => i - 1,
        Some(i) => i,
        None => n.saturating_sub(1),
    }
}

/// (prompt, chosen, rejected) of an implicit-prompt row; chosen and rejected are of one kind.
fn extract_prompt(chosen: Part, rejected: Part) -> (Part, Part, Part) {
    match (chosen, rejected) {
        (Part::Text(c), Part::Text(r)) => {
            let (cc, rc): (Vec<char>, Vec<char>) = (c.chars().collect(), r.chars().collect());
            let i = shared_start(&cc, &rc, |&ch| ch == ' ');
            let text = |s: &[char]| Part::Text(s.iter().collect());
            (text(&cc[..i]), text(&cc[i..]), text(&rc[i..]))
        }
        (Part::Messages(c), Part::Messages(r)) => {
            let i = shared_start(&c, &r, |_| false);
            (Part::Messages(c[..i].to_vec()), Part::Messages(c[i..].to_vec()), Part::Messages(r[i..].to_vec()))
        }
        _ => unreachable!("pair() checked that chosen and rejected are of one kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(c: &str, r: &str) -> (String, String, String) {
        match extract_prompt(Part::Text(c.into()), Part::Text(r.into())) {
            (Part::Text(p), Part::Text(c), Part::Text(r)) => (p, c, r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn implicit_prompts_follow_trl_extract_prompt() {
        let own = |p: &str, c: &str, r: &str| (p.to_string(), c.to_string(), r.to_string());
        // The space before the first difference goes to the completions.
        assert_eq!(texts("Human: hi Assistant: hello", "Human: hi Assistant: go"), own("Human: hi Assistant:", " hello", " go"));
        assert_eq!(texts("ab cd", "ab ce"), own("ab c", "d", "e"));
        // One is a prefix of the other: Python's loop variable stops at the shorter's last index.
        assert_eq!(texts("abc", "abcd"), own("ab", "c", "cd"));
        assert_eq!(texts("same", "same"), own("sam", "e", "e"));
        // Characters, not bytes.
        assert_eq!(texts("Zähle: eins", "Zähle: zwei"), own("Zähle:", " eins", " zwei"));
        assert_eq!(texts("x", "y"), own("", "x", "y"));
        // TRL looks at chosen[-1] here (and would make "x" the prompt); nothing is shared.
        assert_eq!(texts("x ", "y"), own("", "x ", "y"));
        assert_eq!(texts("", "y"), own("", "", "y"));

        let m = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
        let (c, r) = (vec![m("user", "hi"), m("assistant", "hello")], vec![m("user", "hi"), m("assistant", "go")]);
        let got = extract_prompt(Part::Messages(c.clone()), Part::Messages(r.clone()));
        assert_eq!(got, (Part::Messages(c[..1].to_vec()), Part::Messages(c[1..].to_vec()), Part::Messages(r[1..].to_vec())));
        let got = extract_prompt(Part::Messages(c.clone()), Part::Messages(c.clone()));
        assert_eq!(got.0, Part::Messages(c[..1].to_vec()), "identical conversations: all but the last message");
    }

    #[test]
    fn completions_start_where_the_prompt_stops_agreeing() {
        let p = split(&[1, 2, 3], &[1, 2, 3, 4, 5], &[1, 2, 3, 6]);
        assert_eq!(p, Pair { prompt: vec![1, 2, 3], chosen: vec![4, 5], rejected: vec![6] });
        // A token merged across the boundary in one of them moves the start for both.
        let p = split(&[1, 2, 3], &[1, 2, 9, 5], &[1, 2, 3, 6]);
        assert_eq!(p, Pair { prompt: vec![1, 2], chosen: vec![9, 5], rejected: vec![3, 6] });
    }
}
