//! The `rankforge` command line: `train`, `sweep`, `tokenizer train`, `generate`, `evaluate`,
//! `predict`, `fill-mask`, `bench`, `push`, `plot`.
//!
//! Exit codes: 0 success; 1 runtime failure (I/O, libtorch: a restart may help); 2 bad input
//! (recipe, data, tokenizer, model files, arguments, a missing or refused Hub token: fix the
//! input, do not retry); 69 the Hugging Face Hub upload failed after its retries (rerun `push`).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rankforge::config::Recipe;
use rankforge::error::{Error, Result};
use rankforge::generate::GenOptions;
use rankforge::tokenizer::{TokenizerKind, TrainOptions};

#[derive(Parser)]
#[command(name = "rankforge", version, about = "Train, fine-tune and sample transformer models (libtorch).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train (or resume) the run a recipe describes: `[model] kind = "gpt"` pretrains,
    /// `kind = "hf"` fine-tunes a pretrained model (LoRA when the recipe has `[lora]`).
    Train {
        /// The recipe (TOML), e.g. configs/tiny_cpu.toml.
        #[arg(long)]
        config: PathBuf,
        /// Override a recipe value: section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Resume from this checkpoint directory instead of the run's newest.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// When the run directory cannot be resumed (every checkpoint fails its manifest, or it
        /// holds a final/ model but no checkpoint), move its files into
        /// <run.dir>/abandoned/run-<time>/ and train from step 0. Without it such a run is
        /// refused. Ignored while a checkpoint verifies (a launcher's restart still resumes).
        #[arg(long)]
        start_over: bool,
    },
    /// Train one run per point of a hyperparameter grid (the Cartesian product of the --grid
    /// flags, the last varying fastest), each in <run.dir>/<name>/, on one process or
    /// data-parallel under rankforge-launch; writes <run.dir>/sweep.jsonl, sweep.csv and
    /// sweep.md and prints the table. Rerunning skips finished trials and resumes the
    /// interrupted one (docs/sweep.md).
    Sweep {
        /// The recipe (TOML) every trial starts from.
        #[arg(long)]
        config: PathBuf,
        /// One axis of the grid: a recipe key and its values, comma-separated, each a TOML
        /// value as for --set (e.g. train.lr=1e-4,5e-5). Repeatable.
        #[arg(long = "grid", value_name = "KEY=V1,V2,...", required = true)]
        grid: Vec<String>,
        /// Override a recipe value of every trial: section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The trials' names (their directories): placeholders {train.lr}, {lr}, {bs},
        /// {epoch}, values printed as Python's str() does. Default: each grid key's last part
        /// and value, joined by _ (lr{lr}_bs{bs}).
        #[arg(long, value_name = "TEMPLATE")]
        name: Option<String>,
        /// The metric that picks the best trial: one of the last evaluation's (val_loss,
        /// val_ppl, accuracy, ...) or loss (the final train loss).
        #[arg(long, default_value = "val_loss")]
        metric: String,
        /// min or max: whether the best trial has the lowest or the highest --metric.
        #[arg(long, default_value = "min")]
        mode: String,
        /// Stop at the first failed trial, with its exit code (default: record it as failed
        /// and go on with the next).
        #[arg(long)]
        fail_fast: bool,
    },
    /// Tokenizer tools.
    Tokenizer {
        #[command(subcommand)]
        command: TokenizerCommand,
    },
    /// Generate text from a model directory: final/, final/merged/, a checkpoint, or any
    /// Hugging Face GPT-2 / Llama / Mistral / Qwen2 directory (with --adapter: plus a LoRA
    /// adapter). Stops at the end-of-sequence token.
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) to
        /// apply on top of --model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        /// Tokenize the prompt as it is. Without it, a tokenizer with a chat template (an
        /// instruction or chat model) gets the prompt as one user message rendered by the
        /// template, with the assistant's turn opened (`add_generation_prompt`), as chat
        /// models expect; a tokenizer without one always reads the prompt raw.
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 100)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        top_p: Option<f64>,
        /// > 1 discourages repeating tokens already in the text (1 = off).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "auto")]
        device: rankforge::config::DeviceChoice,
        /// Print one JSON object (prompt_ids, ids, text, stop) instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// Score a model on held-out rows. A sequence classifier: per-label precision, recall, F1
    /// and support, averages and the confusion matrix, as scikit-learn's
    /// classification_report. A causal LM: loss and perplexity (strided on text, completion-only
    /// on prompt/completion rows), with --generate ROUGE, BLEU and exact match of its
    /// completions (docs/evaluate.md).
    Evaluate(rankforge::eval::lm::args::EvaluateArgs),
    /// Classify texts as transformers' pipeline("text-classification"): [{"label", "score"}]
    /// sorted by score (softmax; sigmoid for multi-label).
    Predict {
        /// A classifier directory, as for evaluate.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, conflicts_with = "input", required_unless_present = "input")]
        text: Option<String>,
        /// A second text (sentence pairs): tokenizer(text, text_pair).
        #[arg(long, requires = "text")]
        text_pair: Option<String>,
        /// Rows to classify (JSONL, JSON, CSV, Parquet, ...), each with --text-field and
        /// optionally --text-pair-field; prints one JSON result per line.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value = "text")]
        text_field: String,
        #[arg(long, default_value = "text_pair")]
        text_pair_field: String,
        /// Results per input: a number or "all" (default: the best label only, as the pipeline).
        #[arg(long, value_parser = rankforge::classify::predict::TopK::parse)]
        top_k: Option<rankforge::classify::predict::TopK>,
        /// Tokens per input (default and bound: the model's max_position_embeddings).
        #[arg(long)]
        max_length: Option<usize>,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, value_enum, default_value = "auto")]
        device: rankforge::config::DeviceChoice,
        /// Print JSON (--text: one list; --input always prints JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Fill the mask tokens of a text as transformers' pipeline("fill-mask"): the top-k
    /// {"score", "token", "token_str", "sequence"} of each mask (a list per mask for several).
    FillMask {
        /// A BERT / DistilBERT masked-LM directory (its tokenizer needs a mask token).
        #[arg(long)]
        model: PathBuf,
        /// The text, with the tokenizer's mask token ([MASK], <mask>) where a token is missing.
        #[arg(long, conflicts_with = "input", required_unless_present = "input")]
        text: Option<String>,
        /// Texts to fill: a text file (one per line) or JSON/JSONL/CSV/Parquet rows with
        /// --text-field; prints one JSON result per line.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value = "text")]
        text_field: String,
        /// Candidates per mask.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        top_k: u64,
        /// A PEFT LoRA adapter to apply to --model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        device: rankforge::config::DeviceChoice,
        /// Print JSON (--input always prints JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Time training steps of a recipe's model on random tokens (data-parallel under
    /// rankforge-launch); prints one JSON line. `bench collective`: all-reduce bandwidth.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        what: Option<BenchCommand>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
    },
    /// Upload a model directory to the Hugging Face Hub (or the endpoint in HF_ENDPOINT) with
    /// the token from HF_TOKEN, HUGGING_FACE_HUB_TOKEN or $HF_HOME/token; prints the commit
    /// URL. Files the Hub already has are not sent again. See docs/hub.md.
    Push {
        /// The directory to upload (e.g. a run's final/): needs config.json,
        /// adapter_config.json, *.safetensors or *.bin.
        #[arg(long)]
        model: PathBuf,
        /// The model repo, `user/name` or `org/name` (created if missing).
        #[arg(long)]
        repo: String,
        /// Create the repo private (an existing repo keeps its visibility).
        #[arg(long)]
        private: bool,
        /// Branch to commit to, created from main when missing.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Commit summary.
        #[arg(long)]
        message: Option<String>,
        /// Folder of the repo to upload into (default: its root).
        #[arg(long)]
        path_in_repo: Option<String>,
    },
    /// Draw metrics against step for runs or sweeps, overlaid with a legend, as FILE.svg or
    /// FILE.png (docs/plot.md).
    Plot(rankforge::plot::PlotArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// All-reduce bus bandwidth between the ranks of a job: run it under rankforge-launch
    /// (`rankforge-launch --nproc-per-node 2 -- bench collective --bytes 1M,16M`).
    Collective {
        /// Buffer sizes in bytes, comma-separated: 1048576, 64K, 16M, 1G.
        #[arg(long, value_delimiter = ',', required = true)]
        bytes: Vec<String>,
        /// Timed all-reduces per size (the median is reported).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// cpu: the TCP ring; cuda: NCCL.
        #[arg(long, value_enum, default_value = "cpu")]
        device: rankforge::config::DeviceChoice,
    },
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train a tokenizer on text files; writes tokenizer.json + tokenizer_config.json.
    Train {
        /// Text files or folders.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long)]
        vocab_size: usize,
        #[arg(long, value_enum, default_value = "bpe")]
        kind: TokenizerKind,
        #[arg(long)]
        output: PathBuf,
        /// Special tokens, ids from 0 (default: <|endoftext|>; unigram adds <unk>).
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        special_tokens: Vec<String>,
        /// Merges seen fewer times are not learned (bpe).
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
    },
}

