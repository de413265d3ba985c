//! `rankforge evaluate` on causal LMs and `[eval] generate = true`, against the Python
//! references (tests/py/lm_eval_reference.py): the transformers perplexity guide's strided loop,
//! a transformers masked completion loss, rouge_score / sacrebleu on the predictions file; the
//! completions equal `rankforge generate`. On the tiny models of tests/finetune.rs (its LoRA run
//! is the fine-tuned model).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::*;
use crate::finetune::{fx, recipe, LORA};

fn run_py(args: &[&str]) -> Value {
    let out = Command::new(python()).arg(root().join("tests/py/lm_eval_reference.py")).args(args).output().unwrap();
    assert!(out.status.success(), "lm_eval_reference.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap()
}

fn evaluate(args: &[&str]) -> Value {
    let mut all = vec!["evaluate", "--json", "--device", "cpu"];
    all.extend_from_slice(args);
    let out = ok(&all);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {out}");
    serde_json::from_str(lines[0]).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Text rows (`{"text"}`) of ~1,500 characters of the corpus: a few hundred tokens.
fn text_rows(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("data/kjv.txt")).unwrap();
    let rows: String = text.lines().filter(|l| !l.trim().is_empty()).skip(40).take(12).map(|l| format!("{}\n", serde_json::json!({"text": l}))).collect();
    let p = dir.join("text.jsonl");
    std::fs::write(&p, rows).unwrap();
    p
}

/// Strided perplexity equals the guide's loop on the same model, text, window and stride:
/// overlapping windows (GPT-2, 64 every 24, a last partial window) and no overlap (Llama,
/// stride = max_length).
#[test]
fn strided_perplexity_equals_the_transformers_guide() {
    let f = fx();
    let dir = scratch("lm-ppl");
    let data = text_rows(&dir);
    for (model, max_length, stride) in [(&f.gpt2, "64", "24"), (&f.llama, "50", "50")] {
        let ours = evaluate(&["--model", s(model), "--data", s(&data), "--max-length", max_length, "--stride", stride]);
        let py = run_py(&["perplexity", s(model), s(&data), max_length, stride]);
        let tokens = py["n_tokens"].as_u64().unwrap();
        assert!(tokens > 4 * max_length.parse::<u64>().unwrap(), "the text spans several windows: {py}");
        assert_eq!(ours["tokens"].as_u64(), Some(tokens), "{ours} vs {py}");
        assert_eq!((ours["n"].as_u64(), ours["stride"].to_string()), (Some(12), stride.to_string()), "{ours}");
        assert!(rel(num(&ours, "loss"), num(&py, "loss")) <= 1e-4, "{ours} vs {py}");
        assert!(rel(num(&ours, "perplexity"), num(&py, "perplexity")) <= 1e-4, "{ours} vs {py}");
        assert!(ours.get("rouge1").is_none() && ours.get("bleu").is_none(), "no generation keys without --generate: {ours}");
    }
    // A .txt file is one document: the same text as one row.
    let joined = dir.join("one.txt");
    std::fs::write(&joined, "In the beginning God created the heaven and the earth. ".repeat(20)).unwrap();
    let row = dir.join("one.jsonl");
    std::fs::write(&row, format!("{}\n", serde_json::json!({"text": std::fs::read_to_string(&joined).unwrap()}))).unwrap();
    let a = evaluate(&["--model", s(&f.gpt2), "--data", s(&joined), "--max-length", "32"]);
    let b = evaluate(&["--model", s(&f.gpt2), "--data", s(&row), "--max-length", "32"]);
    assert_eq!((a["loss"].as_f64(), a["stride"].as_u64()), (b["loss"].as_f64(), Some(16)), "{a} vs {b}");
}

/// The completion loss of prompt/completion rows equals transformers' loss with the same
/// (TRL) masking, token-weighted over the rows.
#[test]
fn completion_loss_equals_a_transformers_masked_loss() {
    let f = fx();
    let dir = scratch("lm-completion");
    let data = dir.join("rows.jsonl");
    let rows: String = std::fs::read_to_string(&f.data).unwrap().lines().skip(50).take(8).map(|l| format!("{l}\n")).collect();
    std::fs::write(&data, rows).unwrap();
    let merged = f.straight.join("final/merged");
    let ours = evaluate(&["--model", s(&merged), "--data", s(&data), "--batch-size", "3"]);
    let py = run_py(&["completion", s(&merged), s(&data)]);
    assert_eq!(ours["tokens"].as_u64(), py["tokens"].as_u64(), "{ours} vs {py}");
    assert_eq!(ours["n"].as_u64(), Some(8));
    assert!(rel(num(&ours, "loss"), num(&py, "loss")) <= 1e-4, "{ours} vs {py}");
    assert!((num(&ours, "perplexity") - num(&ours, "loss").exp()).abs() < 1e-9);
    assert!(ours.get("stride").is_none(), "{ours}");
    // The adapter on its base scores the same as the merged model.
    let adapter = evaluate(&["--model", s(&f.llama), "--adapter", s(&f.straight.join("final")), "--data", s(&data)]);
    assert!(rel(num(&adapter, "loss"), num(&ours, "loss")) <= 1e-4, "{adapter} vs {ours}");
}

/// `--generate --json` on the fine-tuned model (its LoRA adapter directory as --model): each
/// prediction is `rankforge generate`'s greedy completion of the row's prompt, and the reported
/// ROUGE / BLEU / exact match equal rouge_score / sacrebleu on the predictions file. The tiny
/// model's completions are poor, so some references are built from them (equal, extended) to
/// make every metric non-zero.
#[test]
fn generate_metrics_equal_rouge_score_and_sacrebleu() {
    let f = fx();
    let dir = scratch("lm-generate");
    let adapter = f.straight.join("final");
    let data: Vec<Value> = std::fs::read_to_string(&f.data).unwrap().lines().take(6).map(|l| serde_json::from_str(l).unwrap()).collect();
    let greedy: Vec<String> = data
        .iter()
        .map(|d| {
            let g: Value = serde_json::from_str(&ok(&["generate", "--model", s(&f.llama), "--adapter", s(&adapter), "--prompt", d["prompt"].as_str().unwrap(), "--raw", "--temperature", "0", "--max-new-tokens", "10", "--json", "--device", "cpu"])).unwrap();
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().fold(g["text"].as_str().unwrap().to_string(), |t, sp| t.replace(sp, ""))
        })
        .collect();
    let rows = dir.join("rows.jsonl");
    let references: Vec<String> = (0..6)
        .map(|i| match i % 3 {
            0 => greedy[i].clone(),
            1 => format!("{} the light of the earth", greedy[i]),
            _ => format!("the earth{}", data[i]["completion"].as_str().unwrap()),
        })
        .collect();
    let text: String = data.iter().zip(&references).map(|(d, r)| format!("{}\n", serde_json::json!({"prompt": d["prompt"], "completion": r}))).collect();
    std::fs::write(&rows, text).unwrap();
    for stemmer in [false, true] {
        let preds = dir.join(format!("preds-{stemmer}.jsonl"));
        let mut args = vec!["--model", s(&adapter), "--data", s(&rows), "--generate", "--max-new-tokens", "10", "--predictions", s(&preds)];
        if stemmer {
            args.push("--stemmer");
        }
        let ours = evaluate(&args);
        let keys: Vec<&str> = ours.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["loss", "perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match", "n"] {
            assert!(keys.contains(&k), "{k} in {ours}");
        }
        assert_eq!(ours["n"].as_u64(), Some(6));
        let written: Vec<Value> = std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(written.len(), 6);
        for ((row, d), (g, r)) in written.iter().zip(&data).zip(greedy.iter().zip(&references)) {
            assert_eq!((&row["prompt"], row["reference"].as_str()), (&d["prompt"], Some(r.as_str())), "{row}");
            assert_eq!(row["prediction"].as_str(), Some(g.as_str()), "the prediction is generate's greedy text: {row}");
        }
        let py = run_py(&["metrics", s(&preds), if stemmer { "1" } else { "0" }]);
        for k in ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match"] {
            assert!(num(&ours, k) > 0.0, "{k} is non-zero here: {ours}");
            assert!((num(&ours, k) - num(&py, k)).abs() <= 1e-6, "{k}: {ours} vs {py}");
        }
        assert!((num(&ours, "exact_match") - 2.0 / 6.0).abs() < 1e-12, "{ours}");
    }
}

