//! Unit tests of the parent module.

use super::*;

const MINI: &str = r#"
[run]
dir = "runs/x"
[model]
kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 64
block_size = 32
[data]
train = "data/kjv.txt"
tokenizer = "tok"
"#;

fn load(text: &str, sets: &[&str]) -> Result<Recipe> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Recipe::from_toml(text, Path::new("r.toml"), &sets)
}

#[test]
fn defaults_and_overrides() {
    let r = load(MINI, &["train.lr=0.01", "run.dir=runs/y", "data.train=[\"a\",\"b\"]"]).unwrap();
    assert_eq!(r.train.lr, 0.01);
    assert_eq!(r.run.dir, PathBuf::from("runs/y"));
    assert_eq!(r.data.sources().train.len(), 2);
    assert_eq!(r.train.schedule, Schedule::Cosine);
    assert_eq!(r.val_fraction(), 0.05);
    // The resolved recipe round-trips.
    let again = Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap();
    assert_eq!(again, r);
}

#[test]
fn lora_section() {
    use crate::lora::TargetModules;
    assert_eq!(load(MINI, &[]).unwrap().lora, None, "absent = full fine-tuning");
    let r = load(&format!("{MINI}\n[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"c_attn\"]\n"), &[]).unwrap();
    let l = r.lora.clone().unwrap();
    assert_eq!((l.r, l.alpha, l.dropout, l.use_rslora), (4, 8.0, 0.0, false));
    assert_eq!(l.target_modules, TargetModules::Names(vec!["c_attn".into()]));
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    let all = load(&format!("{MINI}\n[lora]\ntarget_modules = \"all-linear\"\n"), &[]).unwrap();
    assert_eq!(all.lora.unwrap().target_modules, TargetModules::Preset("all-linear".into()));
    let e = load(&format!("{MINI}\n[lora]\ntarget_modules = \"q_.*\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("r.toml: lora.target_modules: \"q_.*\" is not \"all-linear\""), "{e}");
    let e = load(&format!("{MINI}\n[lora]\ntarget_modules = [\"c_attn\"]\nrank = 3\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("lora.rank: unknown field"), "{e}");
    let e = load(&format!("{MINI}\n[lora]\nr = 4\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("missing field `target_modules`"), "{e}");
}

const HF: &str = "[run]\ndir = \"r\"\n[model]\nkind = \"hf\"\npath = \"models/x\"\n[data]\ntrain = \"d.jsonl\"\n";

#[test]
fn data_keys_belong_to_their_reader() {
    // A pretraining recipe resolves to the same TOML as before the fine-tuning keys existed.
    let toml = load(MINI, &[]).unwrap().to_toml();
    for key in ["format", "packing", "skip_malformed", "max_length", "_field", "[task]", "epochs", "max_steps"] {
        assert!(!toml.contains(key), "{key} in {toml}");
    }
    let e = load(MINI, &["data.format=\"prompt_completion\""]).unwrap_err().to_string();
    assert!(e.contains("r.toml: data.format: only for fine-tuning a causal LM (model.kind = \"hf\"); this recipe has pretraining"), "{e}");
    let e = load(MINI, &["data.label_field=y"]).unwrap_err().to_string();
    assert!(e.contains("data.label_field: only for task.kind = \"classification\""), "{e}");
    let e = load(HF, &["data.cache_dir=c"]).unwrap_err().to_string();
    assert!(e.contains("data.cache_dir: only for pretraining"), "{e}");
    let e = load(HF, &["data.colour=1"]).unwrap_err().to_string();
    assert!(e.contains("data.colour: unknown field `colour`"), "{e}");
    let r = load(HF, &["data.format=\"prompt_completion\"", "data.prompt_field=q", "data.max_length=64", "data.packing=true"]).unwrap();
    let d = r.data.sft().unwrap();
    assert_eq!((d.format, d.prompt_field.as_deref(), d.max_length), (SftFormat::PromptCompletion, Some("q"), Some(64)));
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r);
    assert_eq!(load(HF, &[]).unwrap().data.sft().unwrap().format, SftFormat::Auto);
    let e = load(HF, &["data.packing=true"]).unwrap_err().to_string();
    assert!(e.contains("data.packing: packing needs data.max_length"), "{e}");
    let e = load(HF, &["data.format=\"sharegpt\""]).unwrap_err().to_string();
    assert!(e.contains("data.format: unknown variant `sharegpt`"), "{e}");
    let r = load(&MINI.replace("tokenizer = \"tok\"\n", ""), &[]).unwrap();
    let e = r.data.text().unwrap().pretraining_tokenizer().unwrap_err().to_string();
    assert!(e.starts_with("data.tokenizer is not set"), "{e}");
    let e = load(&MINI.replace("train = \"data/kjv.txt\"\n", ""), &[]).unwrap_err().to_string();
    assert!(e.contains("r.toml: data.train: missing field `train`"), "{e}");
}

#[test]
fn task_section() {
    assert_eq!(load(MINI, &[]).unwrap().task, TaskConfig::CausalLm, "absent = causal_lm");
    assert_eq!(load(HF, &["task.kind=causal_lm"]).unwrap().task, TaskConfig::CausalLm);
    let r = load(HF, &["task.kind=classification", "task.labels=[\"neg\", \"pos\"]", "data.label_field=stars", "data.text_pair_field=b"]).unwrap();
    let t = r.task.classification().unwrap();
    assert_eq!(t.labels.as_deref(), Some(&["neg".to_string(), "pos".to_string()][..]));
    let d = r.data.classification().unwrap();
    assert_eq!((d.label_field.as_deref(), d.text_pair_field.as_deref()), (Some("stars"), Some("b")));
    assert!(r.to_toml().contains("[task]\nkind = \"classification\""), "{}", r.to_toml());
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    let e = load(HF, &["task.kind=kto"]).unwrap_err().to_string();
    assert!(e.contains("r.toml: task.kind: unknown variant `kto`, expected one of `causal_lm`, `classification`, `masked_lm`, `dpo`"), "{e}");
    let r = load(HF, &["task.kind=masked_lm", "task.mlm_probability=0.2", "data.packing=true", "data.max_length=64"]).unwrap();
    assert_eq!(r.task.masked_lm().unwrap().mlm_probability, 0.2);
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    let e = load(HF, &["task.kind=masked_lm", "task.mlm_probability=1.5"]).unwrap_err().to_string();
    assert!(e.contains("task.mlm_probability"), "{e}");
    let e = load(HF, &["task.kind=masked_lm", "task.labels=[\"a\"]"]).unwrap_err().to_string();
    assert!(e.contains("task.labels: only for task.kind = \"classification\""), "{e}");
    let e = load(HF, &["task.kind=masked_lm", "data.label_field=y"]).unwrap_err().to_string();
    assert!(e.contains("data.label_field: only for task.kind = \"classification\"; this recipe has task.kind = \"masked_lm\""), "{e}");
    let e = load(HF, &["task.labels=[\"a\"]"]).unwrap_err().to_string();
    assert!(e.contains("task.labels: only for task.kind = \"classification\"; this recipe has task.kind = \"causal_lm\""), "{e}");
    let e = load(HF, &["task.kind=classification", "task.label=[\"a\"]"]).unwrap_err().to_string();
    assert!(e.contains("task.label: unknown field `label`"), "{e}");
    let e = load(HF, &["task.kind=classification", "data.format=text"]).unwrap_err().to_string();
    assert!(e.contains("data.format: only for fine-tuning a causal LM"), "{e}");
    let e = load(MINI, &["task.kind=classification"]).unwrap_err().to_string();
    assert!(e.contains("task.kind: classification fine-tunes a pretrained model"), "{e}");
    let e = load(HF, &["task.kind=classification", "task.problem_type=ranking"]).unwrap_err().to_string();
    assert!(e.contains("task.problem_type: unknown variant `ranking`"), "{e}");
}

#[test]
fn dpo_task_and_data_sections() {
    let r = load(HF, &["task.kind=dpo", "task.beta=0.25", "task.loss_type=ipo", "data.chosen_field=good", "data.max_length=256"]).unwrap();
    let t = r.task.dpo().unwrap();
    assert_eq!((r.task.kind(), t.beta, t.loss_type, t.disable_dropout), (TaskKind::Dpo, 0.25, DpoLossType::Ipo, true));
    let d = r.data.dpo().unwrap();
    assert_eq!((d.chosen_field(), d.rejected_field(), d.max_length), ("good", "rejected", 256));
    assert_eq!(r.data.max_length(), Some(256));
    assert!(r.to_toml().contains("[task]\nkind = \"dpo\""), "{}", r.to_toml());
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    assert_eq!(load(HF, &["task.kind=dpo"]).unwrap().data.max_length(), Some(1024), "TRL's default");
    for (sets, want) in [
        (&["task.beta=0"][..], "r.toml: task.beta: must be a finite number > 0, got 0"),
        (&["task.beta=-1"][..], "r.toml: task.beta: must be a finite number > 0, got -1"),
        (&["task.loss_type=kto"][..], "r.toml: task.loss_type: unknown variant `kto`, expected one of `sigmoid`, `ipo`, `hinge`, `robust`"),
        (&["task.loss_type=robust", "task.label_smoothing=0.5"][..], "r.toml: task.label_smoothing: 0.5 is not in [0, 0.5)"),
        (&["task.label_smoothing=0.1"][..], "r.toml: task.label_smoothing: only the robust loss uses it"),
        (&["data.max_length=0"][..], "r.toml: data.max_length: must be at least 1"),
        (&["data.val_fraction=0.7"][..], "r.toml: data.val_fraction: 0.7 is not in [0, 0.5)"),
        (&["task.labels=[\"a\"]"][..], "r.toml: task.labels: only for task.kind = \"classification\"; this recipe has task.kind = \"dpo\""),
        (&["data.format=text"][..], "r.toml: data.format: only for fine-tuning a causal LM (model.kind = \"hf\"); this recipe has task.kind = \"dpo\""),
        (&["data.text_field=t"][..], "r.toml: data.text_field: only for fine-tuning a causal LM"),
    ] {
        let sets: Vec<&str> = ["task.kind=dpo"].iter().chain(sets).copied().collect();
        let e = load(HF, &sets).unwrap_err().to_string();
        assert!(e.contains(want), "{sets:?}: {e}");
    }
    let e = load(HF, &["task.beta=0.1"]).unwrap_err().to_string();
    assert!(e.contains("task.beta: only for task.kind = \"dpo\"; this recipe has task.kind = \"causal_lm\""), "{e}");
    let e = load(HF, &["task.kind=classification", "task.loss_type=ipo"]).unwrap_err().to_string();
    assert!(e.contains("task.loss_type: only for task.kind = \"dpo\""), "{e}");
    let e = load(HF, &["data.chosen_field=c"]).unwrap_err().to_string();
    assert!(e.contains("data.chosen_field: only for task.kind = \"dpo\"; this recipe has fine-tuning (model.kind = \"hf\")"), "{e}");
    let e = load(MINI, &["task.kind=dpo"]).unwrap_err().to_string();
    assert!(e.contains("task.kind: dpo fine-tunes a pretrained model: use model.kind = \"hf\""), "{e}");
}

#[test]
fn epochs_or_max_steps() {
    let r = load(MINI, &["train.epochs=2.5"]).unwrap();
    assert_eq!((r.train.epochs, r.train.max_steps), (Some(2.5), None));
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    let e = load(MINI, &["train.epochs=2", "train.max_steps=10"]).unwrap_err().to_string();
    assert!(e.contains("train.epochs: give either train.max_steps or train.epochs, not both"), "{e}");
    for bad in ["0", "-1", "nan"] {
        let e = load(MINI, &[&format!("train.epochs={bad}")]).unwrap_err().to_string();
        assert!(e.contains("train.epochs: must be a finite number > 0"), "{bad}: {e}");
    }
    assert_eq!(load(MINI, &["train.max_steps=7"]).unwrap().train.max_steps, Some(7));
}

#[test]
fn errors_name_file_and_key() {
    let e = load(MINI, &["train.lrr=1"]).unwrap_err().to_string();
    assert!(e.starts_with("r.toml: train.lrr: unknown field `lrr`"), "{e}");
    let e = load(MINI, &["train.lr=\"fast\""]).unwrap_err().to_string();
    assert!(e.contains("r.toml: train.lr: invalid type: string \"fast\""), "{e}");
    let e = load(&MINI.replace("n_embd = 64", "n_embd = 65"), &[]).unwrap_err().to_string();
    assert!(e.contains("model.n_embd: 65 is not divisible by model.n_head = 2"), "{e}");
    let e = load(&format!("{MINI}\n[eval]\nevery = 3\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("eval.every: unknown field"), "{e}");
    let e = load("[run\n", &[]).unwrap_err().to_string();
    assert!(e.starts_with("r.toml: line 1:"), "{e}");
    let e = load(MINI, &["train"]).unwrap_err().to_string();
    assert!(e.contains("--set train: expected section.key=value"), "{e}");
}

#[test]
fn hyperparameters_must_be_finite_and_in_range() {
    for (set, key) in [
        ("train.lr=inf", "train.lr: must be a finite number > 0, got inf"),
        ("train.lr=nan", "train.lr: must be a finite number > 0, got NaN"),
        ("train.lr=0", "train.lr: must be a finite number > 0, got 0"),
        ("train.eps=0", "train.eps: must be a finite number > 0"),
        ("train.eps=-1e-8", "train.eps: must be a finite number > 0"),
        ("train.min_lr=1", "train.min_lr: must be in [0, train.lr = 0.0006], got 1"),
        ("train.beta2=1", "train.beta2: must be in [0, 1), got 1"),
        ("train.weight_decay=inf", "train.weight_decay: must be a finite number >= 0, got inf"),
        ("train.grad_clip=nan", "train.grad_clip: must be a finite number >= 0, got NaN"),
    ] {
        let e = load(MINI, &[set]).unwrap_err().to_string();
        assert!(e.contains(key), "--set {set}: {e}");
    }
    assert_eq!(load(MINI, &[]).unwrap().train.max_skipped_steps, 3);
}

#[test]
fn optimizer_impl_is_fused_or_loop() {
    assert_eq!(load(MINI, &[]).unwrap().train.optimizer_impl, None, "absent: fused where the extension is built");
    for (value, want) in [("fused", OptimizerImpl::Fused), ("loop", OptimizerImpl::Loop)] {
        let r = load(MINI, &[&format!("train.optimizer_impl={value}")]).unwrap();
        assert_eq!(r.train.optimizer_impl, Some(want));
        assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    }
    let e = load(MINI, &["train.optimizer_impl=foreach"]).unwrap_err().to_string();
    assert!(e.contains("r.toml: train.optimizer_impl: unknown variant `foreach`, expected `fused` or `loop`"), "{e}");
}

#[test]
fn hub_section() {
    let r = load(MINI, &[]).unwrap();
    assert_eq!(r.hub, None);
    let r = load(&format!("{MINI}[hub]\nrepo = \"user/{{name}}\"\n"), &[]).unwrap();
    let hub = r.hub.clone().unwrap();
    assert_eq!((hub.repo.as_str(), hub.private, hub.revision.as_str(), hub.push), ("user/{name}", false, "main", PushWhen::End));
    assert_eq!(hub.checkpoint_folder, "checkpoint-{step}");
    // It round-trips through the resolved recipe a run writes.
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("r.toml"), &[]).unwrap(), r);
    let r = load(&format!("{MINI}[hub]\nrepo = \"org/x\"\nprivate = true\npush = \"checkpoints\"\nrevision = \"runs\"\n"), &[]).unwrap();
    assert_eq!(r.hub.as_ref().map(|h| (h.private, h.push, h.revision.as_str())), Some((true, PushWhen::Checkpoints, "runs")));
    let e = load(&format!("{MINI}[hub]\nrepo = \"u/x\"\npush = \"always\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("hub.push") && e.contains("always"), "{e}");
    let e = load(&format!("{MINI}[hub]\nrepo = \"u/x\"\npush = \"checkpoints\"\ncheckpoint_folder = \"ckpt\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("hub.checkpoint_folder") && e.contains("{step}"), "{e}");
    let e = load(&format!("{MINI}[hub]\nrepository = \"u/x\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("repository"), "{e}");
}

#[test]
fn gradient_buckets_default_to_ddps_25_mib_overlapped_and_refuse_bad_sizes() {
    let r = load(MINI, &[]).unwrap();
    assert_eq!((r.train.bucket_cap_mb, r.train.overlap_grad_reduce), (25.0, None));
    assert_eq!(r.train.bucket_cap_bytes(), 25 << 20);
    assert_eq!(r.train.overlap_grad_reduce(), crate::dist::hooks::AVAILABLE, "absent: overlapped where the hooks are built");
    assert!(!r.to_toml().contains("bucket_cap_mb") && !r.to_toml().contains("overlap"), "defaults leave recipe hashes as they were");
    let r = load(MINI, &["train.bucket_cap_mb=0.5", "train.overlap_grad_reduce=false"]).unwrap();
    assert_eq!((r.train.bucket_cap_bytes(), r.train.overlap_grad_reduce()), (1 << 19, false));
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    for set in ["train.bucket_cap_mb=0", "train.bucket_cap_mb=-1", "train.bucket_cap_mb=nan", "train.bucket_cap_mb=inf"] {
        let e = load(MINI, &[set]).unwrap_err().to_string();
        assert!(e.contains("train.bucket_cap_mb: must be a finite number of MiB > 0, got"), "--set {set}: {e}");
    }
}
