//! DPO preference training (`task.kind = "dpo"`) of a Hugging Face causal LM on the engine, as
//! TRL's `DPOTrainer` defines it ([`crate::dpo`]: the data, the collator, the losses), leaner:
//!
//! - **The reference.** Under LoRA it is the same model with its adapters switched off (no
//!   second copy in memory); for full fine-tuning a frozen copy of the initial weights; with
//!   `task.ref_model = DIR` that model. `task.precompute_ref = true` computes the reference
//!   log-probs of every pair once before training (the ranks share the work) and drops a
//!   reference copy from memory.
//! - **A step.** The reference log-probs of this rank's micro-batches are computed first, in
//!   [`Task::batch`] (no gradient, eval mode), unless precomputed. Then each micro-batch's chosen
//!   and rejected rows go through the policy in one concatenated forward; log-probs are summed
//!   over completion tokens only, from the hidden states of the scored positions alone (the
//!   `[2B, T, V]` logits are never built, as TRL's fused LM head). The loss is the mean over
//!   the pairs of the **global** batch, so 1 and N ranks compute the same gradient; TRL's
//!   metrics are sums all-reduced with the loss ([`MetricSums`]). Dropout is off unless
//!   `task.disable_dropout = false`.
//! - **Evaluation** (rank 0): the same loss and metrics on the validation pairs, `val_` prefixed.
//! - **Outputs** as SFT's ([`super::sft::export`]): a PEFT adapter and `final/merged/` under
//!   LoRA, an HF directory for full training.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use super::sft::{self, export, model_dir};
use crate::checkpoint::TrainState;
use crate::config::{DpoDataConfig, DpoTaskConfig, Recipe};
use crate::data::ExampleOrder;
use crate::dpo::loss::{sequence_logps_from_hidden, DpoLoss, MetricSums, SeqStats};
use crate::bench::BenchTask;
use crate::dpo::{collate, DpoData, DpoStats, Pair};
use crate::engine::{Objective, SetupCtx, StepBatch, Task};
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::recipe_loop;
use crate::tokenizer::LoadedTokenizer;

/// Where the reference log-probs come from.
enum Reference {
    /// The policy with its LoRA adapters switched off.
    Adapters,
    /// A frozen model: the initial weights (full fine-tuning) or `task.ref_model`.
    Model(Box<CausalLm>),
    /// Computed once before training ([`Dpo::ref_train`], [`Dpo::ref_val`]).
    Precomputed,
}

/// One micro-batch: its pairs (indices into the training set), their reference log-probs
/// `(chosen, rejected)` `[B]`, and the pairs of the whole global batch (the loss denominator).
pub struct DpoMicro {
    pairs: Vec<usize>,
    reference: (Tensor, Tensor),
    global_pairs: usize,
}

/// A DPO run's task state.
pub struct Dpo {
    recipe: Recipe,
    task: DpoTaskConfig,
    device: Device,
    bf16: bool,
    base: PathBuf,
    tok: LoadedTokenizer,
    model: CausalLm,
    reference: Reference,
    loss: DpoLoss,
    train: Vec<Pair>,
    val: Vec<Pair>,
    /// Precomputed reference log-probs `(chosen, rejected)` of each training / validation pair.
    ref_train: Vec<(f32, f32)>,
    ref_val: Vec<(f32, f32)>,
    order: ExampleOrder,
    pad_id: i64,
    max_length: usize,
    stats: DpoStats,
}

fn dpo_data(recipe: &Recipe) -> Result<&DpoDataConfig> {
    recipe.data.dpo().ok_or_else(|| Error::Input("[data] is not a dpo section".into()))
}

/// Tokens of a pair as the collator feeds them (prompt + chosen, prompt + rejected, each cut
/// to `max_length`).
fn pair_tokens(p: &Pair, max_length: usize) -> u64 {
    let n = p.prompt.len();
    ((n + p.chosen.len()).min(max_length) + (n + p.rejected.len()).min(max_length)) as u64
}

