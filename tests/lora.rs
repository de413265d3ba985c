//! LoRA conformance with PEFT 0.21 on a tiny random GPT-2 that transformers creates (fixed
//! seed): adapters rankforge trains load in `PeftModel.from_pretrained` with no missing or
//! unexpected keys and compute the same logits; the merged model loads in transformers;
//! adapters PEFT writes (also rsLoRA) load in rankforge with PEFT's logits; wrong keys and
//! unmatched targets are errors; `lora.dropout` acts in training on every layer of every
//! family (GPT-2, Llama, Mistral, Qwen2). Reference: tests/py/peft_reference.py.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::config::TrainConfig;
use rankforge::lora::{LoraConfig, TargetModules};
use rankforge::models::gpt::{Gpt, GptConfig};
use rankforge::models::llama::{Llama, LlamaConfig};
use rankforge::models::CausalArch;
use rankforge::optim::AdamW;
use tch::{Device, Tensor};

/// What `peft_reference.py make` produced: base model, PEFT adapters, token ids, logits and
/// PEFT's trainable-parameter counts.
struct Reference {
    dir: PathBuf,
    ids: Vec<Vec<i64>>,
    trainable: serde_json::Value,
}

impl Reference {
    /// PEFT's logits by name: `base`, `peft`, `peft_rslora`.
    fn logits(&self) -> HashMap<String, Tensor> {
        rankforge::st::load(&self.dir.join("ref_logits.safetensors")).unwrap().into_iter().collect()
    }
}

static REFERENCE: OnceLock<Reference> = OnceLock::new();

fn reference() -> &'static Reference {
    REFERENCE.get_or_init(|| {
        let dir = scratch("lora-ref");
        let report = run_py(&["make", dir.to_str().unwrap()]);
        let ids = serde_json::from_str(&std::fs::read_to_string(dir.join("ids.json")).unwrap()).unwrap();
        Reference { dir, ids, trainable: report["trainable"].clone() }
    })
}

fn run_py(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python()).arg(root().join("tests/py/peft_reference.py")).args(args).output().unwrap();
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn ids_tensor(ids: &[Vec<i64>]) -> Tensor {
    Tensor::from_slice(&ids.concat()).view([ids.len() as i64, ids[0].len() as i64])
}

