"""Creates a small random Llama model directory for the fine-tuning benchmarks.

"A small Llama config" (issue 5): the Llama architecture at a size a CPU can train in
seconds per step, with every feature of the real thing that costs time — grouped-query
attention (8 query heads, 4 key/value heads), RoPE, RMSNorm, a SiLU-gated MLP and an untied
output layer:

    hidden_size 512, num_hidden_layers 8, num_attention_heads 8, num_key_value_heads 4
    (head_dim 64), intermediate_size 1408, vocab_size 8000, max_position_embeddings 2048,
    rope_theta 10000, rms_norm_eps 1e-5, tie_word_embeddings False
    -> 31.79 M parameters (23.60 M in the 8 blocks, 8.19 M in embed_tokens + lm_head)

Weights are transformers' own initialisation under a fixed seed, saved as fp32
`model.safetensors`. Nothing is downloaded. `--tokenizer` also writes a word-level tokenizer of
the model's vocabulary (`<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3, then one word `wN` per id N; pad,
BOS, EOS as in config.json) for the benchmarks that need one (DPO reads a pad and an EOS token). Both `bench/peft_llama.py` (PyTorch + PEFT) and
`rankforge bench` load the directory this writes.

Example:
    .venv/bin/python bench/make_llama.py runs/bench-llama
"""

import argparse
import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="directory to write (created; overwritten)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", action="store_true", help="also write a word-level tokenizer (see above)")
    return p.parse_args()


def write_tokenizer(out, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).to(torch.float32)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    if args.tokenizer:
        write_tokenizer(args.out, args.vocab)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"dir": args.out, "params": n, "config": cfg.to_diff_dict()}), flush=True)


if __name__ == "__main__":
    main()
