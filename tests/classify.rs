//! Sequence-classification data and commands against transformers 5, PEFT and scikit-learn on
//! tiny random BERT classifiers with a tiny WordPiece tokenizer (tests/py/classify_reference.py):
//! the reader's pair encoding and truncation equal `tokenizer(text, text_pair)`, a
//! `save_to_disk` `DatasetDict` gives its splits and `ClassLabel` names, `evaluate --json`
//! equals scikit-learn's metrics on transformers' predictions, `predict --json` equals
//! `pipeline("text-classification")` (≤ 1e-4, same order), and bad input is one `error:` line
//! with exit 2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::classify::{self, ClassificationDataConfig, ClassificationTaskConfig, ClsLabel};
use rankforge::tokenizer::LoadedTokenizer;
use serde_json::Value;

const TOL: f64 = 1e-4;

struct Reference {
    dir: PathBuf,
    refs: Value,
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("classify-ref");
        let out = Command::new(python()).arg(root().join("tests/py/classify_reference.py")).args(["make", dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "classify_reference.py: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        Reference { dir, refs: serde_json::from_str(stdout.lines().last().unwrap()).unwrap() }
    })
}

fn path(name: &str) -> String {
    reference().dir.join(name).to_str().unwrap().to_string()
}

/// Numbers equal within `tol`, everything else exactly; `at` names the place for messages.
fn assert_close(ours: &Value, theirs: &Value, tol: f64, at: &str) {
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= tol, "{at}: {a} vs {b}");
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: lengths of {ours} and {theirs}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, tol, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let (mut ka, mut kb): (Vec<_>, Vec<_>) = (a.keys().collect(), b.keys().collect());
            ka.sort();
            kb.sort();
            assert_eq!(ka, kb, "{at}: keys");
            for k in ka {
                assert_close(&a[k], &b[k], tol, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(ours, theirs, "{at}"),
    }
}

fn sklearn(name: &str) -> Value {
    let mut m = reference().refs["metrics"][name].clone();
    m.as_object_mut().unwrap().remove("report");
    m
}

