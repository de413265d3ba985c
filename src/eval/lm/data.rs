//! `rankforge evaluate --data` for a causal LM: the fine-tuning readers ([`crate::sft::read`]:
//! JSON, JSONL, CSV, Parquet, folders, globs, `save_to_disk`) plus plain `.txt` files (one
//! document each). Rows of the `text` format (and `.txt` files) are documents for strided
//! perplexity; prompt/completion, messages, Alpaca and Dolly rows become the examples
//! fine-tuning trains on ([`crate::sft`]'s masking), one per row, in file order.
//!
//! For `--generate`, each completion row also gives its prompt, tokenized as fine-tuning
//! tokenizes it (a string prompt with the tokenizer's special tokens, as `generate --raw`; a
//! conversational prompt through the chat template with the assistant turn opened), and its
//! reference: the completion, the output / response, or the content of the conversation's last
//! assistant turn (the prompt is every message before it).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::{SftDataConfig, SftFormat};
use crate::error::{Error, IoContext, Result};
use crate::sft::read::{self, field, messages, messages_slice, opt_str, req_str, Row, RowError};
use crate::sft::{alpaca_prompt, Builder, Example, Fields, SftStats};
use crate::tokenizer::LoadedTokenizer;

/// The rows of `--data`.
pub enum LmData {
    /// Documents (text rows, `.txt` files), joined for strided perplexity.
    Text(Vec<String>),
    /// One example per row with the rows themselves (for prompts and references).
    Completions { format: SftFormat, examples: Vec<Example>, rows: Vec<Row> },
}

/// A prompt to complete and the completion it should give.
#[derive(Debug, Clone)]
pub struct GenPrompt {
    /// The text the model is given (the rendered chat for conversations).
    pub text: String,
    pub ids: Vec<u32>,
    pub reference: String,
}

/// The data options of `evaluate`.
pub struct DataOptions<'a> {
    pub paths: &'a [PathBuf],
    /// The split of a `DatasetDict` directory (default: validation, else test).
    pub split: Option<&'a str>,
    pub text_field: &'a str,
    /// Keep the first N rows (documents count as rows).
    pub limit: Option<usize>,
}

fn is_txt(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt"))
}

/// A `DatasetDict` directory stands for its `split` (default validation, else test).
fn resolve_split(path: &Path, split: Option<&str>) -> Result<PathBuf> {
    let dict = path.join("dataset_dict.json");
    if !dict.is_file() {
        return Ok(path.to_path_buf());
    }
    let text = std::fs::read_to_string(&dict).at(&dict)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::data(&dict, format!("not valid JSON: {e}")))?;
    let names: Vec<&str> = v["splits"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let wanted: Vec<&str> = split.map_or(vec!["validation", "test"], |s| vec![s]);
    let found = wanted.iter().find(|s| names.contains(s)).ok_or_else(|| {
        let flag = if split.is_some() { "--split" } else { "--data" };
        Error::data(&dict, format!("{flag}: the DatasetDict has no {} split (it has: {})", wanted.join(" or "), names.join(", ")))
    })?;
    Ok(path.join(found))
}

/// The SFT data section that reads `paths` with evaluate's field names.
fn sft_config(paths: &[PathBuf], text_field: &str) -> SftDataConfig {
    SftDataConfig {
        train: paths.to_vec(),
        val: None,
        val_fraction: None,
        tokenizer: None,
        format: SftFormat::Auto,
        text_field: Some(text_field.to_string()),
        prompt_field: None,
        completion_field: None,
        messages_field: None,
        instruction_field: None,
        input_field: None,
        output_field: None,
        context_field: None,
        response_field: None,
        max_length: None,
        packing: false,
        skip_malformed: false,
    }
}

