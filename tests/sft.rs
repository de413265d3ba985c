//! Fine-tuning data ([`rankforge::sft`]) and chat templates: conformance with TRL's SFTTrainer
//! preparation and transformers' apply_chat_template (tests/py/trl_sft_reference.py), and every
//! format, file type, option and error on small files written here.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rankforge::chat_template::ChatMessage;
use rankforge::config::SftDataConfig as DataConfig;
use rankforge::sft::{self, Example, SftData};
use rankforge::tokenizer::{LoadedTokenizer, TokenizerKind, TrainOptions};
use serde_json::{json, Value};

use crate::common::{python, rankforge, scratch};

/// tests/py/trl_sft_reference.py's output directory, made once per test process.
fn reference() -> &'static (PathBuf, Value) {
    static REF: OnceLock<(PathBuf, Value)> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("sft-reference");
        let script = crate::common::root().join("tests/py/trl_sft_reference.py");
        let out = std::process::Command::new(python()).arg(&script).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        (dir, v)
    })
}

fn data_config(v: Value) -> DataConfig {
    let mut v = v;
    v.as_object_mut().unwrap().entry("val_fraction").or_insert(json!(0.0));
    serde_json::from_value(v).unwrap()
}

fn pairs(examples: &[Example]) -> Vec<(Vec<u32>, Vec<i64>)> {
    examples.iter().map(|e| (e.input_ids.clone(), e.labels.clone())).collect()
}

#[test]
fn trl_conformance_prompt_completion_text_messages_packing() {
    let (_, r) = reference();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "the reference covers every format on three tokenizers");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let tok = LoadedTokenizer::load(Path::new(case["rust_tokenizer"].as_str().unwrap())).unwrap();
        let data = sft::load(&data_config(case["data"].clone()), &tok, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<(Vec<u32>, Vec<i64>)> = serde_json::from_value(
            Value::Array(case["examples"].as_array().unwrap().iter().map(|e| json!([e["input_ids"], e["labels"]])).collect()),
        )
        .unwrap();
        assert_eq!(pairs(&data.train), want, "{name}");
        assert!(data.val.is_empty());
    }
}

#[test]
fn chat_templates_render_like_transformers() {
    let (_, r) = reference();
    for case in r["renders"].as_array().unwrap() {
        let tok = LoadedTokenizer::load(Path::new(case["tokenizer"].as_str().unwrap())).unwrap();
        let msgs: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = tok.apply_chat_template(&msgs, agp).unwrap();
        assert_eq!(got, case["text"].as_str().unwrap(), "{} {msgs:?} {agp}", case["tokenizer"]);
    }
}

#[test]
fn csv_json_and_parquet_read_like_jsonl() {
    let (dir, _) = reference();
    let tok = LoadedTokenizer::load(&dir.join("tok_chatml")).unwrap();
    let load = |file: &str| pairs(&sft::load(&data_config(json!({"train": dir.join(file)})), &tok, 0).unwrap().train);
    let jsonl = load("pc.jsonl");
    assert_eq!(jsonl.len(), 7);
    for other in ["pc.csv", "pc.json", "pc.parquet"] {
        assert_eq!(load(other), jsonl, "{other}");
    }
    assert_eq!(load("messages.parquet"), load("messages.jsonl"));
}

