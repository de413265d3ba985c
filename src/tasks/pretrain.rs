//! Pretraining (`task.kind = "causal_lm"`, `model.kind = "gpt"`): a GPT-2 style model from
//! scratch on plain text. Setup in dependency order: the tokenizer decides the vocabulary, the
//! token cache ([`crate::data`]) is filled by rank 0 and found by the others, the model is
//! drawn from the seed. A step's examples are token windows ([`Sampler`]); each micro-batch's
//! mean loss is weighted by its share of the global batch. `final/` is an HF GPT-2 directory.

use std::ops::Range;
use std::path::Path;

use serde_json::{json, Map, Value};
use tch::{Device, Tensor};

use crate::checkpoint::TrainState;
use crate::config::{Recipe, TextDataConfig};
use crate::data::{val_batches, Dataset, Sampler};
use crate::engine::{Objective, SetupCtx, StepBatch, Task};
use crate::error::{Error, Result};
use crate::models::gpt::{Gpt, GptConfig};
use crate::recipe_loop;
use crate::tokenizer::LoadedTokenizer;

/// A pretraining run's task state.
pub struct Pretrain {
    recipe: Recipe,
    device: Device,
    bf16: bool,
    /// Tokens per training window (`model.block_size`).
    block_size: usize,
    tok: LoadedTokenizer,
    model: Gpt,
    sampler: Sampler,
    /// Rank 0: the fixed validation batches.
    val: Vec<Tensor>,
}

/// The model architecture of a recipe, checked against the tokenizer.
pub fn model_config(recipe: &Recipe, tok_vocab: Option<(usize, &Path)>) -> Result<GptConfig> {
    let m = recipe.model.gpt().ok_or_else(|| Error::Input("model.kind = \"hf\" is a fine-tuning recipe, not a GPT pretraining one".into()))?;
    let vocab_size = match (m.vocab_size, tok_vocab) {
        (Some(v), Some((tv, path))) if v < tv => {
            return Err(Error::Input(format!(
                "model.vocab_size = {v} is smaller than the tokenizer's vocabulary ({tv} tokens in {})",
                path.display()
            )))
        }
        (Some(v), _) => v,
        (None, Some((tv, _))) => tv.div_ceil(64) * 64,
        (None, None) => return Err(Error::Input("model.vocab_size is not set and there is no tokenizer to take it from".into())),
    };
    Ok(GptConfig {
        vocab_size,
        n_layer: m.n_layer,
        n_head: m.n_head,
        n_embd: m.n_embd,
        n_positions: m.n_positions.unwrap_or(m.block_size),
        dropout: m.dropout,
        bias: m.bias,
        layer_norm_eps: 1e-5,
    })
}

/// The loss share of micro-batch `windows` `(B, T+1)`: its mean next-token loss times its
/// share of the global batch, `weight` = B / global batch (also what `rankforge bench` times).
pub fn micro_loss(model: &Gpt, windows: &Tensor, weight: f64, bf16: bool, train: bool) -> Tensor {
    crate::device::autocast(windows.device(), bf16, || model.loss(windows, train)) * weight
}

/// `[data]` of a pretraining recipe.
fn text_data(recipe: &Recipe) -> Result<&TextDataConfig> {
    recipe.data.text().ok_or_else(|| Error::Input("[data] is not a pretraining section".into()))
}

impl Objective for Pretrain {
    /// `(B, T+1)` token windows and their share of the global batch.
    type Micro = (Tensor, f64);

    fn micro_loss(&self, (windows, weight): &Self::Micro, bf16: bool, train: bool) -> Result<Tensor> {
        Ok(micro_loss(&self.model, windows, *weight, bf16, train))
    }

    fn zero_null_grads(&self) {
        self.model.zero_null_grads();
    }
}

impl Task for Pretrain {
    fn setup(ctx: &mut SetupCtx<'_>) -> Result<Self> {
        let recipe = ctx.recipe;
        let data_cfg = text_data(recipe)?;
        // Tokenizer first: it fixes the vocabulary the model and the token cache depend on.
        let tok = LoadedTokenizer::load(data_cfg.pretraining_tokenizer()?)?;
        let cfg = model_config(recipe, Some((tok.vocab_size(), &tok.path)))?;
        let block_size = recipe.model.gpt().map_or(cfg.n_positions, |g| g.block_size);
        // Rank 0 fills the token cache; the others then find it there (on a shared disk).
        let main = ctx.dist.is_main();
        let prepare = || Dataset::prepare(data_cfg, recipe.val_fraction(), &tok, block_size);
        let data = if main { Some(prepare()?) } else { None };
        ctx.dist.gather_small("token-cache", Vec::new())?;
        let data = match data {
            Some(d) => d,
            None => prepare()?,
        };
        let sampler = Sampler::new(data.train.clone(), block_size, recipe.train.seed);
        let val = match (&data.val, main) {
            (Some(v), true) => val_batches(v, block_size, recipe.train.micro_batch_size, recipe.eval.max_batches),
            _ => Vec::new(),
        };
        tch::manual_seed(recipe.train.seed as i64);
        let model = Gpt::new(&cfg, ctx.device);
        Ok(Pretrain { recipe: recipe.clone(), device: ctx.device, bf16: ctx.bf16, block_size, tok, model, sampler, val })
    }

