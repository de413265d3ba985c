//! Fine-tuning (`rankforge train` with `[model] kind = "hf"`) on tiny random models that
//! transformers creates (tests/py/finetune_reference.py: a Llama and a GPT-2 with a 384-token
//! BPE), on prompt/completion data written here: LoRA loss falls and `final/` loads in PEFT
//! with rankforge's logits, `final/merged` in transformers; full fine-tuning writes a plain HF
//! directory; 1 and 2 ranks train alike; resume (also onto 2 ranks) equals a straight run;
//! `generate` with base + adapter equals the merged model; bad input fails clearly; `bench`
//! times the same step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::models::CausalLm;
use tch::{Device, Kind, Tensor};

pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
    pub(crate) llama: PathBuf,
    pub(crate) gpt2: PathBuf,
    /// prompt/completion JSONL, 64 rows.
    pub(crate) data: PathBuf,
    /// The reference LoRA run on the Llama: 20 steps, checkpoints at 10 and 20.
    pub(crate) straight: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

pub(crate) fn fx() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = scratch("ft");
        run_py(&["make", root().join("data/kjv.txt").to_str().unwrap(), dir.to_str().unwrap()]);
        let data = dir.join("train.jsonl");
        std::fs::write(&data, jsonl_rows()).unwrap();
        let f = Fixture { llama: dir.join("llama"), gpt2: dir.join("gpt2"), data, straight: dir.join("straight"), dir };
        let r = lora_recipe(&f, &f.straight);
        ok(&["train", "--config", r.to_str().unwrap()]);
        f
    })
}

/// 64 prompt/completion rows from the corpus: a verse's first words, then the next ones.
fn jsonl_rows() -> String {
    let text = std::fs::read_to_string(root().join("data/kjv.txt")).unwrap();
    let verses = text.lines().filter(|l| l.split_whitespace().count() >= 12).take(64);
    verses
        .map(|v| {
            let words: Vec<&str> = v.split_whitespace().collect();
            let row = serde_json::json!({"prompt": words[..4].join(" "), "completion": format!(" {}", words[4..12].join(" "))});
            format!("{row}\n")
        })
        .collect()
}

