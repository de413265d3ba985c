//! Sequence classification as a training task (`[task] kind = "classification"`), against
//! transformers 5 and PEFT 0.21 (tests/py/classify_train_reference.py): a tiny random BERT
//! without a head trained in full (its `final/` loads in `AutoModelForSequenceClassification`
//! and scores like `rankforge predict`) and with LoRA (PEFT loads the SEQ_CLS adapter with no
//! missing or unexpected keys, and it, `final/merged` and rankforge score alike); multi-label
//! and regression; the bundled recipe on the shared tiny GPT-2, 1 vs 2 launched ranks and an
//! exact resume; `train.epochs`; bad input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

const TOL: f64 = 1e-4;

pub(crate) struct Trained {
    pub(crate) dir: PathBuf,
    pub(crate) full: PathBuf,
    pub(crate) lora: PathBuf,
}

fn py(args: &[&str]) -> Value {
    let out = Command::new(python()).arg(root().join("tests/py/classify_train_reference.py")).args(args).output().unwrap();
    assert!(out.status.success(), "classify_train_reference.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap()
}

/// A classification recipe on the fixture's BERT (`extra` appended).
fn recipe(dir: &Path, run: &Path, extra: &str) -> PathBuf {
    let p = |n: &str| format!("{:?}", dir.join(n).display().to_string());
    let text = format!(
        "[run]\ndir = {:?}\n[task]\nkind = \"classification\"\n[model]\nkind = \"hf\"\npath = {}\n\
         [data]\ntrain = {}\nval = {}\nmax_length = 32\n\
         [train]\nglobal_batch_size = 8\nmicro_batch_size = 4\nlr = 1e-3\nwarmup_steps = 1\nlog_every = 1\n\
         [eval]\nevery_steps = 3\n{extra}",
        run.display().to_string(),
        p("bert_base"),
        p("train.jsonl"),
        p("val.jsonl"),
    );
    let path = dir.join(format!("{}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

/// One full and one LoRA run (6 steps each, `train.epochs = 0.75` of 64 rows / 8).
pub(crate) fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch("classify-train");
        py(&["make", dir.to_str().unwrap()]);
        let (full, lora) = (dir.join("run-full"), dir.join("run-lora"));
        ok(&["train", "--config", recipe(&dir, &full, "").to_str().unwrap(), "--set", "train.epochs=0.75"]);
        let lora_section = "[lora]\nr = 4\nalpha = 8\ndropout = 0.1\ntarget_modules = [\"query\", \"value\"]\n";
        ok(&["train", "--config", recipe(&dir, &lora, lora_section).to_str().unwrap(), "--set", "train.max_steps=6"]);
        Trained { dir, full, lora }
    })
}

fn rows(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `rankforge predict --top-k all` on every row of `texts`: per row, the scores in `labels` order.
fn predicted(model: &Path, texts: &Path, labels: &[&str]) -> Vec<Vec<f64>> {
    let out = ok(&["predict", "--model", model.to_str().unwrap(), "--input", texts.to_str().unwrap(), "--top-k", "all", "--json"]);
    out.lines()
        .map(|l| {
            let v: Vec<Value> = serde_json::from_str(l).unwrap();
            labels.iter().map(|name| v.iter().find(|p| p["label"] == *name).unwrap_or_else(|| panic!("{name} in {l}"))["score"].as_f64().unwrap()).collect()
        })
        .collect()
}

fn assert_scores(ours: &[Vec<f64>], theirs: &Value, what: &str) {
    let theirs = theirs.as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}: rows");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let b: Vec<f64> = b.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(a.len(), b.len(), "{what} row {i}");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= TOL, "{what} row {i}: {a:?} vs {b:?}");
        }
    }
}

const SENTIMENT: [&str; 3] = ["negative", "neutral", "positive"];

