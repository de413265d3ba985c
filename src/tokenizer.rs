//! Tokenizers: training (`rankforge tokenizer train`) and loading (the data step reads the
//! tokenizer a recipe names). Files are Hugging Face's: `tokenizer.json` (the `tokenizers`
//! crate's own format) plus a v4-style `tokenizer_config.json` naming the special tokens, so
//! Python `tokenizers` and `transformers.AutoTokenizer` load what we write.
//!
//! Loading also reads what fine-tuning needs from a model's tokenizer files: the special tokens
//! (`bos_token`, `eos_token`, `pad_token`, `unk_token`, …), `add_bos_token`/`add_eos_token`
//! (applied as transformers 5 does, so BOS is never added twice) and the chat template
//! ([`crate::chat_template`]), which `save_pretrained` writes back as `chat_template.jinja`.
//!
//! Three kinds:
//! - `bpe`: byte-level BPE as in GPT-2 (every byte is in the alphabet: any text round-trips);
//! - `unigram`: SentencePiece-style Unigram with the `▁` metaspace. Every character seen in
//!   training is in the vocabulary, so training-like text round-trips; a character never seen
//!   decodes as `<unk>`;
//! - `wordpiece`: BERT's (bert-base-uncased's pipeline: `BertNormalizer` lowercasing,
//!   `BertPreTokenizer`, WordPiece with `##` continuations, `[CLS] … [SEP]` added around each
//!   text), with `[PAD] [UNK] [CLS] [SEP] [MASK]` as ids 0–4: what masked-LM encoders read.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::chat_template::{ChatMessage, ChatTemplate};
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
    /// BERT's lowercasing WordPiece with `[CLS]`/`[SEP]`/`[MASK]` (BERT, DistilBERT).
    Wordpiece,
}

