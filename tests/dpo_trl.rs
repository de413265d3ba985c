//! DPO training conformance with TRL 1.16 + PEFT 0.21: from the same start adapter, rankforge's
//! optimizer steps move the LoRA adapter as TRL's `DPOTrainer` moves it (≤ 1e-5 per element,
//! the same AdamW, clipping and constant learning rate), and log the same loss, gradient norm and
//! DPO metrics, for `sigmoid` and `ipo`; PEFT loads rankforge's adapter with no missing or
//! unexpected keys. Reference: tests/py/dpo_trl_step.py.
//!
//! The start is rankforge's own initial adapter, written by a 0-step run (`train.max_steps = 0`
//! exports `final/` untrained): `A` as rankforge draws it, `B = 0`. Both sides train two steps
//! on the same eight rows, the global batch being all of them (so the data order cannot matter):
//! the first step is the one the issue names; with `B = 0` it leaves `A` alone (its gradient is
//! exactly zero) and moves `B` by about `lr·sign(g)` (Adam's first step), and its policy equals
//! the reference, so its rewards are 0. The second step starts from a moved adapter: its loss,
//! rewards and margins are real, `A` gets a real gradient, and both matrices move by Adam's
//! ratio of two steps' moments, which the gradients' values decide.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;
use tch::Tensor;

const TOL: f64 = 1e-5;
/// tests/py/dpo_trl_step.py's settings.
const LR: f64 = 1e-3;
const MAX_GRAD_NORM: f64 = 0.05;
const STEPS: usize = 2;
const METRICS: [&str; 10] = [
    "loss",
    "grad_norm",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
];

struct Reference {
    dir: PathBuf,
    /// rankforge's 0-step adapter: the start of both sides.
    start: PathBuf,
    trl: Value,
}

fn py(args: &[&str]) {
    let out = Command::new(python()).arg(root().join("tests/py/dpo_trl_step.py")).args(args).output().unwrap();
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The recipe both rankforge runs use (`loss_type`, `steps`), with tests/py/dpo_trl_step.py's settings.
fn recipe(dir: &Path, run: &Path, loss_type: &str, steps: usize) -> PathBuf {
    let text = format!(
        r#"[run]
dir = {run:?}
[task]
kind = "dpo"
beta = 0.1
loss_type = "{loss_type}"
[model]
kind = "hf"
path = {model:?}
[data]
train = {train:?}
val_fraction = 0.0
max_length = 24
[train]
max_steps = {steps}
global_batch_size = 8
micro_batch_size = 4
lr = {LR}
min_lr = 0.0
warmup_steps = 0
schedule = "constant"
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
grad_clip = {MAX_GRAD_NORM}
seed = 0
device = "cpu"
precision = "fp32"
threads = 1
log_every = 1
[checkpoint]
every_steps = 1
[lora]
r = 4
alpha = 8
dropout = 0.0
target_modules = ["q_proj", "v_proj"]
"#,
        run = run.display().to_string(),
        model = dir.join("model").display().to_string(),
        train = dir.join("prefs.jsonl").display().to_string(),
    );
    let path = dir.join(format!("{}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("dpo-trl");
        py(&["make", dir.to_str().unwrap()]);
        let run0 = dir.join("start");
        ok(&["train", "--config", recipe(&dir, &run0, "sigmoid", 0).to_str().unwrap()]);
        let start = run0.join("final");
        py(&["train", dir.to_str().unwrap(), start.to_str().unwrap()]);
        let trl = serde_json::from_str(&std::fs::read_to_string(dir.join("trl.json")).unwrap()).unwrap();
        Reference { dir, start, trl }
    })
}

fn adapter(path: &Path) -> HashMap<String, Tensor> {
    rankforge::st::load(path).unwrap().into_iter().collect()
}

/// Asserts every tensor of `got` equals `want`'s (same keys, |Δ| ≤ TOL); returns the largest
/// difference and the largest move from `start`.
fn assert_adapters_close(what: &str, got: &HashMap<String, Tensor>, want: &HashMap<String, Tensor>, start: &HashMap<String, Tensor>) -> (f64, f64) {
    let mut keys: Vec<&String> = got.keys().collect();
    keys.sort();
    let mut want_keys: Vec<&String> = want.keys().collect();
    want_keys.sort();
    assert_eq!(keys, want_keys, "{what}: rankforge's and TRL's adapter keys");
    let (mut largest, mut moved) = (0.0f64, 0.0f64);
    for k in keys {
        let d = (&got[k] - &want[k]).abs().max().double_value(&[]);
        assert!(d <= TOL, "{what} {k}: rankforge vs TRL differ by {d:e}");
        largest = largest.max(d);
        moved = moved.max((&want[k] - &start[k]).abs().max().double_value(&[]));
    }
    eprintln!("{what}: max |rankforge − TRL| = {largest:.1e}, largest move {moved:.1e}");
    (largest, moved)
}

/// rankforge's metrics.jsonl step rows.
fn step_rows(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|r| r.get("loss").is_some()).collect()
}

