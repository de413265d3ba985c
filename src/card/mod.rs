//! Model cards (the export step): `final/README.md` with the YAML front matter the Hub and
//! `huggingface_hub.ModelCard` read, and the training curve (`curves.svg`) beside it. A task's
//! export calls [`write_final`] inside its staged `final/` ([`crate::recipe_loop::write_staged_dir`]),
//! so a crash never leaves a half-written card in `final/`.
//!
//! What goes in comes from what the run knows: the recipe (task, model, data, hyperparameters),
//! the run's progress ([`TrainState`]), its `metrics.jsonl` (the last training loss, every
//! evaluation, the last one as the `model-index` results) and what the task adds ([`CardInfo`]).
//! Under LoRA, `final/` (the PEFT adapter, `library_name: peft`) and `final/merged/` (the
//! merged model, `transformers`) each get their own card. The body is in [`body`], the YAML
//! emitter in [`yaml`], and docs/model_card.md describes the card section by section.

mod body;
mod sources;
pub mod yaml;

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::checkpoint::TrainState;
use crate::config::{Recipe, TaskKind};
use crate::error::{IoContext, Result};

pub use sources::{base_model_id, hub_dataset_id};

/// What a task adds to the card beyond its recipe and progress.
#[derive(Debug, Clone, Default)]
pub struct CardInfo {
    /// `model_type` of the trained model (`gpt2`, `llama`, `bert`, ...).
    pub model_type: String,
    /// The transformers class `final/` loads as (`GPT2LMHeadModel`, `BertForMaskedLM`, ...).
    pub architecture: String,
    /// Parameters of the trained model (without adapters).
    pub params: Option<i64>,
    /// The base model directory of a fine-tuning run (`model.path`, absolute); none for a
    /// model trained from scratch.
    pub base: Option<PathBuf>,
    /// Classification labels, in id order.
    pub labels: Vec<String>,
    /// Classification `problem_type`.
    pub problem_type: Option<String>,
    /// Whether the run computed in bf16 (autocast).
    pub bf16: bool,
    /// The tokenizer's mask token (masked LM), for the usage example.
    pub mask_token: Option<String>,
}

/// Which directory a card describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// A plain transformers model directory (`final/` without LoRA).
    Model,
    /// A PEFT adapter directory (`final/` under LoRA).
    Adapter,
    /// The base with the adapters merged in (`final/merged/`).
    Merged,
}

/// The task a card names: its Hub tags, pipeline and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardTask {
    Pretraining,
    Sft,
    Classification,
    MaskedLm,
    Dpo,
}

impl CardTask {
    pub fn of(recipe: &Recipe) -> CardTask {
        match (recipe.task.kind(), recipe.model.kind()) {
            (TaskKind::CausalLm, crate::config::ModelKind::Gpt) => CardTask::Pretraining,
            (TaskKind::CausalLm, crate::config::ModelKind::Hf) => CardTask::Sft,
            (TaskKind::Classification, _) => CardTask::Classification,
            (TaskKind::MaskedLm, _) => CardTask::MaskedLm,
            (TaskKind::Dpo, _) => CardTask::Dpo,
        }
    }

    /// The Hub's `pipeline_tag`.
    pub fn pipeline_tag(self) -> &'static str {
        match self {
            CardTask::Pretraining | CardTask::Sft | CardTask::Dpo => "text-generation",
            CardTask::Classification => "text-classification",
            CardTask::MaskedLm => "fill-mask",
        }
    }

    /// The pipeline's display name (model-index `task.name`), as transformers spells it.
    fn pipeline_name(self) -> &'static str {
        match self {
            CardTask::Pretraining | CardTask::Sft | CardTask::Dpo => "Text Generation",
            CardTask::Classification => "Text Classification",
            CardTask::MaskedLm => "Masked Language Modeling",
        }
    }

    /// The training method's tag (TRL's `sft` / `dpo`), if any.
    fn method_tag(self) -> Option<&'static str> {
        match self {
            CardTask::Sft => Some("sft"),
            CardTask::Dpo => Some("dpo"),
            _ => None,
        }
    }
}