fn main() {
    rankforge::device::keep_freed_memory();
    std::panic::set_hook(Box::new(|info| {
        // libtorch's allocation failures reach us as panics inside tch: out of memory while
        // running is a runtime failure (exit 1), not a bug.
        if let Some(msg) = out_of_memory(info) {
            let msg = format!("out of memory: {msg}");
            eprintln!("error: {msg}");
            write_error_file(&msg, rankforge::error::EXIT_RUNTIME);
            std::process::exit(rankforge::error::EXIT_RUNTIME);
        }
        eprintln!("rankforge: internal error (a bug, please report it): {info}");
    }));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RANKFORGE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => {}
        Err(e @ Error::Stopped(_)) => {
            tracing::info!("{e}");
            std::process::exit(e.exit_code());
        }
        Err(e) => {
            eprintln!("error: {e}");
            write_error_file(&e.to_string(), e.exit_code());
            std::process::exit(e.exit_code());
        }
    }
}

/// The first line of libtorch's message when a panic is an allocation failure (CPU or CUDA).
fn out_of_memory(info: &std::panic::PanicHookInfo) -> Option<String> {
    let payload = info.payload();
    let text = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied())?;
    let at = ["can't allocate memory", "out of memory", "Cannot allocate memory"].iter().find_map(|m| text.find(m))?;
    // The line that holds the marker: tch's panic shows the error as `Torch("…")`, newlines
    // escaped, the C++ stack trace after the first one.
    let start = text[..at].rfind(['\n', '"']).map_or(0, |i| i + 1);
    let rest = &text[start..];
    let end = [rest.find("\\n"), rest.find('\n'), rest.find("\")")].into_iter().flatten().min().unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Refuses a `run.dir` that is, or lies under, something other than a directory.