/// Trains `loss_type` on rankforge from the shared start and compares each step with TRL's.
fn conforms(loss_type: &str) {
    let r = reference();
    let run = r.dir.join(format!("rf_{loss_type}"));
    ok(&["train", "--config", recipe(&r.dir, &run, loss_type, STEPS).to_str().unwrap()]);
    let trl = &r.trl["runs"][loss_type];
    let start = adapter(&r.start.join("adapter_model.safetensors"));
    assert!(start.iter().filter(|(k, _)| k.contains("lora_B")).all(|(_, b)| b.abs().max().double_value(&[]) == 0.0), "the start has B = 0");

    let rows = step_rows(&run);
    assert_eq!(rows.len(), STEPS);
    let logs = trl["logs"].as_array().unwrap();
    assert_eq!(logs.len(), STEPS);
    let mut before = adapter(&r.start.join("adapter_model.safetensors"));
    for (k, (row, log)) in rows.iter().zip(logs).enumerate() {
        let what = format!("{loss_type} step {}", k + 1);
        assert_eq!(row["step"], (k + 1) as u64);
        assert_eq!(row["lr"].as_f64(), Some(LR), "{what}: constant lr");
        assert!((log["learning_rate"].as_f64().unwrap() - LR).abs() < 1e-12, "{what}: TRL's lr {}", log["learning_rate"]);
        for name in METRICS {
            let (got, want) = (row[name].as_f64().unwrap_or_else(|| panic!("{what}: rankforge logged no {name}")), log[name].as_f64().unwrap_or_else(|| panic!("{what}: TRL logged no {name}")));
            assert!((got - want).abs() <= TOL, "{what} {name}: rankforge {got} vs TRL {want} (|Δ| = {:e})", (got - want).abs());
        }
        assert!(row["grad_norm"].as_f64().unwrap() > MAX_GRAD_NORM, "{what}: clipping acts ({})", row["grad_norm"]);

        let ours = adapter(&run.join(format!("checkpoints/step_{:08}/adapter_model.safetensors", k + 1)));
        let theirs = adapter(Path::new(trl["adapters"][k].as_str().unwrap()));
        let (_, moved) = assert_adapters_close(&what, &ours, &theirs, &before);
        assert!(moved > 0.5 * LR, "{what}: the step moved the adapter ({moved:e})");
        before = theirs;
    }
    // Step 1 (B = 0) cannot move A, step 2 does: the second step tests A's gradient too.
    let step1 = adapter(&run.join("checkpoints/step_00000001/adapter_model.safetensors"));
    let a_moved = |m: &HashMap<String, Tensor>| m.iter().filter(|(k, _)| k.contains("lora_A")).map(|(k, a)| (a - &start[k]).abs().max().double_value(&[])).fold(0.0, f64::max);
    assert_eq!(a_moved(&step1), 0.0, "{loss_type}: A stays at the start in step 1 (so the start is this run's initial adapter)");
    assert!(a_moved(&before) > 0.5 * LR, "{loss_type}: A moves in step 2");
    let (l1, l2) = (rows[0]["loss"].as_f64().unwrap(), rows[1]["loss"].as_f64().unwrap());
    assert!(l2 < l1, "{loss_type}: the loss falls ({l1} → {l2})");
    assert_ne!(rows[1]["rewards/margins"].as_f64(), Some(0.0), "{loss_type}: step 2's rewards are really tested");
}

#[test]
fn dpo_sigmoid_steps_move_the_adapter_as_trl() {
    conforms("sigmoid");
}

#[test]
fn dpo_ipo_steps_move_the_adapter_as_trl() {
    conforms("ipo");
}