/// A run's metrics.jsonl, read for the card.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// The last step row's `(step, loss)`.
    pub last_train: Option<(u64, f64)>,
    /// Every step row's `(step, loss)`.
    pub train: Vec<(u64, f64)>,
    /// Every evaluation row (those with `val_loss`), in order.
    pub evals: Vec<Map<String, Value>>,
}

impl RunMetrics {
    pub fn read(path: &Path) -> Result<RunMetrics> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut m = RunMetrics::default();
        for row in text.lines().filter_map(|l| serde_json::from_str::<Map<String, Value>>(l).ok()) {
            let step = row.get("step").and_then(Value::as_u64);
            if row.contains_key("val_loss") {
                m.evals.push(row);
            } else if let (Some(step), Some(loss)) = (step, row.get("loss").and_then(Value::as_f64)) {
                m.train.push((step, loss));
            }
        }
        m.last_train = m.train.last().copied();
        Ok(m)
    }

    /// The train loss at `step` (the step row of that step).
    pub fn train_loss_at(&self, step: u64) -> Option<f64> {
        self.train.iter().rev().find(|(s, _)| *s == step).map(|(_, l)| *l)
    }
}

/// Keys of an evaluation row that are counts or details, not metrics.
const NOT_METRICS: [&str; 4] = ["step", "val_examples", "val_pairs", "masked_tokens"];

/// The metrics of an evaluation row, in its order: every finite number but the counts.
pub fn eval_metrics(row: &Map<String, Value>) -> Vec<(String, f64)> {
    row.iter()
        .filter(|(k, _)| !NOT_METRICS.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64().filter(|x| x.is_finite())?)))
        .collect()
}

/// A metric key's model-index `(type, name)`: the Hub's metric ids where one fits (`accuracy`,
/// `f1`, `perplexity`, ...), else the key without `val_`; the name says which variant it is.
pub fn metric_label(key: &str) -> (String, String) {
    let (t, n) = match key {
        "val_loss" => ("loss", "Validation loss"),
        "val_ppl" => ("perplexity", "Perplexity"),
        "accuracy" => ("accuracy", "Accuracy"),
        "precision_macro" => ("precision", "Precision (macro)"),
        "recall_macro" => ("recall", "Recall (macro)"),
        "f1_macro" => ("f1", "F1 (macro)"),
        "f1_micro" => ("f1", "F1 (micro)"),
        "f1_weighted" => ("f1", "F1 (weighted)"),
        "top1_accuracy" => ("accuracy", "Top-1 accuracy"),
        "top5_accuracy" => ("top_5_accuracy", "Top-5 accuracy"),
        other => {
            let bare = other.strip_prefix("val_").unwrap_or(other);
            return (bare.to_string(), format!("Validation {bare}"));
        }
    };
    (t.to_string(), n.to_string())
}

/// Everything a card is made from.
pub struct CardInput<'a> {
    pub recipe: &'a Recipe,
    pub state: &'a TrainState,
    pub info: &'a CardInfo,
    pub metrics: &'a RunMetrics,
}

