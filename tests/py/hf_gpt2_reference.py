"""Reference side of the GPT-2 conformance test (tests/hf.rs).

Loads a rankforge `final/` (or checkpoint) directory with transformers, as a user would, and
writes what the Rust test compares against:
  - logits of GPT2LMHeadModel for the token ids in `ids.json` -> `hf_logits.safetensors`
  - the greedy continuation (do_sample=False) of `prompt` -> printed as JSON on stdout
  - AutoTokenizer's ids for `prompt`, to check the tokenizer files load identically

usage: hf_gpt2_reference.py MODEL_DIR IDS_JSON OUT_SAFETENSORS PROMPT MAX_NEW_TOKENS
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, GPT2LMHeadModel

# Reproducible references: one intra-op thread, so that no reduction depends on how many cores
# this machine has or how busy they are, and synchronous weight loading (transformers 5 otherwise
# materialises the tensors of from_pretrained on a thread pool).
torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"


def main() -> None:
    model_dir, ids_path, out_path, prompt, max_new = sys.argv[1:6]
    model = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor(json.load(open(ids_path)), dtype=torch.long)
    with torch.no_grad():
        logits = model(ids).logits.contiguous()
    save_file({"logits": logits}, out_path)
    prompt_ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=int(max_new),
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    print(json.dumps({
        "prompt_ids": prompt_ids[0].tolist(),
        "greedy_ids": out[0, prompt_ids.shape[1]:].tolist(),
        "tokenizer_class": type(tok).__name__,
        "eos_token": tok.eos_token,
        "model_max_length": tok.model_max_length,
    }))


if __name__ == "__main__":
    main()
