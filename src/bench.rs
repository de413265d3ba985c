//! `rankforge bench`: times training steps of a recipe's model on random tokens (no data
//! files, no checkpoints), with the step `rankforge train` runs ([`crate::engine::step`]):
//!
//! - `task.kind = "classification"`, `"masked_lm"` and `"dpo"`: the training task itself ([`BenchTask`]:
//!   the task's model, head, `[lora]` and dtype as `rankforge train` loads them, on synthetic
//!   examples), each step the engine's: [`Task::batch`] (this rank's slice, its micro-batches
//!   and seeds; for masked LM the collator's masking of the step's examples) then [`step`];
//! - `model.kind = "gpt"`: pretraining ([`crate::tasks::pretrain::micro_loss`]) on random
//!   windows; `kind = "hf"` causal LMs: fine-tuning ([`crate::tasks::sft::micro_loss`], LoRA or
//!   full) on random sequences, every position labelled. These two load no tokenizer (the bench
//!   model directories have none), so they time the task's loss function rather than the task.
//!
//! `rankforge bench collective`: all-reduce bus bandwidth between the ranks of a launched job.
//! Each prints JSON lines (rank 0 only) to compare with the PyTorch references in `bench/` (see
//! BENCHMARKS.md).

use std::time::Instant;

use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::config::{DeviceChoice, ModelKind, Recipe, TaskConfig};
use crate::data::rank_slice;
use crate::dist::Dist;
use crate::dist::buckets::Timing;
use crate::engine::step::{step, Objective, StepOutcome};
use crate::engine::{SetupCtx, Task};
use crate::error::{Error, Result};
use crate::models::gpt::Gpt;
use crate::models::CausalLm;
use crate::optim::AdamW;
use crate::recipe_loop::{join, micro_seed, Joined};
use crate::tasks::classification::Classification;
use crate::tasks::masked_lm::MaskedLmTask;
use crate::tasks::{pretrain, sft};
use crate::tokenizer::LoadedTokenizer;

/// A training task `rankforge bench` runs as it trains, on synthetic examples.
pub trait BenchTask: Task {
    /// The task as [`Task::setup`] builds it (tokenizer, model, head, `[lora]`, dtype, seed),
    /// but with `train.global_batch_size` synthetic training examples of `len` tokens instead of
    /// the recipe's data (which is not read), and no validation data.
    fn synthetic(ctx: &mut SetupCtx<'_>, len: usize) -> Result<Self>;

    /// The task's fields of the bench row (at least `task`, `params`, `weights`).
    fn bench_fields(&mut self) -> Map<String, Value>;
}

/// Data-parallel training steps; under the launcher each rank takes its slice of the global
/// batch, exactly as in training. The reported time is rank 0's median step.
pub fn run(recipe: &Recipe, steps: usize, warmup: usize) -> Result<Option<Value>> {
    match (&recipe.task, recipe.model.kind()) {
        (TaskConfig::Classification(_), _) => run_task::<Classification>(recipe, steps, warmup),
        (TaskConfig::MaskedLm(_), _) => run_task::<MaskedLmTask>(recipe, steps, warmup),
        (TaskConfig::Dpo(_), _) => run_task::<crate::tasks::dpo::Dpo>(recipe, steps, warmup),
        (TaskConfig::CausalLm, ModelKind::Gpt) => run_pretrain(recipe, steps, warmup),
        (TaskConfig::CausalLm, ModelKind::Hf) => run_finetune(recipe, steps, warmup),
    }
}

/// Runs `warmup` then `steps` timed optimizer steps, `one(i)` returning step `i`'s outcome;
/// returns the median timed step in seconds (CUDA work included: the device is synchronised
/// before the clock stops), every step's loss, and the timed steps' gradient all-reduce.
fn time_steps(device: Device, steps: usize, warmup: usize, mut one: impl FnMut(u64) -> Result<StepOutcome>) -> Result<(f64, Vec<f64>, Vec<Timing>)> {
    let (mut times, mut losses, mut reduce) = (Vec::with_capacity(steps), Vec::with_capacity(warmup + steps), Vec::with_capacity(steps));
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let out = one(i as u64)?;
        crate::device::synchronize(device);
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
            reduce.push(out.reduce);
        }
        losses.push(out.loss);
        tracing::debug!(step = i, loss = out.loss, allreduce_ms = out.reduce.allreduce_s * 1e3, exposed_ms = out.reduce.exposed_s * 1e3, "bench step");
    }
    times.sort_by(f64::total_cmp);
    Ok((times.get(times.len() / 2).copied().unwrap_or(f64::NAN), losses, reduce))
}

