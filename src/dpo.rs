//! Direct preference optimisation (TRL's `DPOTrainer`): [`loss`] computes the per-sequence
//! log-probs, the losses and TRL's metrics of a preference batch.

pub mod loss;
