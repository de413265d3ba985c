//! Masked-language-model fine-tuning (`task.kind = "masked_lm"`) on the engine: a BERT or
//! DistilBERT directory as `*ForMaskedLM` ([`MaskedLm`]: its MLM head, or a new one), in full or
//! with LoRA, on text ([`crate::mlm::data`]).
//!
//! - Masking is transformers' `DataCollatorForLanguageModeling` ([`crate::mlm::mask`]) with a
//!   seed that is a pure function of (run seed, epoch, example index): 1 and N ranks and a
//!   resumed run see the same masks.
//! - The loss is the cross-entropy over the masked tokens of the *global* batch (each rank
//!   counts them from the data, as SFT counts label tokens): transformers' mean when the batch
//!   is one micro-batch on one rank.
//! - Evaluation (rank 0) uses one fixed validation mask (seeded by the example index alone):
//!   masked-token loss, perplexity, top-1 and top-5 accuracy.
//! - `final/`: an HF `*ForMaskedLM` directory (`AutoModelForMaskedLM`); under LoRA the PEFT
//!   adapter and `final/merged/`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::TrainState;
use crate::config::{MaskedLmDataConfig, MaskedLmTaskConfig, Recipe};
use crate::data::ExampleOrder;
use crate::bench::BenchTask;
use crate::engine::{Objective, SetupCtx, StepBatch, Task};
use crate::error::{Error, Result};
use crate::mlm::{self, MlmData};
use crate::models::mlm::MaskedLm;
use crate::recipe_loop;
use crate::tasks::sft::{copy_named, model_dir, weight_kind};
use crate::tokenizer::LoadedTokenizer;

/// Salt of the validation mask's seeds (never a training epoch's).
const VAL_SALT: u64 = 0x5EED_0F_7E57;

/// One masked example: inputs and labels (-100 where not masked).
type Masked = (Vec<i64>, Vec<i64>);

/// A masked-LM run's task state.
pub struct MaskedLmTask {
    recipe: Recipe,
    device: Device,
    bf16: bool,
    base: PathBuf,
    tok: LoadedTokenizer,
    model: MaskedLm,
    masking: MaskedLmTaskConfig,
    data: MlmData,
    /// The fixed masks of the validation examples.
    val: Vec<Masked>,
    order: ExampleOrder,
    pad_id: i64,
}

fn mlm_data(recipe: &Recipe) -> Result<&MaskedLmDataConfig> {
    recipe.data.masked_lm().ok_or_else(|| Error::Input("[data] is not a masked_lm section".into()))
}

fn masked_count(m: &[Masked]) -> u64 {
    m.iter().map(|(_, l)| l.iter().filter(|&&x| x != -100).count() as u64).sum()
}

impl MaskedLmTask {
    /// `ids` masked with `seed`.
    fn masked(&self, ids: &[i64], seed: u64) -> Masked {
        mlm::mask(ids, &self.data.special, &self.masking, self.data.mask_id, self.data.vocab_size, seed)
    }

    /// Logits `(B, T, V)` and labels `(B, T)` of `batch`, collated on the device.
    fn forward(&self, batch: &[Masked], bf16: bool, train: bool) -> (Tensor, Tensor) {
        let (ids, mask, labels) = mlm::collate(batch, self.pad_id);
        let (ids, mask) = (crate::device::to_device(&ids, self.device), crate::device::to_device(&mask, self.device));
        let logits = crate::device::autocast(self.device, bf16, || self.model.forward(&ids, Some(&mask), None, train));
        (logits, labels.to_device(self.device))
    }
}

/// `model.path` (absolute) and the tokenizer: `data.tokenizer`, else the model directory's.
fn base_and_tokenizer(recipe: &Recipe, data_cfg: &MaskedLmDataConfig) -> Result<(PathBuf, LoadedTokenizer)> {
    let base = model_dir(recipe)?;
    let tok = LoadedTokenizer::load(data_cfg.tokenizer.as_deref().unwrap_or(&base))?;
    Ok((base, tok))
}

