//! `rankforge evaluate` on a causal language model (GPT-2, Llama, Mistral, Qwen2; full or a
//! LoRA adapter): the loss and perplexity of held-out data, and with `--generate` the ROUGE,
//! BLEU and exact match of greedy (or sampled) completions against the data's references.
//!
//! - Text rows (`{"text"}`, or `.txt` files: one document each) are joined with `"\n\n"` (as
//!   the transformers perplexity guide joins a dataset's texts), tokenized once as
//!   `tokenizer(text)` (with the special tokens it adds, e.g. Llama's BOS) and scored with
//!   [`perplexity::strided`]: windows of `--max-length` (default: the model's context,
//!   `n_positions` / `max_position_embeddings`) every `--stride` tokens (default half the
//!   window, the guide's 512 of 1024).
//! - Prompt/completion, messages, Alpaca and Dolly rows are scored on their completions only,
//!   masked as fine-tuning masks them ([`crate::sft`]); an example longer than `--max-length`
//!   (default: the model's context) keeps its start. `loss` is the mean over completion tokens,
//!   `perplexity = exp(loss)`.
//! - `--generate` completes each row's prompt ([`data::prompts`]) and scores the completions
//!   ([`generation`]); `--predictions FILE` writes one JSON line per row: `prompt`, `prediction`,
//!   `reference`.

pub mod args;
pub mod data;
pub mod generation;
pub mod model;
pub mod perplexity;
pub mod report;

use std::path::PathBuf;

use serde_json::json;
use tch::Device;

use crate::error::{Error, Result};
use crate::generate::GenOptions;
use data::{DataOptions, LmData};
use generation::GenScores;
use perplexity::Windows;
pub use report::{LmReport, Scored};

/// What `--generate` asked.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub gen: GenOptions,
    pub stemmer: bool,
    pub predictions: Option<PathBuf>,
}

/// What `rankforge evaluate` on a causal LM was asked.
#[derive(Debug, Clone)]
pub struct LmOptions {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub data: Vec<PathBuf>,
    pub split: Option<String>,
    pub text_field: String,
    pub max_length: Option<usize>,
    pub stride: Option<usize>,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub device: Device,
    pub generate: Option<GenerateOptions>,
}

/// Loads the model and the data and scores them (see the module docs).
pub fn evaluate(opts: &LmOptions) -> Result<LmReport> {
    if let Some(g) = &opts.generate {
        g.gen.validate()?;
    }
    if opts.limit == Some(0) {
        return Err(Error::Input("--limit must be at least 1".into()));
    }
    let lm = model::load(&opts.model, opts.adapter.as_deref(), opts.device)?;
    let data_opts = DataOptions { paths: &opts.data, split: opts.split.as_deref(), text_field: &opts.text_field, limit: opts.limit };
    let data = data::read(&data_opts, &lm.tok)?;
    let max_length = context(&lm.model, opts.max_length)?;
    match data {
        LmData::Text(docs) => {
            if opts.generate.is_some() {
                return Err(Error::data(&opts.data[0], "--generate: the data holds text rows, which have no reference completion to generate; give prompt/completion, messages, alpaca or dolly rows"));
            }
            let stride = opts.stride.unwrap_or((max_length / 2).max(1));
            if stride == 0 || stride > max_length {
                return Err(Error::Input(format!("--stride must be in 1..={max_length} (--max-length), got {stride}")));
            }
            let ids = lm.tok.encode_with_special(&docs.join("\n\n"))?;
            let loss = perplexity::strided(&lm.model, &ids, Windows { max_length, stride })?;
            Ok(LmReport { mode: report::Mode::Text { max_length, stride }, loss, n: docs.len(), generation: None })
        }
        LmData::Completions { format, mut examples, rows } => {
            if opts.stride.is_some() {
                return Err(Error::Input("--stride applies to text rows (strided perplexity); these rows are scored on their completions".into()));
            }
            let truncated = examples.iter_mut().filter(|e| e.input_ids.len() > max_length).map(|e| {
                e.input_ids.truncate(max_length);
                e.labels.truncate(max_length);
            }).count();
            if truncated > 0 {
                tracing::warn!(truncated, max_length, "examples longer than --max-length keep their start");
            }
            let refs: Vec<&crate::sft::Example> = examples.iter().collect();
            let pad_id = lm.tok.pad_or_eos_id().map_or(0, i64::from);
            let loss = perplexity::completion_loss(&lm.model, &refs, pad_id, opts.batch_size)?;
            let generation = match &opts.generate {
                Some(g) => Some(generate_all(&lm, &rows, format, &opts.text_field, g)?),
                None => None,
            };
            Ok(LmReport { mode: report::Mode::Completions { format }, loss, n: rows.len(), generation })
        }
    }
}

/// The window / example length: `--max-length`, bounded by GPT-2's position table; default the
/// model's context.
fn context(model: &crate::models::CausalLm, asked: Option<usize>) -> Result<usize> {
    match (asked, model.max_positions()) {
        (Some(0), _) => Err(Error::Input("--max-length must be at least 2".into())),
        (Some(n), _) if n < 2 => Err(Error::Input("--max-length must be at least 2".into())),
        (Some(n), _) if model.hard_context().is_some_and(|c| n > c) => Err(Error::Input(format!(
            "--max-length {n} is longer than the model's context of {} tokens (config.json n_positions)",
            model.hard_context().unwrap_or(0)
        ))),
        (Some(n), _) => Ok(n),
        (None, Some(n)) => Ok(n),
        (None, None) => Err(Error::Input("--max-length: config.json gives no context length (max_position_embeddings); set --max-length".into())),
    }
}

/// Completes every row's prompt, writes `--predictions`, scores.
fn generate_all(lm: &model::LoadedLm, rows: &[crate::sft::read::Row], format: crate::config::SftFormat, text_field: &str, g: &GenerateOptions) -> Result<Scored> {
    let prompts = data::prompts(rows, format, text_field, &lm.tok)?;
    let ctx = lm.model.hard_context();
    let (mut predictions, mut lines) = (Vec::with_capacity(prompts.len()), String::new());
    for (i, (p, row)) in prompts.iter().zip(rows).enumerate() {
        if let Some(n) = ctx.filter(|&n| p.ids.len() >= n) {
            return Err(row.error(format!("--generate: the prompt is {} tokens, the model's context of {n} leaves no room to generate", p.ids.len())));
        }
        let (_, text) = generation::complete(&lm.model, &lm.tok, p.ids.clone(), &g.gen)?;
        lines.push_str(&json!({"prompt": p.text, "prediction": text, "reference": p.reference}).to_string());
        lines.push('\n');
        predictions.push(text);
        if (i + 1) % 50 == 0 {
            tracing::info!("generated {} of {} completions", i + 1, prompts.len());
        }
    }
    if let Some(path) = &g.predictions {
        crate::fsutil::write_atomic(path, lines.as_bytes())?;
    }
    let references: Vec<String> = prompts.into_iter().map(|p| p.reference).collect();
    let scores: GenScores = generation::score(&predictions, &references, g.stemmer)?;
    Ok(Scored { scores, stemmer: g.stemmer })
}
