"""Markdown tables for a bench/bench_lora.sh results file (JSON lines).

Groups the rows by (implementation, mode) and prints median tokens/s and step time, the
ratios rankforge / PEFT (LoRA) and rankforge / PyTorch (full), each implementation's LoRA
speed-up over its full fine-tuning, and the per-round step times (to show the noise).

    .venv/bin/python bench/lora_table.py bench/results/lora-<date>.jsonl
"""

import json
import statistics
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    groups = {}
    for r in rows:
        side = "rankforge" if r["impl"] == "rankforge" else "pytorch"
        groups.setdefault((side, r["mode"]), []).append(r)
    med = {k: (statistics.median(r["tokens_per_s"] for r in rs), statistics.median(r["step_ms"] for r in rs))
           for k, rs in groups.items()}
    first = rows[0]
    print(f"results: {path}  ({first.get('device', 'cpu')} {first.get('dtype', 'fp32')}, threads={first['threads']}, batch={first['batch']}, seq={first['seq']}, "
          f"rounds={max(len(v) for v in groups.values())})\n")
    names = {("rankforge", "lora"): "rankforge LoRA", ("pytorch", "lora"): "PEFT LoRA (transformers + peft)",
             ("rankforge", "full"): "rankforge full", ("pytorch", "full"): "PyTorch full (transformers)"}
    print("| implementation | trainable params | median tokens/s | median step ms | rankforge / PyTorch |")
    print("|---|---|---|---|---|")
    for mode in ("lora", "full"):
        for side in ("rankforge", "pytorch"):
            if (side, mode) not in med:
                continue
            tps, ms = med[(side, mode)]
            ratio = ""
            if side == "rankforge" and ("pytorch", mode) in med:
                ratio = f"**{tps / med[('pytorch', mode)][0]:.2f}×**"
            trainable = groups[(side, mode)][0].get("trainable_params", "")
            print(f"| {names[(side, mode)]} | {trainable:,} | {tps:.0f} | {ms:.0f} | {ratio} |")
    print("\n| implementation | LoRA step ms | full step ms | full / LoRA step time |")
    print("|---|---|---|---|")
    for side in ("rankforge", "pytorch"):
        if (side, "lora") in med and (side, "full") in med:
            lo, fu = med[(side, "lora")][1], med[(side, "full")][1]
            print(f"| {side} | {lo:.0f} | {fu:.0f} | {fu / lo:.2f}× |")
    print("\nPer round, step ms:\n")
    keys = [k for k in [("rankforge", "lora"), ("pytorch", "lora"), ("rankforge", "full"), ("pytorch", "full")] if k in groups]
    print("| round | " + " | ".join(names[k] for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    rounds = sorted({r.get("round", 0) for r in rows})
    for n in rounds:
        cells = []
        for k in keys:
            ms = [r["step_ms"] for r in groups[k] if r.get("round", 0) == n]
            cells.append(f"{ms[0]:.0f}" if ms else "")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
