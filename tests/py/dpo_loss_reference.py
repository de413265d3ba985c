"""Reference side of the DPO loss conformance tests (tests/dpo_loss.rs), run with TRL 1.16.

usage: dpo_loss_reference.py OUT_DIR

Creates a tiny random Llama (transformers' LlamaForCausalLM, fixed seed, untied head) in
OUT_DIR/policy and the same model with every weight perturbed (fixed seed) in OUT_DIR/ref, and a
word-level tokenizer (one token per "wN" word, "<pad>" = 0, "<eos>" = 1). Four preference rows
of different prompt and completion lengths (one with an empty prompt, whose completion starts at
position 0) go through TRL's own DPOTrainer dataset preparation (EOS appended) and its
DataCollatorForPreference: OUT_DIR/batch.safetensors holds that batch (input_ids,
attention_mask, completion_mask: int64 [2B, T], chosen rows first, right padding).

For each case (loss_type, beta, label_smoothing) it builds a DPOTrainer(model=policy,
ref_model=ref, DPOConfig(loss_type=[t], report_to=[], bf16=False, ...)), puts the policy in
train mode (dropout is disabled by TRL) and calls trainer.compute_loss on the batch, then reads
trainer._metrics["train"]. OUT_DIR/reference.json:
  {"policy_logps": [2B], "ref_logps": [2B],            # TRL's compute_ref_log_probs
   "cases": [{"loss_type", "beta", "label_smoothing", "loss", "metrics": {name: value}}]}
"""

import json
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging
from trl import DPOConfig, DPOTrainer

# Reproducible references: one intra-op thread, synchronous weight loading.
torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"
hf_logging.set_verbosity_error()

VOCAB = 64
ROWS = [  # TRL joins prompt + completion as strings: completions start with the space
    {"prompt": "w5 w9 w12", "chosen": " w20 w21", "rejected": " w30 w31 w32 w33"},
    {"prompt": "w7 w8 w9 w10 w11 w12", "chosen": " w40", "rejected": " w41 w42"},
    {"prompt": "", "chosen": "w3 w4 w5", "rejected": "w6"},
    {"prompt": "w2 w3", "chosen": " w50 w51 w52 w53 w54", "rejected": " w50 w51 w52 w53 w60"},
]
CASES = [
    ("sigmoid", 0.1, 0.0),
    ("sigmoid", 2.0, 0.0),
    ("ipo", 0.1, 0.0),
    ("hinge", 1.0, 0.0),
    ("robust", 0.1, 0.1),
]
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"]


def tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": VOCAB - 1}
    vocab.update({f"w{i}": i for i in range(2, VOCAB - 1)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def make_models(out):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.2, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                      bos_token_id=None)
    policy = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a shared offset of the head's rows: mean logits far from 0
        policy.lm_head.weight.add_(0.5 * torch.randn(cfg.hidden_size))
    policy.save_pretrained(os.path.join(out, "policy"))
    ref = LlamaForCausalLM(cfg)
    ref.load_state_dict(policy.state_dict())
    gen = torch.Generator().manual_seed(2)  # Δ of both signs: accuracy 0.5, hinge half clipped
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    ref.save_pretrained(os.path.join(out, "ref"))


def load(out, name):
    return LlamaForCausalLM.from_pretrained(os.path.join(out, name), dtype=torch.float32)


def trainer_for(out, loss_type, beta, label_smoothing):
    args = DPOConfig(output_dir=os.path.join(out, "trainer"), report_to=[], loss_type=[loss_type], beta=beta,
                     label_smoothing=label_smoothing, bf16=False, use_cpu=True, per_device_train_batch_size=len(ROWS),
                     gradient_checkpointing=False, seed=0)
    return DPOTrainer(model=load(out, "policy"), ref_model=load(out, "ref"), args=args,
                      train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer())


def main(out):
    os.makedirs(out, exist_ok=True)
    make_models(out)
    trainer = trainer_for(out, *CASES[0])
    examples = [trainer.train_dataset[i] for i in range(len(ROWS))]
    batch = trainer.data_collator(examples)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    save_file({k: v.to(torch.int64).contiguous() for k, v in batch.items()}, os.path.join(out, "batch.safetensors"))

    trainer.model.eval()
    pc, pr = trainer.compute_ref_log_probs(trainer.model, batch)
    rc, rr = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    report = {"policy_logps": torch.cat([pc, pr]).tolist(), "ref_logps": torch.cat([rc, rr]).tolist(), "cases": []}

    for loss_type, beta, ls in CASES:
        trainer = trainer_for(out, loss_type, beta, ls)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        metrics = {k: v[0] for k, v in trainer._metrics["train"].items() if k in METRICS}
        assert sorted(metrics) == sorted(METRICS), metrics
        assert all(len(trainer._metrics["train"][k]) == 1 for k in METRICS)
        report["cases"].append({"loss_type": loss_type, "beta": beta, "label_smoothing": ls,
                                "loss": loss.item(), "metrics": metrics})
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main(sys.argv[1])
