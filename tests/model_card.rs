//! Model cards (`final/README.md`, src/card/) read by the Hub's own client: for a GPT
//! pretraining run, an SFT LoRA run, classification (full and LoRA), masked LM and DPO (LoRA),
//! `huggingface_hub.ModelCard.load` parses the card (tests/py/model_card_check.py); its
//! metadata has the task's library_name, base_model, tags and pipeline_tag; its model-index
//! results are the last evaluation row of metrics.jsonl, value for value; the curve it embeds
//! lies beside it and is an SVG with line shapes; transformers / PEFT still load the directory.
//! A run without evaluation has no model-index. The front matter's YAML reads back in PyYAML
//! value for value, tricky strings and floats included. Runs come from the other tests'
//! fixtures where they exist; the new ones are 2 steps.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use serde_json::{json, Map, Value};

/// tests/py/model_card_check.py on `dir` (`kind`: how to load it; `base` for an adapter).
fn check(dir: &Path, kind: &str, base: Option<&Path>) -> Value {
    let mut c = Command::new(python());
    c.arg(root().join("tests/py/model_card_check.py")).arg(dir).arg(kind);
    if let Some(b) = base {
        c.arg(b);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "model_card_check.py {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap()
}

/// The last evaluation row of a run's metrics.jsonl.
fn last_eval(run: &Path) -> Map<String, Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<Map<String, Value>> = text.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|r: &Map<String, Value>| r.contains_key("val_loss")).collect();
    rows.last().cloned().unwrap_or_else(|| panic!("{} has no evaluation row", run.display()))
}

struct Expect<'a> {
    library: &'a str,
    base_model: Option<&'a str>,
    tags: &'a [&'a str],
    pipeline: &'a str,
    loaded: &'a str,
}

/// The assertions every card shares; returns the checker's output for more.
fn assert_card(run: &Path, dir: &Path, kind: &str, base: Option<&Path>, want: Expect<'_>) -> Value {
    let v = check(dir, kind, base);
    let data = &v["data"];
    assert_eq!(data["library_name"], want.library, "{data}");
    assert_eq!(data.get("base_model").and_then(Value::as_str), want.base_model, "{data}");
    assert_eq!(data["pipeline_tag"], want.pipeline, "{data}");
    let tags: Vec<&str> = data["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for t in want.tags.iter().chain(&["rankforge", want.pipeline]) {
        assert!(tags.contains(t), "tag {t} in {tags:?}");
    }
    assert_eq!(data.get("license"), None, "no license is known");
    assert_eq!(data.get("datasets"), None, "local data has no Hub dataset id: {data}");
    // model-index: the last evaluation, value for value.
    let row = last_eval(run);
    let mut want_metrics: Vec<(String, String, f64)> = rankforge::card::eval_metrics(&row)
        .into_iter()
        .map(|(k, x)| {
            let (t, n) = rankforge::card::metric_label(&k);
            (t, n, x)
        })
        .collect();
    assert!(want_metrics.iter().any(|(t, n, x)| t == "loss" && n == "Validation loss" && *x == row["val_loss"].as_f64().unwrap()), "{row:?}");
    let results = v["eval_results"].as_array().unwrap();
    let mut got: Vec<(String, String, f64)> =
        results.iter().map(|r| (r["type"].as_str().unwrap().to_string(), r["name"].as_str().unwrap().to_string(), r["value"].as_f64().unwrap())).collect();
    want_metrics.sort_by(|a, b| a.1.cmp(&b.1));
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(got, want_metrics, "model-index = the last eval row of metrics.jsonl");
    for r in results {
        assert_eq!((r["task_type"].as_str(), r["dataset_split"].as_str()), (Some(want.pipeline), Some("validation")), "{r}");
        assert!(r["dataset_type"].is_string() && r["dataset_name"].is_string(), "{r}");
    }
    assert_eq!(v["model_name"], run.file_name().unwrap().to_str().unwrap());
    assert_curve(dir, &v);
    assert_eq!(v["loaded"], want.loaded, "{}", v["loaded"]);
    v
}

