"""Plain PyTorch programs (nothing rankforge-specific) started by rankforge-launch or torchrun in
the launcher's tests: gloo on loopback, `init_process_group(init_method="env://")`.

    torch_launch_programs.py MODE OUT

MODE:
  ddp        trains a tiny DDP model for 20 steps on rank-dependent data; each rank writes its
             final weights to OUT/weights.rank<R>.json (float64 lists: exact comparison)
  fail-once  rank 1 raises on the job's first attempt (TORCHELASTIC_RESTART_COUNT=0) after a
             first all-reduce; every attempt appends `restart master_port` to OUT/attempts.rank<R>
  record     rank 1 fails in a @record-decorated main: its error goes to TORCHELASTIC_ERROR_FILE
  hang       3 ranks: rank 2 exits 4; rank 0 then hangs in an all-reduce with rank 1, which
             sleeps; both ignore SIGTERM. Each writes its pid to OUT/pid.rank<R>
  env        writes its environment to OUT/env.rank<R>.json
"""

import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


def rank():
    return int(os.environ["RANK"])


def init():
    dist.init_process_group("gloo", init_method="env://")


def ddp(out):
    init()
    torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp_model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1000 + rank())  # each rank its own shard
    first = last = None
    for _ in range(20):
        x = torch.randn(16, 8, generator=gen)
        y = x.sum(dim=1, keepdim=True).sin()
        loss = torch.nn.functional.mse_loss(ddp_model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    weights = {k: v.double().flatten().tolist() for k, v in model.state_dict().items()}
    with open(os.path.join(out, f"weights.rank{rank()}.json"), "w") as f:
        json.dump({"weights": weights, "first_loss": first, "last_loss": last}, f)
    dist.destroy_process_group()


def fail_once(out):
    restart = os.environ["TORCHELASTIC_RESTART_COUNT"]
    with open(os.path.join(out, f"attempts.rank{rank()}"), "a") as f:
        f.write(f"{restart} {os.environ['MASTER_PORT']}\n")
    init()
    t = torch.ones(1)
    dist.all_reduce(t)
    if rank() == 1 and restart == "0":
        print("rank 1 fails on the first attempt", file=sys.stderr, flush=True)
        sys.exit(3)
    dist.all_reduce(t)
    assert t.item() == 4.0, t
    dist.destroy_process_group()


@record
def record_main(out):
    init()
    dist.barrier()
    if rank() == 1:
        raise ValueError("rank 1 cannot find shard 7")
    time.sleep(60)  # stopped by the launcher when rank 1 fails


def hang(out):
    with open(os.path.join(out, f"pid.rank{rank()}"), "w") as f:
        f.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: print(f"rank {rank()} ignores SIGTERM", flush=True))
    init()
    pair = dist.new_group([0, 1])
    dist.barrier()
    if rank() == 2:
        sys.exit(4)
    if rank() == 0:
        dist.all_reduce(torch.ones(1), group=pair)  # rank 1 never joins: hangs in the collective
    while True:
        time.sleep(1)


def env(out):
    with open(os.path.join(out, f"env.rank{rank()}.json"), "w") as f:
        json.dump(dict(os.environ), f, indent=1, sort_keys=True)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"ddp": ddp, "fail-once": fail_once, "record": record_main, "hang": hang, "env": env}[mode](out)