#[test]
fn full_fine_tuning_final_loads_in_transformers_and_scores_like_predict() {
    let t = trained();
    let rows = rows(&t.full);
    let steps: Vec<&Value> = rows.iter().filter(|r| r.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 6, "train.epochs = 0.75 of 64 rows at 8 per step is 6 steps");
    assert!((steps[5]["epoch"].as_f64().unwrap() - 0.75).abs() < 1e-12, "{}", steps[5]);
    let evals: Vec<&Value> = rows.iter().filter(|r| r.get("val_loss").is_some()).collect();
    assert_eq!(evals.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 6]);
    for key in ["val_loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_micro", "f1_weighted"] {
        let v = evals[1][key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v >= 0.0, "{key} = {v} in {}", evals[1]);
    }
    let theirs = py(&["full", t.full.join("final").to_str().unwrap(), t.dir.join("val.jsonl").to_str().unwrap()]);
    assert_eq!(theirs["architectures"], serde_json::json!(["BertForSequenceClassification"]));
    assert_eq!(theirs["id2label"], serde_json::json!({"0": "negative", "1": "neutral", "2": "positive"}), "labels sorted by default");
    assert_eq!(theirs["problem_type"], "single_label_classification");
    let ours = predicted(&t.full.join("final"), &t.dir.join("val.jsonl"), &SENTIMENT);
    assert_scores(&ours, &theirs["scores"], "final/ in transformers vs rankforge predict");
    // The evaluation's accuracy is the accuracy of those predictions.
    let truth: Vec<String> = std::fs::read_to_string(t.dir.join("val.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["label"].as_str().unwrap().to_string()).collect();
    let right = ours.iter().zip(&truth).filter(|(s, l)| SENTIMENT[(0..3).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap()] == l.as_str()).count();
    assert!((evals[1]["accuracy"].as_f64().unwrap() - right as f64 / truth.len() as f64).abs() < 1e-12, "{}", evals[1]);
}

#[test]
fn lora_adapter_loads_in_peft_and_merged_model_in_transformers() {
    let t = trained();
    let final_dir = t.lora.join("final");
    let texts = t.dir.join("val.jsonl");
    let peft = py(&["peft", t.dir.join("bert_base").to_str().unwrap(), final_dir.to_str().unwrap(), texts.to_str().unwrap(), "3"]);
    assert_eq!(peft["task_type"], "SEQ_CLS");
    assert_eq!((peft["missing"].clone(), peft["unexpected"].clone()), (serde_json::json!([]), serde_json::json!([])), "{peft}");
    let merged = py(&["full", final_dir.join("merged").to_str().unwrap(), texts.to_str().unwrap()]);
    let theirs: Vec<Vec<f64>> = merged["scores"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    assert_scores(&theirs, &peft["scores"], "final/merged in transformers vs the adapter in PEFT");
    let ours = predicted(&final_dir.join("merged"), &texts, &SENTIMENT);
    assert_scores(&ours, &merged["scores"], "final/merged: rankforge predict vs transformers");
    // The head trained (modules_to_save) and the base stayed frozen: only adapters and head saved.
    let saved = rankforge::st::load(&final_dir.join("adapter_model.safetensors")).unwrap();
    assert!(saved.iter().any(|(n, _)| n == "base_model.model.classifier.weight"), "the head is saved whole");
    assert!(saved.iter().all(|(n, _)| n.contains("lora_") || n.contains("classifier")), "{:?}", saved.iter().map(|s| &s.0).collect::<Vec<_>>());
}

#[test]
fn multi_label_and_regression_train_and_export_their_problem_type() {
    let t = trained();
    for (data, problem, labels) in [("multi.jsonl", "multi_label_classification", 3usize), ("reg.jsonl", "regression", 1)] {
        let run = t.dir.join(format!("run-{problem}"));
        let r = recipe(&t.dir, &run, "");
        let file = format!("{:?}", t.dir.join(data).display().to_string());
        ok(&["train", "--config", r.to_str().unwrap(), "--set", &format!("data.train={file}"), "--set", &format!("data.val={file}"), "--set", "train.max_steps=3"]);
        let losses = losses(&run);
        assert!(losses.len() == 3 && losses.iter().all(|l| l.is_finite()), "{problem}: {losses:?}");
        let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap()).unwrap();
        assert_eq!((config["problem_type"].as_str(), config["num_labels"].as_u64()), (Some(problem), Some(labels as u64)), "{config}");
        let evals: Vec<Value> = rows(&run).into_iter().filter(|r| r.get("val_loss").is_some()).collect();
        assert!(evals.last().unwrap()["val_loss"].as_f64().unwrap().is_finite());
        assert_eq!(evals.last().unwrap().get("accuracy").is_some(), problem != "regression", "{:?}", evals.last());
    }
}

/// The bundled recipe (configs/kjv_cls_cpu.toml) on the shared tiny GPT-2 (a new `score`
/// head, no pad token: EOS pads), `steps` steps (over a 4-step schedule) instead of its
/// `epochs`.
fn kjv_recipe(dir: &Path, run: &Path, steps: u64) -> PathBuf {
    let f = fixture();
    let text = std::fs::read_to_string(root().join("configs/kjv_cls_cpu.toml")).unwrap();
    let epochs = text.lines().find(|l| l.starts_with("epochs =")).expect("the recipe trains by epochs");
    let text = text
        .replace(epochs, &format!("max_steps = {steps}\nlr_decay_steps = 4"))
        .replace("\"runs/kjv-cls\"", &format!("{:?}", run.display().to_string()))
        .replace("\"runs/gpt_mini/final\"", &format!("{:?}", f.run.join("final").display().to_string()))
        .replace("\"data/kjv_cls.jsonl\"", &format!("{:?}", root().join("data/kjv_cls.jsonl").display().to_string()))
        .replace("\"data/kjv_cls_val.jsonl\"", &format!("{:?}", root().join("data/kjv_cls_val.jsonl").display().to_string()));
    let path = dir.join(format!("{}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bundled_recipe_one_and_two_ranks_train_alike_and_resume_is_exact() {
    let dir = scratch("classify-kjv");
    let (one, two, resumed) = (dir.join("one"), dir.join("two"), dir.join("resumed"));
    ok(&["train", "--config", kjv_recipe(&dir, &one, 4).to_str().unwrap()]);
    let launch = bin().with_file_name("rankforge-launch");
    let r2 = kjv_recipe(&dir, &two, 4);
    let out = Command::new(&launch).env("RANKFORGE_LOG", "warn").env_remove("RANKFORGE_JOB_TOKEN").args(["--nproc-per-node", "2", "--config", r2.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "2 ranks: {}", String::from_utf8_lossy(&out.stderr));
    ok(&["train", "--config", kjv_recipe(&dir, &resumed, 2).to_str().unwrap()]);
    ok(&["train", "--config", kjv_recipe(&dir, &resumed, 4).to_str().unwrap()]);
    let (a, b, c) = (losses(&one), losses(&two), losses(&resumed));
    assert_eq!(a.len(), 4);
    assert_eq!(a, c, "2 + 2 resumed steps = 4 steps, bit for bit");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "1 vs 2 ranks: {a:?} vs {b:?}");
    }
    let score = |run: &Path| rankforge::st::load(&run.join("final/model.safetensors")).unwrap().into_iter().find(|(n, _)| n == "score.weight").unwrap().1;
    let diff = (score(&one) - score(&two)).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "score.weight 1 vs 2 ranks: {diff}");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(one.join("final/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["GPT2ForSequenceClassification"]));
    assert_eq!(config["id2label"]["3"], "prophets", "task.labels fixes the order");
    assert!(config["pad_token_id"].is_u64(), "{config}");
    let report = ok(&["evaluate", "--model", one.join("final").to_str().unwrap(), "--data", root().join("data/kjv_cls_val.jsonl").to_str().unwrap()]);
    assert!(report.contains("prophets") && report.contains("accuracy"), "{report}");
}

#[test]
fn bad_classification_input_is_one_line_exit_2_and_writes_nothing() {
    let t = trained();
    let dir = scratch("classify-bad");
    let run = dir.join("run");
    let r = recipe(&t.dir, &run, "");
    let r = r.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        format!("{:?}", p.display().to_string())
    };
    // An existing head with 3 labels, a task with 2.
    let two = write("two.jsonl", "{\"text\": \"good\", \"label\": \"negative\"}\n{\"text\": \"bad\", \"label\": \"positive\"}\n");
    let head = format!("model.path={:?}", t.full.join("final").display().to_string());
    let e = fails(&["train", "--config", r, "--set", &head, "--set", &format!("data.train={two}"), "--set", &format!("data.val={two}"), "--set", "task.labels=[\"negative\", \"positive\"]"]);
    assert!(e.contains("3 labels") && e.contains("num_labels = 2"), "{e}");
    let e = fails(&["train", "--config", r, "--set", "task.labels=[\"negative\", \"positive\"]"]);
    assert!(e.contains("train.jsonl") && e.contains("line") && e.contains("neutral"), "a label outside task.labels: {e}");
    let empty = write("empty.jsonl", "");
    let e = fails(&["train", "--config", r, "--set", &format!("data.val={empty}")]);
    assert!(e.contains("empty.jsonl"), "an empty validation set: {e}");
    let e = fails(&["train", "--config", r, "--set", "data.text_field=body"]);
    assert!(e.contains("train.jsonl") && e.contains("line 1") && e.contains("body"), "a missing text field: {e}");
    let e = fails(&["train", "--config", r, "--set", "data.label_field=stars"]);
    assert!(e.contains("line 1") && e.contains("stars"), "a missing label field: {e}");
    // GPT-2's byte-level tokenizer has no pair template.
    let gpt = format!("model.path={:?}", fixture().run.join("final").display().to_string());
    let pairs = format!("{:?}", t.dir.join("pairs.jsonl").display().to_string());
    let e = fails(&["train", "--config", r, "--set", &gpt, "--set", &format!("data.train={pairs}"), "--set", &format!("data.val={pairs}"), "--set", "data.text_pair_field=text_pair"]);
    assert!(e.contains("pair"), "a text pair without a pair template: {e}");
    assert!(!run.exists(), "no bad input creates the run directory");
}

/// The GPU recipes (BERT on Yelp, DistilBERT + LoRA) run 2 steps on CPU with the tiny models.
#[test]
fn shipped_classification_gpu_recipes_run_on_tiny_models() {
    let t = trained();
    for (name, model) in [("bert_yelp_cls_gpu", "bert_base"), ("distilbert_lora_cls_gpu", "distilbert_base")] {
        let run = t.dir.join(format!("recipe-{name}"));
        let sets = [
            format!("model.path={:?}", t.dir.join(model).display().to_string()),
            format!("data.train={:?}", t.dir.join("train.jsonl").display().to_string()),
            format!("data.val={:?}", t.dir.join("val.jsonl").display().to_string()),
            format!("run.dir={:?}", run.display().to_string()),
            "train.epochs=0.125".into(), // 64 rows / 4 per step: 2 steps
            "train.device=\"cpu\"".into(),
            "train.global_batch_size=4".into(),
            "train.micro_batch_size=2".into(),
            "data.max_length=32".into(),
            "eval.max_batches=1".into(),
        ];
        let mut args = vec!["train".to_string(), "--config".into(), root().join(format!("configs/{name}.toml")).display().to_string()];
        for s in &sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(losses(&run).len(), 2, "{name}");
        let lora = name.contains("lora");
        let file = if lora { "final/merged/config.json" } else { "final/config.json" };
        let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join(file)).unwrap()).unwrap();
        let arch = if lora { "DistilBertForSequenceClassification" } else { "BertForSequenceClassification" };
        assert_eq!(config["architectures"], serde_json::json!([arch]), "{name}");
        assert_eq!(run.join("final/adapter_config.json").exists(), lora, "{name}");
    }
}