/// Reads `--data` (see the module docs).
pub fn read(opts: &DataOptions, tok: &LoadedTokenizer) -> Result<LmData> {
    let mut docs = Vec::new();
    let mut rows = Vec::new();
    for path in opts.paths {
        if is_txt(path) && !path.is_dir() {
            docs.push(std::fs::read_to_string(path).map_err(|e| Error::data(path, format!("--data: cannot read the text: {e}")))?);
            continue;
        }
        let path = resolve_split(path, opts.split)?;
        for file in read::expand(&[path], "--data")? {
            rows.extend(read::read_file(&file)?);
        }
    }
    let limit = opts.limit.unwrap_or(usize::MAX);
    docs.truncate(limit);
    rows.truncate(limit - docs.len());
    let cfg = sft_config(opts.paths, opts.text_field);
    let fields = Fields::new(&cfg);
    if rows.is_empty() {
        if docs.is_empty() {
            let first = opts.paths.first().map_or(PathBuf::from("--data"), PathBuf::clone);
            return Err(Error::data(first, "--data: no rows to evaluate"));
        }
        return Ok(LmData::Text(docs));
    }
    let format = crate::sft::resolve_format(&cfg, &fields, &rows)?;
    if format == SftFormat::Text {
        for row in &rows {
            let map = row.fields.as_ref().map_err(|msg| row.error(msg))?;
            docs.push(req_str(map, fields.text).map_err(|e| row_error(row, e))?.to_string());
        }
        return Ok(LmData::Text(docs));
    }
    if !docs.is_empty() {
        return Err(Error::Input(format!("--data: .txt documents cannot be mixed with {format:?} rows (score them in separate runs)")));
    }
    let b = Builder { fields, format, tok, skip_malformed: false };
    let examples = b.examples(&rows, &mut SftStats::default())?;
    Ok(LmData::Completions { format, examples, rows })
}

fn row_error(row: &Row, e: RowError) -> Error {
    match e {
        RowError::Malformed(msg) => row.error(msg),
        RowError::Fatal(e) => e,
    }
}

/// The prompt and reference of each completion row, for `--generate` (see the module docs); a
/// row without a reference is an error naming its file and line.
pub fn prompts(rows: &[Row], format: SftFormat, text_field: &str, tok: &LoadedTokenizer) -> Result<Vec<GenPrompt>> {
    let cfg = sft_config(&[], text_field);
    let f = Fields::new(&cfg);
    rows.iter()
        .map(|row| {
            let map = row.fields.as_ref().map_err(|msg| row.error(msg))?;
            prompt_of(map, format, &f, tok).map_err(|e| row_error(row, e))
        })
        .collect()
}

fn prompt_of(row: &Map<String, Value>, format: SftFormat, f: &Fields, tok: &LoadedTokenizer) -> std::result::Result<GenPrompt, RowError> {
    let raw = |prompt: &str, reference: &str| -> std::result::Result<GenPrompt, RowError> {
        Ok(GenPrompt { text: prompt.to_string(), ids: tok.encode_with_special(prompt)?, reference: reference.to_string() })
    };
    match format {
        SftFormat::PromptCompletion => match field(row, f.prompt)? {
            Value::String(p) => raw(p, req_str(row, f.completion)?),
            Value::Array(p) => {
                let prompt = messages_slice(p, f.prompt)?;
                let completion = messages(field(row, f.completion)?, f.completion)?;
                let reference: String = completion.iter().map(content).collect();
                chat(tok, &prompt, reference)
            }
            other => Err(RowError::Malformed(format!("field \"{}\": expected a string or a list of messages, found {}", f.prompt, read::kind(other)))),
        },
        SftFormat::Alpaca => raw(&alpaca_prompt(req_str(row, f.instruction)?, opt_str(row, f.input)?), req_str(row, f.output)?),
        SftFormat::Dolly => raw(&alpaca_prompt(req_str(row, f.instruction)?, opt_str(row, f.context)?), req_str(row, f.response)?),
        SftFormat::Messages => {
            let msgs = messages(field(row, f.messages)?, f.messages)?;
            let Some(last) = msgs.iter().rposition(|m| m["role"].as_str() == Some("assistant")) else {
                return Err(RowError::Malformed(format!("--generate: field \"{}\" has no assistant turn, the reference to generate", f.messages)));
            };
            chat(tok, &msgs[..last], content(&msgs[last]))
        }
        SftFormat::Text | SftFormat::Auto => Err(RowError::Malformed("--generate: a text row has no reference completion".into())),
    }
}

/// A message's content as text.
fn content(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn chat(tok: &LoadedTokenizer, prompt: &[Value], reference: String) -> std::result::Result<GenPrompt, RowError> {
    if tok.chat_template.is_none() {
        return Err(RowError::Fatal(Error::Tokenizer { path: tok.path.clone(), msg: "no chat template: conversational rows need one".into() }));
    }
    let text = tok.render_chat(prompt, true).map_err(|m| RowError::Malformed(format!("chat template: {m}")))?;
    Ok(GenPrompt { ids: tok.encode(&text)?, text, reference })
}