/// `[eval] generate = true` on a short LoRA run: every evaluation row carries the generation
/// metrics of its samples (the fixture's run without it carries none).
#[test]
fn eval_generate_adds_generation_metrics_to_evaluations() {
    let f = fx();
    let run = f.dir.join("gen-eval");
    let _ = std::fs::remove_dir_all(&run);
    let r = recipe(f, &f.llama, &run, LORA);
    ok(&["train", "--config", s(&r), "--set", "train.max_steps=4", "--set", "eval.every_steps=2", "--set", "eval.generate=true"]);
    let evals = |run: &Path| -> Vec<Value> {
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|v| v.get("val_loss").is_some()).collect()
    };
    let rows = evals(&run);
    assert_eq!(rows.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4]);
    for row in &rows {
        for k in ["val_rouge1", "val_rouge2", "val_rougeL", "val_rougeLsum", "val_exact_match"] {
            assert!((0.0..=1.0).contains(&num(row, k)), "{k} in {row}");
        }
        assert!((0.0..=100.0).contains(&num(row, "val_bleu")), "{row}");
        assert_eq!(row["samples"].as_array().map(Vec::len), Some(2), "{row}");
    }
    assert!(evals(&f.straight).iter().all(|v| v.get("val_rouge1").is_none()), "off by default");
}

