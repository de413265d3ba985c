//! DPO's losses and metrics, as TRL 1.16's `DPOTrainer._compute_loss` computes them
//! (`f_divergence_type = "reverse_kl"`, no WPO weighting, `ld_alpha = None`, one loss type).
//!
//! A batch is TRL's `DataCollatorForPreference` output: `input_ids`, `completion_mask`
//! `[2B, T]`, the B chosen rows first, then the B rejected rows, right-padded. The flow:
//!
//! 1. [`sequence_logps`] (from the logits) or [`sequence_logps_from_hidden`] (from the final
//!    hidden states and an LM head, projecting only the scored positions) → [`SeqStats`]: per
//!    sequence, the summed log-probability of its completion tokens (logits at `t` predict token
//!    `t + 1`, scored where `completion_mask[:, 1:]` is set), in fp32 whatever the model's dtype.
//!    This is what TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`,
//!    `trl.kernels.ChunkedLogProbFunction`) returns as `log_probs`, and `mean_logits` (the mean
//!    over the vocabulary of each scored position's logits, no gradient) summed per sequence.
//! 2. [`DpoLoss::pair_losses`] with the reference model's log-probs (live or precomputed) →
//!    [`PairOut`]: the per-pair losses and the [`MetricSums`] of the pairs.
//! 3. [`MetricSums`] add over micro-batches and ranks (as plain f64s, [`MetricSums::to_vec`]);
//!    [`MetricSums::metrics`] gives TRL's logged values for the pooled global batch.
//!
//! Formulas (Δc = log π(c) − log π_ref(c), Δr likewise, Δ = Δc − Δr):
//! sigmoid −log σ(βΔ); hinge relu(1 − βΔ); ipo (Δc/|c| − Δr/|r| − 1/(2β))² with |·| the
//! completion-mask length (clamped to ≥ 1); robust (−(1−ε) log σ(βΔ) + ε log σ(−βΔ)) / (1 − 2ε).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The DPO loss variants (TRL's `loss_type`), spelled in recipes as TRL spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// −log σ(βΔ) (the DPO paper; no label smoothing, as in current TRL).
    #[default]
    Sigmoid,
    /// (Δc/|c| − Δr/|r| − 1/(2β))², per-token normalised (IPO).
    Ipo,
    /// relu(1 − βΔ) (SLiC).
    Hinge,
    /// Robust DPO: (−(1−ε) log σ(βΔ) + ε log σ(−βΔ)) / (1 − 2ε), ε = `label_smoothing`.
    Robust,
}

impl LossType {
    pub const ALL: [LossType; 4] = [LossType::Sigmoid, LossType::Ipo, LossType::Hinge, LossType::Robust];

    /// The recipe / TRL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LossType::Sigmoid => "sigmoid",
            LossType::Ipo => "ipo",
            LossType::Hinge => "hinge",
            LossType::Robust => "robust",
        }
    }
}

/// Per-sequence statistics of a `[2B, T]` batch (chosen rows first), all fp32 `[2B]`.
#[derive(Debug)]
pub struct SeqStats {
    /// Sum of the completion tokens' log-probabilities (differentiable).
    pub logps: Tensor,
    /// Number of scored tokens: `completion_mask[:, 1:]` summed (the first token is never
    /// predicted). The `logits/*` metrics are weighted by it.
    pub tokens: Tensor,
    /// `completion_mask` summed (TRL's IPO length: it counts a completion token at position 0,
    /// which an empty prompt gives, although that token is never scored).
    pub completion_len: Tensor,
    /// Sum over the scored positions of the mean logit over the vocabulary (no gradient).
    pub logit_sums: Tensor,
}

impl SeqStats {
    /// The number of pairs B.
    pub fn pairs(&self) -> i64 {
        self.logps.size()[0] / 2
    }

    /// `(chosen, rejected)` log-probs, `[B]` each: what a reference model contributes to
    /// [`DpoLoss::pair_losses`] (or what `precompute_ref` stores).
    pub fn chosen_rejected(&self) -> (Tensor, Tensor) {
        halves(&self.logps)
    }
}