impl MaskedLmTask {
    /// The task on `data`: the model as `*ForMaskedLM` (its head, or a new one drawn from
    /// `train.seed`), checked against the examples' lengths, LoRA attached; the fixed
    /// validation masks.
    fn build(ctx: &mut SetupCtx<'_>, base: PathBuf, tok: LoadedTokenizer, data: MlmData) -> Result<Self> {
        let recipe = ctx.recipe;
        let masking = recipe.task.masked_lm().cloned().unwrap_or_default();
        let kind = weight_kind(recipe.model.hf().and_then(|h| h.dtype), ctx.device, recipe.lora.is_some());
        tch::manual_seed(recipe.train.seed as i64);
        let from_scratch = recipe.model.hf().is_some_and(|h| h.from_scratch);
        let mut model = if from_scratch { MaskedLm::from_config(&base, ctx.device, kind)? } else { MaskedLm::from_pretrained(&base, ctx.device, kind)? };
        if data.vocab_size > model.vocab_size() {
            return Err(Error::model(
                &base.join("config.json"),
                format!("vocab_size {} is smaller than the tokenizer's {} tokens (data.tokenizer or the model's tokenizer files)", model.vocab_size(), data.vocab_size),
            ));
        }
        let n = model.max_positions();
        if let Some(e) = data.train.iter().chain(&data.val).find(|e| e.len() > n) {
            return Err(Error::Input(format!("an example has {} tokens, more than the model's {n} positions: set data.max_length <= {n}", e.len())));
        }
        if let Some(lora) = &recipe.lora {
            let adapted = model.add_lora(lora, recipe.train.seed)?;
            tracing::info!(layers = adapted.len(), r = lora.r, alpha = lora.alpha, "LoRA adapters attached; the base model is frozen");
        }
        let pad_id = data.pad_id;
        let order = ExampleOrder::new(data.train.len(), recipe.train.seed);
        let mut t = MaskedLmTask { recipe: recipe.clone(), device: ctx.device, bf16: ctx.bf16, base, tok, model, masking, data, val: Vec::new(), order, pad_id };
        let seed = t.recipe.train.seed ^ VAL_SALT;
        t.val = t.data.val.iter().enumerate().map(|(j, ids)| t.masked(ids, mlm::example_seed(seed, 0, j as u64))).collect();
        Ok(t)
    }
}

impl BenchTask for MaskedLmTask {
    /// `train.global_batch_size` rows of `len` token ids drawn uniformly (seeded by
    /// `train.seed`) from the tokenizer's non-special ids: no `[CLS]`/`[SEP]`, no padding (an
    /// all-ones attention mask), so every token may be chosen for masking — what
    /// bench/hf_mlm.py feeds transformers' collator.
    fn synthetic(ctx: &mut SetupCtx<'_>, len: usize) -> Result<Self> {
        let data_cfg = mlm_data(ctx.recipe)?;
        data_cfg.validate().map_err(|(key, msg)| Error::Input(format!("{key}: {msg}")))?;
        let (base, tok) = base_and_tokenizer(ctx.recipe, data_cfg)?;
        let (mask_id, vocab_size) = (mlm::data::mask_id(&tok)?, tok.vocab_size());
        let special = mlm::data::special_table(&tok, vocab_size)?;
        let plain: Vec<i64> = (0..vocab_size as i64).filter(|&i| !special[i as usize]).collect();
        if plain.is_empty() {
            return Err(Error::Tokenizer { path: tok.path.clone(), msg: "has only special tokens: no token to mask".into() });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.recipe.train.seed);
        let train = (0..ctx.recipe.train.global_batch_size).map(|_| (0..len).map(|_| plain[rng.random_range(0..plain.len())]).collect()).collect();
        let pad_id = tok.pad_id.map_or(0, i64::from);
        let data = MlmData { train, val: Vec::new(), special, mask_id, pad_id, vocab_size, stats: Default::default() };
        Self::build(ctx, base, tok, data)
    }