impl Dpo {
    /// The policy's (or, `reference`, the reference's) statistics of `pairs` of `set`.
    fn stats_of(&self, model: &CausalLm, pairs: &[&Pair], bf16: bool, train: bool) -> SeqStats {
        let b = collate(pairs, self.pad_id, Some(self.max_length));
        let ids = crate::device::to_device(&b.input_ids, self.device);
        let mask = crate::device::to_device(&b.completion_mask, self.device);
        crate::device::autocast(self.device, bf16, || {
            let hidden = model.hidden(&ids, train);
            sequence_logps_from_hidden(&hidden, |x| model.lm_head(x, train), &ids, &mask)
        })
    }

    /// The reference log-probs `(chosen, rejected)` `[B]` of `idx` into the training or the
    /// validation pairs: precomputed, or a live forward (no gradient, eval mode) of the
    /// reference model, or of the policy with its adapters switched off for the call.
    fn reference_of(&mut self, idx: &[usize], val: bool) -> (Tensor, Tensor) {
        if matches!(self.reference, Reference::Precomputed) {
            let table = if val { &self.ref_val } else { &self.ref_train };
            let (c, r): (Vec<f32>, Vec<f32>) = idx.iter().map(|&i| table[i]).unzip();
            return (Tensor::from_slice(&c).to_device(self.device), Tensor::from_slice(&r).to_device(self.device));
        }
        let adapters = matches!(self.reference, Reference::Adapters);
        if adapters {
            crate::lora::set_enabled(self.model.linears_mut(), false);
        }
        let set = if val { &self.val } else { &self.train };
        let pairs: Vec<&Pair> = idx.iter().map(|&i| &set[i]).collect();
        let model = match &self.reference {
            Reference::Model(m) => m,
            _ => &self.model,
        };
        let out = tch::no_grad(|| self.stats_of(model, &pairs, self.bf16, false).chosen_rejected());
        if adapters {
            crate::lora::set_enabled(self.model.linears_mut(), true);
        }
        out
    }

    /// `precompute_ref`: the reference log-probs of every pair of `set`, in micro-batches shared
    /// round-robin by the ranks and summed over them.
    fn precompute(&mut self, val: bool, dist: &mut crate::dist::Dist) -> Result<Vec<(f32, f32)>> {
        let n = if val { self.val.len() } else { self.train.len() };
        let mb = self.recipe.train.micro_batch_size;
        let mut flat = vec![0f32; 2 * n];
        let idx: Vec<usize> = (0..n).collect();
        for (k, chunk) in idx.chunks(mb).enumerate() {
            if k % dist.world() != dist.rank() {
                continue;
            }
            let (c, r) = self.reference_of(chunk, val);
            let (c, r) = (Vec::<f32>::try_from(c.to_kind(Kind::Float).to_device(Device::Cpu))?, Vec::<f32>::try_from(r.to_kind(Kind::Float).to_device(Device::Cpu))?);
            for (j, &i) in chunk.iter().enumerate() {
                flat[2 * i] = c[j];
                flat[2 * i + 1] = r[j];
            }
        }
        if dist.world() > 1 {
            let mut t = Tensor::from_slice(&flat).to_device(self.device);
            dist.all_reduce_sum(&mut t)?;
            flat = Vec::<f32>::try_from(t.to_device(Device::Cpu))?;
        }
        Ok(flat.chunks(2).map(|p| (p[0], p[1])).collect())
    }

    /// Whether the policy's dropout acts in a training forward.
    fn dropout(&self) -> bool {
        !self.task.disable_dropout
    }

    fn exported(&mut self) -> export::Exported<'_> {
        export::Exported { recipe: &self.recipe, base: &self.base, tok: &self.tok, model: &mut self.model, bf16: self.bf16 }
    }
}

impl Objective for Dpo {
    type Micro = DpoMicro;

    fn micro_loss(&self, m: &DpoMicro, bf16: bool, train: bool) -> Result<Tensor> {
        Ok(self.micro_loss_sums(m, bf16, train)?.0)
    }

    /// The micro-batch's pairs through the policy (chosen and rejected rows in one forward),
    /// their losses over the global batch's pairs, and TRL's metric sums.
    fn micro_loss_sums(&self, m: &DpoMicro, bf16: bool, train: bool) -> Result<(Tensor, Vec<f64>)> {
        let pairs: Vec<&Pair> = m.pairs.iter().map(|&i| &self.train[i]).collect();
        let stats = self.stats_of(&self.model, &pairs, bf16, train && self.dropout());
        let out = self.loss.pair_losses(&stats, &m.reference.0, &m.reference.1);
        Ok((out.loss_share(m.global_pairs), out.sums.to_vec()))
    }

