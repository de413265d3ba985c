//! Bad input: one clear error line naming the file/key, exit code 2, no panic, and nothing
//! already written is touched.

use crate::common::*;

/// Runs `rankforge args`, expecting a clean bad-input failure; returns the error line.
fn fails(args: &[&str]) -> String {
    let out = rankforge(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "rankforge {args:?}: expected exit 2, got {:?}\n{err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("RUST_BACKTRACE"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line:\n{err}");
    lines[0].to_string()
}

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