/// `[eval] generate = true` on a 2-step DPO run: the evaluation row carries the generation
/// metrics against the chosen completions, and the samples they were computed on.
#[test]
fn eval_generate_on_dpo_scores_against_the_chosen_completions() {
    let run = crate::dpo_train::dir().join("gen-eval");
    let _ = std::fs::remove_dir_all(&run);
    let r = crate::dpo_train::recipe(&run, 2, &format!("sample_tokens = 8\n{}", crate::dpo_train::LORA));
    ok(&["train", "--config", s(&r), "--set", "eval.generate=true"]);
    let rows: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|v| v.get("val_loss").is_some()).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    for k in ["val_rouge1", "val_rouge2", "val_rougeL", "val_rougeLsum", "val_exact_match"] {
        assert!((0.0..=1.0).contains(&num(row, k)), "{k} in {row}");
    }
    assert!((0.0..=100.0).contains(&num(row, "val_bleu")), "{row}");
    let samples = row["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{row}");
    assert!(samples.iter().all(|x| x["reference"].as_str().is_some_and(|r| !r.is_empty()) && x["completion"].is_string()), "{row}");
}

/// Bad input: one `error:` line, exit 2, naming the file, row or flag.
#[test]
fn bad_lm_evaluate_input_is_refused() {
    let f = fx();
    let dir = scratch("lm-bad");
    // Text rows have no reference to generate.
    let text = text_rows(&dir);
    let e = fails(&["evaluate", "--model", s(&f.gpt2), "--data", s(&text), "--generate"]);
    assert!(e.contains("--generate") && e.contains("text.jsonl"), "{e}");
    // A conversation without an assistant turn: its row is named.
    let chats = dir.join("chats.jsonl");
    let turn = |role: &str, c: &str| serde_json::json!({"role": role, "content": c});
    let rows = [
        serde_json::json!({"messages": [turn("user", "Who begat Enos?"), turn("assistant", "Seth.")]}),
        serde_json::json!({"messages": [turn("user", "And Enos?")]}),
    ];
    std::fs::write(&chats, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let e = fails(&["evaluate", "--model", s(&f.llama), "--data", s(&chats), "--generate"]);
    assert!(e.contains("chats.jsonl: line 2") && e.contains("assistant"), "{e}");
    // --generate (and the other LM flags) on a classifier directory.
    let cls = dir.join("classifier");
    std::fs::create_dir_all(&cls).unwrap();
    std::fs::write(cls.join("config.json"), r#"{"architectures": ["BertForSequenceClassification"], "model_type": "bert"}"#).unwrap();
    let e = fails(&["evaluate", "--model", s(&cls), "--data", s(&text), "--generate"]);
    assert!(e.contains("--generate") && e.contains("BertForSequenceClassification"), "{e}");
    let e = fails(&["evaluate", "--model", s(&cls), "--data", s(&text), "--stride", "8"]);
    assert!(e.contains("--stride"), "{e}");
    // Generation flags without --generate; a stride longer than the window.
    let e = fails(&["evaluate", "--model", s(&f.gpt2), "--data", s(&text), "--predictions", s(&dir.join("p.jsonl"))]);
    assert!(e.contains("--predictions") && e.contains("--generate"), "{e}");
    let e = fails(&["evaluate", "--model", s(&f.gpt2), "--data", s(&text), "--max-length", "32", "--stride", "33"]);
    assert!(e.contains("--stride"), "{e}");
    // eval.generate on a recipe whose task does not generate.
    let cls_recipe = dir.join("cls.toml");
    std::fs::write(&cls_recipe, format!("[run]\ndir = {:?}\n[task]\nkind = \"classification\"\n[model]\nkind = \"hf\"\npath = {:?}\n[data]\ntrain = {:?}\n[eval]\ngenerate = true\n", s(&dir.join("run")), s(&cls), s(&text))).unwrap();
    let e = fails(&["train", "--config", s(&cls_recipe)]);
    assert!(e.contains("eval.generate") && e.contains("classification"), "{e}");
}
