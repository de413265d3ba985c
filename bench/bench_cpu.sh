#!/usr/bin/env bash
# Side-by-side CPU training-step benchmark: `rankforge bench` vs the PyTorch eager reference
# (bench/pytorch_gpt.py) on the same model, optimizer, batch and thread count, alternating
# rounds (each starting with the next implementation) so machine noise hits all alike. Prints a Markdown table of medians and ratios.
#
#   bench/bench_cpu.sh                       # the seed GPT (6L/6H/384d, T=256, V=30000), batch 8
#   ROUNDS=5 THREADS=2 bench/bench_cpu.sh    # knobs: ROUNDS, THREADS, STEPS, WARMUP, BATCH, PT_ENV, RF
#
#   PT_ENV: environment for the PyTorch side only, e.g. the malloc settings rankforge applies to
#   its own process (src/device.rs, keep_freed_memory), to compare like with like:
#   PT_ENV="MALLOC_MMAP_MAX_=0 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864"
#   RF: the rankforge binary (default target/release/rankforge).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-$(nproc)} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} BATCH=${BATCH:-8}
PT_ENV=${PT_ENV:-} RF_BIN=${RF:-target/release/rankforge}
out=bench/results/cpu-$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p bench/results
RF=("$RF_BIN" bench --config configs/gpt_small_pretrain.toml --steps "$STEPS" --warmup "$WARMUP"
    --set model.vocab_size=30000 --set model.dropout=0.0 --set train.device=cpu
    --set train.global_batch_size="$BATCH" --set train.micro_batch_size="$BATCH" --set train.threads="$THREADS")
PT=(.venv/bin/python bench/pytorch_gpt.py --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --vocab-size 30000
    --dropout 0.0 --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --device cpu)
one() { # 0: rankforge, 1: PyTorch default AdamW, 2: PyTorch fused AdamW
  # shellcheck disable=SC2086 # PT_ENV is a list of VAR=value words
  case $1 in
    0) "${RF[@]}" ;;
    1) env $PT_ENV "${PT[@]}" ;;
    2) env $PT_ENV "${PT[@]}" --fused ;;
  esac 2>/dev/null >> "$out"
}
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  # Each round starts with the next implementation, so none always runs first or last.
  for k in 0 1 2; do one $(((r - 1 + k) % 3)); done
done
.venv/bin/python - "$out" "$PT_ENV" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def key(r): return r["impl"] + ("" if r["impl"] == "rankforge" else f" ({r['optimizer']})")
groups = {}
for r in rows: groups.setdefault(key(r), []).append(r)
base = statistics.median(r["tokens_per_s"] for r in groups["pytorch (adamw-default)"])
print(f"PyTorch environment: {sys.argv[2] or '(none)'}")
print(f"results: {sys.argv[1]}  (threads={rows[0]['threads']}, batch={rows[0]['batch']}, T={rows[0]['block_size']}, params={rows[0]['params']})")
fused = statistics.median(r["tokens_per_s"] for r in groups["pytorch (adamw-fused)"])
print("| implementation | median tokens/s | median step ms | vs PyTorch (default AdamW) | vs PyTorch (fused AdamW) | runs |")
print("|---|---|---|---|---|---|")
for k, rs in groups.items():
    tps = statistics.median(r["tokens_per_s"] for r in rs)
    ms = statistics.median(r["step_ms"] for r in rs)
    print(f"| {k} | {tps:.0f} | {ms:.0f} | {tps / base:.3f}× | {tps / fused:.3f}× | {len(rs)} |")
PY
