//! Tokenizers: training (`rankforge tokenizer train`) and loading (the data step reads the
//! tokenizer a recipe names). Files are Hugging Face's: `tokenizer.json` (the `tokenizers`
//! crate's own format) plus a v4-style `tokenizer_config.json` naming the special tokens, so
//! Python `tokenizers` and `transformers.AutoTokenizer` load what we write.
//!
//! Two kinds:
//! - `bpe`: byte-level BPE as in GPT-2 (every byte is in the alphabet: any text round-trips);
//! - `unigram`: SentencePiece-style Unigram with the `▁` metaspace. Every character seen in
//!   training is in the vocabulary, so training-like text round-trips; a character never seen
//!   decodes as `<unk>`.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, IoContext, Result};

/// GPT-2's document separator, our default end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Which tokenizer model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenizerKind {
    /// Byte-level BPE (GPT-2, Llama 3, Qwen).
    Bpe,
    /// SentencePiece-style Unigram (T5, ALBERT, XLNet).
    Unigram,
}

/// Options of `rankforge tokenizer train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub inputs: Vec<PathBuf>,
    pub vocab_size: usize,
    pub kind: TokenizerKind,
    pub output: PathBuf,
    /// Special tokens, in id order from 0. Empty: `<|endoftext|>` (bpe) or `<unk>`,
    /// `<|endoftext|>` (unigram).
    pub special_tokens: Vec<String>,
    pub min_frequency: u64,
    pub show_progress: bool,
}

/// Trains a tokenizer on `opts.inputs` and writes `tokenizer.json` and `tokenizer_config.json`
/// into `opts.output`. Returns the vocabulary size.
pub fn train(opts: &TrainOptions) -> Result<usize> {
    let files = crate::data::expand_inputs(&opts.inputs, "--input")?;
    let specials = special_tokens(opts);
    let added: Vec<AddedToken> = specials.iter().map(|s| AddedToken::from(s.clone(), true)).collect();
    if opts.vocab_size <= specials.len() + 1 {
        return Err(Error::Input(format!(
            "--vocab-size {} leaves no room beside {} special tokens",
            opts.vocab_size,
            specials.len()
        )));
    }
    let vocab = u32::try_from(opts.vocab_size)
        .map_err(|_| Error::Input(format!("--vocab-size {} is too large", opts.vocab_size)))?;
    let mut tokenizer = match opts.kind {
        TokenizerKind::Bpe => {
            let mut t = Tokenizer::new(BPE::default());
            let byte_level = ByteLevel::default().add_prefix_space(false).trim_offsets(false);
            t.with_pre_tokenizer(Some(byte_level))
                .with_post_processor(Some(byte_level))
                .with_decoder(Some(ByteLevel::default()));
            t
        }
        TokenizerKind::Unigram => {
            let mut t = Tokenizer::new(Unigram::default());
            t.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, true)))
                .with_decoder(Some(MetaspaceDecoder::new('▁', PrependScheme::First, true)));
            t
        }
    };
    let mut trainer = match opts.kind {
        TokenizerKind::Bpe => TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .show_progress(opts.show_progress)
                .vocab_size(opts.vocab_size)
                .min_frequency(opts.min_frequency)
                .special_tokens(added)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build(),
        ),
        TokenizerKind::Unigram => TrainerWrapper::UnigramTrainer(
            UnigramTrainerBuilder::default()
                .show_progress(opts.show_progress)
                .vocab_size(vocab)
                .special_tokens(added)
                .unk_token(Some("<unk>".to_string()))
                .build()
                .map_err(|e| Error::Input(format!("unigram trainer: {e}")))?,
        ),
    };
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    tracing::info!(
        "training a {:?} tokenizer with {} tokens on {} file(s), {:.1} MB",
        opts.kind,
        opts.vocab_size,
        files.len(),
        bytes as f64 / 1e6
    );
    tokenizer
        .train_from_files(&mut trainer, names)
        .map_err(|e| Error::Tokenizer { path: files[0].clone(), msg: format!("training failed: {e}") })?;
    std::fs::create_dir_all(&opts.output).at(&opts.output)?;
    let json_path = opts.output.join("tokenizer.json");
    crate::fsutil::write_atomic(&json_path, tokenizer.to_string(true).map_err(|e| tok_err(&json_path, e))?.as_bytes())?;
    let config = tokenizer_config(&tokenizer, None);
    crate::fsutil::write_json_atomic(&opts.output.join("tokenizer_config.json"), &config)?;
    Ok(tokenizer.get_vocab_size(true))
}

