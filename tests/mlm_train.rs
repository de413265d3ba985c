//! Masked-LM fine-tuning as a training task (`[task] kind = "masked_lm"`) on a tiny random BERT
//! without an MLM head (tests/py/classify_train_reference.py's `bert_base` and its texts):
//! `final/` loads in transformers and `fill-mask --json` on it equals `pipeline("fill-mask")`;
//! evaluation writes the masked-token loss and top-1/top-5 accuracy; 1 and 2 launched ranks
//! train alike and 2 + 2 resumed steps equal 4 bit for bit; LoRA writes an adapter and a merged
//! model transformers loads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

pub(crate) fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch("mlm-train");
        let out = Command::new(python()).arg(root().join("tests/py/classify_train_reference.py")).args(["make", d.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        d
    })
}

pub(crate) fn recipe(run: &Path, steps: u64, extra: &str) -> PathBuf {
    let d = dir();
    let p = |n: &str| format!("{:?}", d.join(n).display().to_string());
    let text = format!(
        "[run]\ndir = {:?}\n[task]\nkind = \"masked_lm\"\nmlm_probability = 0.3\n[model]\nkind = \"hf\"\npath = {}\n\
         [data]\ntrain = {}\nval = {}\nmax_length = 32\n\
         [train]\nmax_steps = {steps}\nlr_decay_steps = 4\nglobal_batch_size = 8\nmicro_batch_size = 4\nlr = 1e-3\nwarmup_steps = 1\n\
         [eval]\nevery_steps = 2\n{extra}",
        run.display().to_string(),
        p("bert_base"),
        p("train.jsonl"),
        p("val.jsonl"),
    );
    let path = d.join(format!("{}-{steps}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

/// `pipeline("fill-mask")` on `model` for `text`, as JSON.
fn pipeline(model: &Path, text: &str) -> Value {
    let code = "import json, sys\nfrom transformers import pipeline\n\
                p = pipeline('fill-mask', model=sys.argv[1], tokenizer=sys.argv[1], device='cpu')\n\
                print(json.dumps(p(sys.argv[2], top_k=3)))";
    let out = Command::new(python()).args(["-c", code, model.to_str().unwrap(), text]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap()
}

fn assert_fill_mask_equals_pipeline(model: &Path) {
    let text = "the movie was [MASK] !";
    let ours: Value = serde_json::from_str(&ok(&["fill-mask", "--model", model.to_str().unwrap(), "--text", text, "--top-k", "3", "--json"])).unwrap();
    let theirs = pipeline(model, text);
    let (a, b) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x["token"], &x["token_str"], &x["sequence"]), (&y["token"], &y["token_str"], &y["sequence"]), "{ours} vs {theirs}");
        assert!((x["score"].as_f64().unwrap() - y["score"].as_f64().unwrap()).abs() <= 1e-5, "{ours} vs {theirs}");
    }
}

#[test]
fn masked_lm_trains_evaluates_and_final_fills_masks_like_the_pipeline() {
    let run = dir().join("run-full");
    ok(&["train", "--config", recipe(&run, 4, "").to_str().unwrap()]);
    let rows: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&Value> = rows.iter().filter(|r| r.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|r| r["loss"].as_f64().unwrap().is_finite() && r["masked_tokens"].as_u64().unwrap() > 0), "{steps:?}");
    let evals: Vec<&Value> = rows.iter().filter(|r| r.get("val_loss").is_some()).collect();
    assert_eq!(evals.len(), 2);
    for key in ["val_loss", "val_ppl", "top1_accuracy", "top5_accuracy"] {
        assert!(evals[1][key].as_f64().is_some_and(f64::is_finite), "{key} in {}", evals[1]);
    }
    assert!(evals[1]["top5_accuracy"].as_f64() >= evals[1]["top1_accuracy"].as_f64());
    assert_eq!(evals[0]["masked_tokens"], evals[1]["masked_tokens"], "the validation mask is the same at every evaluation");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["BertForMaskedLM"]));
    assert_fill_mask_equals_pipeline(&run.join("final"));
}