impl CardInput<'_> {
    fn task(&self) -> CardTask {
        CardTask::of(self.recipe)
    }

    /// The model-index name: the run directory's name (as the Trainer names it after its
    /// output directory; a sweep trial's name).
    pub fn name(&self) -> String {
        self.recipe.run.dir.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
    }

    /// The Hub id of the base model, when one is known ([`base_model_id`]).
    pub fn base_id(&self) -> Option<String> {
        self.info.base.as_deref().and_then(base_model_id)
    }

    /// The Hub ids of the training and validation data, when known ([`hub_dataset_id`]).
    pub fn dataset_ids(&self) -> Vec<String> {
        let s = self.recipe.data.sources();
        let mut ids: Vec<String> = Vec::new();
        for p in s.train.iter().chain(s.val.unwrap_or(&[])) {
            if let Some(id) = hub_dataset_id(p) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

/// The card's front matter as a JSON object (emitted as YAML by [`yaml::to_yaml`]).
pub fn front_matter(c: &CardInput<'_>, variant: Variant) -> Value {
    let task = c.task();
    let mut m = Map::new();
    m.insert("library_name".into(), json!(if variant == Variant::Adapter { "peft" } else { "transformers" }));
    if let Some(base) = c.base_id() {
        m.insert("base_model".into(), json!(base));
    }
    let mut tags = vec!["rankforge".to_string(), task.pipeline_tag().to_string()];
    tags.extend(task.method_tag().map(String::from));
    if variant == Variant::Adapter {
        tags.push("lora".into());
    }
    if !c.info.model_type.is_empty() {
        tags.push(c.info.model_type.clone());
    }
    m.insert("tags".into(), json!(tags));
    let datasets = c.dataset_ids();
    if !datasets.is_empty() {
        m.insert("datasets".into(), json!(datasets));
    }
    m.insert("pipeline_tag".into(), json!(task.pipeline_tag()));
    // The Hub refuses a result without metrics: no evaluation (or no finite metric), no model-index.
    if let Some(last) = c.metrics.evals.last().filter(|l| !eval_metrics(l).is_empty()) {
        m.insert("model-index".into(), model_index(c, last));
    }
    Value::Object(m)
}

/// `[{name, results: [{task, dataset, metrics}]}]` with the metrics of the last evaluation.
fn model_index(c: &CardInput<'_>, last: &Map<String, Value>) -> Value {
    let task = c.task();
    let data = sources::eval_data(c.recipe);
    let metrics: Vec<Value> = eval_metrics(last)
        .into_iter()
        .map(|(k, v)| {
            let (t, name) = metric_label(&k);
            json!({"type": t, "value": v, "name": name})
        })
        .collect();
    json!([{
        "name": c.name(),
        "results": [{
            "task": {"type": task.pipeline_tag(), "name": task.pipeline_name()},
            "dataset": {"name": data.name, "type": data.kind, "split": "validation"},
            "metrics": metrics,
        }],
    }])
}

/// The whole `README.md` for `variant`.
pub fn render(c: &CardInput<'_>, variant: Variant) -> String {
    format!("---\n{}---\n\n{}", yaml::to_yaml(&front_matter(c, variant)), body::body(c, variant))
}

/// File name of the training curve, in the run directory and beside each card.
pub const CURVES: &str = "curves.svg";

/// Rank 0, at the end of a run, inside the staged `final/` (`staged`): draws the loss curves of
/// `<run.dir>/metrics.jsonl` into `<run.dir>/curves.svg`, and writes the card and a copy of
/// the curve into `staged` (and, under LoRA, into `staged/merged`, which must exist by then).
pub fn write_final(staged: &Path, recipe: &Recipe, state: &TrainState, info: &CardInfo) -> Result<()> {
    let run_dir = &recipe.run.dir;
    let metrics_path = run_dir.join("metrics.jsonl");
    let metrics = if metrics_path.exists() { RunMetrics::read(&metrics_path)? } else { RunMetrics::default() };
    let curve = run_dir.join(CURVES);
    let series = if metrics_path.exists() { crate::curves::from_metrics(&metrics_path)? } else { Vec::new() };
    crate::curves::render_svg(&series, &curve)?;
    let input = CardInput { recipe, state, info, metrics: &metrics };
    let dirs = match recipe.lora {
        Some(_) => vec![(staged.to_path_buf(), Variant::Adapter), (staged.join("merged"), Variant::Merged)],
        None => vec![(staged.to_path_buf(), Variant::Model)],
    };
    for (dir, variant) in dirs {
        std::fs::copy(&curve, dir.join(CURVES)).at(dir.join(CURVES))?;
        crate::fsutil::write_atomic(&dir.join("README.md"), render(&input, variant).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
