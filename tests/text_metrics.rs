//! Text metrics (`rankforge::eval::text`) against the packages they claim to equal, run by the
//! venv's Python (tests/py/text_metrics_reference.py): ROUGE-1/2/L/Lsum per pair and their means
//! against `rouge_score` with and without the stemmer, corpus and sentence BLEU against
//! sacreBLEU, exact match against HF evaluate's formula, and the Porter stemmer against NLTK
//! on every word of the bundled corpus.
//!
//! The pairs are generated deterministically: hand-written edge cases (punctuation, numbers,
//! casing, unicode, HTML escapes, repeated words, multi-line summaries, empty strings), random
//! edits of random sentences over a vocabulary of such tokens, and edited verses of data/kjv.txt.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;

use rankforge::error::{Error, EXIT_BAD_INPUT};
use rankforge::eval::text::{corpus_bleu, exact_match, porter, rouge, rouge::score, sentence_bleu, Bleu};
use serde_json::{json, Value};

use crate::common::{python, root, scratch};

const TOL: f64 = 1e-6;

/// Hand-written pairs (prediction, reference).
const EDGE: &[(&str, &str)] = &[
    ("", ""),
    ("", "the cat sat on the mat"),
    ("the cat sat on the mat", ""),
    ("!!! ... ???", "the cat"),
    ("the cat", "!!! ... ???"),
    ("The Cat SAT on the mat.", "the cat sat on the mat"),
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the the the the", "the cat the"),
    ("It costs $3.14, or 1,000 yen (approx.)", "It costs 3.14 dollars - or 1.000 yen"),
    ("Call 555-1234 at 10:30 a.m.", "call 555 - 1234 at 10 : 30 am"),
    ("e-mail me: x@y.com / 50% off!", "email me x at y dot com, 50 % off"),
    ("&quot;Hello&quot; &amp; &lt;b&gt;bold&lt;/b&gt;", "\"Hello\" & <b>bold</b>"),
    ("&amp;quot; &AMP; &#39;", "&quot; & '"),
    ("<skipped> a line that ends in a hyphen-\nated word", "a line that ends in a hyphenated word"),
    ("café naïve Ünïcödé İstanbul", "cafe naive unicode istanbul"),
    ("日本語 のテキスト 😀 emoji", "日本語 テキスト emoji 😀"),
    ("KELVIN \u{212a} sign", "kelvin k sign"),
    ("tabs\tand\u{a0}no-break\u{2003}spaces \u{1c}sep\u{1f}", "tabs and no-break spaces sep"),
    ("trailing spaces   \n\n", "trailing spaces"),
    ("running generously caresses ponies relational", "run generous caress pony relate"),
    ("happiness conditional digitizer hopefulness", "happy condition digitize hopeful"),
    ("skies dying innings proceed controlling", "sky die inning proceeding controlled"),
    ("First sentence here.\nSecond one follows.\nThird.", "First sentence.\nThe second one follows here.\nA third."),
    ("one line only", "line one\nonly line\none"),
    ("a b c\n\n\nd e f", "d e f\na b c"),
    ("\n\n\n", "something\nelse"),
    ("x\ny\nz", "x y z"),
    ("2nd 3rd 4th 100th", "2nd third 4th 100 th"),
    ("Don't stop; it's O'Brien's!", "do not stop it is obriens"),
    ("A.B.C. U.S.A. e.g. i.e.", "abc usa eg ie"),
    ("1.5x 2,5 3.a b.4 ,5 .6", "1.5 x 2 , 5 3 . a"),
    ("--- ... ,,, ;;;", "---...,,,;;;"),
    ("word, word. word! word?", "word word word word"),
    ("nul\0at the end\0", "nul\0at the end"),
    ("identical text\nwith two lines", "identical text\nwith two lines"),
    ("{braces} [brackets] (parens) `ticks` ~tilde^ |pipe| _under_", "braces brackets parens ticks tilde pipe under"),
];

/// Tokens the generated sentences draw from.
const VOCAB: &[&str] = &[
    "the", "The", "THE", "a", "cat", "cats", "dog", "running", "runs", "ran", "run", "generously", "generous",
    "caresses", "caress", "ponies", "pony", "relational", "relate", "happy", "happiness", "sky", "skies", "dying",
    "hopping", "hoped", "controlling", "national", "nationalism", "is", "was", "of", "and", "3.14", "1,000", "42",
    "-7", "2nd", "U.S.", "e-mail", "don't", "it's", "café", "naïve", "İstanbul", "日本語", "😀", "&quot;", "&amp;",
    "&lt;b&gt;", "<skipped>", "(a)", "[x]", "{y}", "$5", "50%", "a/b", "x+y", "#tag", "@user", "--", "...", ",", ".",
    "!", "?", ";", ":", "\"", "'", "`", "word.", "end,", "Mr.", "9-5", "10-", "-",
];

