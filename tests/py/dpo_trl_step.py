"""Reference side of the DPO optimizer-step conformance test (tests/dpo_trl.rs), run with TRL 1.16
and PEFT 0.21.

usage: dpo_trl_step.py make OUT
       dpo_trl_step.py train OUT START_ADAPTER

`make` writes OUT/model (the tiny random Llama of tests/py/dpo_loss_reference.py, untied head,
with its word-level tokenizer saved beside it) and OUT/prefs.jsonl (ROWS: eight standard
preference rows, one longer than MAX_LENGTH).

`train` loads START_ADAPTER (rankforge's 0-step adapter: A as rankforge drew it, B = 0) into
PEFT with `PeftModel.from_pretrained(..., is_trainable=True)`, reports how its keys compare
with PEFT's own, then for each loss type in LOSS_TYPES runs TRL's DPOTrainer for STEPS
optimizer steps on all the rows at once (global batch = every row: the data order cannot
matter) with the optimizer settings below, and saves the adapter after each step. TRL gives a
pretrained adapter a frozen "ref" copy of it as the reference; with B = 0 that is the base,
what rankforge's reference (adapters off) is. OUT/trl.json:
  {"peft_load": {"file_keys_not_in_peft", "peft_keys_not_in_file", "missing", "unexpected", "n_keys"},
   "runs": {loss_type: {"logs": [TRL's log row of each step], "adapters": [OUT/trl_<t>/step<k>.safetensors]}}}
"""

import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dpo_loss_reference import make_models, tokenizer  # noqa: E402  (the tiny Llama and its tokenizer)

import torch  # noqa: E402
from datasets import Dataset, disable_progress_bars  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaForCausalLM, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

disable_progress_bars()
warnings.filterwarnings("ignore")

# The settings both sides train with (tests/dpo_trl.rs writes the same into its recipe).
LR = 1e-3
BETA = 0.1
MAX_GRAD_NORM = 0.05  # below the first step's gradient norm: clipping acts
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
MAX_LENGTH = 24
STEPS = 2
LOSS_TYPES = ["sigmoid", "ipo"]
ROWS = [
    {"prompt": "w5 w9 w12", "chosen": " w20 w21", "rejected": " w30 w31 w32 w33"},
    {"prompt": "w7 w8 w9 w10 w11 w12", "chosen": " w40", "rejected": " w41 w42"},
    {"prompt": "w2 w3", "chosen": " w50 w51 w52 w53 w54", "rejected": " w50 w51 w52 w53 w60"},
    {"prompt": "w13 w14 w15 w16", "chosen": " w17 w18 w19", "rejected": " w22 w23"},
    {"prompt": "w24", "chosen": " w25 w26 w27 w28 w29 w34", "rejected": " w35"},
    {"prompt": "w36 w37 w38 w39 w43", "chosen": " w44 w45", "rejected": " w46 w47 w48"},
    {"prompt": "w49 w55 w56", "chosen": " w57", "rejected": " w58 w59 w61 w62"},
    # Longer than MAX_LENGTH: both sequences are cut, keeping their start.
    {"prompt": " ".join(f"w{i}" for i in range(2, 14)), "chosen": "".join(f" w{i}" for i in range(20, 36)),
     "rejected": "".join(f" w{i}" for i in range(40, 54))},
]


def make(out):
    make_models(out)  # writes OUT/policy (and OUT/ref, unused here)
    model_dir = os.path.join(out, "model")
    os.replace(os.path.join(out, "policy"), model_dir)
    tokenizer().save_pretrained(model_dir)
    with open(os.path.join(out, "prefs.jsonl"), "w") as f:
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    print(json.dumps({"ok": True}))


def peft_model(model_dir, adapter):
    """The base with `adapter` loaded trainable, and how the file's keys compare with PEFT's."""
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    file_keys, own = set(load_peft_weights(adapter)), set(get_peft_model_state_dict(model))
    check = model.load_adapter(adapter, adapter_name="check")
    model.set_adapter("default")
    model.delete_adapter("check")
    lora = lambda ks: sorted(k for k in ks if "lora_" in k)
    report = {"file_keys_not_in_peft": sorted(file_keys - own), "peft_keys_not_in_file": sorted(own - file_keys),
              "missing": lora(check.missing_keys), "unexpected": lora(check.unexpected_keys), "n_keys": len(file_keys)}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(".default." in n for n in trainable), trainable
    return model, report


class SaveAdapter(TrainerCallback):
    """Saves the "default" adapter after every optimizer step."""

    def __init__(self, out_dir):
        self.out_dir, self.paths = out_dir, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(model, adapter_name="default")
        path = os.path.join(self.out_dir, f"step{state.global_step}.safetensors")
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, path)
        self.paths.append(path)


def train_one(out, start, loss_type):
    model, _ = peft_model(os.path.join(out, "model"), start)
    run_dir = os.path.join(out, f"trl_{loss_type}")
    os.makedirs(run_dir, exist_ok=True)
    args = DPOConfig(
        output_dir=run_dir, report_to=[], loss_type=[loss_type], beta=BETA, max_length=MAX_LENGTH,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch", adam_beta1=ADAM_BETA1, adam_beta2=ADAM_BETA2, adam_epsilon=ADAM_EPS,
        per_device_train_batch_size=len(ROWS), gradient_accumulation_steps=1, max_steps=STEPS, logging_steps=1,
        save_strategy="no", bf16=False, use_cpu=True, gradient_checkpointing=False, seed=0,
        dataloader_drop_last=False,
    )
    saver = SaveAdapter(run_dir)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(ROWS),
                         processing_class=tokenizer(), callbacks=[saver])
    assert len(trainer.train_dataset) == len(ROWS), "TRL dropped a row"
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert [h["step"] for h in logs] == list(range(1, STEPS + 1)), logs
    assert len(saver.paths) == STEPS
    return {"logs": logs, "adapters": saver.paths}


def train(out, start):
    torch.set_num_threads(1)
    _, load_report = peft_model(os.path.join(out, "model"), start)
    report = {"peft_load": load_report, "runs": {t: train_one(out, start, t) for t in LOSS_TYPES}}
    with open(os.path.join(out, "trl.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        train(sys.argv[2], sys.argv[3])
