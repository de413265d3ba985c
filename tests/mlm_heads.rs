//! The masked-LM heads (`BertForMaskedLM`, `DistilBertForMaskedLM`) and `rankforge fill-mask`
//! against transformers 5 and PEFT 0.21 on tiny random models (hidden 32, 2 layers, a tiny
//! WordPiece tokenizer with `[MASK]`): logits on a right-padded batch (≤ 1e-4), the loss of a
//! masked batch, a `BertModel` checkpoint (with pooler, no MLM head) loading with a new head
//! drawn as transformers draws it, `save_pretrained` loading in `AutoModelForMaskedLM` with no
//! missing or unexpected keys, LoRA adapters in PEFT (and merged), `fill-mask --json` equal to
//! `pipeline("fill-mask")`, and fill-mask's bad input. Reference: tests/py/mlm_reference.py
//! (one `make` call for every fixture, one `check` call per test that writes files).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::lora::{LoraConfig, TargetModules};
use rankforge::models::mlm::{mlm_loss, MaskedLm};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const MODELS: [&str; 4] = ["bert_mlm", "distil_mlm", "bert_untied", "distil_untied"];

struct Reference {
    dir: PathBuf,
    report: Value,
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("mlm-heads-ref");
        let report = run_py(&["make", dir.to_str().unwrap()]);
        Reference { dir, report }
    })
}

fn run_py(args: &[&str]) -> Value {
    let out = Command::new(python()).arg(root().join("tests/py/mlm_reference.py")).args(args).output().unwrap();
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn model_dir(name: &str) -> PathBuf {
    reference().dir.join(name)
}

fn refs() -> HashMap<String, Tensor> {
    rankforge::st::load(&reference().dir.join("refs.safetensors")).unwrap().into_iter().collect()
}

fn masked_lm(name: &str) -> MaskedLm {
    MaskedLm::from_pretrained(&model_dir(name), Device::Cpu, Kind::Float).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn logits(model: &MaskedLm, r: &HashMap<String, Tensor>) -> Tensor {
    tch::no_grad(|| model.forward(&r["input_ids"], Some(&r["attention_mask"]), None, false))
}

/// One `check` call: transformers loads every model dir, PEFT every (base, adapter) pair; the
/// report and each one's logits on the padded batch, by directory name.
fn check(name: &str, models: &[&Path], adapters: &[(&Path, &Path)]) -> (Value, HashMap<String, Tensor>) {
    let out = scratch(&format!("mlm-heads-check-{name}"));
    let spec = json!({
        "refs": reference().dir.join("refs.safetensors"),
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
            let mut t: HashMap<String, Tensor> = rankforge::st::load(&out.join(format!("{name}.safetensors"))).unwrap().into_iter().collect();
            (name, t.remove("output").unwrap())
        })
        .collect();
    (report, logits)
}

#[test]
fn mlm_logits_match_transformers_on_a_padded_batch() {
    let r = refs();
    assert_eq!(r["attention_mask"].get(1).sum(Kind::Int64).int64_value(&[]) < r["attention_mask"].size()[1], true, "the second row is padded");
    for name in MODELS {
        let model = masked_lm(name);
        let ours = logits(&model, &r);
        assert_eq!(ours.size()[2], model.vocab_size() as i64);
        let d = max_diff(&ours, &r[&format!("logits_{name}")]);
        assert!(d <= TOL, "{name}: logits differ by {d}");
    }
}

#[test]
fn mlm_loss_of_a_masked_batch_matches_transformers() {
    let r = refs();
    let labels = &r["labels"];
    let n = labels.ne(-100).sum(Kind::Int64).int64_value(&[]);
    assert!(n >= 3, "the batch has masked tokens");
    for name in MODELS {
        let model = masked_lm(name);
        let out = tch::no_grad(|| model.forward(&r["masked_ids"], Some(&r["attention_mask"]), None, false));
        let want = r[&format!("loss_{name}")].double_value(&[0]);
        let mean = mlm_loss(&out, labels).double_value(&[]);
        let sum = model.loss_sum(&out, labels);
        assert_eq!(sum.kind(), Kind::Float);
        assert!((mean - want).abs() <= 1e-5, "{name}: mlm_loss {mean} vs transformers {want}");
        assert!((sum.double_value(&[]) / n as f64 - want).abs() <= 1e-5, "{name}: loss_sum / {n} vs transformers {want}");
    }
}

#[test]
fn bert_model_without_mlm_head_gets_a_new_head_and_ignores_its_pooler() {
    let r = refs();
    let model = masked_lm("bert_base");
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert!(!names.iter().any(|n| n.contains("pooler")), "no pooler: {names:?}");
    // The new tensors are what transformers reports missing (its decoder.bias is the tied bias).
    let new_head = &reference().report["new_head"];
    let missing: BTreeSet<String> = new_head["missing"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).filter(|n| n != "cls.predictions.decoder.bias").collect();
    let ours: BTreeSet<String> = names.iter().filter(|n| !n.starts_with("bert.")).cloned().collect();
    assert_eq!(ours, missing);
    assert_eq!(new_head["unexpected"], json!(["pooler.dense.bias", "pooler.dense.weight"]));
    // The encoder is the checkpoint's.
    let hidden = tch::no_grad(|| model.encoder.forward(&r["input_ids"], Some(&r["attention_mask"]), None, false));
    let d = max_diff(&hidden, &r["hidden_bert_base"]);
    assert!(d <= TOL, "encoder hidden states differ by {d}");
    // Drawn as transformers' _init_weights: N(0, initializer_range = 0.05), zeros, ones.
    let p: HashMap<String, Tensor> = model.named_parameters().into_iter().collect();
    let std = p["cls.predictions.transform.dense.weight"].std(true).double_value(&[]);
    let hf_std = new_head["dense_std"].as_f64().unwrap();
    assert!((std - 0.05).abs() < 0.005 && (hf_std - 0.05).abs() < 0.005, "dense std {std}, transformers' {hf_std}");
    for (name, value) in [("cls.predictions.transform.dense.bias", 0.0), ("cls.predictions.bias", 0.0), ("cls.predictions.transform.LayerNorm.weight", 1.0), ("cls.predictions.transform.LayerNorm.bias", 0.0)] {
        let t = &p[name];
        assert_eq!((t - value).abs().max().double_value(&[]), 0.0, "{name} is not all {value}");
    }
    // The decoder is tied: the logits are the transform's output times the word embeddings.
    let h = model.norm.forward(&model.encoder.act(&model.transform.forward_t(&hidden, false)));
    let tied = h.matmul(&p["bert.embeddings.word_embeddings.weight"].tr());
    assert!(max_diff(&tied, &logits(&model, &r)) <= 1e-5);
}

#[test]
fn save_pretrained_loads_in_auto_model_for_masked_lm() {
    let r = refs();
    let out = scratch("mlm-heads-save");
    let mut cases = Vec::new();
    for name in ["bert_mlm", "distil_mlm", "bert_base", "bert_untied", "distil_untied"] {
        let model = masked_lm(name);
        let dir = out.join(format!("saved_{name}"));
        model.save_pretrained(&dir).unwrap();
        cases.push((dir, logits(&model, &r), model.architecture()));
    }
    let dirs: Vec<&Path> = cases.iter().map(|(d, ..)| d.as_path()).collect();
    let (report, hf_logits) = check("save", &dirs, &[]);
    for (dir, ours, arch) in &cases {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let info = &report[name];
        for key in ["missing", "unexpected", "mismatched"] {
            assert_eq!(info[key], json!([]), "{name}: {key} keys: {info}");
        }
        assert_eq!(info["class"], json!(arch));
        let d = max_diff(ours, &hf_logits[name]);
        assert!(d <= TOL, "{name}: transformers' logits of the saved model differ by {d}");
    }
}

fn lora_cfg(targets: TargetModules) -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: targets, use_rslora: false }
}