/// LoRA dropout acts in training on a classifier too (the shared tiny GPT-2 has no dropout of
/// its own, and a decoder head none, so training mode differs from eval mode only by it).
#[test]
fn lora_dropout_is_on_in_training_for_a_classifier() {
    use rankforge::lora::{LoraConfig, TargetModules};
    use rankforge::models::heads::SequenceClassifier;
    let labels: Vec<String> = SENTIMENT.iter().map(|s| s.to_string()).collect();
    let ids = tch::Tensor::from_slice(&(0..16).map(|i| (i * 7 + 3) % 500).collect::<Vec<i64>>()).view([2, 8]);
    for dropout in [0.1, 0.0] {
        let mut clf = SequenceClassifier::from_pretrained(&fixture().run.join("final"), tch::Device::Cpu, tch::Kind::Float, Some(&labels)).unwrap();
        let cfg = LoraConfig { r: 4, alpha: 8.0, dropout, target_modules: TargetModules::Names(vec!["c_attn".into()]), use_rslora: false };
        clf.set_pad_token_id(Some(0));
        clf.add_lora(&cfg, 1).unwrap();
        for (name, b) in clf.lora_parameters() {
            if name.contains(".lora_B.") {
                let _ = tch::no_grad(|| b.shallow_clone().normal_(0.0, 1.0));
            }
        }
        let run = |train| tch::no_grad(|| clf.forward(&ids, None, None, train).unwrap());
        let d = (run(true) - run(false)).abs().max().double_value(&[]);
        if dropout > 0.0 {
            assert!(d > 1e-4, "lora.dropout = 0.1: training must differ from eval ({d:e})");
        } else {
            assert_eq!(d, 0.0, "without dropout training mode is eval mode");
        }
    }
}
