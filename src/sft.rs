//! Supervised fine-tuning data: rows ([`read`]) → token ids with loss labels → truncation or
//! packing → train/validation examples, following TRL's `SFTTrainer` preparation so that the
//! same data trains on the same tokens:
//!
//! - `text`: the text plus EOS (the eos_token's text appended unless already there, then
//!   tokenized with the tokenizer's special tokens, e.g. Llama's BOS); every token trained.
//! - `prompt_completion` (and `alpaca`, `dolly`, which build a prompt with [`alpaca_prompt`]):
//!   `prompt` and `prompt + completion + EOS` are tokenized separately; the completion starts
//!   where the two token sequences diverge (TRL's `common_prefix_length`); prompt labels are
//!   -100. A prompt/completion given as lists of messages goes through the chat template
//!   instead (prompt with the generation prompt; no EOS added: the template ends the turn).
//! - `messages`: rendered with the chat template (no special tokens added: the template writes
//!   them) and trained on assistant turns only. A template with `{% generation %}` blocks marks
//!   the trained text itself, as transformers' `return_assistant_tokens_mask`. Otherwise each
//!   assistant turn `i` spans from the end of `render(messages[..i], add_generation_prompt =
//!   true)` to the end of `render(messages[..=i])`: the turn's content and whatever the template
//!   closes it with (`<|im_end|>`, `<|eot_id|>`), so the model learns to stop. Tokens
//!   overlapping a span are trained.
//! - `max_length` keeps the start; an example left without trained tokens is dropped. With
//!   `packing`, examples are concatenated (in file order) and cut into sequences of `max_length`
//!   (the last one holds the remainder), with no truncation (TRL's "wrapped" packing; as there,
//!   a packed sequence may hold no trained token: weight the loss by trained tokens).
//! - Validation: `data.val` files, or a seeded random `val_fraction` of the examples.
//!
//! Labels are unshifted (`labels[i]` is the target at position `i`; the model shifts).

pub mod disk;
pub mod read;

use std::path::Path;

use rayon::prelude::*;
use serde_json::{Map, Value};
use tch::Tensor;

use crate::chat_template::ChatTemplate;
use crate::config::{SftDataConfig, SftFormat};
use crate::data::split_val;
use crate::error::{Error, Result};
use crate::tokenizer::LoadedTokenizer;
use read::{field, kind, messages, messages_slice, opt_str, req_str, Row, RowError};

/// Label of a position that is not trained (PyTorch's cross-entropy `ignore_index`).
pub const IGNORE: i64 = -100;

/// One training sequence. `labels` has `input_ids`' length: the id where trained, -100 elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// What happened to the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SftStats {
    /// Rows read (train and validation files), malformed ones included.
    pub rows: usize,
    /// Examples cut to `max_length`.
    pub truncated: usize,
    /// Examples without any trained token (before packing), dropped.
    pub dropped_no_labels: usize,
    /// Malformed rows skipped under `skip_malformed`.
    pub skipped_malformed: usize,
}

/// Fine-tuning data ready for batching.
#[derive(Debug, Clone)]
pub struct SftData {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub stats: SftStats,
}

/// The Alpaca prompt (Stanford Alpaca's text, ending with a newline after `### Response:`):
///
/// ```text
/// Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.
///
/// ### Instruction:
/// {instruction}
///
/// ### Input:
/// {input}
///
/// ### Response:
/// ```
///
/// Without input (absent, null or empty): "Below is an instruction that describes a task. Write
/// a response that appropriately completes the request.", then the Instruction and Response
/// sections only.
pub fn alpaca_prompt(instruction: &str, input: Option<&str>) -> String {
    match input.filter(|s| !s.is_empty()) {
        Some(input) => format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. \
             Write a response that appropriately completes the request.\n\n\
             ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        None => format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    }
}