/// A small byte-level BPE with ChatML tokens and template, trained here (no Python).
fn tiny_tokenizer() -> LoadedTokenizer {
    static TOK: OnceLock<PathBuf> = OnceLock::new();
    let path = TOK.get_or_init(|| {
        let d = scratch("sft-tok");
        let corpus = d.join("corpus.txt");
        std::fs::write(&corpus, "The quick brown fox answers questions. What is two plus two? Four.\n".repeat(50)).unwrap();
        let out = d.join("tok");
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
        let opts = TrainOptions { inputs: vec![corpus], vocab_size: 400, kind: TokenizerKind::Bpe, output: out.clone(), special_tokens: specials, min_frequency: 1, show_progress: false };
        rankforge::tokenizer::train(&opts).unwrap();
        std::fs::write(out.join("chat_template.jinja"), "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}").unwrap();
        out
    });
    LoadedTokenizer::load(path).unwrap()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn trained_text(tok: &LoadedTokenizer, e: &Example) -> String {
    let ids: Vec<u32> = e.labels.iter().filter(|&&l| l != -100).map(|&l| l as u32).collect();
    tok.decode(&ids).unwrap()
}

fn load(cfg: Value, tok: &LoadedTokenizer) -> rankforge::error::Result<SftData> {
    sft::load(&data_config(cfg), tok, 0)
}

#[test]
fn every_format_with_field_overrides() {
    let dir = scratch("sft-formats");
    let tok = tiny_tokenizer();
    let eos = "<|endoftext|>";
    let pc = write(&dir.join("pc.jsonl"), "{\"q\": \"What is two plus two?\", \"a\": \" Four.\"}\n");
    let d = load(json!({"train": pc, "prompt_field": "q", "completion_field": "a"}), &tok).unwrap();
    assert_eq!(trained_text(&tok, &d.train[0]), format!(" Four.{eos}"));
    assert_eq!(tok.decode(&d.train[0].input_ids).unwrap(), format!("What is two plus two? Four.{eos}"));

    let text = write(&dir.join("t.json"), "[{\"body\": \"The quick fox.\"}]");
    let d = load(json!({"train": text, "format": "text", "text_field": "body"}), &tok).unwrap();
    assert_eq!(trained_text(&tok, &d.train[0]), format!("The quick fox.{eos}"));

    let alpaca = write(&dir.join("alpaca.jsonl"), "{\"instruction\": \"Add\", \"input\": \"2 2\", \"output\": \"Four.\"}\n{\"instruction\": \"Say\", \"output\": \"Four.\"}\n");
    let d = load(json!({"train": alpaca}), &tok).unwrap();
    for (e, input) in d.train.iter().zip([Some("2 2"), None]) {
        let prompt = sft::alpaca_prompt(if input.is_some() { "Add" } else { "Say" }, input);
        assert_eq!(tok.decode(&e.input_ids).unwrap(), format!("{prompt}Four.{eos}"));
        assert_eq!(trained_text(&tok, e), format!("Four.{eos}"));
    }

    let dolly = write(&dir.join("dolly.csv"), "task,background,answer,category\nWhat?,fox,Four.,qa\n");
    let cfg = json!({"train": dolly, "instruction_field": "task", "context_field": "background", "response_field": "answer"});
    let d = load(cfg, &tok).unwrap();
    assert_eq!(tok.decode(&d.train[0].input_ids).unwrap(), format!("{}Four.{eos}", sft::alpaca_prompt("What?", Some("fox"))));

    let chat = write(&dir.join("chat.jsonl"), &(json!({"conv": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Two."}]}).to_string() + "\n"));
    let d = load(json!({"train": chat, "messages_field": "conv"}), &tok).unwrap();
    assert_eq!(trained_text(&tok, &d.train[0]), "Four.<|im_end|>\nTwo.<|im_end|>\n");
}

#[test]
fn truncation_drop_and_packing_counts() {
    let dir = scratch("sft-trunc");
    let tok = tiny_tokenizer();
    let long_prompt = "The quick brown fox answers questions. ".repeat(10);
    let rows = [("What?", " Four."), (long_prompt.as_str(), " Four."), ("What?", " The quick brown fox answers questions and questions.")];
    let text: String = rows.iter().map(|(p, c)| json!({"prompt": p, "completion": c}).to_string() + "\n").collect();
    let file = write(&dir.join("d.jsonl"), &text);
    let full = load(json!({"train": file}), &tok).unwrap();
    let max = 12;
    let d = load(json!({"train": file, "max_length": max}), &tok).unwrap();
    let prompt_len = |e: &Example| e.labels.iter().take_while(|&&l| l == -100).count();
    let want_truncated = full.train.iter().filter(|e| e.input_ids.len() > max).count();
    let want_dropped = full.train.iter().filter(|e| prompt_len(e) >= max).count();
    assert!(prompt_len(&full.train[1]) >= max && full.train[2].input_ids.len() > max && full.train[0].input_ids.len() <= max, "the rows exercise dropping and truncation");
    assert_eq!((d.stats.rows, d.stats.truncated, d.stats.dropped_no_labels), (3, want_truncated, want_dropped));
    assert_eq!(pairs(&d.train), vec![(full.train[0].input_ids.clone(), full.train[0].labels.clone()), (full.train[2].input_ids[..max].to_vec(), full.train[2].labels[..max].to_vec())]);
    assert!(d.train.iter().all(|e| e.input_ids.len() <= max && e.labels.len() == e.input_ids.len()));

    let p = load(json!({"train": file, "max_length": max, "packing": true}), &tok).unwrap();
    let (ids, labels): (Vec<u32>, Vec<i64>) = full.train.iter().flat_map(|e| e.input_ids.iter().copied().zip(e.labels.iter().copied())).unzip();
    let windows: Vec<(Vec<u32>, Vec<i64>)> = ids.chunks(max).zip(labels.chunks(max)).map(|(i, l)| (i.to_vec(), l.to_vec())).collect();
    assert_eq!(pairs(&p.train), windows, "packed = the concatenation cut every max_length tokens, labels alike");
    assert!(p.train[..p.train.len() - 1].iter().all(|e| e.input_ids.len() == max));
    assert_eq!((p.stats.truncated, p.stats.dropped_no_labels), (0, 0));
}

#[test]
fn malformed_rows_name_file_and_line_or_are_skipped() {
    let dir = scratch("sft-bad");
    let tok = tiny_tokenizer();
    let jsonl = write(&dir.join("bad.jsonl"), "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \"completion\": 3}\n\n{oops\n{\"prompt\": \"a\"}\n");
    let e = load(json!({"train": jsonl}), &tok).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 2: field \"completion\": expected a string, found a number", jsonl.display()));
    let d = load(json!({"train": jsonl, "skip_malformed": true}), &tok).unwrap();
    assert_eq!((d.stats.rows, d.stats.skipped_malformed, d.train.len()), (4, 3, 1));

    let array = write(&dir.join("bad.json"), "[\n  {\"prompt\": \"a\", \"completion\": \"b\"},\n  {\"prompt\": \"a\",\n   \"completion\": \"b\"},\n  {\"prompt\": \"c\"}\n]\n");
    let e = load(json!({"train": array}), &tok).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 5: missing field \"completion\"", array.display()));
    let e = load(json!({"train": write(&dir.join("syntax.json"), "[{\"prompt\": \"a\",\n}]")}), &tok).unwrap_err().to_string();
    assert!(e.contains("syntax.json: line 2: bad JSON"), "{e}");

    let csv = write(&dir.join("bad.csv"), "prompt,completion\na,b\nc\n");
    let e = load(json!({"train": csv}), &tok).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: line 3: bad CSV row", csv.display())), "{e}");

    let chat = write(&dir.join("chat.jsonl"), "{\"messages\": [{\"role\": \"user\"}]}\n");
    let e = load(json!({"train": chat}), &tok).unwrap_err().to_string();
    assert!(e.ends_with("line 1: field \"messages\": message 0: missing \"content\""), "{e}");

    let unknown = write(&dir.join("unknown.jsonl"), "{\"question\": \"a\"}\n");
    let e = load(json!({"train": unknown}), &tok).unwrap_err().to_string();
    assert!(e.contains("unknown.jsonl: line 1: cannot detect data.format from the fields [\"question\"]"), "{e}");
    let e = load(json!({"train": dir.join("nothing-*.jsonl")}), &tok).unwrap_err().to_string();
    assert!(e.contains("data.train: the pattern matches no file"), "{e}");
    let e = load(json!({"train": write(&dir.join("notes.txt"), "x")}), &tok).unwrap_err().to_string();
    assert!(e.contains("notes.txt: unsupported file type"), "{e}");
}

/// Issue 10, item 6: a row that is not UTF-8 is a malformed row at its line (exit 2), which
/// `skip_malformed` skips, not an I/O error for the whole file.
#[test]
fn non_utf8_rows_name_file_and_line_or_are_skipped() {
    let dir = scratch("sft-utf8");
    let tok = tiny_tokenizer();
    let jsonl = dir.join("latin1.jsonl");
    std::fs::write(&jsonl, b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"caf\xe9\", \"completion\": \"b\"}\n{\"prompt\": \"c\", \"completion\": \"d\"}\n").unwrap();
    let e = load(json!({"train": jsonl}), &tok).unwrap_err();
    assert_eq!(e.to_string(), format!("{}: line 2: not UTF-8 text (invalid byte 0xe9 at column 16)", jsonl.display()));
    assert_eq!(e.exit_code(), rankforge::error::EXIT_BAD_INPUT);
    let d = load(json!({"train": jsonl, "skip_malformed": true}), &tok).unwrap();
    assert_eq!((d.stats.rows, d.stats.skipped_malformed, d.train.len()), (3, 1, 2));

    // A JSON array cannot be split into rows: the file is refused, at the line of the byte.
    let array = dir.join("latin1.json");
    std::fs::write(&array, b"[\n  {\"prompt\": \"a\", \"completion\": \"b\"},\n  {\"prompt\": \"\xff\", \"completion\": \"b\"}\n]\n").unwrap();
    let e = load(json!({"train": array, "skip_malformed": true}), &tok).unwrap_err();
    assert_eq!(e.to_string(), format!("{}: line 3: not UTF-8 text (invalid byte 0xff at column 15)", array.display()));
    assert_eq!(e.exit_code(), rankforge::error::EXIT_BAD_INPUT);
}

#[test]
fn folders_globs_and_validation() {
    let dir = scratch("sft-files");
    let tok = tiny_tokenizer();
    let row = |i: usize| json!({"prompt": format!("What {i}?"), "completion": format!(" Four {i}.")}).to_string() + "\n";
    write(&dir.join("data/b.jsonl"), &(row(3) + &row(4)));
    write(&dir.join("data/a.jsonl"), &(row(1) + &row(2)));
    write(&dir.join("data/sub/c.jsonl"), &row(5));
    write(&dir.join("data/README.md"), "not data");
    let prompts = |d: &SftData| -> Vec<String> { d.train.iter().map(|e| tok.decode(&e.input_ids).unwrap()[5..6].to_string()).collect() };
    let folder = load(json!({"train": dir.join("data")}), &tok).unwrap();
    assert_eq!(prompts(&folder), ["1", "2", "3", "4", "5"]);
    let glob = load(json!({"train": dir.join("data/*.jsonl").to_string_lossy()}), &tok).unwrap();
    assert_eq!(prompts(&glob), ["1", "2", "3", "4"]);

    let val = load(json!({"train": dir.join("data/a.jsonl"), "val": dir.join("data/sub")}), &tok).unwrap();
    assert_eq!((val.train.len(), val.val.len(), val.stats.rows), (2, 1, 3));
    let split = |seed| sft::load(&data_config(json!({"train": dir.join("data"), "val_fraction": 0.4})), &tok, seed).unwrap();
    let (a, b) = (split(1), split(1));
    assert_eq!((a.train.len(), a.val.len()), (3, 2));
    assert_eq!(pairs(&a.val), pairs(&b.val), "same seed, same split");
    assert!(a.val.iter().all(|v| !a.train.contains(v)));
    let other = (2..40).map(split).find(|d| pairs(&d.val) != pairs(&a.val));
    assert!(other.is_some(), "the seed chooses the held-out examples");
}

#[test]
fn tokenizer_specials_and_template_round_trip() {
    let (dir, _) = reference();
    let tok = LoadedTokenizer::load(&dir.join("tok_llama")).unwrap();
    assert_eq!(tok.special("bos_token"), Some("<s>"));
    assert_eq!((tok.bos_id, tok.add_bos_token), (tok.tokenizer.token_to_id("<s>"), Some(true)));
    // BOS once, whether add_bos_token rebuilds the post-processor or the post-processor adds it.
    let pp = LoadedTokenizer::load(&dir.join("tok_llama_pp")).unwrap();
    for t in [&tok, &pp] {
        let ids = t.encode_with_special("hello").unwrap();
        assert_eq!(ids.iter().filter(|&&i| Some(i) == t.bos_id).count(), 1);
    }
    let out = scratch("sft-save");
    tok.save_pretrained(&out, Some(64)).unwrap();
    assert!(out.join("chat_template.jinja").exists());
    let again = LoadedTokenizer::load(&out).unwrap();
    let msgs = [ChatMessage { role: "user".into(), content: "hi".into() }];
    assert_eq!(again.apply_chat_template(&msgs, true).unwrap(), tok.apply_chat_template(&msgs, true).unwrap());
    assert_eq!(again.encode_with_special("hello").unwrap(), tok.encode_with_special("hello").unwrap());
    // The list form of tokenizer_config.json's chat_template takes "default".
    let fancy = LoadedTokenizer::load(&dir.join("tok_fancy")).unwrap();
    assert!(fancy.apply_chat_template(&msgs, false).unwrap().starts_with("<<SYS>>default<</SYS>>"));
    let bad = [ChatMessage { role: "tool".into(), content: "x".into() }];
    let e = fancy.apply_chat_template(&bad, false).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("bad role tool"), "{e}");
}