    fn zero_null_grads(&self) {
        self.model.zero_null_grads();
    }
}

/// `model.path` and the tokenizer (`data.tokenizer`, else the model's).
fn base_and_tokenizer(recipe: &Recipe) -> Result<(PathBuf, LoadedTokenizer)> {
    let base = model_dir(recipe)?;
    let tok = LoadedTokenizer::load(dpo_data(recipe)?.tokenizer.as_deref().unwrap_or(&base))?;
    Ok((base, tok))
}

impl Dpo {
    /// The task on `data`: the policy (LoRA attached), the reference, the precomputed
    /// reference log-probs when `task.precompute_ref`.
    fn build(ctx: &mut SetupCtx<'_>, base: PathBuf, tok: LoadedTokenizer, data: DpoData) -> Result<Self> {
        let recipe = ctx.recipe;
        let data_cfg = dpo_data(recipe)?;
        let task = recipe.task.dpo().cloned().unwrap_or_default();
        if data.train.is_empty() {
            return Err(Error::data(&data_cfg.train[0], format!("data.train: no preference pair to train on ({})", data.stats)));
        }
        if recipe.train.global_batch_size < ctx.dist.world() {
            return Err(Error::Input(format!(
                "train.global_batch_size = {} is smaller than the {} ranks: every rank needs at least one pair per step",
                recipe.train.global_batch_size,
                ctx.dist.world()
            )));
        }
        tch::manual_seed(recipe.train.seed as i64);
        let model = sft::load_model(recipe, &base, &tok, ctx.device)?;
        let reference = match (&task.ref_model, recipe.lora.is_some()) {
            (Some(dir), _) => Reference::Model(Box::new(load_reference(dir, &model, ctx.device)?)),
            (None, true) => Reference::Adapters,
            (None, false) => {
                let mut copy = sft::load_model(&Recipe { lora: None, ..recipe.clone() }, &base, &tok, ctx.device)?;
                copy.vs_mut().freeze();
                Reference::Model(Box::new(copy))
            }
        };
        let loss = DpoLoss { beta: task.beta, loss_type: task.loss_type, label_smoothing: task.label_smoothing };
        let order = ExampleOrder::new(data.train.len(), recipe.train.seed);
        let mut t = Dpo {
            recipe: recipe.clone(),
            task: task.clone(),
            device: ctx.device,
            bf16: ctx.bf16,
            base,
            tok,
            model,
            reference,
            loss,
            train: data.train,
            val: data.val,
            ref_train: Vec::new(),
            ref_val: Vec::new(),
            order,
            pad_id: data.pad_id,
            max_length: data_cfg.max_length,
            stats: data.stats,
        };
        if task.precompute_ref {
            t.ref_train = t.precompute(false, ctx.dist)?;
            t.ref_val = t.precompute(true, ctx.dist)?;
            t.reference = Reference::Precomputed; // a reference copy is dropped here
            tracing::info!(train = t.ref_train.len(), val = t.ref_val.len(), "reference log-probs precomputed; the reference model is released");
        }
        Ok(t)
    }
}

impl Task for Dpo {
    fn setup(ctx: &mut SetupCtx<'_>) -> Result<Self> {
        let (base, tok) = base_and_tokenizer(ctx.recipe)?;
        let data = crate::dpo::load(dpo_data(ctx.recipe)?, &tok, ctx.recipe.train.seed)?;
        tracing::info!("DPO data: {}", data.stats);
        Self::build(ctx, base, tok, data)
    }

    fn tokenizer(&self) -> &LoadedTokenizer {
        &self.tok
    }

    fn trainable(&mut self) -> Vec<(String, Tensor)> {
        sft::trainable(&mut self.model, self.recipe.lora.is_some())
    }

    fn epoch_len(&self) -> u64 {
        self.train.len() as u64
    }

