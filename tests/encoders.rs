//! BERT and DistilBERT as first-class models, against transformers 5 and PEFT 0.21 on tiny
//! random models (hidden 32, 2 layers) with a right-padded batch: hidden states and
//! classification logits (≤ 1e-4), save_pretrained loading in `AutoModel` /
//! `AutoModelForSequenceClassification` with no missing or unexpected keys, new heads drawn as
//! transformers draws them, the loss of each problem type, and LoRA adapters both ways.
//! Reference: tests/py/encoders_reference.py.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::lora::{self, LoraConfig, TargetModules};
use rankforge::models::bert::Encoder;
use rankforge::models::heads::{classification_loss, ProblemType, SequenceClassifier};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

struct Reference {
    dir: PathBuf,
    report: serde_json::Value,
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("encoders-ref");
        let report = run_py(&["make", dir.to_str().unwrap()]);
        Reference { dir, report }
    })
}

fn run_py(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python()).arg(root().join("tests/py/encoders_reference.py")).args(args).output().unwrap();
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn model_dir(name: &str) -> PathBuf {
    reference().dir.join(name)
}

fn refs_path(name: &str) -> PathBuf {
    reference().dir.join("refs").join(format!("{name}.safetensors"))
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    rankforge::st::load(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn classifier(name: &str) -> SequenceClassifier {
    SequenceClassifier::from_pretrained(&model_dir(name), Device::Cpu, Kind::Float, None).unwrap()
}

fn logits(model: &SequenceClassifier, r: &HashMap<String, Tensor>, train: bool) -> Tensor {
    tch::no_grad(|| model.forward(&r["input_ids"], Some(&r["attention_mask"]), r.get("token_type_ids"), train)).unwrap()
}

/// `check_model KIND DIR` on the inputs of `refs`: (report, output).
fn transformers_output(kind: &str, dir: &Path, refs: &str) -> (serde_json::Value, Tensor) {
    let out = dir.with_extension("out.safetensors");
    let report = run_py(&["check_model", kind, dir.to_str().unwrap(), refs_path(refs).to_str().unwrap(), out.to_str().unwrap()]);
    let output = load(&out).remove("output").unwrap();
    (report, output)
}

fn assert_clean_load(report: &serde_json::Value, what: &str) {
    for key in ["missing", "unexpected", "mismatched"] {
        assert_eq!(report[key], serde_json::json!([]), "{what}: {key} keys: {report}");
    }
}

#[test]
fn padded_hidden_states_match_transformers_and_save_pretrained_loads_in_automodel() {
    for name in ["bert_cls", "distil_cls"] {
        let r = load(&refs_path(name));
        let model = Encoder::from_pretrained(&model_dir(name), Device::Cpu, Kind::Float).unwrap();
        let ours = tch::no_grad(|| model.forward(&r["input_ids"], Some(&r["attention_mask"]), r.get("token_type_ids"), false));
        let diff = max_diff(&ours, &r["hidden"]);
        assert!(diff <= TOL, "{name}: max |hidden difference| = {diff}");
        // The padding changes the padded sequence's real positions' outputs compared with no mask.
        let unmasked = tch::no_grad(|| model.forward(&r["input_ids"], None, r.get("token_type_ids"), false));
        assert!(max_diff(&unmasked.get(1).narrow(0, 0, 7), &r["hidden"].get(1).narrow(0, 0, 7)) > 1e-3, "{name}: the mask has no effect");
        let saved = scratch(&format!("encoders-save-{name}"));
        model.save_pretrained(&saved).unwrap();
        let (report, theirs) = transformers_output("base", &saved, name);
        assert_clean_load(&report, name);
        let diff = max_diff(&theirs, &r["hidden"]);
        assert!(diff <= TOL, "{name}: transformers on our save_pretrained differs by {diff}");
    }
}

#[test]
fn classification_heads_match_transformers_and_save_pretrained_loads_in_auto_classes() {
    for (name, class) in [("bert_cls", "BertForSequenceClassification"), ("distil_cls", "DistilBertForSequenceClassification")] {
        let r = load(&refs_path(name));
        let model = classifier(name);
        let diff = max_diff(&logits(&model, &r, false), &r["logits"]);
        assert!(diff <= TOL, "{name}: max |logit difference| = {diff}");
        let saved = scratch(&format!("encoders-cls-{name}"));
        model.save_pretrained(&saved).unwrap();
        let (report, theirs) = transformers_output("cls", &saved, name);
        assert_clean_load(&report, name);
        assert_eq!(report["class"], class);
        assert_eq!(report["num_labels"], 3);
        let diff = max_diff(&theirs, &r["logits"]);
        assert!(diff <= TOL, "{name}: transformers on our save_pretrained differs by {diff}");
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"], serde_json::json!([class]));
        assert_eq!(config["num_labels"], 3);
        if name == "bert_cls" {
            assert_eq!(model.id2label, ["negative", "neutral", "positive"]);
            assert_eq!(config["id2label"], serde_json::json!({"0": "negative", "1": "neutral", "2": "positive"}));
            assert_eq!(config["label2id"], serde_json::json!({"negative": 0, "neutral": 1, "positive": 2}));
            assert_eq!(report["label2id"], config["label2id"]);
        }
    }
}

#[test]
fn directories_without_a_head_get_a_new_one_initialised_as_transformers_does() {
    let labels: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    for name in ["bert_mlm", "distil_bare"] {
        let r = load(&refs_path(name));
        tch::manual_seed(0);
        let model = SequenceClassifier::from_pretrained(&model_dir(name), Device::Cpu, Kind::Float, Some(&labels)).unwrap();
        let enc = tch::no_grad(|| model.encoder().unwrap().forward(&r["input_ids"], Some(&r["attention_mask"]), r.get("token_type_ids"), false));
        assert!(max_diff(&enc, &r["hidden"]) <= TOL, "{name}: the encoder is the checkpoint's");
        let mut fresh = vec![("classifier", &model.classifier)];
        fresh.extend(model.pre_classifier.as_ref().map(|p| ("pre_classifier", p)));
        fresh.extend(model.encoder().unwrap().pooler.as_ref().map(|p| ("bert.pooler.dense", p)));
        assert_eq!(fresh.len(), 2, "{name}: BERT's pooler / DistilBERT's pre_classifier");
        assert_eq!(model.classifier.weight.size(), [4, 32]);
        for (what, linear) in fresh {
            let std = linear.weight.std(true).double_value(&[]);
            let mean = linear.weight.mean(Kind::Float).double_value(&[]);
            assert!((std - 0.02).abs() < 0.004 && mean.abs() < 0.005, "{name} {what}: N(0, 0.02) init, got mean {mean} std {std}");
            assert_eq!(linear.bias.as_ref().unwrap().abs().max().double_value(&[]), 0.0, "{name} {what}: zero bias");
        }
        let saved = scratch(&format!("encoders-new-head-{name}"));
        model.save_pretrained(&saved).unwrap();
        let (report, theirs) = transformers_output("cls", &saved, name);
        assert_clean_load(&report, name);
        assert_eq!(report["id2label"], serde_json::json!({"0": "a", "1": "b", "2": "c", "3": "d"}));
        let diff = max_diff(&theirs, &logits(&model, &r, false));
        assert!(diff <= TOL, "{name}: transformers on the saved new head differs by {diff}");
    }
    let two: Vec<String> = vec!["x".into(), "y".into()];
    let err = SequenceClassifier::from_pretrained(&model_dir("bert_cls"), Device::Cpu, Kind::Float, Some(&two)).err().unwrap().to_string();
    assert!(err.contains("classifier.weight has 3 labels") && err.contains("num_labels = 2"), "{err}");
}

#[test]
fn classification_loss_matches_transformers_for_each_problem_type() {
    let r = load(&refs_path("losses"));
    let cases = [
        ("single", &r["logits_cls"], &r["labels_single"], &r["loss_single"], ProblemType::SingleLabel),
        ("multi", &r["logits_cls"], &r["labels_multi"], &r["loss_multi"], ProblemType::MultiLabel),
        ("regression", &r["logits_reg"], &r["labels_reg"], &r["loss_reg"], ProblemType::Regression),
    ];
    for (what, logits, labels, want, problem) in cases {
        let want = want.double_value(&[0]);
        assert_eq!(ProblemType::infer(logits.size()[1], labels.kind()), problem, "{what}");
        for given in [None, Some(problem)] {
            let ours = classification_loss(logits, labels, given).double_value(&[]);
            assert!((ours - want).abs() <= 1e-5, "{what} ({given:?}): ours {ours}, transformers {want}");
        }
    }
    let model = classifier("bert_reg");
    assert_eq!(model.num_labels(), 1);
}

fn randomize_lora_b(model: &mut SequenceClassifier, seed: i64) {
    tch::manual_seed(seed);
    for n in model.linears_mut() {
        if let Some(l) = &mut n.linear.lora {
            tch::no_grad(|| l.lora_b.copy_(&Tensor::randn(l.lora_b.size(), (Kind::Float, Device::Cpu))));
        }
    }
}

fn lora_cfg(targets: TargetModules, dropout: f64) -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout, target_modules: targets, use_rslora: false }
}

