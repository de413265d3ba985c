//! `rankforge bench`: times training steps of a recipe's model on random tokens (no data,
//! no checkpoints), with the same step function as `rankforge train`. Prints one JSON line to
//! compare with `bench/pytorch_gpt.py` (see BENCHMARKS.md).

use std::time::Instant;

use serde_json::json;
use tch::{Kind, Tensor};

use crate::config::Recipe;
use crate::error::Result;
use crate::models::gpt::Gpt;
use crate::optim::AdamW;
use crate::tokenizer::LoadedTokenizer;

pub fn run(recipe: &Recipe, steps: usize, warmup: usize) -> Result<serde_json::Value> {
    let (device, bf16) = crate::device::setup(&recipe.train)?;
    // The tokenizer only supplies the vocabulary size when the recipe does not.
    let tok = match recipe.model.vocab_size {
        Some(_) => None,
        None => Some(LoadedTokenizer::load(&recipe.data.tokenizer)?),
    };
    let cfg = crate::train::model_config(recipe, tok.as_ref().map(|t| (t.vocab_size(), t.path.as_path())))?;
    tch::manual_seed(recipe.train.seed as i64);
    let model = Gpt::new(&cfg, device);
    let mut opt = AdamW::new(model.named_parameters(), &recipe.train);
    let (b, t) = (recipe.train.global_batch_size as i64, recipe.model.block_size as i64);
    let windows = Tensor::randint(cfg.vocab_size as i64, [b, t + 1], (Kind::Int64, device));
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let (loss, _) = crate::train::step_on_batch(&model, &mut opt, &windows, &recipe.train, recipe.train.lr, bf16);
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        tracing::debug!(step = i, loss, "bench step");
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(json!({
        "impl": "rankforge",
        "tokens_per_s": (b * t) as f64 / median,
        "step_ms": median * 1e3,
        "params": model.num_params(),
        "threads": tch::get_num_threads(),
        "batch": b,
        "block_size": t,
        "device": format!("{device:?}").to_lowercase(),
        "dtype": if bf16 { "bf16" } else { "fp32" },
        "optimizer": "adamw",
        "steps": steps,
    }))
}