fn logits(model: &Gpt, ids: &[Vec<i64>]) -> Tensor {
    tch::no_grad(|| model.forward(&ids_tensor(ids), false, None))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn targets(names: &[&str]) -> TargetModules {
    TargetModules::Names(names.iter().map(|s| s.to_string()).collect())
}

fn count(params: &[(String, Tensor)]) -> i64 {
    params.iter().map(|(_, t)| t.numel() as i64).sum()
}

/// (a) rankforge trains an adapter (r=4, alpha=8, c_attn + c_proj) with AdamW on the adapter
/// parameters only; PEFT loads it cleanly and agrees; (b) the merged model loads in
/// transformers and agrees; (e) only adapters train, as many parameters as PEFT counts;
/// `generate --adapter` equals generating from the merged model.
#[test]
fn rankforge_adapter_loads_in_peft_and_merged_model_in_transformers() {
    let r = reference();
    let ref_logits = r.logits();
    let base_dir = r.dir.join("base");
    let work = scratch("lora-ours");
    let mut model = Gpt::from_pretrained(&base_dir, Device::Cpu).unwrap();
    let base_before: Vec<(String, Tensor)> = model.named_parameters().into_iter().map(|(n, t)| (n, t.copy())).collect();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, target_modules: targets(&["c_attn", "c_proj"]), use_rslora: false };
    let adapted = model.add_lora(&cfg, 7).unwrap();
    assert_eq!(adapted.len(), 6, "c_attn, attn.c_proj and mlp.c_proj in 2 layers: {adapted:?}");
    let trainable = model.trainable_parameters();
    assert!(trainable.iter().all(|(n, _)| n.contains(".lora_A.") || n.contains(".lora_B.")), "{trainable:?}");
    assert_eq!(trainable.len(), 12);
    assert_eq!(count(&trainable), r.trainable["count_attn_proj"].as_i64().unwrap(), "PEFT's trainable parameter count");

    // A few real optimisation steps on a next-token loss (dropout on).
    let train = TrainConfig { weight_decay: 0.0, ..TrainConfig::default() };
    let mut opt = AdamW::new(model.lora_parameters(), &train);
    let windows = ids_tensor(&r.ids);
    tch::manual_seed(11);
    let mut losses = Vec::new();
    for _ in 0..8 {
        opt.zero_grad();
        let loss = model.loss(&windows, true);
        loss.backward();
        losses.push(loss.double_value(&[]));
        opt.step(2e-2).unwrap();
    }
    assert!(losses[7] < losses[0], "the adapter learns: {losses:?}");
    for ((name, before), (_, after)) in base_before.iter().zip(model.named_parameters()) {
        assert!(before.equal(&after), "base weight {name} changed");
        assert!(!after.grad().defined(), "base weight {name} has a gradient");
    }
    let b = &model.lora_parameters()[1];
    let moved = b.1.abs().max().double_value(&[]);
    assert!(b.0.ends_with("lora_B.weight") && moved > 1e-3, "{} moved by at most {moved:e}", b.0);

    let adapter_dir = work.join("adapter");
    rankforge::lora::save_adapter(&adapter_dir, &model.linears_mut(), &cfg, Some(base_dir.to_str().unwrap()), "CAUSAL_LM").unwrap();
    let ours = logits(&model, &r.ids);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap()).unwrap();
    for (k, v) in [("peft_type", "\"LORA\""), ("r", "4"), ("lora_alpha", "8"), ("bias", "\"none\""), ("fan_in_fan_out", "true"), ("use_rslora", "false"), ("modules_to_save", "null"), ("inference_mode", "true"), ("task_type", "\"CAUSAL_LM\"")] {
        assert_eq!(config[k].to_string(), v, "adapter_config.json {k}");
    }

    // Reload in rankforge, merge, write the merged model.
    let mut reloaded = Gpt::from_pretrained(&base_dir, Device::Cpu).unwrap();
    reloaded.load_adapter(&adapter_dir).unwrap();
    let d = max_diff(&logits(&reloaded, &r.ids), &ours);
    assert!(d <= 1e-6, "the reloaded adapter vs the trained one: {d:e}");
    assert_eq!(reloaded.merge_lora().unwrap().len(), 6);
    assert!(!reloaded.has_lora());
    let d = max_diff(&logits(&reloaded, &r.ids), &ours);
    assert!(d <= 1e-5, "merging keeps the function: {d:e}");
    let merged_dir = work.join("merged");
    std::fs::create_dir_all(&merged_dir).unwrap();
    reloaded.save_pretrained(&merged_dir, Some(0)).unwrap();

    let ids_path = work.join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(&r.ids).unwrap()).unwrap();
    let out = work.join("check.safetensors");
    let report = run_py(&["check", base_dir.to_str().unwrap(), adapter_dir.to_str().unwrap(), merged_dir.to_str().unwrap(), ids_path.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(report["warnings"], serde_json::json!([]), "PEFT warned: {report}");
    assert_eq!(report["missing_keys"], serde_json::json!([]), "{report}");
    assert_eq!(report["unexpected_keys"], serde_json::json!([]), "{report}");
    assert_eq!(report["file_keys_not_in_peft"], serde_json::json!([]), "{report}");
    assert_eq!(report["peft_keys_not_in_file"], serde_json::json!([]), "{report}");
    assert_eq!(report["n_keys"], 12);
    assert_eq!(report["value_diff"], 0.0, "PEFT holds exactly the saved values");
    assert_eq!(report["scaling"], 2.0);
    let py: HashMap<String, Tensor> = rankforge::st::load(&out).unwrap().into_iter().collect();
    let d = max_diff(&py["peft"], &ours);
    assert!(d <= 1e-4, "PEFT vs rankforge logits: {d}");
    let effect = max_diff(&py["disabled"], &ours);
    eprintln!("losses {losses:?}; PEFT vs rankforge {d:.2e}; adapter effect {effect:.3}; {report}");
    assert!(effect > 1e-2, "the adapter must matter for the comparison to mean something: {effect}");
    // Disabled = base, in two steps so that a failure says which one: PEFT with its adapters
    // disabled runs exactly the base layers of the model it wraps (same process, same weights
    // in memory: no rounding to allow for), and that base, reloaded from base/, is the model
    // that `make` wrote (another process: at most reduction-order differences).
    let (disabled, reloaded) = (max_diff(&py["disabled"], &py["base"]), max_diff(&py["base"], &ref_logits["base"]));
    eprintln!("disabled vs base {disabled:e}; reloaded base vs written base {reloaded:e}");
    assert!(disabled <= 1e-6, "PEFT with the adapters disabled vs the base model it wraps: {disabled:e}");
    assert!(reloaded <= 1e-5, "the base model reloaded from base/ vs the one that wrote it: {reloaded:e}");
    let d = max_diff(&py["merged"], &ours);
    assert!(d <= 1e-4, "transformers on the merged model vs rankforge: {d}");
    let d = max_diff(&py["peft_merged"], &py["merged"]);
    assert!(d <= 1e-4, "PEFT's merge_and_unload vs rankforge's merged model in transformers: {d:e}");
    assert!(report["merged_weight_diff"].as_f64().unwrap() <= 1e-5, "merged weights vs PEFT's merge_and_unload: {report}");

    // Disabling the adapters gives the base model (DPO's reference).
    assert_eq!(model.set_lora_enabled(false), 6);
    let d = max_diff(&logits(&model, &r.ids), &ref_logits["base"]);
    assert!(d <= 1e-4, "rankforge with the adapters disabled vs transformers' base model: {d:e}");

    // generate --adapter = generate from the merged model.
    let tok = rankforge::tokenizer::LoadedTokenizer::load(&fixture().tokenizer).unwrap();
    for d in [&merged_dir, &work.join("base-with-tok")] {
        std::fs::create_dir_all(d).unwrap();
        tok.save_pretrained(d, Some(32)).unwrap();
    }
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(base_dir.join(f), work.join("base-with-tok").join(f)).unwrap();
    }
    let gen = |model: &Path, adapter: Option<&Path>| -> serde_json::Value {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "In the beginning", "--temperature", "0", "--max-new-tokens", "12", "--json", "--device", "cpu"];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().unwrap()]);
        }
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let with_adapter = gen(&work.join("base-with-tok"), Some(&adapter_dir));
    assert_eq!(with_adapter["ids"], gen(&merged_dir, None)["ids"]);
    assert_ne!(with_adapter["ids"], gen(&work.join("base-with-tok"), None)["ids"], "the adapter changes the greedy text");
}

