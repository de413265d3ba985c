"""Creates a BERT-base-shaped random classification model directory for the classification
benchmark (bench/bench_cls.sh).

The model is `BertForSequenceClassification(BertConfig(num_labels=5))`: transformers' BERT-base
defaults (12 layers, hidden 768, 12 heads, intermediate 3072, GELU, vocabulary 30522, 512
positions, 2 token types, dropout 0.1, LayerNorm eps 1e-12) with a 5-label head (pooler → tanh
→ dropout → classifier), labelled like Yelp's star ratings ("1 star" … "5 stars"):

    109.49 M parameters (23.84 M embeddings, 85.05 M in the 12 layers, 0.59 M pooler,
    3.8 k classifier)

Weights are transformers' own initialisation under a fixed seed, saved as fp32
`model.safetensors` (438 MB). A BERT WordPiece tokenizer (`tokenizer.json`) with
BERT's special-token ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103) and placeholder
word pieces fills the 30522 ids, so the directory is a complete HF model directory (the
benchmark itself uses random token ids, not the tokenizer). Nothing is downloaded. Both
`bench/hf_cls.py` (transformers + PyTorch) and `rankforge bench` load the directory this writes.

Example:
    .venv/bin/python bench/make_bert_cls.py runs/bench-bert
    .venv/bin/python bench/make_bert_cls.py /tmp/bert-nodrop --dropout 0
"""

import argparse
import json
import os
import string

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

YELP_LABELS = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="directory to write (created; overwritten)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--dropout", type=float, default=0.1,
                   help="hidden_dropout_prob and attention_probs_dropout_prob (BERT's 0.1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def vocab_tokens(size):
    """BERT's layout: [PAD], [unused0..98], [UNK], [CLS], [SEP], [MASK], then word pieces."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens += chars + ["##" + c for c in chars]
    return tokens + [f"w{i}" for i in range(size - len(tokens))]


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    cfg = BertConfig(
        num_hidden_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        num_labels=len(YELP_LABELS),
        id2label=dict(enumerate(YELP_LABELS)),
        label2id={name: i for i, name in enumerate(YELP_LABELS)},
    )
    model = BertForSequenceClassification(cfg).to(torch.float32)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    vocab = vocab_tokens(cfg.vocab_size)
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                            model_max_length=cfg.max_position_embeddings)
    assert len(tok) == cfg.vocab_size, (len(tok), cfg.vocab_size)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"dir": args.out, "params": n, "config": cfg.to_diff_dict()}), flush=True)


if __name__ == "__main__":
    main()
