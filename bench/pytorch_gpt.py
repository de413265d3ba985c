"""PyTorch eager reference benchmark for GPT training steps.

Times full training steps (forward, backward, gradient clipping, AdamW step) of a
GPT-2 style model (nanoGPT layout) in plain PyTorch eager mode, so the numbers
can be compared side by side with `rankforge bench`. The model, optimizer and
batch mirror rankforge's src/models/gpt.rs and src/optim.rs: tied token
embedding / LM head, learned position embedding, pre-LN blocks with causal SDPA
attention and a tanh-GELU MLP, and AdamW with two param groups (weight decay
only on parameters with dim >= 2).

Prints exactly one JSON line on stdout (median step time, tokens/s, ...).

Example:
    .venv/bin/python bench/pytorch_gpt.py --threads 2 --batch 8 --steps 10
"""

import argparse
import contextlib
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from timing import median_step_seconds


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        assert n_embd % n_head == 0, "n_embd must be divisible by n_head"
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.n_embd = n_embd
        self.dropout = dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout, bias):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias):
        super().__init__()
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(
            [Block(n_embd, n_head, dropout, bias) for _ in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)

        self.apply(self._init_weights)
        proj_std = 0.02 / math.sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=proj_std)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        B, T = idx.size()
        assert T <= self.block_size, "sequence longer than block_size"
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)  # tied LM head
        # (under bf16 autocast, cross_entropy runs in fp32 automatically)
        return F.cross_entropy(logits.view(-1, self.vocab_size), targets.view(-1))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=30000)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--bias", dest="bias", action="store_true", default=True)
    p.add_argument("--no-bias", dest="bias", action="store_false")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=None,
                   help="micro-batch size (default: --batch)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(n) (default: torch's default)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--fused", action="store_true", help="AdamW(fused=True)")
    p.add_argument("--foreach", action="store_true", help="AdamW(foreach=True)")
    p.add_argument("--ddp", action="store_true",
                   help="DistributedDataParallel (under torchrun or rankforge-launch: NCCL on "
                        "cuda, gloo on cpu); each rank takes its share of --batch")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    args = p.parse_args()
    if args.fused and args.foreach:
        p.error("--fused and --foreach are mutually exclusive")
    if args.micro_batch is None:
        args.micro_batch = args.batch
    if args.batch < 1 or args.micro_batch < 1:
        p.error("--batch and --micro-batch must be >= 1")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.n_embd % args.n_head != 0:
        p.error("--n-embd must be divisible by --n-head")
    return args


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    rank, world = 0, 1
    if args.ddp:
        import os
        import torch.distributed as dist
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if args.device == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        if args.batch % world or args.micro_batch > args.batch // world:
            raise SystemExit(f"--batch {args.batch} does not split over {world} ranks "
                             f"in micro-batches of {args.micro_batch}")
    torch.manual_seed(args.seed)

    model = GPT(
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=args.dropout,
        bias=args.bias,
    ).to(device)
    model.train()
    core = model
    if args.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    bucket_cap_mb=args.bucket_cap_mb)

    params = [p for p in core.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)  # parameters() dedups shared tensors
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt_kwargs = {}
    opt_name = "adamw-default"
    if args.fused:
        opt_kwargs["fused"] = True
        opt_name = "adamw-fused"
    elif args.foreach:
        opt_kwargs["foreach"] = True
        opt_name = "adamw-foreach"
    optimizer = torch.optim.AdamW(
        groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **opt_kwargs
    )

    data = torch.randint(args.vocab_size, (args.batch, args.block_size + 1))
    local = args.batch // world  # this rank's share of the global batch
    data = data[rank * local:(rank + 1) * local].to(device)
    inputs = data[:, :-1].contiguous()
    targets = data[:, 1:].contiguous()
    chunks = [
        (inputs[i:i + args.micro_batch], targets[i:i + args.micro_batch])
        for i in range(0, local, args.micro_batch)
    ]

    if args.dtype == "bf16":
        def autocast():
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        def autocast():
            return contextlib.nullcontext()


    def train_step():
        optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(chunks):
            # DDP averages gradients over ranks: each rank weighs its micro-batches by its share.
            sync = i + 1 == len(chunks) or not args.ddp
            with contextlib.nullcontext() if sync else model.no_sync():
                with autocast():
                    loss = model(x, y) * (x.size(0) / local)
                loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    median_s = median_step_seconds(train_step, args.warmup, args.steps, device)
    result = {
        "impl": "pytorch",
        "ddp": args.ddp,
        "ranks": world,
        "tokens_per_s": args.batch * args.block_size / median_s,
        "step_ms": median_s * 1000.0,
        "params": n_params,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "block_size": args.block_size,
        "device": args.device,
        "dtype": args.dtype,
        "optimizer": opt_name,
        "torch": torch.__version__,
    }
    if rank == 0:
        print(json.dumps(result), flush=True)
    if args.ddp:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
