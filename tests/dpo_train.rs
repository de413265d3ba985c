//! DPO training (`[task] kind = "dpo"`) on the shared tiny GPT-2 with preference pairs made by
//! scripts/make_kjv_dpo.py from its corpus (the true rest of a verse preferred over another's):
//! with a fresh adapter the first loss is ln 2 for any β; TRL's metrics are in metrics.jsonl;
//! `final/` is a PEFT adapter that PEFT loads with no missing or unexpected keys, with a merged
//! model that `generate` runs; 1 and 2 launched ranks train alike and 2 + 2 resumed steps equal
//! 4; a precomputed reference gives the live reference's run; the shipped recipes run on the
//! tiny model; a reference model of another vocabulary is one line, exit 2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

/// Preference rows (64 train, 16 val) from the fixture's corpus.
pub(crate) fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch("dpo-train");
        let out = Command::new(python())
            .arg(root().join("scripts/make_kjv_dpo.py"))
            .args(["--train", "64", "--val", "16", "--input", fixture().corpus.to_str().unwrap(), "--out-dir", d.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        d
    })
}

fn model() -> PathBuf {
    fixture().run.join("final")
}

/// A DPO recipe: `steps` steps of 8 pairs (micro-batches of 4), `extra` appended (a [lora]
/// section, task keys go through `--set`).
pub(crate) fn recipe(run: &Path, steps: u64, extra: &str) -> PathBuf {
    let d = dir();
    let text = format!(
        "[run]\ndir = {:?}\n[task]\nkind = \"dpo\"\n[model]\nkind = \"hf\"\npath = {:?}\n\
         [data]\ntrain = {:?}\nval = {:?}\nmax_length = 64\n\
         [train]\nmax_steps = {steps}\nlr_decay_steps = 6\nglobal_batch_size = 8\nmicro_batch_size = 4\nlr = 1e-2\nwarmup_steps = 0\ndevice = \"cpu\"\n\
         [eval]\nevery_steps = 2\nmax_batches = 1\n{extra}",
        run.display().to_string(),
        model().display().to_string(),
        d.join("kjv_dpo.jsonl").display().to_string(),
        d.join("kjv_dpo_val.jsonl").display().to_string(),
    );
    let path = d.join(format!("{}-{steps}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) const LORA: &str = "[lora]\nr = 4\nalpha = 8\ndropout = 0.0\ntarget_modules = [\"c_attn\"]\n";

fn rows(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const METRICS: [&str; 8] =
    ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"];

#[test]
fn dpo_lora_starts_at_ln2_logs_trls_metrics_and_writes_a_peft_adapter() {
    for beta in [0.1, 2.0] {
        let run = dir().join(format!("lora-beta{beta}"));
        let r = recipe(&run, 6, LORA);
        ok(&["train", "--config", r.to_str().unwrap(), "--set", &format!("task.beta={beta}")]);
        let all = rows(&run);
        let steps: Vec<&Value> = all.iter().filter(|r| r.get("loss").is_some()).collect();
        assert_eq!(steps.len(), 6);
        let first = steps[0];
        // A fresh adapter (B = 0): the policy is the reference, every margin 0, loss ln 2.
        assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "β {beta}: {first}");
        assert_eq!((first["rewards/margins"].as_f64(), first["rewards/accuracies"].as_f64()), (Some(0.0), Some(0.0)), "{first}");
        for row in &steps {
            for key in METRICS {
                assert!(row[key].as_f64().is_some_and(f64::is_finite), "{key} in {row}");
            }
            assert_eq!(row["pairs"].as_f64(), Some(8.0));
        }
        let evals: Vec<&Value> = all.iter().filter(|r| r.get("val_loss").is_some()).collect();
        assert_eq!(evals.len(), 3);
        let last = evals[2];
        assert!(last["val_rewards/margins"].as_f64().unwrap() > 0.0 && last["val_loss"].as_f64().unwrap() < std::f64::consts::LN_2, "the policy learns the preference: {last}");
        for key in METRICS {
            assert!(evals[2][&format!("val_{key}")].as_f64().is_some_and(f64::is_finite), "val_{key} in {}", evals[2]);
        }
        assert_eq!(evals[0]["val_pairs"].as_f64(), Some(4.0), "eval.max_batches = 1 micro-batch of 4 pairs");
    }
    // The adapter loads in PEFT with no missing or unexpected keys; the merged model generates.
    let final_dir = dir().join("lora-beta0.1/final");
    let adapter: Value = serde_json::from_str(&std::fs::read_to_string(final_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["task_type"], "CAUSAL_LM");
    let code = "import sys, json, torch\nfrom transformers import AutoModelForCausalLM\nfrom peft import PeftModel, set_peft_model_state_dict\n\
                from safetensors.torch import load_file\n\
                base = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n\
                m = PeftModel.from_pretrained(base, sys.argv[2])\n\
                r = set_peft_model_state_dict(m, load_file(sys.argv[2] + '/adapter_model.safetensors'))\n\
                print(json.dumps({'missing': [k for k in r.missing_keys if 'lora_' in k], 'unexpected': list(r.unexpected_keys)}))";
    let out = Command::new(python()).args(["-c", code, model().to_str().unwrap(), final_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!((v["missing"].as_array().unwrap().len(), v["unexpected"].as_array().unwrap().len()), (0, 0), "{v}");
    let text = ok(&["generate", "--model", final_dir.join("merged").to_str().unwrap(), "--prompt", "And God said,", "--max-new-tokens", "8", "--temperature", "0"]);
    assert!(!text.trim().is_empty());
}

#[test]
fn dpo_one_and_two_ranks_train_alike_and_resume_is_exact() {
    let d = dir();
    let (one, two, resumed) = (d.join("one"), d.join("two"), d.join("resumed"));
    ok(&["train", "--config", recipe(&one, 4, LORA).to_str().unwrap()]);
    let out = Command::new(bin().with_file_name("rankforge-launch"))
        .env("RANKFORGE_LOG", "warn")
        .env_remove("RANKFORGE_JOB_TOKEN")
        .args(["--nproc-per-node", "2", "--config", recipe(&two, 4, LORA).to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "2 ranks: {}", String::from_utf8_lossy(&out.stderr));
    ok(&["train", "--config", recipe(&resumed, 2, LORA).to_str().unwrap()]);
    ok(&["train", "--config", recipe(&resumed, 4, LORA).to_str().unwrap()]);
    let (a, b, c) = (losses(&one), losses(&two), losses(&resumed));
    assert_eq!(a.len(), 4);
    assert_eq!(a, c, "2 + 2 resumed steps = 4 steps, bit for bit");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "1 vs 2 ranks: {a:?} vs {b:?}");
    }
    // The metrics of the global batch, summed over the two ranks' pairs.
    let (r1, r2) = (rows(&one), rows(&two));
    for key in METRICS {
        let (x, y) = (r1[3][key].as_f64().unwrap(), r2[3][key].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-2), "{key}: 1 rank {x} vs 2 ranks {y}");
    }
}

/// Full fine-tuning: the live reference is a frozen copy of the initial weights; precomputed
/// reference log-probs (then the copy is dropped) give the same run.
#[test]
fn dpo_precomputed_reference_trains_as_the_live_one() {
    let d = dir();
    let (live, pre) = (d.join("full-live"), d.join("full-pre"));
    ok(&["train", "--config", recipe(&live, 3, "").to_str().unwrap(), "--set", "train.lr=1e-3"]);
    ok(&["train", "--config", recipe(&pre, 3, "").to_str().unwrap(), "--set", "train.lr=1e-3", "--set", "task.precompute_ref=true"]);
    let (a, b) = (losses(&live), losses(&pre));
    assert_eq!(a.len(), 3);
    assert!((a[0] - std::f64::consts::LN_2).abs() < 1e-6, "full fine-tuning starts at the reference too: {a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5, "live vs precomputed reference: {a:?} vs {b:?}");
    }
    assert!(live.join("final/model.safetensors").exists() && !live.join("final/adapter_config.json").exists());
    let text = ok(&["generate", "--model", live.join("final").to_str().unwrap(), "--prompt", "And God said,", "--max-new-tokens", "8", "--temperature", "0"]);
    assert!(!text.trim().is_empty(), "generate runs on the fully trained final/");
}

/// The shipped recipes (the bundled CPU one, the GPU one) run 2 steps on the tiny GPT-2.
#[test]
fn shipped_dpo_recipes_run_on_the_tiny_model() {
    let d = dir();
    for name in ["kjv_dpo_cpu", "llama_lora_dpo_gpu"] {
        let run = d.join(format!("recipe-{name}"));
        let sets = [
            format!("model.path={:?}", model().display().to_string()),
            format!("data.train={:?}", d.join("kjv_dpo.jsonl").display().to_string()),
            format!("data.val={:?}", d.join("kjv_dpo_val.jsonl").display().to_string()),
            format!("run.dir={:?}", run.display().to_string()),
            "train.device=\"cpu\"".into(),
            "train.global_batch_size=4".into(),
            "train.micro_batch_size=2".into(),
            "data.max_length=48".into(),
            "eval.max_batches=1".into(),
            "eval.every_steps=2".into(),
        ];
        let mut args = vec!["train".to_string(), "--config".into(), root().join(format!("configs/{name}.toml")).display().to_string()];
        for s in &sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        // 2 steps: max_steps for the CPU recipe, epochs (64 pairs / 4 per step) for the GPU one.
        args.extend(["--set".to_string(), if name.contains("gpu") { "train.epochs=0.125".into() } else { "train.max_steps=2".to_string() }]);
        if name.contains("gpu") {
            args.extend(["--set".to_string(), "lora.target_modules=[\"c_attn\"]".into()]);
        }
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(losses(&run).len(), 2, "{name}");
        assert!(run.join("final/adapter_config.json").exists() && run.join("final/merged/config.json").exists(), "{name}");
    }
}

#[test]
fn dpo_reference_model_of_another_vocabulary_is_one_line_and_exit_2() {
    let d = dir();
    let other = d.join("ref-other-vocab");
    let code = "import sys\nfrom transformers import GPT2Config, GPT2LMHeadModel\n\
                GPT2LMHeadModel(GPT2Config(vocab_size=500, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(sys.argv[1])";
    let out = Command::new(python()).args(["-c", code, other.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = d.join("run-bad-ref");
    let r = recipe(&run, 2, LORA);
    let e = fails(&["train", "--config", r.to_str().unwrap(), "--set", &format!("task.ref_model={:?}", other.display().to_string())]);
    assert!(e.contains("config.json") && e.contains("task.ref_model") && e.contains("vocab"), "{e}");
    assert!(!run.exists(), "no bad input creates the run directory");
    // The same model as an explicit reference: the policy starts at it (loss ln 2).
    let same = d.join("run-ref-same");
    ok(&["train", "--config", recipe(&same, 1, "").to_str().unwrap(), "--set", &format!("task.ref_model={:?}", model().display().to_string())]);
    assert!((losses(&same)[0] - std::f64::consts::LN_2).abs() < 1e-6);
}