/// The bench row's gradient all-reduce fields (medians over the timed steps): `allreduce_ms`
/// (all buckets' flatten + all-reduce + copy back; NCCL: the all-reduce kernels' device time),
/// `exposed_allreduce_ms` (the part after backward returned, which the step waited for) and
/// `overlap_fraction` = 1 − exposed / all-reduce (the fraction hidden behind backward), with
/// the switches that produced them. All zero on a world of one CPU rank (nothing is reduced).
fn reduce_fields(recipe: &Recipe, timings: &[Timing]) -> Map<String, Value> {
    let med = |f: fn(&Timing) -> f64| if timings.is_empty() { 0.0 } else { median(timings.iter().map(f).collect()) };
    let (all, exposed) = (med(|t| t.allreduce_s), med(|t| t.exposed_s));
    let fraction = Timing { allreduce_s: all, exposed_s: exposed }.overlap_fraction();
    let row = json!({
        "overlap_grad_reduce": recipe.train.overlap_grad_reduce(),
        "bucket_cap_mb": recipe.train.bucket_cap_mb,
        "allreduce_ms": all * 1e3,
        "exposed_allreduce_ms": exposed * 1e3,
        "overlap_fraction": fraction,
    });
    row.as_object().cloned().unwrap_or_default()
}

/// Steps of a training task `T` (see [`BenchTask`]). Step `i`'s global batch is the samples
/// `i·B .. (i+1)·B` of the `B` synthetic examples, i.e. epoch `i` of them (a masked-LM step
/// draws new masks each step, as the collator does); each step is timed whole, [`Task::batch`]
/// included, as `rankforge train` runs it. Reported tokens/s count every input token
/// (batch × length); the task's per-step metrics (`masked_tokens`) come as lists.
fn run_task<T: BenchTask>(recipe: &Recipe, steps: usize, warmup: usize) -> Result<Option<Value>> {
    let t = max_length(recipe)?;
    let Joined { device, bf16, mut dist, .. } = join(recipe, false)?;
    let mut task = T::synthetic(&mut SetupCtx { recipe, device, bf16, dist: &mut dist }, t as usize)?;
    let trainable = task.trainable();
    let n_trainable: i64 = trainable.iter().map(|(_, p)| p.numel() as i64).sum();
    let mut opt = AdamW::new(trainable, &recipe.train);
    let b = recipe.train.global_batch_size;
    let (rank, world) = (dist.rank(), dist.world());
    let mut extras: Map<String, Value> = Map::new();
    let (secs, losses, reduce) = time_steps(device, steps, warmup, |i| {
        let first = i * b as u64;
        let batch = task.batch(i, first..first + b as u64, rank_slice(first, b, rank, world))?;
        for (k, v) in batch.extra {
            if let Value::Array(a) = extras.entry(k).or_insert_with(|| json!([])) {
                a.push(v);
            }
        }
        step(&task, &mut opt, batch.micro, device, &recipe.train, recipe.train.lr, bf16, &mut dist)
    })?;
    let mut row = fine_tuning_row(recipe, secs, t, n_trainable, steps, losses);
    row.extend(reduce_fields(recipe, &reduce));
    row.insert("optimizer_impl".into(), json!(opt.implementation()));
    row.insert("examples_per_s".into(), json!(b as f64 / secs));
    row.extend(task.bench_fields());
    row.extend(extras);
    Ok(finish(&mut dist, device, bf16, Value::Object(row)))
}

