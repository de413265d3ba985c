"""Reference side of the fine-tuning tests (tests/finetune.rs): transformers 5 and peft 0.21.

usage:
  finetune_reference.py make CORPUS OUT_DIR
      Trains a 384-token byte-level BPE (Python `tokenizers`, fixed settings) on CORPUS and
      creates, with a fixed seed, a tiny LlamaForCausalLM (hidden 32, 2 layers, 4 heads, 2 KV
      heads, untied) in OUT_DIR/llama and a tiny GPT2LMHeadModel (32 dims, 2 layers) in
      OUT_DIR/gpt2, each saved with save_pretrained together with the tokenizer (EOS and PAD
      = <|endoftext|>; the Llama tokenizer also carries a ChatML chat template).
  finetune_reference.py peft BASE_DIR ADAPTER_DIR MERGED_DIR IDS_JSON OUT_SAFETENSORS
      Loads ADAPTER_DIR with PeftModel.from_pretrained(AutoModelForCausalLM(BASE_DIR)) as a
      user would, and MERGED_DIR with AutoModelForCausalLM. Writes their logits on IDS_JSON
      (`peft`, `merged`) and prints a JSON report: PEFT's warnings while loading, the
      missing/unexpected keys of load_adapter, how the file's keys compare with those PEFT
      would save, the adapter config's task_type and base_model_name_or_path.
  finetune_reference.py model MODEL_DIR IDS_JSON OUT_SAFETENSORS
      AutoModelForCausalLM.from_pretrained(MODEL_DIR) logits (`logits`) on IDS_JSON; prints its
      class name and its loss with labels = the ids, the first 5 positions set to -100.
"""
import json
import os
import sys
import warnings

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

# Reproducible references: one intra-op thread, so that no reduction depends on how many cores
# this machine has or how busy they are, and synchronous weight loading (transformers 5 otherwise
# materialises the tensors of from_pretrained on a thread pool).
torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

hf_logging.set_verbosity_error()

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer(corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=384, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = open(corpus, encoding="utf-8").read()[:200_000]
    tok.train_from_iterator(text.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def make(corpus, out):
    tok = tokenizer(corpus)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        initializer_range=0.1))
    llama.save_pretrained(os.path.join(out, "llama"))
    chat_tok = tokenizer(corpus)
    chat_tok.chat_template = CHATML
    chat_tok.save_pretrained(os.path.join(out, "llama"))
    torch.manual_seed(1)
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=eos, eos_token_id=eos, initializer_range=0.1))
    gpt2.save_pretrained(os.path.join(out, "gpt2"))
    tok.save_pretrained(os.path.join(out, "gpt2"))
    print(json.dumps({"vocab": len(tok), "eos": eos}))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float().contiguous()


def ids_tensor(path):
    return torch.tensor(json.load(open(path)), dtype=torch.long)


def peft_check(base_dir, adapter_dir, merged_dir, ids_path, out_path):
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights
    ids = ids_tensor(ids_path)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
    peft_warnings = [str(w.message) for w in caught if "adapter" in str(w.message).lower()
                     or "missing" in str(w.message).lower()]
    file_weights = load_peft_weights(adapter_dir)
    own = get_peft_model_state_dict(model)
    result = {"peft": logits(model, ids)}
    check = model.load_adapter(adapter_dir, adapter_name="check")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    result["merged"] = logits(merged, ids)
    save_file(result, out_path)
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    print(json.dumps({
        "warnings": peft_warnings,
        "missing_keys": list(check.missing_keys),
        "unexpected_keys": list(check.unexpected_keys),
        "file_keys_not_in_peft": sorted(set(file_weights) - set(own)),
        "peft_keys_not_in_file": sorted(set(own) - set(file_weights)),
        "n_keys": len(file_weights),
        "task_type": cfg.get("task_type"),
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "merged_class": type(merged).__name__,
    }))


def model_check(model_dir, ids_path, out_path):
    ids = ids_tensor(ids_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt: not trained
    with torch.no_grad():
        loss = model(ids, labels=labels).loss.item()  # transformers' ForCausalLMLoss (shifts)
    save_file({"logits": logits(model, ids)}, out_path)
    print(json.dumps({"class": type(model).__name__, "loss_prompt_masked": loss}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "make":
        make(*sys.argv[2:4])
    elif mode == "peft":
        peft_check(*sys.argv[2:7])
    elif mode == "model":
        model_check(*sys.argv[2:5])
    else:
        sys.exit(f"unknown mode {mode}")
