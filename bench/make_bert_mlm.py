"""Creates a BERT-base-shaped random masked-LM directory for the masked-LM benchmark
(bench/bench_mlm.sh).

The model is `BertForMaskedLM(BertConfig())`: transformers' BERT-base defaults (12 layers,
hidden 768, 12 heads, intermediate 3072, GELU, vocabulary 30522, 512 positions, 2 token types,
dropout 0.1, LayerNorm eps 1e-12) with BERT's MLM head (`cls.predictions.transform.dense` →
GELU → `LayerNorm` → decoder tied to the word embeddings + `cls.predictions.bias`) and no
pooler (`add_pooling_layer=False`, as transformers builds `BertForMaskedLM`):

    109.51 M parameters (23.84 M embeddings, 85.05 M in the 12 layers, 0.62 M MLM head
    transform and bias; the decoder is the tied word embeddings)

Weights are transformers' own initialisation under seed 0, saved as fp32 `model.safetensors`.
The tokenizer is bench/make_bert_cls.py's BERT WordPiece tokenizer (`tokenizer.json`) with
BERT's special-token ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103 — the mask
token the collator writes) and placeholder word pieces filling the 30522 ids. Nothing is
downloaded. Both `bench/hf_mlm.py` (transformers + PyTorch) and `rankforge bench` load the
directory this writes. `--layers/--hidden/--heads/--intermediate` make smaller models (tests).

Example:
    .venv/bin/python bench/make_bert_mlm.py runs/bench-bert-mlm
    .venv/bin/python bench/make_bert_mlm.py /tmp/tiny-mlm --layers 2 --hidden 32 --heads 2 --intermediate 64
"""

import argparse
import json
import os
import sys

import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_bert_cls import vocab_tokens  # noqa: E402  (the same WordPiece vocabulary)


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
    )
    model = BertForMaskedLM(cfg).to(torch.float32)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    vocab = vocab_tokens(cfg.vocab_size)
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                            model_max_length=cfg.max_position_embeddings)
    assert len(tok) == cfg.vocab_size, (len(tok), cfg.vocab_size)
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == 103, (tok.mask_token, tok.mask_token_id)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"dir": args.out, "params": n, "config": cfg.to_diff_dict()}), flush=True)


if __name__ == "__main__":
    main()
