//! Sequence classification (`task.kind = "classification"`) on the engine: a pretrained BERT,
//! DistilBERT, GPT-2, Llama, Mistral or Qwen2 directory with its `*ForSequenceClassification`
//! head ([`SequenceClassifier`]: the directory's head, or a new one), trained in full or with
//! LoRA (adapters + the head, PEFT's `SEQ_CLS` `modules_to_save`) on rows of text and label
//! ([`crate::classify::data`]).
//!
//! - The loss of a micro-batch is transformers' for the problem type (cross-entropy,
//!   BCE-with-logits, MSE), a mean over its examples, weighted by its share of the global batch:
//!   summed over micro-batches and ranks, the global batch's mean however it is split.
//! - A model without `pad_token_id` (GPT-2, the pretraining `final/`) gets the tokenizer's pad
//!   token, else its EOS, as transformers users set `model.config.pad_token_id`: the head pools
//!   at the last non-pad token and `config.json` carries it.
//! - Evaluation (rank 0): validation loss, accuracy, macro precision/recall/F1, micro and
//!   weighted F1 (scikit-learn's, [`ClassificationReport`]) into metrics.jsonl; regression
//!   reports the loss (MSE) only.
//! - `final/`: the HF model directory (`AutoModelForSequenceClassification`); under LoRA the
//!   PEFT adapter (`task_type: SEQ_CLS`, the head in `modules_to_save`) and `final/merged/`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::TrainState;
use crate::classify::data::{self as cls, ClsExample};
use crate::classify::ClsLabel;
use crate::config::{ClassificationDataConfig, Recipe};
use crate::data::ExampleOrder;
use crate::bench::BenchTask;
use crate::engine::{Objective, SetupCtx, StepBatch, Task};
use crate::error::{Error, Result};
use crate::eval::classification::ClassificationReport;
use crate::models::heads::{ProblemType, SequenceClassifier};
use crate::recipe_loop;
use crate::tasks::sft::{copy_named, model_dir, weight_kind};
use crate::tokenizer::LoadedTokenizer;

/// A classification run's task state.
pub struct Classification {
    recipe: Recipe,
    device: Device,
    bf16: bool,
    /// `model.path`, absolute (`base_model_name_or_path` of the adapter).
    base: PathBuf,
    tok: LoadedTokenizer,
    model: SequenceClassifier,
    train: Vec<ClsExample>,
    val: Vec<ClsExample>,
    problem_type: ProblemType,
    order: ExampleOrder,
    pad_id: i64,
    stats: cls::ClsStats,
}

/// A collated micro-batch on the device: ids, padding mask and segment ids `(B, T)` (segments
/// for encoders only) and its labels.
pub struct ClsBatch {
    pub ids: Tensor,
    pub mask: Option<Tensor>,
    pub token_type_ids: Option<Tensor>,
    pub labels: Tensor,
}

/// The loss of a micro-batch: the model's logits (under autocast when `bf16`), transformers'
/// loss for `problem_type` (a mean over its examples), times `share`, its part of the global
/// batch. `rankforge bench` times the training step with this same function.
pub fn micro_loss(model: &SequenceClassifier, batch: &ClsBatch, problem_type: ProblemType, share: f64, bf16: bool, train: bool) -> Result<Tensor> {
    let logits = crate::device::autocast(batch.ids.device(), bf16, || model.forward(&batch.ids, batch.mask.as_ref(), batch.token_type_ids.as_ref(), train))?;
    Ok(crate::models::heads::classification_loss(&logits, &batch.labels, Some(problem_type)) * share)
}

/// `[data]` of a classification recipe.
fn cls_data(recipe: &Recipe) -> Result<&ClassificationDataConfig> {
    recipe.data.classification().ok_or_else(|| Error::Input("[data] is not a classification section".into()))
}

/// PEFT's key of a head tensor saved whole in the adapter (`modules_to_save`).
fn adapter_key(name: &str) -> String {
    format!("base_model.model.{name}")
}

