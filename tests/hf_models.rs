//! Pretrained Hugging Face models: rankforge loads what transformers saves and computes the
//! same logits / hidden states (fp32, max |difference| ≤ 1e-4), and transformers loads what
//! rankforge writes back.
//!
//! Reference: tests/py/hf_models_reference.py (`make` builds tiny random GPT-2, Llama, Qwen2,
//! Mistral, BERT and DistilBERT models with save_pretrained — one sharded, one bf16, one fp16,
//! one with a v4-spelled config — and their outputs for fixed ids; `logits` runs
//! AutoModelForCausalLM on directories we wrote).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::models::bert::Encoder;
use rankforge::models::{CausalLm, KvCache};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
/// The reference's vocabulary size.
const VOCAB: usize = 320;

/// The directory `make` filled (created once per test process).
fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("hf-models");
        let out = Command::new(python())
            .arg(root().join("tests/py/hf_models_reference.py"))
            .arg("make")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// `refs/<name>.safetensors`: input_ids, output (+ attention_mask, token_type_ids).
fn refs(name: &str) -> HashMap<String, Tensor> {
    rankforge::st::load(&models().join("refs").join(format!("{name}.safetensors"))).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn causal(dir: &Path) -> CausalLm {
    CausalLm::from_pretrained(dir, Device::Cpu, Kind::Float).unwrap()
}

fn logits(model: &CausalLm, ids: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward(ids, false, None))
}

/// Loads `models()/<name>` and compares its logits with transformers'.
fn check_causal(name: &str) {
    let r = refs(name);
    let model = causal(&models().join(name));
    let ours = logits(&model, &r["input_ids"]);
    let scale = r["output"].abs().max().double_value(&[]);
    let diff = max_diff(&ours, &r["output"]);
    assert!(scale > 1.0, "{name}: the reference logits are too flat to compare ({scale})");
    assert!(diff <= TOL, "{name}: max |logit difference| = {diff} (logits up to {scale})");
}

fn check_encoder(name: &str) {
    let r = refs(name);
    let model = Encoder::from_pretrained(&models().join(name), Device::Cpu, Kind::Float).unwrap();
    let ours = tch::no_grad(|| model.forward(&r["input_ids"], r.get("attention_mask"), r.get("token_type_ids"), false));
    let diff = max_diff(&ours, &r["output"]);
    assert!(diff <= TOL, "{name}: max |hidden-state difference| = {diff}");
}

#[test]
fn gpt2_matches_transformers() {
    check_causal("gpt2");
}

#[test]
fn gpt2_fp16_sharded_matches_transformers() {
    assert!(models().join("gpt2_fp16_sharded/model.safetensors.index.json").exists());
    check_causal("gpt2_fp16_sharded");
}

#[test]
fn llama_tied_gqa_matches_transformers() {
    check_causal("llama_tied");
}

#[test]
fn llama3_rope_untied_biases_sharded_matches_transformers() {
    assert!(models().join("llama3_untied/model.safetensors.index.json").exists());
    check_causal("llama3_untied");
}

#[test]
fn llama_linear_rope_bf16_file_v4_config_matches_transformers() {
    let file = rankforge::st::load(&models().join("llama_linear_bf16/model.safetensors")).unwrap();
    assert!(file.iter().all(|(_, t)| t.kind() == Kind::BFloat16), "the reference file is bf16");
    check_causal("llama_linear_bf16");
}

#[test]
fn qwen2_fp16_file_matches_transformers() {
    let file = rankforge::st::load(&models().join("qwen2_fp16/model.safetensors")).unwrap();
    assert!(file.iter().all(|(_, t)| t.kind() == Kind::Half), "the reference file is fp16");
    check_causal("qwen2_fp16");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check_causal("mistral_window");
}

#[test]
fn bert_mlm_checkpoint_padded_batch_matches_transformers() {
    check_encoder("bert_mlm");
}

#[test]
fn bert_model_without_prefix_matches_transformers() {
    check_encoder("bert_bare");
}

#[test]
fn distilbert_classifier_checkpoint_matches_transformers() {
    check_encoder("distilbert_cls");
}

/// A copy of `models()/<name>` whose single weights file is rewritten by `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let dir = scratch(&format!("edit-{name}")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(models().join(name).join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = rankforge::st::load(&models().join(name).join("model.safetensors")).unwrap();
    edit(&mut tensors);
    rankforge::st::save(&dir.join("model.safetensors"), &tensors).unwrap();
    dir
}

