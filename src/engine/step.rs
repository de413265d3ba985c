//! One optimizer step, the same for every objective and for `rankforge bench`:
//! micro-batches → loss → backward → all-reduce → clip → finite check → AdamW.
//!
//! With `train.overlap_grad_reduce` (the default where the gradient hooks are built), the
//! gradient buckets are all-reduced while the last micro-batch's backward runs
//! ([`Dist::reduce_grads_overlapped`]); the earlier micro-batches only accumulate (DDP's
//! `no_sync`). Otherwise they are all-reduced after it ([`Dist::reduce_grads`]): the same bits.

use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::dist::buckets::{Plan, Timing};
use crate::dist::Dist;
use crate::error::Result;
use crate::optim::{clip_grad_norm, AdamW};
use crate::recipe_loop;

/// What a step needs of an objective: the loss of one micro-batch.
pub trait Objective {
    /// One micro-batch of this rank's share of the global batch (its examples, or tensors).
    type Micro;

    /// The micro-batch's share of the global batch loss: its loss *sum* divided by the global
    /// batch's denominator (examples, or trained tokens), computed under autocast when
    /// `bf16`. Summed over micro-batches and ranks, these give the global batch mean, however
    /// the batch is split.
    fn micro_loss(&self, m: &Self::Micro, bf16: bool, train: bool) -> Result<Tensor>;

    /// [`Objective::micro_loss`] with further sums of the micro-batch beside it (an
    /// objective's metrics, e.g. DPO's rewards: always the same number of them), which the
    /// step adds over micro-batches and ranks with the loss ([`StepOutcome::sums`]). Default:
    /// none.
    fn micro_loss_sums(&self, m: &Self::Micro, bf16: bool, train: bool) -> Result<(Tensor, Vec<f64>)> {
        Ok((self.micro_loss(m, bf16, train)?, Vec::new()))
    }

    /// Gradients of trainable tensors the loss did not reach (e.g. an unused embedding) are
    /// `None`; they are zeroed so that every rank all-reduces the same tensors.
    fn zero_null_grads(&self) {}
}

/// What one optimizer step returns.
pub struct StepOutcome {
    /// The global batch's mean loss (all ranks).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The objective's further sums ([`Objective::micro_loss_sums`]) over the global batch.
    pub sums: Vec<f64>,
    /// Some rank was asked (by the coordinator's CHECKPOINT command) to checkpoint: every rank
    /// learns it in the same step, through the gradient all-reduce.
    pub checkpoint_requested: bool,
    /// Some rank was asked to stop (STOP: preemption): checkpoint here, then exit.
    pub stop_requested: bool,
    /// The gradient all-reduce's time, and the part of it not hidden behind backward.
    pub reduce: Timing,
}

/// One optimizer step over this rank's micro-batches `(micro-batch, seed)`: each micro-batch's
/// randomness (dropout) is seeded with its seed ([`recipe_loop::micro_seed`]), its loss share
/// is back-propagated, the trainable tensors' gradients (those `opt` holds) and the
/// coordinator's flags are summed over ranks, clipped, and AdamW updates them unless the loss
/// or the gradient is not finite (every rank decides alike: it sees the same sums).
pub fn step<O: Objective>(
    obj: &O,
    opt: &mut AdamW,
    micro_batches: impl IntoIterator<Item = (O::Micro, i64)>,
    device: Device,
    cfg: &TrainConfig,
    lr: f64,
    bf16: bool,
    dist: &mut Dist,
) -> Result<StepOutcome> {
    opt.zero_grad();
    let overlap = cfg.overlap_grad_reduce();
    let mut total = Tensor::zeros([], (Kind::Float, device));
    let mut extra: Vec<f64> = Vec::new();
    let mut last: Option<Tensor> = None;
    let mut micro_batches = micro_batches.into_iter().peekable();
    while let Some((m, seed)) = micro_batches.next() {
        tch::manual_seed(seed);
        let (loss, more) = obj.micro_loss_sums(&m, bf16, true)?;
        total += loss.detach().to_kind(Kind::Float);
        extra.resize(more.len().max(extra.len()), 0.0);
        extra.iter_mut().zip(more).for_each(|(a, b)| *a += b);
        match overlap && micro_batches.peek().is_none() {
            true => last = Some(loss), // backward with the all-reduce, below
            false => loss.backward(),
        }
    }
    // The sums travel in the last bucket: all known before the last backward.
    let [checkpoint, stop] = recipe_loop::take_flags(dist);
    let mut sums = vec![total.double_value(&[]), checkpoint, stop];
    sums.extend(&extra);
    let plan = Plan::new(opt.named_params(), cfg.bucket_cap_bytes());
    let reduce = match overlap {
        true => dist.reduce_grads_overlapped(&plan, &mut sums, || last.map_or(Ok(()), |l| l.f_backward()))?,
        false => {
            dist.status.set_phase(rankforge_proto::Phase::Collective);
            dist.reduce_grads(&plan, &mut sums)?
        }
    };
    dist.status.set_phase(rankforge_proto::Phase::Compute);
    // After the all-reduce (elementwise, so zeroing before or after gives the same sums).
    obj.zero_null_grads();
    let loss = sums[0];
    let grad_norm = clip_grad_norm(opt.params(), cfg.grad_clip);
    if loss.is_finite() && grad_norm.is_finite() {
        opt.step(lr)?;
    }
    Ok(StepOutcome { loss, grad_norm, sums: sums.split_off(3), checkpoint_requested: sums[1] > 0.0, stop_requested: sums[2] > 0.0, reduce })
}