/// `model.path` (absolute) and the tokenizer: `data.tokenizer`, else the model directory's.
fn base_and_tokenizer(recipe: &Recipe, data_cfg: &ClassificationDataConfig) -> Result<(PathBuf, LoadedTokenizer)> {
    let base = model_dir(recipe)?;
    let tok = LoadedTokenizer::load(data_cfg.tokenizer.as_deref().unwrap_or(&base))?;
    Ok((base, tok))
}

/// The model with its head for `labels` (None: the directory's own), in `model.dtype`, a new
/// head drawn from `train.seed`.
fn load_model(ctx: &SetupCtx<'_>, base: &Path, labels: Option<&[String]>) -> Result<SequenceClassifier> {
    let recipe = ctx.recipe;
    let kind = weight_kind(recipe.model.hf().and_then(|h| h.dtype), ctx.device, recipe.lora.is_some());
    tch::manual_seed(recipe.train.seed as i64);
    SequenceClassifier::from_pretrained(base, ctx.device, kind, labels)
}

impl Classification {
    /// The task on `data` with `model` (its labels and problem type set): the pad token, the
    /// examples' lengths checked against the model's positions, LoRA attached (the head trains).
    fn build(ctx: &mut SetupCtx<'_>, base: PathBuf, tok: LoadedTokenizer, mut model: SequenceClassifier, data: cls::ClsData) -> Result<Self> {
        let recipe = ctx.recipe;
        let pad_id = match (model.pad_token_id(), tok.pad_or_eos_id()) {
            (Some(p), _) => p,
            (None, Some(p)) => {
                tracing::info!(pad_token_id = p, "the model has no pad_token_id: using the tokenizer's pad (else EOS) token, as config.json will say");
                model.set_pad_token_id(Some(p as i64));
                p as i64
            }
            (None, None) => 0,
        };
        if let Some(n) = model.max_positions() {
            if let Some(e) = data.train.iter().chain(&data.val).find(|e| e.input_ids.len() > n) {
                return Err(Error::Input(format!(
                    "an example has {} tokens, more than the model's {n} positions: set data.max_length <= {n}",
                    e.input_ids.len()
                )));
            }
        }
        if let Some(lora) = &recipe.lora {
            let adapted = model.add_lora(lora, recipe.train.seed)?;
            let head = model.head_parameter_names();
            for (name, t) in model.named_parameters() {
                if head.contains(&name) {
                    let _ = t.shallow_clone().set_requires_grad(true);
                }
            }
            tracing::info!(layers = adapted.len(), r = lora.r, alpha = lora.alpha, head = %head.join(", "), "LoRA adapters attached; the base model is frozen, the head trains");
        }
        let order = ExampleOrder::new(data.train.len(), recipe.train.seed);
        let cls::ClsData { train, val, problem_type, stats, .. } = data;
        Ok(Classification { recipe: recipe.clone(), device: ctx.device, bf16: ctx.bf16, base, tok, model, train, val, problem_type, order, pad_id, stats })
    }
}

