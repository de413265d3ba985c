//! DPO preference data ([`rankforge::dpo`]) against TRL 1.16 (tests/py/trl_dpo_reference.py):
//! for standard, conversational and implicit-prompt rows on a Qwen2-style (ChatML) and a
//! Llama-style tokenizer, at `max_length` 40 (one pair truncated, one whose prompt fills it
//! dropped) and 1024, the pairs equal `DPOTrainer(...).train_dataset`'s `prompt_ids` /
//! `chosen_ids` / `rejected_ids` and the collated batch equals its `DataCollatorForPreference`'s
//! tensors, exactly; Parquet, CSV and renamed fields read like JSONL; a `DatasetDict`'s test
//! split is the validation data. Bad rows, tokenizers and `[task]` values: one error line
//! naming the file and line or the key, exit 2.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rankforge::dpo::{self, DpoData, DpoDataConfig, Pair};
use rankforge::tokenizer::LoadedTokenizer;
use serde_json::{json, Value};

use crate::common::{fails, python, root, scratch};

/// tests/py/trl_dpo_reference.py's output directory and reference.json, made once per process.
fn reference() -> &'static (PathBuf, Value) {
    static REF: OnceLock<(PathBuf, Value)> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("dpo-reference");
        let out = std::process::Command::new(python()).arg(root().join("tests/py/trl_dpo_reference.py")).arg(&dir).output().unwrap();
        assert!(out.status.success(), "trl_dpo_reference.py: {}", String::from_utf8_lossy(&out.stderr));
        let v = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        (dir, v)
    })
}

fn path(name: &str) -> PathBuf {
    reference().0.join(name)
}

fn tok(name: &str) -> LoadedTokenizer {
    LoadedTokenizer::load(&path(name)).unwrap()
}

/// `train` read with `max_length`, nothing held out.
fn read(train: &Path, tok: &LoadedTokenizer, max_length: usize) -> DpoData {
    let mut cfg = DpoDataConfig::for_files(vec![train.to_path_buf()]);
    (cfg.max_length, cfg.val_fraction) = (max_length, Some(0.0));
    dpo::load(&cfg, tok, 0).unwrap_or_else(|e| panic!("{}: {e}", train.display()))
}

fn as_json(pairs: &[Pair]) -> Value {
    pairs.iter().map(|p| json!({"prompt_ids": p.prompt, "chosen_ids": p.chosen, "rejected_ids": p.rejected})).collect()
}

fn rows(t: &tch::Tensor) -> Value {
    let n = t.size()[0];
    (0..n).map(|i| json!(Vec::<i64>::try_from(t.get(i)).unwrap())).collect()
}