/// The card embeds `curves.svg`, which lies beside it (and in the run directory) and is an
/// SVG with line shapes.
fn assert_curve(dir: &Path, v: &Value) {
    assert_eq!(v["images"], json!(["curves.svg"]), "{}", v["text"]);
    assert_eq!(v["svg"]["curves.svg"]["root"], "svg", "{}", v["svg"]);
    assert!(v["svg"]["curves.svg"]["shapes"].as_u64().unwrap() >= 1, "{}", v["svg"]);
    let text = std::fs::read_to_string(dir.join("curves.svg")).unwrap();
    assert!(text.contains("<polyline"), "the loss curve is a polyline");
}

#[test]
fn pretraining_card_loads_in_huggingface_hub_with_the_last_evaluation() {
    let run = &fixture().run;
    let v = assert_card(
        run,
        &run.join("final"),
        "causal",
        None,
        Expect { library: "transformers", base_model: None, tags: &["gpt2"], pipeline: "text-generation", loaded: "GPT2LMHeadModel" },
    );
    assert_eq!(v["eval_results"].as_array().unwrap().len(), 2, "val_loss and val_ppl: {}", v["eval_results"]);
    assert!(run.join("curves.svg").exists(), "the curve is also in the run directory");
    let text = v["text"].as_str().unwrap();
    for needle in ["## Results", "## Training hyperparameters", "| learning_rate | 0.003 |", "| global_batch_size | 8 |", "## Data", "rankforge generate --model", "GPT2LMHeadModel"] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
}

#[test]
fn a_run_without_evaluation_has_no_model_index_and_its_card_still_loads() {
    let f = fixture();
    let dir = scratch("card-noeval");
    let run = dir.join("noeval");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    ok(&["train", "--config", recipe.to_str().unwrap(), "--set", "data.val_fraction=0", "--set", "train.max_steps=2"]);
    let v = check(&run.join("final"), "causal", None);
    assert_eq!(v["data"].get("model-index"), None, "{}", v["data"]);
    assert_eq!(v["eval_results"], json!([]));
    assert_eq!(v["data"]["library_name"], "transformers");
    assert!(v["text"].as_str().unwrap().contains("did not evaluate"), "{}", v["text"]);
    assert_curve(&run.join("final"), &v);
    assert_eq!(v["loaded"], "GPT2LMHeadModel");
}

#[test]
fn sft_lora_adapter_and_merged_model_each_have_a_card() {
    let f = crate::finetune::fx();
    let run = &f.straight;
    let text = assert_card(
        run,
        &run.join("final"),
        "peft-causal",
        Some(&f.llama),
        Expect { library: "peft", base_model: None, tags: &["sft", "lora", "llama"], pipeline: "text-generation", loaded: "PeftModelForCausalLM:LORA" },
    )["text"]
        .as_str()
        .unwrap()
        .to_string();
    for needle in ["PeftModel.from_pretrained", "| lora_r | 8 |", "| lora_alpha | 16 |", "| lora_target_modules | all-linear |", "--adapter", &f.llama.display().to_string()] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    let merged = assert_card(
        run,
        &run.join("final/merged"),
        "causal",
        None,
        Expect { library: "transformers", base_model: None, tags: &["sft"], pipeline: "text-generation", loaded: "LlamaForCausalLM" },
    );
    let tags = merged["data"]["tags"].as_array().unwrap();
    assert!(!tags.contains(&json!("lora")), "the merged model is no adapter: {tags:?}");
}

#[test]
fn classification_cards_full_and_lora_name_labels_and_metrics() {
    let t = crate::classify_train::trained();
    let base = t.dir.join("bert_base");
    let v = assert_card(
        &t.full,
        &t.full.join("final"),
        "cls",
        None,
        Expect { library: "transformers", base_model: None, tags: &["bert"], pipeline: "text-classification", loaded: "BertForSequenceClassification" },
    );
    let types: Vec<&str> = v["eval_results"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap()).collect();
    for t in ["loss", "accuracy", "precision", "recall", "f1"] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("0: negative, 1: neutral, 2: positive") && text.contains("rankforge predict"), "{text}");
    assert_card(
        &t.lora,
        &t.lora.join("final"),
        "peft-cls",
        Some(&base),
        Expect { library: "peft", base_model: None, tags: &["lora"], pipeline: "text-classification", loaded: "PeftModelForSequenceClassification:LORA" },
    );
}