    fn tokenizer(&self) -> &LoadedTokenizer {
        &self.tok
    }

    fn trainable(&mut self) -> Vec<(String, Tensor)> {
        self.model.named_parameters()
    }

    fn epoch_len(&self) -> u64 {
        self.sampler.n_windows
    }

    fn epoch_of(&self, samples: u64) -> f64 {
        self.sampler.epoch_of(samples)
    }

    fn batch(&mut self, step: u64, global: Range<u64>, mine: Range<u64>) -> Result<StepBatch<Self::Micro>> {
        let cfg = &self.recipe.train;
        let g = (global.end - global.start) as f64;
        let windows = crate::device::to_device(&self.sampler.batch(mine.clone()), self.device); // (B_rank, T+1)
        let mut first = mine.start;
        let mut micro = Vec::new();
        for chunk in windows.split(cfg.micro_batch_size as i64, 0) {
            let n = chunk.size()[0];
            micro.push(((chunk, n as f64 / g), recipe_loop::micro_seed(cfg.seed, step, first)));
            first += n as u64;
        }
        let tokens = (global.end - global.start) * self.block_size as u64;
        Ok(StepBatch { micro, tokens, extra: Map::new() })
    }

    fn has_eval(&self) -> bool {
        !self.val.is_empty()
    }

    /// Mean validation loss over the fixed validation batches.
    fn evaluate(&mut self, step: u64) -> Result<Value> {
        let (mut sum, mut count) = (0.0, 0i64);
        for b in &self.val {
            let b = b.to_device(self.device);
            let n = b.size()[0];
            let loss = crate::device::autocast(self.device, self.bf16, || self.model.loss(&b, false));
            sum += loss.double_value(&[]) * n as f64;
            count += n;
        }
        let val_loss = sum / count as f64;
        Ok(json!({"step": step, "val_loss": val_loss, "val_ppl": val_loss.exp()}))
    }

    /// A loadable model directory (weights, config, tokenizer); never non-finite weights.
    fn write_weights(&mut self, dir: &Path, step: u64) -> Result<()> {
        let params = self.model.named_parameters();
        recipe_loop::ensure_finite(params.iter().map(|(n, t)| (n.as_str(), t)), "the model", step)?;
        self.model.save_pretrained(dir, self.tok.eos_id)?;
        self.tok.save_pretrained(dir, Some(self.model.cfg.n_positions))
    }

    fn restore_weights(&mut self, dir: &Path) -> Result<()> {
        let weights = dir.join("model.safetensors");
        self.model.load_hf_state_dict(crate::st::load(&weights)?, &weights)
    }

    /// `<run.dir>/final/`: an HF GPT-2 directory with tokenizer files, a model card and the
    /// training curve ([`crate::card`]).
    fn export_final(&mut self, state: &TrainState) -> Result<()> {
        let info = crate::card::CardInfo {
            model_type: "gpt2".into(),
            architecture: "GPT2LMHeadModel".into(),
            params: Some(self.model.num_params() as i64),
            bf16: self.bf16,
            ..Default::default()
        };
        let recipe = self.recipe.clone();
        let target = recipe_loop::write_staged_dir(&recipe.run.dir, "final", |staged| {
            self.write_weights(staged, state.step)?;
            crate::card::write_final(staged, &recipe, state, &info)
        })?;
        tracing::info!(path = %target.display(), "final model written (transformers: GPT2LMHeadModel.from_pretrained)");
        Ok(())
    }

    fn describe(&mut self) -> Vec<(&'static str, String)> {
        vec![
            ("task", "pretraining".into()),
            ("params", self.model.num_params().to_string()),
            ("vocab", self.model.cfg.vocab_size.to_string()),
            ("train_windows", self.sampler.n_windows.to_string()),
        ]
    }
}

