"""Reference side of the masked-LM head tests (tests/mlm_heads.rs): BertForMaskedLM and
DistilBertForMaskedLM of transformers 5, a BertModel without MLM head, save_pretrained, PEFT
LoRA adapters and pipeline("fill-mask").

usage:
  mlm_reference.py make OUT_DIR
      Tiny random models (hidden 32, 2 layers, fixed seeds, weights far from the init) with a
      tiny WordPiece tokenizer ([MASK]), saved with save_pretrained under OUT_DIR/<name>/:
        bert_mlm    BertForMaskedLM
        distil_mlm  DistilBertForMaskedLM
        bert_base   BertModel with its pooler, initializer_range 0.05 (no MLM head)
        bert_untied, distil_untied  the same with tie_word_embeddings = False (BERT's
                    decoder.bias then differs from the unused cls.predictions.bias)
      OUT_DIR/refs.safetensors: a right-padded batch (`input_ids`, `attention_mask`; the second
      row is shorter), the same batch masked (`masked_ids`, `labels`: -100 where not masked),
      per model `logits_<name>` (on input_ids) and `loss_<name>` (on masked_ids with labels),
      `hidden_bert_base` (BertModel's last hidden states on input_ids).
      OUT_DIR/inputs.txt: texts with one [MASK] each, one per line.
      Prints one JSON object: `pipeline[case] = {"text", "top_k", "out"}` (pipeline("fill-mask")
      on bert_mlm: one mask, two masks, top_k 3; on distil_mlm: one mask), `inputs` (the
      pipeline's output for each line of inputs.txt), and `new_head`: what
      BertForMaskedLM.from_pretrained(bert_base) reports (missing / unexpected keys) and the
      std of its freshly drawn transform.dense weight.
  mlm_reference.py check SPEC_JSON
      SPEC {"refs": REFS, "out": OUT_DIR, "models": [DIR...], "adapters": [[BASE, ADAPTER]...]}:
      each DIR loaded with AutoModelForMaskedLM, each ADAPTER with
      PeftModel.from_pretrained(AutoModelForMaskedLM(BASE), ADAPTER), run on the padded batch;
      logits to OUT_DIR/<basename>.safetensors (`output`). Prints {basename: loading info}.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertModel, BertTokenizer, DistilBertConfig,
                          DistilBertForMaskedLM, pipeline)

from hf_models_reference import randomize  # the same far-from-init weights

torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

WORDS = ("the movie was good bad great terrible fine plot acting i it and not a very boring fun story "
         "loved hated film actor ending music").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "'"] + WORDS + \
        list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
BERT = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=0)
DISTIL = dict(vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
              pad_token_id=0)
BATCH = ["the movie was very good and the acting was fine !", "i hated the ending ."]
PIPE = {
    "one": ("bert_mlm", "the movie was [MASK] !", 5),
    "two": ("bert_mlm", "the [MASK] was very [MASK] .", 5),
    "top3": ("bert_mlm", "i [MASK] the film , it isn't boring .", 3),
    "distil": ("distil_mlm", "the [MASK] was not fun .", 5),
}
MLMS = ["bert_mlm", "distil_mlm", "bert_untied", "distil_untied"]
INPUTS = ["a [MASK] story .", "the music was [MASK] !", "[MASK] movie , great actor ."]


def models():
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(**BERT))
    randomize(bert, 21)
    distil = DistilBertForMaskedLM(DistilBertConfig(**DISTIL))
    randomize(distil, 22)
    base = BertModel(BertConfig(**BERT, initializer_range=0.05))
    randomize(base, 23)
    bert_untied = BertForMaskedLM(BertConfig(**BERT, tie_word_embeddings=False))
    randomize(bert_untied, 24)
    distil_untied = DistilBertForMaskedLM(DistilBertConfig(**DISTIL, tie_word_embeddings=False))
    randomize(distil_untied, 25)
    return {"bert_mlm": bert.eval(), "distil_mlm": distil.eval(), "bert_base": base.eval(),
            "bert_untied": bert_untied.eval(), "distil_untied": distil_untied.eval()}


def make(out):
    os.makedirs(out, exist_ok=True)
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True)
    ms = models()
    for name, model in ms.items():
        model.save_pretrained(os.path.join(out, name))
        tok.save_pretrained(os.path.join(out, name))
    enc = tok(BATCH, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    g = torch.Generator().manual_seed(7)
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (ids == tok.pad_token_id)
    chosen = (torch.rand(ids.shape, generator=g) < 0.4) & ~special
    chosen[0, 3] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    masked = torch.where(chosen, torch.full_like(ids, tok.mask_token_id), ids)
    refs = {"input_ids": ids, "attention_mask": mask, "masked_ids": masked, "labels": labels}
    with torch.no_grad():
        for name in MLMS:
            refs[f"logits_{name}"] = ms[name](input_ids=ids, attention_mask=mask).logits.contiguous()
            refs[f"loss_{name}"] = ms[name](input_ids=masked, attention_mask=mask, labels=labels).loss.reshape(1)
        refs["hidden_bert_base"] = ms["bert_base"](input_ids=ids, attention_mask=mask).last_hidden_state.contiguous()
    save_file(refs, os.path.join(out, "refs.safetensors"))
    with open(os.path.join(out, "inputs.txt"), "w") as f:
        f.write("\n".join(INPUTS) + "\n")

    report = {"pipeline": {}}
    pipes = {name: pipeline("fill-mask", model=os.path.join(out, name), device="cpu") for name in ["bert_mlm", "distil_mlm"]}
    for case, (name, text, k) in PIPE.items():
        report["pipeline"][case] = {"model": name, "text": text, "top_k": k, "out": pipes[name](text, top_k=k)}
    report["inputs"] = [pipes["bert_mlm"](t) for t in INPUTS]
    new, info = BertForMaskedLM.from_pretrained(os.path.join(out, "bert_base"), output_loading_info=True)
    report["new_head"] = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                          "dense_std": float(new.cls.predictions.transform.dense.weight.detach().std())}
    print(json.dumps(report))


def batch(refs):
    return {"input_ids": refs["input_ids"], "attention_mask": refs["attention_mask"]}


def check(spec_path):
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights
    spec = json.load(open(spec_path))
    refs = load_file(spec["refs"])
    os.makedirs(spec["out"], exist_ok=True)
    out = lambda d: os.path.join(spec["out"], os.path.basename(os.path.normpath(d)) + ".safetensors")
    report = {}
    for d in spec.get("models", []):
        model, info = AutoModelForMaskedLM.from_pretrained(d, output_loading_info=True)
        with torch.no_grad():
            save_file({"output": model.eval()(**batch(refs)).logits.contiguous()}, out(d))
        report[os.path.basename(os.path.normpath(d))] = {
            "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
            "mismatched": [str(m) for m in info["mismatched_keys"]], "class": type(model).__name__}
    for base, adapter in spec.get("adapters", []):
        model = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base), adapter).eval()
        with torch.no_grad():
            save_file({"output": model(**batch(refs)).logits.contiguous()}, out(adapter))
        file_keys = set(load_peft_weights(adapter))
        own = set(get_peft_model_state_dict(model))
        report[os.path.basename(os.path.normpath(adapter))] = {
            "missing": sorted(own - file_keys), "unexpected": sorted(file_keys - own), "n_keys": len(file_keys),
            "class": type(model).__name__, "task_type": model.peft_config["default"].task_type}
    print(json.dumps(report))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
