//! `rankforge generate`: autoregressive sampling with a KV cache from any [`CausalLm`] (GPT-2,
//! Llama, Mistral, Qwen2; with or without LoRA adapters), streamed to the caller. Also the
//! greedy samples of fine-tuning's evaluation.
//!
//! Per token: repetition penalty (HF/CTRL style: positive logits of seen tokens divided by
//! `r`, negative ones multiplied), then temperature 0 → greedy argmax, else logits / T, top-k,
//! top-p (nucleus) and a draw seeded by `seed`. Generation stops at an end-of-sequence token
//! (the tokenizer's EOS and config.json's `eos_token_id`s), at `max_new_tokens`, or when
//! GPT-2's learned position table (`n_positions`) is full (RoPE models have no such limit).

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::chat_template::ChatMessage;
use crate::models::{CausalLm, KvCache};
use crate::tokenizer::LoadedTokenizer;

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl GenOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Input(m.to_string()));
        if !(self.temperature >= 0.0) {
            return bad("--temperature must be >= 0 (0 is greedy)");
        }
        if self.top_k == Some(0) {
            return bad("--top-k must be at least 1");
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return bad("--top-p must be in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0) {
            return bad("--repetition-penalty must be > 0 (1 = off)");
        }
        Ok(())
    }
}

/// The result of a generation.
pub struct Generated {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    /// Why generation stopped: "eos", "max_new_tokens" or "context".
    pub stop: &'static str,
}

/// The prompt's token ids. With `chat` the prompt is wrapped as one user message and rendered
/// with the tokenizer's chat template (`add_generation_prompt`; the template writes the special
/// tokens); otherwise it is tokenized as `tokenizer(prompt)` does (with BOS where the tokenizer
/// adds one).
pub fn prompt_ids(tok: &LoadedTokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if chat {
        let messages = [ChatMessage { role: "user".into(), content: prompt.into() }];
        let text = tok.apply_chat_template(&messages, true)?;
        return tok.encode(&text);
    }
    tok.encode_with_special(prompt)
}

/// The ids that end generation: the tokenizer's EOS and the model's `eos_token_id`s.
pub fn stop_ids(model: &CausalLm, tok: &LoadedTokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = tok.eos_id.into_iter().chain(model.eos_token_ids()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Generates a continuation of `prompt_ids`, calling `on_text` with each newly decoded piece;
/// stops after a token of `stop`.
pub fn generate(
    model: &CausalLm,
    tok: &LoadedTokenizer,
    mut prompt_ids: Vec<u32>,
    opts: &GenOptions,
    stop: &[u32],
    mut on_text: impl FnMut(&str),
) -> Result<Generated> {
    opts.validate()?;
    let _guard = tch::no_grad_guard();
    let ctx = model.hard_context().unwrap_or(usize::MAX);
    if prompt_ids.is_empty() {
        let start = tok.bos_id.or(tok.eos_id);
        prompt_ids.push(start.ok_or_else(|| Error::Input("the prompt is empty and the tokenizer has no BOS or end-of-text token to start from".into()))?);
    }
    if prompt_ids.len() > ctx {
        return Err(Error::Input(format!(
            "the prompt is {} tokens, longer than the model's context of {ctx} tokens (config.json n_positions)",
            prompt_ids.len()
        )));
    }
    tch::manual_seed(opts.seed as i64);
    let device = model.vs().device();
    let mut all: Vec<i64> = prompt_ids.iter().map(|&i| i as i64).collect();
    let mut cache = KvCache::default();
    let input = Tensor::from_slice(&all).to_device(device).unsqueeze(0); // (1, T)
    let mut logits = last_logits(model, &input, &mut cache);
    let (mut ids, mut printed, mut why) = (Vec::new(), 0usize, "max_new_tokens");
    for _ in 0..opts.max_new_tokens {
        if logits.isfinite().logical_not().any().int64_value(&[]) != 0 {
            return Err(Error::Input(format!(
                "the model's logits are not finite (NaN or infinity) after {} token(s): its weights are damaged or diverged",
                all.len()
            )));
        }
        let next = choose(&logits, &all, opts);
        ids.push(next as u32);
        all.push(next);
        let text = tok.decode(&ids)?;
        // A byte-level token may end inside a UTF-8 character: wait for the rest.
        if !text.ends_with('\u{FFFD}') && text.len() > printed {
            on_text(&text[printed..]);
            printed = text.len();
        }
        if stop.contains(&(next as u32)) {
            why = "eos";
            break;
        }
        if all.len() >= ctx {
            why = "context";
            break;
        }
        let input = Tensor::from_slice(&[next]).to_device(device).unsqueeze(0); // (1, 1)
        logits = last_logits(model, &input, &mut cache);
    }
    let text = tok.decode(&ids)?;
    if text.len() > printed {
        on_text(&text[printed..]);
    }
    Ok(Generated { prompt_ids, ids, text, stop: why })
}

/// fp32 CPU logits `(V)` of the last position.
fn last_logits(model: &CausalLm, input: &Tensor, cache: &mut KvCache) -> Tensor {
    let logits = model.forward(input, false, Some(cache)); // (1, T, V)
    logits.get(0).get(-1).to_kind(Kind::Float).to_device(tch::Device::Cpu)
}

/// Picks the next token from `logits` (V) given the tokens so far.
fn choose(logits: &Tensor, seen: &[i64], opts: &GenOptions) -> i64 {
    let mut logits = logits.shallow_clone();
    if opts.repetition_penalty != 1.0 {
        let idx = Tensor::from_slice(seen);
        let s = logits.gather(0, &idx, false);
        let r = opts.repetition_penalty;
        let penalised = (&s * r).where_self(&s.lt(0.0), &(&s / r)); // where(s < 0, s·r, s/r)
        logits = logits.scatter(0, &idx, &penalised);
    }
    if opts.temperature == 0.0 {
        return logits.argmax(0, false).int64_value(&[]);
    }
    logits = logits / opts.temperature;
    let vocab = logits.size()[0];
    if let Some(k) = opts.top_k.filter(|&k| (k as i64) < vocab) {
        let (top, _) = logits.topk(k as i64, 0, true, true);
        let threshold = top.get(k as i64 - 1);
        logits = logits.masked_fill(&logits.lt_tensor(&threshold), f64::NEG_INFINITY);
    }
    if let Some(p) = opts.top_p.filter(|&p| p < 1.0) {
        let (sorted, order) = logits.sort(0, true);
        let probs = sorted.softmax(0, Kind::Float);
        // Drop a token when the tokens ranked above it already cover `p`; the first stays.
        let above = probs.cumsum(0, Kind::Float) - &probs;
        let drop_sorted = above.gt(p);
        let drop = drop_sorted.scatter(0, &order, &drop_sorted);
        logits = logits.masked_fill(&drop, f64::NEG_INFINITY);
    }
    logits.softmax(0, Kind::Float).multinomial(1, false).int64_value(&[0])
}