#[test]
fn missing_and_unexpected_keys_are_named() {
    let missing = "model.layers.1.mlp.up_proj.weight";
    let extra = "model.layers.0.self_attn.rotary_scale.weight";
    let dir = edited_copy("llama_tied", |t| {
        t.retain(|(n, _)| n != missing);
        t.push((extra.into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))));
    });
    let err = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float).err().expect("a broken checkpoint is refused");
    let msg = err.to_string();
    assert!(msg.contains(&format!("missing keys [{missing}]")), "{msg}");
    assert!(msg.contains(&format!("unexpected keys [{extra}]")), "{msg}");
    assert!(msg.contains("model.safetensors"), "the file is named: {msg}");
    assert_eq!(err.exit_code(), 2);

    let dir = edited_copy("llama_tied", |t| {
        for (n, v) in t.iter_mut() {
            if n == "model.norm.weight" {
                *v = Tensor::ones([31], (Kind::Float, Device::Cpu));
            }
        }
    });
    let msg = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(msg.contains("model.norm.weight has shape [31], the config needs [32]"), "{msg}");
}

#[test]
fn bad_directories_are_named() {
    let dir = scratch("hf-bad");
    let msg = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(msg.contains("config.json") && msg.contains("not found"), "{msg}");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    let msg = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(msg.contains("\"t5\""), "{msg}");
    std::fs::copy(models().join("llama_tied/config.json"), dir.join("config.json")).unwrap();
    let msg = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("not found"), "{msg}");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let msg = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(msg.contains("\"yarn\" is not supported"), "{msg}");
}

#[test]
fn low_precision_files_load_exactly_into_low_precision_models() {
    let dir = models().join("llama_linear_bf16");
    let model = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(model.kind(), Kind::BFloat16);
    let file: HashMap<String, Tensor> = rankforge::st::load(&dir.join("model.safetensors")).unwrap().into_iter().collect();
    for (name, p) in model.named_parameters() {
        assert!(p.equal(&file[&name]), "{name} differs from the file");
    }
    // bf16 math is coarse but must still be the same function.
    let r = refs("llama_linear_bf16");
    let ours = logits(&model, &r["input_ids"]);
    let d = max_diff(&ours, &r["output"]);
    assert!(d < 0.25, "bf16 logits are far off: {d:e}");
    // And an fp16 file into a bf16 model (converted on load).
    let q = CausalLm::from_pretrained(&models().join("qwen2_fp16"), Device::Cpu, Kind::BFloat16).unwrap();
    assert!(q.named_parameters().iter().all(|(_, t)| t.kind() == Kind::BFloat16));
}

#[test]
fn old_layernorm_gamma_beta_names_load() {
    let dir = edited_copy("bert_mlm", |t| {
        for (n, _) in t.iter_mut() {
            if n.contains("LayerNorm.") {
                *n = n.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
            }
        }
    });
    let r = refs("bert_mlm");
    let model = Encoder::from_pretrained(&dir, Device::Cpu, Kind::Float).unwrap();
    let ours = tch::no_grad(|| model.forward(&r["input_ids"], r.get("attention_mask"), r.get("token_type_ids"), false));
    let d = max_diff(&ours, &r["output"]);
    assert!(d <= TOL, "rankforge vs transformers: {d:e}");
}

/// Prefill 5 tokens, then a chunk of 3, then one at a time: the same logits as one full pass.
#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    for (name, chunks) in [("llama_tied", &[5, 3, 1, 1, 1, 1][..]), ("mistral_window", &[5, 3, 1, 1, 1, 1]), ("qwen2_fp16", &[5, 3, 1, 1, 1, 1]), ("gpt2", &[5, 1, 1, 1, 1, 1, 1, 1])] {
        let r = refs(name);
        let model = causal(&models().join(name));
        let ids = &r["input_ids"];
        let mut cache = KvCache::default();
        let mut parts = Vec::new();
        let mut start = 0;
        for &n in chunks {
            parts.push(tch::no_grad(|| model.forward(&ids.narrow(1, start, n), false, Some(&mut cache))));
            start += n;
        }
        assert_eq!(cache.len, ids.size()[1] as usize);
        let diff = max_diff(&Tensor::cat(&parts, 1), &r["output"]);
        assert!(diff <= TOL, "{name}: cached decoding differs from transformers by {diff}");
    }
}

#[test]
fn linears_and_parameters_carry_hf_names() {
    let mut llama = causal(&models().join("llama3_untied"));
    let names: Vec<(String, bool)> = llama.linears_mut().into_iter().map(|l| (l.name, l.fan_in_fan_out)).collect();
    assert_eq!(names.len(), 2 * 7 + 1);
    assert_eq!(names[0], ("model.layers.0.self_attn.q_proj".to_string(), false));
    assert_eq!(names[6].0, "model.layers.0.mlp.down_proj");
    assert_eq!(names[14].0, "lm_head");
    let mut file_keys: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(models().join("llama3_untied")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            file_keys.extend(rankforge::st::load(&p).unwrap().into_iter().map(|(n, _)| n));
        }
    }
    file_keys.sort();
    let params: Vec<String> = llama.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(params, file_keys, "named_parameters are the file's keys, sorted");

    let mut gpt = causal(&models().join("gpt2"));
    let names: Vec<(String, bool)> = gpt.linears_mut().into_iter().map(|l| (l.name, l.fan_in_fan_out)).collect();
    assert_eq!(names.len(), 8);
    assert_eq!(names[0], ("transformer.h.0.attn.c_attn".to_string(), true));
    assert_eq!(names[7].0, "transformer.h.1.mlp.c_proj");
    let tied = causal(&models().join("llama_tied"));
    assert!(tied.named_parameters().iter().all(|(n, _)| n != "lm_head.weight"));
}

