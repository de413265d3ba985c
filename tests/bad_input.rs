//! Bad input: one clear error line naming the file/key, exit code 2, no panic, and nothing
//! already written is touched.

use crate::common::*;

#[test]
fn recipe_key_errors_name_file_and_key() {
    let f = fixture();
    let dir = scratch("bad-recipe");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &dir.join("run"));
    let r = recipe.to_str().unwrap();
    let e = fails(&["train", "--config", r, "--set", "train.learning_rate=0.1"]);
    assert!(e.contains(r) && e.contains("train.learning_rate: unknown field `learning_rate`") && e.contains("`lr`"), "{e}");
    let text = std::fs::read_to_string(&recipe).unwrap().replace("n_head = 2", "n_heads = 2");
    std::fs::write(&recipe, text).unwrap();
    let e = fails(&["train", "--config", r]);
    assert!(e.contains("model.n_heads: unknown field"), "{e}");
    let e = fails(&["train", "--config", "no/such/recipe.toml"]);
    assert!(e.contains("no/such/recipe.toml"), "{e}");
    assert!(!dir.join("run").exists(), "a rejected recipe creates nothing");
}

#[test]
fn missing_or_empty_data_file() {
    let f = fixture();
    let dir = scratch("bad-data");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &dir.join("run"));
    let r = recipe.to_str().unwrap();
    let missing = dir.join("nope.txt");
    let e = fails(&["train", "--config", r, "--set", &format!("data.train={:?}", missing.to_str().unwrap())]);
    assert!(e.contains("nope.txt") && e.contains("data.train"), "{e}");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = fails(&["train", "--config", r, "--set", &format!("data.train={:?}", empty.to_str().unwrap())]);
    assert!(e.contains("empty.txt") && e.contains("data.train: file is empty"), "{e}");
    let e = fails(&["tokenizer", "train", "--input", empty.to_str().unwrap(), "--vocab-size", "100", "--output", dir.join("t").to_str().unwrap()]);
    assert!(e.contains("empty.txt") && e.contains("file is empty"), "{e}");
}

#[test]
fn vocabulary_larger_than_the_model() {
    let f = fixture();
    let dir = scratch("bad-vocab");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &dir.join("run"));
    let e = fails(&["train", "--config", recipe.to_str().unwrap(), "--set", "model.vocab_size=512"]);
    assert!(e.contains("model.vocab_size = 512") && e.contains("1000 tokens"), "{e}");
}

#[test]
fn block_size_beyond_position_table() {
    let f = fixture();
    let dir = scratch("bad-block");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &dir.join("run"));
    let e = fails(&["train", "--config", recipe.to_str().unwrap(), "--set", "model.n_positions=32"]);
    assert!(e.contains("model.block_size: 64 exceeds the position table, model.n_positions = 32"), "{e}");
}

#[test]
fn prompt_longer_than_context() {
    let f = fixture();
    let prompt = "And God said, Let there be light: and there was light. ".repeat(20);
    let e = fails(&["generate", "--model", f.run.join("final").to_str().unwrap(), "--prompt", &prompt]);
    assert!(e.contains("longer than the model's context of 64 tokens"), "{e}");
}

/// Bad input aimed at an existing run leaves every byte of it as it was.
#[test]
fn bad_input_does_not_touch_an_existing_run() {
    let f = fixture();
    let dir = scratch("bad-existing");
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let r = recipe.to_str().unwrap();
    ok(&["train", "--config", r, "--set", "train.max_steps=10"]);
    let before = snapshot(&run);
    fails(&["train", "--config", r, "--set", "model.vocab_size=10"]);
    fails(&["train", "--config", r, "--set", "data.train=\"/no/such/file\""]);
    fails(&["train", "--config", r, "--set", "model.n_positions=8"]);
    assert!(before == snapshot(&run), "a rejected run changed files in the run directory");
}