#[test]
fn lora_adapters_load_in_peft_and_merge() {
    let r = refs();
    let out = scratch("mlm-heads-lora");
    tch::manual_seed(3);
    let mut cases = Vec::new();
    let names = |v: &[&str]| TargetModules::Names(v.iter().map(|s| s.to_string()).collect());
    for (name, targets, n_adapted) in [("bert_mlm", names(&["query", "value"]), 4), ("distil_mlm", TargetModules::Preset("all-linear".into()), 13)] {
        let mut model = masked_lm(name);
        let cfg = lora_cfg(targets);
        let adapted = model.add_lora(&cfg, 1).unwrap();
        assert_eq!(adapted.len(), n_adapted, "{name}: {adapted:?}");
        for l in model.linears_mut() {
            if let Some(a) = l.linear.lora.as_mut() {
                tch::no_grad(|| a.lora_b.copy_(&(Tensor::randn(a.lora_b.size(), (Kind::Float, Device::Cpu)) * 0.3)));
            }
        }
        let base = logits(&masked_lm(name), &r);
        let adapted_logits = logits(&model, &r);
        assert!(max_diff(&base, &adapted_logits) > 1e-2, "{name}: the adapter changes the logits");
        let dir = out.join(format!("lora_{name}"));
        model.save_adapter(&dir, &cfg, Some(model_dir(name).to_str().unwrap())).unwrap();
        let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["task_type"], Value::Null);
        // Our own loader reads it back.
        let mut again = masked_lm(name);
        again.load_adapter(&dir).unwrap();
        assert!(max_diff(&logits(&again, &r), &adapted_logits) <= 1e-6);
        model.merge_lora().unwrap();
        assert!(model.lora_parameters().is_empty());
        let merged = logits(&model, &r);
        cases.push((name, dir, adapted_logits, merged));
    }
    let pairs: Vec<(PathBuf, &Path)> = cases.iter().map(|(name, dir, ..)| (model_dir(name), dir.as_path())).collect();
    let pair_refs: Vec<(&Path, &Path)> = pairs.iter().map(|(b, a)| (b.as_path(), *a)).collect();
    let (report, peft_logits) = check("lora", &[], &pair_refs);
    for (name, dir, adapted, merged) in &cases {
        let key = dir.file_name().unwrap().to_str().unwrap();
        let info = &report[key];
        assert_eq!(info["missing"], json!([]), "{name}: {info}");
        assert_eq!(info["unexpected"], json!([]), "{name}: {info}");
        assert_eq!(info["class"], json!("PeftModel"), "{name}: {info}");
        let d = max_diff(adapted, &peft_logits[key]);
        assert!(d <= TOL, "{name}: PEFT's logits differ by {d}");
        let d = max_diff(merged, &peft_logits[key]);
        assert!(d <= TOL, "{name}: merged logits differ from PEFT's by {d}");
    }
}

