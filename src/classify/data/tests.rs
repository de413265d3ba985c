//! Reader tests on a hand-built BERT-style tokenizer (WordPiece, `[CLS] $A [SEP] $B [SEP]`):
//! labels and problem types through `load`, pair encoding and `longest_first` truncation (the
//! conformance with transformers' own tokenizer is tests/classify.rs), splits, collate, and
//! the messages of bad input.

use std::path::PathBuf;

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

use super::*;

const WORDS: [&str; 12] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "e", "f", "g", "h"];

fn bert_tokenizer(pairs: bool) -> LoadedTokenizer {
    // A directory per call: tests run in parallel, and `dir` empties the one it names.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let vocab = dir(&format!("vocab-{pairs}-{n}")).join("vocab.txt");
    std::fs::write(&vocab, WORDS.join("\n")).unwrap();
    let wp = WordPiece::from_file(vocab.to_str().unwrap()).unk_token("[UNK]".into()).build().unwrap();
    let mut t = Tokenizer::new(wp);
    t.with_normalizer(Some(BertNormalizer::default())).with_pre_tokenizer(Some(BertPreTokenizer));
    if pairs {
        t.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), 3), ("[CLS]".into(), 2))));
    }
    LoadedTokenizer {
        tokenizer: t,
        path: PathBuf::from("tok/tokenizer.json"),
        eos_id: None,
        specials: vec![("pad_token".into(), "[PAD]".into())],
        bos_id: None,
        pad_id: Some(0),
        unk_id: Some(1),
        add_bos_token: None,
        add_eos_token: None,
        chat_template: None,
        chat_template_path: PathBuf::new(),
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rf-clsdata-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn cfg(train: &std::path::Path, extra: &str) -> ClassificationDataConfig {
    toml::from_str(&format!("train = {:?}\n{extra}", train.display().to_string())).unwrap()
}

fn task(text: &str) -> ClassificationTaskConfig {
    toml::from_str(text).unwrap()
}

fn classes(examples: &[ClsExample]) -> Vec<usize> {
    examples.iter().map(|e| if let ClsLabel::Class(c) = e.label { c } else { panic!("{:?}", e.label) }).collect()
}

#[test]
fn labels_default_to_sorted_names_and_task_labels_fix_the_order() {
    let d = dir("order");
    let train = write(&d, "t.jsonl", "{\"text\": \"a b\", \"label\": \"pos\"}\n{\"text\": \"c\", \"label\": \"neg\"}\n{\"text\": \"d\", \"label\": \"pos\"}\n");
    let tok = bert_tokenizer(true);
    let data = load(&cfg(&train, "val_fraction = 0"), &task(""), &tok, 0).unwrap();
    assert_eq!((data.labels.clone(), data.problem_type), (vec!["neg".to_string(), "pos".to_string()], ProblemType::SingleLabel));
    assert_eq!(classes(&data.train), [1, 0, 1]);
    assert_eq!(data.train[0].input_ids, [2, 4, 5, 3]);
    let data = load(&cfg(&train, "val_fraction = 0"), &task("labels = [\"pos\", \"neg\", \"other\"]"), &tok, 0).unwrap();
    assert_eq!(classes(&data.train), [0, 1, 0]);
    let e = load(&cfg(&train, "val_fraction = 0"), &task("labels = [\"pos\", \"other\"]"), &tok, 0).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 2: label \"neg\" is not one of the labels [\"pos\", \"other\"] (task.labels)", train.display()));
}

#[test]
fn integer_multi_label_and_regression_labels() {
    let d = dir("kinds");
    let tok = bert_tokenizer(true);
    let ints = write(&d, "i.jsonl", "{\"text\": \"a\", \"label\": 2}\n{\"text\": \"b\", \"label\": 0}\n");
    let data = load(&cfg(&ints, "val_fraction = 0"), &task(""), &tok, 0).unwrap();
    assert_eq!((data.labels, classes(&data.train)), (vec!["0".into(), "1".into(), "2".into()], vec![2, 0]));
    let multi = write(&d, "m.jsonl", "{\"text\": \"a\", \"tags\": [\"y\", \"x\"]}\n{\"text\": \"b\", \"tags\": []}\n");
    let data = load(&cfg(&multi, "val_fraction = 0\nlabel_field = \"tags\""), &task(""), &tok, 0).unwrap();
    assert_eq!((data.labels.len(), data.problem_type), (2, ProblemType::MultiLabel));
    assert_eq!(data.train[0].label, ClsLabel::Multi(vec![true, true]));
    let refs: Vec<&ClsExample> = data.train.iter().collect();
    let (_, _, _, labels) = collate(&refs, 0);
    assert_eq!((labels.kind(), labels.size()), (Kind::Float, vec![2, 2]));
    assert_eq!(Vec::<f32>::try_from(labels.view(-1)).unwrap(), [1.0, 1.0, 0.0, 0.0]);
    // CSV cells are typed as pandas would: numbers with a fraction make a regression.
    let reg = write(&d, "r.csv", "text,label\na,0.5\nb,2\n");
    let data = load(&cfg(&reg, "val_fraction = 0"), &task(""), &tok, 0).unwrap();
    assert_eq!((data.labels.clone(), data.problem_type), (vec!["LABEL_0".to_string()], ProblemType::Regression));
    assert_eq!(data.train[1].label, ClsLabel::Value(2.0));
    let refs: Vec<&ClsExample> = data.train.iter().collect();
    let (_, _, _, labels) = collate(&refs, 0);
    assert_eq!((labels.kind(), labels.size()), (Kind::Float, vec![2]));
}