/// Rows `[0, n/2)` and `[n/2, n)` of `t`.
fn halves(t: &Tensor) -> (Tensor, Tensor) {
    let b = t.size()[0] / 2;
    (t.narrow(0, 0, b), t.narrow(0, b, b))
}

/// The scored positions of a batch: flat indices `r·T + t` of the positions whose next token
/// `t + 1` is a completion token (`completion_mask[r, t + 1] != 0`), in row-major order, and
/// that mask `[2B, T-1]`.
fn scored_positions(completion_mask: &Tensor) -> (Tensor, Tensor) {
    let (rows, t) = completion_mask.size2().expect("completion_mask is [2B, T]");
    assert!(rows % 2 == 0, "a DPO batch has 2B rows (chosen, then rejected), got {rows}");
    let next = completion_mask.narrow(1, 1, t - 1).ne(0); // [2B, T-1]
    let full = Tensor::cat(&[&next, &next.zeros_like().narrow(1, 0, 1)], 1); // [2B, T]: column T-1 never scored
    (full.reshape([-1]).nonzero().squeeze_dim(1), next)
}

/// [`SeqStats`] from the logits `[2B, T, V]` (any float dtype) of the batch `input_ids`
/// `[2B, T]` with its `completion_mask` `[2B, T]`. Only the scored positions' logits are
/// upcast and normalised (a `[N, V]` fp32 copy, N = scored tokens), no one-hot.
pub fn sequence_logps(logits: &Tensor, input_ids: &Tensor, completion_mask: &Tensor) -> SeqStats {
    let v = logits.size()[2];
    assert_eq!(logits.size()[..2], input_ids.size()[..], "logits and input_ids disagree on [2B, T]");
    let (index, mask) = scored_positions(completion_mask);
    let selected = logits.reshape([-1, v]).index_select(0, &index); // [N, V]
    from_selected(&selected, input_ids, completion_mask, &index, &mask)
}

/// [`SeqStats`] from the final hidden states `[2B, T, H]` and the LM head `head` (`[N, H]` →
/// `[N, V]`, e.g. `|x| x.linear(&lm_head_weight, None)`): only the N scored positions are
/// projected, so the `[2B, T, V]` logits are never built (TRL's fused LM head does the same).
/// Equal to [`sequence_logps`] on `head(hidden)`, gradients included.
pub fn sequence_logps_from_hidden(hidden: &Tensor, head: impl Fn(&Tensor) -> Tensor, input_ids: &Tensor, completion_mask: &Tensor) -> SeqStats {
    let h = hidden.size()[2];
    assert_eq!(hidden.size()[..2], input_ids.size()[..], "hidden states and input_ids disagree on [2B, T]");
    let (index, mask) = scored_positions(completion_mask);
    let selected = head(&hidden.reshape([-1, h]).index_select(0, &index)); // [N, V]
    from_selected(&selected, input_ids, completion_mask, &index, &mask)
}

/// The statistics from the logits `[N, V]` of the scored positions `index` (flat `r·T + t`).
fn from_selected(selected: &Tensor, input_ids: &Tensor, completion_mask: &Tensor, index: &Tensor, mask: &Tensor) -> SeqStats {
    let v = selected.size()[1];
    let z = selected.to_kind(Kind::Float);
    let targets = input_ids.reshape([-1]).index_select(0, &(index + 1)).to_kind(Kind::Int64); // token t + 1
    let token_logps = z.log_softmax(-1, Kind::Float).gather(1, &targets.unsqueeze(1), false).squeeze_dim(1); // [N]
    // Back to [2B, T-1] with zeros elsewhere, then summed per row, as TRL sums its per-token tensor.
    let per_row = |per_token: &Tensor| mask.zeros_like().to_kind(Kind::Float).masked_scatter(mask, per_token).sum_dim_intlist(1, false, Kind::Float);
    let logit_sums = tch::no_grad(|| per_row(&(z.sum_dim_intlist(-1, false, Kind::Float) / v as f64)));
    SeqStats {
        logps: per_row(&token_logps),
        tokens: mask.sum_dim_intlist(1, false, Kind::Float),
        completion_len: completion_mask.ne(0).sum_dim_intlist(1, false, Kind::Float),
        logit_sums,
    }
}