    fn epoch_of(&self, samples: u64) -> f64 {
        self.order.epoch_of(samples)
    }

    /// The global batch's pairs ([`ExampleOrder`]); this rank's slice in micro-batches, each
    /// with its reference log-probs.
    fn batch(&mut self, step: u64, global: Range<u64>, mine: Range<u64>) -> Result<StepBatch<DpoMicro>> {
        let (seed, mb) = (self.recipe.train.seed, self.recipe.train.micro_batch_size);
        let first = global.start;
        let pairs: Vec<usize> = global.map(|g| self.order.index(g)).collect();
        let tokens: u64 = pairs.iter().map(|&i| pair_tokens(&self.train[i], self.max_length)).sum();
        let own = pairs[(mine.start - first) as usize..(mine.end - first) as usize].to_vec();
        let mut micro = Vec::new();
        for (k, chunk) in own.chunks(mb).enumerate() {
            let reference = self.reference_of(chunk, false);
            let m = DpoMicro { pairs: chunk.to_vec(), reference, global_pairs: pairs.len() };
            micro.push((m, recipe_loop::micro_seed(seed, step, mine.start + (k * mb) as u64)));
        }
        Ok(StepBatch { micro, tokens, extra: Map::new() })
    }

    fn has_eval(&self) -> bool {
        !self.val.is_empty()
    }

    /// TRL's loss and metrics over the first `eval.max_batches` validation micro-batches,
    /// prefixed `val_`.
    fn evaluate(&mut self, step: u64) -> Result<Value> {
        let mut sums = MetricSums::default();
        let idx: Vec<usize> = (0..self.val.len()).collect();
        for chunk in idx.chunks(self.recipe.train.micro_batch_size).take(self.recipe.eval.max_batches) {
            let (c, r) = self.reference_of(chunk, true);
            let pairs: Vec<&Pair> = chunk.iter().map(|&i| &self.val[i]).collect();
            let stats = self.stats_of(&self.model, &pairs, self.bf16, false);
            sums += self.loss.pair_losses(&stats, &c, &r).sums;
        }
        let mut row = Map::new();
        row.insert("step".into(), json!(step));
        for (name, v) in sums.metrics() {
            row.insert(format!("val_{name}"), json!(v));
        }
        row.insert("val_pairs".into(), json!(sums.pairs));
        if self.recipe.eval.generate {
            self.generation_metrics(&mut row)?;
        }
        Ok(Value::Object(row))
    }

    fn write_weights(&mut self, dir: &Path, step: u64) -> Result<()> {
        self.exported().write_checkpoint(dir, step)
    }

    fn restore_weights(&mut self, dir: &Path) -> Result<()> {
        self.exported().restore(dir)
    }

    fn export_final(&mut self, state: &TrainState) -> Result<()> {
        export::export_final(&mut self.exported(), state)
    }

    fn describe(&mut self) -> Vec<(&'static str, String)> {
        let reference = match &self.reference {
            Reference::Adapters => "the base (adapters off)",
            Reference::Model(_) if self.task.ref_model.is_some() => "task.ref_model",
            Reference::Model(_) => "a frozen copy",
            Reference::Precomputed => "precomputed",
        };
        vec![
            ("task", "dpo".into()),
            ("model", self.base.display().to_string()),
            ("params", self.model.num_params().to_string()),
            ("train_pairs", self.train.len().to_string()),
            ("val_pairs", self.val.len().to_string()),
            ("loss_type", self.task.loss_type.as_str().to_string()),
            ("beta", self.task.beta.to_string()),
            ("reference", reference.to_string()),
            ("dropped", self.stats.dropped.to_string()),
            ("identical", self.stats.identical.to_string()),
            ("truncated", self.stats.truncated.to_string()),
        ]
    }

    /// TRL's training metrics of the step from its global sums (the loss is the engine's).
    fn step_metrics(&self, sums: &[f64]) -> Map<String, Value> {
        let s = MetricSums::from_vec(sums);
        let mut row: Map<String, Value> = s.metrics().into_iter().filter(|(n, _)| *n != "loss").map(|(n, v)| (n.to_string(), json!(v))).collect();
        row.insert("pairs".into(), json!(s.pairs));
        row
    }
}