#[test]
fn masked_lm_one_and_two_ranks_train_alike_and_resume_is_exact() {
    let d = dir();
    let (one, two, resumed) = (d.join("one"), d.join("two"), d.join("resumed"));
    ok(&["train", "--config", recipe(&one, 4, "").to_str().unwrap()]);
    let out = Command::new(bin().with_file_name("rankforge-launch"))
        .env("RANKFORGE_LOG", "warn")
        .env_remove("RANKFORGE_JOB_TOKEN")
        .args(["--nproc-per-node", "2", "--config", recipe(&two, 4, "").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "2 ranks: {}", String::from_utf8_lossy(&out.stderr));
    ok(&["train", "--config", recipe(&resumed, 2, "").to_str().unwrap()]);
    ok(&["train", "--config", recipe(&resumed, 4, "").to_str().unwrap()]);
    let (a, b, c) = (losses(&one), losses(&two), losses(&resumed));
    assert_eq!(a.len(), 4);
    assert_eq!(a, c, "2 + 2 resumed steps = 4 steps, bit for bit (the masks follow (seed, epoch, index))");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "1 vs 2 ranks: {a:?} vs {b:?}");
    }
}

#[test]
fn masked_lm_with_lora_writes_an_adapter_and_a_merged_model() {
    let run = dir().join("run-lora");
    let lora = "[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"query\", \"value\"]\n";
    ok(&["train", "--config", recipe(&run, 2, lora).to_str().unwrap()]);
    let adapter: Value = serde_json::from_str(&std::fs::read_to_string(run.join("final/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["target_modules"], serde_json::json!(["query", "value"]));
    assert_fill_mask_equals_pipeline(&run.join("final/merged"));
    let bad = fails(&["train", "--config", recipe(&dir().join("run-bad"), 2, "").to_str().unwrap(), "--set", "task.mlm_probability=0"]);
    assert!(bad.contains("task.mlm_probability"), "{bad}");
}

/// The bundled recipe (configs/kjv_mlm_cpu.toml): a BERT built from its config.json alone
/// (`model.from_scratch`, transformers' initialisation) with a WordPiece tokenizer trained on
/// the bundled corpus, a few steps, then fill-mask on a verse equals the pipeline on `final/`.
#[test]
fn bundled_kjv_recipe_trains_from_scratch_and_fills_a_verse_like_the_pipeline() {
    let d = scratch("mlm-kjv");
    let tok = d.join("tok");
    ok(&["tokenizer", "train", "--input", root().join("data/kjv.txt").to_str().unwrap(), "--vocab-size", "8192", "--kind", "wordpiece", "--output", tok.to_str().unwrap()]);
    let run = d.join("run");
    let sets = [
        format!("run.dir={:?}", run.display().to_string()),
        format!("model.path={:?}", root().join("configs/bert_kjv_mini").display().to_string()),
        format!("data.tokenizer={:?}", tok.display().to_string()),
        "train.max_steps=3".into(),
        "train.global_batch_size=8".into(),
        "train.micro_batch_size=8".into(),
        "train.warmup_steps=1".into(),
        "train.device=\"cpu\"".into(),
        "eval.every_steps=3".into(),
        "eval.max_batches=1".into(),
        "checkpoint.every_steps=3".into(),
    ];
    let mut args = vec!["train".to_string(), "--config".into(), root().join("configs/kjv_mlm_cpu.toml").display().to_string()];
    for s in &sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let l = losses(&run);
    assert_eq!(l.len(), 3);
    // Fresh weights of std 0.02 predict nearly uniformly: the first loss is about ln(8192).
    assert!((l[0] - 8192f64.ln()).abs() < 0.3, "first loss {} vs ln(8192) = {}", l[0], 8192f64.ln());
    let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap()).unwrap();
    assert_eq!((&config["architectures"], &config["vocab_size"]), (&serde_json::json!(["BertForMaskedLM"]), &serde_json::json!(8192)));
    let text = "In the beginning God created the heaven and the [MASK].";
    let model = run.join("final");
    let ours: Value = serde_json::from_str(&ok(&["fill-mask", "--model", model.to_str().unwrap(), "--text", text, "--top-k", "3", "--json"])).unwrap();
    let theirs = pipeline(&model, text);
    for (x, y) in ours.as_array().unwrap().iter().zip(theirs.as_array().unwrap()) {
        assert_eq!((&x["token"], &x["token_str"], &x["sequence"]), (&y["token"], &y["token_str"], &y["sequence"]), "{ours} vs {theirs}");
        assert!((x["score"].as_f64().unwrap() - y["score"].as_f64().unwrap()).abs() <= 1e-5, "{ours} vs {theirs}");
    }
}

/// The GPU recipes (BERT on IMDB in full, DistilBERT + LoRA) run on CPU with the tiny models,
/// packed into blocks as the recipes say.
#[test]
fn shipped_mlm_gpu_recipes_run_on_tiny_models() {
    let d = dir();
    for (name, model, arch) in [("bert_imdb_mlm_gpu", "bert_base", "BertForMaskedLM"), ("distilbert_lora_imdb_mlm_gpu", "distilbert_base", "DistilBertForMaskedLM")] {
        let run = d.join(format!("recipe-{name}"));
        let sets = [
            format!("model.path={:?}", d.join(model).display().to_string()),
            format!("data.train={:?}", d.join("train.jsonl").display().to_string()),
            format!("data.val={:?}", d.join("val.jsonl").display().to_string()),
            format!("run.dir={:?}", run.display().to_string()),
            "train.epochs=0.05".into(), // a few dozen blocks of 16 tokens, 4 per step: 1 step
            "train.device=\"cpu\"".into(),
            "train.global_batch_size=4".into(),
            "train.micro_batch_size=2".into(),
            "data.max_length=16".into(),
            "eval.max_batches=1".into(),
        ];
        let mut args = vec!["train".to_string(), "--config".into(), root().join(format!("configs/{name}.toml")).display().to_string()];
        for s in &sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(losses(&run).len(), 1, "{name}");
        let lora = name.contains("lora");
        let file = if lora { "final/merged/config.json" } else { "final/config.json" };
        let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join(file)).unwrap()).unwrap();
        assert_eq!(config["architectures"], serde_json::json!([arch]), "{name}");
        assert_eq!(run.join("final/adapter_config.json").exists(), lora, "{name}");
    }
}

