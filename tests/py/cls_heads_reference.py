"""Reference side of the decoder classification-head tests (tests/cls_heads.rs): the `score`
heads of GPT-2, Llama, Mistral and Qwen2 (*ForSequenceClassification), their losses,
save_pretrained, and SEQ_CLS LoRA adapters with PEFT.

usage:
  cls_heads_reference.py make OUT_DIR
      Tiny random models (hidden 32, 2 layers, fixed seeds) saved with save_pretrained under
      OUT_DIR/<name>/, and OUT_DIR/refs/<name>.safetensors: input_ids / attention_mask of a
      right-padded batch (`*_right`: the second row is 7 of 10 tokens) and of a left-padded one
      (`*_left`: the second row starts with 3 pads), pad id PAD; for the classifiers the logits
      of AutoModelForSequenceClassification (`logits_right`, `logits_left`), for the causal
      LMs the last hidden states of AutoModel (`hidden_right`, `hidden_left`).
      OUT_DIR/refs/losses.safetensors: transformers' loss of one batch per problem type.
      OUT_DIR/peft_<name>/: PEFT SEQ_CLS adapters (r=4, alpha=8, default targets, random
      lora_B, the head in modules_to_save changed), their logits in refs/peft_<name>.
      Prints {"all_linear": {name: [module paths PEFT's "all-linear" resolves to]}}.
  cls_heads_reference.py check SPEC_JSON
      SPEC {"refs": REFS, "out": OUT_DIR, "models": [DIR...], "adapters": [[BASE, ADAPTER]...]}:
      each DIR loaded with AutoModelForSequenceClassification, each ADAPTER with
      PeftModel.from_pretrained(AutoModelForSequenceClassification(BASE), ADAPTER), run on the
      right-padded batch of REFS; logits to OUT_DIR/<basename>.safetensors (`output`). Prints
      {basename: loading info (missing / unexpected / mismatched keys, class, num_labels,
      id2label, label2id, pad_token_id) or, for adapters, the LoRA keys PEFT expects but the
      file lacks and the file's keys PEFT does not know}.

Models:
  gpt2_cls     GPT2ForSequenceClassification, 3 named labels, pad_token_id PAD
  llama_cls    LlamaForSequenceClassification, GQA 4/2, 3 labels
  mistral_cls  MistralForSequenceClassification, sliding_window 4 < length 10
  qwen2_cls    Qwen2ForSequenceClassification (q/k/v biases), GQA 4/1
  llama_reg    LlamaForSequenceClassification, num_labels = 1 (regression)
  gpt2_lm      GPT2LMHeadModel without pad_token_id (as GPT-2 itself and rankforge's final/)
  llama_lm     LlamaForCausalLM, untied lm_head, pad_token_id PAD
  mistral_lm   MistralForCausalLM, sliding_window 4
  qwen2_lm     Qwen2ForCausalLM, tied
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoModel, AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                          MistralConfig, MistralForCausalLM, MistralForSequenceClassification, Qwen2Config,
                          Qwen2ForCausalLM, Qwen2ForSequenceClassification)

from hf_models_reference import randomize  # the same far-from-init weights

torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

VOCAB = 320
T = 10
PAD = 3
GPT = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
DEC = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
CLS = dict(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, pad_token_id=PAD)


def models():
    yield "gpt2_cls", GPT2ForSequenceClassification(GPT2Config(**GPT, **CLS))
    yield "llama_cls", LlamaForSequenceClassification(LlamaConfig(**DEC, num_key_value_heads=2, **CLS))
    yield "mistral_cls", MistralForSequenceClassification(MistralConfig(**DEC, num_key_value_heads=2, sliding_window=4,
                                                                        **CLS))
    yield "qwen2_cls", Qwen2ForSequenceClassification(Qwen2Config(**DEC, num_key_value_heads=1, **CLS))
    yield "llama_reg", LlamaForSequenceClassification(LlamaConfig(**DEC, num_labels=1, pad_token_id=PAD))
    yield "gpt2_lm", GPT2LMHeadModel(GPT2Config(**GPT))
    yield "llama_lm", LlamaForCausalLM(LlamaConfig(**DEC, num_key_value_heads=2, tie_word_embeddings=False,
                                                   pad_token_id=PAD))
    yield "mistral_lm", MistralForCausalLM(MistralConfig(**DEC, num_key_value_heads=2, sliding_window=4,
                                                         pad_token_id=PAD))
    yield "qwen2_lm", Qwen2ForCausalLM(Qwen2Config(**DEC, num_key_value_heads=2, tie_word_embeddings=True,
                                                   pad_token_id=PAD))


def inputs():
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(PAD + 1, VOCAB, (2, T), generator=g)
    right, left = ids.clone(), ids.clone()
    mask_right, mask_left = torch.ones(2, T, dtype=torch.long), torch.ones(2, T, dtype=torch.long)
    right[1, 7:], mask_right[1, 7:] = PAD, 0
    left[1, :3], mask_left[1, :3] = PAD, 0
    return {"input_ids_right": right, "attention_mask_right": mask_right,
            "input_ids_left": left, "attention_mask_left": mask_left}


def batch(refs, side="right"):
    return {"input_ids": refs[f"input_ids_{side}"], "attention_mask": refs[f"attention_mask_{side}"]}


def load_cls(model_dir, **kw):
    return AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation="eager", **kw)


def make(out):
    os.makedirs(os.path.join(out, "refs"), exist_ok=True)
    for seed, (name, model) in enumerate(models()):
        randomize(model, 300 + seed)
        model_dir = os.path.join(out, name)
        model.eval().save_pretrained(model_dir)
        refs = inputs()
        with torch.no_grad():
            if name.endswith("_lm"):
                base = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
                for side in ("right", "left"):
                    refs[f"hidden_{side}"] = base(**batch(refs, side)).last_hidden_state.contiguous()
            else:
                cls = load_cls(model_dir).eval()
                for side in ("right", "left"):
                    refs[f"logits_{side}"] = cls(**batch(refs, side)).logits.contiguous()
        save_file(refs, os.path.join(out, "refs", f"{name}.safetensors"))
    make_losses(out)
    print(json.dumps(make_peft(out)))


def make_losses(out):
    refs = inputs()
    losses = {}
    with torch.no_grad():
        cls = load_cls(os.path.join(out, "gpt2_cls")).eval()
        single = torch.tensor([2, 0])
        multi = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # float labels: inferred multi-label
        assert cls.config.problem_type is None
        o = cls(**batch(refs), labels=single)
        assert cls.config.problem_type == "single_label_classification"
        losses.update(labels_single=single, loss_single=o.loss.reshape(1))
        cls.config.problem_type = None
        o = cls(**batch(refs), labels=multi)
        assert cls.config.problem_type == "multi_label_classification"
        losses.update(labels_multi=multi, loss_multi=o.loss.reshape(1))
        reg = load_cls(os.path.join(out, "llama_reg")).eval()
        target = torch.tensor([0.5, -1.25])
        o = reg(**batch(refs), labels=target)
        assert reg.config.problem_type == "regression"
        losses.update(labels_reg=target, loss_reg=o.loss.reshape(1))
    save_file({k: v.contiguous() for k, v in losses.items()}, os.path.join(out, "refs", "losses.safetensors"))


def make_peft(out):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
    all_linear = {}
    for name in ("gpt2_cls", "llama_cls"):
        model = load_cls(os.path.join(out, name)).eval()
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS"))
        torch.manual_seed(3)
        for module_name, param in peft_model.named_parameters():
            if "lora_B" in module_name:
                torch.nn.init.normal_(param)
            if "modules_to_save" in module_name:  # the head trained too: it must travel
                with torch.no_grad():
                    param.add_(0.5 * torch.randn_like(param))
        peft_model.eval()
        peft_model.save_pretrained(os.path.join(out, f"peft_{name}"))
        refs = load_file(os.path.join(out, "refs", f"{name}.safetensors"))
        with torch.no_grad():
            logits = peft_model(**batch(refs)).logits.contiguous()
        save_file({"logits": logits}, os.path.join(out, "refs", f"peft_{name}.safetensors"))
        model = load_cls(os.path.join(out, name))
        resolved = _maybe_include_all_linear_layers(LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_CLS"),
                                                    model)
        all_linear[name] = sorted(resolved.target_modules)
    return {"all_linear": all_linear}


def check_model(model_dir, refs, out_path):
    model, info = load_cls(model_dir, output_loading_info=True)
    with torch.no_grad():
        logits = model.eval()(**batch(refs)).logits.contiguous()
    save_file({"output": logits}, out_path)
    c = model.config
    return {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
            "mismatched": [str(m) for m in info["mismatched_keys"]], "class": type(model).__name__,
            "num_labels": c.num_labels, "id2label": {str(k): v for k, v in c.id2label.items()},
            "label2id": c.label2id, "pad_token_id": c.pad_token_id}


def check_adapter(base_dir, adapter_dir, refs, out_path):
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights
    model = PeftModel.from_pretrained(load_cls(base_dir).eval(), adapter_dir).eval()
    with torch.no_grad():
        logits = model(**batch(refs)).logits.contiguous()
    save_file({"output": logits}, out_path)
    file_keys = set(load_peft_weights(adapter_dir))
    own = set(get_peft_model_state_dict(model))
    return {"missing_lora": sorted(k for k in own - file_keys if "lora_" in k),
            "missing_other": sorted(k for k in own - file_keys if "lora_" not in k),
            "unexpected": sorted(file_keys - own), "n_keys": len(file_keys)}


def check(spec_path):
    spec = json.load(open(spec_path))
    refs = load_file(spec["refs"])
    os.makedirs(spec["out"], exist_ok=True)
    out = lambda d: os.path.join(spec["out"], os.path.basename(os.path.normpath(d)) + ".safetensors")
    report = {}
    for d in spec.get("models", []):
        report[os.path.basename(os.path.normpath(d))] = check_model(d, refs, out(d))
    for base, adapter in spec.get("adapters", []):
        report[os.path.basename(os.path.normpath(adapter))] = check_adapter(base, adapter, refs, out(adapter))
    print(json.dumps(report))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