/// Word separators, mostly spaces; newlines make multi-line summaries for ROUGE-Lsum.
const SEPS: &[&str] = &[" ", " ", " ", " ", " ", " ", "\n", "  ", "\t", " -\n", "\u{a0}", ", ", ". "];

/// SplitMix64: a deterministic generator for the cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// A random edit of `words`: drops, substitutions, insertions, case changes, swaps.
fn edit(rng: &mut Rng, words: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words {
        match rng.below(20) {
            0 | 1 => {}
            2 => out.push(rng.pick(VOCAB).to_string()),
            3 => {
                out.push(w.clone());
                out.push(rng.pick(VOCAB).to_string());
            }
            4 => out.push(w.to_uppercase()),
            5 => {
                out.push(w.clone());
                out.push(w.clone());
            }
            _ => out.push(w.clone()),
        }
    }
    if out.len() >= 2 && rng.below(4) == 0 {
        let i = rng.below(out.len() - 1);
        out.swap(i, i + 1);
    }
    out
}

fn join(rng: &mut Rng, words: &[String]) -> String {
    let mut s = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            s.push_str(rng.pick(SEPS));
        }
        s.push_str(w);
    }
    s
}

/// The ≥ 200 (prediction, reference) pairs.
fn pairs() -> (Vec<String>, Vec<String>) {
    let mut rng = Rng(16);
    let (mut preds, mut refs): (Vec<String>, Vec<String>) = EDGE.iter().map(|(p, r)| (p.to_string(), r.to_string())).unzip();
    for _ in 0..140 {
        let len = rng.below(22);
        let reference: Vec<String> = (0..len).map(|_| rng.pick(VOCAB).to_string()).collect();
        let prediction = edit(&mut rng, &reference);
        preds.push(join(&mut rng, &prediction));
        refs.push(join(&mut rng, &reference));
    }
    let kjv = std::fs::read_to_string(root().join("data/kjv.txt")).unwrap();
    let verses: Vec<&str> = kjv.lines().filter(|l| l.split_whitespace().count() > 4).step_by(499).take(60).collect();
    for (i, v) in verses.iter().enumerate() {
        // every third reference is a two-verse summary, one verse per line
        let reference = if i % 3 == 0 { format!("{v}\n{}", verses[(i + 7) % verses.len()]) } else { v.to_string() };
        let lines: Vec<String> = reference.split('\n').map(|l| {
            let words: Vec<String> = l.split(' ').map(str::to_string).collect();
            edit(&mut rng, &words).join(" ")
        }).collect();
        preds.push(lines.join("\n"));
        refs.push(reference);
    }
    (preds, refs)
}

/// Every distinct word of data/kjv.txt (case kept) and words that exercise each stemmer rule.
fn words() -> Vec<String> {
    let kjv = std::fs::read_to_string(root().join("data/kjv.txt")).unwrap();
    let mut set: BTreeSet<String> = kjv.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect();
    let extra = "caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized hopping \
        tanned falling hissing fizzed failing filing happy sky enjoy spy fly tried flies relational conditional rational \
        valenci hesitanci digitizer conformabli radicalli differentli vileli analogousli vietnamization predication \
        operator feudalism decisiveness hopefulness callousness formaliti sensitiviti sensibiliti triplicate formative \
        formalize electriciti electrical hopeful goodness revival allowance inference airliner gyroscopic adjustable \
        defensible irritant replacement adjustment dependent adoption homologou communism activate angulariti homologous \
        effective bowdlerize probate rate cease controll roll generously running skies dying lying tying news innings \
        inning outings canning howe proceed exceed succeed fully faithfulli analogi biology zoology ies dies died lied tied \
        yyyy syzygy toy by at y is as us 2nd b52s a1b2 ALLIANCE Nationally Ünïcödé İstanbul";
    set.extend(extra.split(' ').filter(|w| !w.is_empty()).map(str::to_string));
    set.into_iter().collect()
}

/// The reference numbers, computed once for all the tests below.
fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let (preds, refs) = pairs();
        let file = scratch("text-metrics").join("cases.json");
        std::fs::write(&file, json!({"predictions": preds, "references": refs, "words": words()}).to_string()).unwrap();
        let out = Command::new(python()).arg(root().join("tests/py/text_metrics_reference.py")).arg(&file).output().unwrap();
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

fn close(what: &str, ours: f64, theirs: &Value) {
    let theirs = theirs.as_f64().unwrap_or_else(|| panic!("{what}: the reference gave {theirs}"));
    assert!((ours - theirs).abs() <= TOL, "{what}: ours {ours}, reference {theirs}");
}