/// The loss of a DPO run. The recipe checks `beta > 0` and `0 ≤ label_smoothing < 0.5`;
/// `label_smoothing` only acts under [`LossType::Robust`] (as in TRL).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoLoss {
    pub beta: f64,
    pub loss_type: LossType,
    pub label_smoothing: f64,
}

impl Default for DpoLoss {
    /// TRL's defaults: sigmoid, β = 0.1.
    fn default() -> Self {
        DpoLoss { beta: 0.1, loss_type: LossType::Sigmoid, label_smoothing: 0.0 }
    }
}

/// The per-pair results of [`DpoLoss::pair_losses`].
#[derive(Debug)]
pub struct PairOut {
    /// The loss of each pair `[B]`, fp32, differentiable through the policy's log-probs.
    pub losses: Tensor,
    /// β·Δc and β·Δr `[B]` (detached): `rewards/chosen`, `rewards/rejected` per pair.
    pub chosen_rewards: Tensor,
    pub rejected_rewards: Tensor,
    /// These pairs' contribution to the logged metrics.
    pub sums: MetricSums,
}

impl PairOut {
    /// This micro-batch's share of the global batch's mean loss: Σ losses / `global_pairs`
    /// (summed over micro-batches and ranks, the mean over the pairs of the global batch).
    pub fn loss_share(&self, global_pairs: usize) -> Tensor {
        self.losses.sum(Kind::Float) / global_pairs as f64
    }
}

impl DpoLoss {
    /// The losses and metric sums of B pairs: `policy` from the policy's forward, `ref_chosen`
    /// and `ref_rejected` `[B]` the reference model's summed log-probs (detached or not: no
    /// gradient is taken through them).
    pub fn pair_losses(&self, policy: &SeqStats, ref_chosen: &Tensor, ref_rejected: &Tensor) -> PairOut {
        let (chosen, rejected) = policy.chosen_rejected();
        let chosen_ratio = &chosen - ref_chosen.detach().to_kind(Kind::Float);
        let rejected_ratio = &rejected - ref_rejected.detach().to_kind(Kind::Float);
        let losses = self.losses(&chosen_ratio, &rejected_ratio, &policy.completion_len);
        let chosen_rewards = chosen_ratio.detach() * self.beta;
        let rejected_rewards = rejected_ratio.detach() * self.beta;
        let sums = MetricSums::of(&losses, (&chosen_rewards, &rejected_rewards), policy);
        PairOut { losses, chosen_rewards, rejected_rewards, sums }
    }

    /// The per-pair loss from the log-ratios Δc, Δr `[B]` (TRL's `_compute_loss`).
    fn losses(&self, chosen_ratio: &Tensor, rejected_ratio: &Tensor, completion_len: &Tensor) -> Tensor {
        let (beta, eps) = (self.beta, self.label_smoothing);
        let scaled = (chosen_ratio - rejected_ratio) * beta; // βΔ
        match self.loss_type {
            LossType::Sigmoid => -scaled.log_sigmoid(),
            LossType::Hinge => (-scaled + 1.0).relu(),
            LossType::Ipo => {
                let (len_c, len_r) = halves(completion_len);
                let delta = chosen_ratio / len_c.clamp_min(1.0) - rejected_ratio / len_r.clamp_min(1.0);
                (delta - 1.0 / (2.0 * beta)).square()
            }
            LossType::Robust => (scaled.log_sigmoid() * -(1.0 - eps) + (-&scaled).log_sigmoid() * eps) / (1.0 - 2.0 * eps),
        }
    }
}

/// Sums over pairs (and tokens) that give TRL's metrics for any union of micro-batches and
/// ranks: add them (as f64s), then [`MetricSums::metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricSums {
    pub loss: f64,
    pub chosen_rewards: f64,
    pub rejected_rewards: f64,
    /// Pairs whose chosen reward is strictly greater than the rejected one.
    pub accuracies: f64,
    pub margins: f64,
    pub chosen_logps: f64,
    pub rejected_logps: f64,
    /// Σ over scored chosen tokens of the mean logit, and those tokens' number.
    pub chosen_logits: f64,
    pub chosen_tokens: f64,
    pub rejected_logits: f64,
    pub rejected_tokens: f64,
    pub pairs: f64,
}