#[test]
fn rankforge_adapters_load_in_peft_and_peft_adapters_in_rankforge() {
    for (name, model_type) in [("bert_cls", "bert"), ("distil_cls", "distilbert")] {
        let r = load(&refs_path(name));
        // PEFT → rankforge.
        let mut model = classifier(name);
        let loaded = model.load_adapter(&model_dir(&format!("peft_{name}"))).unwrap();
        assert_eq!(loaded.modules.len(), 4, "{name}: q and v of 2 layers");
        assert_eq!(loaded.modules_to_save, ["classifier", "score"], "{name}");
        let want = load(&refs_path(&format!("peft_{name}"))).remove("logits").unwrap();
        let diff = max_diff(&logits(&model, &r, false), &want);
        assert!(diff <= TOL, "{name}: PEFT's adapter in rankforge differs by {diff}");
        // rankforge → PEFT, with the family's default targets.
        let mut model = classifier(name);
        let targets = lora::default_target_modules(model_type).unwrap();
        let adapted = model.add_lora(&lora_cfg(targets.clone(), 0.0), 7).unwrap();
        assert_eq!(adapted.len(), 4, "{name}: {adapted:?}");
        randomize_lora_b(&mut model, 11);
        // The head trains in full (PEFT's modules_to_save): a changed bias must reach PEFT.
        tch::no_grad(|| model.classifier.bias.as_mut().unwrap().copy_(&Tensor::from_slice(&[0.5f32, -0.25, 1.0])));
        let ours = logits(&model, &r, false);
        assert!(max_diff(&ours, &r["logits"]) > 1e-3, "{name}: the adapter changes the logits");
        let dir = scratch(&format!("encoders-adapter-{name}"));
        lora::save_adapter_with_modules(&dir, &model.linears_mut(), &lora_cfg(targets, 0.0), None, "SEQ_CLS", &["classifier"]).unwrap();
        let out = dir.join("peft_logits.safetensors");
        let (base, refs) = (model_dir(name), refs_path(name));
        let args = ["check_adapter", base.to_str().unwrap(), dir.to_str().unwrap(), refs.to_str().unwrap(), out.to_str().unwrap()];
        let report = run_py(&args);
        assert_eq!(report["missing_lora"], serde_json::json!([]), "{name}: {report}");
        assert_eq!(report["unexpected"], serde_json::json!([]), "{name}: {report}");
        assert_eq!(report["missing_other"], serde_json::json!([]), "{name}: {report}");
        // 8 LoRA tensors + the head (DistilBERT's pre_classifier too: PEFT's suffix rule).
        assert_eq!(report["n_keys"], if name == "bert_cls" { 10 } else { 12 }, "{report}");
        let diff = max_diff(&load(&out)["output"], &ours);
        assert!(diff <= TOL, "{name}: PEFT on our adapter differs by {diff}");
    }
}