#[test]
fn pairs_and_batches_equal_trl_dpo_trainer() {
    let cases = reference().1["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 18, "4 row kinds × 2 lengths × 2 tokenizers, and a DatasetDict per tokenizer");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let tok = LoadedTokenizer::load(Path::new(case["tokenizer"].as_str().unwrap())).unwrap();
        let max_length = case["max_length"].as_u64().unwrap() as usize;
        let mut cfg = DpoDataConfig::for_files(vec![PathBuf::from(case["train"].as_str().unwrap())]);
        cfg.max_length = max_length;
        if !name.ends_with("/dict") {
            cfg.val_fraction = Some(0.0);
        }
        let d = dpo::load(&cfg, &tok, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(as_json(&d.train), case["pairs"], "{name}");
        assert_eq!(as_json(&d.val), case["val_pairs"], "{name}: validation");
        assert_eq!(d.pad_id, case["pad_id"].as_i64().unwrap(), "{name}");
        let all: Vec<&Pair> = d.train.iter().collect();
        let batch = dpo::collate(&all, d.pad_id, Some(max_length));
        for key in ["input_ids", "attention_mask", "completion_mask"] {
            let ours = match key {
                "input_ids" => rows(&batch.input_ids),
                "attention_mask" => rows(&batch.attention_mask),
                _ => rows(&batch.completion_mask),
            };
            assert_eq!(ours, case["batch"][key], "{name}: {key}");
        }
        assert_eq!(batch.pairs(), d.train.len());

        // What the cases are built to exercise.
        let s = &d.stats;
        let (short, implicit) = (max_length == 40, name.contains("/implicit"));
        assert_eq!(s.dropped, usize::from(short), "{name}: the pair whose prompt fills max_length");
        assert_eq!(s.truncated > 0, short, "{name}: a pair longer than max_length");
        if short {
            assert_eq!(batch.input_ids.size()[1], 40, "{name}: cut to max_length");
        }
        assert_eq!(s.implicit_prompt, if implicit { d.train.len() } else { 0 }, "{name}");
        if name.contains("/standard/") {
            assert_eq!(s.identical, 1, "{name}: \"The sky is\" blue / blue");
            let eos = i64::from(tok.eos_id.unwrap());
            assert!(d.train.iter().all(|p| p.chosen.last() == Some(&eos) && p.rejected.last() == Some(&eos)), "{name}: EOS appended");
            // " drei — fertig.</s><|endoftext|>" ends with ChatML's EOS (not added again), not
            // with Llama's (added after the </s> written in the text).
            let written = if tok.special("eos_token") == Some("<|endoftext|>") { 1 } else { 2 };
            assert_eq!(d.train[2].chosen.iter().filter(|&&t| t == eos).count(), written, "{name}: EOS appended unless already there");
        }
    }
}

#[test]
fn parquet_csv_and_renamed_fields_read_like_jsonl() {
    for name in ["tok_chatml", "tok_llama"] {
        let tok = tok(name);
        let jsonl = read(&path("standard.jsonl"), &tok, 40).train;
        assert_eq!(jsonl.len(), 5);
        assert_eq!(read(&path("standard.parquet"), &tok, 40).train, jsonl, "{name}: parquet");
        assert_eq!(read(&path("standard.csv"), &tok, 40).train, jsonl, "{name}: csv");
        let conv = read(&path("conversational.jsonl"), &tok, 40).train;
        assert_eq!(read(&path("conversational.parquet"), &tok, 40).train, conv, "{name}: conversational parquet");
    }
    let dir = scratch("dpo-renamed");
    let renamed: String = std::fs::read_to_string(path("standard.jsonl"))
        .unwrap()
        .replace("\"prompt\":", "\"question\":")
        .replace("\"chosen\":", "\"good\":")
        .replace("\"rejected\":", "\"bad\":");
    std::fs::write(dir.join("renamed.jsonl"), renamed).unwrap();
    let mut cfg = DpoDataConfig::for_files(vec![dir.join("renamed.jsonl")]);
    cfg.val_fraction = Some(0.0);
    (cfg.prompt_field, cfg.chosen_field, cfg.rejected_field) = (Some("question".into()), Some("good".into()), Some("bad".into()));
    let tok = tok("tok_chatml");
    assert_eq!(dpo::load(&cfg, &tok, 0).unwrap().train, read(&path("standard.jsonl"), &tok, 1024).train);
    // Without the names the rows have no chosen field.
    let e = dpo::load(&DpoDataConfig::for_files(vec![dir.join("renamed.jsonl")]), &tok, 0).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 1: missing field \"chosen\"", dir.join("renamed.jsonl").display()));
}

#[test]
fn held_out_pairs_are_seeded() {
    let tok = tok("tok_llama");
    let all = read(&path("standard.jsonl"), &tok, 1024).train;
    let mut cfg = DpoDataConfig::for_files(vec![path("standard.jsonl")]);
    cfg.val_fraction = Some(0.4);
    let a = dpo::load(&cfg, &tok, 3).unwrap();
    assert_eq!((a.train.len(), a.val.len(), a.stats.pairs, a.stats.rows), (4, 2, 6, 6));
    let again = dpo::load(&cfg, &tok, 3).unwrap();
    assert_eq!((&a.train, &a.val), (&again.train, &again.val));
    let mut back: Vec<Pair> = a.train.iter().chain(&a.val).cloned().collect();
    let mut want = all.clone();
    back.sort_by(|x, y| x.prompt.cmp(&y.prompt));
    want.sort_by(|x, y| x.prompt.cmp(&y.prompt));
    assert_eq!(back, want);
}

fn load_err(cfg: &DpoDataConfig, tok_name: &str) -> String {
    let e = dpo::load(cfg, &tok(tok_name), 0).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    e.to_string()
}

