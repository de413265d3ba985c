//! Masked-language-model data outside the model: its recipe slices ([`config`]), the reader
//! ([`data`]: texts → token ids with the tokenizer's special tokens, optionally packed into
//! blocks, and a validation split) and the collator ([`mask`]: transformers'
//! `DataCollatorForLanguageModeling` masking with a per-example seed, and padding). The
//! training task calls [`data::load`] once, then [`mask::mask`] on each example with
//! [`mask::example_seed`]`(seed, epoch, index)` and [`mask::collate`] on a micro-batch; the
//! heads and `fill-mask` are [`crate::models`]'.
//!
//! ```no_run
//! use rankforge::mlm::{config::*, data, mask};
//! let cfg: MaskedLmDataConfig = toml::from_str("train = \"corpus/*.txt\"\nmax_length = 128").unwrap();
//! let task = MaskedLmTaskConfig::default();
//! let tok = rankforge::tokenizer::LoadedTokenizer::load("models/bert".as_ref())?;
//! let d = data::load(&cfg, &tok, 0)?;
//! let masked: Vec<_> = (0..8u64)
//!     .map(|i| mask::mask(&d.train[i as usize], &d.special, &task, d.mask_id, d.vocab_size, mask::example_seed(0, 0, i)))
//!     .collect();
//! let (input_ids, attention_mask, labels) = mask::collate(&masked, d.pad_id);
//! # Ok::<(), rankforge::error::Error>(())
//! ```

pub mod config;
pub mod data;
pub mod mask;

pub use config::{MaskedLmDataConfig, MaskedLmTaskConfig};
pub use data::{load, MlmData, MlmStats};
pub use mask::{collate, example_seed, mask};