fn check_run_dir(recipe: &Recipe, file: &std::path::Path) -> Result<()> {
    let dir = &recipe.run.dir;
    let Some(existing) = dir.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists()) else { return Ok(()) };
    if existing.is_dir() {
        return Ok(());
    }
    let what = if existing == dir.as_path() { "is a file".to_string() } else { format!("lies under {}, which is a file", existing.display()) };
    Err(Error::Config { file: file.to_path_buf(), key: "run.dir".into(), msg: format!("{} {what}, not a directory", dir.display()) })
}

/// Under a launcher, the error also goes to `$TORCHELASTIC_ERROR_FILE` in torchelastic's
/// error.json format, for the launcher's failure report.
fn write_error_file(message: &str, exit_code: i32) {
    let Some(path) = std::env::var_os("TORCHELASTIC_ERROR_FILE") else { return };
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let v = serde_json::json!({"message": {"message": message, "extraInfo": {
        "py_callstack": format!("rankforge {} (exit code {exit_code})", env!("CARGO_PKG_VERSION")),
        "timestamp": secs.to_string(),
    }}});
    let _ = rankforge::fsutil::write_atomic(std::path::Path::new(&path), format!("{v:#}\n").as_bytes());
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Train { config, set, resume, start_over } => {
            let recipe = Recipe::load(&config, &set)?;
            check_run_dir(&recipe, &config)?;
            rankforge::device::check_training_memory(&recipe, &config)?;
            let opts = rankforge::recipe_loop::RunOptions { resume, start_over };
            rankforge::tasks::run(recipe, &opts)
        }
        Command::Sweep { config, grid, set, name, metric, mode, fail_fast } => {
            let args = rankforge::sweep::SweepArgs { config, grid, set, name, metric, mode, fail_fast };
            let plan = rankforge::sweep::plan(&args)?;
            check_run_dir(&plan.base, &args.config)?;
            rankforge::sweep::run(plan)
        }
        Command::Tokenizer { command: TokenizerCommand::Train { input, vocab_size, kind, output, special_tokens, min_frequency } } => {
            let opts = TrainOptions { inputs: input, vocab_size, kind, output, special_tokens, min_frequency, show_progress: true };
            let n = rankforge::tokenizer::train(&opts)?;
            tracing::info!("tokenizer with {n} tokens written to {}", opts.output.display());
            Ok(())
        }
        Command::Generate { model, adapter, prompt, raw, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, device, json } => {
            let device = rankforge::device::select_as(device, "--device")?;
            if !model.join("config.json").exists() && model.join("final").exists() {
                return Err(Error::model(&model, "is a run directory; pass its final/ (final/merged/ after LoRA) or a checkpoints/step_* directory"));
            }
            if !model.join("config.json").exists() && model.join(rankforge::lora::ADAPTER_CONFIG).exists() {
                return Err(Error::model(&model, "is a LoRA adapter, not a model: pass --model BASE --adapter DIR (or DIR/merged after a rankforge run)"));
            }
            // The model in its dtype for the device, the adapter on top, and the tokenizer that
            // trained the adapter when it carries one (as evaluate loads them).
            let rankforge::eval::lm::model::LoadedLm { model: lm, tok } = rankforge::eval::lm::model::load(&model, adapter.as_deref(), device)?;
            let chat = tok.chat_template.is_some() && !raw;
            let prompt_ids = rankforge::generate::prompt_ids(&tok, &prompt, chat)?;
            let stop = rankforge::generate::stop_ids(&lm, &tok);
            let opts = GenOptions { max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed };
            let mut out = std::io::stdout().lock();
            let streamed = |piece: &str| {
                if !json {
                    let _ = write!(out, "{piece}");
                    let _ = out.flush();
                }
            };
            let g = rankforge::generate::generate(&lm, &tok, prompt_ids, &opts, &stop, streamed)?;
            if json {
                let v = serde_json::json!({"prompt_ids": g.prompt_ids, "ids": g.ids, "text": g.text, "stop": g.stop, "chat": chat});
                println!("{v}");
            } else {
                println!();
                if g.stop == "context" {
                    tracing::warn!("stopped: the model's context of {} tokens is full", lm.hard_context().unwrap_or(0));
                }
            }
            Ok(())
        }
        Command::Evaluate(args) => rankforge::eval::lm::args::run(args),
        Command::Predict { model, text, text_pair, input, text_field, text_pair_field, top_k, max_length, batch_size, device, json } => {
            predict(model, text.map(|text| rankforge::classify::predict::TextInput { text, text_pair }), input, (text_field, text_pair_field), top_k, max_length, batch_size, device, json)
        }
        Command::FillMask { model, text, input, text_field, top_k, adapter, device, json } => fill_mask(model, text, input, &text_field, top_k as usize, adapter, device, json),
        Command::Bench { what: Some(BenchCommand::Collective { bytes, iters, warmup, device }), .. } => {
            if iters == 0 {
                return Err(Error::Input("--iters must be at least 1".into()));
            }
            let sizes = bytes.iter().map(|b| rankforge::bench::parse_bytes(b)).collect::<Result<Vec<_>>>()?;
            rankforge::device::select_as(device, "--device")?;
            rankforge::bench::collective(&sizes, iters, warmup, device)?;
            Ok(())
        }
        Command::Plot(args) => rankforge::plot::run(&args),
        Command::Push { model, repo, private, revision, message, path_in_repo } => {
            push(&model, &repo, private, revision, message, path_in_repo)
        }
        Command::Bench { what: None, config, set, steps, warmup } => {
            let Some(config) = config else {
                return Err(Error::Input("bench needs --config RECIPE (or `bench collective`)".into()));
            };
            if steps == 0 {
                return Err(Error::Input("--steps must be at least 1".into()));
            }
            let recipe = Recipe::load(&config, &set)?;
            rankforge::device::check_training_memory(&recipe, &config)?;
            if let Some(line) = rankforge::bench::run(&recipe, steps, warmup)? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// `rankforge push`: checks the repo id, the directory and the token (in that order, each a
/// one-line exit 2), then uploads and prints the commit URL.
fn push(model: &std::path::Path, repo: &str, private: bool, revision: String, message: Option<String>, path_in_repo: Option<String>) -> Result<()> {
    use rankforge::hub::{check_model_dir, Hub, RepoId, UploadOptions};
    let repo = RepoId::parse(repo)?;
    check_model_dir(model)?;
    let hub = Hub::from_env()?;
    let user = hub.check_write()?;
    let repo = repo.with_namespace(&user.name);
    let opts = UploadOptions { private, revision: Some(revision), commit_message: message, path_in_repo };
    let info = hub.push(model, &repo, &opts)?;
    tracing::info!(
        "pushed {} to {repo}: {} file(s) committed, {} LFS object(s) uploaded, {} already on the Hub",
        model.display(),
        info.files_committed,
        info.lfs.uploaded,
        info.lfs.present
    );
    println!("{}", info.commit_url);
    Ok(())
}

/// `rankforge predict`: one input from the flags, or every row of `input`.
#[allow(clippy::too_many_arguments)]
fn predict(
    model: PathBuf,
    text: Option<rankforge::classify::predict::TextInput>,
    input: Option<PathBuf>,
    (text_field, text_pair_field): (String, String),
    top_k: Option<rankforge::classify::predict::TopK>,
    max_length: Option<usize>,
    batch_size: usize,
    device: rankforge::config::DeviceChoice,
    json: bool,
) -> Result<()> {
    use rankforge::classify::predict::{self, TopK};
    let device = rankforge::device::select_as(device, "--device")?;
    let clf = rankforge::classify::model::Classifier::load(&model, device)?;
    let mut cfg = rankforge::classify::ClassificationDataConfig::for_files(Vec::new());
    cfg.max_length = max_length;
    let encoder = rankforge::classify::evaluate::input_encoder(&clf, &cfg, "--max-length")?;
    let top_k = top_k.unwrap_or(TopK::N(1));
    let Some(path) = input else {
        let Some(text) = text else { return Err(Error::Input("predict needs --text or --input".into())) };
        let results = predict::predict(&clf, &encoder, &[text], top_k, batch_size)?;
        for result in results {
            if json {
                println!("{}", serde_json::to_string(&result).map_err(|e| Error::Input(e.to_string()))?);
            } else {
                for p in result {
                    println!("{}\t{:.4}", p.label, p.score);
                }
            }
        }
        return Ok(());
    };
    let inputs = rankforge::classify::data::read_texts(&[path], "--input", &text_field, &text_pair_field)?;
    for result in predict::predict(&clf, &encoder, &inputs, top_k, batch_size)? {
        println!("{}", serde_json::to_string(&result).map_err(|e| Error::Input(e.to_string()))?);
    }
    Ok(())
}

/// `rankforge fill-mask`: the pipeline's result for `--text`, or one JSON line per text of
/// `--input`.
#[allow(clippy::too_many_arguments)]
fn fill_mask(
    model: PathBuf,
    text: Option<String>,
    input: Option<PathBuf>,
    text_field: &str,
    top_k: usize,
    adapter: Option<PathBuf>,
    device: rankforge::config::DeviceChoice,
    json: bool,
) -> Result<()> {
    use rankforge::models::mlm::fill;
    let device = rankforge::device::select_as(device, "--device")?;
    // Read the inputs first: a bad file fails before the model loads.
    let texts = match (&input, text) {
        (Some(path), _) => fill::read_inputs(path, text_field)?,
        (None, Some(text)) => vec![("--text".to_string(), text)],
        (None, None) => return Err(Error::Input("fill-mask needs --text or --input".into())),
    };
    let filler = fill::FillMask::load(&model, adapter.as_deref(), device)?;
    let results = texts.iter().map(|(what, text)| filler.fill(text, top_k, what)).collect::<Result<Vec<_>>>()?;
    let to_json = |r: &fill::FillResult| serde_json::to_string(r).map_err(|e| Error::Input(e.to_string()));
    for result in &results {
        if json || input.is_some() {
            println!("{}", to_json(result)?);
            continue;
        }
        let masks = result.per_mask();
        for (i, candidates) in masks.iter().enumerate() {
            if masks.len() > 1 {
                println!("mask {} of {}:", i + 1, masks.len());
            }
            for c in candidates.iter() {
                println!("{:.4}\t{}\t{}", c.score, c.token_str, c.sequence);
            }
        }
    }
    Ok(())
}