#[test]
fn bad_rows_and_tokenizers_name_the_file_line_and_key() {
    let dir = scratch("dpo-bad");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        DpoDataConfig::for_files(vec![p])
    };
    let at = |cfg: &DpoDataConfig, line: usize, msg: &str| format!("{}: line {line}: {msg}", cfg.train[0].display());
    let good = r#"{"prompt": "a", "chosen": " b", "rejected": " c"}"#;

    let cfg = file("missing.jsonl", &format!("{good}\n{}\n", r#"{"prompt": "a", "chosen": " b"}"#));
    assert_eq!(load_err(&cfg, "tok_chatml"), at(&cfg, 2, "missing field \"rejected\""));
    let cfg = file("missing_chosen.jsonl", &format!("{good}\n\n{}\n", r#"{"prompt": "a", "chosen": null, "rejected": " c"}"#));
    assert_eq!(load_err(&cfg, "tok_chatml"), at(&cfg, 3, "missing field \"chosen\""));
    let cfg = file("number.jsonl", r#"{"prompt": "a", "chosen": 3, "rejected": " c"}"#);
    assert_eq!(load_err(&cfg, "tok_chatml"), at(&cfg, 1, "field \"chosen\": expected a string or a list of messages, found a number"));
    let cfg = file("mixed.jsonl", r#"{"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}], "rejected": [{"role": "assistant", "content": "c"}]}"#);
    assert_eq!(
        load_err(&cfg, "tok_chatml"),
        at(&cfg, 1, "field \"prompt\" is a string but \"chosen\" and \"rejected\" are a list of messages: give all three as strings or all as lists of messages")
    );
    let cfg = file("mixed_pair.jsonl", r#"{"chosen": "b", "rejected": [{"role": "assistant", "content": "c"}]}"#);
    assert_eq!(load_err(&cfg, "tok_chatml"), at(&cfg, 1, "field \"chosen\" is a string but \"rejected\" is a list of messages: give both as strings or both as lists of messages"));
    let cfg = file("no_role.jsonl", r#"{"prompt": [{"content": "a"}], "chosen": [{"role": "assistant", "content": "b"}], "rejected": [{"role": "assistant", "content": "c"}]}"#);
    assert_eq!(load_err(&cfg, "tok_chatml"), at(&cfg, 1, "field \"prompt\": message 0: missing string \"role\""));
    // The first row decides that the prompt is given; a later row without it is an error.
    let cfg = file("no_prompt.jsonl", &format!("{good}\n{}\n", r#"{"chosen": " b", "rejected": " c"}"#));
    assert_eq!(load_err(&cfg, "tok_chatml"), at(&cfg, 2, "missing field \"prompt\""));

    let mut skip = file("skip.jsonl", &format!("{good}\n{{oops\n{}\n", r#"{"prompt": "a", "chosen": 3, "rejected": " c"}"#));
    skip.skip_malformed = true;
    skip.val_fraction = Some(0.0);
    let d = dpo::load(&skip, &tok("tok_chatml"), 0).unwrap();
    assert_eq!((d.train.len(), d.stats.rows, d.stats.skipped_malformed), (1, 3, 2));

    let cfg = file("all_dropped.jsonl", &format!("{good}\n"));
    let mut short = cfg.clone();
    short.max_length = 1;
    let e = load_err(&short, "tok_chatml");
    assert!(e.starts_with(&format!("{}: data.train: no preference pair left (1 rows, 0 pairs", cfg.train[0].display())) && e.contains("1 dropped"), "{e}");

    let noeos = path("tok_noeos/tokenizer.json");
    let e = load_err(&cfg, "tok_noeos");
    assert_eq!(e, format!("tokenizer {}: has no eos_token: DPO appends it to standard (string) chosen and rejected completions, as TRL does (set eos_token in tokenizer_config.json)", noeos.display()));
    let e = load_err(&DpoDataConfig::for_files(vec![path("conversational.jsonl")]), "tok_noeos");
    assert!(e.starts_with(&format!("tokenizer {}: has no chat template", noeos.display())), "{e}");
}

/// A DPO recipe for `rankforge train` (the model path is never read: the recipe fails first).
fn recipe(dir: &Path) -> PathBuf {
    let text = format!(
        "[run]\ndir = {:?}\n[task]\nkind = \"dpo\"\n[model]\nkind = \"hf\"\npath = {:?}\n[data]\ntrain = {:?}\n",
        dir.join("run").display().to_string(),
        dir.join("no-model").display().to_string(),
        path("standard.jsonl").display().to_string()
    );
    let p = dir.join("dpo.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_task_values_are_one_error_line_naming_the_key() {
    let dir = scratch("dpo-recipe");
    let r = recipe(&dir);
    let r = r.to_str().unwrap();
    for (set, want) in [
        ("task.beta=0", "task.beta: must be a finite number > 0, got 0"),
        ("task.beta=-0.5", "task.beta: must be a finite number > 0, got -0.5"),
        ("task.loss_type=kto", "task.loss_type: unknown variant `kto`, expected one of `sigmoid`, `ipo`, `hinge`, `robust`"),
        ("task.label_smoothing=0.5", "task.label_smoothing: 0.5 is not in [0, 0.5)"),
        ("task.label_smoothing=0.1", "task.label_smoothing: only the robust loss uses it (task.loss_type = \"robust\")"),
        ("data.text_field=t", "data.text_field: only for fine-tuning a causal LM (model.kind = \"hf\"); this recipe has task.kind = \"dpo\""),
    ] {
        let line = fails(&["train", "--config", r, "--set", set]);
        assert!(line.starts_with(&format!("error: {r}: ")) && line.contains(want), "--set {set}: {line}");
    }
}