#[test]
fn text_rouge_equals_rouge_score_with_and_without_stemmer() {
    let (preds, refs) = pairs();
    assert!(preds.len() >= 200, "{} pairs", preds.len());
    for (mode, stemmer) in [("plain", false), ("stem", true)] {
        let theirs = &reference()["rouge"][mode];
        assert_eq!(theirs["pairs"].as_array().map(Vec::len), Some(preds.len()));
        for (i, (p, r)) in preds.iter().zip(&refs).enumerate() {
            let s = score(r, p, stemmer);
            let t = &theirs["pairs"][i];
            for (k, (name, ours)) in [("rouge1", s.rouge1), ("rouge2", s.rouge2), ("rougeL", s.rougeL), ("rougeLsum", s.rougeLsum)].into_iter().enumerate() {
                close(&format!("{mode} pair {i} {name} ({p:?} vs {r:?})"), ours, &t[k]);
            }
        }
        let m = rouge(&preds, &refs, stemmer).unwrap();
        let j = serde_json::to_value(m).unwrap();
        for name in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
            close(&format!("{mode} mean {name}"), j[name].as_f64().unwrap(), &theirs["mean"][name]);
        }
    }
    // the stemmer changes something: the stemmed and plain means differ
    assert_ne!(reference()["rouge"]["plain"]["mean"], reference()["rouge"]["stem"]["mean"]);
}

fn same_bleu(what: &str, ours: &Bleu, theirs: &Value) {
    close(&format!("{what} score"), ours.score, &theirs["score"]);
    close(&format!("{what} bp"), ours.bp, &theirs["bp"]);
    for n in 0..4 {
        close(&format!("{what} precision {}", n + 1), ours.precisions[n], &theirs["precisions"][n]);
    }
    assert_eq!(json!([ours.sys_len, ours.ref_len]), json!([theirs["sys_len"], theirs["ref_len"]]), "{what}: lengths");
    assert_eq!(json!(ours.counts), theirs["counts"], "{what}: counts");
    assert_eq!(json!(ours.totals), theirs["totals"], "{what}: totals");
}

#[test]
fn text_bleu_equals_sacrebleu_corpus_and_sentence() {
    let (preds, refs) = pairs();
    let corpus = corpus_bleu(&preds, &refs).unwrap();
    same_bleu("corpus", &corpus, &reference()["corpus_bleu"]);
    assert!(corpus.score > 1.0 && corpus.score < 99.0, "{corpus:?}");
    let sentences = &reference()["sentence_bleu"];
    assert_eq!(sentences.as_array().map(Vec::len), Some(preds.len()));
    for (i, (p, r)) in preds.iter().zip(&refs).enumerate() {
        same_bleu(&format!("sentence {i} ({p:?} vs {r:?})"), &sentence_bleu(p, r), &sentences[i]);
    }
}

#[test]
fn text_exact_match_equals_evaluate() {
    let (preds, refs) = pairs();
    let ours = exact_match(&preds, &refs).unwrap();
    close("exact_match", ours, &reference()["exact_match"]);
    assert!(ours > 0.0 && ours < 1.0, "{ours}");
}

#[test]
fn porter_stemmer_equals_nltk_on_the_corpus_vocabulary() {
    let words = words();
    assert!(words.len() >= 2000, "{} words", words.len());
    let theirs = reference()["stems"].as_array().unwrap();
    assert_eq!(theirs.len(), words.len());
    let mut changed = 0;
    for (w, t) in words.iter().zip(theirs) {
        let ours = porter::stem(w);
        assert_eq!(Some(ours.as_str()), t.as_str(), "stem({w:?})");
        changed += (ours != w.to_lowercase()) as usize;
    }
    assert!(changed > words.len() / 4, "only {changed} words changed");
}

#[test]
fn text_metrics_reject_mismatched_lengths_and_nothing_to_score() {
    let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let two: Vec<String> = three[..2].to_vec();
    let errors = [
        rouge(&three, &two, false).unwrap_err(),
        rouge(&two, &three, true).unwrap_err(),
        corpus_bleu(&three, &two).unwrap_err(),
        exact_match(&two, &three).unwrap_err(),
    ];
    for (e, (p, r)) in errors.iter().zip([(3, 2), (2, 3), (3, 2), (2, 3)]) {
        assert!(matches!(e, Error::LengthMismatch { predictions, references } if (*predictions, *references) == (p, r)), "{e:?}");
        assert_eq!(e.exit_code(), EXIT_BAD_INPUT);
        assert_eq!(e.to_string(), format!("{p} predictions but {r} references: each prediction needs exactly one reference"));
    }
    let none: Vec<String> = Vec::new();
    for e in [rouge(&none, &none, false).unwrap_err(), corpus_bleu(&none, &none).unwrap_err(), exact_match(&none, &none).unwrap_err()] {
        assert!(matches!(e, Error::Input(_)), "{e:?}");
        assert_eq!(e.exit_code(), EXIT_BAD_INPUT);
    }
}
