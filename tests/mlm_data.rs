//! Masked-LM data against transformers 5 on a tiny WordPiece tokenizer with `[MASK]`
//! (tests/py/mlm_data_reference.py): lines and rows tokenize as `tokenizer(text,
//! truncation=True, max_length=N)`, packing equals `run_mlm.py`'s `group_texts`, the special
//! ids are `all_special_ids`, a `DatasetDict` lends its validation split; the masking
//! statistics over more than 100 k tokens are within 1 % of 15 % chosen / 80 % `[MASK]` / 10 %
//! random / 10 % kept (as transformers' collator's are), no special token ever chosen; bad
//! input is an error naming the tokenizer, file and line, exit 2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::mlm::{self, MaskedLmDataConfig, MaskedLmTaskConfig, MlmData};
use rankforge::tokenizer::LoadedTokenizer;
use serde_json::Value;

struct Reference {
    dir: PathBuf,
    refs: Value,
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("mlm-data-ref");
        let out = Command::new(python()).arg(root().join("tests/py/mlm_data_reference.py")).args(["make", dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "mlm_data_reference.py: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        Reference { dir, refs: serde_json::from_str(stdout.lines().last().unwrap()).unwrap() }
    })
}

fn path(name: &str) -> PathBuf {
    reference().dir.join(name)
}

fn tok() -> LoadedTokenizer {
    LoadedTokenizer::load(&path("tok")).unwrap()
}

