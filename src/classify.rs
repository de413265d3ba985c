//! Sequence classification outside the training loop: its recipe slices ([`config`]), the data
//! reader ([`data`]: rows → token ids and targets, with [`labels`] and [`encode`]), and the
//! `rankforge evaluate` ([`evaluate`]) and `rankforge predict` ([`predict`]) commands on a
//! classifier directory ([`model`]). The training task calls [`data::load`] and
//! [`data::collate`]; the model and its loss are [`crate::models::heads`]'s.
//!
//! ```no_run
//! use rankforge::classify::{config::*, data};
//! let cfg: ClassificationDataConfig = toml::from_str("train = \"reviews.jsonl\"").unwrap();
//! let tok = rankforge::tokenizer::LoadedTokenizer::load("models/bert".as_ref())?;
//! let d = data::load(&cfg, &ClassificationTaskConfig::default(), &tok, 0)?;
//! let batch: Vec<&data::ClsExample> = d.train.iter().take(8).collect();
//! let (ids, attention_mask, token_type_ids, labels) = data::collate(&batch, tok.pad_id.unwrap_or(0) as i64);
//! # Ok::<(), rankforge::error::Error>(())
//! ```

pub mod config;
pub mod data;
pub mod encode;
pub mod evaluate;
pub mod labels;
pub mod model;
pub mod predict;

pub use config::{ClassificationDataConfig, ClassificationTaskConfig, ProblemTypeName};
pub use data::{collate, load, ClsData, ClsExample, ClsStats};
pub use labels::{ClsLabel, LabelSpace};