/// `fill-mask --json` as a JSON value, for `args` after `--model DIR`.
fn fill(model: &str, args: &[&str]) -> Vec<Value> {
    let dir = model_dir(model);
    let mut all = vec!["fill-mask", "--model", dir.to_str().unwrap(), "--device", "cpu", "--json"];
    all.extend_from_slice(args);
    ok(&all).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The same candidates in the same order, scores within 1e-5.
fn assert_same(ours: &Value, want: &Value, what: &str) {
    match (ours, want) {
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{what}: {ours} vs {want}");
            for (x, y) in a.iter().zip(b) {
                assert_same(x, y, what);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            assert_eq!(a.keys().collect::<BTreeSet<_>>(), b.keys().collect::<BTreeSet<_>>(), "{what}: keys");
            for key in ["token", "token_str", "sequence"] {
                assert_eq!(a[key], b[key], "{what}: {key}: {ours} vs {want}");
            }
            let (s, t) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((s - t).abs() <= 1e-5, "{what}: score {s} vs {t}");
        }
        _ => panic!("{what}: {ours} vs {want}"),
    }
}

#[test]
fn fill_mask_json_equals_the_pipeline() {
    let report = &reference().report;
    for case in ["one", "two", "top3", "distil"] {
        let c = &report["pipeline"][case];
        let k = c["top_k"].to_string();
        let ours = fill(c["model"].as_str().unwrap(), &["--text", c["text"].as_str().unwrap(), "--top-k", &k]);
        assert_eq!(ours.len(), 1);
        assert_same(&ours[0], &c["out"], case);
    }
    // Two masks: a list per mask, the other mask and [CLS]/[SEP] kept in the sequence.
    assert!(report["pipeline"]["two"]["out"][1][0]["sequence"].as_str().unwrap().starts_with("[CLS]"));
    let inputs = reference().dir.join("inputs.txt");
    let ours = fill("bert_mlm", &["--input", inputs.to_str().unwrap()]);
    assert_same(&Value::Array(ours), &report["inputs"], "--input");
    // The same texts as JSONL rows.
    let texts = std::fs::read_to_string(&inputs).unwrap();
    let jsonl = scratch("mlm-heads-jsonl").join("inputs.jsonl");
    std::fs::write(&jsonl, texts.lines().map(|t| json!({"text": t}).to_string() + "\n").collect::<String>()).unwrap();
    let ours = fill("bert_mlm", &["--input", jsonl.to_str().unwrap()]);
    assert_same(&Value::Array(ours), &report["inputs"], "--input JSONL");
    // The keys in the pipeline's order.
    let raw = ok(&["fill-mask", "--model", model_dir("bert_mlm").to_str().unwrap(), "--text", "a [MASK] story .", "--json"]);
    let at = |k: &str| raw.find(&format!("\"{k}\":")).unwrap();
    assert!(raw.starts_with("[{") && at("score") < at("token") && at("token") < at("token_str") && at("token_str") < at("sequence"), "{raw}");
    // Readable lines: one per candidate, the score first.
    let dir = model_dir("bert_mlm");
    let text = ok(&["fill-mask", "--model", dir.to_str().unwrap(), "--text", "the movie was [MASK] !", "--top-k", "2"]);
    let first = &report["pipeline"]["one"]["out"][0];
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_eq!(text.lines().next().unwrap(), format!("{:.4}\t{}\t{}", first["score"].as_f64().unwrap(), first["token_str"].as_str().unwrap(), first["sequence"].as_str().unwrap()));
}

#[test]
fn fill_mask_bad_input_is_one_line_and_exit_2() {
    let dir = model_dir("bert_mlm");
    let d = dir.to_str().unwrap();
    let err = fails(&["fill-mask", "--model", d, "--text", "no blank here"]);
    assert!(err.contains("--text") && err.contains("[MASK]"), "{err}");
    // A text file line without a mask: named by file and line.
    let tmp = scratch("mlm-heads-bad");
    let lines = tmp.join("texts.txt");
    std::fs::write(&lines, "a [MASK] story .\n\nno blank\n").unwrap();
    let err = fails(&["fill-mask", "--model", d, "--input", lines.to_str().unwrap()]);
    assert!(err.contains("texts.txt: line 3") && err.contains("[MASK]"), "{err}");
    // Not a masked LM.
    let gpt2 = tmp.join("gpt2");
    std::fs::create_dir_all(&gpt2).unwrap();
    std::fs::write(gpt2.join("config.json"), r#"{"model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}"#).unwrap();
    let err = fails(&["fill-mask", "--model", gpt2.to_str().unwrap(), "--text", "a [MASK] story"]);
    assert!(err.contains("gpt2") && err.contains("config.json") && err.contains("not a masked language model"), "{err}");
    // A tokenizer without a mask token.
    let nomask = tmp.join("nomask");
    std::fs::create_dir_all(&nomask).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir.join(f), nomask.join(f)).unwrap();
    }
    let mut tc: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    tc.as_object_mut().unwrap().remove("mask_token");
    std::fs::write(nomask.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let err = fails(&["fill-mask", "--model", nomask.to_str().unwrap(), "--text", "a [MASK] story"]);
    assert!(err.contains("tokenizer_config.json") && err.contains("mask_token"), "{err}");
    // A tokenizer of another model: an id beyond vocab_size.
    let other = tmp.join("other_tok");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), other.join(f)).unwrap();
    }
    let mut tj: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    tj["model"]["vocab"]["story"] = json!(999);
    std::fs::write(other.join("tokenizer.json"), tj.to_string()).unwrap();
    let err = fails(&["fill-mask", "--model", other.to_str().unwrap(), "--text", "a [MASK] story"]);
    assert!(err.contains("999") && err.contains("vocab_size"), "{err}");
}

