//! Classification metrics (`rankforge::eval::classification`) against scikit-learn: every
//! number within 1e-12 and `classification_report`'s text byte for byte, on deterministic
//! random cases in one Python process (tests/py/sklearn_metrics_reference.py).

use crate::common::{python, root, scratch};
use rankforge::eval::{ClassificationReport, Metric};
use serde_json::{json, Value};
use std::process::Command;

/// A small deterministic generator (xorshift64*), so the cases need no extra crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

enum Case {
    Single { y_true: Vec<usize>, y_pred: Vec<usize> },
    Multi { y_true: Vec<Vec<bool>>, y_pred: Vec<Vec<bool>> },
}

struct Named {
    name: &'static str,
    labels: Vec<String>,
    case: Case,
}

/// `n` samples over `k` labels; a prediction is right with probability `right`/10, else
/// uniform over `pred_labels` (so labels outside it are never predicted).
fn noisy(rng: &mut Rng, n: usize, true_labels: &[usize], pred_labels: &[usize], right: usize) -> Case {
    let y_true: Vec<usize> = (0..n).map(|_| true_labels[rng.below(true_labels.len())]).collect();
    let y_pred = y_true
        .iter()
        .map(|&t| if rng.below(10) < right && pred_labels.contains(&t) { t } else { pred_labels[rng.below(pred_labels.len())] })
        .collect();
    Case::Single { y_true, y_pred }
}