/// Field names in effect (recipe overrides or TRL's defaults).
pub(crate) struct Fields<'a> {
    pub(crate) text: &'a str,
    pub(crate) prompt: &'a str,
    pub(crate) completion: &'a str,
    pub(crate) messages: &'a str,
    pub(crate) instruction: &'a str,
    pub(crate) input: &'a str,
    pub(crate) output: &'a str,
    pub(crate) context: &'a str,
    pub(crate) response: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(cfg: &'a SftDataConfig) -> Self {
        let f = |o: &'a Option<String>, d: &'a str| o.as_deref().unwrap_or(d);
        Fields {
            text: f(&cfg.text_field, "text"),
            prompt: f(&cfg.prompt_field, "prompt"),
            completion: f(&cfg.completion_field, "completion"),
            messages: f(&cfg.messages_field, "messages"),
            instruction: f(&cfg.instruction_field, "instruction"),
            input: f(&cfg.input_field, "input"),
            output: f(&cfg.output_field, "output"),
            context: f(&cfg.context_field, "context"),
            response: f(&cfg.response_field, "response"),
        }
    }

    /// The format a row's fields suggest (messages, prompt/completion, alpaca, dolly, text).
    fn detect(&self, row: &Map<String, Value>) -> Option<SftFormat> {
        let has = |k: &str| row.contains_key(k);
        if has(self.messages) {
            Some(SftFormat::Messages)
        } else if has(self.prompt) && has(self.completion) {
            Some(SftFormat::PromptCompletion)
        } else if has(self.instruction) && has(self.output) {
            Some(SftFormat::Alpaca)
        } else if has(self.instruction) && has(self.response) {
            Some(SftFormat::Dolly)
        } else if has(self.text) {
            Some(SftFormat::Text)
        } else {
            None
        }
    }
}

/// Reads, tokenizes, masks, truncates or packs, and splits `[data]`'s fine-tuning data.
pub fn load(cfg: &SftDataConfig, tok: &LoadedTokenizer, seed: u64) -> Result<SftData> {
    if cfg.packing && cfg.max_length.is_none() {
        return Err(Error::Input("data.packing needs data.max_length, the length of the packed sequences".into()));
    }
    let fields = Fields::new(cfg);
    let mut stats = SftStats::default();
    let train_rows = read_rows(&cfg.train, "data.train", &mut stats)?;
    let val_rows = match &cfg.val {
        Some(paths) => Some(read_rows(paths, "data.val", &mut stats)?),
        None => None,
    };
    let format = resolve_format(cfg, &fields, &train_rows)?;
    tracing::info!(?format, rows = stats.rows, "fine-tuning data");
    let b = Builder { fields, format, tok, skip_malformed: cfg.skip_malformed };
    let mut train = b.examples(&train_rows, &mut stats)?;
    let mut val = match &val_rows {
        Some(rows) => b.examples(rows, &mut stats)?,
        None => Vec::new(),
    };
    if !cfg.packing {
        if let Some(max) = cfg.max_length {
            train = truncate(train, max, &mut stats);
            val = truncate(val, max, &mut stats);
        }
    }
    train = drop_unlabelled(train, &mut stats);
    val = drop_unlabelled(val, &mut stats);
    if val_rows.is_none() {
        (train, val) = split_val(train, cfg.effective_val_fraction(), seed);
    }
    if let (true, Some(max)) = (cfg.packing, cfg.max_length) {
        // As TRL: a packed sequence that happens to hold no trained token is kept.
        train = pack(train, max);
        val = pack(val, max);
    }
    if train.is_empty() {
        let first = cfg.train.first().map(|p| p.as_path()).unwrap_or(Path::new("data.train"));
        return Err(Error::data(first, format!("data.train: no training example left ({stats:?})")));
    }
    Ok(SftData { train, val, stats })
}

fn read_rows(paths: &[std::path::PathBuf], key: &str, stats: &mut SftStats) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for file in read::expand(paths, key)? {
        rows.extend(read::read_file(&file)?);
    }
    stats.rows += rows.len();
    Ok(rows)
}

pub(crate) fn resolve_format(cfg: &SftDataConfig, fields: &Fields, rows: &[Row]) -> Result<SftFormat> {
    if cfg.format != SftFormat::Auto {
        return Ok(cfg.format);
    }
    let Some((row, map)) = rows.iter().find_map(|r| r.fields.as_ref().ok().map(|m| (r, m))) else {
        let first = cfg.train.first().map(|p| p.as_path()).unwrap_or(Path::new("data.train"));
        return Err(Error::data(first, "data.train: no readable row to detect data.format from"));
    };
    fields.detect(map).ok_or_else(|| {
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        row.error(format!(
            "cannot detect data.format from the fields {keys:?}: expected \"{}\", \"{}\" + \"{}\", \"{}\" + \"{}\" (alpaca), \
             \"{}\" + \"{}\" (dolly) or \"{}\"; set data.format and the data.*_field names",
            fields.messages, fields.prompt, fields.completion, fields.instruction, fields.output, fields.instruction,
            fields.response, fields.text
        ))
    })
}

