//! rankforge's integration tests, compiled into one binary (it links libtorch once).
//! They run the real `rankforge` binary on a slice of the bundled corpus with a tiny model
//! (2 layers, 64 dims); the Python conformance checks use the venv from scripts/setup.sh.

mod bad_input;
mod cls_heads;
mod classify;
mod classify_train;
mod common;
mod dist;
mod dpo_data;
mod dpo_loss;
mod dpo_train;
mod dpo_trl;
mod encoders;
mod finetune;
mod generate;
mod gpu_ready;
mod hf;
mod hf_models;
mod hub_push;
mod hub_server;
mod hub_server_proof;
mod lm_eval;
mod lora;
mod metrics;
mod mlm_data;
mod mlm_heads;
mod mlm_train;
mod model_card;
mod overlap;
mod plot;
mod procs;
mod safety;
mod sft;
mod sweep;
mod sweep_hub;
mod tensorboard;
mod text_metrics;
mod tokenizer;
mod train;