/// The fields of a fine-tuning bench row (SFT or a training task): the median step of the
/// global batch of `seq`-token rows, the trained tensors, `[lora]`, every step's loss.
fn fine_tuning_row(recipe: &Recipe, secs: f64, seq: i64, n_trainable: i64, steps: usize, losses: Vec<f64>) -> Map<String, Value> {
    let (b, mb) = (recipe.train.global_batch_size, recipe.train.micro_batch_size);
    let lora = recipe.lora.as_ref();
    let row = json!({
        "impl": "rankforge",
        "mode": if lora.is_some() { "lora" } else { "full" },
        "step_ms": secs * 1e3,
        "tokens_per_s": (b as i64 * seq) as f64 / secs,
        "trainable_params": n_trainable,
        "batch": b,
        "micro_batch": mb,
        "seq": seq,
        "targets": lora.map(|l| serde_json::to_value(&l.target_modules).unwrap_or_default()),
        "lora_r": lora.map(|l| l.r),
        "steps": steps,
        "losses": losses,
    });
    row.as_object().cloned().unwrap_or_default()
}

/// The row's fields every bench has (threads, ranks, device, dtype, optimizer and the
/// environment), rank 0 only; the job is marked done (the last collective is behind us).
fn finish(dist: &mut Dist, device: Device, bf16: bool, mut row: Value) -> Option<Value> {
    dist.status.set_phase(rankforge_proto::Phase::Done);
    let common = json!({
        "threads": tch::get_num_threads(),
        "ranks": dist.world(),
        "device": format!("{device:?}").to_lowercase(),
        "dtype": if bf16 { "bf16" } else { "fp32" },
        "optimizer": "adamw",
    });
    for extra in [common, environment(device, bf16, dist)] {
        if let (Some(r), Value::Object(e)) = (row.as_object_mut(), extra) {
            r.extend(e);
        }
    }
    dist.is_main().then_some(row)
}

/// Pretraining steps of a `model.kind = "gpt"` recipe on `train.global_batch_size` random
/// windows of `model.block_size + 1` tokens (the same every step), the model drawn from
/// `train.seed`; the tokenizer only supplies the vocabulary size when the recipe does not.
fn run_pretrain(recipe: &Recipe, steps: usize, warmup: usize) -> Result<Option<Value>> {
    let spec = recipe.model.gpt().ok_or_else(|| Error::Input("model.kind = \"gpt\" has no [model] settings".into()))?;
    let Joined { device, bf16, mut dist, .. } = join(recipe, false)?;
    let tok = match (spec.vocab_size, recipe.data.text()) {
        (None, Some(d)) => Some(LoadedTokenizer::load(d.pretraining_tokenizer()?)?),
        _ => None,
    };
    let cfg = pretrain::model_config(recipe, tok.as_ref().map(|t| (t.vocab_size(), t.path.as_path())))?;
    tch::manual_seed(recipe.train.seed as i64);
    let model = Gpt::new(&cfg, device);
    let mut opt = AdamW::new(model.named_parameters(), &recipe.train);
    let (b, t) = (recipe.train.global_batch_size, spec.block_size as i64);
    let windows = Tensor::randint(cfg.vocab_size as i64, [b as i64, t + 1], (Kind::Int64, device));
    let range = rank_slice(0, b, dist.rank(), dist.world());
    let mine = windows.narrow(0, range.start as i64, (range.end - range.start) as i64);
    let obj = GptBench(&model);
    let (secs, losses, reduce) = time_steps(device, steps, warmup, |i| {
        let mut first = range.start;
        let micro: Vec<_> = mine
            .split(recipe.train.micro_batch_size as i64, 0)
            .into_iter()
            .map(|chunk| {
                let n = chunk.size()[0] as u64;
                let seed = micro_seed(recipe.train.seed, i, first);
                first += n;
                ((chunk, n as f64 / b as f64), seed)
            })
            .collect();
        step(&obj, &mut opt, micro, device, &recipe.train, recipe.train.lr, bf16, &mut dist)
    })?;
    let mut row = json!({
        "impl": "rankforge",
        "tokens_per_s": (b as i64 * t) as f64 / secs,
        "step_ms": secs * 1e3,
        "params": model.num_params(),
        "batch": b,
        "block_size": t,
        "steps": steps,
        "losses": losses,
    });
    if let Value::Object(r) = &mut row {
        r.extend(reduce_fields(recipe, &reduce));
        r.insert("optimizer_impl".into(), json!(opt.implementation()));
    }
    Ok(finish(&mut dist, device, bf16, row))
}