impl Dpo {
    /// `eval.generate`: greedy completions of the first `eval.samples` validation prompts
    /// (`samples`: prompt, completion, reference) and their generation metrics against the
    /// chosen completions (`val_rouge1`, ...), special tokens skipped.
    fn generation_metrics(&self, row: &mut Map<String, Value>) -> Result<()> {
        use crate::eval::lm::generation;
        let opts = generation::greedy(self.recipe.eval.sample_tokens);
        let (mut samples, mut predictions, mut references) = (Vec::new(), Vec::new(), Vec::new());
        let to_u32 = |ids: &[i64]| -> Vec<u32> { ids.iter().map(|&i| i as u32).collect() };
        for p in self.val.iter().take(self.recipe.eval.samples) {
            let prompt = to_u32(&p.prompt);
            if self.model.hard_context().is_some_and(|n| prompt.len() >= n) {
                continue; // no room left to generate
            }
            let (_, prediction) = generation::complete(&self.model, &self.tok, prompt.clone(), &opts)?;
            let reference = generation::decode_plain(&self.tok, &to_u32(&p.chosen))?;
            samples.push(json!({"prompt": self.tok.decode(&prompt)?, "completion": prediction, "reference": reference}));
            predictions.push(prediction);
            references.push(reference);
        }
        if !predictions.is_empty() {
            generation::score(&predictions, &references, false)?.insert_into(row, "val_");
        }
        row.insert("samples".into(), Value::Array(samples));
        Ok(())
    }
}

/// `task.ref_model`: a causal LM of the policy's vocabulary, frozen, in the policy's dtype.
fn load_reference(dir: &Path, policy: &CausalLm, device: Device) -> Result<CausalLm> {
    let mut m = CausalLm::from_pretrained(dir, device, policy.kind())?;
    if m.vocab_size() != policy.vocab_size() {
        return Err(Error::model(
            &dir.join("config.json"),
            format!("task.ref_model: vocab_size {}, the policy has {} (the reference must share the policy's vocabulary)", m.vocab_size(), policy.vocab_size()),
        ));
    }
    m.vs_mut().freeze();
    Ok(m)
}

impl BenchTask for Dpo {
    /// `train.global_batch_size` pairs of random non-special token ids (seeded by
    /// `train.seed`): a prompt of `len / 2` tokens, chosen and rejected completions of
    /// `len / 2` each, no padding — what bench/trl_dpo.py feeds TRL.
    fn synthetic(ctx: &mut SetupCtx<'_>, len: usize) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let (base, tok) = base_and_tokenizer(ctx.recipe)?;
        let pad_id = crate::dpo::data::pad_id(&tok)?;
        let specials: std::collections::HashSet<u32> = tok.tokenizer.get_added_tokens_decoder().keys().copied().collect();
        let plain: Vec<i64> = (0..tok.vocab_size() as u32).filter(|i| !specials.contains(i)).map(i64::from).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ctx.recipe.train.seed);
        let mut ids = |n: usize| -> Vec<i64> { (0..n).map(|_| plain[rng.random_range(0..plain.len())]).collect() };
        let half = (len / 2).max(1);
        let train = (0..ctx.recipe.train.global_batch_size).map(|_| Pair { prompt: ids(half), chosen: ids(half), rejected: ids(half) }).collect();
        let data = DpoData { train, val: Vec::new(), pad_id, stats: DpoStats::default() };
        Self::build(ctx, base, tok, data)
    }

    fn bench_fields(&mut self) -> Map<String, Value> {
        let lora: i64 = self.model.lora_parameters().iter().map(|(_, p)| p.numel() as i64).sum();
        let mut m = Map::new();
        m.insert("task".into(), json!("dpo"));
        m.insert("model_type".into(), json!(self.model.model_type()));
        m.insert("params".into(), json!(self.model.num_params() + lora));
        m.insert("weights".into(), json!(format!("{:?}", self.model.kind()).to_lowercase()));
        m.insert("loss_type".into(), json!(self.task.loss_type.as_str()));
        m.insert("precompute_ref".into(), json!(self.task.precompute_ref));
        m.insert("pairs".into(), json!(self.recipe.train.global_batch_size));
        m
    }
}