impl BenchTask for Classification {
    /// `train.global_batch_size` rows of `len` token ids drawn uniformly from the model's
    /// vocabulary (seeded by `train.seed`), segment 0, no padding (an all-ones attention mask,
    /// as bench/hf_cls.py passes), each with a random label of the problem type (`task.problem_type`,
    /// else the model's, else regression for one label and single-label otherwise); the head
    /// is the directory's, or one for `task.labels`.
    fn synthetic(ctx: &mut SetupCtx<'_>, len: usize) -> Result<Self> {
        let recipe = ctx.recipe;
        let data_cfg = cls_data(recipe)?;
        let task_cfg = recipe.task.classification().cloned().unwrap_or_default();
        let (base, tok) = base_and_tokenizer(recipe, data_cfg)?;
        let mut model = load_model(ctx, &base, task_cfg.labels.as_deref())?;
        let n_labels = model.num_labels();
        let problem_type = task_cfg.problem_type.map(ProblemType::from).or(model.problem_type).unwrap_or(if n_labels == 1 {
            ProblemType::Regression
        } else {
            ProblemType::SingleLabel
        });
        if problem_type == ProblemType::Regression && n_labels != 1 {
            return Err(Error::Input(format!("the model has {n_labels} labels: a regression head needs one (num_labels = 1)")));
        }
        model.problem_type = Some(problem_type);
        let vocab = model.config_json()["vocab_size"].as_i64().ok_or_else(|| Error::model(&base, "config.json has no vocab_size"))?;
        let mut rng = ChaCha8Rng::seed_from_u64(recipe.train.seed);
        let train = (0..recipe.train.global_batch_size)
            .map(|_| ClsExample {
                input_ids: (0..len).map(|_| rng.random_range(0..vocab)).collect(),
                token_type_ids: vec![0; len],
                label: match problem_type {
                    ProblemType::SingleLabel => ClsLabel::Class(rng.random_range(0..n_labels)),
                    ProblemType::MultiLabel => ClsLabel::Multi((0..n_labels).map(|_| rng.random::<bool>()).collect()),
                    ProblemType::Regression => ClsLabel::Value(rng.random::<f64>() * 2.0 - 1.0),
                },
            })
            .collect();
        let labels = model.id2label.clone();
        let data = cls::ClsData { train, val: Vec::new(), labels, problem_type, stats: Default::default() };
        Self::build(ctx, base, tok, model, data)
    }