fn run_py(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python()).arg(root().join("tests/py/finetune_reference.py")).args(args).output().unwrap();
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// A fine-tuning recipe for `model` writing to `run`; `extra` is appended (more sections).
pub(crate) fn recipe(f: &Fixture, model: &Path, run: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"[run]
dir = {run:?}
[model]
kind = "hf"
path = {model:?}
[data]
train = {data:?}
val_fraction = 0.1
max_length = 48
[train]
max_steps = 20
lr_decay_steps = 20
global_batch_size = 8
micro_batch_size = 2
lr = 5e-3
min_lr = 5e-4
warmup_steps = 2
weight_decay = 0.0
seed = 7
threads = 1
device = "cpu"
log_every = 10
[checkpoint]
every_steps = 10
keep_last = 3
[eval]
every_steps = 10
max_batches = 2
sample_tokens = 12
{extra}"#,
        run = run.display().to_string(),
        model = model.display().to_string(),
        data = f.data.display().to_string(),
    );
    let path = f.dir.join(format!("{}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Dropout on (0.1): the equality tests below (1 vs 2 ranks, resume) then also check that the
/// adapters' dropout masks are seeded per micro-batch, identically on any rank and after a resume.
pub(crate) const LORA: &str = "[lora]\nr = 8\nalpha = 16\ndropout = 0.1\ntarget_modules = \"all-linear\"\n";

pub(crate) fn lora_recipe(f: &Fixture, run: &Path) -> PathBuf {
    recipe(f, &f.llama, run, LORA)
}

fn launcher() -> Command {
    let p = bin().with_file_name("rankforge-launch");
    assert!(p.exists(), "{} is missing: build the workspace (scripts/setup.sh does)", p.display());
    let mut c = Command::new(p);
    c.env("RANKFORGE_LOG", "warn").env_remove("RANKFORGE_JOB_TOKEN");
    c
}

fn launch2(recipe: &Path, sets: &[&str]) {
    let mut c = launcher();
    c.args(["--nproc-per-node", "2", "--config", recipe.to_str().unwrap()]);
    for s in sets {
        c.args(["--set", s]);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "2 ranks failed ({:?}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn adapter(run: &Path) -> Vec<(String, Tensor)> {
    rankforge::st::load(&run.join("final/adapter_model.safetensors")).unwrap()
}

/// (max relative loss difference, max absolute adapter weight difference).
fn compare(a: &Path, b: &Path) -> (f64, f64) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len(), "{} vs {}", a.display(), b.display());
    let l = la.iter().zip(&lb).map(|(x, y)| ((x - y) / x).abs()).fold(0.0, f64::max);
    let (wa, wb) = (adapter(a), adapter(b));
    assert_eq!(wa.len(), wb.len());
    let w = wa.iter().zip(&wb).map(|((na, ta), (nb, tb))| {
        assert_eq!(na, nb);
        (ta - tb).abs().max().double_value(&[])
    });
    (l, w.fold(0.0, f64::max))
}

fn ids() -> Vec<Vec<i64>> {
    let g = |k: i64| (0..20).map(|i| (i * 37 + k * 11) % 384).collect::<Vec<i64>>();
    vec![g(1), g(2)]
}

fn write_ids(dir: &Path) -> PathBuf {
    let p = dir.join("ids.json");
    std::fs::write(&p, serde_json::to_string(&ids()).unwrap()).unwrap();
    p
}

fn our_logits(model: &CausalLm) -> Tensor {
    let ids = ids();
    let t = Tensor::from_slice(&ids.concat()).view([2, 20]);
    tch::no_grad(|| model.forward(&t, false, None)).to_kind(Kind::Float)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn py_logits(path: &Path) -> std::collections::HashMap<String, Tensor> {
    rankforge::st::load(path).unwrap().into_iter().collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (a) LoRA on the tiny Llama: the loss falls; metrics hold evaluations with samples;
/// `final/` is a PEFT adapter directory that PEFT loads with no missing or unexpected keys
/// and rankforge's logits; `final/merged` loads in transformers with the same logits.
/// (e) `generate` with base + adapter equals generate with the merged model.
#[test]
fn lora_run_loads_in_peft_and_merged_in_transformers() {
    let f = fx();
    let run = &f.straight;
    let l = losses(run);
    assert_eq!(l.len(), 20);
    let (first, last) = (l[..3].iter().sum::<f64>() / 3.0, l[17..].iter().sum::<f64>() / 3.0);
    assert!(last < first - 0.3, "the loss falls: {l:?}");
    let evals: Vec<serde_json::Value> = read(&run.join("metrics.jsonl"))
        .lines()
        .map(|x| serde_json::from_str::<serde_json::Value>(x).unwrap())
        .filter(|v| v.get("val_loss").is_some())
        .collect();
    assert_eq!(evals.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [10, 20]);
    let e = &evals[1];
    assert!((e["val_ppl"].as_f64().unwrap() - e["val_loss"].as_f64().unwrap().exp()).abs() < 1e-9);
    let samples = e["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{e}");
    assert!(samples.iter().all(|s| s["prompt"].as_str().is_some_and(|p| !p.is_empty()) && s["completion"].is_string()), "{e}");

    let fin = run.join("final");
    for file in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md",
        "merged/config.json", "merged/model.safetensors", "merged/generation_config.json", "merged/tokenizer.json"] {
        assert!(fin.join(file).exists(), "final/{file}");
    }
    assert!(!fin.join("model.safetensors").exists(), "final/ holds the adapter, not a model");
    let card = read(&fin.join("README.md"));
    let base = std::fs::canonicalize(&f.llama).unwrap().display().to_string();
    // A local base is named in the card's body, never as `base_model` (the Hub refuses a path; tests/model_card.rs checks the card in full).
    assert!(card.starts_with("---\nlibrary_name: \"peft\"\n") && !card.contains("base_model:") && card.contains(&format!("`{base}`")) && card.contains("- \"lora\""), "{card}");
    // The checkpoints hold the adapter and the optimizer, no base weights.
    let ck = run.join("checkpoints/step_00000010");
    for file in ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "train_state.json", "manifest.json"] {
        assert!(ck.join(file).exists(), "checkpoint {file}");
    }
    assert!(!ck.join("model.safetensors").exists());

    let work = scratch("ft-peft");
    let ids_path = write_ids(&work);
    let out = work.join("py.safetensors");
    let report = run_py(&["peft", f.llama.to_str().unwrap(), fin.to_str().unwrap(), fin.join("merged").to_str().unwrap(), ids_path.to_str().unwrap(), out.to_str().unwrap()]);
    for key in ["warnings", "missing_keys", "unexpected_keys", "file_keys_not_in_peft", "peft_keys_not_in_file"] {
        assert_eq!(report[key], serde_json::json!([]), "{key}: {report}");
    }
    assert_eq!(report["n_keys"], 28, "7 linear layers × 2 layers × (A, B): {report}");
    assert_eq!(report["task_type"], "CAUSAL_LM");
    assert_eq!(report["base_model_name_or_path"], base.as_str());
    assert_eq!(report["merged_class"], "LlamaForCausalLM");
    let py = py_logits(&out);
    let mut ours = CausalLm::from_pretrained(&f.llama, Device::Cpu, Kind::Float).unwrap();
    let base_logits = our_logits(&ours);
    ours.load_adapter(&fin).unwrap();
    let adapted = our_logits(&ours);
    let d = max_diff(&py["peft"], &adapted);
    assert!(d <= 1e-4, "PEFT vs rankforge logits: {d}");
    let effect = max_diff(&adapted, &base_logits);
    assert!(effect > 1e-2, "the adapter must matter for the comparison to mean something: {effect:e}");
    let merged = CausalLm::from_pretrained(&fin.join("merged"), Device::Cpu, Kind::Float).unwrap();
    let d = max_diff(&py["merged"], &our_logits(&merged));
    assert!(d <= 1e-4, "transformers vs rankforge on final/merged: {d}");
    let d = max_diff(&py["merged"], &py["peft"]);
    assert!(d <= 1e-4, "merged = base + adapter: {d:e}");

    // (e) Greedy generation: base + adapter = merged, with the chat template and raw.
    let gen = |model: &Path, adapter: Option<&Path>, raw: bool| -> serde_json::Value {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "And God said", "--temperature", "0", "--max-new-tokens", "16", "--json", "--device", "cpu"];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().unwrap()]);
        }
        if raw {
            args.push("--raw");
        }
        serde_json::from_str(&ok(&args)).unwrap()
    };
    for raw in [false, true] {
        let with_adapter = gen(&f.llama, Some(&fin), raw);
        assert_eq!(with_adapter["chat"], !raw, "the Llama tokenizer has a chat template: {with_adapter}");
        assert_eq!(with_adapter["ids"], gen(&fin.join("merged"), None, raw)["ids"], "raw = {raw}");
        assert_eq!(with_adapter["prompt_ids"], gen(&fin.join("merged"), None, raw)["prompt_ids"]);
        assert_ne!(with_adapter["ids"], gen(&f.llama, None, raw)["ids"], "the adapter changes the greedy text");
    }
}

