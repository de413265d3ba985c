//! Recipes: the TOML file that describes a run (first step of the data flow).
//!
//! A recipe has one section per component (`[run] [model] [data] [train] [checkpoint] [eval]
//! [lora]`; `[lora]`'s struct lives with its component in [`crate::lora`]); each deserialises
//! with `deny_unknown_fields`, and every field's `///` doc is its reference documentation.
//! `--set section.key=value` overrides any field before deserialisation. Errors name the file
//! and the dotted key. The world size is never in the recipe: it comes from the launcher's
//! rendezvous.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod model;
pub use model::{GptSpec, ModelConfig, ModelDtype, ModelKind};

/// A whole recipe, resolved: overrides applied, defaults filled in, validated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub run: RunConfig,
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// `[lora]`: train LoRA adapters instead of every weight; absent = full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::lora::LoraConfig>,
}

/// `[run]`: where the run lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory: resolved recipe, metrics.jsonl, checkpoints/, final/. Running again on an
    /// existing directory resumes from its newest complete checkpoint.
    pub dir: PathBuf,
}

/// `[data]`: what to train on.
///
/// Pretraining reads plain text (`train`, `val`, `tokenizer`, `cache_dir`). Fine-tuning reads
/// JSON, JSONL, CSV or Parquet rows in one of the [`SftFormat`] layouts (see the README's
/// "Fine-tuning data"); the keys from `format` on only apply to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training data: a file, a folder (every file in it, recursively, in sorted order), a glob
    /// (`data/*.jsonl`, fine-tuning only) or a list of them. Relative paths are relative to the
    /// working directory.
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Validation data, same forms as `train`. When absent, `val_fraction` of the training data
    /// is held out instead (the last tokens for pretraining; a seeded random choice of examples
    /// for fine-tuning).
    #[serde(default, deserialize_with = "opt_one_or_many")]
    pub val: Option<Vec<PathBuf>>,
    /// Fraction of the training data held out for validation when `val` is absent
    /// (default 0.05). 0 disables evaluation.
    #[serde(default)]
    pub val_fraction: Option<f64>,
    /// A tokenizer directory (with tokenizer.json) or a tokenizer.json file, e.g. made by
    /// `rankforge tokenizer train`. Pretraining needs it; fine-tuning uses the model
    /// directory's tokenizer when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Where tokenized data is cached (memory-mapped token files keyed by tokenizer and source
    /// content). Default: $RANKFORGE_CACHE, else $XDG_CACHE_HOME/rankforge, else
    /// ~/.cache/rankforge; the files go in its `tokens/` folder.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Fine-tuning: the layout of each row. `auto` (default) decides from the first row's
    /// fields: messages, prompt + completion, instruction + output (alpaca), instruction +
    /// response (dolly), text; the field names below apply to the detection too.
    #[serde(default, skip_serializing_if = "SftFormat::is_auto")]
    pub format: SftFormat,
    /// Fine-tuning, `text` format: the field holding the text (default "text").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// Fine-tuning, `prompt_completion` format: the prompt field (default "prompt").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_field: Option<String>,
    /// Fine-tuning, `prompt_completion` format: the completion field (default "completion").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_field: Option<String>,
    /// Fine-tuning, `messages` format: the list of `{role, content}` turns (default
    /// "messages").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_field: Option<String>,
    /// Fine-tuning, `alpaca` and `dolly`: the instruction field (default "instruction").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_field: Option<String>,
    /// Fine-tuning, `alpaca`: the optional input field (default "input").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_field: Option<String>,
    /// Fine-tuning, `alpaca`: the answer field (default "output").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_field: Option<String>,
    /// Fine-tuning, `dolly`: the optional context field (default "context").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_field: Option<String>,
    /// Fine-tuning, `dolly`: the answer field (default "response").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_field: Option<String>,
    /// Fine-tuning: tokens per example. Longer examples keep their start and are counted as
    /// truncated; one left without any trained token is dropped. With `packing`, the length of
    /// the packed sequences. Default: no limit (and no packing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Fine-tuning: concatenate examples (inputs and labels alike) and cut the stream into
    /// sequences of `max_length` tokens, so no compute is spent on padding. Examples are not
    /// truncated then; they continue in the next sequence.
    #[serde(default, skip_serializing_if = "is_false")]
    pub packing: bool,
    /// Fine-tuning: skip and count malformed rows (bad JSON, a missing field, a wrong type)
    /// instead of stopping at the first with an error naming its file and line.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_malformed: bool,
}

impl DataConfig {
    /// `tokenizer`, which pretraining needs.
    pub fn pretraining_tokenizer(&self) -> Result<&Path> {
        self.tokenizer.as_deref().ok_or_else(|| {
            Error::Input(
                "data.tokenizer is not set: pretraining needs a tokenizer directory or tokenizer.json \
                 (make one with `rankforge tokenizer train`)"
                    .into(),
            )
        })
    }

