//! The two losses of `rankforge evaluate` on a causal LM.
//!
//! **Strided perplexity** of a token stream, as transformers' perplexity guide computes it
//! (<https://huggingface.co/docs/transformers/perplexity>): windows of `max_length` tokens
//! starting every `stride` tokens; in each, only the tokens not scored by the previous window
//! are targets (the first `max_length - trg_len` labels are -100), so every token is predicted
//! once with up to `max_length - stride` tokens of context. Each window's mean loss is weighted
//! by the guide's `num_valid_tokens - batch_size` (its targets less one, for the label shift),
//! the total divided by the sum of those weights, and the perplexity is `exp` of that. (After
//! the first window the label shift drops no target, so a window's weight is one less than the
//! tokens it scores: that is the guide's number, kept so the two agree.)
//!
//! **Completion loss** of fine-tuning examples: the summed cross-entropy over the label tokens
//! (the completion, as fine-tuning masks it) divided by their number, as training's
//! `val_loss`.

use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::sft::{self, Example, IGNORE};

/// A loss and the tokens it is a mean over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    pub loss: f64,
    pub tokens: u64,
}

/// The window and stride of strided perplexity.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub max_length: usize,
    pub stride: usize,
}

/// Strided perplexity's loss of `ids` (see the module docs).
pub fn strided(model: &CausalLm, ids: &[u32], w: Windows) -> Result<Loss> {
    let device = model.vs().device();
    let seq_len = ids.len();
    if seq_len < 2 {
        return Err(Error::Input(format!("--data: the text is {seq_len} token(s); perplexity needs at least 2")));
    }
    let (mut nll_sum, mut n_tokens, mut prev_end) = (0.0f64, 0u64, 0usize);
    let _guard = tch::no_grad_guard();
    for begin in (0..seq_len).step_by(w.stride) {
        let end = (begin + w.max_length).min(seq_len);
        let trg_len = end - prev_end;
        let window: Vec<i64> = ids[begin..end].iter().map(|&i| i64::from(i)).collect();
        let masked = window.len() - trg_len;
        let labels: Vec<i64> = window.iter().enumerate().map(|(i, &id)| if i < masked { IGNORE } else { id }).collect();
        // Targets the shifted loss scores: labels 1.. that are not -100.
        let scored = labels.iter().skip(1).filter(|&&l| l != IGNORE).count();
        let weight = trg_len as u64 - 1; // the guide's num_valid_tokens - batch_size
        if scored > 0 && weight > 0 {
            let input = Tensor::from_slice(&window).to_device(device).unsqueeze(0);
            let labels = Tensor::from_slice(&labels).to_device(device).unsqueeze(0);
            let sum = model.loss_sum(&input, &labels, false).to_device(Device::Cpu).double_value(&[]);
            nll_sum += sum / scored as f64 * weight as f64;
            n_tokens += weight;
        }
        prev_end = end;
        if end == seq_len {
            break;
        }
    }
    Ok(Loss { loss: nll_sum / n_tokens as f64, tokens: n_tokens })
}

/// Label tokens of an example the shifted loss scores (position 0 is never a target).
pub fn label_tokens(e: &Example) -> u64 {
    e.labels.iter().skip(1).filter(|&&l| l != IGNORE).count() as u64
}

/// The token-weighted mean completion loss of `examples`, `batch_size` at a time
/// (right-padded with `pad_id`).
pub fn completion_loss(model: &CausalLm, examples: &[&Example], pad_id: i64, batch_size: usize) -> Result<Loss> {
    let device = model.vs().device();
    let (mut sum, mut tokens) = (0.0f64, 0u64);
    let _guard = tch::no_grad_guard();
    for chunk in examples.chunks(batch_size.max(1)) {
        let (ids, labels, _mask) = sft::collate(chunk, pad_id);
        let (ids, labels) = (ids.to_device(device), labels.to_device(device));
        sum += model.loss_sum(&ids, &labels, false).to_device(Device::Cpu).double_value(&[]);
        tokens += chunk.iter().map(|e| label_tokens(e)).sum::<u64>();
    }
    if tokens == 0 {
        return Err(Error::Input("--data: no completion token to score (every row's completion is empty or cut off)".into()));
    }
    Ok(Loss { loss: sum / tokens as f64, tokens })
}