fn special_tokens(opts: &TrainOptions) -> Vec<String> {
    let mut specials = if opts.special_tokens.is_empty() {
        match opts.kind {
            TokenizerKind::Bpe => vec![END_OF_TEXT.to_string()],
            TokenizerKind::Unigram => vec!["<unk>".to_string(), END_OF_TEXT.to_string()],
        }
    } else {
        opts.special_tokens.clone()
    };
    // Unigram needs an unknown token; keep it at id 0 like SentencePiece.
    if opts.kind == TokenizerKind::Unigram && !specials.iter().any(|s| s == "<unk>") {
        specials.insert(0, "<unk>".to_string());
    }
    specials
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer { path: path.to_path_buf(), msg: e.to_string() }
}

/// A loaded tokenizer with the special tokens the trainer needs.
pub struct LoadedTokenizer {
    pub tokenizer: Tokenizer,
    /// `tokenizer.json` it came from.
    pub path: PathBuf,
    /// End-of-text id, appended after each document. From tokenizer_config.json's
    /// `eos_token`, else `<|endoftext|>`, `</s>` or `<eos>` when the vocabulary has one.
    pub eos_id: Option<u32>,
}

impl LoadedTokenizer {
    /// Loads a tokenizer directory (tokenizer.json + optional tokenizer_config.json) or a
    /// tokenizer.json file.
    pub fn load(path: &Path) -> Result<LoadedTokenizer> {
        let (json, dir) = if path.is_dir() {
            (path.join("tokenizer.json"), path.to_path_buf())
        } else {
            (path.to_path_buf(), path.parent().map(Path::to_path_buf).unwrap_or_default())
        };
        if !json.exists() {
            return Err(tok_err(&json, "not found (make one with `rankforge tokenizer train`)"));
        }
        let tokenizer = Tokenizer::from_file(&json).map_err(|e| tok_err(&json, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let mut eos_name = None;
        if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).at(&config_path)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| tok_err(&config_path, e))?;
            eos_name = match &v["eos_token"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
                _ => None,
            };
        }
        let eos_id = match eos_name {
            Some(name) => Some(tokenizer.token_to_id(&name).ok_or_else(|| {
                tok_err(&config_path, format!("eos_token {name:?} is not in the vocabulary"))
            })?),
            None => [END_OF_TEXT, "</s>", "<eos>"].iter().find_map(|t| tokenizer.token_to_id(t)),
        };
        Ok(LoadedTokenizer { tokenizer, path: json, eos_id })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Token ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| tok_err(&self.path, e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(|e| tok_err(&self.path, e))
    }

    /// Writes tokenizer.json and tokenizer_config.json (with `model_max_length`) into `dir`.
    pub fn save_pretrained(&self, dir: &Path, model_max_length: Option<usize>) -> Result<()> {
        let json_path = dir.join("tokenizer.json");
        let text = self.tokenizer.to_string(false).map_err(|e| tok_err(&json_path, e))?;
        crate::fsutil::write_atomic(&json_path, text.as_bytes())?;
        let config = tokenizer_config(&self.tokenizer, model_max_length);
        crate::fsutil::write_json_atomic(&dir.join("tokenizer_config.json"), &config)
    }
}

/// A transformers v4-style tokenizer_config.json for `tokenizer` (PreTrainedTokenizerFast).
fn tokenizer_config(tokenizer: &Tokenizer, model_max_length: Option<usize>) -> serde_json::Value {
    let has = |t: &str| tokenizer.token_to_id(t).is_some();
    let eos = [END_OF_TEXT, "</s>", "<eos>"].into_iter().find(|t| has(t));
    let bos = ["<s>", "<bos>"].into_iter().find(|t| has(t)).or(eos);
    let unk = if has("<unk>") { Some("<unk>") } else { eos };
    let pad = ["<pad>"].into_iter().find(|t| has(t));
    let mut decoder = serde_json::Map::new();
    for (id, tok) in tokenizer.get_added_tokens_decoder() {
        decoder.insert(
            id.to_string(),
            json!({"content": tok.content, "lstrip": tok.lstrip, "normalized": tok.normalized,
                   "rstrip": tok.rstrip, "single_word": tok.single_word, "special": tok.special}),
        );
    }
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "clean_up_tokenization_spaces": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
    });
    if let Some(n) = model_max_length {
        config["model_max_length"] = json!(n);
    }
    config
}