    fn bench_fields(&mut self) -> Map<String, Value> {
        let lora: i64 = self.model.lora_parameters().iter().map(|(_, p)| p.numel() as i64).sum();
        let m = &self.masking;
        let fields = json!({
            "task": "masked_lm",
            "model_type": self.model.model_type(),
            "architecture": self.model.architecture(),
            "params": self.model.num_params() + lora,
            "weights": format!("{:?}", self.model.kind()).to_lowercase(),
            "mlm_probability": m.mlm_probability,
            "mask_replace_prob": m.mask_replace_prob,
            "random_replace_prob": m.random_replace_prob,
        });
        match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

impl Objective for MaskedLmTask {
    /// This micro-batch's masked examples and the masked tokens of the whole global batch.
    type Micro = (Vec<Masked>, u64);

    fn micro_loss(&self, (batch, masked): &Self::Micro, bf16: bool, train: bool) -> Result<Tensor> {
        let (logits, labels) = self.forward(batch, bf16, train);
        Ok(self.model.loss_sum(&logits, &labels) / (*masked).max(1) as f64)
    }

    fn zero_null_grads(&self) {
        self.model.zero_null_grads();
    }
}

impl Task for MaskedLmTask {
    fn setup(ctx: &mut SetupCtx<'_>) -> Result<Self> {
        let data_cfg = mlm_data(ctx.recipe)?;
        let (base, tok) = base_and_tokenizer(ctx.recipe, data_cfg)?;
        let data = mlm::data::load(data_cfg, &tok, ctx.recipe.train.seed)?;
        if data.train.is_empty() {
            return Err(Error::data(&data_cfg.train[0], "data.train: no training example"));
        }
        Self::build(ctx, base, tok, data)
    }

    fn tokenizer(&self) -> &LoadedTokenizer {
        &self.tok
    }

    fn trainable(&mut self) -> Vec<(String, Tensor)> {
        if self.recipe.lora.is_some() {
            self.model.lora_parameters()
        } else {
            self.model.named_parameters()
        }
    }

    fn epoch_len(&self) -> u64 {
        self.data.train.len() as u64
    }

    fn epoch_of(&self, samples: u64) -> f64 {
        self.order.epoch_of(samples)
    }

    /// Masks the whole global batch (cheap, on the CPU) to count its masked tokens; keeps
    /// this rank's slice in micro-batches.
    fn batch(&mut self, step: u64, global: Range<u64>, mine: Range<u64>) -> Result<StepBatch<Self::Micro>> {
        let (seed, mb) = (self.recipe.train.seed, self.recipe.train.micro_batch_size);
        let n = self.data.train.len() as u64;
        let first = global.start;
        let all: Vec<Masked> = global
            .map(|g| {
                let i = self.order.index(g);
                self.masked(&self.data.train[i], mlm::example_seed(seed, g / n, i as u64))
            })
            .collect();
        let masked = masked_count(&all);
        let tokens: u64 = all.iter().map(|(ids, _)| ids.len() as u64).sum();
        let own = &all[(mine.start - first) as usize..(mine.end - first) as usize];
        let micro = own
            .chunks(mb)
            .enumerate()
            .map(|(k, chunk)| ((chunk.to_vec(), masked), recipe_loop::micro_seed(seed, step, mine.start + (k * mb) as u64)))
            .collect();
        let mut extra = Map::new();
        extra.insert("masked_tokens".into(), json!(masked));
        Ok(StepBatch { micro, tokens, extra })
    }

    fn has_eval(&self) -> bool {
        !self.val.is_empty()
    }

    /// Masked-token loss, perplexity, top-1 and top-5 accuracy over the first
    /// `eval.max_batches` validation micro-batches, always with the same masks.
    fn evaluate(&mut self, step: u64) -> Result<Value> {
        let (mut sum, mut count, mut top1, mut top5) = (0.0, 0i64, 0i64, 0i64);
        for chunk in self.val.chunks(self.recipe.train.micro_batch_size).take(self.recipe.eval.max_batches) {
            let (logits, labels) = self.forward(chunk, self.bf16, false);
            let logits = logits.to_kind(Kind::Float);
            sum += self.model.loss_sum(&logits, &labels).double_value(&[]);
            let at = labels.ne(-100);
            count += at.sum(Kind::Int64).int64_value(&[]);
            let (_, best) = logits.topk(5.min(logits.size()[2]), -1, true, true); // (B, T, 5)
            let hit = best.eq_tensor(&labels.unsqueeze(-1)); // (B, T, 5)
            top1 += hit.select(-1, 0).logical_and(&at).sum(Kind::Int64).int64_value(&[]);
            top5 += hit.any_dim(-1, false).logical_and(&at).sum(Kind::Int64).int64_value(&[]);
        }
        let c = count.max(1) as f64;
        let val_loss = sum / c;
        Ok(json!({"step": step, "val_loss": val_loss, "val_ppl": val_loss.exp(), "top1_accuracy": top1 as f64 / c, "top5_accuracy": top5 as f64 / c, "masked_tokens": count}))
    }

    fn write_weights(&mut self, dir: &Path, step: u64) -> Result<()> {
        let trained = self.trainable();
        recipe_loop::ensure_finite(trained.iter().map(|(n, w)| (n.as_str(), w)), "the model", step)?;
        match &self.recipe.lora {
            Some(lora) => self.model.save_adapter(dir, lora, Some(&self.base.display().to_string()))?,
            None => self.model.save_pretrained(dir)?,
        }
        self.tok.save_pretrained(dir, Some(self.model.max_positions()))
    }

    fn restore_weights(&mut self, dir: &Path) -> Result<()> {
        if self.recipe.lora.is_some() {
            let path = dir.join(crate::lora::ADAPTER_WEIGHTS);
            return copy_named(&self.trainable(), crate::st::load(&path)?, &path);
        }
        let saved = MaskedLm::from_pretrained(dir, Device::Cpu, self.model.kind())?;
        copy_named(&self.model.named_parameters(), saved.named_parameters(), dir)
    }

    fn export_final(&mut self, state: &TrainState) -> Result<()> {
        let lora = self.recipe.lora.is_some();
        let recipe = self.recipe.clone();
        let info = crate::card::CardInfo {
            model_type: self.model.model_type().to_string(),
            architecture: self.model.architecture().to_string(),
            params: Some(self.model.num_params()),
            // A model built from a config alone (`model.from_scratch`) has no base model.
            base: self.recipe.model.hf().filter(|h| !h.from_scratch).map(|_| self.base.clone()),
            bf16: self.bf16,
            mask_token: self.tok.special("mask_token").map(String::from),
            ..Default::default()
        };
        let target = recipe_loop::write_staged_dir(&recipe.run.dir, "final", |staged| {
            self.write_weights(staged, state.step)?;
            if lora {
                let merged = staged.join("merged");
                self.model.merge_lora()?;
                self.model.save_pretrained(&merged)?;
                self.tok.save_pretrained(&merged, Some(self.model.max_positions()))?;
            }
            crate::card::write_final(staged, &recipe, state, &info)
        })?;
        tracing::info!(path = %target.display(), "final model written (AutoModelForMaskedLM{})", if lora { "; PEFT adapter, merged model in final/merged" } else { "" });
        Ok(())
    }

    fn describe(&mut self) -> Vec<(&'static str, String)> {
        vec![
            ("task", "masked_lm".into()),
            ("model", self.base.display().to_string()),
            ("model_type", self.model.model_type().to_string()),
            ("train_examples", self.data.train.len().to_string()),
            ("val_examples", self.data.val.len().to_string()),
            ("mlm_probability", self.masking.mlm_probability.to_string()),
        ]
    }
}
