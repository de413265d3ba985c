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
    assert_eq!(r.data.train.len(), 2);
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

#[test]
fn sft_keys_are_optional_and_checked() {
    // A pretraining recipe resolves to the same TOML as before the fine-tuning keys existed.
    let r = load(MINI, &[]).unwrap();
    assert_eq!(r.data.format, SftFormat::Auto);
    let toml = r.to_toml();
    for key in ["format", "packing", "skip_malformed", "max_length", "_field"] {
        assert!(!toml.contains(key), "{key} in {toml}");
    }
    let r = load(MINI, &["data.format=\"prompt_completion\"", "data.prompt_field=q", "data.max_length=64", "data.packing=true"]).unwrap();
    assert_eq!((r.data.format, r.data.prompt_field.as_deref(), r.data.max_length), (SftFormat::PromptCompletion, Some("q"), Some(64)));
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r);
    let e = load(MINI, &["data.packing=true"]).unwrap_err().to_string();
    assert!(e.contains("data.packing: packing needs data.max_length"), "{e}");
    let e = load(MINI, &["data.format=\"sharegpt\""]).unwrap_err().to_string();
    assert!(e.contains("data.format: unknown variant `sharegpt`"), "{e}");
    let r = load(&MINI.replace("tokenizer = \"tok\"\n", ""), &[]).unwrap();
    let e = r.data.pretraining_tokenizer().unwrap_err().to_string();
    assert!(e.starts_with("data.tokenizer is not set"), "{e}");
}

#[test]
fn hf_model_section() {
    // A pretraining recipe still resolves to the same TOML (dropout and bias filled in).
    let toml = load(MINI, &[]).unwrap().to_toml();
    assert!(toml.contains("dropout = 0.0") && toml.contains("bias = true") && !toml.contains("path"), "{toml}");
    let hf = "[run]\ndir = \"r\"\n[model]\nkind = \"hf\"\npath = \"models/x\"\n[data]\ntrain = \"d.jsonl\"\n";
    let r = load(hf, &["model.dtype=\"bf16\""]).unwrap();
    assert_eq!((r.model.kind, r.model.dtype, r.model.dropout), (ModelKind::Hf, Some(ModelDtype::Bf16), None));
    assert!(r.model.gpt().is_err());
    assert_eq!(Recipe::from_toml(&r.to_toml(), Path::new("x"), &[]).unwrap(), r, "round-trips");
    let e = load(hf, &["model.block_size=64"]).unwrap_err().to_string();
    assert!(e.contains("r.toml: model.block_size: only for model.kind = \"gpt\""), "{e}");
    let e = load(&hf.replace("path = \"models/x\"\n", ""), &[]).unwrap_err().to_string();
    assert!(e.contains("model.path: model.kind = \"hf\" needs path"), "{e}");
    let e = load(MINI, &["model.path=m"]).unwrap_err().to_string();
    assert!(e.contains("model.path: only for model.kind = \"hf\""), "{e}");
    let e = load(&MINI.replace("n_layer = 2\n", ""), &[]).unwrap_err().to_string();
    assert!(e.contains("model.n_layer: missing: required for model.kind = \"gpt\""), "{e}");
    let e = load(hf, &["model.dtype=\"fp16\""]).unwrap_err().to_string();
    assert!(e.contains("model.dtype: unknown variant `fp16`"), "{e}");
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