/// BERT's special tokens, in id order (bert-base-uncased has the same, at other ids).
pub const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Options of `rankforge tokenizer train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub inputs: Vec<PathBuf>,
    pub vocab_size: usize,
    pub kind: TokenizerKind,
    pub output: PathBuf,
    /// Special tokens, in id order from 0. Empty: `<|endoftext|>` (bpe), `<unk>`,
    /// `<|endoftext|>` (unigram), [`BERT_SPECIALS`] (wordpiece).
    pub special_tokens: Vec<String>,
    pub min_frequency: u64,
    pub show_progress: bool,
}

/// Trains a tokenizer on `opts.inputs` and writes `tokenizer.json` and `tokenizer_config.json`
/// into `opts.output`. Returns the vocabulary size.
pub fn train(opts: &TrainOptions) -> Result<usize> {
    check_output_dir(&opts.output)?;
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
        TokenizerKind::Wordpiece => {
            let model = WordPiece::builder().unk_token("[UNK]".into()).build().map_err(|e| Error::Input(format!("wordpiece: {e}")))?;
            let mut t = Tokenizer::new(model);
            t.with_normalizer(Some(BertNormalizer::default()))
                .with_pre_tokenizer(Some(BertPreTokenizer))
                .with_decoder(Some(WordPieceDecoder::default()));
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
        TokenizerKind::Wordpiece => TrainerWrapper::WordPieceTrainer(
            WordPieceTrainerBuilder::new()
                .show_progress(opts.show_progress)
                .vocab_size(opts.vocab_size)
                .min_frequency(opts.min_frequency)
                .special_tokens(added)
                .build(),
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
    if opts.kind == TokenizerKind::Wordpiece {
        let template = bert_template(&tokenizer)?;
        tokenizer.with_post_processor(Some(template));
    }
    std::fs::create_dir_all(&opts.output).at(&opts.output)?;
    let json_path = opts.output.join("tokenizer.json");
    crate::fsutil::write_atomic(&json_path, tokenizer.to_string(true).map_err(|e| tok_err(&json_path, e))?.as_bytes())?;
    let config = tokenizer_config(&tokenizer, None);
    crate::fsutil::write_json_atomic(&opts.output.join("tokenizer_config.json"), &config)?;
    Ok(tokenizer.get_vocab_size(true))
}

/// `--output` must be a directory or a path one can become: checked before training, which
/// can take minutes.
fn check_output_dir(output: &Path) -> Result<()> {
    let Some(existing) = output.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists()) else { return Ok(()) };
    if existing.is_dir() {
        return Ok(());
    }
    let what = if existing == output { "is a file".to_string() } else { format!("lies under {}, which is a file", existing.display()) };
    Err(Error::Input(format!(
        "--output {} {what}, not a directory (tokenizer.json and tokenizer_config.json are written into it)",
        output.display()
    )))
}

fn special_tokens(opts: &TrainOptions) -> Vec<String> {
    let mut specials = if opts.special_tokens.is_empty() {
        match opts.kind {
            TokenizerKind::Bpe => vec![END_OF_TEXT.to_string()],
            TokenizerKind::Unigram => vec!["<unk>".to_string(), END_OF_TEXT.to_string()],
            TokenizerKind::Wordpiece => BERT_SPECIALS.iter().map(|s| s.to_string()).collect(),
        }
    } else {
        opts.special_tokens.clone()
    };
    // Unigram needs an unknown token; keep it at id 0 like SentencePiece.
    if opts.kind == TokenizerKind::Unigram && !specials.iter().any(|s| s == "<unk>") {
        specials.insert(0, "<unk>".to_string());
    }
    // WordPiece needs its unknown token, and BERT its [CLS]/[SEP] (the template uses them).
    if opts.kind == TokenizerKind::Wordpiece {
        for t in ["[UNK]", "[CLS]", "[SEP]"] {
            if !specials.iter().any(|s| s == t) {
                specials.push(t.to_string());
            }
        }
    }
    specials
}

/// BERT's post-processor: `[CLS] A [SEP]`, pairs `[CLS] A [SEP] B [SEP]` with type ids 0/1.
fn bert_template(tokenizer: &Tokenizer) -> Result<TemplateProcessing> {
    let id = |t: &str| tokenizer.token_to_id(t).ok_or_else(|| Error::Input(format!("--special-tokens: a wordpiece tokenizer needs {t}")));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .and_then(|b| b.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
        .map_err(|e| Error::Input(format!("wordpiece template: {e}")))?
        .special_tokens(vec![("[CLS]".to_string(), cls), ("[SEP]".to_string(), sep)])
        .build()
        .map_err(|e| Error::Input(format!("wordpiece template: {e}")))
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer { path: path.to_path_buf(), msg: e.to_string() }
}

/// A loaded tokenizer with the special tokens and chat template of its directory.
pub struct LoadedTokenizer {
    pub tokenizer: Tokenizer,
    /// `tokenizer.json` it came from.
    pub path: PathBuf,
    /// End-of-text id, appended after each document. From tokenizer_config.json's
    /// `eos_token`, else `<|endoftext|>`, `</s>` or `<eos>` when the vocabulary has one.
    pub eos_id: Option<u32>,
    /// Special tokens by name (`bos_token`, `eos_token`, `pad_token`, `unk_token`, and `sep_token`,
    /// `cls_token`, `mask_token` when set), from tokenizer_config.json (a string or a
    /// `{"content": ...}` object), else special_tokens_map.json. `eos_token` falls back to the
    /// token of `eos_id`. Chat templates see them under these names.
    pub specials: Vec<(String, String)>,
    pub bos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// tokenizer_config.json's `add_bos_token` / `add_eos_token`, when present. As in
    /// transformers 5, either key (or a tokenizer.json without post-processor) replaces the
    /// post-processor by "BOS if add_bos_token, the text, EOS if add_eos_token"; otherwise
    /// tokenizer.json's own post-processor (Llama's `<s> $A`) adds what it adds. Never both.
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// From `chat_template.jinja`, else tokenizer_config.json's `chat_template` (a string, or
    /// a list of `{name, template}` of which `default` is taken).
    pub chat_template: Option<ChatTemplate>,
    /// The file the chat template came from (for messages).
    pub chat_template_path: PathBuf,
}

impl LoadedTokenizer {
    /// Loads a tokenizer directory (tokenizer.json + optional tokenizer_config.json,
    /// special_tokens_map.json, chat_template.jinja) or a tokenizer.json file.
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
        let config = read_json_if_exists(&config_path)?.unwrap_or_default();
        let map_path = dir.join("special_tokens_map.json");
        let map = read_json_if_exists(&map_path)?.unwrap_or_default();
        let mut specials = Vec::new();
        for name in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            if let Some(content) = token_content(&config[name]).or_else(|| token_content(&map[name])) {
                specials.push((name.to_string(), content));
            }
        }
        let lookup = |name: &str| -> Option<String> { specials.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()) };
        let id_of = |name: &str| -> Result<Option<u32>> {
            let Some(content) = lookup(name) else { return Ok(None) };
            match token_id(&tokenizer, &config, &content) {
                Some(id) => Ok(Some(id)),
                None if name == "eos_token" => {
                    Err(tok_err(&config_path, format!("eos_token {content:?} is not in the vocabulary")))
                }
                None => {
                    tracing::warn!("{}: {name} {content:?} is not in the vocabulary; ignoring it", config_path.display());
                    Ok(None)
                }
            }
        };
        let eos_id = match id_of("eos_token")? {
            Some(id) => Some(id),
            None => [END_OF_TEXT, "</s>", "<eos>"].iter().find_map(|t| tokenizer.token_to_id(t)),
        };
        let (bos_id, pad_id, unk_id) = (id_of("bos_token")?, id_of("pad_token")?, id_of("unk_token")?);
        if lookup("eos_token").is_none() {
            if let Some(t) = eos_id.and_then(|id| tokenizer.id_to_token(id)) {
                specials.push(("eos_token".into(), t));
            }
        }
        let (chat_template, chat_template_path) = load_chat_template(&dir, &config, &config_path)?;
        Ok(LoadedTokenizer {
            add_bos_token: config["add_bos_token"].as_bool(),
            add_eos_token: config["add_eos_token"].as_bool(),
            tokenizer,
            path: json,
            eos_id,
            specials,
            bos_id,
            pad_id,
            unk_id,
            chat_template,
            chat_template_path,
        })
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

    /// Token ids of `text` with the special tokens transformers adds (`tokenizer(text)`):
    /// see [`LoadedTokenizer::add_bos_token`].
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        let override_post = self.add_bos_token.is_some()
            || self.add_eos_token.is_some()
            || self.tokenizer.get_post_processor().is_none();
        if !override_post {
            let enc = self.tokenizer.encode(text, true).map_err(|e| tok_err(&self.path, e))?;
            return Ok(enc.get_ids().to_vec());
        }
        let mut ids = Vec::new();
        if self.add_bos_token == Some(true) {
            ids.extend(self.bos_id);
        }
        ids.extend(self.encode(text)?);
        if self.add_eos_token == Some(true) {
            ids.extend(self.eos_id);
        }
        Ok(ids)
    }

    /// A special token's text by name (`"eos_token"`).
    pub fn special(&self, name: &str) -> Option<&str> {
        self.specials.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The padding id: `pad_token`, else `eos_token` (TRL's choice).
    pub fn pad_or_eos_id(&self) -> Option<u32> {
        self.pad_id.or(self.eos_id)
    }

    /// Renders a conversation with the chat template (transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let values: Vec<serde_json::Value> =
            messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
        self.render_chat(&values, add_generation_prompt)
            .map_err(|msg| tok_err(&self.chat_template_path, msg))
    }

    /// Renders messages given as JSON objects (all their keys are visible to the template);
    /// the error is the template's message, for the caller to place.
    pub fn render_chat(&self, messages: &[serde_json::Value], add_generation_prompt: bool) -> std::result::Result<String, String> {
        self.template()?.render(messages, add_generation_prompt, &self.special_refs())
    }

    /// As [`LoadedTokenizer::render_chat`], with the spans of `{% generation %}` blocks.
    pub fn render_chat_tracked(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> std::result::Result<(String, Vec<std::ops::Range<usize>>), String> {
        self.template()?.render_tracked(messages, add_generation_prompt, &self.special_refs())
    }

    fn template(&self) -> std::result::Result<&ChatTemplate, String> {
        self.chat_template.as_ref().ok_or_else(|| {
            format!(
                "the tokenizer in {} has no chat template (chat_template.jinja or tokenizer_config.json's chat_template)",
                self.path.parent().unwrap_or(Path::new(".")).display()
            )
        })
    }

    fn special_refs(&self) -> Vec<(&str, &str)> {
        self.specials.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(|e| tok_err(&self.path, e))
    }

    /// Writes tokenizer.json and tokenizer_config.json (with `model_max_length`) into `dir`,
    /// and chat_template.jinja when there is a template.
    pub fn save_pretrained(&self, dir: &Path, model_max_length: Option<usize>) -> Result<()> {
        let json_path = dir.join("tokenizer.json");
        let text = self.tokenizer.to_string(false).map_err(|e| tok_err(&json_path, e))?;
        crate::fsutil::write_atomic(&json_path, text.as_bytes())?;
        let mut config = tokenizer_config(&self.tokenizer, model_max_length);
        for (name, content) in &self.specials {
            config[name.as_str()] = json!(content);
        }
        if let Some(b) = self.add_bos_token {
            config["add_bos_token"] = json!(b);
        }
        if let Some(b) = self.add_eos_token {
            config["add_eos_token"] = json!(b);
        }
        crate::fsutil::write_json_atomic(&dir.join("tokenizer_config.json"), &config)?;
        if let Some(t) = &self.chat_template {
            crate::fsutil::write_atomic(&dir.join("chat_template.jinja"), t.source.as_bytes())?;
        }
        Ok(())
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| tok_err(path, e))
}

/// A special token entry: `"<s>"` or `{"content": "<s>", ...}`.
fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// The id of `content`: the vocabulary's, else the key of its `added_tokens_decoder` entry.
fn token_id(tokenizer: &Tokenizer, config: &serde_json::Value, content: &str) -> Option<u32> {
    tokenizer.token_to_id(content).or_else(|| {
        let decoder = config["added_tokens_decoder"].as_object()?;
        decoder
            .iter()
            .find(|(_, t)| t["content"].as_str() == Some(content))
            .and_then(|(id, _)| id.parse().ok())
            .filter(|id| (*id as usize) < tokenizer.get_vocab_size(true))
    })
}

/// `chat_template.jinja` first, else tokenizer_config.json's `chat_template`.
fn load_chat_template(
    dir: &Path,
    config: &serde_json::Value,
    config_path: &Path,
) -> Result<(Option<ChatTemplate>, PathBuf)> {
    let jinja = dir.join("chat_template.jinja");
    let (source, from) = if jinja.exists() {
        (Some(std::fs::read_to_string(&jinja).at(&jinja)?), jinja)
    } else {
        let source = match &config["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => {
                let default = list.iter().find(|t| t["name"].as_str() == Some("default"));
                let t = default.ok_or_else(|| tok_err(config_path, "chat_template: a list of templates without one named \"default\""))?;
                Some(t["template"].as_str().ok_or_else(|| tok_err(config_path, "chat_template: the \"default\" entry has no string \"template\""))?.to_string())
            }
            serde_json::Value::Null => None,
            _ => return Err(tok_err(config_path, "chat_template: expected a string or a list of {name, template}")),
        };
        (source, config_path.to_path_buf())
    };
    let template = match source {
        Some(s) => Some(ChatTemplate::new(&s).map_err(|msg| tok_err(&from, format!("chat template: {msg}")))?),
        None => None,
    };
    Ok((template, from))
}

/// A transformers v4-style tokenizer_config.json for `tokenizer` (PreTrainedTokenizerFast).
fn tokenizer_config(tokenizer: &Tokenizer, model_max_length: Option<usize>) -> serde_json::Value {
    let has = |t: &str| tokenizer.token_to_id(t).is_some();
    let eos = [END_OF_TEXT, "</s>", "<eos>"].into_iter().find(|t| has(t));
    let bos = ["<s>", "<bos>"].into_iter().find(|t| has(t)).or(eos);
    let unk = ["<unk>", "[UNK]"].into_iter().find(|t| has(t)).or(eos);
    let pad = ["<pad>", "[PAD]"].into_iter().find(|t| has(t));
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
    // BERT's tokens (a wordpiece tokenizer): what BertTokenizer names them.
    for (key, t) in [("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("mask_token", "[MASK]")] {
        if has(t) {
            config[key] = json!(t);
        }
    }
    if let Some(n) = model_max_length {
        config["model_max_length"] = json!(n);
    }
    config
}