/// Copies the files of `from` into `to`.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// The base model lies where `huggingface-cli download rankforge-test/tiny-bert` puts it (the
/// Hub cache), so the card names it as `base_model`.
#[test]
fn masked_lm_card_names_a_hub_cached_base_model() {
    let d = crate::mlm_train::dir();
    let cached: PathBuf = d.join("hub/models--rankforge-test--tiny-bert/snapshots/0123abc");
    copy_files(&d.join("bert_base"), &cached);
    let run = d.join("card-mlm");
    let recipe = crate::mlm_train::recipe(&run, 2, "");
    let text = std::fs::read_to_string(&recipe).unwrap().replace(&format!("{:?}", d.join("bert_base").display().to_string()), &format!("{:?}", cached.display().to_string()));
    std::fs::write(&recipe, text).unwrap();
    ok(&["train", "--config", recipe.to_str().unwrap()]);
    let v = assert_card(
        &run,
        &run.join("final"),
        "mlm",
        None,
        Expect { library: "transformers", base_model: Some("rankforge-test/tiny-bert"), tags: &["bert"], pipeline: "fill-mask", loaded: "BertForMaskedLM" },
    );
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("https://huggingface.co/rankforge-test/tiny-bert") && text.contains("rankforge fill-mask") && text.contains("[MASK]"), "{text}");
    assert!(text.contains("| mlm_probability | 0.3"), "{text}");
}

#[test]
fn dpo_lora_card_has_trls_metrics_in_the_model_index() {
    let run = crate::dpo_train::dir().join("card-dpo");
    ok(&["train", "--config", crate::dpo_train::recipe(&run, 2, crate::dpo_train::LORA).to_str().unwrap()]);
    let base = fixture().run.join("final");
    let v = assert_card(
        &run,
        &run.join("final"),
        "peft-causal",
        Some(&base),
        Expect { library: "peft", base_model: None, tags: &["dpo", "lora"], pipeline: "text-generation", loaded: "PeftModelForCausalLM:LORA" },
    );
    let names: Vec<&str> = v["eval_results"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert!(names.contains(&"rewards/accuracies") && names.contains(&"rewards/margins"), "{names:?}");
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("| dpo_beta | 0.1 |") && text.contains("| dpo_loss_type | sigmoid |"), "{text}");
    assert_card(
        &run,
        &run.join("final/merged"),
        "causal",
        None,
        Expect { library: "transformers", base_model: None, tags: &["dpo"], pipeline: "text-generation", loaded: "GPT2LMHeadModel" },
    );
}

/// The YAML subset rankforge writes reads back in PyYAML (YAML 1.1, what `ModelCard` uses)
/// as the JSON it came from: floats PyYAML would read as strings when bare (`1e-05`), strings
/// that look like other types, quotes, colons, `#`, unicode, nested lists of maps.
#[test]
fn front_matter_yaml_reads_back_in_pyyaml_value_for_value() {
    let value = json!({
        "library_name": "transformers",
        "tags": ["rankforge", "no", "yes", "null", "1e-5", "- dash", "a: b # c", "quote \" and ' ", "ünïcödé ✓", "line\nbreak", ""],
        "floats": [1e-5, 5e-5, 0.0001, 3.0, 1e21, -2.5e-7, 0.1, 123456.789],
        "ints": [0, 16, -3, 9007199254740993u64],
        "empty_list": [],
        "empty_map": {},
        "bool": true,
        "weird key: #1": "v",
        "model-index": [{"name": "dpo_model_lr5e-05_bs16_epoch1", "results": [{"task": {"type": "text-generation", "name": "Text Generation"},
            "metrics": [{"type": "rewards/accuracies", "value": 0.75, "name": "x"}, {"type": "loss", "value": 6.103515625e-05}]}]}],
    });
    let dir = scratch("card-yaml");
    let path = dir.join("front.yaml");
    std::fs::write(&path, rankforge::card::yaml::to_yaml(&value)).unwrap();
    let code = "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))";
    let out = Command::new(python()).args(["-c", code, path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(back, value, "YAML:\n{}", std::fs::read_to_string(&path).unwrap());
}
