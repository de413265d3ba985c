//! Recipes: the TOML file that describes a run (first step of the data flow).
//!
//! A recipe has one section per component (`[run] [task] [model] [data] [train] [checkpoint]
//! [eval] [log] [lora] [hub]`; `[lora]`'s struct lives with its component in [`crate::lora`]); each
//! deserialises with `deny_unknown_fields`, and every field's `///` doc is its reference
//! documentation. `[model]` is one struct per `model.kind`, `[task]` one per `task.kind`, and
//! `[data]` one per reader, chosen by the task and the model ([`sections`]), so each part of
//! the program receives only its slice.
//! `--set section.key=value` overrides any field before deserialisation. Errors name the file
//! and the dotted key. The world size is never in the recipe: it comes from the launcher's
//! rendezvous.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod data;
mod hub;
mod log;
mod model;
mod sections;
mod task;
pub use data::{ClassificationDataConfig, DataConfig, DpoDataConfig, MaskedLmDataConfig, SftDataConfig, SftFormat, Sources, TextDataConfig};
pub use hub::{HubConfig, PushWhen};
pub use log::LogConfig;
pub use model::{GptSpec, HfModelConfig, ModelConfig, ModelDtype, ModelKind};
pub use task::{ClassificationTaskConfig, DpoLossType, DpoTaskConfig, MaskedLmTaskConfig, ProblemTypeName, TaskConfig, TaskKind};

use sections::{has_key, parse, take_kind, take_section, variant, KeyError, Other};

/// A whole recipe, resolved: overrides applied, defaults filled in, validated.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recipe {
    pub run: RunConfig,
    /// `[task]`: the objective (default `causal_lm`, which writes no section).
    #[serde(skip_serializing_if = "TaskConfig::is_default")]
    pub task: TaskConfig,
    pub model: ModelConfig,
    /// `[data]`: its keys depend on the task and the model kind ([`DataConfig`]).
    pub data: DataConfig,
    pub train: TrainConfig,
    pub checkpoint: CheckpointConfig,
    pub eval: EvalConfig,
    /// `[log]`: TensorBoard event files (on by default, which writes no section).
    #[serde(skip_serializing_if = "LogConfig::is_default")]
    pub log: LogConfig,
    /// `[lora]`: train LoRA adapters instead of every weight; absent = full fine-tuning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::lora::LoraConfig>,
    /// `[hub]`: upload the model to the Hugging Face Hub; absent = no upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubConfig>,
}

/// The sections whose keys do not depend on a kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    run: RunConfig,
    #[serde(default)]
    train: TrainConfig,
    #[serde(default)]
    checkpoint: CheckpointConfig,
    #[serde(default)]
    eval: EvalConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    lora: Option<crate::lora::LoraConfig>,
    #[serde(default)]
    hub: Option<HubConfig>,
}

/// `[run]`: where the run lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory: resolved recipe, metrics.jsonl, checkpoints/, final/. Running again on an
    /// existing directory resumes from its newest complete checkpoint.
    pub dir: PathBuf,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// How AdamW runs (`train.optimizer_impl`); both compute PyTorch's AdamW update.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerImpl {
    /// libtorch's multi-tensor kernel (`_fused_adamw_`, PyTorch's `AdamW(fused=True)`): one
    /// pass over each tensor, one call per device and decay group.
    Fused,
    /// One tensor at a time, nine elementwise libtorch ops each.
    Loop,
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

/// `train.bucket_cap_mb`'s default: DDP's.
pub const DEFAULT_BUCKET_CAP_MB: f64 = 25.0;

fn is_default_bucket_cap(mb: &f64) -> bool {
    *mb == DEFAULT_BUCKET_CAP_MB
}

impl TrainConfig {
    /// `train.bucket_cap_mb` in bytes.
    pub fn bucket_cap_bytes(&self) -> usize {
        (self.bucket_cap_mb * (1u64 << 20) as f64) as usize
    }