#[test]
fn all_linear_adapts_the_layers_peft_adapts() {
    for name in ["bert_cls", "distil_cls"] {
        let mut model = classifier(name);
        let adapted: BTreeSet<String> = model.add_lora(&lora_cfg(TargetModules::Preset(lora::ALL_LINEAR.into()), 0.0), 1).unwrap().into_iter().collect();
        let peft: BTreeSet<String> = reference().report["all_linear"][name].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(adapted, peft, "{name}");
        assert!(!adapted.contains("classifier"));
    }
}

#[test]
fn lora_dropout_acts_in_training_on_encoders() {
    for name in ["bert_cls", "distil_cls"] {
        let r = load(&refs_path(name));
        let run = |dropout: f64| {
            let mut model = classifier(name);
            // No dropout but the adapter's, so train and eval differ only through it.
            let encoder = model.encoder_mut().unwrap();
            encoder.cfg.hidden_dropout = 0.0;
            encoder.cfg.attention_dropout = 0.0;
            model.dropout = 0.0;
            model.add_lora(&lora_cfg(TargetModules::Preset(lora::ALL_LINEAR.into()), dropout), 3).unwrap();
            randomize_lora_b(&mut model, 5);
            (logits(&model, &r, true), logits(&model, &r, false))
        };
        let (train, eval) = run(0.5);
        assert!(max_diff(&train, &eval) > 1e-3, "{name}: lora.dropout 0.5 changes nothing in training");
        let (train, eval) = run(0.0);
        assert!(max_diff(&train, &eval) <= 1e-6, "{name}: without dropout, training and eval forward agree");
    }
}
