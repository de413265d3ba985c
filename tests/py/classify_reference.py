"""Reference side of the classification data and command tests (tests/classify.rs).

usage:
  classify_reference.py make OUT_DIR
      Tiny random BERT classifiers (hidden 32, 2 layers, fixed seeds) with a tiny WordPiece
      tokenizer, saved with save_pretrained, labelled data files, and what transformers,
      PEFT and scikit-learn make of them; prints one JSON object (the references).

Written under OUT_DIR:
  bert_cls/      BertForSequenceClassification, labels negative/neutral/positive
  bert_multi/    the same with problem_type multi_label_classification (action/comedy/drama)
  bert_reg/      the same with one output and problem_type regression
  bert_nopair/   bert_cls with a tokenizer.json without post-processor (no pair template)
  peft_cls/      a PEFT LoRA adapter (SEQ_CLS, head in modules_to_save) on bert_cls
  dict/          a save_to_disk DatasetDict: train = eval.jsonl's rows, validation = pairs.jsonl's
                 texts, label a ClassLabel(neutral, negative, positive)
  eval.jsonl, pairs.jsonl, multi.jsonl, inputs.jsonl, tok_pairs.jsonl
References (stdout):
  metrics[name]   scikit-learn on transformers' predictions (argmax; sigmoid > 0.5):
                  accuracy, precision/recall/f1 macro, f1 micro/weighted, per label, confusion
                  matrix (multilabel_confusion_matrix for multi-label), labels, n, and
                  classification_report's text (`report`)
  pipeline[case]  pipeline("text-classification") results (single text, pair, top_k=2,
                  top_k=None, every row of inputs.jsonl)
  tokens          tokenizer(text, text_pair, truncation=True, max_length=12) ids and
                  token_type_ids for tok_pairs.jsonl, and without truncation
"""
import json
import os
import random
import shutil
import sys

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, classification_report, confusion_matrix, f1_score, multilabel_confusion_matrix,
                             precision_recall_fscore_support)
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification, BertTokenizer, pipeline

from hf_models_reference import randomize

torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

WORDS = ("the movie was good bad great terrible fine plot acting i it and not a very boring fun story "
         "loved hated film actor ending music").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!"] + WORDS + list("abcdefghijklmnopqrstuvwxyz") + \
        ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2)
SENTIMENT = ["negative", "neutral", "positive"]
GENRES = ["action", "comedy", "drama"]


def sentence(rng, n_min=2, n_max=9):
    words = [rng.choice(WORDS + ["zq"]) for _ in range(rng.randint(n_min, n_max))]
    return " ".join(words).capitalize() + rng.choice([".", "!", ""])


def tokenizer(out):
    return BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True)


def classifier(labels, seed, tok, **extra):
    """A random BERT classifier whose head is standardised on sample texts, so that its
    predictions vary from text to text (a random [CLS] varies little)."""
    config = BertConfig(vocab_size=len(VOCAB), id2label=dict(enumerate(labels)),
                        label2id={l: i for i, l in enumerate(labels)}, **BERT, **extra)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    randomize(model, seed)
    model.eval()
    rng = random.Random(seed)
    with torch.no_grad():
        pooled = torch.cat([model.bert(**tok(sentence(rng), return_tensors="pt")).pooler_output for _ in range(40)])
        head = model.classifier
        head.weight.div_((pooled @ head.weight.T).std(0, keepdim=True).T)
        head.bias.copy_(-(pooled @ head.weight.T).mean(0))
    return model


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def predictions(model_dir, tok, rows, multi):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    preds = []
    with torch.no_grad():
        for r in rows:
            enc = tok(r["text"], r.get("text_pair"), return_tensors="pt")
            logits = model(**enc).logits[0]
            preds.append((torch.sigmoid(logits) > 0.5).long().tolist() if multi else int(logits.argmax()))
    return preds


def metrics(y_true, y_pred, labels, multi):
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    pm, rm, fm, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average="macro", zero_division=0)
    cm = multilabel_confusion_matrix(y_true, y_pred, labels=ids) if multi else confusion_matrix(y_true, y_pred, labels=ids)
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "precision_macro": pm, "recall_macro": rm, "f1_macro": fm,
        "f1_micro": f1_score(y_true, y_pred, labels=ids, average="micro", zero_division=0),
        "f1_weighted": f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0),
        "per_label": {l: {"precision": p[i], "recall": r[i], "f1": f[i], "support": int(s[i])} for i, l in enumerate(labels)},
        "confusion_matrix": np.asarray(cm).tolist(),
        "labels": labels,
        "n": len(y_true),
        "report": classification_report(y_true, y_pred, labels=ids, target_names=labels, digits=2, zero_division=0),
    }


