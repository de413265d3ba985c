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

/// `--kind wordpiece` is BERT's tokenizer: transformers' AutoTokenizer loads it with its
/// `[CLS]`/`[SEP]`/`[MASK]`/`[PAD]` tokens and encodes (with the `[CLS] … [SEP]` template) and
/// decodes as rankforge does; what masked-LM training and fill-mask read.
#[test]
fn wordpiece_is_berts_tokenizer_and_loads_in_transformers() {
    let f = fixture();
    let out = scratch("wordpiece").join("tok");
    ok(&["tokenizer", "train", "--input", f.corpus.to_str().unwrap(), "--vocab-size", "800", "--kind", "wordpiece", "--output", out.to_str().unwrap()]);
    let tok = LoadedTokenizer::load(&out).unwrap();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().enumerate() {
        assert_eq!(tok.tokenizer.token_to_id(t), Some(i as u32), "{t}");
    }
    assert_eq!(tok.special("mask_token"), Some("[MASK]"));
    let text = "In the beginning God created the heaven and the earth. And the earth was without form";
    let ours = tok.encode_with_special(text).unwrap();
    assert_eq!((ours[0], *ours.last().unwrap()), (2, 3), "[CLS] … [SEP]: {ours:?}");
    assert!(!ours.contains(&1), "no [UNK] in training-like text: {ours:?}");
    let code = "import json, sys\nfrom transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(sys.argv[1])\n\
                ids = t(sys.argv[2])['input_ids']\n\
                print(json.dumps({'ids': ids, 'decoded': t.decode(ids, skip_special_tokens=True), 'mask': t.mask_token, 'cls': t.cls_token, 'sep': t.sep_token, 'pad': t.pad_token_id}))";
    let py = Command::new(python()).args(["-c", code, out.to_str().unwrap(), text]).output().unwrap();
    assert!(py.status.success(), "python: {}", String::from_utf8_lossy(&py.stderr));
    let v: serde_json::Value = serde_json::from_slice(py.stdout.trim_ascii_end().rsplit(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(serde_json::from_value::<Vec<u32>>(v["ids"].clone()).unwrap(), ours, "transformers encodes differently");
    assert_eq!(v["decoded"], text.to_lowercase(), "uncased, and decodes back");
    assert_eq!((&v["mask"], &v["cls"], &v["sep"], &v["pad"]), (&"[MASK]".into(), &"[CLS]".into(), &"[SEP]".into(), &0.into()));
}