fn ids(v: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// `files` read with `max_length`, no validation split.
fn read(files: &[&str], max_length: Option<usize>, packing: bool) -> MlmData {
    let mut cfg = MaskedLmDataConfig::for_files(files.iter().map(|f| path(f)).collect());
    (cfg.max_length, cfg.packing, cfg.val_fraction) = (max_length, packing, Some(0.0));
    mlm::load(&cfg, &tok(), 0).unwrap()
}

#[test]
fn lines_and_rows_tokenize_as_transformers_tokenizer() {
    let refs = &reference().refs;
    let (lines, full) = (ids(&refs["lines"]), ids(&refs["lines_full"]));
    assert_ne!(lines, full, "some line is longer than max_length");
    for file in ["lines.txt", "rows.jsonl", "rows.csv", "rows.parquet"] {
        let d = read(&[file], Some(12), false);
        assert_eq!(d.train, lines, "{file}");
        assert!(d.val.is_empty());
        assert_eq!(d.stats.truncated, full.iter().filter(|f| f.len() > 12).count(), "{file}");
    }
    let d = read(&["lines.txt"], None, false);
    assert_eq!(d.train, full);
    assert_eq!((d.stats.texts, d.stats.blank, d.stats.truncated), (full.len() + 3, 3, 0), "the blank lines are skipped");
    // A glob reads its files in sorted order.
    let both = read(&["rows.*"], Some(12), false);
    assert_eq!(both.train, [lines.clone(), lines.clone(), lines.clone()].concat(), "rows.csv, rows.jsonl, rows.parquet");
}

#[test]
fn packing_groups_texts_as_run_mlm_and_specials_are_all_special_ids() {
    let refs = &reference().refs;
    let d = read(&["lines.txt"], Some(16), true);
    assert_eq!(d.train, ids(&refs["packed"]));
    assert!(d.train.iter().all(|b| b.len() == 16));
    let total: usize = ids(&refs["lines_full"]).iter().map(Vec::len).sum();
    assert_eq!(d.stats.packing_dropped, total % 16);
    let special: Vec<i64> = (0..d.special.len() as i64).filter(|&i| d.special[i as usize]).collect();
    assert_eq!(special, serde_json::from_value::<Vec<i64>>(refs["special_ids"].clone()).unwrap());
    assert_eq!((d.mask_id, d.pad_id, d.vocab_size), (refs["mask_id"].as_i64().unwrap(), refs["pad_id"].as_i64().unwrap(), refs["vocab_size"].as_u64().unwrap() as usize));
    // The special positions of the blocks are get_special_tokens_mask's (by id); run_mlm.py's
    // special_tokens_mask column marks only what the post-processor added, so it differs just
    // at the special tokens written in the text ("A [MASK] and [EXTRA] in the text").
    let ours: Vec<Vec<i64>> = d.train.iter().map(|b| b.iter().map(|&id| d.special[id as usize] as i64).collect()).collect();
    assert_eq!(ours, ids(&refs["packed_special_by_id"]));
    let column = ids(&refs["packed_special"]);
    let mut in_text = Vec::new();
    for ((block, o), c) in d.train.iter().zip(&ours).zip(&column) {
        for ((&id, &o), &c) in block.iter().zip(o).zip(c) {
            assert!(o >= c, "every token run_mlm.py marks is special");
            if o != c {
                in_text.push(id);
            }
        }
    }
    assert_eq!(in_text, vec![d.mask_id, 5], "[MASK] and [EXTRA] written in the text");
}

#[test]
fn validation_comes_from_a_dataset_dict_or_a_seeded_fraction() {
    let refs = &reference().refs;
    let d = mlm::load(&MaskedLmDataConfig::for_files(vec![path("dict")]), &tok(), 0).unwrap();
    assert_eq!((d.train.clone(), d.val.clone()), (ids(&refs["lines_full"]), ids(&refs["dict_val"])));
    let full = ids(&refs["lines_full"]);
    let mut cfg = MaskedLmDataConfig::for_files(vec![path("lines.txt")]);
    cfg.val_fraction = Some(0.2);
    let a = mlm::load(&cfg, &tok(), 1).unwrap();
    assert_eq!((a.train.len(), a.val.len()), (full.len() - 3, 3));
    let again = mlm::load(&cfg, &tok(), 1).unwrap();
    assert_eq!((&a.train, &a.val), (&again.train, &again.val), "the held-out texts are a function of the seed");
    let mut back: Vec<Vec<i64>> = a.train.iter().chain(&a.val).cloned().collect();
    back.sort();
    let mut all = full.clone();
    all.sort();
    assert_eq!(back, all);
    cfg.val = Some(vec![path("rows.jsonl")]);
    cfg.val_fraction = None;
    let given = mlm::load(&cfg, &tok(), 1).unwrap();
    assert_eq!((given.train, given.val), (full.clone(), full));
}

#[test]
fn masking_statistics_over_100k_tokens_are_the_collators() {
    let refs = &reference().refs;
    let d = read(&["stats.txt"], None, false);
    let task = MaskedLmTaskConfig::default();
    let (mut plain, mut chosen, mut masked, mut random, mut kept) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for (i, ex) in d.train.iter().enumerate() {
        let (inputs, labels) = mlm::mask(ex, &d.special, &task, d.mask_id, d.vocab_size, mlm::example_seed(0, 0, i as u64));
        for ((&id, &input), &label) in ex.iter().zip(&inputs).zip(&labels) {
            if d.special[id as usize] {
                assert_eq!((input, label), (id, -100), "example {i}: special token {id} chosen");
                continue;
            }
            plain += 1;
            if label == -100 {
                assert_eq!(input, id);
                continue;
            }
            assert_eq!(label, id);
            chosen += 1;
            match input {
                x if x == id => kept += 1,
                x if x == d.mask_id => masked += 1,
                _ => random += 1,
            }
        }
    }
    assert!(plain >= 100_000, "{plain} tokens");
    let c = chosen as f64;
    let ours = [("chosen", chosen as f64 / plain as f64, 0.15), ("mask", masked as f64 / c, 0.8), ("random", random as f64 / c, 0.1), ("kept", kept as f64 / c, 0.1)];
    let theirs = &refs["collator"];
    assert_eq!(theirs["special_chosen"], 0);
    for (name, rate, stated) in ours {
        assert!((rate - stated).abs() <= 0.01, "{name}: {rate} vs {stated} over {plain} tokens");
        let hf = theirs[name].as_f64().unwrap();
        assert!((hf - stated).abs() <= 0.01, "transformers' collator {name}: {hf} vs {stated}");
    }
}

fn load_err(cfg: &MaskedLmDataConfig, tok_dir: &Path) -> String {
    let e = mlm::load(cfg, &LoadedTokenizer::load(tok_dir).unwrap(), 0).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    e.to_string()
}

#[test]
fn bad_input_names_the_tokenizer_file_and_line() {
    let lines = MaskedLmDataConfig::for_files(vec![path("lines.txt")]);
    let e = load_err(&lines, &path("tok_nomask"));
    assert!(e.contains(&format!("{}", path("tok_nomask/tokenizer.json").display())) && e.contains("has no mask token"), "{e}");

    let dir = scratch("mlm-data-bad");
    std::fs::write(dir.join("bad.jsonl"), "{\"text\": \"a fine movie\"}\n\n{\"body\": \"no text\"}\n{\"text\": 3}\n").unwrap();
    let mut bad = MaskedLmDataConfig::for_files(vec![dir.join("bad.jsonl")]);
    let e = load_err(&bad, &path("tok"));
    assert_eq!(e, format!("{}: line 3: missing field \"text\"", dir.join("bad.jsonl").display()));
    bad.skip_malformed = true;
    let d = mlm::load(&bad, &tok(), 0).unwrap();
    assert_eq!((d.train.len() + d.val.len(), d.stats.skipped_malformed), (1, 2));

    std::fs::write(dir.join("latin1.txt"), b"a fine movie\nan caf\xe9 story\n").unwrap();
    let e = load_err(&MaskedLmDataConfig::for_files(vec![dir.join("latin1.txt")]), &path("tok"));
    assert!(e.starts_with(&format!("{}: line 2: not UTF-8 text (invalid byte 0xe9 at column 7)", dir.join("latin1.txt").display())), "{e}");

    std::fs::write(dir.join("blank.txt"), "\n  \n").unwrap();
    let e = load_err(&MaskedLmDataConfig::for_files(vec![dir.join("blank.txt")]), &path("tok"));
    assert!(e.contains("data.train: no text to train on"), "{e}");

    let mut packed = lines.clone();
    packed.packing = true;
    let e = load_err(&packed, &path("tok"));
    assert!(e.contains("data.packing: packing needs data.max_length"), "{e}");
    packed.max_length = Some(100_000);
    let e = load_err(&packed, &path("tok"));
    assert!(e.contains("fewer than one packed block of data.max_length = 100000"), "{e}");
}
