//! The decoders' sequence-classification heads (`score`) against transformers 5 and PEFT 0.21
//! on tiny random GPT-2, Llama, Mistral and Qwen2 models (hidden 32, 2 layers): pooled logits
//! on right- and left-padded batches (≤ 1e-4), with the checkpoint's head and with a new one on
//! a causal-LM checkpoint, the loss of each problem type, save_pretrained loading in
//! `AutoModelForSequenceClassification` with no missing or unexpected keys, `SEQ_CLS` LoRA
//! adapters both ways, a missing `pad_token_id`, and rankforge's own pretraining `final/` as a
//! classifier. Reference: tests/py/cls_heads_reference.py
//! (one `make` call for every fixture, one `check` call per test that writes files).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::error::Error;
use rankforge::lora::{self, LoraConfig, TargetModules};
use rankforge::models::heads::{ProblemType, SequenceClassifier};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const CLASSIFIERS: [(&str, &str); 4] = [
    ("gpt2_cls", "GPT2ForSequenceClassification"),
    ("llama_cls", "LlamaForSequenceClassification"),
    ("mistral_cls", "MistralForSequenceClassification"),
    ("qwen2_cls", "Qwen2ForSequenceClassification"),
];
const CAUSAL_LMS: [&str; 4] = ["gpt2_lm", "llama_lm", "mistral_lm", "qwen2_lm"];

struct Reference {
    dir: PathBuf,
    report: Value,
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("cls-heads-ref");
        let report = run_py(&["make", dir.to_str().unwrap()]);
        Reference { dir, report }
    })
}

