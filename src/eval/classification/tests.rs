//! Unit tests of the parent module, checked by hand (tests/metrics.rs compares with
//! scikit-learn itself).

use super::*;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sklearn_docstring_example() {
    let r = ClassificationReport::new(&[0, 1, 2, 2, 2], &[0, 0, 2, 2, 1], &names(&["class 0", "class 1", "class 2"])).unwrap();
    assert_eq!(r.accuracy, 0.6);
    assert_eq!(r.per_label[0], LabelScores { precision: 0.5, recall: 1.0, f1: 2.0 / 3.0, support: 1 });
    assert_eq!(r.per_label[1], LabelScores { precision: 0.0, recall: 0.0, f1: 0.0, support: 1 });
    assert_eq!(r.per_label[2], LabelScores { precision: 1.0, recall: 2.0 / 3.0, f1: 0.8, support: 3 });
    assert_eq!(r.micro, Averages { precision: 0.6, recall: 0.6, f1: 0.6 });
    assert_eq!(r.macro_avg.precision, 0.5);
    assert_eq!(r.confusion, Confusion::SingleLabel(vec![vec![1, 0, 0], vec![1, 0, 0], vec![0, 1, 2]]));
    assert!(r.zero_division.is_empty(), "{:?}", r.zero_division);
    // The docstring of sklearn.metrics.classification_report.
    let expected = "              precision    recall  f1-score   support\n\n     class 0       0.50      1.00      0.67         1\n     class 1       0.00      0.00      0.00         1\n     class 2       1.00      0.67      0.80         3\n\n    accuracy                           0.60         5\n   macro avg       0.50      0.56      0.49         5\nweighted avg       0.70      0.60      0.61         5\n";
    assert_eq!(r.report_text(), expected);
    let text = r.to_text();
    assert!(text.starts_with(expected));
    assert!(text.ends_with("\n         class 0  class 1  class 2\nclass 0        1        0        0\nclass 1        1        0        0\nclass 2        0        1        2\n"), "{text}");
}

#[test]
fn zero_division_gives_zero_and_is_listed() {
    // "c" is neither true nor predicted: its precision, recall and F1 are all 0/0.
    let r = ClassificationReport::new(&[0, 0, 1], &[0, 1, 1], &names(&["a", "b", "c"])).unwrap();
    assert_eq!(r.per_label[2], LabelScores { precision: 0.0, recall: 0.0, f1: 0.0, support: 0 });
    assert_eq!(r.per_label[1], LabelScores { precision: 0.5, recall: 1.0, f1: 2.0 / 3.0, support: 1 });
    let zd = |metric| ZeroDivision { metric, labels: vec!["c".to_string()] };
    assert_eq!(r.zero_division, vec![zd(Metric::Precision), zd(Metric::Recall), zd(Metric::F1)]);
    assert_eq!(r.zero_division[0].message(), "Precision is ill-defined and being set to 0.0 in labels with no predicted samples: c");
    // Macro averages over all three labels, the empty one counting 0.
    assert_eq!(r.macro_avg.recall, (0.5 + 1.0 + 0.0) / 3.0);
    // Weighted by support 2, 1, 0.
    assert_eq!(r.weighted.precision, (1.0 * 2.0 + 0.5 * 1.0) / 3.0);
}

#[test]
fn json_has_the_documented_keys() {
    let r = ClassificationReport::new(&[1, 0], &[1, 1], &names(&["neg", "pos"])).unwrap();
    let j = r.to_json();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    let mut want = vec!["accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_micro", "f1_weighted", "per_label", "confusion_matrix", "labels", "n"];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(j["n"], 2);
    assert_eq!(j["accuracy"], 0.5);
    assert_eq!(j["confusion_matrix"], serde_json::json!([[0, 1], [0, 1]]));
    assert_eq!(j["per_label"]["pos"], serde_json::json!({"precision": 0.5, "recall": 1.0, "f1": 2.0 / 3.0, "support": 1}));
    assert_eq!(j["labels"], serde_json::json!(["neg", "pos"]));
}

#[test]
fn bad_input_is_an_error_naming_it() {
    let l = names(&["a", "b"]);
    let err = |r: Result<ClassificationReport, Error>| r.unwrap_err().to_string();
    assert_eq!(err(ClassificationReport::new(&[0, 1], &[0], &l)), "2 true labels but 1 predictions");
    assert_eq!(err(ClassificationReport::new(&[], &[], &l)), "no samples to evaluate");
    assert_eq!(err(ClassificationReport::new(&[0, 2], &[0, 1], &l)), "y_true[1] = 2 is not a label index (there are 2 labels)");
    assert_eq!(err(ClassificationReport::new(&[0], &[0], &names(&["a", "b", "a"]))), "label \"a\" is listed twice (at 0 and 2)");
    assert_eq!(err(ClassificationReport::multilabel(&[vec![true]], &[vec![true, false]], &l)), "y_true[0] has 1 indicators, expected one per label (2)");
}

#[test]
fn multilabel_counts_subset_accuracy_and_samples_average() {
    let (t, f) = (true, false);
    let r = ClassificationReport::multilabel(&[vec![t, f], vec![t, t]], &[vec![t, f], vec![f, t]], &names(&["x", "y"])).unwrap();
    assert_eq!(r.accuracy, 0.5, "subset accuracy: only the first row is right on every label");
    assert_eq!(r.per_label[0], LabelScores { precision: 1.0, recall: 0.5, f1: 2.0 / 3.0, support: 2 });
    assert_eq!(r.per_label[1], LabelScores { precision: 1.0, recall: 1.0, f1: 1.0, support: 1 });
    assert_eq!(r.micro, Averages { precision: 1.0, recall: 2.0 / 3.0, f1: 0.8 });
    assert_eq!(r.samples, Some(Averages { precision: 1.0, recall: 0.75, f1: (1.0 + 2.0 / 3.0) / 2.0 }));
    assert_eq!(r.confusion, Confusion::MultiLabel(vec![[[0, 0], [1, 1]], [[1, 0], [0, 1]]]));
    let text = r.report_text();
    assert!(text.contains("\n   micro avg       1.00      0.67      0.80         3\n"), "{text}");
    assert!(text.ends_with(" samples avg       1.00      0.75      0.83         3\n"), "{text}");
}

#[test]
fn np_sum_is_numpy_pairwise() {
    // Sequential below 8 terms; with 9 terms numpy adds 8 accumulators pairwise, then the 9th.
    let a = [1e16, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let sequential = a.iter().fold(0.0, |s, x| s + x);
    assert_eq!(sequential, 1e16);
    assert_eq!(np_sum(&a), 1e16 + 8.0);
    assert_eq!(np_sum(&a[..7]), 1e16);
}

#[test]
fn no_true_positive_prints_float_supports_as_sklearn() {
    // scikit-learn 1.9.1: classification_report([2], [1], labels=[0, 1, 2], target_names=[...])
    let r = ClassificationReport::new(&[2], &[1], &names(&["x", "y", "z"])).unwrap();
    let expected = "              precision    recall  f1-score   support\n\n           x       0.00      0.00      0.00       0.0\n           y       0.00      0.00      0.00       0.0\n           z       0.00      0.00      0.00       1.0\n\n    accuracy                           0.00       1.0\n   macro avg       0.00      0.00      0.00       1.0\nweighted avg       0.00      0.00      0.00       1.0\n";
    assert_eq!(r.report_text(), expected);
    assert_eq!(r.to_json()["per_label"]["z"]["support"], 1, "JSON keeps integer supports");
}
