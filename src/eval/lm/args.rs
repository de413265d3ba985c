//! The flags of `rankforge evaluate` and its dispatch: a causal LM directory (or an adapter of
//! one, [`super::model::detect`]) gets [`super::evaluate`]; anything else the classifier report
//! ([`crate::classify::evaluate`]), unchanged. Flags of the other kind are refused by name.

use std::path::PathBuf;

use crate::config::DeviceChoice;
use crate::error::{Error, Result};
use crate::generate::GenOptions;

use super::model::{self, ModelKind};
use super::{GenerateOptions, LmOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// A *ForSequenceClassification directory (final/, final/merged/, a Hugging Face model) or
    /// a PEFT adapter directory (applied on its base_model_name_or_path); or a causal LM
    /// (GPT-2, Llama, Mistral, Qwen2: final/, final/merged/, a checkpoint, a Hugging Face
    /// model, a LoRA adapter of one), scored by loss and perplexity (docs/evaluate.md).
    #[arg(long)]
    pub model: PathBuf,
    /// Causal LM: a PEFT LoRA adapter directory to apply on top of --model, as generate.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Classifier: labelled rows (JSON, JSONL, CSV, Parquet, a folder, a glob or a
    /// save_to_disk directory: a DatasetDict's --split); labels must be names (or ids) of the
    /// model's id2label. Causal LM: text rows or .txt files (perplexity), or prompt/completion,
    /// messages, alpaca or dolly rows (completion loss; references for --generate).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// The DatasetDict split to read (default: validation, else test).
    #[arg(long)]
    pub split: Option<String>,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Classifier: the field of a second text (sentence pairs); the tokenizer needs a pair
    /// template.
    #[arg(long)]
    pub text_pair_field: Option<String>,
    /// Classifier: the label field.
    #[arg(long, default_value = "label")]
    pub label_field: String,
    /// Classifier: tokens per input (special tokens included; longest_first truncation).
    /// Causal LM: the perplexity window and the longest example. Default and bound: the
    /// model's max_position_embeddings (n_positions).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Causal LM, text rows: a window starts every this many tokens (default: half of
    /// --max-length); each token is scored once, with up to max_length - stride tokens of
    /// context. --stride = --max-length: no overlap.
    #[arg(long)]
    pub stride: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Causal LM: evaluate the first N rows only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Causal LM: generate a completion of each row's prompt and score it against the row's
    /// reference: ROUGE-1/2/L/Lsum, BLEU, exact match.
    #[arg(long)]
    pub generate: bool,
    /// With --generate: write one JSON line per row (prompt, prediction, reference).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// With --generate: ROUGE with the Porter stemmer (rouge_score's use_stemmer=True).
    #[arg(long)]
    pub stemmer: bool,
    /// With --generate: at most this many new tokens per completion [default: 100].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// With --generate: 0 = greedy [default: 0].
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    /// With --generate: > 1 discourages repeating tokens (1 = off) [default: 1].
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    /// With --generate: the sampling seed [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Print one JSON object. Classifier: accuracy, precision_macro, recall_macro, f1_macro,
    /// f1_micro, f1_weighted, per_label, confusion_matrix, labels, n. Causal LM: loss,
    /// perplexity, n, tokens (and max_length, stride; rouge1, rouge2, rougeL, rougeLsum, bleu,
    /// exact_match with --generate).
    #[arg(long)]
    pub json: bool,
}

impl EvaluateArgs {
    /// The causal-LM-only flags that were given, by name.
    fn lm_flags(&self) -> Vec<&'static str> {
        let given = [
            ("--generate", self.generate),
            ("--adapter", self.adapter.is_some()),
            ("--stride", self.stride.is_some()),
            ("--limit", self.limit.is_some()),
            ("--predictions", self.predictions.is_some()),
            ("--stemmer", self.stemmer),
            ("--max-new-tokens", self.max_new_tokens.is_some()),
            ("--temperature", self.temperature.is_some()),
            ("--top-k", self.top_k.is_some()),
            ("--top-p", self.top_p.is_some()),
            ("--repetition-penalty", self.repetition_penalty.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        given.into_iter().filter(|(_, g)| *g).map(|(n, _)| n).collect()
    }

    /// The generation flags, refused without --generate.
    fn generate_options(&self) -> Result<Option<GenerateOptions>> {
        if !self.generate {
            if let Some(flag) = self.lm_flags().into_iter().find(|f| !["--adapter", "--stride", "--limit"].contains(f)) {
                return Err(Error::Input(format!("{flag} applies to --generate, which was not given")));
            }
            return Ok(None);
        }
        let gen = GenOptions {
            max_new_tokens: self.max_new_tokens.unwrap_or(100),
            temperature: self.temperature.unwrap_or(0.0),
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed.unwrap_or(0),
        };
        Ok(Some(GenerateOptions { gen, stemmer: self.stemmer, predictions: self.predictions.clone() }))
    }
}

/// `rankforge evaluate`: prints the report of the model's kind.
pub fn run(args: EvaluateArgs) -> Result<()> {
    let device = crate::device::select_as(args.device, "--device")?;
    match model::detect(&args.model) {
        ModelKind::CausalLm => {
            if args.text_pair_field.is_some() {
                return Err(Error::Input(format!("--text-pair-field: {} is a causal LM; sentence pairs are for classifiers", args.model.display())));
            }
            let generate = args.generate_options()?;
            let opts = LmOptions {
                model: args.model,
                adapter: args.adapter,
                data: args.data,
                split: args.split,
                text_field: args.text_field,
                max_length: args.max_length,
                stride: args.stride,
                batch_size: args.batch_size,
                limit: args.limit,
                device,
                generate,
            };
            let report = super::evaluate(&opts)?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        ModelKind::Other(arch) => {
            if let Some(flag) = args.lm_flags().first() {
                let what = arch.map_or_else(|| "not a causal LM".to_string(), |a| format!("a {a}, not a causal LM"));
                return Err(Error::Input(format!(
                    "{flag}: {} is {what}; {flag} needs a causal LM (GPT-2, Llama, Mistral, Qwen2)",
                    args.model.display()
                )));
            }
            classifier(args, device)
        }
    }
}

/// The classification report, as `evaluate` has always printed it.
fn classifier(args: EvaluateArgs, device: tch::Device) -> Result<()> {
    let mut cfg = crate::classify::ClassificationDataConfig::for_files(args.data);
    (cfg.text_field, cfg.text_pair_field, cfg.label_field, cfg.max_length) = (Some(args.text_field), args.text_pair_field, Some(args.label_field), args.max_length);
    let opts = crate::classify::evaluate::EvaluateOptions { model: args.model, data: cfg, split: args.split, batch_size: args.batch_size, device };
    let report = crate::classify::evaluate::evaluate(&opts)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