/// (c) adapters written by PEFT (`get_peft_model`, B ~ N(0, 1), `save_pretrained`), plain
/// and rsLoRA, load in rankforge with PEFT's logits; saving them again round-trips.
#[test]
fn peft_adapters_load_in_rankforge_with_peft_logits() {
    let r = reference();
    let ref_logits = r.logits();
    let work = scratch("lora-peft");
    for (name, rslora) in [("peft", false), ("peft_rslora", true)] {
        let mut model = Gpt::from_pretrained(&r.dir.join("base"), Device::Cpu).unwrap();
        let loaded = model.load_adapter(&r.dir.join(name)).unwrap();
        assert_eq!(loaded.config.use_rslora, rslora);
        assert_eq!(loaded.config.target_modules, targets(&["c_attn"]));
        assert_eq!(loaded.modules, ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]);
        assert_eq!(loaded.task_type.as_deref(), Some("CAUSAL_LM"));
        let d = max_diff(&logits(&model, &r.ids), &ref_logits[name]);
        assert!(d <= 1e-4, "{name}: rankforge vs PEFT logits {d}");
        eprintln!("{name}: rankforge vs PEFT {d:.2e}");
        let effect = max_diff(&ref_logits[name], &ref_logits["base"]);
        assert!(effect > 1e-2, "{name} must change the logits: {effect:e}");
        let trainable = model.trainable_parameters();
        assert_eq!(count(&trainable), r.trainable[name].as_i64().unwrap(), "{name}: PEFT's trainable count");
        // Save again and compare the tensors with PEFT's file.
        let again = work.join(name);
        rankforge::lora::save_adapter(&again, &model.linears_mut(), &loaded.config, None, "CAUSAL_LM").unwrap();
        let theirs = rankforge::st::load(&r.dir.join(name).join("adapter_model.safetensors")).unwrap();
        let mine = rankforge::st::load(&again.join("adapter_model.safetensors")).unwrap();
        assert_eq!(theirs.len(), mine.len());
        for ((n1, t1), (n2, t2)) in theirs.iter().zip(&mine) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1} changed on the round trip");
        }
    }
    let d = max_diff(&ref_logits["peft"], &ref_logits["peft_rslora"]);
    assert!(d > 1e-2, "rsLoRA scales differently: {d:e}");
}

