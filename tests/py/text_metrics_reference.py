"""Reference side of the text metrics test (tests/text_metrics.rs): the real rouge_score,
sacrebleu and NLTK on the cases of CASES_JSON ({"predictions": [...], "references": [...],
"words": [...]}), printed as one JSON object:

- "rouge": {"plain"|"stem": {"pairs": [[rouge1, rouge2, rougeL, rougeLsum] F-measures per
  pair], "mean": {...}}}: RougeScorer(...).score(reference, prediction), then the plain mean;
- "corpus_bleu": sacrebleu.BLEU().corpus_score(predictions, [references]);
- "sentence_bleu": [sacrebleu.sentence_bleu(prediction, [reference]) per pair];
- "exact_match": HF evaluate's exact_match with default arguments (its _compute, quoted below:
  the `evaluate` package itself is not a test dependency);
- "stems": [PorterStemmer().stem(word) per word].

usage: text_metrics_reference.py CASES_JSON
"""
import json
import sys

import numpy as np
import sacrebleu
from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer

KEYS = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def rouge(predictions, references, use_stemmer):
    scorer = rouge_scorer.RougeScorer(KEYS, use_stemmer=use_stemmer)
    pairs = []
    for p, r in zip(predictions, references):
        s = scorer.score(r, p)  # score(target, prediction)
        pairs.append([s[k].fmeasure for k in KEYS])
    mean = {k: sum(row[i] for row in pairs) / len(pairs) for i, k in enumerate(KEYS)}
    return {"pairs": pairs, "mean": mean}


def bleu(b):
    return {"score": b.score, "precisions": b.precisions, "bp": b.bp, "sys_len": b.sys_len,
            "ref_len": b.ref_len, "counts": b.counts, "totals": b.totals}


def exact_match(predictions, references):
    # evaluate/metrics/exact_match/exact_match.py, _compute with regexes_to_ignore=None,
    # ignore_case=False, ignore_punctuation=False, ignore_numbers=False:
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    score_list = predictions == references
    return float(np.mean(score_list))


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    hyps, refs = cases["predictions"], cases["references"]
    stemmer = PorterStemmer()
    out = {
        "rouge": {"plain": rouge(hyps, refs, False), "stem": rouge(hyps, refs, True)},
        "corpus_bleu": bleu(sacrebleu.BLEU().corpus_score(hyps, [refs])),
        "sentence_bleu": [bleu(sacrebleu.sentence_bleu(h, [r])) for h, r in zip(hyps, refs)],
        "exact_match": exact_match(hyps, refs),
        "stems": [stemmer.stem(w) for w in cases["words"]],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