/// Runs the reference's `logits` mode on `dirs`; returns its report and each dir's logits.
fn transformers_logits(ids: &Tensor, dirs: &[&Path]) -> (serde_json::Value, HashMap<String, Tensor>) {
    let work = scratch("hf-logits");
    let ids_path = work.join("ids.safetensors");
    rankforge::st::save(&ids_path, &[("input_ids".to_string(), ids.shallow_clone())]).unwrap();
    let out = Command::new(python())
        .arg(root().join("tests/py/hf_models_reference.py"))
        .args([Path::new("logits"), &ids_path, &work])
        .args(dirs)
        .output()
        .unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut logits = HashMap::new();
    for d in dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        let t = rankforge::st::load(&work.join(format!("{name}.safetensors"))).unwrap().remove(0).1;
        logits.insert(name, t);
    }
    (report, logits)
}

/// save_pretrained writes what transformers loads (tied ⇒ no lm_head.weight; Conv1D
/// transposed back; shards → one file), and resize_token_embeddings grows the vocabulary with
/// mean rows without changing the old tokens' logits.
#[test]
fn saved_and_resized_models_load_in_transformers() {
    let out = scratch("hf-saved");
    let ids = refs("llama_tied")["input_ids"].shallow_clone();
    let mut ours = HashMap::new();
    let mut dirs = Vec::new();
    for (name, resize) in [("llama_tied", None), ("qwen2_fp16", None), ("llama3_untied", Some(VOCAB + 5)), ("gpt2", Some(VOCAB + 3))] {
        let mut model = causal(&models().join(name));
        let before = logits(&model, &ids);
        if let Some(n) = resize {
            model.resize_token_embeddings(n).unwrap();
            assert_eq!(model.vocab_size(), n);
            let after = logits(&model, &ids);
            assert_eq!(after.size()[2], n as i64);
            let d = max_diff(&after.narrow(2, 0, VOCAB as i64), &before);
            assert!(d <= 1e-5, "{name}: old tokens' logits changed by {d:e}");
            for (pname, p) in model.named_parameters() {
                if pname.ends_with("embed_tokens.weight") || pname.ends_with("wte.weight") || pname == "lm_head.weight" {
                    let mean = p.narrow(0, 0, VOCAB as i64).mean_dim(0, false, Kind::Float);
                    let d = max_diff(&p.get(VOCAB as i64 + 1), &mean);
                    assert!(d <= 1e-6, "{pname}: new rows are the mean (off by {d:e})");
                }
            }
        }
        let dir = out.join(name);
        model.save_pretrained(&dir).unwrap();
        ours.insert(name.to_string(), logits(&causal(&dir), &ids));
        dirs.push(dir);
    }
    let tied_keys = rankforge::st::load(&out.join("llama_tied/model.safetensors")).unwrap();
    assert!(tied_keys.iter().all(|(n, _)| n != "lm_head.weight"), "tied models have no lm_head.weight");
    let text = std::fs::read_to_string(out.join("llama3_untied/config.json")).unwrap();
    assert!(text.ends_with("}\n") && text.contains("\n  \"architectures\""), "save_pretrained JSON style");
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&String> = cfg.as_object().unwrap().keys().collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted keys");
    assert_eq!(cfg["vocab_size"], VOCAB + 5);
    let bytes = std::fs::read(out.join("llama_tied/model.safetensors")).unwrap();
    assert!(String::from_utf8_lossy(&bytes[..2000.min(bytes.len())]).contains(r#""__metadata__":{"format":"pt"}"#));

    let dir_refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let (report, theirs) = transformers_logits(&ids, &dir_refs);
    for (name, t) in &theirs {
        let diff = max_diff(&ours[name], t);
        assert!(diff <= TOL, "{name}: transformers on our save differs by {diff}");
    }
    assert_eq!(report["llama_tied"]["tied"], true);
    assert_eq!(report["llama3_untied"]["tied"], false);
    assert_eq!(report["llama3_untied"]["vocab_size"], VOCAB + 5);
    assert_eq!(report["gpt2"]["vocab_size"], VOCAB + 3);
}