/// Pretraining's loss on random windows: `(windows, share of the global batch)`.
struct GptBench<'a>(&'a Gpt);

impl Objective for GptBench<'_> {
    type Micro = (Tensor, f64);
    fn micro_loss(&self, (w, share): &Self::Micro, bf16: bool, train: bool) -> Result<Tensor> {
        Ok(pretrain::micro_loss(self.0, w, *share, bf16, train))
    }
    fn zero_null_grads(&self) {
        self.0.zero_null_grads();
    }
}

/// Fine-tuning steps of a `model.kind = "hf"` causal-LM recipe (LoRA with `[lora]`, else full)
/// on `train.global_batch_size` random sequences of `data.max_length` tokens (the same every
/// step), every position labelled; the model is loaded and adapted as `rankforge train` does it
/// (`model.dtype`, `[lora]`, `train.seed`), without tokenizer or data. Reported tokens/s count
/// every input token (batch × length), as `bench/peft_llama.py` does.
fn run_finetune(recipe: &Recipe, steps: usize, warmup: usize) -> Result<Option<Value>> {
    let t = max_length(recipe)?;
    let Joined { device, bf16, mut dist, .. } = join(recipe, false)?;
    let kind = sft::weight_kind(recipe.model.hf().and_then(|h| h.dtype), device, recipe.lora.is_some());
    let mut model = CausalLm::from_pretrained(&sft::model_dir(recipe)?, device, kind)?;
    let trainable = match &recipe.lora {
        Some(lora) => {
            model.add_lora(lora, recipe.train.seed)?;
            model.lora_parameters()
        }
        None => model.named_parameters(),
    };
    let n_trainable: i64 = trainable.iter().map(|(_, p)| p.numel() as i64).sum();
    let mut opt = AdamW::new(trainable, &recipe.train);
    let (b, mb) = (recipe.train.global_batch_size, recipe.train.micro_batch_size);
    tch::manual_seed(recipe.train.seed as i64);
    let ids = Tensor::randint(model.vocab_size() as i64, [b as i64, t], (Kind::Int64, device)); // (B, T)
    let label_tokens = (b as i64 * (t - 1)) as u64; // every position but the first is a target
    let range = rank_slice(0, b, dist.rank(), dist.world());
    let mine = ids.narrow(0, range.start as i64, (range.end - range.start) as i64);
    let obj = SftBench(&model, label_tokens);
    let (secs, losses, reduce) = time_steps(device, steps, warmup, |i| {
        let micro = mine.split(mb as i64, 0).into_iter().enumerate().map(|(k, chunk)| {
            ((chunk.shallow_clone(), chunk), micro_seed(recipe.train.seed, i, range.start + (k * mb) as u64))
        });
        step(&obj, &mut opt, micro, device, &recipe.train, recipe.train.lr, bf16, &mut dist)
    })?;
    let mut row = fine_tuning_row(recipe, secs, t, n_trainable, steps, losses);
    row.extend(reduce_fields(recipe, &reduce));
    row.insert("params".into(), json!(model.num_params() + if recipe.lora.is_some() { n_trainable } else { 0 }));
    row.insert("weights".into(), json!(format!("{:?}", model.kind()).to_lowercase()));
    Ok(finish(&mut dist, device, bf16, Value::Object(row)))
}

/// Fine-tuning's loss on random sequences: `(ids, labels)` over `label_tokens`.
struct SftBench<'a>(&'a CausalLm, u64);

impl Objective for SftBench<'_> {
    type Micro = (Tensor, Tensor);
    fn micro_loss(&self, (ids, labels): &Self::Micro, bf16: bool, train: bool) -> Result<Tensor> {
        Ok(sft::micro_loss(self.0, ids, labels, self.1, bf16, train))
    }
    fn zero_null_grads(&self) {
        self.0.zero_null_grads();
    }
}

/// What the GPU check reports about a bench's environment: the dtype a forward pass sees
/// under autocast, the collective (and NCCL's version when it is NCCL), peak host memory and,
/// on CUDA, the process's device.
fn environment(device: Device, bf16: bool, dist: &Dist) -> serde_json::Value {
    let autocast = crate::device::autocast(device, bf16, || crate::device::autocast_dtype(device));
    let nccl = (dist.collective_name() == "nccl").then(|| crate::dist::nccl::lib().and_then(|l| l.version()).ok()).flatten();
    json!({
        "autocast_dtype": if bf16 { autocast.map(|k| format!("{k:?}").to_lowercase()) } else { None },
        "collective": dist.collective_name(),
        "nccl": nccl.map(|(a, b, c)| format!("{a}.{b}.{c}")),
        "peak_host_rss_mb": peak_rss_mb(),
    })
}

