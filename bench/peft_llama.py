"""PyTorch + PEFT reference benchmark for fine-tuning steps of a Hugging Face Llama.

Times optimizer steps on random tokens, the way a transformers/PEFT training loop runs them,
so the numbers can be compared side by side with `rankforge bench` on a fine-tuning recipe
(`model.kind = "hf"`, with or without `[lora]`):

- the model: `AutoModelForCausalLM.from_pretrained(DIR, dtype=float32)` (transformers 5's name
  for `torch_dtype`), in train mode, default attention implementation (SDPA);
- LoRA (default): `peft.get_peft_model(model, LoraConfig(r, lora_alpha, lora_dropout=0,
  target_modules))` — the base frozen, only `lora_A`/`lora_B` train; `--full`: every weight
  trains (full fine-tuning);
- one step: `loss = model(input_ids, labels=labels, use_cache=False).loss` (every position
  labelled; transformers shifts the labels inside), `backward()`, `clip_grad_norm_(1.0)`,
  `AdamW.step()`, `zero_grad(set_to_none=True)`; with `--micro-batch` smaller than `--batch`
  the micro-batch losses are weighted by their share and accumulated;
- `torch.optim.AdamW` over the trainable parameters with rankforge's recipe defaults
  (lr 6e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices only, as
  `src/optim.rs` does), PyTorch's default implementation unless `--fused`/`--foreach`.

Prints exactly one JSON line on stdout (median step time, tokens/s, ...).

Example:
    .venv/bin/python bench/make_llama.py runs/bench-llama
    .venv/bin/python bench/peft_llama.py --model runs/bench-llama --lora-r 16 --lora-alpha 32 \
        --targets q_proj,v_proj --batch 4 --seq 256 --threads 2
    .venv/bin/python bench/peft_llama.py --model runs/bench-llama --full --batch 4 --seq 256
"""

import argparse
import contextlib
import json

import torch

from timing import median_step_seconds


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local Hugging Face Llama directory")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--targets", default="q_proj,v_proj",
                   help="comma-separated module names, or all-linear")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=None, help="default: --batch")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(n) (default: torch's default)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: base weights in bf16 (LoRA adapters stay fp32) under autocast")
    p.add_argument("--fused", action="store_true", help="AdamW(fused=True)")
    p.add_argument("--foreach", action="store_true", help="AdamW(foreach=True)")
    args = p.parse_args()
    if args.fused and args.foreach:
        p.error("--fused and --foreach are mutually exclusive")
    args.micro_batch = args.micro_batch or args.batch
    if min(args.batch, args.micro_batch, args.seq, args.steps) < 1:
        p.error("--batch, --micro-batch, --seq and --steps must be >= 1")
    return args


def build_model(args, device):
    from transformers import AutoModelForCausalLM

    # bf16 base weights only make sense for LoRA (the frozen base is only read); full
    # fine-tuning keeps fp32 master weights and runs under autocast, as rankforge does.
    base_dtype = torch.bfloat16 if (args.dtype == "bf16" and not args.full) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=base_dtype).to(device)
    if not args.full:
        from peft import LoraConfig, get_peft_model

        targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
        cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                         target_modules=targets, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
        if base_dtype != torch.float32:  # PEFT keeps adapters in fp32 (autocast_adapter_dtype)
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.data = p.data.float()
    model.train()
    return model


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(args, device)

    trainable = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in trainable)
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt_kwargs, opt_name = {}, "adamw-default"
    if args.fused:
        opt_kwargs, opt_name = {"fused": True}, "adamw-fused"
    elif args.foreach:
        opt_kwargs, opt_name = {"foreach": True}, "adamw-foreach"
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, **opt_kwargs)

    vocab = model.config.vocab_size
    ids = torch.randint(vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed))
    ids = ids.to(device)
    chunks = list(ids.split(args.micro_batch))

    if args.dtype == "bf16":
        def autocast():
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        def autocast():
            return contextlib.nullcontext()

    def train_step():
        for x in chunks:
            with autocast():
                loss = model(input_ids=x, labels=x, use_cache=False).loss * (x.size(0) / args.batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    median_s = median_step_seconds(train_step, args.warmup, args.steps, device)
    print(json.dumps({
        "impl": "pytorch+peft" if not args.full else "pytorch",
        "mode": "full" if args.full else "lora",
        "step_ms": median_s * 1000.0,
        "tokens_per_s": args.batch * args.seq / median_s,
        "params": n_params,
        "trainable_params": n_trainable,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "targets": None if args.full else args.targets,
        "lora_r": None if args.full else args.lora_r,
        "device": args.device,
        "dtype": args.dtype,
        "optimizer": opt_name,
        "steps": args.steps,
        "torch": torch.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