    /// Whether the gradient all-reduce overlaps backward (`train.overlap_grad_reduce`, on by
    /// default where the gradient hooks are built).
    pub fn overlap_grad_reduce(&self) -> bool {
        self.overlap_grad_reduce.unwrap_or(crate::dist::hooks::AVAILABLE)
    }
}

/// `[train]`: the optimisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps of the whole run (default 1000). Give this or `epochs`, not both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Passes over the training data (HF's `num_train_epochs`; fractions allowed) instead of
    /// `max_steps`: the run takes ceil(epochs × examples / global_batch_size) steps (logged
    /// at the start), and the schedule runs over them. Pretraining counts its examples as
    /// the token windows of one epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
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
    /// AdamW's implementation: "fused" (libtorch's multi-tensor kernel, as PyTorch's
    /// `AdamW(fused=True)`; the default when rankforge's native extension was built) or "loop"
    /// (one tensor at a time: the fallback). They agree to ~1e-7 relative, not bit for bit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer_impl: Option<OptimizerImpl>,
    /// Data parallelism: gradients are all-reduced in buckets of at most this many MiB (of the
    /// parameters' dtype; one tensor larger than that is a bucket of its own), as DDP's
    /// `bucket_cap_mb` (default 25).
    #[serde(skip_serializing_if = "is_default_bucket_cap")]
    pub bucket_cap_mb: f64,
    /// Data parallelism: all-reduce each bucket as soon as the last micro-batch's backward has
    /// produced its gradients, overlapped with the rest of backward (DDP's behaviour; the
    /// default where rankforge's native extension was built), or `false`: all buckets after
    /// backward. Both give the same bits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap_grad_reduce: Option<bool>,
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
            max_steps: None,
            epochs: None,
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
            optimizer_impl: None,
            bucket_cap_mb: DEFAULT_BUCKET_CAP_MB,
            overlap_grad_reduce: None,
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
    /// Fine-tuning and DPO: also score the greedy completions of the `eval.samples` held-out
    /// rows against their references (the completion; DPO's chosen one): `val_rouge1`,
    /// `val_rouge2`, `val_rougeL`, `val_rougeLsum`, `val_bleu`, `val_exact_match`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub generate: bool,
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
        EvalConfig { every_steps: 0, max_batches: 20, samples: DEFAULT_SAMPLES, sample_tokens: DEFAULT_SAMPLE_TOKENS, generate: false }
    }
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
        let recipe = Self::from_table(table).map_err(|(key, mut msg)| {
            if overrides.iter().any(|o| o.split('=').next() == Some(key.as_str())) {
                msg.push_str(" (set with --set)");
            }
            err(&key, msg)
        })?;
        recipe.validate().map_err(|(key, msg)| err(key, msg))?;
        Ok(recipe)
    }

    /// The recipe of a parsed table: `[model]` by `model.kind`, `[task]` by `task.kind`
    /// (default `causal_lm`), `[data]` by the task and the model, the rest as they are.
    fn from_table(mut table: toml::Table) -> std::result::Result<Recipe, KeyError> {
        let mut model_t = take_section(&mut table, "model")?.ok_or(("model".to_string(), "missing section [model]".to_string()))?;
        let mut task_t = take_section(&mut table, "task")?.unwrap_or_default();
        let data_t = take_section(&mut table, "data")?.ok_or(("data".to_string(), "missing section [data]".to_string()))?;
        let model = Self::model(&mut model_t)?;
        let task = Self::task(&mut task_t)?;
        let data = Self::data(&data_t, task.kind(), model.kind())?;
        let common: Common = parse(toml::Value::Table(table), "")?;
        if let (Some(_), Some(_)) = (common.train.max_steps, common.train.epochs) {
            return Err(("train.epochs".into(), "give either train.max_steps or train.epochs, not both".into()));
        }
        Ok(Recipe { run: common.run, task, model, data, train: common.train, checkpoint: common.checkpoint, eval: common.eval, log: common.log, lora: common.lora, hub: common.hub })
    }

    fn model(t: &mut toml::Table) -> std::result::Result<ModelConfig, KeyError> {
        const GPT: Other = ("model.kind = \"gpt\"", has_key::<GptSpec>);
        const HF: Other = ("model.kind = \"hf\"", has_key::<HfModelConfig>);
        match take_kind(t, "model", None)?.as_str() {
            "gpt" => variant(t, "model", "model.kind = \"gpt\"", &[HF]).map(ModelConfig::Gpt),
            "hf" => variant(t, "model", "model.kind = \"hf\"", &[GPT]).map(ModelConfig::Hf),
            other => Err(("model.kind".into(), format!("unknown variant `{other}`, expected `gpt` or `hf`"))),
        }
    }

    fn task(t: &mut toml::Table) -> std::result::Result<TaskConfig, KeyError> {
        const CLS: Other = ("task.kind = \"classification\"", has_key::<ClassificationTaskConfig>);
        const MLM: Other = ("task.kind = \"masked_lm\"", has_key::<MaskedLmTaskConfig>);
        const DPO: Other = ("task.kind = \"dpo\"", has_key::<DpoTaskConfig>);
        let kind = take_kind(t, "task", Some("causal_lm"))?;
        match kind.as_str() {
            "causal_lm" => variant::<task::CausalLmKeys>(t, "task", "task.kind = \"causal_lm\"", &[CLS, MLM, DPO]).map(|_| TaskConfig::CausalLm),
            "classification" => variant(t, "task", "task.kind = \"classification\"", &[MLM, DPO]).map(TaskConfig::Classification),
            "masked_lm" => {
                let m: MaskedLmTaskConfig = variant(t, "task", "task.kind = \"masked_lm\"", &[CLS, DPO])?;
                m.validate().map_err(|(k, msg)| (k.to_string(), msg))?;
                Ok(TaskConfig::MaskedLm(m))
            }
            "dpo" => {
                let d: DpoTaskConfig = variant(t, "task", "task.kind = \"dpo\"", &[CLS, MLM])?;
                d.validate().map_err(|(k, msg)| (k.to_string(), msg))?;
                Ok(TaskConfig::Dpo(d))
            }
            other => {
                let known: Vec<String> = TaskKind::ALL.iter().map(|k| format!("`{}`", k.as_str())).collect();
                Err(("task.kind".into(), format!("unknown variant `{other}`, expected one of {}", known.join(", "))))
            }
        }
    }

    fn data(t: &toml::Table, task: TaskKind, model: ModelKind) -> std::result::Result<DataConfig, KeyError> {
        const TEXT: Other = ("pretraining (model.kind = \"gpt\")", has_key::<TextDataConfig>);
        const SFT: Other = ("fine-tuning a causal LM (model.kind = \"hf\")", has_key::<SftDataConfig>);
        const CLS: Other = ("task.kind = \"classification\"", has_key::<ClassificationDataConfig>);
        const MLM: Other = ("task.kind = \"masked_lm\"", has_key::<MaskedLmDataConfig>);
        const DPO: Other = ("task.kind = \"dpo\"", has_key::<DpoDataConfig>);
        match (task, model) {
            (TaskKind::CausalLm, ModelKind::Gpt) => variant(t, "data", "pretraining (model.kind = \"gpt\")", &[SFT, CLS, MLM, DPO]).map(DataConfig::Text),
            (TaskKind::CausalLm, ModelKind::Hf) => variant(t, "data", "fine-tuning (model.kind = \"hf\")", &[TEXT, CLS, MLM, DPO]).map(DataConfig::Sft),
            (TaskKind::Classification, ModelKind::Hf) => variant(t, "data", "task.kind = \"classification\"", &[TEXT, SFT, MLM, DPO]).map(DataConfig::Classification),
            (TaskKind::MaskedLm, ModelKind::Hf) => variant(t, "data", "task.kind = \"masked_lm\"", &[TEXT, SFT, CLS, DPO]).map(DataConfig::MaskedLm),
            (TaskKind::Dpo, ModelKind::Hf) => variant(t, "data", "task.kind = \"dpo\"", &[TEXT, SFT, CLS, MLM]).map(DataConfig::Dpo),
            (TaskKind::Classification | TaskKind::MaskedLm | TaskKind::Dpo, ModelKind::Gpt) => Err((
                "task.kind".into(),
                format!("{} fine-tunes a pretrained model: use model.kind = \"hf\" with model.path", task.as_str()),
            )),
        }
    }

    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if let ModelConfig::Gpt(g) = &self.model {
            g.validate()?;
        }
        if self.model.hf().is_some_and(|h| h.from_scratch) && self.task.kind() != TaskKind::MaskedLm {
            return Err((
                "model.from_scratch",
                format!("only task.kind = \"masked_lm\" builds a model from its config.json; this recipe has task.kind = {:?} (pretrain a GPT with model.kind = \"gpt\")", self.task.kind().as_str()),
            ));
        }
        self.data.validate()?;
        self.validate_eval_generate()?;
        if let Some(hub) = &self.hub {
            hub.validate()?;
        }
        for (key, v) in [("train.global_batch_size", self.train.global_batch_size), ("train.micro_batch_size", self.train.micro_batch_size)] {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if let Some(e) = self.train.epochs {
            if !(e > 0.0 && e.is_finite()) {
                return Err(("train.epochs", format!("must be a finite number > 0, got {e}")));
            }
        }
        if self.train.threads == Some(0) {
            return Err(("train.threads", "must be at least 1 (or absent: libtorch's choice, the physical cores)".into()));
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
        if t.optimizer_impl == Some(OptimizerImpl::Fused) && !crate::optim::fused::AVAILABLE {
            return Err((
                "train.optimizer_impl",
                "\"fused\" needs rankforge's native extension (csrc/fused_optim.cpp), which did not compile in this build \
                 (see the build's warnings); use \"loop\" or leave the key out"
                    .into(),
            ));
        }
        if !(t.bucket_cap_mb > 0.0 && t.bucket_cap_mb.is_finite()) {
            return Err(("train.bucket_cap_mb", format!("must be a finite number of MiB > 0, got {}", t.bucket_cap_mb)));
        }
        if t.overlap_grad_reduce == Some(true) && !crate::dist::hooks::AVAILABLE {
            return Err((
                "train.overlap_grad_reduce",
                "true needs rankforge's native extension (csrc/grad_hooks.cpp), which did not compile in this build \
                 (see the build's warnings); use false or leave the key out"
                    .into(),
            ));
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

    /// `eval.generate` needs a task that generates completions with references (fine-tuning a
    /// causal LM, DPO) and held-out rows to generate on.
    fn validate_eval_generate(&self) -> std::result::Result<(), (&'static str, String)> {
        if !self.eval.generate {
            return Ok(());
        }
        let generates = match self.task.kind() {
            TaskKind::Dpo => true,
            TaskKind::CausalLm => self.model.kind() == ModelKind::Hf,
            TaskKind::Classification | TaskKind::MaskedLm => false,
        };
        if !generates {
            let what = if self.task.kind() == TaskKind::CausalLm { "pretraining (model.kind = \"gpt\")".to_string() } else { format!("task.kind = {:?}", self.task.kind().as_str()) };
            return Err(("eval.generate", format!("true scores generated completions against references: only fine-tuning a causal LM (model.kind = \"hf\") and task.kind = \"dpo\" generate; {what} does not")));
        }
        if self.eval.samples == 0 {
            return Err(("eval.generate", "true generates on the eval.samples held-out rows, and eval.samples is 0".into()));
        }
        Ok(())
    }

    /// The resolved recipe as TOML (written to `<run.dir>/recipe.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Recipe always serialises: it came from TOML")
    }

    /// Validation fraction in effect.
    pub fn val_fraction(&self) -> f64 {
        self.data.sources().effective_val_fraction()
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
