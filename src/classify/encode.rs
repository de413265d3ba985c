//! Texts (and text pairs) to model inputs as transformers' `tokenizer(text, text_pair,
//! truncation=True, max_length=N)` gives them: the tokenizer's post-processor adds the special
//! tokens (`[CLS] a [SEP] b [SEP]` with segment ids 0 then 1 for BERT), truncation is
//! `longest_first` (a pair loses tokens from its longer text first; the special tokens count).
//! A tokenizer whose `tokenizer_config.json` sets `add_bos_token`/`add_eos_token` (or whose
//! tokenizer.json has no post-processor) gets transformers 5's template instead
//! (`update_post_processor`: `bos $A eos` and `bos $A eos bos $B eos`, each only when on).

use std::path::PathBuf;

use tokenizers::processors::template::TemplateProcessing;
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{PostProcessor, Tokenizer};

use crate::error::{Error, Result};
use crate::tokenizer::LoadedTokenizer;

/// One encoded text: ids, segment ids, and whether it was cut to `max_length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    pub truncated: bool,
}

/// A tokenizer set up for classification inputs.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    path: PathBuf,
}

fn tok_err(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer { path: path.to_path_buf(), msg: e.to_string() }
}

impl TextEncoder {
    /// `max_length` (special tokens included) is `key`'s value, for messages.
    pub fn new(tok: &LoadedTokenizer, max_length: Option<usize>, key: &str) -> Result<TextEncoder> {
        let mut tokenizer = tok.tokenizer.clone();
        let override_post = tok.add_bos_token.is_some() || tok.add_eos_token.is_some() || tokenizer.get_post_processor().is_none();
        if override_post {
            tokenizer.with_post_processor(Some(transformers_template(tok)?));
        }
        tokenizer.with_padding(None);
        let truncation = max_length.map(|max_length| TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        });
        tokenizer.with_truncation(truncation).map_err(|e| Error::Input(format!("{key} = {}: {e}", max_length.unwrap_or(0))))?;
        Ok(TextEncoder { tokenizer, path: tok.path.clone() })
    }

    /// Whether the post-processor marks where a second text starts (adds tokens between or
    /// around a pair); without that a model could not tell the two texts apart.
    pub fn has_pair_template(&self) -> bool {
        self.tokenizer.get_post_processor().is_some_and(|p| p.added_tokens(true) > 0)
    }

    /// The error for a text pair on a tokenizer without a pair template; `key` names the
    /// setting that asked for pairs.
    pub fn no_pair_template(&self, key: &str) -> Error {
        tok_err(
            &self.path,
            format!("{key}: this tokenizer has no pair template (its post-processor adds no separator between two texts), so text pairs cannot be encoded; classify single texts or use a model whose tokenizer has one (BERT's [CLS] a [SEP] b [SEP])"),
        )
    }

    /// `tokenizer(text, text_pair)`: see the module docs.
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoded> {
        let enc = match pair {
            Some(p) => self.tokenizer.encode((text, p), true),
            None => self.tokenizer.encode(text, true),
        }
        .map_err(|e| tok_err(&self.path, e))?;
        Ok(Encoded {
            input_ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            token_type_ids: enc.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }
}

/// transformers 5's `update_post_processor` template.
fn transformers_template(tok: &LoadedTokenizer) -> Result<TemplateProcessing> {
    let bos = tok.special("bos_token").zip(tok.bos_id).filter(|_| tok.add_bos_token == Some(true));
    let eos = tok.special("eos_token").zip(tok.eos_id).filter(|_| tok.add_eos_token == Some(true));
    let piece = |t: Option<(&str, u32)>, seg: u8| t.map_or(String::new(), |(s, _)| format!(" {s}:{seg}"));
    let single = format!("{}$A:0{}", bos.map_or(String::new(), |(s, _)| format!("{s}:0 ")), piece(eos, 0));
    let pair = format!("{single}{} $B:1{}", piece(bos, 1), piece(eos, 1));
    let specials: Vec<(String, u32)> = bos.into_iter().chain(eos).map(|(s, id)| (s.to_string(), id)).collect();
    let built = TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| tok_err(&tok.path, format!("post-processor template {single:?} / {pair:?}: {e}")))?
        .special_tokens(specials)
        .build();
    built.map_err(|e| tok_err(&tok.path, format!("post-processor template: {e}")))
}