fn run_py(args: &[&str]) -> Value {
    let out = Command::new(python()).arg(root().join("tests/py/cls_heads_reference.py")).args(args).output().unwrap();
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// One `check` call: transformers loads every model dir, PEFT every (base, adapter) pair; the
/// report and each one's logits on the right-padded batch, by directory name.
fn check(name: &str, models: &[&Path], adapters: &[(&Path, &Path)]) -> (Value, HashMap<String, Tensor>) {
    let out = scratch(&format!("cls-heads-check-{name}"));
    let spec = json!({
        "refs": refs_path("gpt2_cls"),
        "out": out,
        "models": models,
        "adapters": adapters.iter().map(|(b, a)| json!([b, a])).collect::<Vec<_>>(),
    });
    let spec_path = out.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let report = run_py(&["check", spec_path.to_str().unwrap()]);
    let dirs = models.iter().copied().chain(adapters.iter().map(|(_, a)| *a));
    let logits = dirs
        .map(|d| {
            let name = d.file_name().unwrap().to_str().unwrap().to_string();
            let t = load(&out.join(format!("{name}.safetensors"))).remove("output").unwrap();
            (name, t)
        })
        .collect();
    (report, logits)
}

fn model_dir(name: &str) -> PathBuf {
    reference().dir.join(name)
}

fn refs_path(name: &str) -> PathBuf {
    reference().dir.join("refs").join(format!("{name}.safetensors"))
}

fn refs(name: &str) -> HashMap<String, Tensor> {
    load(&refs_path(name))
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    rankforge::st::load(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn classifier(name: &str, labels: Option<&[String]>) -> SequenceClassifier {
    SequenceClassifier::from_pretrained(&model_dir(name), Device::Cpu, Kind::Float, labels).unwrap()
}

fn logits(model: &SequenceClassifier, r: &HashMap<String, Tensor>, side: &str) -> Tensor {
    let (ids, mask) = (&r[&format!("input_ids_{side}")], &r[&format!("attention_mask_{side}")]);
    tch::no_grad(|| model.forward(ids, Some(mask), None, false)).unwrap()
}

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn assert_clean_load(report: &Value, what: &str) {
    for key in ["missing", "unexpected", "mismatched"] {
        assert_eq!(report[key], json!([]), "{what}: {key} keys: {report}");
    }
}

#[test]
fn score_heads_match_transformers_on_right_and_left_padding() {
    for (name, _) in CLASSIFIERS {
        let r = refs(name);
        let model = classifier(name, None);
        assert!(!model.is_encoder());
        assert_eq!((model.num_labels(), model.pad_token_id()), (3, Some(3)), "{name}");
        assert_eq!(model.id2label, ["negative", "neutral", "positive"]);
        assert_eq!(model.head_parameter_names(), ["score.weight"], "{name}");
        assert!(!model.named_parameters().iter().any(|(n, _)| n.starts_with("lm_head")), "{name}: no lm_head");
        for side in ["right", "left"] {
            let diff = max_diff(&logits(&model, &r, side), &r[&format!("logits_{side}")]);
            assert!(diff <= TOL, "{name} ({side} padding): max |logit difference| = {diff}");
        }
        // The padded row is read at its last real token, not at its last position.
        let last = tch::no_grad(|| model.forward(&r["input_ids_right"].get(1).unsqueeze(0).narrow(1, 0, 7), None, None, false)).unwrap();
        assert!(max_diff(&last, &r["logits_right"].narrow(0, 1, 1)) <= TOL, "{name}: pooled at the last non-pad token");
    }
    let two = labels(&["x", "y"]);
    let err = SequenceClassifier::from_pretrained(&model_dir("llama_cls"), Device::Cpu, Kind::Float, Some(&two)).err().unwrap().to_string();
    assert!(err.contains("model.safetensors") && err.contains("score.weight has 3 labels") && err.contains("num_labels = 2"), "{err}");
}

/// Our logits from a causal-LM directory must be our new `score` applied to transformers'
/// hidden state at the row's last non-pad token.
fn expected_from_hidden(model: &SequenceClassifier, hidden: &Tensor, last: [i64; 2]) -> Tensor {
    let rows: Vec<Tensor> = last.iter().enumerate().map(|(b, &t)| hidden.get(b as i64).get(t)).collect();
    Tensor::stack(&rows, 0).matmul(&model.classifier.weight.tr())
}

#[test]
fn causal_lm_directories_get_a_new_score_head_initialised_as_transformers_does() {
    let four = labels(&["a", "b", "c", "d"]);
    for name in CAUSAL_LMS {
        let r = refs(name);
        tch::manual_seed(0);
        let mut model = classifier(name, Some(&four));
        if name == "gpt2_lm" {
            assert_eq!(model.pad_token_id(), None, "GPT-2 has no pad token");
            model.set_pad_token_id(Some(3));
        }
        let w = &model.classifier.weight;
        assert_eq!(w.size(), [4, 32], "{name}");
        assert!(model.classifier.bias.is_none(), "{name}: score has no bias");
        let (mean, std) = (w.mean(Kind::Float).double_value(&[]), w.std(true).double_value(&[]));
        assert!((std - 0.02).abs() < 0.005 && mean.abs() < 0.006, "{name}: N(0, 0.02) init, got mean {mean} std {std}");
        assert!(!model.named_parameters().iter().any(|(n, _)| n.starts_with("lm_head")), "{name}: the lm_head is dropped");
        for (side, last) in [("right", [9, 6]), ("left", [9, 9])] {
            let want = expected_from_hidden(&model, &r[&format!("hidden_{side}")], last);
            let diff = max_diff(&logits(&model, &r, side), &want);
            assert!(diff <= TOL, "{name} ({side} padding): max |logit difference| = {diff}");
        }
    }
}

#[test]
fn a_missing_pad_token_id_takes_batches_of_one_and_refuses_larger_ones() {
    let model = classifier("gpt2_lm", Some(&labels(&["a", "b"])));
    let r = refs("gpt2_lm");
    let ids = &r["input_ids_right"];
    let err = tch::no_grad(|| model.forward(ids, None, None, false)).err().unwrap();
    assert!(matches!(err, Error::Input(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&*model_dir("gpt2_lm").to_string_lossy()) && msg.contains("pad_token_id") && msg.contains("2 sequences"), "{msg}");
    // A batch of one is read at its last token.
    let one = tch::no_grad(|| model.forward(&ids.narrow(0, 0, 1), None, None, false)).unwrap();
    let want = expected_from_hidden(&model, &r["hidden_right"], [9, 9]).narrow(0, 0, 1);
    assert!(max_diff(&one, &want) <= TOL);
}

#[test]
fn the_loss_of_one_batch_matches_transformers_for_each_problem_type() {
    let l = refs("losses");
    let r = refs("gpt2_cls");
    let cls = classifier("gpt2_cls", None);
    let reg = classifier("llama_reg", None);
    assert_eq!(reg.num_labels(), 1);
    let cases = [
        ("single", &cls, &l["labels_single"], &l["loss_single"], ProblemType::SingleLabel),
        ("multi", &cls, &l["labels_multi"], &l["loss_multi"], ProblemType::MultiLabel),
        ("regression", &reg, &l["labels_reg"], &l["loss_reg"], ProblemType::Regression),
    ];
    for (what, model, labels, want, problem) in cases {
        let logits = logits(model, &r, "right");
        assert_eq!(ProblemType::infer(logits.size()[1], labels.kind()), problem, "{what}");
        let ours = model.loss(&logits, labels).double_value(&[]);
        let want = want.double_value(&[0]);
        assert!((ours - want).abs() <= 1e-5, "{what}: ours {ours}, transformers {want}");
    }
}

#[test]
fn save_pretrained_loads_in_auto_model_for_sequence_classification() {
    let four = labels(&["a", "b", "c", "d"]);
    let r = refs("gpt2_cls");
    let mut saved = Vec::new();
    for (name, class) in CLASSIFIERS.iter().copied().chain(CAUSAL_LMS.iter().map(|n| (*n, ""))) {
        let new_head = name.ends_with("_lm");
        let mut model = classifier(name, new_head.then_some(&four[..]));
        if model.pad_token_id().is_none() {
            model.set_pad_token_id(Some(3));
        }
        let dir = scratch(&format!("cls-heads-save-{name}"));
        model.save_pretrained(&dir).unwrap();
        saved.push((name, class, dir, logits(&model, &r, "right")));
    }
    // rankforge's own pretraining output (GPT-2 names, no pad_token_id, no head).
    let mut model = SequenceClassifier::from_pretrained(&fixture().run.join("final"), Device::Cpu, Kind::Float, Some(&four)).unwrap();
    assert_eq!(model.pad_token_id(), None);
    model.set_pad_token_id(Some(3));
    let dir = scratch("cls-heads-save-rankforge_final");
    model.save_pretrained(&dir).unwrap();
    saved.push(("rankforge_final", "GPT2ForSequenceClassification", dir, logits(&model, &r, "right")));
    let dirs: Vec<&Path> = saved.iter().map(|(_, _, d, _)| d.as_path()).collect();
    let (report, theirs) = check("save", &dirs, &[]);
    for (name, class, dir, ours) in &saved {
        let key = dir.file_name().unwrap().to_str().unwrap();
        let rep = &report[key];
        assert_clean_load(rep, name);
        let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(rep["class"], config["architectures"][0], "{name}");
        if !class.is_empty() {
            assert_eq!(rep["class"], *class, "{name}");
        }
        if name.ends_with("_cls") {
            assert_eq!(rep["label2id"], json!({"negative": 0, "neutral": 1, "positive": 2}), "{name}");
        } else {
            assert_eq!(rep["id2label"], json!({"0": "a", "1": "b", "2": "c", "3": "d"}), "{name}");
        }
        assert_eq!(rep["pad_token_id"], 3, "{name}");
        assert_eq!(config["num_labels"], rep["num_labels"], "{name}");
        let diff = max_diff(&theirs[key], ours);
        assert!(diff <= TOL, "{name}: transformers on our save_pretrained differs by {diff}");
    }
}

fn lora_cfg(targets: TargetModules) -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: targets, use_rslora: false }
}

#[test]
fn seq_cls_adapters_load_in_peft_and_merged_models_in_transformers() {
    let r = refs("gpt2_cls");
    let mut cases = Vec::new();
    for (name, model_type, n_adapted) in [("gpt2_cls", "gpt2", 2), ("qwen2_cls", "qwen2", 4)] {
        let mut model = classifier(name, None);
        let targets = lora::default_target_modules(model_type).unwrap();
        let adapted = model.add_lora(&lora_cfg(targets.clone()), 7).unwrap();
        assert_eq!(adapted.len(), n_adapted, "{name}: {adapted:?}");
        tch::manual_seed(11);
        for n in model.linears_mut() {
            if let Some(l) = &mut n.linear.lora {
                tch::no_grad(|| l.lora_b.copy_(&Tensor::randn(l.lora_b.size(), (Kind::Float, Device::Cpu))));
            }
        }
        // The head trains in full (PEFT's modules_to_save): a changed score must reach PEFT.
        tch::no_grad(|| model.classifier.weight.copy_(&(&model.classifier.weight * 1.5 + 0.1)));
        let ours = logits(&model, &r, "right");
        assert!(max_diff(&ours, &r["logits_right"]) > 1e-3, "{name}: the adapter changes the logits");
        let adapter = scratch(&format!("cls-heads-adapter-{name}"));
        model.save_adapter(&adapter, &lora_cfg(targets), None).unwrap();
        model.merge_lora().unwrap();
        let merged = scratch(&format!("cls-heads-merged-{name}"));
        model.save_pretrained(&merged).unwrap();
        assert!(max_diff(&logits(&model, &r, "right"), &ours) <= TOL, "{name}: merging keeps the logits");
        cases.push((name, model_dir(name), adapter, merged, ours));
    }
    let merged: Vec<&Path> = cases.iter().map(|c| c.3.as_path()).collect();
    let adapters: Vec<(&Path, &Path)> = cases.iter().map(|c| (c.1.as_path(), c.2.as_path())).collect();
    let (report, theirs) = check("adapters", &merged, &adapters);
    for (name, _, adapter, merged, ours) in &cases {
        let key = adapter.file_name().unwrap().to_str().unwrap();
        let rep = &report[key];
        for k in ["missing_lora", "missing_other", "unexpected"] {
            assert_eq!(rep[k], json!([]), "{name}: {k}: {rep}");
        }
        let lora_keys = if *name == "gpt2_cls" { 4 } else { 8 };
        assert_eq!(rep["n_keys"], lora_keys + 1, "{name}: the LoRA tensors + score.weight: {rep}");
        let diff = max_diff(&theirs[key], ours);
        assert!(diff <= TOL, "{name}: PEFT on our adapter differs by {diff}");
        let key = merged.file_name().unwrap().to_str().unwrap();
        assert_clean_load(&report[key], name);
        let diff = max_diff(&theirs[key], ours);
        assert!(diff <= TOL, "{name}: transformers on our merged model differs by {diff}");
    }
}

#[test]
fn peft_seq_cls_adapters_load_in_rankforge() {
    for name in ["gpt2_cls", "llama_cls"] {
        let r = refs(name);
        let mut model = classifier(name, None);
        let loaded = model.load_adapter(&model_dir(&format!("peft_{name}"))).unwrap();
        assert_eq!(loaded.modules.len(), if name == "gpt2_cls" { 2 } else { 4 }, "{name}: {:?}", loaded.modules);
        assert_eq!(loaded.modules_to_save, ["classifier", "score"], "{name}");
        let want = refs(&format!("peft_{name}")).remove("logits").unwrap();
        let diff = max_diff(&logits(&model, &r, "right"), &want);
        assert!(diff <= TOL, "{name}: PEFT's adapter in rankforge differs by {diff}");
    }
}

#[test]
fn all_linear_adapts_the_layers_peft_adapts_on_decoder_classifiers() {
    for name in ["gpt2_cls", "llama_cls"] {
        let mut model = classifier(name, None);
        let preset = TargetModules::Preset(lora::ALL_LINEAR.into());
        let adapted: BTreeSet<String> = model.add_lora(&lora_cfg(preset), 1).unwrap().into_iter().collect();
        let peft: BTreeSet<String> = reference().report["all_linear"][name].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(adapted, peft, "{name}");
        assert!(!adapted.contains("score"));
    }
}