/// The process's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// `data.max_length`: the length of a fine-tuning bench's random sequences.
fn max_length(recipe: &Recipe) -> Result<i64> {
    let t = recipe.data.max_length().ok_or_else(|| {
        Error::Input("data.max_length is not set: bench times fine-tuning sequences of that many tokens (e.g. --set data.max_length=512)".into())
    })?;
    Ok(t as i64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Parses `1048576`, `64K`, `16M`, `1G` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<usize> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&s[..i], 1 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&s[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = digits.parse().map_err(|_| Error::Input(format!("--bytes {s:?}: expected a size like 1048576, 64K, 16M or 1G")))?;
    let n = n * mult;
    if n == 0 || !n.is_multiple_of(4) {
        return Err(Error::Input(format!("--bytes {s:?}: the size must be a positive multiple of 4 (f32 elements)")));
    }
    Ok(n)
}

/// All-reduce bus bandwidth for each size in `sizes` (bytes of f32). Each timed iteration
/// starts after a barrier; an iteration's time is the slowest rank's (max-reduced), and the
/// median over iterations is reported: busbw = bytes / time × 2(n−1)/n (nccl-tests' definition).
pub fn collective(sizes: &[usize], iters: usize, warmup: usize, device: DeviceChoice) -> Result<Vec<serde_json::Value>> {
    let device = crate::cuda::rank_device(crate::device::select(device)?)?;
    let mut dist = Dist::init("bench-collective", device)?;
    let n = dist.world() as f64;
    let mut out = Vec::new();
    for &bytes in sizes {
        let elems = (bytes / 4) as i64;
        let mut buf = Tensor::ones([elems], (Kind::Float, device));
        let mut times = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            dist.barrier()?;
            let t0 = Instant::now();
            dist.all_reduce_sum(&mut buf)?;
            crate::device::synchronize(device);
            if i >= warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        // The slowest rank's time per iteration: sum of one-hot rows = a gather of all times.
        let mut all = Tensor::zeros([dist.world() as i64, iters as i64], (Kind::Float, device));
        all.get(dist.rank() as i64).copy_(&Tensor::from_slice(&times.iter().map(|t| *t as f32).collect::<Vec<_>>()).to_device(device));
        dist.all_reduce_sum(&mut all)?;
        let slowest: Vec<f64> = Vec::<f32>::try_from(all.amax([0], false).to_device(Device::Cpu))?.into_iter().map(f64::from).collect();
        // Check the result once: every element of ones summed over n ranks, then scaled.
        let mut check = Tensor::ones([elems], (Kind::Float, device)) * (dist.rank() as f64 + 1.0);
        dist.all_reduce_sum(&mut check)?;
        let want = n * (n + 1.0) / 2.0;
        let (lo, hi) = (check.min().double_value(&[]), check.max().double_value(&[]));
        if lo != want || hi != want {
            return Err(Error::Dist(format!("all-reduce of {bytes} bytes gave values in [{lo}, {hi}], expected {want}")));
        }
        let t = median(slowest);
        let algbw = bytes as f64 / t / 1e9;
        let row = json!({
            "impl": "rankforge",
            "collective": dist.collective_name(),
            "world": dist.world(),
            "bytes": bytes,
            "iters": iters,
            "time_ms": t * 1e3,
            "algbw_gbps": algbw,
            "busbw_gbps": algbw * 2.0 * (n - 1.0) / n,
            "nccl": (dist.collective_name() == "nccl")
                .then(|| crate::dist::nccl::lib().and_then(|l| l.version()).ok().map(|(a, b, c)| format!("{a}.{b}.{c}")))
                .flatten(),
        });
        if dist.is_main() {
            println!("{row}");
        }
        out.push(row);
    }
    dist.status.set_phase(rankforge_proto::Phase::Done);
    Ok(out)
}
