//! `rankforge bench`: times training steps of a recipe's model on random tokens (no data,
//! no checkpoints), with the same step as `rankforge train` ([`crate::engine::step`]) and the
//! same loss as its task: pretraining ([`crate::tasks::pretrain::micro_loss`]) for
//! `model.kind = "gpt"`, fine-tuning ([`crate::tasks::sft::micro_loss`], LoRA or full) for
//! `kind = "hf"`, sequence classification ([`crate::tasks::classification::micro_loss`]) for
//! `task.kind = "classification"`. `rankforge bench
//! collective`: all-reduce bus bandwidth between the ranks of a launched job. Each prints JSON
//! lines (rank 0 only) to compare with the PyTorch references in `bench/` (see BENCHMARKS.md).

use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::config::{DeviceChoice, Recipe};
use crate::data::rank_slice;
use crate::dist::Dist;
use crate::engine::step::{step, Objective};
use crate::error::{Error, Result};
use crate::models::gpt::Gpt;
use crate::models::heads::{ProblemType, SequenceClassifier};
use crate::models::CausalLm;
use crate::optim::AdamW;
use crate::tasks::classification::{self, ClsBatch};
use crate::tasks::{pretrain, sft};
use crate::tokenizer::LoadedTokenizer;

/// Pretraining steps on random windows: `(windows, share of the global batch)`.
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

/// Fine-tuning steps on random sequences: `(ids, labels)` over `label_tokens`.
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

/// Classification steps on random sequences: `(micro-batch, share of the global batch)`.
struct ClsBench<'a>(&'a SequenceClassifier, ProblemType);

impl Objective for ClsBench<'_> {
    type Micro = (ClsBatch, f64);
    fn micro_loss(&self, (batch, share): &Self::Micro, bf16: bool, train: bool) -> Result<Tensor> {
        classification::micro_loss(self.0, batch, self.1, *share, bf16, train)
    }
    fn zero_null_grads(&self) {
        self.0.zero_null_grads();
    }
}