/// Turns rows into examples for one format (also `rankforge evaluate`'s completions).
pub(crate) struct Builder<'a> {
    pub(crate) fields: Fields<'a>,
    pub(crate) format: SftFormat,
    pub(crate) tok: &'a LoadedTokenizer,
    pub(crate) skip_malformed: bool,
}

impl Builder<'_> {
    /// Examples of `rows` in order (tokenized in parallel); the first bad row in file order is
    /// the error, or with `skip_malformed` every bad row is skipped and counted.
    pub(crate) fn examples(&self, rows: &[Row], stats: &mut SftStats) -> Result<Vec<Example>> {
        let results: Vec<std::result::Result<Example, RowError>> = rows
            .par_iter()
            .map(|row| match &row.fields {
                Ok(map) => self.example(map),
                Err(msg) => Err(RowError::Malformed(msg.clone())),
            })
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        let skipped_before = stats.skipped_malformed;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(e) => out.push(e),
                Err(RowError::Malformed(msg)) if self.skip_malformed => {
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

    fn example(&self, row: &Map<String, Value>) -> std::result::Result<Example, RowError> {
        let f = &self.fields;
        match self.format {
            SftFormat::Text => {
                let text = with_eos(req_str(row, f.text)?, self.eos()?);
                let ids = self.tok.encode_with_special(&text)?;
                let labels = ids.iter().map(|&i| i64::from(i)).collect();
                Ok(Example { input_ids: ids, labels })
            }
            SftFormat::PromptCompletion => match field(row, f.prompt)? {
                Value::String(p) => self.prompt_completion(p, req_str(row, f.completion)?),
                Value::Array(p) => match field(row, f.completion)? {
                    Value::Array(c) => self.chat_prompt_completion(p, c),
                    c => Err(RowError::Malformed(format!(
                        "field \"{}\": expected a list of messages (the prompt is one), found {}",
                        f.completion,
                        kind(c)
                    ))),
                },
                p => Err(RowError::Malformed(format!(
                    "field \"{}\": expected a string or a list of messages, found {}",
                    f.prompt,
                    kind(p)
                ))),
            },
            SftFormat::Alpaca => {
                let prompt = alpaca_prompt(req_str(row, f.instruction)?, opt_str(row, f.input)?);
                self.prompt_completion(&prompt, req_str(row, f.output)?)
            }
            SftFormat::Dolly => {
                let prompt = alpaca_prompt(req_str(row, f.instruction)?, opt_str(row, f.context)?);
                self.prompt_completion(&prompt, req_str(row, f.response)?)
            }
            SftFormat::Messages => {
                let msgs = messages(field(row, f.messages)?, f.messages)?;
                self.conversation(&msgs)
            }
            SftFormat::Auto => unreachable!("resolve_format replaced auto"),
        }
    }

    fn eos(&self) -> Result<&str> {
        self.tok.special("eos_token").ok_or_else(|| Error::Tokenizer {
            path: self.tok.path.clone(),
            msg: "no eos_token: fine-tuning appends it to texts and completions (set it in tokenizer_config.json)".into(),
        })
    }

    /// TRL: the completion starts where `tokenize(prompt)` and `tokenize(prompt + completion +
    /// EOS)` diverge.
    fn prompt_completion(&self, prompt: &str, completion: &str) -> std::result::Result<Example, RowError> {
        let prompt_ids = self.tok.encode_with_special(prompt)?;
        let ids = self.tok.encode_with_special(&format!("{prompt}{}", with_eos(completion, self.eos()?)))?;
        let n = common_prefix(&prompt_ids, &ids);
        Ok(masked_after(ids, n))
    }

    /// The chat template, which messages data needs (a fatal error, not a bad row).
    fn template(&self) -> Result<&ChatTemplate> {
        self.tok.chat_template.as_ref().ok_or_else(|| Error::Tokenizer {
            path: self.tok.path.clone(),
            msg: "no chat template (chat_template.jinja or tokenizer_config.json's chat_template): \
                  conversational data needs one"
                .into(),
        })
    }

    fn chat_prompt_completion(&self, prompt: &[Value], completion: &[Value]) -> std::result::Result<Example, RowError> {
        self.template()?;
        let prompt_msgs = messages_slice(prompt, self.fields.prompt)?;
        let mut all = prompt_msgs.clone();
        all.extend(messages_slice(completion, self.fields.completion)?);
        let p = self.tok.render_chat(&prompt_msgs, true).map_err(template_error)?;
        let full = self.tok.render_chat(&all, false).map_err(template_error)?;
        let prompt_ids = self.tok.encode(&p)?;
        let ids = self.tok.encode(&full)?;
        let n = common_prefix(&prompt_ids, &ids);
        Ok(masked_after(ids, n))
    }

    /// A conversation trained on its assistant turns.
    fn conversation(&self, msgs: &[Value]) -> std::result::Result<Example, RowError> {
        let tok = self.tok;
        let (text, spans) = if self.template()?.has_generation {
            tok.render_chat_tracked(msgs, false).map_err(template_error)?
        } else {
            let text = tok.render_chat(msgs, false).map_err(template_error)?;
            let spans = assistant_spans(tok, msgs, &text)?;
            (text, spans)
        };
        let enc = tok
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer { path: tok.path.clone(), msg: e.to_string() })?;
        let ids = enc.get_ids().to_vec();
        let mask = span_mask(enc.get_offsets(), &spans);
        let labels = ids.iter().zip(&mask).map(|(&i, &m)| if m { i64::from(i) } else { IGNORE }).collect();
        Ok(Example { input_ids: ids, labels })
    }
}

