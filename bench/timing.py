"""Step timing shared by the PyTorch reference benchmarks (pytorch_gpt.py, peft_llama.py):
`warmup` untimed steps, then the median wall time of `steps` timed ones, with CUDA work
synchronised before each clock reading — what `rankforge bench` reports for its own step."""
import statistics
import time

import torch


def median_step_seconds(train_step, warmup, steps, device):
    is_cuda = device.type == "cuda"
    for _ in range(warmup):
        train_step()
    if is_cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step()
        if is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