#[test]
fn pairs_get_segments_and_longest_first_truncation() {
    let d = dir("pairs");
    let tok = bert_tokenizer(true);
    // transformers: tokenizer("a b c d e f", "g h", truncation=True, max_length=8)
    //   -> [CLS] a b c [SEP] g h [SEP], token_type_ids 0 0 0 0 0 1 1 1
    let train = write(&d, "p.jsonl", "{\"text\": \"a b c d e f\", \"hyp\": \"g h\", \"label\": \"x\"}\n{\"text\": \"a\", \"hyp\": \"b\", \"label\": \"y\"}\n{\"text\": \"a b\", \"hyp\": \"c d e f g h\", \"label\": \"y\"}\n");
    let data = load(&cfg(&train, "val_fraction = 0\ntext_pair_field = \"hyp\"\nmax_length = 8"), &task(""), &tok, 0).unwrap();
    assert_eq!(data.train[0].input_ids, [2, 4, 5, 6, 3, 10, 11, 3]);
    assert_eq!(data.train[0].token_type_ids, [0, 0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(data.train[1].input_ids, [2, 4, 3, 5, 3]);
    // The longer text loses tokens, whichever it is: ("a b", "c d e f g h") -> [CLS] a b [SEP] c d e [SEP].
    assert_eq!(data.train[2].input_ids, [2, 4, 5, 3, 6, 7, 8, 3]);
    assert_eq!(data.stats.truncated, 2);
    let refs: Vec<&ClsExample> = data.train.iter().collect();
    let (ids, mask, types, labels) = collate(&refs, 0);
    assert_eq!(Vec::<i64>::try_from(ids.get(1)).unwrap(), [2, 4, 3, 5, 3, 0, 0, 0]);
    assert_eq!(Vec::<i64>::try_from(mask.get(1)).unwrap(), [1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(Vec::<i64>::try_from(types.get(1)).unwrap(), [0, 0, 0, 1, 1, 0, 0, 0]);
    assert_eq!((labels.kind(), Vec::<i64>::try_from(labels).unwrap()), (Kind::Int64, vec![0, 1, 1]));
    let e = load(&cfg(&train, "text_pair_field = \"hyp\""), &task(""), &bert_tokenizer(false), 0).unwrap_err().to_string();
    assert!(e.starts_with("tokenizer tok/tokenizer.json: data.text_pair_field: this tokenizer has no pair template"), "{e}");
}

#[test]
fn validation_is_held_out_by_seed_or_read_and_never_empty() {
    let d = dir("val");
    let tok = bert_tokenizer(true);
    let rows: String = (0..20).map(|i| format!("{{\"text\": \"a\", \"label\": \"{}\"}}\n", ["x", "y"][i % 2])).collect();
    let train = write(&d, "t.jsonl", &rows);
    let a = load(&cfg(&train, ""), &task(""), &tok, 3).unwrap();
    assert_eq!((a.train.len(), a.val.len()), (19, 1), "5% of 20");
    let b = load(&cfg(&train, "val_fraction = 0.25"), &task(""), &tok, 3).unwrap();
    assert_eq!((b.train.len(), b.val.len()), (15, 5));
    let empty = write(&d, "empty.jsonl", "");
    let e = load(&cfg(&train, &format!("val = {:?}", empty.display().to_string())), &task(""), &tok, 0).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: data.val: the validation data holds no example", empty.display())), "{e}");
    let val = write(&d, "v.jsonl", "{\"text\": \"b\", \"label\": \"z\"}\n");
    let e = load(&cfg(&train, &format!("val = {:?}", val.display().to_string())), &task(""), &tok, 0).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 1: label \"z\" is not one of the labels [\"x\", \"y\"] (the sorted labels of the training data)", val.display()));
}

#[test]
fn missing_fields_name_file_line_and_field_or_are_skipped() {
    let d = dir("missing");
    let tok = bert_tokenizer(true);
    let train = write(&d, "t.jsonl", "{\"text\": \"a\", \"label\": \"x\"}\n{\"label\": \"y\"}\n{\"text\": \"b\"}\n{\"text\": \"c\", \"label\": \"y\"}\n");
    let e = load(&cfg(&train, ""), &task(""), &tok, 0).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 2: missing field \"text\"", train.display()));
    let e = load(&cfg(&train, "text_field = \"sentence\""), &task(""), &tok, 0).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 1: missing field \"sentence\"", train.display()));
    let data = load(&cfg(&train, "skip_malformed = true\nval_fraction = 0"), &task(""), &tok, 0).unwrap();
    assert_eq!((data.train.len(), data.stats.skipped_malformed, data.stats.rows), (2, 2, 4));
    let bad = write(&d, "b.jsonl", "{\"text\": \"a\", \"label\": {\"x\": 1}}\n");
    let e = load(&cfg(&bad, ""), &task(""), &tok, 0).unwrap_err().to_string();
    assert_eq!(e, format!("{}: line 1: field \"label\": expected a label name, an integer, a number or a list of labels, found an object", bad.display()));
}