    /// Validation fraction in effect: 0 with `val` files, else `val_fraction` (default 0.05).
    pub fn effective_val_fraction(&self) -> f64 {
        match (&self.val, self.val_fraction) {
            (Some(_), _) => 0.0,
            (None, Some(f)) => f,
            (None, None) => 0.05,
        }
    }
}

/// Layouts of fine-tuning rows (TRL's dataset formats, plus Alpaca and Dolly).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SftFormat {
    /// Decide from the first row's fields.
    #[default]
    Auto,
    /// `{"text"}`: trained on every token.
    Text,
    /// `{"prompt", "completion"}`: trained on the completion (and EOS) only.
    PromptCompletion,
    /// `{"messages": [{role, content}, ...]}` through the chat template: trained on assistant
    /// turns only.
    Messages,
    /// `{"instruction", "input", "output"}` in the Alpaca prompt: trained on the output.
    Alpaca,
    /// `{"instruction", "context", "response", "category"}` in the Alpaca prompt (context as
    /// the input): trained on the response.
    Dolly,
}

impl SftFormat {
    pub fn is_auto(&self) -> bool {
        *self == SftFormat::Auto
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// Where tensors live. `auto` = CUDA device 0 when available, else CPU.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// Arithmetic precision. `auto` = bf16 autocast on CUDA, fp32 on CPU.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Auto,
    Fp32,
    Bf16,
}

/// `[train]`: the optimisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps of the whole run.
    pub max_steps: u64,
    /// Sequences per optimizer step, summed over all ranks. Independent of the world size, so
    /// the same recipe trains the same way on 1 or N ranks.
    pub global_batch_size: usize,
    /// Sequences per forward/backward pass on one rank; more than that per rank is gradient
    /// accumulation. Bounds activation memory.
    pub micro_batch_size: usize,
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    /// Learning rate at the end of the decay.
    pub min_lr: f64,
    /// Linear warm-up steps from lr/warmup_steps to lr.
    pub warmup_steps: u64,
    /// Decay after warm-up: cosine, linear or constant.
    pub schedule: Schedule,
    /// Steps over which the schedule decays to min_lr (default max_steps). Set it beyond
    /// max_steps to train a prefix of a longer run that you extend later.
    pub lr_decay_steps: Option<u64>,
    /// Decoupled AdamW weight decay, applied to matrices (dim >= 2) only, not to biases and
    /// norm gains.
    pub weight_decay: f64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2; 0.95 is the usual choice for GPT pretraining (stabler than 0.999).
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
    /// Seeds initialisation, data order and dropout. Same seed, same run.
    pub seed: u64,
    /// auto, cpu or cuda.
    pub device: DeviceChoice,
    /// auto, fp32 or bf16 (autocast; weights and optimizer state stay fp32).
    pub precision: Precision,
    /// Intra-op CPU threads, at least 1 (default: libtorch's choice, the physical cores).
    pub threads: Option<usize>,
    /// Write a log line (when not on a terminal) every this many steps; metrics.jsonl gets
    /// every step regardless.
    pub log_every: u64,
    /// Stop the run (exit 1, no `final/`) when this many updates in a row were skipped for a
    /// non-finite loss or gradient; 0 never stops. A single bad batch is skipped and training
    /// goes on.
    pub max_skipped_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_steps: 1000,
            global_batch_size: 8,
            micro_batch_size: 8,
            lr: 6e-4,
            min_lr: 6e-5,
            warmup_steps: 100,
            schedule: Schedule::Cosine,
            lr_decay_steps: None,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 1337,
            device: DeviceChoice::Auto,
            precision: Precision::Auto,
            threads: None,
            log_every: 10,
            max_skipped_steps: 3,
        }
    }
}

/// `[checkpoint]`: when to save and how many to keep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many steps (0: only at the end). The last step is always saved.
    pub every_steps: u64,
    /// Keep the newest K complete checkpoints; older ones are deleted after a new one is
    /// complete (never before).
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { every_steps: 0, keep_last: 3 }
    }
}

/// `[eval]`: validation loss and perplexity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0: only at the end). The last step is always evaluated
    /// when there is validation data.
    pub every_steps: u64,
    /// Micro-batches of validation data per evaluation (the same ones each time, so values are
    /// comparable across the run).
    pub max_batches: usize,
    /// Fine-tuning: greedy completions of this many held-out prompts written with each
    /// evaluation (metrics.jsonl `samples`), to see what the numbers mean. 0 turns them off.
    #[serde(skip_serializing_if = "is_default_samples")]
    pub samples: usize,
    /// Fine-tuning: at most this many new tokens per sample (generation also stops at EOS).
    #[serde(skip_serializing_if = "is_default_sample_tokens")]
    pub sample_tokens: usize,
}