/// Bad input: a causal-only model under masked_lm, model.from_scratch under another task, a
/// tokenizer larger than the model's vocabulary: one line, exit 2, no run directory.
#[test]
fn masked_lm_bad_models_are_one_line_and_exit_2() {
    let d = dir();
    let gpt2 = d.join("causal-gpt2");
    std::fs::create_dir_all(&gpt2).unwrap();
    std::fs::write(gpt2.join("config.json"), r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 200, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}"#).unwrap();
    let run = d.join("run-bad-model");
    let r = recipe(&run, 2, "");
    let r = r.to_str().unwrap();
    let tok = format!("data.tokenizer={:?}", d.join("bert_base").display().to_string());
    let e = fails(&["train", "--config", r, "--set", &format!("model.path={:?}", gpt2.display().to_string()), "--set", &tok]);
    assert!(e.contains("config.json") && e.contains("gpt2") && e.contains("not a masked language model"), "{e}");
    let sft = d.join("from-scratch-sft.toml");
    let text = format!("[run]\ndir = {:?}\n[model]\nkind = \"hf\"\npath = {:?}\nfrom_scratch = true\n[data]\ntrain = {:?}\n[train]\nmax_steps = 1\n",
        run.display().to_string(), d.join("bert_base").display().to_string(), d.join("train.jsonl").display().to_string());
    std::fs::write(&sft, text).unwrap();
    let e = fails(&["train", "--config", sft.to_str().unwrap()]);
    assert!(e.contains("model.from_scratch") && e.contains("masked_lm"), "{e}");
    let small = d.join("small-vocab");
    std::fs::create_dir_all(&small).unwrap();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(d.join("bert_base/config.json")).unwrap()).unwrap();
    config["vocab_size"] = serde_json::json!(8);
    std::fs::write(small.join("config.json"), config.to_string()).unwrap();
    let e = fails(&["train", "--config", r, "--set", &format!("model.path={:?}", small.display().to_string()), "--set", "model.from_scratch=true", "--set", &tok]);
    assert!(e.contains("config.json") && e.contains("vocab_size 8"), "{e}");
    assert!(!run.exists(), "no bad input creates the run directory");
}

/// A bench row's per-step `masked_tokens`.
fn masked_counts(row: &Value) -> Vec<u64> {
    row["masked_tokens"].as_array().unwrap_or_else(|| panic!("no masked_tokens list: {row}")).iter().map(|m| m.as_u64().unwrap()).collect()
}

