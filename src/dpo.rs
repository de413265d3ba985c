//! DPO (direct preference optimisation), as TRL's `DPOTrainer` defines it: the recipe slices ([`config`]: `[task]` β, loss and reference; `[data]` where the
//! preference rows are), the reader ([`data`]: standard, conversational and implicit-prompt
//! rows → prompt / chosen / rejected token ids, TRL's `_prepare_dataset`) and the collator
//! ([`collate`]: chosen then rejected rows, `keep_start` truncation, right padding, TRL's
//! `DataCollatorForPreference`) and [`loss`] (the per-sequence log-probs, the losses and TRL's
//! metrics of a preference batch). The training task (`crate::tasks::dpo`) calls
//! [`data::load`] once, then [`collate::collate`] and [`loss`] on each micro-batch of pairs.
//!
//! ```no_run
//! use rankforge::dpo::{collate, data, DpoDataConfig};
//! let cfg: DpoDataConfig = toml::from_str("train = \"prefs.jsonl\"\nmax_length = 512").unwrap();
//! let tok = rankforge::tokenizer::LoadedTokenizer::load("models/llama".as_ref())?;
//! let d = data::load(&cfg, &tok, 0)?;
//! tracing::info!("DPO data: {}", d.stats);
//! let micro: Vec<&data::Pair> = d.train.iter().take(4).collect();
//! let batch = collate::collate(&micro, d.pad_id, Some(cfg.max_length));
//! assert_eq!(batch.input_ids.size()[0], 8); // 4 chosen rows, then 4 rejected rows
//! # Ok::<(), rankforge::error::Error>(())
//! ```

pub mod collate;
pub mod config;
pub mod data;
pub mod loss;

pub use collate::{collate, PrefBatch};
pub use config::{DpoDataConfig, DpoLossType, DpoTaskConfig};
pub use data::{load, DpoData, DpoStats, Pair};