impl MetricSums {
    /// The number of f64s of [`MetricSums::to_vec`].
    pub const LEN: usize = 12;

    /// The sums of B pairs, copied to the host in one transfer.
    fn of(losses: &Tensor, (chosen_rewards, rejected_rewards): (&Tensor, &Tensor), policy: &SeqStats) -> MetricSums {
        let sum = |t: &Tensor| t.detach().to_kind(Kind::Double).sum(Kind::Double);
        let (chosen, rejected) = policy.chosen_rejected();
        let (logits_c, logits_r) = halves(&policy.logit_sums);
        let (tokens_c, tokens_r) = halves(&policy.tokens);
        let parts = [
            sum(losses),
            sum(chosen_rewards),
            sum(rejected_rewards),
            sum(&chosen_rewards.gt_tensor(rejected_rewards)),
            sum(&(chosen_rewards - rejected_rewards)),
            sum(&chosen),
            sum(&rejected),
            sum(&logits_c),
            sum(&tokens_c),
            sum(&logits_r),
            sum(&tokens_r),
            Tensor::from(policy.pairs() as f64).to_device(losses.device()),
        ];
        let host = Tensor::stack(&parts, 0).to_device(tch::Device::Cpu);
        let values: Vec<f64> = Vec::<f64>::try_from(&host).expect("a CPU f64 vector converts");
        MetricSums::from_vec(&values)
    }

    /// The sums as [`MetricSums::LEN`] f64s, in field order (for an all-reduce).
    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.loss,
            self.chosen_rewards,
            self.rejected_rewards,
            self.accuracies,
            self.margins,
            self.chosen_logps,
            self.rejected_logps,
            self.chosen_logits,
            self.chosen_tokens,
            self.rejected_logits,
            self.rejected_tokens,
            self.pairs,
        ]
    }

    /// The inverse of [`MetricSums::to_vec`]; `v` has [`MetricSums::LEN`] values.
    pub fn from_vec(v: &[f64]) -> MetricSums {
        assert_eq!(v.len(), Self::LEN, "MetricSums::from_vec takes {} values", Self::LEN);
        MetricSums {
            loss: v[0],
            chosen_rewards: v[1],
            rejected_rewards: v[2],
            accuracies: v[3],
            margins: v[4],
            chosen_logps: v[5],
            rejected_logps: v[6],
            chosen_logits: v[7],
            chosen_tokens: v[8],
            rejected_logits: v[9],
            rejected_tokens: v[10],
            pairs: v[11],
        }
    }

    /// TRL's metrics of the pooled pairs, under TRL's names (prefix `val_` at evaluation):
    /// means over pairs, `logits/*` over scored tokens. 0 where nothing was counted.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let ratio = |a: f64, n: f64| if n > 0.0 { a / n } else { 0.0 };
        let per_pair = |a: f64| ratio(a, self.pairs);
        vec![
            ("loss", per_pair(self.loss)),
            ("rewards/chosen", per_pair(self.chosen_rewards)),
            ("rewards/rejected", per_pair(self.rejected_rewards)),
            ("rewards/accuracies", per_pair(self.accuracies)),
            ("rewards/margins", per_pair(self.margins)),
            ("logps/chosen", per_pair(self.chosen_logps)),
            ("logps/rejected", per_pair(self.rejected_logps)),
            ("logits/chosen", ratio(self.chosen_logits, self.chosen_tokens)),
            ("logits/rejected", ratio(self.rejected_logits, self.rejected_tokens)),
        ]
    }
}

impl std::ops::AddAssign for MetricSums {
    fn add_assign(&mut self, other: MetricSums) {
        let sum: Vec<f64> = self.to_vec().iter().zip(other.to_vec()).map(|(a, b)| a + b).collect();
        *self = MetricSums::from_vec(&sum);
    }
}

#[cfg(test)]
#[path = "loss_tests.rs"]
mod tests;
