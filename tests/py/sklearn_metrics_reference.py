"""Reference side of the classification metrics test (tests/metrics.rs): for every case in
CASES_JSON (a list of {"name", "multilabel", "y_true", "y_pred", "labels"}; label indices for
single-label cases, 0/1 indicator rows for multi-label ones) prints scikit-learn's metrics
and classification_report text, as one JSON list in the same order.

usage: sklearn_metrics_reference.py CASES_JSON
"""
import json
import sys
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (accuracy_score, classification_report, confusion_matrix,
                             multilabel_confusion_matrix, precision_recall_fscore_support)


def averages(y_true, y_pred, labels, average):
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def ill_defined(y_true, y_pred, labels):
    """Which per-label metrics scikit-learn warns about (zero_division="warn")."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None)
    starts = {"Precision": "precision", "Recall": "recall", "F-score": "f1"}
    return sorted({v for w in caught if issubclass(w.category, UndefinedMetricWarning)
                   for k, v in starts.items() if str(w.message).startswith(k + " is")})


def reference(case):
    labels = list(range(len(case["labels"])))
    if case["multilabel"]:
        y_true, y_pred = np.array(case["y_true"], dtype=int), np.array(case["y_pred"], dtype=int)
        matrix = multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    else:
        y_true, y_pred = np.array(case["y_true"]), np.array(case["y_pred"])
        matrix = confusion_matrix(y_true, y_pred, labels=labels)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out = {
        "name": case["name"],
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(), "support": s.tolist(),
        "micro": averages(y_true, y_pred, labels, "micro"),
        "macro": averages(y_true, y_pred, labels, "macro"),
        "weighted": averages(y_true, y_pred, labels, "weighted"),
        "samples": averages(y_true, y_pred, labels, "samples") if case["multilabel"] else None,
        "confusion_matrix": matrix.tolist(),
        "ill_defined": ill_defined(y_true, y_pred, labels),
        "text": classification_report(y_true, y_pred, labels=labels, target_names=case["labels"],
                                      digits=2, zero_division=0),
    }
    return out


def main() -> None:
    cases = json.load(open(sys.argv[1], encoding="utf-8"))
    print(json.dumps([reference(c) for c in cases]))


if __name__ == "__main__":
    main()
