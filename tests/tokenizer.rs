//! Tokenizer training: round trip in Rust, and Python `tokenizers` / transformers load the files
//! and encode identically.

use std::process::Command;

use crate::common::*;
use rankforge::tokenizer::LoadedTokenizer;

fn check_python_agrees(tok_dir: &std::path::Path, text: &str, expect_eos: &str) {
    let text_file = tok_dir.join("sample.txt");
    std::fs::write(&text_file, text).unwrap();
    let out = Command::new(python())
        .arg(root().join("tests/py/tokenizer_reference.py"))
        .args([tok_dir, &text_file])
        .output()
        .unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = LoadedTokenizer::load(tok_dir).unwrap().encode(text).unwrap();
    let ids = |k: &str| -> Vec<u32> { serde_json::from_value(v[k].clone()).unwrap() };
    assert_eq!(ids("raw_ids"), ours, "python tokenizers encodes differently");
    assert_eq!(ids("auto_ids"), ours, "transformers AutoTokenizer encodes differently");
    assert_eq!(v["raw_decoded"], text);
    assert_eq!(v["auto_decoded"], text);
    assert_eq!(v["eos_token"], expect_eos);
}

#[test]
fn bpe_round_trips_and_loads_in_python() {
    let f = fixture();
    let tok = LoadedTokenizer::load(&f.tokenizer).unwrap();
    assert_eq!(tok.vocab_size(), 1000);
    assert_eq!(tok.eos_id, Some(0), "<|endoftext|> is special token 0");
    // Byte-level: any text round-trips, also characters never seen in training.
    let text = "In the beginning God created the heaven and the earth.\n  Ünïcödé ✓ 😀 tabs\tand\r\nCRLF";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert!(ids.len() < text.len(), "merges were learned");
    check_python_agrees(&f.tokenizer, text, "<|endoftext|>");
}

#[test]
fn unigram_round_trips_and_loads_in_python() {
    let f = fixture();
    let out = scratch("unigram").join("tok");
    ok(&["tokenizer", "train", "--input", f.corpus.to_str().unwrap(), "--vocab-size", "800", "--kind", "unigram", "--output", out.to_str().unwrap()]);
    let tok = LoadedTokenizer::load(&out).unwrap();
    assert!(tok.vocab_size() <= 800 && tok.vocab_size() > 400, "vocab {}", tok.vocab_size());
    assert_eq!(tok.tokenizer.token_to_id("<unk>"), Some(0));
    let corpus = std::fs::read_to_string(&f.corpus).unwrap();
    let text = &corpus[..2000];
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text, "training-like text round-trips");
    assert!(!ids.contains(&0), "no <unk> in training-like text");
    check_python_agrees(&out, text, "<|endoftext|>");
}

#[test]
fn custom_special_tokens_take_the_first_ids() {
    let f = fixture();
    let out = scratch("specials").join("tok");
    ok(&["tokenizer", "train", "--input", f.corpus.to_str().unwrap(), "--vocab-size", "500", "--output", out.to_str().unwrap(), "--special-tokens", "<s>,</s>,<pad>"]);
    let tok = LoadedTokenizer::load(&out).unwrap();
    assert_eq!(tok.tokenizer.token_to_id("<pad>"), Some(2));
    assert_eq!(tok.eos_id, Some(1), "</s> is the end-of-text token");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["bos_token"], "<s>");
    assert_eq!(cfg["pad_token"], "<pad>");
    assert_eq!(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
}