/// Runs one step and returns its result with its wall time in seconds (CUDA work included:
/// the device is synchronised before the clock stops).
fn timed<T>(device: Device, step: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t0 = Instant::now();
    let out = step()?;
    crate::device::synchronize(device);
    Ok((out, t0.elapsed().as_secs_f64()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Data-parallel training steps; under the launcher each rank takes its slice of the global
/// batch, exactly as in training. The reported time is rank 0's median step.
pub fn run(recipe: &Recipe, steps: usize, warmup: usize) -> Result<Option<serde_json::Value>> {
    if recipe.task.classification().is_some() {
        return run_classification(recipe, steps, warmup);
    }
    let Some(spec) = recipe.model.gpt() else { return run_finetune(recipe, steps, warmup) };
    let crate::recipe_loop::Joined { device, bf16, mut dist, .. } = crate::recipe_loop::join(recipe, false)?;
    // The tokenizer only supplies the vocabulary size when the recipe does not.
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
    let (mut times, mut losses) = (Vec::with_capacity(steps), Vec::with_capacity(warmup + steps));
    for i in 0..warmup + steps {
        let range = rank_slice(0, b, dist.rank(), dist.world());
        let mine = windows.narrow(0, range.start as i64, (range.end - range.start) as i64);
        let mut first = range.start;
        let micro: Vec<_> = mine
            .split(recipe.train.micro_batch_size as i64, 0)
            .into_iter()
            .map(|chunk| {
                let n = chunk.size()[0] as u64;
                let seed = crate::recipe_loop::micro_seed(recipe.train.seed, i as u64, first);
                first += n;
                ((chunk, n as f64 / b as f64), seed)
            })
            .collect();
        let obj = GptBench(&model);
        let (loss, secs) = timed(device, || Ok(step(&obj, &mut opt, micro, device, &recipe.train, recipe.train.lr, bf16, &mut dist)?.loss))?;
        if i >= warmup {
            times.push(secs);
        }
        losses.push(loss);
        tracing::debug!(step = i, loss, "bench step");
    }
    let step = median(times);
    dist.status.set_phase(rankforge_proto::Phase::Done); // the last collective is behind us
    let env = environment(device, bf16, &dist);
    Ok(dist.is_main().then(|| {
        with(env, json!({
            "impl": "rankforge",
            "tokens_per_s": (b as i64 * t) as f64 / step,
            "step_ms": step * 1e3,
            "params": model.num_params(),
            "threads": tch::get_num_threads(),
            "ranks": dist.world(),
            "batch": b,
            "block_size": t,
            "device": format!("{device:?}").to_lowercase(),
            "dtype": if bf16 { "bf16" } else { "fp32" },
            "optimizer": "adamw",
            "steps": steps,
            "losses": losses,
        }))
    }))
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

/// `extra`'s keys added to the object `row`.
fn with(extra: serde_json::Value, mut row: serde_json::Value) -> serde_json::Value {
    if let (Some(r), serde_json::Value::Object(e)) = (row.as_object_mut(), extra) {
        r.extend(e);
    }
    row
}

/// Fine-tuning steps of a `model.kind = "hf"` recipe (LoRA with `[lora]`, else full) on
/// `train.global_batch_size` random sequences of `data.max_length` tokens, every position
/// labelled; the model is loaded and adapted as `rankforge train` does it (`model.dtype`,
/// `[lora]`, `train.seed`), without tokenizer or data. Reported tokens/s count every input
/// token (batch × length), as `bench/peft_llama.py` does.
fn run_finetune(recipe: &Recipe, steps: usize, warmup: usize) -> Result<Option<serde_json::Value>> {
    let t = max_length(recipe)?;
    let crate::recipe_loop::Joined { device, bf16, mut dist, .. } = crate::recipe_loop::join(recipe, false)?;
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
    let (mut times, mut losses) = (Vec::with_capacity(steps), Vec::with_capacity(warmup + steps));
    for i in 0..warmup + steps {
        let micro_batches = mine.split(mb as i64, 0).into_iter().enumerate().map(|(k, chunk)| {
            ((chunk.shallow_clone(), chunk), crate::recipe_loop::micro_seed(recipe.train.seed, i as u64, range.start + (k * mb) as u64))
        });
        let obj = SftBench(&model, label_tokens);
        let (loss, secs) = timed(device, || Ok(step(&obj, &mut opt, micro_batches, device, &recipe.train, recipe.train.lr, bf16, &mut dist)?.loss))?;
        if i >= warmup {
            times.push(secs);
        }
        losses.push(loss);
        tracing::debug!(step = i, loss, "bench step");
    }
    let step = median(times);
    dist.status.set_phase(rankforge_proto::Phase::Done);
    let env = environment(device, bf16, &dist);
    let lora = recipe.lora.as_ref();
    Ok(dist.is_main().then(|| {
        with(env, json!({
            "impl": "rankforge",
            "mode": if lora.is_some() { "lora" } else { "full" },
            "step_ms": step * 1e3,
            "tokens_per_s": (b as i64 * t) as f64 / step,
            "params": model.num_params() + if lora.is_some() { n_trainable } else { 0 },
            "trainable_params": n_trainable,
            "threads": tch::get_num_threads(),
            "ranks": dist.world(),
            "batch": b,
            "micro_batch": mb,
            "seq": t,
            "targets": lora.map(|l| serde_json::to_value(&l.target_modules).unwrap_or_default()),
            "lora_r": lora.map(|l| l.r),
            "device": format!("{device:?}").to_lowercase(),
            "dtype": if bf16 { "bf16" } else { "fp32" },
            "weights": format!("{:?}", model.kind()).to_lowercase(),
            "optimizer": "adamw",
            "steps": steps,
            "losses": losses,
        }))
    }))
}

/// `data.max_length`: the length of a fine-tuning bench's random sequences.
fn max_length(recipe: &Recipe) -> Result<i64> {
    let t = recipe.data.max_length().ok_or_else(|| {
        Error::Input("data.max_length is not set: bench times fine-tuning sequences of that many tokens (e.g. --set data.max_length=512)".into())
    })?;
    Ok(t as i64)
}

/// Classification steps of a `task.kind = "classification"` recipe on
/// `train.global_batch_size` random sequences of `data.max_length` tokens (segment 0, no
/// padding: an all-ones attention mask, as `bench/hf_cls.py` passes) with random labels of the
/// problem type, dropout on. The model and its head are loaded as `rankforge train` loads them
/// (`task.labels`, `model.dtype`, `[lora]` with the head trained in full, `train.seed`), without
/// tokenizer or data; a decoder without `pad_token_id` pools at its `eos_token_id` (else 0).
/// Reported tokens/s count every input token (batch × length).
fn run_classification(recipe: &Recipe, steps: usize, warmup: usize) -> Result<Option<serde_json::Value>> {
    let t = max_length(recipe)?;
    let crate::recipe_loop::Joined { device, bf16, mut dist, .. } = crate::recipe_loop::join(recipe, false)?;
    let task = recipe.task.classification().cloned().unwrap_or_default();
    let kind = sft::weight_kind(recipe.model.hf().and_then(|h| h.dtype), device, recipe.lora.is_some());
    tch::manual_seed(recipe.train.seed as i64);
    let mut model = SequenceClassifier::from_pretrained(&sft::model_dir(recipe)?, device, kind, task.labels.as_deref())?;
    if let Some(n) = model.max_positions().filter(|&n| t as usize > n) {
        return Err(Error::Input(format!("data.max_length = {t} is more than the model's {n} positions")));
    }
    let config = model.config_json();
    if model.pad_token_id().is_none() {
        model.set_pad_token_id(Some(config["eos_token_id"].as_i64().unwrap_or(0)));
    }
    let n_labels = model.num_labels() as i64;
    let problem_type = task.problem_type.map(ProblemType::from).or(model.problem_type).unwrap_or(if n_labels == 1 {
        ProblemType::Regression
    } else {
        ProblemType::SingleLabel
    });
    let n_base: i64 = model.named_parameters().iter().map(|(_, p)| p.numel() as i64).sum();
    let trainable = match &recipe.lora {
        Some(lora) => {
            model.add_lora(lora, recipe.train.seed)?;
            let head = model.head_parameter_names();
            let mut out = model.lora_parameters();
            out.extend(model.named_parameters().into_iter().filter(|(n, _)| head.contains(n)).map(|(n, p)| (n, p.set_requires_grad(true))));
            out
        }
        None => model.named_parameters(),
    };
    let n_trainable: i64 = trainable.iter().map(|(_, p)| p.numel() as i64).sum();
    let n_lora: i64 = model.lora_parameters().iter().map(|(_, p)| p.numel() as i64).sum();
    let mut opt = AdamW::new(trainable, &recipe.train);
    let (b, mb) = (recipe.train.global_batch_size, recipe.train.micro_batch_size);
    let vocab = config["vocab_size"].as_i64().ok_or_else(|| Error::Input("the model's config.json has no vocab_size".into()))?;
    tch::manual_seed(recipe.train.seed as i64);
    let ids = Tensor::randint(vocab, [b as i64, t], (Kind::Int64, device)); // (B, T)
    let labels = match problem_type {
        ProblemType::SingleLabel => Tensor::randint(n_labels, [b as i64], (Kind::Int64, device)),
        ProblemType::MultiLabel => Tensor::randint(2, [b as i64, n_labels], (Kind::Float, device)),
        ProblemType::Regression if n_labels == 1 => Tensor::randn([b as i64], (Kind::Float, device)),
        ProblemType::Regression => Tensor::randn([b as i64, n_labels], (Kind::Float, device)),
    };
    let range = rank_slice(0, b, dist.rank(), dist.world());
    let (first, n) = (range.start as i64, (range.end - range.start) as i64);
    let (ids, labels) = (ids.narrow(0, first, n), labels.narrow(0, first, n));
    let (mut times, mut losses) = (Vec::with_capacity(steps), Vec::with_capacity(warmup + steps));
    for i in 0..warmup + steps {
        let micro_batches = ids.split(mb as i64, 0).into_iter().zip(labels.split(mb as i64, 0)).enumerate().map(|(k, (ids, labels))| {
            let rows = ids.size()[0];
            let batch = ClsBatch {
                mask: Some(ids.ones_like()),
                token_type_ids: model.is_encoder().then(|| ids.zeros_like()),
                ids,
                labels,
            };
            let seed = crate::recipe_loop::micro_seed(recipe.train.seed, i as u64, range.start + (k * mb) as u64);
            ((batch, rows as f64 / b as f64), seed)
        });
        let obj = ClsBench(&model, problem_type);
        let (loss, secs) = timed(device, || Ok(step(&obj, &mut opt, micro_batches, device, &recipe.train, recipe.train.lr, bf16, &mut dist)?.loss))?;
        if i >= warmup {
            times.push(secs);
        }
        losses.push(loss);
        tracing::debug!(step = i, loss, "bench step");
    }
    let step = median(times);
    dist.status.set_phase(rankforge_proto::Phase::Done);
    let env = environment(device, bf16, &dist);
    let lora = recipe.lora.as_ref();
    Ok(dist.is_main().then(|| {
        with(env, json!({
            "impl": "rankforge",
            "task": "classification",
            "mode": if lora.is_some() { "lora" } else { "full" },
            "model_type": model.model_type(),
            "architecture": model.architecture(),
            "step_ms": step * 1e3,
            "tokens_per_s": (b as i64 * t) as f64 / step,
            "examples_per_s": b as f64 / step,
            "params": n_base + n_lora,
            "trainable_params": n_trainable,
            "num_labels": n_labels,
            "problem_type": problem_type.as_str(),
            "threads": tch::get_num_threads(),
            "ranks": dist.world(),
            "batch": b,
            "micro_batch": mb,
            "seq": t,
            "targets": lora.map(|l| serde_json::to_value(&l.target_modules).unwrap_or_default()),
            "lora_r": lora.map(|l| l.r),
            "device": format!("{device:?}").to_lowercase(),
            "dtype": if bf16 { "bf16" } else { "fp32" },
            "weights": format!("{:?}", model.kind()).to_lowercase(),
            "optimizer": "adamw",
            "steps": steps,
            "losses": losses,
        }))
    }))
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