#[test]
fn dpo_adapter_loads_in_peft_without_missing_or_unexpected_keys() {
    let load = &reference().trl["peft_load"];
    for key in ["file_keys_not_in_peft", "peft_keys_not_in_file", "missing", "unexpected"] {
        assert_eq!(load[key], serde_json::json!([]), "{key}: {load}");
    }
    assert_eq!(load["n_keys"], 8, "q_proj and v_proj of 2 layers, A and B each: {load}");
}

/// The DPO benchmark's pieces on a tiny model: `bench/make_llama.py --tokenizer` writes a Llama
/// with a word-level tokenizer, `rankforge bench` runs bench/dpo_llama_small.toml on it (live and
/// precomputed reference) and bench/trl_dpo.py (TRL + PEFT) the same pairs; the rows carry what
/// bench/bench_dpo.sh reads and count the same parameters; a fresh adapter's first loss is ln 2,
/// and the precomputed reference trains exactly as the live one.
#[test]
fn dpo_bench_recipe_and_trl_reference_run_on_a_tiny_model() {
    let d = scratch("dpo-bench-tiny");
    let model = d.join("llama");
    let m = model.to_str().unwrap();
    let py = |args: &[&str]| {
        let out = Command::new(python()).args(args).current_dir(root()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<Value>(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap()
    };
    py(&["bench/make_llama.py", m, "--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate", "64", "--vocab", "300", "--tokenizer"]);
    let recipe = root().join("bench/dpo_llama_small.toml");
    let bench = |precompute: bool| -> Value {
        let sets = [
            format!("model.path={m}"),
            format!("data.train={m}/unused.jsonl"),
            format!("run.dir={}", d.join("run").display()),
            "data.max_length=16".into(),
            "train.global_batch_size=4".into(),
            "train.micro_batch_size=2".into(),
            "train.threads=1".into(),
            format!("task.precompute_ref={precompute}"),
        ];
        let mut args = vec!["bench", "--config", recipe.to_str().unwrap(), "--steps", "2", "--warmup", "1"];
        for s in &sets {
            args.extend(["--set", s.as_str()]);
        }
        serde_json::from_str(ok(&args).lines().last().unwrap()).unwrap()
    };
    let (live, pre) = (bench(false), bench(true));
    let theirs = py(&["bench/trl_dpo.py", "--model", m, "--batch", "4", "--micro-batch", "2", "--seq", "16", "--steps", "2", "--warmup", "1", "--threads", "1"]);
    for row in [&live, &pre] {
        for key in ["step_ms", "examples_per_s", "params", "trainable_params", "threads", "peak_host_rss_mb", "losses", "precompute_ref"] {
            assert!(row.get(key).is_some_and(|v| !v.is_null()), "no {key} in {row}");
        }
        assert_eq!((row["impl"].as_str(), row["task"].as_str(), row["mode"].as_str(), row["loss_type"].as_str()), (Some("rankforge"), Some("dpo"), Some("lora"), Some("sigmoid")), "{row}");
        assert_eq!((row["pairs"].as_u64(), row["micro_batch"].as_u64(), row["seq"].as_u64()), (Some(4), Some(2), Some(16)), "{row}");
        let first = row["losses"][0].as_f64().unwrap();
        assert!((first - std::f64::consts::LN_2).abs() < 1e-6, "a fresh adapter's first loss is ln 2: {row}");
    }
    assert_eq!(pre["precompute_ref"], true);
    assert_eq!(live["losses"], pre["losses"], "precomputed and live reference train alike");
    for key in ["impl", "step_ms", "pairs_per_s", "peak_rss_mb", "threads", "batch", "micro_batch", "seq", "params", "trainable_params"] {
        assert!(theirs.get(key).is_some_and(|v| !v.is_null()), "no {key} in {theirs}");
    }
    assert_eq!((theirs["batch"].as_u64(), theirs["seq"].as_u64(), theirs["threads"].as_u64()), (Some(4), Some(16), Some(1)), "{theirs}");
    assert_eq!(live["params"], theirs["params"], "the same model and adapter: {live} vs {theirs}");
    assert_eq!(live["trainable_params"], theirs["trainable_params"], "{live} vs {theirs}");
    assert!(!d.join("run").exists(), "bench writes no run directory");
}
