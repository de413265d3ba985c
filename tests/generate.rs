//! Generation: determinism, sampling options, checkpoints as well as final/.

use crate::common::*;

fn gen(model: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "And the LORD said unto Moses", "--json"];
    if !extra.contains(&"--max-new-tokens") {
        args.extend_from_slice(&["--max-new-tokens", "24"]);
    }
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).unwrap()
}

#[test]
fn same_seed_same_text_other_seed_other_text() {
    let f = fixture();
    let model = f.run.join("final");
    let sample = ["--temperature", "1.0", "--top-k", "50", "--top-p", "0.95", "--repetition-penalty", "1.3"];
    let a = gen(&model, &[&sample[..], &["--seed", "7"]].concat());
    let b = gen(&model, &[&sample[..], &["--seed", "7"]].concat());
    let c = gen(&model, &[&sample[..], &["--seed", "8"]].concat());
    assert_eq!(a, b, "same seed, same output");
    assert_ne!(a["ids"], c["ids"], "another seed samples differently");
    assert_eq!(a["ids"].as_array().unwrap().len(), 24);
    // Greedy ignores the seed.
    let g1 = gen(&model, &["--temperature", "0", "--seed", "1"]);
    let g2 = gen(&model, &["--temperature", "0", "--seed", "2"]);
    assert_eq!(g1, g2);
    // Streaming prints the same text the JSON reports.
    let streamed = ok(&["generate", "--model", model.to_str().unwrap(), "--prompt", "And the LORD said unto Moses", "--max-new-tokens", "24", "--temperature", "0"]);
    assert_eq!(streamed.trim_end_matches('\n'), g1["text"].as_str().unwrap());
}

#[test]
fn top_k_one_is_greedy_and_checkpoints_generate() {
    let f = fixture();
    let model = f.run.join("final");
    let greedy = gen(&model, &["--temperature", "0"]);
    let k1 = gen(&model, &["--temperature", "0.7", "--top-k", "1", "--seed", "5"]);
    assert_eq!(greedy["ids"], k1["ids"], "top-k 1 sampling is greedy");
    // The step-40 checkpoint holds the same weights as final/.
    let ck = gen(&f.run.join("checkpoints/step_00000040"), &["--temperature", "0"]);
    assert_eq!(ck["ids"], greedy["ids"]);
}

#[test]
fn context_limit_stops_generation() {
    let f = fixture();
    // The tiny model's context is 64 tokens: asking for 200 stops when it is full. Its corpus is
    // one document, so end-of-text closes 1 of its ~100k training tokens: greedy decoding does
    // not choose it here, and the run must end at the context.
    let v = gen(&f.run.join("final"), &["--temperature", "0", "--max-new-tokens", "200"]);
    let ids = v["ids"].as_array().unwrap();
    let total = v["prompt_ids"].as_array().unwrap().len() + ids.len();
    assert_eq!(v["stop"], "context", "{v}");
    assert_eq!(total, 64, "prompt and new tokens fill the context exactly: {v}");
    // Fewer new tokens than the room left stop at the count instead.
    let room = 64 - v["prompt_ids"].as_array().unwrap().len();
    let short = gen(&f.run.join("final"), &["--temperature", "0", "--max-new-tokens", &(room - 1).to_string()]);
    assert_eq!(short["stop"], "max_new_tokens", "{short}");
    assert_eq!(short["ids"].as_array().unwrap()[..], ids[..room - 1], "the same greedy tokens, cut at the count");
}