fn template_error(msg: String) -> RowError {
    RowError::Malformed(format!("chat template: {msg}"))
}

/// Byte spans of the assistant turns of `msgs` in `text` (its full rendering), found by
/// rendering prefixes of the conversation (see the module docs).
fn assistant_spans(
    tok: &LoadedTokenizer,
    msgs: &[Value],
    text: &str,
) -> std::result::Result<Vec<std::ops::Range<usize>>, RowError> {
    let mut spans = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m["role"].as_str() != Some("assistant") {
            continue;
        }
        // Templates may refuse an empty conversation; the turn then starts at the beginning.
        let before = if i == 0 {
            tok.render_chat(&msgs[..0], true).unwrap_or_default()
        } else {
            tok.render_chat(&msgs[..i], true).map_err(template_error)?
        };
        let through = tok.render_chat(&msgs[..=i], false).map_err(template_error)?;
        let (start, end) = (common_prefix_str(&before, text), common_prefix_str(&through, text));
        if start < end {
            spans.push(start..end);
        }
    }
    Ok(spans)
}

/// Byte length of the common prefix of two strings, on a character boundary.
fn common_prefix_str(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()))
}

/// transformers' assistant mask: for each span, the tokens from the one holding its first
/// byte to the one holding its last (to the end when that one is not found).
fn span_mask(offsets: &[(usize, usize)], spans: &[std::ops::Range<usize>]) -> Vec<bool> {
    let token_at = |b: usize| offsets.iter().position(|&(s, e)| s <= b && b < e);
    let mut mask = vec![false; offsets.len()];
    for span in spans.iter().filter(|s| !s.is_empty()) {
        let Some(first) = token_at(span.start) else { break };
        let last = match token_at(span.end - 1) {
            Some(l) if l > 0 => l + 1,
            _ => offsets.len(),
        };
        mask[first..last.max(first)].iter_mut().for_each(|m| *m = true);
    }
    mask
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

fn masked_after(ids: Vec<u32>, n: usize) -> Example {
    let labels = ids.iter().enumerate().map(|(i, &id)| if i < n { IGNORE } else { i64::from(id) }).collect();
    Example { input_ids: ids, labels }
}

fn truncate(examples: Vec<Example>, max: usize, stats: &mut SftStats) -> Vec<Example> {
    examples
        .into_iter()
        .map(|mut e| {
            if e.input_ids.len() > max {
                stats.truncated += 1;
                e.input_ids.truncate(max);
                e.labels.truncate(max);
            }
            e
        })
        .collect()
}

fn drop_unlabelled(examples: Vec<Example>, stats: &mut SftStats) -> Vec<Example> {
    let before = examples.len();
    let kept: Vec<Example> = examples.into_iter().filter(|e| e.labels.iter().any(|&l| l != IGNORE)).collect();
    stats.dropped_no_labels += before - kept.len();
    kept
}

/// Concatenates examples and cuts the stream into `max`-token sequences (TRL's "wrapped"
/// packing); the last holds the remainder.
fn pack(examples: Vec<Example>, max: usize) -> Vec<Example> {
    let (ids, labels): (Vec<u32>, Vec<i64>) =
        examples.into_iter().flat_map(|e| e.input_ids.into_iter().zip(e.labels)).unzip();
    ids.chunks(max)
        .zip(labels.chunks(max))
        .map(|(i, l)| Example { input_ids: i.to_vec(), labels: l.to_vec() })
        .collect()
}

/// Right-pads to the longest example: (input_ids (B,T) Int64, labels (B,T) Int64 with -100 on
/// padding, attention_mask (B,T) Int64 1/0).
pub fn collate(examples: &[&Example], pad_id: i64) -> (Tensor, Tensor, Tensor) {
    let b = examples.len();
    let t = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; b * t];
    let mut labels = vec![IGNORE; b * t];
    let mut mask = vec![0i64; b * t];
    for (row, e) in examples.iter().enumerate() {
        let base = row * t;
        for (j, (&id, &l)) in e.input_ids.iter().zip(&e.labels).enumerate() {
            ids[base + j] = i64::from(id);
            labels[base + j] = l;
            mask[base + j] = 1;
        }
    }
    let shape = [b as i64, t as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&labels).view(shape), Tensor::from_slice(&mask).view(shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], labels: &[i64]) -> Example {
        Example { input_ids: ids.to_vec(), labels: labels.to_vec() }
    }

    #[test]
    fn detection_uses_field_names() {
        let cfg: SftDataConfig = toml::from_str("train = \"x\"\nprompt_field = \"q\"\ncompletion_field = \"a\"").unwrap();
        let f = Fields::new(&cfg);
        let row = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(f.detect(&row(serde_json::json!({"q": "", "a": ""}))), Some(SftFormat::PromptCompletion));
        assert_eq!(f.detect(&row(serde_json::json!({"prompt": "", "completion": ""}))), None);
        assert_eq!(f.detect(&row(serde_json::json!({"instruction": "", "input": "", "output": ""}))), Some(SftFormat::Alpaca));
        assert_eq!(f.detect(&row(serde_json::json!({"instruction": "", "context": "", "response": ""}))), Some(SftFormat::Dolly));
        assert_eq!(f.detect(&row(serde_json::json!({"messages": []}))), Some(SftFormat::Messages));
    }

    #[test]
    fn span_mask_follows_transformers() {
        // Tokens: [0,2) [2,5) [5,6) [6,9)
        let offsets = [(0, 2), (2, 5), (5, 6), (6, 9)];
        assert_eq!(span_mask(&offsets, &[3..6]), vec![false, true, true, false]);
        assert_eq!(span_mask(&offsets, &[6..9]), vec![false, false, false, true]);
        // transformers' `if end_token` treats token 0 as "not found": to the end.
        assert_eq!(span_mask(&offsets, &[0..1]), vec![true; 4]);
        assert_eq!(span_mask(&offsets, &[]), vec![false; 4]);
    }

    #[test]
    fn split_pack_and_collate() {
        let all: Vec<Example> = (0..10u32).map(|i| ex(&[i, i], &[-100, i as i64])).collect();
        let (t, v) = split_val(all.clone(), 0.2, 7);
        assert_eq!((t.len(), v.len()), (8, 2));
        assert_eq!(split_val(all.clone(), 0.2, 7).1, v, "deterministic");
        let mut back: Vec<Example> = t.iter().chain(&v).cloned().collect();
        back.sort_by_key(|e| e.input_ids[0]);
        assert_eq!(back, all);
        let packed = pack(vec![ex(&[1, 2, 3], &[-100, 2, 3]), ex(&[4, 5], &[-100, 5])], 2);
        assert_eq!(packed, vec![ex(&[1, 2], &[-100, 2]), ex(&[3, 4], &[3, -100]), ex(&[5], &[5])]);
        let (a, b) = (ex(&[7, 8, 9], &[-100, 8, 9]), ex(&[1], &[1]));
        let (ids, labels, mask) = collate(&[&a, &b], 0);
        assert_eq!(ids.size(), vec![2, 3]);
        assert_eq!(Vec::<i64>::try_from(ids.view(-1)).unwrap(), vec![7, 8, 9, 1, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(labels.view(-1)).unwrap(), vec![-100, 8, 9, 1, -100, -100]);
        assert_eq!(Vec::<i64>::try_from(mask.view(-1)).unwrap(), vec![1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn alpaca_prompts() {
        assert!(alpaca_prompt("Add", Some("1 2")).ends_with("### Instruction:\nAdd\n\n### Input:\n1 2\n\n### Response:\n"));
        assert_eq!(alpaca_prompt("Hi", Some("")), alpaca_prompt("Hi", None));
        assert!(alpaca_prompt("Hi", None).starts_with("Below is an instruction that describes a task. Write"));
    }
}