def make(out):
    os.makedirs(out, exist_ok=True)
    tok = tokenizer(out)
    rng = random.Random(0)
    models = {"bert_cls": classifier(SENTIMENT, 11, tok),
              "bert_multi": classifier(GENRES, 12, tok, problem_type="multi_label_classification"),
              "bert_reg": classifier(["score"], 13, tok, problem_type="regression")}
    for name, model in models.items():
        model.save_pretrained(os.path.join(out, name))
        tok.save_pretrained(os.path.join(out, name))
    nopair = os.path.join(out, "bert_nopair")
    shutil.copytree(os.path.join(out, "bert_cls"), nopair)
    with open(os.path.join(nopair, "tokenizer.json")) as f:
        tj = json.load(f)
    tj["post_processor"] = None
    with open(os.path.join(nopair, "tokenizer.json"), "w") as f:
        json.dump(tj, f)

    # Labels in a shuffled order (so the sorted default would differ from the model's).
    rows = [{"text": sentence(rng), "label": rng.choice(SENTIMENT)} for _ in range(24)]
    pairs = [{"text": sentence(rng), "text_pair": sentence(rng), "label": rng.choice(SENTIMENT)} for _ in range(12)]
    multi = [{"text": sentence(rng), "label": rng.sample(GENRES, rng.randint(0, 3))} for _ in range(16)]
    inputs = [{"text": sentence(rng)} for _ in range(3)] + [{"text": sentence(rng), "text_pair": sentence(rng)}]
    tok_pairs = [{"text": sentence(rng, 1, 14), "text_pair": sentence(rng, 1, 14), "label": "neutral"} for _ in range(10)]
    for name, data in [("eval", rows), ("pairs", pairs), ("multi", multi), ("inputs", inputs), ("tok_pairs", tok_pairs)]:
        write_jsonl(os.path.join(out, f"{name}.jsonl"), data)

    refs = {"metrics": {}, "pipeline": {}}
    cls_dir, multi_dir = os.path.join(out, "bert_cls"), os.path.join(out, "bert_multi")
    ids = lambda r: SENTIMENT.index(r["label"])
    refs["metrics"]["eval"] = metrics([ids(r) for r in rows], predictions(cls_dir, tok, rows, False), SENTIMENT, False)
    refs["metrics"]["pairs"] = metrics([ids(r) for r in pairs], predictions(cls_dir, tok, pairs, False), SENTIMENT, False)
    hot = [[int(g in r["label"]) for g in GENRES] for r in multi]
    refs["metrics"]["multi"] = metrics(np.array(hot), np.array(predictions(multi_dir, tok, multi, True)), GENRES, True)

    make_dict(out, rows, pairs)
    refs["pipeline"]["peft_eval"] = make_peft(out, cls_dir, tok, rows)
    pipe = pipeline("text-classification", model=cls_dir, tokenizer=cls_dir, device="cpu")
    text, pair = rows[0]["text"], pairs[0]
    refs["pipeline"]["text"] = {"args": {"text": text}, "out": pipe(text)}
    refs["pipeline"]["pair"] = {"args": {"text": pair["text"], "text_pair": pair["text_pair"]},
                                "out": [pipe({"text": pair["text"], "text_pair": pair["text_pair"]})]}
    refs["pipeline"]["top2"] = {"args": {"text": text}, "out": pipe(text, top_k=2)}
    refs["pipeline"]["all"] = {"args": {"text": text}, "out": pipe(text, top_k=None)}
    refs["pipeline"]["inputs"] = [pipe(r) if "text_pair" in r else pipe(r["text"]) for r in inputs]
    refs["pipeline"]["inputs"] = [o if isinstance(o, list) else [o] for o in refs["pipeline"]["inputs"]]
    mpipe = pipeline("text-classification", model=multi_dir, tokenizer=multi_dir, device="cpu")
    refs["pipeline"]["multi_all"] = {"args": {"text": text}, "out": mpipe(text, top_k=None)}
    rpipe = pipeline("text-classification", model=os.path.join(out, "bert_reg"), device="cpu")
    refs["pipeline"]["regression"] = {"args": {"text": text}, "out": rpipe(text)}

    fast = AutoTokenizer.from_pretrained(cls_dir)
    refs["tokens"] = {
        "truncated": [dict(fast(r["text"], r["text_pair"], truncation=True, max_length=12)) for r in tok_pairs],
        "full": [dict(fast(r["text"], r["text_pair"])) for r in tok_pairs],
        "single": [dict(fast(r["text"], truncation=True, max_length=5)) for r in tok_pairs],
    }
    for k in refs["tokens"]:
        refs["tokens"][k] = [{"input_ids": e["input_ids"], "token_type_ids": e["token_type_ids"]} for e in refs["tokens"][k]]
    print(json.dumps(refs, default=float))


def make_dict(out, rows, pairs):
    """A DatasetDict (train, validation) with a ClassLabel column, as load_dataset gives one."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neutral", "negative", "positive"])})
    split = lambda rs: Dataset.from_list([{"text": r["text"], "label": r["label"]} for r in rs], features=features)
    DatasetDict({"train": split(rows), "validation": split(pairs)}).save_to_disk(os.path.join(out, "dict"))


def make_peft(out, base_dir, tok, rows):
    """A SEQ_CLS adapter with a changed head; the predictions of PeftModel on `rows`."""
    from peft import LoraConfig, PeftModel, get_peft_model
    model = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS"))
    torch.manual_seed(5)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
        if "modules_to_save" in name:
            with torch.no_grad():
                param.add_(0.5 * torch.randn_like(param))
    adapter_dir = os.path.join(out, "peft_cls")
    peft_model.save_pretrained(adapter_dir)
    loaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_dir), adapter_dir).eval()
    scores = []
    with torch.no_grad():
        for r in rows[:4]:
            p = torch.softmax(loaded(**tok(r["text"], return_tensors="pt")).logits[0], -1)
            best = int(p.argmax())
            scores.append([{"label": SENTIMENT[best], "score": float(p[best])}])
    return {"texts": [r["text"] for r in rows[:4]], "out": scores}


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