fn labels(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cases() -> Vec<Named> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let stars = labels(&["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]);
    let twelve: Vec<String> = (0..12).map(|i| if i == 7 { "a label longer than weighted avg".into() } else { format!("l{i}") }).collect();
    let mut multi = |n: usize, k: usize| {
        let y_true: Vec<Vec<bool>> = (0..n).map(|_| (0..k).map(|_| rng.below(3) == 0).collect()).collect();
        let mut y_pred: Vec<Vec<bool>> = y_true.iter().map(|row| row.iter().map(|&t| if rng.below(4) == 0 { !t } else { t }).collect()).collect();
        y_pred[0] = vec![false; k]; // a row with no predicted label: samples precision 0/0
        (y_true, y_pred)
    };
    let (mt, mp) = multi(40, 4);
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    vec![
        Named { name: "binary", labels: labels(&["negative", "positive"]), case: noisy(&mut rng, 37, &[0, 1], &[0, 1], 7) },
        Named { name: "five_stars", labels: stars.clone(), case: noisy(&mut rng, 250, &[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], 5) },
        Named { name: "never_predicted", labels: stars.clone(), case: noisy(&mut rng, 60, &[0, 1, 2, 3, 4], &[0, 1, 2, 4], 6) },
        Named { name: "never_present", labels: stars, case: noisy(&mut rng, 45, &[0, 1, 3, 4], &[0, 1, 2, 3, 4], 6) },
        Named { name: "neither_true_nor_predicted", labels: labels(&["a", "b", "c", "négatif"]), case: noisy(&mut rng, 20, &[0, 1, 2], &[0, 1, 2], 5) },
        Named { name: "single_sample", labels: labels(&["x", "y", "z"]), case: Case::Single { y_true: vec![2], y_pred: vec![1] } },
        // 1/8 = 0.125 and 2/9: a tie at two digits (Python and Rust both round half to even).
        Named { name: "rounding_ties", labels: labels(&["no", "yes"]), case: Case::Single { y_true: vec![0, 0, 0, 0, 0, 0, 0, 1], y_pred: vec![1; 8] } },
        // More than 8 labels: numpy sums the averages pairwise.
        Named { name: "twelve_labels", labels: twelve, case: noisy(&mut rng, 600, &(0..12).collect::<Vec<_>>(), &(0..12).collect::<Vec<_>>(), 4) },
        Named { name: "multilabel", labels: labels(&["sports", "politics", "tech", "arts"]), case: Case::Multi { y_true: mt, y_pred: mp } },
    ]
}

fn report(c: &Named) -> ClassificationReport {
    match &c.case {
        Case::Single { y_true, y_pred } => ClassificationReport::new(y_true, y_pred, &c.labels).unwrap(),
        Case::Multi { y_true, y_pred } => ClassificationReport::multilabel(y_true, y_pred, &c.labels).unwrap(),
    }
}

fn case_json(c: &Named) -> Value {
    let ind = |rows: &Vec<Vec<bool>>| -> Vec<Vec<u8>> { rows.iter().map(|r| r.iter().map(|&b| b as u8).collect()).collect() };
    match &c.case {
        Case::Single { y_true, y_pred } => json!({"name": c.name, "multilabel": false, "y_true": y_true, "y_pred": y_pred, "labels": c.labels}),
        Case::Multi { y_true, y_pred } => json!({"name": c.name, "multilabel": true, "y_true": ind(y_true), "y_pred": ind(y_pred), "labels": c.labels}),
    }
}

fn close(case: &str, what: &str, ours: f64, theirs: &Value) {
    let theirs = theirs.as_f64().unwrap_or_else(|| panic!("{case}: {what}: scikit-learn gave {theirs}"));
    assert!((ours - theirs).abs() <= 1e-12, "{case}: {what}: ours {ours}, scikit-learn {theirs}");
}

#[test]
fn classification_metrics_equal_sklearn() {
    let cases = cases();
    let file = scratch("metrics").join("cases.json");
    std::fs::write(&file, Value::Array(cases.iter().map(case_json).collect()).to_string()).unwrap();
    let out = Command::new(python()).arg(root().join("tests/py/sklearn_metrics_reference.py")).arg(&file).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let refs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refs.len(), cases.len());
    for (c, sk) in cases.iter().zip(&refs) {
        let (name, r) = (c.name, report(c));
        assert_eq!(sk["name"], name);
        close(name, "accuracy", r.accuracy, &sk["accuracy"]);
        for (l, s) in r.per_label.iter().enumerate() {
            close(name, &format!("precision[{l}]"), s.precision, &sk["precision"][l]);
            close(name, &format!("recall[{l}]"), s.recall, &sk["recall"][l]);
            close(name, &format!("f1[{l}]"), s.f1, &sk["f1"][l]);
            // (scikit-learn gives floats when nothing is predicted right)
            assert_eq!(Some(s.support as f64), sk["support"][l].as_f64(), "{name}: support[{l}]");
        }
        let mut averages = vec![("micro", r.micro), ("macro", r.macro_avg), ("weighted", r.weighted)];
        match (r.samples, sk["samples"].is_null()) {
            (Some(s), false) => averages.push(("samples", s)),
            (None, true) => {}
            (ours, _) => panic!("{name}: samples average: ours {ours:?}, scikit-learn {}", sk["samples"]),
        }
        for (avg, a) in averages {
            close(name, &format!("{avg} precision"), a.precision, &sk[avg]["precision"]);
            close(name, &format!("{avg} recall"), a.recall, &sk[avg]["recall"]);
            close(name, &format!("{avg} f1"), a.f1, &sk[avg]["f1"]);
        }
        let j = r.to_json();
        assert_eq!(j["confusion_matrix"], sk["confusion_matrix"], "{name}: confusion matrix");
        for (key, ours) in [("accuracy", &sk["accuracy"]), ("f1_macro", &sk["macro"]["f1"]), ("f1_micro", &sk["micro"]["f1"]), ("f1_weighted", &sk["weighted"]["f1"])] {
            close(name, &format!("json {key}"), j[key].as_f64().unwrap(), ours);
        }
        close(name, "json precision_macro", j["precision_macro"].as_f64().unwrap(), &sk["macro"]["precision"]);
        close(name, "json recall_macro", j["recall_macro"].as_f64().unwrap(), &sk["macro"]["recall"]);
        let metric = |m: Metric| match m {
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "f1",
        };
        let mut flagged: Vec<&str> = r.zero_division.iter().map(|z| metric(z.metric)).collect();
        flagged.sort();
        assert_eq!(json!(flagged), sk["ill_defined"], "{name}: metrics with a zero division");
        let text = r.to_text();
        let sk_text = sk["text"].as_str().unwrap();
        assert_eq!(r.report_text(), sk_text, "{name}: report text\nours:\n{}\nscikit-learn:\n{sk_text}", r.report_text());
        assert!(text.starts_with(sk_text) && text.contains("confusion matrix"), "{name}: {text}");
    }
    // The cases cover what they claim to.
    let by_name = |n: &str| report(cases.iter().find(|c| c.name == n).unwrap());
    assert!(by_name("never_predicted").zero_division.iter().any(|z| z.metric == Metric::Precision && z.labels == ["4 stars"]));
    assert!(by_name("never_present").zero_division.iter().any(|z| z.metric == Metric::Recall && z.labels == ["3 stars"]));
    assert!(by_name("neither_true_nor_predicted").zero_division.iter().any(|z| z.metric == Metric::F1 && z.labels == ["négatif"]));
    assert_eq!(by_name("rounding_ties").per_label[1].precision, 0.125);
}