/// Issue 10, item 5: sizes that cannot run are refused before anything is allocated, naming the
/// key (and for memory, the bytes needed), not a panic inside libtorch.
#[test]
fn recipe_sizes_that_cannot_run_name_the_key() {
    let f = fixture();
    let dir = scratch("bad-sizes");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &dir.join("run"));
    let r = recipe.to_str().unwrap();
    let e = fails(&["train", "--config", r, "--set", "train.threads=0"]);
    assert!(e.contains(r) && e.contains("train.threads: must be at least 1"), "{e}");
    let e = fails(&["train", "--config", r, "--set", "model.n_head=0"]);
    assert!(e.contains("model.n_head: must be at least 1"), "{e}");
    let e = fails(&["train", "--config", r, "--set", "model.n_head=3"]);
    assert!(e.contains("model.n_embd: 64 is not divisible by model.n_head = 3"), "{e}");
    // 10^10 embedding rows of 64 floats, with gradients and AdamW moments: 10 TB, and the
    // logits of a micro-batch of 4 × 64 tokens over them: 20 TB more.
    let e = fails(&["train", "--config", r, "--set", "model.vocab_size=10000000000"]);
    assert!(e.contains(r) && e.contains("model.vocab_size: training needs at least 30.7 TB, more than the"), "{e}");
    assert!(e.contains("available (") && e.contains("the token embedding (10000000000 × model.n_embd = 64) with its AdamW state, and the logits: 30.7 TB"), "{e}");
    // 10^8 sequences of 64 tokens per micro-batch: their logits alone are terabytes.
    let e = fails(&["train", "--config", r, "--set", "train.micro_batch_size=100000000", "--set", "train.global_batch_size=100000000"]);
    assert!(e.contains("train.micro_batch_size: training needs at least") && e.contains("a micro-batch of 100000000 × model.block_size = 64 tokens"), "{e}");
    let e = fails(&["bench", "--config", r, "--set", "model.vocab_size=10000000000"]);
    assert!(e.contains("model.vocab_size: training needs at least 30.7 TB"), "{e}");
    assert!(!dir.join("run").exists(), "a rejected recipe creates nothing");
}