/// `rankforge bench` on a masked-LM recipe times the task's training step (bench/bench_mlm.sh
/// reads its row): finite losses, fresh masks each step at the recipe's rate (8 rows × 32
/// non-special tokens at 0.3), every weight trained in full and the adapters alone under LoRA;
/// a sequence longer than the model's positions is one error line, exit 2; no run directory.
#[test]
fn bench_times_the_masked_lm_step() {
    let run = dir().join("bench");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("bert_base/config.json")).unwrap()).unwrap();
    let (h, layers) = (cfg["hidden_size"].as_i64().unwrap(), cfg["num_hidden_layers"].as_i64().unwrap());
    let lora = "[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"query\", \"value\"]\n";
    for (extra, mode) in [("", "full"), (lora, "lora")] {
        let out = ok(&["bench", "--config", recipe(&run, 1, extra).to_str().unwrap(), "--steps", "2", "--warmup", "1"]);
        let row: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        for key in ["step_ms", "tokens_per_s", "examples_per_s", "params", "trainable_params", "threads", "device", "dtype", "weights"] {
            assert!(row.get(key).is_some_and(|v| !v.is_null()), "{mode}: no {key} in {row}");
        }
        assert_eq!((row["impl"].as_str(), row["task"].as_str(), row["mode"].as_str()), (Some("rankforge"), Some("masked_lm"), Some(mode)), "{row}");
        assert_eq!((row["batch"].as_u64(), row["micro_batch"].as_u64(), row["seq"].as_u64()), (Some(8), Some(4), Some(32)), "{row}");
        assert_eq!(row["architecture"], "BertForMaskedLM", "{row}");
        assert!(row["step_ms"].as_f64().unwrap() > 0.0 && row["tokens_per_s"].as_f64().unwrap() > 0.0, "{row}");
        let losses: Vec<f64> = row["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
        assert!(losses.len() == 3 && losses.iter().all(|l| l.is_finite() && *l > 0.0), "warmup + 2 steps: {row}");
        let masked = masked_counts(&row);
        assert_eq!(masked.len(), 3, "{row}");
        assert!(masked.iter().all(|&m| (40..=115).contains(&m)), "0.3 of 256 tokens is 77 ± 7: {masked:?}");
        assert!(masked.windows(2).any(|w| w[0] != w[1]), "each step draws its own masks: {masked:?}");
        let (params, trainable) = (row["params"].as_i64().unwrap(), row["trainable_params"].as_i64().unwrap());
        match mode {
            "lora" => assert_eq!(trainable, layers * 2 * 4 * (h + h), "query and value adapters, r = 4: {row}"),
            _ => assert_eq!(trainable, params, "{row}"),
        }
    }
    let r = recipe(&run, 1, "");
    let out = rankforge(&["bench", "--config", r.to_str().unwrap(), "--set", "data.max_length=100000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: ") && err.contains("100000 tokens, more than the model's"), "{err}");
    assert!(!run.exists(), "bench writes no run directory");
}

/// The masked-LM benchmark's pieces on a tiny model: bench/make_bert_mlm.py writes a
/// `BertForMaskedLM` with a mask token, `rankforge bench` runs bench/mlm_bert_base.toml on it
/// and bench/hf_mlm.py (transformers' collator + AdamW) the same batch; both rows carry what
/// bench/bench_mlm.sh reads, count the same parameters and mask at the same rate.
#[test]
fn mlm_bench_recipe_and_reference_run_on_a_tiny_model() {
    let d = scratch("mlm-bench-tiny");
    let model = d.join("bert-mlm");
    let py = |args: &[&str]| {
        let out = Command::new(python()).args(args).current_dir(root()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<Value>(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap()
    };
    let m = model.to_str().unwrap();
    py(&["bench/make_bert_mlm.py", m, "--layers", "2", "--hidden", "32", "--heads", "2", "--intermediate", "64"]);
    let recipe = root().join("bench/mlm_bert_base.toml");
    let sets = [
        format!("model.path={m}"),
        format!("data.train={m}/unused.txt"),
        format!("run.dir={}", d.join("run").display()),
        "data.max_length=64".into(),
        "train.threads=1".into(),
    ];
    let mut args = vec!["bench", "--config", recipe.to_str().unwrap(), "--steps", "2", "--warmup", "0"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let ours: Value = serde_json::from_str(ok(&args).lines().last().unwrap()).unwrap();
    let theirs = py(&["bench/hf_mlm.py", "--model", m, "--batch", "8", "--seq", "64", "--steps", "2", "--warmup", "0", "--threads", "1"]);
    for row in [&ours, &theirs] {
        for key in ["impl", "step_ms", "threads", "batch", "seq", "params", "masked_tokens"] {
            assert!(row.get(key).is_some_and(|v| !v.is_null()), "no {key} in {row}");
        }
        assert_eq!((row["batch"].as_u64(), row["seq"].as_u64(), row["threads"].as_u64()), (Some(8), Some(64), Some(1)), "{row}");
        let masked = masked_counts(row);
        assert!(masked.len() == 2 && masked.iter().all(|&n| (40..=115).contains(&n)), "0.15 of 512 tokens is 77 ± 8: {row}");
    }
    assert_eq!(ours["params"], theirs["params"], "the same model: {ours} vs {theirs}");
    assert_eq!(ours["trainable_params"], theirs["trainable_params"], "{ours} vs {theirs}");
    assert_eq!((ours["impl"].as_str(), theirs["impl"].as_str()), (Some("rankforge"), Some("pytorch")));
    assert!(!d.join("run").exists(), "bench writes no run directory");
}