const DEFAULT_SAMPLES: usize = 2;
const DEFAULT_SAMPLE_TOKENS: usize = 48;

fn is_default_samples(n: &usize) -> bool {
    *n == DEFAULT_SAMPLES
}

fn is_default_sample_tokens(n: &usize) -> bool {
    *n == DEFAULT_SAMPLE_TOKENS
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { every_steps: 0, max_batches: 20, samples: DEFAULT_SAMPLES, sample_tokens: DEFAULT_SAMPLE_TOKENS }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

fn opt_one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<PathBuf>>, D::Error> {
    one_or_many(d).map(Some)
}

impl Recipe {
    /// Reads `file`, applies `overrides` (`section.key=value`, values in TOML syntax; a bare
    /// word is taken as a string), deserialises and validates.
    pub fn load(file: &Path, overrides: &[String]) -> Result<Recipe> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::Input(format!("--config {}: cannot read the recipe: {e}", file.display())))?;
        Self::from_toml(&text, file, overrides)
    }

    /// As [`Recipe::load`], from text; `file` is only used in messages.
    pub fn from_toml(text: &str, file: &Path, overrides: &[String]) -> Result<Recipe> {
        let err = |key: &str, msg: String| Error::Config {
            file: file.to_path_buf(),
            key: key.to_string(),
            msg,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start].lines().count().max(1).to_string())
                .unwrap_or_else(|| "?".into());
            err(&format!("line {line}"), e.message().trim().to_string())
        })?;
        for item in overrides {
            apply_override(&mut table, item).map_err(|msg| err(&format!("--set {item}"), msg))?;
        }
        let de = toml::Value::Table(table);
        let mut recipe: Recipe = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(top level)".to_string() } else { key };
            let mut msg = e.inner().message().trim().to_string();
            if overrides.iter().any(|o| o.split('=').next() == Some(key.as_str())) {
                msg.push_str(" (set with --set)");
            }
            err(&key, msg)
        })?;
        recipe.model.resolve_defaults();
        recipe.validate().map_err(|(key, msg)| err(key, msg))?;
        Ok(recipe)
    }

    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        self.model.validate()?;
        for (key, v) in [("train.global_batch_size", self.train.global_batch_size), ("train.micro_batch_size", self.train.micro_batch_size)] {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.train.threads == Some(0) {
            return Err(("train.threads", "must be at least 1 (or absent: libtorch's choice, the physical cores)".into()));
        }
        if let Some(f) = self.data.val_fraction {
            if !(0.0..0.5).contains(&f) {
                return Err(("data.val_fraction", format!("{f} is not in [0, 0.5)")));
            }
            if self.data.val.is_some() && f > 0.0 {
                return Err(("data.val_fraction", "give either data.val or data.val_fraction".into()));
            }
        }
        if self.data.train.is_empty() {
            return Err(("data.train", "names no file".into()));
        }
        if self.data.max_length == Some(0) {
            return Err(("data.max_length", "must be at least 1".into()));
        }
        if self.data.packing && self.data.max_length.is_none() {
            return Err(("data.packing", "packing needs data.max_length, the length of the packed sequences".into()));
        }
        let t = &self.train;
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(("train.lr", format!("must be a finite number > 0, got {}", t.lr)));
        }
        if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return Err(("train.min_lr", format!("must be in [0, train.lr = {}], got {}", t.lr, t.min_lr)));
        }
        for (key, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err((key, format!("must be in [0, 1), got {v}")));
            }
        }
        if !(t.eps > 0.0 && t.eps.is_finite()) {
            return Err(("train.eps", format!("must be a finite number > 0 (AdamW divides by sqrt(v) + eps), got {}", t.eps)));
        }
        for (key, v) in [("train.grad_clip", t.grad_clip), ("train.weight_decay", t.weight_decay)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err((key, format!("must be a finite number >= 0, got {v}")));
            }
        }
        if t.log_every == 0 {
            return Err(("train.log_every", "must be at least 1".into()));
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        if self.checkpoint.keep_last == 0 {
            return Err(("checkpoint.keep_last", "must be at least 1: the newest checkpoint is the resume point".into()));
        }
        Ok(())
    }

    /// The resolved recipe as TOML (written to `<run.dir>/recipe.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Recipe always serialises: it came from TOML")
    }

    /// Validation fraction in effect.
    pub fn val_fraction(&self) -> f64 {
        self.data.effective_val_fraction()
    }
}

/// Sets `a.b.c = value` in `table`. The value is parsed as TOML; a bare word that is not valid
/// TOML (`--set run.dir=runs/x`) is taken as a string.
fn apply_override(table: &mut toml::Table, item: &str) -> std::result::Result<(), String> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| "expected section.key=value".to_string())?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err("expected section.key=value".into());
    }
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("the table has the key we just wrote"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let (last, parents) = path.split_last().expect("path is not empty");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