/// A copy of the fixture's final/ (a GPT-2 HF directory) with `edit` applied to config.json.
fn edited_final(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let f = fixture();
    let dir = scratch(name).join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(f.run.join("final")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// Issue 10, item 5: an HF config.json with impossible shapes is refused on load, naming the file
/// and the key (GPT-2 through the binary; the Llama and encoder families through their parsers).
#[test]
fn impossible_hf_configs_name_file_and_key() {
    let generate = |dir: &std::path::Path| fails(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "And God said"]);
    let dir = edited_final("bad-hf-heads", |c| c["n_head"] = 0.into());
    let e = generate(&dir);
    assert!(e.contains(&format!("{}: n_head: 0 is not a positive integer", dir.join("config.json").display())), "{e}");
    let dir = edited_final("bad-hf-div", |c| c["n_head"] = 3.into());
    assert!(generate(&dir).contains("config.json: n_embd: 64 is not divisible by n_head = 3"));
    let dir = edited_final("bad-hf-neg", |c| c["n_layer"] = (-1).into());
    assert!(generate(&dir).contains("config.json: n_layer: -1 is not a positive integer"));
    let dir = edited_final("bad-hf-vocab", |c| c["vocab_size"] = 10_000_000_000u64.into());
    let e = generate(&dir);
    assert!(e.contains("config.json: vocab_size: 10000000000 (× n_embd = 64): the model (") && e.contains("in fp32) needs at least 2.6 TB, more than the"), "{e}");

    use rankforge::models::{bert::EncoderConfig, llama::LlamaConfig};
    let path = std::path::Path::new("m/config.json");
    let llama = serde_json::json!({"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2});
    assert!(LlamaConfig::from_hf_json(path, &llama).is_ok());
    let bad = |edit: serde_json::Value| {
        let mut c = llama.clone();
        c.as_object_mut().unwrap().extend(edit.as_object().unwrap().clone());
        let e = LlamaConfig::from_hf_json(path, &c).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        e.to_string()
    };
    assert_eq!(bad(serde_json::json!({"num_attention_heads": 0})), "m/config.json: num_attention_heads: must be at least 1 (is 0)");
    assert_eq!(bad(serde_json::json!({"vocab_size": 0})), "m/config.json: vocab_size: must be at least 1 (is 0)");
    assert_eq!(bad(serde_json::json!({"num_key_value_heads": 3})), "m/config.json: num_attention_heads: 4 is not a multiple of num_key_value_heads = 3");
    assert!(bad(serde_json::json!({"hidden_size": 66})).starts_with("m/config.json: hidden_size: 66 is not divisible by num_attention_heads = 4"));
    assert!(bad(serde_json::json!({"head_dim": 0})).starts_with("m/config.json: head_dim: 0 must be even"));
    assert!(bad(serde_json::json!({"num_hidden_layers": -2})).starts_with("m/config.json: num_hidden_layers: invalid value: integer `-2`"));
    assert_eq!(bad(serde_json::json!({"rope_theta": 0.0})), "m/config.json: rope_theta: 0 is not a positive number");

    let bert = serde_json::json!({"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64});
    assert!(EncoderConfig::from_hf_json(path, &bert).is_ok());
    let mut b = bert.clone();
    b["num_attention_heads"] = 0.into();
    assert_eq!(EncoderConfig::from_hf_json(path, &b).unwrap_err().to_string(), "m/config.json: num_attention_heads: must be at least 1 (is 0)");
    let distil = serde_json::json!({"model_type": "distilbert", "vocab_size": 100, "dim": 30, "n_layers": 2, "n_heads": 4,
        "hidden_dim": 64, "max_position_embeddings": 64});
    assert_eq!(EncoderConfig::from_hf_json(path, &distil).unwrap_err().to_string(), "m/config.json: dim: 30 is not a multiple of n_heads = 4");
}

/// Issue 10, item 5: a token cache whose body was damaged is noticed when it is opened (its
/// checksum), rebuilt with a warning, and the run trains on the right tokens.
#[test]
fn garbled_token_cache_is_rebuilt() {
    let f = fixture();
    let dir = scratch("bad-cache");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &dir.join("run"));
    let r = recipe.to_str().unwrap();
    ok(&["train", "--config", r, "--set", "train.max_steps=2", "--set", "checkpoint.every_steps=0"]);
    let tokens: Vec<_> = std::fs::read_dir(dir.join("cache/tokens")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "tokens")).collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let good = std::fs::read(&tokens[0]).unwrap();
    let mut bytes = good.clone();
    for b in &mut bytes[32 + 1000..32 + 200_000] {
        *b = 0xff; // token id 65535, far outside the 1000-token vocabulary
    }
    std::fs::write(&tokens[0], &bytes).unwrap();
    let run2 = format!("run.dir={:?}", dir.join("run2").to_str().unwrap());
    let out = rankforge(&["train", "--config", r, "--set", &run2, "--set", "train.max_steps=2", "--set", "checkpoint.every_steps=0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    assert!(err.contains("damaged token cache: checksum mismatch; rebuilding it") && err.contains(tokens[0].to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(&tokens[0]).unwrap(), good, "the rebuilt cache holds the same tokens");
    assert_eq!(losses(&dir.join("run2")), losses(&dir.join("run")), "the same data, the same run");
}

/// Issue 10, item 10: an output or run directory that is an existing file is bad input (exit 2,
/// one line), refused before any work is done.
#[test]
fn output_paths_that_are_files() {
    let f = fixture();
    let dir = scratch("bad-paths");
    let file = dir.join("taken");
    std::fs::write(&file, "not a directory").unwrap();
    let e = fails(&["tokenizer", "train", "--input", f.corpus.to_str().unwrap(), "--vocab-size", "300", "--output", file.to_str().unwrap()]);
    assert!(e.contains(&format!("--output {} is a file, not a directory", file.display())), "{e}");
    let under = file.join("tok");
    let e = fails(&["tokenizer", "train", "--input", f.corpus.to_str().unwrap(), "--vocab-size", "300", "--output", under.to_str().unwrap()]);
    assert!(e.contains(&format!("lies under {}, which is a file", file.display())), "{e}");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &file);
    let e = fails(&["train", "--config", recipe.to_str().unwrap()]);
    assert!(e.contains("run.dir") && e.contains(&format!("{}", file.display())) && e.contains("is a file, not a directory"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory", "the file is untouched");
}

/// Issue 10, item 10: `generate --device cuda` names the flag it was given, not a recipe key.
#[test]
fn generate_device_error_names_the_flag() {
    let f = fixture();
    let model = f.run.join("final");
    let args = ["generate", "--model", model.to_str().unwrap(), "--prompt", "And", "--device", "cuda", "--max-new-tokens", "2", "--json"];
    if tch::Cuda::is_available() {
        // With a GPU the flag works: two tokens come back.
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        assert_eq!(v["ids"].as_array().unwrap().len(), 2, "{v}");
    } else {
        let e = fails(&args);
        assert!(e.contains("--device cuda but libtorch sees no CUDA device") && !e.contains("train.device"), "{e}");
    }
}

/// Issue 10, item 5: memory that runs out while running (here a 4.5 GB address-space limit, a
/// model whose 3 GB embedding the memory check lets through) is a runtime failure: exit 1 and
/// one error line with libtorch's reason, not a panic.
#[test]
fn out_of_memory_at_run_time_is_exit_1() {
    let dir = edited_final("oom-runtime", |c| c["vocab_size"] = 12_000_000.into());
    let cmd = format!("ulimit -v 4500000 && exec {:?} generate --model {:?} --prompt And --max-new-tokens 2", bin(), dir);
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .env("RANKFORGE_LOG", "warn")
        .env("MALLOC_ARENA_MAX", "1") // keep the process's own address space small and steady
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("frame #"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: out of memory: ") && lines[0].ends_with("can't allocate memory: you tried to allocate 3072000000 bytes. Error code 12 (Cannot allocate memory)"), "{err}");
}
