"""Reference side of the encoder conformance tests (tests/encoders.rs): BERT / DistilBERT
padding masks, save_pretrained, sequence-classification heads, their losses, and LoRA with PEFT.

usage:
  encoders_reference.py make OUT_DIR
      Tiny random models (hidden 32, 2 layers, fixed seeds) saved with save_pretrained under
      OUT_DIR/<name>/, and OUT_DIR/refs/<name>.safetensors: input_ids, attention_mask (right
      padding: the second sequence is 7 of 10 tokens), token_type_ids (BERT), `hidden`
      (AutoModel's last_hidden_state) and `logits` (AutoModelForSequenceClassification) where
      the directory has a head. OUT_DIR/refs/losses.safetensors: one batch's logits, labels and
      transformers' loss per problem type. OUT_DIR/peft_<name>/: PEFT LoRA adapters (r=4,
      alpha=8, task_type SEQ_CLS, random lora_B, the head in modules_to_save changed) with their logits in refs/peft_<name>.
      Prints {"all_linear": {model: [module paths PEFT's "all-linear" resolves to]}}.
  encoders_reference.py check_model base|cls DIR REFS OUT
      Loads DIR with AutoModel (base) or AutoModelForSequenceClassification (cls), runs it on
      the inputs of REFS (a refs file), writes `output` to OUT; prints the loading info
      (missing/unexpected/mismatched keys), class, num_labels, id2label, label2id.
  encoders_reference.py check_adapter BASE_DIR ADAPTER_DIR REFS OUT
      PeftModel.from_pretrained(AutoModelForSequenceClassification(BASE_DIR), ADAPTER_DIR);
      writes its logits to OUT; prints the LoRA keys PEFT expects but the file lacks and the
      file's keys PEFT does not know.

Models:
  bert_cls      BertForSequenceClassification, 3 labels with names
  distil_cls    DistilBertForSequenceClassification, 3 labels
  bert_reg      BertForSequenceClassification, num_labels = 1 (regression)
  bert_mlm      BertForMaskedLM (no pooler, no classifier): a new head is created
  distil_bare   DistilBertModel (no pre_classifier, no classifier)
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoModel, AutoModelForSequenceClassification, BertConfig, BertForMaskedLM,
                          BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification,
                          DistilBertModel)

from hf_models_reference import randomize  # the same far-from-init weights

torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

VOCAB = 320
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2)
DISTIL = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def models():
    yield "bert_cls", BertForSequenceClassification(BertConfig(**BERT, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}))
    yield "distil_cls", DistilBertForSequenceClassification(DistilBertConfig(**DISTIL, num_labels=3))
    yield "bert_reg", BertForSequenceClassification(BertConfig(**BERT, num_labels=1))
    yield "bert_mlm", BertForMaskedLM(BertConfig(**BERT))
    yield "distil_bare", DistilBertModel(DistilBertConfig(**DISTIL))


def inputs(family):
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(1, VOCAB, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    ids[1, 7:] = 0
    tensors = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        tt = torch.zeros(2, 10, dtype=torch.long)
        tt[:, 5:] = 1
        tensors["token_type_ids"] = tt
    return tensors


def kwargs(refs):
    return {k: refs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in refs}


def has_head(model):
    return hasattr(model, "classifier")


def make(out):
    os.makedirs(os.path.join(out, "refs"), exist_ok=True)
    for seed, (name, model) in enumerate(models()):
        randomize(model, 200 + seed)
        model_dir = os.path.join(out, name)
        model.eval().save_pretrained(model_dir)
        refs = inputs("distil" if name.startswith("distil") else "bert")
        with torch.no_grad():
            base = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
            refs["hidden"] = base(**kwargs(refs)).last_hidden_state.contiguous()
            if has_head(model):
                cls = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32,
                                                                         attn_implementation="eager").eval()
                refs["logits"] = cls(**kwargs(refs)).logits.contiguous()
        save_file(refs, os.path.join(out, "refs", f"{name}.safetensors"))
    make_losses(out)
    report = make_peft(out)
    print(json.dumps(report))


def make_losses(out):
    refs = inputs("bert")
    losses = {}
    with torch.no_grad():
        cls = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "bert_cls")).eval()
        single = torch.tensor([2, 0])
        multi = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # float labels: inferred multi-label
        o = cls(**kwargs(refs), labels=single)
        assert cls.config.problem_type == "single_label_classification"
        losses.update(logits_cls=o.logits, labels_single=single, loss_single=o.loss.reshape(1))
        cls.config.problem_type = None
        o = cls(**kwargs(refs), labels=multi)
        assert cls.config.problem_type == "multi_label_classification"
        losses.update(labels_multi=multi, loss_multi=o.loss.reshape(1))
        reg = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "bert_reg")).eval()
        target = torch.tensor([0.5, -1.25])
        o = reg(**kwargs(refs), labels=target)
        assert reg.config.problem_type == "regression"
        losses.update(logits_reg=o.logits, labels_reg=target, loss_reg=o.loss.reshape(1))
    save_file({k: v.contiguous() for k, v in losses.items()}, os.path.join(out, "refs", "losses.safetensors"))


def make_peft(out):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
    all_linear = {}
    for name, targets in [("bert_cls", None), ("distil_cls", ["q_lin", "v_lin"])]:
        model = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, name)).eval()
        lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="SEQ_CLS")
        peft_model = get_peft_model(model, lcfg)
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
            logits = peft_model(**kwargs(refs)).logits.contiguous()
        save_file({"logits": logits}, os.path.join(out, "refs", f"peft_{name}.safetensors"))
        # PEFT's own resolution of "all-linear" (get_peft_model itself fails on DistilBERT with
        # SEQ_CLS: its modules_to_save "classifier" also matches the LoRA-wrapped "pre_classifier").
        model = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, name))
        resolved = _maybe_include_all_linear_layers(LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_CLS"), model)
        all_linear[name] = sorted(resolved.target_modules)
    return {"all_linear": all_linear}


def check_model(kind, model_dir, refs_path, out_path):
    refs = load_file(refs_path)
    auto = AutoModel if kind == "base" else AutoModelForSequenceClassification
    model, info = auto.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                       output_loading_info=True)
    with torch.no_grad():
        o = model.eval()(**kwargs(refs))
    output = o.last_hidden_state if kind == "base" else o.logits
    save_file({"output": output.contiguous()}, out_path)
    c = model.config
    print(json.dumps({"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                      "mismatched": [str(m) for m in info["mismatched_keys"]], "class": type(model).__name__,
                      "num_labels": c.num_labels, "id2label": {str(k): v for k, v in c.id2label.items()},
                      "label2id": c.label2id, "problem_type": c.problem_type}))


def check_adapter(base_dir, adapter_dir, refs_path, out_path):
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights
    refs = load_file(refs_path)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        logits = model(**kwargs(refs)).logits.contiguous()
    save_file({"output": logits}, out_path)
    file_keys = set(load_peft_weights(adapter_dir))
    own = set(get_peft_model_state_dict(model))
    print(json.dumps({"missing_lora": sorted(k for k in own - file_keys if "lora_" in k),
                      "missing_other": sorted(k for k in own - file_keys if "lora_" not in k),
                      "unexpected": sorted(file_keys - own), "n_keys": len(file_keys)}))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "check_model":
        check_model(*sys.argv[2:6])
    elif cmd == "check_adapter":
        check_adapter(*sys.argv[2:6])
    else:
        sys.exit(__doc__)
