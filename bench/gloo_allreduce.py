"""PyTorch/gloo reference benchmark for all-reduce bus bandwidth on CPU.

Measures how fast `torch.distributed.all_reduce` (SUM, backend gloo, float32 CPU
tensors) runs across N local processes, so the numbers can be compared side by
side with `rankforge bench collective` (see bench/bench_collective.sh).

For each message size: `--warmup` untimed all-reduces, then `--iters` timed ones,
each preceded by a `dist.barrier()` so all ranks start together. Only the
`dist.all_reduce(t)` call is timed (time.perf_counter). Each iteration's time is
the max over ranks (a MAX all-reduce of the per-rank times), and the reported
time is the median of those over iterations. Bandwidths follow the nccl-tests
convention:

    algbw = bytes / time            busbw = algbw * 2 * (n - 1) / n

After timing, each size is checked once for correctness (every rank fills the
tensor with rank + 1; the sum must be n(n + 1) / 2 everywhere); the script exits
non-zero on a mismatch.

Rank 0 prints one JSON line per size on stdout:
    {"impl": "gloo", "world": n, "bytes": B, "iters": K, "time_ms": ...,
     "algbw_gbps": ..., "busbw_gbps": ...}

Sizes accept K/M/G suffixes (powers of 1024) or plain byte counts, and must be a
multiple of 4 (float32 elements).

Example:
    .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        bench/gloo_allreduce.py --bytes 1M,4M,16M,64M,256M --iters 20 --warmup 3
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.distributed as dist

_SUFFIXES = {"K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(s):
    s = s.strip()
    if not s:
        raise argparse.ArgumentTypeError("empty size")
    mult = 1
    if s[-1].upper() in _SUFFIXES:
        mult = _SUFFIXES[s[-1].upper()]
        s = s[:-1]
    try:
        n = int(s) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {s!r}") from None
    if n <= 0 or n % 4:
        raise argparse.ArgumentTypeError(f"size {n} must be a positive multiple of 4 bytes (float32)")
    return n


def parse_sizes(s):
    return [parse_size(x) for x in s.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=parse_sizes, default=parse_sizes("1M,4M,16M,64M,256M"),
                   help="comma-separated message sizes in bytes, K/M/G = powers of 1024")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per size")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per size")
    args = p.parse_args()
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")

    torch.set_num_threads(1)
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ok = True
    try:
        for nbytes in args.bytes:
            t = torch.ones(nbytes // 4, dtype=torch.float32)
            for _ in range(args.warmup):
                dist.all_reduce(t)
            times = []
            for _ in range(args.iters):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(t)
                times.append(time.perf_counter() - t0)
            # Per-iteration max over ranks: the collective is done when the slowest rank is.
            tt = torch.tensor(times, dtype=torch.float64)
            dist.all_reduce(tt, op=dist.ReduceOp.MAX)
            secs = statistics.median(tt.tolist())

            t.fill_(rank + 1)
            dist.all_reduce(t)
            expect = world * (world + 1) / 2
            good = torch.tensor([1 if bool((t == expect).all()) else 0], dtype=torch.int32)
            dist.all_reduce(good, op=dist.ReduceOp.MIN)
            if not good.item():
                ok = False
                if rank == 0:
                    print(f"gloo_allreduce: WRONG RESULT at {nbytes} bytes (expected {expect})",
                          file=sys.stderr, flush=True)
                break

            if rank == 0:
                algbw = nbytes / secs / 1e9
                print(json.dumps({
                    "impl": "gloo", "world": world, "bytes": nbytes, "iters": args.iters,
                    "time_ms": secs * 1e3, "algbw_gbps": algbw,
                    "busbw_gbps": algbw * 2 * (world - 1) / world,
                }), flush=True)
    finally:
        dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