    fn bench_fields(&mut self) -> Map<String, Value> {
        let lora: i64 = self.model.lora_parameters().iter().map(|(_, p)| p.numel() as i64).sum();
        let base: i64 = self.model.named_parameters().iter().map(|(_, p)| p.numel() as i64).sum();
        let fields = json!({
            "task": "classification",
            "model_type": self.model.model_type(),
            "architecture": self.model.architecture(),
            "params": base + lora,
            "num_labels": self.model.num_labels(),
            "problem_type": self.problem_type.as_str(),
            "weights": format!("{:?}", self.model.kind()).to_lowercase(),
        });
        match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

impl Objective for Classification {
    /// The examples of one micro-batch (indices into the training set) and the global batch's
    /// size, the loss denominator.
    type Micro = (Vec<usize>, u64);

    fn micro_loss(&self, (idx, global): &Self::Micro, bf16: bool, train: bool) -> Result<Tensor> {
        let examples: Vec<&ClsExample> = idx.iter().map(|&i| &self.train[i]).collect();
        let (ids, mask, types, labels) = cls::collate(&examples, self.pad_id);
        let on = |t: &Tensor| crate::device::to_device(t, self.device);
        let batch = ClsBatch { ids: on(&ids), mask: Some(on(&mask)), token_type_ids: self.model.is_encoder().then(|| on(&types)), labels: labels.to_device(self.device) };
        let share = examples.len() as f64 / *global as f64;
        micro_loss(&self.model, &batch, self.problem_type, share, bf16, train)
    }

    fn zero_null_grads(&self) {
        self.model.zero_null_grads();
    }
}

impl Task for Classification {
    fn setup(ctx: &mut SetupCtx<'_>) -> Result<Self> {
        let recipe = ctx.recipe;
        let data_cfg = cls_data(recipe)?;
        let task_cfg = recipe.task.classification().cloned().unwrap_or_default();
        let (base, tok) = base_and_tokenizer(recipe, data_cfg)?;
        let data = cls::load(data_cfg, &task_cfg, &tok, recipe.train.seed)?;
        if data.train.is_empty() {
            return Err(Error::data(&data_cfg.train[0], "data.train: no training example"));
        }
        if recipe.train.global_batch_size < ctx.dist.world() {
            return Err(Error::Input(format!(
                "train.global_batch_size = {} is smaller than the {} ranks: every rank needs at least one example per step",
                recipe.train.global_batch_size,
                ctx.dist.world()
            )));
        }
        let mut model = load_model(ctx, &base, Some(&data.labels))?;
        model.problem_type = Some(data.problem_type);
        Self::build(ctx, base, tok, model, data)
    }

    fn tokenizer(&self) -> &LoadedTokenizer {
        &self.tok
    }

    /// Every parameter (full), or the adapters and the head under their adapter-file names.
    fn trainable(&mut self) -> Vec<(String, Tensor)> {
        if self.recipe.lora.is_none() {
            return self.model.named_parameters();
        }
        let head = self.model.head_parameter_names();
        let mut out = self.model.lora_parameters();
        out.extend(self.model.named_parameters().into_iter().filter(|(n, _)| head.contains(n)).map(|(n, t)| (adapter_key(&n), t)));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn epoch_len(&self) -> u64 {
        self.train.len() as u64
    }

    fn epoch_of(&self, samples: u64) -> f64 {
        self.order.epoch_of(samples)
    }

    fn batch(&mut self, step: u64, global: Range<u64>, mine: Range<u64>) -> Result<StepBatch<Self::Micro>> {
        let (seed, mb) = (self.recipe.train.seed, self.recipe.train.micro_batch_size);
        let (first, n) = (global.start, global.end - global.start);
        let examples: Vec<usize> = global.map(|g| self.order.index(g)).collect();
        let tokens: u64 = examples.iter().map(|&i| self.train[i].input_ids.len() as u64).sum();
        let own = &examples[(mine.start - first) as usize..(mine.end - first) as usize];
        let micro = own
            .chunks(mb)
            .enumerate()
            .map(|(k, chunk)| ((chunk.to_vec(), n), recipe_loop::micro_seed(seed, step, mine.start + (k * mb) as u64)))
            .collect();
        Ok(StepBatch { micro, tokens, extra: Map::new() })
    }

    fn has_eval(&self) -> bool {
        !self.val.is_empty()
    }

    /// Loss and metrics over the first `eval.max_batches` validation micro-batches.
    fn evaluate(&mut self, step: u64) -> Result<Value> {
        let (mut sum, mut n) = (0.0, 0usize);
        let (mut truth, mut pred) = (Vec::new(), Vec::new());
        let (mut multi_truth, mut multi_pred) = (Vec::new(), Vec::new());
        for chunk in self.val.chunks(self.recipe.train.micro_batch_size).take(self.recipe.eval.max_batches) {
            let examples: Vec<&ClsExample> = chunk.iter().collect();
            let logits = self.logits(&examples, self.bf16, false)?.to_kind(Kind::Float);
            let labels = cls::collate(&examples, self.pad_id).3.to_device(self.device);
            let loss = crate::models::heads::classification_loss(&logits, &labels, Some(self.problem_type));
            sum += loss.double_value(&[]) * chunk.len() as f64;
            n += chunk.len();
            match self.problem_type {
                ProblemType::SingleLabel => {
                    pred.extend(Vec::<i64>::try_from(logits.argmax(-1, false)).map_err(tch_err)?.into_iter().map(|p| p as usize));
                    truth.extend(chunk.iter().filter_map(|e| match e.label {
                        ClsLabel::Class(c) => Some(c),
                        _ => None,
                    }));
                }
                ProblemType::MultiLabel => {
                    let hot = Vec::<Vec<f32>>::try_from(logits.sigmoid()).map_err(tch_err)?;
                    multi_pred.extend(hot.into_iter().map(|row| row.into_iter().map(|p| p > 0.5).collect::<Vec<bool>>()));
                    multi_truth.extend(chunk.iter().filter_map(|e| match &e.label {
                        ClsLabel::Multi(h) => Some(h.clone()),
                        _ => None,
                    }));
                }
                ProblemType::Regression => {}
            }
        }
        let val_loss = sum / n.max(1) as f64;
        let mut row = json!({"step": step, "val_loss": val_loss, "val_examples": n});
        let labels = &self.model.id2label;
        let report = match self.problem_type {
            ProblemType::SingleLabel => Some(ClassificationReport::new(&truth, &pred, labels)),
            ProblemType::MultiLabel => Some(ClassificationReport::multilabel(&multi_truth, &multi_pred, labels)),
            ProblemType::Regression => None,
        };
        if let Some(report) = report {
            let m = report.map_err(|e| Error::Input(format!("evaluation at step {step}: {e}")))?.to_json();
            for key in ["accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_micro", "f1_weighted"] {
                row[key] = m[key].clone();
            }
        }
        Ok(row)
    }

    /// The trainable weights (the whole model, or the SEQ_CLS adapter) and the tokenizer.
    fn write_weights(&mut self, dir: &Path, step: u64) -> Result<()> {
        let trained = self.trainable();
        recipe_loop::ensure_finite(trained.iter().map(|(n, w)| (n.as_str(), w)), "the model", step)?;
        match &self.recipe.lora {
            Some(lora) => self.model.save_adapter(dir, lora, Some(&self.base.display().to_string()))?,
            None => self.model.save_pretrained(dir)?,
        }
        self.tok.save_pretrained(dir, self.model.max_positions())
    }

    fn restore_weights(&mut self, dir: &Path) -> Result<()> {
        if self.recipe.lora.is_some() {
            let path = dir.join(crate::lora::ADAPTER_WEIGHTS);
            return copy_named(&self.trainable(), crate::st::load(&path)?, &path);
        }
        let saved = SequenceClassifier::from_pretrained(dir, Device::Cpu, self.model.kind(), Some(&self.model.id2label))?;
        copy_named(&self.model.named_parameters(), saved.named_parameters(), dir)
    }

    /// `<run.dir>/final/` (and, under LoRA, `final/merged/`), staged and renamed into place.
    fn export_final(&mut self, state: &TrainState) -> Result<()> {
        let (recipe, info) = (self.recipe.clone(), self.card_info());
        let target = recipe_loop::write_staged_dir(&recipe.run.dir, "final", |staged| {
            self.write_weights(staged, state.step)?;
            if self.recipe.lora.is_some() {
                let merged = staged.join("merged");
                self.model.merge_lora()?;
                self.model.save_pretrained(&merged)?;
                self.tok.save_pretrained(&merged, self.model.max_positions())?;
            }
            crate::card::write_final(staged, &recipe, state, &info)
        })?;
        let how = if self.recipe.lora.is_some() {
            "PeftModel.from_pretrained(AutoModelForSequenceClassification...); merged model in final/merged"
        } else {
            "AutoModelForSequenceClassification.from_pretrained"
        };
        tracing::info!(path = %target.display(), "final model written ({how})");
        Ok(())
    }

    fn describe(&mut self) -> Vec<(&'static str, String)> {
        vec![
            ("task", "classification".into()),
            ("model", self.base.display().to_string()),
            ("architecture", self.model.architecture().into()),
            ("labels", self.model.num_labels().to_string()),
            ("problem_type", self.problem_type.as_str().into()),
            ("train_examples", self.train.len().to_string()),
            ("val_examples", self.val.len().to_string()),
            ("truncated", self.stats.truncated.to_string()),
        ]
    }
}

fn tch_err(e: tch::TchError) -> Error {
    Error::Input(format!("reading predictions: {e}"))
}

impl Classification {
    /// Logits `(B, num_labels)` of `examples`, collated (right-padded) on the device.
    fn logits(&self, examples: &[&ClsExample], bf16: bool, train: bool) -> Result<Tensor> {
        let (ids, mask, types, _) = cls::collate(examples, self.pad_id);
        let (ids, mask) = (crate::device::to_device(&ids, self.device), crate::device::to_device(&mask, self.device));
        let types = self.model.is_encoder().then(|| crate::device::to_device(&types, self.device));
        crate::device::autocast(self.device, bf16, || self.model.forward(&ids, Some(&mask), types.as_ref(), train))
    }

    /// What the model card says about the model ([`crate::card`]).
    fn card_info(&self) -> crate::card::CardInfo {
        crate::card::CardInfo {
            model_type: self.model.model_type().to_string(),
            architecture: self.model.architecture().to_string(),
            params: Some(self.model.named_parameters().iter().map(|(_, p)| p.numel() as i64).sum()),
            base: Some(self.base.clone()),
            labels: self.model.id2label.clone(),
            problem_type: Some(self.problem_type.as_str().to_string()),
            bf16: self.bf16,
            mask_token: None,
        }
    }
}