#[test]
fn pretraining_recipe_without_tokenizer_names_the_key() {
    let dir = scratch("sft-recipe");
    let recipe = write(&dir.join("r.toml"), &format!(
        "[run]\ndir = {:?}\n[model]\nkind = \"gpt\"\nn_layer = 1\nn_head = 1\nn_embd = 8\nblock_size = 8\n[data]\ntrain = {:?}\n",
        dir.join("run").display().to_string(), crate::common::root().join("data/kjv.txt").display().to_string()
    ));
    let out = rankforge(&["train", "--config", recipe.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data.tokenizer is not set"), "{err}");
}


/// A directory `datasets` wrote with `save_to_disk` reads as `load_from_disk` reads it: a
/// Dataset gives the same examples as the JSONL it was made from, a DatasetDict gives its
/// `train` split to `data.train` and its `validation` split to `data.val`.
#[test]
fn save_to_disk_directories_read_like_the_jsonl_they_came_from() {
    let (dir, _) = reference();
    let out = dir.join("disk");
    let py = "import json, sys, datasets\n\
              src, out = sys.argv[1], sys.argv[2]\n\
              for name in ['pc', 'messages']:\n\
              \x20   rows = [json.loads(l) for l in open(f'{src}/{name}.jsonl') if l.strip()]\n\
              \x20   ds = datasets.Dataset.from_list(rows)\n\
              \x20   ds.save_to_disk(f'{out}/{name}_dataset')\n\
              \x20   datasets.DatasetDict({'train': ds, 'validation': ds.select([0, 1])}).save_to_disk(f'{out}/{name}_dict')\n";
    let run = std::process::Command::new(python()).args(["-c", py, dir.to_str().unwrap(), out.to_str().unwrap()]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let tok = LoadedTokenizer::load(&dir.join("tok_chatml")).unwrap();
    for name in ["pc", "messages"] {
        let load = |v: Value| sft::load(&data_config(v), &tok, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        let jsonl = pairs(&load(json!({"train": dir.join(format!("{name}.jsonl"))})).train);
        assert!(jsonl.len() >= 2, "{name}");
        let from_dataset = load(json!({"train": out.join(format!("{name}_dataset"))}));
        assert_eq!(pairs(&from_dataset.train), jsonl, "{name}: Dataset directory");
        let dict = out.join(format!("{name}_dict"));
        let from_dict = load(json!({"train": dict, "val": dict}));
        assert_eq!(pairs(&from_dict.train), jsonl, "{name}: DatasetDict train split");
        assert_eq!(pairs(&from_dict.val), jsonl[..2].to_vec(), "{name}: DatasetDict validation split");
    }
    // A split's directory is itself a Dataset.
    let split = sft::load(&data_config(json!({"train": out.join("pc_dict/validation")})), &tok, 0).unwrap();
    assert_eq!(split.train.len(), 2);
    // A DatasetDict without the split a key needs is named.
    let only_train = out.join("pc_train_only");
    let py = "import sys, datasets\nd = datasets.load_from_disk(sys.argv[1])\ndatasets.DatasetDict({'train': d['train']}).save_to_disk(sys.argv[2])\n";
    let run = std::process::Command::new(python()).args(["-c", py, out.join("pc_dict").to_str().unwrap(), only_train.to_str().unwrap()]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let e = sft::load(&data_config(json!({"train": only_train, "val": only_train})), &tok, 0).unwrap_err().to_string();
    assert!(e.contains("data.val: the DatasetDict has no validation or test split (it has: train)"), "{e}");
}