/// (b) Full fine-tuning of the tiny GPT-2 (dropout 0.1 on) writes a plain HF directory that
/// transformers loads with rankforge's logits and loss; every weight moved; resuming from a
/// full checkpoint is exact.
#[test]
fn full_finetuning_writes_a_plain_hf_directory() {
    let f = fx();
    let run = f.dir.join("full-gpt2");
    let r = recipe(f, &f.gpt2, &run, "");
    ok(&["train", "--config", r.to_str().unwrap(), "--set", "train.max_steps=10", "--set", "train.lr=1e-3", "--set", "train.min_lr=1e-4"]);
    let l = losses(&run);
    assert!(l[9] < l[0], "the loss falls: {l:?}");
    let fin = run.join("final");
    for file in ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"] {
        assert!(fin.join(file).exists(), "final/{file}");
    }
    assert!(!fin.join("adapter_config.json").exists() && !fin.join("merged").exists());
    assert!(read(&fin.join("README.md")).starts_with("---\nlibrary_name: \"transformers\"\n"));
    let work = scratch("ft-full");
    let ids_path = write_ids(&work);
    let out = work.join("py.safetensors");
    let report = run_py(&["model", fin.to_str().unwrap(), ids_path.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(report["class"], "GPT2LMHeadModel");
    let ours = CausalLm::from_pretrained(&fin, Device::Cpu, Kind::Float).unwrap();
    let d = max_diff(&py_logits(&out)["logits"], &our_logits(&ours));
    assert!(d <= 1e-4, "transformers vs rankforge on final/: {d}");
    // The label-masked loss is transformers' (unshifted labels, -100 ignored, mean over labels).
    let ids = Tensor::from_slice(&ids().concat()).view([2, 20]);
    let labels = ids.copy();
    let _ = labels.narrow(1, 0, 5).fill_(-100);
    let sum = tch::no_grad(|| ours.loss_sum(&ids, &labels, false)).double_value(&[]);
    let ours_loss = sum / (2.0 * 15.0);
    let theirs = report["loss_prompt_masked"].as_f64().unwrap();
    assert!((ours_loss - theirs).abs() <= 1e-5, "loss: rankforge {ours_loss} vs transformers {theirs}");
    let before = CausalLm::from_pretrained(&f.gpt2, Device::Cpu, Kind::Float).unwrap();
    for ((name, a), (_, b)) in before.named_parameters().iter().zip(ours.named_parameters()) {
        assert!(max_diff(a, &b) > 0.0, "{name} did not train (max |change| = 0)");
    }
    // Resume from a full checkpoint (the model directory + moments): 5 + 5 steps = 10, exactly.
    let halves = f.dir.join("full-gpt2-halves");
    let r = recipe(f, &f.gpt2, &halves, "");
    for steps in ["train.max_steps=5", "train.max_steps=10"] {
        ok(&["train", "--config", r.to_str().unwrap(), "--set", steps, "--set", "train.lr=1e-3", "--set", "train.min_lr=1e-4", "--set", "checkpoint.every_steps=5"]);
    }
    assert_eq!(losses(&halves), l, "5 + 5 steps = 10 steps");
    let resumed = CausalLm::from_pretrained(&halves.join("final"), Device::Cpu, Kind::Float).unwrap();
    for ((name, a), (_, b)) in ours.named_parameters().iter().zip(resumed.named_parameters()) {
        assert_eq!(max_diff(a, &b), 0.0, "{name} after resume");
    }
}

/// (c) 1 and 2 launched ranks give the same losses and adapter weights, `lora.dropout` = 0.1
/// (each rank takes 2 of the 4 micro-batches of 2 examples: the same micro-batches, the same
/// seeds, the same masks).
#[test]
fn one_and_two_ranks_train_lora_alike() {
    let f = fx();
    let run = f.dir.join("ranks2");
    launch2(&lora_recipe(f, &run), &[]);
    let (l, w) = compare(&f.straight, &run);
    eprintln!("1 vs 2 ranks: loss rel diff {l:e}, adapter max abs diff {w:e}");
    assert!(l <= 1e-5 && w <= 1e-5, "loss rel diff {l:e}, adapter max abs diff {w:e}");
    let state: serde_json::Value = serde_json::from_str(&read(&run.join("checkpoints/step_00000020/train_state.json"))).unwrap();
    assert_eq!((state["world_size"].as_u64(), state["samples"].as_u64()), (Some(2), Some(160)));
}

/// (d) 10 steps, then 10 more, equals 20 straight: bit for bit on one rank, and within
/// reduction order when the second half runs on 2 ranks (`lora.dropout` = 0.1).
#[test]
fn resume_equals_a_straight_run_also_on_two_ranks() {
    let f = fx();
    let one = f.dir.join("resume1");
    let r1 = lora_recipe(f, &one);
    ok(&["train", "--config", r1.to_str().unwrap(), "--set", "train.max_steps=10"]);
    assert_eq!(losses(&one).len(), 10);
    let two = f.dir.join("resume2");
    copy_dir(&one, &two);
    ok(&["train", "--config", r1.to_str().unwrap()]);
    assert_eq!(compare(&f.straight, &one), (0.0, 0.0), "1 rank: 10 + 10 = 20");
    launch2(&lora_recipe(f, &two), &[]);
    let (l, w) = compare(&f.straight, &two);
    assert!(l <= 1e-5 && w <= 1e-5, "10 on 1 rank + 10 on 2: loss rel diff {l:e}, adapter max abs diff {w:e}");
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").args(["-a", from.to_str().unwrap(), to.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
}

/// (f) A missing model directory and a LoRA target that matches nothing: one clear line,
/// exit code 2, no run directory.
#[test]
fn bad_model_path_and_lora_target_fail_clearly() {
    let f = fx();
    let run = f.dir.join("bad");
    let missing = f.dir.join("no-such-model");
    let r = recipe(f, &missing, &run, LORA);
    let out = rankforge(&["train", "--config", r.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}: model.path: no such directory", missing.display())), "{err}");
    let r = lora_recipe(f, &run);
    let out = rankforge(&["train", "--config", r.to_str().unwrap(), "--set", "lora.target_modules=[\"q_proj\", \"c_attn\"]"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lora.target_modules: [\"c_attn\"] matches no linear layer") && err.contains("q_proj"), "{err}");
    let out = rankforge(&["train", "--config", r.to_str().unwrap(), "--set", "model.n_layer=2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("model.n_layer: only for model.kind = \"gpt\""), "{err}");
    assert!(!run.exists(), "nothing written on bad input");
}

/// (7) Every fine-tuning recipe in configs/ runs (2 steps, CPU) with a tiny model and tiny data
/// in its format: prompt/completion (GPT-2), Dolly (Llama), chat messages through the chat
/// template on a bf16 base (Llama).
#[test]
fn shipped_fine_tuning_recipes_run_on_tiny_models() {
    let f = fx();
    let verses: Vec<serde_json::Value> = jsonl_rows().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let write = |name: &str, rows: Vec<serde_json::Value>| -> PathBuf {
        let p = f.dir.join(name);
        std::fs::write(&p, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
        p
    };
    let dolly = write("dolly.jsonl", verses.iter().map(|v| serde_json::json!({
        "instruction": "Continue the verse.", "context": v["prompt"], "response": v["completion"], "category": "open_qa"})).collect());
    let chat = write("chat.jsonl", verses.iter().map(|v| serde_json::json!({"messages": [
        {"role": "user", "content": v["prompt"]}, {"role": "assistant", "content": v["completion"]}]})).collect());
    // GPT-2's 128 positions are a hard limit; the Alpaca prompt of Dolly rows is long.
    let cases = [("gpt2_lora_sft_cpu", &f.gpt2, &f.data, 64), ("dolly_lora_sft", &f.llama, &dolly, 384), ("llama_8b_lora_sft_gpu", &f.llama, &chat, 128)];
    for (name, model, data, max_length) in cases {
        let run = f.dir.join(format!("recipe-{name}"));
        let recipe = root().join(format!("configs/{name}.toml"));
        let sets = [
            format!("model.path={}", model.display()),
            format!("data.train={}", data.display()),
            format!("run.dir={}", run.display()),
            "train.max_steps=2".into(),
            "train.device=\"cpu\"".into(),
            "train.threads=1".into(),
            "train.global_batch_size=4".into(),
            "train.micro_batch_size=2".into(),
            format!("data.max_length={max_length}"),
            "eval.max_batches=1".into(),
            "eval.sample_tokens=4".into(),
        ];
        let mut args = vec!["train".to_string(), "--config".into(), recipe.display().to_string()];
        for s in &sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        if name.starts_with("llama") {
            args.extend(["--set".to_string(), format!("data.val={}", data.display())]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&args);
        assert_eq!(losses(&run).len(), 2, "{name}");
        for file in ["final/adapter_config.json", "final/adapter_model.safetensors", "final/merged/config.json", "final/merged/model.safetensors"] {
            assert!(run.join(file).exists(), "{name}: {file}");
        }
        let evals = read(&run.join("metrics.jsonl")).lines().filter(|l| l.contains("val_loss")).count();
        assert_eq!(evals, 1, "{name}: one evaluation at the end");
    }
    let merged: serde_json::Value = serde_json::from_str(&read(&f.dir.join("recipe-llama_8b_lora_sft_gpu/final/merged/config.json"))).unwrap();
    assert_eq!(merged["dtype"], "bfloat16", "model.dtype = \"bf16\" keeps the merged model in bf16");
}

/// `rankforge bench` on a fine-tuning recipe times the fine-tuning step itself (LoRA, then
/// full): it reports the trainable tensors that step optimises (the LoRA count from the
/// model's shapes, r·(in + out) per adapted layer; every weight when full), needs
/// `data.max_length`, and writes no run directory.
#[test]
fn bench_times_the_finetuning_step() {
    let f = fx();
    let run = f.dir.join("bench");
    let cfg: serde_json::Value = serde_json::from_str(&read(&f.llama.join("config.json"))).unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap() as i64;
    let (h, i, hd) = (n("hidden_size"), n("intermediate_size"), n("hidden_size") / n("num_attention_heads"));
    let (q, kv) = (n("num_attention_heads") * hd, n("num_key_value_heads") * hd);
    let shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]; // q k v o gate up down
    let lora_count = n("num_hidden_layers") * shapes.iter().map(|(a, b)| 8 * (a + b)).sum::<i64>();
    let full_count = CausalLm::from_pretrained(&f.llama, Device::Cpu, Kind::Float).unwrap().num_params();
    for (extra, mode, trainable) in [(LORA, "lora", lora_count), ("", "full", full_count)] {
        let r = recipe(f, &f.llama, &run, extra);
        let out = ok(&["bench", "--config", r.to_str().unwrap(), "--steps", "2", "--warmup", "1"]);
        let row: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(row["mode"], mode, "{row}");
        assert_eq!(row["trainable_params"].as_i64(), Some(trainable), "{row}");
        assert_eq!((row["batch"].as_u64(), row["seq"].as_u64()), (Some(8), Some(48)), "{row}");
        assert!(row["step_ms"].as_f64().unwrap() > 0.0 && row["tokens_per_s"].as_f64().unwrap() > 0.0, "{row}");
    }
    let r = recipe(f, &f.llama, &run, LORA);
    std::fs::write(&r, read(&r).replace("max_length = 48\n", "")).unwrap();
    let out = rankforge(&["bench", "--config", r.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("data.max_length is not set"), "{err}");
    assert!(!run.exists(), "bench writes no run directory");
}

/// A tokenizer trained with `rankforge tokenizer train` (1000 tokens) replaces the tiny GPT-2's
/// own (384): the embeddings grow to the new vocabulary, the run trains on the new token ids,
/// and `final/` — config, weights and the new tokenizer — loads in transformers with
/// rankforge's logits.
#[test]
fn a_rankforge_tokenizer_replaces_the_models_and_resizes_the_embeddings() {
    let f = fx();
    let tok = crate::common::fixture().tokenizer.clone();
    let run = f.dir.join("full-gpt2-newtok");
    let r = recipe(f, &f.gpt2, &run, "");
    let tok_set = format!("data.tokenizer={:?}", tok.display().to_string());
    ok(&["train", "--config", r.to_str().unwrap(), "--set", &tok_set, "--set", "train.max_steps=3", "--set", "checkpoint.every_steps=0"]);
    let fin = run.join("final");
    let cfg: serde_json::Value = serde_json::from_str(&read(&fin.join("config.json"))).unwrap();
    let before: serde_json::Value = serde_json::from_str(&read(&f.gpt2.join("config.json"))).unwrap();
    assert!(before["vocab_size"].as_u64().unwrap() < 1000);
    assert_eq!(cfg["vocab_size"], 1000, "resized to the new tokenizer");
    let json = |p: &Path| serde_json::from_str::<serde_json::Value>(&read(p)).unwrap();
    assert!(json(&fin.join("tokenizer.json")) == json(&tok.join("tokenizer.json")), "final/ carries the new tokenizer");
    let work = scratch("ft-newtok");
    let ids_path = write_ids(&work);
    let out = work.join("py.safetensors");
    run_py(&["model", fin.to_str().unwrap(), ids_path.to_str().unwrap(), out.to_str().unwrap()]);
    let ours = CausalLm::from_pretrained(&fin, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(ours.vocab_size(), 1000);
    let d = max_diff(&py_logits(&out)["logits"], &our_logits(&ours));
    assert!(d <= 1e-4, "transformers vs rankforge on the resized final/: {d}");
}
