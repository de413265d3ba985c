"""Reference side of the LoRA conformance tests (tests/lora.rs), run with peft 0.21.

usage:
  peft_reference.py make OUT_DIR
      Creates a tiny random GPT-2 (fixed seed) in OUT_DIR/base, fixed random token ids in
      OUT_DIR/ids.json, and two PEFT adapters on it (r=4, lora_alpha=8, target c_attn,
      fan_in_fan_out, B randomised with torch.nn.init.normal_): OUT_DIR/peft and, with
      use_rslora=True, OUT_DIR/peft_rslora. Writes the logits of the base model and of both
      adapted models to OUT_DIR/ref_logits.safetensors and prints, as JSON, PEFT's trainable
      parameter counts (print_trainable_parameters) for the configurations the tests use.
  peft_reference.py make_llama OUT_DIR
      Llama-family models: a tiny random Llama (untied) in OUT_DIR/llama and a tiny Qwen2 (q/k/v
      biases, GQA, tied) in OUT_DIR/qwen2, fixed token ids in OUT_DIR/ids.json, and PEFT
      adapters with B randomised: OUT_DIR/llama_default (PEFT's default targets for llama,
      q_proj and v_proj) and OUT_DIR/qwen2_all_linear (all-linear, r=8, alpha=16, rsLoRA).
      Writes their logits to OUT_DIR/ref_logits.safetensors and prints PEFT's trainable counts.
  peft_reference.py check BASE_DIR ADAPTER_DIR MERGED_DIR IDS_JSON OUT_SAFETENSORS
      Loads ADAPTER_DIR (written by rankforge) with PeftModel.from_pretrained as a user would,
      and MERGED_DIR with GPT2LMHeadModel. Writes logits (the base model before PEFT wraps it,
      adapted, adapters disabled, merged, PEFT's own merge_and_unload) and prints a JSON report: the warnings PEFT emitted while
      loading, the missing/unexpected keys of load_adapter, how the file's keys compare with
      the keys PEFT itself would save for this config, and the largest difference between the
      merged weights rankforge wrote and PEFT's merge_and_unload.
"""
import json
import os
import sys
import warnings

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.utils import load_peft_weights

# Reproducible references: one intra-op thread, so that no reduction depends on how many cores
# this machine has or how busy they are, and synchronous weight loading (transformers 5 otherwise
# materialises the tensors of from_pretrained on a thread pool).
torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

hf_logging.set_verbosity_error()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float().contiguous()


def make(out):
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=1000, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0,
    )
    base = GPT2LMHeadModel(cfg).eval()
    base.save_pretrained(os.path.join(out, "base"))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=gen)
    json.dump(ids.tolist(), open(os.path.join(out, "ids.json"), "w"))
    result = {"base": logits(base, ids)}
    counts = {}
    for name, targets, rslora in [("peft", ["c_attn"], False), ("peft_rslora", ["c_attn"], True),
                                  ("count_attn_proj", ["c_attn", "c_proj"], False),
                                  ("count_all_linear", "all-linear", False)]:
        model = GPT2LMHeadModel.from_pretrained(os.path.join(out, "base")).eval()
        lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True,
                          use_rslora=rslora, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, lcfg)
        counts[name] = peft_model.get_nb_trainable_parameters()[0]
        if name.startswith("count"):
            continue
        torch.manual_seed(2)
        for module_name, param in peft_model.named_parameters():
            if "lora_B" in module_name:
                torch.nn.init.normal_(param)
        peft_model.eval()
        peft_model.save_pretrained(os.path.join(out, name))
        result[name] = logits(peft_model, ids)
    save_file(result, os.path.join(out, "ref_logits.safetensors"))
    print(json.dumps({"trainable": counts}))


def make_llama(out):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  initializer_range=0.2)
    LlamaForCausalLM = __import__("transformers").LlamaForCausalLM
    Qwen2ForCausalLM = __import__("transformers").Qwen2ForCausalLM
    LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False)).save_pretrained(os.path.join(out, "llama"))
    Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True)).save_pretrained(os.path.join(out, "qwen2"))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, common["vocab_size"], (2, 13), generator=gen)
    json.dump(ids.tolist(), open(os.path.join(out, "ids.json"), "w"))
    result, counts = {}, {}
    for name, base, lcfg in [
        ("llama_default", "llama", LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM")),
        ("qwen2_all_linear", "qwen2", LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                 use_rslora=True, task_type="CAUSAL_LM")),
    ]:
        model = AutoModelForCausalLM.from_pretrained(os.path.join(out, base), dtype=torch.float32).eval()
        peft_model = get_peft_model(model, lcfg)
        counts[name] = peft_model.get_nb_trainable_parameters()[0]
        torch.manual_seed(2)
        for module_name, param in peft_model.named_parameters():
            if "lora_B" in module_name:
                torch.nn.init.normal_(param, std=0.5)
        peft_model.eval()
        peft_model.save_pretrained(os.path.join(out, name))
        result[name] = logits(peft_model, ids)
    save_file(result, os.path.join(out, "ref_logits.safetensors"))
    print(json.dumps({"trainable": counts}))


def check(base_dir, adapter_dir, merged_dir, ids_path, out_path):
    ids = torch.tensor(json.load(open(ids_path)), dtype=torch.long)
    base = GPT2LMHeadModel.from_pretrained(base_dir).eval()
    base_logits = logits(base, ids)  # before PEFT wraps the model in place
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
    peft_warnings = [str(w.message) for w in caught if "adapter" in str(w.message).lower()
                     or "missing" in str(w.message).lower()]
    c_attn = model.base_model.model.transformer.h[0].attn.c_attn
    scaling = c_attn.scaling.get("default") if hasattr(c_attn, "scaling") else None
    file_weights = load_peft_weights(adapter_dir)
    own = get_peft_model_state_dict(model)
    value_diff = max(((file_weights[k].float() - own[k].float()).abs().max().item()
                      for k in file_weights if k in own), default=None)
    result = {"base": base_logits, "peft": logits(model, ids)}
    with model.disable_adapter():
        result["disabled"] = logits(model, ids)
    check_result = model.load_adapter(adapter_dir, adapter_name="check")
    merged = GPT2LMHeadModel.from_pretrained(merged_dir).eval()
    result["merged"] = logits(merged, ids)
    peft_merged = model.merge_and_unload()
    result["peft_merged"] = logits(peft_merged, ids)
    ours = merged.state_dict()
    theirs = peft_merged.state_dict()
    weight_diff = max((ours[k] - theirs[k]).abs().max().item() for k in theirs if not k.endswith("attn.bias"))
    save_file(result, out_path)
    print(json.dumps({
        "warnings": peft_warnings,
        "missing_keys": list(check_result.missing_keys),
        "unexpected_keys": list(check_result.unexpected_keys),
        "file_keys_not_in_peft": sorted(set(file_weights) - set(own)),
        "peft_keys_not_in_file": sorted(set(own) - set(file_weights)),
        "n_keys": len(file_weights),
        "value_diff": value_diff,
        "merged_weight_diff": weight_diff,
        "peft_type": str(model.peft_config["default"].peft_type),
        "scaling": scaling,
    }))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "make":
        make(sys.argv[2])
    elif mode == "make_llama":
        make_llama(sys.argv[2])
    elif mode == "check":
        check(*sys.argv[2:7])
    else:
        sys.exit(f"unknown mode {mode}")
