"""transformers + PyTorch reference benchmark for masked-language-model fine-tuning steps.

Times optimizer steps on random tokens, the way a transformers training loop runs them, so the
numbers can be compared side by side with `rankforge bench` on a masked-LM recipe
(`[task] kind = "masked_lm"`; bench/bench_mlm.sh runs both):

- the model: `AutoModelForMaskedLM.from_pretrained(DIR, dtype=float32)` (by default the
  BERT-base-shaped random `BertForMaskedLM` of bench/make_bert_mlm.py), in train mode (the
  config's dropout, 0.1 for BERT), default attention implementation (SDPA); every weight
  trains (full fine-tuning);
- the examples: `--batch` rows of `--seq` token ids drawn uniformly from the tokenizer's
  non-special ids (not `all_special_ids`; no [CLS]/[SEP], no padding), the same every step —
  what `rankforge bench` draws;
- one step: `DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)` (80 % [MASK],
  10 % random, 10 % kept; labels -100 elsewhere) masks the rows afresh (an all-ones
  `attention_mask`), then `loss = model(**batch).loss` (cross-entropy, mean over the masked
  tokens), `backward()`, `clip_grad_norm_(1.0)`, `AdamW.step()`, `zero_grad(set_to_none=True)`;
  with `--micro-batch` smaller than `--batch` each micro-batch's loss is weighted by its share
  of the batch's masked tokens and accumulated. The collator runs inside the timed step, as a
  Trainer's default `dataloader_num_workers=0` runs it in the training process between steps
  (rankforge's timed step masks its examples too);
- `torch.optim.AdamW` over every parameter with bench/mlm_bert_base.toml's values (lr 5e-5,
  betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on matrices only, as `src/optim.rs` applies
  it), PyTorch's default implementation unless `--fused`/`--foreach`;
- `--device cuda --dtype bf16`: fp32 weights under bf16 autocast, as rankforge's
  `train.precision = "bf16"` does.

Timing: `--warmup` untimed steps, then the median of `--steps` timed ones (bench/timing.py).
Prints exactly one JSON line on stdout (median step time, tokens/s, examples/s, masked tokens
per step, ...).

Example:
    .venv/bin/python bench/make_bert_mlm.py runs/bench-bert-mlm
    .venv/bin/python bench/hf_mlm.py --model runs/bench-bert-mlm --batch 8 --seq 128 --threads 2
"""

import argparse
import contextlib
import json

import torch

from timing import median_step_seconds


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="local Hugging Face model directory with its tokenizer (bench/make_bert_mlm.py writes one)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=None, help="default: --batch")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(n) (default: torch's default)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: fp32 weights under bf16 autocast")
    p.add_argument("--fused", action="store_true", help="AdamW(fused=True)")
    p.add_argument("--foreach", action="store_true", help="AdamW(foreach=True)")
    args = p.parse_args()
    if args.fused and args.foreach:
        p.error("--fused and --foreach are mutually exclusive")
    args.micro_batch = args.micro_batch or args.batch
    if min(args.batch, args.micro_batch, args.seq, args.steps) < 1:
        p.error("--batch, --micro-batch, --seq and --steps must be >= 1")
    if not 0.0 < args.mlm_probability < 1.0:
        p.error("--mlm-probability must be in (0, 1)")
    return args


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    import transformers
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.mask_token is None:
        raise SystemExit(f"{args.model}: the tokenizer has no mask token")
    model = AutoModelForMaskedLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    model.train()
    cfg = model.config
    if args.seq > getattr(cfg, "max_position_embeddings", args.seq):
        raise SystemExit(f"--seq {args.seq} exceeds the model's max_position_embeddings {cfg.max_position_embeddings}")

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt_kwargs, opt_name = {}, "adamw-default"
    if args.fused:
        opt_kwargs, opt_name = {"fused": True}, "adamw-fused"
    elif args.foreach:
        opt_kwargs, opt_name = {"foreach": True}, "adamw-foreach"
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, **opt_kwargs)

    special = set(tok.all_special_ids)
    plain = torch.tensor([i for i in range(len(tok)) if i not in special])
    gen = torch.Generator().manual_seed(args.seed)
    ids = plain[torch.randint(len(plain), (args.batch, args.seq), generator=gen)]
    examples = [{"input_ids": row} for row in ids.tolist()]
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=args.mlm_probability)
    masked_per_step = []

    if args.dtype == "bf16":
        def autocast():
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        def autocast():
            return contextlib.nullcontext()

    def train_step():
        batch = collator(examples)
        labels = batch["labels"]
        masked = int((labels != -100).sum())
        masked_per_step.append(masked)
        for k in range(0, args.batch, args.micro_batch):
            part = {name: t[k:k + args.micro_batch].to(device) for name, t in batch.items()}
            share = int((part["labels"] != -100).sum()) / max(masked, 1)
            with autocast():
                loss = model(**part).loss * share
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    median_s = median_step_seconds(train_step, args.warmup, args.steps, device)
    print(json.dumps({
        "impl": "pytorch",
        "task": "masked_lm",
        "mode": "full",
        "model_type": cfg.model_type,
        "architecture": type(model).__name__,
        "step_ms": median_s * 1000.0,
        "tokens_per_s": args.batch * args.seq / median_s,
        "examples_per_s": args.batch / median_s,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "mlm_probability": args.mlm_probability,
        "masked_tokens": masked_per_step,
        "device": args.device,
        "dtype": args.dtype,
        "optimizer": opt_name,
        "steps": args.steps,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
