"""Reference side of the classification training tests (tests/classify_train.rs).

usage:
  classify_train_reference.py make OUT_DIR
      A tiny random BERT and DistilBERT without a task head (BertModel / DistilBertModel,
      hidden 32, 2 layers: bert_base/, distilbert_base/) with the tiny WordPiece tokenizer of
      classify_reference.py, and labelled data: train.jsonl (64 rows,
      sentiment labels), val.jsonl (16), multi.jsonl (lists of genres), reg.jsonl (numbers),
      pairs.jsonl (text + text_pair). Prints {"ok": true}.
  classify_train_reference.py full FINAL TEXTS.jsonl
      AutoModelForSequenceClassification.from_pretrained(FINAL): softmax (sigmoid for
      multi-label) scores per text, plus the architecture, id2label and problem_type.
  classify_train_reference.py peft BASE ADAPTER TEXTS.jsonl N
      PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE,
      num_labels=N), ADAPTER): the load's missing and unexpected keys (adapter keys only) and
      the scores per text.
Scores are printed as one JSON object on the last line.
"""
import json
import os
import random
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel, DistilBertConfig, DistilBertModel

sys.path.insert(0, os.path.dirname(__file__))
from classify_reference import BERT, GENRES, SENTIMENT, VOCAB, sentence, tokenizer, write_jsonl  # noqa: E402
from hf_models_reference import randomize  # noqa: E402

torch.set_num_threads(1)


def make(out):
    os.makedirs(out, exist_ok=True)
    tok = tokenizer(out)
    torch.manual_seed(21)
    base = BertModel(BertConfig(vocab_size=len(VOCAB), **BERT))
    randomize(base, 21)
    base.save_pretrained(os.path.join(out, "bert_base"))
    tok.save_pretrained(os.path.join(out, "bert_base"))
    torch.manual_seed(22)
    distil = DistilBertModel(DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64))
    randomize(distil, 22)
    distil.save_pretrained(os.path.join(out, "distilbert_base"))
    tok.save_pretrained(os.path.join(out, "distilbert_base"))
    rng = random.Random(1)
    # The label follows a word of the text, so that a few steps can learn something.
    def row():
        text = sentence(rng)
        label = "positive" if "good" in text.lower() or "great" in text.lower() else rng.choice(SENTIMENT)
        return {"text": text, "label": label}
    write_jsonl(os.path.join(out, "train.jsonl"), [row() for _ in range(64)])
    write_jsonl(os.path.join(out, "val.jsonl"), [row() for _ in range(16)])
    write_jsonl(os.path.join(out, "multi.jsonl"), [{"text": sentence(rng), "label": rng.sample(GENRES, rng.randint(1, 2))} for _ in range(32)])
    write_jsonl(os.path.join(out, "reg.jsonl"), [{"text": sentence(rng), "label": round(rng.uniform(0, 5), 2)} for _ in range(32)])
    write_jsonl(os.path.join(out, "pairs.jsonl"), [{"text": sentence(rng), "text_pair": sentence(rng), "label": rng.choice(SENTIMENT)} for _ in range(32)])
    print(json.dumps({"ok": True}))


def texts(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def scores(model, tok, rows, multi):
    out = []
    with torch.no_grad():
        for r in rows:
            logits = model(**tok(r["text"], r.get("text_pair"), return_tensors="pt")).logits[0]
            out.append((torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).tolist())
    return out


def full(final, path):
    model = AutoModelForSequenceClassification.from_pretrained(final, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(final)
    multi = model.config.problem_type == "multi_label_classification"
    print(json.dumps({"architectures": model.config.architectures, "id2label": model.config.id2label,
                      "problem_type": model.config.problem_type, "scores": scores(model, tok, texts(path), multi)}))


def peft(base, adapter, path, n):
    from peft import PeftModel
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=n, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(model, adapter)
    result = loaded.load_adapter(adapter, adapter_name="check")
    loaded.set_adapter("default")
    loaded.eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    keys = lambda ks: sorted(k for k in ks if "lora_" in k or "modules_to_save" in k)
    print(json.dumps({"task_type": cfg["task_type"], "modules_to_save": cfg.get("modules_to_save"),
                      "missing": keys(result.missing_keys), "unexpected": keys(result.unexpected_keys),
                      "scores": scores(loaded, tok, texts(path), False)}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "full":
        full(sys.argv[2], sys.argv[3])
    elif cmd == "peft":
        peft(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(f"unknown command {cmd}")