/// (d) a wrong-prefix adapter and a target that matches nothing are errors naming the keys
/// and the targets (PEFT would warn and silently run the base model).
#[test]
fn wrong_keys_and_unmatched_targets_are_errors() {
    let r = reference();
    let work = scratch("lora-bad");
    let bad = work.join("wrong-prefix");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(r.dir.join("peft/adapter_config.json"), bad.join("adapter_config.json")).unwrap();
    let renamed: Vec<(String, Tensor)> = rankforge::st::load(&r.dir.join("peft/adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n.replace("base_model.model.transformer.", "base_model.model.model.transformer."), t))
        .collect();
    rankforge::st::save(&bad.join("adapter_model.safetensors"), &renamed).unwrap();
    let mut model = Gpt::from_pretrained(&r.dir.join("base"), Device::Cpu).unwrap();
    let e = model.load_adapter(&bad).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    assert!(e.contains("missing keys [base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"), "{e}");
    assert!(e.contains("unexpected keys [base_model.model.model.transformer.h.0.attn.c_attn.lora_A.weight"), "{e}");
    assert!(!model.has_lora(), "nothing is attached on error");

    // The CLI says the same, with exit code 2.
    let out = rankforge(&["generate", "--model", r.dir.join("base").to_str().unwrap(), "--adapter", bad.to_str().unwrap(), "--prompt", "x", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected keys [base_model.model.model.transformer"));

    // A rank that does not fit the tensors names the tensor.
    let wrong_r = work.join("wrong-r");
    std::fs::create_dir_all(&wrong_r).unwrap();
    std::fs::copy(r.dir.join("peft/adapter_model.safetensors"), wrong_r.join("adapter_model.safetensors")).unwrap();
    let text = std::fs::read_to_string(r.dir.join("peft/adapter_config.json")).unwrap().replace("\"r\": 4", "\"r\": 8");
    std::fs::write(wrong_r.join("adapter_config.json"), text).unwrap();
    let e = model.load_adapter(&wrong_r).unwrap_err().to_string();
    assert!(e.contains("tensor base_model.model.transformer.h.0.attn.c_attn.lora_A.weight: shape [4, 32]"), "{e}");

    // Targets that match nothing.
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: targets(&["c_attn", "q_proj"]), use_rslora: false };
    let e = model.add_lora(&cfg, 0).unwrap_err().to_string();
    assert!(e.contains("[\"q_proj\"] matches no linear layer") && e.contains("c_attn, c_fc, c_proj"), "{e}");
    assert!(!model.has_lora());
    assert!(model.trainable_parameters().len() > 12, "a failed injection freezes nothing");

    // "all-linear" adapts every linear layer; PEFT counts the same parameters.
    let all = LoraConfig { target_modules: TargetModules::Preset("all-linear".into()), ..cfg };
    assert_eq!(model.add_lora(&all, 0).unwrap().len(), 8);
    assert_eq!(count(&model.trainable_parameters()), r.trainable["count_all_linear"].as_i64().unwrap());
}

/// Adapters PEFT writes for Llama-family models (its default llama targets q_proj/v_proj on an
/// untied Llama; all-linear rsLoRA on a tied Qwen2 with q/k/v biases and GQA) load onto
/// rankforge's `CausalLm` with PEFT's logits and trainable-parameter counts.
#[test]
fn peft_adapters_for_llama_and_qwen2_load_with_pefts_logits() {
    use rankforge::models::CausalLm;
    let dir = scratch("lora-llama-ref");
    let report = run_py(&["make_llama", dir.to_str().unwrap()]);
    let ids: Vec<Vec<i64>> = serde_json::from_str(&std::fs::read_to_string(dir.join("ids.json")).unwrap()).unwrap();
    let reference: HashMap<String, Tensor> = rankforge::st::load(&dir.join("ref_logits.safetensors")).unwrap().into_iter().collect();
    for (adapter, base, modules) in [("llama_default", "llama", 4), ("qwen2_all_linear", "qwen2", 14)] {
        let mut lm = CausalLm::from_pretrained(&dir.join(base), Device::Cpu, tch::Kind::Float).unwrap();
        let loaded = rankforge::lora::load_adapter(lm.linears_mut(), &dir.join(adapter), Device::Cpu).unwrap();
        assert_eq!(loaded.modules.len(), modules, "{adapter}: {:?}", loaded.modules);
        let trainable: i64 = rankforge::lora::adapter_parameters(&lm.linears_mut()).iter().map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(trainable, report["trainable"][adapter].as_i64().unwrap(), "{adapter}: PEFT's trainable count");
        let ours = tch::no_grad(|| lm.forward(&ids_tensor(&ids), false, None));
        let d = max_diff(&ours, &reference[adapter]);
        assert!(d <= 1e-4, "{adapter}: max |logit difference| {d:e}");
        // The adapter matters: without it the logits are the base model's, far from PEFT's.
        rankforge::lora::set_enabled(lm.linears_mut(), false);
        let off = tch::no_grad(|| lm.forward(&ids_tensor(&ids), false, None));
        let d = max_diff(&off, &reference[adapter]);
        assert!(d > 1e-2, "{adapter}: the adapter changes the output: {d:e}");
    }
}

/// A freshly initialised 1-layer decoder of `family` (random weights: other tests draw from
/// tch's RNG concurrently, so not always the same ones) with every base dropout 0 (so that only
/// LoRA's dropout can make training mode differ from eval mode). Mistral's window (4) is
/// shorter than the test's sequences; Qwen2 has q/k/v biases and tied embeddings; the Llama
/// and Mistral heads are untied, so `lm_head` can be targeted.
fn tiny_decoder(family: &str) -> CausalArch {
    tch::manual_seed(0);
    if family == "gpt2" {
        let cfg = GptConfig { vocab_size: 64, n_layer: 1, n_head: 2, n_embd: 16, n_positions: 16, dropout: 0.0, bias: true, layer_norm_eps: 1e-5 };
        return CausalArch::Gpt2(Gpt::new(&cfg, Device::Cpu));
    }
    let config = serde_json::json!({
        "model_type": family, "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 16, "rms_norm_eps": 1e-6, "hidden_act": "silu", "rope_theta": 10000.0,
        "attention_dropout": 0.0, "initializer_range": 0.2, "tie_word_embeddings": family == "qwen2",
        "sliding_window": if family == "mistral" { serde_json::json!(4) } else { serde_json::Value::Null },
    });
    let cfg = LlamaConfig::from_hf_json(Path::new("config.json"), &config).unwrap();
    CausalArch::Llama(Llama::new(&cfg, Device::Cpu))
}

fn arch_forward(model: &CausalArch, ids: &Tensor, train: bool) -> Tensor {
    tch::no_grad(|| match model {
        CausalArch::Gpt2(m) => m.forward(ids, train, None),
        CausalArch::Llama(m) => m.forward(ids, train, None),
    })
}

fn arch_linears(model: &mut CausalArch) -> Vec<rankforge::lora::NamedLinear<'_>> {
    match model {
        CausalArch::Gpt2(m) => m.linears_mut(),
        CausalArch::Llama(m) => m.linears_mut(),
    }
}

/// `lora.dropout` acts in training on every path of every family: with an adapter on one
/// kind of layer at a time (B nonzero), training-mode logits differ from eval-mode logits and
/// from another training pass when `lora.dropout` = 0.1, and with `lora.dropout` = 0 training
/// equals eval exactly (the base models have no dropout of their own, so the test can tell).
/// No assertion depends on tch's global RNG state, which the tests running beside this one in
/// the same process draw from too: that the masks follow the per-micro-batch seed is shown by
/// the runs of tests/finetune.rs (one process per rank), 1 vs 2 ranks and resume exact with
/// `lora.dropout` = 0.1.
#[test]
fn lora_dropout_acts_in_training_for_every_family() {
    let llama_layers = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let families: [(&str, Vec<&str>); 4] = [
        ("gpt2", vec!["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]),
        ("llama", [&llama_layers[..], &["lm_head"]].concat()),
        ("mistral", [&llama_layers[..], &["lm_head"]].concat()),
        ("qwen2", llama_layers.to_vec()),
    ];
    let ids = Tensor::from_slice(&(0..16).map(|i| (i * 7 + 3) % 64).collect::<Vec<i64>>()).view([2, 8]);
    for (family, layers) in families {
        for layer in layers {
            for dropout in [0.1, 0.0] {
                let mut model = tiny_decoder(family);
                let cfg = LoraConfig { r: 4, alpha: 8.0, dropout, target_modules: targets(&[layer]), use_rslora: false };
                rankforge::lora::inject(arch_linears(&mut model), &cfg, Device::Cpu, 1).unwrap();
                for (name, b) in rankforge::lora::adapter_parameters(&arch_linears(&mut model)) {
                    if name.contains(".lora_B.") {
                        let _ = tch::no_grad(|| b.shallow_clone().normal_(0.0, 1.0));
                    }
                }
                let eval = arch_forward(&model, &ids, false);
                let (a, b) = (arch_forward(&model, &ids, true), arch_forward(&model, &ids, true));
                let what = format!("{family} {layer}, lora.dropout = {dropout}");
                if dropout > 0.0 {
                    let d = max_diff(&a, &eval);
                    assert!(d > 1e-3, "{what}: training mode must apply the adapter's dropout (|train - eval| = {d:e})");
                    let d = max_diff(&a, &b);
                    assert!(d > 1e-3, "{what}: each training pass draws new masks (|difference| = {d:e})");
                } else {
                    assert_eq!(max_diff(&a, &eval), 0.0, "{what}: without dropout training mode is eval mode");
                    assert_eq!(max_diff(&a, &b), 0.0, "{what}: without dropout training mode is deterministic");
                }
            }
        }
    }
}