fn json_line(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn reader_encodes_pairs_and_truncates_as_transformers_tokenizer() {
    let tok = LoadedTokenizer::load(Path::new(&path("bert_cls"))).unwrap();
    let task = ClassificationTaskConfig { labels: Some(vec!["negative".into(), "neutral".into(), "positive".into()]), problem_type: None };
    let refs = &reference().refs["tokens"];
    for (pair, max_length, want) in [(true, Some(12), "truncated"), (true, None, "full"), (false, Some(5), "single")] {
        let mut data = ClassificationDataConfig::for_files(vec![path("tok_pairs.jsonl").into()]);
        (data.val_fraction, data.max_length) = (Some(0.0), max_length);
        data.text_pair_field = pair.then(|| "text_pair".into());
        let d = classify::load(&data, &task, &tok, 0).unwrap();
        let ours: Vec<Value> = d.train.iter().map(|e| serde_json::json!({"input_ids": e.input_ids, "token_type_ids": e.token_type_ids})).collect();
        assert_eq!(Value::Array(ours), refs[want], "{want}");
        assert!(d.train.iter().all(|e| e.label == ClsLabel::Class(1)));
        if want != "full" {
            assert!(d.stats.truncated > 0, "{want}: the references cut some texts");
        }
    }
}

#[test]
fn a_dataset_dict_gives_its_validation_split_and_class_label_names() {
    let tok = LoadedTokenizer::load(Path::new(&path("bert_cls"))).unwrap();
    let data = ClassificationDataConfig::for_files(vec![path("dict").into()]);
    let d = classify::load(&data, &ClassificationTaskConfig::default(), &tok, 0).unwrap();
    assert_eq!((d.train.len(), d.val.len()), (24, 12), "train split, and validation not held out of it");
    assert_eq!(d.labels, ["neutral", "negative", "positive"], "ClassLabel order, not sorted");
    let first: Value = json_line(std::fs::read_to_string(path("eval.jsonl")).unwrap().lines().next().unwrap());
    let want = d.labels.iter().position(|l| *l == first["label"]).unwrap();
    assert_eq!(d.train[0].label, ClsLabel::Class(want));
    // With a fraction set, the DatasetDict's validation split is declined.
    let mut held = data.clone();
    held.val_fraction = Some(0.25);
    let d = classify::load(&held, &ClassificationTaskConfig::default(), &tok, 0).unwrap();
    assert_eq!((d.train.len(), d.val.len()), (18, 6));
}

#[test]
fn evaluate_json_equals_scikit_learn_on_transformers_predictions() {
    let eval = ok(&["evaluate", "--model", &path("bert_cls"), "--data", &path("eval.jsonl"), "--json", "--device", "cpu", "--batch-size", "5"]);
    assert_close(&json_line(&eval), &sklearn("eval"), 1e-12, "eval");
    let pairs = ok(&["evaluate", "--model", &path("bert_cls"), "--data", &path("pairs.jsonl"), "--text-pair-field", "text_pair", "--json", "--device", "cpu"]);
    assert_close(&json_line(&pairs), &sklearn("pairs"), 1e-12, "pairs");
    let multi = ok(&["evaluate", "--model", &path("bert_multi"), "--data", &path("multi.jsonl"), "--json", "--device", "cpu"]);
    assert_close(&json_line(&multi), &sklearn("multi"), 1e-12, "multi");
    // A DatasetDict's train split, its ClassLabel ids read as names of the model's id2label.
    let dict = ok(&["evaluate", "--model", &path("bert_cls"), "--data", &path("dict"), "--split", "train", "--json", "--device", "cpu"]);
    assert_close(&json_line(&dict), &sklearn("eval"), 1e-12, "dict");
}

#[test]
fn evaluate_prints_scikit_learns_report_and_the_confusion_matrix() {
    let text = ok(&["evaluate", "--model", &path("bert_cls"), "--data", &path("eval.jsonl"), "--device", "cpu"]);
    let report = reference().refs["metrics"]["eval"]["report"].as_str().unwrap();
    assert!(text.starts_with(report), "ours:\n{text}\nscikit-learn:\n{report}");
    let matrix = &reference().refs["metrics"]["eval"]["confusion_matrix"];
    let rows: Vec<Vec<u64>> = text
        .lines()
        .skip_while(|l| !l.starts_with("confusion matrix"))
        .skip(3)
        .map(|l| l.split_whitespace().skip(1).map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(serde_json::json!(rows), *matrix);
    // Labels never predicted: scikit-learn's zero-division warning, the metric 0.
    let out = Command::new(bin()).args(["evaluate", "--model", &path("bert_cls"), "--data", &path("pairs.jsonl"), "--text-pair-field", "text_pair", "--device", "cpu"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("Precision is ill-defined and being set to 0.0 in labels with no predicted samples"), "{stderr}");
}

fn predict_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["predict", "--device", "cpu", "--json"];
    all.extend_from_slice(args);
    ok(&all).lines().map(json_line).collect()
}

#[test]
fn predict_json_equals_the_text_classification_pipeline() {
    let refs = &reference().refs["pipeline"];
    let model = path("bert_cls");
    for (case, extra) in [("text", &[][..]), ("pair", &[][..]), ("top2", &["--top-k", "2"][..]), ("all", &["--top-k", "all"][..])] {
        let r = &refs[case];
        let mut args = vec!["--model", model.as_str(), "--text", r["args"]["text"].as_str().unwrap()];
        if let Some(p) = r["args"]["text_pair"].as_str() {
            args.extend(["--text-pair", p]);
        }
        args.extend_from_slice(extra);
        assert_close(&Value::Array(predict_json(&args)), &serde_json::json!([r["out"]]), TOL, case);
    }
    let lines = predict_json(&["--model", &model, "--input", &path("inputs.jsonl")]);
    assert_close(&Value::Array(lines), &refs["inputs"], TOL, "inputs");
    let multi = predict_json(&["--model", &path("bert_multi"), "--text", refs["multi_all"]["args"]["text"].as_str().unwrap(), "--top-k", "all"]);
    assert_close(&Value::Array(multi), &serde_json::json!([refs["multi_all"]["out"]]), TOL, "multi-label sigmoid");
    // Regression: the raw value, as the pipeline's function_to_apply "none".
    let reg = predict_json(&["--model", &path("bert_reg"), "--text", refs["regression"]["args"]["text"].as_str().unwrap()]);
    assert_close(&Value::Array(reg), &serde_json::json!([refs["regression"]["out"]]), TOL, "regression");
    // A PEFT SEQ_CLS adapter directory, with its head from modules_to_save.
    let peft = predict_json(&["--model", &path("peft_cls"), "--input", &path("eval.jsonl")]);
    assert_close(&Value::Array(peft[..4].to_vec()), &refs["peft_eval"]["out"], TOL, "peft adapter");
}

/// Runs rankforge expecting bad input: exit 2 and one `error:` line containing `want`.
fn bad(args: &[&str], want: &str) {
    let out = rankforge(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "{args:?}: expected {want:?} in {stderr}");
}

#[test]
fn bad_classification_input_is_one_error_line_with_exit_2() {
    let dir = scratch("classify-bad");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let model = path("bert_cls");
    let missing = write("missing.jsonl", "{\"text\": \"good\", \"label\": \"positive\"}\n{\"sentence\": \"bad\", \"label\": \"negative\"}\n");
    bad(&["evaluate", "--model", &model, "--data", &missing, "--device", "cpu"], &format!("{missing}: line 2: missing field \"text\""));
    let nolabel = write("nolabel.jsonl", "{\"text\": \"good\"}\n");
    bad(&["evaluate", "--model", &model, "--data", &nolabel, "--device", "cpu"], &format!("{nolabel}: line 1: missing field \"label\""));
    let unknown = write("unknown.jsonl", "{\"text\": \"good\", \"label\": \"positive\"}\n{\"text\": \"bad\", \"label\": \"awful\"}\n");
    bad(&["evaluate", "--model", &model, "--data", &unknown, "--device", "cpu"],
        &format!("{unknown}: line 2: label \"awful\" is not one of the labels [\"negative\", \"neutral\", \"positive\"] (the model's id2label)"));
    let empty = write("empty.jsonl", "");
    bad(&["evaluate", "--model", &model, "--data", &empty, "--device", "cpu"], &format!("{empty}: --data: no example to evaluate"));
    bad(&["evaluate", "--model", &path("bert_reg"), "--data", &path("eval.jsonl"), "--device", "cpu"], "is a regression model");
    let nopair = path("bert_nopair");
    bad(&["evaluate", "--model", &nopair, "--data", &path("pairs.jsonl"), "--text-pair-field", "text_pair", "--device", "cpu"], "has no pair template");
    bad(&["predict", "--model", &nopair, "--text", "good", "--text-pair", "bad", "--device", "cpu"], "has no pair template");
    let notext = write("notext.jsonl", "{\"text\": \"good\"}\n{\"txt\": \"bad\"}\n");
    bad(&["predict", "--model", &model, "--input", &notext, "--device", "cpu"], &format!("{notext}: line 2: missing field \"text\""));
    bad(&["predict", "--model", &model, "--input", &empty, "--device", "cpu"], "--input: no row to classify");
    // A flag's value: clap's usage error (exit 2), the reason in its first line.
    let out = rankforge(&["predict", "--model", &model, "--text", "good", "--top-k", "0", "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: invalid value '0' for '--top-k <TOP_K>'") && stderr.contains("1 or more"), "{stderr}");
}

/// `rankforge bench` on a classification recipe times the task's training step: the row
/// bench/bench_cls.sh reads, finite losses, each problem type's labels, and under LoRA the
/// adapters (`query`, `value`) plus the head as the trainable parameters.
#[test]
fn bench_times_the_classification_step() {
    let dir = scratch("classify-bench");
    let run = dir.join("run");
    let recipe = |model: &str, lora: &str| {
        let r = dir.join(format!("{model}{}.toml", if lora.is_empty() { "" } else { "-lora" }));
        let body = format!(
            "[run]\ndir = {:?}\n\n[task]\nkind = \"classification\"\n\n[model]\nkind = \"hf\"\npath = {:?}\n\n\
             [data]\ntrain = \"unused.jsonl\"\nmax_length = 16\n\n\
             [train]\nglobal_batch_size = 4\nmicro_batch_size = 2\nlr = 1e-3\nmin_lr = 0.0\ndevice = \"cpu\"\n{lora}",
            run.to_str().unwrap(),
            path(model)
        );
        std::fs::write(&r, body).unwrap();
        r.to_str().unwrap().to_string()
    };
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(reference().dir.join("bert_cls/config.json")).unwrap()).unwrap();
    let (h, layers) = (cfg["hidden_size"].as_i64().unwrap(), cfg["num_hidden_layers"].as_i64().unwrap());
    let (r, labels) = (4, 3);
    let lora_trainable = layers * 2 * r * (h + h) + h * labels + labels; // query, value; classifier
    let cases = [
        ("bert_cls", "", "full", "single_label_classification"),
        ("bert_cls", "\n[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"query\", \"value\"]\n", "lora", "single_label_classification"),
        ("bert_multi", "", "full", "multi_label_classification"),
        ("bert_reg", "", "full", "regression"),
    ];
    for (model, lora, mode, problem_type) in cases {
        let out = ok(&["bench", "--config", &recipe(model, lora), "--steps", "2", "--warmup", "1"]);
        let row = json_line(out.lines().last().unwrap());
        let at = format!("{model} {mode}: {row}");
        for key in ["impl", "mode", "step_ms", "tokens_per_s", "params", "trainable_params", "threads", "batch", "micro_batch", "seq", "device", "dtype", "losses"] {
            assert!(row.get(key).is_some_and(|v| !v.is_null()), "{at}: no {key}");
        }
        assert_eq!((row["impl"].as_str(), row["mode"].as_str(), row["problem_type"].as_str()), (Some("rankforge"), Some(mode), Some(problem_type)), "{at}");
        assert_eq!((row["batch"].as_u64(), row["micro_batch"].as_u64(), row["seq"].as_u64()), (Some(4), Some(2), Some(16)), "{at}");
        assert!(row["step_ms"].as_f64().unwrap() > 0.0 && row["tokens_per_s"].as_f64().unwrap() > 0.0, "{at}");
        let losses: Vec<f64> = row["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
        assert!(losses.len() == 3 && losses.iter().all(|l| l.is_finite() && *l > 0.0), "{at}: warmup + 2 steps");
        let (params, trainable) = (row["params"].as_i64().unwrap(), row["trainable_params"].as_i64().unwrap());
        match mode {
            "lora" => assert_eq!(trainable, lora_trainable, "{at}"),
            _ => assert_eq!(trainable, params, "{at}"),
        }
    }
    assert!(!run.exists(), "bench writes no run directory");
}
