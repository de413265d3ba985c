"""TRL reference benchmark for LoRA DPO steps: TRL's DPOTrainer with a PEFT LoRA adapter, on the
synthetic preference pairs `rankforge bench` times for a DPO recipe (bench/bench_dpo.sh runs both):

- the model: `LlamaForCausalLM.from_pretrained(DIR, dtype=float32)` (bench/make_llama.py's small
  Llama, with the word-level tokenizer `--tokenizer` writes beside it); `peft_config =
  LoraConfig(r, lora_alpha, lora_dropout=0, target_modules=q_proj,v_proj)` given to the trainer,
  so the reference is the base with the adapter disabled (no second model), as rankforge's;
- the pairs: `--batch` rows of a prompt of `seq / 2` tokens and chosen and rejected completions of
  `seq / 2` tokens each (prompt + completion = `--seq`, no padding), token ids drawn uniformly from
  the tokenizer's non-special ids — what `rankforge bench` draws for DPO. TRL gets them as text
  (one word per id) and appends EOS to each completion, so its completions are `seq / 2 − 1` random
  words + EOS: the same token counts;
- `DPOConfig`: beta 0.1, `loss_type=["sigmoid"]`, `max_length=seq` (nothing truncated),
  `per_device_train_batch_size=--micro-batch`, `gradient_accumulation_steps=batch / micro-batch`,
  `optim="adamw_torch"` (lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0), constant lr,
  `max_grad_norm=1.0`, `bf16=False` (fp32; TRL's default is bf16), `gradient_checkpointing=False`
  (TRL's default is True; rankforge keeps activations), `use_cpu=True`, no logging, no saving.

Timing: `trainer.train()` for warmup + steps optimizer steps; a callback takes the wall time at
each step's end, and a step's time is the interval since the previous step's end (the Trainer's
whole loop: data loading, the collator, the reference and policy forwards, backward, clipping,
AdamW). The first `--warmup` intervals are not counted; the median of the rest is reported (as
bench/timing.py's median). Peak resident memory: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of
this process at the end (model, trainer, imports: what a TRL user's process holds).

Prints exactly one JSON line on stdout.

Example:
    .venv/bin/python bench/make_llama.py runs/bench-llama-dpo --tokenizer
    .venv/bin/python bench/trl_dpo.py --model runs/bench-llama-dpo --batch 8 --seq 256 --threads 2
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Llama directory with a tokenizer (bench/make_llama.py --tokenizer)")
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--micro-batch", type=int, default=None, help="pairs per forward (default: --batch)")
    p.add_argument("--seq", type=int, default=256, help="tokens of prompt + completion (even)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    args = p.parse_args()
    args.micro_batch = args.micro_batch or args.batch
    if args.batch % args.micro_batch:
        p.error("--batch must be a multiple of --micro-batch")
    if args.seq < 4 or args.seq % 2:
        p.error("--seq must be even and at least 4")
    if min(args.steps, args.batch) < 1 or args.warmup < 0:
        p.error("--steps and --batch must be >= 1, --warmup >= 0")
    return args


def main():
    args = parse_args()
    warnings.filterwarnings("ignore")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import transformers
    import trl
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.seq > model.config.max_position_embeddings:
        raise SystemExit(f"--seq {args.seq} exceeds max_position_embeddings {model.config.max_position_embeddings}")

    special = set(tok.all_special_ids)
    plain = [i for i in range(len(tok)) if i not in special]
    gen = torch.Generator().manual_seed(args.seed)
    words = lambda n: " ".join(tok.convert_ids_to_tokens([plain[i] for i in torch.randint(len(plain), (n,), generator=gen).tolist()]))
    half = args.seq // 2
    rows = [{"prompt": words(half), "chosen": " " + words(half - 1), "rejected": " " + words(half - 1)} for _ in range(args.batch)]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_train_begin(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    config = DPOConfig(
        output_dir=os.path.join(args.model, "trl-bench-out"), report_to=[], beta=0.1, loss_type=["sigmoid"],
        max_length=args.seq, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.batch // args.micro_batch, max_steps=args.warmup + args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, bf16=False, use_cpu=True,
        gradient_checkpointing=False, logging_steps=10**9, save_strategy="no", seed=args.seed, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                             task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config, callbacks=[clock])
    lengths = {len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in trainer.train_dataset}
    lengths |= {len(r["prompt_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset}
    assert lengths == {args.seq}, f"TRL's sequences have {lengths} tokens, not {args.seq}"
    out = trainer.train()
    intervals = [b - a for a, b in zip(clock.ends, clock.ends[1:])][args.warmup:]
    assert len(intervals) == args.steps, (len(clock.ends), args.steps)
    median_s = statistics.median(intervals)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    print(json.dumps({
        "impl": "trl",
        "task": "dpo",
        "mode": "lora",
        "model_type": model.config.model_type,
        "step_ms": median_s * 1e3,
        "pairs_per_s": args.batch / median_s,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_params": trainable,
        "batch": args.batch,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "lora_r": args.r,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "dtype": "fp32",
        "steps": args.steps,
        "train_loss": out.training_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
