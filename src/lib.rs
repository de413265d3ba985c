//! rankforge: a Rust training coordinator for transformer models (tch/libtorch).
//!
//! Data flow of one rank: recipe ([`config`]) → tokenizer ([`tokenizer`]) → token cache and
//! sampler ([`data`]) → model ([`models`], optionally with LoRA adapters from [`lora`]) → step
//! (loss, backward, gradient all-reduce across ranks ([`dist`]), clip, [`optim`]) → checkpoints
//! ([`checkpoint`]), metrics ([`metrics`], also as TensorBoard files: [`tensorboard`]) and the
//! Hugging Face export. One loop, the
//! [`engine`], runs every objective; a task in [`tasks`] supplies its data, model and loss
//! (pretraining, full or LoRA fine-tuning of a pretrained model, …), and the blocks every run
//! shares (joining, resume, guards) are in [`recipe_loop`]; [`sweep`] runs a hyperparameter
//! grid of such runs on one job. Each run's export writes a model card ([`card`]) with its
//! training curve ([`curves`]; [`plot`] draws any runs' metrics); [`hub`] uploads to the Hugging Face Hub. [`generate`] samples from a
//! trained model, [`bench`] times steps and collectives. For fine-tuning, [`sft`] turns
//! prompt/completion, chat (through [`chat_template`]), Alpaca and Dolly data into token ids
//! with loss masks. Under `rankforge-launch` a rank joins the job's coordinator and trains its
//! slice of every global batch; without it, it is a world of one.
//!
//! ```no_run
//! use rankforge::config::Recipe;
//! let recipe = Recipe::load("configs/gpt_tiny_pretrain_cpu.toml".as_ref(), &["train.max_steps=5".into()])?;
//! rankforge::tasks::run(recipe, &Default::default())?;
//! # Ok::<(), rankforge::error::Error>(())
//! ```

pub mod bench;
pub mod card;
pub mod chat_template;
pub mod classify;
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod curves;
pub mod data;
pub mod dist;
pub mod device;
pub mod dpo;
pub mod engine;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod hub;
pub mod lora;
pub mod metrics;
pub mod mlm;
pub mod models;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod recipe_loop;
pub mod run_dir;
pub mod sft;
pub mod st;
pub mod sweep;
pub mod tensorboard;
pub mod tokenizer;
pub mod tasks;