#[test]
fn old_style_checkpoints_load_with_their_tied_decoder_pooler_and_gamma_beta() {
    // bert-base-uncased's layout: the tied decoder weight and bias written out, TF-era
    // LayerNorm names, a pooler and the NSP head of BertForPreTraining.
    let r = refs();
    let dir = model_dir("bert_mlm");
    let want = logits(&masked_lm("bert_mlm"), &r);
    let tensors: HashMap<String, Tensor> = rankforge::st::load(&dir.join("model.safetensors")).unwrap().into_iter().collect();
    let tmp = scratch("mlm-heads-old");
    for only_decoder_bias in [false, true] {
        let mut old: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in &tensors {
            let name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
            if !(only_decoder_bias && name == "cls.predictions.bias") {
                old.push((name, t.shallow_clone()));
            }
        }
        old.push(("cls.predictions.decoder.weight".into(), tensors["bert.embeddings.word_embeddings.weight"].shallow_clone()));
        old.push(("cls.predictions.decoder.bias".into(), tensors["cls.predictions.bias"].shallow_clone()));
        old.push(("cls.seq_relationship.weight".into(), Tensor::ones([2, 32], (Kind::Float, Device::Cpu))));
        old.push(("bert.pooler.dense.weight".into(), Tensor::ones([32, 32], (Kind::Float, Device::Cpu))));
        old.push(("bert.pooler.dense.bias".into(), Tensor::zeros([32], (Kind::Float, Device::Cpu))));
        let case = tmp.join(format!("old_{only_decoder_bias}"));
        std::fs::create_dir_all(&case).unwrap();
        std::fs::copy(dir.join("config.json"), case.join("config.json")).unwrap();
        rankforge::st::save(&case.join("model.safetensors"), &old).unwrap();
        let model = MaskedLm::from_pretrained(&case, Device::Cpu, Kind::Float).unwrap();
        let d = max_diff(&logits(&model, &r), &want);
        assert!(d <= 1e-6, "only decoder.bias = {only_decoder_bias}: logits differ by {d}");
    }
}
